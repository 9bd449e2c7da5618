"""What a run records on the host: one history row per evaluation, cumulative counters, blow-up detection and the
:class:`SimulationResult` a run returns."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np


class SimulationResult(NamedTuple):
    """What :func:`simulate` returns.

    Attributes:
      params: final stacked worker models (leading axis n).
      history: metric name -> numpy array over evaluation points. Always: ``step``, ``loss`` (mean worker minibatch
        loss over the steps since the previous evaluation), ``consensus_distance`` (Ξ², squared parameter units),
        ``bytes_per_worker`` (cumulative bytes sent, mean over workers), ``learning_rate``, with a system model
        ``sim_time_s`` (simulated seconds, :mod:`simdl.systems`), and the task's metrics
        (``avg_model_loss``; classification: ``avg_model_accuracy``, ``worker_accuracy_mean``,
        ``worker_accuracy_min``, ...; quadratics: ``suboptimality``, ...).
      final: the last evaluation's metrics as floats.
      diverged_at: first step whose mean loss was NaN/Inf (the history stops at the last finite evaluation), or the
        evaluation step at which the run blew up (:func:`blew_up`: loss and consensus distance both grew beyond
        :data:`BLOWUP_FACTOR` × their first evaluated values; that evaluation is the history's last row), or ``None``.
      info: run description: config, compile count, wall times (``wall_time_s``, ``compile_time_s``; evaluation:
        ``eval_time_s`` summed over ``evaluations``, of which ``eval_first_time_s`` includes its compilation),
        device, jax version, mixing method, the resolved per-worker strategy (``execution``, ``map_batch_size``,
        ``conv_impl``, ``conv_layers``: see :func:`resolve_execution`) and, for classification, what was evaluated
        (``info["task"]["evaluation"]``).
      state: final algorithm state.
    """

    params: Any
    history: dict
    final: dict
    diverged_at: int | None
    info: dict
    state: Any


#: A run is marked diverged when, at an evaluation, its mean loss exceeds this factor times the first evaluation's
#: and its consensus distance this factor times the first evaluation's too (a blow-up before NaN/Inf appears).
BLOWUP_FACTOR = 1e3


def host_metrics(metrics: dict) -> dict:
    """One evaluation's metrics on the host: a scalar as a Python float, a per-worker ``(n,)`` metric (e.g.
    ``worker_accuracy``) as a list of floats (the history stacks it to ``(evaluations, n)``)."""
    out = {}
    for k, v in metrics.items():
        a = np.asarray(v, np.float64)
        out[k] = float(a) if a.ndim == 0 else a.tolist()
    return out


def final_values(history: dict) -> dict:
    """The last value of every scalar history metric (per-worker metrics, ``(evaluations, n)``, are left out)."""
    return {k: float(v[-1]) for k, v in history.items() if np.ndim(v) == 1 and len(v)}


def blew_up(first: dict, row: dict, factor: float = BLOWUP_FACTOR) -> bool:
    """Whether evaluation ``row`` shows a blow-up relative to the run's ``first`` evaluation row: the mean loss grew
    beyond ``factor`` × its first value and the consensus distance Ξ² beyond ``factor`` × its first value (floored
    at 1e-12, so exact-average algorithms whose Ξ² stays 0 are never flagged)."""
    loss0, loss = abs(first["loss"]), row["loss"]
    xi0, xi = first.get("consensus_distance", 0.0), row.get("consensus_distance", 0.0)
    return bool(loss0 > 0 and loss > factor * loss0 and xi > factor * max(xi0, 1e-12))


class Recorder:
    """Host-side history of one run: cumulative counters (float64) and one row per evaluation."""

    def __init__(self, history: dict | None = None, totals: dict | None = None):
        self.history = {k: list(v) for k, v in (history or {}).items()}
        self.totals = {k: np.asarray(v, np.float64) for k, v in (totals or {}).items()}

    def add(self, done: int, loss, sums: dict, lr, metrics: dict) -> dict:
        for k, v in sums.items():
            self.totals[k] = self.totals.get(k, 0.0) + np.asarray(v, np.float64)
        row = {"step": done, "loss": float(loss), **metrics, "learning_rate": float(lr)}
        for k, v in self.totals.items():  # cumulative counters from the algorithm's aux (mean over workers)
            row["bytes_per_worker" if k == "bytes_sent" else k] = float(np.mean(v))
        for k, v in row.items():
            self.history.setdefault(k, []).append(v)
        return row

    def arrays(self) -> dict:
        return {k: np.asarray(v) for k, v in self.history.items()}

    def meta(self) -> dict:
        return {"history": self.history, "totals": {k: np.asarray(v).tolist() for k, v in self.totals.items()}}
