"""The throughput benchmark script: rows carry device/settings/strategy, ratios are consistent, file names don't
collide, the GPU suite's code path runs at toy sizes on CPU. The PyTorch columns are checked where torch is
importable (it is not a dependency of simdl) and must be absent otherwise."""

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "throughput.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("simdl_bench_throughput", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _check_torch_columns(bench, row):
    if bench.torch_available():
        for p in ("torch_loop", "torch_func"):
            assert row[f"ratio_to_{p}"] == pytest.approx(row["worker_samples_per_s"]
                                                         / row[f"{p}_worker_samples_per_s"])
        best = max(row["torch_loop_worker_samples_per_s"], row["torch_func_worker_samples_per_s"])
        assert row["ratio_to_best_torch"] == pytest.approx(row["worker_samples_per_s"] / best)
    else:
        assert not any(k.startswith(("ratio_to_torch", "ratio_to_best_torch")) for k in row)


def test_tiny_run_writes_rows_with_device_ratios_strategy_and_gemm(bench, tmp_path, capsys):
    out = tmp_path / "t.json"
    rc = bench.main(["--models", "mlp", "--n", "2", "--algorithms", "dsgd", "--chunk", "2", "--repeats", "1",
                     "--loop-steps", "1", "--no-memory-analysis", "--gemm-size", "128", "--out", str(out)])
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
    # the strategy that ran: a dense model has no convolution; execution is resolved ("auto" never appears)
    assert row["execution_requested"] == "auto" and row["execution"] in ("vmap", "map", "loop")
    assert row["conv_impl"] is None and row["execution"] == "vmap" and row["conv_layers"] == []
    # GEMM rate in every record; achieved GFLOP/s from the model's FLOPs
    assert row["gemm_size"] == 128 and row["gemm_gflops_jax"] > 0
    assert (row["gemm_gflops_torch"] is not None) == bench.torch_available()
    assert row["flops_per_sample"] > 0
    assert row["achieved_gflops"] == pytest.approx(row["flops_per_sample"] * row["worker_samples_per_s"] / 1e9)
    assert row["frac_gemm"] == pytest.approx(row["achieved_gflops"] / row["gemm_gflops_jax"])
    _check_torch_columns(bench, row)
    table = capsys.readouterr().out
    assert "x bound" in table and "x torch.func" in table and "frac GEMM" in table and "GEMM fp32 128" in table
    assert "mlp" in table and row["jax_version"] in table and row["execution"] in table


def test_gpu_suite_tiny_runs_on_cpu_through_gpu_sh(bench, tmp_path):
    """``benchmarks/gpu.sh --tiny``: the suite's row processes, budgets, loop skip, JSON and $OUT copy."""
    out, dest = tmp_path / "g.json", tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(dest)}
    t0 = time.perf_counter()
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--tiny", "--out", str(out)], env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert time.perf_counter() - t0 < 240
    payload = json.loads(out.read_text())
    assert payload["suite"] == "gpu-tiny" and payload["torch_available"] == bench.torch_available()
    assert (dest / out.name).exists() and (dest / (out.stem + ".txt")).exists()
    rows = payload["rows"]
    assert [(r["model"], r["n"], r["algorithm"]) for r in rows] == [("mlp", 2, "dsgd"), ("mlp", 2, "relaysgd"),
                                                                    ("cnn8", 4, "dsgd")]
    assert not payload["skipped"], payload["skipped"]
    for r in rows:
        assert r["worker_samples_per_s"] > 0 and r["ratio_to_bound"] > 0 and r["gemm_gflops_jax"] > 0
        assert r["execution"] and "device_peak_bytes" in r and r["frac_gemm"] > 0
    mlp, cnn = rows[0], rows[2]
    assert mlp["xla_peak_bytes"] > 0 and mlp["ratio_to_jax_loop"] > 0 and mlp["batch_size"] == 8
    _check_torch_columns(bench, mlp)
    assert cnn["conv_impl"] and cnn["execution"]
    assert "loop max n 2" in cnn["jax_loop_skipped"] and "ratio_to_jax_loop" not in cnn
    if bench.torch_available():
        assert "loop max n 2" in cnn["torch_loop_skipped"] and cnn["ratio_to_torch_func"] > 0
        assert cnn["ratio_to_best_torch"] == pytest.approx(cnn["ratio_to_torch_func"])
    assert "x torch.func" in proc.stdout and "loop max n 2" in proc.stdout


