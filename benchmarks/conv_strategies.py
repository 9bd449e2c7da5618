"""Which per-worker strategy and convolution implementation are fastest, measured: the data behind the defaults.

Two tables, both on the current default device:

* ``--models``: a training step of n workers (per-worker ``value_and_grad`` + SGD + ring gossip, K steps in one
  ``lax.scan``, fastest of R calls after a compiling one) for every ``execution`` (``vmap``, ``map``, ``map``
  with ``map_batch_size`` k) × ``conv_impl`` (``xla``, ``patches``, ``lax``) on SmallCNN 8×8×1 and 28×28×1
  and ResNet-20 (GroupNorm) 32×32×3, per-worker batch B = 32. Worker-samples per second.
* ``--layers``: the kernel gradient of one 3×3 stride-1 convolution (B = 32), inside ``lax.map`` over 4 workers
  as in training, for each formulation of :func:`simdl.models.conv.kernel_grad_method` (``taps``, ``im2col``,
  ``conv``), on the layer shapes of those models. GFLOP/s of the ``2·B·H·W·cin·cout·9`` multiply-adds.

The defaults (``execution="auto"``: ``map`` for convolutional models on CPU, ``vmap`` elsewhere;
``conv_impl="auto"`` = ``xla``; the kernel-gradient rule) follow these tables; ``benchmarks/RESULTS.md`` records
them with the device.

Usage::

    python benchmarks/conv_strategies.py --layers --models     # both tables (~10 min on 2 CPU cores)
    python benchmarks/conv_strategies.py --models --n 16 --model cnn28

Writes ``benchmarks/results/conv-strategies-<device>-<date>.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from simdl.models import get_model, per_worker_apply

MODELS = {"cnn8": ("cnn", (8, 8, 1), {}), "cnn28": ("cnn", (28, 28, 1), {}),
          "resnet20": ("resnet20", (32, 32, 3), {"norm": "group"})}
STRATEGIES = (("vmap", None), ("map", None), ("map", 2), ("map", 4))
IMPLS = ("auto", "xla", "patches", "lax")
LAYERS = ((32, 16, 16), (16, 32, 32), (8, 64, 64), (28, 1, 32), (14, 32, 64), (32, 3, 16))


def _best(f, *args, reps: int = 3) -> float:
    jax.block_until_ready(f(*args))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(f(*args))
        times.append(time.perf_counter() - t0)
    return min(times)


def time_model(model: str, n: int, execution: str, map_batch_size, impl: str, steps: int, batch: int = 32) -> float:
    name, shape, kw = MODELS[model]
    net = get_model(name, 10, conv_impl=impl, **kw)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(n, batch, *shape)).astype(np.float32))
    y = jnp.asarray(rng.integers(0, 10, (n, batch)), jnp.int32)
    p0 = net.init(jax.random.PRNGKey(0), x[0, :1])
    params = jax.tree.map(lambda a: jnp.broadcast_to(a, (n,) + a.shape) + 0.0, p0)

    def loss(p, xb, yb):
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(net.apply(p, xb), yb))

    vg = per_worker_apply(jax.value_and_grad(loss), execution, map_batch_size)

    def step(p, _):
        losses, g = vg(p, x, y)
        p = jax.tree.map(lambda a, b: a - 0.01 * b, p, g)
        p = jax.tree.map(lambda a: (jnp.roll(a, 1, 0) + a + jnp.roll(a, -1, 0)) / 3, p)
        return p, jnp.mean(losses)

    run = jax.jit(lambda p: lax.scan(step, p, None, length=steps))
    return n * batch * steps / _best(run, params)


def _dk_formulations(h: int, cin: int, cout: int):
    dot = partial(lax.dot_general, dimension_numbers=(((0,), (0,)), ((), ())))

    def shifted(x, g):
        xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        b, hp, wp, _ = xp.shape
        gp = jnp.pad(g, ((0, 0), (0, 2), (0, 2), (0, 0)))
        rows = b * hp * wp
        length = rows - 2 * wp - 2
        xf, gf = xp.reshape(rows, cin), gp.reshape(rows, cout)[:length]
        return [lax.slice_in_dim(xf, i * wp + j, i * wp + j + length) for i in range(3) for j in range(3)], gf

    def taps(x, g):
        s, gf = shifted(x, g)
        return jnp.stack([dot(a, gf) for a in s])

    def im2col(x, g):
        s, gf = shifted(x, g)
        return dot(jnp.concatenate(s, axis=1), gf)

    def conv(x, g):
        lhs = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))).transpose(3, 1, 2, 0)
        return lax.conv_general_dilated(lhs, g.transpose(1, 2, 0, 3), (1, 1), "VALID",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))

    return {"taps": taps, "im2col": im2col, "conv": conv}


def time_layers(workers: int = 4, batch: int = 32) -> list[dict]:
    rows = []
    for h, cin, cout in LAYERS:
        x = jnp.ones((workers, batch, h, h, cin))
        g = jnp.ones((workers, batch, h, h, cout))
        flops = 2 * batch * h * h * cin * cout * 9 * workers
        row = {"H": h, "cin": cin, "cout": cout}
        for name, f in _dk_formulations(h, cin, cout).items():
            run = jax.jit(lambda x, g, f=f: lax.map(lambda t: f(*t), (x, g)))
            row[name] = flops / _best(run, x, g) / 1e9
        rows.append(row)
        print(f"  dk H={h:2d} {cin:2d}->{cout:2d}: " + "  ".join(f"{k} {row[k]:6.1f}" for k in
                                                                ("taps", "im2col", "conv")) + " GFLOP/s", flush=True)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", action="store_true")
    p.add_argument("--models", action="store_true")
    p.add_argument("--model", action="append", choices=sorted(MODELS), help="repeatable; default: all")
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if not (args.layers or args.models):
        args.layers = args.models = True
    dev = jax.devices()[0]
    info = {"platform": dev.platform, "device_kind": dev.device_kind, "jax_version": jax.__version__,
            "date": dt.date.today().isoformat()}
    print(f"device {dev.device_kind} ({dev.platform}), jax {jax.__version__}")
    out = {**info, "layers": [], "models": []}
    if args.layers:
        print("kernel gradient of a 3x3 stride-1 conv, B=32, inside lax.map over 4 workers:")
        out["layers"] = time_layers()
    if args.models:
        print(f"training step, n={args.n}, B=32 (worker-samples/s):")
        for model in args.model or list(MODELS):
            steps = 10 if model == "cnn8" else (3 if model == "cnn28" else 1)
            for impl in IMPLS:
                for execution, mbs in STRATEGIES:
                    slow = (impl == "lax" and model != "cnn8") or (model == "resnet20" and execution == "vmap")
                    if slow and dev.platform == "cpu":
                        continue  # a minute or more per call on CPU: grouped convolutions / non-canonical layouts
                    sps = time_model(model, args.n, execution, mbs, impl, steps)
                    label = execution + ("" if mbs is None else f"(k={mbs})")
                    out["models"].append({"model": model, "n": args.n, "execution": execution,
                                          "map_batch_size": mbs, "conv_impl": impl, "worker_samples_per_s": sps})
                    print(f"  {model:8s} {impl:8s} {label:10s} {sps:10.0f}", flush=True)
    slug = "cpu" if dev.platform == "cpu" else dev.device_kind.lower().replace(" ", "-")
    path = Path(args.out or Path(__file__).parent / "results" / f"conv-strategies-{slug}-{info['date']}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
