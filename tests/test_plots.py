"""Figures of simdl run (simdl.plots) and simdl report: the PNGs exist, simdl report recreates them and the tables
from the saved results, facets carry at most 6 curves, seed bands and local SGD's consensus points are honest."""

import csv
import json

import numpy as np
import pytest

from simdl.cli import main
from simdl.plots import (
    FAMILIES,
    MAX_CURVES,
    SPREAD_FIGURE,
    assign_facets,
    describe,
    family_of,
    plot_runs,
    series,
    worker_quantiles,
)

TINY = """
[task]
dataset = "digits"
model = "logreg"
n_workers = 4
partition = "dirichlet"
alpha = 0.5
[train]
steps = 8
batch_size = 8
eval_every = 2
seeds = [0, 1]
[run_defaults]
learning_rate = 0.1
[[runs]]
algorithm = "dsgd"
topology = "ring"
[[runs]]
algorithm = "local_sgd"
topology = "complete"
local_steps = 4
"""

RUN_FIGURES = ("accuracy_vs_step.png", "worker_accuracy_vs_step.png", "consensus_vs_step.png",
               "accuracy_vs_bytes.png", SPREAD_FIGURE)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("plots")
    cfg = d / "c.toml"
    cfg.write_text(TINY)
    out = d / "o"
    assert main(["run", str(cfg), "--out", str(out), "--quiet"]) == 0
    return out


def test_run_writes_every_figure_and_report_recreates_them(run_dir, capsys):
    for f in RUN_FIGURES:
        assert (run_dir / f).stat().st_size > 5000, f
    assert not (run_dir / "accuracy_vs_time.png").exists()  # no [system]: no simulated time
    summary = (run_dir / "summary.csv").read_text()
    for f in (*RUN_FIGURES, "summary.csv"):
        (run_dir / f).unlink()
    capsys.readouterr()
    assert main(["report", str(run_dir)]) == 0
    for f in RUN_FIGURES:
        assert (run_dir / f).stat().st_size > 5000, f
    assert (run_dir / "summary.csv").read_text() == summary
    out = capsys.readouterr().out
    assert "acc(x̄)" in out and "local_sgd/complete" in out and " ± " in out


