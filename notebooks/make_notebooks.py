"""Build the notebooks in this folder from their cell sources (run: python notebooks/make_notebooks.py).

Keeping the sources here makes notebook diffs readable; the tests execute the .ipynb files.
"""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).parent

QUICKSTART = [
    ("md", """# simdl quickstart

From a topology to a plot: 16 workers train an MLP on the embedded handwritten digits, each holding a
Dirichlet(α = 0.1) label-skewed shard, and we compare gossip on a ring with exact all-reduce.

`SIMDL_NOTEBOOK_STEPS` (environment) shortens the run; the tests set it."""),
    ("code", """import os

import matplotlib.pyplot as plt
import numpy as np

import simdl

STEPS = int(os.environ.get("SIMDL_NOTEBOOK_STEPS", 600))"""),
    ("md", """## 1. Topology
A topology is a graph plus its mixing matrix W (Metropolis–Hastings weights by default). The spectral gap
1 − max(|λ₂|, |λₙ|) says how fast gossip averages."""),
    ("code", """ring = simdl.topologies.ring(16)
complete = simdl.topologies.complete(16)
print(ring.name, "spectral gap", round(ring.spectral_gap, 4), "diameter", ring.diameter)
print(np.round(ring.weights[:4, :4], 3))
for n in (8, 16, 32, 64):
    print(n, {name: round(simdl.topologies.get(name, n).spectral_gap, 4) for name in ("ring", "torus", "exponential")})"""),
    ("md", """## 2. Task
`classification` loads the dataset, splits it over the workers (every worker gets N // n samples) and builds the
model. Smaller α means more label skew."""),
    ("code", """task = simdl.tasks.classification("digits", model="mlp", n_workers=16, partition="dirichlet", alpha=0.1, seed=0)
print(task.name, task.info)
labels = np.asarray(task.data["y"])[np.asarray(task.data["indices"])]
print("classes held by the first 4 workers:", [sorted(set(row.tolist())) for row in labels[:4]])"""),
    ("md", """## 3. Algorithms and simulation
Each algorithm is a pure `(init, step)` pair over the stacked worker state; `simulate` compiles `eval_every` steps
into one `lax.scan`."""),
    ("code", """algs = {
    "allreduce (complete)": (simdl.algorithms.allreduce(learning_rate=0.1), complete),
    "D-SGD (ring)": (simdl.algorithms.dsgd(learning_rate=0.1), ring),
    "D-SGD Nesterov (ring)": (simdl.algorithms.dsgd(learning_rate=0.02, momentum=0.9, nesterov=True), ring),
}
results = {}
for name, (alg, topo) in algs.items():
    results[name] = simdl.simulate(task, alg, topo, steps=STEPS, batch_size=16, eval_every=max(1, STEPS // 10))
    r = results[name]
    print(f"{name:24s} acc(x̄)={r.final['avg_model_accuracy']:.3f} "
          f"worst worker={r.final['worker_accuracy_min']:.3f} Ξ²={r.final['consensus_distance']:.2e} "
          f"compiles={r.info['compiles']}")"""),
    ("md", "## 4. Plot"),
    ("code", """fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
for name, r in results.items():
    axes[0].plot(r.history["step"], r.history["avg_model_accuracy"], label=name)
    axes[1].semilogy(r.history["step"], np.maximum(r.history["consensus_distance"], 1e-12), label=name)
axes[0].set(xlabel="step", ylabel="averaged-model test accuracy")
axes[1].set(xlabel="step", ylabel="consensus distance Ξ²")
axes[0].legend()
fig.tight_layout()"""),
    ("code", """assert results["allreduce (complete)"].final["avg_model_accuracy"] > 0.5
assert results["allreduce (complete)"].final["consensus_distance"] < 1e-8"""),
]


def build(cells, path):
    nb = new_notebook()
    nb.cells = [new_markdown_cell(src) if kind == "md" else new_code_cell(src) for kind, src in cells]
    for i, cell in enumerate(nb.cells):  # stable ids: regenerating a notebook does not change its file
        cell["id"] = f"{Path(path).stem}-{i}"
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


