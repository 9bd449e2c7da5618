"""Synthetic stand-ins for the tensorflow-datasets image datasets: same image shape, dtype and number of classes.

Used by the ``tiny`` scale (:mod:`simdl.scale`) when a paper config's dataset is not prepared on this machine, so a
smoke test of the config runs offline. A stand-in is not the dataset: accuracies on it say nothing about the paper.
Each class has a fixed random prototype image (smooth, uint8); a sample is its class prototype blended with pixel
noise, so the classes are learnable and a smoke test still shows the loss falling.
"""

from __future__ import annotations

import warnings
import zlib

import numpy as np

from simdl.data.dataset import Dataset, make_dataset

#: simdl dataset name -> (image shape (H, W, C), number of classes), as tensorflow-datasets gives them.
SHAPES: dict[str, tuple[tuple[int, int, int], int]] = {
    "mnist": ((28, 28, 1), 10),
    "fashion_mnist": ((28, 28, 1), 10),
    "emnist": ((28, 28, 1), 47),
    "cifar10": ((32, 32, 3), 10),
    "cifar100": ((32, 32, 3), 100),
}


class StandInWarning(UserWarning):
    """Emitted once per load when a synthetic stand-in replaces a dataset that is not prepared."""


def stand_in(name: str, n_train: int = 256, n_test: int = 32, seed: int | None = None) -> Dataset:
    """A synthetic :class:`~simdl.data.dataset.Dataset` shaped like ``name``.

    Args:
      name: a key of :data:`SHAPES`.
      n_train, n_test: samples per split (≥ 1); labels cycle through the classes, so every class appears when
        ``n ≥ num_classes``.
      seed: PRNG seed; default: derived from ``name`` (the same stand-in on every machine).

    Returns:
      ``x_train`` uint8 ``(n_train, H, W, C)``, ``y_train`` int32, the same for test, ``scale = 255.0``, and
      ``name = "<name>_stand_in"``.

    Raises:
      ValueError: unknown ``name`` (valid ones listed), or sizes < 1.
    """
    if name not in SHAPES:
        raise ValueError(f"no stand-in for dataset {name!r}; valid: {', '.join(SHAPES)}")
    for key, v in (("n_train", n_train), ("n_test", n_test)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{key} must be an integer >= 1, got {v!r}")
    shape, classes = SHAPES[name]
    rng = np.random.default_rng(zlib.crc32(name.encode()) if seed is None else seed)
    coarse = rng.uniform(0, 255, (classes, 4, 4, shape[2]))
    protos = np.repeat(np.repeat(coarse, -(-shape[0] // 4), axis=1), -(-shape[1] // 4), axis=2)
    protos = protos[:, :shape[0], :shape[1]]

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.arange(n) % classes
        rng.shuffle(y)
        noise = rng.uniform(0, 255, (n, *shape))
        return np.clip(0.6 * protos[y] + 0.4 * noise, 0, 255).astype(np.uint8), y

    x_train, y_train = split(int(n_train))
    x_test, y_test = split(int(n_test))
    return make_dataset(f"{name}_stand_in", x_train, y_train, x_test, y_test, num_classes=classes, scale=255.0)


def warn_stand_in(name: str, reason: str) -> None:
    """Emit the one-line :class:`StandInWarning` naming the dataset, its shape and why it was replaced."""
    shape, classes = SHAPES[name]
    warnings.warn(f"{name} is not prepared on this machine ({reason}); the tiny scale uses a synthetic stand-in of "
                  f"the same shape ({'x'.join(map(str, shape))}, {classes} classes): a smoke test of the config, "
                  "not of the paper's numbers", StandInWarning, stacklevel=3)
