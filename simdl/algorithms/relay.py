"""RelaySGD, RelaySum/Grad and RelaySum/Mix (Vogels et al. 2021, arXiv 2110.04175;
docs/algorithms.md#relaysum-relaysgd-relaysum_grad).

All three run on the spanning tree(s) of the topology (``Topology.trees``) with the RelaySum mechanism of
:mod:`simdl.mixing.relay`: every step each worker sends one message (and, for RelaySGD and RelaySum/Mix, an int32
count) per tree edge, and receives the sum of the values of all workers whose values have had time to arrive.

* **RelaySGD** (ATC): ``x^½ = x − η D`` (local Nesterov momentum by default, or any optax optimizer: Adam gives
  "Relay-Adam"); relay ``v = x^½``; ``x_i ← (S_i + (n − C_i) · x⁰) / n`` where ``x⁰`` is the common initial model
  (``fill="initial"``, the paper's choice); ``fill="previous"`` fills with the worker's previous averaged model
  ``x_i`` (the model before this step's local update; the authors' unreliable-network experiments);
  ``fill="self"`` fills with the worker's own ``x^½_i``; ``fill="normalize"`` uses ``S_i / C_i``.
* **RelaySum/Grad**: relay the local updates ``u_i = −η D``; ``x_i ← x_i + (u_i + Σ_j m_{j→i}) / n``.
* **RelaySum/Mix**: relay ``v = α x + u`` (α = mixing coefficient, u = −η D);
  ``x_i ← (1 − α) x_i + (S_i + (n − C_i) · α x⁰) / n``. α = 1 is RelaySGD (``fill="initial"``), α = 0 RelaySum/Grad.

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

FILLS = ("initial", "previous", "self", "normalize")
MIX_FILLS = ("initial", "unscaled", "previous")
PAPER_MOMENTUM = 0.9


class RelayState(NamedTuple):
    """State of RelaySGD / RelaySum/Grad.

    Attributes:
      params: stacked worker models (leading axis n).
      opt_state: stacked local optimizer state (momentum buffers stay local).
      reference: ``(D,)`` flattened common initial model x⁰ (worker 0's initial model; the ``fill="initial"`` term
        of RelaySGD and RelaySum/Mix; unused by RelaySum/Grad and by ``fill="previous"``).
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


