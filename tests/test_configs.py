"""The paper configs in configs/: every file parses, documents its target, builds every run at full and tiny scale,
and runs end to end at tiny scale on mock tensorflow-datasets data through ``simdl.cli.main``; plus the recipe keys
(schedule, lr_scaling, decay_norm, local_epochs, train.epochs) through ``simdl run`` and ``simdl sweep``.

Running every config end to end takes minutes (about 80 runs, each compiled); by default one config runs end to end
and the others only build. ``SIMDL_TEST_ALL_CONFIGS=1`` runs them all (and the sweep config).
"""

import json
import math
import os
import re
import tomllib
from pathlib import Path

import jax
import pytest

from simdl.cli import _build_run, main
from simdl.config import expand_runs, load_config
from simdl.recipes import resolve_train
from simdl.runtime import validate
from simdl.scale import TINY_TRAIN, apply_scale
from simdl.sweep import build_task

tfds = pytest.importorskip("tensorflow_datasets")

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.toml"))
SWEEPS = [p for p in CONFIGS if "sweep" in tomllib.loads(p.read_text())]
PAPER = [p for p in CONFIGS if p not in SWEEPS]
ALL = os.environ.get("SIMDL_TEST_ALL_CONFIGS") == "1"
DEFAULT_E2E = "qgm_cifar10_resnet20_ring16_alpha0.1.toml"  # schedule + lr_scaling + Dirichlet, 3 runs
MOCK_EXAMPLES = 256  # >= the tiny cap of 8 samples per worker for 32 workers
TRAIN_SIZES = {"cifar10": 50_000, "cifar100": 50_000, "mnist": 60_000, "fashion_mnist": 60_000}


def _ids(paths):
    return [p.stem for p in paths]


@pytest.fixture()
def mock_tfds():
    with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
        yield


def test_the_expected_paper_configs_exist():
    names = {p.stem for p in PAPER}
    expected = {f"relaysgd_cifar10_vgg11_alpha{a}" for a in ("1", "0.1", "0.01")}
    expected |= {f"qgm_cifar10_resnet20_{t}_alpha{a}" for t in ("ring16", "social32") for a in ("10", "1", "0.1")}
    expected |= {f"cdsgd_cifar10_{t}_{s}" for t in ("complete", "ring") for s in ("iid", "2class")}
    expected |= {"kamp_mnist_cnn_dynamic", "xu_cifar10_clr"}
    assert expected <= names


