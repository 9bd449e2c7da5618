"""The notebooks in notebooks/: saved with their outputs, free of bare assert cells, and every one executes top to
bottom at small size with the results its narrative describes (checked in the executed kernel)."""

import ast
import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
SMALL_STEPS = "60"
# scaling.ipynb: simulate n = 16 and 64 (not 256: three fewer compiled programs); spectral gaps up to n = 128
SMALL_N_MAX = "128"

# Checks run in the notebook's kernel after its last cell (at SIMDL_NOTEBOOK_STEPS=60, SIMDL_NOTEBOOK_N_MAX=128); an
# AssertionError fails the test with the notebook's traceback.
CHECKS = {
    "quickstart.ipynb": """
assert STEPS == 60
ar = results["allreduce (complete)"].final
assert ar["avg_model_accuracy"] > 0.5  # far above chance (0.1)
assert ar["consensus_distance"] < 1e-8  # exact averaging
for name, r in results.items():
    assert r.info["compiles"] == 1, name
    assert r.diverged_at is None, name
for name in ("D-SGD (ring)", "D-SGD Nesterov (ring)"):
    assert results[name].final["consensus_distance"] > 1e-6, name  # gossip on a ring leaves the models apart
# section 5, simulated time: the clock follows the per-step formulas of docs/algorithms.md exactly (constant
# compute, scalar links): ring all-reduce c + 2(n-1)/n B/bw + 2(n-1) lat, D-SGD on a ring c + lat + B/bw
_n, _B = 16, model_bytes
np.testing.assert_allclose(timed["WAN (10 ms)", "D-SGD (ring)"].final["bytes_per_worker"], 2 * _B * STEPS, rtol=1e-6)
_per = {}
for (net, name), r in timed.items():
    assert r.info["compiles"] == 1 and r.diverged_at is None, (net, name)
    lat = LATENCIES[net]
    comm = 2 * (_n - 1) / _n * _B / 1e9 + 2 * (_n - 1) * lat if name.startswith("all-reduce") else lat + _B / 1e9
    _per[net, name] = 0.01 + comm
    np.testing.assert_allclose(r.history["sim_time_s"], r.history["step"] * _per[net, name], rtol=1e-5)
_dc, _wan, _ar, _ds = "datacenter (10 µs)", "WAN (10 ms)", "all-reduce (complete)", "D-SGD (ring)"
assert 1.0 < _per[_dc, _ar] / _per[_dc, _ds] < 1.05  # fast links: nearly the same step cost
assert _per[_wan, _ar] / _per[_wan, _ds] > 10  # slow links: 30 latencies per step against one
for name in (_ar, _ds):  # the system model adds a clock and does not change the training
    np.testing.assert_array_equal(timed[_dc, name].history["avg_model_accuracy"],
                                  timed[_wan, name].history["avg_model_accuracy"])
# the crossover (90% is reached by both within 60 steps): all-reduce first on fast links, D-SGD first on slow ones
_t = {key: time_to_target(r) for key, r in timed.items()}
assert _t[_dc, _ar][1] < _t[_dc, _ds][1] < STEPS
assert _t[_dc, _ar][0] < _t[_dc, _ds][0] and _t[_wan, _ds][0] < _t[_wan, _ar][0] / 2
""",
    "heterogeneity_sweep.ipynb": """
assert STEPS == 60
# one compiled program per method (all α values batched), sane accuracies, and heterogeneity visibly
# hurts plain gossip: D-SGD's models drift further apart at the smallest α than at the largest
for name, runs in results.items():
    assert runs[0].info["compiles"] <= 2 and len(runs) == len(ALPHAS), name
    assert all(r.diverged_at is None and 0.0 <= r.final["avg_model_accuracy"] <= 1.0 for r in runs), name
    assert runs[-1].final["avg_model_accuracy"] > 0.3, name  # α = 10: far above chance (0.1)
dsgd = results["D-SGD / ring"]
assert dsgd[0].final["consensus_distance"] > dsgd[-1].final["consensus_distance"]
""",
    "scaling.ipynb": """
assert STEPS == 60 and N_MAX == 128 and sizes[-1] == 128 and NS == [16, 64]
# the exponential graph's gap shrinks only logarithmically, the ring's quadratically; one-peer over a
# period and the complete graph average exactly; every run finished
ring_gap, exp_gap = np.array(gaps["ring"]), np.array(gaps["exponential"])
assert np.all(np.diff(ring_gap) < 0) and exp_gap[-1] > 100 * ring_gap[-1]
np.testing.assert_allclose(gaps["complete"], 1.0, atol=1e-9)
np.testing.assert_allclose(gaps["one-peer exponential (per step, over a period)"], 1.0, atol=1e-6)
assert all(np.isfinite(r["error"]) for r in rows) and len(rows) == 3 * len(NS)
""",
    "write_your_own_algorithm.ipynb": """
assert STEPS == 60
# the notebook uses the public API only
import ast as _ast
for _cell in _cells_source:
    for _node in _ast.walk(_ast.parse(_cell)):
        if isinstance(_node, (_ast.Import, _ast.ImportFrom)):
            _mods = [a.name for a in _node.names] if isinstance(_node, _ast.Import) else [_node.module]
            _names = [a.name for a in _node.names]
            for _m in _mods:
                if _m.startswith("simdl"):
                    assert _m in ("simdl", "simdl.algorithms", "simdl.topologies", "simdl.tasks", "simdl.mixing",
                                  "simdl.faults", "simdl.metrics", "simdl.schedules", "simdl.systems"), _m
                    if isinstance(_node, _ast.ImportFrom):
                        _mod = __import__(_m, fromlist=["_"])
                        for _n in _names:
                            assert not _n.startswith("_") and _n in getattr(_mod, "__all__", dir(_mod)), (_m, _n)
        if isinstance(_node, _ast.Attribute) and _node.attr.startswith("_") and not _node.attr.startswith("__"):
            raise AssertionError(f"private attribute {_node.attr}")
# every=1 is D-SGD exactly; the mix_delta form agrees up to rounding
assert max_param_difference(mine_1, dsgd) == 0.0
assert max_param_difference(delta_1, dsgd) < 1e-2
# gossiping on every 4th step sends a quarter of D-SGD's bytes (steps 0, 4, 8, ... talk)
talks = len(range(0, STEPS, 4))
np.testing.assert_allclose(lazy.final["bytes_per_worker"], dsgd.final["bytes_per_worker"] * talks / STEPS, rtol=1e-6)
assert lazy.final["avg_model_accuracy"] > 0.2 and lossy.final["messages_lost"] > 0
""",
}


