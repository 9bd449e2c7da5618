"""Gradient tracking in update-tracking form (docs/algorithms.md#gradient_tracking; Nedić et al. 2017 arXiv 1607.03218,
as used as a
baseline by Vogels et al. 2021 arXiv 2110.04175 and Lin et al. 2021 arXiv 2102.04761).

With U_t the local update (``−η g`` for plain SGD):

``X_{t+1} = W (X_t + U_t + C_t)``, ``C_{t+1} = W (C_t + U_t) − U_t``, ``C_0 = 0``;

equivalently, for plain SGD with constant η, ``x ← W(x − η(g − c))``, ``c ← W(c − g) + g`` with ``C = η c``.
The tracker ``Y_t = U_t + C_t`` is what each worker applies before mixing; with a doubly stochastic W the worker
mean of ``C`` stays 0, so ``mean_i Y_t = mean_i U_t`` at every step (the tracking invariant). Each worker sends two
model-sized vectors per out-edge per step (``X + Y`` and ``C + U``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from simdl.algorithms.base import Algorithm, as_schedule, gossip_bytes, record_hyperparams, tree_add, tree_sub
from simdl.algorithms.d2 import check_doubly_stochastic
from simdl.algorithms.local import local_optimizer, vmapped_init, vmapped_update


class TrackingState(NamedTuple):
    """State of gradient tracking.

    Attributes:
      params: stacked worker models X_t.
      correction: stacked C_t (parameter units, zeros at start; worker mean stays 0).
      opt_state: stacked local optimizer state.
    """

    params: Any
    correction: Any
    opt_state: Any


def tracker(state: TrackingState, updates):
    """The tracker ``Y_t = U_t + C_t`` that the step from ``state`` applies before mixing, given the stacked local
    updates ``U_t`` (``−η_t g_t`` for plain SGD). With a doubly stochastic W its worker mean equals the mean update
    (the mean gradient times ``−η_t``) at every step, because ``mean_i C_t = 0``."""
    return tree_add(updates, state.correction)


def gradient_tracking(learning_rate, momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0,
                      optimizer: optax.GradientTransformation | None = None, weight_decay_mask=None) -> Algorithm:
    """Gradient tracking, update-tracking form: ``X ← W(X + U + C)``, ``C ← W(C + U) − U``.

    Args:
      learning_rate: float or optax schedule.
      momentum: local momentum β of the local optimizer producing U_t (see
        :func:`simdl.algorithms.local.local_optimizer`); default 0, plain SGD, ``U = −η g``.
      nesterov: Nesterov local momentum.
      weight_decay: λ, added to the gradient before momentum.
      optimizer: optional optax transformation used as the local optimizer instead of SGD.
      weight_decay_mask: optional pytree/callable of bools: which leaves get weight decay.

    Returns:
      :class:`Algorithm` with state :class:`TrackingState`; ``aux`` has ``lr`` and ``bytes_sent`` (two models per
      out-edge). The tracker of a step is :func:`tracker` ``(state, U_t)``; ``state.correction`` has worker mean 0.

    Raises:
      ValueError: invalid optimizer settings (factory); at ``init``: a mixing matrix that is not doubly stochastic
        (the invariant needs ``1ᵀ W = 1ᵀ``).
    """
    opt = local_optimizer(learning_rate, momentum, nesterov, weight_decay, optimizer, weight_decay_mask)
    schedule = as_schedule(learning_rate)

    def init(params, ctx):
        check_doubly_stochastic(ctx.topology, "gradient_tracking")
        return TrackingState(params, jax.tree_util.tree_map(jnp.zeros_like, params), vmapped_init(opt, params))

    def step(state, grads, ctx):
        x = state.params
        updates, opt_state = vmapped_update(opt, grads, state.opt_state, x)
        y = tracker(state, updates)
        new_x, mixed_c = ctx.mix((tree_add(x, y), y))
        corr = tree_sub(mixed_c, updates)
        aux = {"lr": schedule(ctx.step), "bytes_sent": gossip_bytes(ctx, x, messages_per_edge=2.0)}
        return TrackingState(new_x, corr, opt_state), aux

    hp = record_hyperparams(learning_rate=learning_rate, momentum=momentum, nesterov=nesterov,
                            weight_decay=weight_decay,
                optimizer=optimizer)
    return Algorithm("gradient_tracking", init, step, lambda s: s.params, lambda s: s.params, hp)
