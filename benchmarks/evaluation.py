"""Evaluation cost: what the runner's between-chunk evaluation costs against training, and its memory.

Setting (the issue's worst case on CPU): SmallCNN on MNIST-sized synthetic data (60k training, 10k test images of
28×28×1, random uint8 with random labels), n workers (default 64), IID split, D-SGD on a ring, per-worker batch
B = 32, default evaluation settings of :func:`simdl.tasks.classification` (averaged model x̄ on up to 10k test
and 10k training samples; every worker's own model on ``worker_eval_samples="auto"`` test samples).

It runs ``simdl.simulate`` for ``2 · K`` steps with ``eval_every = K`` (K = the default ``steps // 20`` of a run of
``--epochs`` epochs), takes the second chunk's training time and the second evaluation's time (the first ones
compile), and reports:

* ``train_s_per_step``, ``eval_s`` (one evaluation), the projected share of evaluation in a run of ``--epochs``
  epochs with the default 20 evaluations: ``20 · eval_s / (steps · train_s_per_step + 20 · eval_s)``;
* memory: the process's peak RSS (``getrusage``; the whole process, data included) and XLA's
  ``memory_analysis()`` of the compiled evaluation (temporaries: the part that grows with what is evaluated
  at once), for the default settings and for ``--full`` (every worker on every test sample).

Usage::

    python benchmarks/evaluation.py                 # n = 64, 10 epochs
    python benchmarks/evaluation.py --n 16 --epochs 20 --full

Prints a table and writes ``benchmarks/results/evaluation-<device>-<date>.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import resource
import sys
import time
from pathlib import Path

import jax
import numpy as np

import simdl
from simdl.data.dataset import make_dataset
from simdl.runtime import build_evaluate


def mnist_like(n_train: int = 60_000, n_test: int = 10_000, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n_train + n_test, 28, 28, 1), dtype=np.uint8)
    y = rng.integers(0, 10, n_train + n_test)
    return make_dataset("synthetic28x28x1", x[:n_train], y[:n_train], x[n_train:], y[n_train:], 10, 255.0)


def eval_temp_bytes(task, alg, state) -> int:
    evaluate = build_evaluate(task, alg)
    compiled = jax.jit(lambda d, s: evaluate(d, s)).lower(task.data, state).compile()
    mem = compiled.memory_analysis()
    return int(getattr(mem, "temp_size_in_bytes", 0)) if mem is not None else 0


def measure(ds, n: int, epochs: int, batch_size: int, worker_eval_samples, model: str) -> dict:
    task = simdl.tasks.classification(data=ds, model=model, n_workers=n, partition="iid",
                                      worker_eval_samples=worker_eval_samples)
    steps = epochs * (task.shard_size // batch_size)
    k = max(1, steps // 20)
    alg, topo = simdl.algorithms.dsgd(0.01), simdl.topologies.ring(n)
    stamps: list[float] = []
    t0 = time.perf_counter()
    res = simdl.simulate(task, alg, topo, steps=2 * k, batch_size=batch_size, eval_every=k,
                         callback=lambda step, row: stamps.append(time.perf_counter()))
    evals = res.info.get("eval_time_s", 0.0) - res.info.get("eval_first_time_s", 0.0)
    chunk = stamps[1] - stamps[0] - evals
    train_step = chunk / k
    share = 20 * evals / (steps * train_step + 20 * evals)
    return {"model": model, "n": n, "batch_size": batch_size, "epochs": epochs, "run_steps": steps,
            "eval_every": k, "worker_eval_samples": worker_eval_samples, "evaluation": res.info["task"]["evaluation"],
            "execution": res.info.get("execution"), "conv_impl": res.info.get("conv_impl"),
            "train_s_per_step": train_step, "eval_s": evals, "eval_share_of_run": share,
            "eval_temp_bytes": eval_temp_bytes(task, alg, res.state),
            "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin"
                                                                                  else 1024),
            "measure_wall_s": time.perf_counter() - t0}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--model", default="cnn")
    p.add_argument("--full", action="store_true", help="also measure worker_eval_samples=None (every test sample)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    ds = mnist_like()
    dev = jax.devices()[0]
    info = {"platform": dev.platform, "device_kind": dev.device_kind, "jax_version": jax.__version__,
            "date": dt.date.today().isoformat()}
    rows = [measure(ds, args.n, args.epochs, args.batch_size, "auto", args.model)]
    if args.full:
        rows.append(measure(ds, args.n, args.epochs, args.batch_size, None, args.model))
    print(f"device {info['device_kind']} ({info['platform']}), jax {info['jax_version']}")
    print(f"{'model':6s} {'n':>5s} {'worker samples':>14s} {'strategy':>16s} {'train s/step':>12s} {'eval s':>8s} "
          f"{'share of run':>12s} {'eval temp MiB':>13s} {'peak RSS MiB':>12s}")
    for r in rows:
        ws = r["evaluation"]["worker_test_samples"]
        print(f"{r['model']:6s} {r['n']:5d} {ws:14d} {r['execution'] + '/' + str(r['conv_impl']):>16s} "
              f"{r['train_s_per_step']:12.3f} {r['eval_s']:8.2f} {100 * r['eval_share_of_run']:11.1f}% "
              f"{r['eval_temp_bytes'] / 2**20:13.1f} {r['max_rss_bytes'] / 2**20:12.0f}")
    print(f"(share of run: 20 evaluations in a run of {args.epochs} epochs = {rows[0]['run_steps']} steps)")
    slug = "cpu" if info["platform"] == "cpu" else info["device_kind"].lower().replace(" ", "-")
    out = Path(args.out or Path(__file__).parent / "results" / f"evaluation-{slug}-{info['date']}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps([{**info, **r} for r in rows], indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
