"""Normalisation layers for the CNNs: EvoNorm-S0 and a factory over the supported choices.

Batch statistics are a poor fit for decentralized training on heterogeneous shards, hence GroupNorm (the
default of RelaySGD, arXiv 2110.04175, and QGM, arXiv 2102.04761) and the batch-independent EvoNorm-S0.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

NORMS = ("group", "evonorm", "batch", "none")


def check_norm(norm: str | None) -> str:
    """Normalise ``None`` to ``"none"``; raise ValueError for names outside :data:`NORMS`."""
    norm = "none" if norm is None else norm
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; valid: {', '.join(NORMS)} (or None)")
    return norm


def _check_groups(channels: int, groups: int) -> None:
    if groups < 1 or channels % groups:
        raise ValueError(f"groups={groups} must be >= 1 and divide the number of channels {channels}")


class EvoNormS0(nn.Module):
    """EvoNorm-S0 (Liu et al. 2020, arXiv 2004.02967), batch-independent:
    ``y = x * sigmoid(v * x) / group_std(x) * scale + bias``, where ``group_std`` is the standard deviation
    over (H, W, C/groups) of each sample and group: ``sqrt(var + eps)``.

    Parameters (all ``(C,)`` float32): ``v`` (init 1), ``scale`` (γ, init 1), ``bias`` (β, init 0).
    Input/output ``(B, H, W, C)`` float32, or bfloat16 (with bfloat16 params: mixed precision); the group variance is
    computed in float32 either way (as ``nn.GroupNorm`` does) and the result has the input's dtype.

    Raises:
      ValueError: ``groups`` does not divide C.
    """

    groups: int = 32
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        _check_groups(c, self.groups)
        v = self.param("v", nn.initializers.ones_init(), (c,), jnp.float32)
        scale = self.param("scale", nn.initializers.ones_init(), (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros_init(), (c,), jnp.float32)
        xg = x.reshape(x.shape[:-1] + (self.groups, c // self.groups))
        axes = tuple(range(1, x.ndim - 1)) + (x.ndim,)
        var = jnp.var(xg, axis=axes, keepdims=True, dtype=jnp.float32)
        std = jnp.sqrt(var + self.epsilon).astype(x.dtype)
        num = (x * jax.nn.sigmoid(v * x)).reshape(xg.shape)
        return (num / std).reshape(x.shape) * scale + bias


def _group_sums(v: jax.Array, groups: int) -> jax.Array:
    """Per-(sample, group) sums of a per-(sample, channel) array ``(B, C)`` -> ``(B, G)``."""
    return v.reshape(v.shape[0], groups, -1).sum(-1)


def _per_channel(v: jax.Array, channels: int) -> jax.Array:
    """``(B, G)`` per-group values -> ``(B, 1, ..., 1, C)``, broadcastable against ``(B, ..., C)``."""
    b, g = v.shape
    return jnp.repeat(v, channels // g, axis=1).reshape(b, 1, 1, channels)


def _stat_dtype(x: jax.Array):
    """float32, or the input's dtype if wider (float64 under ``jax_enable_x64``)."""
    return jnp.promote_types(x.dtype, jnp.float32)


def _gn_stats(x: jax.Array, groups: int, epsilon: float):
    """Group mean and 1/std of ``x`` ``(B, H, W, C)``, both ``(B, G)`` in float32 (or wider); variance ``E[x²] − E[x]²``
    (clamped at 0) from per-channel sums, as ``flax.linen.GroupNorm``'s fast variance."""
    xf = x.astype(_stat_dtype(x))
    count = x.shape[1] * x.shape[2] * (x.shape[-1] // groups)
    mean = _group_sums(jnp.sum(xf, axis=(1, 2)), groups) / count
    ex2 = _group_sums(jnp.sum(xf * xf, axis=(1, 2)), groups) / count
    return mean, lax.rsqrt(jnp.maximum(ex2 - mean * mean, 0.0) + epsilon)


@partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def group_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, groups: int, epsilon: float = 1e-5) -> jax.Array:
    """GroupNorm (Wu & He 2018, arXiv 1803.08494) of NHWC ``x`` ``(B, H, W, C)`` with per-channel ``scale`` and
    ``bias`` ``(C,)``: ``(x − μ_bg)/sqrt(σ²_bg + ε)·scale + bias`` over (H, W, C/G) of each sample b and group g.

    Same values as ``flax.linen.GroupNorm`` (statistics in float32, result in the dtype of ``x``) with a hand
    written VJP: the statistics are per-channel sums over (H, W), and the backward pass is one fused
    ``a·g + b·x + c`` over the activation plus two per-channel reductions, instead of autodiff's chain of
    reshaped reductions and broadcasts (1.3-1.5× faster per layer on XLA:CPU, ``benchmarks/RESULTS.md``).
    """
    return _gn_fwd(x, scale, bias, groups, epsilon)[0]


