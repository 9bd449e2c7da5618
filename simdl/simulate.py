"""The runner: compiles a whole run into ``jit(lax.scan(step))`` over chunks of steps and evaluates between chunks."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from simdl.algorithms.base import Algorithm, Context
from simdl.faults import as_faults, check_algorithm, injector, zero_stragglers
from simdl.metrics import consensus_distance
from simdl.mixing import make_mixer
from simdl.mixing.difference import neighbor_difference
from simdl.sharding import make_sharded_mixer, placement
from simdl.systems import build_clock
from simdl.tasks.base import Task


class SimulationResult(NamedTuple):
    """What :func:`simulate` returns.

    Attributes:
      params: final stacked worker models (leading axis n).
      history: metric name -> numpy array over evaluation points. Always: ``step``, ``loss`` (mean worker minibatch
        loss over the steps since the previous evaluation), ``consensus_distance`` (Ξ², squared parameter units),
        ``bytes_per_worker`` (cumulative bytes sent, mean over workers), ``learning_rate``, with a system model
        ``sim_time_s`` (simulated seconds, :mod:`simdl.systems`), and the task's metrics
        (``avg_model_loss``; classification: ``avg_model_accuracy``, ``worker_accuracy_mean``,
        ``worker_accuracy_min``, ...; quadratics: ``suboptimality``, ...).
      final: the last evaluation's metrics as floats.
      diverged_at: first step whose mean loss was NaN/Inf (the history stops at the last finite evaluation), or the
        evaluation step at which the run blew up (:func:`blew_up`: loss and consensus distance both grew beyond
        :data:`BLOWUP_FACTOR` × their first evaluated values; that evaluation is the history's last row), or ``None``.
      info: run description: config, compile count, wall times (``wall_time_s``, ``compile_time_s``; evaluation:
        ``eval_time_s`` summed over ``evaluations``, of which ``eval_first_time_s`` includes its compilation),
        device, jax version, mixing method, the resolved per-worker strategy (``execution``, ``map_batch_size``,
        ``conv_impl``, ``conv_layers``: see :func:`resolve_execution`) and, for classification, what was evaluated
        (``info["task"]["evaluation"]``).
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


def device_info() -> dict:
    """The default device: ``platform``, ``device_kind``, ``device_count`` and ``jax_version`` (recorded in info)."""
    dev = jax.devices()[0]
    return {"platform": dev.platform, "device_kind": dev.device_kind, "device_count": jax.device_count(),
            "jax_version": jax.__version__}


def check_execution(execution: str) -> str:
    """Validate a per-worker execution strategy name (raises ValueError listing the valid ones)."""
    from simdl.models.batched import STRATEGIES

    if execution not in STRATEGIES:
        raise ValueError(f"unknown execution {execution!r}; valid: {', '.join(STRATEGIES)}")
    return execution


#: Valid ``compute_dtype`` values: the dtype of the per-worker forward and backward passes.
COMPUTE_DTYPES = ("float32", "bfloat16")


def check_compute_dtype(compute_dtype) -> str:
    """Validate a ``compute_dtype`` name (one of :data:`COMPUTE_DTYPES`); raises ValueError naming the bad value."""
    if not isinstance(compute_dtype, str) or compute_dtype not in COMPUTE_DTYPES:
        raise ValueError(f"compute_dtype must be 'float32' or 'bfloat16', got {compute_dtype!r}")
    return compute_dtype


def cast_floating(tree, dtype):
    """``tree`` with every floating-point array leaf cast to ``dtype`` (integer, bool and key leaves unchanged)."""
    dtype = jnp.dtype(dtype)

    def cast(x):
        x = jnp.asarray(x)
        return x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x

    return jax.tree_util.tree_map(cast, tree)


def in_compute_dtype(loss: Callable, compute_dtype: str = "float32") -> Callable:
    """``loss(params, batch)`` evaluated in ``compute_dtype``: the floating leaves of ``params`` and ``batch`` are cast
    to it inside the function and the value is returned as a float32 scalar. Differentiating the result w.r.t.
    float32 params gives float32 gradients (the cast's transpose casts the cotangents back), while the model's
    forward and backward passes run in ``compute_dtype``. ``"float32"`` returns ``loss`` itself.

    Raises:
      ValueError: ``compute_dtype`` not in :data:`COMPUTE_DTYPES`.
    """
    check_compute_dtype(compute_dtype)
    if compute_dtype == "float32":
        return loss
    dtype = jnp.dtype(compute_dtype)

    def cast_loss(params, batch):
        return jnp.asarray(loss(cast_floating(params, dtype), cast_floating(batch, dtype))).astype(jnp.float32)

    return cast_loss


def resolve_execution(task: Task, execution: str, worker_batch: int | None, stacked_params,
                      batch_size: int) -> dict:
    """What ``execution="auto"`` (or an override) resolves to for ``task`` on the default backend: ``execution``
    (``"vmap"``, ``"map"`` or ``"loop"``), ``map_batch_size`` (workers per ``lax.map`` iteration, ``None`` unless
    ``"map"``), ``conv_impl`` (the convolution implementations a training step uses, ``"+"``-joined; ``None`` for
    a dense model) and ``conv_layers`` (one entry per convolution, in call order). ``stacked_params``: parameters
    with the worker axis (shapes suffice); ``batch_size``: the per-worker batch B (``conv_impl="auto"`` depends on
    it, see :func:`simdl.models.conv.resolve_conv_impl`)."""
    from simdl.models.batched import resolve_strategy
    from simdl.models.conv import layer_impls

    how = "map" if worker_batch is not None else resolve_strategy(check_execution(execution), stacked_params)
    one = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), stacked_params)
    key = jax.ShapeDtypeStruct((2,), jnp.uint32)
    batch = jax.eval_shape(lambda d, k: task.sample(d, k, 0, 0, int(batch_size)), task.data, key)
    layers = layer_impls(task.loss, one, batch)
    return {"execution": how, "map_batch_size": (worker_batch or 1) if how == "map" else None,
            "conv_impl": "+".join(sorted(set(layers))) or None, "conv_layers": layers}


