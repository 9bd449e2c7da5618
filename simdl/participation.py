"""Partial participation: which workers take part in each communication round.

A run with participation is an ordinary :func:`simdl.simulate` (or :func:`simdl.simulate_batch`) run with
``participation=...`` (CLI: a ``[participation]`` config section, :func:`from_config`). Three models:

* :func:`client_sampling` ``(k, weighted=False)``: every round, exactly k of the n workers take part (federated
  cohorts): k distinct workers uniformly at random, or (``weighted=True``) without replacement with probabilities
  proportional to the workers' data shares (``task.worker_weights``; Gumbel top-k: the first draw picks worker i with
  probability ``w_i``, the next among the others proportionally to their weights, and so on).
* :func:`markov` ``(p_leave, p_return)``: churn. Each worker is an on/off Markov chain over rounds: an active
  worker leaves with probability ``p_leave`` at the start of each round, an inactive one returns with probability
  ``p_return``. Round 0 has every worker on (or ``initial``). A round in which nobody is active can happen; then
  nothing changes in that round (no worker computes or sends; the reported loss is the mean over all workers).
* :func:`trace` ``(mask)``: availability from a ``(rounds, n)`` boolean array or a CSV file of 0/1 rows (one row per
  round, one column per worker): row r is round r. The trace must have a row for every round of the run and at
  least one active worker per row (checked before compiling, :func:`check_participation`).

What one round is: :attr:`simdl.algorithms.Algorithm.round_length` steps (local SGD's and FedAvg's H; 1 for gossip
algorithms, so a round is a step). Round ``r = t // round_length`` of global step t; the mask is constant within a
round. Masks are drawn inside the compiled step from a stream of their own,
``fold_in(fold_in(alg_key, PARTICIPATION_STREAM), r)`` (``alg_key``: the run's algorithm key, from ``seed``), so a
run is deterministic per seed and does not depend on ``eval_every`` (chunking) or on resuming from a checkpoint
(the Markov chain's on/off state is part of the run state and is checkpointed).

What an inactive worker does (the runner, :mod:`simdl.simulate`):

* Algorithms that declare ``"participation"`` in :attr:`~simdl.algorithms.Algorithm.capabilities` (``fedavg``,
  ``fedprox``, ``scaffold``) read ``ctx.active`` themselves (bool ``(n,)``) and do what they document; the runner
  does nothing else (their ``bytes_sent`` is what they sent).
* Algorithms that communicate only through ``ctx.mix`` / ``ctx.mix_delta`` (``dsgd``, ``dpsgd``, ``cdsgd``,
  ``cdmsgd``, ``qg_dsgdm``, ``qg_adam``, ``choco_sgd``, ``gradient_tracking``, ``d2``, ``exact_diffusion``, ``sgp``
  mixing through ``ctx.mix``, and user algorithms that do): an inactive worker neither computes nor sends. Its
  gradient is zeroed and every leaf of its state is reset to its value before the step (so it is exactly
  frozen), and gossip is renormalised over the active workers, the same rule as lost messages
  (:mod:`simdl.faults`, ``lost="renormalize"``): the message ``j → i`` exists only if both i and j are active; an
  active receiver averages over what it received,
  ``W'_t[i, j] = W_t[i, j] a_j / Σ_l W_t[i, l] a_l`` (``a``: the active mask, ``a_i = 1``); an inactive worker's
  row is the identity. With gossip faults both act: ``W_t`` above is the step's faulty matrix. Every state leaf
  must have the worker axis first (checked when the run is built).
* Other algorithms (relays, ``allreduce``, ``local_sgd``, ``model_averaging_clr``, ``dynamic_averaging``) are
  refused before compiling (:func:`check_algorithm`); for local SGD with client sampling use ``fedavg``.

Accounting. ``bytes_per_worker`` counts only messages that were sent: for the gossip algorithms above, worker j's
``bytes_sent`` is multiplied by ``a_j · (active out-neighbours of j) / (out-neighbours of j)`` in the step's graph
(inactive workers send nothing, nobody sends to an inactive worker; on split topologies the neighbours are the
union over the trees). The history gains ``active_steps``: the cumulative number of steps a worker was active,
mean over workers (so ``Δ active_steps / Δ step`` between two evaluations is the mean fraction of active workers);
the reported ``loss`` is the mean minibatch loss over the active workers. With a system model
(:mod:`simdl.systems`) an inactive worker takes no compute time and nobody waits for it: gossip receivers wait only
for their active senders, barriers only for the active workers, and FedAvg-like rounds last as long as their
slowest sampled client plus the upload and download.
"""

