"""Tests for simdl.data loaders (embedded digits, tensorflow-datasets), Synthetic(α, β) and augmentation."""

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from simdl.data import (
    DATASETS,
    channel_stats,
    load_dataset,
    load_digits,
    load_tfds,
    synthetic_fedprox,
)
from simdl.data import tfds as simdl_tfds
from simdl.data.digits import _read_npz

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- digits


def test_digits_shapes_dtypes_values():
    ds = load_digits()
    assert ds.name == "digits"
    assert ds.x_train.shape == (1437, 8, 8, 1) and ds.x_test.shape == (360, 8, 8, 1)
    assert ds.x_train.dtype == np.uint8 and ds.x_test.dtype == np.uint8
    assert ds.y_train.shape == (1437,) and ds.y_test.shape == (360,)
    assert ds.y_train.dtype == np.int32 and ds.y_test.dtype == np.int32
    assert ds.x_train.max() == 16 and ds.x_train.min() == 0
    assert ds.num_classes == 10 and ds.scale == 16.0
    assert set(np.unique(ds.y_train)) == set(range(10)) == set(np.unique(ds.y_test))
    assert ds.mean.shape == (1,) and ds.std.shape == (1,) and ds.mean.dtype == np.float32
    np.testing.assert_allclose(ds.mean, [ds.x_train.mean() / 16], rtol=1e-5)
    np.testing.assert_allclose(ds.std, [ds.x_train.std() / 16], rtol=1e-5)


def test_digits_split_is_stratified_disjoint_and_seeded():
    ds = load_digits()
    all_counts = np.bincount(np.concatenate([ds.y_train, ds.y_test]), minlength=10)
    assert all_counts.sum() == 1797 and all_counts.min() >= 170  # every digit kept once
    test_counts = np.bincount(ds.y_test, minlength=10)
    assert np.all(np.abs(test_counts - 0.2 * all_counts) <= 1)
    # train + test is exactly the embedded set: every (image, label) pair once
    images, labels = _read_npz()
    pooled = np.concatenate(
        [
            np.concatenate([ds.x_train, ds.x_test]).reshape(1797, -1),
            np.concatenate([ds.y_train, ds.y_test])[:, None],
        ],
        axis=1,
    ).astype(np.int64)
    raw = np.concatenate([images.reshape(1797, -1), labels[:, None]], axis=1).astype(np.int64)
    np.testing.assert_array_equal(_sorted_rows(pooled), _sorted_rows(raw))
    again, other = load_digits(seed=0), load_digits(seed=1)
    np.testing.assert_array_equal(again.x_train, ds.x_train)
    np.testing.assert_array_equal(again.y_test, ds.y_test)
    assert not np.array_equal(other.y_train, ds.y_train)
    small = load_digits(test_fraction=0.5)
    assert len(small.y_test) == 899 and len(small.y_train) == 898


def _sorted_rows(a: np.ndarray) -> np.ndarray:
    return a[np.lexsort(a.T[::-1])]


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_digits_bad_test_fraction(fraction):
    with pytest.raises(ValueError, match=f"test_fraction.*{fraction}"):
        load_digits(test_fraction=fraction)


def test_load_dataset_dispatch():
    np.testing.assert_array_equal(load_dataset("digits", seed=2).y_train, load_digits(seed=2).y_train)
    with pytest.raises(ValueError, match="'imagenet'.*digits.*mnist.*cifar10"):
        load_dataset("imagenet")
    assert set(DATASETS) == {"digits", "mnist", "fashion_mnist", "cifar10", "cifar100", "emnist"}


def test_importing_simdl_data_needs_neither_sklearn_nor_tfds():
    code = (
        "import sys, simdl.data as d; d.load_digits(); "
        "bad = [m for m in ('sklearn', 'tensorflow_datasets', 'tensorflow') if m in sys.modules]; "
        "assert not bad, bad"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


def test_channel_stats():
    x = np.stack([np.zeros((5, 4, 4)), np.full((5, 4, 4), 255.0)], axis=-1)  # constant channels
    mean, std = channel_stats(x, 255.0)
    np.testing.assert_allclose(mean, [0.0, 1.0])
    np.testing.assert_allclose(std, [1.0, 1.0])  # zero std replaced by 1
    with pytest.raises(ValueError, match="scale.*-1"):
        channel_stats(x, -1)


# ------------------------------------------------------------ tensorflow-datasets (mock data, no download)


@pytest.fixture()
def mock_tfds():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=6):
        yield tfds