def _gn_fwd(x, scale, bias, groups, epsilon):
    c = x.shape[-1]
    mean, rstd = _gn_stats(x, groups, epsilon)
    dt = _stat_dtype(x)
    a = _per_channel(rstd, c) * scale.astype(dt)
    b = bias.astype(dt) - _per_channel(mean * rstd, c) * scale.astype(dt)
    y = (x.astype(dt) * a + b).astype(x.dtype)
    return y, (x, scale, mean, rstd)


def _gn_bwd(groups, epsilon, res, g):
    x, scale, mean, rstd = res
    c = x.shape[-1]
    count = x.shape[1] * x.shape[2] * (c // groups)
    dt = _stat_dtype(x)
    gf, xf, sf = g.astype(dt), x.astype(dt), scale.astype(dt)
    sum_g = jnp.sum(gf, axis=(1, 2))  # (B, C)
    sum_gx = jnp.sum(gf * xf, axis=(1, 2))
    rstd_c, mr_c = jnp.repeat(rstd, c // groups, axis=1), jnp.repeat(mean * rstd, c // groups, axis=1)
    d_scale = jnp.sum(sum_gx * rstd_c - sum_g * mr_c, axis=0)  # Σ g·x̂
    d_bias = jnp.sum(sum_g, axis=0)
    # With ĝ = g·scale: dx = rstd·(ĝ − mean(ĝ) − x̂·mean(ĝ·x̂)), x̂ = (x − μ)·rstd, means over each (b, group).
    mean_gs = _group_sums(sum_g * sf, groups) / count
    mean_gsx_hat = (_group_sums(sum_gx * sf, groups) / count - mean * mean_gs) * rstd
    coef_x = -_per_channel(rstd * rstd * mean_gsx_hat, c)
    coef_0 = _per_channel(rstd * (mean * rstd * mean_gsx_hat - mean_gs), c)
    dx = gf * (_per_channel(rstd, c) * sf) + coef_x * xf + coef_0
    return dx.astype(x.dtype), d_scale.astype(scale.dtype), d_bias.astype(scale.dtype)


group_norm.defvjp(_gn_fwd, _gn_bwd)


class GroupNorm(nn.Module):
    """GroupNorm over NHWC ``(B, H, W, C)`` inputs by :func:`group_norm`; a drop-in for
    ``flax.linen.GroupNorm(num_groups=groups, epsilon=epsilon)`` on images: same parameters (``scale`` ones and
    ``bias`` zeros, float32 ``(C,)``), same values, faster gradient.

    Raises:
      ValueError: ``groups`` does not divide C, or the input is not 4-D.
    """

    groups: int = 2
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        _check_groups(c, self.groups)
        if x.ndim != 4:
            raise ValueError(f"GroupNorm expects (B, H, W, C) inputs, got shape {x.shape}")
        scale = self.param("scale", nn.initializers.ones_init(), (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros_init(), (c,), jnp.float32)
        return group_norm(x, scale.astype(x.dtype), bias.astype(x.dtype), self.groups, self.epsilon)


def make_norm(norm: str | None, groups: int = 2, train: bool = False, name: str | None = None) -> Callable:
    """A normalisation layer (call it on ``(B, H, W, C)`` arrays) for ``norm``:

    * ``"group"``: :class:`GroupNorm` with ``groups`` (params ``scale``, ``bias``; the values of
      ``nn.GroupNorm(num_groups=groups)`` with a faster gradient);
    * ``"evonorm"``: :class:`EvoNormS0` with ``groups``;
    * ``"batch"``: ``nn.BatchNorm`` (momentum 0.9, eps 1e-5) using batch statistics when ``train`` and running
      averages otherwise; the running averages live in the mutable ``batch_stats`` collection, so call
      ``apply(..., train=True, mutable=["batch_stats"])`` in training. In simdl each worker's statistics are
      part of its (stacked) model state;
    * ``"none"`` / ``None``: identity.

    Must be called inside a compact ``nn.Module`` method. Raises ValueError for unknown names.
    """
    norm = check_norm(norm)
    if norm == "group":
        return GroupNorm(groups=groups, epsilon=1e-5, name=name)
    if norm == "evonorm":
        return EvoNormS0(groups=groups, name=name)
    if norm == "batch":
        return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)
    return lambda x: x
