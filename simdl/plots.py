"""Figures of run histories (matplotlib, Agg backend, PNG files), one question per figure.

Runs are faceted by algorithm family (:func:`assign_facets`) so that no axis carries more than
:data:`MAX_CURVES` curves; the all-reduce run (or the first exact-averaging run) is repeated as a grey reference
line in every other facet. A row run over several seeds is drawn as its mean with a band of ± one sample standard
deviation (``ddof=1``) over seeds; a diverged run ends in an × and says so in the legend.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

#: algorithm families, in facet order
FAMILIES = (
    ("exact averaging", ("allreduce", "local_sgd", "model_averaging_clr", "dynamic_averaging")),
    ("gossip", ("dsgd", "dpsgd", "cdsgd", "cdmsgd", "sgp", "choco_sgd")),
    ("bias-corrected", ("d2", "exact_diffusion", "gradient_tracking")),
    ("relay", ("relaysgd", "relaysum_grad", "relaysum_mix")),
    ("momentum (quasi-global)", ("qg_dsgdm", "qg_adam")),
)
#: most curves on one axis (the grey reference line included)
MAX_CURVES = 6
#: algorithms that average exactly every ``local_steps`` steps: Ξ² is 0 right after an averaging step
PERIODIC_AVERAGING = ("local_sgd", "model_averaging_clr")

#: (file, x key, y key, x label, y label, log x, log y, question)
FIGURES = (
    ("accuracy_vs_step.png", "step", "avg_model_accuracy", "step", "test accuracy of x̄", False, False,
     "Accuracy of the averaged model"),
    ("worker_accuracy_vs_step.png", "step", "worker_accuracy_min", "step", "worst worker's test accuracy", False,
     False, "Worst worker's accuracy"),
    ("consensus_vs_step.png", "step", "consensus_distance", "step", "consensus distance Ξ² (log)", False, True,
     "Consensus distance"),
    ("accuracy_vs_bytes.png", "bytes_per_worker", "avg_model_accuracy", "MB sent per worker (log)",
     "test accuracy of x̄", True, False, "Accuracy vs communication"),
    ("accuracy_vs_time.png", "sim_time_s", "avg_model_accuracy", "simulated time (s)", "test accuracy of x̄", False,
     False, "Accuracy vs simulated time"),
    ("loss_vs_step.png", "step", "avg_model_loss", "step", "objective at x̄ (log)", False, True,
     "Objective at the averaged model"),
    ("suboptimality_vs_step.png", "step", "suboptimality", "step", "f(x̄) − f* (log)", False, True,
     "Suboptimality"),
)
SPREAD_FIGURE = "worker_accuracy_spread.png"
#: on a log axis, a run whose values all lie below this is drawn as a legend entry only (float rounding of an
#: exactly averaged model's Ξ², ~1e-17, would otherwise stretch the axis over 20 decades)
ZERO = 1e-12


def family_of(algorithm: str) -> str:
    """The :data:`FAMILIES` name of ``algorithm`` (``"other"`` for one not listed)."""
    for fam, algs in FAMILIES:
        if algorithm in algs:
            return fam
    return "other"


def reference_index(runs: list[dict]) -> int | None:
    """Index of the reference run: the first all-reduce run, else the first exact-averaging run, else None."""
    for want in (("allreduce",), FAMILIES[0][1]):
        for i, r in enumerate(runs):
            if r.get("algorithm") in want:
                return i
    return None


def assign_facets(runs: list[dict], max_curves: int = MAX_CURVES) -> list[dict]:
    """Runs (dicts with ``algorithm``) assigned to facets: a list of ``{"title", "runs": [indices], "reference":
    index or None}``; a facet draws its ``runs`` in colour and ``reference`` (not among its ``runs``) as a grey
    line, so it has ``len(runs) + (reference is not None)`` curves, at most ``max_curves``.

    At most ``max_curves`` runs: one facet of all of them. Otherwise one facet per family (in :data:`FAMILIES`
    order, ``"other"`` last), a family with too many runs split into ``family (1/k)``...; the reference run
    (:func:`reference_index`) is drawn in colour in the first facet of its family and in grey in every other facet.
    """
    if max_curves < 2:
        raise ValueError(f"max_curves must be >= 2, got {max_curves}")
    if len(runs) <= max_curves:
        return [{"title": "", "runs": list(range(len(runs))), "reference": None}] if runs else []
    ref = reference_index(runs)
    order = [f for f, _ in FAMILIES] + ["other"]
    by_fam: dict[str, list[int]] = {}
    for i, r in enumerate(runs):
        by_fam.setdefault(family_of(r.get("algorithm", "")), []).append(i)
    facets = []
    for fam in order:
        idx = by_fam.get(fam)
        if not idx:
            continue
        own = ref is not None and ref in idx
        rest = [i for i in idx if i != ref]
        chunks = []
        if own:  # the reference in colour, in the first facet of its family
            chunks.append([ref, *rest[:max_curves - 1]])
            rest = rest[max_curves - 1:]
        per = max_curves - (ref is not None)
        chunks += [rest[k:k + per] for k in range(0, len(rest), per)]
        for c, chunk in enumerate(chunks):
            title = fam if len(chunks) == 1 else f"{fam} ({c + 1}/{len(chunks)})"
            facets.append({"title": title, "runs": chunk, "reference": None if ref in chunk else ref})
    return facets


def describe(payload: dict | None, runs: list[dict]) -> str:
    """The title line of every figure: dataset, model, n workers, Dirichlet α (if dirichlet), steps."""
    cfg = (payload or {}).get("config") or {}
    task = dict(cfg.get("task") or {})
    info = (payload or {}).get("task") or {}
    bits = []
    if task.get("kind") == "random_quadratics" or "dim" in info and "dataset" not in info:
        dim = task.get("dim", info.get("dim"))
        bits.append("random quadratics" + (f" (d = {dim})" if dim is not None else ""))
    else:
        ds, model = task.get("dataset", info.get("dataset")), task.get("model", info.get("model"))
        if ds is not None:
            bits.append(str(ds) + (f" / {model}" if model else ""))
    n = task.get("n_workers", info.get("n_workers"))
    if n is None:
        n = next(((r.get("topology_info") or {}).get("n") for r in runs if r.get("topology_info")), None)
    if n is not None:
        bits.append(f"{n} workers")
    part = task.get("partition", info.get("partition"))
    if part == "dirichlet":
        bits.append(f"Dirichlet α = {task.get('alpha', info.get('alpha'))}")
    elif part == "shards":
        bits.append(f"shards ({task.get('classes_per_worker', info.get('classes_per_worker'))} classes/worker)")
    elif part:
        bits.append(str(part))
    steps = [(r.get("final") or {}).get("step") for r in runs]
    steps = [s for s in steps if s is not None]
    train_steps = (cfg.get("train") or {}).get("steps")
    if train_steps is not None or steps:
        bits.append(f"{train_steps if train_steps is not None else max(steps)} steps")
    return ", ".join(bits)


def _arr(values) -> np.ndarray:
    return np.asarray([np.nan if v is None else float(v) for v in values], dtype=np.float64)


def _seed_histories(r: dict) -> list[dict]:
    srs = [sr.get("history") or {} for sr in (r.get("seed_runs") or [])]
    return srs if srs else [r.get("history") or {}]


def n_seeds(r: dict) -> int:
    return len(r.get("seed_runs") or []) or 1


def series(r: dict, xk: str, yk: str, keep=None):
    """``(x, mean, std)`` of metric ``yk`` against ``xk`` for run ``r``: the mean over its seeds (up to the
    shortest seed history) and the sample std (``ddof=1``; None with one seed); ``keep(step) -> bool`` selects
    evaluations. None when the run lacks a key."""
    hists = [h for h in _seed_histories(r) if xk in h and yk in h and "step" in h]
    if not hists:
        return None
    n = min(len(h[yk]) for h in hists)
    if n == 0:
        return None
    ys = np.stack([_arr(h[yk][:n]) for h in hists])
    xs = np.mean(np.stack([_arr(h[xk][:n]) for h in hists]), axis=0)
    steps = _arr(hists[0]["step"][:n])
    mask = np.ones(n, bool) if keep is None else np.array([bool(keep(int(s))) for s in steps])
    mean = np.nanmean(ys, axis=0) if len(hists) > 1 else ys[0]
    std = np.std(ys, axis=0, ddof=1) if len(hists) > 1 else None
    return xs[mask], mean[mask], (None if std is None else std[mask])


def averaging_period(r: dict) -> int | None:
    """H of a local SGD / model-averaging run (its models are averaged after every step ``s`` with ``s % H == 0``),
    else None."""
    if r.get("algorithm") not in PERIODIC_AVERAGING:
        return None
    hp = r.get("hyperparams") or {}
    h = hp.get("local_steps")
    if h is None and hp.get("local_epochs") and hp.get("steps_per_epoch"):
        h = int(hp["local_epochs"]) * int(hp["steps_per_epoch"])
    if h is None:
        h = (r.get("config") or {}).get("local_steps")
    return int(h) if h else None


def _label(r: dict, extra: str = "") -> str:
    lab = r["name"]
    if r.get("status") == "diverged":
        lab += f" (diverged at step {r.get('diverged_at')})"
    return lab + extra


def _colors():
    import matplotlib.pyplot as plt

    return plt.cm.tab10.colors


def _grid(plt, n_panels: int, ncols_max: int = 3, w: float = 4.6, h: float = 3.4, sharey: bool = True):
    ncols = min(ncols_max, n_panels)
    if n_panels == 1:
        w, h = 6.4, 4.0
    nrows = -(-n_panels // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(w * ncols, h * nrows + 0.6), squeeze=False, sharey=sharey,
                             layout="constrained")
    axes = axes.ravel()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes[:n_panels]


def _caption(runs: list[dict]) -> str:
    ns = sorted({n_seeds(r) for r in runs})
    if ns == [1]:
        return "one seed per run"
    if len(ns) == 1:
        return f"lines and bands: mean ± std over {ns[0]} seeds (sample std, ddof=1)"
    ns = "/".join(map(str, ns))
    return f"lines and bands: mean ± std over {ns} seeds (sample std, ddof=1; one-seed rows: no band)"


def _draw_metric(ax, r: dict, xk: str, yk: str, color, logy: bool, reference: bool = False) -> bool:
    keep, extra = None, ""
    period = averaging_period(r) if yk == "consensus_distance" else None
    if period is not None and period > 1:
        keep = lambda s, p=period: s % p != 0  # noqa: E731
        extra = f" [only evals between averaging rounds: step mod {period} ≠ 0]"
    s = series(r, xk, yk, keep)
    if s is None:
        return False
    x, y, sd = s
    if xk == "bytes_per_worker":
        x = x / 1e6
    if logy:
        y = np.where(y > 0, y, np.nan)
    label = _label(r, " (reference)" if reference else extra)
    tiny = logy and np.any(np.isfinite(y)) and np.nanmax(y) < ZERO
    if logy and (tiny or not np.any(np.isfinite(y))):
        if period is not None and period > 1 and len(x) == 0:
            label = _label(r, f" [every eval is right after averaging (step mod {period} = 0): Ξ² = 0, none shown]")
        else:
            label += f" [Ξ² < {ZERO:g} throughout (rounding level): not shown]" if tiny else \
                " [≤ 0 throughout: not on log axis]"
        ax.plot([], [], color="0.55" if reference else color, label=label)
        return True
    kw = {"color": "0.55", "linestyle": "--", "linewidth": 1.2, "zorder": 1} if reference else {
        "color": color, "linewidth": 1.5, "zorder": 3}
    ax.plot(x, y, marker="." if len(x) < 40 else None, markersize=4, label=label, **kw)
    if sd is not None and not reference:
        lo, hi = y - sd, y + sd
        if logy:
            lo = np.where(lo > 0, lo, np.nan)
        ax.fill_between(x, lo, hi, color=color, alpha=0.18, linewidth=0, zorder=2)
    if r.get("status") == "diverged" and len(x):
        fin = np.flatnonzero(np.isfinite(y))
        if len(fin):
            k = fin[-1]
            ax.plot([x[k]], [y[k]], marker="x", markersize=9, markeredgewidth=2, color=kw["color"], zorder=4)
    return True


def _legend(ax) -> None:
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=1, fontsize=7,
                  frameon=False)


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=130, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def _load_payload(out: Path) -> dict | None:
    try:
        return json.loads((out / "results.json").read_text())
    except (OSError, ValueError):
        return None


def plot_runs(runs: list[dict], out: str | Path, payload: dict | None = None, setting: str = "") -> list[Path]:
    """Write the figures of :data:`FIGURES` that some run has the metrics of, and the per-worker spread figure
    (:data:`SPREAD_FIGURE`); returns the written paths.

    ``payload``: the results.json object (for the title's dataset, model, workers, α and steps); by default
    ``out/results.json`` when it exists. ``setting``: more of the setting for the titles (a sweep cell such as
    ``"latency = 0.01"``), appended to what ``payload`` gives.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    payload = payload if payload is not None else _load_payload(out)
    head = ", ".join(b for b in (describe(payload, runs), setting) if b)
    facets = assign_facets(runs)
    colors = _colors()
    written = []
    for fname, xk, yk, xlabel, ylabel, logx, logy, question in FIGURES:
        if not any(series(r, xk, yk) is not None for r in runs):
            continue
        fig, axes = _grid(plt, len(facets))
        for ax, facet in zip(axes, facets, strict=True):
            for j, i in enumerate(facet["runs"]):
                _draw_metric(ax, runs[i], xk, yk, colors[j % len(colors)], logy)
            if facet["reference"] is not None:
                _draw_metric(ax, runs[facet["reference"]], xk, yk, None, logy, reference=True)
            if logy:
                ax.set_yscale("log")
            if logx:
                ax.set_xscale("log")
            if facet["title"]:
                ax.set_title(facet["title"], fontsize=10)
            ax.set_xlabel(xlabel)
            if ax.get_subplotspec().is_first_col():
                ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
            _legend(ax)
        diverged = any(r.get("status") == "diverged" for r in runs)
        notes = _caption(runs) + ("; × = divergence (loss NaN/Inf), history kept up to there" if diverged else "")
        fig.suptitle(f"{question} — {head}\n{notes}" if head else f"{question}\n{notes}", fontsize=10)
        written.append(_save(fig, out / fname))
    spread = plot_worker_spread(runs, out, head)
    if spread is not None:
        written.append(spread)
    return written


def worker_quantiles(r: dict):
    """``(steps, q)`` with ``q`` of shape (5, evaluations): the min, 25 %, 50 %, 75 % quantiles and max over workers
    of ``worker_accuracy`` at each evaluation, averaged over seeds (up to the shortest seed history); None when the
    run has no per-worker accuracy."""
    hists = [h for h in _seed_histories(r) if np.ndim(h.get("worker_accuracy", [])) == 2 and "step" in h]
    if not hists:
        return None
    n = min(len(h["worker_accuracy"]) for h in hists)
    if n == 0:
        return None
    qs = [np.nanquantile(np.asarray(h["worker_accuracy"][:n], dtype=np.float64), [0, 0.25, 0.5, 0.75, 1], axis=1)
          for h in hists]
    return _arr(hists[0]["step"][:n]), np.mean(np.stack(qs), axis=0)


def plot_worker_spread(runs: list[dict], out: str | Path, head: str = "") -> Path | None:
    """:data:`SPREAD_FIGURE`: one panel per run (small multiples) with, at every evaluation, the min–max band, the
    25–75 % band and the median over workers of the per-worker test accuracy. None when no run has it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = [(r, worker_quantiles(r)) for r in runs]
    data = [(r, q) for r, q in data if q is not None]
    if not data:
        return None
    fig, axes = _grid(plt, len(data), ncols_max=4, w=3.6, h=2.9)
    for k, (ax, (r, (steps, q))) in enumerate(zip(axes, data, strict=True)):
        c = _colors()[0]
        ax.fill_between(steps, q[0], q[4], color=c, alpha=0.15, linewidth=0, label="min–max")
        ax.fill_between(steps, q[1], q[3], color=c, alpha=0.35, linewidth=0, label="25–75 %")
        ax.plot(steps, q[2], color=c, linewidth=1.5, label="median")
        if r.get("status") == "diverged":
            ax.plot([steps[-1]], [q[2][-1]], marker="x", markersize=9, markeredgewidth=2, color="k")
        ax.set_title(_label(r), fontsize=9)
        ax.grid(alpha=0.3)
        ax.set_xlabel("step")
        if k % 4 == 0:
            ax.set_ylabel("worker test accuracy")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=3, fontsize=8, frameon=False)
    ns = sorted({n_seeds(r) for r, _ in data})
    seeds = "one seed" if ns == [1] else f"quantiles over workers per seed, mean over {'/'.join(map(str, ns))} seeds"
    fig.suptitle(f"Spread of accuracy over workers — {head}\n{seeds}" if head else
                 f"Spread of accuracy over workers\n{seeds}", fontsize=10)
    return _save(fig, Path(out) / SPREAD_FIGURE)
