"""Plots of run histories (matplotlib, Agg backend, PNG files)."""

from __future__ import annotations

from pathlib import Path

PLOTS = (
    ("accuracy_vs_step.png", "step", "avg_model_accuracy", "step", "averaged-model test accuracy", False),
    ("worker_accuracy_vs_step.png", "step", "worker_accuracy_min", "step", "worst worker test accuracy", False),
    ("consensus_vs_step.png", "step", "consensus_distance", "step", "consensus distance Ξ²", True),
    ("accuracy_vs_bytes.png", "bytes_per_worker", "avg_model_accuracy", "MB sent per worker",
     "averaged-model test accuracy", False),
    ("loss_vs_step.png", "step", "avg_model_loss", "step", "objective at x̄", True),
    ("suboptimality_vs_step.png", "step", "suboptimality", "step", "f(x̄) − f*", True),
)


def plot_runs(runs: list[dict], out: str | Path) -> list[Path]:
    """One PNG per metric with a line per run (a run over several seeds: its mean ``history``); returns the written
    paths (metrics no run has are skipped)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    written = []
    n_seeds = max((len(r.get("seed_runs") or [None]) for r in runs), default=1)
    for fname, xk, yk, xlabel, ylabel, logy in PLOTS:
        series = [(r["name"], r["history"][xk], r["history"][yk]) for r in runs
                  if r.get("history") and yk in r["history"] and xk in r["history"] and len(r["history"][yk])]
        if not series:
            continue
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        colors = plt.cm.tab20.colors
        for i, (name, xs, ys) in enumerate(series):
            xs = [x / 1e6 for x in xs] if xk == "bytes_per_worker" else xs
            ys = [float("nan") if y is None else y for y in ys]
            ax.plot(xs, ys, label=name, marker=".", markersize=3, color=colors[(2 * i) % 20 + (2 * i) // 20 % 2],
                    linestyle=("-", "--", ":")[i // 10 % 3])
        if logy:
            ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if n_seeds > 1:  # simdl run over [train] seeds: each line is the mean over the row's seeds
            ax.set_title(f"mean over {n_seeds} seeds", fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out / fname
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
