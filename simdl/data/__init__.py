"""Datasets and partitions: the embedded digits, tensorflow-datasets loaders (optional extra ``simdl[tfds]``,
imported lazily), Synthetic(α, β), IID / Dirichlet-α / shard partitioners, and on-device (jax) augmentation.

Loaders and partitioners are numpy-only; only :mod:`simdl.data.augment` uses jax.
"""

from simdl.data import augment
from simdl.data.augment import hflip, random_crop_flip
from simdl.data.dataset import Dataset, channel_stats, make_dataset
from simdl.data.digits import load_digits
from simdl.data.load import DATASETS, load_dataset
from simdl.data.partition import (
    PARTITIONS,
    dirichlet,
    iid,
    label_histogram,
    partition,
    shards,
    skew,
)
from simdl.data.synthetic import SyntheticData, synthetic_fedprox
from simdl.data.tfds import TFDS_NAMES, load_tfds

__all__ = [
    "DATASETS",
    "PARTITIONS",
    "TFDS_NAMES",
    "Dataset",
    "SyntheticData",
    "augment",
    "channel_stats",
    "dirichlet",
    "hflip",
    "iid",
    "label_histogram",
    "load_dataset",
    "load_digits",
    "load_tfds",
    "make_dataset",
    "partition",
    "random_crop_flip",
    "shards",
    "skew",
    "synthetic_fedprox",
]
