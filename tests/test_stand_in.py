"""Offline smoke tests: at the tiny scale a dataset that is not prepared is replaced by a synthetic stand-in of the
same shape, with one warning line (simdl.data.stand_in, load_tfds(stand_in=True), simdl.scale)."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from simdl.data.stand_in import SHAPES, StandInWarning, stand_in
from simdl.scale import apply_scale

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_stand_in_has_the_dataset_shape(name):
    shape, classes = SHAPES[name]
    ds = stand_in(name, n_train=3 * classes, n_test=classes)
    assert ds.x_train.shape == (3 * classes, *shape) and ds.x_train.dtype == np.uint8
    assert ds.x_test.shape == (classes, *shape)
    assert ds.num_classes == classes and ds.scale == 255.0 and ds.name == f"{name}_stand_in"
    assert sorted(set(ds.y_train.tolist())) == list(range(classes))  # every class appears
    again = stand_in(name, n_train=3 * classes, n_test=classes)
    np.testing.assert_array_equal(again.x_train, ds.x_train)  # deterministic per name


def test_stand_in_classes_are_learnable():
    """A nearest-prototype rule on training means classifies the test split far above chance."""
    ds = stand_in("cifar10", n_train=500, n_test=200)
    x, xt = ds.x_train.reshape(500, -1).astype(float), ds.x_test.reshape(200, -1).astype(float)
    means = np.stack([x[ds.y_train == c].mean(axis=0) for c in range(10)])
    pred = np.argmin(((xt[:, None, :] - means[None]) ** 2).sum(-1), axis=1)
    assert (pred == ds.y_test).mean() > 0.5


def test_stand_in_bad_input():
    with pytest.raises(ValueError, match="no stand-in for dataset 'svhn'; valid: mnist"):
        stand_in("svhn")
    with pytest.raises(ValueError, match="n_train must be an integer >= 1, got 0"):
        stand_in("mnist", n_train=0)


def test_load_tfds_falls_back_only_when_asked(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    from simdl.data.tfds import load_tfds

    with pytest.raises(FileNotFoundError, match="not prepared"):
        load_tfds("mnist", data_dir=tmp_path)
    with pytest.warns(StandInWarning, match=r"mnist is not prepared .* same shape \(28x28x1, 10 classes\)"):
        ds = load_tfds("mnist", data_dir=tmp_path, max_train=40, max_test=8, stand_in=True)
    assert ds.x_train.shape == (40, 28, 28, 1) and ds.name == "mnist_stand_in"


def test_tiny_scale_asks_for_a_stand_in_only_for_tfds_datasets():
    cfg = {"task": {"dataset": "cifar10", "n_workers": 4}, "train": {"steps": 100}}
    assert apply_scale(cfg, "tiny")["task"]["dataset_kwargs"]["stand_in"] is True
    assert "stand_in" not in apply_scale(cfg, "full")["task"].get("dataset_kwargs", {})
    digits = apply_scale({"task": {"dataset": "digits"}, "train": {}}, "tiny")
    assert "stand_in" not in digits["task"].get("dataset_kwargs", {})


def test_paper_config_runs_offline_at_tiny_scale(tmp_path):
    """The simdl command on a paper config at --set scale=tiny with no prepared dataset: exit 0, one warning line
    that names the stand-in, no traceback."""
    pytest.importorskip("tensorflow_datasets")
    empty = tmp_path / "tfds"
    empty.mkdir()
    env = {**os.environ, "TFDS_DATA_DIR": str(empty)}
    cmd = [str(Path(sys.executable).with_name("simdl")), "run", str(REPO / "configs" / "kamp_mnist_cnn_dynamic.toml"),
           "--set", "scale=tiny", "--runs", "0", "--out", str(tmp_path / "out"), "--quiet", "--no-plots"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    notes = [ln for ln in proc.stderr.splitlines() if "stand-in" in ln]
    assert len(notes) == 1 and notes[0].startswith("simdl: warning: mnist is not prepared"), proc.stderr
    assert "Traceback" not in proc.stderr
    assert (tmp_path / "out" / "results.json").exists()
