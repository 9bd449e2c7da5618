"""Throughput benchmark: simulated decentralized training vs one big model, per-worker loops and torch.func.

For each model (MLP on 8×8×1, small CNN on 8×8×1 and 28×28×1, ResNet-20 with GroupNorm on 32×32×3, VGG-11 with
GroupNorm on 32×32×3), each worker count n and each algorithm (D-SGD on a ring, RelaySGD on a chain), with
per-worker batch B = 32, it measures:

* **simulator**: worker-samples per second (n · B · steps / seconds) of the real runner code path with the
  library's defaults (``execution="auto"``, the model's default ``conv_impl="auto"``):
  ``simdl.simulate(classification(..., data=synthetic, partition="iid"), alg, topo, steps=(1 + R)·K,
  eval_every=K)``. A ``callback`` timestamps every evaluation; chunk j's time is the gap between evaluations
  j − 1 and j (the compiled ``lax.scan`` of K steps plus one evaluation) minus the evaluation's time. The first
  chunk (which also compiles) is not timed; the reported time is the fastest of the R timed chunks (least
  disturbed by other processes on a shared machine). Every row names the strategy that ran, from
  ``result.info`` (``execution``, ``map_batch_size``, ``conv_impl``, ``conv_layers``).
* **bound**: one model trained at batch n·B through the same code path (``classification(..., n_workers=1)``,
  ``ring(1)``, D-SGD = plain SGD), same K and R, on the same device in the same process. The bound does the same
  arithmetic without the worker axis; ``ratio_to_bound`` = simulator / bound samples per second.
* **references** (how code without simdl runs), same model, B, SGD and ring gossip: (a) JAX, FedJAX-style: a
  Python loop over workers, each calling a jitted single-worker ``value_and_grad`` + SGD update on its next
  minibatch (sliced from host memory), then a gossip average (one jitted call per worker); (b) PyTorch per-worker
  loop, when ``torch`` is importable: n ``nn.Module`` copies stepped in a loop, then the same gossip; (c) PyTorch
  ``torch.func``, the stacked-parameter version a researcher would write: ``stack_module_state(models)``,
  ``vmap(grad(loss of functional_call(base on the meta device, (params, buffers), (x,))))``, the SGD update on the
  stacked tensors and ring gossip ``(roll(+1) + x + roll(-1)) / 3`` on them. Each reference runs one warm-up step
  and then up to ``steps`` timed steps (fastest reported); ``--time-budget`` caps the seconds each may take.
  ``ratio_to_jax_loop`` / ``ratio_to_torch_loop`` / ``ratio_to_torch_func`` = simulator / reference samples per
  second; ``ratio_to_best_torch`` uses the faster of the two PyTorch references. A failing PyTorch reference is
  recorded (``torch_loop_error`` / ``torch_func_error``), not raised.
* **GEMM rate and FLOPs**: the fp32 rate of one square matmul (``--gemm-size``; 4096 on CPU, 8192 elsewhere)
  through jax (``precision=HIGHEST``, i.e. true fp32; off CPU also the default precision, which may use TF32) and
  through torch, in GFLOP/s. The model's FLOPs per sample (forward + backward) come from XLA's cost analysis of
  the compiled single-worker ``value_and_grad`` of the runner's loss at batch B, built with ``conv_impl="lax"``
  (JAX's own convolution autodiff, so the count is the model's, not an implementation's; it includes the
  elementwise work); ``achieved_gflops`` = FLOPs per sample × simulator samples/s (gossip and the optimizer are
  not counted) and ``frac_gemm`` = achieved / jax GEMM rate.
* **compile time**: ``result.info["compile_time_s"]`` (the first chunk call: tracing, compilation and one chunk's
  execution) minus one timed chunk.
* **evaluation**: the runner evaluates between chunks (here on 8 test samples, but every worker's own model too);
  its time, measured separately with the same compiled function on the final state (:func:`time_evaluation`),
  is subtracted from every chunk.
* **memory**: ``peak_bytes`` of :func:`simdl.memory.estimate` (data + state + XLA's temporaries and non-donated
  outputs from ``memory_analysis()`` of one compiled step; not with ``--quick``), the device's
  ``memory_stats()["peak_bytes_in_use"]`` read right after the simulator's runs where the backend reports it
  (GPU; the GPU suite runs every row in its own process, so it is that row's own), and the process's maximum
  resident set size after the row (``resource.getrusage``, a running maximum over the process).

Usage::

    python benchmarks/throughput.py --quick        # MLP n=64, CNN 8×8 n=16, CNN 28×28 n=16; < 3 min on 2 CPU cores
    python benchmarks/throughput.py                # full suite (FULL_MODELS × FULL_N; per-model caps: MAX_N_CPU)
    python benchmarks/throughput.py --models mlp --n 1024 --algorithms dsgd
    python benchmarks/throughput.py --conv-sweep --n 16   # CNN: time every conv_impl × worker_batch option
    python benchmarks/throughput.py --suite gpu    # the GPU suite (GPU_SUITE), one process per row; gpu.sh runs it
    python benchmarks/throughput.py --suite gpu --tiny   # the same code path at toy sizes (CPU, < 1 min)

Prints a table and writes ``benchmarks/results/throughput-<device>-<date>[-quick|-custom|-gpu].json``: one
record per row, each naming the device kind, platform, jax version, date, the strategy and all settings.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import inspect
import json
import math
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import simdl
import simdl.models
from simdl.data.dataset import make_dataset
from simdl.memory import estimate
from simdl.runtime import build_evaluate

#: spec name -> (simdl model, input shape HWC, model kwargs for the table). The model's conv_impl is its default.
MODEL_SPECS = {
    "mlp": ("mlp", (8, 8, 1), {}),
    "cnn8": ("cnn", (8, 8, 1), {}),
    "cnn": ("cnn", (28, 28, 1), {}),
    "resnet20": ("resnet20", (32, 32, 3), {"norm": "group"}),
    "vgg11": ("vgg11", (32, 32, 3), {"norm": "group"}),
}
#: models of the full run (VGG-11 only in the GPU suite or when asked for: minutes per step on a small CPU)
FULL_MODELS = ("mlp", "cnn8", "cnn", "resnet20")
#: steps per timed chunk K and timed chunks R per model (full run; --quick: QUICK_CHUNK, 1 timed chunk): a chunk
#: should take well over the evaluation between chunks and the timer resolution.
CHUNK = {"mlp": 50, "cnn8": 10, "cnn": 1, "resnet20": 1, "vgg11": 1}
REPEATS = {"mlp": 3, "cnn8": 3, "cnn": 2, "resnet20": 1, "vgg11": 1}
QUICK_CHUNK = {"mlp": 20, "cnn8": 5, "cnn": 1, "resnet20": 1, "vgg11": 1}
#: timed steps of each reference (after one warm-up step), full run and --quick
LOOP_STEPS = {"mlp": 10, "cnn8": 5, "cnn": 2, "resnet20": 1, "vgg11": 1}
QUICK_LOOP_STEPS = {"mlp": 5, "cnn8": 3, "cnn": 1, "resnet20": 1, "vgg11": 1}
ALGORITHMS = ("dsgd", "relaysgd")
FULL_N = (16, 64, 256, 1024)
#: largest n per model in the full run on a small CPU (about 15 minutes on 2 cores with every column); override
#: with --n and --max-n.
MAX_N_CPU = {"mlp": 64, "cnn8": 64, "cnn": 64, "resnet20": 64, "vgg11": 16}
#: --quick: these (model, n) rows, D-SGD only, every column, no memory analysis
QUICK = {"rows": (("mlp", 64), ("cnn8", 16), ("cnn", 16)), "algorithms": ("dsgd",)}
CONV_IMPLS = ("auto", "xla", "patches", "lax")
EXECUTIONS = ("auto", "vmap", "map", "loop")
NUM_CLASSES = 10
LEARNING_RATE = 0.01
#: GEMM size per platform (fp32 square matmul); --tiny uses TINY_GEMM
GEMM_SIZE = {"cpu": 4096}
GEMM_SIZE_ACCEL = 8192
TINY_GEMM = 256

#: The GPU suite: one process per row (so each row's device peak is its own), D-SGD unless ``algorithms`` says
#: otherwise. ``budget``: seconds each reference (JAX loop, PyTorch loop, torch.func) may take in that row
#: (``--time-budget`` overrides); ``loop_max_n``: no per-worker loops above this n (each of their steps is n
#: sequential single-worker steps); ``timeout``: hard limit of the row's process. Sized for one H200 in ≤ 8 min
#: (without one at hand: adjust after the first run); the rows most likely to be slow come last, where the suite's
#: budget cuts first.
GPU_SUITE = (
    {"spec": "cnn", "n": 256, "chunk": 20, "repeats": 2, "budget": 20, "timeout": 100},
    {"spec": "resnet20", "n": 64, "chunk": 10, "repeats": 2, "budget": 20, "timeout": 110},
    {"spec": "vgg11", "n": 16, "chunk": 10, "repeats": 2, "budget": 20, "timeout": 120,
     "algorithms": ("dsgd", "relaysgd")},
    {"spec": "resnet20", "n": 256, "chunk": 5, "repeats": 2, "budget": 20, "timeout": 110},
    {"spec": "resnet20", "n": 1024, "chunk": 2, "repeats": 2, "budget": 25, "timeout": 130, "loop_max_n": 256},
)
#: the same code path at toy sizes, for a CPU test (about 1 min on 2 quiet cores; the timeouts leave room for a
#: loaded machine): every column, both algorithms, the loop_max_n skip, a convolutional model (the GPU suite's
#: models compile for minutes on a small CPU)
TINY_SUITE = (
    {"spec": "mlp", "n": 2, "chunk": 2, "repeats": 1, "budget": 10, "timeout": 100, "batch_size": 8,
     "algorithms": ("dsgd", "relaysgd")},
    {"spec": "cnn8", "n": 4, "chunk": 1, "repeats": 1, "budget": 10, "timeout": 100, "batch_size": 4,
     "loop_max_n": 2, "memory_analysis": False, "algorithms": ("dsgd",)},
)
GPU_SUITE_BUDGET_S = 440  # the suite's whole wall-clock budget (rows after it are skipped)
TINY_SUITE_BUDGET_S = 210


# --------------------------------------------------------------------------- settings and data


def device_info() -> dict:
    dev = jax.devices()[0]
    return {"platform": dev.platform, "device_kind": dev.device_kind, "device_count": jax.device_count(),
            "jax_version": jax.__version__, "python": sys.version.split()[0], "cpu_count": os.cpu_count()}


def device_slug(info: dict) -> str:
    kind = info["device_kind"] if info["platform"] != "cpu" else "cpu"
    return re.sub(r"[^a-z0-9]+", "-", kind.lower()).strip("-") or "device"


def synthetic_dataset(shape: tuple[int, ...], n_train: int, n_test: int = 8, seed: int = 0):
    """Random uint8 images of ``shape`` with random labels in 0..9, as a :class:`simdl.data.Dataset`."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n_train + n_test, *shape), dtype=np.uint8)
    y = rng.integers(0, NUM_CLASSES, n_train + n_test)
    return make_dataset(f"synthetic{'x'.join(map(str, shape))}", x[:n_train], y[:n_train], x[n_train:],
                        y[n_train:], NUM_CLASSES, 255.0)