@pytest.mark.parametrize("path", PAPER, ids=_ids(PAPER))
def test_config_header_and_consistency(path):
    text = path.read_text()
    header = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    assert re.search(r"arXiv \d{4}\.\d{4,5}", header), "header must cite the paper's arXiv id"
    assert "Target:" in header and "Metric:" in header
    assert re.search(r"history keys? \w+", header), "header must name the history key of the metric"
    cfg = load_config(path)
    task, train = cfg["task"], cfg["train"]
    assert task["dataset"] in TRAIN_SIZES
    assert "epochs" in train and "steps" not in train
    # on the real dataset: evaluations every whole (or half) epoch, the last one at the last step
    spe = math.ceil((TRAIN_SIZES[task["dataset"]] // task["n_workers"]) / train["batch_size"])
    steps = round(train["epochs"] * spe)
    assert steps % train["eval_every"] == 0 and (2 * train["eval_every"]) % spe == 0


@pytest.mark.parametrize("path", CONFIGS, ids=_ids(CONFIGS))
def test_every_run_builds_at_full_and_tiny_scale(path, mock_tfds):
    base = load_config(path, extra_sections=("sweep",))
    for scale in ("full", "tiny"):
        cfg = apply_scale(base, scale)
        if scale == "full" and cfg["task"].get("dataset", "digits") not in ("digits", "synthetic"):  # mock: few rows
            cfg["task"]["dataset_kwargs"] = {"max_train": MOCK_EXAMPLES, "max_test": 8}
        task = build_task(cfg.get("task", {}))
        if scale == "full":  # the real model accepts the dataset's images
            shapes = jax.eval_shape(task.init_params, jax.random.PRNGKey(0))
            assert jax.tree_util.tree_leaves(shapes)
        train = resolve_train({"batch_size": 32, "eval_every": None, "seed": 0, "mixing": "auto", **cfg["train"]},
                              task)
        runs = expand_runs(cfg)
        for run in runs:
            topo, alg = _build_run(run, task, train)
            assert topo.n == task.n_workers
            if scale == "tiny":
                validate(task, alg, topo, train["steps"], train["batch_size"], train["eval_every"])
        if scale == "tiny":
            assert train["steps"] == TINY_TRAIN["steps"] and train["batch_size"] == TINY_TRAIN["batch_size"]


E2E = [p for p in PAPER if ALL or p.name == DEFAULT_E2E]


@pytest.mark.parametrize("path", E2E, ids=_ids(E2E))
def test_config_runs_at_tiny_scale(path, tmp_path, mock_tfds):
    out = tmp_path / "out"
    rc = main(["run", str(path), "--set", "scale=tiny", "--out", str(out), "--quiet", "--no-plots"])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert res["config"]["scale"] == "tiny"
    assert [r["name"] for r in res["runs"]] == [r["name"] for r in expand_runs(load_config(path))]
    for r in res["runs"]:
        assert r["status"] == "ok", r["name"]
        assert r["history"]["step"] == [2, 4]
        assert all(math.isfinite(x) for x in r["history"]["loss"])


FIRST_RUN = [p for p in PAPER if p not in E2E]


@pytest.mark.parametrize("path", FIRST_RUN, ids=_ids(FIRST_RUN))
def test_config_first_run_executes_at_tiny_scale(path, tmp_path, mock_tfds):
    """Every paper config executes end to end at tiny scale (its first run; all runs with SIMDL_TEST_ALL_CONFIGS=1,
    and every run of every config is built and validated above)."""
    out = tmp_path / "out"
    rc = main(["run", str(path), "--set", "scale=tiny", "--runs", "0", "--out", str(out), "--quiet", "--no-plots"])
    assert rc == 0
    (run,) = json.loads((out / "results.json").read_text())["runs"]
    assert run["name"] == expand_runs(load_config(path))[0]["name"]
    assert run["status"] == "ok" and run["history"]["step"] == [2, 4]


@pytest.mark.skipif(not ALL, reason="set SIMDL_TEST_ALL_CONFIGS=1 (runs 48 tiny runs in 8 compile groups)")
@pytest.mark.parametrize("path", SWEEPS, ids=_ids(SWEEPS))
def test_sweep_config_runs_at_tiny_scale(path, tmp_path, mock_tfds):
    out = tmp_path / "sweep"
    assert main(["sweep", str(path), "--set", "scale=tiny", "--out", str(out), "--quiet", "--no-plots"]) == 0
    records = [json.loads(p.read_text()) for p in (out / "runs").glob("*.json")]
    assert records and all(r["status"] == "ok" for r in records)


# ---------------------------------------------------------------- recipe keys through the CLI (embedded digits)

RECIPE_TOML = """
[task]
dataset = "digits"
model = "mlp"
n_workers = 4
partition = "iid"

[train]
epochs = 0.35          # 1437 // 4 = 359 samples per worker, batch 16: 23 steps per epoch -> 8 steps
batch_size = 16
eval_every = 4

[[runs]]
name = "scheduled"
algorithm = "dsgd"
learning_rate = 0.05
lr_scaling = { rule = "linear", base_batch = 32 }   # x 4 * 16 / 32 = 2 -> peak 0.1
weight_decay = 1e-3
decay_norm = false
schedule = { kind = "warmup_multistep", warmup_epochs = 0.2, milestones = [0.75], decay = 0.1 }

[[runs]]
name = "fedavg"
algorithm = "local_sgd"
learning_rate = 0.1
local_epochs = 0.2     # round(0.2 * 23) = 5 local steps

[[runs]]
name = "qgm_warmup_from_0"   # QGM divides by the step's learning rate, which is 0 at step 0 here
algorithm = "qg_dsgdm"
learning_rate = 0.05
schedule = { kind = "constant", warmup_steps = 2 }
"""


def test_recipe_keys_through_simdl_run(tmp_path):
    cfg = tmp_path / "recipes.toml"
    cfg.write_text(RECIPE_TOML)
    out = tmp_path / "out"
    assert main(["run", str(cfg), "--out", str(out), "--quiet", "--no-plots"]) == 0
    res = json.loads((out / "results.json").read_text())
    sched, fedavg, qgm = res["runs"]
    assert sched["status"] == fedavg["status"] == qgm["status"] == "ok"
    assert sched["history"]["step"] == [4, 8]
    # warm-up 5 steps from 0 to 0.1, x0.1 from step 6; the history holds the lr of each chunk's last step (3, 7)
    assert sched["history"]["learning_rate"] == pytest.approx([0.06, 0.01], rel=1e-5)
    assert fedavg["hyperparams"]["local_steps"] == 5
    # decay_norm = false on an algorithm without a weight-decay mask is a clear error
    bad = tmp_path / "bad.toml"
    bad.write_text(RECIPE_TOML.replace('algorithm = "dsgd"', 'algorithm = "qg_dsgdm"'))
    assert main(["run", str(bad), "--out", str(tmp_path / "bad"), "--quiet", "--no-plots"]) == 2


SWEEP_TOML = """
[task]
dataset = "digits"
model = "mlp"
n_workers = 4
partition = "iid"

[train]
steps = 6
batch_size = 8
eval_every = 3

[[runs]]
algorithm = "dsgd"
schedule = { kind = "warmup_multistep", warmup_steps = 4, milestone_steps = [5], decay = 0.5 }

[sweep]
learning_rate = [0.05, 0.1]
"""


def test_sweep_batches_learning_rates_of_scheduled_runs(tmp_path):
    cfg = tmp_path / "sweep.toml"
    cfg.write_text(SWEEP_TOML)
    out = tmp_path / "out"
    assert main(["sweep", str(cfg), "--out", str(out), "--quiet", "--no-plots"]) == 0
    recs = sorted((json.loads(p.read_text()) for p in (out / "runs").glob("*.json")),
                  key=lambda r: r["run"]["learning_rate"])
    assert [r["status"] for r in recs] == ["ok", "ok"]
    assert recs[0]["batched_runs"] == 2  # one compiled program for both learning rates
    for r in recs:  # lr(2) = 0.5 lr (warm-up), lr(5) = 0.5 lr (decayed)
        lr = r["run"]["learning_rate"]
        assert r["history"]["learning_rate"] == pytest.approx([0.5 * lr, 0.5 * lr], rel=1e-5)
