"""Every config value is type-checked before anything runs (simdl.schema, pydantic strict): one line
``simdl: error: <key>: <given>, expected <type>``, exit code 2, nothing written."""

import copy

import pytest

from simdl.cli import main
from simdl.config import load_config
from simdl.schema import ConfigError, check_config

BASE = """
[task]
kind = "random_quadratics"
n_workers = 4
dim = 3
[train]
steps = 4
eval_every = 2
[[runs]]
algorithm = "dsgd"
learning_rate = {lr}
nesterov = {nesterov}
momentum = 0.5
"""
CFG = {"task": {"dataset": "digits", "n_workers": 4}, "train": {"steps": 4},
       "runs": [{"algorithm": "dsgd", "learning_rate": 0.1}]}


@pytest.mark.parametrize("lr,nesterov,needle", [
    ('"0.1"', "true", "runs[0].learning_rate: '0.1', expected a number"),
    ("true", "true", "runs[0].learning_rate: True, expected a number"),
    ("0.1", '"false"', "runs[0].nesterov: 'false', expected true or false"),
])
def test_cli_refuses_mistyped_run_values(tmp_path, capsys, lr, nesterov, needle):
    cfg = tmp_path / "c.toml"
    cfg.write_text(BASE.format(lr=lr, nesterov=nesterov))
    out = tmp_path / "out"
    assert main(["run", str(cfg), "--out", str(out), "--quiet", "--no-plots"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"simdl: error: {needle}"]
    assert not (out / "results.json").exists()


@pytest.mark.parametrize("override,needle", [
    ("train.seed=0.5", "train.seed: 0.5, expected an integer"),
    ("train.eval_every=\"2\"", "train.eval_every: '2', expected an integer or none"),
    ("task.aplha=0.1", "task.aplha: unknown key; valid: kind, n_workers, dim"),
    ("train.message_drop=true", "train.message_drop: True, expected a number"),
])
def test_cli_refuses_mistyped_overrides(tmp_path, capsys, override, needle):
    cfg = tmp_path / "c.toml"
    cfg.write_text(BASE.format(lr="0.1", nesterov="false"))
    assert main(["run", str(cfg), "--set", override, "--out", str(tmp_path / "o"), "--quiet", "--no-plots"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"simdl: error: {needle}") and "\n" not in err


@pytest.mark.parametrize("axis,values,needle", [
    ('"trian.seed"', "[0, 1]", "sweep.trian.seed: unknown section 'trian'"),
    ('"train.seed"', "[0, 0.5]", "sweep.train.seed: 0.5, expected an integer"),
    ('"train.sead"', "[0, 1]", "sweep.train.sead: unknown key 'sead' of [train]"),
    ("learning_rate", '[0.1, "x"]', "sweep.learning_rate: 'x', expected a number"),
    ("lr", "[0.1]", "sweep.lr: not a key of any run's algorithm"),
    # a repeated value would make two grid points with one run id
    ("learning_rate", "[0.1, 0.1]", "sweep.learning_rate: [0.1, 0.1], expected distinct values"),
    ('"train.seed"', "[0, 0]", "sweep.train.seed: [0, 0], expected distinct values"),
    ("topology", '["ring", "ring"]', "sweep.topology: ['ring', 'ring'], expected distinct values"),
])
def test_sweep_axes_are_checked_before_the_first_run(tmp_path, capsys, axis, values, needle):
    cfg = tmp_path / "s.toml"
    cfg.write_text(BASE.format(lr="0.1", nesterov="false") + f"[sweep]\n{axis} = {values}\n")
    out = tmp_path / "o"
    assert main(["sweep", str(cfg), "--out", str(out), "--quiet", "--no-plots"]) == 2
    assert capsys.readouterr().err.strip().startswith(f"simdl: error: {needle}")
    assert not list(out.glob("runs/*.json"))


def test_output_section_is_refused(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text(BASE.format(lr="0.1", nesterov="false") + '[output]\ndir = "x"\n')
    assert main(["run", str(cfg), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "unknown config section(s) ['output']" in capsys.readouterr().err


@pytest.mark.parametrize("path,value,needle", [
    (("runs", 0, "topology_args"), {"lazy_weight": "x"}, "runs[0].topology_args.lazy_weight: 'x', expected a number"),
    (("runs", 0, "topology_args"), {"lazzy": 0.1}, "runs[0].topology_args.lazzy: unknown key for topology ring"),
    (("runs", 0, "algorithm"), "dsdg", "runs[0].algorithm: 'dsdg', expected one of ad_psgd, allreduce"),
    (("runs", 0, "momentun"), 0.9, "runs[0].momentun: unknown key for dsgd; valid: name, algorithm"),
    (("runs", 0, "schedule"), "cosine", "runs[0].schedule: 'cosine', expected a table"),
    (("runs", 0, "optimizer"), "adamm", "runs[0].optimizer: 'adamm', expected one of sgd, adam"),
    (("runs", 0, "optimizer"), {"name": "adamm", "b1": 0.9}, "runs[0].optimizer: {'name': 'adamm', 'b1': 0.9}, "
                                                            "expected one of sgd, adam"),
    (("runs", 0, "optimizer"), {"b1": 0.9}, "runs[0].optimizer: {'b1': 0.9}, expected one of sgd, adam"),
    (("task", "n_workers"), 4.0, "task.n_workers: 4.0, expected an integer"),
    (("train", "seeds"), [0, 0.5], "train.seeds: [0, 0.5], expected a list of integers"),
])
def test_check_config_messages(path, value, needle):
    cfg = copy.deepcopy(CFG)
    node = cfg
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value
    with pytest.raises(ConfigError) as err:
        check_config(cfg)
    assert str(err.value).startswith(needle) and "\n" not in str(err.value)


def test_well_typed_values_pass():
    cfg = copy.deepcopy(CFG)
    cfg["runs"][0].update(momentum=1, nesterov=True, optimizer={"name": "adam"}, topology="ring",
                          topology_args={"lazy_weight": 0.1})
    cfg["train"].update(eval_every=None, seeds=[0, 1], message_drop=0)
    check_config(cfg)  # an int where a float is expected is fine; None where allowed


def test_every_shipped_config_passes():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for path in [*sorted((root / "configs").glob("*.toml")), root / "simdl" / "configs" / "default.toml"]:
        check_config(load_config(path, extra_sections=("sweep",)))
