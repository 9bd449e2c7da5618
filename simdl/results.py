"""Writing run outputs atomically: results.json (config + histories + finals), summary.csv."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np

SUMMARY_COLUMNS = ("name", "algorithm", "topology", "status", "diverged_at", "steps", "avg_model_accuracy",
                   "worker_accuracy_mean", "worker_accuracy_min", "avg_model_loss", "suboptimality",
                   "consensus_distance", "bytes_per_worker", "wall_time_s", "compile_time_s")


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


def summary_rows(runs: list[dict]) -> list[dict]:
    rows = []
    for r in runs:
        final = r.get("final", {})
        row = {"name": r["name"], "algorithm": r["algorithm"], "topology": r["topology"], "status": r["status"],
               "diverged_at": r.get("diverged_at"), "steps": final.get("step"),
               "wall_time_s": r.get("wall_time_s"), "compile_time_s": r.get("compile_time_s")}
        for c in SUMMARY_COLUMNS:
            if c not in row:
                row[c] = final.get(c)
        rows.append(row)
    return rows


def write_outputs(out: str | Path, payload: dict) -> None:
    """Write ``results.json`` and ``summary.csv`` into ``out`` atomically."""
    out = Path(out)
    atomic_write_text(out / "results.json", to_json(payload))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=SUMMARY_COLUMNS)
    w.writeheader()
    for row in summary_rows(payload["runs"]):
        w.writerow({k: ("" if v is None else v) for k, v in row.items()})
    atomic_write_text(out / "summary.csv", buf.getvalue())
