"""Sweeps: a grid over any config keys, expanded into runs with stable ids, grouped into compiled programs, and
recorded run by run so that an interrupted sweep resumes where it stopped."""

from __future__ import annotations

import copy
import itertools
import json
import sys
from pathlib import Path

from simdl.config import RUN_KEYS, expand_runs, train_settings
from simdl.results import atomic_write_text, run_strategy, to_json

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
    """All runs of a sweep config, each a resolved ``{"task", "train", "run"}`` dict with ``id`` and ``label``
    (and ``"system"`` / ``"participation"``, the ``[system]`` / ``[participation]`` tables, when the config has
    them).

    The grid is the product of the ``[[runs]]`` entries and every list in ``[sweep]``: a dotted key
    (``"task.alpha"``, ``"train.seed"``, ``"system.latency"``, ``"participation.k"``) sets that config key; a bare
    key (``learning_rate``, ``topology``, ``momentum``) sets a run key. ``[train] seeds = [...]`` is one more
    ``"train.seed"`` axis.

    Raises:
      ValueError: a ``[sweep]`` value that is not a non-empty list; ``[train] seeds`` with a ``"train.seed"`` axis.
    """
    from simdl.config import train_seeds

    grid = cfg.get("sweep", {})
    axes = []
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ValueError(f"[sweep] {key} must be a non-empty list of values, got {values!r}")
        axes.append((key, values))
    if "seeds" in cfg.get("train", {}):  # [train] seeds in a sweep: the same as a "train.seed" axis
        if "train.seed" in grid:
            raise ValueError("give [train] seeds or a [sweep] \"train.seed\" axis, not both")
        seeds = train_seeds(cfg["train"])
        cfg = {**cfg, "train": {k: v for k, v in cfg["train"].items() if k != "seeds"}}
        axes.append(("train.seed", seeds))
    runs = expand_runs({k: v for k, v in cfg.items() if k != "sweep"})
    out = []
    for run in runs:
        for combo in itertools.product(*[v for _, v in axes]):
            spec = {"task": copy.deepcopy(cfg.get("task", {})), "train": copy.deepcopy(cfg.get("train", {})),
                    "run": copy.deepcopy(run)}
            for section in ("system", "participation"):
                if section in cfg:
                    spec[section] = copy.deepcopy(cfg[section])
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
    """Stable 12-hex-digit id of a resolved run (:func:`simdl.results.record_id` of its task, train and run settings
    without the run's ``name``, and its ``[system]`` and ``[participation]`` tables when it has them)."""
    from simdl.results import record_id

    return record_id(spec["task"], spec["train"], {k: v for k, v in spec["run"].items() if k != "name"},
                     spec.get("system"), spec.get("participation"))