from __future__ import annotations

import csv
import hashlib
import math
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

#: ``fold_in`` value of the participation stream (disjoint from the faults' and the system model's streams).
PARTICIPATION_STREAM = 0x9A271C1B

#: The ``kind`` values of a ``[participation]`` table, with their keys (required, optional).
KINDS = {"client_sampling": ({"k"}, {"weighted"}), "markov": ({"p_leave", "p_return"}, set()),
         "trace": ({"path"}, set())}

#: Every key a ``[participation]`` table may have.
KEYS = ("kind", "k", "weighted", "p_leave", "p_return", "path")


class ClientSampling(NamedTuple):
    """k of the n workers per round (see :func:`client_sampling`).

    Attributes:
      k: int, 1 ≤ k ≤ n, workers per round.
      weighted: False: uniformly; True: proportionally to ``task.worker_weights``, without replacement.
    """

    k: int
    weighted: bool = False


class Markov(NamedTuple):
    """Churn: each worker an on/off Markov chain over rounds (see :func:`markov`).

    Attributes:
      p_leave: P(on → off) per round, in [0, 1].
      p_return: P(off → on) per round, in [0, 1].
      initial: bool ``(n,)`` state of round 0, or None (default: every worker on).
    """

    p_leave: float
    p_return: float
    initial: Any = None


class Trace(NamedTuple):
    """Availability from a trace (see :func:`trace`).

    Attributes:
      mask: bool numpy ``(rounds, n)``: ``mask[r, i]`` = worker i is active in round r.
      source: the CSV path it was read from, or None.
    """

    mask: np.ndarray
    source: str | None = None


def _prob(name: str, value) -> float:
    try:
        p = float(value) if not isinstance(value, (bool, np.bool_)) else math.nan
    except (TypeError, ValueError):
        p = math.nan
    if not (math.isfinite(p) and 0.0 <= p <= 1.0):
        raise ValueError(f"participation {name} must be a probability in [0, 1], got {value!r}")
    return p


def client_sampling(k: int, weighted: bool = False) -> ClientSampling:
    """Exactly ``k`` distinct workers per round (``weighted``: proportionally to the workers' data shares).

    Raises:
      ValueError: ``k`` not an integer ≥ 1 or ``weighted`` not a bool (``k > n`` is checked against the run by
        :func:`check_participation`).
    """
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"client_sampling k must be an integer >= 1 (workers per round), got {k!r}")
    if not isinstance(weighted, (bool, np.bool_)):
        raise ValueError(f"client_sampling weighted must be true or false, got {weighted!r}")
    return ClientSampling(int(k), bool(weighted))


def markov(p_leave: float, p_return: float, initial=None) -> Markov:
    """On/off churn with per-round probabilities ``p_leave`` (on → off) and ``p_return`` (off → on); ``initial``:
    bool ``(n,)`` state of round 0 (default: all on).

    Raises:
      ValueError: a probability outside [0, 1] (or not a number).
    """
    init = None
    if initial is not None:
        init = np.asarray(initial)
        if init.ndim != 1 or not np.all((init == 0) | (init == 1)):
            raise ValueError(f"markov initial must be an (n,) array of booleans (0/1), got {initial!r}")
        init = init.astype(bool)
    return Markov(_prob("p_leave", p_leave), _prob("p_return", p_return), init)


