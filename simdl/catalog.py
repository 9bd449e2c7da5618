"""The defaults of every registered algorithm factory, read from the factories themselves.

:func:`default_rows` inspects ``inspect.signature`` of each function in :data:`simdl.algorithms.ALGORITHMS` (the
registry that ``simdl run`` and ``simdl list`` use), so the table printed by ``simdl list`` and the one in
docs/algorithms.md (checked by tests/test_catalog.py) cannot disagree with the code.

A signature default of ``None`` that the factory resolves itself (RelaySGD's ``momentum=None`` means the paper's 0.9
when no optax optimizer is given) is shown as ``<resolved> (auto)``; the resolved value is read from
:attr:`Algorithm.hyperparams` of the factory built with its defaults.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping

#: The columns of the table, after ``algorithm``; ``other`` collects every remaining scalar default.
COLUMNS = ("learning_rate", "momentum", "nesterov", "weight_decay", "fill", "rounds", "local_steps", "alpha", "mu",
           "variant", "other")

#: Arguments that are plumbing rather than hyperparameters with a notable default (never listed in ``other``).
_PLUMBING = ("optimizer", "weight_decay_mask", "name")
MISSING = "—"
REQUIRED = "required"
AUTO = "auto"


def _fmt(value) -> str:
    if isinstance(value, str):
        return value
    return repr(value)


def _build_defaults(factory: Callable) -> dict:
    """The factory's :attr:`Algorithm.hyperparams` when built with its defaults (a placeholder learning rate if the
    learning rate is required); ``{}`` if it cannot be built that way."""
    params = inspect.signature(factory).parameters
    kwargs = {}
    if "learning_rate" in params and params["learning_rate"].default is inspect.Parameter.empty:
        kwargs["learning_rate"] = 0.1
    try:
        return dict(getattr(factory(**kwargs), "hyperparams", {}) or {})
    except (TypeError, ValueError):
        return {}


def factory_defaults(factory: Callable) -> dict[str, object]:
    """``{argument: signature default}`` of ``factory``; required arguments map to ``inspect.Parameter.empty``."""
    return {name: p.default for name, p in inspect.signature(factory).parameters.items()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def default_rows(algorithms: Mapping[str, Callable] | None = None) -> list[dict[str, str]]:
    """One row per algorithm (sorted by name): ``{"algorithm": name, column: text for column in COLUMNS}``.

    Cell text: the signature default (``repr`` for numbers and booleans, strings bare), ``required`` for an argument
    without default, ``—`` where the factory has no such argument, ``<value> (auto)`` for a ``None`` default that
    the factory resolves to ``<value>``. ``other`` lists the remaining arguments with scalar defaults as
    ``key=value`` (in signature order), ``—`` if none.
    """
    if algorithms is None:
        from simdl.algorithms import ALGORITHMS as algorithms
    rows = []
    for name in sorted(algorithms):
        factory = algorithms[name]
        defaults = factory_defaults(factory)
        built = None
        row = {"algorithm": name}
        for col in COLUMNS[:-1]:
            if col not in defaults:
                row[col] = MISSING
                continue
            d = defaults[col]
            if d is inspect.Parameter.empty:
                row[col] = REQUIRED
            elif d is None:
                if built is None:
                    built = _build_defaults(factory)
                resolved = built.get(col)
                row[col] = f"{_fmt(resolved)} ({AUTO})" if resolved is not None else "None"
            else:
                row[col] = _fmt(d)
        other = [f"{k}={_fmt(v)}" for k, v in defaults.items()
                 if k not in COLUMNS and k not in _PLUMBING and isinstance(v, (bool, int, float, str))]
        row["other"] = ", ".join(other) if other else MISSING
        rows.append(row)
    return rows


def format_markdown(rows: list[dict[str, str]]) -> str:
    """The rows as a GitHub-flavoured Markdown table (no trailing newline)."""
    head = ("algorithm", *COLUMNS)
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(r[c] for c in head) + " |")
    return "\n".join(lines)


def format_text(rows: list[dict[str, str]]) -> str:
    """The rows as an aligned plain-text table for the terminal (no trailing newline)."""
    head = ("algorithm", *COLUMNS)
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in head}
    lines = ["  ".join(c.ljust(widths[c]) for c in head).rstrip()]
    for r in rows:
        lines.append("  ".join(r[c].ljust(widths[c]) for c in head).rstrip())
    return "\n".join(lines)


def config_names() -> list[tuple[str, str]]:
    """``(label, names)`` of every name a config accepts besides the algorithms' defaults: what ``simdl list``
    prints. Each list is read from the constant the code validates against, so it cannot drift."""
    from simdl.algorithms import ALGORITHMS
    from simdl.algorithms.averaging import MOMENTUM_SYNC
    from simdl.compression import COMPRESSORS
    from simdl.config import RUN_KEYS, SECTIONS, TRAIN_KEYS
    from simdl.data import DATASETS
    from simdl.faults import KEYS as FAULT_KEYS
    from simdl.faults import LOST, LOST_KEY
    from simdl.mixing.mixer import METHODS as MIXING
    from simdl.mixing.relay import METHODS as RELAY_METHODS
    from simdl.models import MODELS
    from simdl.models.batched import STRATEGIES
    from simdl.models.conv import CONV_IMPLS
    from simdl.recipes import OPTIMIZERS, RECIPE_KEYS, SCALING_RULES, SCHEDULES
    from simdl.runtime import COMPUTE_DTYPES
    from simdl.scale import SCALES
    from simdl.tasks.classification import PARTITIONS
    from simdl.topologies import TOPOLOGIES

    rows = [
        ("sections", ", ".join(f"[{s}]" for s in SECTIONS if s != "scale") + ", scale = " + " | ".join(SCALES)),
        ("algorithms", ", ".join(sorted(ALGORITHMS))),
        ("topologies", ", ".join(sorted(TOPOLOGIES))),
        ("datasets", ", ".join((*DATASETS, "synthetic (FedProx, partition natural)"))),
        ("models", ", ".join(sorted(MODELS)) + "; model_kwargs.conv_impl: " + " | ".join(CONV_IMPLS)),
        ("partitions", ", ".join(PARTITIONS)),
        ("[task] keys", "kind = classification | random_quadratics; " + ", ".join(_task_keys())),
        ("[train] keys", ", ".join(TRAIN_KEYS)),
        ("faults", ", ".join(FAULT_KEYS) + f" (probabilities in [0, 1]); {LOST_KEY}: " + " | ".join(LOST)),
        ("mixing", " | ".join(MIXING) + " ([train] mixing); relay_method: " + " | ".join(RELAY_METHODS)),
        ("execution", " | ".join(STRATEGIES) + " ([train] execution); compute_dtype: " + " | ".join(COMPUTE_DTYPES)),
        ("run keys", ", ".join(RUN_KEYS) + ", the algorithm's arguments, " + ", ".join(RECIPE_KEYS)
         + ", optimizer, server_optimizer"),
        ("optimizers", ", ".join(OPTIMIZERS) + " (optimizer = NAME or {name = NAME, ...}: optax.NAME; federated "
         "server_optimizer = {name = NAME, learning_rate = ..., ...})"),
        ("schedules", ", ".join(SCHEDULES) + " (schedule = {kind = ...}); lr_scaling: " + " | ".join(SCALING_RULES)),
        ("compressors", ", ".join(COMPRESSORS) + " (choco_sgd compressor)"),
        ("momentum_sync", " | ".join(MOMENTUM_SYNC) + " (local_sgd)"),
    ]
    try:
        from simdl import systems
    except ImportError:
        return rows
    keys = getattr(systems, "KEYS", None)
    if keys:
        rows.append(("[system] keys", ", ".join(keys)))
    return rows


def _task_keys() -> list[str]:
    """Keyword arguments of the classification task builder (the ``[task]`` keys of the default kind)."""
    from simdl.tasks import classification

    return [p for p in inspect.signature(classification).parameters if p != "data"]


def format_names(rows: list[tuple[str, str]]) -> str:
    """``label: names`` lines, labels padded to one width."""
    width = max(len(label) for label, _ in rows) + 2
    return "\n".join(f"{label + ':':<{width}}{names}" for label, names in rows)
