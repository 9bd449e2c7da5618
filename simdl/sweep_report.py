"""Sweep outputs: ``sweep.csv`` (one row per run), the metric-vs-α plot, a heatmap over two keys, and the best
learning rate per cell."""

from __future__ import annotations

import json
import textwrap
from collections import defaultdict
from pathlib import Path

import numpy as np

from simdl.results import write_csv as results_csv

METRIC_COLUMNS = ("avg_model_accuracy", "worker_accuracy_mean", "worker_accuracy_min", "avg_model_loss",
                  "suboptimality", "consensus_distance", "bytes_per_worker")


def headline_metric(records: list[dict]) -> tuple[str, bool]:
    """``(metric, higher_is_better)``: accuracy of x̄ for classification, f(x̄) − f* for quadratics."""
    if any("avg_model_accuracy" in r["final"] for r in records):
        return "avg_model_accuracy", True
    if any("suboptimality" in r["final"] for r in records):
        return "suboptimality", False
    return "avg_model_loss", False


def swept_value(rec: dict, key: str):
    if "." in key:
        sect, k = key.split(".", 1)
        return (rec.get(sect) or {}).get(k)
    return rec["run"].get(key, "ring" if key == "topology" else None)


def _score(rec: dict, metric: str, higher: bool) -> float:
    v = rec["final"].get(metric)
    if rec["status"] != "ok" or v is None:
        return -np.inf if higher else np.inf
    return float(v)


def write_csv(records: list[dict], swept: list[str], out: Path) -> None:
    cols = ["id", "label", "algorithm", "topology", *[k for k in swept if k not in ("algorithm", "topology")],
            "status", "diverged_at", "compiles", "batched_runs", "wall_time_s", *METRIC_COLUMNS]
    rows = []
    for r in records:
        row = {"id": r["id"], "label": r["label"], "algorithm": r["run"]["algorithm"],
               "topology": r["run"].get("topology", "ring"), "status": r["status"], "diverged_at": r["diverged_at"],
               "compiles": r["compiles"], "batched_runs": r["batched_runs"], "wall_time_s": r["wall_time_s"]}
        for k in swept:
            if k not in ("algorithm", "topology"):
                row[k] = swept_value(r, k)
        for m in METRIC_COLUMNS:
            row[m] = r["final"].get(m)
        rows.append(row)
    results_csv(out / "sweep.csv", cols, rows)


def cells(records: list[dict], keys: list[str]) -> dict:
    """Group records by the values of ``keys`` (a cell), e.g. all seeds of one configuration."""
    out = defaultdict(list)
    for r in records:
        out[tuple(str(swept_value(r, k)) for k in keys)].append(r)
    return out


def best_learning_rates(records: list[dict], swept: list[str]) -> list[dict]:
    """For every cell (all swept keys but learning_rate and seeds), the learning rate with the best mean headline
    metric over seeds.

    A learning rate with any diverged (or unfinished) seed is never the best. Each row also says which learning
    rates diverged (``diverged``), whether the best one lies at the edge of the tried grid (``at_grid_edge``: the
    optimum may be outside it, widen the grid), and ``best_learning_rate`` is ``None`` (metric NaN) when every
    learning rate of the cell diverged.
    """
    metric, higher = headline_metric(records)
    keys = ["algorithm", "topology", *[k for k in swept if k not in ("learning_rate", "train.seed", "task.seed",
                                                                       "algorithm", "topology")]]
    rows = []
    for cell, recs in cells(records, keys).items():
        by_lr = defaultdict(list)
        for r in recs:
            by_lr[r["run"].get("learning_rate")].append(_score(r, metric, higher))
        means = {lr: float(np.mean(v)) for lr, v in by_lr.items()}
        tried = sorted(means, key=lambda x: float(x))
        finite = {lr: m for lr, m in means.items() if np.isfinite(m)}
        best = (max(finite, key=finite.get) if higher else min(finite, key=finite.get)) if finite else None
        edge = best is not None and len(tried) > 2 and best in (tried[0], tried[-1])
        rows.append({**dict(zip(keys, cell, strict=True)), "best_learning_rate": best,
                     metric: finite[best] if best is not None else float("nan"), "tried": tried,
                     "diverged": [lr for lr in tried if lr not in finite], "at_grid_edge": edge})
    return rows


#: Keys of a :func:`best_learning_rates` row that describe the result rather than the cell.
BEST_LR_FIELDS = ("best_learning_rate", "tried", "diverged", "at_grid_edge")