def _check_common(fill: str | None, drop_prob: float, method: str, fills: tuple[str, ...] | None = FILLS) -> float:
    if fills is not None and fill not in fills:
        raise ValueError(f"fill must be one of {fills}, got {fill!r}")
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
    ``C_i``, then ``x_i ← (S_i + (n − C_i) · x⁰)/n`` (``fill="initial"``), ``(S_i + (n − C_i) · x_i)/n`` with
    ``x_i`` the worker's previous averaged model, i.e. its model before this step's local update
    (``"previous"``), ``(S_i + (n − C_i) · x^½_i)/n`` (``"self"``) or ``S_i / C_i`` (``"normalize"``). Requires a
    tree topology (``requires={"tree"}``).

    Fills: ``"initial"`` is Algorithm 1 of the paper and the reference code's default (``utils/communication.py``
    ``RelayMechanism.receive_average``, ``initial_state`` = x⁰). ``"previous"`` is what the paper's
    unreliable-network table (Table 5, "RelaySum/Model w/ momentum", 1% and 10% dropped messages) uses: the
    authors' robustness runs (``experiments/neurips21-cifar-robustness.py``) set
    ``relaysum_model_update_ref_state = True``, so after each step ``algorithms.py`` ``relaysum_model`` calls
    ``relay.set_initial_state(buffer)`` with the new averaged model, which becomes the next step's fill. Without
    drops the fill term is nonzero only during the first τ_max − 1 steps (the counts are n afterwards); with drops
    ``"initial"`` keeps pulling every worker towards x⁰ by the missing mass, ``"previous"`` does not.

    Args:
      learning_rate: η, float or optax schedule.
      momentum: local momentum β (PyTorch convention, never relayed). Default ``None`` = the paper's 0.9 with plain
        SGD, 0 when ``optimizer`` is given.
      nesterov: Nesterov momentum; default ``None`` = ``True`` whenever β > 0 (the reference code always uses it).
      weight_decay: λ added to the gradient before momentum (the paper's experiments use 1e-4; default 0).
      optimizer: optional optax transformation as the local optimizer (e.g. ``optax.adam(1e-3)``: "Relay-Adam");
        then ``momentum`` must be left at None/0.
      fill: how the mass of not-yet-arrived (or lost) workers is filled: ``"initial"`` (paper, default),
        ``"previous"`` (the paper's unreliable-network runs), ``"self"``, ``"normalize"``.
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
        if fill == "previous":  # the previous averaged model: this step's input x_i
            refs = split_coordinates(_flatten(state.params).astype(flat.dtype), len(plans))
        else:
            refs = split_coordinates(state.reference[None, :].astype(flat.dtype), len(plans))
        new_parts = []
        for part, ref, out in zip(parts, refs, outs, strict=True):
            c = out.counts.astype(flat.dtype)[:, None]
            if fill in ("initial", "previous"):
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
    drop_prob = _check_common(None, drop_prob, relay_method, fills=None)
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


def relaysum_mix(learning_rate, alpha: float = 0.5, momentum: float = 0.0, nesterov: bool | None = None,
                 weight_decay: float = 0.0, optimizer: optax.GradientTransformation | None = None,
                 fill: str = "initial", drop_prob: float = 0.0, relay_method: str = "auto",
                 weight_decay_mask=None) -> Algorithm:
    """RelaySum/Mix (Vogels et al. 2021, arXiv 2110.04175; docs/algorithms.md#relaysum_mix): RelaySum for model
    mixing with a mixing coefficient α, the authors' third variant (reference code ``algorithms.py``
    ``relaysum_mix``, ``consensus_strength`` = α; ``paper-figures/algorithms.py`` ``relaysum_mix`` writes 1 − α).

    Per step, in the reference order: ``u_i = −η D_i`` from the local optimizer at the current ``x_i`` (the model is
    not changed by it), RelaySum (with counts) of ``v_i = α x_i + u_i`` over the tree(s) giving ``S_i`` and
    ``C_i``, then ``x_i ← (1 − α) x_i + (S_i + (n − C_i) · f_i) / n`` with the fill

    * ``"initial"`` (default): ``f = α x⁰``, the mixing part of a not-yet-arrived worker's message
      (``paper-figures/algorithms.py``; a consensus at x⁰ is then a fixed point). α = 1 is exactly
      :func:`relaysgd` with ``fill="initial"``, α = 0 exactly :func:`relaysum_grad`;
    * ``"unscaled"``: ``f = x⁰``, as the training code's ``RelayMechanism`` fills (``initial_state`` = x⁰ for every
      variant); for α < 1 it inflates the models by ``(1 − α)(n − C_i)/n · x⁰`` while the tree fills up;
    * ``"previous"``: ``f = α x_i`` (the worker's own current model; the analogue of RelaySGD's ``"previous"``,
      not in the reference code).

    Without drops and at a constant learning rate every fixed point is a consensus on a stationary point of the
    average objective (no heterogeneity bias). Requires a tree topology (``requires={"tree"}``).

    The order is the training code's (non-overlapping communication: ``S_i`` holds this step's messages, a value
    needs dist − 1 steps). The paper-figures simulator differs in two ways that simdl does not follow: it sums the
    previous step's messages (one step more delay, the "overlap" form) and its momentum is an EMA
    ``m ← β m + (1 − β) g``.

    Args:
      learning_rate: η, float or optax schedule.
      alpha: mixing coefficient α ∈ [0, 1] (the reference experiments use 0.5, some 0.3 / 0.32).
      momentum: local momentum β (PyTorch convention, never relayed); default 0 (as ``paper-figures``).
      nesterov: Nesterov momentum; default ``None`` = ``True`` whenever β > 0 (the reference SGD).
      weight_decay: λ added to the gradient before momentum (default 0).
      optimizer: optional optax transformation as the local optimizer; then ``momentum`` must be 0.
      fill: ``"initial"``, ``"unscaled"`` or ``"previous"`` (above).
      drop_prob: probability p ∈ [0, 1) that each received (message, count) pair is lost.
      relay_method: ``"auto"``, ``"gather"`` or ``"subtract"`` (see :mod:`simdl.mixing.relay`).
      weight_decay_mask: optional pytree/callable of bools: which leaves get weight decay.

    State: :class:`RelayState` as :func:`relaysgd`. ``aux["bytes_sent"]``: per worker ``Σ_t deg_t(i) · (4 D_t + 4)``
    for float32 models (message and int32 count per tree edge, as RelaySGD).

    Raises:
      ValueError: (factory) α not a finite float in [0, 1]; invalid fill / drop_prob / relay_method / momentum /
        optimizer settings; (init) a topology without spanning trees, or params whose worker axis does not match.
    """
    try:
        a = float(alpha)
    except (TypeError, ValueError):
        a = float("nan")
    if not 0.0 <= a <= 1.0:  # also refuses NaN
        raise ValueError(f"alpha must be a float in [0, 1], got {alpha!r}")
    drop_prob = _check_common(fill, drop_prob, relay_method, MIX_FILLS)
    momentum, nesterov = _resolve_momentum(0.0 if momentum is None else momentum, nesterov, optimizer)
    opt, schedule, init = _local_parts("relaysum_mix", learning_rate, momentum, nesterov, weight_decay, optimizer,
                                       weight_decay_mask, relay_method)

    def step(state, grads, ctx):
        plans = tree_plans(ctx.topology, relay_method, "relaysum_mix")
        n = ctx.n
        updates, opt_state = vmapped_update(opt, grads, state.opt_state, state.params)
        x = _flatten(state.params)
        u = _flatten(updates)
        dtype = jnp.result_type(x.dtype, u.dtype)
        x = x.astype(dtype)
        values = a * x + u.astype(dtype)
        _, outs = _relay_all(plans, values, state.relay, ctx, drop_prob, with_counts=True)
        if fill == "previous":
            fills = split_coordinates(a * x, len(plans))
        else:
            ref = state.reference[None, :].astype(dtype)
            fills = split_coordinates(a * ref if fill == "initial" else ref, len(plans))
        own = split_coordinates(x, len(plans))
        new_parts = []
        for xp, f, out in zip(own, fills, outs, strict=True):
            c = out.counts.astype(dtype)[:, None]
            new_parts.append((1 - a) * xp + (out.sums + (n - c) * f) / n)
        params = _unflattener(state.params)(merge_coordinates(tuple(new_parts), x.shape[1]))
        sent = _bytes(plans, x.shape[1], dtype.itemsize, count=True)
        relay = tuple(RelayBuffers(*o.buffers) for o in outs)
        return RelayState(params, opt_state, state.reference, relay), {"lr": schedule(ctx.step), "bytes_sent": sent}

    hp = record_hyperparams(learning_rate=learning_rate, alpha=a, momentum=momentum, nesterov=nesterov,
                            weight_decay=weight_decay, optimizer=optimizer, fill=fill, drop_prob=drop_prob,
                            relay_method=relay_method)
    return Algorithm("relaysum_mix", init, step, lambda s: s.params, lambda s: s.params, hp, frozenset({"tree"}))


__all__ = ["FILLS", "MIX_FILLS", "RelayState", "relaysgd", "relaysum_grad", "relaysum_mix", "tree_plans"]
