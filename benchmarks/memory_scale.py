"""Does a run fit on one GPU? :func:`simdl.memory.estimate` for ResNet-20 (GroupNorm) on CIFAR-10-sized data.

For n workers (default 1024), per-worker batch B = 32, D-SGD with momentum 0.9 on a ring, it compiles one
training step (no data is allocated: shapes only) for float32 and bfloat16 compute, with ``execution="vmap"``
(all workers at once: the GPU default), says whether the peak fits a device of ``--device-gb`` GB (default 80, an
H100/A100 80 GB) and, if not, the largest ``worker_batch`` that does (:func:`simdl.memory.suggest_worker_batch`).
The step is compiled for this machine's backend; run it on the GPU itself for XLA's GPU buffer assignment.

Usage::

    python benchmarks/memory_scale.py                    # n = 1024, 80 GB
    python benchmarks/memory_scale.py --n 256 --device-gb 40

Writes ``benchmarks/results/memory-scale-<device>-<date>.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path

import jax
import numpy as np

import simdl
from simdl.data.dataset import make_dataset
from simdl.memory import estimate, format_bytes, suggest_worker_batch


def cifar_like(n_train: int = 50_000, n_test: int = 10_000):
    """Zero uint8 images of CIFAR-10's shape (only the shapes matter here)."""
    x = np.zeros((n_train + n_test, 32, 32, 3), np.uint8)
    y = np.arange(n_train + n_test) % 10
    return make_dataset("cifar10-shaped", x[:n_train], y[:n_train], x[n_train:], y[n_train:], 10, 255.0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device-gb", type=float, default=80.0)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    task = simdl.tasks.classification(data=cifar_like(), model="resnet20", n_workers=args.n, partition="iid",
                                      model_kwargs={"norm": "group"})
    alg, topo = simdl.algorithms.dsgd(0.1, momentum=0.9), simdl.topologies.ring(args.n)
    budget = int(args.device_gb * 1e9)
    dev = jax.devices()[0]
    rows = []
    for dtype in ("float32", "bfloat16"):
        wbs = [None]
        first = estimate(task, alg, topo, args.batch_size, compute_dtype=dtype, execution="vmap", device_bytes=budget)
        if not first["fits"]:
            wbs.append(suggest_worker_batch(task, alg, topo, args.batch_size, budget, compute_dtype=dtype,
                                            execution="vmap"))
        for wb in wbs:
            est = first if wb is None else estimate(task, alg, topo, args.batch_size, worker_batch=wb,
                                                    compute_dtype=dtype, execution="vmap", device_bytes=budget)
            rows.append({"platform": dev.platform, "device_kind": dev.device_kind, "jax_version": jax.__version__,
                         "date": dt.date.today().isoformat(), "model": "resnet20", **est})
    print(f"ResNet-20 (GroupNorm), n = {args.n}, B = {args.batch_size}, D-SGD momentum 0.9; compiled on "
          f"{dev.device_kind} ({dev.platform}), jax {jax.__version__}; device budget {args.device_gb:g} GB")
    print(f"{'compute':9s} {'worker_batch':>12s} {'state':>10s} {'data':>10s} {'temporaries':>12s} {'peak':>10s} fits")
    for r in rows:
        print(f"{r['compute_dtype']:9s} {str(r['worker_batch'] or 'all'):>12s} {format_bytes(r['state_bytes']):>10s} "
              f"{format_bytes(r['data_bytes']):>10s} {format_bytes(r['temp_bytes']):>12s} "
              f"{format_bytes(r['peak_bytes']):>10s} {'yes' if r['fits'] else 'no'}")
    slug = "cpu" if dev.platform == "cpu" else dev.device_kind.lower().replace(" ", "-")
    out = Path(args.out or Path(__file__).parent / "results" / f"memory-scale-{slug}-{dt.date.today()}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
