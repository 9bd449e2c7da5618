"""TensorBoard event files (simdl.tensorboard) from `simdl run` / `simdl sweep --tensorboard`, and fault keys in
configs."""

import json
import sys

import numpy as np
import pytest

from simdl.cli import main
from simdl.tensorboard import read_scalars, run_folder, write_history

pytest.importorskip("tensorboardX")

RUN_CFG = """
[task]
kind = "random_quadratics"
n_workers = 4
dim = 3
noise = 0.1
[train]
steps = 20
eval_every = 5
message_drop = 0.3
straggler = 0.2
[[runs]]
algorithm = "dsgd"
learning_rate = 0.1
[[runs]]
name = "gt/torus"
algorithm = "gradient_tracking"
topology = "torus"
learning_rate = 0.1
"""


def test_history_round_trip_and_rewrite_replaces(tmp_path):
    hist = {"step": np.array([10, 20, 30]), "loss": np.array([3.0, 2.0, 1.5]), "acc": [0.1, 0.5, np.nan]}
    path = write_history(tmp_path, "relaysgd/chain #2", hist)
    assert path.name == run_folder("relaysgd/chain #2") == "relaysgd_chain_2"
    sc = read_scalars(path)
    assert set(sc) == {"loss", "acc"}
    np.testing.assert_array_equal(sc["loss"][0], [10, 20, 30])
    np.testing.assert_allclose(sc["loss"][1], [3.0, 2.0, 1.5])
    np.testing.assert_array_equal(sc["acc"][0], [10, 20])  # non-finite values are skipped
    write_history(tmp_path, "relaysgd/chain #2", {"step": [5], "loss": [9.0]})
    again = read_scalars(path)
    assert list(again) == ["loss"] and again["loss"][0].tolist() == [5]
    with pytest.raises(FileNotFoundError):
        read_scalars(tmp_path / "nothing")


def test_run_writes_one_folder_per_run_with_every_metric(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(RUN_CFG)
    tb = tmp_path / "tb"
    assert main(["run", str(cfg), "--out", str(tmp_path / "o"), "--quiet", "--no-plots", "--tensorboard",
                 str(tb)]) == 0
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    assert sorted(p.name for p in tb.iterdir()) == sorted(run_folder(r["name"]) for r in res["runs"])
    for r in res["runs"]:
        hist = r["history"]
        assert hist["messages_lost"][-1] > 0 and "straggler_steps" in hist  # faults from [train]
        sc = read_scalars(tb / run_folder(r["name"]))
        assert set(sc) == set(hist) - {"step"}
        for tag, (steps, values) in sc.items():
            assert steps.tolist() == hist["step"] == [5, 10, 15, 20]
            np.testing.assert_allclose(values, hist[tag], rtol=1e-6)


def test_sweep_writes_every_run_and_resumes_without_duplicates(tmp_path, capsys):
    cfg = tmp_path / "s.toml"
    cfg.write_text(RUN_CFG.split("[[runs]]")[0].replace("message_drop = 0.3\n", "") +
                   '[[runs]]\nalgorithm = "dsgd"\nlearning_rate = 0.1\n[sweep]\n"train.link_failure" = [0.0, 0.5]\n')
    tb, out = tmp_path / "tb", tmp_path / "out"
    assert main(["sweep", str(cfg), "--out", str(out), "--quiet", "--no-plots", "--tensorboard", str(tb)]) == 0
    folders = sorted(p.name for p in tb.iterdir())
    assert len(folders) == 2 and all("link_failure=" in f for f in folders)
    recs = {json.loads(p.read_text())["train"].get("link_failure"): json.loads(p.read_text())
            for p in (out / "runs").glob("*.json")}
    assert "messages_lost" not in recs[0.0]["history"] and recs[0.5]["history"]["messages_lost"][-1] > 0
    assert main(["sweep", str(cfg), "--out", str(out), "--quiet", "--no-plots", "--tensorboard", str(tb)]) == 0
    assert "2 already finished" in capsys.readouterr().out
    for f in folders:
        assert len(list((tb / f).glob("events.out.tfevents.*"))) == 1
        steps, _ = read_scalars(tb / f)["loss"]
        assert steps.tolist() == [5, 10, 15, 20]


def test_missing_tensorboardx_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # import fails
    cfg = tmp_path / "c.toml"
    cfg.write_text(RUN_CFG)
    assert main(["run", str(cfg), "--out", str(tmp_path / "o"), "--quiet", "--tensorboard", str(tmp_path)]) == 2
    assert "pip install tensorboardX" in capsys.readouterr().err


@pytest.mark.parametrize("bad,needle", [
    ("train.message_drop=1.5", "message_drop must be a number in [0, 1]"),
    ("train.drop=0.1", "train.drop: unknown key"),
])
def test_bad_fault_config_rejected_before_running(tmp_path, capsys, bad, needle):
    cfg = tmp_path / "c.toml"
    cfg.write_text(RUN_CFG)
    assert main(["run", str(cfg), "--out", str(tmp_path / "o"), "--quiet", "--set", bad]) == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_gossip_faults_refused_for_relay_in_config(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text(RUN_CFG + '[[runs]]\nalgorithm = "relaysgd"\ntopology = "chain"\n')
    assert main(["run", str(cfg), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "relaysgd" in capsys.readouterr().err and not (tmp_path / "o").exists()
