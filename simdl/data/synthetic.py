"""Synthetic(α, β) federated multinomial logistic regression (FedProx, Li et al. 2020, arXiv 1812.06127)."""

import math
import numbers
from typing import NamedTuple

import numpy as np

from simdl.data.dataset import Dataset


class SyntheticData(NamedTuple):
    """Output of :func:`synthetic_fedprox`; unpacks as ``dataset, indices, test_indices``.

    Attributes:
        dataset: a :class:`~simdl.data.dataset.Dataset` whose ``x_train`` is float32 (n * m, dim) features and
            ``x_test`` float32 (n * m_test, dim); labels int32; ``scale`` = 1, ``mean`` = 0 and ``std`` = 1
            (float32 (dim,)), so normalisation leaves the features as generated.
        indices: int64 (n, m) training indices of each worker: worker i owns rows
            ``i * m .. (i + 1) * m - 1``.
        test_indices: int64 (n, m_test) test indices of each worker (its own local distribution).
    """

    dataset: Dataset
    indices: np.ndarray
    test_indices: np.ndarray


def _positive_int(name: str, value, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _non_negative(name: str, value) -> float:
    try:
        result = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}") from None
    if not (math.isfinite(result) and result >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return result


def synthetic_fedprox(
    n_workers: int,
    alpha: float,
    beta: float,
    samples_per_worker: int = 100,
    test_samples_per_worker: int = 20,
    dim: int = 60,
    num_classes: int = 10,
    iid: bool = False,
    seed=0,
) -> SyntheticData:
    """Generate Synthetic(α, β) as in FedProx (arXiv 1812.06127, §5.1) and its LEAF/FedProx generator.

    For each worker k (non-IID case):

    * model: u_k ~ N(0, α), W_k ~ N(u_k, 1) elementwise (dim, C), b_k ~ N(u_k, 1) elementwise (C,);
    * inputs: B_k ~ N(0, β), v_k ~ N(B_k, 1) elementwise (dim,), x ~ N(v_k, Σ) with Σ diagonal,
      Σ_jj = j^(-1.2) for j = 1 .. dim;
    * labels: y = argmax(softmax(W_kᵀ x + b_k)).

    α controls how much the local models differ, β how much the local input distributions differ.
    As in the reference generator, the second argument of N(·, α) and N(·, β) is used as the *standard
    deviation* (for α, β in {0, 1}, the values used in the paper, this is the same as a variance).
    ``iid=True`` gives the paper's Synthetic-IID: one shared W, b ~ N(0, 1) and v_k = 0 for every worker
    (α and β are then unused).

    Deviation from the paper: every worker gets the same number of samples (``samples_per_worker`` training,
    ``test_samples_per_worker`` test) instead of power-law sizes, so that per-worker index arrays are (n, m).

    Args:
        n_workers: number of workers n >= 1.
        alpha: model heterogeneity α >= 0.
        beta: input heterogeneity β >= 0.
        samples_per_worker: training samples per worker m >= 1.
        test_samples_per_worker: test samples per worker (drawn from the worker's own distribution), >= 0.
        dim: input dimension (60 in the paper).
        num_classes: number of classes C >= 2 (10 in the paper).
        iid: generate Synthetic-IID instead.
        seed: seed for ``np.random.default_rng``.

    Returns:
        :class:`SyntheticData` (dataset, indices (n, m), test_indices (n, m_test)); the dataset is named
        ``"synthetic(α,β)"`` or ``"synthetic_iid"``.

    Raises:
        ValueError: for a negative or non-finite α or β, or non-positive sizes.
    """
    n = _positive_int("n_workers", n_workers)
    alpha = _non_negative("alpha", alpha)
    beta = _non_negative("beta", beta)
    m = _positive_int("samples_per_worker", samples_per_worker)
    m_test = _positive_int("test_samples_per_worker", test_samples_per_worker, low=0)
    dim = _positive_int("dim", dim)
    num_classes = _positive_int("num_classes", num_classes, low=2)
    rng = np.random.default_rng(seed)

    sigma_diag = np.arange(1, dim + 1, dtype=np.float64) ** -1.2
    if iid:
        w = np.broadcast_to(rng.normal(0.0, 1.0, (dim, num_classes)), (n, dim, num_classes))
        b = np.broadcast_to(rng.normal(0.0, 1.0, num_classes), (n, num_classes))
        v = np.zeros((n, dim))
        name = "synthetic_iid"
    else:
        u = rng.normal(0.0, alpha, n)
        big_b = rng.normal(0.0, beta, n)
        v = rng.normal(big_b[:, None], 1.0, (n, dim))
        w = rng.normal(u[:, None, None], 1.0, (n, dim, num_classes))
        b = rng.normal(u[:, None], 1.0, (n, num_classes))
        name = f"synthetic({alpha:g},{beta:g})"
    x = v[:, None, :] + np.sqrt(sigma_diag) * rng.standard_normal((n, m + m_test, dim))
    y = np.argmax(np.einsum("nsd,ndc->nsc", x, w) + b[:, None, :], axis=-1)

    x = x.astype(np.float32)
    y = y.astype(np.int32)
    dataset = Dataset(
        name=name,
        x_train=x[:, :m].reshape(n * m, dim),
        y_train=y[:, :m].reshape(n * m),
        x_test=x[:, m:].reshape(n * m_test, dim),
        y_test=y[:, m:].reshape(n * m_test),
        num_classes=num_classes,
        scale=1.0,
        mean=np.zeros(dim, np.float32),
        std=np.ones(dim, np.float32),
    )
    indices = np.arange(n * m, dtype=np.int64).reshape(n, m)
    test_indices = np.arange(n * m_test, dtype=np.int64).reshape(n, m_test)
    return SyntheticData(dataset, indices, test_indices)
