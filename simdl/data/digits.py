"""The embedded 8x8 handwritten-digits dataset (no download, no scikit-learn at runtime)."""

import math
from importlib import resources

import numpy as np

from simdl.data.dataset import Dataset, make_dataset

_NUM_CLASSES = 10
_SCALE = 16.0


def _read_npz() -> tuple[np.ndarray, np.ndarray]:
    """The raw embedded arrays: images uint8 (1797, 8, 8, 1) in 0..16 and labels uint8 (1797,)."""
    with resources.files("simdl.data").joinpath("digits.npz").open("rb") as fh, np.load(fh) as npz:
        return npz["images"], npz["labels"]


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified train/test split of sample indices.

    The test set has ``ceil(test_fraction * N)`` samples; each class contributes its proportional share,
    rounded by the largest-remainder method so that the shares add up exactly.

    Args:
        labels: (N,) integer class labels.
        test_fraction: fraction of samples in the test set, in (0, 1).
        seed: seed for ``np.random.default_rng``.

    Returns:
        ``(train_idx, test_idx)``, int64 index arrays, each in a random (seeded) order, disjoint, covering
        ``range(N)``.

    Raises:
        ValueError: if ``test_fraction`` is outside (0, 1) or leaves an empty train or test set.
    """
    labels = np.asarray(labels)
    n_total = len(labels)
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction!r}")
    n_test = math.ceil(test_fraction * n_total)
    if not 0 < n_test < n_total:
        raise ValueError(f"test_fraction={test_fraction!r} leaves {n_test} of {n_total} samples for testing")
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * (n_test / n_total)
    per_class = np.floor(quota).astype(np.int64)
    shortfall = n_test - int(per_class.sum())
    per_class[np.argsort(-(quota - per_class), kind="stable")[:shortfall]] += 1
    train_parts, test_parts = [], []
    for cls, n_cls_test in zip(classes, per_class, strict=True):
        members = rng.permutation(np.flatnonzero(labels == cls))
        test_parts.append(members[:n_cls_test])
        train_parts.append(members[n_cls_test:])
    train_idx = rng.permutation(np.concatenate(train_parts)).astype(np.int64)
    test_idx = rng.permutation(np.concatenate(test_parts)).astype(np.int64)
    return train_idx, test_idx


def load_digits(test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """Load the embedded UCI/scikit-learn 8x8 digits (1797 images, 10 classes) with a seeded stratified split.

    The defaults give 1437 training and 360 test images.

    Args:
        test_fraction: fraction of images held out for testing, in (0, 1).
        seed: seed of the split (``np.random.default_rng``).

    Returns:
        A :class:`~simdl.data.dataset.Dataset` named ``"digits"``: ``x_train`` uint8 (N, 8, 8, 1) with
        values 0..16 (``scale`` = 16.0), ``y_train`` int32 (N,), test arrays alike, ``num_classes`` = 10,
        ``mean``/``std`` float32 (1,) of the scaled training pixels.

    Raises:
        ValueError: for a ``test_fraction`` outside (0, 1).
    """
    images, labels = _read_npz()
    train_idx, test_idx = stratified_split(labels, test_fraction, seed)
    return make_dataset(
        "digits",
        images[train_idx],
        labels[train_idx],
        images[test_idx],
        labels[test_idx],
        num_classes=_NUM_CLASSES,
        scale=_SCALE,
    )
