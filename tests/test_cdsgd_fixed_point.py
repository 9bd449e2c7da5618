"""CDSGD's fixed point (Jiang et al. 2017, arXiv 1706.07880; docs/algorithms.md#cdsgd): with exact gradients and a
constant
step α, ``X ← Π X − α ∇F(X)`` converges to the X* with ``(I − Π) X* = −α ∇F(X*)``; the ATC order
``X ← Π (X − α ∇F(X))`` converges elsewhere (``(I − Π) X* = −α Π ∇F(X*)``), so the check tells the orders apart."""

import numpy as np
import pytest

import simdl
from simdl.algorithms import cdsgd, dsgd

T = simdl.topologies


def _problem(n=5, m=8, d=3, seed=0):
    """Least squares with L = max_i λ_max(A_iᵀA_i) = 1."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((n, m, d))
    A /= np.sqrt(max(np.linalg.eigvalsh(a.T @ a).max() for a in A))
    return A, rng.standard_normal((n, m))


def _grads(A, b, X):
    return np.einsum("imd,im->id", A, np.einsum("imd,id->im", A, X) - b)


def _solve(W, A, b, alpha, order):
    """float64 fixed point of CTA ``X = W X − α G(X)`` or ATC ``X = W (X − α G(X))`` (both linear in X)."""
    n, _, d = A.shape
    H = np.zeros((n * d, n * d))
    for i in range(n):
        H[i * d:(i + 1) * d, i * d:(i + 1) * d] = A[i].T @ A[i]
    c = np.einsum("imd,im->id", A, b).reshape(-1)
    P = np.kron(W, np.eye(d))
    if order == "cta":  # (I − P + α H) x = α c
        return np.linalg.solve(np.eye(n * d) - P + alpha * H, alpha * c).reshape(n, d)
    return np.linalg.solve(np.eye(n * d) - P + alpha * P @ H, alpha * P @ c).reshape(n, d)  # x = P x − α P(Hx − c)


def _residuals(W, A, b, X, alpha):
    """Relative residuals of the CTA and ATC fixed-point equations at X."""
    G = _grads(A, b, X)
    scale = alpha * np.linalg.norm(G)
    cta = np.linalg.norm((X - W @ X) + alpha * G) / scale
    atc = np.linalg.norm((X - W @ X) + alpha * W @ G) / scale
    return cta, atc


@pytest.mark.parametrize("alpha", [0.05, 0.3])
def test_cdsgd_fixed_point_satisfies_consensus_equation(alpha):
    A, b = _problem()
    topo = T.ring(5)
    W = np.asarray(topo.weights, np.float64)
    task = simdl.tasks.quadratics(A, b)
    res = simdl.simulate(task, cdsgd(alpha), topo, steps=3000, batch_size=1, eval_every=3000)
    assert res.diverged_at is None
    X = np.asarray(res.params["x"], np.float64)
    cta, atc = _residuals(W, A, b, X, alpha)
    assert cta < 1e-3, cta  # (I − Π) X* = −α ∇F(X*) holds at CDSGD's limit
    assert atc > 0.05, atc  # ... and the ATC equation does not: the check can fail
    np.testing.assert_allclose(X, _solve(W, A, b, alpha, "cta"), rtol=1e-4, atol=1e-4)
    # not a consensus point: the bias is there and is O(α)
    assert res.final["consensus_distance"] > 1e-6

    # the wrong order (ATC, D-SGD with the same Π) converges to a point that fails the CDSGD equation
    res_atc = simdl.simulate(task, dsgd(alpha), topo, steps=3000, batch_size=1, eval_every=3000)
    Xa = np.asarray(res_atc.params["x"], np.float64)
    cta_a, atc_a = _residuals(W, A, b, Xa, alpha)
    assert atc_a < 1e-3 and cta_a > 0.05, (cta_a, atc_a)
    np.testing.assert_allclose(Xa, _solve(W, A, b, alpha, "atc"), rtol=1e-4, atol=1e-4)
