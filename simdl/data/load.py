"""Load any supported dataset by name."""

from simdl.data.dataset import Dataset
from simdl.data.digits import load_digits
from simdl.data.tfds import TFDS_NAMES, load_tfds

DATASETS: tuple[str, ...] = ("digits", *TFDS_NAMES)
"""Every name accepted by :func:`load_dataset`."""


def load_dataset(name: str, **kwargs) -> Dataset:
    """Load a dataset by name: ``"digits"`` (embedded, :func:`~simdl.data.digits.load_digits`) or one of
    ``"mnist"``, ``"fashion_mnist"``, ``"cifar10"``, ``"cifar100"``, ``"emnist"`` through tensorflow-datasets
    (:func:`~simdl.data.tfds.load_tfds`). Keyword arguments go to that loader.

    Raises:
        ValueError: for an unknown name; the message lists the valid ones.
    """
    if name == "digits":
        return load_digits(**kwargs)
    if name in TFDS_NAMES:
        return load_tfds(name, **kwargs)
    raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