def cell_label(row: dict, metric: str) -> str:
    """The cell of a :func:`best_learning_rates` row as ``key=value`` words."""
    return " ".join(f"{k}={v}" for k, v in row.items() if k not in (*BEST_LR_FIELDS, metric))


def describe_best_lr(row: dict, metric: str) -> str:
    """One line for a :func:`best_learning_rates` row, with warnings for diverged rates and a best at the grid edge."""
    if row["best_learning_rate"] is None:
        return f"{cell_label(row, metric)}: none (every learning rate diverged; tried {row['tried']})"
    line = f"{cell_label(row, metric)}: {row['best_learning_rate']} ({metric} {row[metric]:.4g}; tried {row['tried']}"
    if row["diverged"]:
        line += f"; diverged {row['diverged']}"
    line += ")"
    if row["at_grid_edge"]:
        line += " -- at the edge of the grid: the best rate may lie outside it, widen --lrs"
    return line


def write_best_lr(rows: list[dict], out: Path) -> None:
    if not rows:
        return
    results_csv(out / "best_lr.csv", list(rows[0]), rows)


def plot_sweep(records: list[dict], swept: list[str], out: Path, heatmap: tuple[str, str] | None = None) -> list:
    """Write ``metric_vs_alpha.png`` (if α was swept), ``heatmap.png``, the training curves of every cell
    (:func:`plot_sweep_curves`, ``curves/<cell>/*.png``) and ``best_lr.png`` (if learning_rate was swept).
    Returns the written paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric, higher = headline_metric(records)
    written = []
    if "task.alpha" in swept:
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        groups = cells(records, ["algorithm", "topology"])
        n_alpha: set = set()
        for (alg, topo), recs in sorted(groups.items()):
            by_a = defaultdict(list)
            for r in recs:
                if "learning_rate" in swept:
                    continue
                by_a[float(r["task"]["alpha"])].append(_score(r, metric, higher))
            if "learning_rate" in swept:  # best LR per α
                for a, rs in cells(recs, ["task.alpha"]).items():
                    lrs = cells(rs, ["learning_rate"])
                    by_a[float(a[0])] = max((list(map(lambda r: _score(r, metric, higher), v)) for v in lrs.values()),
                                            key=lambda v: np.mean(v) * (1 if higher else -1))
            xs = sorted(by_a)
            ys = [np.mean(by_a[x]) for x in xs]
            es = [np.std(by_a[x], ddof=1) if len(by_a[x]) > 1 else 0.0 for x in xs]
            n_alpha.update(len(by_a[x]) for x in xs)
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=f"{alg}/{topo}")
        ax.set_xscale("log")
        ax.set_xlabel("Dirichlet α (smaller = more heterogeneous)")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ns = "/".join(str(n) for n in sorted(n_alpha))
        ax.set_title(f"final {metric}: mean ± std (ddof=1) over {ns} run(s) per point"
                     + (" (best learning rate per α)" if "learning_rate" in swept else ""), fontsize=9)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
        fig.savefig(out / "metric_vs_alpha.png", dpi=130, bbox_inches="tight")
        plt.close(fig)
        written.append(out / "metric_vs_alpha.png")
    if heatmap is None:
        multi = [k for k in ["algorithm", "topology", *swept] if len({str(swept_value(r, k)) for r in records}) > 1]
        multi = list(dict.fromkeys(multi))
        heatmap = (multi[0], multi[1]) if len(multi) >= 2 else None
    if heatmap is not None:
        written.append(plot_heatmap(records, heatmap, metric, higher, out))
    written += plot_sweep_curves(records, swept, out)
    if "learning_rate" in swept:
        rows = best_learning_rates(records, swept)
        fig, ax = plt.subplots(figsize=(6.4, 0.35 * len(rows) + 1.5))
        labels = [cell_label(r, metric)
                  for r in rows]
        ax.barh(range(len(rows)), [np.nan if r["best_learning_rate"] is None else float(r["best_learning_rate"])
                                   for r in rows])
        ax.set_yticks(range(len(rows)), labels, fontsize=7)
        ax.set_xscale("log")
        ax.set_xlabel("best learning rate")
        ax.set_title(f"best learning rate per cell (by mean final {metric} over seeds)", fontsize=9)
        fig.savefig(out / "best_lr.png", dpi=130, bbox_inches="tight")
        plt.close(fig)
        written.append(out / "best_lr.png")
    return written


#: most sweep cells :func:`plot_sweep_curves` draws curves for (one folder of figures each)
MAX_CURVE_CELLS = 12


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "._=-" else "_" for c in text) or "all"


def plot_sweep_curves(records: list[dict], swept: list[str], out: Path) -> list[Path]:
    """Training curves of a sweep: for each cell of the dotted (config-key) axes other than ``train.seed`` (e.g.
    each ``system.latency``), the figures of :func:`simdl.plots.plot_runs` (accuracy against step, bytes and
    simulated time, consensus, ...) in ``out/curves/<cell>/``; one curve per run name and bare run-key value
    (``learning_rate``, ``topology``, ...), with a band over its seeds. Nothing when the sweep has more than
    :data:`MAX_CURVE_CELLS` cells (the heatmap and the CSV summarise those). Returns the written paths."""
    from simdl.plots import plot_runs

    cell_keys = [k for k in swept if "." in k and k != "train.seed"]
    by_name: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        by_name[r["run"].get("name", r["run"].get("algorithm"))].append(r)
    # a bare run key names a curve only where it varies within one run name (not algorithm, server_optimizer...)
    curve_keys = [k for k in swept if "." not in k
                  and any(len({json.dumps(swept_value(r, k), sort_keys=True, default=repr) for r in rs}) > 1
                          for rs in by_name.values())]
    cells_: dict[tuple, dict[tuple, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        cell = tuple(str(swept_value(r, k)) for k in cell_keys)
        curve = (r["run"].get("name", r["run"].get("algorithm")),
                 *(f"{k}={swept_value(r, k)}" for k in curve_keys))
        cells_[cell][curve].append(r)
    if len(cells_) > MAX_CURVE_CELLS:
        return []
    written = []
    for cell, curves in cells_.items():
        setting = ", ".join(f"{k.split('.')[-1]} = {v}" for k, v in zip(cell_keys, cell, strict=True))
        runs = []
        for (name, *extra), recs in curves.items():
            recs = sorted(recs, key=lambda r: r["train"].get("seed", 0))
            status = "diverged" if any(r["status"] == "diverged" for r in recs) else recs[0]["status"]
            diverged = [r.get("diverged_at") for r in recs if r.get("diverged_at") is not None]
            runs.append({"name": " ".join([name, *extra]), "algorithm": recs[0]["run"].get("algorithm"),
                         "status": status, "diverged_at": min(diverged) if diverged else None,
                         "hyperparams": recs[0]["run"], "config": recs[0]["run"], "history": recs[0]["history"],
                         "final": recs[0]["final"], "seed_runs": [{"history": r["history"]} for r in recs]})
        payload = {"config": {"task": records[0]["task"], "train": records[0]["train"]}}
        folder = out / "curves" / _slug("_".join(f"{k.split('.')[-1]}={v}" for k, v in zip(cell_keys, cell,
                                                                                            strict=True)))
        written += plot_runs(runs, folder, payload, setting=setting)
    return written


def spread_label(counts: list[int], varying: list[str]) -> str:
    """What a heatmap cell's ± is taken over: ``N seeds`` when only ``train.seed`` varies inside the cells,
    else ``N runs`` naming the keys that vary."""
    ns = "/".join(str(n) for n in sorted(set(counts)))
    if varying == ["train.seed"]:
        return f"{ns} seeds"
    return f"{ns} runs" + (f" ({', '.join(varying)})" if varying else "")


def plot_heatmap(records: list[dict], keys: tuple[str, str], metric: str, higher: bool, out: Path) -> Path:
    """``heatmap.png``: the final ``metric`` per (``keys[0]``, ``keys[1]``) cell as the mean over the cell's runs,
    annotated ``mean ± std`` (sample std, ``ddof=1``, over the runs of a cell: seeds and the other swept keys);
    diverged runs are left out of a cell's mean and counted in its annotation."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import ScalarFormatter

    kx, ky = keys
    grid = cells(records, [ky, kx])
    xs = sorted({c[1] for c in grid}, key=_sortkey)
    ys = sorted({c[0] for c in grid}, key=_sortkey)
    z = np.full((len(ys), len(xs)), np.nan)
    sd = np.full_like(z, np.nan)
    bad = np.zeros(z.shape, int)
    counts = []
    for (vy, vx), recs in grid.items():
        vals = np.array([_score(r, metric, higher) for r in recs])
        ok = vals[np.isfinite(vals)]
        i, j = ys.index(vy), xs.index(vx)
        bad[i, j] = len(vals) - len(ok)
        counts.append(len(vals))
        if len(ok):
            z[i, j] = ok.mean()
            sd[i, j] = ok.std(ddof=1) if len(ok) > 1 else np.nan
    inner = [k for k in _record_keys(records) if k not in (kx, ky) and k not in ("algorithm", "topology")
             and len({json.dumps(_get(r, k), sort_keys=True, default=repr) for r in records}) > 1]
    inner = [k for k in ("algorithm", "topology") if k not in (kx, ky)
             and len({str(swept_value(r, k)) for r in records}) > 1] + inner
    fig, ax = plt.subplots(figsize=(max(4.5, 1.5 * len(xs) + 2.5), max(3.0, 0.6 * len(ys) + 1.8)))
    cmap = plt.get_cmap("viridis" if higher else "viridis_r")
    im = ax.imshow(z, cmap=cmap, aspect="auto")
    tilt = sum(map(len, xs)) > 8 * len(xs) or max(map(len, xs)) > 12
    ax.set_xticks(range(len(xs)), xs, rotation=30 if tilt else 0, ha="right" if tilt else "center", fontsize=8)
    ax.set_yticks(range(len(ys)), ys, fontsize=8)
    for i in range(len(ys)):
        for j in range(len(xs)):
            txt = "" if not np.isfinite(z[i, j]) else f"{z[i, j]:.4g}" + (
                f"\n± {sd[i, j]:.2g}" if np.isfinite(sd[i, j]) else "")
            if bad[i, j]:
                txt += ("\n" if txt else "") + f"{bad[i, j]} diverged"
            r, g, b, _ = cmap(im.norm(z[i, j])) if np.isfinite(z[i, j]) else (1.0, 1.0, 1.0, 1.0)
            light = 0.299 * r + 0.587 * g + 0.114 * b > 0.5
            ax.text(j, i, txt, ha="center", va="center", fontsize=7, color="k" if light else "w")
    ax.set_xlabel(kx)
    ax.set_ylabel(ky)
    over = textwrap.fill(f"cell: mean ± std (ddof=1) over {spread_label(counts, inner)}", 60)
    ax.set_title(f"final {metric} per cell\n{over}", fontsize=9)
    cb = fig.colorbar(im, ax=ax, label=f"final {metric}\n(mean per cell)")
    cb.formatter = ScalarFormatter(useOffset=False)
    cb.update_ticks()
    fig.tight_layout()
    fig.savefig(out / "heatmap.png", dpi=130, bbox_inches="tight")
    plt.close(fig)
    return out / "heatmap.png"


