"""The shipped default experiment (simdl/configs/default.toml): several seeds, and the rows compared with each other
use the same local momentum, set explicitly in the config."""

from simdl.cli import _build_run
from simdl.config import default_config, expand_runs, train_seeds
from simdl.sweep import build_task

#: the rows compared in the default table: all-reduce, D-SGD and the heterogeneity correctors
COMPARED = ("allreduce", "dsgd", "relaysgd", "qg_dsgdm", "gradient_tracking", "d2")


def test_default_config_has_seeds():
    cfg = default_config()
    seeds = train_seeds(cfg["train"])
    assert len(seeds) >= 2 and "seed" not in cfg["train"]


def test_compared_rows_set_the_same_momentum_explicitly():
    cfg = default_config()
    raw = cfg["runs"]
    for r in raw:  # stated in every [[runs]] table itself, not left to a factory default
        assert "momentum" in r and "nesterov" in r, r
    runs = expand_runs(cfg)
    assert {r["algorithm"] for r in runs} >= set(COMPARED)
    compared = [r for r in runs if r["algorithm"] in COMPARED]
    assert len({(r["momentum"], r["nesterov"]) for r in compared}) == 1


def test_compared_rows_resolve_to_the_same_momentum():
    """The built algorithms record the same momentum (catches a factory that ignores or overrides the key)."""
    cfg = default_config()
    task = build_task({**cfg["task"], "max_eval_samples": 32})
    train = {"steps": cfg["train"]["steps"], "batch_size": cfg["train"]["batch_size"]}
    resolved = set()
    for run in expand_runs(cfg):
        _, alg = _build_run(run, task, train)
        hp = alg.hyperparams
        assert hp["momentum"] == run["momentum"] and bool(hp["nesterov"]) == run["nesterov"], run["name"]
        if run["algorithm"] in COMPARED:
            resolved.add((float(hp["momentum"]), bool(hp["nesterov"])))
    assert len(resolved) == 1