def test_gpu_sh_refuses_without_gpu(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh")], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "no GPU" in proc.stderr


def test_output_names_keep_full_quick_custom_and_suites_apart(bench):
    info = {"platform": "gpu", "device_kind": "NVIDIA H100 80GB HBM3"}
    flags = ((), ("--quick",), ("--n", "16"), ("--conv-sweep",), ("--suite", "gpu"), ("--suite", "gpu", "--tiny"))
    names = {f: bench.output_path(bench.parse_args(list(f)), info).name for f in flags}
    assert len(set(names.values())) == len(flags)
    assert names[()].startswith("throughput-nvidia-h100-80gb-hbm3-") and names[()].endswith(".json")
    assert names[("--quick",)].endswith("-quick.json") and names[("--n", "16")].endswith("-custom.json")
    assert names[("--suite", "gpu")].endswith("-gpu.json")
    assert bench.device_slug({"platform": "cpu", "device_kind": "cpu"}) == "cpu"


def test_synthetic_dataset_and_settings(bench):
    ds = bench.synthetic_dataset((28, 28, 1), 64)
    assert ds.x_train.shape == (64, 28, 28, 1) and ds.x_train.dtype.name == "uint8" and ds.num_classes == 10
    args = bench.parse_args(["--quick"])
    assert args.plan_rows == (("mlp", 64), ("cnn8", 16), ("cnn", 16)) and args.algorithms == ("dsgd",)
    assert bench.MODEL_SPECS["cnn8"][:2] == ("cnn", (8, 8, 1))
    # the library's defaults unless overridden: no forced conv_impl / worker_batch
    assert bench.model_settings("cnn", args) == ({}, None, "auto")
    assert bench.model_settings("resnet20", args) == ({"norm": "group"}, None, "auto")
    over = bench.parse_args(["--conv-impl", "xla", "--worker-batch", "4", "--execution", "map"])
    assert bench.model_settings("cnn", over) == ({"conv_impl": "xla"}, 4, "map")
    assert bench.model_settings("mlp", over) == ({}, 4, "map")
    assert bench.model_settings("cnn", bench.parse_args(["--worker-batch", "0"])) == ({}, None, "vmap")
    full = bench.parse_args([])
    plan = [(m, n) for m in full.models for n in full.n if n <= bench.max_n_for(m, full, "cpu")]
    assert plan == [(m, n) for m in ("mlp", "cnn8", "cnn", "resnet20") for n in (16, 64)]
    for bad in (["--chunk", "0"], ["--tiny"], ["--loop-steps", "-1"]):
        with pytest.raises(SystemExit):
            bench.parse_args(bad)


def test_run_timed_budget(bench):
    calls = []
    out = bench.run_timed(lambda: calls.append(time.sleep(0.01)), lambda: None, steps=100, budget=0.1,
                          samples_per_step=8)
    assert 1 <= len(out["step_seconds"]) < 100 and len(calls) == len(out["step_seconds"]) + 1
    assert out["worker_samples_per_s"] == pytest.approx(8 / out["seconds_per_step"])
    slow = bench.run_timed(lambda: time.sleep(0.06), lambda: None, steps=3, budget=0.1, samples_per_step=8)
    assert "skipped" in slow and "half the time budget" in slow["skipped"]


def test_torch_models_match_simdl_parameter_counts(bench):
    if not bench.torch_available():
        pytest.skip("torch is not importable")
    import jax

    import simdl.models

    for spec, (model, shape, kw) in bench.MODEL_SPECS.items():
        net = simdl.models.get_model(model, bench.NUM_CLASSES, **kw)
        params = jax.eval_shape(net.init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct((1, *shape), "float32"))
        torch_count = sum(p.numel() for p in bench._torch_model(model, shape, kw).parameters())
        assert torch_count == simdl.models.count_params(params), spec


def test_bound_memory_guard(bench):
    ds = bench.synthetic_dataset((8, 8, 1), 64)
    task = bench.make_task(ds, "mlp", 1, {})
    alg, topo = bench.make_algorithm("dsgd", 1)
    info = {"platform": "cpu"}
    ok = bench.memory_guard(task, alg, topo, 64, bench.parse_args(["--bound-memory-fraction", "100"]), info, {})
    assert ok["xla_peak_bytes"] > 0 and "skipped" not in ok
    if bench.mem_available_bytes():
        tight = bench.memory_guard(task, alg, topo, 64, bench.parse_args(["--bound-memory-fraction", "1e-12"]),
                                   info, {})
        assert "GiB available now" in tight["skipped"]
    assert bench.memory_guard(task, alg, topo, 64, bench.parse_args(["--quick"]), info, {}) == {}
    assert bench.memory_guard(task, alg, topo, 64, bench.parse_args([]), {"platform": "gpu"}, {}) == {}


def test_oom_fallback_picks_a_fitting_worker_batch(bench, monkeypatch):
    assert bench._is_oom(RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate"))
    assert not bench._is_oom(ValueError("shape mismatch"))
    ds = bench.synthetic_dataset((8, 8, 1), 8 * 32)
    task = bench.make_task(ds, "mlp", 8, {})
    alg, topo = bench.make_algorithm("dsgd", 8)
    est = bench.estimate(task, alg, topo, 32, None)
    peak, temp = est["peak_bytes"], est["temp_bytes"]
    limit = (0.3 * temp + peak - temp) / 0.8  # room for 30% of the default's temporaries: groups of 2 of 8
    monkeypatch.setattr(bench, "device_memory", lambda: {"device_bytes_limit": limit, "device_peak_bytes": None})
    fb = bench._oom_fallback(task, alg, topo, 32, lambda msg: None)
    assert fb["worker_batch"] == 2 and "groups of 2 workers" in fb["reason"] and fb["default_xla_peak_bytes"] == peak
    monkeypatch.setattr(bench, "device_memory", lambda: {"device_bytes_limit": None, "device_peak_bytes": None})
    assert bench._oom_fallback(task, alg, topo, 32, lambda msg: None)["worker_batch"] is None