def make_task(ds, model: str, n: int, model_kwargs: dict):
    """``model`` is a simdl model name (``MODEL_SPECS[spec][0]``)."""
    return simdl.tasks.classification(data=ds, model=model, n_workers=n, partition="iid", max_eval_samples=8,
                                      eval_batch_size=8, model_kwargs=model_kwargs)


def make_algorithm(name: str, n: int):
    """``(algorithm, topology)``: D-SGD (plain SGD) on a ring or RelaySGD (paper defaults) on a chain."""
    T = simdl.topologies
    if name == "dsgd":
        return simdl.algorithms.dsgd(LEARNING_RATE), T.ring(n)
    if name == "relaysgd":
        return simdl.algorithms.relaysgd(LEARNING_RATE), T.chain(n)
    raise ValueError(f"unknown algorithm {name!r}; valid: {', '.join(ALGORITHMS)}")


def device_memory() -> dict:
    """``peak_bytes_in_use`` / ``bytes_limit`` of the first device where the backend reports them (GPU), else
    ``None`` values (CPU)."""
    try:
        stats = jax.devices()[0].memory_stats() or {}
    except Exception:  # some backends raise instead of returning None
        stats = {}
    return {"device_peak_bytes": stats.get("peak_bytes_in_use"), "device_bytes_limit": stats.get("bytes_limit")}


# --------------------------------------------------------------------------- strategy


def resolved_strategy(res_info: dict) -> dict:
    """The per-worker strategy that ran, from ``simdl.simulate``'s ``result.info``: ``execution``,
    ``map_batch_size``, ``conv_impl`` (``None`` for a dense model) and ``conv_layers``."""
    return {k: res_info.get(k) for k in ("execution", "map_batch_size", "conv_impl", "conv_layers")}


# --------------------------------------------------------------------------- timing through the runner


def time_evaluation(task, alg, state, reps: int = 2) -> float:
    """Seconds of the runner's between-chunk evaluation (compiled as :func:`simdl.simulate` compiles it), fastest
    of ``reps`` after one compiling call."""
    evaluate = build_evaluate(task, alg)
    run_eval = jax.jit(lambda data, state: evaluate(data, state))
    jax.block_until_ready(run_eval(task.data, state))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(run_eval(task.data, state))
        times.append(time.perf_counter() - t0)
    return min(times)


def time_simulate(task, alg, topo, batch_size: int, chunk: int, repeats: int, worker_batch=None,
                  execution: str = "auto") -> dict:
    """Run ``simdl.simulate`` for ``(1 + repeats) · chunk`` steps, evaluating every ``chunk`` steps; time each chunk
    after the first by the gap between evaluation callbacks, minus the evaluation's own time (the runner's own
    timing of its evaluations after the first, ``result.info["eval_time_s"]``, or where the installed simdl does not
    report it, measured after the run with :func:`time_evaluation`).

    Returns dict: ``seconds_per_step`` (fastest timed chunk / chunk), ``chunk_seconds`` (all timed chunks, evaluation
    subtracted), ``eval_s`` (from ``result.info``'s evaluation times where simdl reports them, else re-measured),
    ``eval_source``, ``compile_s`` (first chunk call minus one timed chunk), ``worker_samples_per_s``,
    ``mixing``, ``compiles``, ``info`` (``result.info``).

    Raises:
      RuntimeError: the run diverged (the timing would be of a shortened run).
    """
    stamps: list[float] = []
    res = simdl.simulate(task, alg, topo, steps=(1 + repeats) * chunk, batch_size=batch_size, seed=0,
                         eval_every=chunk, callback=lambda step, row: stamps.append(time.perf_counter()),
                         worker_batch=worker_batch, execution=execution)
    if res.diverged_at is not None or len(stamps) != 1 + repeats:
        raise RuntimeError(f"run diverged at step {res.diverged_at}; lower LEARNING_RATE")
    info = res.info
    if info.get("evaluations", 0) >= 2 and info.get("eval_first_time_s") is not None:
        # the runner times its evaluations: the mean of those after the first (which compiles)
        eval_s = (info["eval_time_s"] - info["eval_first_time_s"]) / (info["evaluations"] - 1)
        eval_source = "simulate.info"
    else:
        eval_s, eval_source = time_evaluation(task, alg, res.state), "re-measured"
    chunks = [max(b - a - eval_s, 1e-9) for a, b in zip(stamps, stamps[1:], strict=False)]
    best = min(chunks)
    return {"seconds_per_step": best / chunk, "chunk_seconds": chunks, "eval_s": eval_s, "eval_source": eval_source,
            "compile_s": max(0.0, res.info["compile_time_s"] - best), "mixing": res.info["mixing"],
            "worker_samples_per_s": task.n_workers * batch_size * chunk / best, "compiles": res.info["compiles"],
            "info": res.info}


# --------------------------------------------------------------------------- FLOPs and GEMM rate


