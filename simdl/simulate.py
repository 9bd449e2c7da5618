"""The runner: compiles a whole run into ``jit(lax.scan(step))`` over chunks of steps and evaluates between chunks."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from simdl.algorithms.base import Algorithm, Context
from simdl.metrics import consensus_distance
from simdl.mixing import make_mixer
from simdl.sharding import make_sharded_mixer, placement
from simdl.tasks.base import Task


class SimulationResult(NamedTuple):
    """What :func:`simulate` returns.

    Attributes:
      params: final stacked worker models (leading axis n).
      history: metric name -> numpy array over evaluation points. Always: ``step``, ``loss`` (mean worker minibatch
        loss over the steps since the previous evaluation), ``consensus_distance`` (Ξ², squared parameter units),
        ``bytes_per_worker`` (cumulative bytes sent, mean over workers), ``learning_rate``, and the task's metrics
        (``avg_model_loss``; classification: ``avg_model_accuracy``, ``worker_accuracy_mean``,
        ``worker_accuracy_min``, ...; quadratics: ``suboptimality``, ...).
      final: the last evaluation's metrics as floats.
      diverged_at: first step whose mean loss was NaN/Inf, or ``None``. The history stops at the last finite
        evaluation.
      info: run description: config, compile count, wall times, device, jax version, mixing method.
      state: final algorithm state.
    """

    params: Any
    history: dict
    final: dict
    diverged_at: int | None
    info: dict
    state: Any


def _check_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def validate(task: Task, algorithm: Algorithm, topology, steps: int, batch_size: int, eval_every: int) -> None:
    """All checks done before anything is compiled. Raises ValueError naming the bad value."""
    _check_int("steps", steps)
    _check_int("batch_size", batch_size)
    _check_int("eval_every", eval_every)
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


def _device_info() -> dict:
    dev = jax.devices()[0]
    return {"platform": dev.platform, "device_kind": dev.device_kind, "device_count": jax.device_count(),
            "jax_version": jax.__version__}


def build_step(task: Task, algorithm: Algorithm, topology, mixer, batch_size: int, alg_key):
    """One simulated step ``(state, t, data, worker_keys) -> (state, mean_loss, aux)``, vectorized over workers."""
    n = task.n_workers
    workers = jnp.arange(n)
    weights = np.asarray(task.worker_weights, np.float64)
    grad_fn = jax.vmap(jax.value_and_grad(task.loss))
    sample_fn = jax.vmap(task.sample, in_axes=(None, 0, 0, None, None))

    def step(state, t, data, worker_keys):
        batch = sample_fn(data, worker_keys, workers, t, batch_size)
        losses, grads = grad_fn(algorithm.query(state), batch)
        ctx = Context(t, jax.random.fold_in(alg_key, t), topology, partial(mixer, step=t), weights)
        state, aux = algorithm.step(state, grads, ctx)
        return state, jnp.mean(losses), aux

    return step


def simulate(
    task: Task,
    algorithm: Algorithm,
    topology,
    steps: int,
    batch_size: int = 32,
    seed: int = 0,
    eval_every: int | None = None,
    mixing: str = "auto",
    progress: bool = False,
    callback: Callable[[int, dict], None] | None = None,
    devices: int | Sequence | None = None,
) -> SimulationResult:
    """Simulate ``steps`` synchronous steps of ``algorithm`` by ``task.n_workers`` workers on ``topology``.

    The steps between two evaluations run as one compiled ``lax.scan`` (state donated); every chunk has the same
    length, so the program compiles once (a shorter final chunk, when ``steps`` is not a multiple of
    ``eval_every``, compiles once more). Randomness is derived from ``seed``, the worker index and the step index
    only, so results do not depend on ``eval_every``.

    Args:
      task: a :class:`simdl.tasks.Task`.
      algorithm: a :class:`simdl.algorithms.Algorithm` (e.g. ``simdl.algorithms.dsgd(0.1)``).
      topology: a :class:`simdl.topologies.Topology` with ``n == task.n_workers``.
      steps: number of steps (each worker takes one gradient per step), ≥ 1.
      batch_size: per-worker minibatch size B, ≤ the worker's shard size.
      seed: PRNG seed (initial model, data order, algorithm randomness).
      eval_every: steps between evaluations (default ``max(1, steps // 20)``).
      mixing: mixing path, see :func:`simdl.mixing.make_mixer` (``auto``, ``dense``, ``sparse``, ``shift``, ``mean``).
      progress: show a tqdm progress bar over steps.
      callback: called after each evaluation with ``(step, metrics)``.
      devices: ``None`` (default): one device. An int k (the first k devices), a sequence of ``jax.Device`` or a
        ``Mesh``: shard the worker axis over them (:mod:`simdl.sharding`; n must be divisible by the device
        count); results equal the single-device run up to float rounding.

    Returns:
      :class:`SimulationResult`.

    Raises:
      ValueError: invalid arguments (checked before any compilation; see :func:`validate`).
    """
    eval_every = max(1, steps // 20) if eval_every is None and isinstance(steps, int) else eval_every
    validate(task, algorithm, topology, steps, batch_size, eval_every)
    layout = None if devices is None else placement(devices, task.n_workers)
    mixer = make_mixer(topology, mixing) if layout is None else make_sharded_mixer(topology, layout.mesh, mixing)
    n = task.n_workers
    k_init, k_data, k_alg = jax.random.split(jax.random.PRNGKey(seed), 3)
    worker_keys = jax.vmap(partial(jax.random.fold_in, k_data))(jnp.arange(n))
    params0 = _stack(task.init_params(k_init), n)
    ctx0 = Context(jnp.int32(0), k_alg, topology, partial(mixer, step=0), np.asarray(task.worker_weights))
    state = algorithm.init(params0, ctx0)
    one_step = build_step(task, algorithm, topology, mixer, batch_size, k_alg)
    traces = []

    def chunk(state, start, data, worker_keys, length):
        traces.append(length)  # runs at trace time only: counts compilations

        def body(carry, i):
            state, loss_sum, sums, bad = carry
            t = start + i
            state, loss, aux = one_step(state, t, data, worker_keys)
            bad = jnp.where(jnp.logical_and(~jnp.isfinite(loss), bad < 0), t, bad)
            counters = {k: v for k, v in aux.items() if k != "lr"}
            sums = jax.tree_util.tree_map(lambda a, b: a + jnp.asarray(b, jnp.float32), sums, counters)
            return (state, loss_sum + loss, sums, bad), aux["lr"]

        _, aux_shape = jax.eval_shape(lambda s: algorithm.step(s, algorithm.query(s), ctx0), state)
        zeros = {k: jnp.zeros(v.shape, jnp.float32) for k, v in aux_shape.items() if k != "lr"}
        init = (state, jnp.float32(0.0), zeros, jnp.int32(-1))
        (state, loss_sum, sums, bad), lrs = jax.lax.scan(body, init, jnp.arange(length, dtype=jnp.int32))
        return state, loss_sum / length, sums, bad, lrs[-1]

    jit_kw = {}
    if layout is not None:  # multi-device: per-worker leaves sharded over the mesh, task data replicated
        state, worker_keys = layout.put(state), layout.put(worker_keys)
        task = task._replace(data=layout.replicate(task.data))
        state_sh, rep = layout.shardings(state), layout.replicated
        jit_kw = {"in_shardings": (state_sh, rep, rep, layout.shardings(worker_keys)),
                  "out_shardings": (state_sh, rep, rep, rep, rep)}
    run_chunk = jax.jit(chunk, static_argnums=(4,), donate_argnums=(0,), **jit_kw)

    def evaluate(data, state):
        params = algorithm.params(state)
        out = dict(task.evaluate(data, params))
        out["consensus_distance"] = consensus_distance(params)
        return out

    run_eval = jax.jit(evaluate)
    history: dict[str, list] = {}
    totals: dict[str, np.ndarray] = {}
    diverged_at = None
    t0 = time.perf_counter()
    compile_s = 0.0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc=f"{algorithm.name} on {topology.name}", leave=False)
    done = 0
    try:
        while done < steps:
            length = min(eval_every, steps - done)
            n_traces = len(traces)
            tc = time.perf_counter()
            state, loss, sums, bad, lr = run_chunk(state, jnp.int32(done), task.data, worker_keys, length)
            bad = int(bad)
            if len(traces) > n_traces:
                compile_s += time.perf_counter() - tc
            if bad >= 0:
                diverged_at = bad
                break
            done += length
            for k, v in sums.items():
                totals[k] = totals.get(k, 0.0) + np.asarray(v, np.float64)
            metrics = {k: float(v) for k, v in run_eval(task.data, state).items()}
            if not all(np.isfinite(v) for v in metrics.values()):
                diverged_at = done
                break
            row = {"step": done, "loss": float(loss), **metrics, "learning_rate": float(lr)}
            for k, v in totals.items():  # cumulative counters from the algorithm's aux (mean over workers)
                row["bytes_per_worker" if k == "bytes_sent" else k] = float(np.mean(v))
            for k, v in row.items():
                history.setdefault(k, []).append(v)
            if callback is not None:
                callback(done, row)
            if bar is not None:
                bar.update(length)
                bar.set_postfix(loss=f"{row['loss']:.4g}")
    finally:
        if bar is not None:
            bar.close()
    wall = time.perf_counter() - t0
    hist = {k: np.asarray(v) for k, v in history.items()}
    final = {k: float(v[-1]) for k, v in hist.items()}
    info = {
        "task": task.info | {"name": task.name},
        "algorithm": {"name": algorithm.name, **algorithm.hyperparams},
        "topology": topology.describe(),
        "steps": steps, "batch_size": batch_size, "seed": seed, "eval_every": eval_every,
        "mixing": mixer.method, "compiles": len(traces), "wall_time_s": wall, "compile_time_s": compile_s,
        "steps_done": done, **_device_info(),
    }
    return SimulationResult(algorithm.params(state), hist, final, diverged_at, info, state)