def per_worker_grads(loss: Callable, worker_batch: int | None = None, execution: str = "auto",
                     compute_dtype: str = "float32") -> Callable:
    """``(stacked_params, stacked_batch) -> (losses (n,), stacked_grads)``: every worker's loss and gradient.

    ``execution`` picks how the n per-worker computations run (:func:`simdl.models.batched.per_worker_apply`):
    ``"vmap"`` (all n at once), ``"map"`` (``lax.map``, one worker or ``worker_batch`` workers per iteration: on CPU
    this avoids the grouped convolutions vmap creates for per-worker conv kernels), ``"loop"``, or ``"auto"``
    (default: vmap on accelerators and for dense models, map for convolutional models on CPU; chosen by measurement,
    see ``benchmarks/``). An int ``worker_batch`` = k forces ``lax.map`` over groups of k workers, bounding
    activation memory to k workers at a time. All choices give the same numbers.

    ``compute_dtype`` (``"float32"`` or ``"bfloat16"``, :func:`in_compute_dtype`): the dtype of each worker's forward
    and backward pass; the parameters' floating leaves (and the batch's) are cast to it inside the differentiated
    function, so ``losses`` are float32 and the gradients have the parameters' dtype (float32) either way.
    """
    from simdl.models.batched import per_worker_apply

    vg = jax.value_and_grad(in_compute_dtype(loss, compute_dtype))
    if worker_batch is not None:
        return per_worker_apply(vg, "map", worker_batch)
    return per_worker_apply(vg, execution)


