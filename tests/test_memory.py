"""Memory estimates: exact state/data sizes, compiled-step figures, worker_batch suggestion, CLI integration."""

import numpy as np
import pytest

import simdl
from simdl import memory
from simdl.cli import main
from simdl.data.dataset import make_dataset
from simdl.memory import estimate, format_bytes, format_estimate, suggest_worker_batch, tree_bytes
from simdl.models import count_params


@pytest.fixture(scope="module")
def digits_task():
    return simdl.tasks.classification("digits", model="mlp", n_workers=4, partition="iid")


@pytest.fixture(scope="module")
def wide_task():
    """Activations dominate (batch 256 × 1024 hidden units per worker): grouping workers saves memory."""
    return simdl.tasks.classification("digits", model="mlp", n_workers=4, partition="iid",
                                      model_kwargs={"hidden": (1024,)})


def test_estimate_fields_exact_and_consistent(digits_task):
    topo = simdl.topologies.ring(4)
    one_model = digits_task.init_params(np.array([0, 0], np.uint32))
    d1 = estimate(digits_task, simdl.algorithms.dsgd(0.1), topo, 32)
    d2 = estimate(digits_task, simdl.algorithms.dsgd(0.1, momentum=0.9), topo, 32)
    assert d1["model_bytes"] == 4 * count_params(one_model) == tree_bytes(one_model)
    assert d1["params_bytes"] == 4 * d1["model_bytes"]
    for d, copies in ((d1, 1), (d2, 2)):  # SGD keeps the params; momentum adds one buffer (plus int32 counters)
        assert d["state_bytes"] == pytest.approx(d["n_workers"] * d["model_bytes"] * d["state_copies"])
        assert copies <= d["state_copies"] < copies + 0.01
        for k in ("temp_bytes", "argument_bytes", "output_bytes", "peak_bytes", "data_bytes", "batch_bytes"):
            assert d[k] > 0, k
        assert d["state_bytes"] < d["argument_bytes"] <= d["state_bytes"] + d["data_bytes"] + d["keys_bytes"]
        assert d["alias_bytes"] == d["state_bytes"]  # the state is donated, updated in place
        assert d["peak_bytes"] >= d["state_bytes"] + d["data_bytes"] + d["temp_bytes"]
    assert d1["data_bytes"] == tree_bytes(digits_task.data)
    assert d1["batch_bytes"] == 4 * 32 * (8 * 8 * 1 * 1 + 4)  # uint8 images + int32 labels
    assert d2["state_bytes"] - d1["state_bytes"] >= d1["params_bytes"]
    text = format_estimate(d2)
    assert "n=4 workers" in text and "2.00 model copies" in text and "peak" in text


def test_estimate_without_compile_and_relay_state(digits_task):
    d = estimate(digits_task, simdl.algorithms.relaysgd(0.1), simdl.topologies.chain(4), 16, compile=False)
    assert "peak_bytes" not in d and "peak" not in format_estimate(d)
    # params + momentum (n·D each) + messages on the 3 tree edges in both directions (6·D) + x⁰ (D), + counters
    assert 2 + 7 / 4 <= d["state_copies"] < 2 + 7 / 4 + 0.01


def test_smaller_worker_batch_needs_no_more_temporaries(wide_task):
    topo = simdl.topologies.ring(4)
    alg = simdl.algorithms.dsgd(0.1)
    est = {wb: estimate(wide_task, alg, topo, 256, wb) for wb in (None, 2, 1)}
    temps = [est[wb]["temp_bytes"] for wb in (None, 2, 1)]
    assert temps[0] >= temps[1] >= temps[2]
    assert temps[2] < temps[0]  # the activations of one worker at a time instead of four
    assert est[1]["state_bytes"] == est[None]["state_bytes"]  # grouping changes temporaries only
    # a budget that fits everything needs no grouping (one real compile)
    assert suggest_worker_batch(wide_task, alg, topo, 256, 10 * est[None]["peak_bytes"]) is None


def test_suggest_worker_batch_bisects_powers_of_two(monkeypatch, digits_task):
    peaks = {None: 1000, 2: 600, 1: 400}  # n = 4: candidates all at once, 2, 1
    calls = []

    def fake(task, algorithm, topology, batch_size, worker_batch=None, mixing="auto", compile=True, **kw):
        calls.append(worker_batch)
        return {"peak_bytes": peaks[worker_batch] if compile else None, "state_bytes": 300, "data_bytes": 50}

    monkeypatch.setattr(memory, "estimate", fake)
    args = (digits_task, None, simdl.topologies.ring(4), 8)
    assert suggest_worker_batch(*args, 1000) is None
    assert suggest_worker_batch(*args, 999) == 2 and suggest_worker_batch(*args, 600) == 2
    assert suggest_worker_batch(*args, 599) == 1
    calls.clear()
    with pytest.raises(ValueError, match="even worker_batch=1 needs about 400 B"):
        suggest_worker_batch(*args, 399)
    assert calls[:2] == [None, 1]  # all at once, then the smallest group: no more compiles than needed
    with pytest.raises(ValueError, match="budget_bytes"):
        suggest_worker_batch(*args, 0)


def test_estimate_rejects_bad_arguments(digits_task):
    alg = simdl.algorithms.dsgd(0.1)
    with pytest.raises(ValueError, match="worker_batch"):
        estimate(digits_task, alg, simdl.topologies.ring(4), 8, worker_batch=0)
    with pytest.raises(ValueError, match="batch_size"):
        estimate(digits_task, alg, simdl.topologies.ring(4), 0)
    with pytest.raises(ValueError, match="n=5"):
        estimate(digits_task, alg, simdl.topologies.ring(5), 8)


def test_1024_worker_mlp_estimate():
    n, per_worker = 1024, 4
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n * per_worker + 8, 8, 8, 1), dtype=np.uint8)
    y = rng.integers(0, 10, len(x))
    ds = make_dataset("synthetic", x[:-8], y[:-8], x[-8:], y[-8:], 10, 255.0)
    task = simdl.tasks.classification(data=ds, model="mlp", n_workers=n, partition="iid", max_eval_samples=8)
    d = estimate(task, simdl.algorithms.dsgd(0.1), simdl.topologies.ring(n), per_worker, worker_batch=256)
    assert d["n_workers"] == n and d["worker_batch"] == 256
    assert d["state_bytes"] == pytest.approx(n * d["model_bytes"], rel=1e-3)
    assert d["peak_bytes"] > d["state_bytes"] and d["temp_bytes"] > 0
    assert "n=1024 workers (gradients 256 at a time)" in format_estimate(d)


def test_format_bytes():
    assert format_bytes(None) == "n/a" and format_bytes(512) == "512 B"
    assert format_bytes(1536) == "1.5 KiB" and format_bytes(3 * 2**30) == "3.0 GiB"


def test_cli_memory_flag_and_worker_batch(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text("""
[task]
n_workers = 4
partition = "iid"
[train]
steps = 4
eval_every = 2
batch_size = 8
worker_batch = 2
[[runs]]
algorithm = "dsgd"
learning_rate = 0.1
""")
    assert main(["run", str(cfg), "--out", str(tmp_path / "o"), "--quiet", "--no-plots", "--memory"]) == 0
    out = capsys.readouterr().out
    assert "dsgd/ring: memory estimate: n=4 workers (gradients 2 at a time)" in out and "peak" in out
    assert main(["run", str(cfg), "--out", str(tmp_path / "o"), "--quiet", "--set", "train.worker_batch=0"]) == 2
    assert "train.worker_batch must be an integer >= 1" in capsys.readouterr().err
