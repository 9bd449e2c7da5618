"""Simulated faults: lost gossip messages, failed links and straggling workers, drawn afresh at every step.

A run with faults is an ordinary :func:`simdl.simulate` run with ``faults=Faults(...)`` (CLI: the ``[train]`` keys
``message_drop``, ``link_failure`` and ``straggler``). Each fault is an independent Bernoulli event per step:

* ``message_drop`` p: every directed gossip message ``j → i`` (an off-diagonal ``W_t[i, j] ≠ 0``) is lost with
  probability p, independently of everything else. What the receiver does with the weight of its lost messages is
  ``lost``:

  - ``"renormalize"`` (default, the RelaySGD authors' ``GossipMechanism.gossip_update``, arXiv 2110.04175,
    ``utils/communication.py`` of github.com/epfml/relaysgd): it averages over what it received,
    ``W'_t[i, j] = W_t[i, j] / Σ_{received j, incl. i} W_t[i, j]`` for the received j (and i), 0 for the lost
    ones; rows without a lost message are left as they are (the authors rescale only when the received weight
    is < 1). A worker that received nothing and has ``W_t[i, i] = 0`` keeps its own model.
  - ``"self"``: it puts the lost weight on its own model, ``W'_t[i, i] = W_t[i, i] + Σ_{lost j} W_t[i, j]``.

  Either way ``W'_t`` stays row-stochastic (each worker still takes a convex combination), but it is in general no
  longer column-stochastic: the worker mean is not preserved.
* ``link_failure`` p: every undirected edge ``{i, j}`` fails for the step with probability p, in both directions;
  ``W_t[i, j]`` moves to ``W'_t[i, i]`` and ``W_t[j, i]`` to ``W'_t[j, j]``. A symmetric doubly stochastic ``W_t``
  stays symmetric and doubly stochastic, so D-SGD still preserves the worker mean exactly: this is gossip on a
  random time-varying subgraph. (Failed links always use the ``"self"`` rule; with both faults on, the failed
  links' weight goes to the diagonal first, then dropped messages are treated by ``lost``.)
* ``straggler`` p: every worker skips its local computation for the step with probability p: the runner replaces
  its stochastic gradient by zeros before the algorithm's step (it still gossips). What that means depends on the
  local optimizer, because the algorithm cannot tell a zero gradient from a skipped one:

  - plain SGD, no weight decay: the local update is exactly 0, so the worker's model changes only by mixing;
  - weight decay λ: optax adds ``λ x`` to the zero gradient, so the model still decays by ``η λ x``;
  - heavy-ball momentum (PyTorch convention ``buf ← β buf + g``, ``x ← x − η buf``): the buffer decays to
    ``β buf`` and the worker still moves by ``−η β buf``; Nesterov (``D = g + β buf_new``) moves by ``−η β² buf``;
  - Adam: both moments decay (``m ← β1 m``, ``v ← β2 v``), the bias-correction counter advances, and the worker
    still moves by the (smaller) Adam step;
  - QGM: its transient momentum ``β m̂ + 0`` still moves the worker; gradient tracking still applies its tracker.

  The straggler's minibatch loss is still computed and included in the reported mean ``loss``.

All masks come from a dedicated stream folded out of the run's algorithm key (itself derived from ``seed``) and the
global step index only, so a faulty run is deterministic per seed and does not depend on ``eval_every`` (chunking)
or on resuming from a checkpoint. One step's gossip mask is shared by every ``ctx.mix`` call of that step (e.g.
gradient tracking's two mixed vectors see the same ``W'_t``). Probabilities of exactly 0 leave the run's code path
unchanged (bit-identical to a run without faults).

On a split topology (``Topology.is_split``, double binary trees) gossip sends every coordinate over one tree only;
each tree's message ``j → i`` is a message of its own and is dropped independently (the authors run one
``GossipMechanism`` per tree), renormalised over that tree's row; a failed link ``{i, j}`` fails on every tree that
uses it.

Gossip faults (``message_drop``, ``link_failure``) act on the runtime's communication channel, ``Context.mix``
(``W'_t X``) and ``Context.mix_delta`` (``(W'_t − I) X`` from neighbour differences, which ``d2`` and
``exact_diffusion`` integrate; exact diffusion uses ``(I + W'_t)/2``). Algorithms that communicate otherwise are
refused (:func:`check_algorithm`): ``relaysgd``, ``relaysum_grad`` and ``relaysum_mix`` (tree relays with their own
``drop_prob`` option), ``allreduce``, ``local_sgd``, ``model_averaging_clr`` and ``dynamic_averaging`` (exact
averages, no gossip). D² and exact diffusion keep their rule with ``W'_t`` in place of W, as the RelaySGD authors'
D² baseline does under drops (``algorithms.py``, ``d2``: ``y = x + u + c``, one faulty ``gossip_update``,
``c ← mixed − x − u``): the correction integrates exactly what was mixed. Their exactness needs a doubly stochastic
``W'_t``, which link failures on a symmetric W keep and message drops do not. ``sgp`` (push-sum) is supported for
``message_drop`` with ``lost="renormalize"`` when it mixes through ``ctx.mix`` (``push_weights="topology"``, one
round per step on a time-varying graph): the receiver renormalises the pair (numerator, weight) over what it
received, so ``z_i = Σ_recv P_ij x_j / Σ_recv P_ij w_j``; with ``w = 1`` and a doubly stochastic P (the one-peer
exponential graph) this is the authors' ``push_sum`` with drops (a worker whose message was lost keeps its own
model). It is refused with ``link_failure`` or ``lost="self"``, which move weight onto the receiver and break the
column-stochastic push. Supported: ``dsgd``, ``dpsgd``, ``cdsgd``, ``cdmsgd``, ``qg_dsgdm``, ``qg_adam``,
``choco_sgd``, ``gradient_tracking``, ``d2``, ``exact_diffusion``, ``sgp`` (as above) and any user algorithm that
communicates with ``ctx.mix`` or ``ctx.mix_delta``. Note that gradient tracking's invariant (worker mean of the
correction = 0) needs a doubly stochastic ``W'_t`` too: it survives link failures on a symmetric W but not message
drops. Straggler faults work with every algorithm.

Partial participation (:mod:`simdl.participation`) uses the same ``"renormalize"`` rule for the messages of
inactive workers, on top of these faults (the step's ``W'_t`` renormalised over the active workers).

Accounting: ``bytes_per_worker`` still counts every attempted send (a lost message was sent). With faults the history
gains cumulative counters (mean over workers): ``messages_lost`` (incoming messages lost, gossip faults) and
``straggler_steps`` (steps the worker skipped).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from simdl.mixing.dense import dense_mix
from simdl.mixing.difference import slot_difference
from simdl.mixing.mixer import split_map
from simdl.mixing.sparse import sparse_mix

#: ``fold_in`` value of the fault stream; above every int32 step index, so it never equals a step's ``ctx.key``.
FAULT_STREAM = 0xFA17F417

#: Config keys (``[train]`` table) of the three fault probabilities.
KEYS = ("message_drop", "link_failure", "straggler")

#: What a receiver does with the weight of lost messages (:attr:`Faults.lost`); the first is the default.
LOST = ("renormalize", "self")

#: ``[train]`` config key of :attr:`Faults.lost`.
LOST_KEY = "message_lost"

#: Algorithms refused with some gossip faults although they may call ``ctx.mix``, with the reason. ``sgp`` is
#: refused only with ``link_failure`` or ``lost="self"`` (see the module docstring).
REFUSED = {"sgp": "push-sum (SGP) needs column-stochastic push matrices; a failed link or lost weight put on the "
                  "receiver (lost='self') leaves W_t only row-stochastic, so its de-biasing weights would be wrong "
                  "(message_drop with lost='renormalize' is supported)"}

#: Why some built-ins do not mix through ``ctx.mix`` (added to the refusal message).
_HINTS = {"relaysgd": "use its drop_prob option for lost messages", "relaysum_grad": "use its drop_prob option",
          "relaysum_mix": "use its drop_prob option",
          "allreduce": "it averages exactly", "local_sgd": "it averages exactly",
          "model_averaging_clr": "it averages exactly", "dynamic_averaging": "it averages exactly via a coordinator",
          "sgp": "message drops need push_weights='topology' and rounds=1 on a time-varying graph"}

GOSSIP_FAULT_ALGORITHMS = ("dsgd", "dpsgd", "cdsgd", "cdmsgd", "qg_dsgdm", "qg_adam", "choco_sgd",
                           "gradient_tracking", "d2", "exact_diffusion", "sgp")


class Faults(NamedTuple):
    """Per-step fault probabilities (each in [0, 1]; 0 = that fault is off).

    Attributes:
      message_drop: probability that each directed gossip message ``j → i`` is lost.
      link_failure: probability that each undirected edge fails for the step (both directions; both ends keep it).
      straggler: probability that each worker skips its local update (its gradient is replaced by zeros).
      lost: what a receiver does with the weight of lost messages: ``"renormalize"`` (default, the RelaySGD
        authors' rule: average over the messages received, ``W'[i, j] = W[i, j] / Σ_{received j incl. i} W[i, j]``)
        or ``"self"`` (add the lost weight to its own model). Checked by :func:`as_faults` (``ValueError``).
    """

    message_drop: float = 0.0
    link_failure: float = 0.0
    straggler: float = 0.0
    lost: str = "renormalize"

    @property
    def gossip(self) -> bool:
        """Whether any gossip fault (message drop or link failure) is on."""
        return self.message_drop > 0 or self.link_failure > 0

    @property
    def active(self) -> bool:
        """Whether any fault is on."""
        return self.gossip or self.straggler > 0


def check_lost(lost) -> str:
    """Return ``lost`` if it is one of :data:`LOST`, else raise a one-line ValueError naming it."""
    if not isinstance(lost, str) or lost not in LOST:
        raise ValueError(f"lost (what a receiver does with lost messages' weight) must be one of {LOST}, "
                         f"got {lost!r}")
    return lost


def as_faults(spec) -> Faults | None:
    """Normalise ``spec`` (``None``, a :class:`Faults`, or a mapping with keys from :data:`KEYS` and ``"lost"``) and
    validate it.

    Returns:
      A :class:`Faults` of Python floats (and ``lost``), or ``None`` when every probability is 0 (the fault-free
      code path).

    Raises:
      ValueError: unknown keys (valid ones listed), a probability that is not a finite number in [0, 1], or
        ``lost`` not in :data:`LOST`.
    """
    if spec is None:
        return None
    if isinstance(spec, Faults):
        items = spec._asdict()
    elif isinstance(spec, dict):
        unknown = sorted(set(spec) - set(KEYS) - {"lost"})
        if unknown:
            raise ValueError(f"unknown fault key(s) {unknown}; valid: {', '.join(KEYS)}, lost")
        items = dict(spec)
    else:
        raise ValueError(f"faults must be None, a simdl.faults.Faults or a dict with keys {KEYS} (and 'lost'), "
                         f"got {spec!r}")
    out = {"lost": check_lost(items.get("lost", LOST[0]))}
    for k in KEYS:
        v = items.get(k, 0.0)
        try:
            p = float(v) if not isinstance(v, bool) else float("nan")
        except (TypeError, ValueError):
            p = float("nan")
        if not (np.isfinite(p) and 0.0 <= p <= 1.0):
            raise ValueError(f"fault probability {k} must be a number in [0, 1], got {v!r}")
        out[k] = p
    f = Faults(**out)
    return f if f.active else None


def from_config(train: dict) -> Faults | None:
    """The :class:`Faults` of a ``[train]`` table (missing probabilities = 0; ``message_lost`` = :attr:`Faults.lost`,
    default ``"renormalize"``); ``None`` when all probabilities are 0. Raises ValueError like :func:`as_faults`."""
    spec = {k: train[k] for k in KEYS if k in train}
    if LOST_KEY in train:
        spec["lost"] = train[LOST_KEY]
    return as_faults(spec)


# --------------------------------------------------------------------------- randomness


def step_uniforms(alg_key: jax.Array, step, size: int) -> jax.Array:
    """float32 ``(size,)`` uniforms in [0, 1) for the faults of global step ``step``: a pure function of the run's
    algorithm key and the step index (so independent of chunking), from a stream disjoint from every ``ctx.key``
    (see :data:`FAULT_STREAM`). One draw per step: random-bit generation is costly to compile."""
    return jax.random.uniform(jax.random.fold_in(jax.random.fold_in(alg_key, FAULT_STREAM), step), (size,))


def straggler_mask(u: jax.Array, p: float) -> jax.Array:
    """bool ``(n,)`` from uniforms ``u`` ``(n,)``: True where the worker computes its gradient, False where it
    straggles (probability p)."""
    return u >= p


def zero_stragglers(grads, working: jax.Array):
    """Replace the stacked gradients of workers with ``working[i] == False`` by zeros (same shapes/dtypes)."""

    def one(g):
        m = working.reshape((-1,) + (1,) * (g.ndim - 1))
        return jnp.where(m, g, jnp.zeros_like(g))

    return jax.tree_util.tree_map(one, grads)


# --------------------------------------------------------------------------- faulty gossip


def _edge_ids(index: np.ndarray, weight: np.ndarray, table: dict | None = None) -> tuple[np.ndarray, int]:
    """Undirected edge id of every neighbour slot (``-1`` for slot 0 and empty slots) and the number of edges
    (ids from ``table``, extended in place, when given: shared by the trees of a split topology)."""
    n, k = index.shape
    ids = np.full((n, k), -1, np.int32)
    table = {} if table is None else table
    for i in range(n):
        for s in range(1, k):
            if weight[i, s] == 0:
                continue
            j = int(index[i, s])
            ids[i, s] = table.setdefault((min(i, j), max(i, j)), len(table))
    return ids, len(table)


@dataclass(frozen=True, eq=False)
class FaultyGossip:
    """Gossip with lost messages / failed links; static neighbour-slot tables of a topology, stacked over its period
    (or over its trees when it is split).

    Every method takes ``u``, float ``(n_uniforms,)`` uniforms in [0, 1) drawn for the step (the runner uses
    :func:`step_uniforms`): the first ``parts·n·k`` decide the directed messages (slot ``(i, s)`` of tree t is lost
    when ``u[(t·n + i)·k + s] < message_drop``; t = 0 when not split), the next ``n_edges`` the undirected edges
    (edge e fails when ``u[parts·n·k + e] < link_failure``); a part is absent when its fault is off.

    Attributes:
      faults: the :class:`Faults` (``message_drop``, ``link_failure`` and ``lost`` are used here).
      n: workers.
      period: the topology's period (1 when split).
      index: int32 ``(G, n, k)`` neighbour slots (``Topology.neighbor_slots`` per period step, or
        ``Topology.tree_neighbor_slots`` per tree; slot 0 = self).
      weight: float32 ``(G, n, k)`` slot weights ``W_t[i, index[i, s]]``.
      edge: int32 ``(G, n, k)`` undirected edge id of each slot (−1 for self and padding; shared by the trees).
      n_edges: edges per period step (max over the period; at least 1).
      dense: apply ``W'_t`` as one dense matmul (high-degree graphs) instead of k slot gathers.
      parts: T, the trees of a split topology (coordinate k mixed by tree ``k mod T``), else 1.
    """

    faults: Faults
    n: int
    period: int
    index: np.ndarray
    weight: np.ndarray
    edge: np.ndarray
    n_edges: int
    dense: bool
    parts: int = 1

    @property
    def n_uniforms(self) -> int:
        """How many uniforms one step needs."""
        k = self.index.shape[2]
        return (self.parts * self.n * k if self.faults.message_drop > 0 else 0) + (
            self.n_edges if self.faults.link_failure > 0 else 0)

    def _tables(self, step):
        """``(index, weight, edge)``: ``(n, k)`` of the step, or ``(parts, n, k)`` of all trees when split."""
        if self.parts > 1:
            return jnp.asarray(self.index), jnp.asarray(self.weight), jnp.asarray(self.edge)
        if self.period == 1:
            return jnp.asarray(self.index[0]), jnp.asarray(self.weight[0]), jnp.asarray(self.edge[0])
        p = step % self.period
        return jnp.asarray(self.index)[p], jnp.asarray(self.weight)[p], jnp.asarray(self.edge)[p]

    def _masks(self, u: jax.Array, step) -> tuple[jax.Array, jax.Array]:
        """``(delivered, link_up)``, bool ``(..., n, k)``: the message of the slot was not dropped / its link is up
        (slot 0 always True)."""
        _, _, edge = self._tables(step)
        delivered = jnp.ones(edge.shape, bool)
        up = jnp.ones(edge.shape, bool)
        used = 0
        if self.faults.message_drop > 0:
            used = edge.size
            delivered = u[:used].reshape(edge.shape) >= self.faults.message_drop
        if self.faults.link_failure > 0:
            ok = u[used:used + self.n_edges] >= self.faults.link_failure
            up = jnp.where(edge >= 0, ok[jnp.maximum(edge, 0)], True)
        return delivered.at[..., 0].set(True), up.at[..., 0].set(True)

    def alive(self, u: jax.Array, step) -> jax.Array:
        """bool ``(n, k)`` (``(parts, n, k)`` when split): whether slot s of worker i delivers its message at
        ``step`` (slot 0 always does)."""
        _, _, edge = self._tables(step)
        ok = jnp.ones(edge.shape, bool)
        used = 0
        if self.faults.message_drop > 0:
            used = edge.size
            ok &= u[:used].reshape(edge.shape) >= self.faults.message_drop
        if self.faults.link_failure > 0:
            up = u[used:used + self.n_edges] >= self.faults.link_failure
            ok &= jnp.where(edge >= 0, up[jnp.maximum(edge, 0)], True)
        return ok.at[..., 0].set(True)

    def slots(self, u: jax.Array, step) -> tuple[jax.Array, jax.Array]:
        """``(index (n, k) int32, weight (n, k) float32)`` of ``W'_t`` (``(parts, n, k)`` when split).

        ``lost="self"``: lost slots zeroed, their weight on slot 0. ``lost="renormalize"``: failed links' weight on
        slot 0, then the dropped slots zeroed and every row that lost a message divided by its remaining weight
        (slot 0 set to 1 if nothing remains).
        """
        index, weight, _ = self._tables(step)
        if self.faults.lost == "self":
            kept = jnp.where(self.alive(u, step), weight, 0.0)
            return index, kept.at[..., 0].add(jnp.sum(weight - kept, axis=-1))
        delivered, up = self._masks(u, step)
        w = weight
        if self.faults.link_failure > 0:
            w = jnp.where(up, weight, 0.0)
            w = w.at[..., 0].add(jnp.sum(weight - w, axis=-1))
        if self.faults.message_drop > 0:
            kept = jnp.where(delivered, w, 0.0)
            total = jnp.sum(kept, axis=-1, keepdims=True)
            dropped = jnp.any(~delivered & (w != 0), axis=-1, keepdims=True)
            scaled = kept / jnp.where(total > 0, total, 1.0)
            w = jnp.where(dropped, scaled, kept)
            w = w.at[..., 0].set(jnp.where(total[..., 0] > 0, w[..., 0], 1.0))
        return index, w

    def matrix(self, u: jax.Array, step) -> jax.Array:
        """The effective mixing matrix ``W'_t``, float32 ``(n, n)`` (``(parts, n, n)``, one per tree, when split)."""
        index, weight = self.slots(u, step)
        if self.parts > 1:
            rows = jnp.broadcast_to(jnp.arange(self.n)[None, :, None], index.shape)
            part = jnp.broadcast_to(jnp.arange(self.parts)[:, None, None], index.shape)
            return jnp.zeros((self.parts, self.n, self.n), jnp.float32).at[part, rows, index].add(weight)
        rows = jnp.broadcast_to(jnp.arange(self.n)[:, None], index.shape)
        return jnp.zeros((self.n, self.n), jnp.float32).at[rows, index].add(weight)

    def lost(self, u: jax.Array, step) -> jax.Array:
        """float32 ``(n,)``: incoming messages each worker lost at ``step`` (summed over the trees when split)."""
        _, weight, _ = self._tables(step)
        per = jnp.sum((weight != 0) & ~self.alive(u, step), axis=-1).astype(jnp.float32)
        return per if self.parts == 1 else jnp.sum(per, axis=0)

    def __call__(self, tree, step, u):
        """``W'_t X`` along the worker axis of a stacked pytree (same shapes and dtypes); split topologies mix
        coordinate k with tree ``k mod T``'s ``W'_t`` (:func:`simdl.mixing.split_map`)."""
        if self.parts > 1:
            if self.dense:
                m = self.matrix(u, step)
                return split_map([lambda y, t=t: dense_mix(m[t], y) for t in range(self.parts)], tree)
            index, weight = self.slots(u, step)
            return split_map([lambda y, t=t: sparse_mix(index[t], weight[t], y) for t in range(self.parts)], tree)
        if self.dense:
            return dense_mix(self.matrix(u, step), tree)
        index, weight = self.slots(u, step)
        return sparse_mix(index, weight, tree)


    def difference(self, tree, step, u, scale: float = 1.0):
        """``scale · (W'_t − I) X`` from neighbour differences, ``scale · Σ_{j≠i} W'_t[i, j] (x_j − x_i)`` (the faulty
        counterpart of :func:`simdl.mixing.neighbor_difference`, for :meth:`simdl.algorithms.Context.mix_delta`).
        Dense graphs (:attr:`dense`) use ``scale · (W'_t X − X)`` instead of ``k`` slot gathers."""
        if self.dense:
            m = self.matrix(u, step)

            def dense(mt, y):
                return jnp.asarray(scale, y.dtype) * (dense_mix(mt, y) - y)

            if self.parts > 1:
                return split_map([partial(dense, m[t]) for t in range(self.parts)], tree)
            return jax.tree_util.tree_map(partial(dense, m), tree)
        index, weight = self.slots(u, step)
        if self.parts > 1:
            return split_map([partial(slot_difference, index[t], weight[t], scale=scale)
                              for t in range(self.parts)], tree)
        return jax.tree_util.tree_map(partial(slot_difference, index, weight, scale=scale), tree)


