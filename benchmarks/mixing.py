"""Mixing-path benchmark: time ``W @ X`` on stacked parameters against the memory-bandwidth floor.

For each worker count n and topology (ring, torus, exponential, complete, one-peer exponential) it times every
applicable mixing path of :func:`simdl.mixing.make_mixer` (``dense``, ``sparse``, ``shift``, ``mean`` and what
``auto`` picks) on an ``(n, d)`` float32 array (d floats per worker, a model-sized vector), and divides by the
floor: one jitted elementwise pass over the same array (``x * 1.0001 + 0.5``: read n·d floats from one buffer,
write n·d floats to another). A ratio of 1 means the mix costs one pass over the parameters.

Timings are steady state: each path runs ``--inner`` times inside one compiled ``fori_loop`` that reads one
buffer and writes another (as the simulator's ``lax.scan`` does: the mix reads ``x − ηg`` and writes the new
parameters), so neither allocation nor first-touch page faults are timed (on CPU these dominate single calls on
arrays of tens of MB and make every path look like the floor). The table also lists the in-place elementwise pass
(``x ← x * 1.0001 + 0.5`` in the same buffer), which a mix, reading neighbours' rows, cannot do.

Paths whose work is far above the floor (``dense`` beyond ``--dense-max-n``, ``sparse``/``shift`` with more than
``--max-slots`` slots/offsets) are skipped and listed as such.

Usage::

    python benchmarks/mixing.py --quick            # n in {16, 256, 1024}, 3 repetitions of 5
    python benchmarks/mixing.py                    # n in {16, 64, 256, 1024, 4096}
    python benchmarks/mixing.py --n 1024 --d 100000 --topologies ring one_peer

Prints a table (with device and jax version) and writes ``benchmarks/results/mixing-<device>-<date>.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import re
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import simdl
from simdl.mixing import Mixer, choose_method, make_mixer

TOPOLOGIES = ("ring", "torus", "exponential", "complete", "one_peer")
PATHS = ("dense", "sparse", "shift", "mean", "auto")
FULL_N = (16, 64, 256, 1024, 4096)
QUICK_N = (16, 256, 1024)
COMPLETE_GRAPH_MAX_N = 256  # building complete(n) is O(n²) networkx edges: above this W = 11ᵀ/n is used directly


def _torus_shape(n: int) -> tuple[int, int]:
    rows = 2 ** (int(math.log2(n)) // 2) if n & (n - 1) == 0 else int(math.isqrt(n))
    while n % rows:
        rows -= 1
    return rows, n // rows


def make_topology(name: str, n: int):
    """The benchmark's topology ``name`` with n workers, or ``None`` for a large complete graph (see
    :data:`COMPLETE_GRAPH_MAX_N`)."""
    T = simdl.topologies
    if name == "ring":
        return T.ring(n)
    if name == "torus":
        return T.torus(*_torus_shape(n))
    if name == "exponential":
        return T.exponential(n)
    if name == "one_peer":
        return T.one_peer_exponential(n)
    if name == "complete":
        return T.complete(n) if n <= COMPLETE_GRAPH_MAX_N else None
    raise ValueError(f"unknown topology {name!r}; valid: {', '.join(TOPOLOGIES)}")


def _complete_mixer(n: int, method: str) -> Mixer:
    """Mixer of W = 11ᵀ/n without building the graph (``auto`` resolves to ``mean``, as choose_method does)."""
    if method in ("mean", "auto"):
        return Mixer("mean", n, 1, {})
    if method == "dense":
        return Mixer("dense", n, 1, {"weights": np.full((1, n, n), 1.0 / n, np.float32)})
    raise ValueError(f"path {method!r} is not benchmarked on a large complete graph")


def steady_state(g, inner: int):
    """Jitted ``(a, b) -> ...`` that applies ``g(x, step)`` ``inner`` times in a ``fori_loop``, each time reading
    ``b`` and writing the other carry buffer: the steady state inside the simulator's ``lax.scan`` (no allocation,
    no page faults; the input is a different buffer than the output, as it is for a mix of ``x − ηg``). The input
    depends on the loop index so that XLA cannot hoist ``g`` out of the loop."""

    def body(i, carry):
        _, b = carry
        return g(b + i.astype(b.dtype) * 1e-30, i), b

    return jax.jit(lambda a, b: jax.lax.fori_loop(0, inner, body, (a, b)))


def in_place(g, inner: int):
    """Like :func:`steady_state` but the carry is overwritten in place (only possible for elementwise ``g``)."""
    return jax.jit(lambda a: jax.lax.fori_loop(0, inner, lambda i, x: g(x, i), a))


def time_fn(fn, *args, reps: int, inner: int = 1) -> tuple[float, float]:
    """(median, min) seconds per application of ``fn(*args)`` (which applies its op ``inner`` times) over ``reps``
    runs after one warm-up (compile) run."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append((time.perf_counter() - t0) / inner)
    return statistics.median(times), min(times)