def build_step(task: Task, algorithm_fn: Callable[[Any], Algorithm], topology, mixer, batch_size: int,
               worker_batch: int | None = None, faults=None, execution: str = "auto", compute_dtype: str = "float32",
               freeze_inactive: bool = True):
    """One simulated step ``(state, t, data, worker_keys, alg_key, hp, compute_time=None, active=None) ->
    (state, mean_loss, aux)``, vectorized over workers. ``algorithm_fn(hp)`` builds the algorithm inside the trace,
    so hyperparameters ``hp`` may be traced (batched runs); for a single run it ignores ``hp``. ``faults``
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

    def step(state, t, data, worker_keys, alg_key, hp, compute_time=None, active=None):
        algorithm = algorithm_fn(hp)
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


def build_chunk(task: Task, algorithm_fn: Callable[[Any], Algorithm], topology, mixer, batch_size: int,
                worker_batch: int | None = None, faults=None, execution: str = "auto",
                compute_dtype: str = "float32", clock=None, participation=None, round_length: int = 1,
                freeze_inactive: bool = True):
    """``chunk(state, start, data, worker_keys, alg_key, hp, length) -> (state, mean_loss, counters, bad, lr)``:
    ``length`` steps from step ``start`` as one ``lax.scan``. ``counters`` sums every aux entry but ``lr`` over the
    chunk; ``bad`` is the first step whose mean loss was not finite (−1 if none). ``faults``, ``compute_dtype``:
    see :func:`build_step`. ``clock``: a :class:`simdl.systems.Clock` (or None): the simulated clock advances every
    step from the step's compute times (also given to the algorithm as ``ctx.compute_time``) and ``bytes_sent``
    (``"async"`` algorithms: from their aux ``"tick_s"``). ``participation``: a
    :class:`simdl.participation.Sampler` (or None): the mask of round ``t // round_length`` is drawn every step and
    passed to :func:`build_step` (``freeze_inactive``: see there). ``state`` has the layout of :func:`pack_state`.
    Compile it with :class:`CompiledChunks`."""
    one_step = build_step(task, algorithm_fn, topology, mixer, batch_size, worker_batch, faults, execution,
                          compute_dtype, freeze_inactive)
    has_clock, has_part = clock is not None, participation is not None

    def timed_step(state, t, data, worker_keys, alg_key, hp):
        if not has_clock and not has_part:
            return one_step(state, t, data, worker_keys, alg_key, hp)
        alg_state, times, part = unpack_state(state, has_clock, has_part)
        compute = None if clock is None else clock.compute_times(alg_key, t)
        active = None
        if has_part:
            part, active = participation.mask(part, alg_key, t // round_length)
        alg_state, loss, aux = one_step(alg_state, t, data, worker_keys, alg_key, hp, compute, active)
        if has_clock:
            tick = aux.get("tick_s") if clock.kind == "async" else None
            times = clock.step(times, aux["bytes_sent"], t, alg_key, compute=compute, active=active, tick=tick)
        return pack_state(alg_state, times, part), loss, aux

    def chunk(state, start, data, worker_keys, alg_key, hp, length):
        def body(carry, i):
            state, loss_sum, sums, bad = carry
            t = start + i
            state, loss, aux = timed_step(state, t, data, worker_keys, alg_key, hp)
            bad = jnp.where(jnp.logical_and(~jnp.isfinite(loss), bad < 0), t, bad)
            counters = {k: v for k, v in aux.items() if k != "lr"}
            sums = jax.tree_util.tree_map(lambda a, b: a + jnp.asarray(b, jnp.float32), sums, counters)
            return (state, loss_sum + loss, sums, bad), aux["lr"]

        _, _, aux_shape = jax.eval_shape(lambda s: timed_step(s, start, data, worker_keys, alg_key, hp), state)
        zeros = {k: jnp.zeros(v.shape, jnp.float32) for k, v in aux_shape.items() if k != "lr"}
        init = (state, jnp.float32(0.0), zeros, jnp.int32(-1))
        (state, loss_sum, sums, bad), lrs = jax.lax.scan(body, init, jnp.arange(length, dtype=jnp.int32))
        return state, loss_sum / length, sums, bad, lrs[-1]

    return chunk


def build_evaluate(task: Task, algorithm_fn: Callable[[Any], Algorithm]):
    """``evaluate(data, state, hp) -> dict`` of the task's metrics plus the consensus distance Ξ²."""

    def evaluate(data, state, hp):
        params = algorithm_fn(hp).params(state)
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


