"""The runtime: per-worker execution strategies (:mod:`~simdl.runtime.execution`), the compiled program of a run
(:mod:`~simdl.runtime.program`, :mod:`~simdl.runtime.compiled`), the one host loop (:mod:`~simdl.runtime.loop`:
:func:`simulate` is :func:`simulate_batch`'s loop with one run), its hooks (:mod:`~simdl.runtime.hooks`,
:mod:`~simdl.runtime.checkpoint`) and what a run records (:mod:`~simdl.runtime.record`)."""

from simdl.runtime.checkpoint import Checkpoint, fingerprint_difference, run_fingerprint
from simdl.runtime.compiled import CompiledChunks
from simdl.runtime.execution import (
    COMPUTE_DTYPES,
    cast_floating,
    check_compute_dtype,
    check_execution,
    in_compute_dtype,
    per_worker_grads,
    resolve_execution,
)
from simdl.runtime.hooks import Callback, Hook, ProgressBar, Resume, TensorBoard
from simdl.runtime.loop import Loop, simulate, simulate_batch
from simdl.runtime.program import (
    build_chunk,
    build_evaluate,
    build_step,
    check_count,
    device_info,
    init_state,
    pack_state,
    unpack_state,
    validate,
)
from simdl.runtime.record import BLOWUP_FACTOR, Recorder, SimulationResult, blew_up, final_values, host_metrics

__all__ = ["BLOWUP_FACTOR", "COMPUTE_DTYPES", "Callback", "Checkpoint", "CompiledChunks", "Hook", "Loop",
           "ProgressBar", "Recorder", "Resume", "SimulationResult", "TensorBoard", "blew_up", "build_chunk",
           "build_evaluate", "build_step", "cast_floating", "check_compute_dtype", "check_count", "check_execution",
           "device_info", "final_values", "fingerprint_difference", "host_metrics", "in_compute_dtype", "init_state",
           "pack_state", "per_worker_grads", "resolve_execution", "run_fingerprint", "simulate", "simulate_batch",
           "unpack_state", "validate"]
