"""The algorithm protocol: pure ``init``/``step`` functions over stacked (worker-axis) state, like optax's
``GradientTransformation`` but acting on all n workers at once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from simdl.mixing.difference import neighbor_difference
from simdl.mixing.mixer import split_gossip_bytes

PyTree = Any


class Context(NamedTuple):
    """What an algorithm may use besides its state and gradients at step ``step``.

    Attributes:
      step: int32 scalar (traced), the 0-based global step index t.
      key: PRNG key for this step (same for all workers; fold in the worker index for per-worker randomness).
      topology: the static :class:`simdl.topologies.Topology` (Python object, not traced).
      mix: ``mix(tree) -> W_t @ tree`` along the worker axis (the step's mixing matrix, fp32-exact).
      worker_weights: static ``(n,)`` float64 numpy array, each worker's share of the training data (sums to 1);
        used by size-weighted averaging (FedAvg, Xu 2018).
      difference: ``difference(tree, scale) -> scale · (W_t − I) @ tree`` when the runner overrides it (gossip
        faults: the step's faulty ``W'_t``); ``None`` (default) = the topology's static W, see :meth:`mix_delta`.
      active: bool ``(n,)``, the workers that participate in this step (:mod:`simdl.participation`: an inactive
        worker neither computes nor sends), or ``None`` (default): every worker. Constant over a communication
        round of :attr:`Algorithm.round_length` steps. Only algorithms that declare ``"participation"`` in
        :attr:`Algorithm.capabilities` read it; for the others the runner freezes inactive workers and renormalises
        ``mix`` over the active ones.
      compute_time: float32 ``(n,)``, seconds each worker's local step takes at this step (from the run's
        :class:`simdl.systems.SystemModel`), or ``None`` (no system model). Asynchronous algorithms
        (``ad_psgd``) advance their own event clock with it.
    """

    step: jax.Array
    key: jax.Array
    topology: Any
    mix: Callable[[PyTree], PyTree]
    worker_weights: np.ndarray
    difference: Callable[[PyTree, float], PyTree] | None = None
    active: jax.Array | None = None
    compute_time: jax.Array | None = None

    @property
    def n(self) -> int:
        return self.topology.n

    def mix_delta(self, tree: PyTree, scale: float = 1.0) -> PyTree:
        """``scale · (W_t − I) @ tree`` along the worker axis, from neighbour differences
        ``scale · Σ_{j≠i} W_ij (y_j − y_i)`` (same shapes and dtypes).

        Equal to ``mix(tree) − tree`` (times ``scale``) in exact arithmetic, with rounding relative to the
        neighbours' disagreement rather than the models' magnitude; bias-corrected gossip (D², exact diffusion)
        integrates it. ``scale = 0.5`` gives ``((I + W)/2 − I) @ tree``. Without an override (:attr:`difference`)
        it uses the static topology's W (:func:`simdl.mixing.neighbor_difference`); under gossip faults the runner
        supplies the step's faulty ``W'_t``, so faults reach every algorithm that communicates through ``ctx``.
        """
        if self.difference is not None:
            return self.difference(tree, scale)
        return neighbor_difference(self.topology, tree, scale)


class Algorithm(NamedTuple):
    """A decentralized training algorithm as a pair of pure functions over stacked state.

    Attributes:
      name: factory name (e.g. ``"dsgd"``).
      init: ``init(stacked_params, ctx) -> state``; ``stacked_params`` leaves have leading axis n (all workers start
        from the same x⁰); ``ctx`` is the :class:`Context` of step 0 (gives the topology, e.g. the relay tree).
      step: ``step(state, stacked_grads, ctx) -> (state, aux)``; gradients were evaluated at ``query(state)``.
        ``aux`` holds at least ``"lr"`` (float32 scalar, the step's learning rate) and ``"bytes_sent"``
        (float32 ``(n,)``, bytes each worker sent this step). Any other aux entry (scalar or ``(n,)``) is a
        counter: the runner reports its cumulative sum (mean over workers) in the history under the same name
        (e.g. ``"model_transfers"``).
      query: ``query(state) -> stacked_params`` where the runner evaluates the stochastic gradients.
      params: ``params(state) -> stacked_params``, the worker models that are reported and evaluated.
      hyperparams: JSON-serialisable hyperparameters (recorded in results).
      requires: static requirements on the topology: ``"connected"``, ``"tree"``, ``"static"``.
      round_length: steps per communication round (static int ≥ 1; e.g. local SGD's and FedAvg's H). Partial
        participation draws one cohort per round (:mod:`simdl.participation`).
      capabilities: what the algorithm does itself that the runner would otherwise do or refuse:
        ``"participation"`` (it reads ``ctx.active``: e.g. FedAvg averages over the sampled cohort),
        ``"async"`` (it keeps its own event clock from ``ctx.compute_time``; its aux ``"tick_s"`` is the simulated
        duration of the step).
    """

    name: str
    init: Callable
    step: Callable
    query: Callable
    params: Callable
    hyperparams: dict
    requires: frozenset = frozenset({"connected"})
    round_length: int = 1
    capabilities: frozenset = frozenset()


def as_schedule(learning_rate) -> optax.Schedule:
    """Return an optax schedule (``step -> lr``) for a float or a schedule.

    A schedule is checked at step 0 when its value there is concrete (not while tracing): it must be finite and
    ≥ 0 (0 allows warm-up schedules). In batched runs the per-run rates enter as schedules, so a negative batched
    learning rate is refused here like a single run's.

    Raises:
      ValueError: a float learning rate that is not finite and > 0, or a schedule whose step-0 value is negative or
        not finite.
    """
    if callable(learning_rate):
        try:
            lr0 = float(learning_rate(0))
        except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError, TypeError):
            return learning_rate  # traced inside a compiled program (checked when the run was built)
        if not np.isfinite(lr0) or lr0 < 0:
            raise ValueError(f"learning_rate schedule gives {lr0!r} at step 0; expected a finite value >= 0")
        return learning_rate
    lr = float(learning_rate)
    if not np.isfinite(lr) or lr <= 0:
        raise ValueError(f"learning_rate must be a finite float > 0 or an optax schedule, got {learning_rate!r}")
    return optax.constant_schedule(lr)


def check_momentum(momentum: float) -> float:
    """Validate β ∈ [0, 1)."""
    m = float(momentum)
    if not 0.0 <= m < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
    return m


def check_nonneg(name: str, value: float) -> float:
    v = float(value)
    if not np.isfinite(v) or v < 0:
        raise ValueError(f"{name} must be a finite float >= 0, got {value!r}")
    return v


def record_hyperparams(**kw) -> dict:
    """The JSON-serialisable record of a factory's hyperparameters (:attr:`Algorithm.hyperparams`): numbers,
    strings, booleans and None as they are, anything else (schedules, optax transformations) as its ``repr``."""
    return {k: (v if isinstance(v, (int, float, str, bool, type(None))) else repr(v)) for k, v in kw.items()}


def model_bytes(tree) -> int:
    """Bytes of ONE worker's copy of a stacked pytree (static Python int: leading axis dropped)."""
    leaves = jax.tree_util.tree_leaves(tree)
    return int(sum(np.prod(x.shape[1:], dtype=np.int64) * x.dtype.itemsize for x in leaves))


def gossip_bytes(ctx: Context, tree, messages_per_edge: float = 1.0) -> jax.Array:
    """Bytes each worker sends in one gossip round on ``ctx.topology`` at ``ctx.step``: out-degree × model bytes
    (split topologies: per tree, :func:`simdl.mixing.split_gossip_bytes`).

    Returns:
      float32 ``(n,)``.
    """
    topo = ctx.topology
    if topo.is_split:
        return jnp.asarray(split_gossip_bytes(topo, tree) * messages_per_edge, jnp.float32)
    degs = np.stack([topo.out_degree(s) for s in range(topo.period)]).astype(np.float32)
    deg = jnp.asarray(degs[0]) if topo.period == 1 else jnp.asarray(degs)[ctx.step % topo.period]
    return deg * jnp.float32(model_bytes(tree) * messages_per_edge)


def allreduce_bytes(n: int, tree) -> jax.Array:
    """Bytes per worker of a bandwidth-optimal ring all-reduce: ``2 (n − 1)/n`` model sizes. float32 ``(n,)``."""
    return jnp.full((n,), 2.0 * (n - 1) / max(n, 1) * model_bytes(tree), jnp.float32)


def tree_add(a, b):
    return jax.tree_util.tree_map(jnp.add, a, b)


def tree_sub(a, b):
    return jax.tree_util.tree_map(jnp.subtract, a, b)


def tree_scale(s, a):
    return jax.tree_util.tree_map(lambda x: (s * x).astype(x.dtype), a)


def tree_where(mask, a, b):
    """Select ``a`` where the scalar (or per-worker ``(n,)``) boolean ``mask`` holds, else ``b``."""

    def one(x, y):
        m = jnp.asarray(mask)
        if m.ndim == 1:
            m = m.reshape((-1,) + (1,) * (x.ndim - 1))
        return jnp.where(m, x, y)

    return jax.tree_util.tree_map(one, a, b)
