"""Training curves of a sweep (``simdl.sweep_report.plot_sweep_curves``): one folder of figures per cell of the
config-key axes, seeds as bands, and ``simdl report`` infers ``[participation]`` axes."""

import numpy as np
import pytest

from simdl.sweep_report import MAX_CURVE_CELLS, infer_swept, plot_sweep_curves


def _record(name, alg, latency, seed, lr=0.1, k=None):
    steps = np.arange(0, 50, 10)
    acc = 0.5 + 0.01 * seed + 0.001 * steps
    hist = {"step": steps.tolist(), "avg_model_accuracy": acc.tolist(),
            "sim_time_s": (steps * (0.01 + latency)).tolist(), "consensus_distance": (1e-3 / (1 + steps)).tolist()}
    rec = {"id": f"{name}{latency}{seed}{lr}", "label": f"{name} latency={latency} seed={seed}",
           "task": {"dataset": "digits", "model": "mlp", "n_workers": 8}, "train": {"steps": 50, "seed": seed},
           "system": {"compute_time": 0.01, "latency": latency},
           "run": {"name": name, "algorithm": alg, "learning_rate": lr},
           "status": "ok", "diverged_at": None, "history": hist, "final": {"step": 40}}
    if k is not None:
        rec["participation"] = {"kind": "client_sampling", "k": k}
    return rec


def test_one_folder_per_cell_with_seed_bands(tmp_path):
    recs = [_record(n, a, lat, s) for n, a in (("AR", "allreduce"), ("DSGD", "dsgd")) for lat in (1e-5, 0.01)
            for s in (0, 1)]
    swept = infer_swept(recs)
    assert "system.latency" in swept and "train.seed" in swept and "algorithm" in swept
    written = plot_sweep_curves(recs, swept, tmp_path)
    folders = sorted({p.parent.name for p in written})
    assert folders == ["latency=0.01", "latency=1e-05"]
    for f in folders:
        assert (tmp_path / "curves" / f / "accuracy_vs_time.png").stat().st_size > 0
        assert (tmp_path / "curves" / f / "consensus_vs_step.png").exists()


def test_participation_axis_is_inferred_and_a_varying_run_key_names_the_curves(tmp_path, monkeypatch):
    recs = [_record("D", "dsgd", 0.0, s, lr=lr, k=k) for k in (2, 8) for lr in (0.1, 0.3) for s in (0, 1)]
    swept = infer_swept(recs)
    assert "participation.k" in swept and "learning_rate" in swept
    seen = []
    import simdl.plots

    real = simdl.plots.plot_runs

    def spy(runs, out, payload=None, setting=""):
        seen.append((out.name, setting, sorted(r["name"] for r in runs), [len(r["seed_runs"]) for r in runs]))
        return real(runs, out, payload, setting)

    monkeypatch.setattr(simdl.plots, "plot_runs", spy)
    plot_sweep_curves(recs, swept, tmp_path)
    assert sorted(seen) == [("k=2", "k = 2", ["D learning_rate=0.1", "D learning_rate=0.3"], [2, 2]),
                            ("k=8", "k = 8", ["D learning_rate=0.1", "D learning_rate=0.3"], [2, 2])]


@pytest.mark.parametrize("cells", [MAX_CURVE_CELLS + 1])
def test_too_many_cells_draw_no_curves(tmp_path, cells):
    recs = [_record("D", "dsgd", lat, 0) for lat in np.linspace(0, 1, cells).tolist()]
    assert plot_sweep_curves(recs, infer_swept(recs), tmp_path) == []
    assert not (tmp_path / "curves").exists()
