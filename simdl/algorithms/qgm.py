"""Quasi-Global Momentum (Lin et al. 2021, arXiv 2102.04761): QG-DSGDm(-N) and QG-Adam (docs/algorithms.md#qg_dsgdm).

Each worker keeps a quasi-global buffer m̂_i (zeros) instead of a purely local momentum buffer. Per step (ATC):

1. transient ``m = β m̂ + g`` (g includes weight decay ``λ x``); heavy-ball ``D = m``, Nesterov ``D = g + β m``;
2. ``x^½ = x − η D``; 3. gossip ``x⁺ = W x^½``;
4. ``d = (x − x⁺)/η`` (the whole displacement, gossip included); 5. ``m̂ ← μ m̂ + (1 − μ) d``, μ = 0.9 (the
   reference code's ``--slow_buffer_conf factor=0.1`` default, 1 − μ = 0.1, whatever β is).

With ``local_step = K > 1`` (the reference code's ``--slow_buffer_conf local_step=K``) the models still gossip every
step, but ``d`` is accumulated and ``m̂`` is refreshed with the window's mean ``Σd / K`` only at steps t ≡ 0 (mod K).

At a fixed point the gossip displacement cancels the local step, d = 0, so m̂ → 0 and the steady state is the one of
D-SGD with step η, while DSGDm(-N)'s local buffer tends to g/(1 − β) (effective step η/(1 − β)): on heterogeneous data
QGM's consensus distance is about (1 − β)² times DSGDm-N's.

Reference code: github.com/epfml/quasi-global-momentum, ``code/pcode/optim/decentralized_qg_sgd.py`` and
``decentralized_qg_adam{,_v1,_v2}.py``; ``--optimizer decentralized_qg_adam`` loads the ``_v2`` class
(``code/pcode/create_optimizer.py:43-44``), hence :func:`qg_adam`'s default ``variant="v2"``.
"""

from __future__ import annotations

import numbers
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from simdl.algorithms.base import Algorithm, as_schedule, check_momentum, check_nonneg, gossip_bytes, record_hyperparams

QG_ADAM_VARIANTS = ("v2", "paper", "v1")
NORMALIZATIONS = ("global_wise", "layer_wise", "filter_wise", "none")


class QGMState(NamedTuple):
    """State of QG-DSGDm.

    Attributes:
      params: stacked worker models x (leading axis n).
      buffer: stacked quasi-global momentum buffers m̂ (same shapes as ``params``, zeros at start).
      accum: ``None`` for ``local_step = 1``; otherwise the running sum of the displacements ``d`` since the last
        buffer refresh (same shapes as ``params``; the reference code's ``virtual_seq_buffer``).
    """

    params: Any
    buffer: Any
    accum: Any = None


