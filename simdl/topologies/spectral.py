"""Spectral quantities of a mixing matrix: ρ, spectral gap, smallest eigenvalue, circulant structure."""

from __future__ import annotations

import numpy as np

SYMMETRY_TOL = 1e-12


def is_symmetric(weights: np.ndarray) -> bool:
    """Whether the (n, n) matrix equals its transpose up to 1e-12 (absolute)."""
    return bool(np.allclose(weights, weights.T, rtol=0.0, atol=SYMMETRY_TOL))


def eigenvalues(weights: np.ndarray) -> np.ndarray:
    """Eigenvalues of a mixing matrix: (n,) float64 (symmetric W, ``eigvalsh``) or complex128 (otherwise)."""
    w = np.asarray(weights, dtype=np.float64)
    if is_symmetric(w):
        return np.linalg.eigvalsh(0.5 * (w + w.T))
    return np.linalg.eigvals(w)


def rho(weights: np.ndarray, ev: np.ndarray | None = None) -> float:
    """Second-largest eigenvalue modulus ``ρ = max(|λ_2|, |λ_n|)`` of a row-stochastic (n, n) W.

    The eigenvalue closest to 1 (the consensus eigenvalue λ_1 = 1) is removed and ρ is the largest modulus
    of the rest; for non-symmetric W the moduli of the complex eigenvalues are used. n = 1 gives ρ = 0.
    A disconnected (or periodic) W gives ρ = 1. ``ev``: precomputed :func:`eigenvalues` of ``weights``.
    """
    ev = eigenvalues(weights) if ev is None else ev
    if ev.size <= 1:
        return 0.0
    rest = np.delete(ev, int(np.argmin(np.abs(ev - 1.0))))
    return float(min(1.0, np.max(np.abs(rest))))


def spectral_gap(weights: np.ndarray) -> float:
    """Spectral gap ``1 - ρ`` (see :func:`rho`), in [0, 1]; MH ring: 0.195 (n=8), 0.0508 (n=16)."""
    return 1.0 - rho(weights)


def lambda_min(weights: np.ndarray, ev: np.ndarray | None = None) -> float:
    """Smallest eigenvalue of W (smallest real part for non-symmetric W).

    Needed for D² (requires λ_min > -1/3, arXiv 1803.07068) and the CDSGD step size bound
    α ≤ (1 + λ_min)/L (arXiv 1706.07880).
    """
    return float(np.min(np.real(eigenvalues(weights) if ev is None else ev)))


def circulant_offsets(weights: np.ndarray, atol: float = 1e-15) -> tuple[tuple[int, float], ...] | None:
    """Offsets of a circulant matrix: ``W[i, (i + o) % n] == c_o`` for all i.

    Args:
        weights: (n, n) float64 matrix.
        atol: absolute tolerance when comparing rows with row 0.

    Returns:
        ``((o, c_o), ...)`` for the non-zero ``c_o``, offsets ascending in 0..n-1, so that
        ``(W X)_i = sum_o c_o X[(i + o) % n]`` (``jnp.roll(X, -o, axis=0)``); ``None`` if W is not circulant.
    """
    w = np.asarray(weights, dtype=np.float64)
    n = w.shape[0]
    c = w[0]
    idx = (np.arange(n)[:, None] + np.arange(n)[None, :]) % n
    if not np.allclose(w[np.arange(n)[:, None], idx], c[None, :], rtol=0.0, atol=atol):
        return None
    return tuple((int(o), float(c[o])) for o in np.flatnonzero(c))
