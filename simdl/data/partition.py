"""Split a training set across n workers: IID, Dirichlet-α label skew, and "k classes per worker" shards.

Every partitioner returns an int64 array of shape (n, m) of indices into the training set, with
``m = N // n``: every worker holds exactly m distinct samples, and the ``N - n * m`` leftover samples are
dropped (which ones depends on the scheme, see each function). All randomness comes from
``np.random.default_rng(seed)``, so the same inputs and seed give the same split.
"""

import numbers
from collections.abc import Callable

import numpy as np

WORKERS_PER_CHUNK = 10
"""Workers per Dirichlet chunk in the reference procedure (docs/algorithms.md#dirichlet-partition)."""

DEFAULT_MAX_ATTEMPTS = 100_000
"""Rejection-loop cap per chunk in :func:`dirichlet`."""


def _check_labels(labels) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be a 1-D array, got shape {labels.shape}")
    if labels.size == 0:
        raise ValueError("labels is empty: cannot partition an empty training set")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must have an integer dtype, got {labels.dtype}")
    if labels.min() < 0:
        raise ValueError(f"labels must be non-negative class ids, got minimum {labels.min()}")
    return labels.astype(np.int64)


def _check_int(name: str, value, low: int, high: int | None, why: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if value < low or (high is not None and value > high):
        allowed = f">= {low}" if high is None else f"in {low}..{high}"
        raise ValueError(f"{name} must be {allowed}{why}, got {value}")
    return value


def _check_workers(n, num_samples: int) -> int:
    why = f" (number of workers; the training set has {num_samples} samples)"
    return _check_int("n", n, 1, num_samples, why)


def _check_alpha(alpha) -> float:
    try:
        value = float(alpha)
    except (TypeError, ValueError):
        raise ValueError(f"alpha must be a positive finite number, got {alpha!r}") from None
    if not (np.isfinite(value) and value > 0):
        raise ValueError(f"alpha must be a positive finite number (Dirichlet concentration), got {alpha!r}")
    return value


def iid(labels: np.ndarray, n: int, seed=0) -> np.ndarray:
    """IID split: a seeded random permutation cut into n equal parts.

    Args:
        labels: (N,) integer class labels (only N is used; validated like the other partitioners).
        n: number of workers, 1 <= n <= N.
        seed: seed for ``np.random.default_rng``.

    Returns:
        int64 (n, N // n) indices; the last ``N - n * (N // n)`` samples of the permutation are dropped.

    Raises:
        ValueError: for invalid labels or n.
    """
    labels = _check_labels(labels)
    n = _check_workers(n, len(labels))
    m = len(labels) // n
    order = np.random.default_rng(seed).permutation(len(labels))
    return order[: n * m].reshape(n, m).astype(np.int64)


def _chunk_cuts(
    chunk_labels: np.ndarray,
    w: int,
    alpha: float,
    num_classes: int,
    rng: np.random.Generator,
    max_attempts: int,
) -> list[np.ndarray]:
    """Run the rejection loop of docs/algorithms.md#dirichlet-partition, step 3 on one chunk.

    Returns, for each class, the w - 1 cut points (int64, non-decreasing) that split that class's members
    (in chunk order) among the chunk's w workers.
    """
    size = len(chunk_labels)
    class_sizes = np.bincount(chunk_labels, minlength=num_classes)
    target = size / w
    min_required = int(0.5 * size / w)
    concentration = np.full(w, alpha)
    for _ in range(max_attempts):
        counts = np.zeros(w, dtype=np.int64)
        cuts_per_class = []
        for size_c in class_sizes:
            p = rng.dirichlet(concentration)
            p = np.where(counts < target, p, 0.0)
            total = p.sum()
            while total == 0.0 and size_c > 0:
                # All remaining mass underflowed to exactly 0 on the open workers (possible for tiny alpha):
                # redraw, i.e. sample p conditioned on the open workers getting positive mass.
                p = np.where(counts < target, rng.dirichlet(concentration), 0.0)
                total = p.sum()
            if total == 0.0:  # empty class and every worker full: nothing to place
                cuts = np.zeros(w - 1, dtype=np.int64)
            else:
                cuts = (np.cumsum(p / total) * size_c).astype(np.int64)[:-1]
            cuts_per_class.append(cuts)
            counts += np.diff(np.concatenate(([0], cuts, [size_c])))
        if counts.min() >= min_required:
            return cuts_per_class
    raise ValueError(
        f"dirichlet partition: after {max_attempts} attempts no draw gave every one of {w} workers at least "
        f"{min_required} of {size} samples (alpha={alpha!r}); use a larger alpha, fewer workers, or a larger "
        "max_attempts"
    )


def dirichlet(
    labels: np.ndarray,
    n: int,
    alpha: float,
    seed=0,
    *,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
) -> np.ndarray:
    """Dirichlet-α label-skew split, the procedure of the RelaySGD / QGM reference code
    (docs/algorithms.md#dirichlet-partition).

    1. Shuffle the (index, label) pairs with the seeded generator.
    2. Cut them into K = ceil(n / 10) consecutive chunks of 10 workers each (the last chunk takes the
       remaining ``n - 10 (K - 1)`` workers); every chunk but the last has ``(10 * N) // n`` samples, the last
       the rest.
    3. Per chunk of S samples and w workers, repeat until every worker holds >= ``int(0.5 * S / w)`` samples:
       start with empty workers; for each class c = 0, 1, ...: draw p ~ Dirichlet(α·1_w), set p_j = 0 for
       workers already holding >= S / w samples, renormalise, and split the class's samples (in shuffled
       order) at the cut points ``int(cumsum(p) * |class|)``, appending piece j to worker j.
    4. Concatenate the per-worker lists in worker order and re-cut the concatenation into n consecutive parts
       of m = N // n samples; the last ``N - n * m`` samples of the concatenation are dropped.

    Step 4 makes all workers equal in size while keeping most of the label skew. α = 0.01 gives 1–2 classes
    per worker, α = 10 is close to IID. Deviation from the reference code: if, for tiny α, all Dirichlet mass
    of the workers that are not yet full underflows to exactly 0, p is redrawn (the reference would divide by
    zero).
    Reference: Vogels et al. 2021 (arXiv 2110.04175), Lin et al. 2021 (arXiv 2102.04761).

    Args:
        labels: (N,) non-negative integer class labels.
        n: number of workers, 1 <= n <= N.
        alpha: Dirichlet concentration, > 0 (smaller = more skew).
        seed: seed for ``np.random.default_rng``.
        max_attempts: cap on the rejection loop per chunk.

    Returns:
        int64 (n, N // n) distinct indices into ``labels``.

    Raises:
        ValueError: for invalid labels, n, alpha or max_attempts, or when no draw in ``max_attempts`` tries
            meets the minimum-size condition.
    """
    labels = _check_labels(labels)
    num_samples = len(labels)
    n = _check_workers(n, num_samples)
    alpha = _check_alpha(alpha)
    max_attempts = _check_int("max_attempts", max_attempts, 1, None)
    num_classes = int(labels.max()) + 1
    rng = np.random.default_rng(seed)

    order = rng.permutation(num_samples)
    shuffled_labels = labels[order]
    num_chunks = -(-n // WORKERS_PER_CHUNK)
    chunk_size = (WORKERS_PER_CHUNK * num_samples) // n
    pieces = []
    for chunk in range(num_chunks):
        last = chunk == num_chunks - 1
        w = n - WORKERS_PER_CHUNK * chunk if last else WORKERS_PER_CHUNK
        start = chunk * chunk_size
        stop = num_samples if last else start + chunk_size
        chunk_idx, chunk_labels = order[start:stop], shuffled_labels[start:stop]
        cuts_per_class = _chunk_cuts(chunk_labels, w, alpha, num_classes, rng, max_attempts)
        per_worker: list[list[np.ndarray]] = [[] for _ in range(w)]
        for cls, cuts in enumerate(cuts_per_class):
            for j, piece in enumerate(np.split(chunk_idx[chunk_labels == cls], cuts)):
                per_worker[j].append(piece)
        pieces.extend(np.concatenate(parts) for parts in per_worker)
    flat = np.concatenate(pieces)
    m = num_samples // n
    return flat[: n * m].reshape(n, m).astype(np.int64)


def shards(labels: np.ndarray, n: int, k: int, seed=0) -> np.ndarray:
    """Pathological "k classes per worker" split (McMahan et al. 2017, arXiv 1602.05629).

    A random subset of n * m samples (m = N // n; the other ``N - n * m`` are dropped) is sorted by label
    (random order within a class), cut into n * k consecutive shards and each worker gets k random shards.
    Shard sizes are q = m // k or q + 1 (r = m % k of each worker's k shards are the larger ones, placed at
    random along the sorted order), so every worker holds exactly m samples.

    A shard lies within one class unless it straddles a class boundary. If every class size is a multiple of
    the shard size each worker sees at most k classes; in general a worker sees at most 2k classes when
    shards are no larger than the smallest class.

    Args:
        labels: (N,) non-negative integer class labels.
        n: number of workers, 1 <= n <= N.
        k: shards (nominal classes) per worker, 1 <= k <= number of distinct labels and k <= N // n.
        seed: seed for ``np.random.default_rng``.

    Returns:
        int64 (n, N // n) distinct indices into ``labels``.

    Raises:
        ValueError: for invalid labels, n or k.
    """
    labels = _check_labels(labels)
    num_samples = len(labels)
    n = _check_workers(n, num_samples)
    num_present = len(np.unique(labels))
    m = num_samples // n
    k = _check_int("k", k, 1, num_present, f" (classes per worker; the labels have {num_present} classes)")
    if k > m:
        raise ValueError(f"k must be <= N // n = {m} (samples per worker) so that no shard is empty, got {k}")
    rng = np.random.default_rng(seed)

    keep = rng.permutation(num_samples)[: n * m]
    sorted_idx = keep[np.argsort(labels[keep], kind="stable")]
    q, r = divmod(m, k)
    is_big = rng.permutation(n * k) < n * r
    bounds = np.concatenate(([0], np.cumsum(np.where(is_big, q + 1, q))))
    big = rng.permutation(np.flatnonzero(is_big)).reshape(n, r)
    small = rng.permutation(np.flatnonzero(~is_big)).reshape(n, k - r)
    owned = np.concatenate([big, small], axis=1)
    rows = [np.concatenate([sorted_idx[bounds[s] : bounds[s + 1]] for s in row]) for row in owned]
    return np.stack(rows).astype(np.int64)


PARTITIONS: dict[str, Callable[..., np.ndarray]] = {"iid": iid, "dirichlet": dirichlet, "shards": shards}


def partition(name: str, labels: np.ndarray, n: int, *, alpha: float = 1.0, k: int = 2, seed=0) -> np.ndarray:
    """Dispatch to a partitioner by name.

    Args:
        name: ``"iid"``, ``"dirichlet"`` (uses ``alpha``) or ``"shards"`` (uses ``k``).
        labels: (N,) non-negative integer class labels of the training set.
        n: number of workers.
        alpha: Dirichlet concentration for ``"dirichlet"`` (> 0); ignored otherwise.
        k: shards per worker for ``"shards"``; ignored otherwise.
        seed: seed for ``np.random.default_rng``.

    Returns:
        int64 (n, N // n) indices into the training set.

    Raises:
        ValueError: for an unknown name (the message lists the valid ones) or invalid arguments.
    """
    if name == "iid":
        return iid(labels, n, seed)
    if name == "dirichlet":
        return dirichlet(labels, n, alpha, seed)
    if name == "shards":
        return shards(labels, n, k, seed)
    raise ValueError(f"unknown partition {name!r}; valid names: {', '.join(sorted(PARTITIONS))}")


def label_histogram(labels: np.ndarray, indices: np.ndarray, num_classes: int) -> np.ndarray:
    """Per-worker class counts.

    Args:
        labels: (N,) non-negative integer class labels.
        indices: (n, m) integer indices into ``labels`` (as returned by the partitioners).
        num_classes: number of classes C; every label must be < C.

    Returns:
        int64 (n, C): entry (i, c) counts worker i's samples of class c.

    Raises:
        ValueError: for non-2-D indices, out-of-range indices or labels >= num_classes.
    """
    labels = _check_labels(labels)
    indices = np.asarray(indices)
    num_classes = _check_int("num_classes", num_classes, 1, None)
    if indices.ndim != 2:
        raise ValueError(f"indices must be a 2-D (n, m) array, got shape {indices.shape}")
    if indices.size and (indices.min() < 0 or indices.max() >= len(labels)):
        raise ValueError(
            f"indices must lie in 0..{len(labels) - 1}, got range {indices.min()}..{indices.max()}"
        )
    worker_labels = labels[indices]
    if worker_labels.size and worker_labels.max() >= num_classes:
        raise ValueError(f"label {worker_labels.max()} is >= num_classes={num_classes}")
    n = indices.shape[0]
    flat = (np.arange(n)[:, None] * num_classes + worker_labels).ravel()
    return np.bincount(flat, minlength=n * num_classes).reshape(n, num_classes).astype(np.int64)


def skew(labels: np.ndarray, indices: np.ndarray, num_classes: int) -> float:
    """Label skew of a partition: mean over workers of the total-variation distance between the worker's label
    distribution and the label distribution of all partitioned samples.

    0 means every worker has exactly the global class proportions; the value approaches 1 - max_c p_c for
    one-class workers. Arguments as in :func:`label_histogram`.

    Returns:
        float in [0, 1].
    """
    indices = np.asarray(indices)
    hist = label_histogram(labels, indices, num_classes).astype(np.float64)
    if indices.shape[1] == 0:
        raise ValueError("indices has no samples per worker (shape (n, 0)); skew is undefined")
    local = hist / hist.sum(axis=1, keepdims=True)
    overall = hist.sum(axis=0) / hist.sum()
    return float(np.mean(0.5 * np.abs(local - overall).sum(axis=1)))
