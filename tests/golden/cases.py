"""The golden runs: a fixed set of small simulations whose histories were recorded before the runtime redesign
(``python tests/golden/cases.py record`` writes ``histories-<isa>.npz``) and must be reproduced by the current code.

XLA:CPU generates different vector code for different instruction sets (AVX-512 against AVX2), which changes the
last bits of reductions, so a history is bit-identical only on the instruction set it was recorded on: one store per
instruction set (:func:`isa`), each recorded from the same pre-redesign commit (7893301).

One run per algorithm family, a batched sweep, a faulty run, a checkpointed-and-resumed run, and (in a child
process with 8 virtual CPU devices) a sharded run. Only the public API is used, so the cases survive refactors.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def isa() -> str:
    """``"avx512"`` if the CPU has AVX-512F, ``"avx2"`` if it has AVX2, else ``"other"`` (from /proc/cpuinfo)."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return "other"
    return "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else "other"


STORE = HERE / f"histories-{isa()}.npz"
STEPS, EVAL = 24, 8


def _digits(n: int = 8, alpha: float = 0.5):
    import simdl

    return simdl.tasks.classification("digits", model="mlp", n_workers=n, partition="dirichlet", alpha=alpha,
                                      seed=0)


def _quad(n: int = 8):
    import simdl

    return simdl.tasks.random_quadratics(n_workers=n, dim=6, zeta2=1.0, seed=0)


def single_cases():
    """name -> thunk returning a history dict. Every thunk builds its own objects."""
    import simdl
    from simdl import algorithms as A
    from simdl import topologies as T

    def run(task, alg, topo, **kw):
        kw.setdefault("steps", STEPS)
        kw.setdefault("eval_every", EVAL)
        kw.setdefault("batch_size", 16)
        return simdl.simulate(task, alg, topo, seed=3, **kw).history

    return {
        "dsgd_ring_nesterov": lambda: run(_digits(), A.dsgd(0.1, momentum=0.9, nesterov=True), T.ring(8)),
        "dpsgd_torus": lambda: run(_digits(), A.dpsgd(0.1), T.torus(2, 4)),
        "cdmsgd_ring": lambda: run(_digits(), A.cdmsgd(0.05), T.ring(8)),
        "allreduce": lambda: run(_digits(), A.allreduce(0.1, momentum=0.9), T.complete(8)),
        "local_sgd_h4": lambda: run(_digits(), A.local_sgd(0.1, local_steps=4), T.complete(8)),
        "dynamic_averaging": lambda: run(_digits(), A.dynamic_averaging(0.1, delta=0.05), T.complete(8)),
        "relaysgd_dbt": lambda: run(_digits(), A.relaysgd(0.1), T.double_binary_trees(8)),
        "relaysum_grad_chain": lambda: run(_digits(), A.relaysum_grad(0.1), T.chain(8)),
        "qg_dsgdm_ring": lambda: run(_digits(), A.qg_dsgdm(0.1, mu=None), T.ring(8)),  # pre-μ=0.9-default
        "qg_adam_ring": lambda: run(_digits(), A.qg_adam(0.01, variant="paper"), T.ring(8)),  # pre-v2-default
        "d2_complete": lambda: run(_quad(), A.d2(0.05), T.complete(8), batch_size=4),
        "exact_diffusion_torus": lambda: run(_quad(), A.exact_diffusion(0.05), T.torus(2, 4), batch_size=4),
        "gradient_tracking_ring": lambda: run(_quad(), A.gradient_tracking(0.05), T.ring(8), batch_size=4),
        "sgp_one_peer": lambda: run(_digits(), A.sgp(0.1), T.one_peer_exponential(8)),
        "choco_topk_ring": lambda: run(_digits(), A.choco_sgd(0.1, compressor="top_k", compression=0.1), T.ring(8)),
        "faulty_dsgd_drop": lambda: run(_digits(), A.dsgd(0.1), T.ring(8),
                                        faults=simdl.faults.Faults(message_drop=0.3, straggler=0.2, lost="self")),
        "resumed_dsgd": lambda: _resumed(run),
    }


