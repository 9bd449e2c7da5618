"""Sweeps: a grid over any config keys, expanded into runs with stable ids, grouped into compiled programs, and
recorded run by run so that an interrupted sweep resumes where it stopped."""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
from pathlib import Path

from simdl.config import RUN_KEYS, expand_runs
from simdl.results import atomic_write_text, to_json

#: Keys whose values are arrays inside the compiled program: runs differing only in these share one compilation
#: and run together along a vmapped run axis.
BATCHABLE = ("train.seed", "task.seed", "task.alpha", "run.learning_rate")


def _set(cfg: dict, dotted: str, value) -> None:
    node = cfg
    parts = dotted.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value


def expand_grid(cfg: dict) -> list[dict]:
    """All runs of a sweep config, each a resolved ``{"task", "train", "run"}`` dict with ``id`` and ``label``.

    The grid is the product of the ``[[runs]]`` entries and every list in ``[sweep]``: a dotted key
    (``"task.alpha"``, ``"train.seed"``) sets that config key; a bare key (``learning_rate``, ``topology``,
    ``momentum``) sets a run key.

    Raises:
      ValueError: a ``[sweep]`` value that is not a non-empty list.
    """
    grid = cfg.get("sweep", {})
    axes = []
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ValueError(f"[sweep] {key} must be a non-empty list of values, got {values!r}")
        axes.append((key, values))
    runs = expand_runs({k: v for k, v in cfg.items() if k != "sweep"})
    out = []
    for run in runs:
        for combo in itertools.product(*[v for _, v in axes]):
            spec = {"task": copy.deepcopy(cfg.get("task", {})), "train": copy.deepcopy(cfg.get("train", {})),
                    "run": copy.deepcopy(run)}
            for (key, _), value in zip(axes, combo, strict=True):
                if "." in key:
                    _set(spec, key, value)
                else:
                    spec["run"][key] = value
            label_bits = [spec["run"]["name"].split("/")[0]] + [f"{k.split('.')[-1]}={v}" for (k, _), v in
                                                                zip(axes, combo, strict=True)]
            spec["label"] = " ".join(label_bits)
            spec["id"] = run_id(spec)
            out.append(spec)
    return out


def run_id(spec: dict) -> str:
    """Stable 12-hex-digit id of a resolved run (hash of its task, train and run settings)."""
    core = {"task": spec["task"], "train": spec["train"], "run": {k: v for k, v in spec["run"].items() if k != "name"}}
    return hashlib.sha1(json.dumps(core, sort_keys=True, default=repr).encode()).hexdigest()[:12]


def group_key(spec: dict) -> str:
    """Runs with equal group keys differ only in :data:`BATCHABLE` values and compile to one program."""
    s = copy.deepcopy({"task": spec["task"], "train": spec["train"], "run": spec["run"]})
    for dotted in BATCHABLE:
        sect, key = dotted.split(".")
        s[sect].pop(key, None)
    s["run"].pop("name", None)
    return json.dumps(s, sort_keys=True, default=repr)


def group_runs(specs: list[dict]) -> list[list[dict]]:
    """Partition runs into compile groups (order of first appearance kept)."""
    groups: dict[str, list[dict]] = {}
    for s in specs:
        groups.setdefault(group_key(s), []).append(s)
    return list(groups.values())


class RunStore:
    """One JSON file per finished run under ``DIR/runs/``, written atomically; presence means finished."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        (self.root / "runs").mkdir(parents=True, exist_ok=True)

    def path(self, rid: str) -> Path:
        return self.root / "runs" / f"{rid}.json"

    def done(self, rid: str) -> bool:
        return self.path(rid).is_file()

    def save(self, rid: str, record: dict) -> None:
        atomic_write_text(self.path(rid), to_json(record))

    def load(self, rid: str) -> dict:
        return json.loads(self.path(rid).read_text())


def run_kwargs(run: dict) -> dict:
    """The algorithm hyperparameters of a resolved run (everything but name/algorithm/topology keys)."""
    return {k: v for k, v in run.items() if k not in RUN_KEYS}
