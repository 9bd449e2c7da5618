"""Throughput benchmark: simulated decentralized training vs one big model and vs per-worker loops.

For each model (MLP on 8×8×1, small CNN on 28×28×1, ResNet-20 with GroupNorm on 32×32×3), each worker count n and
each algorithm (D-SGD on a ring, RelaySGD on a chain), with per-worker batch B = 32, it measures:

* **simulator**: worker-samples per second (n · B · steps / seconds) of the real runner code path:
  ``simdl.simulate(classification(..., data=synthetic, partition="iid"), alg, topo, steps=(1 + R)·K,
  eval_every=K)``. A ``callback`` timestamps every evaluation; chunk j's time is the gap between evaluations
  j − 1 and j (the compiled ``lax.scan`` of K steps plus one evaluation) minus the evaluation's time. The first
  chunk (which also compiles) is not timed; the reported time is the fastest of the R timed chunks (least
  disturbed by other processes on a shared machine).
* **bound**: one model trained at batch n·B through the same code path (``classification(..., n_workers=1)``,
  ``ring(1)``, D-SGD = plain SGD), same K and R, on the same device in the same process. The bound does the same
  arithmetic without the worker axis; ``ratio_to_bound`` = simulator / bound samples per second.
* **per-worker loops** (how framework code without a worker axis runs), same model, B and ring gossip: (a) JAX,
  FedJAX-style: a Python loop over workers, each calling a jitted single-worker ``value_and_grad`` + SGD update on
  its next minibatch (sliced from host memory), then a gossip average (one jitted call per worker); (b) PyTorch,
  when ``torch`` is importable: n ``nn.Module`` copies stepped in a loop, then the same gossip. ``ratio_to_jax_loop``
  / ``ratio_to_torch_loop`` = simulator / loop samples per second.
* **compile time**: ``result.info["compile_time_s"]`` (the first chunk call: tracing, compilation and one chunk's
  execution) minus one timed chunk.
* **evaluation**: the runner evaluates between chunks (here on 8 test samples, but every worker's own model too,
  which for a CNN under ``vmap`` is not negligible); its time, measured separately with the same compiled
  function on the final state (:func:`time_evaluation`), is subtracted from every chunk.
* **memory**: ``peak_bytes`` of :func:`simdl.memory.estimate` (data + state + XLA's temporaries and non-donated
  outputs from ``memory_analysis()`` of one compiled step; not with ``--quick``) and the process's maximum resident
  set size after the row (``resource.getrusage``: a running maximum over the whole process, rows run in
  increasing n, so it bounds the row's own peak from above).
* **conv strategy**: on CPU the CNN and ResNet-20 run with :data:`CPU_CONV_DEFAULT` (``conv_impl="xla"``,
  ``worker_batch=1``), the fastest option of ``--conv-sweep``; ``--conv-impl`` / ``--worker-batch`` override.

Usage::

    python benchmarks/throughput.py --quick        # MLP + CNN, n in {16, 64}, D-SGD; < 2 minutes on 2 CPU cores
    python benchmarks/throughput.py                # full suite (FULL_N; per-model caps on CPU: MAX_N_CPU)
    python benchmarks/throughput.py --models mlp --n 1024 --algorithms dsgd
    python benchmarks/throughput.py --conv-sweep --n 16   # CNN: time every conv_impl × worker_batch option

Prints a table and writes ``benchmarks/results/throughput-<device>-<date>[-quick|-custom].json``: one record per
row, each naming the device kind, platform, jax version, date and all settings.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import re
import resource
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import simdl
from simdl.data.dataset import make_dataset
from simdl.memory import estimate
from simdl.simulate import build_evaluate

#: model name -> (input shape, model kwargs for the main table)
MODEL_SPECS = {
    "mlp": ((8, 8, 1), {}),
    "cnn": ((28, 28, 1), {}),
    "resnet20": ((32, 32, 3), {"norm": "group"}),
}
#: steps per timed chunk K and timed chunks R per model (full run; --quick: QUICK_CHUNK, 1 timed chunk): a chunk
#: should take well over the evaluation between chunks and the timer resolution.
CHUNK = {"mlp": 50, "cnn": 1, "resnet20": 1}
REPEATS = {"mlp": 3, "cnn": 2, "resnet20": 1}
QUICK_CHUNK = {"mlp": 20, "cnn": 1, "resnet20": 1}
#: per-worker execution of convolutional models on CPU, chosen by ``--conv-sweep`` (see RESULTS.md): the XLA
#: convolution with canonical-layout backward passes, one worker at a time (``lax.map``). Plain ``vmap`` turns
#: per-worker kernels into grouped convolutions, which XLA:CPU runs several times slower.
CPU_CONV_DEFAULT = {"conv_impl": "xla", "worker_batch": 1}
ALGORITHMS = ("dsgd", "relaysgd")
FULL_N = (16, 64, 256, 1024)
#: largest n per model in the full run on a small CPU (each step of the bound at n = 1024 is 32768 images);
#: override with --n and --max-n.
MAX_N_CPU = {"mlp": 1024, "cnn": 64, "resnet20": 16}
QUICK = {"models": ("mlp", "cnn"), "n": (16, 64), "algorithms": ("dsgd",), "loop_steps": 1}
CONV_IMPLS = ("xla", "patches", "lax")
NUM_CLASSES = 10
LEARNING_RATE = 0.01


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


# --------------------------------------------------------------------------- timing through the runner


def time_evaluation(task, alg, state, reps: int = 2) -> float:
    """Seconds of the runner's between-chunk evaluation (compiled as :func:`simdl.simulate` compiles it), fastest
    of ``reps`` after one compiling call."""
    evaluate = build_evaluate(task, lambda hp: alg)
    run_eval = jax.jit(lambda data, state: evaluate(data, state, None))
    jax.block_until_ready(run_eval(task.data, state))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(run_eval(task.data, state))
        times.append(time.perf_counter() - t0)
    return min(times)


def time_simulate(task, alg, topo, batch_size: int, chunk: int, repeats: int, worker_batch=None) -> dict:
    """Run ``simdl.simulate`` for ``(1 + repeats) · chunk`` steps, evaluating every ``chunk`` steps; time each chunk
    after the first by the gap between evaluation callbacks, minus the evaluation's own time (measured after the
    run with :func:`time_evaluation`).

    Returns dict: ``seconds_per_step`` (fastest timed chunk / chunk), ``chunk_seconds`` (all timed chunks, evaluation
    subtracted), ``eval_s``, ``compile_s`` (first chunk call minus one timed chunk), ``worker_samples_per_s``,
    ``mixing``, ``compiles``.

    Raises:
      RuntimeError: the run diverged (the timing would be of a shortened run).
    """
    stamps: list[float] = []
    res = simdl.simulate(task, alg, topo, steps=(1 + repeats) * chunk, batch_size=batch_size, seed=0,
                         eval_every=chunk, callback=lambda step, row: stamps.append(time.perf_counter()),
                         worker_batch=worker_batch)
    if res.diverged_at is not None or len(stamps) != 1 + repeats:
        raise RuntimeError(f"run diverged at step {res.diverged_at}; lower LEARNING_RATE")
    eval_s = time_evaluation(task, alg, res.state)
    chunks = [max(b - a - eval_s, 1e-9) for a, b in zip(stamps, stamps[1:], strict=False)]
    best = min(chunks)
    return {"seconds_per_step": best / chunk, "chunk_seconds": chunks, "eval_s": eval_s,
            "compile_s": max(0.0, res.info["compile_time_s"] - best), "mixing": res.info["mixing"],
            "worker_samples_per_s": task.n_workers * batch_size * chunk / best, "compiles": res.info["compiles"]}


# --------------------------------------------------------------------------- per-worker loops


def time_jax_loop(ds, model: str, model_kwargs: dict, n: int, batch_size: int, steps: int) -> dict:
    """FedJAX-style per-worker loop: each worker's parameters are a separate pytree; every step a Python loop calls
    a jitted single-worker ``value_and_grad`` + SGD update on the worker's next minibatch, taken from its shard
    in host memory (numpy; transferred by the call, as FedJAX feeds client batches), then ring gossip
    ``x_i ← (x_{i-1} + x_i + x_{i+1}) / 3`` as one jitted call per worker. One warm-up step (compiles), then
    ``steps`` timed steps. Returns ``seconds_per_step`` and ``worker_samples_per_s``."""
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
    workers = [p0] * n

    def one_step(workers, t):
        lo = (t % per_epoch) * batch_size
        new = [sgd_step(workers[i], xs[i, lo:lo + batch_size], ys[i, lo:lo + batch_size])[0] for i in range(n)]
        return [gossip(new[i - 1], new[i], new[(i + 1) % n]) for i in range(n)]

    workers = jax.block_until_ready(one_step(workers, 0))
    t0 = time.perf_counter()
    for t in range(steps):
        workers = one_step(workers, t + 1)
    jax.block_until_ready(workers)
    sec = (time.perf_counter() - t0) / steps
    return {"seconds_per_step": sec, "worker_samples_per_s": n * batch_size / sec}


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def _torch_model(model: str, shape: tuple[int, ...]):
    """The PyTorch equivalent of simdl's ``mlp`` / ``cnn`` / ``resnet20`` (GroupNorm, 2 groups, projection
    shortcuts), NCHW input."""
    import torch.nn as tnn

    h, w, c = shape
    if model == "mlp":
        return tnn.Sequential(tnn.Flatten(), tnn.Linear(h * w * c, 128), tnn.ReLU(), tnn.Linear(128, NUM_CLASSES))
    if model == "cnn":
        return tnn.Sequential(tnn.Conv2d(c, 32, 3, padding=1), tnn.ReLU(), tnn.AvgPool2d(2),
                              tnn.Conv2d(32, 64, 3, padding=1), tnn.ReLU(), tnn.AvgPool2d(2), tnn.Flatten(),
                              tnn.Linear(64 * (h // 4) * (w // 4), 128), tnn.ReLU(), tnn.Linear(128, NUM_CLASSES))
    if model == "resnet20":
        class Block(tnn.Module):
            def __init__(self, cin, cout, stride):
                super().__init__()
                self.c1 = tnn.Conv2d(cin, cout, 3, stride, 1, bias=False)
                self.n1 = tnn.GroupNorm(2, cout)
                self.c2 = tnn.Conv2d(cout, cout, 3, 1, 1, bias=False)
                self.n2 = tnn.GroupNorm(2, cout)
                self.short = (tnn.Sequential(tnn.Conv2d(cin, cout, 1, stride, bias=False), tnn.GroupNorm(2, cout))
                              if stride != 1 or cin != cout else tnn.Identity())
                self.relu = tnn.ReLU()

            def forward(self, x):
                y = self.relu(self.n1(self.c1(x)))
                return self.relu(self.short(x) + self.n2(self.c2(y)))

        layers = [tnn.Conv2d(c, 16, 3, 1, 1, bias=False), tnn.GroupNorm(2, 16), tnn.ReLU()]
        cin = 16
        for stage, cout in enumerate((16, 32, 64)):
            for block in range(3):
                layers.append(Block(cin, cout, 2 if stage > 0 and block == 0 else 1))
                cin = cout
        layers += [tnn.AdaptiveAvgPool2d(1), tnn.Flatten(), tnn.Linear(64, NUM_CLASSES)]
        return tnn.Sequential(*layers)
    raise ValueError(f"no PyTorch equivalent for model {model!r}")


def time_torch_loop(ds, model: str, n: int, batch_size: int, steps: int) -> dict:
    """The PyTorch per-worker loop: n ``nn.Module`` copies; each step every worker does forward, backward and an
    SGD update, then ring gossip averages each parameter with both neighbours. One warm-up step."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    shape = ds.x_train.shape[1:]
    base = _torch_model(model, shape)
    workers = [_torch_model(model, shape) for _ in range(n)]
    for m in workers:
        m.load_state_dict(base.state_dict())
    x, y = ds.x_train[: n * batch_size], ds.y_train[: n * batch_size]
    xs, ys = x.reshape(n, batch_size, *shape), y.reshape(n, batch_size)
    mean, std = torch.tensor(ds.mean).view(1, -1, 1, 1), torch.tensor(ds.std).view(1, -1, 1, 1)
    xb = [((torch.from_numpy(xs[i]).permute(0, 3, 1, 2).float() / ds.scale) - mean) / std for i in range(n)]
    yb = [torch.from_numpy(ys[i].astype(np.int64)) for i in range(n)]
    params = [list(m.parameters()) for m in workers]
    lossf = torch.nn.CrossEntropyLoss()

    def one_step():
        for i, m in enumerate(workers):
            m.zero_grad(set_to_none=True)
            lossf(m(xb[i]), yb[i]).backward()
            with torch.no_grad():
                for p in params[i]:
                    p.add_(p.grad, alpha=-LEARNING_RATE)
        with torch.no_grad():
            snap = [[p.detach().clone() for p in ps] for ps in params]
            for i in range(n):
                for k, p in enumerate(params[i]):
                    p.copy_((snap[i - 1][k] + snap[i][k] + snap[(i + 1) % n][k]) / 3.0)

    one_step()
    t0 = time.perf_counter()
    for _ in range(steps):
        one_step()
    sec = (time.perf_counter() - t0) / steps
    return {"seconds_per_step": sec, "worker_samples_per_s": n * batch_size / sec}


