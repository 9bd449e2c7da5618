"""Quasi-Global Momentum (Lin et al. 2021, arXiv 2102.04761): QG-DSGDm(-N) and QG-Adam (docs/algorithms.md#qg_dsgdm).

Each worker keeps a quasi-global buffer m̂_i (zeros) instead of a purely local momentum buffer. Per step (ATC):

1. transient ``m = β m̂ + g`` (g includes weight decay ``λ x``); heavy-ball ``D = m``, Nesterov ``D = g + β m``;
2. ``x^½ = x − η D``; 3. gossip ``x⁺ = W x^½``;
4. ``d = (x − x⁺)/η`` (the whole displacement, gossip included); 5. ``m̂ ← μ m̂ + (1 − μ) d``, μ = β = 0.9.

At a fixed point the gossip displacement cancels the local step, d = 0, so m̂ → 0 and the steady state is the one of
D-SGD with step η, while DSGDm(-N)'s local buffer tends to g/(1 − β) (effective step η/(1 − β)): on heterogeneous data
QGM's consensus distance is about (1 − β)² times DSGDm-N's.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from simdl.algorithms.base import Algorithm, as_schedule, check_momentum, check_nonneg, gossip_bytes, record_hyperparams

QG_ADAM_VARIANTS = ("paper", "v2")


class QGMState(NamedTuple):
    """State of QG-DSGDm.

    Attributes:
      params: stacked worker models x (leading axis n).
      buffer: stacked quasi-global momentum buffers m̂ (same shapes as ``params``, zeros at start).
    """

    params: Any
    buffer: Any


class QGAdamState(NamedTuple):
    """State of QG-Adam.

    Attributes:
      params: stacked worker models x.
      m: first-moment buffer: the quasi-global m̂ (variant ``"paper"``) or the ordinary local Adam first moment
        (variant ``"v2"``).
      v: quasi-global second-moment buffer v̂.
    """

    params: Any
    m: Any
    v: Any


def _check_unit(name: str, value) -> float:
    v = float(value)
    if not 0.0 <= v < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    return v


def _tmap(fn, *trees):
    return jax.tree_util.tree_map(fn, *trees)


def qg_dsgdm(learning_rate, momentum: float = 0.9, nesterov: bool = True, weight_decay: float = 0.0,
             mu: float | None = None) -> Algorithm:
    """QG-DSGDm (heavy-ball) and QG-DSGDm-N (Nesterov), Lin et al. 2021, arXiv 2102.04761, Algorithm 1.

    ``nesterov=True`` by default: QG-DSGDm-N is the paper's headline method (its experiments and public code use
    ``--use_nesterov True --momentum_factor 0.9``).

    Args:
      learning_rate: float or optax schedule (step -> η_t); ``d`` divides by the step's η_t.
      momentum: β ∈ [0, 1) in the transient ``m = β m̂ + g`` (β = 0 is D-SGD).
      nesterov: ``D = g + β m`` (True) or ``D = m`` (heavy-ball).
      weight_decay: λ ≥ 0, ``λ x`` added to the gradient first.
      mu: μ ∈ [0, 1) of ``m̂ ← μ m̂ + (1 − μ) d``; ``None`` = β (paper default; the code's factor 1 − μ = 0.1).

    Returns:
      :class:`Algorithm` with state :class:`QGMState`; ``aux`` has ``lr`` and ``bytes_sent`` (one model per out-edge).

    Raises:
      ValueError: momentum or mu outside [0, 1), negative weight decay, ``nesterov`` with momentum 0, invalid lr.
    """
    beta = check_momentum(momentum)
    mu_ = beta if mu is None else _check_unit("mu", mu)
    wd = check_nonneg("weight_decay", weight_decay)
    if nesterov and beta == 0.0:
        raise ValueError("nesterov=True needs momentum > 0, got momentum=0")
    schedule = as_schedule(learning_rate)
    nesterov = bool(nesterov)

    def init(params, ctx):
        return QGMState(params, _tmap(jnp.zeros_like, params))

    def step(state, grads, ctx):
        lr = schedule(ctx.step)

        def direction(x, g, mh):
            g = g + wd * x if wd else g
            m = beta * mh + g
            return g + beta * m if nesterov else m

        x = state.params
        half = _tmap(lambda x, g, mh: (x - lr * direction(x, g, mh)).astype(x.dtype), x, grads, state.buffer)
        new = ctx.mix(half)
        eta = jnp.maximum(lr, 1e-8)  # as the reference code: a warm-up from lr = 0 must not divide by zero
        buf = _tmap(lambda mh, a, b: (mu_ * mh + (1.0 - mu_) * (a - b) / eta).astype(mh.dtype), state.buffer, x, new)
        return QGMState(new, buf), {"lr": lr, "bytes_sent": gossip_bytes(ctx, x)}

    hp = record_hyperparams(learning_rate=learning_rate, momentum=beta, nesterov=nesterov, weight_decay=wd, mu=mu_)
    return Algorithm("qg_dsgdm", init, step, lambda s: s.params, lambda s: s.params, hp)


def _worker_norms(tree) -> jax.Array:
    """Per-worker global L2 norm over all leaves: float32 ``(n,)``."""
    total = None
    for x in jax.tree_util.tree_leaves(tree):
        s = jnp.sum(jnp.square(x.astype(jnp.float32)), axis=tuple(range(1, x.ndim)))
        total = s if total is None else total + s
    return jnp.sqrt(total)


def _per_worker(v, x):
    return v.reshape((-1,) + (1,) * (x.ndim - 1)).astype(x.dtype)


def qg_adam(learning_rate, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.0,
            variant: str = "paper", norm_eps: float = 1e-8) -> Algorithm:
    """QG-Adam (Lin et al. 2021, arXiv 2102.04761, the Adam variant of quasi-global momentum).

    Per step t (0-based), with ``bc1 = 1 − β1^(t+1)``, ``bc2 = 1 − β2^(t+1)``:

    * ``"paper"`` (the authors' ``decentralized_qg_adam``): transient ``m = β1 m̂ + g``,
      ``v = β2 v̂ + (1 − β2) g²``; ``x^½ = x − (η/bc1) m / (√v/√bc2 + ε)``; ``x⁺ = W x^½``;
      ``d̃ = (x − x⁺)/(‖x − x⁺‖₂ + 1e-8)`` (global norm over the worker's whole model);
      ``m̂ ← β1 m̂ + (1 − β1) d̃``, ``v̂ ← β2 v̂ + (1 − β2) d̃²``.
    * ``"v2"`` (``decentralized_qg_adam_v2``): ordinary local first moment ``m ← β1 m + (1 − β1) g`` (stored);
      only the second moment is quasi-global (as above).

    Defaults follow the reference code: β1 = 0.9, β2 = 0.999 (its ``--adam_beta_2`` default), ε = 1e-8.

    Args:
      learning_rate: float or optax schedule.
      b1, b2: β1, β2 ∈ [0, 1).
      eps: ε > 0 in the Adam denominator.
      weight_decay: λ ≥ 0, L2 ``λ x`` added to the gradient.
      variant: ``"paper"`` or ``"v2"``.
      norm_eps: the 1e-8 of the displacement normalisation.

    Raises:
      ValueError: unknown variant (valid listed), b1/b2 outside [0, 1), eps ≤ 0, negative weight decay or norm_eps.
    """
    if variant not in QG_ADAM_VARIANTS:
        raise ValueError(f"variant must be one of {QG_ADAM_VARIANTS}, got {variant!r}")
    b1 = _check_unit("b1", b1)
    b2 = _check_unit("b2", b2)
    eps = float(eps)
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps!r}")
    wd = check_nonneg("weight_decay", weight_decay)
    neps = check_nonneg("norm_eps", norm_eps)
    schedule = as_schedule(learning_rate)

    def init(params, ctx):
        return QGAdamState(params, _tmap(jnp.zeros_like, params), _tmap(jnp.zeros_like, params))  # distinct buffers

    def step(state, grads, ctx):
        lr = schedule(ctx.step)
        t = (ctx.step + 1).astype(jnp.float32)
        bc1 = 1.0 - b1**t
        bc2 = 1.0 - b2**t
        x = state.params
        g = _tmap(lambda g, x: g + wd * x, grads, x) if wd else grads
        if variant == "paper":
            m = _tmap(lambda mh, g: b1 * mh + g, state.m, g)
        else:
            m = _tmap(lambda m, g: b1 * m + (1.0 - b1) * g, state.m, g)
        v = _tmap(lambda vh, g: b2 * vh + (1.0 - b2) * g * g, state.v, g)
        half = _tmap(lambda x, m, v: (x - (lr / bc1) * m / (jnp.sqrt(v) / jnp.sqrt(bc2) + eps)).astype(x.dtype),
                     x, m, v)
        new = ctx.mix(half)
        delta = _tmap(jnp.subtract, x, new)
        scale = 1.0 / (_worker_norms(delta) + neps)
        dn = _tmap(lambda d: d * _per_worker(scale, d), delta)
        v_hat = _tmap(lambda vh, d: (b2 * vh + (1.0 - b2) * d * d).astype(vh.dtype), state.v, dn)
        if variant == "paper":
            m_state = _tmap(lambda mh, d: (b1 * mh + (1.0 - b1) * d).astype(mh.dtype), state.m, dn)
        else:
            m_state = _tmap(lambda m0, m1: m1.astype(m0.dtype), state.m, m)
        return QGAdamState(new, m_state, v_hat), {"lr": lr, "bytes_sent": gossip_bytes(ctx, x)}

    hp = record_hyperparams(learning_rate=learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=wd, variant=variant,
                norm_eps=neps)
    return Algorithm("qg_adam", init, step, lambda s: s.params, lambda s: s.params, hp)