#: A run is marked diverged when, at an evaluation, its mean loss exceeds this factor times the first evaluation's
#: and its consensus distance this factor times the first evaluation's too (a blow-up before NaN/Inf appears).
BLOWUP_FACTOR = 1e3


def host_metrics(metrics: dict) -> dict:
    """One evaluation's metrics on the host: a scalar as a Python float, a per-worker ``(n,)`` metric (e.g.
    ``worker_accuracy``) as a list of floats (the history stacks it to ``(evaluations, n)``)."""
    out = {}
    for k, v in metrics.items():
        a = np.asarray(v, np.float64)
        out[k] = float(a) if a.ndim == 0 else a.tolist()
    return out


def final_values(history: dict) -> dict:
    """The last value of every scalar history metric (per-worker metrics, ``(evaluations, n)``, are left out)."""
    return {k: float(v[-1]) for k, v in history.items() if np.ndim(v) == 1 and len(v)}


def blew_up(first: dict, row: dict, factor: float = BLOWUP_FACTOR) -> bool:
    """Whether evaluation ``row`` shows a blow-up relative to the run's ``first`` evaluation row: the mean loss grew
    beyond ``factor`` × its first value and the consensus distance Ξ² beyond ``factor`` × its first value (floored
    at 1e-12, so exact-average algorithms whose Ξ² stays 0 are never flagged)."""
    loss0, loss = abs(first["loss"]), row["loss"]
    xi0, xi = first.get("consensus_distance", 0.0), row.get("consensus_distance", 0.0)
    return bool(loss0 > 0 and loss > factor * loss0 and xi > factor * max(xi0, 1e-12))


class CompiledChunks:
    """The chunk program compiled ahead of time, once per chunk length.

    ``programs(*args, length)`` runs ``fn(*args, length)`` (``length``: the static last argument; the first argument,
    the state, is donated). A length seen for the first time is lowered and compiled explicitly, so
    :attr:`compiles` (distinct programs) and :attr:`compile_time_s` (seconds spent in XLA compilation only) are
    counted here rather than by side effects inside the traced function.
    """

    def __init__(self, fn: Callable, **jit_kwargs):
        n_args = fn.__code__.co_argcount
        self._jit = jax.jit(fn, static_argnums=(n_args - 1,), donate_argnums=(0,), **jit_kwargs)
        self._programs: dict = {}
        self.compile_time_s = 0.0

    @property
    def compiles(self) -> int:
        return len(self._programs)

    def __call__(self, *args):
        *dynamic, length = args
        program = self._programs.get(length)
        if program is None:
            t0 = time.perf_counter()
            program = self._jit.lower(*args).compile()
            self.compile_time_s += time.perf_counter() - t0
            self._programs[length] = program
        return program(*dynamic)


class Recorder:
    """Host-side history of one run: cumulative counters (float64) and one row per evaluation."""

    def __init__(self, history: dict | None = None, totals: dict | None = None):
        self.history = {k: list(v) for k, v in (history or {}).items()}
        self.totals = {k: np.asarray(v, np.float64) for k, v in (totals or {}).items()}

    def add(self, done: int, loss, sums: dict, lr, metrics: dict) -> dict:
        for k, v in sums.items():
            self.totals[k] = self.totals.get(k, 0.0) + np.asarray(v, np.float64)
        row = {"step": done, "loss": float(loss), **metrics, "learning_rate": float(lr)}
        for k, v in self.totals.items():  # cumulative counters from the algorithm's aux (mean over workers)
            row["bytes_per_worker" if k == "bytes_sent" else k] = float(np.mean(v))
        for k, v in row.items():
            self.history.setdefault(k, []).append(v)
        return row

    def arrays(self) -> dict:
        return {k: np.asarray(v) for k, v in self.history.items()}

    def meta(self) -> dict:
        return {"history": self.history, "totals": {k: np.asarray(v).tolist() for k, v in self.totals.items()}}


