"""Normalisation layers for the CNNs: EvoNorm-S0 and a factory over the supported choices.

Batch statistics are a poor fit for decentralized training on heterogeneous shards, hence GroupNorm (the
default of RelaySGD, arXiv 2110.04175, and QGM, arXiv 2102.04761) and the batch-independent EvoNorm-S0.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

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


def make_norm(norm: str | None, groups: int = 2, train: bool = False, name: str | None = None) -> Callable:
    """A normalisation layer (call it on ``(B, H, W, C)`` arrays) for ``norm``:

    * ``"group"``: ``nn.GroupNorm(num_groups=groups)`` (params ``scale``, ``bias``);
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
        return nn.GroupNorm(num_groups=groups, epsilon=1e-5, name=name)
    if norm == "evonorm":
        return EvoNormS0(groups=groups, name=name)
    if norm == "batch":
        return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)
    return lambda x: x