def _record_keys(records: list[dict]) -> list[str]:
    keys = []
    for r in records:
        for sect in ("task", "train", "system", "participation"):
            keys += [f"{sect}.{k}" for k in (r.get(sect) or {})]
        keys += [k for k in r.get("run", {}) if k != "name"]
    return list(dict.fromkeys(keys))


def infer_swept(records: list[dict]) -> list[str]:
    """The swept keys of saved sweep records (``DIR/runs/*.json``), as ``[sweep]`` names them (``task.alpha``,
    ``train.seed``, bare run keys): every key of the records' ``task``/``train``/``system``/``participation``/``run``
    tables
    (run ``name`` aside) whose value differs between records. A key with one value in the grid cannot be told
    from a fixed one and is left out (it changes no plot)."""
    return [k for k in _record_keys(records)
            if len({json.dumps(_get(r, k), sort_keys=True, default=repr) for r in records}) > 1]


def _get(rec: dict, key: str):
    if "." in key:
        sect, k = key.split(".", 1)
        return (rec.get(sect) or {}).get(k)
    return rec.get("run", {}).get(key)


def load_records(out: str | Path) -> list[dict]:
    """The sweep records of ``out/runs/*.json`` (finished runs), sorted by label."""
    from simdl.sweep import RunStore

    store = RunStore(out)  # an unreadable record is named on stderr and left out (a re-run of the sweep redoes it)
    recs = [r for r in (store.get(p.stem) for p in sorted(Path(out, "runs").glob("*.json"))) if r is not None]
    return sorted(recs, key=lambda r: (r.get("label", ""), r.get("id", "")))


def _sortkey(v: str):
    try:
        return (0, float(v), "")
    except ValueError:
        return (1, 0.0, v)
