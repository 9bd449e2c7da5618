"""A system model and a simulated clock: how long each worker's steps and messages take, in simulated seconds.

:class:`SystemModel` describes the machines and the network: per-step compute time (constant, per worker, or a
seeded distribution such as :func:`lognormal` or :func:`slowdowns`), and per directed link a latency (s) and a
bandwidth (bytes/s). Passed as ``simdl.simulate(..., system=...)`` (or ``simulate_batch``, or a ``[system]``
config section, :func:`from_config`), it adds a simulated clock to the compiled step: a max-plus recursion over
the communication graph, vectorized over workers, whose state travels with the algorithm state through the
``lax.scan`` chunks. The history then has ``sim_time_s``: the simulated wall-clock of the latest worker at each
evaluation.

Timing rule (docs/algorithms.md#simulated-time). Let ``S_i(k)`` be the time worker i starts step k
(``S_i(0) = 0``) and ``F_i(k) = S_i(k) + c_i(k)`` the time its local computation of step k ends (``c_i(k)``: the
compute time). Then, by the algorithm's communication pattern (:data:`PATTERNS`):

* ``"gossip"``: every message of step k from i to j (``W_ji ≠ 0`` in the step's mixing matrix) arrives at
  ``A_ij(k) = F_i(k) + latency[i, j] + size_i(k) / bandwidth[i, j]``, and
  ``S_j(k + 1) = max(F_j(k), max_i A_ij(k))``. The message size is the worker's ``bytes_sent`` of the step divided
  by its out-degree (with ``shared_uplink=True``: all of ``bytes_sent``, since its messages share the uplink).
  A worker that sent no bytes in the step sends no message.
* ``"tree"`` (RelaySGD, RelaySum): the same on the edges of the topology's spanning trees, in both directions.
* ``"barrier"`` (all-reduce, local SGD's averaging rounds, dynamic averaging's syncs): the workers that sent
  bytes in the step wait for each other and for a bandwidth-optimal ring all-reduce among them:
  ``S_j(k + 1) = max_{i ∈ M} F_i(k) + 2 (m − 1)/m · B / bw + 2 (m − 1) · lat`` for j in the m members M, with B
  the model bytes and bw, lat the ring's slowest link (links i → i + 1 mod n; when some of them are not defined
  by graph attributes, the slowest link of the graph). Workers that sent nothing do not wait
  (``S_j(k + 1) = F_j(k)``): local steps between averaging rounds run at each worker's own pace.
* ``"server"`` (FedAvg, FedProx, SCAFFOLD): local steps run at each worker's own pace; at the last step of each
  communication round (``(k + 1) % round_length == 0``) the round's cohort M (the active workers) uploads to a
  server and every worker downloads the aggregate:
  ``R = max_{i ∈ M} (F_i(k) + lat_i + b_i / bw_i)`` and ``S_j(k + 1) = max(F_j(k), R + lat_j + max_{i ∈ M} b_i /
  bw_j)`` for every j, with ``b_i`` the worker's ``bytes_sent`` of that step and ``lat_i``, ``bw_i`` its link to the
  server: its slowest outgoing link in the model (the value itself for a scalar latency / bandwidth, its uplink
  with an ``(n,)`` ``shared_uplink`` bandwidth). So a round lasts as long as its slowest sampled client plus the
  upload and download. A round with an empty cohort changes nothing.
* ``"async"`` (AD-PSGD, randomized gossip: algorithms with ``"async"`` in their capabilities): no max-plus clock;
  the simulated time is the cumulative sum of the algorithm's aux ``"tick_s"`` (the simulated duration of each step,
  which the algorithm computes from ``ctx.compute_time`` and its own event clock). Communication is not timed
  there: a system model with latency > 0 or finite bandwidth gives a warning that they do not change sim_time_s.

Whenever a system model is given, the runner passes each step's per-worker compute times
(:meth:`Clock.compute_times`, float32 ``(n,)`` seconds) to the algorithm as ``ctx.compute_time`` (without one it is
``None``). With partial participation (:mod:`simdl.participation`) an inactive worker takes no compute time
(``F_i(k) = S_i(k)``), sends no message and receives none: gossip receivers wait only for their active senders
(whose message size is their ``bytes_sent`` over their active out-neighbours), barriers and server rounds only for
the active workers.

The clock is float32 on the device, kept as a compensated (Kahan) running offset plus each worker's small lead
over the slowest-started worker, so that long runs keep ~1e-7 relative accuracy. Its compute-time draws come from
a PRNG stream of their own (``fold_in(fold_in(key, SYSTEM_STREAM), step)``; ``key`` = the run's algorithm key, or
``PRNGKey(seed)`` when :attr:`SystemModel.seed` is set), so results do not depend on ``eval_every`` or chunking.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

#: fold_in constant of the system model's PRNG stream (disjoint from ``ctx.key`` and the faults' stream).
SYSTEM_STREAM = 0x5157C10C

#: Each algorithm's communication pattern, by :attr:`simdl.algorithms.Algorithm.name`: ``"gossip"`` (messages on
#: the edges of the step's mixing matrix), ``"tree"`` (on the spanning trees' edges), ``"barrier"`` (a ring
#: all-reduce among the workers that sent bytes), ``"server"`` (a round's cohort uploads to and downloads from a
#: server at the round's last step) or ``"async"`` (the algorithm's own event clock, aux ``"tick_s"``). Add an entry
#: here for a new algorithm (an algorithm with ``"async"`` in its capabilities is ``"async"`` without one).
PATTERNS = {
    "dsgd": "gossip", "dpsgd": "gossip", "cdsgd": "gossip", "cdmsgd": "gossip", "qg_dsgdm": "gossip",
    "qg_adam": "gossip", "d2": "gossip", "exact_diffusion": "gossip", "gradient_tracking": "gossip",
    "sgp": "gossip", "choco_sgd": "gossip",
    "relaysgd": "tree", "relaysum_grad": "tree", "relaysum_mix": "tree",
    "allreduce": "barrier", "local_sgd": "barrier", "model_averaging_clr": "barrier", "dynamic_averaging": "barrier",
    "fedavg": "server", "fedprox": "server", "scaffold": "server",
    "ad_psgd": "async", "randomized_gossip": "async",
}

#: Barrier algorithms whose ``bytes_sent`` is one model per participating worker (an upload to a coordinator);
#: the others' ``bytes_sent`` already is the ring all-reduce volume ``2 (n − 1)/n`` model sizes.
MODEL_BYTES_BARRIERS = frozenset({"dynamic_averaging"})

KINDS = ("gossip", "tree", "barrier", "server", "async")


# --------------------------------------------------------------------------- compute-time distributions


class LogNormal(NamedTuple):
    """Log-normal compute times: ``c = mean · exp(σ z − σ²/2)``, z ~ N(0, 1), so ``E[c] = mean`` (seconds).

    Attributes:
      mean: float or float ``(n,)`` per-worker mean (s), > 0.
      sigma: σ ≥ 0 (log-scale spread; 0 gives ``mean`` exactly).
      per_step: True: a new draw per worker and step; False: one draw per worker for the whole run (fixed
        heterogeneous speeds).
    """

    mean: Any
    sigma: float
    per_step: bool = True


class Slowdowns(NamedTuple):
    """Occasional slowdowns: each worker, each step, independently with probability ``p`` takes ``factor`` times
    its ``base`` compute time.

    Attributes:
      p: probability in [0, 1].
      factor: the slowdown factor, finite > 0.
      base: the compute time otherwise: a float, a float ``(n,)`` array or a :class:`LogNormal` (seconds).
    """

    p: float
    factor: float
    base: Any = 1.0


def lognormal(mean, sigma: float, per_step: bool = True) -> LogNormal:
    """Log-normal compute times with mean ``mean`` seconds (scalar or ``(n,)``) and log-scale spread ``sigma``
    (see :class:`LogNormal`). Raises ValueError for ``mean`` not finite > 0 or ``sigma`` not finite ≥ 0."""
    m = np.asarray(mean, np.float64)
    if m.ndim > 1 or not np.all(np.isfinite(m)) or np.any(m <= 0):
        raise ValueError(f"lognormal mean must be a finite float > 0 (or an (n,) array of them), got {mean!r}")
    s = float(sigma)
    if not math.isfinite(s) or s < 0:
        raise ValueError(f"lognormal sigma must be a finite float >= 0, got {sigma!r}")
    return LogNormal(mean if m.ndim else float(m), s, bool(per_step))


def slowdowns(p: float, factor: float, base=1.0) -> Slowdowns:
    """Per-step slowdowns: with probability ``p`` a worker's step takes ``factor`` × ``base`` seconds (see
    :class:`Slowdowns`). Raises ValueError for ``p`` outside [0, 1] or ``factor`` not finite > 0."""
    p_ = float(p)
    if not 0.0 <= p_ <= 1.0:
        raise ValueError(f"slowdowns p must be a probability in [0, 1], got {p!r}")
    f = float(factor)
    if not math.isfinite(f) or f <= 0:
        raise ValueError(f"slowdowns factor must be a finite float > 0, got {factor!r}")
    return Slowdowns(p_, f, base)


# --------------------------------------------------------------------------- the model


class SystemModel(NamedTuple):
    """Machines and network of a simulated run (all times in seconds, bandwidths in bytes/s).

    Attributes:
      compute_time: seconds per local step (one gradient and update): a float ≥ 0, a float ``(n,)`` array (per
        worker), or a distribution (:func:`lognormal`, :func:`slowdowns`) drawn per worker inside the compiled step.
      latency: seconds per message on each directed link: a float ≥ 0, an ``(n, n)`` array (``latency[i, j]``:
        link from sender i to receiver j; the diagonal is ignored), or the name (str) of an edge attribute of
        ``topology.graph`` (for an ``nx.DiGraph`` edge ``u → v`` is the link u sends to v on).
      bandwidth: bytes/s on each directed link, > 0 (``float("inf")``: free transfers): a float, an ``(n, n)``
        array (as ``latency``), an edge attribute name, or with ``shared_uplink`` also an ``(n,)`` array (each
        worker's uplink).
      shared_uplink: False (default): each link has its own bandwidth, a message takes ``size / bandwidth[i, j]``.
        True: a worker's messages share its uplink, every one of them arrives after ``bytes_sent_i / bandwidth``
        (total bytes the worker sends in the step).
      seed: None (default): compute-time draws follow the run's seed; an int ≥ 0: the same draws for every run seed
        (compare algorithms under identical system noise).
    """

    compute_time: Any = 1.0
    latency: Any = 0.0
    bandwidth: Any = math.inf
    shared_uplink: bool = False
    seed: int | None = None

    def describe(self) -> dict:
        """JSON-friendly summary (arrays as lists, distributions as dicts); recorded in ``info["system"]``."""

        def enc(v):
            if isinstance(v, (LogNormal, Slowdowns)):
                return {"distribution": type(v).__name__.lower(), **{k: enc(x) for k, x in v._asdict().items()}}
            if isinstance(v, (np.ndarray, jax.Array, list, tuple)):
                return np.asarray(v, np.float64).tolist()
            if isinstance(v, float) and math.isinf(v):
                return "inf"
            return v

        return {k: enc(v) for k, v in self._asdict().items()}


def as_system(system) -> SystemModel | None:
    """``None``, a :class:`SystemModel`, or a dict of its fields (or a ``[system]`` table, see :func:`from_config`)."""
    if system is None or isinstance(system, SystemModel):
        return system
    if isinstance(system, dict):
        return from_config(system)
    raise ValueError(f"system must be a simdl.systems.SystemModel, a dict of its fields or None, got {system!r}")


FIELDS = SystemModel._fields
#: The keys of a ``[system]`` config table (:func:`from_config`); ``compute_time`` tables take ``distribution`` =
#: one of :data:`DISTRIBUTIONS`.
KEYS = FIELDS
DISTRIBUTIONS = ("lognormal", "slowdowns")


def from_config(table: dict | None) -> SystemModel | None:
    """The :class:`SystemModel` of a ``[system]`` config table; ``None`` when there is no table.

    Keys: ``compute_time`` (number, list of n numbers, or a table ``{distribution = "lognormal", mean, sigma,
    per_step}`` / ``{distribution = "slowdowns", p, factor, base}`` where ``base`` is a number, a list or a
    lognormal table), ``latency`` and ``bandwidth`` (number, ``inf``, n×n nested list, or an edge attribute name;
    ``bandwidth`` also a list of n uplinks with ``shared_uplink``), ``shared_uplink`` (bool), ``seed`` (int).
    The values are checked against a topology by :func:`check_system`.

    Raises:
      ValueError: an unknown key, an unknown distribution, or a distribution table with missing/extra keys.
    """
    if table is None:
        return None
    if not isinstance(table, dict):
        raise ValueError(f"[system] must be a table, got {table!r}")
    unknown = sorted(set(table) - set(FIELDS))
    if unknown:
        raise ValueError(f"unknown [system] key(s) {unknown}; valid: {', '.join(FIELDS)}")
    kw = dict(table)
    if "compute_time" in kw:
        kw["compute_time"] = _compute_from_config(kw["compute_time"])
    for k in ("latency", "bandwidth", "compute_time"):
        if isinstance(kw.get(k), list):
            kw[k] = np.asarray(kw[k], np.float64)
    return SystemModel(**kw)


def _compute_from_config(v):
    if not isinstance(v, dict):
        return v
    spec = dict(v)
    kind = spec.pop("distribution", None)
    makers = {"lognormal": (lognormal, {"mean", "sigma"}, {"per_step"}),
              "slowdowns": (slowdowns, {"p", "factor"}, {"base"})}
    if kind not in makers:
        raise ValueError(f"[system] compute_time table needs distribution = 'lognormal' or 'slowdowns', got {kind!r}")
    fn, required, optional = makers[kind]
    missing, extra = sorted(required - set(spec)), sorted(set(spec) - required - optional)
    if missing or extra:
        raise ValueError(f"[system] compute_time {kind}: needs keys {sorted(required)} (optional "
                         f"{sorted(optional)}); missing {missing}, unknown {extra}")
    if "base" in spec:
        spec["base"] = _compute_from_config(spec["base"])
    for k in ("mean", "base"):
        if isinstance(spec.get(k), list):
            spec[k] = np.asarray(spec[k], np.float64)
    return fn(**spec)


# --------------------------------------------------------------------------- validation


def pattern(algorithm) -> str:
    """The communication pattern (:data:`PATTERNS`) of an algorithm (or its name). Raises ValueError if unknown."""
    name = algorithm if isinstance(algorithm, str) else algorithm.name
    if not isinstance(algorithm, str) and "async" in getattr(algorithm, "capabilities", frozenset()):
        return "async"
    if name not in PATTERNS:
        raise ValueError(f"algorithm {name!r} has no communication pattern for the system model; add it to "
                         f"simdl.systems.PATTERNS (one of {', '.join(KINDS)}); known: {', '.join(sorted(PATTERNS))}")
    return PATTERNS[name]


def _times(name: str, value, n: int, allow_zero: bool = True) -> np.ndarray:
    """A float or (n,) array of finite times >= 0 (> 0 unless allow_zero) as float64 (n,)."""
    what = ">= 0" if allow_zero else "> 0"
    try:
        a = np.asarray(value, np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a float {what} or an ({n},) array, got {value!r}") from None
    if a.ndim == 0:
        a = np.full((n,), float(a))
    elif a.shape != (n,):
        raise ValueError(f"{name} must be a float or an array of shape ({n},) (one per worker), got shape {a.shape}")
    bad = ~np.isfinite(a) | (a < 0 if allow_zero else a <= 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{name} must be finite and {what} (seconds), got {a[i]!r} for worker {i}")
    return a


def _check_compute(value, n: int, name: str = "compute_time") -> None:
    if isinstance(value, LogNormal):
        _times(f"{name} lognormal mean", value.mean, n, allow_zero=False)
        lognormal(value.mean if np.ndim(value.mean) == 0 else 1.0, value.sigma)
    elif isinstance(value, Slowdowns):
        slowdowns(value.p, value.factor)
        _check_compute(value.base, n, f"{name} slowdowns base")
        if isinstance(value.base, Slowdowns):
            raise ValueError(f"{name} slowdowns base must be a float, an ({n},) array or a lognormal, not slowdowns")
    else:
        _times(name, value, n)


def _links(name: str, value, topology, used: np.ndarray, shared_uplink: bool) -> np.ndarray:
    """(n, n) float64 link matrix [sender, receiver] of ``value`` (NaN where a graph attribute leaves it undefined),
    checked on the off-diagonal entries (and the ``used`` links for attribute names)."""
    n = topology.n
    is_bw = name == "bandwidth"
    allowed = ("a float > 0 (inf allowed)" if is_bw else "a float >= 0") + f", an ({n}, {n}) array"
    allowed += f", an ({n},) uplink array (shared_uplink)" if is_bw and shared_uplink else ""
    allowed += " or an edge attribute name of topology.graph"
    if isinstance(value, str):
        m = np.full((n, n), np.nan)
        g = topology.graph
        for u, v, data in g.edges(data=True):
            if value in data:
                x = data[value]
                m[u, v] = x
                if not g.is_directed():
                    m[v, u] = x
        if not used.any() and np.isnan(m).all() and n > 1:
            raise ValueError(f"{name}={value!r}: no edge of {topology.name} has a {value!r} attribute")
        missing = used & np.isnan(m)
        if missing.any():
            i, j = (int(x) for x in np.argwhere(missing)[0])
            raise ValueError(f"{name}={value!r}: edge ({i}, {j}) of {topology.name} has no {value!r} attribute; "
                             f"every link the algorithm uses needs one")
        checked = m[~np.isnan(m)]
    else:
        try:
            a = np.asarray(value, np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be {allowed}, got {value!r}") from None
        if a.ndim == 0:
            m = np.full((n, n), float(a))
        elif a.shape == (n,) and is_bw and shared_uplink:
            m = np.repeat(a[:, None], n, axis=1)
        elif a.shape == (n, n):
            m = a.copy()
        else:
            raise ValueError(f"{name} must be {allowed}; got an array of shape {a.shape}")
        np.fill_diagonal(m, 1.0 if is_bw else 0.0)
        checked = m
    bad = (np.isnan(checked) | (checked <= 0)) if is_bw else (~np.isfinite(checked) | (checked < 0))
    if bad.any():
        x = checked[bad][0] if checked.ndim == 1 else checked[tuple(np.argwhere(bad)[0])]
        unit = "bytes/s, > 0 (inf: free)" if is_bw else "seconds, finite and >= 0"
        raise ValueError(f"{name} must be {unit}; got {x!r}")
    return m


class _Graphs(NamedTuple):
    phases: tuple  # per phase: (src (E,), dst (E,)) int arrays, sender -> receiver
    used: np.ndarray  # (n, n) bool, union of the phases' links (barrier: the ring's)
    required: np.ndarray  # (n, n) bool, links that must be defined by an edge attribute


def _comm_graphs(kind: str, topology) -> _Graphs:
    n = topology.n
    if kind in ("server", "async"):
        return _Graphs((), np.zeros((n, n), bool), np.zeros((n, n), bool))
    if kind == "barrier":
        used = np.zeros((n, n), bool)
        if n > 1:
            used[np.arange(n), (np.arange(n) + 1) % n] = True
        return _Graphs((), used, np.zeros((n, n), bool))
    if kind == "tree":
        if not topology.trees:
            raise ValueError(f"{topology.name} has no spanning trees for the tree pattern (relay algorithms)")
        m = np.zeros((n, n), bool)
        for t in topology.trees:
            for a, b in t.edges:
                m[a, b] = m[b, a] = True
        mats = [m]
    elif topology.is_split:  # every tree's messages go out in each step
        m = np.zeros((n, n), bool)
        for w in topology.tree_weights:
            m |= (np.asarray(w) != 0).T
        mats = [m]
    else:
        mats = [(np.asarray(w) != 0).T for w in topology.period_weights]  # [sender, receiver]: W[receiver, sender]
    phases, used = [], np.zeros((n, n), bool)
    for m in mats:
        m = m.copy()
        np.fill_diagonal(m, False)
        src, dst = np.nonzero(m)
        phases.append((src.astype(np.int32), dst.astype(np.int32)))
        used |= m
    return _Graphs(tuple(phases), used, used)


def check_system(system, topology, algorithm) -> SystemModel | None:
    """Validate ``system`` for a run of ``algorithm`` on ``topology`` (before anything is compiled).

    Returns:
      the :class:`SystemModel` (a dict is converted), or ``None``.

    Raises:
      ValueError (one line, naming the value and what is allowed): a negative, NaN or infinite time, a bandwidth
        ≤ 0 or NaN, an array of the wrong shape, a missing edge attribute, a ``seed`` that is not an int ≥ 0, or an
        algorithm without an entry in :data:`PATTERNS`.
    """
    system = as_system(system)
    if system is None:
        return None
    n = topology.n
    kind = pattern(algorithm)
    if not isinstance(system.shared_uplink, (bool, np.bool_)):
        raise ValueError(f"shared_uplink must be true or false, got {system.shared_uplink!r}")
    seed = system.seed
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
        raise ValueError(f"system seed must be None or an integer >= 0, got {seed!r}")
    _check_compute(system.compute_time, n)
    graphs = _comm_graphs(kind, topology)
    _links("latency", system.latency, topology, graphs.required, system.shared_uplink)
    _links("bandwidth", system.bandwidth, topology, graphs.required, system.shared_uplink)
    return system


# --------------------------------------------------------------------------- the compiled clock


class ClockState(NamedTuple):
    """The simulated clock carried through the scan: worker i is ready for its next step at
    ``base + carry + lead[i]`` seconds. ``base``, ``carry``: float32 scalars (a Kahan-compensated sum of the
    per-step minima); ``lead``: float32 ``(n,)`` ≥ 0."""

    base: jax.Array
    carry: jax.Array
    lead: jax.Array


def _two_sum(a, b):
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


class Clock:
    """The per-step clock update of one run, built from static numpy tables (:func:`build_clock`)."""

    def __init__(self, system: SystemModel, topology, algorithm_name, round_length: int = 1):
        self.system = system
        self.n = n = topology.n
        self.kind = kind = pattern(algorithm_name)
        self.round_length = max(1, int(round_length))
        if not isinstance(algorithm_name, str):
            algorithm_name = algorithm_name.name
        self.model_bytes = algorithm_name in MODEL_BYTES_BARRIERS
        graphs = _comm_graphs(kind, topology)
        lat = _links("latency", system.latency, topology, graphs.required, system.shared_uplink)
        bw = _links("bandwidth", system.bandwidth, topology, graphs.required, system.shared_uplink)
        inv_bw = np.where(np.isnan(bw), np.nan, 1.0 / bw)
        if kind == "server":  # each worker's link to the server: its slowest outgoing link
            off = ~np.eye(n, dtype=bool)

            def worst(m):
                m = np.where(off & ~np.isnan(m), m, np.nan)
                fallback = float(np.nanmax(m)) if (~np.isnan(m)).any() else 0.0
                rows = np.array([np.nanmax(r) if (~np.isnan(r)).any() else fallback for r in m])
                return rows.astype(np.float32)

            self.up_lat, self.up_inv_bw = worst(lat), worst(inv_bw)
        elif kind == "async":  # the algorithm's event clock counts compute time only
            off = ~np.eye(n, dtype=bool)
            if np.nanmax(lat[off], initial=0.0) > 0 or np.nanmin(bw[off], initial=math.inf) < math.inf:
                warnings.warn(f"{algorithm_name} runs on its own event clock, which counts compute time only: the "
                              f"system model's latency and bandwidth do not change its sim_time_s", stacklevel=2)
        elif kind == "barrier":
            ring = graphs.used
            if n > 1 and (np.isnan(lat[ring]).any() or np.isnan(bw[ring]).any()):
                ring = ~np.isnan(lat) & ~np.isnan(bw)
                np.fill_diagonal(ring, False)
            self.ring_lat = float(lat[ring].max()) if ring.any() else 0.0
            self.ring_inv_bw = float(inv_bw[ring].max()) if ring.any() else 0.0
        else:
            e_max = max(1, max(len(s) for s, _ in graphs.phases))
            p = len(graphs.phases)
            src = np.zeros((p, e_max), np.int32)
            dst = np.zeros((p, e_max), np.int32)
            elat = np.zeros((p, e_max), np.float32)
            einv = np.zeros((p, e_max), np.float32)
            valid = np.zeros((p, e_max), bool)
            outdeg = np.ones((p, n), np.float32)
            for k, (s, d) in enumerate(graphs.phases):
                e = len(s)
                src[k, :e], dst[k, :e], valid[k, :e] = s, d, True
                elat[k, :e], einv[k, :e] = lat[s, d], inv_bw[s, d]
                outdeg[k] = np.maximum(np.bincount(s, minlength=n), 1)
            self.tables = (src, dst, elat, einv, valid, outdeg)
            self.period = p
        self.compute = system.compute_time

    # -- compute times
    def _draw(self, spec, key, t):
        n = self.n
        if isinstance(spec, LogNormal):
            k = jax.random.fold_in(key, t) if spec.per_step else jax.random.fold_in(key, 0x7FFFFFFF)
            z = jax.random.normal(k, (n,), jnp.float32)
            s = jnp.float32(spec.sigma)
            return jnp.asarray(spec.mean, jnp.float32) * jnp.exp(s * z - 0.5 * s * s)
        if isinstance(spec, Slowdowns):
            u = jax.random.uniform(jax.random.fold_in(key, t), (n,))
            base = self._draw(spec.base, jax.random.fold_in(key, 0x51), t)
            return base * jnp.where(u < spec.p, jnp.float32(spec.factor), jnp.float32(1.0))
        return jnp.broadcast_to(jnp.asarray(spec, jnp.float32), (n,))

    def compute_times(self, key, t) -> jax.Array:
        """float32 ``(n,)`` compute time (s) of every worker at global step ``t`` (``key``: the run's key)."""
        if self.system.seed is not None:
            key = jax.random.PRNGKey(int(self.system.seed))
        return self._draw(self.compute, jax.random.fold_in(key, SYSTEM_STREAM), t)

    # -- the recursion
    def init(self) -> ClockState:
        """The clock at time 0 (every worker ready)."""
        return ClockState(jnp.float32(0.0), jnp.float32(0.0), jnp.zeros((self.n,), jnp.float32))

    def ready_times(self, finish: jax.Array, bytes_sent: jax.Array, t, active: jax.Array | None = None) -> jax.Array:
        """float32 ``(n,)``: when each worker can start step t + 1, given when it finished computing step t
        (``finish``, relative seconds), the step's ``bytes_sent`` (float32 ``(n,)``, bytes) and, with partial
        participation, the step's ``active`` mask (bool ``(n,)``; inactive workers neither send nor receive)."""
        sent = jnp.asarray(bytes_sent, jnp.float32)
        sending = sent > 0
        if active is not None:
            sending = sending & active
        if self.kind == "server":
            members = jnp.ones((self.n,), bool) if active is None else active
            up = finish + jnp.asarray(self.up_lat) + sent * jnp.asarray(self.up_inv_bw)
            r = jnp.max(jnp.where(members, up, -jnp.inf))
            down = jnp.max(jnp.where(members, sent, 0.0))
            synced = jnp.maximum(finish, r + jnp.asarray(self.up_lat) + down * jnp.asarray(self.up_inv_bw))
            last = (t + 1) % self.round_length == 0
            return jnp.where(last & jnp.any(members), synced, finish)
        if self.kind == "barrier":
            m = jnp.sum(sending.astype(jnp.float32))
            vol = jnp.max(jnp.where(sending, sent, 0.0))
            if self.model_bytes:
                vol = 2.0 * (m - 1.0) / jnp.maximum(m, 1.0) * vol
            comm = vol * jnp.float32(self.ring_inv_bw) + 2.0 * jnp.maximum(m - 1.0, 0.0) * jnp.float32(self.ring_lat)
            last = jnp.max(jnp.where(sending, finish, -jnp.inf))
            return jnp.where(sending, last + comm, finish)
        src, dst, lat, inv_bw, valid, outdeg = (jnp.asarray(a) for a in self.tables)
        if self.period > 1:
            ph = t % self.period
            src, dst, lat, inv_bw, valid, outdeg = (a[ph] for a in (src, dst, lat, inv_bw, valid, outdeg))
        else:
            src, dst, lat, inv_bw, valid, outdeg = (a[0] for a in (src, dst, lat, inv_bw, valid, outdeg))
        if active is not None:  # messages only between active workers; sizes split over the active receivers
            valid = valid & active[dst]
            outdeg = jnp.maximum(jax.ops.segment_sum(valid.astype(jnp.float32), src, num_segments=self.n), 1.0)
        size = sent if self.system.shared_uplink else sent / outdeg
        arrive = finish[src] + lat + size[src] * inv_bw
        arrive = jnp.where(valid & sending[src], arrive, -jnp.inf)
        wait = jax.ops.segment_max(arrive, dst, num_segments=self.n, indices_are_sorted=False)
        return jnp.maximum(finish, wait)

    def step(self, clock: ClockState, bytes_sent: jax.Array, t, key, compute: jax.Array | None = None,
             active: jax.Array | None = None, tick=None) -> ClockState:
        """The clock after global step ``t``. ``compute``: the step's compute times (default
        :meth:`compute_times` of ``key``); ``active``: bool ``(n,)`` participation mask (inactive workers take no
        compute time and are not waited for); ``tick``: float32 scalar seconds, the step's duration for the
        ``"async"`` kind (the algorithm's aux ``"tick_s"``; required there)."""
        if self.kind == "async":
            if tick is None:
                raise ValueError("an asynchronous algorithm must return aux 'tick_s' (the simulated duration of the "
                                 "step, seconds) for the system model's clock")
            base, err = _two_sum(clock.base, jnp.asarray(tick, jnp.float32).reshape(()))
            return ClockState(base, clock.carry + err, clock.lead)
        c = self.compute_times(key, t) if compute is None else compute
        if active is not None:
            c = jnp.where(active, c, jnp.float32(0.0))
        finish = clock.lead + c
        ready = self.ready_times(finish, bytes_sent, t, active)
        low = jnp.min(ready)
        base, err = _two_sum(clock.base, low)
        return ClockState(base, clock.carry + err, ready - low)

    @staticmethod
    def elapsed(clock: ClockState) -> float:
        """Host float: the simulated time (s) at which the latest worker is ready (``max_i`` of its ready time)."""
        return float(np.float64(clock.base) + np.float64(clock.carry) + float(np.max(np.asarray(clock.lead))))


def build_clock(system, topology, algorithm) -> Clock | None:
    """The :class:`Clock` of a run (``None`` without a system model); validates like :func:`check_system`."""
    system = check_system(system, topology, algorithm)
    if system is None:
        return None
    return Clock(system, topology, algorithm, getattr(algorithm, "round_length", 1))


__all__ = ["DISTRIBUTIONS", "KEYS", "KINDS", "PATTERNS", "SYSTEM_STREAM", "Clock", "ClockState", "LogNormal",
           "Slowdowns", "SystemModel", "as_system", "build_clock", "check_system", "from_config", "lognormal",
           "pattern", "slowdowns"]
