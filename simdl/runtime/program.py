"""The compiled program of a run: validation, initial state, one simulated step (sampling, per-worker gradients,
faults, participation, the algorithm's update), a chunk of steps as one ``lax.scan`` with the simulated clock, and
evaluation. Everything here is traced; the host loop is :mod:`simdl.runtime.loop`."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from simdl.algorithms.base import Algorithm, Context
from simdl.faults import injector, zero_stragglers
from simdl.metrics import consensus_distance
from simdl.mixing.difference import neighbor_difference
from simdl.runtime.execution import per_worker_grads
from simdl.tasks.base import Task


def check_count(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def validate(task: Task, algorithm: Algorithm, topology, steps: int, batch_size: int, eval_every: int) -> None:
    """All checks done before anything is compiled. Raises ValueError naming the bad value."""
    check_count("steps", steps)
    check_count("batch_size", batch_size)
    check_count("eval_every", eval_every)
    if topology.n != task.n_workers:
        raise ValueError(f"topology {topology.name} has n={topology.n} workers but the task has "
                         f"n_workers={task.n_workers}; they must match")
    if task.shard_size and batch_size > task.shard_size:
        raise ValueError(f"batch_size={batch_size} is larger than a worker's shard ({task.shard_size} samples); "
                         f"use batch_size <= {task.shard_size} or fewer workers")
    req = algorithm.requires
    if "connected" in req and not topology.is_connected:
        raise ValueError(f"{algorithm.name} needs a connected graph; {topology.name} is disconnected")
    if "tree" in req and not topology.trees:
        raise ValueError(f"{algorithm.name} runs on spanning trees; {topology.name} is not a tree topology. "
                         "Use chain(n), binary_tree(n), double_binary_trees(n) or spanning_tree(graph, root)")
    if "static" in req and topology.is_time_varying:
        raise ValueError(f"{algorithm.name} needs a static topology; {topology.name} is time-varying")


def _stack(params, n: int):
    return jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (n,) + x.shape), params)


def device_info() -> dict:
    """The default device: ``platform``, ``device_kind``, ``device_count`` and ``jax_version`` (recorded in info)."""
    dev = jax.devices()[0]
    return {"platform": dev.platform, "device_kind": dev.device_kind, "device_count": jax.device_count(),
            "jax_version": jax.__version__}


def build_step(task: Task, algorithm: Algorithm, topology, mixer, batch_size: int,
               worker_batch: int | None = None, faults=None, execution: str = "auto", compute_dtype: str = "float32",
               freeze_inactive: bool = True):
    """One simulated step ``(state, t, data, worker_keys, alg_key, compute_time=None, active=None) ->
    (state, mean_loss, aux)``, vectorized over workers. Traced hyperparameters (batched runs) live in the state
    (:func:`simdl.algorithms.inject_hyperparams`). ``faults``
    (:mod:`simdl.faults`) zeroes stragglers' gradients and replaces ``ctx.mix`` / ``ctx.mix_delta`` by the step's
    faulty mixing; its counters join ``aux``. ``compute_dtype``: dtype of the per-worker forward/backward passes
    (:func:`per_worker_grads`); the state, gradients and mixing stay float32.

    ``compute_time`` (float32 ``(n,)`` seconds, with a system model) becomes ``ctx.compute_time``. ``active`` (bool
    ``(n,)``, partial participation, :mod:`simdl.participation`) becomes ``ctx.active``; with ``freeze_inactive``
    (algorithms without the ``"participation"`` capability) inactive workers' gradients are zeroed, their state is
    kept as it was, gossip is renormalised over the active workers and ``bytes_sent`` counts only messages between
    active workers. With ``active`` the loss is the mean over the active workers and aux gains ``active_steps``."""
    from simdl.participation import freeze, out_neighbors, renormalized_difference, renormalized_mix, sent_fraction

    n = task.n_workers
    inject = injector(faults, topology)
    workers = jnp.arange(n)
    weights = np.asarray(task.worker_weights, np.float64)
    grad_fn = per_worker_grads(task.loss, worker_batch, execution, compute_dtype)
    sample_fn = jax.vmap(task.sample, in_axes=(None, 0, 0, None, None))
    links = out_neighbors(topology) if freeze_inactive else None

    def step(state, t, data, worker_keys, alg_key, compute_time=None, active=None):
        batch = sample_fn(data, worker_keys, workers, t, batch_size)
        losses, grads = grad_fn(algorithm.query(state), batch)
        mix, difference, counters = partial(mixer, step=t), None, {}
        if inject is not None:
            grads, mix, difference, counters = inject(grads, mix, t, alg_key)
        handled = active is not None and freeze_inactive
        if handled:  # the runner's participation: frozen inactive workers, gossip over the active ones
            grads = zero_stragglers(grads, active)
            if difference is None:
                difference = partial(neighbor_difference, topology)
            base_mix = mix
            mix = renormalized_mix(base_mix, active, topology.is_split)
            difference = renormalized_difference(base_mix, difference, active, topology.is_split)
        ctx = Context(t, jax.random.fold_in(alg_key, t), topology, mix, weights, difference, active, compute_time)
        new_state, aux = algorithm.step(state, grads, ctx)
        if active is None:
            return new_state, jnp.mean(losses), {**aux, **counters}
        if handled:
            new_state = freeze(new_state, state, active)
            aux = {**aux, "bytes_sent": aux["bytes_sent"] * sent_fraction(links, active, t)}
        count = jnp.sum(active.astype(jnp.float32))
        loss = jnp.where(count > 0, jnp.sum(jnp.where(active, losses, 0.0)) / jnp.maximum(count, 1.0),
                         jnp.mean(losses))
        counters["active_steps"] = active.astype(jnp.float32)
        return new_state, loss, {**aux, **counters}

    return step


def pack_state(alg_state, clock_state=None, part_state=None):
    """The run state carried through the scan: the algorithm state alone, ``(algorithm state, clock state)`` with a
    system model only, or ``{"algorithm", "clock"?, "participation"}`` with partial participation."""
    if part_state is not None:
        out = {"algorithm": alg_state, "participation": part_state}
        if clock_state is not None:
            out["clock"] = clock_state
        return out
    if clock_state is not None:
        return (alg_state, clock_state)
    return alg_state


def unpack_state(state, has_clock: bool, has_participation: bool):
    """``(algorithm state, clock state or None, participation state or None)`` of :func:`pack_state`'s layout."""
    if has_participation:
        return state["algorithm"], state.get("clock"), state["participation"]
    if has_clock:
        return state[0], state[1], None
    return state, None, None


