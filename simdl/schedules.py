"""Learning-rate schedules not in optax: the cyclical schedules of Smith 2017 (arXiv 1506.01186) and the SWA-style
saw-tooth (Izmailov et al. 2018, arXiv 1803.05407) used for model averaging with a cyclical learning rate
(Xu et al. 2018, arXiv 1810.06877). Each returns an optax-compatible ``Schedule`` (``step -> lr``, jit-able)."""

from __future__ import annotations

import jax.numpy as jnp
import optax

CYCLES = ("triangular", "sawtooth", "constant")


def _check(max_lr, min_lr, period):
    if not (max_lr > 0 and min_lr >= 0 and min_lr <= max_lr):
        raise ValueError(f"need 0 <= min_lr <= max_lr and max_lr > 0, got max_lr={max_lr}, min_lr={min_lr}")
    if int(period) != period or period < 1:
        raise ValueError(f"cycle period must be an integer >= 1 step, got {period!r}")


def triangular(max_lr: float, min_lr: float, period: int) -> optax.Schedule:
    """Triangular cyclical LR (Smith 2017): within each cycle of ``period`` steps the LR rises linearly from
    ``min_lr`` to ``max_lr`` at mid-cycle and falls back, so the cycle ends at its low point.

    ``lr(i) = min + (max − min) · (1 − |2 t − 1|)``, ``t = ((i mod c) + 1)/c``  (``t = 1`` at the cycle's last step).
    """
    _check(max_lr, min_lr, period)

    def schedule(step):
        t = (jnp.mod(step, period) + 1) / period
        return min_lr + (max_lr - min_lr) * (1.0 - jnp.abs(2.0 * t - 1.0))

    return schedule


def sawtooth(max_lr: float, min_lr: float, period: int) -> optax.Schedule:
    """SWA-style saw-tooth: ``η(i) = (1 − t(i)) η_1 + t(i) η_2``, ``t(i) = ((i mod c) + 1)/c`` with ``η_1 = max_lr``,
    ``η_2 = min_lr``, ``c = period`` (docs/algorithms.md#model_averaging_clr): decays linearly within each cycle, ends
    at ``min_lr``."""
    _check(max_lr, min_lr, period)

    def schedule(step):
        t = (jnp.mod(step, period) + 1) / period
        return (1.0 - t) * max_lr + t * min_lr

    return schedule


def cyclical(kind: str, max_lr: float, min_lr: float, period: int) -> optax.Schedule:
    """Dispatch on ``kind`` ∈ {"triangular", "sawtooth", "constant"}; raises ValueError listing the valid kinds."""
    if kind == "triangular":
        return triangular(max_lr, min_lr, period)
    if kind == "sawtooth":
        return sawtooth(max_lr, min_lr, period)
    if kind == "constant":
        _check(max_lr, min_lr, period)
        return optax.constant_schedule(max_lr)
    raise ValueError(f"unknown cycle {kind!r}; valid: {', '.join(CYCLES)}")
