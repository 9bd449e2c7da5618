"""Dynamic model averaging (Kamp et al. 2018, arXiv 1807.03210; docs/algorithms.md#dynamic_averaging).

m learners and a coordinator share a reference model r (initially the common start model x⁰). Every round each
learner takes one local step; every ``b`` rounds each learner checks its local condition ``‖x_i − r‖² ≤ Δ``
(squared Euclidean distance of the flattened parameters) and uploads its model to the coordinator on a violation.

* ``protocol="basic"``: any violation triggers a full synchronisation: all models are averaged, the average is sent
  to every learner and becomes the new reference, ``r ← x̄``.
* ``protocol="partial"`` (balancing): the balancing set B starts as the violators. If ``‖mean_B − r‖² ≤ Δ`` the
  coordinator sends ``mean_B`` to the members of B only (r unchanged); otherwise it queries ``2|B|`` more learners,
  sampled uniformly from the rest, and retries; once the augmented set would hold at least m/2 learners (or B is
  already all m learners) it performs a full synchronisation instead. The coordinator's reference point is unset
  until the first full synchronisation (the learners check against the start model x⁰, the coordinator has none),
  so no balancing succeeds before it: the first violation always escalates to a full synchronisation. This follows
  the reference implementation, fraunhofer-iais/dlplatform ``DLplatform/synchronizing/dynamic.py``
  (``DynamicHedgeSync``: ``refPoint=None`` at line 93, ``dist = delta + 1.0`` while it is None at lines 157-158,
  ``refPoint`` set by the full sync at line 152, the hedge to a full sync at line 168; commit 7ce451b0).

While every local condition holds, the consensus distance satisfies ``Ξ² ≤ (1/m) Σ_i ‖x_i − r‖² ≤ Δ``; the protocol
re-establishes all local conditions at every check. With ``Δ = 0`` every learner that moved violates, so the
protocol is periodic averaging every ``b`` rounds (``local_sgd(local_steps=b, weighted=False)``).

Communication is counted in model transfers: one upload per violation, one upload per learner queried while
balancing, one download per learner that receives an average (a full sync costs m uploads + m downloads). The
final set F that receives an average (B, or all learners) is exactly the set of learners that uploaded, so each
learner in F uploads once and downloads once per resolved violation.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from simdl.algorithms.base import (
    Algorithm,
    as_schedule,
    check_nonneg,
    model_bytes,
    record_hyperparams,
    tree_add,
    tree_where,
)
from simdl.algorithms.local import local_optimizer, vmapped_init, vmapped_update

PROTOCOLS = ("basic", "partial")

_CONTINUE, _PARTIAL, _FULL = 0, 1, 2


class DynamicAveragingState(NamedTuple):
    """State of :func:`dynamic_averaging`.

    Attributes:
      params: stacked worker models (leading axis m).
      opt_state: stacked local optimizer state (momentum buffers stay local, never averaged).
      reference: the reference model r, ONE model (same structure as a worker's params, no worker axis). The
        learners' reference from the start; the coordinator's (for balancing) only once ``full_syncs > 0``.
      uploads: int32 ``(m,)``, cumulative models each learner uploaded to the coordinator.
      downloads: int32 ``(m,)``, cumulative averaged models each learner received.
      violations: int32 scalar, cumulative local-condition violations (learner-checks with ``‖x_i − r‖² > Δ``).
      partial_syncs: int32 scalar, cumulative balancing resolutions (average sent to a strict subset, r unchanged).
      full_syncs: int32 scalar, cumulative full synchronisations (r ← average).
    """

    params: Any
    opt_state: Any
    reference: Any
    uploads: jax.Array
    downloads: jax.Array
    violations: jax.Array
    partial_syncs: jax.Array
    full_syncs: jax.Array


def model_transfers(state: DynamicAveragingState) -> jax.Array:
    """Cumulative number of model transfers (uploads + downloads) recorded in ``state``. int32 scalar."""
    return jnp.sum(state.uploads) + jnp.sum(state.downloads)


def squared_distances(stacked, reference) -> jax.Array:
    """``‖x_i − r‖²`` for every worker i, summed over all leaves, in float32.

    Args:
      stacked: pytree with leading worker axis m.
      reference: pytree of the same structure without the worker axis.

    Returns:
      float32 ``(m,)``.
    """

    def one(x, r):
        d = (x - r[None]).astype(jnp.float32)
        return jnp.sum(jnp.square(d).reshape(x.shape[0], -1), axis=1)

    return sum(jax.tree_util.tree_leaves(jax.tree_util.tree_map(one, stacked, reference)))


def squared_distance(a, b) -> jax.Array:
    """``‖a − b‖²`` of two (unstacked) pytrees, float32 scalar."""
    parts = jax.tree_util.tree_map(lambda x, y: jnp.sum(jnp.square((x - y).astype(jnp.float32))), a, b)
    return sum(jax.tree_util.tree_leaves(parts))


def masked_mean(stacked, mask) -> Any:
    """Mean over the workers selected by the boolean ``(m,)`` ``mask`` (at least one selected): one model."""
    count = jnp.sum(mask)

    def one(x):
        m = mask.reshape((-1,) + (1,) * (x.ndim - 1))
        return (jnp.sum(jnp.where(m, x, jnp.zeros_like(x)), axis=0) / count).astype(x.dtype)

    return jax.tree_util.tree_map(one, stacked)


def full_mean(stacked) -> Any:
    """Uniform mean over the worker axis (the same reduction as ``simdl.mixing.mean_mix``): one model."""
    return jax.tree_util.tree_map(lambda x: jnp.mean(x, axis=0), stacked)


def sample_uniform(key, candidates, k) -> jax.Array:
    """Choose ``min(k, |candidates|)`` workers uniformly at random, without replacement, among ``candidates``.

    Args:
      key: PRNG key.
      candidates: bool ``(m,)``.
      k: int scalar (may be traced).

    Returns:
      bool ``(m,)``, the chosen workers (a subset of ``candidates``).
    """
    m = candidates.shape[0]
    order = jax.random.permutation(key, m)
    cand = candidates[order]
    rank = jnp.cumsum(cand.astype(jnp.int32))
    chosen = jnp.logical_and(cand, rank <= k)
    return jnp.zeros((m,), bool).at[order].set(chosen)


def balancing_set(stacked, reference, violators, delta: float, key, reference_set=True):
    """Resolve a violation with the partial (balancing) protocol.

    Starting from ``B = violators`` (at least one): if B holds all m learners → full sync; elif
    ``‖mean_B − r‖² ≤ Δ`` → partial sync of B; elif ``|B| + 2|B| ≥ m/2`` → full sync; else add ``2|B|`` learners
    sampled uniformly from the rest (key ``fold_in(key, round)``) and retry. A ``lax.while_loop`` of at most
    ``⌈log₃(m/2)⌉ + 1`` rounds (the set triples each round). While ``reference_set`` is False (the coordinator has
    no reference point yet) the distance test fails by definition (dlplatform ``DynamicHedgeSync.evaluate`` sets
    ``dist = delta + 1.0``), so the set grows until the hedge triggers a full sync.

    Args:
      reference_set: bool scalar (may be traced), whether the coordinator's reference point ``reference`` is set.

    Returns:
      ``(members, mean_b, full)``: bool ``(m,)`` final balancing set B, its mean (one model; the value sent to B),
      bool scalar full (when True the caller averages all learners instead).
    """
    m = violators.shape[0]

    def status(members, mean_b):
        size = jnp.sum(members.astype(jnp.int32))
        ok = reference_set & (squared_distance(mean_b, reference) <= delta)
        full = (size == m) | (~ok & (6 * size >= m))  # |B| + 2|B| >= m/2, in integers
        # an empty set (only reachable when both lax.cond branches run, e.g. under vmap) stops as a no-op
        return jnp.where(full, _FULL, jnp.where(ok | (size == 0), _PARTIAL, _CONTINUE))

    def cond(carry):
        return carry[2] == _CONTINUE

    def body(carry):
        members, _, _, rnd = carry
        size = jnp.sum(members.astype(jnp.int32))
        members = members | sample_uniform(jax.random.fold_in(key, rnd), ~members, 2 * size)
        mean_b = masked_mean(stacked, members)
        return members, mean_b, status(members, mean_b), rnd + 1

    mean0 = masked_mean(stacked, violators)
    init = (violators, mean0, status(violators, mean0), jnp.int32(0))
    members, mean_b, st, _ = jax.lax.while_loop(cond, body, init)
    return members, mean_b, st == _FULL


def _broadcast(model, n: int):
    return jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x[None], (n,) + x.shape), model)


def dynamic_averaging(
    learning_rate,
    momentum: float = 0.0,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    delta: float = 1.0,
    check_every: int = 1,
    protocol: str = "basic",
    optimizer: optax.GradientTransformation | None = None,
    weight_decay_mask=None,
) -> Algorithm:
    """Dynamic model averaging (Kamp et al. 2018, arXiv 1807.03210), see the module docstring.

    Per step: every worker takes one local optimizer step; when ``(t + 1) mod b == 0`` each checks
    ``‖x_i − r‖² ≤ Δ``; violations are resolved by the ``protocol`` (basic: full sync; partial: balancing).
    All of it is vectorized over the worker axis; the resolution runs under ``lax.cond`` (only on steps with a
    violation) and the balancing loop is a ``lax.while_loop``; sampling uses ``ctx.key``.

    Args:
      learning_rate: float or optax schedule.
      momentum: local momentum β of the local optimizer (see ``dsgd``); 0 = plain SGD; momentum buffers stay local.
      nesterov: Nesterov local momentum.
      weight_decay: λ, added to the gradient before momentum.
      optimizer: optional optax transformation used as the local optimizer instead of SGD.
      weight_decay_mask: optional pytree/callable of bools: which leaves get weight decay.
      delta: the divergence threshold Δ ≥ 0 on the squared distance ``‖x_i − r‖²`` (parameter units squared). The
        paper tunes Δ per experiment (there is no universal default); 1.0 is a placeholder. Δ = 0 is periodic
        averaging every ``check_every`` steps.
      check_every: b ≥ 1, local conditions are checked every b steps (b = 1: every step, the paper's protocol
        with its mini-batch rounds).
      protocol: ``"basic"`` (any violation → full sync) or ``"partial"`` (balancing, then full sync; no balancing
        before the first full sync, which sets the coordinator's reference point).

    Returns:
      An :class:`Algorithm` with state :class:`DynamicAveragingState`. ``aux`` per step: ``lr``; ``bytes_sent``
      float32 ``(m,)`` = models uploaded by each learner × model bytes (the coordinator's downloads are not sent
      by a worker); ``bytes_received`` float32 ``(m,)`` = averages received × model bytes; ``model_transfers``
      float32 scalar = uploads + downloads this step (so ``Σ(bytes_sent + bytes_received) = model_transfers ×
      model bytes``); ``violations``, ``partial_syncs``, ``full_syncs`` float32 scalars (this step's counts; the
      runner's history accumulates every aux counter, so these become cumulative columns).

    Raises:
      ValueError: Δ negative or not finite, ``check_every`` not an integer ≥ 1, unknown ``protocol``, or invalid
        local optimizer settings.
    """
    delta = check_nonneg("delta", delta)
    if isinstance(check_every, bool) or int(check_every) != check_every or check_every < 1:
        raise ValueError(f"check_every must be an integer >= 1, got {check_every!r}")
    check_every = int(check_every)
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    opt = local_optimizer(learning_rate, momentum, nesterov, weight_decay, optimizer, weight_decay_mask)
    schedule = as_schedule(learning_rate)

    def init(params, ctx):
        n = jax.tree_util.tree_leaves(params)[0].shape[0]
        reference = jax.tree_util.tree_map(lambda x: x[0], params)
        # distinct buffers: the runner donates the state, and one buffer may not be donated twice
        return DynamicAveragingState(params, vmapped_init(opt, params), reference, jnp.zeros((n,), jnp.int32),
                                     jnp.zeros((n,), jnp.int32), jnp.zeros((), jnp.int32),
                                     jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))

    def resolve(params, reference, violators, key, reference_set):
        n = violators.shape[0]
        avg = full_mean(params)
        if protocol == "basic":
            full = jnp.bool_(True)
            members = jnp.ones((n,), bool)
            target = avg
        else:
            members, mean_b, full = balancing_set(params, reference, violators, delta, key, reference_set)
            target = tree_where(full, avg, mean_b)
        members = members | full
        new_params = tree_where(members, _broadcast(target, n), params)
        new_reference = tree_where(full, avg, reference)
        return new_params, new_reference, members, full

    def keep(params, reference, violators, key, reference_set):
        return params, reference, jnp.zeros_like(violators), jnp.bool_(False)

    def step(state, grads, ctx):
        updates, opt_state = vmapped_update(opt, grads, state.opt_state, state.params)
        params = tree_add(state.params, updates)
        check = (ctx.step + 1) % check_every == 0
        violators = check & (squared_distances(params, state.reference) > delta)
        any_violation = jnp.any(violators)
        # the coordinator's reference point is set by the first full sync (dlplatform dynamic.py:152)
        reference_set = state.full_syncs > 0
        params, reference, moved, full = jax.lax.cond(any_violation, resolve, keep, params, state.reference,
                                                      violators, ctx.key, reference_set)
        moved_i = moved.astype(jnp.int32)
        partial = any_violation & ~full
        mb = jnp.float32(model_bytes(state.params))
        new_state = DynamicAveragingState(
            params, opt_state, reference, state.uploads + moved_i, state.downloads + moved_i,
            state.violations + jnp.sum(violators.astype(jnp.int32)),
            state.partial_syncs + partial.astype(jnp.int32), state.full_syncs + full.astype(jnp.int32))
        moved_f = moved.astype(jnp.float32)
        aux = {
            "lr": schedule(ctx.step),
            "bytes_sent": moved_f * mb,
            "bytes_received": moved_f * mb,
            "model_transfers": 2.0 * jnp.sum(moved_f),
            "violations": jnp.sum(violators.astype(jnp.float32)),
            "partial_syncs": partial.astype(jnp.float32),
            "full_syncs": full.astype(jnp.float32),
        }
        return new_state, aux

    hp = record_hyperparams(learning_rate=learning_rate, momentum=momentum, nesterov=nesterov,
                            weight_decay=weight_decay,
                delta=delta, check_every=check_every, protocol=protocol, optimizer=optimizer)
    return Algorithm("dynamic_averaging", init, step, lambda s: s.params, lambda s: s.params, hp, frozenset())


__all__ = ["PROTOCOLS", "DynamicAveragingState", "balancing_set", "dynamic_averaging", "masked_mean",
           "model_transfers", "sample_uniform", "squared_distances"]
