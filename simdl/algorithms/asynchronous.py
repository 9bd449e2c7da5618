"""Asynchronous gossip on a simulated clock: AD-PSGD and randomized gossip
(docs/algorithms.md#asynchronous-gossip-ad_psgd-randomized_gossip).

* AD-PSGD (Lian, Zhang, Zhang, Liu 2018, arXiv 1710.06952, "Asynchronous Decentralized Parallel Stochastic
  Gradient Descent"). Every worker loops, at its own speed: read its model x̂_i ← x_i, compute a stochastic
  gradient g_i at x̂_i (meanwhile its neighbours may change x_i), then atomically average its current model with a
  uniformly random neighbour j (x_i, x_j ← (x_i + x_j)/2) and apply x_i ← x_i − η g_i(x̂_i). In the paper's
  logical view (its Algorithm 1) iteration k picks the worker i_k that finishes, ``X ← W_k X`` with the pairwise
  averaging matrix W_k of {i_k, j}, then ``x_{i_k} ← x_{i_k} − η g(x̂_{i_k})``, where x̂ is x of τ_k iterations ago.
* Randomized gossip (Boyd, Ghosh, Prabhakar, Shah 2006, IEEE Trans. Inf. Theory 52(6), "Randomized gossip
  algorithms"), asynchronous time model: every node has a rate-``rate`` Poisson clock; when node i's clock ticks it
  averages with a neighbour j: x_i = x_j = (x_i + x_j)/2. Optionally (``learning_rate > 0``) the woken node first
  takes a local SGD step.

Both declare ``"async"`` (:attr:`simdl.algorithms.Algorithm.capabilities`): one step of the runner is one *tick* of
their own event clock, and their aux ``"tick_s"`` is the simulated seconds the tick advanced; the runner reports
``sim_time_s`` as the running sum of ``tick_s``.
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
    model_bytes,
    record_hyperparams,
    tree_scale,
    tree_where,
)
from simdl.algorithms.local import local_optimizer, vmapped_init, vmapped_update

#: Relative tolerance under which two finish times count as simultaneous in the event-driven clock (float32
#: rounding of the remaining times; a worker whose computation ends within ``TIE_RTOL · tick_s`` of the earliest
#: one finishes in the same tick).
TIE_RTOL = 1e-6


# --------------------------------------------------------------------------------------------- neighbour tables
def pair_neighbours(topology, name: str = "pairwise gossip") -> tuple[np.ndarray, np.ndarray]:
    """The undirected neighbour lists that pairwise averaging draws from.

    Args:
      topology: a static :class:`simdl.topologies.Topology`; its graph must be undirected, or directed with every
        edge present in both directions (a pairwise average needs the link both ways).
      name: the algorithm's name, for error messages.

    Returns:
      ``(table, degree)``: ``table`` int32 ``(n, k)`` with k = max(1, max degree), row i = i's neighbours ascending
      then padding with i itself; ``degree`` int32 ``(n,)``. An isolated worker (degree 0) "averages" with itself.

    Raises:
      ValueError: a time-varying topology, or a directed edge without its reverse.
    """
    if topology.is_time_varying:
        raise ValueError(f"{name} needs a static topology; {topology.name} is time-varying")
    g = topology.graph
    if g.is_directed():
        for a, b in g.edges:
            if not g.has_edge(b, a):
                raise ValueError(f"{name} averages over undirected links, but {topology.name} has the edge {a} -> "
                                 f"{b} without {b} -> {a}")
    n = topology.n
    nbrs = [sorted(int(j) for j in g.neighbors(i) if j != i) for i in range(n)]
    degree = np.array([len(v) for v in nbrs], np.int32)
    k = max(1, int(degree.max(initial=0)))
    table = np.repeat(np.arange(n, dtype=np.int32)[:, None], k, axis=1)
    for i, v in enumerate(nbrs):
        table[i, :len(v)] = v
    return table, degree


def _random_neighbour(u, table, degree, rows):
    """Uniform neighbour of each worker in ``rows`` from uniforms ``u`` in [0, 1) (self when isolated)."""
    deg = jnp.asarray(degree)[rows]
    slot = jnp.minimum(jnp.floor(u * deg).astype(jnp.int32), jnp.maximum(deg - 1, 0))
    return jnp.asarray(table)[rows, slot]


def draw_events(key, topology, finishing, remaining, by_time: bool):
    """The random part of one AD-PSGD tick: in which order the finishing workers apply, and with whom they average.

    Args:
      key: the tick's PRNG key (``ctx.key``).
      topology: the static topology (neighbours from :func:`pair_neighbours`).
      finishing: bool ``(n,)``, the workers whose computation ends in this tick.
      remaining: float32 ``(n,)``, seconds from the tick's start until each computation ends.
      by_time: order the finishing workers by ``remaining`` (fixed ticks); otherwise (event-driven ticks, where
        they finish simultaneously) in a uniformly random order. Ties are broken uniformly at random.

    Returns:
      ``(order, partner)``: int32 ``(n,)`` each. ``order`` is a permutation of 0..n-1 listing the finishing workers
      first, in the order they apply; ``partner[i]`` is a uniformly random neighbour of worker i (drawn for every
      worker; only the finishing ones use theirs).
    """
    table, degree = pair_neighbours(topology, "ad_psgd")
    n = topology.n
    k_order, k_partner = jax.random.split(key)
    tie = jax.random.uniform(k_order, (n,))
    primary = jnp.where(finishing, remaining if by_time else jnp.zeros_like(remaining), jnp.inf)
    order = jnp.lexsort((tie, primary)).astype(jnp.int32)
    rows = jnp.arange(n)
    partner = _random_neighbour(jax.random.uniform(k_partner, (n,)), table, degree, rows).astype(jnp.int32)
    return order, partner


def compose_pairwise(order, partner, finishing, times=None, tol: float = 0.0):
    """The tick's linear map as two ``(n, n)`` float32 matrices ``(P, Q)``: ``X ← P X + Q U``.

    The finishing workers i = ``order[p]`` (p = 0, 1, ...) form groups of equal finish time (``times[i]``, equal
    within ``tol``; ``times=None``: one group, all simultaneous). Within a group every member does its pairwise
    average ``X ← W_{i, partner[i]} X`` in turn, then all members apply their updates ``x_i ← x_i + u_i``; the
    groups follow each other in ``order``. So ``P = W_m ⋯ W_1`` (each W is symmetric doubly stochastic, so P is
    doubly stochastic and the worker average is preserved), and ``Q = Σ_i W_m ⋯ W_{g(i)+1} e_i e_iᵀ`` with g(i) the
    last exchange of i's group (an update is averaged onwards by the later groups' exchanges). A group of one
    worker is one iteration of the paper's Algorithm 1 (average, then the gradient step); one group of all n is
    ``X ← W X + U``. Built with an O(n) row update per exchange inside a ``lax.fori_loop``.

    Also returns ``exchanges``: float32 ``(n,)``, how many exchanges each worker took part in (as the finishing
    worker or its partner; self-"exchanges" of isolated workers do not count).
    """
    n = order.shape[0]
    times = jnp.zeros((n,), jnp.float32) if times is None else jnp.asarray(times, jnp.float32)

    diag = jnp.arange(n)

    def flush(qm, waiting):  # add the waiting members' updates: Q += diag(waiting), an O(n) scatter
        return qm.at[diag, diag].add(waiting)

    def body(p, carry):
        pm, qm, waiting, ex = carry
        i = order[p]
        j = partner[i]
        on = finishing[i]
        new_group = (p > 0) & (times[i] > times[order[jnp.maximum(p - 1, 0)]] + tol)
        now_flush = on & new_group
        qm = flush(qm, jnp.where(now_flush, waiting, 0.0))
        waiting = jnp.where(now_flush, 0.0, waiting)
        avg_p = 0.5 * (pm[i] + pm[j])
        avg_q = 0.5 * (qm[i] + qm[j])
        pm = pm.at[i].set(jnp.where(on, avg_p, pm[i])).at[j].set(jnp.where(on, avg_p, pm[j]))
        qm = qm.at[i].set(jnp.where(on, avg_q, qm[i])).at[j].set(jnp.where(on, avg_q, qm[j]))
        waiting = waiting.at[i].set(jnp.where(on, 1.0, waiting[i]))
        real = (on & (i != j)).astype(jnp.float32)
        ex = ex.at[i].add(real).at[j].add(real)
        return pm, qm, waiting, ex

    zeros = jnp.zeros((n,), jnp.float32)
    init = (jnp.eye(n, dtype=jnp.float32), jnp.zeros((n, n), jnp.float32), zeros, zeros)
    pm, qm, waiting, ex = jax.lax.fori_loop(0, n, body, init)
    return pm, flush(qm, waiting), ex


def _apply(pm, qm, params, updates):
    """``P X + Q U`` along the worker axis: one ``(n, 2n) @ (2n, ·)`` contraction per leaf, at
    ``Precision.HIGHEST`` like :func:`simdl.mixing.dense_mix` (no TF32 on GPUs)."""
    pq = jnp.concatenate([pm, qm], axis=1)

    def one(x, u):
        flat = jnp.concatenate([x.reshape(x.shape[0], -1), u.reshape(u.shape[0], -1).astype(x.dtype)], axis=0)
        out = jnp.matmul(pq.astype(x.dtype), flat, precision=jax.lax.Precision.HIGHEST)
        return out.reshape(x.shape)

    return jax.tree_util.tree_map(one, params, updates)


def _check_positive(name: str, value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a finite float > 0, got {name}={value!r}") from None
    if not np.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be a finite float > 0, got {name}={value!r}")
    return v


def _local(learning_rate, momentum, nesterov, weight_decay, optimizer, weight_decay_mask):
    """The local optimizer and the scale of its updates: SGD at rate 1 scaled by ``schedule(ctx.step)`` (so the
    schedule is a function of the tick index, like every other algorithm's), or the given optax ``optimizer``."""
    schedule = as_schedule(learning_rate)
    if optimizer is None:
        opt = local_optimizer(1.0, momentum, nesterov, weight_decay, None, weight_decay_mask)
        return opt, schedule, schedule
    opt = local_optimizer(learning_rate, momentum, nesterov, weight_decay, optimizer, weight_decay_mask)
    return opt, schedule, lambda step: jnp.float32(1.0)


# --------------------------------------------------------------------------------------------------- AD-PSGD
class ADPSGDState(NamedTuple):
    """State of AD-PSGD.

    Attributes:
      params: stacked current models x (leading axis n): what is reported and evaluated.
      read: stacked snapshots x̂ at which each worker's in-flight gradient is computed (``query`` returns them).
      opt_state: stacked local optimizer state (momentum buffers advance only when their worker applies).
      remaining: float32 ``(n,)``, seconds from the current simulated time until each worker's computation ends
        (kept relative to "now", so that it stays exact in float32 however long the run). For a worker with
        ``pending`` set it is the (≤ 0) phase at which its new computation started, to which the tick adds the
        computation's duration.
      pending: bool ``(n,)``, the worker started a new computation at the end of the previous tick (all at init);
        its duration is taken from the next tick's ``ctx.compute_time``.
      clock: float32 ``(2,)``, the simulated time (s) as a compensated sum ``clock[0] + clock[1]``.
      applied: int32 scalar, gradient updates applied by all workers so far (the paper's iteration count k).
      read_at: int32 ``(n,)``, ``applied`` when each worker took its snapshot ``read``.
    """

    params: Any
    read: Any
    opt_state: Any
    remaining: jax.Array
    pending: jax.Array
    clock: jax.Array
    applied: jax.Array
    read_at: jax.Array


def _kahan(clock, dt):
    y = dt - clock[1]
    t = clock[0] + y
    return jnp.stack([t, (t - clock[0]) - y])


def ad_psgd(learning_rate, momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0,
            optimizer: optax.GradientTransformation | None = None, tick: float | None = None,
            weight_decay_mask=None) -> Algorithm:
    """AD-PSGD (Lian et al. 2018, arXiv 1710.06952), simulated on an event clock (docs/algorithms.md#ad_psgd).

    **One step is one tick** of the simulated clock. Each worker computes for ``ctx.compute_time[i]`` seconds (the
    run's system model; 1.0 s for everybody without one) on the snapshot ``read_i`` of its model (``query``
    returns the snapshots, so the runner's gradients are evaluated there). The workers whose computation ends in
    the tick apply in the order they finish, each (1) the atomic pairwise average x_i, x_j ← (x_i + x_j)/2 with a
    uniformly random neighbour j, then (2) x_i ← x_i − η D_i, D_i the local optimizer's direction from the gradient
    at ``read_i``. Workers finishing at the same time (always so with equal compute times) form one group: all its
    averages, in a uniformly random order, then all its gradient steps; a group of one is one iteration of the
    paper's Algorithm 1. Then each of them restarts: ``read_i ← x_i`` (its model at the end of the tick) and a new
    computation, whose duration is ``ctx.compute_time[i]`` of the next tick. The whole tick is one composed linear
    map ``X ← P X + Q U`` (:func:`compose_pairwise`), applied with one dense contraction per leaf (O(n² · model)
    per tick, like dense gossip).

    * ``tick=None`` (default, event-driven): the tick advances to the earliest finish time, so every step applies
      ≥ 1 worker and the simulation is exact (the paper's order of operations). With distinct finish times
      exactly one worker applies per step, and the other n − 1 gradients the runner evaluated that step are
      discarded: a run needs about n times as many steps for the same number of updates.
    * ``tick=Δ`` seconds: the tick advances by Δ and every worker finishing within it applies, in finish order.
      This batches ≈ Δ Σ_i 1/c_i updates per step; the approximation is that a worker's next snapshot is taken
      at the end of the tick (it may include later exchanges of the same tick), and that a worker applies at most
      once per tick (compute times shorter than Δ are rounded up to Δ).

    With equal constant compute times every worker finishes in every tick and one step is
    ``X ← W_t X − η G(X)`` with W_t the product of n random pairwise averages in a random order: D-PSGD
    (:func:`simdl.algorithms.dpsgd`, combine-then-adapt, gradient at the pre-mixing model) with a random doubly
    stochastic W_t, and no staleness.

    Args:
      learning_rate: float > 0 or optax schedule of the tick index ``ctx.step`` (the same for all workers).
      momentum: local momentum β (PyTorch convention, never gossiped); 0 = plain SGD (the paper).
      nesterov: Nesterov local momentum.
      weight_decay: λ ≥ 0, added to the gradient (at the snapshot) before momentum.
      optimizer: optional optax transformation replacing local SGD (its own learning rate applies).
      tick: ``None`` (event-driven) or the fixed tick duration Δ > 0 in seconds.
      weight_decay_mask: optional pytree/callable of bools: which leaves get weight decay.

    Aux (per step): ``"lr"`` float32 scalar; ``"bytes_sent"`` float32 ``(n,)``: one model per exchange a worker
    takes part in (the finishing worker sends its model to its partner and the partner sends its model back, so
    both count one); ``"tick_s"`` float32 scalar, simulated seconds of the tick; counters ``"updates_applied"``
    float32 ``(n,)`` (1 where the worker applied a gradient) and ``"staleness"`` float32 ``(n,)`` (for a worker
    that applied: the number of gradient updates, by any worker, applied in the ticks strictly between the tick
    of its snapshot and this one, else 0). The runner sums both, so ``staleness / updates_applied`` of the history
    is the mean staleness per update.

    Raises:
      ValueError: invalid learning rate, momentum, weight decay, ``tick`` that is not a finite float > 0; at
        ``init``: a time-varying topology or a directed edge without its reverse.
    """
    by_time = tick is not None
    dt_fixed = None if tick is None else _check_positive("tick", tick)
    opt, schedule, scale_at = _local(learning_rate, momentum, nesterov, weight_decay, optimizer, weight_decay_mask)

    def init(params, ctx):
        pair_neighbours(ctx.topology, "ad_psgd")  # validate the topology early
        n = ctx.n
        read = jax.tree_util.tree_map(lambda x: jnp.array(x, copy=True), params)  # own buffers (runners donate)
        return ADPSGDState(params, read, vmapped_init(opt, params), jnp.zeros((n,), jnp.float32),
                           jnp.ones((n,), bool), jnp.zeros((2,), jnp.float32), jnp.int32(0),
                           jnp.zeros((n,), jnp.int32))

    def step(state, grads, ctx):
        n = ctx.n
        c = jnp.ones((n,), jnp.float32) if ctx.compute_time is None else jnp.asarray(ctx.compute_time, jnp.float32)
        rem = jnp.where(state.pending, jnp.maximum(state.remaining + c, 0.0), state.remaining)
        dt = jnp.min(rem) if dt_fixed is None else jnp.float32(dt_fixed)
        finishing = rem <= dt * (1.0 + TIE_RTOL)
        order, partner = draw_events(ctx.key, ctx.topology, finishing, rem, by_time)
        times = rem if by_time else None
        pm, qm, exchanges = compose_pairwise(order, partner, finishing, times, TIE_RTOL * dt)

        updates, opt_state = vmapped_update(opt, grads, state.opt_state, state.read)
        updates = tree_scale(scale_at(ctx.step), updates)
        updates = tree_where(finishing, updates, jax.tree_util.tree_map(jnp.zeros_like, updates))
        params = _apply(pm, qm, state.params, updates)
        opt_state = tree_where(finishing, opt_state, state.opt_state)

        fin = finishing.astype(jnp.int32)
        staleness = jnp.where(finishing, state.applied - state.read_at, 0)
        applied = state.applied + jnp.sum(fin)
        new = ADPSGDState(
            params=params,
            read=tree_where(finishing, params, state.read),
            opt_state=opt_state,
            remaining=jnp.where(finishing, jnp.minimum(rem - dt, 0.0), rem - dt),
            pending=finishing,
            clock=_kahan(state.clock, dt),
            applied=applied,
            read_at=jnp.where(finishing, applied, state.read_at),
        )
        aux = {"lr": jnp.asarray(schedule(ctx.step), jnp.float32),
               "bytes_sent": exchanges * jnp.float32(model_bytes(state.params)),
               "tick_s": jnp.asarray(dt, jnp.float32),
               "updates_applied": finishing.astype(jnp.float32),
               "staleness": staleness.astype(jnp.float32)}
        return new, aux

    hp = record_hyperparams(learning_rate=learning_rate, momentum=momentum, nesterov=nesterov,
                            weight_decay=weight_decay, optimizer=optimizer, tick=tick)
    return Algorithm("ad_psgd", init, step, lambda s: s.read, lambda s: s.params, hp,
                     frozenset({"connected", "static"}), capabilities=frozenset({"async"}))


# ------------------------------------------------------------------------------------------- randomized gossip
class GossipClockState(NamedTuple):
    """State of randomized gossip.

    Attributes:
      params: stacked worker models (leading axis n).
      opt_state: stacked local optimizer state (``None`` for pure averaging).
      clock: float32 ``(2,)``, the simulated time (s) as a compensated sum ``clock[0] + clock[1]``.
    """

    params: Any
    opt_state: Any
    clock: jax.Array


def draw_wakeup(key, topology, rate: float):
    """One global clock tick of randomized gossip: ``(i, j, dt)``.

    ``i`` int32 scalar, the node whose clock ticked (uniform over the n nodes: the first of n independent
    rate-``rate`` Poisson clocks to tick); ``j`` int32 scalar, a uniformly random neighbour of i (i itself if
    isolated); ``dt`` float32 scalar ~ Exp(n · rate), the waiting time since the previous tick in seconds.
    """
    table, degree = pair_neighbours(topology, "randomized_gossip")
    n = topology.n
    k_i, k_j, k_t = jax.random.split(key, 3)
    i = jax.random.randint(k_i, (), 0, n, dtype=jnp.int32)
    j = _random_neighbour(jax.random.uniform(k_j, ()), table, degree, i).astype(jnp.int32)
    dt = jax.random.exponential(k_t, (), jnp.float32) / jnp.float32(n * rate)
    return i, j, dt


def expected_gossip_matrix(topology) -> np.ndarray:
    """``E[W]`` (float64 ``(n, n)``) of one randomized-gossip tick: ``(1/n) Σ_i (1/d_i) Σ_{j ∈ N(i)} W_ij`` with
    ``W_ij = I − (e_i − e_j)(e_i − e_j)ᵀ / 2``. Boyd et al. 2006: for x ⊥ 1,
    ``E‖W x‖² = xᵀ E[W] x ≤ λ₂(E[W]) ‖x‖²`` (each W_ij is a symmetric projection), so λ₂(E[W]) < 1 on a connected
    graph is the per-tick contraction factor of the mean squared consensus distance."""
    table, degree = pair_neighbours(topology, "randomized_gossip")
    n = topology.n
    ew = np.zeros((n, n))
    for i in range(n):
        for j in table[i, :degree[i]]:
            e = np.zeros(n)
            e[i], e[j] = 1.0, -1.0
            ew += (np.eye(n) - 0.5 * np.outer(e, e)) / (n * degree[i])
        if degree[i] == 0:
            ew += np.eye(n) / n
    return ew


def randomized_gossip(learning_rate, rate: float = 1.0, momentum: float = 0.0, nesterov: bool = False,
                      weight_decay: float = 0.0, optimizer: optax.GradientTransformation | None = None,
                      weight_decay_mask=None) -> Algorithm:
    """Randomized gossip (Boyd, Ghosh, Prabhakar, Shah 2006, "Randomized gossip algorithms", IEEE Trans. Inf.
    Theory 52(6)), asynchronous time model, optionally with local SGD (docs/algorithms.md#randomized_gossip).

    **One step is one tick of the global clock**: every node has an independent Poisson clock of ``rate`` ticks
    per second, so the ticks of their superposition are Poisson of rate n · rate, each belonging to a uniformly
    random node i. At a tick (:func:`draw_wakeup`) node i wakes, takes — if ``learning_rate > 0`` — one local
    optimizer step ``x_i ← x_i − η D_i`` with the gradient the runner evaluated at its current model, and averages
    with a uniformly random neighbour j (P_ij = 1/d_i): ``x_i = x_j = (x_i + x_j)/2``. All other workers are
    unchanged (their evaluated gradients are discarded: a run needs about n steps per round of updates). The
    simulated time advances by ``tick_s ~ Exp(n · rate)``; ``ctx.compute_time`` is not used. The gradient is always
    evaluated at the current model (no staleness). With ``learning_rate=0`` it is Boyd's pure averaging: the worker
    average is preserved (up to float32 rounding) and ``E‖x(t+1) − x̄‖² ≤ λ₂(E[W]) ‖x(t) − x̄‖²``
    (:func:`expected_gossip_matrix`).

    Args:
      learning_rate: float ≥ 0 or optax schedule of the tick index; 0 = no training, pure gossip averaging.
      rate: each node's Poisson clock rate (ticks per second), > 0.
      momentum: local momentum β (PyTorch convention, never gossiped; advances only when its worker wakes).
      nesterov: Nesterov local momentum.
      weight_decay: λ ≥ 0, added to the gradient before momentum.
      optimizer: optional optax transformation replacing local SGD.
      weight_decay_mask: optional pytree/callable of bools: which leaves get weight decay.

    Aux (per step): ``"lr"``; ``"bytes_sent"`` float32 ``(n,)``: one model for i and one for j (they exchange
    models; 0 if i is isolated); ``"tick_s"`` float32 scalar; counters ``"updates_applied"`` float32 ``(n,)`` (1 at
    the woken node if it trained) and ``"wakeups"`` float32 ``(n,)`` (1 at the woken node).

    Raises:
      ValueError: ``rate`` not a finite float > 0, an invalid learning rate (negative, not finite, or 0 together
        with an ``optimizer``), momentum or weight decay; at ``init``: a time-varying topology or a directed edge
        without its reverse.
    """
    rate = _check_positive("rate", rate)
    train = not (not callable(learning_rate) and isinstance(learning_rate, (int, float)) and learning_rate == 0)
    if train:
        opt, schedule, scale_at = _local(learning_rate, momentum, nesterov, weight_decay, optimizer,
                                         weight_decay_mask)
    else:
        if optimizer is not None:
            raise ValueError("learning_rate=0 (pure gossip averaging) takes no optimizer, got "
                             f"optimizer={optimizer!r}")
        local_optimizer(1.0, momentum, nesterov, weight_decay)  # validate the other arguments all the same
        opt, schedule, scale_at = None, (lambda step: jnp.float32(0.0)), None

    def init(params, ctx):
        pair_neighbours(ctx.topology, "randomized_gossip")
        return GossipClockState(params, None if opt is None else vmapped_init(opt, params),
                                jnp.zeros((2,), jnp.float32))

    def step(state, grads, ctx):
        n = ctx.n
        i, j, dt = draw_wakeup(ctx.key, ctx.topology, rate)
        woke = jnp.arange(n) == i
        params, opt_state = state.params, state.opt_state
        if opt is not None:
            updates, new_opt = vmapped_update(opt, grads, opt_state, params)
            scale = scale_at(ctx.step)
            params = jax.tree_util.tree_map(
                lambda x, u: x.at[i].add((scale * u[i]).astype(x.dtype)), params, updates)
            opt_state = tree_where(woke, new_opt, opt_state)

        def average(x):
            avg = (x[i] + x[j]) * jnp.asarray(0.5, x.dtype)
            return x.at[i].set(avg).at[j].set(avg)

        params = jax.tree_util.tree_map(average, params)
        pair = ((woke | (jnp.arange(n) == j)) & (i != j)).astype(jnp.float32)
        aux = {"lr": jnp.asarray(schedule(ctx.step), jnp.float32),
               "bytes_sent": pair * jnp.float32(model_bytes(state.params)),
               "tick_s": dt,
               "updates_applied": woke.astype(jnp.float32) * (1.0 if opt is not None else 0.0),
               "wakeups": woke.astype(jnp.float32)}
        return GossipClockState(params, opt_state, _kahan(state.clock, dt)), aux

    hp = record_hyperparams(learning_rate=learning_rate, rate=rate, momentum=momentum, nesterov=nesterov,
                            weight_decay=weight_decay, optimizer=optimizer)
    return Algorithm("randomized_gossip", init, step, lambda s: s.params, lambda s: s.params, hp,
                     frozenset({"connected", "static"}), capabilities=frozenset({"async"}))
