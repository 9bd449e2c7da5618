"""Paper check: RelaySGD's effective learning rate (Vogels et al. 2021, arXiv 2110.04175; docs/algorithms.md#relaysgd).

RelaySGD fills the mass of workers whose models have not arrived yet with the initial model x⁰, so part of every
update is lost: a unit update ends up in the converged average only with weight a < 1, and the effective step size
shrinks by ``1/a``. The paper (appendix, "correction factor") measures it by injecting a unit update at every worker
at step 0, running the relay with no further gradients until consensus, and taking ``1 / x_final``; it reports that
the factor is about ``τ_max / 2`` (τ_max = tree diameter) and uses learning rates 5× (16-worker chain) and 3×
(16-worker double binary trees) larger than all-reduce's in its CIFAR experiments.

We measure, with our RelaySGD (fill with x⁰ = 0, no momentum, η = 1):

1. the impulse response: a unit update injected at ONE worker j (all n choices, vmapped): the mass ``n · x̄(t)``
   reaching the average over time, its final value a_j, and the correction factor ``1 / mean_j a_j`` (= the paper's
   inject-at-every-worker definition, by linearity) against τ_max/2; RelaySum/Grad and all-reduce keep mass 1;
2. the same effect in optimisation: on the noiseless random quadratics (n = 16, ζ² = 1) with a small η, the ratio of
   the asymptotic convergence rates of all-reduce and RelaySGD (how much smaller RelaySGD's effective η is);
3. the tuned learning rates (fewest steps to ``f(x̄) − f* ≤ 1e-6``) of RelaySGD and all-reduce at n = 16.

Usage: ``python benchmarks/papers/relay_impulse.py [--quick] [--out DIR]``; prints markdown tables and writes
``relay_impulse.png``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import simdl
from simdl.algorithms import allreduce
from simdl.algorithms.base import Context
from simdl.algorithms.relay import relaysgd, relaysum_grad, tree_plans

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import relay_quadratics as rq  # noqa: E402  (sibling script: the vmapped learning-rate search)

T = simdl.topologies


def diameter(topo) -> int:
    """τ_max: the largest tree distance over the topology's trees."""
    return max(p.diameter for p in tree_plans(topo))


def impulse(alg, topo, steps: int) -> np.ndarray:
    """Mass ``n · x̄(t)`` after a unit update at worker j at step 0, for every j: ``(n, steps)`` (averaged over the
    coordinates; d = number of trees, so each coordinate travels over one tree)."""
    n = topo.n
    d = len(topo.trees) if topo.trees else 1
    w = np.full(n, 1.0 / n)
    key = jax.random.PRNGKey(0)

    def run(j):
        state = alg.init({"x": jnp.zeros((n, d), jnp.float32)}, Context(jnp.int32(0), key, topo, None, w))
        kick = -jax.nn.one_hot(j, n, dtype=jnp.float32)[:, None] * jnp.ones((1, d), jnp.float32)

        def body(state, t):
            g = jnp.where(t == 0, kick, 0.0)
            state, _ = alg.step(state, {"x": g}, Context(t, jax.random.fold_in(key, t), topo, None, w))
            return state, n * jnp.mean(alg.params(state)["x"])

        return jax.lax.scan(body, state, jnp.arange(steps, dtype=jnp.int32))[1]

    return np.asarray(jax.jit(jax.vmap(run))(jnp.arange(n)), np.float64)


def impulse_table(topos, min_steps: int = 400):
    rows, curves = [], {}
    for topo in topos:
        tau = diameter(topo)
        steps = max(min_steps, 200 * tau)
        for label, alg in (("RelaySGD", relaysgd(1.0, momentum=0.0)),
                           ("RelaySGD fill=self", relaysgd(1.0, momentum=0.0, fill="self")),
                           ("RelaySum/Grad", relaysum_grad(1.0, momentum=0.0))):
            mass = impulse(alg, topo, steps)
            final = mass[:, -1]
            settled = np.max(np.abs(mass[:, -1] - mass[:, -11]))  # change over the last 10 steps
            frac = mass.mean(0) / final.mean()
            outside = np.flatnonzero(np.abs(frac - 1) > 0.01)
            t99 = int(outside[-1]) + 2 if outside.size else 1  # first step from which it stays within 1%
            rows.append({"topology": topo.name, "variant": label, "tau_max": tau, "factor": 1 / final.mean(),
                         "a_min": final.min(), "a_max": final.max(), "t99": t99, "settled": settled})
            curves[(topo.name, label)] = mass.mean(0)
    return rows, curves


