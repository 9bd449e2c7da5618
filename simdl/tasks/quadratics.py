"""Least-squares problems with exact optima, for checking update rules: ``f_i(x) = ½‖A_i x − b_i‖²``.

Two conventions (``convention=``), which differ only in the reported objective and the gradient-noise scale; the
noiseless gradient ``A_iᵀ(A_i x − b_i)`` is the same in both, so trajectories coincide without noise:

* ``"half"`` (default): ``f_i(x) = ½‖A_i x − b_i‖²``, whose gradient is exactly ``A_iᵀ(A_i x − b_i)``; gradient
  noise ``σ ξ``, ``ξ ~ N(0, I_d)`` (σ per coordinate, ``E‖σξ‖² = σ² d``).
* ``"relaysgd"``: the RelaySGD authors' simulators (Vogels et al. 2021, arXiv 2110.04175; epfml/relaysgd
  ``paper-figures/random_quadratics.py``, commit e1e332bf, ``DistributedQuadraticsObjective``): the objective is
  ``f(x) = (1/n) Σ_i ‖A_i x − b_i‖²`` with no ½ (docstring line 38, ``__call__`` line 113, the reported error
  ``suboptimality_of_mean`` lines 115-117), while the gradient they step with is still ``A_iᵀ(A_i x − b_i)``
  (``grad``, lines 133-134: the gradient of the ½ form, half the gradient of their own objective) plus noise
  ``(σ/√d) ξ`` (line 136, ``E‖noise‖² = σ²``; ``paper-figures/algorithms.py`` line 70 scales the same way). Under
  this convention the loss value is ``‖A_i x − b_i‖²`` and its gradient ``A_iᵀ(A_i x − b_i)`` (the ½ form plus its
  stop-gradient copy), and ``evaluate`` reports f, f(x̄) − f* and f* without the ½ (twice the ``"half"`` numbers),
  so their curves are matched number for number.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from simdl.tasks.base import Task

CONVENTIONS = ("half", "relaysgd")


def _solve(A: np.ndarray, b: np.ndarray):
    """Global optimum x* of f(x) = (1/n) Σ_i ½‖A_i x − b_i‖² (float64), its Hessian H and f*."""
    n = A.shape[0]
    H = np.einsum("imd,ime->de", A, A) / n
    rhs = np.einsum("imd,im->d", A, b) / n
    x_star = np.linalg.lstsq(H, rhs, rcond=None)[0]
    r = np.einsum("imd,d->im", A, x_star) - b
    f_star = 0.5 * float(np.sum(r * r)) / n
    return x_star, H, f_star


def quadratics(A, b, noise: float = 0.0, x0=None, name: str = "quadratics", info: dict | None = None,
               convention: str = "half") -> Task:
    """Worker i minimises ``f_i(x) = ½‖A_i x − b_i‖²``; the global objective is ``f(x) = (1/n) Σ_i f_i(x)``.

    The stochastic gradient a worker gets is ``A_iᵀ(A_i x − b_i) + s ξ`` with ``ξ ~ N(0, I_d)`` drawn from the
    worker's own stream (``s = σ = noise`` per coordinate; ``s = σ/√d`` under ``convention="relaysgd"``; σ = 0:
    exact gradients).

    Args:
      A: ``(n, m, d)`` float array.
      b: ``(n, m)`` float array.
      noise: σ ≥ 0, gradient-noise standard deviation (per coordinate, or of the whole noise vector for
        ``"relaysgd"``).
      x0: optional ``(d,)`` start point (default 0).
      convention: ``"half"`` (default, f_i with ½) or ``"relaysgd"`` (f_i without ½, as the RelaySGD authors'
        simulators, arXiv 2110.04175): see the module docstring.

    Returns:
      A :class:`Task` whose params are ``{"x": (d,) float32}``. ``evaluate`` reports ``avg_model_loss`` = f(x̄),
      ``suboptimality`` = f(x̄) − f* (computed as c (x̄ − x*)ᵀ H (x̄ − x*) with c = ½, or 1 for ``"relaysgd"``,
      exact for quadratics and free of float32 cancellation), ``distance_to_opt`` = ‖x̄ − x*‖², and
      ``worker_suboptimality_mean``; ``info["f_star"]`` is f* in the same convention.

    Raises:
      ValueError: wrong shapes, non-finite entries, negative noise, or an unknown convention.
    """
    A = np.asarray(A, np.float64)
    b = np.asarray(b, np.float64)
    if A.ndim != 3:
        raise ValueError(f"A must have shape (n, m, d), got shape {A.shape}")
    if b.shape != A.shape[:2]:
        raise ValueError(f"b must have shape (n, m) = {A.shape[:2]} to match A, got {b.shape}")
    if not (np.all(np.isfinite(A)) and np.all(np.isfinite(b))):
        raise ValueError("A and b must be finite")
    if not (np.isfinite(noise) and noise >= 0):
        raise ValueError(f"noise must be a float >= 0, got {noise!r}")
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    n, _, d = A.shape
    x_star, H, f_star = _solve(A, b)
    relay = convention == "relaysgd"
    c = 1.0 if relay else 0.5  # the factor in front of ‖A_i x − b_i‖² in the reported objective
    f_star = f_star * 2.0 * c
    start = np.zeros(d) if x0 is None else np.asarray(x0, np.float64).reshape(d)
    data = {
        "A": jnp.asarray(A, jnp.float32),
        "b": jnp.asarray(b, jnp.float32),
        "x_star": jnp.asarray(x_star, jnp.float32),
        "H": jnp.asarray(H, jnp.float32),
        "f_star": jnp.float32(f_star),
    }
    sigma = float(noise)
    scale = sigma / np.sqrt(d) if relay else sigma  # per-coordinate noise standard deviation

    def init_params(key):
        return {"x": jnp.asarray(start, jnp.float32)}

    def sample(data, key, worker, step, batch_size):
        xi = jax.random.normal(jax.random.fold_in(key, step), (d,), jnp.float32) if sigma else jnp.zeros(d)
        return {"A": data["A"][worker], "b": data["b"][worker], "xi": scale * xi}

    def loss(params, batch):
        r = batch["A"] @ params["x"] - batch["b"]
        half = 0.5 * jnp.sum(r * r)
        if relay:  # value ‖r‖², gradient A_iᵀ r: their objective and their gradient (random_quadratics.py:113, 133)
            half = half + jax.lax.stop_gradient(half)
        return half + jnp.dot(jax.lax.stop_gradient(batch["xi"]), params["x"])

    def subopt(x, data):
        e = x - data["x_star"]
        return c * e @ (data["H"] @ e)

    def evaluate(data, stacked):
        xs = stacked["x"]
        xbar = jnp.mean(xs, axis=0)
        r = jnp.einsum("imd,d->im", data["A"], xbar) - data["b"]
        per_worker = jax.vmap(lambda x: subopt(x, data))(xs)
        return {
            "avg_model_loss": c * jnp.sum(r * r) / n,
            "suboptimality": subopt(xbar, data),
            "distance_to_opt": jnp.sum(jnp.square(xbar - data["x_star"])),
            "worker_suboptimality_mean": jnp.mean(per_worker),
        }

    meta = {"n_workers": n, "m": A.shape[1], "dim": d, "noise": sigma, "f_star": f_star}
    if relay:  # the default convention's info stays as it was
        meta["convention"] = convention
    meta.update(info or {})
    return Task(name, n, data, init_params, loss, sample, evaluate, 0, np.full(n, 1.0 / n), meta, "quadratic")


def random_quadratics(n_workers: int = 16, dim: int = 10, mu: float = 0.5, L: float = 1.0, zeta2: float = 1.0,
                      r0: float = 100.0, noise: float = 0.0, seed: int = 0, convention: str = "half") -> Task:
    """The random quadratics of the RelaySGD paper (Vogels et al. 2021, arXiv 2110.04175;
    docs/algorithms.md#random-quadratics).

    ``A_i = U_i diag(linspace(μ, L, d)) V_iᵀ`` from the SVD of a standard Gaussian d×d matrix; ``b_i = A_i (s u_i)``
    with Gaussian directions u_i, re-centred so that the global optimum is 0, with the scale s chosen so that
    ``ζ² = (1/n) Σ_i ‖∇f_i(x*)‖²`` equals ``zeta2`` (ζ² is exactly quadratic in s, so s is solved in closed form
    rather than by bisection); finally the optimum is moved to a random point at distance ``r0`` from the start
    x = 0. The objective uses ``f_i = ½‖A_i x − b_i‖²``, whose gradient is the ``A_iᵀ(A_i x − b_i)`` of the paper;
    ``convention="relaysgd"`` reports f without the ½ and scales the noise by 1/√d, as the authors' simulator
    (see :func:`quadratics`; ζ² is defined through the same gradient in both). The matrices come from numpy's
    generator, not torch's, so the authors' exact instances are not reproduced: pass their A, b to
    :func:`quadratics` for that.

    Raises:
      ValueError: n_workers < 1, dim < 1, not 0 < μ ≤ L, ζ² < 0, r0 < 0, unknown convention.
    """
    if int(n_workers) != n_workers or n_workers < 1:
        raise ValueError(f"n_workers must be an integer >= 1, got {n_workers!r}")
    if int(dim) != dim or dim < 1:
        raise ValueError(f"dim must be an integer >= 1, got {dim!r}")
    if not 0 < mu <= L:
        raise ValueError(f"need 0 < mu <= L, got mu={mu}, L={L}")
    if zeta2 < 0 or r0 < 0:
        raise ValueError(f"zeta2 and r0 must be >= 0, got zeta2={zeta2}, r0={r0}")
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    rng = np.random.default_rng(seed)
    n, d = int(n_workers), int(dim)
    spectrum = np.linspace(mu, L, d)
    A = np.empty((n, d, d))
    for i in range(n):
        U, _, Vt = np.linalg.svd(rng.standard_normal((d, d)))
        A[i] = U @ np.diag(spectrum) @ Vt
    u = rng.standard_normal((n, d))
    b = np.einsum("imd,id->im", A, u)
    x_c, _, _ = _solve(A, b)
    b = b - np.einsum("imd,d->im", A, x_c)  # global optimum now at 0
    g = np.einsum("imd,im->id", A, b)  # ∇f_i(0) = -A_iᵀ b_i (sign irrelevant for the norm)
    z1 = float(np.mean(np.sum(g * g, axis=1)))
    s = np.sqrt(zeta2 / z1) if z1 > 0 else 0.0
    b = s * b
    direction = rng.standard_normal(d)
    x_opt = r0 * direction / np.linalg.norm(direction)
    b = b + np.einsum("imd,d->im", A, x_opt)
    info = {"mu": mu, "L": L, "zeta2": zeta2, "r0": r0, "seed": seed}
    return quadratics(A, b, noise=noise, name="random_quadratics", info=info, convention=convention)
