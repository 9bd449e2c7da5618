"""What each shipped paper config costs at full scale: runs, steps, training FLOPs and time on this device.

    python benchmarks/config_costs.py                      # every configs/*.toml, measured on this device
    python benchmarks/config_costs.py --gpu-tflops 60      # plus a GPU column at an assumed sustained rate
    python benchmarks/config_costs.py configs/xu_cifar10_clr.toml --markdown

For every config it counts the runs (``[[runs]]`` × ``[train] seeds``, or the sweep grid), the steps per run
(``[train] steps``, or ``epochs · ⌈(N_train / n) / B⌉``) and the worker-samples a run processes (``n · B · steps``).
Training FLOPs per sample are XLA's ``cost_analysis()`` of one worker's forward and backward pass at batch B on this
device (gossip, the optimizer and evaluation are not counted: they add a few percent on these models). The time
column divides by the rate of that same compiled step measured here (one worker, batch B): on CPU simdl runs the
workers' convolutions one after another at about that rate (``execution="map"``, benchmarks/RESULTS.md), so it
estimates a full run on this machine (for MLPs, whose workers simdl vectorizes, it is an upper bound: one worker's
step at batch B is dominated by dispatch). ``--gpu-tflops`` adds an estimate at an assumed sustained rate (not a
measurement). Datasets are not needed: inputs are zeros of the dataset's shape.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from simdl.config import expand_runs, load_config, train_seeds  # noqa: E402
from simdl.data.stand_in import SHAPES  # noqa: E402
from simdl.models import get_model  # noqa: E402
from simdl.sweep import expand_grid  # noqa: E402

#: Training-set sizes (tensorflow-datasets train splits; digits: the embedded train split).
TRAIN_SIZES = {"digits": 1437, "mnist": 60000, "fashion_mnist": 60000, "emnist": 112800, "cifar10": 50000,
               "cifar100": 50000}
#: What a full run needs before it can start.
PREPARATION = {"digits": "none (embedded)", "synthetic": "none (generated)"}


def preparation(dataset: str) -> str:
    return PREPARATION.get(dataset, f"`tfds build {dataset} --file_format array_record`")


def run_specs(path: Path) -> list[dict]:
    """Each run of a config as ``{"task", "train"}`` (seeds expanded)."""
    cfg = load_config(path, extra_sections=("sweep",))
    if "sweep" in cfg:
        return [{"task": s["task"], "train": s["train"]} for s in expand_grid(cfg)]
    train = cfg.get("train", {})
    seeds = train_seeds(train)
    return [{"task": cfg.get("task", {}), "train": train} for _ in expand_runs(cfg) for _ in seeds]


def steps_of(task: dict, train: dict) -> int:
    if "steps" in train:
        return int(train["steps"])
    n, b = int(task.get("n_workers", 16)), int(train.get("batch_size", 32))
    shard = TRAIN_SIZES[task.get("dataset", "digits")] // n
    return int(round(float(train["epochs"]) * math.ceil(shard / b)))


def input_shape(dataset: str) -> tuple[tuple[int, ...], int]:
    if dataset == "digits":
        return (8, 8, 1), 10
    if dataset == "synthetic":  # FedProx Synthetic(α, β): 60 features, 10 classes (the generator's defaults)
        return (60,), 10
    return SHAPES[dataset]


def step_cost(dataset: str, model: str, model_kwargs: dict, batch: int, reps: int) -> tuple[float, float]:
    """(training FLOPs per sample, measured seconds per sample) of one worker's forward + backward at ``batch``."""
    shape, classes = input_shape(dataset)
    net = get_model(model, classes, **model_kwargs)
    x = jnp.zeros((batch, *shape), jnp.float32)
    y = jnp.zeros((batch,), jnp.int32)
    params = net.init(jax.random.PRNGKey(0), x[:1])

    def loss(p):
        logits = net.apply(p, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    compiled = jax.jit(jax.value_and_grad(loss)).lower(params).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    flops = float(cost["flops"]) / batch
    jax.block_until_ready(compiled(params))
    best = math.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(params))
        best = min(best, time.perf_counter() - t0)
    return flops, best / batch


def fmt_time(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} d"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("configs", nargs="*", help="config files (default: every configs/*.toml)")
    p.add_argument("--gpu-tflops", type=float, default=None,
                   help="also estimate GPU time at this assumed sustained TFLOP/s (not a measurement)")
    p.add_argument("--reps", type=int, default=3, help="timed repetitions of each model's step (best is kept)")
    p.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = p.parse_args(argv)
    paths = [Path(c) for c in args.configs] or sorted((ROOT / "configs").glob("*.toml"))
    dev = jax.devices()[0]
    print(f"device: {dev.platform} ({dev.device_kind}), jax {jax.__version__}; time = training FLOPs / the "
          f"measured rate of one worker's step at batch B on this device", flush=True)
    costs: dict = {}
    rows = []
    for path in paths:
        specs = run_specs(path)
        total_flops, total_s, datasets, models, steps = 0.0, 0.0, set(), set(), set()
        for s in specs:
            task, train = s["task"], s["train"]
            dataset, model = task.get("dataset", "digits"), task.get("model", "mlp")
            kw = dict(task.get("model_kwargs", {}))
            b, n = int(train.get("batch_size", 32)), int(task.get("n_workers", 16))
            key = (dataset, model, tuple(sorted(kw.items())), b)
            if key not in costs:
                costs[key] = step_cost(dataset, model, kw, b, args.reps)
            flops, sec = costs[key]
            st = steps_of(task, train)
            total_flops += flops * n * b * st
            total_s += sec * n * b * st
            datasets.add(dataset)
            models.add(model)
            steps.add(st)
        row = {"config": path.stem, "runs": len(specs), "steps": "/".join(str(s) for s in sorted(steps)),
               "dataset": ", ".join(sorted(datasets)), "model": ", ".join(sorted(models)),
               "preparation": "; ".join(preparation(d) for d in sorted(datasets)),
               "pflop": total_flops / 1e15, "time_here": fmt_time(total_s),
               "time_gpu": fmt_time(total_flops / (args.gpu_tflops * 1e12)) if args.gpu_tflops else "—"}
        rows.append(row)
        print(f"{row['config']}: {row['runs']} runs × {row['steps']} steps, {row['pflop']:.3g} PFLOP, "
              f"{row['time_here']} here, GPU {row['time_gpu']}", flush=True)
    if args.markdown:
        print("\n| config | runs | steps/run | dataset preparation | training PFLOP | time here | GPU (assumed) |")
        print("| --- | ---: | ---: | --- | ---: | ---: | ---: |")
        for r in rows:
            print(f"| `{r['config']}` | {r['runs']} | {r['steps']} | {r['preparation']} | {r['pflop']:.3g} | "
                  f"{r['time_here']} | {r['time_gpu']} |")
    return 0


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    raise SystemExit(main())