def build_chunk(task: Task, algorithm: Algorithm, topology, mixer, batch_size: int,
                worker_batch: int | None = None, faults=None, execution: str = "auto",
                compute_dtype: str = "float32", clock=None, participation=None, round_length: int = 1,
                freeze_inactive: bool = True):
    """``chunk(state, start, data, worker_keys, alg_key, length) -> (state, mean_loss, counters, bad, lr)``:
    ``length`` steps from step ``start`` as one ``lax.scan``. ``counters`` sums every aux entry but ``lr`` over the
    chunk; ``bad`` is the first step whose mean loss was not finite (−1 if none). ``faults``, ``compute_dtype``:
    see :func:`build_step`. ``clock``: a :class:`simdl.systems.Clock` (or None): the simulated clock advances every
    step from the step's compute times (also given to the algorithm as ``ctx.compute_time``) and ``bytes_sent``
    (``"async"`` algorithms: from their aux ``"tick_s"``). ``participation``: a
    :class:`simdl.participation.Sampler` (or None): the mask of round ``t // round_length`` is drawn every step and
    passed to :func:`build_step` (``freeze_inactive``: see there). ``state`` has the layout of :func:`pack_state`.
    Compile it with :class:`CompiledChunks`."""
    one_step = build_step(task, algorithm, topology, mixer, batch_size, worker_batch, faults, execution,
                          compute_dtype, freeze_inactive)
    has_clock, has_part = clock is not None, participation is not None

    def timed_step(state, t, data, worker_keys, alg_key):
        if not has_clock and not has_part:
            return one_step(state, t, data, worker_keys, alg_key)
        alg_state, times, part = unpack_state(state, has_clock, has_part)
        compute = None if clock is None else clock.compute_times(alg_key, t)
        active = None
        if has_part:
            part, active = participation.mask(part, alg_key, t // round_length)
        alg_state, loss, aux = one_step(alg_state, t, data, worker_keys, alg_key, compute, active)
        if has_clock:
            tick = aux.get("tick_s") if clock.kind == "async" else None
            times = clock.step(times, aux["bytes_sent"], t, alg_key, compute=compute, active=active, tick=tick)
        return pack_state(alg_state, times, part), loss, aux

    def chunk(state, start, data, worker_keys, alg_key, length):
        def body(carry, i):
            state, loss_sum, sums, bad = carry
            t = start + i
            state, loss, aux = timed_step(state, t, data, worker_keys, alg_key)
            bad = jnp.where(jnp.logical_and(~jnp.isfinite(loss), bad < 0), t, bad)
            counters = {k: v for k, v in aux.items() if k != "lr"}
            sums = jax.tree_util.tree_map(lambda a, b: a + jnp.asarray(b, jnp.float32), sums, counters)
            return (state, loss_sum + loss, sums, bad), aux["lr"]

        _, _, aux_shape = jax.eval_shape(lambda s: timed_step(s, start, data, worker_keys, alg_key), state)
        zeros = {k: jnp.zeros(v.shape, jnp.float32) for k, v in aux_shape.items() if k != "lr"}
        init = (state, jnp.float32(0.0), zeros, jnp.int32(-1))
        (state, loss_sum, sums, bad), lrs = jax.lax.scan(body, init, jnp.arange(length, dtype=jnp.int32))
        return state, loss_sum / length, sums, bad, lrs[-1]

    return chunk


def build_evaluate(task: Task, algorithm: Algorithm):
    """``evaluate(data, state) -> dict`` of the task's metrics plus the consensus distance Ξ² of
    ``algorithm.params(state)``."""

    def evaluate(data, state):
        params = algorithm.params(state)
        out = dict(task.evaluate(data, params))
        out["consensus_distance"] = consensus_distance(params)
        return out

    return evaluate


def init_state(task: Task, algorithm: Algorithm, topology, mixer, seed: int):
    """Initial stacked state and keys of a run: ``(state, worker_keys, alg_key)``; every worker starts at x⁰."""
    n = task.n_workers
    k_init, k_data, k_alg = jax.random.split(jax.random.PRNGKey(seed), 3)
    worker_keys = jax.vmap(partial(jax.random.fold_in, k_data))(jnp.arange(n))
    params0 = _stack(jax.jit(task.init_params)(k_init), n)  # one compilation instead of one per initializer op
    ctx0 = Context(jnp.int32(0), k_alg, topology, partial(mixer, step=0), np.asarray(task.worker_weights))
    return algorithm.init(params0, ctx0), worker_keys, k_alg