def rate(sub: np.ndarray, lo: int, hi: int) -> float:
    """Slope of log suboptimality per step over steps [lo, hi) (negative = converging)."""
    t = np.arange(lo, hi)
    return float(np.polyfit(t, np.log(sub[lo:hi]), 1)[0])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer tree sizes, shorter runs")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "figures"))
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    print(f"# RelaySGD effective learning rate ({datetime.date.today()}, {jax.devices()[0].device_kind}, "
          f"jax {jax.__version__})\n")

    # 1. impulse response
    sizes = [4, 8, 16, 32] if args.quick else [4, 8, 16, 32, 64]
    topos = ([T.chain(n) for n in sizes] + [T.binary_tree(n) for n in sizes] + [T.double_binary_trees(16)])
    rows, curves = impulse_table(topos)
    print("## 1. Unit update at one worker (η = 1, x⁰ = 0): final mass a_j in the average, factor = 1 / mean_j a_j\n")
    print("| topology | variant | τ_max | τ_max/2 | factor 1/mean a | a_j min..max | within 1% from step "
          "| Δ last 10 steps |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['topology']} | {r['variant']} | {r['tau_max']} | {r['tau_max'] / 2:g} | {r['factor']:.3f} | "
              f"{r['a_min']:.3f}..{r['a_max']:.3f} | {r['t99']} | {r['settled']:.1e} |")

    # 2. effective step size in optimisation: asymptotic rate at a small learning rate
    eta = 0.02
    steps = 1500 if args.quick else 3000
    probs = rq.problems(16, (1.0,))
    sub_ar = np.asarray(rq.make_runner(lambda lr: allreduce(lr), T.complete(16), steps)(
        jnp.asarray([eta]), *probs))[0, 0]
    lo_ar = steps // 10
    hi_ar = int(np.argmax(sub_ar < 1e-6)) if (sub_ar < 1e-6).any() else steps
    r_ar = rate(sub_ar, lo_ar, max(hi_ar, lo_ar + 50))
    print(f"\n## 2. Asymptotic rate at η = {eta} on random quadratics (n = 16, ζ² = 1, noiseless)\n")
    print("| algorithm | slope of log(f(x̄) − f*) per step | all-reduce slope / slope (effective-η shrink) | "
          "impulse factor |")
    print("|---|---|---|---|")
    print(f"| all-reduce | {r_ar:.4g} | 1 | 1 |")
    rate_rows = []
    for topo in (T.chain(16), T.binary_tree(16), T.double_binary_trees(16)):
        sub = np.asarray(rq.make_runner(lambda lr: relaysgd(lr, momentum=0.0), topo, steps)(
            jnp.asarray([eta]), *probs))[0, 0]
        hi = int(np.argmax(sub < 1e-6)) if (sub < 1e-6).any() else steps
        r = rate(sub, steps // 3, max(hi, steps // 3 + 50))
        fac = next(x["factor"] for x in rows if x["topology"] == topo.name and x["variant"] == "RelaySGD")
        rate_rows.append((topo.name, r, r_ar / r, fac))
        print(f"| RelaySGD {topo.name} | {r:.4g} | {r_ar / r:.3f} | {fac:.3f} |")

    # 3. tuned learning rates at n = 16
    lrs = rq.lr_grid(args.quick)
    cap = 1500
    print(f"\n## 3. Tuned η (fewest steps to 1e-6, grid ratio {lrs[1] / lrs[0]:.3g}) on random quadratics, n = 16\n")
    print("| algorithm | ζ² = 0.01: steps (η) | ζ² = 1: steps (η) | η / η_all-reduce (ζ² = 1) |")
    print("|---|---|---|---|")
    probs2 = rq.problems(16, (0.01, 1.0))
    tuned = {"all-reduce": rq.tune(lambda lr: allreduce(lr), T.complete(16), probs2, lrs, cap)}
    for topo in (T.chain(16), T.binary_tree(16), T.double_binary_trees(16)):
        tuned[f"RelaySGD {topo.name}"] = rq.tune(lambda lr: relaysgd(lr, momentum=0.0), topo, probs2, lrs, cap)
    base = tuned["all-reduce"]["lr"][1]
    for name, r in tuned.items():
        cells = [rq._fmt(r["steps"][i], r["lr"][i], cap) for i in range(2)]
        ratio = "n/a" if r["lr"][1] is None else f"{r['lr'][1] / base:.3g}"
        print(f"| {name} | {cells[0]} | {cells[1]} | {ratio} |")
    print(f"\ntotal {time.perf_counter() - t0:.0f}s")
    _plot(curves, rows, args.out)
    return rows, rate_rows, tuned


def _plot(curves, rows, out_dir):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for name, lw in (("chain(16)", 1.5), ("binary_tree(16)", 3.0), ("double_binary_trees(16)", 1.0)):
        for label, ls in (("RelaySGD", "-"), ("RelaySum/Grad", ":")):
            c = curves[(name, label)]
            ax1.plot(np.arange(1, len(c) + 1)[:80], c[:80], ls, lw=lw, label=f"{label} {name}")
    ax1.set_xlabel("step")
    ax1.set_ylabel("n · x̄ after a unit update (mean over j)")
    ax1.legend(fontsize=7)
    ax1.set_title("impulse response (η = 1, x⁰ = 0)")
    for kind, marker in (("chain", "o"), ("binary_tree", "s")):
        sel = [r for r in rows if r["topology"].startswith(kind + "(") and r["variant"] == "RelaySGD"]
        ax2.plot([r["tau_max"] for r in sel], [r["factor"] for r in sel], marker + "-", label=f"{kind}: 1/mean a")
    taus = sorted({r["tau_max"] for r in rows})
    ax2.plot(taus, [t / 2 for t in taus], "k--", label="τ_max / 2")
    ax2.set_xlabel("tree diameter τ_max")
    ax2.set_ylabel("effective step-size shrink factor")
    ax2.legend(fontsize=8)
    ax2.set_title("correction factor vs τ_max/2")
    fig.tight_layout()
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "relay_impulse.png")
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
