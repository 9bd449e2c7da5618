"""The in-memory dataset record shared by every loader."""

from typing import NamedTuple

import numpy as np


class Dataset(NamedTuple):
    """A labelled classification dataset held in host memory as numpy arrays.

    Attributes:
        name: dataset name, e.g. ``"digits"``, ``"cifar10"``.
        x_train: (N, H, W, C) uint8 raw pixel values for image datasets (for the synthetic feature datasets:
            (N, D) float32 features).
        y_train: (N,) int32 class labels in ``0 .. num_classes - 1``.
        x_test: (N_test, H, W, C), same dtype as ``x_train``.
        y_test: (N_test,) int32.
        num_classes: number of classes C.
        scale: divide the raw values by this to map them to [0, 1] (16.0 for digits, 255.0 for 8-bit images,
            1.0 for float features).
        mean: float32 (C,) per-channel mean of the *scaled* training inputs ``x_train / scale``
            (per-feature (D,) for feature datasets).
        std: float32 (C,) per-channel standard deviation of the scaled training inputs.
            Normalise with ``(x / scale - mean) / std``.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    scale: float
    mean: np.ndarray
    std: np.ndarray


def channel_stats(x: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of ``x / scale`` over all axes but the last.

    Args:
        x: (..., C) array of any real dtype, e.g. (N, H, W, C) uint8.
        scale: positive divisor mapping raw values to [0, 1].

    Returns:
        ``(mean, std)``, each float32 (C,). A zero standard deviation (constant channel) is replaced by 1 so
        that normalising never divides by zero.

    Raises:
        ValueError: if ``x`` is empty or ``scale`` is not positive.
    """
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale!r}")
    x = np.asarray(x)
    if x.ndim < 1 or x.size == 0:
        raise ValueError(f"cannot compute channel statistics of an empty array of shape {x.shape}")
    flat = x.reshape(-1, x.shape[-1]).astype(np.float64) / scale
    mean = flat.mean(axis=0)
    std = flat.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return mean.astype(np.float32), std.astype(np.float32)


def make_dataset(
    name: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    num_classes: int,
    scale: float,
) -> Dataset:
    """Build a :class:`Dataset`: labels cast to int32, ``mean``/``std`` computed on the training inputs.

    Raises:
        ValueError: if inputs and labels disagree in length, or a label is outside ``0 .. num_classes - 1``.
    """
    y_train = np.asarray(y_train).astype(np.int32)
    y_test = np.asarray(y_test).astype(np.int32)
    for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        if len(x) != len(y):
            raise ValueError(f"{name} {split}: {len(x)} inputs but {len(y)} labels")
        if y.size and (y.min() < 0 or y.max() >= num_classes):
            raise ValueError(
                f"{name} {split}: labels must lie in 0..{num_classes - 1}, got range {y.min()}..{y.max()}"
            )
    mean, std = channel_stats(x_train, scale)
    return Dataset(name, x_train, y_train, x_test, y_test, int(num_classes), float(scale), mean, std)