HETEROGENEITY = [
    ("md", """# Data heterogeneity: accuracy vs Dirichlet α

16 workers train an MLP on the embedded digits. Each worker's shard is drawn with the Dirichlet-α label split of the
RelaySGD and QGM papers: α = 0.03 gives each worker one or two classes, α = 10 is close to IID. We compare

* **D-SGD** on a ring (plain gossip: heterogeneity makes the local models drift apart),
* **QGM** (`qg_dsgdm`, quasi-global Nesterov momentum) on a ring,
* **gradient tracking** on a ring (corrects the drift with a second gossiped vector),
* **D²** on a *lazy* ring (it needs λ_min(W) > −1/3; `lazy_weight=0.1` gives W' = 0.1 I + 0.9 W),
* **RelaySGD** on spanning trees: double binary trees (it only runs on trees; try `T.chain(N)` too).

Runs that differ only in α have the same shapes, so `simdl.batch.simulate_batch` stacks them along a run axis:
one compiled program per method for all α values. `SIMDL_NOTEBOOK_STEPS` shortens the runs (the tests set it)."""),
    ("code", """import os

import matplotlib.pyplot as plt
import numpy as np

import simdl
from simdl.batch import simulate_batch

STEPS = int(os.environ.get("SIMDL_NOTEBOOK_STEPS", 1000))
N = 16
ALPHAS = [0.03, 0.1, 0.3, 1.0, 10.0]
T, A = simdl.topologies, simdl.algorithms"""),
    ("md", """## Tasks: one per α
The partition seed is the same, so only the label skew changes. Every worker holds exactly N/n samples whatever α,
which is what lets the runs share one program."""),
    ("code", """tasks = [simdl.tasks.classification("digits", model="mlp", n_workers=N, partition="dirichlet", alpha=a)
         for a in ALPHAS]
for a, task in zip(ALPHAS, tasks):
    labels = np.asarray(task.data["y"])[np.asarray(task.data["indices"])]
    classes = [len(set(row.tolist())) for row in labels]
    print(f"alpha={a:<5} classes per worker: mean {np.mean(classes):.1f}, min {min(classes)}")"""),
    ("md", """## Methods
Learning rates are those of the default experiment (`simdl/configs/default.toml`). `simulate_batch` takes a function
`hp -> Algorithm`; here nothing is swept inside the batch but the task, so `hp` is empty."""),
    ("code", """METHODS = {
    "D-SGD / ring": (lambda hp: A.dsgd(0.1), T.ring(N)),
    "QGM / ring": (lambda hp: A.qg_dsgdm(0.02, momentum=0.9, nesterov=True), T.ring(N)),
    "gradient tracking / ring": (lambda hp: A.gradient_tracking(0.1), T.ring(N)),
    "D² / lazy ring": (lambda hp: A.d2(0.1), T.get("ring", N, lazy_weight=0.1)),
    "RelaySGD / double binary trees": (lambda hp: A.relaysgd(0.05), T.double_binary_trees(N)),
}
results = {}
for name, (make, topo) in METHODS.items():
    runs = simulate_batch(tasks, make, [{}] * len(tasks), topo, steps=STEPS, batch_size=16, seeds=[0] * len(tasks),
                          eval_every=max(1, STEPS // 3))
    results[name] = runs
    accs = " ".join(f"{r.final['avg_model_accuracy']:.3f}" for r in runs)
    print(f"{name:32s} compiles={runs[0].info['compiles']} acc(x̄) over α: {accs}")"""),
    ("md", """## Accuracy vs α
Left: the averaged model x̄; right: the worst worker's own model (what a user of one worker would get). Plain
gossip suffers most at small α; tracking, D² and RelaySGD are designed to remove the heterogeneity term."""),
    ("code", """fig, axes = plt.subplots(1, 3, figsize=(15, 4))
for name, runs in results.items():
    axes[0].semilogx(ALPHAS, [r.final["avg_model_accuracy"] for r in runs], "o-", label=name)
    axes[1].semilogx(ALPHAS, [r.final["worker_accuracy_min"] for r in runs], "o-", label=name)
    axes[2].loglog(ALPHAS, [max(r.final["consensus_distance"], 1e-12) for r in runs], "o-", label=name)
axes[0].set(xlabel="Dirichlet α (larger = more IID)", ylabel="test accuracy of x̄")
axes[1].set(xlabel="Dirichlet α", ylabel="worst worker's test accuracy")
axes[2].set(xlabel="Dirichlet α", ylabel="consensus distance Ξ²")
axes[0].legend(fontsize=8)
fig.suptitle(f"{N} workers, MLP on digits, {STEPS} steps")
fig.tight_layout()"""),
    ("code", """table = {name: [round(r.final["worker_accuracy_min"], 3) for r in runs]
         for name, runs in results.items()}
print("worst-worker accuracy, alpha =", ALPHAS)
for name, row in table.items():
    print(f"  {name:32s} {row}")"""),
    ("code", """# one compiled program per method (all α values batched), sane accuracies, and heterogeneity visibly
# hurts plain gossip: D-SGD's models drift further apart at the smallest α than at the largest
for name, runs in results.items():
    assert runs[0].info["compiles"] <= 2 and len(runs) == len(ALPHAS), name
    assert all(r.diverged_at is None and 0.0 <= r.final["avg_model_accuracy"] <= 1.0 for r in runs), name
    assert runs[-1].final["avg_model_accuracy"] > 0.3, name  # α = 10: far above chance (0.1)
dsgd = results["D-SGD / ring"]
assert dsgd[0].final["consensus_distance"] > dsgd[-1].final["consensus_distance"]"""),
]

