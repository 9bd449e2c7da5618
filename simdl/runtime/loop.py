"""The one host loop: R runs (R = 1 for :func:`simulate`) advance chunk by chunk through one compiled program, are
evaluated between chunks, and report to hooks (progress, callbacks, TensorBoard, checkpoints). Every feature
(devices, checkpoints, progress, faults, participation, the simulated clock, execution strategies) works the same
for a single run and for a batch."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from simdl.algorithms.base import Algorithm
from simdl.algorithms.inject import inject_hyperparams
from simdl.faults import as_faults, check_algorithm
from simdl.mixing import make_mixer
from simdl.runtime.checkpoint import Checkpoint, run_fingerprint
from simdl.runtime.compiled import CompiledChunks
from simdl.runtime.execution import check_compute_dtype, check_execution, resolve_execution
from simdl.runtime.hooks import Callback, Hook, ProgressBar
from simdl.runtime.program import (
    build_chunk,
    build_evaluate,
    check_count,
    device_info,
    init_state,
    pack_state,
    unpack_state,
    validate,
)
from simdl.runtime.record import Recorder, SimulationResult, blew_up, final_values, host_metrics
from simdl.sharding import make_sharded_mixer, placement
from simdl.systems import build_clock
from simdl.tasks.base import Task


class Loop:
    """What the host loop holds, read by hooks (:mod:`simdl.runtime.hooks`).

    Attributes:
      steps: steps every run is to take.
      names: one display name per run.
      fingerprints: one :func:`simdl.runtime.checkpoint.run_fingerprint` per run.
      batched: whether ``state`` has a leading run axis.
      done: steps taken so far.
      state: the run state (layout of :func:`simdl.runtime.program.pack_state`, run axis first when batched).
      recorders: one :class:`simdl.runtime.record.Recorder` per run.
      diverged: per run, the step at which it diverged, or None.
    """

    def __init__(self, steps: int, names: list[str], fingerprints: list[dict], batched: bool, state):
        self.steps, self.names, self.fingerprints, self.batched = steps, names, fingerprints, batched
        self.done, self.state = 0, state
        self.recorders = [Recorder() for _ in names]
        self.diverged: list[int | None] = [None] * len(names)


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


def _take(tree, r: int):
    return jax.tree_util.tree_map(lambda x: x[r], tree)


def _check_checkpointing(checkpoint_dir, checkpoint_every, resume, eval_every) -> None:
    if checkpoint_every is not None:
        check_count("checkpoint_every", checkpoint_every)
        if checkpoint_dir is None or checkpoint_every % eval_every:
            raise ValueError(f"checkpoint_every={checkpoint_every} needs checkpoint_dir and must be a multiple of "
                             f"eval_every={eval_every}")
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs checkpoint_dir")


def _run(tasks: Sequence[Task], algorithms: Sequence[Algorithm], seeds: Sequence[int], topology, *, steps: int,
         batch_size: int, eval_every: int, mixing: str, hooks: Sequence[Hook], devices, checkpoint_dir,
         checkpoint_every, resume: bool, worker_batch, faults, execution: str, compute_dtype: str, system,
         participation, batched: bool) -> list[SimulationResult]:
    """The loop shared by :func:`simulate` (``batched=False``: one run, no run axis) and :func:`simulate_batch`.
    Everything is validated before the first compilation."""
    from simdl import participation as part_mod

    R, task0, alg0 = len(tasks), tasks[0], algorithms[0]
    for task, alg in zip(tasks, algorithms, strict=True):
        validate(task, alg, topology, steps, batch_size, eval_every)
        if task.n_workers != task0.n_workers or task.shard_size != task0.shard_size:
            raise ValueError("runs batched together need the same n_workers and shard size")
    _check_checkpointing(checkpoint_dir, checkpoint_every, resume, eval_every)
    if worker_batch is not None:
        check_count("worker_batch", worker_batch)
    check_execution(execution)
    check_compute_dtype(compute_dtype)
    faults = as_faults(faults)
    check_algorithm(faults, alg0, topology, task0)
    clock = build_clock(system, topology, alg0)
    participation = part_mod.check_participation(participation, task0.n_workers, steps, alg0.round_length)
    part_mod.check_algorithm(participation, alg0, topology, task0)
    if (isinstance(participation, part_mod.ClientSampling) and participation.weighted
            and any(not np.array_equal(t.worker_weights, task0.worker_weights) for t in tasks)):
        raise ValueError("weighted client sampling in a batch needs the same worker_weights (shard sizes) in every "
                         "task; run tasks with different shard sizes separately")
    samp = part_mod.sampler(participation, task0.n_workers, task0.worker_weights)
    layout = None if devices is None else placement(devices, task0.n_workers, run_axis=batched)
    mixer = make_mixer(topology, mixing) if layout is None else make_sharded_mixer(topology, layout.mesh, mixing)

    inits = []
    for task, alg, seed in zip(tasks, algorithms, seeds, strict=True):
        state, worker_keys, alg_key = init_state(task, alg, topology, mixer, seed)
        state = pack_state(state, None if clock is None else clock.init(), None if samp is None else samp.init())
        inits.append((state, worker_keys, alg_key))
    if batched:
        state = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *[i[0] for i in inits])
        worker_keys, alg_keys = jnp.stack([i[1] for i in inits]), jnp.stack([i[2] for i in inits])
        data, data_axes = _shared_or_stacked([t.data for t in tasks])
    else:
        (state, worker_keys, alg_keys), data, data_axes = inits[0], task0.data, None
    chunk = build_chunk(task0, alg0, topology, mixer, batch_size, worker_batch, faults, execution, compute_dtype,
                        clock=clock, participation=samp, round_length=alg0.round_length,
                        freeze_inactive=part_mod.runner_handles(alg0))
    evaluate = build_evaluate(task0, alg0)
    if batched:
        def run(state, start, data, worker_keys, alg_keys, length):
            f = jax.vmap(partial(chunk, length=length), in_axes=(0, None, data_axes, 0, 0))
            return f(state, start, data, worker_keys, alg_keys)

        evaluate = jax.vmap(evaluate, in_axes=(data_axes, 0))
    else:
        run = chunk
    jit_kw = {}
    if layout is not None:  # multi-device: per-worker leaves sharded over the mesh, task data replicated
        state, worker_keys, data = layout.put(state), layout.put(worker_keys), layout.replicate(data)
        state_sh, rep = layout.shardings(state), layout.replicated
        jit_kw = {"in_shardings": (state_sh, rep, rep, layout.shardings(worker_keys), rep),
                  "out_shardings": (state_sh, rep, rep, rep, rep)}
    run_chunk = CompiledChunks(run, **jit_kw)
    run_eval = jax.jit(evaluate)
    alg_state = lambda s: unpack_state(s, clock is not None, samp is not None)[0]  # noqa: E731
    fingerprints = [run_fingerprint(t, a, topology, batch_size, s, eval_every, faults, compute_dtype, mixer.method,
                                    None if clock is None else clock.system, participation)
                    for t, a, s in zip(tasks, algorithms, seeds, strict=True)]
    names = [f"{a.name} on {topology.name}" + (f" (seed {s})" if batched else "")
             for a, s in zip(algorithms, seeds, strict=True)]
    loop = Loop(steps, names, fingerprints, batched, state)
    hooks = list(hooks)
    if checkpoint_dir is not None:
        hooks.insert(0, Checkpoint(checkpoint_dir, checkpoint_every or eval_every, resume))
    stopped = [steps] * R
    eval_times: list[float] = []
    t0 = time.perf_counter()
    started: list[Hook] = []
    try:
        for hook in hooks:
            started.append(hook)
            resumed = hook.on_start(loop)
            if resumed is not None:
                loop.done, loop.recorders, loop.diverged = resumed.done, resumed.recorders, list(resumed.diverged)
                loop.state = resumed.state if layout is None else layout.put(resumed.state)
        while loop.done < steps and any(d is None for d in loop.diverged):
            length = min(eval_every, steps - loop.done)
            loop.state, loss, sums, bad, lr = run_chunk(loop.state, jnp.int32(loop.done), data, worker_keys,
                                                        alg_keys, length)
            host = [np.asarray(x) for x in (loss, bad, lr)]
            loss, bad, lr = host if batched else [x[None] for x in host]
            sums = {k: np.asarray(v) if batched else np.asarray(v)[None] for k, v in sums.items()}
            for r in range(R):
                if loop.diverged[r] is None and bad[r] >= 0:
                    loop.diverged[r], stopped[r] = int(bad[r]), loop.done
            if all(d is not None for d in loop.diverged):
                break
            loop.done += length
            te = time.perf_counter()
            metrics = {k: np.asarray(v) for k, v in run_eval(data, alg_state(loop.state)).items()}
            eval_times.append(time.perf_counter() - te)
            times = None if clock is None else jax.device_get(unpack_state(loop.state, True, samp is not None)[1])
            rows: list[dict | None] = []
            for r in range(R):
                if loop.diverged[r] is not None:
                    rows.append(None)
                    continue
                m = host_metrics({k: v[r] if batched else v for k, v in metrics.items()})
                if not all(np.all(np.isfinite(v)) for v in m.values()):
                    loop.diverged[r], stopped[r] = loop.done, loop.done
                    rows.append(None)
                    continue
                if times is not None:
                    m["sim_time_s"] = clock.elapsed(_take(times, r) if batched else times)
                row = loop.recorders[r].add(loop.done, loss[r], {k: v[r] for k, v in sums.items()}, lr[r], m)
                if blew_up({k: v[0] for k, v in loop.recorders[r].history.items()}, row):
                    loop.diverged[r], stopped[r] = loop.done, loop.done
                rows.append(row)
            for hook in hooks:
                hook.on_evaluation(loop, rows)
    finally:
        for hook in started:
            hook.close()
    wall = time.perf_counter() - t0
    final_state = alg_state(loop.state)
    results = []
    for r in range(R):
        hist = loop.recorders[r].arrays()
        state_r = _take(final_state, r) if batched else final_state
        params_r = algorithms[r].params(state_r)  # run r's own state first: params may combine leaves (SGP's x / w)
        info = {
            "task": tasks[r].info | {"name": tasks[r].name},
            "algorithm": {"name": algorithms[r].name, **algorithms[r].hyperparams},
            "topology": topology.describe(),
            "steps": steps, "batch_size": batch_size, "seed": seeds[r], "eval_every": eval_every,
            "mixing": mixer.method,
            **resolve_execution(tasks[r], execution, worker_batch, params_r, batch_size),
            "compiles": run_chunk.compiles, "wall_time_s": wall, "compile_time_s": run_chunk.compile_time_s,
            "eval_time_s": float(sum(eval_times)), "eval_first_time_s": eval_times[0] if eval_times else 0.0,
            "evaluations": len(eval_times), "steps_done": min(loop.done, stopped[r]),
            "devices": 1 if layout is None else int(layout.mesh.size), **device_info(),
            "faults": None if faults is None else faults._asdict(), "compute_dtype": compute_dtype,
        }
        if batched:
            info["batched_runs"] = R
        if clock is not None:
            info["system"] = clock.system.describe()
        if participation is not None:
            info["participation"] = part_mod.describe(participation)
        results.append(SimulationResult(params_r, hist, final_values(hist), loop.diverged[r], info, state_r))
    return results


def _default_eval_every(steps, eval_every):
    return max(1, steps // 20) if eval_every is None and isinstance(steps, int) else eval_every


def _hooks(progress: bool, callback, per_run: bool, desc: str | None = None) -> list[Hook]:
    hooks: list[Hook] = []
    if callback is not None:
        hooks.append(Callback(callback, per_run=per_run))
    if progress:
        hooks.append(ProgressBar(desc))
    return hooks


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
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
    worker_batch: int | None = None,
    faults=None,
    execution: str = "auto",
    compute_dtype: str = "float32",
    system=None,
    participation=None,
    hooks: Sequence[Hook] = (),
) -> SimulationResult:
    """Simulate ``steps`` synchronous steps of ``algorithm`` by ``task.n_workers`` workers on ``topology``.

    The steps between two evaluations run as one compiled ``lax.scan`` (state donated); every chunk has the same
    length, so the program compiles once (a shorter final chunk, when ``steps`` is not a multiple of
    ``eval_every``, compiles once more). Randomness is derived from ``seed``, the worker index and the step index
    only, so results do not depend on ``eval_every``, on the device count, or on being interrupted and resumed.
    This is :func:`simulate_batch`'s loop with one run and no run axis.

    Args:
      task: a :class:`simdl.tasks.Task`.
      algorithm: a :class:`simdl.algorithms.Algorithm` (e.g. ``simdl.algorithms.dsgd(0.1)``).
      topology: a :class:`simdl.topologies.Topology` with ``n == task.n_workers``.
      steps: number of steps (each worker takes one gradient per step), ≥ 1.
      batch_size: per-worker minibatch size B, ≤ the worker's shard size.
      seed: PRNG seed (initial model, data order, algorithm randomness).
      eval_every: steps between evaluations (default ``max(1, steps // 20)``).
      mixing: mixing path, see :func:`simdl.mixing.make_mixer` (``auto``, ``dense``, ``sparse``, ``shift``, ``mean``).
      progress: show a tqdm progress bar over steps (:class:`simdl.runtime.hooks.ProgressBar`).
      callback: called after each evaluation with ``(step, metrics)`` (:class:`simdl.runtime.hooks.Callback`).
      devices: ``None`` (default): one device. An int k (the first k devices), a sequence of ``jax.Device`` or a
        ``Mesh``: shard the worker axis over them (:mod:`simdl.sharding`; n must be divisible by the device
        count); results equal the single-device run up to float rounding.
      checkpoint_dir: folder for orbax checkpoints of the full run state (algorithm state, history, counters;
        :class:`simdl.runtime.checkpoint.Checkpoint`).
      checkpoint_every: checkpoint every this many steps (a multiple of ``eval_every``; default: every evaluation
        when ``checkpoint_dir`` is given). Checkpoints are written atomically (a killed run leaves the previous
        one intact).
      resume: continue from the latest checkpoint in ``checkpoint_dir`` (if any); the final result equals an
        uninterrupted run's exactly. A checkpoint of a different run (its fingerprint: task, algorithm, topology,
        batch size, seed, ... differ) is refused, naming the difference.
      worker_batch: compute the workers' gradients k at a time (``lax.map`` with ``batch_size=k``) instead of all
        n at once, when the stacked activations would not fit in memory (see
        :func:`simdl.runtime.per_worker_grads`).
      faults: simulated faults, a :class:`simdl.faults.Faults` (or a dict with its keys): per-step message drops,
        link failures and stragglers, seeded from ``seed`` and independent of ``eval_every``; probabilities of 0
        change nothing. See :mod:`simdl.faults` for the exact semantics and the algorithms that support them.
      execution: how the per-worker gradients run: ``"auto"`` (default; measured choice per model and device),
        ``"vmap"``, ``"map"`` or ``"loop"`` (override; all give the same numbers, see
        :func:`simdl.runtime.per_worker_grads`).
      compute_dtype: ``"float32"`` (default) or ``"bfloat16"``: the dtype of each worker's forward and backward
        pass (mixed precision, :func:`simdl.runtime.in_compute_dtype`). Parameters, algorithm/optimizer state, the
        gradients the algorithm sees, mixing, consensus distance and every evaluation stay float32; models compute
        in the dtype of their (cast) parameters and inputs, classification takes the cross-entropy on float32
        logits. Tasks without a model (quadratics, mean estimation) compute their loss in bfloat16 too. Recorded
        in ``info["compute_dtype"]``.
      system: a :class:`simdl.systems.SystemModel` (or a dict of its fields): compute times (s), link latencies (s)
        and bandwidths (bytes/s). The compiled step then also advances a simulated clock (:mod:`simdl.systems`,
        docs/algorithms.md#simulated-time) and the history gains ``sim_time_s`` (float64 seconds: when the latest
        worker is ready after the evaluated step); ``info["system"]`` records the model. ``None`` (default): no
        clock. The step's compute times reach the algorithm as ``ctx.compute_time``.
      participation: partial participation (:mod:`simdl.participation`): ``client_sampling(k)``,
        ``markov(p_leave, p_return)``, ``trace(mask)`` or a ``[participation]`` dict. Each communication round
        (``algorithm.round_length`` steps) only the round's active workers compute and send; the history gains
        ``active_steps`` and ``info["participation"]`` records the spec. ``None`` (default): every worker, every
        step (the same program as without the argument).
      hooks: further :class:`simdl.runtime.hooks.Hook` objects (e.g. :class:`simdl.runtime.hooks.TensorBoard`),
        called after the checkpoint, callback and progress hooks.

    Returns:
      :class:`SimulationResult`.

    Raises:
      ValueError: invalid arguments (checked before any compilation; see :func:`simdl.runtime.validate`,
        :func:`simdl.systems.check_system`, :func:`simdl.participation.check_participation` and
        :func:`simdl.participation.check_algorithm`).
    """
    eval_every = _default_eval_every(steps, eval_every)
    (result,) = _run([task], [algorithm], [seed], topology, steps=steps, batch_size=batch_size,
                     eval_every=eval_every, mixing=mixing,
                     hooks=_hooks(progress, callback, False, f"{algorithm.name} on {topology.name}") + list(hooks),
                     devices=devices, checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every,
                     resume=resume, worker_batch=worker_batch, faults=faults, execution=execution,
                     compute_dtype=compute_dtype, system=system, participation=participation, batched=False)
    return result


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
    progress: bool = False,
    devices: int | Sequence | None = None,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
    hooks: Sequence[Hook] = (),
) -> list[SimulationResult]:
    """Run R simulations that share one compiled program, vmapped over a leading run axis.

    The algorithm is built once (:func:`simdl.algorithms.inject_hyperparams`): each run's hyperparameters are
    float32 scalars in its state, so R runs are a vmap over (state, keys, data).

    Args:
      tasks: R tasks with identical structure and shapes (e.g. the same dataset/model/n with different Dirichlet α
        or partition seeds); identical data leaves are stored once.
      algorithm_fn: ``algorithm_fn(hp) -> Algorithm`` where ``hp`` maps names to numbers. It is called with Python
        floats (to initialise and validate each run) and with float32 scalars, traced inside the compiled program,
        so every value in ``hp`` must be usable as a traced number (pass a learning rate as a schedule, e.g.
        ``lambda t: hp["learning_rate"]``).
      hparams: R dicts with the same keys (numbers; may be empty).
      topology: shared topology.
      steps: as in :func:`simulate`, shared by all runs.
      batch_size: as in :func:`simulate`, shared by all runs.
      eval_every: as in :func:`simulate`, shared by all runs.
      mixing: as in :func:`simulate`, shared by all runs.
      worker_batch: as in :func:`simulate`, shared by all runs.
      execution: as in :func:`simulate`, shared by all runs.
      compute_dtype: as in :func:`simulate`, shared by all runs.
      faults: as in :func:`simulate`; each run draws its own masks from its seed.
      system: as in :func:`simulate`; each run draws its own compute times from its seed unless ``system.seed`` is
        set (then all runs see the same draws).
      participation: as in :func:`simulate`; each run draws its own masks from its seed (weighted client sampling
        needs equal ``worker_weights`` in every task).
      progress: as in :func:`simulate`.
      devices: as in :func:`simulate`; the worker axis (axis 1, after the run axis) is sharded.
      checkpoint_dir: as in :func:`simulate`; a checkpoint holds all R runs.
      checkpoint_every: as in :func:`simulate`.
      resume: as in :func:`simulate`; each run's fingerprint is checked.
      hooks: as in :func:`simulate`.
      seeds: R seeds (default ``0, 1, ...``).
      callback: called after each evaluation with ``(step, rows)``, one row per run (None once a run diverged).

    Returns:
      R :class:`SimulationResult`, equal (up to float reassociation) to R separate :func:`simulate` calls;
      ``info["batched_runs"] = R``; ``state`` is each run's algorithm state (without the injected hyperparameters).

    Raises:
      ValueError: mismatched lengths, incompatible tasks, a hyperparameter that is not a number, or anything
        :func:`simulate` rejects (checked before any compilation).
    """
    R = len(tasks)
    seeds = list(range(R)) if seeds is None else list(seeds)
    if not (len(hparams) == R == len(seeds)) or R == 0:
        raise ValueError(f"need as many hparams ({len(hparams)}) and seeds ({len(seeds)}) as tasks ({R}), > 0")
    keys = sorted(hparams[0])
    if any(sorted(h) != keys for h in hparams):
        raise ValueError("every run's hparams must have the same keys")
    factory = inject_hyperparams(algorithm_fn)
    algorithms = [factory(**h) for h in hparams]
    eval_every = _default_eval_every(steps, eval_every)
    results = _run(tasks, algorithms, seeds, topology, steps=steps, batch_size=batch_size, eval_every=eval_every,
                   mixing=mixing, hooks=_hooks(progress, callback, True) + list(hooks), devices=devices,
                   checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every, resume=resume,
                   worker_batch=worker_batch, faults=faults, execution=execution, compute_dtype=compute_dtype,
                   system=system, participation=participation, batched=True)
    return [res._replace(state=res.state.inner_state) for res in results]
