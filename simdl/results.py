"""Writing run outputs atomically: results.json (config + histories + finals, every seed's history), summary.csv
(mean ± std over seeds)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np

#: metrics of a run's ``final`` that differ between seeds: summary.csv gives ``<metric>_mean`` and ``<metric>_std``
SEED_METRICS = ("avg_model_accuracy", "worker_accuracy_mean", "worker_accuracy_min", "avg_model_loss", "suboptimality",
                "consensus_distance")
SUMMARY_COLUMNS = ("name", "algorithm", "topology", "momentum", "nesterov", "status", "diverged_at", "steps", "seeds",
                   *(f"{m}_{s}" for m in SEED_METRICS for s in ("mean", "std")),
                   "bytes_per_worker", "wall_time_s", "compile_time_s")


def _clean(x):
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, np.ndarray):
        return _clean(x.tolist())
    if isinstance(x, (np.floating, float)):
        f = float(x)
        return f if math.isfinite(f) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, (str, int, bool)) or x is None:
        return x
    return repr(x)


#: keys of ``SimulationResult.info`` copied into every run record of results.json: how the run was executed
#: (the resolved per-worker strategy, convolution implementation, compute dtype) and what evaluation cost.
STRATEGY_KEYS = ("execution", "map_batch_size", "conv_impl", "conv_layers", "compute_dtype", "eval_time_s",
                 "eval_first_time_s", "evaluations", "platform", "device_kind", "jax_version")


def record_id(task: dict, train: dict, run: dict, system: dict | None = None,
              participation: dict | None = None) -> str:
    """Stable 12-hex-digit id of one run's record: the SHA-1 of its ``task``, ``train`` and ``run`` tables, plus the
    ``[system]`` and ``[participation]`` tables when given (JSON with sorted keys). ``simdl run`` and
    ``simdl sweep`` both name their records with it; a finished record with the same id is not run again."""
    core = {"task": task, "train": train, "run": run}
    if system is not None:
        core["system"] = system
    if participation is not None:
        core["participation"] = participation
    return hashlib.sha1(json.dumps(core, sort_keys=True, default=repr).encode()).hexdigest()[:12]


def run_strategy(info: dict) -> dict:
    """The :data:`STRATEGY_KEYS` of a run's ``info`` present there, plus ``evaluation`` (what was evaluated, from
    ``info["task"]``) when the task reports it."""
    out = {k: info[k] for k in STRATEGY_KEYS if k in info}
    evaluation = (info.get("task") or {}).get("evaluation")
    if evaluation is not None:
        out["evaluation"] = evaluation
    return out


#: mode of every results file (mkstemp creates its temporary files 0600, readable by their owner only)
RESULT_MODE = 0o644


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file in the same folder and ``os.replace`` (never half-written);
    the file gets mode :data:`RESULT_MODE` (0644)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, RESULT_MODE)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def to_json(obj) -> str:
    """JSON text with NaN/Inf written as null and numpy values converted."""
    return json.dumps(_clean(obj), indent=1, allow_nan=False)


def mean_std(values) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (``ddof=1``) of per-seed values; ``None`` entries (a metric a seed did not
    record) are skipped; std is ``None`` for fewer than two values, both are ``None`` for none."""
    v = np.asarray([float(x) for x in values if x is not None], dtype=np.float64)
    if v.size == 0:
        return None, None
    return float(np.mean(v)), (float(np.std(v, ddof=1)) if v.size > 1 else None)


def combine_seeds(seed_runs: list[dict]) -> dict:
    """A row's ``history`` and ``final`` from its per-seed runs (dicts with ``history`` and ``final``).

    ``history``: per evaluation, the mean over seeds of every metric, up to the shortest seed history (a diverged
    seed stops early); ``final``: the mean over seeds of each final metric (``step``: the smallest final step);
    ``final_std``: the sample standard deviation (``ddof=1``) over seeds, ``None`` with one seed.
    """
    if len(seed_runs) == 1:  # one seed: its own history and final, unchanged
        sr = seed_runs[0]
        return {"history": dict(sr["history"]), "final": dict(sr["final"]),
                "final_std": {k: None for k in sr["final"] if k != "step"}}
    n = min(len(sr["history"].get("step", [])) for sr in seed_runs)
    keys = [k for k in seed_runs[0]["history"] if all(k in sr["history"] for sr in seed_runs)]
    history = {}
    for k in keys:
        if np.ndim(seed_runs[0]["history"][k]) != 1:  # per-worker (evaluations, n): kept per seed in seed_runs only
            continue
        cols = np.asarray([[np.nan if x is None else float(x) for x in np.asarray(sr["history"][k])[:n]]
                           for sr in seed_runs], dtype=np.float64)
        history[k] = cols.mean(axis=0).tolist()
    if "step" in history:
        history["step"] = [int(s) for s in history["step"]]
    final, final_std = {}, {}
    fkeys = [k for k in seed_runs[0]["final"] if all(k in sr["final"] for sr in seed_runs)]
    for k in fkeys:
        if k == "step":
            final[k] = min(int(sr["final"][k]) for sr in seed_runs)
            continue
        final[k], final_std[k] = mean_std(sr["final"][k] for sr in seed_runs)
    return {"history": history, "final": final, "final_std": final_std}


def summary_rows(runs: list[dict]) -> list[dict]:
    """One row per run record: its identity, momentum (from the resolved ``hyperparams``), status, ``seeds``
    (space-separated) and, for every :data:`SEED_METRICS` metric, ``<metric>_mean`` and ``<metric>_std`` over the
    record's ``seed_runs`` (sample std, ``ddof=1``; empty with one seed). A record without ``seed_runs`` counts as
    one run of seed ``seed``."""
    rows = []
    for r in runs:
        final = r.get("final", {})
        hp = r.get("hyperparams") or {}
        seed_runs = r.get("seed_runs") or [{"seed": r.get("seed"), "final": final}]
        seeds = [sr.get("seed") for sr in seed_runs]
        row = {"name": r["name"], "algorithm": r["algorithm"], "topology": r["topology"],
               "momentum": hp.get("momentum"), "nesterov": hp.get("nesterov"), "status": r["status"],
               "diverged_at": r.get("diverged_at"), "steps": final.get("step"),
               "seeds": " ".join(str(s) for s in seeds if s is not None) or None,
               "bytes_per_worker": final.get("bytes_per_worker"),
               "wall_time_s": r.get("wall_time_s"), "compile_time_s": r.get("compile_time_s")}
        for m in SEED_METRICS:
            row[f"{m}_mean"], row[f"{m}_std"] = mean_std(sr.get("final", {}).get(m) for sr in seed_runs)
        rows.append({c: row.get(c) for c in SUMMARY_COLUMNS})
    return rows


def write_csv(path: str | Path, columns: list[str], rows: list[dict]) -> None:
    """Write ``rows`` (dicts keyed by ``columns``) as a CSV file with a header, atomically; ``None`` is written as
    an empty field. The one CSV writer of ``summary.csv`` (``simdl run``) and ``sweep.csv`` (``simdl sweep``).

    Raises:
      ValueError: a row with a key not in ``columns``.
    """
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns))
    w.writeheader()
    for row in rows:
        w.writerow({k: ("" if v is None else v) for k, v in row.items()})
    atomic_write_text(path, buf.getvalue())


def write_outputs(out: str | Path, payload: dict) -> None:
    """Write ``results.json`` and ``summary.csv`` into ``out`` atomically."""
    out = Path(out)
    atomic_write_text(out / "results.json", to_json(payload))
    write_csv(out / "summary.csv", SUMMARY_COLUMNS, summary_rows(payload["runs"]))