def _skip_reason(method: str, mixer: Mixer, n: int, args) -> str | None:
    if method == "dense" and n > args.dense_max_n:
        return f"n > --dense-max-n={args.dense_max_n}"
    if method == "sparse" and mixer.tables["index"].shape[-1] > args.max_slots:
        return f"{mixer.tables['index'].shape[-1]} slots > --max-slots={args.max_slots}"
    if method == "shift" and mixer.tables["offsets"].shape[-1] > args.max_slots:
        return f"{mixer.tables['offsets'].shape[-1]} offsets > --max-slots={args.max_slots}"
    return None


def bench_n(n: int, args) -> tuple[dict, list[dict]]:
    """Floor and all (topology, path) rows for one worker count."""
    x = jax.random.normal(jax.random.PRNGKey(n), (n, args.d), jnp.float32)
    y = x + 1.0
    inner = args.inner

    def elementwise(a, i):
        return a * 1.0001 + 0.5

    floor_fn = steady_state(elementwise, inner)
    floor_before = time_fn(floor_fn, y, x, reps=args.reps, inner=inner)
    inplace = time_fn(in_place(elementwise, inner), x, reps=args.reps, inner=inner)
    rows = []
    for name in args.topologies:
        topo = make_topology(name, n)
        for method in PATHS:
            row = {"n": n, "topology": topo.name if topo is not None else f"complete({n})", "path": method}
            try:
                if topo is None:
                    mixer = _complete_mixer(n, method)
                else:
                    choose_method(topo, method)  # raises for shift on non-circulant, mean on non-average
                    if method == "dense" and n > args.dense_max_n:
                        mixer = Mixer("dense", n, topo.period, {})
                    else:
                        mixer = make_mixer(topo, method)
            except ValueError as err:
                if method in ("shift", "mean", "sparse"):
                    continue  # path not applicable to this topology
                row.update(skipped=str(err))
                rows.append(row)
                continue
            row["method"] = mixer.method
            reason = _skip_reason(mixer.method, mixer, n, args)
            if reason:
                row["skipped"] = reason
                rows.append(row)
                continue
            fn = steady_state(lambda a, i, m=mixer: m(a, i), inner)
            med, best = time_fn(fn, y, x, reps=args.reps, inner=inner)
            row.update(seconds=med, seconds_min=best)
            rows.append(row)
    floor_after = time_fn(floor_fn, y, x, reps=args.reps, inner=inner)
    floor = min(floor_before[0], floor_after[0])
    for row in rows:
        if "seconds" in row:
            row["ratio_to_floor"] = row["seconds"] / floor
    nbytes = n * args.d * 4
    return {"n": n, "seconds": floor, "gb_per_s": 2 * nbytes / floor / 1e9, "bytes": nbytes,
            "seconds_in_place": inplace[0], "ratio_in_place": inplace[0] / floor}, rows


def device_info() -> dict:
    dev = jax.devices()[0]
    return {"platform": dev.platform, "device_kind": dev.device_kind, "device_count": jax.device_count(),
            "jax_version": jax.__version__, "python": sys.version.split()[0], "cpu_count": os.cpu_count()}


