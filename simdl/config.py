"""Experiment configurations: TOML files, ``--set key=value`` overrides, and turning a config into runs."""

from __future__ import annotations

import copy
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

SECTIONS = ("task", "train", "run_defaults", "runs", "scale",  # "scale": a top-level key (simdl.scale)
            "system",  # "system": the simulated machines and network (simdl.systems.from_config)
            "participation")  # "participation": which workers take part per round (simdl.participation.from_config)
TRAIN_KEYS = ("steps", "epochs", "batch_size", "eval_every", "seed", "seeds", "mixing", "message_drop",
              "link_failure", "straggler", "message_lost", "worker_batch",
              "execution", "compute_dtype")
RUN_KEYS = ("name", "algorithm", "topology", "topology_args")
#: ``[train]`` keys whose default is the same-named argument's default of :func:`simdl.simulate`
SIMULATE_DEFAULTS = ("batch_size", "eval_every", "seed", "mixing", "worker_batch", "execution", "compute_dtype")


def train_settings(train_cfg: dict) -> dict:
    """``[train]`` with its defaults filled in: each key of :data:`SIMULATE_DEFAULTS` defaults to
    :func:`simdl.simulate`'s default for it (read from its signature, so a default is written once); ``steps`` and
    ``epochs`` are resolved by :func:`simdl.recipes.resolve_train`. Returns a new dict.

    Raises:
      ValueError: an unknown ``[train]`` key (the valid ones listed).
    """
    import inspect

    from simdl.runtime import simulate

    unknown = sorted(set(train_cfg) - set(TRAIN_KEYS))
    if unknown:
        raise ValueError(f"unknown [train] key(s) {unknown}; valid: {', '.join(TRAIN_KEYS)}")
    params = inspect.signature(simulate).parameters
    return {**{k: params[k].default for k in SIMULATE_DEFAULTS}, **train_cfg}


def train_seeds(train: dict) -> list[int]:
    """The seeds ``simdl run`` runs every row with: ``[train] seeds`` (a non-empty list of distinct integers >= 0,
    all run in one batched program per row), else ``[seed]`` (``train.seed``, default 0).

    Raises:
      ValueError: ``seeds`` is not a non-empty list of distinct non-negative integers, or both ``seed`` and ``seeds``
        are set (set one; ``--set train.seeds=[3]`` runs one seed).
    """
    if "seeds" not in train:
        return [train.get("seed", 0)]
    seeds = train["seeds"]
    if "seed" in train:
        raise ValueError(f"set train.seed or train.seeds, not both (got seed={train['seed']!r}, seeds={seeds!r}); "
                         f"e.g. --set train.seeds=[{train['seed']!r}] for one seed")
    if (not isinstance(seeds, list) or not seeds
            or any(isinstance(x, bool) or not isinstance(x, int) or x < 0 for x in seeds)):
        raise ValueError(f"train.seeds must be a non-empty list of integers >= 0, e.g. [0, 1, 2]; got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"train.seeds must be distinct, got {seeds!r}")
    return list(seeds)


def default_config() -> dict:
    """The default experiment (``simdl/configs/default.toml``)."""
    text = resources.files("simdl").joinpath("configs/default.toml").read_text()
    return tomllib.loads(text)


def load_config(path: str | Path | None, extra_sections: tuple[str, ...] = ()) -> dict:
    """Read a TOML config; ``None`` gives the default experiment.

    Raises:
      ValueError: missing file, malformed TOML (with the parser's line/column), unknown top-level sections.
    """
    if path is None:
        cfg = default_config()
    else:
        p = Path(path)
        if not p.is_file():
            raise ValueError(f"config file {str(p)!r} does not exist")
        try:
            cfg = tomllib.loads(p.read_text())
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"malformed TOML in {str(p)!r}: {e}") from None
    valid = SECTIONS + tuple(extra_sections)
    unknown = sorted(set(cfg) - set(valid))
    if unknown:
        raise ValueError(f"unknown config section(s) {unknown}; valid sections: {', '.join(valid)}")
    return cfg


def parse_value(text: str) -> Any:
    """Parse an override value as a TOML value (``0.1``, ``true``, ``"ring"``, ``[1, 2]``); bare words are strings."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_override(cfg: dict, item: str, extra_sections: tuple[str, ...] = ()) -> dict:
    """Apply one ``key=value`` override; dotted keys address tables (``task.alpha=0.5``) and runs by index
    (``runs.1.learning_rate=0.05``). Returns a new dict.

    Raises:
      ValueError: no ``=``, empty key, or a run index out of range.
    """
    if "=" not in item:
        raise ValueError(f"malformed --set {item!r}: expected key=value, e.g. task.alpha=0.5 or train.steps=200")
    key, _, raw = item.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ValueError(f"malformed --set {item!r}: empty key part in {key!r}")
    cfg = copy.deepcopy(cfg)
    parts = key.split(".")
    valid = SECTIONS + tuple(extra_sections)
    if parts[0] not in valid:
        raise ValueError(f"malformed --set {item!r}: unknown section {parts[0]!r}; valid: {', '.join(valid)}")
    node: Any = cfg
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ValueError(f"--set {item!r}: run index {part!r} out of range (there are {len(node)} runs)")
            node = node[int(part)]
        else:
            node = node.setdefault(part, [] if parts[i + 1].isdigit() else {})
    last = parts[-1]
    value = parse_value(raw.strip())
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise ValueError(f"--set {item!r}: index {last!r} out of range")
        node[int(last)] = value
    else:
        node[last] = value
    return cfg


def expand_runs(cfg: dict) -> list[dict]:
    """The list of runs: each ``[[runs]]`` entry merged over ``[run_defaults]``; names made unique.

    Raises:
      ValueError: no runs, or a run without ``algorithm``.
    """
    defaults = cfg.get("run_defaults", {})
    runs = cfg.get("runs", [])
    if not runs:
        raise ValueError("the config has no [[runs]] entries")
    out, seen = [], {}
    for i, r in enumerate(runs):
        merged = {**defaults, **r}
        if "algorithm" not in merged:
            raise ValueError(f"run {i} has no 'algorithm' key")
        base = merged.get("name") or f"{merged['algorithm']}/{merged.get('topology', 'ring')}"
        seen[base] = seen.get(base, 0) + 1
        merged["name"] = base if seen[base] == 1 else f"{base}#{seen[base]}"
        out.append(merged)
    return out
