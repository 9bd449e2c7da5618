"""Training recipes of the papers' experiments: learning-rate schedules in epochs, learning-rate scaling with the
number of workers / batch size, weight decay without normalisation parameters and biases, and the run/train keys of
the TOML configs that select them (:func:`resolve_run_kwargs`, :func:`resolve_train`).

Schedules are optax schedules (``step -> lr``) built from ``optax.linear_schedule``, ``optax.join_schedules``,
``optax.piecewise_constant_schedule``, ``optax.cosine_decay_schedule`` and ``optax.warmup_cosine_decay_schedule``.
Steps count local steps of one worker (one minibatch per worker); an epoch is one pass over a worker's shard,
``ceil(shard_size / batch_size)`` steps (:func:`steps_per_epoch`).

What the reference codes do:

* RelaySGD (Vogels et al. 2021, arXiv 2110.04175; code epfml/relaysgd): 200 epochs, batch 32 per worker, the
  learning rate tuned per algorithm (no scaling rule, ``rule="none"``), linear warm-up from 0 over 5 epochs, ×0.1 at
  epochs 150 and 180 (75 % and 90 % of training), weight decay 1e-4 on every parameter except BatchNorm's.
* QGM (Lin et al. 2021, arXiv 2102.04761; code epfml/quasi-global-momentum): 300 epochs, batch 32 per worker, base
  learning rate 0.1 for a base batch of 64, scaled linearly by the batch and by the number of workers
  (``scaled_lr(0.1, n, 32, "linear", base_batch=64) = 0.05 n``), warm-up over 5 epochs from the unscaled 0.1 to the
  scaled value, ×0.1 at 50 % and 75 % of training, weight decay 1e-4 on every parameter (normalisation included).
* CDSGD (Jiang et al. 2017, arXiv 1706.07880; code SCSLabISU/CDSGD): constant learning rate 0.01, batch 128, no
  scaling, no weight decay.
* Linear scaling rule with warm-up: Goyal et al. 2017 (arXiv 1706.02677); square-root rule: Krizhevsky 2014
  (arXiv 1404.5997), Hoffer et al. 2017 (arXiv 1705.08741).

Config keys (per run, in ``[[runs]]`` or ``[run_defaults]``):

* ``schedule = {kind = "warmup_multistep", warmup_epochs = 5, milestones = [0.5, 0.75], decay = 0.1}``: turns the
  run's ``learning_rate`` (the peak) into a schedule; see :func:`schedule_from_spec` for the kinds and keys.
* ``lr_scaling = "linear"`` or ``{rule = "linear", base_batch = 64}``: multiply ``learning_rate`` by
  :func:`scaling_factor` before the schedule.
* ``decay_norm = false``: weight decay only on convolution/dense kernels (not on biases and normalisation
  parameters), through the algorithm's ``weight_decay_mask`` (:func:`weight_decay_mask`).
* ``local_epochs = E`` for ``local_sgd``: ``local_steps = E · steps_per_epoch`` (FedAvg with E local epochs).
* ``optimizer = "adam"`` or ``{name = "adam", b1 = 0.9, b2 = 0.99}``: the workers' local optimizer is that optax
  optimizer (:data:`OPTIMIZERS`) at the run's learning rate (after scaling and schedule) instead of SGD; momentum
  then belongs inside it (``momentum = 0``), weight decay is still added to the gradient first.
* ``server_optimizer = {name = "adam", learning_rate = 0.01, eps = 1e-3}`` for ``fedavg``/``fedprox``/``scaffold``:
  the optax optimizer applied to the round's pseudo-gradient at its own (server) learning rate
  (:func:`server_optimizer_from_spec`; ``"sgd"`` alone is plain FedAvg).

``[train] epochs = E`` may replace ``steps`` (``steps = round(E · steps_per_epoch)``, :func:`resolve_train`).
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Callable

import optax

#: Keys of a run handled here (consumed, never passed to the algorithm factory).
RECIPE_KEYS = ("schedule", "lr_scaling", "decay_norm", "local_epochs")
#: Learning-rate scaling rules of :func:`scaled_lr`.
SCALING_RULES = ("linear", "sqrt", "none")
#: Schedule kinds of :func:`schedule_from_spec`.
SCHEDULES = ("constant", "warmup_multistep", "warmup_cosine")
_SPEC_KEYS = {
    "constant": ("warmup_epochs", "warmup_steps", "warmup_start"),
    "warmup_multistep": ("warmup_epochs", "warmup_steps", "warmup_start", "milestones", "milestone_epochs",
                         "milestone_steps", "decay"),
    "warmup_cosine": ("warmup_epochs", "warmup_steps", "warmup_start", "final"),
}
DEFAULT_STEPS = 1000


# --------------------------------------------------------------------------- epochs and steps


def _check_pos_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _check_nonneg(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def steps_per_epoch(shard_size: int, batch_size: int) -> int:
    """Local steps in one pass over a worker's shard: ``ceil(shard_size / batch_size)`` (≥ 1).

    Raises:
      ValueError: ``shard_size`` or ``batch_size`` not a positive integer (tasks without samples, such as the
        quadratics, have ``shard_size = 0``: epochs are undefined there).
    """
    if isinstance(shard_size, numbers.Integral) and not isinstance(shard_size, bool) and shard_size == 0:
        raise ValueError("epochs are undefined for this task (it has no training samples, shard_size = 0); "
                         "give steps instead")
    return max(1, math.ceil(_check_pos_int("shard_size", shard_size) / _check_pos_int("batch_size", batch_size)))


def epochs_to_steps(epochs: float, steps_per_epoch: int) -> int:
    """``round(epochs · steps_per_epoch)`` steps (epochs may be fractional). Raises ValueError for epochs < 0."""
    return int(round(_check_nonneg("epochs", epochs) * _check_pos_int("steps_per_epoch", steps_per_epoch)))


# --------------------------------------------------------------------------- schedules (in steps)


def _warmup(peak: float, warmup_steps: int, warmup_start: float) -> optax.Schedule:
    return optax.linear_schedule(warmup_start * peak, peak, warmup_steps)


def _check_warmup(warmup_steps, warmup_start) -> tuple[int, float]:
    w = int(_check_nonneg("warmup_steps", warmup_steps))
    if w != warmup_steps:
        raise ValueError(f"warmup_steps must be an integer, got {warmup_steps!r}")
    return w, _check_nonneg("warmup_start", warmup_start)


def warmup_multistep(peak: float, warmup_steps: int = 0, milestones=(), decay=0.1,
                     warmup_start: float = 0.0) -> optax.Schedule:
    """Linear warm-up, then multi-step decay (the RelaySGD and QGM recipe).

    ``lr(t) = peak · (s + (1 − s) t / W)`` for ``t < W`` (``s = warmup_start``; ``W = warmup_steps``), then
    ``peak · Π_{m_i ≤ t} d_i``: the learning rate is multiplied by ``d_i`` from step ``m_i`` on.

    Args:
      peak: learning rate after warm-up, > 0.
      warmup_steps: W ≥ 0 (0: no warm-up).
      milestones: absolute steps ``m_i`` (any order; equal steps multiply their factors). A milestone inside the
        warm-up takes effect from the end of the warm-up.
      decay: one factor for every milestone, or one per milestone; each in (0, 1] typically, ≥ 0 required.
      warmup_start: s ≥ 0 (usually in [0, 1]): the warm-up starts at ``s · peak`` (RelaySGD: 0; QGM: the unscaled
        learning rate, ``1 / scaling factor``).

    Returns:
      An optax schedule ``step -> lr`` (float32, jit-able).

    Raises:
      ValueError: peak ≤ 0, negative or non-integer steps, a decay list of the wrong length, negative factors.
    """
    peak = _check_peak(peak)
    warmup_steps, warmup_start = _check_warmup(warmup_steps, warmup_start)
    milestones = [int(_check_nonneg("milestone", m)) for m in milestones]
    decays = list(decay) if isinstance(decay, (list, tuple)) else [decay] * len(milestones)
    if len(decays) != len(milestones):
        raise ValueError(f"decay must be one number or one per milestone ({len(milestones)}), got {decay!r}")
    scales: dict[int, float] = {}
    for m, d in zip(milestones, decays, strict=True):
        b = max(m - warmup_steps, 0)
        scales[b] = scales.get(b, 1.0) * _check_nonneg("decay", d)
    after = optax.piecewise_constant_schedule(peak, scales or None)
    if warmup_steps == 0:
        return after
    return optax.join_schedules([_warmup(peak, warmup_steps, warmup_start), after], [warmup_steps])


def warmup_cosine(peak: float, total_steps: int, warmup_steps: int = 0, final: float = 0.0,
                  warmup_start: float = 0.0) -> optax.Schedule:
    """Linear warm-up, then cosine decay to ``final · peak`` at ``total_steps`` (Loshchilov & Hutter 2016,
    arXiv 1608.03983, without restarts).

    ``optax.cosine_decay_schedule`` when there is no warm-up, ``optax.warmup_cosine_decay_schedule`` otherwise
    (``total_steps`` includes the warm-up). Constant at ``final · peak`` after ``total_steps``. When
    ``warmup_steps ≥ total_steps`` (e.g. a smoke test) the run ends during the warm-up.

    Raises:
      ValueError: peak ≤ 0, ``final`` outside [0, 1], ``total_steps < 1``, negative warm-up.
    """
    peak = _check_peak(peak)
    total_steps = _check_pos_int("total_steps", total_steps)
    warmup_steps, warmup_start = _check_warmup(warmup_steps, warmup_start)
    final = _check_nonneg("final", final)
    if final > 1:
        raise ValueError(f"final is a fraction of the peak learning rate in [0, 1], got {final!r}")
    if warmup_steps == 0:
        return optax.cosine_decay_schedule(peak, total_steps, alpha=final)
    decay_steps = max(total_steps, warmup_steps + 1)  # training shorter than the warm-up: it ends warming up
    return optax.warmup_cosine_decay_schedule(warmup_start * peak, peak, warmup_steps, decay_steps,
                                              end_value=final * peak)


def constant(peak: float, warmup_steps: int = 0, warmup_start: float = 0.0) -> optax.Schedule:
    """Constant ``peak`` after an optional linear warm-up (:func:`warmup_multistep` without milestones)."""
    return warmup_multistep(peak, warmup_steps, (), 0.1, warmup_start)


def _check_peak(peak) -> float:
    if isinstance(peak, bool) or not isinstance(peak, numbers.Real) or not math.isfinite(peak) or peak <= 0:
        raise ValueError(f"the learning rate must be a finite number > 0, got {peak!r}")
    return float(peak)


# --------------------------------------------------------------------------- schedules (in epochs)


def warmup_multistep_epochs(peak: float, steps_per_epoch: int, warmup_epochs: float = 0.0,
                            milestone_epochs=(), decay=0.1, warmup_start: float = 0.0) -> optax.Schedule:
    """:func:`warmup_multistep` with warm-up and milestones given in epochs (each rounded to whole steps).

    Example (RelaySGD, 200 epochs): ``warmup_multistep_epochs(0.1, spe, 5, [150, 180], 0.1)``.
    """
    return warmup_multistep(peak, epochs_to_steps(warmup_epochs, steps_per_epoch),
                            [epochs_to_steps(e, steps_per_epoch) for e in milestone_epochs], decay, warmup_start)


def warmup_cosine_epochs(peak: float, epochs: float, steps_per_epoch: int, warmup_epochs: float = 0.0,
                         final: float = 0.0, warmup_start: float = 0.0) -> optax.Schedule:
    """:func:`warmup_cosine` with the training length and warm-up given in epochs."""
    return warmup_cosine(peak, epochs_to_steps(epochs, steps_per_epoch),
                         epochs_to_steps(warmup_epochs, steps_per_epoch), final, warmup_start)


# --------------------------------------------------------------------------- learning-rate scaling


def scaling_factor(n_workers: int, batch_size: int, rule: str = "linear", base_batch: int | None = None) -> float:
    """The factor of :func:`scaled_lr`: ``k = n_workers · batch_size / base_batch`` (the total batch relative to
    the batch the base learning rate was tuned for); ``"linear"`` → k, ``"sqrt"`` → √k, ``"none"`` → 1.

    ``base_batch`` defaults to ``batch_size`` (then k = n_workers: the rule scales by the number of workers).

    Raises:
      ValueError: unknown rule (valid ones listed), non-positive integers.
    """
    if rule not in SCALING_RULES:
        raise ValueError(f"unknown learning-rate scaling rule {rule!r}; valid: {', '.join(SCALING_RULES)}")
    n = _check_pos_int("n_workers", n_workers)
    b = _check_pos_int("batch_size", batch_size)
    b0 = b if base_batch is None else _check_pos_int("base_batch", base_batch)
    k = n * b / b0
    return {"linear": k, "sqrt": math.sqrt(k), "none": 1.0}[rule]


def scaled_lr(base: float, n_workers: int, batch_size: int, rule: str = "linear",
              base_batch: int | None = None) -> float:
    """Per-worker learning rate from a base learning rate tuned for one worker at batch ``base_batch``.

    ``base · k`` (``"linear"``, Goyal et al. 2017, arXiv 1706.02677: QGM's ``--lr_scaleup``), ``base · √k``
    (``"sqrt"``, Krizhevsky 2014, arXiv 1404.5997) or ``base`` (``"none"``: RelaySGD and CDSGD tune the learning
    rate directly), with ``k = n_workers · batch_size / base_batch`` (:func:`scaling_factor`).

    Example: QGM on the 16-ring, ``scaled_lr(0.1, 16, 32, "linear", base_batch=64) == 0.8``.
    """
    return _check_peak(base) * scaling_factor(n_workers, batch_size, rule, base_batch)


def _scaling_from_run(spec, n_workers: int, batch_size: int) -> float:
    if spec is None:
        return 1.0
    if isinstance(spec, str):
        return scaling_factor(n_workers, batch_size, spec)
    if isinstance(spec, dict):
        bad = sorted(set(spec) - {"rule", "base_batch"})
        if bad:
            raise ValueError(f"unknown lr_scaling key(s) {bad}; valid: rule, base_batch")
        return scaling_factor(n_workers, batch_size, spec.get("rule", "linear"), spec.get("base_batch"))
    raise ValueError(f"lr_scaling must be a rule name ({', '.join(SCALING_RULES)}) or a table "
                     f"{{rule = ..., base_batch = ...}}, got {spec!r}")


# --------------------------------------------------------------------------- weight decay


def weight_decay_mask(decay_norm: bool = True) -> Callable | None:
    """The ``weight_decay_mask`` for the algorithms' local optimizer: ``None`` (decay every parameter) when
    ``decay_norm`` is true, else :func:`simdl.models.no_decay_mask` (decay only convolution/dense ``kernel``
    leaves, not biases or GroupNorm/BatchNorm/EvoNorm parameters).

    Raises:
      ValueError: ``decay_norm`` not a bool.
    """
    if not isinstance(decay_norm, bool):
        raise ValueError(f"decay_norm must be true or false, got {decay_norm!r}")
    if decay_norm:
        return None
    from simdl.models import no_decay_mask

    return no_decay_mask


# --------------------------------------------------------------------------- config keys -> factory kwargs


def schedule_from_spec(spec: dict, peak: float, total_steps: int, steps_per_epoch: int | None = None,
                       lr_factor: float = 1.0) -> optax.Schedule:
    """The schedule of a config ``schedule`` table.

    Kinds and keys (``*_epochs`` need ``steps_per_epoch``; ``milestones`` are fractions of ``total_steps``):

    * ``constant``: ``warmup_epochs`` | ``warmup_steps``, ``warmup_start``.
    * ``warmup_multistep``: warm-up keys, ``milestones`` (fractions in [0, 1]) | ``milestone_epochs`` |
      ``milestone_steps``, ``decay`` (default 0.1; one number or one per milestone). See :func:`warmup_multistep`.
    * ``warmup_cosine``: warm-up keys, ``final`` (fraction of the peak at the end, default 0). See
      :func:`warmup_cosine`.

    ``warmup_start`` is a fraction of the peak (default 0) or ``"base"``: the learning rate before ``lr_scaling``
    (``1 / lr_factor``), QGM's warm-up from the unscaled to the scaled learning rate.

    Raises:
      ValueError: unknown kind or keys (valid ones listed), both an epochs and a steps form of one key, epochs
        without ``steps_per_epoch``, milestone fractions outside [0, 1], bad values.
    """
    if not isinstance(spec, dict) or "kind" not in spec:
        raise ValueError(f"schedule must be a table with a 'kind' ({', '.join(SCHEDULES)}), got {spec!r}")
    kind = spec["kind"]
    if kind not in SCHEDULES:
        raise ValueError(f"unknown schedule kind {kind!r}; valid: {', '.join(SCHEDULES)}")
    keys = _SPEC_KEYS[kind]
    bad = sorted(set(spec) - set(keys) - {"kind"})
    if bad:
        raise ValueError(f"unknown key(s) {bad} for schedule kind {kind!r}; valid: {', '.join(keys)}")
    total_steps = _check_pos_int("total steps", total_steps)

    def steps_of(epochs_key: str, steps_key: str, default=0):
        if epochs_key in spec and steps_key in spec:
            raise ValueError(f"schedule: give {epochs_key} or {steps_key}, not both")
        if epochs_key in spec:
            if steps_per_epoch is None:
                raise ValueError(f"schedule: {epochs_key} needs a dataset task (steps per epoch); use {steps_key}")
            return epochs_to_steps(spec[epochs_key], steps_per_epoch)
        return spec.get(steps_key, default)

    warmup = steps_of("warmup_epochs", "warmup_steps")
    start = spec.get("warmup_start", 0.0)
    if start == "base":
        start = 1.0 / lr_factor
    if kind == "constant":
        return constant(peak, warmup, start)
    if kind == "warmup_cosine":
        return warmup_cosine(peak, total_steps, warmup, spec.get("final", 0.0), start)
    forms = [k for k in ("milestones", "milestone_epochs", "milestone_steps") if k in spec]
    if len(forms) > 1:
        raise ValueError(f"schedule: give one of milestones (fractions), milestone_epochs, milestone_steps; "
                         f"got {forms}")
    if "milestones" in spec:
        fr = spec["milestones"]
        if not isinstance(fr, list) or any(not 0 <= _check_nonneg("milestone", f) <= 1 for f in fr):
            raise ValueError(f"schedule: milestones are fractions of training in [0, 1], got {fr!r}")
        steps = [int(round(f * total_steps)) for f in fr]
    elif "milestone_epochs" in spec:
        spe = _need_spe(steps_per_epoch, "milestone_epochs")
        steps = [epochs_to_steps(e, spe) for e in spec["milestone_epochs"]]
    else:
        steps = list(spec.get("milestone_steps", []))
    return warmup_multistep(peak, warmup, steps, spec.get("decay", 0.1), start)


def _need_spe(steps_per_epoch, key: str) -> int:
    if steps_per_epoch is None:
        raise ValueError(f"schedule: {key} needs a dataset task (steps per epoch); use milestone_steps or milestones")
    return steps_per_epoch


def _task_steps_per_epoch(task, train: dict) -> int | None:
    shard = getattr(task, "shard_size", 0)
    return steps_per_epoch(shard, train["batch_size"]) if shard else None


def learning_rate_fn(run: dict, task, train: dict) -> Callable:
    """``to_lr(base)``: what the run's algorithm factory receives as ``learning_rate`` for a base learning rate.

    ``base`` scaled by ``lr_scaling`` (:func:`scaling_factor`), then shaped by ``schedule``
    (:func:`schedule_from_spec` with peak 1, multiplied by the scaled base). Without a schedule a Python float stays
    a float. ``base`` may also be a traced scalar (the sweep's batched learning rates): the result is then a
    schedule ``t -> base · factor · shape(t)``, so runs with schedules stay batchable along the learning rate.

    Raises:
      ValueError: invalid ``schedule`` / ``lr_scaling`` values (see :func:`schedule_from_spec`).
    """
    factor = _scaling_from_run(run.get("lr_scaling"), task.n_workers, train["batch_size"])
    spec = run.get("schedule")
    shape = None
    if spec is not None:
        shape = schedule_from_spec(spec, 1.0, train["steps"], _task_steps_per_epoch(task, train), factor)

    def to_lr(base):
        if isinstance(base, numbers.Real) and not isinstance(base, bool):
            scaled = _check_peak(base) * factor
            if shape is None:
                return scaled
            return lambda t: scaled * shape(t)
        if callable(base):
            if shape is not None or factor != 1.0:
                raise ValueError("a schedule object as learning_rate cannot be combined with schedule/lr_scaling")
            return base
        if shape is None:
            return lambda t: base * factor
        return lambda t: base * factor * shape(t)

    return to_lr


#: optax optimizers a config may name as a run's local optimizer (``optimizer = "adam"`` or
#: ``optimizer = {name = "adam", b1 = 0.9}``); each is ``optax.<name>(learning_rate=<the run's schedule>, ...)``.
OPTIMIZERS = ("sgd", "adam", "adamw", "nadam", "adabelief", "adagrad", "rmsprop", "lamb", "lion", "yogi")


def _optimizer_spec(key: str, spec, table_hint: str = "") -> tuple[str, dict]:
    """``(name, keywords)`` of an optimizer spec: a name from :data:`OPTIMIZERS` or a table with ``name``."""
    if isinstance(spec, str):
        name, kw = spec, {}
    elif isinstance(spec, dict) and isinstance(spec.get("name"), str):
        name, kw = spec["name"], {k: v for k, v in spec.items() if k != "name"}
    else:
        raise ValueError(f"{key}: expected a name ({', '.join(OPTIMIZERS)}) or a table with name = ...{table_hint}, "
                         f"got {spec!r}")
    if name not in OPTIMIZERS:
        raise ValueError(f"{key}: unknown name {name!r}; valid: {', '.join(OPTIMIZERS)}")
    return name, kw


def optimizer_from_spec(spec, learning_rate) -> optax.GradientTransformation:
    """The local optax optimizer of a config run's ``optimizer`` key.

    Args:
      spec: a name from :data:`OPTIMIZERS`, or a table ``{name = ..., <keyword> = <value>, ...}`` whose other keys
        are keyword arguments of that optax function (e.g. ``b1``, ``b2``, ``eps``, ``weight_decay``).
      learning_rate: float or optax schedule (the run's learning rate after ``lr_scaling``/``schedule``).

    Raises:
      ValueError: unknown name (valid ones listed), a keyword the optax function does not take (its keywords
        listed), ``learning_rate`` inside the table (set the run's ``learning_rate``), or a spec that is neither a
        string nor a table with ``name``.
    """
    name, kw = _optimizer_spec("optimizer", spec)
    fn = getattr(optax, name)
    params = [p for p in inspect.signature(fn).parameters if p != "learning_rate"]
    if "learning_rate" in kw:
        raise ValueError("optimizer: set the run's learning_rate, not optimizer.learning_rate")
    unknown = sorted(set(kw) - set(params))
    if unknown:
        raise ValueError(f"optimizer: optax.{name} takes no {', '.join(unknown)}; its keywords: {', '.join(params)}")
    # always a schedule, so a run built with a Python float and one built with a traced (batched) rate have the
    # same optimizer state structure
    schedule = learning_rate if callable(learning_rate) else (lambda _: learning_rate)
    return fn(learning_rate=schedule, **kw)


def server_optimizer_from_spec(spec) -> optax.GradientTransformation:
    """The server optimizer of a config run's ``server_optimizer`` key (``fedavg``, ``fedprox``, ``scaffold``).

    The server optimizer is applied to the round's pseudo-gradient Δ = x − mean of the clients' models, so its
    learning rate is the server learning rate η_g of Reddi et al. 2021 (arXiv 2003.00295), independent of the
    clients' ``learning_rate``.

    Args:
      spec: ``"sgd"`` (plain FedAvg: ``optax.sgd(1.0)``), or a table ``{name = ..., learning_rate = η_g,
        <keyword> = <value>, ...}`` with a name from :data:`OPTIMIZERS` whose other keys are keyword arguments of
        that optax function: FedAvgM is ``{name = "sgd", learning_rate = 1.0, momentum = 0.9}``, FedAdam
        ``{name = "adam", learning_rate = 0.01, b1 = 0.9, b2 = 0.99, eps = 1e-3}`` (eps is the paper's τ),
        FedYogi the same with ``name = "yogi"``.

    Raises:
      ValueError: unknown name (valid ones listed), a table without ``learning_rate`` (except for ``sgd``, whose
        default is 1.0) or with a non-positive one, a keyword the optax function does not take (its keywords
        listed), or a spec that is neither a string nor a table with ``name``.
    """
    name, kw = _optimizer_spec("server_optimizer", spec, ", learning_rate = ...")
    if "learning_rate" not in kw:
        if name != "sgd":
            raise ValueError(f"server_optimizer: {name} needs a server learning rate: "
                             f"{{name = {name!r}, learning_rate = ...}}")
        kw["learning_rate"] = 1.0
    lr = kw["learning_rate"]
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
        raise ValueError(f"server_optimizer: learning_rate must be a number > 0, got {lr!r}")
    fn = getattr(optax, name)
    params = list(inspect.signature(fn).parameters)
    unknown = sorted(set(kw) - set(params))
    if unknown:
        raise ValueError(f"server_optimizer: optax.{name} takes no {', '.join(unknown)}; its keywords: "
                         f"{', '.join(params)}")
    return fn(**kw)


def _accepts(name: str, kw: str) -> bool:
    from simdl.algorithms import ALGORITHMS

    fn = ALGORITHMS.get(name)
    return fn is not None and kw in inspect.signature(fn).parameters


def _with_option(kw: str) -> str:
    """The registered algorithms whose factory takes ``kw``, comma-separated (for error messages)."""
    from simdl.algorithms import ALGORITHMS

    return ", ".join(sorted(k for k in ALGORITHMS if _accepts(k, kw)))


def resolve_run_kwargs(run: dict, task, train: dict) -> dict:
    """The algorithm factory's keyword arguments for one config run.

    Every run key except ``name``/``algorithm``/``topology``/``topology_args`` and :data:`RECIPE_KEYS` passes
    through; then

    * ``learning_rate`` goes through :func:`learning_rate_fn` (``lr_scaling``, ``schedule``);
    * ``optimizer`` (a name or table, :func:`optimizer_from_spec`) becomes that optax optimizer at the run's
      learning rate;
    * ``server_optimizer`` (a name or table, :func:`server_optimizer_from_spec`) becomes the federated
      algorithms' optax server optimizer;
    * ``decay_norm = false`` sets ``weight_decay_mask`` (:func:`weight_decay_mask`);
    * ``local_epochs`` (``local_sgd``) sets ``local_steps = local_epochs · steps_per_epoch``;
    * ``model_averaging_clr`` gets ``steps_per_epoch`` unless given.

    Args:
      run: one expanded run (``simdl.config.expand_runs``).
      task: the built task (``n_workers``, ``shard_size``).
      train: resolved ``[train]`` settings with ``steps`` and ``batch_size`` (:func:`resolve_train`).

    Raises:
      ValueError: a schedule without ``learning_rate``; ``schedule``/``lr_scaling`` on ``model_averaging_clr``
        (it builds its own cyclical schedule); ``decay_norm = false`` with weight decay on an algorithm without a
        ``weight_decay_mask``; ``local_epochs`` on another algorithm or together with ``local_steps``; bad values.
    """
    from simdl.config import RUN_KEYS

    name = run["algorithm"]
    kwargs = {k: v for k, v in run.items() if k not in RUN_KEYS and k not in RECIPE_KEYS}
    has_recipe_lr = "schedule" in run or "lr_scaling" in run
    if has_recipe_lr and name == "model_averaging_clr":
        raise ValueError("model_averaging_clr builds its own cyclical schedule from learning_rate and "
                         "min_learning_rate; remove schedule/lr_scaling from this run")
    if has_recipe_lr and "learning_rate" not in kwargs:
        raise ValueError(f"run {run.get('name', name)!r}: schedule/lr_scaling need a learning_rate")
    if "learning_rate" in kwargs:
        kwargs["learning_rate"] = learning_rate_fn(run, task, train)(kwargs["learning_rate"])
    if "optimizer" in kwargs:
        if not _accepts(name, "optimizer"):
            raise ValueError(f"optimizer: {name} has no local optimizer option (algorithms with one: "
                             f"{_with_option('optimizer')})")
        if "learning_rate" not in kwargs:
            raise ValueError(f"run {run.get('name', name)!r}: optimizer needs the run's learning_rate")
        kwargs["optimizer"] = optimizer_from_spec(kwargs["optimizer"], kwargs["learning_rate"])
    if "server_optimizer" in kwargs:
        if not _accepts(name, "server_optimizer"):
            raise ValueError(f"server_optimizer: {name} has no server optimizer (algorithms with one: "
                             f"{_with_option('server_optimizer')})")
        kwargs["server_optimizer"] = server_optimizer_from_spec(kwargs["server_optimizer"])
    if weight_decay_mask(run.get("decay_norm", True)) is not None:
        if _accepts(name, "weight_decay_mask"):
            kwargs["weight_decay_mask"] = weight_decay_mask(False)
        elif kwargs.get("weight_decay", 0.0):
            raise ValueError(f"decay_norm = false: {name} has no weight_decay_mask option (algorithms with one: "
                             f"{_with_option('weight_decay_mask')}); use decay_norm = true or weight_decay = 0")
    if "local_epochs" in run:
        if name == "model_averaging_clr":
            kwargs["local_epochs"] = run["local_epochs"]
        elif name != "local_sgd":
            raise ValueError(f"local_epochs applies to local_sgd and model_averaging_clr, not {name}")
        elif "local_steps" in kwargs:
            raise ValueError("give local_steps or local_epochs, not both")
        else:
            spe = steps_per_epoch(task.shard_size, train["batch_size"])
            kwargs["local_steps"] = max(1, epochs_to_steps(run["local_epochs"], spe))
    if name == "model_averaging_clr" and "steps_per_epoch" not in kwargs:
        kwargs["steps_per_epoch"] = steps_per_epoch(task.shard_size, train["batch_size"])
    return kwargs


def resolve_train(train: dict, task) -> dict:
    """``[train]`` settings with ``steps`` resolved: ``epochs`` (float ≥ 0) becomes
    ``steps = max(1, round(epochs · steps_per_epoch))``; neither key gives :data:`DEFAULT_STEPS`.

    Returns a new dict (``epochs`` kept for the record).

    Raises:
      ValueError: both ``steps`` and ``epochs`` given; epochs on a task without samples.
    """
    out = dict(train)
    if "epochs" in out and out["epochs"] is not None:
        if out.get("steps") is not None:
            raise ValueError(f"[train] has both steps={out['steps']!r} and epochs={out['epochs']!r}; give one "
                             "(override with --set train.epochs=...)")
        spe = steps_per_epoch(task.shard_size, out.get("batch_size", 32))
        out["steps"] = max(1, epochs_to_steps(out["epochs"], spe))
    elif out.get("steps") is None:
        out["steps"] = DEFAULT_STEPS
    return out
