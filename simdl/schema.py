"""Types of every config value, checked before anything runs (pydantic, strict mode).

:func:`check_config` walks a loaded config (after ``--set`` overrides and the scale preset) and raises
:class:`ConfigError` for the first value whose type is wrong or whose key is unknown, as one line
``<key>: <what was given>, expected <type>`` (the CLI prints ``simdl: error: ...`` and exits 2). Strict means no
coercion: ``"0.1"`` is not a number, ``true`` is not a learning rate, ``"false"`` is not a boolean and ``0.5`` is not
a seed; an int is accepted where a float is expected.

Where the types come from, so that each is written once:

* ``[task]``: the type hints of the task builder (:func:`simdl.tasks.classification`, or
  :func:`simdl.tasks.random_quadratics` with ``kind = "random_quadratics"``).
* ``[train]``: :data:`TRAIN_TYPES` (the runner's keys, :data:`simdl.config.TRAIN_KEYS`).
* each run: the type hints of its algorithm factory (``learning_rate``: a number), of its topology factory
  (``topology_args``), and :data:`RUN_TYPES` for the recipe keys.
* ``[sweep]``: every axis names a known key, and each of its values has that key's type.

Ranges (``momentum`` in [0, 1), probabilities in [0, 1], ...) are checked by the factories themselves, also before
any compilation.
"""

from __future__ import annotations

import inspect
import json
import typing
from typing import Any

from pydantic import ConfigDict, TypeAdapter, ValidationError

#: Types of the ``[train]`` keys.
TRAIN_TYPES: dict[str, Any] = {
    "steps": int, "epochs": float, "batch_size": int, "eval_every": int | None, "seed": int, "seeds": list[int],
    "mixing": str, "message_drop": float, "link_failure": float, "straggler": float, "message_lost": str,
    "worker_batch": int | None, "execution": str, "compute_dtype": str,
}

#: Types of the ``[participation]`` keys (which ones a ``kind`` takes: :data:`simdl.participation.KINDS`).
PARTICIPATION_TYPES: dict[str, Any] = {
    "kind": str, "k": int, "weighted": bool, "p_leave": float, "p_return": float, "path": str,
}

#: Types of the run keys that are not algorithm arguments.
RUN_TYPES: dict[str, Any] = {
    "name": str, "algorithm": str, "topology": str, "topology_args": dict, "schedule": dict,
    "lr_scaling": str | dict, "decay_norm": bool, "local_epochs": float, "optimizer": str | dict,
    "server_optimizer": str | dict,
}

#: Algorithm arguments a config cannot set (Python objects; the config has its own keys for them).
_NOT_IN_CONFIG = ("weight_decay_mask",)

_STRICT = ConfigDict(strict=True, arbitrary_types_allowed=True)


class ConfigError(ValueError):
    """A config value of the wrong type, or an unknown key (one line: ``<key>: <given>, expected <type>``)."""


def _type_name(tp) -> str:
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string", dict: "a table",
             list: "a list", type(None): "none"}
    if tp in names:
        return names[tp]
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is list:
        return f"a list of {_type_name(args[0]).removeprefix('an ').removeprefix('a ')}s" if args else "a list"
    if args and origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        parts = [_type_name(a) for a in args if a is not type(None)]
        return " or ".join(parts + (["none"] if type(None) in args else []))
    return getattr(tp, "__name__", str(tp))


def _check(key: str, value, tp) -> None:
    if tp is Any:
        return
    try:
        TypeAdapter(tp, config=_STRICT).validate_python(value)
    except ValidationError:
        raise ConfigError(f"{key}: {value!r}, expected {_type_name(tp)}") from None
    except Exception:  # noqa: BLE001 - a hint pydantic cannot check (e.g. a Python-only object): leave it
        return


def _hints(fn) -> dict[str, Any]:
    """Parameter name -> type hint of ``fn`` (``Any`` where there is none or it cannot be resolved)."""
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # noqa: BLE001 - unresolvable annotations: no type checks for this function
        hints = {}
    return {p: hints.get(p, Any) for p in inspect.signature(fn).parameters}


def _check_table(section: str, table, types: dict[str, Any]) -> None:
    if not isinstance(table, dict):
        raise ConfigError(f"{section}: {table!r}, expected a table")
    for key, value in table.items():
        if key not in types:
            raise ConfigError(f"{section}.{key}: unknown key; valid: {', '.join(types)}")
        _check(f"{section}.{key}", value, types[key])


def task_types(task: dict) -> dict[str, Any]:
    """Types of the ``[task]`` keys for its ``kind`` (the task builder's hints, plus ``kind``)."""
    from simdl.tasks import classification, random_quadratics

    kind = task.get("kind", "classification")
    builder = random_quadratics if kind == "random_quadratics" else classification
    types = {k: v for k, v in _hints(builder).items() if k != "data"}
    return {"kind": str, **types}


def run_types(run: dict) -> dict[str, Any]:
    """Types of the keys of one run: :data:`RUN_TYPES` plus its algorithm factory's arguments
    (``learning_rate``: a number; unannotated arguments unchecked)."""
    from simdl.algorithms import ALGORITHMS

    types = dict(RUN_TYPES)
    factory = ALGORITHMS.get(run.get("algorithm"))
    if factory is not None:
        for k, tp in _hints(factory).items():
            if k in _NOT_IN_CONFIG or k in types:
                continue
            types[k] = float if k == "learning_rate" else tp
    return types


