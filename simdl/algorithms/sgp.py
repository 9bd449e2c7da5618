"""Stochastic Gradient Push (Assran et al. 2019, arXiv 1811.10792): push-sum gossip over directed, possibly
time-varying graphs (docs/algorithms.md#sgp).

Each worker keeps a push-sum numerator x_i and weight w_i (1 at start) and evaluates gradients at the de-biased
``z_i = x_i / w_i``. Per step t with a column-stochastic push matrix P_t (``P[i, j]`` = share of j's mass sent to i,
so the row is the receiver as in simdl's ``(W X)_i = Σ_j W_ij x_j``; columns sum to 1):

``x^½ = x − η D(z)`` (Algorithm 1), ``x ← P_t x^½``, ``w ← P_t w``, ``z = x / w``.

With ``rounds = R > 1`` the push-sum mixing is repeated R times per step, round r of step t with the push matrix of
graph index ``t·R + r`` (``x ← P_{tR+R−1} ⋯ P_{tR} x^½``, the same for w): a time-varying graph advances one graph per
round, as if every round were a step of its own, so consecutive rounds talk to different peers (on the one-peer
exponential graph with n = 2^τ, R = τ rounds average exactly). R = 1 (the SGP paper) is P_t.

On the one-peer exponential graph P_t is doubly stochastic, w stays 1 and SGP is ½/½ averaging after the local step.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from simdl.algorithms.base import Algorithm, as_schedule, check_momentum, model_bytes, record_hyperparams
from simdl.algorithms.local import local_optimizer, vmapped_init, vmapped_update
from simdl.mixing import sparse_mix

PUSH_WEIGHTS = ("topology", "out_degree")
STEP_ON = ("numerator", "debiased")
COLUMN_TOL = 1e-8
WEIGHT_BYTES = 4


class SGPState(NamedTuple):
    """State of SGP.

    Attributes:
      params: stacked push-sum numerators x (leading axis n).
      weight: float32 ``(n,)`` push-sum weights w (ones at start).
      opt_state: stacked local optimizer state (momentum buffers, local, never pushed).
    """

    params: Any
    weight: jax.Array
    opt_state: Any


def out_degree_push_matrix(weights: np.ndarray) -> np.ndarray:
    """Column-stochastic push matrix on the support of ``weights``: sender j splits its mass uniformly over itself and
    its out-neighbours, ``P[i, j] = 1 / (1 + outdeg_j)`` for each ``weights[i, j] != 0`` (i ≠ j) and ``P[j, j]``."""
    off = np.asarray(weights) != 0
    np.fill_diagonal(off, False)
    share = 1.0 / (1.0 + off.sum(axis=0))
    p = off * share[None, :]
    np.fill_diagonal(p, share)
    return p


def check_column_stochastic(p: np.ndarray, n: int, where: str) -> np.ndarray:
    """Return ``p`` as float64 if it is an (n, n) non-negative, finite, column-stochastic matrix, else raise.

    Raises:
      ValueError: wrong shape, NaN/Inf or negative entries, or a column whose sum differs from 1 by more than 1e-8.
    """
    p = np.asarray(p, dtype=np.float64)
    if p.shape != (n, n):
        raise ValueError(f"{where}: push matrix must have shape ({n}, {n}), got {p.shape}")
    if not np.all(np.isfinite(p)) or np.any(p < 0):
        raise ValueError(f"{where}: push matrix entries must be finite and >= 0")
    cols = p.sum(axis=0)
    worst = int(np.argmax(np.abs(cols - 1.0)))
    if abs(cols[worst] - 1.0) > COLUMN_TOL:
        raise ValueError(f"{where}: push-sum needs a column-stochastic matrix (each sender's shares sum to 1), but "
                         f"column {worst} sums to {float(cols[worst])!r}. Pass push_weights='out_degree' (each "
                         "worker splits its mass uniformly over itself and its out-neighbours) or a custom "
                         "column-stochastic matrix")
    return p


def _check_support(p: np.ndarray, topology, where: str) -> None:
    off = p != 0
    np.fill_diagonal(off, False)
    g = topology.graph
    for i, j in np.argwhere(off):
        if not g.has_edge(int(j), int(i)):
            raise ValueError(f"{where}: push matrix entry P[{i}, {j}] is non-zero but {topology.name} has no edge "
                             f"{j} -> {i}")


def push_matrices(topology, push_weights) -> tuple[np.ndarray, ...]:
    """The period of push matrices SGP uses on ``topology`` (validated, float64).

    Args:
      topology: a :class:`simdl.topologies.Topology`.
      push_weights: ``"topology"`` (its own ``weights_at(t)``), ``"out_degree"`` (see
        :func:`out_degree_push_matrix`, per step of the period), an (n, n) array, or a sequence of them
        (``P_t = seq[t % len(seq)]``).

    Raises:
      ValueError: unknown name, a matrix that is not column-stochastic, or entries off the topology's edges.
    """
    n = topology.n
    if isinstance(push_weights, str):
        if push_weights == "topology":
            mats = topology.period_weights
        elif push_weights == "out_degree":
            mats = tuple(out_degree_push_matrix(w) for w in topology.period_weights)
        else:
            raise ValueError(f"push_weights must be one of {PUSH_WEIGHTS} or an (n, n) array (or a sequence of "
                             f"them), got {push_weights!r}")
    else:
        try:
            arr = np.asarray(push_weights, dtype=np.float64)
        except (TypeError, ValueError):
            arr = None
        if arr is None or arr.ndim not in (2, 3) or arr.size == 0:
            shape = None if arr is None else arr.shape
            raise ValueError(f"push_weights must be one of {PUSH_WEIGHTS}, an (n, n) array or a non-empty sequence "
                             f"of them, got an array of shape {shape}")
        mats = (arr,) if arr.ndim == 2 else tuple(arr)
    where = topology.name if isinstance(push_weights, str) else "push_weights"
    out = []
    for t, m in enumerate(mats):
        p = check_column_stochastic(m, n, f"sgp on {where} (step {t})")
        _check_support(p, topology, f"sgp on {where} (step {t})")
        out.append(p)
    return tuple(out)


def _slot_tables(mats: tuple[np.ndarray, ...]):
    """Neighbour-slot tables (period, n, k) of row-wise in-neighbours; slot 0 = self (like ``neighbor_slots``)."""
    n = mats[0].shape[0]
    nbrs = []
    for p in mats:
        off = p != 0
        np.fill_diagonal(off, False)
        nbrs.append([np.flatnonzero(off[i]) for i in range(n)])
    k = 1 + max(len(v) for per in nbrs for v in per)
    index = np.repeat(np.arange(n, dtype=np.int32)[None, :, None], len(mats), axis=0).repeat(k, axis=2)
    weight = np.zeros((len(mats), n, k), np.float32)
    for t, (p, per) in enumerate(zip(mats, nbrs, strict=True)):
        weight[t, :, 0] = np.diag(p)
        for i, v in enumerate(per):
            index[t, i, 1:1 + len(v)] = v
            weight[t, i, 1:1 + len(v)] = p[i, v]
    return index, weight


def check_rounds(rounds) -> int:
    """Return ``rounds`` if it is an int ≥ 1 (bools refused), else raise a one-line ValueError naming it."""
    if isinstance(rounds, (bool, np.bool_)) or not isinstance(rounds, (int, np.integer)) or rounds < 1:
        raise ValueError(f"rounds (push-sum rounds per step) must be an int >= 1, got {rounds!r}")
    return int(rounds)


def _pusher(topology, push_weights, rounds: int = 1):
    """``(push(tree, ctx), out_degrees(ctx))`` for ``rounds`` push-sum rounds per step.

    ``push`` applies round r = 0..rounds−1 of step t with the push matrix of graph index ``t·rounds + r`` (modulo
    the period); ``out_degrees`` is the float32 ``(n,)`` number of messages each worker sends over those rounds.
    ``ctx.mix`` is used where it gives the right matrix (``"topology"`` with one round, or a static topology); else
    neighbour-slot tables built from the validated matrices.
    """
    mats = push_matrices(topology, push_weights)
    off = [(m != 0) & ~np.eye(m.shape[0], dtype=bool) for m in mats]
    degs = np.stack([o.sum(axis=0) for o in off]).astype(np.float32)
    period = len(mats)
    use_ctx = isinstance(push_weights, str) and push_weights == "topology" and (rounds == 1 or period == 1)
    if not use_ctx:
        index, weight = _slot_tables(mats)

    def graph(ctx, r):
        return (ctx.step * rounds + r) % period if rounds > 1 else ctx.step % period

    def one_round(tree, ctx, r):
        if use_ctx:
            return ctx.mix(tree)
        if period == 1:
            return sparse_mix(jnp.asarray(index[0]), jnp.asarray(weight[0]), tree)
        g = graph(ctx, r)
        return sparse_mix(jnp.asarray(index)[g], jnp.asarray(weight)[g], tree)

    def push(tree, ctx):
        for r in range(rounds):
            tree = one_round(tree, ctx, r)
        return tree

    def out_degrees(ctx):
        if period == 1:
            return jnp.asarray(degs[0] * rounds)
        total = jnp.asarray(degs)[graph(ctx, 0)]
        for r in range(1, rounds):
            total = total + jnp.asarray(degs)[graph(ctx, r)]
        return total

    return push, out_degrees


def _debias(x, w):
    return jax.tree_util.tree_map(lambda a: (a / w.reshape((-1,) + (1,) * (a.ndim - 1)).astype(a.dtype)), x)


def _scale(x, w):
    return jax.tree_util.tree_map(lambda a: (a * w.reshape((-1,) + (1,) * (a.ndim - 1)).astype(a.dtype)), x)


def sgp(learning_rate, momentum: float = 0.9, nesterov: bool = True, weight_decay: float = 0.0,
        push_weights="topology", step_on: str = "numerator",
        optimizer: optax.GradientTransformation | None = None, weight_decay_mask=None, rounds: int = 1) -> Algorithm:
    """Stochastic Gradient Push (Assran et al. 2019, arXiv 1811.10792).

    Defaults follow the paper's experiments: Nesterov momentum 0.9 (local buffer, PyTorch convention, Algorithm 3 of
    the paper's appendix), one push-sum round per step; use it on ``simdl.topologies.one_peer_exponential(n)``.
    (The RelaySGD authors, arXiv 2110.04175, ran their SGP baseline with ``rounds=2``.)

    Args:
      learning_rate: float or optax schedule.
      momentum: local momentum β of the local optimizer, which is fed the gradient at z.
      nesterov: Nesterov local momentum; only applies with ``momentum > 0``: ``momentum=0`` is plain SGD (or
        ``optimizer``) whatever ``nesterov`` says (recorded as ``nesterov=False``).
      weight_decay: λ, added to the gradient before momentum (weight decay uses z).
      optimizer: optional optax transformation used as the local optimizer instead of SGD.
      weight_decay_mask: optional pytree/callable of bools: which leaves get weight decay.
      push_weights: ``"topology"`` (default: the topology's ``weights_at(t)``, which must then be column-stochastic,
        e.g. any doubly stochastic W), ``"out_degree"`` (uniform split over self + out-neighbours of the topology's
        support, for general directed graphs), or custom column-stochastic (n, n) matrices (one, or a sequence used
        periodically) on the topology's edges.
      step_on: ``"numerator"`` (paper Algorithm 1: ``x^½ = x − η D``) or ``"debiased"`` (the authors' code:
        ``x^½ = w (z − η D)``); identical while w = 1.
      rounds: push-sum mixing rounds per step (int ≥ 1, default 1 as in the SGP paper). Each round mixes the pair
        (numerator, weight) once; round r of step t uses the push matrix of graph index ``t·rounds + r`` (of the
        topology's period for ``"topology"``/``"out_degree"``, of the sequence for custom matrices), so on a
        time-varying graph every round talks to the next graph's peers.

    Returns:
      :class:`Algorithm` with state :class:`SGPState` (``params``: numerators, leaves ``(n, ...)``; ``weight``:
      float32 ``(n,)``); ``query``/``params`` give z = x / w; each worker sends ``model bytes + 4`` (its weight) per
      out-edge of the round's push matrix, summed over the ``rounds`` rounds (``bytes_sent``, float32 ``(n,)``).

    Raises:
      ValueError: unknown ``step_on``/``push_weights`` name, ``rounds`` not an int ≥ 1, invalid optimizer settings
        (factory); at ``init``: push matrices that are not column-stochastic (the message suggests
        ``push_weights='out_degree'``) or with entries off the topology's edges.
    """
    if step_on not in STEP_ON:
        raise ValueError(f"step_on must be one of {STEP_ON}, got {step_on!r}")
    if isinstance(push_weights, str) and push_weights not in PUSH_WEIGHTS:
        raise ValueError(f"push_weights must be one of {PUSH_WEIGHTS} or an (n, n) array (or a sequence of them), "
                         f"got {push_weights!r}")
    rounds = check_rounds(rounds)
    nesterov = bool(nesterov) and check_momentum(momentum) > 0.0  # Nesterov with β = 0 is plain SGD
    opt = local_optimizer(learning_rate, momentum, nesterov, weight_decay, optimizer, weight_decay_mask)
    schedule = as_schedule(learning_rate)

    def init(params, ctx):
        push_matrices(ctx.topology, push_weights)
        n = jax.tree_util.tree_leaves(params)[0].shape[0]
        return SGPState(params, jnp.ones((n,), jnp.float32), vmapped_init(opt, params))

    def step(state, grads, ctx):
        push, out_degrees = _pusher(ctx.topology, push_weights, rounds)  # static tables, built at trace time
        z = _debias(state.params, state.weight)
        updates, opt_state = vmapped_update(opt, grads, state.opt_state, z)
        if step_on == "numerator":
            half = jax.tree_util.tree_map(jnp.add, state.params, updates)
        else:
            half = _scale(jax.tree_util.tree_map(jnp.add, z, updates), state.weight)
        x, w = push((half, state.weight), ctx)
        sent = out_degrees(ctx) * jnp.float32(model_bytes(state.params) + WEIGHT_BYTES)
        return SGPState(x, w, opt_state), {"lr": schedule(ctx.step), "bytes_sent": sent}

    def debiased(state):
        return _debias(state.params, state.weight)

    hp = record_hyperparams(learning_rate=learning_rate, momentum=momentum, nesterov=nesterov,
                            weight_decay=weight_decay,
                push_weights=push_weights if isinstance(push_weights, str) else "custom", step_on=step_on,
                optimizer=optimizer, rounds=rounds)
    return Algorithm("sgp", init, step, debiased, debiased, hp)
