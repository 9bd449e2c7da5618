"""Image datasets from tensorflow-datasets, read without TensorFlow (optional extra ``simdl[tfds]``).

Uses ``tensorflow_datasets.data_source`` (random access to ArrayRecord files, no TensorFlow needed) instead of
``tfds.load`` (which needs TensorFlow), reads every record of a split once into uint8 numpy arrays (NHWC) and
returns a :class:`~simdl.data.dataset.Dataset`.
"""

import logging
from pathlib import Path

import numpy as np

from simdl.data.dataset import Dataset, make_dataset

TFDS_NAMES: dict[str, str] = {
    "mnist": "mnist",
    "fashion_mnist": "fashion_mnist",
    "cifar10": "cifar10",
    "cifar100": "cifar100",
    "emnist": "emnist/balanced",
}
"""simdl dataset name -> tensorflow-datasets name (EMNIST uses the 47-class "balanced" split)."""

_READ_BATCH = 1024


def _import_tfds():
    try:
        import tensorflow_datasets
    except ImportError as err:
        raise ImportError(
            "loading datasets other than 'digits' needs tensorflow-datasets: pip install 'simdl[tfds]'"
        ) from err
    return tensorflow_datasets


def _not_prepared_error(tfds, tfds_name: str, data_dir, download: bool, err: Exception) -> Exception:
    try:
        searched = Path(tfds.builder(tfds_name, data_dir=data_dir).data_dir)
    except Exception:  # noqa: BLE001 - only used to improve the message
        searched = Path(data_dir) / tfds_name if data_dir is not None else None
    base = data_dir if data_dir is not None else "~/tensorflow_datasets"
    where = f"at {searched}" if searched is not None else "in the default tensorflow-datasets directory"
    if download:
        problem = f"could not be downloaded and prepared {where}"
    elif searched is not None and searched.exists():
        problem = f"exists {where} but cannot be read as ArrayRecord (prepared in TFRecord format?)"
    else:
        problem = f"is not prepared: nothing found {where}"
    return FileNotFoundError(
        f"tensorflow-datasets dataset {tfds_name!r} {problem} [{type(err).__name__}]. "
        "Prepare it once on a machine with internet access, e.g. "
        f"`load_tfds(..., download=True, data_dir={str(base)!r})` or "
        f"`tfds build {tfds_name} --data_dir {base} --file_format array_record`, "
        "then copy that directory here and pass data_dir (the default is ~/tensorflow_datasets or "
        "$TFDS_DATA_DIR)."
    )


def _stand_in(name: str, max_train: int | None, max_test: int | None, reason: str) -> Dataset:
    from simdl.data.stand_in import stand_in, warn_stand_in

    warn_stand_in(name, reason)
    return stand_in(name, max_train or 256, max_test or 32)


def _read_split(source, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Read the first ``limit`` (default all) records of a data source into (images uint8, labels int64)."""
    count = len(source) if limit is None else min(limit, len(source))
    records: list[dict] = []
    batched = hasattr(source, "__getitems__")
    for start in range(0, count, _READ_BATCH):
        keys = list(range(start, min(start + _READ_BATCH, count)))
        if batched:
            try:
                records.extend(source.__getitems__(keys))
                continue
            except TypeError:  # some sources (e.g. tfds.testing mocks) only support single-record access
                batched = False
        records.extend(source[i] for i in keys)
    if not records:
        raise ValueError("the split is empty (or max_train/max_test is 0): nothing to load")
    images = np.stack([np.asarray(r["image"]) for r in records])
    labels = np.asarray([int(r["label"]) for r in records], dtype=np.int64)
    if images.dtype != np.uint8:
        raise ValueError(f"expected uint8 images, got {images.dtype}")
    if images.ndim == 3:  # (N, H, W) -> (N, H, W, 1)
        images = images[..., None]
    return images, labels


def _check_limit(name: str, value) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be None or an integer >= 1, got {value!r}")
    return value


def load_tfds(
    name: str,
    data_dir: str | Path | None = None,
    download: bool = False,
    max_train: int | None = None,
    max_test: int | None = None,
    stand_in: bool = False,
) -> Dataset:
    """Load an image-classification dataset from tensorflow-datasets into memory, without TensorFlow.

    Args:
        name: one of ``"mnist"``, ``"fashion_mnist"``, ``"cifar10"``, ``"cifar100"``, ``"emnist"``
            (tfds ``emnist/balanced``, 47 classes).
        data_dir: tensorflow-datasets data directory; None means the tfds default (``~/tensorflow_datasets``
            or ``$TFDS_DATA_DIR``).
        download: allow tfds to download and prepare the dataset (needs internet) if it is not prepared yet.
        max_train: keep only the first ``max_train`` training records (None: all).
        max_test: keep only the first ``max_test`` test records (None: all).
        stand_in: when the dataset is not prepared (or tensorflow-datasets is missing), return a synthetic
            stand-in of the same shape (:func:`simdl.data.stand_in.stand_in`, ``max_train``/``max_test`` samples,
            default 256/32) with a one-line :class:`~simdl.data.stand_in.StandInWarning` instead of raising.
            Set by the ``tiny`` scale.

    Returns:
        A :class:`~simdl.data.dataset.Dataset`: ``x_train`` uint8 (N, H, W, C) (28x28x1 or 32x32x3),
        ``y_train`` int32, ``scale`` = 255.0, ``mean``/``std`` float32 (C,) of the scaled training pixels,
        ``num_classes`` from the tfds metadata.

    Raises:
        ValueError: for an unknown name (valid ones listed) or a bad ``max_train``/``max_test``.
        ImportError: if tensorflow-datasets is not installed (``pip install 'simdl[tfds]'``).
        FileNotFoundError: if the dataset is not prepared under ``data_dir`` (the message says which directory
            was searched and how to prepare it) or could not be downloaded.
    """
    if name not in TFDS_NAMES:
        raise ValueError(f"unknown tfds dataset {name!r}; valid names: {', '.join(TFDS_NAMES)}")
    max_train = _check_limit("max_train", max_train)
    max_test = _check_limit("max_test", max_test)
    try:
        tfds = _import_tfds()
    except ImportError:
        if not stand_in:
            raise
        return _stand_in(name, max_train, max_test, "tensorflow-datasets is not installed")
    tfds_name = TFDS_NAMES[name]
    absl = logging.getLogger("absl")
    level = absl.level
    if stand_in:  # the probe of a missing dataset logs an absl WARNING; the stand-in's one line says it all
        absl.setLevel(logging.ERROR)
    try:
        sources = tfds.data_source(tfds_name, split=["train", "test"], data_dir=data_dir, download=download)
    except Exception as err:  # noqa: BLE001 - tfds raises several unrelated types for "not prepared"
        if stand_in:
            return _stand_in(name, max_train, max_test, f"tensorflow-datasets found no {tfds_name}")
        raise _not_prepared_error(tfds, tfds_name, data_dir, download, err) from err
    finally:
        absl.setLevel(level)
    train, test = sources
    x_train, y_train = _read_split(train, max_train)
    x_test, y_test = _read_split(test, max_test)
    num_classes = int(train.dataset_info.features["label"].num_classes)
    return make_dataset(name, x_train, y_train, x_test, y_test, num_classes=num_classes, scale=255.0)