def _checkpointer(directory, keep: int = 2):
    import orbax.checkpoint as ocp

    return ocp.CheckpointManager(Path(directory).absolute(), options=ocp.CheckpointManagerOptions(max_to_keep=keep))


def _save_checkpoint(mgr, done: int, state, meta: dict) -> None:
    import orbax.checkpoint as ocp

    mgr.save(done, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))
    mgr.wait_until_finished()


def _restore_checkpoint(mgr, state):
    import orbax.checkpoint as ocp

    step = mgr.latest_step()
    if step is None:
        return None
    target = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, state)
    r = mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                                  meta=ocp.args.JsonRestore()))
    restored = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(state),
                                            jax.tree_util.tree_leaves(r["state"]))
    return step, restored, r["meta"]


def run_fingerprint(task: Task, algorithm: Algorithm, topology, batch_size: int, seed: int, eval_every: int,
                    faults, compute_dtype: str, mixing: str, system=None, participation=None) -> dict:
    """What identifies a run for resuming: everything that changes its numbers except ``steps`` (a resumed run may
    go further). JSON-normalised (non-JSON values as their ``str``), so it survives a round trip through a
    checkpoint."""
    import json

    fp = {"task": task.info | {"name": task.name}, "algorithm": {"name": algorithm.name, **algorithm.hyperparams},
          "topology": topology.describe(), "batch_size": batch_size, "seed": seed, "eval_every": eval_every,
          "faults": None if faults is None else faults._asdict(), "compute_dtype": compute_dtype, "mixing": mixing}
    if system is not None:  # (absent without a system model: older checkpoints keep matching)
        fp["system"] = system.describe()
    if participation is not None:  # (likewise)
        from simdl.participation import describe

        fp["participation"] = describe(participation)
    return json.loads(json.dumps(fp, default=str))


