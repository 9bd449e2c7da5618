"""Federated learning with a server: FedAvg with any optax server optimizer (FedAvgM, FedAdam, FedYogi; Reddi et al.
2021, arXiv 2003.00295), FedProx (Li et al. 2018, arXiv 1812.06127) and SCAFFOLD (Karimireddy et al. 2020,
arXiv 1910.06378), all with client sampling (``ctx.active``;
docs/algorithms.md#federated-learning-fedavg-fedprox-scaffold).

Time is cut into communication rounds of H = ``local_steps`` steps: round r is the steps ``[rH, (r+1)H)``. During a
round every client of the round's cohort S (``ctx.active``; ``None`` = every client) takes local steps from the
server model; the other clients are frozen (their gradients are ignored and their state does not change). On the
round's last step (``(t + 1) mod H == 0``) the cohort uploads its models, the server updates its model, and every
client (sampled or not) starts the next round from the new server model, so all worker models equal the server
model at round boundaries (consensus distance 0 there).

Communication (``aux["bytes_sent"]``, float32 ``(n,)``): on a round's last step every client of the cohort sends
one model (FedAvg, FedProx) or one model plus one control variate (SCAFFOLD) of
:func:`simdl.algorithms.base.model_bytes` bytes each; at all other steps, and for clients outside the cohort, 0.
The server's broadcast of the new model (and of SCAFFOLD's server control variate) is not a worker's send and is
not counted.

For the system model (:mod:`simdl.systems`) the round's last step is a barrier over the cohort: a round lasts as long
as its slowest sampled client's H local steps plus the upload.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from simdl.algorithms.base import (
    Algorithm,
    as_schedule,
    check_nonneg,
    model_bytes,
    record_hyperparams,
    tree_add,
    tree_sub,
    tree_where,
)
from simdl.algorithms.local import local_optimizer, vmapped_init, vmapped_update

CAPABILITIES = frozenset({"participation"})


class FedAvgState(NamedTuple):
    """State of :func:`fedavg` and :func:`fedprox`.

    Attributes:
      server: the server model x (one copy: the leaves of the task's params, without the worker axis).
      server_opt_state: the server optimizer's optax state (unstacked, for ``server``).
      params: the stacked client models x_i (leading axis n); equal to ``server`` at round boundaries.
      opt_state: the stacked client optimizer states (leading axis n), fresh at every round start.
    """

    server: Any
    server_opt_state: Any
    params: Any
    opt_state: Any


class ScaffoldState(NamedTuple):
    """State of :func:`scaffold`.

    Attributes:
      server: the server model x (unstacked).
      control: the server control variate c (unstacked, same shapes as ``server``; starts at 0).
      params: the stacked client models y_i (leading axis n).
      controls: the stacked client control variates c_i (leading axis n; start at 0).
      lr_sum: float32 scalar, Σ η_t over the current round's steps so far (the local learning rates actually used).
    """

    server: Any
    control: Any
    params: Any
    controls: Any
    lr_sum: jax.Array


def _check_local_steps(local_steps) -> int:
    if isinstance(local_steps, bool) or int(local_steps) != local_steps or local_steps < 1:
        raise ValueError(f"local_steps must be an integer >= 1, got {local_steps!r}")
    return int(local_steps)


def _unstack(tree):
    return jax.tree_util.tree_map(lambda x: x[0], tree)


def _broadcast(tree, like):
    return jax.tree_util.tree_map(lambda s, x: jnp.broadcast_to(s, x.shape).astype(x.dtype), tree, like)


def _expand(v, x):
    return v.reshape((-1,) + (1,) * (x.ndim - 1)).astype(x.dtype)


def _active_mask(ctx) -> jax.Array:
    return jnp.ones((ctx.n,), bool) if ctx.active is None else jnp.asarray(ctx.active, bool)


def _cohort_average(stacked, worker_weights, active, weighted: bool):
    """The p-weighted average over the cohort, unstacked, and whether the cohort has positive total weight.

    With full participation (``active`` is None or all True) this is exactly :func:`simdl.mixing.mean_mix`'s
    average (``Σ p_i x_i`` with float32 ``p``, or ``mean`` when unweighted), bit for bit; otherwise
    ``Σ_S p_i x_i / Σ_S p_i``.
    """
    p = np.asarray(worker_weights, np.float64) if weighted else None

    def full(x):
        if p is None:
            return jnp.mean(x, axis=0)
        return jnp.sum(_expand(jnp.asarray(p, x.dtype), x) * x, axis=0)

    if active is None:
        return jax.tree_util.tree_map(full, stacked), jnp.bool_(True)
    active = jnp.asarray(active, bool)
    q = jnp.where(active, jnp.asarray(np.full(active.shape[0], 1.0) if p is None else p, jnp.float32), 0.0)
    total = jnp.sum(q)
    nonempty = total > 0
    w = q / jnp.where(nonempty, total, 1.0)
    everyone = jnp.all(active)

    def one(x):
        return jnp.where(everyone, full(x), jnp.sum(_expand(w, x) * x, axis=0))

    return jax.tree_util.tree_map(one, stacked), nonempty


def _federated(name: str, learning_rate, local_steps, mu, server_optimizer, momentum, nesterov, weight_decay,
               optimizer, weighted, weight_decay_mask) -> Algorithm:
    """FedAvg / FedProx (``mu`` = 0: FedAvg, bit for bit)."""
    local_steps = _check_local_steps(local_steps)
    mu = check_nonneg("mu", mu)
    server_arg = server_optimizer  # recorded as given (None = the default SGD(1.0))
    if server_optimizer is None:
        server_optimizer = optax.sgd(1.0)
    if not isinstance(server_optimizer, optax.GradientTransformation):
        raise ValueError(f"server_optimizer must be an optax GradientTransformation (e.g. optax.adam(1e-2)), "
                         f"got {server_optimizer!r}")
    if optimizer is not None and not isinstance(optimizer, optax.GradientTransformation):
        raise ValueError(f"optimizer must be an optax GradientTransformation or None, got {optimizer!r}")
    if not isinstance(weighted, (bool, np.bool_)):
        raise ValueError(f"weighted must be a bool, got {weighted!r}")
    schedule = as_schedule(learning_rate)
    # The built-in SGD client is built at unit rate and its update scaled by schedule(t) of the global step t, so
    # the per-round reset of its state does not restart the schedule (and the local step equals local_sgd's).
    external_lr = optimizer is None
    opt = local_optimizer(1.0 if external_lr else learning_rate, momentum, nesterov, weight_decay, optimizer,
                          weight_decay_mask)

    def init(params, ctx):
        server = _unstack(params)
        return FedAvgState(server, server_optimizer.init(server), params, vmapped_init(opt, params))

    def step(state, grads, ctx):
        active = ctx.active
        if mu:
            grads = jax.tree_util.tree_map(
                lambda g, x, s: g + (mu * (x - s[None])).astype(g.dtype), grads, state.params, state.server)
        updates, opt_state = vmapped_update(opt, grads, state.opt_state, state.params)
        lr = schedule(ctx.step)
        if external_lr:
            updates = jax.tree_util.tree_map(lambda u: jnp.asarray(lr, u.dtype) * u, updates)
        params = tree_add(state.params, updates)
        if active is not None:  # frozen clients: gradient ignored, state unchanged
            params = tree_where(active, params, state.params)
            opt_state = tree_where(active, opt_state, state.opt_state)
        sync = (ctx.step + 1) % local_steps == 0

        avg, nonempty = _cohort_average(params, ctx.worker_weights, active, weighted)
        delta = tree_sub(state.server, avg)  # the pseudo-gradient Δ = x − Σ_S p_i x_i / Σ_S p_i
        s_updates, s_opt_state = server_optimizer.update(delta, state.server_opt_state, state.server)
        new_server = optax.apply_updates(state.server, s_updates)
        commit = jnp.logical_and(sync, nonempty)
        server = tree_where(commit, new_server, state.server)
        server_opt_state = tree_where(commit, s_opt_state, state.server_opt_state)
        params = tree_where(sync, _broadcast(server, params), params)
        opt_state = tree_where(sync, vmapped_init(opt, params), opt_state)  # stateless clients: fresh each round

        mask = _active_mask(ctx)
        sent = jnp.where(jnp.logical_and(sync, mask), jnp.float32(model_bytes(state.params)), jnp.float32(0.0))
        aux = {"lr": jnp.asarray(lr, jnp.float32), "bytes_sent": sent.astype(jnp.float32)}
        return FedAvgState(server, server_opt_state, params, opt_state), aux

    hp = record_hyperparams(learning_rate=learning_rate, local_steps=local_steps, server_optimizer=server_arg,
                            momentum=momentum, nesterov=nesterov, weight_decay=weight_decay, optimizer=optimizer,
                            weighted=bool(weighted))
    if name == "fedprox":
        hp["mu"] = mu
    return Algorithm(name, init, step, lambda s: s.params, lambda s: s.params, hp, frozenset(),
                     round_length=local_steps, capabilities=CAPABILITIES)


def fedavg(learning_rate, local_steps: int = 4, server_optimizer: optax.GradientTransformation | None = None,
           momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0,
           optimizer: optax.GradientTransformation | None = None, weighted: bool = True,
           weight_decay_mask=None) -> Algorithm:
    """FedAvg with client sampling and a server optimizer (McMahan et al. 2017, arXiv 1602.05629; adaptive server
    optimizers FedAvgM / FedAdam / FedYogi: Reddi et al. 2021, arXiv 2003.00295).

    Round r is the steps ``[rH, (r+1)H)`` with H = ``local_steps``. Every client of the round's cohort S
    (``ctx.active``, ``(n,)`` bool, constant over the round; ``None`` = all n) takes H local optimizer steps from
    the server model x; clients outside S are frozen (gradient ignored, state unchanged). On the round's last step
    (``(t + 1) mod H == 0``) the server forms the pseudo-gradient ``Δ = x − Σ_{i∈S} p_i x_i / Σ_{i∈S} p_i``
    (p = ``ctx.worker_weights`` if ``weighted``, else uniform), applies ``server_optimizer`` to it (optax
    convention: ``x ← x + server_optimizer.update(Δ, ...)``, so SGD(η_g) gives ``x ← x − η_g Δ``), and every
    client, sampled or not, is set to the new server model. An empty cohort (or one of total weight 0) leaves the
    server model and its optimizer state unchanged.

    With full participation, server SGD(1.0) and ``momentum = 0`` this is :func:`simdl.algorithms.local_sgd`, up to
    the float rounding of ``x − (x − x̄)`` in place of ``x̄`` (≲ 1 ulp of the parameters per round); with local
    momentum it is ``local_sgd(..., momentum_sync="reset")``.

    Clients are stateless, as in cross-device FL: their local optimizer state (momentum buffers, an optax
    ``optimizer``'s moments and step count) is re-initialised at every round start. The built-in local SGD is
    scaled by ``learning_rate`` at the global step t, so a schedule runs over the whole training, not per round;
    an ``optimizer``'s own schedule restarts every round (its count is reset).

    Args:
      learning_rate: the clients' local learning rate η, a float > 0 or an optax schedule of the global step.
      local_steps: H ≥ 1, local steps per round (= :attr:`Algorithm.round_length`).
      server_optimizer: any optax ``GradientTransformation`` applied to the pseudo-gradient Δ (unstacked, shaped
        like one model); ``None`` means ``optax.sgd(1.0)`` (plain FedAvg). FedAvgM: ``optax.sgd(η_g,
        momentum=β)``; FedAdam: ``optax.adam(η_g, b1, b2, eps=τ)``; FedYogi: ``optax.yogi(η_g, ..., eps=τ)``.
      momentum: local momentum β ∈ [0, 1) of the clients' SGD (reset every round); 0 = plain SGD.
      nesterov: Nesterov local momentum (needs ``momentum > 0``).
      weight_decay: λ ≥ 0, added to the local gradient.
      optimizer: optional optax transformation used as the clients' local optimizer instead of SGD (its updates
        are the local step; ``learning_rate`` then only sets ``aux["lr"]``).
      weighted: weight the cohort average by the clients' shard sizes (``ctx.worker_weights``), as FedAvg does;
        ``False``: uniform. With clients sampled in proportion to their shard sizes
        (``simdl.participation.client_sampling(k, weighted=True)``), ``False`` is the unbiased choice.
      weight_decay_mask: optional pytree/callable of bools: which leaves get weight decay.

    Returns:
      An :class:`Algorithm` named ``"fedavg"`` with state :class:`FedAvgState`, ``round_length = local_steps``,
      ``capabilities = {"participation"}`` and no topology requirement (the server averages exactly). ``aux``:
      ``"lr"`` (float32, the local rate at t) and ``"bytes_sent"`` (float32 ``(n,)``: one model's bytes for each
      cohort client on the round's last step, else 0; the server's broadcast is not counted).

    Raises:
      ValueError: ``local_steps`` not an integer ≥ 1, ``server_optimizer`` or ``optimizer`` not an optax
        ``GradientTransformation``, ``weighted`` not a bool, a bad learning rate, momentum outside [0, 1),
        negative weight decay, ``nesterov`` without momentum, or ``optimizer`` together with momentum.
    """
    return _federated("fedavg", learning_rate, local_steps, 0.0, server_optimizer, momentum, nesterov, weight_decay,
                      optimizer, weighted, weight_decay_mask)


def fedprox(learning_rate, local_steps: int = 4, mu: float = 0.01,
            server_optimizer: optax.GradientTransformation | None = None, momentum: float = 0.0,
            nesterov: bool = False, weight_decay: float = 0.0, optimizer: optax.GradientTransformation | None = None,
            weighted: bool = True, weight_decay_mask=None) -> Algorithm:
    """FedProx (Li, Sahu, Zaheer, Sanjabi, Talwalkar, Smith 2018, arXiv 1812.06127): :func:`fedavg` whose clients
    minimise ``f_i(x) + (μ/2) ‖x − x_server‖²`` during a round.

    The local optimizer is fed ``g_i + μ (x_i − x_server)`` (x_server: the model the round started from) instead
    of ``g_i``; everything else (cohort, server optimizer, broadcast, byte accounting, stateless clients) is
    :func:`fedavg`'s. ``mu = 0`` is :func:`fedavg` exactly. The paper's inexact local solver is modelled by the
    fixed H local steps.

    Args:
      learning_rate: the clients' local learning rate η, a float > 0 or an optax schedule of the global step.
      local_steps: H ≥ 1, local steps per round.
      mu: μ ≥ 0 (finite), the proximal coefficient.
      server_optimizer: optax transformation applied to the pseudo-gradient; ``None`` means ``optax.sgd(1.0)``.
      momentum: local momentum β ∈ [0, 1) (reset every round).
      nesterov: Nesterov local momentum.
      weight_decay: λ ≥ 0, added to the local gradient.
      optimizer: optional optax local optimizer instead of SGD.
      weighted: cohort average weighted by shard size (default) or uniform.
      weight_decay_mask: optional pytree/callable of bools: which leaves get weight decay.

    Returns:
      An :class:`Algorithm` named ``"fedprox"`` with state :class:`FedAvgState` (see :func:`fedavg`).

    Raises:
      ValueError: ``mu`` negative or not finite, and every error of :func:`fedavg`.
    """
    return _federated("fedprox", learning_rate, local_steps, mu, server_optimizer, momentum, nesterov, weight_decay,
                      optimizer, weighted, weight_decay_mask)


def scaffold(learning_rate, local_steps: int = 4, server_learning_rate: float = 1.0, momentum: float = 0.0,
             weight_decay: float = 0.0, weight_decay_mask=None) -> Algorithm:
    """SCAFFOLD, option II (Karimireddy, Kale, Mohri, Reddi, Stich, Suresh 2020, arXiv 1910.06378): local SGD
    corrected by control variates against client drift.

    Controls start at 0 (c = c_i = 0). In round r every client i of the cohort S (``ctx.active``; ``None`` = all N
    clients) starts from the server model (y_i = x) and takes K = ``local_steps`` steps
    ``y_i ← y_i − η_t (g_i + λ y_i − c_i + c)``; clients outside S are frozen. On the round's last step, for
    i ∈ S: ``c_i⁺ = c_i − c + (x − y_i) / Σ_k η_k``, ``Δy_i = y_i − x``, ``Δc_i = c_i⁺ − c_i``; then
    ``x ← x + η_g · (1/|S|) Σ_{i∈S} Δy_i``, ``c ← c + (|S|/N) · (1/|S|) Σ_{i∈S} Δc_i``, ``c_i ← c_i⁺`` (i ∈ S),
    and every client is set to the new x. Σ_k η_k is the sum of the local learning rates actually used in the round
    (``K η`` for a constant rate, the paper's option II; with a schedule the exact generalisation, since
    ``x − y_i = Σ_k η_k (g_i − c_i + c)``). If that sum is 0 (a warm-up at 0), ``c_i`` is kept. An empty cohort
    leaves x and c unchanged. The averages are uniform over S, as in the paper.

    Only plain local SGD is supported (momentum would break the identity behind option II): ``momentum`` must be 0.

    Args:
      learning_rate: the local learning rate η_l, a float > 0 or an optax schedule of the global step.
      local_steps: K ≥ 1, local steps per round.
      server_learning_rate: η_g > 0 (finite), the server's global step size (1 = the paper's default).
      momentum: must be 0 (accepted so configs that set it for every run work).
      weight_decay: λ ≥ 0, added to the local gradient.
      weight_decay_mask: optional pytree/callable of bools: which leaves get weight decay.

    Returns:
      An :class:`Algorithm` named ``"scaffold"`` with state :class:`ScaffoldState`, ``round_length = local_steps``,
      ``capabilities = {"participation"}``, no topology requirement. ``aux["bytes_sent"]`` (float32 ``(n,)``):
      each cohort client uploads its Δy_i and Δc_i, two model sizes, on the round's last step (the server's
      broadcast of x and c is not counted).

    Raises:
      ValueError: ``local_steps`` not an integer ≥ 1, ``server_learning_rate`` not finite and > 0,
        ``momentum`` ≠ 0, a bad learning rate, or negative weight decay.
    """
    local_steps = _check_local_steps(local_steps)
    eta_g = float(server_learning_rate)
    if not np.isfinite(eta_g) or eta_g <= 0:
        raise ValueError(f"server_learning_rate must be a finite float > 0, got {server_learning_rate!r}")
    if float(momentum) != 0.0:
        raise ValueError(f"scaffold supports plain local SGD only (option II); got momentum={momentum!r}, "
                         f"expected 0")
    weight_decay = check_nonneg("weight_decay", weight_decay)
    schedule = as_schedule(learning_rate)
    decay = optax.add_decayed_weights(weight_decay, mask=weight_decay_mask) if weight_decay else None

    def init(params, ctx):
        server = _unstack(params)
        zeros = jax.tree_util.tree_map(jnp.zeros_like, server)
        return ScaffoldState(server, zeros, params, jax.tree_util.tree_map(jnp.zeros_like, params),
                             jnp.float32(0.0))

    def step(state, grads, ctx):
        active = ctx.active
        mask = _active_mask(ctx)
        if decay is not None:
            grads = jax.vmap(lambda g, y: decay.update(g, decay.init(y), y)[0])(grads, state.params)
        lr = jnp.asarray(schedule(ctx.step), jnp.float32)
        params = jax.tree_util.tree_map(
            lambda y, g, ci, c: y - (lr * (g - ci + c[None])).astype(y.dtype),
            state.params, grads, state.controls, state.control)
        if active is not None:
            params = tree_where(active, params, state.params)
        lr_sum = state.lr_sum + lr
        sync = (ctx.step + 1) % local_steps == 0

        pos = lr_sum > 0
        inv = jnp.where(pos, 1.0 / jnp.where(pos, lr_sum, 1.0), 0.0)
        new_controls = jax.tree_util.tree_map(
            lambda ci, c, x, y: jnp.where(pos, ci - c[None] + ((x[None] - y) * inv).astype(y.dtype), ci),
            state.controls, state.control, state.server, params)
        count = jnp.sum(mask.astype(jnp.float32))
        nonempty = count > 0
        m = mask.astype(jnp.float32)

        def cohort_sum(tree):
            return jax.tree_util.tree_map(lambda x: jnp.sum(_expand(m, x) * x, axis=0), tree)

        dy = cohort_sum(tree_sub(params, _broadcast(state.server, params)))
        dc = cohort_sum(tree_sub(new_controls, state.controls))
        per = 1.0 / jnp.where(nonempty, count, 1.0)
        new_server = jax.tree_util.tree_map(lambda x, d: x + (eta_g * per * d).astype(x.dtype), state.server, dy)
        new_control = jax.tree_util.tree_map(lambda c, d: c + (d / ctx.n).astype(c.dtype), state.control, dc)
        commit = jnp.logical_and(sync, nonempty)
        server = tree_where(commit, new_server, state.server)
        control = tree_where(commit, new_control, state.control)
        controls = tree_where(jnp.logical_and(sync, mask), new_controls, state.controls)
        params = tree_where(sync, _broadcast(server, params), params)
        lr_sum = jnp.where(sync, jnp.float32(0.0), lr_sum)

        sent = jnp.where(jnp.logical_and(sync, mask), jnp.float32(2 * model_bytes(state.params)), jnp.float32(0.0))
        aux = {"lr": lr, "bytes_sent": sent.astype(jnp.float32)}
        return ScaffoldState(server, control, params, controls, lr_sum), aux

    hp = record_hyperparams(learning_rate=learning_rate, local_steps=local_steps, server_learning_rate=eta_g,
                            momentum=0.0, weight_decay=weight_decay)
    return Algorithm("scaffold", init, step, lambda s: s.params, lambda s: s.params, hp, frozenset(),
                     round_length=local_steps, capabilities=CAPABILITIES)