def flops_per_sample(ds, model: str, model_kwargs: dict, batch_size: int) -> float:
    """Forward + backward FLOPs per sample of one worker: XLA's ``cost_analysis()["flops"]`` of the compiled
    single-worker ``value_and_grad`` of the runner's loss at batch ``batch_size`` (``conv_impl="lax"`` for
    convolutional models: JAX's own autodiff, so the count is the model's), divided by ``batch_size``."""
    try:
        task = make_task(ds, model, 1, {**model_kwargs, "conv_impl": "lax"})
    except ValueError:  # a model without convolutions (no conv_impl)
        task = make_task(ds, model, 1, model_kwargs)
    params = jax.eval_shape(task.init_params, jax.random.PRNGKey(0))
    batch = jax.eval_shape(lambda d, k: task.sample(d, k, 0, 0, batch_size), task.data, jax.random.PRNGKey(0))
    cost = jax.jit(jax.value_and_grad(task.loss)).lower(params, batch).compile().cost_analysis()
    if isinstance(cost, (list, tuple)):  # older jax: one dict per computation
        cost = cost[0]
    return float(cost["flops"]) / batch_size


def _best_time(fn, sync, reps: int) -> float:
    fn()
    sync()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return min(times)


def torch_device(platform: str):
    """``"cuda"`` when jax runs on a GPU and torch sees one, else ``"cpu"`` (a torch device name)."""
    import torch

    return "cuda" if platform == "gpu" and torch.cuda.is_available() else "cpu"


def _torch_sync(device: str):
    import torch

    return torch.cuda.synchronize if device == "cuda" else (lambda: None)


def gemm_rates(size: int, platform: str, use_torch: bool, reps: int | None = None) -> dict:
    """GFLOP/s of one fp32 ``size``³ matmul (2·size³ FLOPs, fastest of ``reps`` after a warm-up): jax with
    ``precision=HIGHEST`` (``gemm_gflops_jax``), off CPU also jax's default precision (``gemm_gflops_jax_default``,
    may use TF32), and torch on :func:`torch_device` when ``use_torch`` (``gemm_gflops_torch``; TF32 off, torch's
    default). Torch runs first and frees its cache, so jax's device peak is not shared with it."""
    reps = reps or (2 if platform == "cpu" else 10)
    flops = 2.0 * size**3
    out = {"gemm_size": size, "gemm_dtype": "float32", "gemm_gflops_torch": None, "gemm_gflops_jax_default": None}
    if use_torch:
        try:
            import torch

            dev = torch_device(platform)
            g = torch.Generator(device=dev).manual_seed(0)
            a = torch.randn(size, size, device=dev, generator=g)
            b = torch.randn(size, size, device=dev, generator=g)
            out["gemm_gflops_torch"] = flops / _best_time(lambda: a @ b, _torch_sync(dev), reps) / 1e9
            out["gemm_torch_device"], out["gemm_torch_threads"] = dev, torch.get_num_threads()
            del a, b
            if dev == "cuda":
                torch.cuda.empty_cache()
        except Exception as err:  # optional
            out["gemm_torch_error"] = f"{type(err).__name__}: {err}"
    ka, kb = jax.random.split(jax.random.PRNGKey(0))
    a = jax.random.normal(ka, (size, size), jnp.float32)
    b = jax.random.normal(kb, (size, size), jnp.float32)
    hi = jax.jit(lambda a, b: jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST))
    holder = {}
    run = lambda f: holder.__setitem__("c", f(a, b))  # noqa: E731
    sync = lambda: jax.block_until_ready(holder["c"])  # noqa: E731
    out["gemm_gflops_jax"] = flops / _best_time(lambda: run(hi), sync, reps) / 1e9
    if platform != "cpu":
        out["gemm_gflops_jax_default"] = flops / _best_time(lambda: run(jax.jit(jnp.matmul)), sync, reps) / 1e9
    return out


# --------------------------------------------------------------------------- references


def run_timed(step, sync, steps: int, budget: float | None, samples_per_step: int, warmup=None) -> dict:
    """One warm-up (``warmup()``, default one ``step()``), then up to ``steps`` timed steps (each followed by
    ``sync()``), stopping early when the next step would take the total past ``budget`` seconds (at least one timed
    step, unless the warm-up alone took over half the budget: then ``{"skipped": reason}``). Returns
    ``seconds_per_step`` (fastest), ``worker_samples_per_s`` (``samples_per_step`` / fastest), ``step_seconds``,
    ``warmup_s``."""
    t0 = time.perf_counter()
    (warmup or step)()
    sync()
    warm = time.perf_counter() - t0
    if budget is not None and warm > budget / 2:
        return {"skipped": f"warm-up step took {warm:.1f} s, over half the time budget of {budget:g} s",
                "warmup_s": warm}
    times: list[float] = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t)
        if budget is not None and time.perf_counter() - t0 + times[-1] > budget:
            break
    return {"seconds_per_step": min(times), "worker_samples_per_s": samples_per_step / min(times),
            "step_seconds": times, "warmup_s": warm}