class QGAdamState(NamedTuple):
    """State of QG-Adam.

    Attributes:
      params: stacked worker models x.
      m: first-moment buffer: the quasi-global m̂ (variants ``"paper"`` and ``"v1"``) or the ordinary local Adam
        first moment (variant ``"v2"``).
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


def _check_local_step(value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"local_step must be an int >= 1, got {value!r}")
    return int(value)


def _tmap(fn, *trees):
    return jax.tree_util.tree_map(fn, *trees)


def qg_dsgdm(learning_rate, momentum: float = 0.9, nesterov: bool = True, weight_decay: float = 0.0,
             mu: float | None = 0.9, local_step: int = 1) -> Algorithm:
    """QG-DSGDm (heavy-ball) and QG-DSGDm-N (Nesterov), Lin et al. 2021, arXiv 2102.04761, Algorithm 1.

    ``nesterov=True`` by default: QG-DSGDm-N is the paper's headline method (its experiments and public code use
    ``--use_nesterov True --momentum_factor 0.9``).

    Per step t (0-based), as ``decentralized_qg_sgd.py`` (``SGD.step``): ``x^½ = x − η_t D``, ``x⁺ = W x^½``,
    ``a ← a + (x − x⁺)/η_t``; if ``t mod K == 0``: ``m̂ ← μ m̂ + (1 − μ) a / K`` and ``a ← 0``. With K = 1 this is
    ``m̂ ← μ m̂ + (1 − μ)(x − x⁺)/η_t``. As in the reference, the first refresh (t = 0) divides the single step's
    displacement by K too. The models gossip every step whatever K is.

    Args:
      learning_rate: float or optax schedule (step -> η_t); ``d`` divides by the step's η_t.
      momentum: β ∈ [0, 1) in the transient ``m = β m̂ + g`` (β = 0 is D-SGD).
      nesterov: ``D = g + β m`` (True) or ``D = m`` (heavy-ball).
      weight_decay: λ ≥ 0, ``λ x`` added to the gradient first.
      mu: μ ∈ [0, 1) of ``m̂ ← μ m̂ + (1 − μ) d``. Default 0.9: the reference code's ``--slow_buffer_conf`` key
        ``factor`` (= 1 − μ) defaults to 0.1 independently of β. ``None`` = β (ties μ to the momentum).
      local_step: K ≥ 1, the buffer refresh period (``--slow_buffer_conf local_step=K``; default 1).

    Returns:
      :class:`Algorithm` with state :class:`QGMState`; ``aux`` has ``lr`` and ``bytes_sent`` (one model per out-edge,
      every step).

    Raises:
      ValueError: momentum or mu outside [0, 1), negative weight decay, ``nesterov`` with momentum 0, local_step not
        an int ≥ 1, invalid lr.
    """
    beta = check_momentum(momentum)
    mu_ = beta if mu is None else _check_unit("mu", mu)
    wd = check_nonneg("weight_decay", weight_decay)
    if nesterov and beta == 0.0:
        raise ValueError("nesterov=True needs momentum > 0, got momentum=0")
    K = _check_local_step(local_step)
    schedule = as_schedule(learning_rate)
    nesterov = bool(nesterov)

    def init(params, ctx):
        accum = _tmap(jnp.zeros_like, params) if K > 1 else None
        return QGMState(params, _tmap(jnp.zeros_like, params), accum)

    def step(state, grads, ctx):
        lr = schedule(ctx.step)

        def direction(x, g, mh):
            g = g + wd * x if wd else g
            m = beta * mh + g
            return g + beta * m if nesterov else m

        x = state.params
        half = _tmap(lambda x, g, mh: (x - lr * direction(x, g, mh)).astype(x.dtype), x, grads, state.buffer)
        new = ctx.mix(half)
        # the reference divides by lr itself; the guard only keeps a warm-up from lr = 0 finite
        eta = jnp.maximum(lr, 1e-8)
        if K == 1:
            buf = _tmap(lambda mh, a, b: (mu_ * mh + (1.0 - mu_) * (a - b) / eta).astype(mh.dtype),
                        state.buffer, x, new)
            return QGMState(new, buf, None), {"lr": lr, "bytes_sent": gossip_bytes(ctx, x)}
        acc = _tmap(lambda s, a, b: (s + (a - b) / eta).astype(s.dtype), state.accum, x, new)
        fire = (ctx.step % K) == 0
        buf = _tmap(lambda mh, s: jnp.where(fire, mu_ * mh + (1.0 - mu_) * (s / K), mh).astype(mh.dtype),
                    state.buffer, acc)
        acc = _tmap(lambda s: jnp.where(fire, jnp.zeros_like(s), s), acc)
        return QGMState(new, buf, acc), {"lr": lr, "bytes_sent": gossip_bytes(ctx, x)}

    hp = record_hyperparams(learning_rate=learning_rate, momentum=beta, nesterov=nesterov, weight_decay=wd, mu=mu_,
                            local_step=K)
    return Algorithm("qg_dsgdm", init, step, lambda s: s.params, lambda s: s.params, hp)


def _norm_dtype(x):
    return jnp.promote_types(x.dtype, jnp.float32)


def _worker_norms(tree) -> jax.Array:
    """Per-worker global L2 norm over all leaves: ``(n,)``, float32 (float64 for float64 leaves)."""
    total = None
    for x in jax.tree_util.tree_leaves(tree):
        s = jnp.sum(jnp.square(x.astype(_norm_dtype(x))), axis=tuple(range(1, x.ndim)))
        total = s if total is None else total + s
    return jnp.sqrt(total)


def _per_worker(v, x):
    return v.reshape((-1,) + (1,) * (x.ndim - 1)).astype(x.dtype)


def _filter_axes(x) -> tuple[int, ...]:
    """Reduced axes of the reference's ``filter_wise`` norm for a stacked leaf ``(n, *s)`` in flax layout.

    ``len(s) >= 3`` (conv kernel, HWIO): one norm per output channel (reduce all but the last axis; torch OIHW
    ``norm(dim=[2, 3]).norm(dim=1)``). ``len(s) == 2`` (dense kernel ``(in, out)``): the reference's
    ``norm(dim=0)`` of a torch ``(out, in)`` weight, i.e. one norm per *input* feature (reduce the output axis).
    ``len(s) <= 1``: the whole leaf.
    """
    if x.ndim - 1 >= 3:
        return tuple(range(1, x.ndim - 1))
    if x.ndim - 1 == 2:
        return (2,)
    return tuple(range(1, x.ndim))


def _normalize(tree, style: str, eps: float):
    """The reference's ``normalize_tensor`` per worker: ``t / (‖t‖₂ + eps)`` with the norm taken over the worker's
    whole model (``global_wise``), each leaf (``layer_wise``) or each filter (``filter_wise``, :func:`_filter_axes`);
    ``none`` returns ``tree``."""
    if style == "none":
        return tree
    if style == "global_wise":
        scale = 1.0 / (_worker_norms(tree) + eps)
        return _tmap(lambda d: d * _per_worker(scale, d), tree)

    def leaf(d):
        axes = _filter_axes(d) if style == "filter_wise" else tuple(range(1, d.ndim))
        nrm = jnp.sqrt(jnp.sum(jnp.square(d.astype(_norm_dtype(d))), axis=axes, keepdims=True))
        return (d / (nrm + eps)).astype(d.dtype)

    return _tmap(leaf, tree)


def qg_adam(learning_rate, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.0,
            variant: str = "v2", normalize: str = "global_wise", norm_eps: float = 1e-8) -> Algorithm:
    """QG-Adam (Lin et al. 2021, arXiv 2102.04761, the Adam variant of quasi-global momentum).

    Per step t (0-based), with ``bc1 = 1 − β1^(t+1)``, ``bc2 = 1 − β2^(t+1)``, ``d̃ = N(x − x⁺)`` where ``N`` is the
    ``normalize`` rule ``t / (‖t‖₂ + norm_eps)`` (default ``global_wise``: the norm over the worker's whole model):

    * ``"v2"`` (default; ``decentralized_qg_adam_v2.py``, what ``--optimizer decentralized_qg_adam`` runs):
      ordinary local first moment ``m ← β1 m + (1 − β1) g`` (stored); transient ``v = β2 v̂ + (1 − β2) g²``;
      ``x^½ = x − (η/bc1) m / (√v/√bc2 + ε)``; ``x⁺ = W x^½``; ``v̂ ← β2 v̂ + (1 − β2) d̃²``.
    * ``"paper"`` (``decentralized_qg_adam.py``, two quasi-global buffers): transient ``m = β1 m̂ + g``, v as above;
      ``m̂ ← β1 m̂ + (1 − β1) d̃``, ``v̂ ← β2 v̂ + (1 − β2) d̃²``.
    * ``"v1"`` (``decentralized_qg_adam_v1.py``): the raw gradient is first normalised ``filter_wise``
      (``g ← g / (‖g‖ + norm_eps)`` per filter), then ``λ x`` is added; transient ``m = β1 m̂ + (1 − β1) g``,
      v as above; buffers as ``"paper"``.

    Defaults follow the reference code: β1 = 0.9, β2 = 0.999 (its ``--adam_beta_2`` default), ε = 1e-8, norm eps
    1e-8 (``--slow_buffer_conf normalization_eps``). The reference hard-codes ``global_wise`` for d̃; the other
    rules are the ones of its ``normalize_tensor``.

    Args:
      learning_rate: float or optax schedule.
      b1: β1 ∈ [0, 1).
      b2: β2 ∈ [0, 1).
      eps: ε > 0 in the Adam denominator.
      weight_decay: λ ≥ 0, L2 ``λ x`` added to the gradient.
      variant: ``"v2"``, ``"paper"`` or ``"v1"``.
      normalize: normalisation of the displacement d̃: ``"global_wise"``, ``"layer_wise"`` (per leaf),
        ``"filter_wise"`` (conv HWIO kernels: per output channel; dense ``(in, out)`` kernels: per input feature,
        as the reference's ``norm(dim=0)`` of a torch weight; vectors: per leaf) or ``"none"``.
      norm_eps: the 1e-8 of the normalisations.

    Returns:
      :class:`Algorithm` with state :class:`QGAdamState`; ``aux`` has ``lr`` and ``bytes_sent``.

    Raises:
      ValueError: unknown variant or normalize (valid listed), b1/b2 outside [0, 1), eps ≤ 0, negative weight decay
        or norm_eps.
    """
    if variant not in QG_ADAM_VARIANTS:
        raise ValueError(f"variant must be one of {QG_ADAM_VARIANTS}, got {variant!r}")
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
    b1 = _check_unit("b1", b1)
    b2 = _check_unit("b2", b2)
    eps = float(eps)
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps!r}")
    wd = check_nonneg("weight_decay", weight_decay)
    neps = check_nonneg("norm_eps", norm_eps)
    schedule = as_schedule(learning_rate)
    quasi_m = variant in ("paper", "v1")

    def init(params, ctx):
        return QGAdamState(params, _tmap(jnp.zeros_like, params), _tmap(jnp.zeros_like, params))  # distinct buffers

    def step(state, grads, ctx):
        lr = schedule(ctx.step)
        x = state.params
        t = (ctx.step + 1).astype(_norm_dtype(jax.tree_util.tree_leaves(x)[0]))
        bc1 = 1.0 - b1**t
        bc2 = 1.0 - b2**t
        g = _normalize(grads, "filter_wise", neps) if variant == "v1" else grads
        g = _tmap(lambda g, x: g + wd * x, g, x) if wd else g
        if variant == "paper":
            m = _tmap(lambda mh, g: b1 * mh + g, state.m, g)
        else:
            m = _tmap(lambda m, g: b1 * m + (1.0 - b1) * g, state.m, g)
        v = _tmap(lambda vh, g: b2 * vh + (1.0 - b2) * g * g, state.v, g)
        half = _tmap(lambda x, m, v: (x - (lr / bc1) * m / (jnp.sqrt(v) / jnp.sqrt(bc2) + eps)).astype(x.dtype),
                     x, m, v)
        new = ctx.mix(half)
        dn = _normalize(_tmap(jnp.subtract, x, new), normalize, neps)
        v_hat = _tmap(lambda vh, d: (b2 * vh + (1.0 - b2) * d * d).astype(vh.dtype), state.v, dn)
        if quasi_m:
            m_state = _tmap(lambda mh, d: (b1 * mh + (1.0 - b1) * d).astype(mh.dtype), state.m, dn)
        else:
            m_state = _tmap(lambda m0, m1: m1.astype(m0.dtype), state.m, m)
        return QGAdamState(new, m_state, v_hat), {"lr": lr, "bytes_sent": gossip_bytes(ctx, x)}

    hp = record_hyperparams(learning_rate=learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=wd, variant=variant,
                            normalize=normalize, norm_eps=neps)
    return Algorithm("qg_adam", init, step, lambda s: s.params, lambda s: s.params, hp)