def _check_run(where: str, run: dict) -> None:
    from simdl.algorithms import ALGORITHMS
    from simdl.topologies import TOPOLOGIES

    if not isinstance(run, dict):
        raise ConfigError(f"{where}: {run!r}, expected a table")
    alg = run.get("algorithm")
    if alg is None:
        raise ConfigError(f"{where}.algorithm: missing; one of {', '.join(sorted(ALGORITHMS))}")
    _check(f"{where}.algorithm", alg, str)
    if alg not in ALGORITHMS:
        raise ConfigError(f"{where}.algorithm: {alg!r}, expected one of {', '.join(sorted(ALGORITHMS))}")
    types = run_types(run)
    for key, value in run.items():
        if key not in types:
            raise ConfigError(f"{where}.{key}: unknown key for {alg}; valid: {', '.join(types)}")
        _check(f"{where}.{key}", value, types[key])
    for key in ("optimizer", "server_optimizer"):
        if key in run:
            from simdl.recipes import OPTIMIZERS

            spec = run[key]
            name = spec.get("name") if isinstance(spec, dict) else spec
            if name not in OPTIMIZERS:
                raise ConfigError(f"{where}.{key}: {spec!r}, expected one of {', '.join(OPTIMIZERS)} or a table "
                                  "with name = one of them")
    topo = run.get("topology", "ring")
    if topo in TOPOLOGIES and isinstance(run.get("topology_args", {}), dict):
        targs = {k: v for k, v in _hints(TOPOLOGIES[topo]).items() if k != "n"}
        targs["lazy_weight"] = float
        for key, value in run.get("topology_args", {}).items():
            if key not in targs:
                raise ConfigError(f"{where}.topology_args.{key}: unknown key for topology {topo}; valid: "
                                  f"{', '.join(targs)}")
            _check(f"{where}.topology_args.{key}", value, targs[key])


def _check_sweep(sweep, cfg: dict, runs: list[dict]) -> None:
    from simdl.config import SECTIONS

    if not isinstance(sweep, dict):
        raise ConfigError(f"sweep: {sweep!r}, expected a table of axes")
    for axis, values in sweep.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"sweep.{axis}: {values!r}, expected a non-empty list of values")
        canonical = [json.dumps(v, sort_keys=True, default=str) for v in values]
        if len(set(canonical)) != len(canonical):  # two grid points would be the same run (one run id)
            raise ConfigError(f"sweep.{axis}: {values!r}, expected distinct values")
        if "." in axis:
            section, key = axis.split(".", 1)
            if section == "task":
                types = task_types(cfg.get("task", {}))
            elif section == "train":
                types = TRAIN_TYPES
            elif section == "participation":
                types = PARTICIPATION_TYPES
            elif section in SECTIONS and section not in ("runs", "run_defaults", "scale"):
                continue  # checked by its own section's parser (e.g. [system])
            else:
                others = [s for s in SECTIONS if s not in ("task", "train", "runs", "run_defaults", "scale")]
                raise ConfigError(f"sweep.{axis}: unknown section {section!r}; valid: "
                                  f"{', '.join(['task', 'train', *others])}, or a bare run key")
            if key not in types:
                raise ConfigError(f"sweep.{axis}: unknown key {key!r} of [{section}]; valid: {', '.join(types)}")
            for v in values:
                _check(f"sweep.{axis}", v, types[key])
        else:
            ok = [run for run in runs if axis in run_types(run)]
            if not ok:
                raise ConfigError(f"sweep.{axis}: not a key of any run's algorithm or of the run keys")
            for v in values:
                _check(f"sweep.{axis}", v, run_types(ok[0])[axis])


def check_config(cfg: dict) -> None:
    """Check the type of every value of a loaded config (``[task]``, ``[train]``, every expanded run, ``[sweep]``).

    Raises:
      ConfigError: the first unknown key (valid ones listed) or value of the wrong type, as one line
        ``<key>: <given>, expected <type>``.
    """
    from simdl.config import expand_runs

    task = cfg.get("task", {})
    if not isinstance(task, dict):
        raise ConfigError(f"task: {task!r}, expected a table")
    _check("task.kind", task.get("kind", "classification"), str)
    _check_table("task", task, task_types(task))
    _check_table("train", cfg.get("train", {}), TRAIN_TYPES)
    runs = cfg.get("runs", [])
    if not isinstance(runs, list):
        raise ConfigError(f"runs: {runs!r}, expected a list of [[runs]] tables")
    expanded = expand_runs(cfg)
    for i, run in enumerate(expanded):
        _check_run(f"runs[{i}]", run)
    if "participation" in cfg:
        _check_participation(cfg["participation"])
    if "sweep" in cfg:
        _check_sweep(cfg["sweep"], cfg, expanded)


def _check_participation(table) -> None:
    """``[participation]``: known keys of the right types, ``kind`` one of :data:`simdl.participation.KINDS` and
    only that kind's keys (ranges and ``k <= n`` are checked against the run before compiling)."""
    from simdl.participation import KINDS

    _check_table("participation", table, PARTICIPATION_TYPES)
    kind = table.get("kind")
    if kind is None:
        raise ConfigError(f"participation.kind: missing; one of {', '.join(KINDS)}")
    if kind not in KINDS:
        raise ConfigError(f"participation.kind: {kind!r}, expected one of {', '.join(KINDS)}")
    required, optional = KINDS[kind]
    for key in sorted(set(table) - {"kind"} - required - optional):
        raise ConfigError(f"participation.{key}: not a key of kind {kind!r}; it takes "
                          f"{', '.join(sorted(required | optional))}")
    for key in sorted(required - set(table)):
        raise ConfigError(f"participation.{key}: missing (kind {kind!r} takes "
                          f"{', '.join(sorted(required | optional))})")
