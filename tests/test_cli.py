"""The command line writes valid outputs and rejects bad input before compiling."""

import csv
import json
import subprocess
import sys

import pytest

from simdl.cli import main

QUICK = ["--set", "train.steps=20", "--set", "train.eval_every=10", "--set", "task.n_workers=4", "--quiet"]


#: a subset of the default experiment's rows (every row's algorithm is built in test_default_experiment.py and runs
#: in the algorithm tests; the CLI path is the same for each row): the three named in the table and local SGD (the
#: one row without bytes every step)
DEFAULT_ROWS = ("allreduce/complete", "dsgd/ring", "relaysgd/chain", "local_sgd/complete")


def test_default_experiment_small_writes_outputs(tmp_path, capsys):
    rc = main(["run", "--out", str(tmp_path), *QUICK, "--runs", ",".join(DEFAULT_ROWS)])
    assert rc == 0
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["config"]["train"]["steps"] == 20 and res["jax_version"] and res["device"]["platform"]
    names = [r["name"] for r in res["runs"]]
    assert names == list(DEFAULT_ROWS)
    for r in res["runs"]:
        assert r["status"] == "ok" and r["history"]["step"] == [10, 20]
        assert 0.0 <= r["final"]["avg_model_accuracy"] <= 1.0
        assert r["final"]["bytes_per_worker"] > 0 or r["algorithm"] == "local_sgd"
        # the resolved per-worker strategy and what was evaluated are recorded (the default MLP: vmap, no conv)
        assert r["execution"] == "vmap" and r["conv_impl"] is None
        # evaluation time is recorded (single runs and batched seeds share one loop)
        assert r["eval_time_s"] > 0 and len(r["seed_runs"]) == len(r["seeds"])
        assert r["evaluation"]["workers_evaluated"] == 4
    rows = list(csv.DictReader((tmp_path / "summary.csv").open()))
    assert [r["name"] for r in rows] == names
    for png in ("accuracy_vs_step.png", "consensus_vs_step.png", "accuracy_vs_bytes.png"):
        assert (tmp_path / png).stat().st_size > 1000
    out = capsys.readouterr().out
    assert "acc(x̄)" in out and "dsgd/ring" in out


def test_diverging_run_is_marked_and_others_complete(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("""
[task]
kind = "random_quadratics"
n_workers = 4
dim = 3
[train]
steps = 40
eval_every = 5
[[runs]]
algorithm = "dsgd"
learning_rate = 100.0
[[runs]]
algorithm = "dsgd"
learning_rate = 0.1
""")
    assert main(["run", str(cfg), "--out", str(tmp_path / "o"), "--quiet", "--no-plots"]) == 0
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    bad, good = res["runs"]
    assert bad["status"] == "diverged" and isinstance(bad["diverged_at"], int) and bad["diverged_at"] < 40
    assert good["status"] == "ok" and good["history"]["step"][-1] == 40


@pytest.mark.parametrize("args,needle", [
    (["--set", "task.alpha"], "malformed --set 'task.alpha'"),
    (["--set", "bogus.x=1"], "unknown section 'bogus'"),
    (["--set", "task.alpha=0"], "alpha"),
    (["--set", "run_defaults.topology=rnig"], "rnig"),
    (["--set", "runs.0.algorithm=sgdd"], "sgdd"),
    (["--set", "train.steps=0"], "steps must be"),
    (["--set", "train.batch_size=1000"], "batch_size=1000"),
    (["--set", "task.dataset=imagenet"], "imagenet"),
    (["--set", "task.model=transformer"], "transformer"),
    (["--set", "runs.99.learning_rate=1"], "out of range"),
])
def test_bad_input_is_rejected_with_a_clear_message(tmp_path, capsys, args, needle):
    rc = main(["run", "--out", str(tmp_path), "--quiet", *args])
    assert rc == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "results.json").exists()


def test_malformed_toml_and_missing_file(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[task\nalpha = ")
    assert main(["run", str(bad), "--quiet"]) == 2
    assert "malformed TOML" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "nope.toml"), "--quiet"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_help_explains_options(capsys):
    with pytest.raises(SystemExit) as exit_info:  # in-process; the top-level help below goes through python -m
        main(["run", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for word in ("--set", "--out", "CONFIG", "[task]", "[[runs]]", "results.json"):
        assert word in out
    top = subprocess.run([sys.executable, "-m", "simdl.cli", "--help"], capture_output=True, text=True).stdout
    assert "run" in top and "list" in top