def _read_csv(path: Path) -> np.ndarray:
    try:
        text = path.read_text()
    except OSError as e:
        raise ValueError(f"participation trace {str(path)!r} cannot be read: {e.strerror or e}") from None
    rows = []
    for lineno, row in enumerate(csv.reader(text.splitlines()), 1):
        cells = [c.strip() for c in row]
        if not cells or all(c == "" for c in cells):
            continue
        bad = [c for c in cells if c not in ("0", "1")]
        if bad:
            raise ValueError(f"participation trace {str(path)!r} line {lineno}: {bad[0]!r}, expected 0 or 1 in "
                             "every column (one row per round, one column per worker)")
        rows.append([c == "1" for c in cells])
    if not rows:
        raise ValueError(f"participation trace {str(path)!r} has no rows")
    widths = sorted({len(r) for r in rows})
    if len(widths) > 1:
        raise ValueError(f"participation trace {str(path)!r}: rows have {widths} columns, expected the same number "
                         "(one per worker) in every row")
    return np.asarray(rows, bool)


def trace(mask) -> Trace:
    """Availability from a ``(rounds, n)`` bool-like array (0/1 or booleans) or the path (str or Path) of a CSV file
    of 0/1 rows, one per round (no header).

    Raises:
      ValueError: not 2-D, entries other than 0/1, an unreadable file or ragged rows (the shape against the run,
        and rows with no active worker, are checked by :func:`check_participation`).
    """
    source = None
    if isinstance(mask, (str, Path)):
        source = str(mask)
        m = _read_csv(Path(mask))
    else:
        m = np.asarray(mask)
        if m.ndim != 2:
            raise ValueError(f"participation trace must be a (rounds, n) array, got shape {m.shape}")
        if not np.all((m == 0) | (m == 1)):
            raise ValueError("participation trace entries must be booleans or 0/1")
        m = m.astype(bool)
    return Trace(m, source)


Spec = ClientSampling | Markov | Trace


def as_participation(spec) -> Spec | None:
    """``None``, a spec (:class:`ClientSampling`, :class:`Markov`, :class:`Trace`), or a dict (a
    ``[participation]`` table, :func:`from_config`). Raises ValueError for anything else."""
    if spec is None or isinstance(spec, (ClientSampling, Markov, Trace)):
        return spec
    if isinstance(spec, dict):
        return from_config(spec)
    raise ValueError("participation must be None, simdl.participation.client_sampling(k), markov(p_leave, p_return), "
                     f"trace(mask) or a dict with 'kind', got {spec!r}")


def from_config(table: dict | None, base_dir: str | Path | None = None) -> Spec | None:
    """The spec of a ``[participation]`` table, ``None`` without one.

    Keys: ``kind`` (``"client_sampling"``, ``"markov"`` or ``"trace"``) and its keys: ``k`` (int), ``weighted``
    (bool); ``p_leave``, ``p_return`` (numbers); ``path`` (a CSV file, relative paths from ``base_dir`` when given and
    the file is not found from the working directory).

    Raises:
      ValueError: not a table, an unknown kind, missing or unknown keys, or a bad value.
    """
    if table is None:
        return None
    if not isinstance(table, dict):
        raise ValueError(f"[participation] must be a table, got {table!r}")
    kind = table.get("kind")
    if kind not in KINDS:
        raise ValueError(f"[participation] kind must be one of {', '.join(KINDS)}, got {kind!r}")
    required, optional = KINDS[kind]
    keys = set(table) - {"kind"}
    missing, extra = sorted(required - keys), sorted(keys - required - optional)
    if missing or extra:
        what = f"missing {missing}" if missing else f"unknown {extra}"
        raise ValueError(f"[participation] kind = {kind!r} takes keys {sorted(required | optional)}; {what}")
    if kind == "client_sampling":
        return client_sampling(table["k"], table.get("weighted", False))
    if kind == "markov":
        return markov(table["p_leave"], table["p_return"])
    path = table["path"]
    if not isinstance(path, str):
        raise ValueError(f"[participation] path must be a string (a CSV file), got {path!r}")
    p = Path(path)
    if not p.exists() and base_dir is not None and not p.is_absolute() and (Path(base_dir) / p).exists():
        p = Path(base_dir) / p
    return trace(p)


