"""`simdl run` over several seeds: one batched program per row, mean ± std over seeds in summary.csv and the table,
every seed's history in results.json."""

import csv
import json

import numpy as np
import pytest

from simdl.cli import main
from simdl.config import train_seeds
from simdl.results import SEED_METRICS, SUMMARY_COLUMNS, combine_seeds, mean_std, summary_rows


def _record(finals, histories=None, **extra):
    seed_runs = [{"seed": s, "final": f, "history": (histories or [{}] * len(finals))[s]}
                 for s, f in enumerate(finals)]
    return {"name": "x", "algorithm": "dsgd", "topology": "ring(4)", "status": "ok",
            "hyperparams": {"momentum": 0.9, "nesterov": True}, "final": finals[0], "seed_runs": seed_runs, **extra}


def test_summary_mean_std_equal_numpy_on_the_per_seed_values():
    rng = np.random.default_rng(0)
    finals = [{"step": 10, **{m: float(rng.random()) for m in SEED_METRICS}} for _ in range(3)]
    row, = summary_rows([_record(finals)])
    assert set(row) == set(SUMMARY_COLUMNS)
    for m in SEED_METRICS:
        v = np.array([f[m] for f in finals])
        assert row[f"{m}_mean"] == pytest.approx(np.mean(v), rel=1e-12)
        assert row[f"{m}_std"] == pytest.approx(np.std(v, ddof=1), rel=1e-12)
    assert row["seeds"] == "0 1 2" and row["momentum"] == 0.9 and row["nesterov"] is True and row["steps"] == 10


def test_one_seed_has_no_std_and_old_records_count_as_one_seed():
    assert mean_std([0.5]) == (0.5, None)
    assert mean_std([None, None]) == (None, None)
    row, = summary_rows([{"name": "x", "algorithm": "dsgd", "topology": "ring", "status": "ok",
                          "final": {"avg_model_accuracy": 0.7}}])
    assert row["avg_model_accuracy_mean"] == 0.7 and row["avg_model_accuracy_std"] is None
    assert row["momentum"] is None


def test_combine_seeds_means_histories_up_to_the_shortest():
    h = [{"step": [1, 2, 3], "loss": [3.0, 2.0, 1.0]}, {"step": [1, 2], "loss": [5.0, 4.0]}]
    f = [{"step": 3, "loss": 1.0}, {"step": 2, "loss": 4.0}]
    out = combine_seeds([{"history": a, "final": b} for a, b in zip(h, f, strict=True)])
    assert out["history"] == {"step": [1, 2], "loss": [4.0, 3.0]}
    assert out["final"] == {"step": 2, "loss": 2.5}
    assert out["final_std"]["loss"] == pytest.approx(np.std([1.0, 4.0], ddof=1))


@pytest.mark.parametrize("train,needle", [
    ({"seeds": []}, "non-empty list"), ({"seeds": 3}, "non-empty list"), ({"seeds": [0, -1]}, "integers >= 0"),
    ({"seeds": [0, True]}, "integers >= 0"), ({"seeds": [1, 1]}, "distinct"), ({"seeds": [0], "seed": 1}, "not both"),
])
def test_train_seeds_validation(train, needle):
    with pytest.raises(ValueError, match=needle):
        train_seeds(train)


def test_train_seeds_defaults():
    assert train_seeds({}) == [0] and train_seeds({"seed": 4}) == [4] and train_seeds({"seeds": [2, 0]}) == [2, 0]


TINY = """
[task]
dataset = "digits"
n_workers = 4
[train]
steps = 4
batch_size = 4
eval_every = 2
seeds = [0, 1, 2]
[[runs]]
algorithm = "dsgd"
learning_rate = 0.1
momentum = 0.9
nesterov = true
[[runs]]
algorithm = "relaysgd"
topology = "chain"
learning_rate = 0.1
momentum = 0.9
nesterov = true
"""


def test_simdl_run_with_seeds_writes_mean_std_columns(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text(TINY)
    out = tmp_path / "o"
    assert main(["run", str(cfg), "--out", str(out), "--quiet", "--no-plots"]) == 0
    res = json.loads((out / "results.json").read_text())
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert [r["name"] for r in rows] == ["dsgd/ring", "relaysgd/chain"]
    for m in SEED_METRICS:
        assert f"{m}_mean" in rows[0] and f"{m}_std" in rows[0]
    for rec, row in zip(res["runs"], rows, strict=True):
        assert rec["seeds"] == [0, 1, 2] and [s["seed"] for s in rec["seed_runs"]] == [0, 1, 2]
        assert rec["compiles"] == res["runs"][0]["compiles"]  # one batched program per row, not one per seed
        for sr in rec["seed_runs"]:
            assert sr["status"] == "ok" and sr["history"]["step"] == [2, 4]
        accs = np.array([sr["final"]["avg_model_accuracy"] for sr in rec["seed_runs"]])
        assert len(set(accs.tolist())) > 1  # the seeds differ
        assert float(row["avg_model_accuracy_mean"]) == pytest.approx(np.mean(accs), rel=1e-9)
        assert float(row["avg_model_accuracy_std"]) == pytest.approx(np.std(accs, ddof=1), rel=1e-9)
        assert rec["history"]["avg_model_accuracy"][-1] == pytest.approx(np.mean(accs), rel=1e-6)
        assert row["seeds"] == "0 1 2" and float(row["momentum"]) == 0.9 and row["nesterov"] == "True"
    text = capsys.readouterr().out
    assert "±" in text and "0.9 Nesterov" in text


def test_seeded_run_matches_single_seed_runs(tmp_path):
    """Seed s of a batched row gives seed s's single run (train.seeds = [s])."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(TINY.replace("seeds = [0, 1, 2]", "seeds = [0, 1]"))
    assert main(["run", str(cfg), "--out", str(tmp_path / "b"), "--quiet", "--no-plots", "--runs", "0"]) == 0
    batched = json.loads((tmp_path / "b" / "results.json").read_text())["runs"][0]["seed_runs"]
    assert main(["run", str(cfg), "--out", str(tmp_path / "s"), "--quiet", "--no-plots", "--runs", "0",
                 "--set", "train.seeds=[1]"]) == 0
    single = json.loads((tmp_path / "s" / "results.json").read_text())["runs"][0]["seed_runs"][0]
    assert single["seed"] == 1
    np.testing.assert_allclose(batched[1]["history"]["avg_model_loss"], single["history"]["avg_model_loss"],
                               rtol=1e-4)


def test_tensorboard_gets_one_folder_per_seed(tmp_path):
    pytest.importorskip("tensorboardX")
    from simdl.tensorboard import read_scalars, run_folder

    cfg = tmp_path / "c.toml"
    cfg.write_text(TINY.replace("seeds = [0, 1, 2]", "seeds = [0, 1]"))
    tb = tmp_path / "tb"
    assert main(["run", str(cfg), "--out", str(tmp_path / "o"), "--quiet", "--no-plots", "--runs", "0",
                 "--tensorboard", str(tb)]) == 0
    rec = json.loads((tmp_path / "o" / "results.json").read_text())["runs"][0]
    assert sorted(p.name for p in tb.iterdir()) == [run_folder("dsgd/ring/seed0"), run_folder("dsgd/ring/seed1")]
    for sr in rec["seed_runs"]:
        steps, values = read_scalars(tb / run_folder(f"dsgd/ring/seed{sr['seed']}"))["avg_model_loss"]
        assert steps.tolist() == sr["history"]["step"]
        np.testing.assert_allclose(values, sr["history"]["avg_model_loss"], rtol=1e-6)