def fingerprint_difference(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """``key: saved != current`` for every leaf where two fingerprints differ (dotted keys)."""
    out = []
    for k in sorted(set(saved) | set(current), key=str):
        a, b = saved.get(k, "<absent>"), current.get(k, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += fingerprint_difference(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} != {b!r}")
    return out


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
) -> SimulationResult:
    """Simulate ``steps`` synchronous steps of ``algorithm`` by ``task.n_workers`` workers on ``topology``.

    The steps between two evaluations run as one compiled ``lax.scan`` (state donated); every chunk has the same
    length, so the program compiles once (a shorter final chunk, when ``steps`` is not a multiple of
    ``eval_every``, compiles once more). Randomness is derived from ``seed``, the worker index and the step index
    only, so results do not depend on ``eval_every``, on the device count, or on being interrupted and resumed.

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
      checkpoint_dir: folder for orbax checkpoints of the full run state (algorithm state, history, counters).
      checkpoint_every: checkpoint every this many steps (a multiple of ``eval_every``; default: every evaluation
        when ``checkpoint_dir`` is given). Checkpoints are written atomically (a killed run leaves the previous
        one intact).
      resume: continue from the latest checkpoint in ``checkpoint_dir`` (if any); the final result equals an
        uninterrupted run's exactly.
      worker_batch: compute the workers' gradients k at a time (``lax.map`` with ``batch_size=k``) instead of all
        n at once, when the stacked activations would not fit in memory (see :func:`per_worker_grads`).
      execution: how the per-worker gradients run: ``"auto"`` (default; measured choice per model and device),
        ``"vmap"``, ``"map"`` or ``"loop"`` (override; all give the same numbers, see :func:`per_worker_grads`).
      compute_dtype: ``"float32"`` (default) or ``"bfloat16"``: the dtype of each worker's forward and backward
        pass (mixed precision, :func:`in_compute_dtype`). Parameters, algorithm/optimizer state, the gradients the
        algorithm sees, mixing, consensus distance and every evaluation stay float32; models compute in the dtype
        of their (cast) parameters and inputs, classification takes the cross-entropy on float32 logits. Tasks
        without a model (quadratics, mean estimation) compute their loss in bfloat16 too. Recorded in
        ``info["compute_dtype"]``.
      faults: simulated faults, a :class:`simdl.faults.Faults` (or a dict with its keys): per-step message drops,
        link failures and stragglers, seeded from ``seed`` and independent of ``eval_every``; probabilities of 0
        change nothing. See :mod:`simdl.faults` for the exact semantics and the algorithms that support them.
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

    Returns:
      :class:`SimulationResult`.

    Raises:
      ValueError: invalid arguments (checked before any compilation; see :func:`validate`,
        :func:`simdl.systems.check_system`, :func:`simdl.participation.check_participation` and
        :func:`simdl.participation.check_algorithm`).
    """
    eval_every = max(1, steps // 20) if eval_every is None and isinstance(steps, int) else eval_every
    validate(task, algorithm, topology, steps, batch_size, eval_every)
    if checkpoint_every is not None:
        _check_int("checkpoint_every", checkpoint_every)
        if checkpoint_dir is None or checkpoint_every % eval_every:
            raise ValueError(f"checkpoint_every={checkpoint_every} needs checkpoint_dir and must be a multiple of "
                             f"eval_every={eval_every}")
    if worker_batch is not None:
        _check_int("worker_batch", worker_batch)
    check_execution(execution)
    check_compute_dtype(compute_dtype)
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs checkpoint_dir")
    faults = as_faults(faults)
    check_algorithm(faults, algorithm, topology, task)
    clock = build_clock(system, topology, algorithm)
    from simdl import participation as part_mod

    participation = part_mod.check_participation(participation, task.n_workers, steps, algorithm.round_length)
    part_mod.check_algorithm(participation, algorithm, topology, task)
    samp = part_mod.sampler(participation, task.n_workers, task.worker_weights)
    layout = None if devices is None else placement(devices, task.n_workers)
    mixer = make_mixer(topology, mixing) if layout is None else make_sharded_mixer(topology, layout.mesh, mixing)
    state, worker_keys, k_alg = init_state(task, algorithm, topology, mixer, seed)
    state = pack_state(state, None if clock is None else clock.init(), None if samp is None else samp.init())
    algorithm_fn = lambda hp: algorithm  # noqa: E731  (a single run has no traced hyperparameters)
    chunk = build_chunk(task, algorithm_fn, topology, mixer, batch_size, worker_batch, faults, execution,
                        compute_dtype, clock=clock, participation=samp, round_length=algorithm.round_length,
                        freeze_inactive=part_mod.runner_handles(algorithm))
    alg_state = lambda s: unpack_state(s, clock is not None, samp is not None)[0]  # noqa: E731

    def run(state, start, data, worker_keys, alg_key, length):
        return chunk(state, start, data, worker_keys, alg_key, None, length)

    jit_kw = {}
    if layout is not None:  # multi-device: per-worker leaves sharded over the mesh, task data replicated
        state, worker_keys = layout.put(state), layout.put(worker_keys)
        task = task._replace(data=layout.replicate(task.data))
        state_sh, rep = layout.shardings(state), layout.replicated
        jit_kw = {"in_shardings": (state_sh, rep, rep, layout.shardings(worker_keys), rep),
                  "out_shardings": (state_sh, rep, rep, rep, rep)}
    run_chunk = CompiledChunks(run, **jit_kw)
    evaluate = build_evaluate(task, algorithm_fn)
    run_eval = jax.jit(lambda data, state: evaluate(data, state, None))

    rec = Recorder()
    done = 0
    mgr = None
    if checkpoint_dir is not None:
        checkpoint_every = checkpoint_every or eval_every
        fingerprint = run_fingerprint(task, algorithm, topology, batch_size, seed, eval_every, faults, compute_dtype,
                                      mixer.method, None if clock is None else clock.system, participation)
        mgr = _checkpointer(checkpoint_dir)
        if resume:
            restored = _restore_checkpoint(mgr, state)
            if restored is not None:
                done, state, meta = restored
                diff = fingerprint_difference(meta["fingerprint"], fingerprint) if "fingerprint" in meta else []
                if diff:
                    raise ValueError(f"checkpoint_dir {checkpoint_dir} holds a different run (checkpoint != this "
                                     f"run): {'; '.join(diff[:5])}; resume with the same config or use another "
                                     "checkpoint_dir")
                rec = Recorder(meta["history"], meta["totals"])
                if layout is not None:
                    state = layout.put(state)
    diverged_at = None
    t0 = time.perf_counter()
    eval_times: list[float] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, initial=done, desc=f"{algorithm.name} on {topology.name}", leave=False)
    try:
        while done < steps:
            length = min(eval_every, steps - done)
            state, loss, sums, bad, lr = run_chunk(state, jnp.int32(done), task.data, worker_keys, k_alg, length)
            bad = int(bad)
            if bad >= 0:
                diverged_at = bad
                break
            done += length
            te = time.perf_counter()
            metrics = host_metrics(run_eval(task.data, alg_state(state)))
            eval_times.append(time.perf_counter() - te)
            if not all(np.all(np.isfinite(v)) for v in metrics.values()):
                diverged_at = done
                break
            if clock is not None:
                metrics["sim_time_s"] = clock.elapsed(unpack_state(state, True, samp is not None)[1])
            row = rec.add(done, loss, sums, lr, metrics)
            if blew_up({k: v[0] for k, v in rec.history.items()}, row):
                diverged_at = done
                break
            if mgr is not None and (done % checkpoint_every == 0 or done == steps):
                _save_checkpoint(mgr, done, state, rec.meta() | {"fingerprint": fingerprint})
            if callback is not None:
                callback(done, row)
            if bar is not None:
                bar.update(length)
                bar.set_postfix(loss=f"{row['loss']:.4g}")
    finally:
        if bar is not None:
            bar.close()
        if mgr is not None:
            mgr.close()
    wall = time.perf_counter() - t0
    hist = rec.arrays()
    final = final_values(hist)
    state = alg_state(state)
    state_params = jax.eval_shape(algorithm.params, state)
    info = {
        "task": task.info | {"name": task.name},
        "algorithm": {"name": algorithm.name, **algorithm.hyperparams},
        "topology": topology.describe(),
        "steps": steps, "batch_size": batch_size, "seed": seed, "eval_every": eval_every,
        "mixing": mixer.method, **resolve_execution(task, execution, worker_batch, state_params, batch_size),
        "compiles": run_chunk.compiles, "wall_time_s": wall,
        "compile_time_s": run_chunk.compile_time_s,
        "eval_time_s": float(sum(eval_times)), "eval_first_time_s": eval_times[0] if eval_times else 0.0,
        "evaluations": len(eval_times), "steps_done": done,
        "devices": 1 if layout is None else int(layout.mesh.size), **device_info(),
        "faults": None if faults is None else faults._asdict(),
        "compute_dtype": compute_dtype,
    }
    if clock is not None:
        info["system"] = clock.system.describe()
    if participation is not None:
        info["participation"] = part_mod.describe(participation)
    return SimulationResult(algorithm.params(state), hist, final, diverged_at, info, state)