def describe(spec) -> dict | None:
    """JSON-friendly record of a spec (``info["participation"]``, the run fingerprint); a trace by its shape,
    source and a SHA-1 of its mask."""
    spec = as_participation(spec)
    if spec is None:
        return None
    if isinstance(spec, ClientSampling):
        return {"kind": "client_sampling", "k": spec.k, "weighted": spec.weighted}
    if isinstance(spec, Markov):
        out = {"kind": "markov", "p_leave": spec.p_leave, "p_return": spec.p_return}
        if spec.initial is not None:
            out["initial"] = np.asarray(spec.initial, int).tolist()
        return out
    m = np.ascontiguousarray(spec.mask, bool)
    return {"kind": "trace", "rounds": int(m.shape[0]), "n": int(m.shape[1]), "source": spec.source,
            "sha1": hashlib.sha1(m.tobytes()).hexdigest()[:12]}


def rounds(steps: int, round_length: int = 1) -> int:
    """Communication rounds a run of ``steps`` steps touches: ``ceil(steps / round_length)``."""
    return -(-int(steps) // max(1, int(round_length)))


def check_participation(spec, n: int, steps: int, round_length: int = 1) -> Spec | None:
    """Validate ``spec`` for a run of ``steps`` steps by ``n`` workers (before anything is compiled).

    Returns:
      the normalised spec (a dict converted), or ``None``.

    Raises:
      ValueError (one line, naming the value and what is allowed): ``k > n`` or ``k < 1``, a probability outside
        [0, 1], a Markov ``initial`` of the wrong shape, a trace whose shape is not ``(rounds ≥ ceil(steps /
        round_length), n)``, or a trace row with no active worker.
    """
    spec = as_participation(spec)
    if spec is None:
        return None
    if isinstance(spec, ClientSampling):
        client_sampling(spec.k, spec.weighted)
        if spec.k > n:
            raise ValueError(f"client_sampling k={spec.k} is larger than the number of workers n={n}; "
                             f"use 1 <= k <= {n}")
    elif isinstance(spec, Markov):
        markov(spec.p_leave, spec.p_return, spec.initial)
        if spec.initial is not None and np.shape(spec.initial) != (n,):
            raise ValueError(f"markov initial must have shape ({n},) (one flag per worker), got "
                             f"{np.shape(spec.initial)}")
    else:
        m = np.asarray(spec.mask)
        where = f" ({spec.source})" if spec.source else ""
        need = rounds(steps, round_length)
        if m.ndim != 2 or m.shape[1] != n:
            raise ValueError(f"participation trace{where} has shape {m.shape}; expected (rounds, {n}): one column "
                             f"per worker")
        if m.shape[0] < need:
            raise ValueError(f"participation trace{where} has {m.shape[0]} rows but the run has {need} rounds "
                             f"({steps} steps of round_length {round_length}); give at least {need} rows")
        empty = np.flatnonzero(~m[:need].any(axis=1))
        if empty.size:
            raise ValueError(f"participation trace{where} row {int(empty[0])} has no active worker; every round "
                             "needs at least one")
    return spec


# --------------------------------------------------------------------------- the compiled sampler


def round_key(alg_key: jax.Array, r) -> jax.Array:
    """The PRNG key of round ``r``: ``fold_in(fold_in(alg_key, PARTICIPATION_STREAM), r)``."""
    return jax.random.fold_in(jax.random.fold_in(alg_key, PARTICIPATION_STREAM), r)


class MarkovState(NamedTuple):
    """The carried state of the churn chain: ``on`` bool ``(n,)`` (the mask of round ``round``), ``round`` int32."""

    on: jax.Array
    round: jax.Array


class Sampler:
    """The per-round masks of one run, pure and jittable (built by :func:`sampler`).

    ``init() -> state`` (a pytree: an unused int32 scalar for stateless models, :class:`MarkovState` for churn) and
    ``mask(state, alg_key, r) -> (state, active)`` with ``active`` bool ``(n,)`` the mask of round ``r`` (int32
    scalar, may be traced). Call it with non-decreasing r that grows by at most 1 between calls (every step of a run);
    for the stateless models it is a pure function of ``(alg_key, r)``.
    """

    def __init__(self, spec: Spec, n: int, worker_weights=None):
        self.spec = spec
        self.n = n
        #: Whether every worker is active in every round, known statically (``k = n``; churn with ``p_leave = 0``
        #: from all on; an all-true trace): the mask is then a constant, and the compiled run equals the run without
        #: participation bit for bit.
        self.everyone = (
            (isinstance(spec, ClientSampling) and spec.k >= n)
            or (isinstance(spec, Markov) and spec.p_leave == 0
                and (spec.initial is None or bool(np.all(spec.initial))))
            or (isinstance(spec, Trace) and bool(np.all(spec.mask))))
        if isinstance(spec, ClientSampling) and spec.weighted:
            w = np.asarray(worker_weights if worker_weights is not None else np.full(n, 1.0 / n), np.float64)
            with np.errstate(divide="ignore"):
                self.log_w = np.log(np.maximum(w, 0.0)).astype(np.float32)

    def init(self):
        if isinstance(self.spec, Markov):
            on = (np.ones(self.n, bool) if self.spec.initial is None else np.asarray(self.spec.initial, bool))
            return MarkovState(jnp.asarray(on), jnp.int32(0))
        return jnp.int32(0)  # stateless (a placeholder leaf, so checkpoints and shardings see an array)

    def _sample(self, key) -> jax.Array:
        k, n = self.spec.k, self.n
        if k >= n:
            return jnp.ones((n,), bool)
        if self.spec.weighted:  # Gumbel top-k: sampling without replacement proportionally to the weights
            score = jnp.asarray(self.log_w) + jax.random.gumbel(key, (n,), jnp.float32)
        else:
            score = jax.random.uniform(key, (n,))
        _, idx = jax.lax.top_k(score, k)
        return jnp.zeros((n,), bool).at[idx].set(True)

    def mask(self, state, alg_key, r):
        """``(state, active)``: the mask (bool ``(n,)``) of round ``r``."""
        spec = self.spec
        if self.everyone:
            return state, jnp.ones((self.n,), bool)
        if isinstance(spec, ClientSampling):
            return state, self._sample(round_key(alg_key, r))
        if isinstance(spec, Trace):
            return state, jnp.asarray(np.asarray(spec.mask, bool))[r]
        u = jax.random.uniform(round_key(alg_key, r), (self.n,))
        nxt = jnp.where(state.on, u >= spec.p_leave, u < spec.p_return)
        on = jnp.where(r != state.round, nxt, state.on)
        return MarkovState(on, jnp.asarray(r, jnp.int32)), on


def sampler(spec, n: int, worker_weights=None) -> Sampler | None:
    """The :class:`Sampler` of ``spec`` for n workers (``worker_weights``: ``(n,)`` data shares, for weighted
    client sampling), or ``None`` without participation."""
    spec = as_participation(spec)
    return None if spec is None else Sampler(spec, n, worker_weights)


# --------------------------------------------------------------------------- gossip over the active workers


def _bcast(v, x):
    """A per-worker ``(n,)`` vector shaped to broadcast against the stacked leaf ``x`` (in its dtype)."""
    return v.reshape((-1,) + (1,) * (x.ndim - 1)).astype(x.dtype)


def _inactive_mass(mix, tree, off, split: bool):
    """``(W((1 − a)X), W(1 − a))`` per leaf: what each receiver got from inactive senders, and their weight (mixed
    per coordinate on split topologies)."""
    gone = mix(jax.tree_util.tree_map(lambda x: _bcast(off, x) * x, tree))
    if split:
        lost = mix(jax.tree_util.tree_map(lambda x: jnp.broadcast_to(_bcast(off, x), x.shape), tree))
    else:
        lost_n = mix(off)
        lost = jax.tree_util.tree_map(lambda x: _bcast(lost_n, x), tree)
    return gone, lost


def renormalized_mix(mix, active: jax.Array, split: bool = False):
    """``mix'(tree) = W'_t X`` with ``W'_t`` the step's ``W_t`` (what ``mix`` applies) renormalised over the active
    workers (module docstring): ``(W'X)_i = (W X − W ((1 − a) X))_i / (1 − (W (1 − a))_i)`` for active i, ``x_i``
    for inactive i. With every worker active it returns ``mix(tree)`` bit for bit. ``split``: the topology mixes
    each coordinate with one of several trees (the normaliser is then mixed per coordinate)."""
    off = (~active).astype(jnp.float32)
    bcast = _bcast

    def apply(tree):
        mixed = mix(tree)
        gone, lost = _inactive_mass(mix, tree, off, split)

        def one(x, m, g, lw):
            s = jnp.asarray(1.0, x.dtype) - lw
            return jnp.where(bcast(active, x), (m - g) / jnp.where(s > 0, s, 1.0), x)

        return jax.tree_util.tree_map(one, tree, mixed, gone, lost)

    return apply


def renormalized_difference(mix, difference, active: jax.Array, split: bool = False):
    """``difference'(tree, scale) = scale · (W'_t − I) X`` for the renormalised ``W'_t`` of
    :func:`renormalized_mix`: for active i ``[D(X)_i − scale (W((1 − a)X)_i − x_i (W(1 − a))_i)] / (1 −
    (W(1 − a))_i)`` with ``D = difference`` (the step's ``scale · (W_t − I) X``), 0 for inactive i. Bit for bit
    ``difference(tree, scale)`` when every worker is active."""
    off = (~active).astype(jnp.float32)
    bcast = _bcast

    def apply(tree, scale=1.0):
        d = difference(tree, scale)
        gone, lost = _inactive_mass(mix, tree, off, split)

        def one(x, dx, g, lw):
            s = jnp.asarray(1.0, x.dtype) - lw
            corr = jnp.asarray(scale, x.dtype) * (g - x * lw)
            out = (dx - corr) / jnp.where(s > 0, s, 1.0)
            return jnp.where(bcast(active, x), out, jnp.zeros_like(x))

        return jax.tree_util.tree_map(one, tree, d, gone, lost)

    return apply


def out_neighbors(topology) -> np.ndarray:
    """bool ``(P, n, n)`` ``[phase, sender, receiver]``: the off-diagonal links of each period step of the topology
    (split topologies: one phase, the union over the trees)."""
    if topology.is_split:
        m = np.zeros((topology.n, topology.n), bool)
        for w in topology.tree_weights:
            m |= (np.asarray(w) != 0).T
        mats = [m]
    else:
        mats = [(np.asarray(w) != 0).T for w in topology.period_weights]
    out = np.stack(mats)
    for m in out:
        np.fill_diagonal(m, False)
    return out


def sent_fraction(links: np.ndarray, active: jax.Array, step) -> jax.Array:
    """float32 ``(n,)``: ``a_j · (active out-neighbours of j) / max(1, out-neighbours of j)`` at ``step``
    (``links``: :func:`out_neighbors`)."""
    a = active.astype(jnp.float32)
    lk = jnp.asarray(links[0] if links.shape[0] == 1 else links, jnp.float32)
    if links.shape[0] > 1:
        lk = lk[step % links.shape[0]]
    deg = jnp.maximum(jnp.sum(lk, axis=1), 1.0)
    return a * (lk @ a) / deg


# --------------------------------------------------------------------------- which algorithms


#: Built-ins refused with participation, with the reason.
_REFUSED = {"relaysgd": "tree relays need every worker", "relaysum_grad": "tree relays need every worker",
            "relaysum_mix": "tree relays need every worker", "allreduce": "it averages over all workers exactly",
            "local_sgd": "it averages over all workers exactly; use fedavg for local SGD with client sampling",
            "model_averaging_clr": "it averages over all workers exactly",
            "dynamic_averaging": "it averages over all workers via a coordinator"}

#: Built-ins that sample their cohort themselves (``"participation"`` capability).
COHORT_ALGORITHMS = ("fedavg", "fedprox", "scaffold")


def _supported() -> str:
    from simdl.faults import GOSSIP_FAULT_ALGORITHMS

    return (f"participation works with {', '.join(COHORT_ALGORITHMS)} (they read ctx.active), "
            f"{', '.join(GOSSIP_FAULT_ALGORITHMS)} and any algorithm that communicates only via ctx.mix or "
            "ctx.mix_delta")


def runner_handles(algorithm) -> bool:
    """Whether the runner freezes inactive workers and renormalises gossip for ``algorithm`` (False: the algorithm
    declares ``"participation"`` and reads ``ctx.active`` itself)."""
    return "participation" not in getattr(algorithm, "capabilities", frozenset())


def check_algorithm(spec, algorithm, topology, task) -> None:
    """Refuse participation for an algorithm that neither reads ``ctx.active`` (``"participation"`` capability) nor
    communicates through ``ctx.mix`` / ``ctx.mix_delta``, or whose state has a leaf without the leading worker axis
    (it could not be frozen). Traces abstractly (``jax.eval_shape``; nothing is compiled).

    Raises:
      ValueError: one line naming the algorithm and listing the supported ones.
    """
    if spec is None or not runner_handles(algorithm):
        return
    from simdl.faults import mixes_through_ctx

    what = describe(spec)["kind"]
    if algorithm.name in _REFUSED:
        raise ValueError(f"participation ({what}) cannot be simulated for {algorithm.name}: "
                         f"{_REFUSED[algorithm.name]}; {_supported()}")
    if not mixes_through_ctx(algorithm, topology, task):
        raise ValueError(f"participation ({what}) cannot be simulated for {algorithm.name}: it does not "
                         f"communicate through ctx.mix or ctx.mix_delta; {_supported()}")
    n = task.n_workers
    params = jax.eval_shape(task.init_params, jax.random.PRNGKey(0))
    stacked = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct((n,) + x.shape, x.dtype), params)
    from simdl.algorithms.base import Context

    weights = np.asarray(task.worker_weights, np.float64)
    state = jax.eval_shape(lambda p: algorithm.init(p, Context(jnp.int32(0), jax.random.PRNGKey(0), topology,
                                                               lambda t: t, weights)), stacked)
    for path, leaf in jax.tree_util.tree_leaves_with_path(state):
        if leaf.ndim == 0 or leaf.shape[0] != n:
            raise ValueError(f"participation ({what}) cannot be simulated for {algorithm.name}: its state leaf "
                             f"{jax.tree_util.keystr(path)} has shape {leaf.shape}, without the leading worker axis "
                             f"of size {n}, so an inactive worker's state cannot be frozen; {_supported()}")


def freeze(new_state, old_state, active: jax.Array):
    """``new_state`` for active workers, ``old_state`` for inactive ones (every leaf has leading axis n)."""

    def one(a, b):
        return jnp.where(active.reshape((-1,) + (1,) * (a.ndim - 1)), a, b)

    return jax.tree_util.tree_map(one, new_state, old_state)


__all__ = ["COHORT_ALGORITHMS", "KEYS", "KINDS", "PARTICIPATION_STREAM", "ClientSampling", "Markov", "MarkovState",
           "Sampler", "Trace", "as_participation", "check_algorithm", "check_participation", "client_sampling",
           "describe", "freeze", "from_config", "markov", "out_neighbors", "renormalized_difference",
           "renormalized_mix", "round_key", "rounds", "runner_handles", "sampler", "sent_fraction", "trace"]
