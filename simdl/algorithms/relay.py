"""RelaySGD and RelaySum/Grad (Vogels et al. 2021, arXiv 2110.04175;
docs/algorithms.md#relaysum-relaysgd-relaysum_grad).

Both run on the spanning tree(s) of the topology (``Topology.trees``) with the RelaySum mechanism of
:mod:`simdl.mixing.relay`: every step each worker sends one message (and, for RelaySGD, an int32 count) per tree
edge, and receives the sum of the values of all workers whose values have had time to arrive.

* **RelaySGD** (ATC): ``x^½ = x − η D`` (local Nesterov momentum by default, or any optax optimizer: Adam gives
  "Relay-Adam"); relay ``v = x^½``; ``x_i ← (S_i + (n − C_i) · x⁰) / n`` where ``x⁰`` is the common initial model
  (``fill="initial"``, the paper's choice); ``fill="self"`` fills with the worker's own ``x^½_i``;
  ``fill="normalize"`` uses ``S_i / C_i``.
* **RelaySum/Grad**: relay the local updates ``u_i = −η D``; ``x_i ← x_i + (u_i + Σ_j m_{j→i}) / n``.

Models are flattened per worker (``jax.flatten_util.ravel_pytree`` under ``vmap``: the concatenation of all
leaves in ``tree_leaves`` order, as the reference code packs its buffers). With T trees (double binary trees,
T = 2), coordinate c of that vector goes over tree ``c mod T``. Message drops (``drop_prob``) discard each received
(message, count) pair independently, keyed by ``ctx.key`` (so they are deterministic per run seed); a dropped pair is
neither used nor relayed, and the fill term makes up for the missing count.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from simdl.algorithms.base import Algorithm, as_schedule, check_momentum, record_hyperparams, tree_add
from simdl.algorithms.local import local_optimizer, vmapped_init, vmapped_update
from simdl.mixing.relay import (
    METHODS,
    RelayBuffers,
    RelayPlan,
    drop_mask,
    merge_coordinates,
    part_sizes,
    relay_bytes,
    relay_init,
    relay_plan,
    relay_step,
    split_coordinates,
)

FILLS = ("initial", "self", "normalize")
PAPER_MOMENTUM = 0.9


class RelayState(NamedTuple):
    """State of RelaySGD / RelaySum/Grad.

    Attributes:
      params: stacked worker models (leading axis n).
      opt_state: stacked local optimizer state (momentum buffers stay local).
      reference: ``(D,)`` flattened common initial model x⁰ (the RelaySGD fill-in; unused by RelaySum/Grad).
      relay: one :class:`simdl.mixing.relay.RelayBuffers` per tree; tree t holds messages ``(E_t, D_t)``
        (D_t = coordinates ``t, t + T, ...`` of the flattened model) and int32 counts ``(E_t,)``.
    """

    params: Any
    opt_state: Any
    reference: jax.Array
    relay: tuple


def _flatten(stacked) -> jax.Array:
    return jax.vmap(lambda p: ravel_pytree(p)[0])(stacked)


def _unflattener(stacked):
    one = jax.tree_util.tree_map(lambda x: x[0], stacked)
    return jax.vmap(ravel_pytree(one)[1])


def tree_plans(topology, method: str = "auto", who: str = "RelaySum") -> tuple[RelayPlan, ...]:
    """The :class:`RelayPlan` of each of ``topology.trees``.

    Raises:
      ValueError: the topology has no spanning trees (not a tree topology), or a tree of the wrong size.
    """
    trees = getattr(topology, "trees", None)
    if not trees:
        raise ValueError(f"{who} runs on spanning trees; {getattr(topology, 'name', topology)!r} is not a tree "
                         "topology (Topology.trees is None). Use chain(n), binary_tree(n), double_binary_trees(n) "
                         "or spanning_tree(graph, root)")
    plans = tuple(relay_plan(t, method) for t in trees)
    for k, p in enumerate(plans):
        if p.n != topology.n:
            raise ValueError(f"trees[{k}] has {p.n} workers but the topology has n={topology.n}")
    return plans


def _check_common(fill: str | None, drop_prob: float, method: str) -> float:
    if fill is not None and fill not in FILLS:
        raise ValueError(f"fill must be one of {FILLS}, got {fill!r}")
    p = float(drop_prob)
    if not 0.0 <= p < 1.0:
        raise ValueError(f"drop_prob must be in [0, 1), got {drop_prob!r}")
    if method not in METHODS:
        raise ValueError(f"relay_method must be one of {METHODS}, got {method!r}")
    return p


def _resolve_momentum(momentum, nesterov, optimizer) -> tuple[float, bool]:
    if momentum is None:
        momentum = PAPER_MOMENTUM if optimizer is None else 0.0
    momentum = check_momentum(momentum)
    if nesterov is None:
        nesterov = momentum > 0
    return momentum, bool(nesterov)


def _relay_all(plans, values: jax.Array, buffers: tuple, ctx, drop_prob: float, with_counts: bool):
    """Relay the flattened ``(n, D)`` values over every tree; returns per-tree parts, outputs and buffers."""
    parts = split_coordinates(values, len(plans))
    outs = []
    for t, (plan, part, buf) in enumerate(zip(plans, parts, buffers, strict=True)):
        keep = drop_mask(jax.random.fold_in(ctx.key, t), plan.n_edges, drop_prob) if drop_prob > 0 else None
        outs.append(relay_step(plan, part, buf, keep, with_counts=with_counts))
    return parts, outs


def _init_relay(plans, flat: jax.Array, ctx, who: str):
    n, dim = flat.shape
    if n != ctx.n:
        raise ValueError(f"{who}: params have {n} workers on axis 0 but the topology has n={ctx.n}")
    sizes = part_sizes(dim, len(plans))
    return tuple(relay_init(p, (s,), flat.dtype) for p, s in zip(plans, sizes, strict=True))


def _bytes(plans, flat_dim: int, itemsize: int, count: bool) -> jax.Array:
    sizes = part_sizes(flat_dim, len(plans))
    return jnp.asarray(relay_bytes(plans, tuple(s * itemsize for s in sizes), count), jnp.float32)


def _local_parts(name: str, learning_rate, momentum, nesterov, weight_decay, optimizer, weight_decay_mask,
                 relay_method: str):
    """The local optimizer, the learning-rate schedule and the ``init`` shared by the RelaySum family."""
    opt = local_optimizer(learning_rate, momentum, nesterov, weight_decay, optimizer, weight_decay_mask)

    def init(params, ctx):
        plans = tree_plans(ctx.topology, relay_method, name)
        flat = _flatten(params)
        relay = _init_relay(plans, flat, ctx, name)
        return RelayState(params, vmapped_init(opt, params), flat[0], relay)

    return opt, as_schedule(learning_rate), init


def relaysgd(learning_rate, momentum: float | None = None, nesterov: bool | None = None, weight_decay: float = 0.0,
             optimizer: optax.GradientTransformation | None = None, fill: str = "initial", drop_prob: float = 0.0,
             relay_method: str = "auto", weight_decay_mask=None) -> Algorithm:
    """RelaySGD (Vogels et al. 2021, arXiv 2110.04175, Algorithm 1; docs/algorithms.md#relaysgd).

    Per step: ``x^½ = x − η D`` (local optimizer), RelaySum of ``v = x^½`` over the tree(s) giving ``S_i`` and
    ``C_i``, then ``x_i ← (S_i + (n − C_i) · x⁰)/n`` (``fill="initial"``), ``(S_i + (n − C_i) · x^½_i)/n``
    (``"self"``) or ``S_i / C_i`` (``"normalize"``). Requires a tree topology (``requires={"tree"}``).

    Args:
      learning_rate: η, float or optax schedule.
      momentum: local momentum β (PyTorch convention, never relayed). Default ``None`` = the paper's 0.9 with plain
        SGD, 0 when ``optimizer`` is given.
      nesterov: Nesterov momentum; default ``None`` = ``True`` whenever β > 0 (the reference code always uses it).
      weight_decay: λ added to the gradient before momentum (the paper's experiments use 1e-4; default 0).
      optimizer: optional optax transformation as the local optimizer (e.g. ``optax.adam(1e-3)``: "Relay-Adam");
        then ``momentum`` must be left at None/0.
      fill: how the mass of not-yet-arrived workers is filled: ``"initial"`` (paper), ``"self"``, ``"normalize"``.
      drop_prob: probability p ∈ [0, 1) that each received (message, count) pair is lost.
      relay_method: ``"auto"``, ``"gather"`` or ``"subtract"`` (see :mod:`simdl.mixing.relay`).
      weight_decay_mask: optional pytree/callable of bools: which leaves get weight decay.

    State: :class:`RelayState`; shapes ``params`` as given, ``relay[t].messages`` ``(E_t, D_t)`` of the params'
    (promoted) float dtype, ``relay[t].counts`` ``(E_t,)`` int32. ``aux["bytes_sent"]``: per worker
    ``Σ_t deg_t(i) · (4 D_t + 4)`` for float32 models.

    Raises:
      ValueError: (factory) invalid fill / drop_prob / relay_method / momentum / optimizer settings; (init) a
        topology without spanning trees, or params whose worker axis does not match the topology.
    """
    drop_prob = _check_common(fill, drop_prob, relay_method)
    momentum, nesterov = _resolve_momentum(momentum, nesterov, optimizer)
    opt, schedule, init = _local_parts("relaysgd", learning_rate, momentum, nesterov, weight_decay, optimizer,
                                       weight_decay_mask, relay_method)

    def step(state, grads, ctx):
        plans = tree_plans(ctx.topology, relay_method, "relaysgd")
        n = ctx.n
        updates, opt_state = vmapped_update(opt, grads, state.opt_state, state.params)
        half = tree_add(state.params, updates)
        flat = _flatten(half)
        parts, outs = _relay_all(plans, flat, state.relay, ctx, drop_prob, with_counts=True)
        refs = split_coordinates(state.reference[None, :].astype(flat.dtype), len(plans))
        new_parts = []
        for part, ref, out in zip(parts, refs, outs, strict=True):
            c = out.counts.astype(flat.dtype)[:, None]
            if fill == "initial":
                x = (out.sums + (n - c) * ref) / n
            elif fill == "self":
                x = (out.sums + (n - c) * part) / n
            else:
                x = out.sums / c
            new_parts.append(x)
        params = _unflattener(state.params)(merge_coordinates(tuple(new_parts), flat.shape[1]))
        sent = _bytes(plans, flat.shape[1], flat.dtype.itemsize, count=True)
        relay = tuple(RelayBuffers(*o.buffers) for o in outs)
        return RelayState(params, opt_state, state.reference, relay), {"lr": schedule(ctx.step), "bytes_sent": sent}

    hp = record_hyperparams(learning_rate=learning_rate, momentum=momentum, nesterov=nesterov,
                            weight_decay=weight_decay,
                optimizer=optimizer, fill=fill, drop_prob=drop_prob, relay_method=relay_method)
    return Algorithm("relaysgd", init, step, lambda s: s.params, lambda s: s.params, hp, frozenset({"tree"}))


def relaysum_grad(learning_rate, momentum: float | None = None, nesterov: bool | None = None,
                  weight_decay: float = 0.0, optimizer: optax.GradientTransformation | None = None,
                  drop_prob: float = 0.0, relay_method: str = "auto", weight_decay_mask=None) -> Algorithm:
    """RelaySum/Grad (Vogels et al. 2021, arXiv 2110.04175; docs/algorithms.md#relaysum_grad): relay the local updates.

    Per step: ``u_i = −η D_i`` (local optimizer), RelaySum of ``v = u`` over the tree(s), then
    ``x_i ← x_i + (u_i + Σ_j m_{j→i}) / n``. Without drops every update reaches every worker exactly once, after
    ``dist − 1`` steps (a delayed all-reduce). Counts are not needed and not sent. Requires a tree topology.

    Args: as :func:`relaysgd` (no ``fill``).

    State: :class:`RelayState` (``reference`` unused; counts stay 0). ``aux["bytes_sent"]``: per worker
    ``Σ_t deg_t(i) · 4 D_t`` for float32 models.

    Raises:
      ValueError: as :func:`relaysgd`.
    """
    drop_prob = _check_common(None, drop_prob, relay_method)
    momentum, nesterov = _resolve_momentum(momentum, nesterov, optimizer)
    opt, schedule, init = _local_parts("relaysum_grad", learning_rate, momentum, nesterov, weight_decay, optimizer,
                                       weight_decay_mask, relay_method)

    def step(state, grads, ctx):
        plans = tree_plans(ctx.topology, relay_method, "relaysum_grad")
        updates, opt_state = vmapped_update(opt, grads, state.opt_state, state.params)
        flat = _flatten(updates)
        _, outs = _relay_all(plans, flat, state.relay, ctx, drop_prob, with_counts=False)
        total = merge_coordinates(tuple(o.sums for o in outs), flat.shape[1]) / ctx.n
        params = tree_add(state.params, _unflattener(state.params)(total))
        sent = _bytes(plans, flat.shape[1], flat.dtype.itemsize, count=False)
        relay = tuple(RelayBuffers(*o.buffers) for o in outs)
        return RelayState(params, opt_state, state.reference, relay), {"lr": schedule(ctx.step), "bytes_sent": sent}

    hp = record_hyperparams(learning_rate=learning_rate, momentum=momentum, nesterov=nesterov,
                            weight_decay=weight_decay,
                optimizer=optimizer, drop_prob=drop_prob, relay_method=relay_method)
    return Algorithm("relaysum_grad", init, step, lambda s: s.params, lambda s: s.params, hp, frozenset({"tree"}))


__all__ = ["FILLS", "RelayState", "relaysgd", "relaysum_grad", "tree_plans"]
