"""Memory estimate of a simulation before running it: exact state and data sizes, and what XLA's compiled step needs.

:func:`estimate` lowers and compiles ONE simulated step (:func:`simdl.runtime.build_step`, state donated as in
:func:`simdl.simulate`) on abstract inputs, so nothing is allocated and nothing runs; it reads the sizes from
``Compiled.memory_analysis()``. The run itself compiles ``lax.scan`` over a chunk of such steps, whose buffers are
the same up to the scan's small carried counters, so the step's figures are the run's working set.
:func:`suggest_worker_batch` finds the largest ``worker_batch`` (workers whose gradients are computed at once,
see :func:`simdl.runtime.per_worker_grads`) whose estimate fits a byte budget.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from simdl.algorithms.base import Algorithm
from simdl.mixing import make_mixer
from simdl.runtime import build_step, check_compute_dtype, check_execution, init_state
from simdl.tasks.base import Task

#: Keys of :func:`estimate` filled from ``Compiled.memory_analysis()`` (``None`` when the backend gives none).
COMPILED_KEYS = ("temp_bytes", "argument_bytes", "output_bytes", "alias_bytes", "generated_code_bytes",
                 "peak_bytes")


def tree_bytes(tree) -> int:
    """Total bytes of the array leaves (or ``ShapeDtypeStruct`` leaves) of a pytree; Python int."""
    return int(sum(int(np.prod(x.shape, dtype=np.int64)) * np.dtype(x.dtype).itemsize
                   for x in jax.tree_util.tree_leaves(tree)))


def _abstract(tree):
    return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), tree)


def _check_worker_batch(worker_batch) -> int | None:
    if worker_batch is None:
        return None
    if isinstance(worker_batch, bool) or not isinstance(worker_batch, (int, np.integer)) or worker_batch < 1:
        raise ValueError(f"worker_batch must be an integer >= 1 or None, got {worker_batch!r}")
    return int(worker_batch)


def _compiled_sizes(task: Task, algorithm: Algorithm, topology, mixer, batch_size: int, worker_batch, state_shape,
                    keys_shape, key_shape, compute_dtype: str = "float32", execution: str = "auto") -> dict:
    step = build_step(task, algorithm, topology, mixer, batch_size, worker_batch, execution=execution,
                      compute_dtype=compute_dtype)
    fn = jax.jit(lambda state, t, data, wk, ak: step(state, t, data, wk, ak), donate_argnums=(0,))
    lowered = fn.lower(state_shape, jax.ShapeDtypeStruct((), jnp.int32), _abstract(task.data), keys_shape, key_shape)
    ma = lowered.compile().memory_analysis()
    if ma is None:
        return dict.fromkeys(COMPILED_KEYS)
    out = {
        "temp_bytes": int(ma.temp_size_in_bytes),
        "argument_bytes": int(ma.argument_size_in_bytes),
        "output_bytes": int(ma.output_size_in_bytes),
        "alias_bytes": int(ma.alias_size_in_bytes),
        "generated_code_bytes": int(ma.generated_code_size_in_bytes),
    }
    return out


def estimate(task: Task, algorithm: Algorithm, topology, batch_size: int, worker_batch: int | None = None,
             mixing: str = "auto", compile: bool = True, compute_dtype: str = "float32", execution: str = "auto",
             device_bytes: int | None = None) -> dict:
    """Memory needed to simulate ``algorithm`` on ``task`` over ``topology`` with per-worker batch ``batch_size``.

    Args:
      task: the task, as for :func:`simdl.simulate`.
      algorithm: the algorithm, as for :func:`simdl.simulate`.
      topology: the topology, as for :func:`simdl.simulate`.
      batch_size: per-worker batch size, as for :func:`simdl.simulate`.
      worker_batch: workers whose gradients are computed at once, as for :func:`simdl.simulate`.
      mixing: mixing method, as for :func:`simdl.simulate`.
      compile: also lower and compile one step for XLA's buffer sizes (seconds for large models); ``False``
        gives only the exact sizes computed from shapes.
      compute_dtype: ``"float32"`` or ``"bfloat16"``, as for :func:`simdl.simulate` (only the compiled step's
        temporaries change: state and params stay float32).
      execution: per-worker strategy as for :func:`simdl.simulate` (``"auto"`` resolves for the current backend).
        The step is compiled for the current backend: to size a GPU run from a CPU machine pass ``"vmap"``, the GPU
        default (XLA's GPU buffer assignment differs in detail; the estimate is of the same arrays).
      device_bytes: a device's memory in bytes (e.g. ``80e9``); adds ``fits`` = ``peak_bytes <= device_bytes``.

    Returns:
      dict of Python ints (bytes) and numbers:

      * ``n_workers``, ``batch_size``, ``worker_batch`` (``None`` = all n at once), ``mixing`` (method name),
        ``compute_dtype``, ``execution`` (as given);
      * ``model_bytes``: one worker's parameters; ``params_bytes`` = n × ``model_bytes``;
      * ``state_bytes``: the whole stacked algorithm state (exact, ``jax.eval_shape`` of the algorithm's ``init``
        over the stacked parameters); ``state_copies`` = ``state_bytes / params_bytes``, the model-sized copies
        per worker the algorithm keeps (1 for SGD, 2 with momentum, more for tracking or relay buffers);
      * ``data_bytes``: the task's device data (training set, partitions, evaluation sets); ``keys_bytes``: the
        per-worker PRNG keys;
      * ``batch_bytes``: one step's sampled minibatches of all workers (inputs and labels), part of the temporaries;
      * compiled one-step figures from ``memory_analysis()`` (``None`` if the backend reports none, absent when
        ``compile=False``): ``temp_bytes`` (activations, gradients, mixing temporaries), ``argument_bytes``
        (state, keys and the data the step reads; evaluation sets are not arguments of the step),
        ``output_bytes``, ``alias_bytes`` (outputs written in place of the donated state),
        ``generated_code_bytes``; and ``peak_bytes`` = data + keys + state + temporaries + outputs not aliased to
        the state: the device memory resident while a step runs (the whole task data stays on device);
        ``fits`` when ``device_bytes`` is given.

    Simulated faults (:mod:`simdl.faults`) are not part of the lowered step; they add only per-step masks.

    Raises:
      ValueError: ``batch_size`` or ``worker_batch`` not a positive int, an invalid ``compute_dtype``, or
        topology/task size mismatch.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    worker_batch = _check_worker_batch(worker_batch)
    check_compute_dtype(compute_dtype)
    check_execution(execution)
    n = task.n_workers
    if topology.n != n:
        raise ValueError(f"topology {topology.name} has n={topology.n} workers but the task has n_workers={n}")
    mixer = make_mixer(topology, mixing)
    state_shape, keys_shape, key_shape = jax.eval_shape(lambda: init_state(task, algorithm, topology, mixer, 0))
    params_shape = jax.eval_shape(task.init_params, jax.random.PRNGKey(0))
    model_bytes = tree_bytes(params_shape)
    sample_shape = jax.eval_shape(lambda d, k: task.sample(d, k, 0, 0, int(batch_size)), task.data,
                                  jax.ShapeDtypeStruct(key_shape.shape, key_shape.dtype))
    out = {
        "n_workers": n, "batch_size": int(batch_size), "worker_batch": worker_batch, "mixing": mixer.method,
        "compute_dtype": compute_dtype, "execution": execution,
        "model_bytes": model_bytes, "params_bytes": n * model_bytes, "state_bytes": tree_bytes(state_shape),
        "data_bytes": tree_bytes(task.data), "keys_bytes": tree_bytes(keys_shape),
        "batch_bytes": n * tree_bytes(sample_shape),
    }
    out["state_copies"] = out["state_bytes"] / out["params_bytes"] if out["params_bytes"] else 0.0
    if compile:
        out.update(_compiled_sizes(task, algorithm, topology, mixer, int(batch_size), worker_batch, state_shape,
                                   keys_shape, key_shape, compute_dtype, execution))
        if out["temp_bytes"] is not None:  # resident during a step: all data, keys, state, temporaries, new outputs
            out["peak_bytes"] = (out["data_bytes"] + out["keys_bytes"] + out["state_bytes"] + out["temp_bytes"]
                                 + max(0, out["output_bytes"] - out["alias_bytes"]))
            if device_bytes is not None:
                out["fits"] = bool(out["peak_bytes"] <= device_bytes)
    return out


def _candidates(n: int) -> list[int | None]:
    """``[None, k₁ > k₂ > ... > 1]``: all workers at once, then powers of two below n."""
    ks, k = [], 1
    while k < n:
        ks.append(k)
        k *= 2
    return [None] + ks[::-1]


def suggest_worker_batch(task: Task, algorithm: Algorithm, topology, batch_size: int, budget_bytes: int,
                         mixing: str = "auto", compute_dtype: str = "float32", execution: str = "auto") -> int | None:
    """The largest ``worker_batch`` whose estimated ``peak_bytes`` fits ``budget_bytes`` (``compute_dtype``,
    ``execution``: as for :func:`estimate`).

    Tries all n workers at once, then powers of two below n, by bisection, compiling one step per try
    (:func:`estimate`). Bisection assumes the step's temporaries grow with the number of workers computed at once,
    true when activations dominate (large models or batches); for tiny models ``lax.map``'s own buffers can make a
    group need slightly more than ``vmap`` over all workers, and then ``None`` is returned whenever all fit.

    Returns:
      ``None`` when all n workers fit at once (no batching needed), else an int k ≥ 1 to pass as
      ``simulate(..., worker_batch=k)``.

    Raises:
      ValueError: ``budget_bytes`` not positive, the backend reports no memory analysis, or even ``worker_batch=1``
        needs more than the budget (the message gives its estimate: state and data alone may not fit).
    """
    if not budget_bytes > 0:
        raise ValueError(f"budget_bytes must be > 0, got {budget_bytes!r}")
    cands = _candidates(task.n_workers)
    cache: dict = {}

    def peak(i: int) -> int:
        if i not in cache:
            est = estimate(task, algorithm, topology, batch_size, cands[i], mixing, compute_dtype=compute_dtype,
                           execution=execution)
            if est["peak_bytes"] is None:
                raise ValueError("this backend reports no memory analysis; cannot suggest a worker_batch")
            cache[i] = est["peak_bytes"]
        return cache[i]

    if peak(0) <= budget_bytes:
        return None
    last = len(cands) - 1
    if peak(last) > budget_bytes:
        base = estimate(task, algorithm, topology, batch_size, 1, mixing, compile=False)
        raise ValueError(f"even worker_batch=1 needs about {format_bytes(peak(last))} (budget "
                         f"{format_bytes(budget_bytes)}); the algorithm state alone is "
                         f"{format_bytes(base['state_bytes'])} and the data {format_bytes(base['data_bytes'])}")
    lo, hi = 0, last  # peak(lo) > budget >= peak(hi); find the smallest index (largest k) that fits
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if peak(mid) <= budget_bytes:
            hi = mid
        else:
            lo = mid
    return cands[hi]


def format_bytes(b: float | None) -> str:
    """``1536`` -> ``"1.5 KiB"``; ``None`` -> ``"n/a"``."""
    if b is None:
        return "n/a"
    b = float(b)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(b) < 1024 or unit == "GiB":
            return f"{b:.0f} {unit}" if unit == "B" else f"{b:.1f} {unit}"
        b /= 1024
    return f"{b:.1f} TiB"  # pragma: no cover


def format_estimate(d: dict) -> str:
    """A few human-readable lines describing an :func:`estimate` result."""
    wb = "all at once" if d.get("worker_batch") is None else f"{d['worker_batch']} at a time"
    lines = [
        f"memory estimate: n={d['n_workers']} workers (gradients {wb}), batch {d['batch_size']} per worker, "
        f"mixing {d['mixing']}",
        f"  model        {format_bytes(d['model_bytes'])} per worker; stacked params {format_bytes(d['params_bytes'])}",
        f"  state        {format_bytes(d['state_bytes'])} ({d['state_copies']:.2f} model copies per worker)",
        f"  data         {format_bytes(d['data_bytes'])} on device; one step's minibatches "
        f"{format_bytes(d['batch_bytes'])}",
    ]
    if "peak_bytes" in d:
        lines.append(f"  compiled step: temporaries {format_bytes(d['temp_bytes'])}, arguments "
                     f"{format_bytes(d['argument_bytes'])}, outputs {format_bytes(d['output_bytes'])} "
                     f"(aliased {format_bytes(d['alias_bytes'])})")
        lines.append(f"  peak         {format_bytes(d['peak_bytes'])}")
    return "\n".join(lines)
