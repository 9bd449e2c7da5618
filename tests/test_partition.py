"""Tests for simdl.data.partition: IID, Dirichlet-α (docs/algorithms.md#dirichlet-partition) and shard partitions."""

import numpy as np
import pytest

from simdl.data import dirichlet, iid, label_histogram, load_digits, partition, shards, skew


@pytest.fixture(scope="module")
def digit_labels() -> np.ndarray:
    return load_digits().y_train  # 1437 labels, 10 classes


def _check_valid(idx: np.ndarray, n: int, num_samples: int) -> None:
    m = num_samples // n
    assert idx.shape == (n, m)
    assert idx.dtype == np.int64
    assert len(np.unique(idx)) == n * m  # no sample given twice
    assert idx.min() >= 0 and idx.max() < num_samples


def _reference_dirichlet(labels, n, alpha, seed):
    """Literal list-based transcription of docs/algorithms.md#dirichlet-partition with the same RNG call order."""
    rng = np.random.default_rng(seed)
    num_samples, num_classes = len(labels), int(labels.max()) + 1
    order = rng.permutation(num_samples)
    pairs = [(int(i), int(labels[i])) for i in order]
    num_chunks = -(-n // 10)
    chunk_size = (10 * num_samples) // n
    batches = []
    for c in range(num_chunks):
        last = c == num_chunks - 1
        chunk = pairs[c * chunk_size :] if last else pairs[c * chunk_size : (c + 1) * chunk_size]
        w = n - 10 * c if last else 10
        size = len(chunk)
        min_size = -1
        while min_size < int(0.5 * size / w):
            lists = [[] for _ in range(w)]
            for cls in range(num_classes):
                members = [i for i, y in chunk if y == cls]
                p = rng.dirichlet(np.repeat(alpha, w))
                p = np.array([pj * (len(lst) < size / w) for pj, lst in zip(p, lists, strict=True)])
                p = p / p.sum()
                cuts = (np.cumsum(p) * len(members)).astype(int)[:-1]
                lists = [lst + list(piece) for lst, piece in zip(lists, np.split(members, cuts), strict=True)]
            min_size = min(len(lst) for lst in lists)
        batches += lists
    flat = [i for lst in batches for i in lst]
    m = num_samples // n
    return np.array(flat[: n * m]).reshape(n, m)


@pytest.mark.parametrize("alpha", [0.05, 0.5])
@pytest.mark.parametrize("n", [1, 7, 10, 16, 23])
def test_dirichlet_matches_literal_procedure(digit_labels, n, alpha):
    got = dirichlet(digit_labels, n, alpha, seed=3)
    np.testing.assert_array_equal(got, _reference_dirichlet(digit_labels, n, alpha, 3))


@pytest.mark.parametrize("name", ["iid", "dirichlet", "shards"])
@pytest.mark.parametrize("n", [1, 3, 16, 23, 100])
def test_every_worker_gets_exactly_n_over_n_distinct_valid_indices(digit_labels, name, n):
    idx = partition(name, digit_labels, n, alpha=0.1, k=2, seed=1)
    _check_valid(idx, n, len(digit_labels))


@pytest.mark.parametrize("name", ["iid", "dirichlet", "shards"])
def test_n_equal_to_dataset_size(name):
    labels = np.repeat(np.arange(3), 4)
    idx = partition(name, labels, 12, alpha=1.0, k=1, seed=0)
    _check_valid(idx, 12, 12)


@pytest.mark.parametrize("name", ["iid", "dirichlet", "shards"])
def test_seeding(digit_labels, name):
    a = partition(name, digit_labels, 16, alpha=0.1, k=2, seed=0)
    b = partition(name, digit_labels, 16, alpha=0.1, k=2, seed=0)
    c = partition(name, digit_labels, 16, alpha=0.1, k=2, seed=1)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("seed", range(4))
def test_smaller_alpha_gives_larger_skew(digit_labels, seed):
    skews = [skew(digit_labels, dirichlet(digit_labels, 16, a, seed), 10) for a in (0.01, 0.1, 10.0)]
    assert skews[0] > skews[1] > skews[2]
    iid_skew = skew(digit_labels, iid(digit_labels, 16, seed), 10)
    assert skews[2] < 0.25 and iid_skew < 0.25  # alpha = 10 is close to IID
    assert skews[0] > 0.7


def test_tiny_alpha_gives_one_or_two_classes_per_worker(digit_labels):
    hist = label_histogram(digit_labels, dirichlet(digit_labels, 16, 0.01, seed=0), 10)
    top2_share = np.sort(hist, axis=1)[:, -2:].sum(axis=1) / hist.sum(axis=1)
    assert top2_share.mean() > 0.9
    assert np.median(top2_share) > 0.95


def test_dirichlet_gives_up_after_max_attempts():
    labels = np.zeros(100, dtype=np.int64)  # one class: with tiny alpha one worker takes (almost) everything
    with pytest.raises(ValueError, match="max_attempts"):
        dirichlet(labels, 2, 1e-3, seed=0, max_attempts=3)


def test_shards_without_straddling_give_at_most_k_classes():
    labels = np.repeat(np.arange(10), 60)  # class size 60 = 2 shards of 30 for n = 10, k = 2
    for seed in range(3):
        for k in (1, 2, 3):
            idx = shards(labels, 10, k, seed)
            _check_valid(idx, 10, 600)
            classes_per_worker = (label_histogram(labels, idx, 10) > 0).sum(axis=1)
            assert classes_per_worker.max() <= k
    assert (label_histogram(labels, shards(labels, 10, 1, 0), 10) > 0).sum(axis=1).tolist() == [1] * 10


def test_shards_on_digits_bounded_by_2k(digit_labels):
    # m = 205, k = 2: shard sizes 103 and 102 (not a divisor), shards may straddle one class boundary each
    idx = shards(digit_labels, 7, 2, seed=0)
    _check_valid(idx, 7, len(digit_labels))
    assert (label_histogram(digit_labels, idx, 10) > 0).sum(axis=1).max() <= 4
    assert skew(digit_labels, idx, 10) > 0.5


def test_label_histogram_and_skew_by_hand():
    labels = np.array([0, 0, 1, 1, 2, 2])
    idx = np.array([[0, 1], [2, 3], [4, 5]])
    np.testing.assert_array_equal(label_histogram(labels, idx, 3), np.eye(3, dtype=np.int64) * 2)
    assert skew(labels, idx, 3) == pytest.approx(2 / 3)  # TV(one-hot, uniform over 3) = 2/3
    assert skew(labels, np.array([[0, 2, 4], [1, 3, 5]]), 3) == pytest.approx(0.0)


def test_unknown_name_lists_valid_names(digit_labels):
    with pytest.raises(ValueError, match="'dirichlett'.*dirichlet.*iid.*shards"):
        partition("dirichlett", digit_labels, 4)


@pytest.mark.parametrize("alpha", [0, -0.5, float("nan"), float("inf")])
def test_bad_alpha(digit_labels, alpha):
    with pytest.raises(ValueError, match=f"alpha.*{alpha}"):
        partition("dirichlet", digit_labels, 4, alpha=alpha)


@pytest.mark.parametrize("k", [0, 11, -1])
def test_bad_k(digit_labels, k):
    with pytest.raises(ValueError, match=f"k must be.*got {k}"):
        partition("shards", digit_labels, 4, k=k)


def test_k_larger_than_worker_share():
    with pytest.raises(ValueError, match="got 3"):
        shards(np.repeat(np.arange(4), 2), 4, 3)  # m = 2 < k = 3


@pytest.mark.parametrize("name", ["iid", "dirichlet", "shards"])
@pytest.mark.parametrize("n", [0, -2, 1438])
def test_bad_n(digit_labels, name, n):
    with pytest.raises(ValueError, match=f"n must be.*got {n}"):
        partition(name, digit_labels, n)


def test_bad_n_type(digit_labels):
    with pytest.raises(ValueError, match="n must be an integer, got 2.5"):
        iid(digit_labels, 2.5)


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        (np.zeros((4, 2), dtype=int), "1-D"),
        (np.array([0.0, 1.0]), "integer dtype"),
        (np.array([0, -1, 2]), "-1"),
        (np.array([], dtype=int), "empty"),
    ],
)
def test_bad_labels(labels, match):
    with pytest.raises(ValueError, match=match):
        iid(labels, 1)


def test_label_histogram_rejects_out_of_range():
    labels = np.array([0, 1, 5])
    with pytest.raises(ValueError, match="label 5"):
        label_histogram(labels, np.array([[0, 1, 2]]), 3)
    with pytest.raises(ValueError, match="0..2"):
        label_histogram(labels, np.array([[0, 3]]), 6)
