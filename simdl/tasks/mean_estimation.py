"""Distributed mean estimation (docs/algorithms.md#distributed-mean-estimation; the exact RelaySum test of Vogels et al.
2021, arXiv 2110.04175).

Worker i observes noisy samples ``ξ = μ_i + σ ε`` (ε ~ N(0, I_d)) of its own mean μ_i; the goal is the global mean
``μ̄ = (1/n) Σ_i μ_i``. Worker i's minibatch loss is ``½ (1/B) Σ_b ‖x − ξ_b‖²``, so its gradient is
``x − mean_b ξ_b`` and the global objective is ``f(x) = (1/n) Σ_i ½ E‖x − ξ‖² = ½‖x − μ̄‖² + const``.

With one sample per step, plain SGD at learning rate 1 and no momentum, ``x^½ = x − (x − ξ) = ξ``: RelaySGD then
relays the fresh samples themselves, and with ``fill="normalize"`` every worker holds exactly the mean of the
(latest) samples delivered to it so far. With ``noise = 0`` the values are the constants μ_i and after τ_max − 1
steps (tree diameter τ_max) every worker holds μ̄.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from simdl.tasks.base import Task


def mean_estimation(n_workers: int, dim: int = 10, noise: float = 1.0, spread: float = 1.0, seed: int = 0,
                    means=None) -> Task:
    """Distributed mean estimation task.

    Args:
      n_workers: n ≥ 1.
      dim: d ≥ 1, dimension of the means.
      noise: σ ≥ 0, per-coordinate standard deviation of a sample around μ_i (0 = noiseless).
      spread: scale of the random means ``μ_i = spread · N(0, I_d)`` drawn with ``numpy.random.default_rng(seed)``.
      seed: seed of the means (the sample noise comes from the runner's per-worker PRNG streams).
      means: optional ``(n, d)`` array of the worker means (overrides ``dim``, ``spread`` and ``seed``).

    Returns:
      A :class:`Task` whose params are ``{"x": (d,) float32}`` (start x⁰ = 0). ``sample`` gives ``{"xi": (B, d)}``;
      ``evaluate`` reports ``avg_model_loss`` = ``(1/n) Σ_i ½‖x̄ − μ_i‖²``, ``suboptimality`` = ``½‖x̄ − μ̄‖²``,
      ``distance_to_opt`` = ``‖x̄ − μ̄‖²``, ``worker_error_mean`` / ``worker_error_max`` = mean / max over workers
      of ``‖x_i − μ̄‖²``. ``data["mu"]`` holds the means ``(n, d)`` float32.

    Raises:
      ValueError: n_workers < 1, dim < 1, noise < 0 or not finite, spread < 0, or ``means`` of the wrong shape.
    """
    if isinstance(n_workers, bool) or int(n_workers) != n_workers or n_workers < 1:
        raise ValueError(f"n_workers must be an integer >= 1, got {n_workers!r}")
    n = int(n_workers)
    if not (np.isfinite(noise) and noise >= 0):
        raise ValueError(f"noise must be a finite float >= 0, got {noise!r}")
    if means is None:
        if isinstance(dim, bool) or int(dim) != dim or dim < 1:
            raise ValueError(f"dim must be an integer >= 1, got {dim!r}")
        if not (np.isfinite(spread) and spread >= 0):
            raise ValueError(f"spread must be a finite float >= 0, got {spread!r}")
        mu = float(spread) * np.random.default_rng(seed).standard_normal((n, int(dim)))
    else:
        mu = np.asarray(means, np.float64)
        if mu.ndim != 2 or mu.shape[0] != n or not np.all(np.isfinite(mu)):
            raise ValueError(f"means must be a finite (n_workers, d) = ({n}, d) array, got shape {mu.shape}")
    d = mu.shape[1]
    mu_bar = mu.mean(axis=0)
    sigma = float(noise)
    data = {"mu": jnp.asarray(mu, jnp.float32), "mu_bar": jnp.asarray(mu_bar, jnp.float32)}

    def init_params(key):
        return {"x": jnp.zeros((d,), jnp.float32)}

    def sample(data, key, worker, step, batch_size):
        eps = jax.random.normal(jax.random.fold_in(key, step), (batch_size, d), jnp.float32)
        return {"xi": data["mu"][worker][None, :] + sigma * eps}

    def loss(params, batch):
        r = params["x"][None, :] - jax.lax.stop_gradient(batch["xi"])
        return 0.5 * jnp.mean(jnp.sum(r * r, axis=1))

    def evaluate(data, stacked):
        xs = stacked["x"]
        xbar = jnp.mean(xs, axis=0)
        e = xbar - data["mu_bar"]
        per_worker = jnp.sum(jnp.square(xs - data["mu_bar"][None, :]), axis=1)
        r = xbar[None, :] - data["mu"]
        return {
            "avg_model_loss": 0.5 * jnp.mean(jnp.sum(r * r, axis=1)),
            "suboptimality": 0.5 * jnp.sum(e * e),
            "distance_to_opt": jnp.sum(e * e),
            "worker_error_mean": jnp.mean(per_worker),
            "worker_error_max": jnp.max(per_worker),
        }

    info = {"n_workers": n, "dim": d, "noise": sigma, "spread": float(spread), "seed": seed}
    return Task("mean_estimation", n, data, init_params, loss, sample, evaluate, 0, np.full(n, 1.0 / n), info,
                "quadratic")