def test_report_of_a_folder_without_results_exits_2(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("simdl: error: report:") and "\n" not in err


def test_seed_band_is_mean_and_sample_std_over_seeds(run_dir):
    res = json.loads((run_dir / "results.json").read_text())
    r = res["runs"][0]
    x, mean, std = series(r, "step", "avg_model_accuracy")
    per_seed = np.array([sr["history"]["avg_model_accuracy"] for sr in r["seed_runs"]])
    assert list(x) == r["history"]["step"]
    np.testing.assert_allclose(mean, per_seed.mean(0))
    np.testing.assert_allclose(std, per_seed.std(0, ddof=1))
    steps, q = worker_quantiles(r)
    assert q.shape == (5, len(steps)) and np.all(np.diff(q, axis=0) >= -1e-12)  # min <= q25 <= median <= q75 <= max
    assert describe(res, res["runs"]) == "digits / logreg, 4 workers, Dirichlet α = 0.5, 8 steps"


def test_local_sgd_consensus_skips_evaluations_right_after_averaging(run_dir):
    r = next(r for r in json.loads((run_dir / "results.json").read_text())["runs"] if r["algorithm"] == "local_sgd")
    # eval_every = 2, local_steps = 4: steps 4 and 8 are right after an averaging step, where Ξ² is ~0
    assert r["history"]["step"] == [2, 4, 6, 8]
    assert max(r["history"]["consensus_distance"][i] for i in (1, 3)) < 1e-9
    x, y, _ = series(r, "step", "consensus_distance", keep=lambda s: s % 4 != 0)
    assert list(x) == [2, 6] and np.all(y > 1e-9)


def _fake(alg, i):
    return {"name": f"{alg}/{i}", "algorithm": alg}


@pytest.mark.parametrize("algs", [
    ["allreduce", "dsgd", "local_sgd"],
    [alg for _, algs in FAMILIES for alg in algs],
    ["dsgd"] * 14 + ["allreduce"] + ["d2"] * 3 + ["mystery"],
    ["dsgd"] * 13,
])
def test_facets_hold_at_most_6_curves_and_every_run_once(algs):
    runs = [_fake(a, i) for i, a in enumerate(algs)]
    facets = assign_facets(runs)
    drawn = [i for f in facets for i in f["runs"]]
    assert sorted(drawn) == list(range(len(runs)))  # every run in exactly one facet
    for f in facets:
        assert len(f["runs"]) + (f["reference"] is not None) <= MAX_CURVES
        assert len({family_of(runs[i]["algorithm"]) for i in f["runs"]}) == 1 or len(runs) <= MAX_CURVES
    ref = [i for i, a in enumerate(algs) if a == "allreduce"]
    if ref and len(runs) > MAX_CURVES:  # the all-reduce run is the grey reference of every facet it is not in
        assert all(f["reference"] == ref[0] or ref[0] in f["runs"] for f in facets)


def test_diverged_run_is_marked_in_the_legend(tmp_path):
    h = {"step": [1, 2], "avg_model_accuracy": [0.1, 0.2], "consensus_distance": [1.0, 2.0],
         "worker_accuracy_min": [0.1, 0.1], "bytes_per_worker": [10.0, 20.0]}
    runs = [{"name": "ok", "algorithm": "dsgd", "status": "ok", "history": h, "final": {"step": 2}},
            {"name": "bad", "algorithm": "dsgd", "status": "diverged", "diverged_at": 2, "history": h,
             "final": {"step": 2}}]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from simdl import plots

    fig, ax = plt.subplots()
    plots._draw_metric(ax, runs[1], "step", "avg_model_accuracy", "C0", False)
    labels = ax.get_legend_handles_labels()[1]
    assert labels == ["bad (diverged at step 2)"]
    assert any(line.get_marker() == "x" for line in ax.get_lines())
    plt.close(fig)
    written = plot_runs(runs, tmp_path)
    assert {p.name for p in written} >= {"accuracy_vs_step.png", "consensus_vs_step.png"}


def _sweep_record(topology, zeta2, seed):
    sub = 1.0 / zeta2 + 0.1 * seed + (topology == "ring")
    return {"id": f"{topology}-{zeta2}-{seed}", "label": f"dsgd topology={topology} zeta2={zeta2} seed={seed}",
            "task": {"kind": "random_quadratics", "n_workers": 4, "zeta2": zeta2},
            "train": {"steps": 4, "seed": seed}, "run": {"algorithm": "dsgd", "topology": topology, "name": "dsgd"},
            "status": "ok", "diverged_at": None, "compiles": 1, "batched_runs": 2, "wall_time_s": 0.1,
            "history": {"step": [2, 4], "suboptimality": [2 * sub, sub]}, "final": {"step": 4, "suboptimality": sub}}


def test_report_regenerates_a_sweep_folder(tmp_path, capsys):
    from simdl.sweep import RunStore

    store = RunStore(tmp_path)
    recs = [_sweep_record(t, z, s) for t in ("ring", "complete") for z in (0.1, 1.0) for s in (0, 1)]
    for r in recs:
        store.save(r["id"], r)
    assert main(["report", str(tmp_path)]) == 0
    assert (tmp_path / "heatmap.png").stat().st_size > 5000
    rows = list(csv.DictReader((tmp_path / "sweep.csv").open()))
    assert sorted(r["id"] for r in rows) == sorted(r["id"] for r in recs)
    for row in rows:  # swept keys inferred from the saved records: the seed and zeta2 columns, not the fixed ones
        rec = next(r for r in recs if r["id"] == row["id"])
        assert float(row["suboptimality"]) == rec["final"]["suboptimality"]
        assert float(row["task.zeta2"]) == rec["task"]["zeta2"] and int(row["train.seed"]) == rec["train"]["seed"]
        assert "task.n_workers" not in row
    assert "8 runs (swept: task.zeta2, train.seed, topology)" in capsys.readouterr().out
