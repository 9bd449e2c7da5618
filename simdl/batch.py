"""Many runs as one compiled program: runs that differ only in array values (seeds, learning rates, α partitions of
equal size, other traced hyperparameters) are stacked along a leading *run* axis and stepped with ``jax.vmap``."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from simdl.algorithms.base import Algorithm
from simdl.faults import as_faults, check_algorithm
from simdl.mixing import make_mixer
from simdl.simulate import (
    CompiledChunks,
    Recorder,
    SimulationResult,
    blew_up,
    build_chunk,
    build_evaluate,
    check_compute_dtype,
    check_execution,
    device_info,
    final_values,
    host_metrics,
    init_state,
    pack_state,
    resolve_execution,
    unpack_state,
    validate,
)
from simdl.systems import build_clock
from simdl.tasks.base import Task


def _shared_or_stacked(trees: Sequence):
    """Stack the leaves that differ between runs (run axis 0); keep identical leaves once.

    Returns ``(tree, in_axes)`` where ``in_axes`` has 0 for stacked leaves and None for shared ones.
    """
    flat = [jax.tree_util.tree_flatten(t) for t in trees]
    treedef = flat[0][1]
    for _leaves, td in flat[1:]:
        if td != treedef:
            raise ValueError("runs batched together need tasks with the same data structure")
    leaves, axes = [], []
    for i, first in enumerate(flat[0][0]):
        column = [f[0][i] for f in flat]
        if any(np.shape(c) != np.shape(first) for c in column):
            raise ValueError(f"runs batched together need equal data shapes; got {[np.shape(c) for c in column]}")
        same = all(c is first for c in column) or all(np.array_equal(np.asarray(c), np.asarray(first))
                                                      for c in column[1:])
        leaves.append(first if same else jnp.stack(column))
        axes.append(None if same else 0)
    return jax.tree_util.tree_unflatten(treedef, leaves), jax.tree_util.tree_unflatten(treedef, axes)


def simulate_batch(
    tasks: Sequence[Task],
    algorithm_fn: Callable[[dict], Algorithm],
    hparams: Sequence[dict],
    topology,
    steps: int,
    batch_size: int = 32,
    seeds: Sequence[int] | None = None,
    eval_every: int | None = None,
    mixing: str = "auto",
    callback: Callable[[int, list[dict | None]], None] | None = None,
    faults=None,
    worker_batch: int | None = None,
    execution: str = "auto",
    compute_dtype: str = "float32",
    system=None,
    participation=None,
) -> list[SimulationResult]:
    """Run R simulations that share one compiled program, vmapped over a leading run axis.

    Args:
      tasks: R tasks with identical structure and shapes (e.g. the same dataset/model/n with different Dirichlet α
        or partition seeds); identical data leaves are stored once.
      algorithm_fn: ``algorithm_fn(hp) -> Algorithm`` where ``hp`` maps names to scalars. It is called with Python
        floats (to initialise and validate each run) and with traced scalars (inside the compiled program), so
        every value in ``hp`` must be usable as a traced number (pass a learning rate as a schedule, e.g.
        ``lambda t: hp["learning_rate"]``).
      hparams: R dicts with the same keys.
      topology: shared topology.
      steps, batch_size, eval_every, mixing: as in :func:`simdl.simulate`.
      seeds: R seeds (default ``0, 1, ...``).
      callback: called after each evaluation with ``(step, rows)``, one row per run (None once a run diverged).
      faults: :class:`simdl.faults.Faults` shared by all runs (each run draws its own masks from its seed).
      worker_batch, execution: as in :func:`simdl.simulate` (how each run's per-worker gradients are computed).
      compute_dtype: ``"float32"`` (default) or ``"bfloat16"``, shared by all runs: the dtype of the per-worker
        forward/backward passes, as in :func:`simdl.simulate` (state, mixing and metrics stay float32); recorded in
        each result's ``info["compute_dtype"]``.
      system: a :class:`simdl.systems.SystemModel` shared by all runs, as in :func:`simdl.simulate`: every run's
        history gains ``sim_time_s``; each run draws its own compute times from its seed unless ``system.seed``
        is set (then all runs see the same draws).
      participation: partial participation shared by all runs, as in :func:`simdl.simulate` (each run draws its
        own masks from its seed; weighted client sampling needs equal ``worker_weights`` in every task).

    Returns:
      R :class:`SimulationResult`, equal (up to float reassociation) to R separate :func:`simdl.simulate` calls.

    Raises:
      ValueError: mismatched lengths, incompatible tasks, or anything :func:`simdl.simulate` rejects.
    """
    R = len(tasks)
    seeds = list(range(R)) if seeds is None else list(seeds)
    if not (len(hparams) == R == len(seeds)) or R == 0:
        raise ValueError(f"need as many hparams ({len(hparams)}) and seeds ({len(seeds)}) as tasks ({R}), > 0")
    keys = sorted(hparams[0])
    if any(sorted(h) != keys for h in hparams):
        raise ValueError("every run's hparams must have the same keys")
    check_compute_dtype(compute_dtype)
    eval_every = max(1, steps // 20) if eval_every is None and isinstance(steps, int) else eval_every
    algs = [algorithm_fn(h) for h in hparams]
    for task, alg in zip(tasks, algs, strict=True):
        validate(task, alg, topology, steps, batch_size, eval_every)
        if task.n_workers != tasks[0].n_workers or task.shard_size != tasks[0].shard_size:
            raise ValueError("runs batched together need the same n_workers and shard size")
    faults = as_faults(faults)
    check_algorithm(faults, algs[0], topology, tasks[0])
    clock = build_clock(system, topology, algs[0])
    from simdl import participation as part_mod

    participation = part_mod.check_participation(participation, tasks[0].n_workers, steps, algs[0].round_length)
    part_mod.check_algorithm(participation, algs[0], topology, tasks[0])
    if (isinstance(participation, part_mod.ClientSampling) and participation.weighted
            and any(not np.array_equal(t.worker_weights, tasks[0].worker_weights) for t in tasks)):
        raise ValueError("weighted client sampling in a batch needs the same worker_weights (shard sizes) in every "
                         "task; run tasks with different shard sizes separately")
    samp = part_mod.sampler(participation, tasks[0].n_workers, tasks[0].worker_weights)
    mixer = make_mixer(topology, mixing)
    inits = [init_state(t, a, topology, mixer, s) for t, a, s in zip(tasks, algs, seeds, strict=True)]
    inits = [(pack_state(i[0], None if clock is None else clock.init(), None if samp is None else samp.init()),
              *i[1:]) for i in inits]
    state = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *[i[0] for i in inits])
    worker_keys = jnp.stack([i[1] for i in inits])
    alg_keys = jnp.stack([i[2] for i in inits])
    data, data_axes = _shared_or_stacked([t.data for t in tasks])
    hp = {k: jnp.asarray([float(h[k]) for h in hparams], jnp.float32) for k in keys}
    chunk = build_chunk(tasks[0], algorithm_fn, topology, mixer, batch_size, worker_batch, faults=faults,
                        execution=check_execution(execution), compute_dtype=compute_dtype, clock=clock,
                        participation=samp, round_length=algs[0].round_length,
                        freeze_inactive=part_mod.runner_handles(algs[0]))
    evaluate = build_evaluate(tasks[0], algorithm_fn)
    alg_state = lambda s: unpack_state(s, clock is not None, samp is not None)[0]  # noqa: E731

    def run(state, start, data, worker_keys, alg_keys, hp, length):
        f = jax.vmap(partial(chunk, length=length), in_axes=(0, None, data_axes, 0, 0, 0))
        return f(state, start, data, worker_keys, alg_keys, hp)

    run_chunk = CompiledChunks(run)
    run_eval = jax.jit(jax.vmap(evaluate, in_axes=(data_axes, 0, 0)))
    recs = [Recorder() for _ in range(R)]
    diverged: list[int | None] = [None] * R
    done = 0
    t0 = time.perf_counter()
    while done < steps and any(d is None for d in diverged):
        length = min(eval_every, steps - done)
        state, loss, sums, bad, lr = run_chunk(state, jnp.int32(done), data, worker_keys, alg_keys, hp, length)
        bad = np.asarray(bad)
        done += length
        metrics = {k: np.asarray(v) for k, v in run_eval(data, alg_state(state), hp).items()}
        times = None if clock is None else jax.device_get(unpack_state(state, True, samp is not None)[1])
        rows: list[dict | None] = []
        for r in range(R):
            if diverged[r] is None and bad[r] >= 0:
                diverged[r] = int(bad[r])
            m = host_metrics({k: np.asarray(v)[r] for k, v in metrics.items()})
            if diverged[r] is None and not all(np.all(np.isfinite(v)) for v in m.values()):
                diverged[r] = done
            if diverged[r] is not None:
                rows.append(None)
                continue
            if times is not None:
                m["sim_time_s"] = clock.elapsed(jax.tree_util.tree_map(lambda x, r=r: x[r], times))
            s = {k: np.asarray(v)[r] for k, v in sums.items()}
            row = recs[r].add(done, np.asarray(loss)[r], s, np.asarray(lr)[r], m)
            if blew_up({k: v[0] for k, v in recs[r].history.items()}, row):
                diverged[r] = done
            rows.append(row)
        if callback is not None:
            callback(done, rows)
    wall = time.perf_counter() - t0
    state = alg_state(state)
    out = []
    for r in range(R):
        hist = recs[r].arrays()
        state_r = jax.tree_util.tree_map(lambda x, r=r: x[r], state)
        params_r = algs[r].params(state_r)  # run r's own state first: params may combine leaves (SGP's x / w)
        info = {"task": tasks[r].info | {"name": tasks[r].name},
                "algorithm": {"name": algs[r].name, **algs[r].hyperparams, **hparams[r]},
                "topology": topology.describe(), "steps": steps, "batch_size": batch_size, "seed": seeds[r],
                "eval_every": eval_every, "mixing": mixer.method,
                **resolve_execution(tasks[r], execution, worker_batch, params_r, batch_size),
                "compiles": run_chunk.compiles, "batched_runs": R,
                "faults": None if faults is None else faults._asdict(), "compute_dtype": compute_dtype,
                "wall_time_s": wall, "compile_time_s": run_chunk.compile_time_s,
                "steps_done": int(hist["step"][-1]) if len(hist.get("step", [])) else 0, **device_info()}
        if clock is not None:
            info["system"] = clock.system.describe()
        if participation is not None:
            info["participation"] = part_mod.describe(participation)
        out.append(SimulationResult(params_r, hist, final_values(hist), diverged[r], info,
                                    state_r))
    return out