def time_jax_loop(ds, model: str, model_kwargs: dict, n: int, batch_size: int, steps: int,
                  budget: float | None = None) -> dict:
    """FedJAX-style per-worker loop: each worker's parameters are a separate pytree; every step a Python loop calls
    a jitted single-worker ``value_and_grad`` + SGD update on the worker's next minibatch, taken from its shard
    in host memory (numpy; transferred by the call, as FedJAX feeds client batches), then ring gossip
    ``x_i ← (x_{i-1} + x_i + x_{i+1}) / 3`` as one jitted call per worker. See :func:`run_timed`."""
    net = simdl.models.get_model(model, NUM_CLASSES, **model_kwargs)
    mean, std = jnp.asarray(ds.mean), jnp.asarray(ds.std)

    def loss(p, x, y):
        logits = net.apply(p, (x.astype(jnp.float32) / ds.scale - mean) / std)
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))

    @jax.jit
    def sgd_step(p, x, y):
        value, g = jax.value_and_grad(loss)(p, x, y)
        return jax.tree_util.tree_map(lambda a, b: a - LEARNING_RATE * b, p, g), value

    @jax.jit
    def gossip(a, b, c):
        return jax.tree_util.tree_map(lambda u, v, w: (u + v + w) / 3.0, a, b, c)

    p0 = net.init(jax.random.PRNGKey(0), jnp.zeros((1,) + ds.x_train.shape[1:], jnp.float32))
    shard = len(ds.y_train) // n
    xs = ds.x_train[: n * shard].reshape(n, shard, *ds.x_train.shape[1:])
    ys = ds.y_train[: n * shard].reshape(n, shard).astype(np.int32)
    per_epoch = max(1, shard // batch_size)
    st = {"workers": [p0] * n, "t": 0}

    def one_step():
        lo = (st["t"] % per_epoch) * batch_size
        w = st["workers"]
        new = [sgd_step(w[i], xs[i, lo:lo + batch_size], ys[i, lo:lo + batch_size])[0] for i in range(n)]
        st["workers"] = [gossip(new[i - 1], new[i], new[(i + 1) % n]) for i in range(n)]
        st["t"] += 1

    return run_timed(one_step, lambda: jax.block_until_ready(st["workers"]), steps, budget, n * batch_size)


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def _torch_model(model: str, shape: tuple[int, ...], model_kwargs: dict | None = None):
    """The PyTorch equivalent of simdl's ``mlp`` / ``cnn`` / ``resnet20`` (GroupNorm, 2 groups, projection
    shortcuts) / ``vgg11`` (GroupNorm with 2 groups when ``norm="group"``), NCHW input."""
    import torch.nn as tnn

    kw = model_kwargs or {}
    h, w, c = shape
    if model == "mlp":
        return tnn.Sequential(tnn.Flatten(), tnn.Linear(h * w * c, 128), tnn.ReLU(), tnn.Linear(128, NUM_CLASSES))
    if model == "cnn":
        return tnn.Sequential(tnn.Conv2d(c, 32, 3, padding=1), tnn.ReLU(), tnn.AvgPool2d(2),
                              tnn.Conv2d(32, 64, 3, padding=1), tnn.ReLU(), tnn.AvgPool2d(2), tnn.Flatten(),
                              tnn.Linear(64 * (h // 4) * (w // 4), 128), tnn.ReLU(), tnn.Linear(128, NUM_CLASSES))
    groups = kw.get("groups", 2)
    if model == "resnet20":
        class Block(tnn.Module):
            def __init__(self, cin, cout, stride):
                super().__init__()
                self.c1 = tnn.Conv2d(cin, cout, 3, stride, 1, bias=False)
                self.n1 = tnn.GroupNorm(groups, cout)
                self.c2 = tnn.Conv2d(cout, cout, 3, 1, 1, bias=False)
                self.n2 = tnn.GroupNorm(groups, cout)
                self.short = (tnn.Sequential(tnn.Conv2d(cin, cout, 1, stride, bias=False),
                                             tnn.GroupNorm(groups, cout))
                              if stride != 1 or cin != cout else tnn.Identity())
                self.relu = tnn.ReLU()

            def forward(self, x):
                y = self.relu(self.n1(self.c1(x)))
                return self.relu(self.short(x) + self.n2(self.c2(y)))

        layers = [tnn.Conv2d(c, 16, 3, 1, 1, bias=False), tnn.GroupNorm(groups, 16), tnn.ReLU()]
        cin = 16
        for stage, cout in enumerate((16, 32, 64)):
            for block in range(3):
                layers.append(Block(cin, cout, 2 if stage > 0 and block == 0 else 1))
                cin = cout
        layers += [tnn.AdaptiveAvgPool2d(1), tnn.Flatten(), tnn.Linear(64, NUM_CLASSES)]
        return tnn.Sequential(*layers)
    if model == "vgg11":
        from simdl.models.vgg import VGG11_CONFIG

        norm = kw.get("norm") not in (None, "none")
        layers, cin = [], c
        for v in VGG11_CONFIG:
            if v == "M":
                layers.append(tnn.MaxPool2d(2))
                h, w = h // 2, w // 2
            else:
                layers += [tnn.Conv2d(cin, v, 3, padding=1, bias=not norm)]
                layers += [tnn.GroupNorm(groups, v)] if norm else []
                layers.append(tnn.ReLU())
                cin = v
        layers += [tnn.Flatten(), tnn.Linear(cin * h * w, NUM_CLASSES)]
        return tnn.Sequential(*layers)
    raise ValueError(f"no PyTorch equivalent for model {model!r}")


def _torch_setup(ds, model: str, model_kwargs: dict, n: int, batch_size: int, device: str):
    """n identical torch models on ``device`` and the stacked normalised inputs ``(n, B, C, H, W)`` / labels
    ``(n, B)`` (each worker's first minibatch, reused every step)."""
    import torch

    torch.manual_seed(0)
    shape = ds.x_train.shape[1:]
    base = _torch_model(model, shape, model_kwargs)
    models = [_torch_model(model, shape, model_kwargs) for _ in range(n)]
    for m in models:
        m.load_state_dict(base.state_dict())
        m.to(device)
    x = torch.from_numpy(ds.x_train[: n * batch_size].reshape(n, batch_size, *shape)).permute(0, 1, 4, 2, 3)
    mean = torch.tensor(ds.mean, dtype=torch.float32).view(1, 1, -1, 1, 1)
    std = torch.tensor(ds.std, dtype=torch.float32).view(1, 1, -1, 1, 1)
    xs = ((x.float() / ds.scale - mean) / std).contiguous().to(device)
    ys = torch.from_numpy(ds.y_train[: n * batch_size].reshape(n, batch_size).astype(np.int64)).to(device)
    return models, xs, ys


def time_torch_loop(ds, model: str, n: int, batch_size: int, steps: int, model_kwargs: dict | None = None,
                    device: str = "cpu", budget: float | None = None) -> dict:
    """The PyTorch per-worker loop: n ``nn.Module`` copies; each step every worker does forward, backward and an
    SGD update, then ring gossip averages each parameter with both neighbours. See :func:`run_timed`; the warm-up
    is worker 0's forward and backward (eager PyTorch compiles nothing; every worker has the same shapes)."""
    import torch

    workers, xs, ys = _torch_setup(ds, model, model_kwargs or {}, n, batch_size, device)
    params = [list(m.parameters()) for m in workers]
    lossf = torch.nn.CrossEntropyLoss()

    def one_step():
        for i, m in enumerate(workers):
            m.zero_grad(set_to_none=True)
            lossf(m(xs[i]), ys[i]).backward()
            with torch.no_grad():
                for p in params[i]:
                    p.add_(p.grad, alpha=-LEARNING_RATE)
        with torch.no_grad():
            snap = [[p.detach().clone() for p in ps] for ps in params]
            for i in range(n):
                for k, p in enumerate(params[i]):
                    p.copy_((snap[i - 1][k] + snap[i][k] + snap[(i + 1) % n][k]) / 3.0)

    def warmup():
        lossf(workers[0](xs[0]), ys[0]).backward()
        workers[0].zero_grad(set_to_none=True)

    return run_timed(one_step, _torch_sync(device), steps, budget, n * batch_size, warmup)


def time_torch_func(ds, model: str, n: int, batch_size: int, steps: int, model_kwargs: dict | None = None,
                    device: str = "cpu", budget: float | None = None) -> dict:
    """PyTorch with stacked parameters (``torch.func``): ``stack_module_state`` of the n models, one
    ``vmap(grad(loss))`` over ``functional_call`` of a copy of the model on the meta device, the SGD update on the
    stacked tensors, then ring gossip ``(roll(+1) + x + roll(-1)) / 3`` on them. See :func:`run_timed`."""
    import torch
    import torch.nn.functional as F
    from torch.func import functional_call, grad, stack_module_state, vmap

    models, xs, ys = _torch_setup(ds, model, model_kwargs or {}, n, batch_size, device)
    params, buffers = stack_module_state(models)
    params = {k: v.detach() for k, v in params.items()}
    base = copy.deepcopy(models[0]).to("meta")
    del models

    def loss(p, b, x, y):
        return F.cross_entropy(functional_call(base, (p, b), (x,)), y)

    per_worker_grad = vmap(grad(loss))

    def one_step():
        g = per_worker_grad(params, buffers, xs, ys)
        with torch.no_grad():
            for k, p in params.items():
                p.add_(g[k], alpha=-LEARNING_RATE)
                p.copy_((p.roll(1, 0) + p + p.roll(-1, 0)) / 3.0)

    return run_timed(one_step, _torch_sync(device), steps, budget, n * batch_size)


def configure_torch(args) -> int | None:
    """Set torch's intra-op threads (``--torch-threads``, default all cores); returns them (``None`` without
    torch). On a CPU shared with other jobs, torch's OpenMP pool slows down far more than XLA's under
    oversubscription: ``--torch-threads 1`` then measures torch more fairly."""
    if args.no_torch or not torch_available():
        return None
    import torch

    torch.set_num_threads(args.torch_threads or os.cpu_count() or 1)
    return torch.get_num_threads()


def _reference(name: str, fn, log, optional: bool) -> dict:
    """Run one reference; an optional one's exception is returned as ``{"error": ...}``."""
    log(f"    {name} ...")
    try:
        out = fn()
    except Exception as err:
        if not optional:
            raise
        out = {"error": f"{type(err).__name__}: {err}"}
    if "skipped" in out:
        log(f"    {name} skipped: {out['skipped']}")
    elif "error" in out:
        log(f"    {name} failed: {out['error']}")
    return out


def _free_torch(device: str) -> None:
    if device == "cuda":
        import gc

        import torch

        gc.collect()
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------- the suite


def mem_available_bytes() -> int | None:
    """``MemAvailable`` of ``/proc/meminfo`` (Linux), else ``None``."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def max_rss_bytes() -> int:
    """The process's maximum resident set size so far (bytes; Linux reports KiB, macOS bytes)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r if sys.platform == "darwin" else r * 1024)


def model_settings(spec: str, args) -> tuple[dict, int | None, str]:
    """``(model_kwargs, worker_batch, execution)`` of ``spec`` for the table: the library's defaults
    (``execution="auto"``, the model's ``conv_impl``) unless the command line overrides them. ``--worker-batch
    0`` = all workers at once (``execution="vmap"`` unless ``--execution`` says otherwise)."""
    model, _, kw = MODEL_SPECS[spec]
    kw = dict(kw)
    if args.conv_impl and model != "mlp":
        kw["conv_impl"] = args.conv_impl
    execution = args.execution or "auto"
    wb = args.worker_batch
    if wb == 0:
        wb = None
        execution = args.execution or "vmap"
    return kw, wb, execution


def _ratio(a, b):
    return a / b if a is not None and b else None


def _reference_fields(row: dict, prefix: str, ref: dict | None, sim_rate: float) -> None:
    if ref is None:
        return
    if "error" in ref:
        row[f"{prefix}_error"] = ref["error"]
    elif "skipped" in ref:
        row[f"{prefix}_skipped"] = ref["skipped"]
    else:
        rate = ref["worker_samples_per_s"]
        row[f"{prefix}_worker_samples_per_s"] = rate
        row[f"{prefix}_step_seconds"] = ref["step_seconds"]
        row[f"ratio_to_{prefix}"] = sim_rate / rate


def _build_rows(common: dict, sims: dict, bound: dict | None, refs: dict, flops: float | None) -> list[dict]:
    """The table rows from what has been measured so far (missing pieces stay absent / ``None``)."""
    rows = []
    for name, (sim, _, topo) in sims.items():
        row = {**common, "algorithm": name, "topology": topo.name, "worker_batch": sim.get("worker_batch")}
        if sim.get("fallback"):
            row["oom_fallback"] = sim["fallback"]
        if "error" in sim:
            rows.append({**row, "error": sim["error"]})
            continue
        rate = sim["worker_samples_per_s"]
        row.update({"mixing": sim["mixing"], **sim["strategy"], "worker_samples_per_s": rate,
                    "seconds_per_step": sim["seconds_per_step"], "chunk_seconds": sim["chunk_seconds"],
                    "eval_s": sim["eval_s"], "eval_source": sim["eval_source"], "compile_s": sim["compile_s"],
                    **sim["memory"],
                    "flops_per_sample": flops, "achieved_gflops": flops * rate / 1e9 if flops else None})
        if bound is not None and bound.get("xla_peak_bytes") is not None:
            row["bound_xla_peak_bytes"] = bound["xla_peak_bytes"]
        if bound is not None and ("error" in bound or "skipped" in bound):
            row.update({f"bound_{k}": bound[k] for k in ("error", "skipped") if k in bound})
        elif bound is not None:
            row.update({"bound_worker_samples_per_s": bound["worker_samples_per_s"],
                        "ratio_to_bound": rate / bound["worker_samples_per_s"], "bound_compile_s": bound["compile_s"]})
        for prefix, ref in refs.items():
            _reference_fields(row, prefix, ref, rate)
        torch_rates = [row.get(f"{p}_worker_samples_per_s") for p in ("torch_loop", "torch_func")]
        torch_rates = [r for r in torch_rates if r]
        if torch_rates:
            row["best_torch_worker_samples_per_s"] = max(torch_rates)
            row["ratio_to_best_torch"] = rate / max(torch_rates)
        row.update(sim.get("estimate", {}))
        row["max_rss_bytes"] = max_rss_bytes()
        row["load_average_1min"] = os.getloadavg()[0]
        rows.append(row)
    return rows


def _is_oom(err: Exception) -> bool:
    msg = str(err)
    return "RESOURCE_EXHAUSTED" in msg or "out of memory" in msg.lower()


def _oom_fallback(task, alg, topo, batch_size: int, log) -> dict:
    """After the default strategy ran out of device memory (GPU suite): ``worker_batch`` k for ``lax.map`` over
    groups of k workers, the largest power of two whose temporaries (scaled from ``simdl.memory.estimate`` of the
    default, which grow with the workers computed at once) fit 80% of the device's memory with the state and
    data. Returns ``{"reason", "worker_batch" (None when even 1 would not fit), "default_xla_peak_bytes"}``."""
    n = task.n_workers
    limit = device_memory()["device_bytes_limit"]
    try:
        est = estimate(task, alg, topo, batch_size, None)
    except Exception as err:
        return {"reason": f"no estimate for a fallback: {type(err).__name__}: {err}"[:500], "worker_batch": None}
    peak, temp = est.get("peak_bytes"), est.get("temp_bytes")
    if not (limit and peak and temp):
        return {"reason": "no device memory limit or estimate for a fallback", "worker_batch": None,
                "default_xla_peak_bytes": peak}
    room = 0.8 * limit - (peak - temp)
    k = 1
    while 2 * k < n and (2 * k) * temp / n <= room:
        k *= 2
    fits = k * temp / n <= room
    reason = (f"the default ran out of device memory (simdl.memory.estimate: {peak / 2**30:.1f} GiB, device "
              f"{limit / 2**30:.1f} GiB); " + (f"lax.map over groups of {k} workers" if fits else "no k fits"))
    log(f"    {reason}")
    return {"reason": reason, "worker_batch": k if fits else None, "default_xla_peak_bytes": peak,
            "device_peak_includes_failed_attempt": True}


def memory_guard(task, alg, topo, batch_size: int, args, info: dict, plan: dict) -> dict:
    """On CPU with memory analysis on: ``simdl.memory.estimate`` of the bound's step (``xla_peak_bytes``), and
    ``{"skipped": reason}`` when it exceeds ``--bound-memory-fraction`` of the memory available now (one model at
    batch n·B can need far more than the simulator: ResNet-20 at batch 2048 about 17 GiB on XLA:CPU; on a shared
    machine running out of memory kills more than this benchmark). Elsewhere ``{}``: off CPU an out-of-memory
    error is an exception, recorded by the GPU suite."""
    if info["platform"] != "cpu" or args.no_memory_analysis or args.quick or not plan.get("memory_analysis", True):
        return {}
    try:
        peak = estimate(task, alg, topo, batch_size)["peak_bytes"]
    except Exception:  # no memory analysis on this backend: no guard
        return {}
    out = {"xla_peak_bytes": peak}
    avail = mem_available_bytes()
    if peak is not None and avail and peak > args.bound_memory_fraction * avail:
        out["skipped"] = (f"one model at batch {batch_size} needs {peak / 2**30:.1f} GiB (simdl.memory.estimate), "
                          f"over {args.bound_memory_fraction:g} x the {avail / 2**30:.1f} GiB available now; "
                          "--bound-memory-fraction to raise the limit")
    return out


def bench_model_n(spec: str, n: int, args, info: dict, log, plan: dict | None = None, emit=None) -> list[dict]:
    """All rows (one per algorithm) for one (model spec, n), in this order: the PyTorch references (first, so the
    device is theirs), the simulator per algorithm (device peak read right after it), the bound, FLOPs, the JAX
    loop, the memory estimate. ``plan`` (GPU suite rows) overrides chunk, repeats, batch size, input shape,
    algorithms, time budget and loop_max_n, and makes a failing simulator or bound a recorded error; ``emit(rows)``
    is called with the rows so far after every phase (the suite's row process writes them, so a timeout keeps
    them)."""
    plan = plan or {}
    suite = bool(plan)
    model, shape, _ = MODEL_SPECS[spec]
    shape = tuple(plan.get("shape", shape))
    kw, worker_batch, execution = model_settings(spec, args)
    chunk = plan.get("chunk") or args.chunk or (QUICK_CHUNK if args.quick else CHUNK)[spec]
    repeats = plan.get("repeats") or args.repeats or (1 if args.quick else REPEATS[spec])
    steps = args.loop_steps if args.loop_steps is not None else (QUICK_LOOP_STEPS if args.quick else LOOP_STEPS)[spec]
    B = plan.get("batch_size") or args.batch_size
    algorithms = tuple(plan.get("algorithms") or args.algorithms)
    budget = args.time_budget if args.time_budget is not None else plan.get("budget")
    loop_max_n = plan.get("loop_max_n", args.loop_max_n)
    emit = emit or (lambda rows: None)
    ds = synthetic_dataset(shape, n * B)
    use_torch = steps > 0 and not args.no_torch and torch_available()
    tdev = torch_device(info["platform"]) if use_torch else None
    common = {**info, "date": dt.date.today().isoformat(), "model": spec, "simdl_model": model,
              "input_shape": list(shape), "model_kwargs": kw, "n": n, "batch_size": B, "chunk_steps": chunk,
              "timed_chunks": repeats, "learning_rate": LEARNING_RATE, "worker_batch": worker_batch,
              "execution_requested": execution, "reference_steps": steps, "time_budget_s": budget,
              "torch_device": tdev, "torch_threads": configure_torch(args) if use_torch else None}
    refs: dict[str, dict | None] = {"jax_loop": None, "torch_loop": None, "torch_func": None}
    loops_ok = steps > 0 and n <= loop_max_n
    if steps > 0 and not loops_ok:
        reason = f"n={n} > loop max n {loop_max_n}: a loop step is {n} sequential single-worker steps (time budget)"
        refs["jax_loop"], refs["torch_loop"] = {"skipped": reason}, ({"skipped": reason} if use_torch else None)
        log(f"  {spec} n={n}: per-worker loops skipped: {reason}")
    if use_torch:
        log(f"  {spec} n={n}: PyTorch references on {tdev} ...")
        if loops_ok:
            refs["torch_loop"] = _reference("PyTorch loop", lambda: time_torch_loop(
                ds, model, n, B, steps, kw, tdev, budget), log, True)
            _free_torch(tdev)
        refs["torch_func"] = _reference("torch.func", lambda: time_torch_func(
            ds, model, n, B, steps, kw, tdev, budget), log, True)
        _free_torch(tdev)

    task = make_task(ds, model, n, kw)
    sims: dict = {}
    for name in algorithms:
        alg, topo = make_algorithm(name, n)
        log(f"  {spec} n={n}: {name} on {topo.name} ...")
        wb, ex, fallback = worker_batch, execution, None
        try:
            sim = time_simulate(task, alg, topo, B, chunk, repeats, wb, ex)
        except Exception as err:
            if not suite:
                raise
            sim = {"error": f"{type(err).__name__}: {err}"}
            log(f"    failed: {sim['error'][:300]}")
            if _is_oom(err) and worker_batch is None and info["platform"] != "cpu":
                fallback = _oom_fallback(task, alg, topo, B, log)
            if fallback and fallback.get("worker_batch"):
                wb, ex = fallback["worker_batch"], "map"
                log(f"    retrying with worker_batch={wb}: {fallback['reason']}")
                try:
                    sim = time_simulate(task, alg, topo, B, chunk, repeats, wb, ex)
                except Exception as err2:
                    sim = {"error": f"{type(err2).__name__}: {err2}"}
                    log(f"    failed: {sim['error'][:300]}")
        if "error" not in sim:
            sim["strategy"] = resolved_strategy(sim.pop("info"))
            sim["memory"] = device_memory()
        sim["worker_batch"] = wb
        if fallback:
            sim["fallback"] = fallback
        sims[name] = (sim, alg, topo)
    emit(_build_rows(common, sims, None, refs, None))
    log(f"  {spec} n={n}: bound (one model, batch {n * B}) ...")
    bound_alg, bound_topo = make_algorithm("dsgd", 1)
    bound_task = make_task(ds, model, 1, kw)
    bound = memory_guard(bound_task, bound_alg, bound_topo, n * B, args, info, plan)
    if "skipped" in bound:
        log(f"    skipped: {bound['skipped']}")
    else:
        try:
            bound.update(time_simulate(bound_task, bound_alg, bound_topo, n * B, chunk, repeats))
        except Exception as err:
            if not suite:
                raise
            bound["error"] = f"{type(err).__name__}: {err}"
            log(f"    failed: {bound['error']}")
    try:
        flops = flops_per_sample(ds, model, kw, B)
    except Exception as err:  # cost analysis is backend-dependent
        flops, common["flops_error"] = None, f"{type(err).__name__}: {err}"
    emit(_build_rows(common, sims, bound, refs, flops))
    if loops_ok:
        log(f"  {spec} n={n}: JAX per-worker loop ...")
        refs["jax_loop"] = _reference("JAX loop", lambda: time_jax_loop(ds, model, kw, n, B, steps, budget), log,
                                      suite)
        emit(_build_rows(common, sims, bound, refs, flops))
    if not (args.no_memory_analysis or args.quick) and plan.get("memory_analysis", True):
        kwargs = {"execution": execution} if "execution" in inspect.signature(estimate).parameters else {}
        for name, (sim, alg, topo) in sims.items():
            if "error" in sim:
                continue
            log(f"  {spec} n={n}: simdl.memory.estimate ({name}) ...")
            try:
                est = estimate(task, alg, topo, B, sim["worker_batch"], **kwargs)
                sim["estimate"] = {f"xla_{k}": est[k] for k in ("peak_bytes", "temp_bytes", "argument_bytes")}
                sim["estimate"].update(state_bytes=est["state_bytes"], data_bytes=est["data_bytes"])
            except Exception as err:  # e.g. a backend without memory_analysis
                sim["estimate"] = {"xla_estimate_error": f"{type(err).__name__}: {err}"}
    rows = _build_rows(common, sims, bound, refs, flops)
    emit(rows)
    for row in rows:
        log("    " + format_row(row))
    return rows


def add_gemm(rows: list[dict], gemm: dict | None) -> None:
    """Attach the GEMM measurement to every row and ``frac_gemm`` = achieved GFLOP/s / jax GEMM GFLOP/s."""
    for row in rows:
        if gemm:
            row.update(gemm)
        row["frac_gemm"] = _ratio(row.get("achieved_gflops"), (gemm or {}).get("gemm_gflops_jax"))


def conv_sweep(args, info: dict, log) -> list[dict]:
    """CNN only: D-SGD throughput through the runner for every ``conv_impl`` × ``worker_batch`` option
    (``worker_batch`` 0 = all workers at once, ``execution="vmap"``)."""
    rows = []
    model, shape, kw = MODEL_SPECS["cnn"]
    B = args.batch_size
    for n in args.n:
        ds = synthetic_dataset(shape, n * B)
        for impl in CONV_IMPLS:
            task = make_task(ds, model, n, {**kw, "conv_impl": impl})
            for wb in args.sweep_worker_batch:
                execution = "vmap" if wb == 0 else "map"
                wb = None if wb == 0 else wb
                alg, topo = make_algorithm("dsgd", n)
                log(f"  cnn n={n} conv_impl={impl} worker_batch={wb} ...")
                chunk, repeats = args.chunk or CHUNK["cnn"], args.repeats or REPEATS["cnn"]
                sim = time_simulate(task, alg, topo, B, chunk, repeats, wb, execution)
                strategy = resolved_strategy(sim["info"])
                row = {**info, "date": dt.date.today().isoformat(), "kind": "conv_sweep", "model": "cnn",
                       "input_shape": list(shape), "n": n, "batch_size": B, "conv_impl_requested": impl,
                       "worker_batch": wb, **strategy, "algorithm": "dsgd", "topology": topo.name,
                       "chunk_steps": chunk, "timed_chunks": repeats,
                       "worker_samples_per_s": sim["worker_samples_per_s"], "compile_s": sim["compile_s"],
                       "load_average_1min": os.getloadavg()[0]}
                rows.append(row)
                log(f"    {sim['worker_samples_per_s']:.0f} worker-samples/s, compile {sim['compile_s']:.1f} s")
    return rows


# --------------------------------------------------------------------------- output


def _fmt(v, spec: str) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return format("-", re.sub(r",?(\.\d+)?f$", "", spec))
    return format(v, spec)


COLUMNS = (("model", "model", "<8"), ("n", "n", ">5"), ("algorithm", "algorithm", "<8"),
           ("exec", "exec_label", "<6"), ("conv", "conv_label", "<11"),
           ("samples/s", "worker_samples_per_s", ">10,.0f"), ("bound/s", "bound_worker_samples_per_s", ">10,.0f"),
           ("x bound", "ratio_to_bound", ">7.2f"), ("x jax loop", "ratio_to_jax_loop", ">10.1f"),
           ("x torch", "ratio_to_torch_loop", ">7.1f"), ("x torch.func", "ratio_to_torch_func", ">12.1f"),
           ("x best torch", "ratio_to_best_torch", ">12.1f"), ("GFLOP/s", "achieved_gflops", ">8.1f"),
           ("frac GEMM", "frac_gemm", ">9.3f"), ("compile s", "compile_s", ">9.1f"),
           ("XLA peak MiB", "xla_peak_mib", ">12,.1f"), ("dev peak MiB", "device_peak_mib", ">12,.1f"),
           ("max RSS MiB", "max_rss_mib", ">11,.0f"))


def _row_values(row: dict) -> dict:
    v = dict(row)
    for key, src in (("xla_peak_mib", "xla_peak_bytes"), ("device_peak_mib", "device_peak_bytes"),
                     ("max_rss_mib", "max_rss_bytes")):
        v[key] = row[src] / 2**20 if row.get(src) is not None else None
    ex = row.get("execution")
    mbs = row.get("map_batch_size")
    v["exec_label"] = None if ex is None else f"{ex}/{mbs}" if ex == "map" and mbs else ex
    v["conv_label"] = row.get("conv_impl")
    return v


def format_row(row: dict) -> str:
    v = _row_values(row)
    return " ".join(_fmt(v.get(key), spec) for _, key, spec in COLUMNS)


def format_gemm(gemm: dict | None) -> str:
    if not gemm:
        return "GEMM: not measured"
    s = gemm["gemm_size"]
    parts = [f"jax {gemm['gemm_gflops_jax']:,.1f} GFLOP/s (precision HIGHEST)"]
    if gemm.get("gemm_gflops_jax_default"):
        parts.append(f"jax default precision {gemm['gemm_gflops_jax_default']:,.1f}")
    if gemm.get("gemm_gflops_torch"):
        parts.append(f"torch ({gemm.get('gemm_torch_device')}) {gemm['gemm_gflops_torch']:,.1f}")
    elif gemm.get("gemm_torch_error"):
        parts.append(f"torch failed: {gemm['gemm_torch_error']}")
    return f"GEMM fp32 {s}x{s}x{s}: " + ", ".join(parts)


def format_table(rows: list[dict], info: dict, gemm: dict | None = None) -> str:
    head = " ".join(format(h, re.sub(r",?(\.\d+)?f$", "", spec)) for h, _, spec in COLUMNS)
    lines = [f"simdl throughput: {info['platform']} ({info['device_kind']}), jax {info['jax_version']}, "
             f"B = {rows[0]['batch_size'] if rows else '-'} per worker; samples/s = worker-samples per second",
             format_gemm(gemm) + "; GFLOP/s = model FLOPs (XLA cost analysis, forward + backward) x samples/s",
             "", head, "-" * len(head)]
    lines += [format_row(r) for r in rows]
    notes = []
    for r in rows:
        for p in ("error", "bound_error", "bound_skipped", "flops_error", "xla_estimate_error", "jax_loop_skipped",
                  "jax_loop_error", "torch_loop_skipped", "torch_loop_error", "torch_func_skipped", "torch_func_error"):
            if r.get(p):
                notes.append(f"{r['model']} n={r['n']}{' ' + r['algorithm'] if p == 'error' else ''}: {p}: {r[p]}")
    if notes:
        lines += [""] + list(dict.fromkeys(notes))
    return "\n".join(lines)


def format_sweep(rows: list[dict]) -> str:
    lines = [f"{'n':>5} {'conv_impl':<9} {'worker_batch':>12} {'resolved':<20} {'samples/s':>10} {'compile s':>9}"]
    for r in rows:
        wb = "all" if r["worker_batch"] is None else str(r["worker_batch"])
        res = f"{r.get('execution')} {r.get('conv_impl')}"
        lines.append(f"{r['n']:>5} {r['conv_impl_requested']:<9} {wb:>12} {res:<20} "
                     f"{r['worker_samples_per_s']:>10.0f} {r['compile_s']:>9.1f}")
    return "\n".join(lines)


def output_path(args, info: dict) -> Path:
    if args.out:
        return Path(args.out)
    if args.suite == "gpu":
        tag = "-gpu-tiny" if args.tiny else "-gpu"
    else:
        tag = "-quick" if args.quick else "-conv-sweep" if args.conv_sweep else "-custom" if args.custom else ""
    name = f"throughput-{device_slug(info)}-{dt.date.today().isoformat()}{tag}.json"
    return Path(__file__).resolve().parent / "results" / name


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    tmp.replace(path)


# --------------------------------------------------------------------------- command line


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help=f"rows {QUICK['rows']}, D-SGD only, few steps (< 3 min on 2 CPU cores)")
    p.add_argument("--suite", choices=("gpu",), default=None,
                   help="the GPU suite (GPU_SUITE rows, one process each; benchmarks/gpu.sh runs it)")
    p.add_argument("--tiny", action="store_true", help="with --suite gpu: the same code path at toy sizes (CPU)")
    p.add_argument("--suite-row", type=int, default=None, help=argparse.SUPPRESS)  # internal: one suite row
    p.add_argument("--suite-budget", type=float, default=None,
                   help=f"with --suite: seconds for the whole suite (default {GPU_SUITE_BUDGET_S}; tiny "
                        f"{TINY_SUITE_BUDGET_S}); rows that would start after it are skipped")
    p.add_argument("--also-out", default=None, help="with --suite: also copy the JSON and the table to this folder")
    p.add_argument("--models", nargs="+", choices=tuple(MODEL_SPECS), default=None)
    p.add_argument("--n", nargs="+", type=int, default=None, help=f"worker counts (default {FULL_N})")
    p.add_argument("--max-n", type=int, default=None,
                   help=f"largest n for every model (default on CPU: {MAX_N_CPU}; on accelerators: no cap)")
    p.add_argument("--algorithms", nargs="+", choices=ALGORITHMS, default=None)
    p.add_argument("--batch-size", type=int, default=32, help="per-worker batch B (default 32)")
    p.add_argument("--chunk", type=int, default=None, help=f"steps per compiled chunk K (default per model: {CHUNK}; "
                   f"quick {QUICK_CHUNK})")
    p.add_argument("--repeats", type=int, default=None,
                   help=f"timed chunks R after the first (default per model: {REPEATS}; quick 1)")
    p.add_argument("--loop-steps", type=int, default=None,
                   help=f"timed steps of each reference after one warm-up (default per model {LOOP_STEPS}; quick "
                        f"{QUICK_LOOP_STEPS}; 0 = no references)")
    p.add_argument("--loop-max-n", type=int, default=1024, help="skip the per-worker loops above this n")
    p.add_argument("--time-budget", type=float, default=None,
                   help="seconds each reference (JAX loop, PyTorch loop, torch.func) may take per row: timed steps "
                        "stop when the next would pass it; skipped when its warm-up step takes over half of it "
                        "(default: none; GPU suite: per row)")
    p.add_argument("--bound-memory-fraction", type=float, default=0.85,
                   help="on CPU, skip the bound when its estimated peak exceeds this fraction of the memory "
                        "available now (default 0.85; implies the estimate, so not with --quick or "
                        "--no-memory-analysis)")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch references even if torch is installed")
    p.add_argument("--torch-threads", type=int, default=None,
                   help="torch.set_num_threads (default: all cores; on a busy shared CPU 1 is fairer to torch)")
    p.add_argument("--gemm-size", type=int, default=None,
                   help=f"fp32 GEMM size (default {GEMM_SIZE['cpu']} on CPU, {GEMM_SIZE_ACCEL} elsewhere, "
                        f"{TINY_GEMM} with --tiny; 0 = skip)")
    p.add_argument("--conv-impl", choices=CONV_IMPLS, default=None,
                   help="conv_impl of the convolutional models (default: the model's default, 'auto')")
    p.add_argument("--execution", choices=EXECUTIONS, default=None,
                   help="simulate(..., execution=...) (default 'auto': the library's choice)")
    p.add_argument("--worker-batch", type=int, default=None,
                   help="simulate(..., worker_batch=k): lax.map over groups of k workers; 0 = all workers at once "
                        "(execution='vmap') (default: the library's choice)")
    p.add_argument("--no-memory-analysis", action="store_true",
                   help="skip simdl.memory.estimate (saves one compilation per row; implied by --quick)")
    p.add_argument("--conv-sweep", action="store_true",
                   help="instead of the table: CNN throughput for every conv_impl x --sweep-worker-batch")
    p.add_argument("--sweep-worker-batch", nargs="+", type=int, default=[0, 1, 4],
                   help="worker_batch values of --conv-sweep (0 = all workers at once)")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/throughput-<device>-<date>...)")
    args = p.parse_args(argv)
    args.custom = any(v is not None for v in (args.models, args.n, args.algorithms, args.max_n, args.conv_impl,
                                              args.worker_batch, args.execution)) or args.batch_size != 32
    q = args.quick
    args.plan_rows = QUICK["rows"] if q and args.models is None and args.n is None else None
    args.models = args.models or (tuple(r[0] for r in QUICK["rows"]) if q else FULL_MODELS)
    args.n = sorted(args.n or (sorted({r[1] for r in QUICK["rows"]}) if q else FULL_N))
    args.algorithms = args.algorithms or (QUICK["algorithms"] if q else ALGORITHMS)
    if args.suite_row is not None and args.suite is None:
        p.error("--suite-row needs --suite")
    if args.tiny and args.suite is None:
        p.error("--tiny needs --suite gpu")
    for name in ("batch_size", "chunk", "repeats"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.worker_batch is not None and args.worker_batch < 0:
        p.error("--worker-batch must be >= 0")
    if args.loop_steps is not None and args.loop_steps < 0:
        p.error("--loop-steps must be >= 0")
    if any(n < 1 for n in args.n):
        p.error("--n values must be >= 1")
    return args


def max_n_for(spec: str, args, platform: str) -> int:
    if args.max_n is not None:
        return args.max_n
    return MAX_N_CPU[spec] if platform == "cpu" else max(args.n)


def measure_gemm(args, platform: str, log) -> dict | None:
    size = args.gemm_size if args.gemm_size is not None else (
        TINY_GEMM if args.tiny else GEMM_SIZE.get(platform, GEMM_SIZE_ACCEL))
    if not size:
        return None
    log(f"GEMM fp32 {size}^3 (jax{', torch' if torch_available() and not args.no_torch else ''}) ...")
    gemm = gemm_rates(size, platform, configure_torch(args) is not None)
    log("  " + format_gemm(gemm))
    return gemm


def _suite_rows(args) -> tuple[dict, ...]:
    return TINY_SUITE if args.tiny else GPU_SUITE


def run_suite_row(args, log) -> int:
    """Child process of the suite: one row, written to ``--out`` (rows, device info)."""
    info = device_info()
    plan = _suite_rows(args)[args.suite_row]

    def emit(rows):
        write_json(Path(args.out), {**info, "rows": rows})

    bench_model_n(plan["spec"], plan["n"], args, info, log, plan, emit)
    return 0


def run_suite(args, log, argv) -> int:
    """The GPU suite (or its tiny CPU version): the GEMM rate here, then every row of :data:`GPU_SUITE` in its own
    process (its device peak is its own; a crash or hang costs only that row), each under its ``timeout`` and the
    suite's budget. Writes one JSON (and ``--also-out``), prints the table."""
    t0 = time.perf_counter()
    info = device_info()
    torch_ok = torch_available() and not args.no_torch
    log(f"simdl GPU suite{' (tiny)' if args.tiny else ''} on {info['platform']} ({info['device_kind']}), "
        f"jax {info['jax_version']}; torch {'importable' if torch_ok else 'NOT importable (no PyTorch columns)'}")
    if torch_ok:
        import torch

        log(f"  torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}")
    gemm = measure_gemm(args, info["platform"], log)
    budget = args.suite_budget or (TINY_SUITE_BUDGET_S if args.tiny else GPU_SUITE_BUDGET_S)
    path = output_path(args, info)
    payload = {"benchmark": "throughput", "suite": "gpu-tiny" if args.tiny else "gpu",
               "simdl_version": simdl.__version__, **info, "date": dt.date.today().isoformat(),
               "torch_available": torch_ok, "gemm": gemm, "settings": {k: v for k, v in vars(args).items()},
               "rows": [], "skipped": []}
    passthrough = _strip_options(argv, ("--suite", "--out", "--also-out", "--suite-budget", "--suite-row"))
    with tempfile.TemporaryDirectory(prefix="simdl-bench-") as tmp:
        for i, plan in enumerate(_suite_rows(args)):
            left = budget - (time.perf_counter() - t0)
            label = f"{plan['spec']} n={plan['n']}"
            if left < 20:
                payload["skipped"].append({"model": plan["spec"], "n": plan["n"],
                                           "reason": f"suite budget of {budget:g} s spent"})
                log(f"{label}: skipped (suite budget of {budget:g} s spent)")
                continue
            timeout = min(plan["timeout"], left)
            part = Path(tmp) / f"row{i}.json"
            cmd = [sys.executable, str(Path(__file__).resolve()), "--suite", "gpu", "--suite-row", str(i),
                   "--out", str(part), *passthrough]
            log(f"{label}: own process, timeout {timeout:.0f} s ...")
            tr = time.perf_counter()
            try:
                proc = subprocess.run(cmd, timeout=timeout, stdout=subprocess.PIPE, text=True)
                status = None if proc.returncode == 0 else f"process exited with status {proc.returncode}"
            except subprocess.TimeoutExpired:
                status = f"timed out after {timeout:.0f} s"
            rows = json.loads(part.read_text())["rows"] if part.exists() else []
            add_gemm(rows, gemm)
            for r in rows:
                r["row_wall_s"] = time.perf_counter() - tr
            payload["rows"] += rows
            if status:
                payload["skipped"].append({"model": plan["spec"], "n": plan["n"], "reason": status})
                log(f"{label}: {status}")
            write_json(path, payload)
    payload["wall_time_s"] = time.perf_counter() - t0
    write_json(path, payload)
    table = format_table(payload["rows"], info, gemm) + _device_memory_note(payload["rows"])
    if payload["skipped"]:
        table += "\nskipped: " + "; ".join(f"{s['model']} n={s['n']} ({s['reason']})" for s in payload["skipped"])
    if not torch_ok:
        table += "\n(torch is not importable here: no PyTorch columns)"
    table += f"\n\n{len(payload['rows'])} rows in {payload['wall_time_s']:.0f} s; wrote {path}"
    if args.also_out:
        dest = Path(args.also_out)
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, dest / path.name)
        (dest / (path.stem + ".txt")).write_text(table + "\n")
        table += f" and {dest / path.name}"
    print(table)
    return 0 if payload["rows"] else 1


def _device_memory_note(rows: list[dict]) -> str:
    lines = [f"{r['model']} n={r['n']} {r['algorithm']}: device peak {r['device_peak_bytes'] / 2**30:.2f} GiB, "
             f"simdl.memory.estimate peak {r['xla_peak_bytes'] / 2**30:.2f} GiB"
             for r in rows if r.get("device_peak_bytes") is not None and r.get("xla_peak_bytes") is not None]
    return ("\n\n" + "\n".join(lines)) if lines else ""


def _strip_options(argv: list[str], names: tuple[str, ...]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in names:
            skip = True
            continue
        if any(a.startswith(n + "=") for n in names):
            continue
        out.append(a)
    return out


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    t_start = time.perf_counter()
    log = lambda msg: print(f"[{time.perf_counter() - t_start:6.1f} s] {msg}", file=sys.stderr, flush=True)  # noqa: E731
    if args.suite == "gpu":
        return run_suite_row(args, log) if args.suite_row is not None else run_suite(args, log, argv)
    info = device_info()
    log(f"simdl throughput benchmark on {info['platform']} ({info['device_kind']}), jax {info['jax_version']}")
    t0 = time.perf_counter()
    payload = {"benchmark": "throughput", "simdl_version": simdl.__version__, **info,
               "date": dt.date.today().isoformat(), "settings": {k: v for k, v in vars(args).items()}, "rows": [],
               "skipped": []}
    path = output_path(args, info)
    if args.conv_sweep:
        payload["rows"] = conv_sweep(args, info, log)
        table = format_sweep(payload["rows"])
    else:
        gemm = measure_gemm(args, info["platform"], log)
        payload["gemm"] = gemm
        plan = args.plan_rows or [(m, n) for m in args.models for n in args.n]
        for spec, n in plan:
            cap = max_n_for(spec, args, info["platform"])
            if n > cap:
                payload["skipped"].append({"model": spec, "n": n, "reason": f"n > max n {cap} for {spec} on "
                                           f"{info['platform']} (time budget); use --max-n"})
                continue
            rows = bench_model_n(spec, n, args, info, log)
            add_gemm(rows, gemm)
            payload["rows"] += rows
            write_json(path, payload)  # rows so far survive an interrupted run
        table = format_table(payload["rows"], info, gemm)
        if payload["skipped"]:
            table += "\nskipped: " + "; ".join(f"{s['model']} n={s['n']}" for s in payload["skipped"])
    payload["wall_time_s"] = time.perf_counter() - t0
    write_json(path, payload)
    print(table)
    print(f"\n{len(payload['rows'])} rows in {payload['wall_time_s']:.0f} s; wrote {path}")
    if not torch_available() and not args.conv_sweep:
        print("(torch is not installed: no PyTorch columns)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
