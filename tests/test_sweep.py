"""simdl sweep / tune: grid expansion, compile groups, skip-finished re-runs, outputs."""

import csv
import json

import pytest

from simdl.cli import main
from simdl.sweep import expand_grid, group_runs

CFG = """
[task]
kind = "random_quadratics"
n_workers = 4
dim = 3
noise = 0.1
[train]
steps = 20
eval_every = 10
[run_defaults]
learning_rate = 0.1
[[runs]]
algorithm = "dsgd"
[[runs]]
algorithm = "gradient_tracking"
[sweep]
topology = ["ring", "complete"]
"task.zeta2" = [0.1, 1.0]
"train.seed" = [0, 1]
learning_rate = [0.05, 0.1]
"""


def test_grid_and_groups():
    import tomllib

    cfg = tomllib.loads(CFG)
    specs = expand_grid(cfg)
    assert len(specs) == 2 * 2 * 2 * 2 * 2
    assert len({s["id"] for s in specs}) == len(specs)
    groups = group_runs(specs)
    # zeta2 changes the problem's data shapes? no, but it is not a batchable key: groups = alg × topo × zeta2
    assert len(groups) == 2 * 2 * 2 and all(len(g) == 4 for g in groups)


def test_sweep_runs_records_and_skips_finished(tmp_path, capsys):
    cfg = tmp_path / "s.toml"
    cfg.write_text(CFG)
    out = tmp_path / "out"
    assert main(["sweep", str(cfg), "--out", str(out), "--quiet"]) == 0
    first = capsys.readouterr().out
    assert "32 runs in 8 compile groups; 0 already finished" in first
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    assert len(rows) == 32 and all(r["status"] == "ok" for r in rows)
    assert {r["batched_runs"] for r in rows} == {"4"}
    assert (out / "heatmap.png").exists() and (out / "best_lr.csv").exists()
    best = list(csv.DictReader((out / "best_lr.csv").open()))
    assert len(best) == 2 * 2 * 2
    rec = json.loads(next((out / "runs").glob("*.json")).read_text())
    assert rec["history"]["step"] == [10, 20]
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")}
    assert main(["sweep", str(cfg), "--out", str(out), "--quiet"]) == 0
    assert "32 already finished; 0 compile groups to run" in capsys.readouterr().out
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items())


def test_sweep_dry_run_and_bad_grid(tmp_path, capsys):
    cfg = tmp_path / "s.toml"
    cfg.write_text(CFG)
    assert main(["sweep", str(cfg), "--out", str(tmp_path / "o"), "--dry-run"]) == 0
    assert "group 0: 4 run(s)" in capsys.readouterr().out
    bad = tmp_path / "b.toml"
    bad.write_text(CFG.replace('topology = ["ring", "complete"]', 'topology = "ring"'))
    assert main(["sweep", str(bad), "--out", str(tmp_path / "o2"), "--quiet"]) == 2
    assert "expected a non-empty list" in capsys.readouterr().err
    bad.write_text(CFG.replace('"ring", "complete"', '"ring", "moebius"'))
    assert main(["sweep", str(bad), "--out", str(tmp_path / "o3"), "--quiet"]) == 2
    assert "moebius" in capsys.readouterr().err
    assert not (tmp_path / "o3" / "sweep.csv").exists()


@pytest.mark.parametrize("lrs", ["0.05,0.2"])
def test_tune_reports_best_lr_per_cell(tmp_path, capsys, lrs):
    cfg = tmp_path / "t.toml"
    cfg.write_text("""
[task]
dataset = "digits"
model = "mlp"
n_workers = 4
[train]
steps = 30
batch_size = 8
eval_every = 15
[[runs]]
algorithm = "dsgd"
topology = "ring"
""")
    assert main(["tune", str(cfg), "--lrs", lrs, "--out", str(tmp_path / "t"), "--quiet", "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert "best learning rate per cell" in out
    best = list(csv.DictReader((tmp_path / "t" / "best_lr.csv").open()))
    assert len(best) == 1 and float(best[0]["best_learning_rate"]) in (0.05, 0.2)
    rec = json.loads(next((tmp_path / "t" / "runs").glob("*.json")).read_text())
    assert rec["task"]["validation"] == 0.1


def test_train_seeds_in_a_sweep_is_a_seed_axis():
    """``[train] seeds`` in a sweep config expands like a ``train.seed`` axis (not silently ignored)."""
    from simdl.sweep import expand_grid

    cfg = {"task": {"kind": "random_quadratics", "n_workers": 4}, "train": {"steps": 2, "seeds": [3, 5]},
           "runs": [{"algorithm": "dsgd", "learning_rate": 0.1}], "sweep": {"topology": ["ring", "chain"]}}
    specs = expand_grid(cfg)
    assert sorted((s["run"]["topology"], s["train"]["seed"]) for s in specs) == [
        ("chain", 3), ("chain", 5), ("ring", 3), ("ring", 5)]
    assert all("seeds" not in s["train"] for s in specs)
    with pytest.raises(ValueError, match="not both"):
        expand_grid({**cfg, "sweep": {"train.seed": [0, 1]}})


def test_corrupt_run_record_is_named_and_run_again(tmp_path, capsys):
    cfg = tmp_path / "s.toml"
    cfg.write_text(CFG.split("[sweep]")[0] + '[sweep]\n"train.seed" = [0, 1]\n')
    out = tmp_path / "out"
    assert main(["sweep", str(cfg), "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    records = sorted((out / "runs").glob("*.json"))
    assert len(records) == 4
    broken, wrong = records[0], records[1]
    broken.write_text(broken.read_text()[:40])  # truncated mid-write by hand
    wrong.write_text("[1, 2]")  # valid JSON, but not a run record
    assert main(["sweep", str(cfg), "--out", str(out), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "2 already finished" in captured.out
    for path in (broken, wrong):
        assert f"{path}: unreadable run record" in captured.err and "it will be run again" in captured.err
        rec = json.loads(path.read_text())
        assert rec["id"] == path.stem and rec["history"]["step"] == [10, 20]
    assert len(list(csv.DictReader((out / "sweep.csv").open()))) == 4
    broken.write_text("{")
    assert main(["report", str(out)]) == 0  # simdl report names the record and leaves it out
    assert f"{broken}: unreadable run record" in capsys.readouterr().err