def _python(source: str) -> str:
    """A code cell's source without its IPython magics (``%...`` lines)."""
    return "\n".join(line for line in source.splitlines() if not line.lstrip().startswith("%"))


def _only_asserts(source: str) -> bool:
    """Whether a code cell's statements are all ``assert``s (or calls of ``*.assert_*`` checks)."""
    body = ast.parse(_python(source)).body

    def is_check(stmt):
        if isinstance(stmt, ast.Assert):
            return True
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call):
            f = stmt.value.func
            return isinstance(f, ast.Attribute) and f.attr.startswith("assert")
        return False

    return bool(body) and all(is_check(s) for s in body)


def test_checks_cover_every_notebook():
    assert sorted(CHECKS) == [p.name for p in NOTEBOOKS]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_saved_with_outputs_and_narrative(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    outputs = [o for c in code for o in c.get("outputs", [])]
    assert any("image/png" in o.get("data", {}) for o in outputs), "no figure saved"
    assert not [o for o in outputs if o.output_type == "error"], "saved with an error"
    assert all(c.get("execution_count") for c in code), "not executed top to bottom"
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1))
    bare = [c.source for c in code if _only_asserts(c.source)]
    assert not bare, f"code cells with only asserts: {bare}"
    assert sum(c.cell_type == "markdown" for c in nb.cells) >= len(code) // 2, "too little narrative"
    assert not [c for c in nb.cells if c.cell_type == "markdown" and "NARRATIVE_" in c.source]
    assert path.stat().st_size < 400_000


@pytest.fixture(scope="session")
def jax_cache_dir(tmp_path_factory):
    """A persistent XLA compilation cache shared by the notebook kernels of this test session (fresh each session).

    Compilation dominates a notebook's run at the test size, and the notebooks compile the same programs repeatedly
    (every simulate call of a task compiles the same evaluation program; the kernels share start-up programs). A
    cache hit returns the executable XLA would build again, so the results are the same, only faster."""
    return tmp_path_factory.mktemp("jax_compilation_cache")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, monkeypatch, jax_cache_dir):
    monkeypatch.setenv("SIMDL_NOTEBOOK_STEPS", SMALL_STEPS)
    monkeypatch.setenv("SIMDL_NOTEBOOK_N_MAX", SMALL_N_MAX)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(jax_cache_dir))
    monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")  # cache every program, not only slow ones
    monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
    # at the test size compiling dominates running: LLVM optimisation off cuts compile times by about a third
    flags = os.environ.get("XLA_FLAGS", "")
    monkeypatch.setenv("XLA_FLAGS", f"{flags} --xla_backend_optimization_level=0".strip())
    nb = nbformat.read(path, as_version=4)
    sources = [_python(c.source) for c in nb.cells if c.cell_type == "code"]
    nb.cells.append(new_code_cell(f"_cells_source = {sources!r}\n" + CHECKS[path.name]))
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