def device_slug(info: dict) -> str:
    kind = info["device_kind"] if info["platform"] != "cpu" else "cpu"
    return re.sub(r"[^a-z0-9]+", "-", kind.lower()).strip("-") or "device"


def format_table(info: dict, floors: list[dict], rows: list[dict], d: int) -> str:
    lines = [f"simdl mixing benchmark: {info['platform']} ({info['device_kind']}), jax {info['jax_version']}, "
             f"d = {d} float32 per worker; ratio = time / floor (floor = one elementwise pass)", ""]
    floor_of = {f["n"]: f for f in floors}
    head = f"{'n':>6} {'topology':<28} {'path':<7} {'method':<7} {'ms':>10} {'ratio':>7}"
    lines += [head, "-" * len(head)]
    last_n = None
    for r in rows:
        if r["n"] != last_n:
            f = floor_of[r["n"]]
            lines.append(f"{r['n']:>6} {'floor (x*1.0001+0.5)':<28} {'-':<7} {'-':<7} {f['seconds'] * 1e3:>10.3f} "
                         f"{1.0:>7.2f}   ({f['gb_per_s']:.1f} GB/s read+write)")
            lines.append(f"{r['n']:>6} {'  in-place elementwise pass':<28} {'-':<7} {'-':<7} "
                         f"{f['seconds_in_place'] * 1e3:>10.3f} {f['ratio_in_place']:>7.2f}")
            last_n = r["n"]
        if "seconds" in r:
            lines.append(f"{r['n']:>6} {r['topology']:<28} {r['path']:<7} {r['method']:<7} "
                         f"{r['seconds'] * 1e3:>10.3f} {r['ratio_to_floor']:>7.2f}")
        else:
            lines.append(f"{r['n']:>6} {r['topology']:<28} {r['path']:<7} {r.get('method', '-'):<7} "
                         f"{'skipped':>10}   ({r['skipped']})")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help=f"n in {QUICK_N}, 3 repetitions")
    p.add_argument("--n", type=int, nargs="+", help=f"worker counts (default {FULL_N})")
    p.add_argument("--d", type=int, default=10_000, help="float32 values per worker (default 10000)")
    p.add_argument("--reps", type=int, help="timed repetitions per path (default 5, --quick 3)")
    p.add_argument("--inner", type=int, help="applications per timed compiled loop (default 10, --quick 5)")
    p.add_argument("--topologies", nargs="+", default=list(TOPOLOGIES), choices=TOPOLOGIES)
    p.add_argument("--dense-max-n", type=int, default=1024, help="skip dense W @ X above this n (default 1024)")
    p.add_argument("--max-slots", type=int, default=64, help="skip sparse/shift with more slots/offsets (default 64)")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results", help="output folder")
    args = p.parse_args(argv)
    args.n = tuple(args.n or (QUICK_N if args.quick else FULL_N))
    args.reps = args.reps or (3 if args.quick else 5)
    args.inner = args.inner or (5 if args.quick else 10)
    for name in ("d", "reps", "inner", "dense_max_n", "max_slots"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if any(n < 2 for n in args.n):
        p.error(f"--n values must be >= 2, got {args.n}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    info = device_info()
    floors, rows = [], []
    for n in args.n:
        f, r = bench_n(n, args)
        floors.append(f)
        rows.extend(r)
        print(f"n={n}: done ({len(r)} rows)", file=sys.stderr, flush=True)
    print(format_table(info, floors, rows, args.d))
    now = dt.datetime.now(dt.UTC)
    result = {"benchmark": "mixing", "date": now.isoformat(timespec="seconds"), **info, "d": args.d,
              "dtype": "float32", "reps": args.reps, "inner": args.inner, "floor": floors, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"mixing-{device_slug(info)}-{now.strftime('%Y-%m-%d')}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(path)
    print(f"\nwrote {path}")
    return result


if __name__ == "__main__":
    main()