def faulty_gossip(topology, faults: Faults) -> FaultyGossip:
    """Build the :class:`FaultyGossip` of ``topology`` (static or time-varying; split: one table per tree) for
    ``faults``."""
    if topology.is_split:
        parts = len(topology.tree_weights)
        slots = [topology.tree_neighbor_slots(t) for t in range(parts)]
        table: dict = {}
        ids = [_edge_ids(i, w, table) for i, w in slots]
        period = 1
    else:
        parts = 1
        slots = [topology.neighbor_slots(s) for s in range(topology.period)]
        ids = [_edge_ids(i, w) for i, w in slots]
        period = topology.period
    index = np.stack([i for i, _ in slots]).astype(np.int32)
    weight = np.stack([w for _, w in slots]).astype(np.float32)
    edge = np.stack([e for e, _ in ids]).astype(np.int32)
    n_edges = max(1, max(m for _, m in ids))
    n, k = index.shape[1:]
    return FaultyGossip(faults, n, period, index, weight, edge, n_edges, dense=k > max(4, n // 4), parts=parts)


# --------------------------------------------------------------------------- what the runner calls


@dataclass(frozen=True, eq=False)
class Injector:
    """Applies :class:`Faults` inside one simulated step (built once per run by :func:`injector`).

    Per step it draws ``step_uniforms(alg_key, t, n_stragglers + gossip.n_uniforms)``: the first ``n_stragglers``
    (n when straggler faults are on, else 0) decide the stragglers, the rest go to :class:`FaultyGossip`.
    """

    faults: Faults
    n: int
    gossip: FaultyGossip | None

    @property
    def n_stragglers(self) -> int:
        return self.n if self.faults.straggler > 0 else 0

    def uniforms(self, alg_key: jax.Array, step) -> tuple[jax.Array, jax.Array]:
        """``(straggler uniforms (n_stragglers,), gossip uniforms (gossip.n_uniforms,))`` of global step ``step``."""
        m = self.n_stragglers
        u = step_uniforms(alg_key, step, m + (0 if self.gossip is None else self.gossip.n_uniforms))
        return u[:m], u[m:]

    def __call__(self, grads, mix, step, alg_key):
        """``(grads, mix, difference, counters)`` for global step ``step``: stragglers' gradients zeroed,
        ``mix(tree)`` replaced by the faulty ``W'_t`` and ``difference(tree, scale) = scale · (W'_t − I) tree``
        (:attr:`simdl.algorithms.Context.difference`; ``None`` when gossip faults are off), and the per-worker
        float32 ``(n,)`` counters ``straggler_steps`` / ``messages_lost`` of this step."""
        us, ug = self.uniforms(alg_key, step)
        counters, difference = {}, None
        if self.faults.straggler > 0:
            working = straggler_mask(us, self.faults.straggler)
            grads = zero_stragglers(grads, working)
            counters["straggler_steps"] = (~working).astype(jnp.float32)
        if self.gossip is not None:
            gossip = self.gossip
            mix = lambda tree: gossip(tree, step, ug)  # noqa: E731
            difference = lambda tree, scale=1.0: gossip.difference(tree, step, ug, scale)  # noqa: E731
            counters["messages_lost"] = gossip.lost(ug, step)
        return grads, mix, difference, counters


def injector(faults, topology) -> Injector | None:
    """The :class:`Injector` of ``faults`` on ``topology``, or ``None`` when no fault is on. Raises like
    :func:`as_faults`."""
    f = as_faults(faults)
    if f is None:
        return None
    return Injector(f, topology.n, faulty_gossip(topology, f) if f.gossip else None)


def check_algorithm(faults, algorithm, topology, task) -> None:
    """Refuse gossip faults for an algorithm that does not mix through ``ctx.mix`` / ``ctx.mix_delta`` (or is listed
    in :data:`REFUSED`; ``sgp`` only with ``link_failure`` or ``lost="self"``).

    Traces ``algorithm.init`` and one ``algorithm.step`` abstractly (``jax.eval_shape``: nothing is compiled or
    computed) with a ``ctx.mix`` and ``ctx.mix_delta`` that record whether they were called.

    Raises:
      ValueError: gossip faults requested for such an algorithm; the message says why and lists the supported ones.
    """
    f = as_faults(faults)
    if f is None or not f.gossip:
        return
    requested = ", ".join(k for k in ("message_drop", "link_failure") if getattr(f, k) > 0)
    supported = (f"gossip faults work with {', '.join(GOSSIP_FAULT_ALGORITHMS)} and any algorithm mixing via ctx.mix "
                 "or ctx.mix_delta")
    sgp_ok = f.link_failure == 0 and f.lost == "renormalize"
    if algorithm.name in REFUSED and not (algorithm.name == "sgp" and sgp_ok):
        if f.lost == "self" and f.link_failure == 0:
            requested += " with lost='self'"
        raise ValueError(f"{requested} cannot be simulated for {algorithm.name}: {REFUSED[algorithm.name]}; "
                         f"{supported}")
    if not mixes_through_ctx(algorithm, topology, task):
        extra = f" ({_HINTS[algorithm.name]})" if algorithm.name in _HINTS else ""
        raise ValueError(f"{requested} cannot be simulated for {algorithm.name}: it does not gossip through "
                         f"ctx.mix or ctx.mix_delta{extra}; {supported}")


def mixes_through_ctx(algorithm, topology, task) -> bool:
    """Whether one ``algorithm.step`` calls ``ctx.mix`` or ``ctx.mix_delta`` (traced abstractly with
    ``jax.eval_shape``: nothing is compiled or computed). Used to decide which algorithms gossip faults and partial
    participation (:mod:`simdl.participation`) can act on."""
    from simdl.algorithms.base import Context

    calls = []

    def record(tree):
        calls.append(1)
        return tree

    def record_difference(tree, scale=1.0):
        calls.append(1)
        return tree

    n = task.n_workers
    weights = np.asarray(task.worker_weights, np.float64)

    def trace():
        params = task.init_params(jax.random.PRNGKey(0))
        stacked = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (n,) + x.shape), params)
        key = jax.random.PRNGKey(0)
        state = algorithm.init(stacked, Context(jnp.int32(0), key, topology, lambda t: t, weights))
        calls.clear()
        ctx = Context(jnp.int32(0), key, topology, record, weights, record_difference)
        return algorithm.step(state, algorithm.query(state), ctx)

    jax.eval_shape(trace)
    return bool(calls)