SCALING = [
    ("md", """# Scaling: spectral gap, error and wall time vs the number of workers n

How does gossip degrade as n grows, and what does simulating n workers cost?

1. the spectral gap 1 − max(|λ₂|, |λₙ|) of the mixing matrix vs n for ring, torus, exponential, one-peer exponential
   and complete graphs;
2. D-SGD on the random quadratics of the RelaySGD paper (cheap per worker, so n can reach 1024 on a laptop):
   error f(x̄) − f* and simulator throughput vs n, on a ring, on the exponential graph, and with exact all-reduce.

`SIMDL_NOTEBOOK_STEPS` shortens the runs; below 200 steps the notebook also stops at n = 256 (dense eigenvalue
computations at n = 1024 take seconds each)."""),
    ("code", """import os
import time

import matplotlib.pyplot as plt
import numpy as np

import simdl

STEPS = int(os.environ.get("SIMDL_NOTEBOOK_STEPS", 2000))
QUICK = STEPS < 200
N_MAX = 256 if QUICK else 1024
T, A = simdl.topologies, simdl.algorithms"""),
    ("md", """## 1. Spectral gap vs n
`spectral_gap` is a property of one mixing matrix. The one-peer exponential graph is *time-varying*: at step k
worker i averages with i + 2^(k mod τ), τ = log₂ n. Its `spectral_gap` is that of the first matrix W₀ alone, which
is as small as a directed ring's; but for n = 2^τ the product of one period, W_{τ−1}⋯W₀, is the exact average
11ᵀ/n. The meaningful number is the per-step gap of the period product, 1 − ρ(W_{τ−1}⋯W₀)^{1/τ}, which is 1."""),
    ("code", """def period_gap(topo):
    \"\"\"Per-step spectral gap of a time-varying topology: 1 − ρ(product over one period)^(1/period).\"\"\"
    prod = np.eye(topo.n)
    for s in range(topo.period):
        prod = topo.weights_at(s) @ prod
    ev = np.linalg.eigvals(prod - np.ones((topo.n, topo.n)) / topo.n)  # remove the consensus eigenvalue
    return 1.0 - np.max(np.abs(ev)) ** (1.0 / topo.period)


sizes = [2 ** k for k in range(2, int(np.log2(N_MAX)) + 1)]
gaps = {name: [T.get(name, n).spectral_gap for n in sizes]
        for name in ("ring", "torus", "exponential", "complete")}
gaps["one-peer exponential (W₀ only)"] = [T.get("one_peer_exponential", n).spectral_gap for n in sizes]
gaps["one-peer exponential (per step, over a period)"] = [period_gap(T.get("one_peer_exponential", n)) for n in sizes]
for name, g in gaps.items():
    print(f"{name:48s}", " ".join(f"{v:.2e}" for v in g))"""),
    ("code", """fig, ax = plt.subplots(figsize=(7, 4.5))
for (name, g), style in zip(gaps.items(), ["o-", "s-", "^-", "D-", "v-", "x--"]):
    ax.loglog(sizes, np.maximum(g, 1e-16), style, label=name, base=2)
ax.loglog(sizes, [2 * np.pi ** 2 / (3 * n ** 2) for n in sizes], "k:", label="ring theory 2π²/(3n²)", base=2)
ax.set(xlabel="workers n", ylabel="spectral gap 1 − ρ", title="How fast one gossip step averages")
ax.legend(fontsize=7)
fig.tight_layout()"""),
    ("md", """## 2. Error and wall time vs n
Each worker holds one quadratic f_i with heterogeneity ζ² = 1; the global optimum is 0 at distance 10 from the
start. All-reduce averages exactly (it ignores the graph; the ring only supplies n). The simulator time per step
is measured between the 2nd and 3rd evaluations (`callback` time stamps), after compilation; it includes one
evaluation."""),
    ("code", """NS = [16, 64, 256] if QUICK else [16, 64, 256, 1024]
every = max(1, STEPS // 3)  # three evaluations
rows = []
for n in NS:
    task = simdl.tasks.random_quadratics(n_workers=n, dim=20, zeta2=1.0, r0=10.0, noise=0.1, seed=0)
    for label, alg, topo in [("D-SGD / ring", A.dsgd(0.5), T.ring(n)),
                             ("D-SGD / exponential", A.dsgd(0.5), T.exponential(n)),
                             ("all-reduce", A.allreduce(0.5), T.ring(n))]:
        stamps = []  # wall-clock time at each evaluation: chunk 2 -> 3 is compiled already
        r = simdl.simulate(task, alg, topo, steps=STEPS, batch_size=1, eval_every=every,
                           callback=lambda step, row: stamps.append(time.perf_counter()))
        per_step = (stamps[2] - stamps[1]) / every
        mixing = "exact mean" if label == "all-reduce" else r.info["mixing"]
        rows.append({"n": n, "method": label, "error": r.final["suboptimality"],
                     "consensus": r.final["consensus_distance"], "s_per_step": per_step,
                     "compile_s": r.info["compile_time_s"]})
        print(f"n={n:5d} {label:22s} f(x̄)−f*={rows[-1]['error']:.3e} Ξ²={rows[-1]['consensus']:.2e} "
              f"{per_step * 1e3:7.3f} ms/step, compile {r.info['compile_time_s']:.1f} s (mixing: {mixing})")"""),
    ("code", """fig, axes = plt.subplots(1, 2, figsize=(11, 4))
for label in ("D-SGD / ring", "D-SGD / exponential", "all-reduce"):
    sel = [r for r in rows if r["method"] == label]
    axes[0].loglog([r["n"] for r in sel], [r["error"] for r in sel], "o-", label=label, base=2)
    axes[1].loglog([r["n"] for r in sel], [r["n"] / max(r["s_per_step"], 1e-9) for r in sel], "o-", label=label,
                   base=2)
axes[0].set(xlabel="workers n", ylabel="f(x̄) − f*", title=f"error after {STEPS} steps")
axes[1].set(xlabel="workers n", ylabel="worker-steps per second", title="simulator throughput")
axes[0].legend(fontsize=8)
fig.tight_layout()"""),
    ("code", """# the exponential graph's gap shrinks only logarithmically, the ring's quadratically; one-peer over a
# period and the complete graph average exactly; every run finished
ring_gap, exp_gap = np.array(gaps["ring"]), np.array(gaps["exponential"])
assert np.all(np.diff(ring_gap) < 0) and exp_gap[-1] > 100 * ring_gap[-1]
np.testing.assert_allclose(gaps["complete"], 1.0, atol=1e-9)
np.testing.assert_allclose(gaps["one-peer exponential (per step, over a period)"], 1.0, atol=1e-6)
assert all(np.isfinite(r["error"]) for r in rows) and len(rows) == 3 * len(NS)"""),
]

