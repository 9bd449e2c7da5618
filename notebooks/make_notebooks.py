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
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


NOTEBOOKS = {"quickstart.ipynb": QUICKSTART}

if __name__ == "__main__":
    for fname, cells in NOTEBOOKS.items():
        build(cells, HERE / fname)
        print("wrote", HERE / fname)
