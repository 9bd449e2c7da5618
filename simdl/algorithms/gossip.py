"""Gossip SGD: D-SGD (ATC), D-PSGD (CTA), CDSGD and CDMSGD.

* D-SGD, adapt-then-combine: ``X ← W (X − η D)``.
* D-PSGD (Lian et al. 2017, arXiv 1705.09056), combine-then-adapt: ``X ← W X − η D(X)``, gradient at the pre-mix
  iterate.
* CDSGD / CDMSGD (Jiang et al. 2017, arXiv 1706.07880): CTA with ``Π = W``; CDMSGD adds a local (unmixed)
  Nesterov velocity, μ = 0.95.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import optax

from simdl.algorithms.base import Algorithm, as_schedule, gossip_bytes, record_hyperparams, tree_add
from simdl.algorithms.local import local_optimizer, vmapped_init, vmapped_update

ORDERS = ("atc", "cta")


class GossipState(NamedTuple):
    """State of the gossip family.

    Attributes:
      params: stacked worker models, leading axis n.
      opt_state: stacked local optimizer state (momentum buffers are local and never gossiped).
    """

    params: Any
    opt_state: Any


def gossip_sgd(
    name: str,
    learning_rate,
    *,
    order: str,
    momentum: float = 0.0,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    optimizer: optax.GradientTransformation | None = None,
    weight_decay_mask=None,
    combine=None,
    bytes_fn=None,
    requires: frozenset = frozenset({"connected"}),
) -> Algorithm:
    """Gossip SGD with a local optax optimizer, in ATC or CTA order. See the module docstring.

    ``combine(tree, ctx)`` replaces the step's mixing ``ctx.mix`` (e.g. the exact average for all-reduce) and
    ``bytes_fn(ctx, params)`` its byte count (default: one model per out-edge, :func:`gossip_bytes`).

    Raises:
      ValueError: ``order`` not in ``("atc", "cta")``, or invalid optimizer settings (see :func:`local_optimizer`).
    """
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    opt = local_optimizer(learning_rate, momentum, nesterov, weight_decay, optimizer, weight_decay_mask)
    schedule = as_schedule(learning_rate)

    def init(params, ctx):
        return GossipState(params, vmapped_init(opt, params))

    def step(state, grads, ctx):
        updates, opt_state = vmapped_update(opt, grads, state.opt_state, state.params)
        mix = ctx.mix if combine is None else (lambda tree: combine(tree, ctx))
        if order == "atc":
            params = mix(tree_add(state.params, updates))
        else:
            params = tree_add(mix(state.params), updates)
        sent = gossip_bytes(ctx, state.params) if bytes_fn is None else bytes_fn(ctx, state.params)
        return GossipState(params, opt_state), {"lr": schedule(ctx.step), "bytes_sent": sent}

    hp = record_hyperparams(learning_rate=learning_rate, order=order, momentum=momentum, nesterov=nesterov,
                weight_decay=weight_decay, optimizer=optimizer)
    return Algorithm(name, init, step, lambda s: s.params, lambda s: s.params, hp, requires)


def dsgd(learning_rate, momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0,
         optimizer: optax.GradientTransformation | None = None, order: str = "atc",
         weight_decay_mask=None) -> Algorithm:
    """D-SGD, adapt-then-combine by default: ``X ← W (X − η D)`` (docs/algorithms.md#dsgd).

    Args:
      learning_rate: float or optax schedule (step -> η).
      momentum: local momentum β (PyTorch convention, never gossiped); 0 = plain SGD.
      nesterov: Nesterov local momentum.
      weight_decay: λ, added to the gradient before momentum.
      optimizer: optional optax transformation used as the local optimizer instead of SGD (e.g. Adam).
      order: ``"atc"`` (default) or ``"cta"`` (``X ← W X − η D``).
      weight_decay_mask: optional pytree/callable of bools: which leaves get weight decay.
    """
    return gossip_sgd("dsgd", learning_rate, order=order, momentum=momentum, nesterov=nesterov,
                      weight_decay=weight_decay, optimizer=optimizer, weight_decay_mask=weight_decay_mask)


def dpsgd(learning_rate, momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0,
          optimizer: optax.GradientTransformation | None = None, weight_decay_mask=None) -> Algorithm:
    """D-PSGD (Lian et al. 2017, arXiv 1705.09056), combine-then-adapt: ``X ← W X − η D(X)``."""
    return gossip_sgd("dpsgd", learning_rate, order="cta", momentum=momentum, nesterov=nesterov,
                      weight_decay=weight_decay, optimizer=optimizer, weight_decay_mask=weight_decay_mask)


def cdsgd(learning_rate=0.01, weight_decay: float = 0.0) -> Algorithm:
    """CDSGD (Jiang et al. 2017, arXiv 1706.07880): ``x_j ← Σ_l π_jl x_l − α g_j(x_j)``; default α = 0.01.

    Converges on L-smooth problems for ``α ≤ (1 + λ_min(Π))/L``; with a constant α the fixed point satisfies
    ``(I − Π) x* = −α ∇F(x*)`` (consensus error O(α)).
    """
    return gossip_sgd("cdsgd", learning_rate, order="cta", weight_decay=weight_decay)


def cdmsgd(learning_rate=0.01, momentum: float = 0.95, nesterov: bool = True, weight_decay: float = 0.0) -> Algorithm:
    """CDMSGD (Jiang et al. 2017, arXiv 1706.07880): CTA gossip with a local velocity, μ = 0.95, Nesterov form by
    default: ``buf ← μ buf + g``, ``D = g + μ buf``, ``x_j ← Σ_l π_jl x_l − α D``. The velocity is not mixed."""
    return gossip_sgd("cdmsgd", learning_rate, order="cta", momentum=momentum, nesterov=nesterov,
                      weight_decay=weight_decay)