WRITE_YOUR_OWN = [
    ("md", """# Write your own algorithm

An algorithm is an `simdl.algorithms.Algorithm`: a pair of pure functions over the *stacked* state (leading axis =
the n workers), like an optax `GradientTransformation` for the whole network:

* `init(stacked_params, ctx) -> state`
* `step(state, stacked_grads, ctx) -> (state, aux)`; `ctx.mix(tree)` applies this step's mixing matrix W_t along
  the worker axis, `ctx.step` is the (traced) step index, `ctx.key` a PRNG key; `aux` must hold `"lr"` and
  `"bytes_sent"` (per worker, for the communication plots)
* `query(state)` (where gradients are evaluated) and `params(state)` (the models that are evaluated).

The runner owns the gradient computation, data sampling, compilation (`jit(lax.scan)`), evaluation and faults.
Here we write **D-SGD that gossips only every k-th step** (local SGD steps in between), in about 20 lines, and
compare it with the built-ins on the same task. `SIMDL_NOTEBOOK_STEPS` shortens the runs."""),
    ("code", """import os
from typing import Any, NamedTuple

import jax
import matplotlib.pyplot as plt
import numpy as np

import simdl
from simdl.algorithms import Algorithm
from simdl.algorithms.base import as_schedule, gossip_bytes

STEPS = int(os.environ.get("SIMDL_NOTEBOOK_STEPS", 600))"""),
    ("code", """class LazyGossipState(NamedTuple):
    params: Any  # stacked worker models, leading axis n


def lazy_gossip_sgd(learning_rate, every: int = 2) -> Algorithm:
    \"\"\"SGD step on every worker, then gossip X ← W X only when step % every == 0 (ATC order).\"\"\"
    schedule = as_schedule(learning_rate)  # float or optax schedule -> step -> η

    def init(params, ctx):
        return LazyGossipState(params)

    def step(state, grads, ctx):
        lr = schedule(ctx.step)
        half = jax.tree_util.tree_map(lambda x, g: x - lr * g, state.params, grads)
        talk = ctx.step % every == 0
        new = jax.lax.cond(talk, ctx.mix, lambda tree: tree, half)  # gossip only on talking steps
        sent = jax.numpy.where(talk, gossip_bytes(ctx, state.params), 0.0)
        return LazyGossipState(new), {"lr": lr, "bytes_sent": sent}

    params = lambda state: state.params
    hyperparams = {"learning_rate": learning_rate, "every": every}
    return Algorithm("lazy_gossip_sgd", init, step, params, params, hyperparams)"""),
    ("md", """## Same task, same runner
A sanity check first: with `every=1` it must be exactly D-SGD (ATC) — same numbers, bit for bit."""),
    ("code", """task = simdl.tasks.classification("digits", model="mlp", n_workers=16, partition="dirichlet", alpha=0.5)
ring = simdl.topologies.ring(16)


def run(alg, topo=ring):
    return simdl.simulate(task, alg, topo, steps=STEPS, batch_size=16, eval_every=max(1, STEPS // 6))

mine_1 = run(lazy_gossip_sgd(0.1, every=1))
dsgd = run(simdl.algorithms.dsgd(0.1))
same = all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(mine_1.params),
                                                jax.tree_util.tree_leaves(dsgd.params)))
print("every=1 equals dsgd exactly:", same)"""),
    ("code", """results = {
    "D-SGD (built-in)": dsgd,
    "lazy gossip, every 4 (ours)": run(lazy_gossip_sgd(0.1, every=4)),
    "local SGD, H=4 (built-in, exact average)": run(simdl.algorithms.local_sgd(0.1, local_steps=4),
                                                   simdl.topologies.complete(16)),
    "all-reduce (built-in)": run(simdl.algorithms.allreduce(0.1), simdl.topologies.complete(16)),
}
for name, r in results.items():
    print(f"{name:42s} acc(x̄)={r.final['avg_model_accuracy']:.3f} worst={r.final['worker_accuracy_min']:.3f} "
          f"MB/worker={r.final['bytes_per_worker'] / 1e6:.2f}")"""),
    ("code", """fig, axes = plt.subplots(1, 2, figsize=(11, 4))
for name, r in results.items():
    axes[0].plot(r.history["step"], r.history["avg_model_accuracy"], "o-", label=name)
    axes[1].plot(r.history["bytes_per_worker"] / 1e6, r.history["avg_model_accuracy"], "o-", label=name)
axes[0].set(xlabel="step", ylabel="test accuracy of x̄")
axes[1].set(xlabel="MB sent per worker", ylabel="test accuracy of x̄", title="accuracy per communication")
axes[0].legend(fontsize=8)
fig.tight_layout()"""),
    ("md", """## It gets the runner's features for free
Because it mixes through `ctx.mix`, simulated faults (`simdl.faults`) apply to it too: here every gossip message is
lost with probability 0.3 (the receiver keeps the lost weight on its own model)."""),
    ("code", """lossy = simdl.simulate(task, lazy_gossip_sgd(0.1, every=4), ring, steps=STEPS, batch_size=16,
                       eval_every=max(1, STEPS // 6), faults=simdl.faults.Faults(message_drop=0.3))
print(f"with 30% message loss: acc(x̄)={lossy.final['avg_model_accuracy']:.3f}, "
      f"messages lost per worker: {lossy.final['messages_lost']:.0f}")"""),
    ("code", """lazy = results["lazy gossip, every 4 (ours)"]
assert same  # every=1 is D-SGD exactly
# gossiping on every 4th step sends a quarter of D-SGD's bytes (steps 0, 4, 8, ... talk)
talks = len(range(0, STEPS, 4))
np.testing.assert_allclose(lazy.final["bytes_per_worker"], dsgd.final["bytes_per_worker"] * talks / STEPS, rtol=1e-6)
assert lazy.final["avg_model_accuracy"] > 0.2 and lossy.final["messages_lost"] > 0"""),
]

NOTEBOOKS = {"quickstart.ipynb": QUICKSTART, "heterogeneity_sweep.ipynb": HETEROGENEITY, "scaling.ipynb": SCALING,
             "write_your_own_algorithm.ipynb": WRITE_YOUR_OWN}


if __name__ == "__main__":
    for fname, cells in NOTEBOOKS.items():
        build(cells, HERE / fname)
        print("wrote", HERE / fname)
