"""Exact-averaging baselines: all-reduce (centralised SGD), local SGD / FedAvg, and model averaging with a
cyclical learning rate and more local epochs (Xu et al. 2018, arXiv 1810.06877)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from simdl.algorithms.base import Algorithm, allreduce_bytes, as_schedule, record_hyperparams, tree_add, tree_where
from simdl.algorithms.gossip import gossip_sgd
from simdl.algorithms.local import local_optimizer, vmapped_init, vmapped_update
from simdl.mixing import mean_mix
from simdl.schedules import cyclical

MOMENTUM_SYNC = ("keep", "reset", "average")


def allreduce(learning_rate, momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0,
              optimizer: optax.GradientTransformation | None = None, weight_decay_mask=None) -> Algorithm:
    """All-reduce / centralised mini-batch SGD: local step, then the exact average ``X ← (1/n) 11ᵀ (X − η D)``.

    The topology only supplies n (the average is exact). Communication is counted as a bandwidth-optimal ring
    all-reduce, ``2 (n − 1)/n`` model sizes per worker per step. With equal shards and no momentum this equals
    one model trained with the pooled (averaged) gradient.
    """
    return gossip_sgd("allreduce", learning_rate, order="atc", momentum=momentum, nesterov=nesterov,
                      weight_decay=weight_decay, optimizer=optimizer, weight_decay_mask=weight_decay_mask,
                      combine=lambda tree, ctx: mean_mix(tree), bytes_fn=lambda ctx, p: allreduce_bytes(ctx.n, p),
                      requires=frozenset())


class LocalSGDState(NamedTuple):
    """Attributes: params (stacked models), opt_state (stacked local optimizer state)."""

    params: Any
    opt_state: Any


def _float_leaves(fn, tree):
    return jax.tree_util.tree_map(lambda x: fn(x) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def local_sgd(learning_rate, local_steps: int = 4, momentum: float = 0.0, nesterov: bool = False,
              weight_decay: float = 0.0, optimizer: optax.GradientTransformation | None = None,
              momentum_sync: str = "keep", weighted: bool = True, weight_decay_mask=None,
              name: str = "local_sgd") -> Algorithm:
    """Local SGD / FedAvg with full participation (Stich 2019, arXiv 1805.09767; McMahan 2017, arXiv 1602.05629).

    Each worker takes ``local_steps`` (H) local optimizer steps; after every H-th step (``(t + 1) mod H == 0``) all
    models are replaced by their average, weighted by shard size when ``weighted`` (equal shards: plain mean).

    Args:
      learning_rate: float or optax schedule (see :mod:`simdl.schedules` for the cyclical ones of Xu 2018).
      local_steps: H ≥ 1; H = 1 is all-reduce.
      momentum: local momentum β of the local optimizer (see ``dsgd``); 0 = plain SGD.
      nesterov: Nesterov local momentum.
      weight_decay: λ, added to the gradient before momentum.
      optimizer: optional optax transformation used as the local optimizer instead of SGD.
      weight_decay_mask: optional pytree/callable of bools: which leaves get weight decay.
      momentum_sync: what happens to the local optimizer's float state (momentum buffers) at an averaging step:
        ``"keep"`` (local, default), ``"reset"`` (zeroed) or ``"average"`` (averaged like the models).
      weighted: average weighted by the workers' shard sizes (FedAvg) rather than uniformly.

    Raises:
      ValueError: ``local_steps < 1`` or unknown ``momentum_sync``.
    """
    if int(local_steps) != local_steps or local_steps < 1:
        raise ValueError(f"local_steps must be an integer >= 1, got {local_steps!r}")
    if momentum_sync not in MOMENTUM_SYNC:
        raise ValueError(f"momentum_sync must be one of {MOMENTUM_SYNC}, got {momentum_sync!r}")
    local_steps = int(local_steps)
    opt = local_optimizer(learning_rate, momentum, nesterov, weight_decay, optimizer, weight_decay_mask)
    schedule = as_schedule(learning_rate)

    def init(params, ctx):
        return LocalSGDState(params, vmapped_init(opt, params))

    def step(state, grads, ctx):
        updates, opt_state = vmapped_update(opt, grads, state.opt_state, state.params)
        params = tree_add(state.params, updates)
        sync = (ctx.step + 1) % local_steps == 0
        p = ctx.worker_weights if weighted else None
        params = tree_where(sync, mean_mix(params, p), params)
        if momentum_sync == "reset":
            opt_state = tree_where(sync, _float_leaves(jnp.zeros_like, opt_state), opt_state)
        elif momentum_sync == "average":
            opt_state = tree_where(sync, _float_leaves(lambda x: mean_mix(x, p), opt_state), opt_state)
        sent = jnp.where(sync, allreduce_bytes(ctx.n, state.params), 0.0)
        return LocalSGDState(params, opt_state), {"lr": schedule(ctx.step), "bytes_sent": sent}

    hp = record_hyperparams(learning_rate=learning_rate, local_steps=local_steps, momentum=momentum, nesterov=nesterov,
                weight_decay=weight_decay, optimizer=optimizer, momentum_sync=momentum_sync, weighted=weighted)
    return Algorithm(name, init, step, lambda s: s.params, lambda s: s.params, hp, frozenset(),
                     round_length=local_steps)


def model_averaging_clr(learning_rate: float = 0.1, min_learning_rate: float = 0.001, local_epochs: int = 1,
                        steps_per_epoch: int = 1, cycle: str = "sawtooth", momentum: float = 0.0,
                        nesterov: bool = False, weight_decay: float = 0.0) -> Algorithm:
    """Model averaging with a cyclical learning rate and more local epochs (Xu, Mi, Feng et al. 2018, "Collaborative
    Deep Learning Across Multiple Data Centers", arXiv 1810.06877; docs/algorithms.md#model_averaging_clr).

    Each round every worker trains ``local_epochs`` (E) epochs of its own shard, then the models are averaged,
    weighted by shard size. The learning rate runs one cycle per round (``c = E · steps_per_epoch`` steps) and
    reaches its low point at the round's last step, where averaging happens. The exact cycle shape in the paper is
    unverified: ``cycle="sawtooth"`` (default, SWA-style ``η(i) = (1 − t) η_1 + t η_2``), ``"triangular"``
    (Smith 2017) or ``"constant"`` (the constant-LR baseline).

    Args:
      learning_rate: η_1, the cycle's peak learning rate.
      min_learning_rate: η_2, the cycle's low point.
      local_epochs: E ≥ 1.
      steps_per_epoch: local steps per epoch, ``ceil(shard_size / batch_size)``.
    """
    if int(local_epochs) != local_epochs or local_epochs < 1:
        raise ValueError(f"local_epochs must be an integer >= 1, got {local_epochs!r}")
    if int(steps_per_epoch) != steps_per_epoch or steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be an integer >= 1, got {steps_per_epoch!r}")
    period = int(local_epochs) * int(steps_per_epoch)
    sched = cyclical(cycle, learning_rate, min_learning_rate, period)
    alg = local_sgd(sched, local_steps=period, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                    weighted=True, name="model_averaging_clr")
    hp = dict(alg.hyperparams, learning_rate=learning_rate, min_learning_rate=min_learning_rate,
              local_epochs=local_epochs, steps_per_epoch=steps_per_epoch, cycle=cycle)
    return alg._replace(hyperparams=hp)
