"""Overhead of the simulated clock (``simulate(..., system=...)``, simdl.systems) on the default MLP task.

For each algorithm (D-SGD on a ring, all-reduce, RelaySGD on a chain) it runs the digits MLP task with n workers
(Dirichlet α = 0.1, B = 32) for ``--steps`` steps as one compiled chunk, without a system model and with one
(log-normal compute times with occasional slowdowns, per-link latency and bandwidth: the most work the clock
does). It compiles the runner's chunk program (:func:`simdl.runtime.build_chunk`, ``steps`` steps in one
``lax.scan``, exactly what ``simulate`` runs between evaluations) for both, calls each once untimed, then
``--repeats`` times interleaved, and keeps the fastest wall time and the fastest process CPU time (the CPU time is
the steadier figure on a shared machine). ``overhead`` = with / without − 1. It also gives the ratio of XLA's cost
analysis (flops, bytes accessed) of the two compiled programs, which does not depend on the machine's load, the
median over the interleaved pairs of the with/without ratio, and the CPU time of the clock update alone (a scan
of ``steps`` clock steps) per step next to the step time without it.

Usage::

    python benchmarks/system_overhead.py                      # n = 16, 500 steps, 3 repeats
    python benchmarks/system_overhead.py --n 64 --steps 1000 --algorithms dsgd

Prints a table with the device and jax version and writes ``benchmarks/results/system_overhead-<device>-<date>.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import simdl
from simdl.systems import SystemModel, lognormal, slowdowns

ALGORITHMS = {"dsgd": ("dsgd", "ring", {}), "allreduce": ("allreduce", "ring", {}),
              "relaysgd": ("relaysgd", "chain", {})}


def system_model(n: int) -> SystemModel:
    rng = np.random.default_rng(0)
    return SystemModel(compute_time=slowdowns(0.05, 4.0, base=lognormal(0.05, 0.3)),
                       latency=rng.uniform(1e-4, 1e-3, (n, n)), bandwidth=rng.uniform(1e8, 1e9, (n, n)))


def program(task, name: str, n: int, steps: int, system):
    """The compiled ``steps``-step chunk of the runner (:func:`simdl.runtime.build_chunk`, as ``simulate`` builds
    it) and its inputs; with ``system`` the clock is part of it."""
    from simdl.mixing import make_mixer
    from simdl.runtime import build_chunk, init_state
    from simdl.systems import build_clock

    alg_name, topo_name, kw = ALGORITHMS[name]
    alg = simdl.algorithms.get(alg_name, learning_rate=0.1, **kw)
    topo = simdl.topologies.get(topo_name, n)
    mixer = make_mixer(topo)
    state, worker_keys, key = init_state(task, alg, topo, mixer, 0)
    clock = build_clock(system, topo, alg)
    if clock is not None:
        state = (state, clock.init())
    chunk = build_chunk(task, alg, topo, mixer, 32, clock=clock)
    fn = jax.jit(lambda s, t, d, w, k: chunk(s, t, d, w, k, steps), donate_argnums=(0,))
    args = (jnp.int32(0), task.data, worker_keys, key)
    compiled = fn.lower(state, *args).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return compiled, state, args, {k: float(cost.get(k, float("nan"))) for k in ("flops", "bytes accessed")}


def clock_alone(name: str, n: int, steps: int, repeats: int) -> float:
    """Process CPU seconds per step of the clock update alone (a ``lax.scan`` of ``steps`` clock steps)."""
    from simdl.systems import build_clock

    alg_name, topo_name, _ = ALGORITHMS[name]
    clock = build_clock(system_model(n), simdl.topologies.get(topo_name, n), alg_name)
    key, sent = jax.random.PRNGKey(0), jnp.full((n,), 1e5, jnp.float32)
    fn = jax.jit(lambda c: jax.lax.scan(lambda c, t: (clock.step(c, sent, t, key), None), c, jnp.arange(steps))[0])
    c = jax.block_until_ready(fn(clock.init()))
    best = float("inf")
    for _ in range(repeats):
        c0 = time.process_time()
        c = jax.block_until_ready(fn(c))
        best = min(best, time.process_time() - c0)
    return best / steps


def timed(compiled, state, args) -> tuple[float, float, object]:
    """(wall seconds, process CPU seconds, new state) of one call."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = jax.block_until_ready(compiled(state, *args))
    return time.perf_counter() - t0, time.process_time() - c0, out[0]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--algorithms", default=",".join(ALGORITHMS))
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args(argv)
    task = simdl.tasks.classification("digits", "mlp", n_workers=args.n, alpha=0.1)
    dev = jax.devices()[0]
    rows = []
    for name in args.algorithms.split(","):
        progs = {"without": program(task, name, args.n, args.steps, None),
                 "with": program(task, name, args.n, args.steps, system_model(args.n))}
        states = {v: p[1] for v, p in progs.items()}
        wall, cpu = {"without": [], "with": []}, {"without": [], "with": []}
        for rep in range(args.repeats + 1):  # the first call of each is a warm-up
            for v, (compiled, _, a, _) in progs.items():
                w, c, states[v] = timed(compiled, states[v], a)
                if rep:
                    wall[v].append(w)
                    cpu[v].append(c)
        row = {"algorithm": name, "n": args.n, "steps": args.steps}
        for what, d in (("wall", wall), ("cpu", cpu)):
            row[f"{what}_without_s"], row[f"{what}_with_s"] = min(d["without"]), min(d["with"])
            row[f"{what}_overhead"] = row[f"{what}_with_s"] / row[f"{what}_without_s"] - 1.0
            row[f"all_{what}_s"] = d
        for what, d in (("wall", wall), ("cpu", cpu)):  # interleaved pairs: robust to slow phases of the machine
            row[f"{what}_overhead_median"] = float(np.median(np.asarray(d["with"]) / np.asarray(d["without"]))) - 1
        row["clock_alone_us_per_step"] = clock_alone(name, args.n, args.steps, args.repeats) * 1e6
        row["step_us_without"] = row["cpu_without_s"] / args.steps * 1e6
        for k in ("flops", "bytes accessed"):
            row[f"xla_{k.replace(' ', '_')}_ratio"] = progs["with"][3][k] / progs["without"][3][k]
        rows.append(row)
    print(f"device: {dev.platform} {dev.device_kind}; jax {jax.__version__}; digits MLP, n={args.n}, "
          f"B=32, {args.steps} steps per call, best of {args.repeats}")
    print("wall/cpu: fastest call (s); overhead: of the fastest, and median over interleaved pairs; clock: its "
          "update alone, CPU us per step; XLA: cost-analysis increase")
    print(f"{'algorithm':<11}{'wall w/o':>9}{'wall with':>10}{'ovh':>7}{'ovh med':>8}{'cpu w/o':>9}{'cpu with':>9}"
          f"{'ovh':>7}{'ovh med':>8}{'clock us':>9}{'step us':>9}{'XLA flops':>10}{'XLA bytes':>10}")
    for r in rows:
        print(f"{r['algorithm']:<11}{r['wall_without_s']:>9.3f}{r['wall_with_s']:>10.3f}{r['wall_overhead']:>7.1%}"
              f"{r['wall_overhead_median']:>8.1%}{r['cpu_without_s']:>9.3f}{r['cpu_with_s']:>9.3f}"
              f"{r['cpu_overhead']:>7.1%}{r['cpu_overhead_median']:>8.1%}{r['clock_alone_us_per_step']:>9.1f}"
              f"{r['step_us_without']:>9.0f}{r['xla_flops_ratio'] - 1:>10.2%}"
              f"{r['xla_bytes_accessed_ratio'] - 1:>10.2%}")
    if not args.no_save:
        out = Path(__file__).parent / "results"
        out.mkdir(exist_ok=True)
        kind = dev.device_kind.replace(" ", "_").lower()
        path = out / f"system_overhead-{kind}-{time.strftime('%Y%m%d')}.json"
        meta = {"device": {"platform": dev.platform, "kind": dev.device_kind}, "jax_version": jax.__version__,
                "date": time.strftime("%Y-%m-%dT%H:%M:%S"), "rows": rows}
        path.write_text(json.dumps(meta, indent=1))
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