def group_key(spec: dict) -> str:
    """Runs with equal group keys differ only in :data:`BATCHABLE` values and compile to one program."""
    s = copy.deepcopy({"task": spec["task"], "train": spec["train"], "run": spec["run"],
                       "system": spec.get("system"), "participation": spec.get("participation")})
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
    """One JSON file per finished run under ``DIR/runs/``, written atomically. A run is finished when its record
    parses as a JSON object with its own ``id``; a truncated or corrupt record is named once on stderr and treated
    as unfinished, so the run is redone and its record rewritten (it never blocks a sweep)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        (self.root / "runs").mkdir(parents=True, exist_ok=True)
        self._records: dict[str, dict] = {}
        self._reported: set[str] = set()

    def path(self, rid: str) -> Path:
        return self.root / "runs" / f"{rid}.json"

    def get(self, rid: str) -> dict | None:
        """The finished record of run ``rid``, or None (absent, or unreadable: named once on stderr)."""
        if rid in self._records:
            return self._records[rid]
        path = self.path(rid)
        if not path.is_file():
            return None
        try:
            record = json.loads(path.read_text())
            problem = None if isinstance(record, dict) and record.get("id") == rid else "not a record of this run"
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            record, problem = None, str(e)
        if problem is not None:
            if rid not in self._reported:
                self._reported.add(rid)
                print(f"simdl: warning: {path}: unreadable run record ({problem}); treated as unfinished, it will "
                      "be run again", file=sys.stderr)
            return None
        self._records[rid] = record
        return record

    def done(self, rid: str) -> bool:
        return self.get(rid) is not None

    def save(self, rid: str, record: dict) -> None:
        atomic_write_text(self.path(rid), to_json(record))
        self._records[rid] = json.loads(to_json(record))

    def load(self, rid: str) -> dict:
        record = self.get(rid)
        if record is None:
            raise FileNotFoundError(f"no finished run record {self.path(rid)}")
        return record


def run_kwargs(run: dict) -> dict:
    """The algorithm hyperparameters of a resolved run (everything but name/algorithm/topology keys)."""
    return {k: v for k, v in run.items() if k not in RUN_KEYS}


# --------------------------------------------------------------------------- execution


def build_task(task_cfg: dict):
    """A task from a ``[task]`` table (``kind`` = classification (default) or random_quadratics)."""
    import simdl

    t = dict(task_cfg)
    kind = t.pop("kind", "classification")
    if kind == "classification":
        return simdl.tasks.classification(**t)
    if kind == "random_quadratics":
        return simdl.tasks.random_quadratics(**t)
    raise ValueError(f"unknown task kind {kind!r}; valid: classification, random_quadratics")


def train_faults(train: dict):
    """The :class:`simdl.faults.Faults` of a ``[train]`` table (``message_drop``, ``link_failure``, ``straggler``),
    or ``None`` when none is set."""
    from simdl.faults import from_config

    return from_config(train)


def algorithm_builder(run: dict, task, train: dict | None = None):
    """``fn(hp) -> Algorithm`` for a run; ``hp`` may carry a traced ``learning_rate`` (passed as a schedule).

    The run's recipe keys (``schedule``, ``lr_scaling``, ``decay_norm``, ``local_epochs``) are resolved by
    :func:`simdl.recipes.resolve_run_kwargs`. A batched learning rate is scaled and shaped the same way
    (:func:`simdl.recipes.learning_rate_fn`: ``t -> lr · factor · shape(t)``), so runs with schedules stay
    batchable along the learning rate. ``train``: the resolved ``[train]`` settings (default: the defaults).
    """
    import simdl
    from simdl.recipes import learning_rate_fn, optimizer_from_spec, resolve_run_kwargs, resolve_train

    train = resolve_train(train_settings({}) if train is None else train, task)
    static = resolve_run_kwargs(run, task, train)
    to_lr = learning_rate_fn(run, task, train)

    def fn(hp):
        kw = dict(static)
        if "learning_rate" in hp:
            kw["learning_rate"] = to_lr(hp["learning_rate"])
            if "optimizer" in run:  # the local optax optimizer follows the batched learning rate too
                kw["optimizer"] = optimizer_from_spec(run["optimizer"], kw["learning_rate"])
        return simdl.algorithms.get(run["algorithm"], **kw)

    return fn


class Planned:
    """A sweep ready to execute: resolved runs, their compile groups and built tasks/topologies."""

    def __init__(self, cfg: dict, base_dir: str | Path | None = None):
        """``base_dir``: where relative paths of the config (a participation trace) are looked up when they are not
        found from the working directory (the config file's folder)."""
        import simdl
        from simdl import participation
        from simdl.recipes import resolve_train
        from simdl.runtime import check_compute_dtype, validate

        self.specs = expand_grid(cfg)
        self.groups = group_runs(self.specs)
        self.swept = list(cfg.get("sweep", {}))
        self._tasks: dict[str, object] = {}
        self.built = {}
        for spec in self.specs:  # build and validate everything before the first compilation
            task = self.task(spec["task"])
            train = resolve_train(train_settings(spec["train"]), task)
            run = spec["run"]
            topo = simdl.topologies.get(run.get("topology", "ring"), task.n_workers, **run.get("topology_args", {}))
            fn = algorithm_builder(run, task, train)
            alg = fn({})
            eval_every = train["eval_every"] or max(1, train["steps"] // 20)
            validate(task, alg, topo, train["steps"], train["batch_size"], eval_every)
            check_compute_dtype(train["compute_dtype"])
            simdl.mixing.choose_method(topo, train["mixing"])
            simdl.faults.check_algorithm(train_faults(train), alg, topo, task)
            system = simdl.systems.check_system(simdl.systems.from_config(spec.get("system")), topo, alg)
            part = participation.check_participation(participation.from_config(spec.get("participation"), base_dir),
                                                     task.n_workers, train["steps"], alg.round_length)
            participation.check_algorithm(part, alg, topo, task)
            self.built[spec["id"]] = (task, topo, fn, train, system, part)

    def task(self, task_cfg: dict):
        key = json.dumps(task_cfg, sort_keys=True)
        if key not in self._tasks:
            self._tasks[key] = build_task(task_cfg)
        return self._tasks[key]


def _record(spec: dict, res, group: int, wall: float) -> dict:
    extra = {k: spec[k] for k in ("system", "participation") if k in spec}
    return {"id": spec["id"], "label": spec["label"], "task": spec["task"], "train": spec["train"],
            "run": spec["run"], **extra, "group": group, "status": "ok" if res.diverged_at is None else "diverged",
            "diverged_at": res.diverged_at, "compiles": res.info["compiles"], **run_strategy(res.info),
            "batched_runs": res.info.get("batched_runs", 1), "wall_time_s": wall,
            "history": {k: v.tolist() for k, v in res.history.items()}, "final": res.final}


def execute(plan: Planned, store: RunStore, on_run=None, on_group=None) -> list[dict]:
    """Run every unfinished run of ``plan`` group by group (batched groups as one vmapped program), saving each
    finished run to ``store`` atomically; returns all records (finished earlier or now) in grid order."""
    import time

    import simdl
    from simdl.runtime import simulate_batch

    for g, group in enumerate(plan.groups):
        todo = [s for s in group if not store.done(s["id"])]
        if on_group is not None:
            on_group(g, group, todo)
        if not todo:
            continue
        task0, topo, fn, train, system, part = plan.built[todo[0]["id"]]
        t0 = time.perf_counter()
        if len(todo) == 1:
            results = [simdl.simulate(task0, fn({}), topo, steps=train["steps"], batch_size=train["batch_size"],
                                      seed=train["seed"], eval_every=train["eval_every"], mixing=train["mixing"],
                                      faults=train_faults(train), worker_batch=train["worker_batch"],
                                      execution=train["execution"], compute_dtype=train["compute_dtype"],
                                      system=system, participation=part)]
        else:
            tasks = [plan.built[s["id"]][0] for s in todo]
            hps = [{"learning_rate": float(s["run"]["learning_rate"])} if "learning_rate" in s["run"] else {}
                   for s in todo]
            seeds = [int(s["train"].get("seed", 0)) for s in todo]
            results = simulate_batch(tasks, fn, hps, topo, steps=train["steps"], batch_size=train["batch_size"],
                                     seeds=seeds, eval_every=train["eval_every"], mixing=train["mixing"],
                                     faults=train_faults(train), worker_batch=train["worker_batch"],
                                     execution=train["execution"], compute_dtype=train["compute_dtype"],
                                     system=system, participation=part)
        wall = time.perf_counter() - t0
        for spec, res in zip(todo, results, strict=True):
            rec = _record(spec, res, g, wall / len(todo))
            store.save(spec["id"], rec)
            if on_run is not None:
                on_run(rec)
    return [store.load(s["id"]) for s in plan.specs if store.done(s["id"])]