@pytest.mark.parametrize(
    ("name", "shape", "classes"),
    [("mnist", (28, 28, 1), 10), ("cifar10", (32, 32, 3), 10), ("emnist", (28, 28, 1), 47)],
)
def test_tfds_loader_on_mock_data(mock_tfds, name, shape, classes):
    ds = load_tfds(name)
    assert ds.name == name
    assert ds.x_train.shape == (6, *shape) and ds.x_test.shape == (6, *shape)
    assert ds.x_train.dtype == np.uint8
    assert ds.y_train.dtype == np.int32 and ds.y_train.shape == (6,)
    assert ds.num_classes == classes and ds.scale == 255.0
    assert 0 <= ds.y_train.min() and ds.y_train.max() < classes
    assert ds.mean.shape == ds.std.shape == (shape[-1],)
    np.testing.assert_allclose(ds.mean, ds.x_train.reshape(-1, shape[-1]).mean(0) / 255, rtol=1e-5)


def test_tfds_max_train_and_dispatch(mock_tfds):
    full = load_dataset("cifar10")
    ds = load_dataset("cifar10", max_train=4, max_test=2)
    assert len(ds.y_train) == 4 and len(ds.y_test) == 2
    np.testing.assert_array_equal(ds.x_train, full.x_train[:4])


def test_tfds_bad_arguments(mock_tfds):
    with pytest.raises(ValueError, match="'svhn'.*mnist"):
        load_tfds("svhn")
    with pytest.raises(ValueError, match="max_train.*0"):
        load_tfds("mnist", max_train=0)