# --------------------------------------------------------------------------- the suite


def max_rss_bytes() -> int:
    """The process's maximum resident set size so far (bytes; Linux reports KiB, macOS bytes)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r if sys.platform == "darwin" else r * 1024)


def model_settings(model: str, args, platform: str) -> tuple[dict, int | None]:
    """``(model_kwargs, worker_batch)`` of ``model`` for the table: the command line's choice, else on CPU the
    :data:`CPU_CONV_DEFAULT` for convolutional models, else the library defaults."""
    kw = dict(MODEL_SPECS[model][1])
    conv = model != "mlp"
    default = CPU_CONV_DEFAULT if conv and platform == "cpu" else {}
    impl = args.conv_impl or default.get("conv_impl")
    if conv and impl:
        kw["conv_impl"] = impl
    wb = args.worker_batch if args.worker_batch is not None else default.get("worker_batch")
    return kw, (None if wb == 0 else wb)


def bench_model_n(model: str, n: int, args, info: dict, log) -> list[dict]:
    """All rows for one (model, n): the bound, the loops, then one row per algorithm."""
    shape = MODEL_SPECS[model][0]
    kw, worker_batch = model_settings(model, args, info["platform"])
    chunk = args.chunk or (QUICK_CHUNK if args.quick else CHUNK)[model]
    repeats = args.repeats or (1 if args.quick else REPEATS[model])
    B = args.batch_size
    ds = synthetic_dataset(shape, n * B)
    common = {**info, "date": dt.date.today().isoformat(), "model": model, "input_shape": list(shape),
              "model_kwargs": kw, "n": n, "batch_size": B, "chunk_steps": chunk, "timed_chunks": repeats,
              "learning_rate": LEARNING_RATE, "worker_batch": worker_batch}
    log(f"  {model} n={n}: bound (one model, batch {n * B}) ...")
    bound_alg, bound_topo = make_algorithm("dsgd", 1)
    bound = time_simulate(make_task(ds, model, 1, kw), bound_alg, bound_topo, n * B, chunk, repeats)
    loop = None
    if args.loop_steps > 0 and n <= args.loop_max_n:
        log(f"  {model} n={n}: JAX per-worker loop ...")
        loop = time_jax_loop(ds, model, kw, n, B, args.loop_steps)
    tloop = None
    if args.loop_steps > 0 and n <= args.loop_max_n and torch_available() and not args.no_torch:
        log(f"  {model} n={n}: PyTorch per-worker loop ...")
        try:
            tloop = time_torch_loop(ds, model, n, B, args.loop_steps)
        except Exception as err:  # the torch column is optional: record why it is missing
            tloop = {"error": f"{type(err).__name__}: {err}"}
    rows = []
    task = make_task(ds, model, n, kw)
    for name in args.algorithms:
        alg, topo = make_algorithm(name, n)
        log(f"  {model} n={n}: {name} on {topo.name} ...")
        sim = time_simulate(task, alg, topo, B, chunk, repeats, worker_batch)
        row = {**common, "algorithm": name, "topology": topo.name, "mixing": sim["mixing"],
               "worker_samples_per_s": sim["worker_samples_per_s"], "seconds_per_step": sim["seconds_per_step"],
               "chunk_seconds": sim["chunk_seconds"], "eval_s": sim["eval_s"], "compile_s": sim["compile_s"],
               "bound_worker_samples_per_s": bound["worker_samples_per_s"],
               "ratio_to_bound": sim["worker_samples_per_s"] / bound["worker_samples_per_s"],
               "bound_compile_s": bound["compile_s"]}
        if loop is not None:
            row["jax_loop_worker_samples_per_s"] = loop["worker_samples_per_s"]
            row["ratio_to_jax_loop"] = sim["worker_samples_per_s"] / loop["worker_samples_per_s"]
        if tloop is not None:
            if "error" in tloop:
                row["torch_loop_error"] = tloop["error"]
            else:
                row["torch_loop_worker_samples_per_s"] = tloop["worker_samples_per_s"]
                row["ratio_to_torch_loop"] = sim["worker_samples_per_s"] / tloop["worker_samples_per_s"]
        if not (args.no_memory_analysis or args.quick):
            est = estimate(task, alg, topo, B, worker_batch)
            row.update({f"xla_{k}": est[k] for k in ("peak_bytes", "temp_bytes", "argument_bytes")},
                       state_bytes=est["state_bytes"], data_bytes=est["data_bytes"])
        row["max_rss_bytes"] = max_rss_bytes()
        row["load_average_1min"] = os.getloadavg()[0]
        rows.append(row)
        log("    " + format_row(row))
    return rows


def conv_sweep(args, info: dict, log) -> list[dict]:
    """CNN only: D-SGD throughput through the runner for every ``conv_impl`` × ``worker_batch`` option."""
    rows = []
    shape, kw = MODEL_SPECS["cnn"]
    B = args.batch_size
    for n in args.n:
        ds = synthetic_dataset(shape, n * B)
        for impl in CONV_IMPLS:
            task = make_task(ds, "cnn", n, {**kw, "conv_impl": impl})
            for wb in args.sweep_worker_batch:
                wb = None if wb == 0 else wb
                alg, topo = make_algorithm("dsgd", n)
                log(f"  cnn n={n} conv_impl={impl} worker_batch={wb} ...")
                chunk, repeats = args.chunk or CHUNK["cnn"], args.repeats or REPEATS["cnn"]
                sim = time_simulate(task, alg, topo, B, chunk, repeats, wb)
                row = {**info, "date": dt.date.today().isoformat(), "kind": "conv_sweep", "model": "cnn",
                       "input_shape": list(shape), "n": n, "batch_size": B, "conv_impl": impl, "worker_batch": wb,
                       "algorithm": "dsgd", "topology": topo.name, "chunk_steps": chunk, "timed_chunks": repeats,
                       "worker_samples_per_s": sim["worker_samples_per_s"], "compile_s": sim["compile_s"],
                       "load_average_1min": os.getloadavg()[0]}
                rows.append(row)
                log(f"    {sim['worker_samples_per_s']:.0f} worker-samples/s, compile {sim['compile_s']:.1f} s")
    return rows


# --------------------------------------------------------------------------- output


def _fmt(v, spec: str) -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


COLUMNS = (("model", "model", "<9"), ("n", "n", ">5"), ("algorithm", "algorithm", "<9"),
           ("samples/s", "worker_samples_per_s", ">10.0f"), ("bound/s", "bound_worker_samples_per_s", ">10.0f"),
           ("x bound", "ratio_to_bound", ">7.2f"), ("x jax loop", "ratio_to_jax_loop", ">10.1f"),
           ("x torch", "ratio_to_torch_loop", ">7.1f"), ("compile s", "compile_s", ">9.1f"),
           ("XLA peak MiB", "xla_peak_mib", ">12.1f"), ("max RSS MiB", "max_rss_mib", ">11.0f"))


def _row_values(row: dict) -> dict:
    v = dict(row)
    v["xla_peak_mib"] = row["xla_peak_bytes"] / 2**20 if row.get("xla_peak_bytes") is not None else None
    v["max_rss_mib"] = row["max_rss_bytes"] / 2**20 if row.get("max_rss_bytes") is not None else None
    return v


def format_row(row: dict) -> str:
    v = _row_values(row)
    return " ".join(_fmt(v.get(key), spec) for _, key, spec in COLUMNS)


def format_table(rows: list[dict], info: dict) -> str:
    head = " ".join(format(h, re.sub(r"\.\d+f", "", spec).replace("f", "")) for h, _, spec in COLUMNS)
    lines = [f"simdl throughput: {info['platform']} ({info['device_kind']}), jax {info['jax_version']}, "
             f"B = {rows[0]['batch_size'] if rows else '-'} per worker; samples/s = worker-samples per second", "",
             head, "-" * len(head)]
    lines += [format_row(r) for r in rows]
    return "\n".join(lines)


def format_sweep(rows: list[dict]) -> str:
    lines = [f"{'n':>5} {'conv_impl':<9} {'worker_batch':>12} {'samples/s':>10} {'compile s':>9}"]
    for r in rows:
        wb = "all" if r["worker_batch"] is None else str(r["worker_batch"])
        lines.append(f"{r['n']:>5} {r['conv_impl']:<9} {wb:>12} {r['worker_samples_per_s']:>10.0f} "
                     f"{r['compile_s']:>9.1f}")
    return "\n".join(lines)


def output_path(args, info: dict) -> Path:
    if args.out:
        return Path(args.out)
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
                   help=f"models {QUICK['models']}, n {QUICK['n']}, D-SGD only, few steps (< 2 min on 2 CPU cores)")
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
                   help="timed steps of the per-worker loops after one warm-up (default 2; quick 1; 0 = skip)")
    p.add_argument("--loop-max-n", type=int, default=1024, help="skip the per-worker loops above this n")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch loop even if torch is installed")
    p.add_argument("--conv-impl", choices=CONV_IMPLS, default=None,
                   help=f"conv_impl of the CNN / ResNet-20 (default on CPU: {CPU_CONV_DEFAULT['conv_impl']}; "
                        "elsewhere the model's default)")
    p.add_argument("--worker-batch", type=int, default=None,
                   help="simulate(..., worker_batch=k): workers whose gradients are computed at once; 0 = all "
                        f"(default: all; convolutional models on CPU: {CPU_CONV_DEFAULT['worker_batch']})")
    p.add_argument("--no-memory-analysis", action="store_true",
                   help="skip simdl.memory.estimate (saves one compilation per row; implied by --quick)")
    p.add_argument("--conv-sweep", action="store_true",
                   help="instead of the table: CNN throughput for every conv_impl x --sweep-worker-batch")
    p.add_argument("--sweep-worker-batch", nargs="+", type=int, default=[0, 1, 4],
                   help="worker_batch values of --conv-sweep (0 = all workers at once)")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/throughput-<device>-<date>...)")
    args = p.parse_args(argv)
    args.custom = any(v is not None for v in (args.models, args.n, args.algorithms, args.max_n, args.conv_impl,
                                              args.worker_batch)) or args.batch_size != 32
    q = args.quick
    args.models = args.models or (QUICK["models"] if q else tuple(MODEL_SPECS))
    args.n = sorted(args.n or (QUICK["n"] if q else FULL_N))
    args.algorithms = args.algorithms or (QUICK["algorithms"] if q else ALGORITHMS)
    args.loop_steps = args.loop_steps if args.loop_steps is not None else (QUICK["loop_steps"] if q else 2)
    for name in ("batch_size", "chunk", "repeats"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.worker_batch is not None and args.worker_batch < 0:
        p.error("--worker-batch must be >= 0")
    if any(n < 1 for n in args.n):
        p.error("--n values must be >= 1")
    return args


def max_n_for(model: str, args, platform: str) -> int:
    if args.max_n is not None:
        return args.max_n
    return MAX_N_CPU[model] if platform == "cpu" else max(args.n)


def main(argv=None) -> int:
    args = parse_args(argv)
    info = device_info()
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
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
        for model in args.models:
            cap = max_n_for(model, args, info["platform"])
            for n in args.n:
                if n > cap:
                    payload["skipped"].append({"model": model, "n": n, "reason": f"n > max n {cap} for {model} on "
                                               f"{info['platform']} (time budget); use --max-n"})
                    continue
                payload["rows"] += bench_model_n(model, n, args, info, log)
                write_json(path, payload)  # rows so far survive an interrupted run
        table = format_table(payload["rows"], info)
        if payload["skipped"]:
            table += "\nskipped: " + "; ".join(f"{s['model']} n={s['n']}" for s in payload["skipped"])
    payload["wall_time_s"] = time.perf_counter() - t0
    write_json(path, payload)
    print(table)
    print(f"\n{len(payload['rows'])} rows in {payload['wall_time_s']:.0f} s; wrote {path}")
    if not torch_available() and not args.conv_sweep:
        print("(torch is not installed: no PyTorch loop column)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
