"""The throughput benchmark script: rows carry device/settings, ratios are consistent, file names don't collide."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "throughput.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("simdl_bench_throughput", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_tiny_run_writes_rows_with_device_and_ratios(bench, tmp_path, capsys):
    out = tmp_path / "t.json"
    rc = bench.main(["--models", "mlp", "--n", "2", "--algorithms", "dsgd", "--chunk", "2", "--repeats", "1",
                     "--loop-steps", "1", "--no-memory-analysis", "--out", str(out)])
    assert rc == 0
    payload = json.loads(out.read_text())
    (row,) = payload["rows"]
    for key in ("device_kind", "platform", "jax_version", "date"):
        assert row[key] and payload[key]
    assert row["model"] == "mlp" and row["n"] == 2 and row["batch_size"] == 32 and row["input_shape"] == [8, 8, 1]
    assert row["topology"] == "ring(2)" and row["chunk_steps"] == 2 and len(row["chunk_seconds"]) == 1
    assert row["worker_samples_per_s"] > 0 and row["bound_worker_samples_per_s"] > 0
    assert row["ratio_to_bound"] == pytest.approx(row["worker_samples_per_s"] / row["bound_worker_samples_per_s"])
    assert row["ratio_to_jax_loop"] == pytest.approx(row["worker_samples_per_s"]
                                                     / row["jax_loop_worker_samples_per_s"])
    assert row["compile_s"] >= 0 and row["max_rss_bytes"] > 0
    assert ("ratio_to_torch_loop" in row) == bench.torch_available()
    table = capsys.readouterr().out
    assert "x bound" in table and "mlp" in table and row["jax_version"] in table


def test_output_names_keep_full_quick_and_custom_apart(bench):
    info = {"platform": "gpu", "device_kind": "NVIDIA H100 80GB HBM3"}
    names = {flags: bench.output_path(bench.parse_args(list(flags)), info).name
             for flags in ((), ("--quick",), ("--n", "16"), ("--conv-sweep",))}
    assert len(set(names.values())) == 4
    assert names[()].startswith("throughput-nvidia-h100-80gb-hbm3-") and names[()].endswith(".json")
    assert names[("--quick",)].endswith("-quick.json") and names[("--n", "16")].endswith("-custom.json")
    assert bench.device_slug({"platform": "cpu", "device_kind": "cpu"}) == "cpu"


def test_synthetic_dataset_and_settings(bench):
    ds = bench.synthetic_dataset((28, 28, 1), 64)
    assert ds.x_train.shape == (64, 28, 28, 1) and ds.x_train.dtype.name == "uint8" and ds.num_classes == 10
    args = bench.parse_args(["--quick"])
    assert args.models == ("mlp", "cnn") and args.n == [16, 64] and args.algorithms == ("dsgd",)
    assert bench.model_settings("cnn", args, "cpu") == ({"conv_impl": "xla"}, 1)
    assert bench.model_settings("cnn", args, "gpu") == ({}, None)
    assert bench.model_settings("mlp", bench.parse_args(["--worker-batch", "0"]), "cpu") == ({}, None)
    with pytest.raises(SystemExit):
        bench.parse_args(["--chunk", "0"])