def _resumed(run):
    """Checkpoint at step 8, stop, resume to 24: the history of the resumed run."""
    import simdl
    from simdl import algorithms as A
    from simdl import topologies as T

    with tempfile.TemporaryDirectory() as d:
        run(_digits(), A.dsgd(0.1, momentum=0.9), T.ring(8), steps=EVAL, checkpoint_dir=d, checkpoint_every=EVAL)
        task, alg, topo = _digits(), A.dsgd(0.1, momentum=0.9), T.ring(8)
        return simdl.simulate(task, alg, topo, steps=STEPS, batch_size=16, seed=3, eval_every=EVAL,
                              checkpoint_dir=d, checkpoint_every=EVAL, resume=True).history


def batched_case():
    """Four runs (2 seeds x 2 learning rates) of D-SGD as one batched program: name -> history."""
    import inspect

    import simdl
    from simdl import topologies as T

    points = [(0, 0.05), (0, 0.2), (1, 0.05), (1, 0.2)]
    batch = getattr(simdl, "simulate_batch", None)
    if batch is not None and "hyperparams" in inspect.signature(batch).parameters:
        # the redesigned API: one algorithm, per-run hyperparameters as traced state
        algorithm = simdl.algorithms.dsgd(0.05)
        results = simdl.simulate_batch([_digits()] * 4, algorithm, T.ring(8), steps=STEPS, batch_size=16,
                                       eval_every=EVAL, seeds=[s for s, _ in points],
                                       hyperparams=[{"learning_rate": lr} for _, lr in points])
    else:  # the API the golden histories were recorded with
        import importlib

        from simdl.algorithms import dsgd

        results = importlib.import_module("simdl").simulate_batch(
            [_digits()] * 4, lambda hp: dsgd(lambda t: hp["learning_rate"]),
            [{"learning_rate": lr} for _, lr in points], T.ring(8), steps=STEPS, batch_size=16, eval_every=EVAL,
            seeds=[s for s, _ in points])
    return {f"batched_seed{s}_lr{lr}": r.history for (s, lr), r in zip(points, results, strict=True)}


def sharded_case():
    """D-SGD and RelaySGD with the worker axis sharded over 8 devices (run in a child with 8 virtual devices)."""
    import simdl
    from simdl import algorithms as A
    from simdl import topologies as T

    out = {}
    for name, alg, topo in [("sharded_dsgd_ring", A.dsgd(0.1, momentum=0.9), T.ring(16)),
                            ("sharded_relaysgd_chain", A.relaysgd(0.1), T.chain(16))]:
        out[name] = simdl.simulate(_digits(16), alg, topo, steps=STEPS, batch_size=16, seed=3, eval_every=EVAL,
                                   devices=8).history
    return out


def _flat(name: str, hist: dict) -> dict:
    return {f"{name}/{k}": np.asarray(v) for k, v in hist.items()}


def sharded_child() -> None:
    out = {name: {k: np.asarray(v).tolist() for k, v in h.items()} for name, h in sharded_case().items()}
    print("GOLDEN-SHARDED:" + json.dumps(out))


def run_sharded_subprocess() -> dict:
    import os
    import subprocess

    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, str(Path(__file__)), "sharded-child"], env=env, capture_output=True,
                          text=True, timeout=900)
    line = [x for x in proc.stdout.splitlines() if x.startswith("GOLDEN-SHARDED:")]
    if proc.returncode or not line:
        raise RuntimeError(f"sharded golden child failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return {k: {m: np.asarray(v) for m, v in h.items()} for k, h in json.loads(line[0].split(":", 1)[1]).items()}


def record() -> None:
    arrays = {}
    for name, thunk in single_cases().items():
        arrays |= _flat(name, thunk())
        print("recorded", name, flush=True)
    for name, hist in batched_case().items():
        arrays |= _flat(name, hist)
    for name, hist in run_sharded_subprocess().items():
        arrays |= _flat(name, hist)
    np.savez_compressed(STORE, **arrays)
    print(f"wrote {len(arrays)} arrays to {STORE}")


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent.parent))
    {"record": record, "sharded-child": sharded_child}[sys.argv[1]]()