def test_tfds_not_prepared_says_where_and_how(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(FileNotFoundError) as info:
        load_tfds("mnist", data_dir=tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message and "tfds build mnist" in message and "download=True" in message


def _prepare_fake_mnist(data_dir: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Write a tiny ArrayRecord dataset where tfds looks for prepared MNIST (no TensorFlow needed)."""
    tfds = pytest.importorskip("tensorflow_datasets")
    pil_image = pytest.importorskip("PIL.Image")
    pytest.importorskip("array_record")

    def encode(img):
        buf = io.BytesIO()
        pil_image.fromarray(img[..., 0]).save(buf, format="PNG")
        return buf.getvalue()

    class FakeMnist(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        name = "mnist"
        VERSION = tfds.core.Version("3.0.1")

        def _info(self):
            features = tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(28, 28, 1)),
                    "label": tfds.features.ClassLabel(num_classes=10),
                }
            )
            return tfds.core.DatasetInfo(builder=self, features=features)

        def _split_generators(self, dl_manager):
            return {
                "train": self._generate_examples(slice(0, -3)),
                "test": self._generate_examples(slice(-3, None)),
            }

        def _generate_examples(self, part):
            for i in range(len(labels))[part]:
                yield i, {"image": encode(images[i]), "label": int(labels[i])}

    FakeMnist(data_dir=data_dir, file_format="array_record").download_and_prepare()


def test_tfds_loader_reads_prepared_array_record_data(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 28, 28, 1), dtype=np.uint8)
    labels = np.arange(40) % 10
    _prepare_fake_mnist(tmp_path, images, labels)
    monkeypatch.setattr(simdl_tfds, "_READ_BATCH", 16)  # several batched reads
    ds = load_tfds("mnist", data_dir=tmp_path)
    assert ds.x_train.shape == (37, 28, 28, 1) and ds.x_test.shape == (3, 28, 28, 1)
    assert ds.num_classes == 10 and ds.y_train.dtype == np.int32
    # tfds shuffles records when preparing: compare (image, label) multisets
    got = {(x.tobytes(), int(y)) for x, y in zip(ds.x_train, ds.y_train, strict=True)}
    assert got == {(x.tobytes(), int(y)) for x, y in zip(images[:37], labels[:37], strict=True)}
    assert len(load_tfds("mnist", data_dir=tmp_path, max_train=20).y_train) == 20


def test_tfds_missing_package_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    with pytest.raises(ImportError, match=r"pip install 'simdl\[tfds\]'"):
        load_tfds("mnist")


# ---------------------------------------------------------------- Synthetic(alpha, beta)


def test_synthetic_shapes_and_seeding():
    data, idx, test_idx = synthetic_fedprox(8, 1.0, 1.0, samples_per_worker=30, test_samples_per_worker=5)
    ds = data
    assert ds.x_train.shape == (240, 60) and ds.x_train.dtype == np.float32
    assert ds.x_test.shape == (40, 60) and ds.y_test.shape == (40,)
    assert ds.y_train.dtype == np.int32 and ds.y_train.min() >= 0 and ds.y_train.max() < 10
    assert ds.num_classes == 10 and ds.scale == 1.0
    np.testing.assert_array_equal(ds.mean, np.zeros(60))
    np.testing.assert_array_equal(ds.std, np.ones(60))
    np.testing.assert_array_equal(idx, np.arange(240).reshape(8, 30))
    assert test_idx.shape == (8, 5)
    again = synthetic_fedprox(8, 1.0, 1.0, samples_per_worker=30, test_samples_per_worker=5)
    np.testing.assert_array_equal(again.dataset.x_train, ds.x_train)
    other = synthetic_fedprox(8, 1.0, 1.0, samples_per_worker=30, test_samples_per_worker=5, seed=1)
    assert not np.array_equal(other.dataset.y_train, ds.y_train)


def test_synthetic_input_heterogeneity_grows_with_beta():
    def spread_of_worker_means(beta):
        data, idx, _ = synthetic_fedprox(40, 0.0, beta, samples_per_worker=50, seed=0)
        means = data.x_train[idx].mean(axis=(1, 2))  # each worker's average feature value ~ B_k
        return means.std()

    assert spread_of_worker_means(0.0) < 0.4 < 2.0 < spread_of_worker_means(5.0)


def test_synthetic_iid_inputs_are_centred_and_covariance_decays():
    data, _, _ = synthetic_fedprox(10, 1.0, 1.0, samples_per_worker=400, iid=True, seed=0)
    assert data.name == "synthetic_iid"
    x = data.x_train.astype(np.float64)
    assert np.abs(x.mean(axis=0)).max() < 0.1  # v_k = 0 for every worker
    np.testing.assert_allclose(x.var(axis=0)[[0, 9, 59]], np.array([1, 10, 60]) ** -1.2, rtol=0.15)


@pytest.mark.parametrize(
    ("kw", "match"), [({"alpha": -1.0}, "alpha.*-1"), ({"beta": float("nan")}, "beta.*nan")]
)
def test_synthetic_bad_arguments(kw, match):
    args = {"n_workers": 4, "alpha": 1.0, "beta": 1.0, **kw}
    with pytest.raises(ValueError, match=match):
        synthetic_fedprox(**args)
    with pytest.raises(ValueError, match="n_workers.*0"):
        synthetic_fedprox(0, 1.0, 1.0)


# ---------------------------------------------------------------- augmentation (jax)


@pytest.fixture(scope="module")
def aug():
    jax = pytest.importorskip("jax")
    from simdl.data import augment

    return jax, augment


def _images(batch=6, size=5, channels=2, seed=0):
    return np.random.default_rng(seed).uniform(0.1, 1.0, (batch, size, size, channels)).astype(np.float32)


def test_augment_identity_and_flip(aug):
    jax, augment = aug
    x = _images()
    key = jax.random.key(0)
    np.testing.assert_array_equal(augment.random_crop_flip(key, x, pad=0, flip=False), x)
    np.testing.assert_array_equal(augment.hflip(augment.hflip(x)), x)
    out = np.asarray(augment.random_crop_flip(key, _images(batch=64), pad=0))
    flipped = np.array([np.array_equal(o, i[:, ::-1]) for o, i in zip(out, _images(batch=64), strict=True)])
    same = np.array([np.array_equal(o, i) for o, i in zip(out, _images(batch=64), strict=True)])
    assert np.all(flipped | same) and flipped.any() and same.any()


def test_augment_outputs_are_windows_of_the_padded_image(aug):
    jax, augment = aug
    pad, x = 2, _images(batch=16)
    out = np.asarray(augment.random_crop_flip(jax.random.key(3), x, pad=pad))
    assert out.shape == x.shape and out.dtype == np.float32
    offsets = set()
    for o, img in zip(out, x, strict=True):
        padded = np.pad(img, ((pad, pad), (pad, pad), (0, 0)))
        hits = [
            (dy, dx)
            for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)
            for cand in (o, o[:, ::-1])
            if np.array_equal(padded[dy : dy + 5, dx : dx + 5], cand)
        ]
        assert hits, "output is not a (possibly flipped) crop of the zero-padded input"
        offsets.add(hits[0])
    assert len(offsets) > 1  # offsets are drawn per sample


def test_augment_determinism_and_vmap_over_workers(aug):
    jax, augment = aug
    x = np.stack([_images(batch=4, seed=s) for s in range(3)])  # (n=3, B=4, 5, 5, 2)
    keys = jax.random.split(jax.random.key(7), 3)
    fn = jax.jit(jax.vmap(lambda k, imgs: augment.random_crop_flip(k, imgs, pad=2)))
    a, b = np.asarray(fn(keys, x)), np.asarray(fn(keys, x))
    assert a.shape == x.shape
    np.testing.assert_array_equal(a, b)
    c = np.asarray(fn(jax.random.split(jax.random.key(8), 3), x))
    assert not np.array_equal(a, c)
    np.testing.assert_array_equal(a[1], augment.random_crop_flip(keys[1], x[1], pad=2))


def test_augment_bad_input(aug):
    jax, augment = aug
    with pytest.raises(ValueError, match=r"\(B, H, W, C\).*\(5, 5, 2\)"):
        augment.random_crop_flip(jax.random.key(0), _images()[0])
    with pytest.raises(ValueError, match="pad.*-1"):
        augment.random_crop_flip(jax.random.key(0), _images(), pad=-1)
