"""``simdl tune``'s choice of learning rate: never a diverged one, and a best at the edge of the grid is flagged."""

import math

from simdl.sweep_report import best_learning_rates, describe_best_lr


def _rec(lr, acc, status="ok", seed=0):
    return {"run": {"algorithm": "dsgd", "topology": "ring", "learning_rate": lr}, "train": {"seed": seed},
            "status": status, "final": {"avg_model_accuracy": acc}}


def test_diverged_rate_is_never_best_even_with_a_higher_last_accuracy():
    recs = [_rec(0.01, 0.5), _rec(0.1, 0.8), _rec(1.0, 0.9, status="diverged"), _rec(0.1, 0.7, seed=1),
            _rec(0.01, 0.6, seed=1), _rec(1.0, 0.95, seed=1)]
    (row,) = best_learning_rates(recs, ["learning_rate", "train.seed"])
    assert row["best_learning_rate"] == 0.1 and row["diverged"] == [1.0]
    assert math.isclose(row["avg_model_accuracy"], 0.75) and not row["at_grid_edge"]
    assert "diverged [1.0]" in describe_best_lr(row, "avg_model_accuracy")


def test_best_at_grid_edge_is_flagged():
    (row,) = best_learning_rates([_rec(0.01, 0.5), _rec(0.1, 0.6), _rec(1.0, 0.7)], ["learning_rate"])
    assert row["best_learning_rate"] == 1.0 and row["at_grid_edge"]
    assert "edge of the grid" in describe_best_lr(row, "avg_model_accuracy")


def test_every_rate_diverged_gives_no_best():
    recs = [_rec(lr, 0.9, status="diverged") for lr in (0.1, 1.0, 10.0)]
    (row,) = best_learning_rates(recs, ["learning_rate"])
    assert row["best_learning_rate"] is None and math.isnan(row["avg_model_accuracy"])
    assert row["diverged"] == [0.1, 1.0, 10.0]
    assert "every learning rate diverged" in describe_best_lr(row, "avg_model_accuracy")
