"""The runner: chunk-size independence, one compilation, validation before compiling, divergence handling."""

import jax
import numpy as np
import pytest

import simdl
from simdl.algorithms import allreduce, dsgd

T = simdl.topologies


@pytest.fixture(scope="module")
def quad():
    return simdl.tasks.random_quadratics(n_workers=8, dim=5, zeta2=1.0, r0=10.0, noise=0.1, seed=1)


def test_results_do_not_depend_on_chunk_size(quad):
    a = simdl.simulate(quad, dsgd(0.3, momentum=0.5), T.ring(8), steps=60, eval_every=10, seed=3)
    b = simdl.simulate(quad, dsgd(0.3, momentum=0.5), T.ring(8), steps=60, eval_every=30, seed=3)
    c = simdl.simulate(quad, dsgd(0.3, momentum=0.5), T.ring(8), steps=60, eval_every=7, seed=3)
    np.testing.assert_array_equal(np.asarray(a.params["x"]), np.asarray(b.params["x"]))
    np.testing.assert_array_equal(np.asarray(a.params["x"]), np.asarray(c.params["x"]))
    np.testing.assert_allclose(a.history["suboptimality"][2::3], b.history["suboptimality"], rtol=1e-6)


def test_seed_changes_noise_and_same_seed_repeats(quad):
    a = simdl.simulate(quad, dsgd(0.3), T.ring(8), steps=20, eval_every=10, seed=0)
    b = simdl.simulate(quad, dsgd(0.3), T.ring(8), steps=20, eval_every=10, seed=0)
    c = simdl.simulate(quad, dsgd(0.3), T.ring(8), steps=20, eval_every=10, seed=1)
    np.testing.assert_array_equal(np.asarray(a.params["x"]), np.asarray(b.params["x"]))
    assert not np.array_equal(np.asarray(a.params["x"]), np.asarray(c.params["x"]))


def test_compiles_once_across_chunks(quad):
    res = simdl.simulate(quad, dsgd(0.3), T.ring(8), steps=100, eval_every=10)
    assert res.info["compiles"] == 1
    assert len(res.history["step"]) == 10
    uneven = simdl.simulate(quad, dsgd(0.3), T.ring(8), steps=25, eval_every=10)
    assert uneven.info["compiles"] == 2 and list(uneven.history["step"]) == [10, 20, 25]


def test_history_keys_and_bytes(quad):
    res = simdl.simulate(quad, dsgd(0.3), T.ring(8), steps=20, eval_every=10)
    for k in ("step", "loss", "avg_model_loss", "suboptimality", "consensus_distance", "bytes_per_worker",
              "learning_rate"):
        assert k in res.history
    # ring: 2 messages of 5 float32 per step
    np.testing.assert_allclose(res.history["bytes_per_worker"], [10 * 2 * 5 * 4, 20 * 2 * 5 * 4])
    np.testing.assert_allclose(res.history["learning_rate"], 0.3)


def test_single_worker_is_plain_sgd():
    rng = np.random.default_rng(0)
    A, b = rng.standard_normal((1, 6, 3)), rng.standard_normal((1, 6))
    res = simdl.simulate(simdl.tasks.quadratics(A, b), dsgd(0.05), T.ring(1), steps=10, eval_every=5)
    x = np.zeros(3)
    for _ in range(10):
        x = x - 0.05 * A[0].T @ (A[0] @ x - b[0])
    np.testing.assert_allclose(np.asarray(res.params["x"][0]), x, rtol=1e-5)


def test_divergence_stops_with_step_and_keeps_history(quad):
    res = simdl.simulate(quad, allreduce(50.0), T.ring(8), steps=400, eval_every=2)
    assert res.diverged_at is not None and res.diverged_at < 400
    assert len(res.history["step"]) == 0 or res.history["step"][-1] <= res.diverged_at
    assert all(np.isfinite(v).all() for v in res.history.values())


@pytest.mark.parametrize("kwargs,match", [
    ({"steps": 0}, "steps must be an integer >= 1, got 0"),
    ({"steps": 10, "batch_size": 0}, "batch_size"),
    ({"steps": 10, "eval_every": -1}, "eval_every"),
])
def test_bad_run_arguments_raise(quad, kwargs, match):
    with pytest.raises(ValueError, match=match):
        simdl.simulate(quad, dsgd(0.1), T.ring(8), **kwargs)


def test_topology_size_mismatch_raises(quad):
    with pytest.raises(ValueError, match="n=6 .* n_workers=8"):
        simdl.simulate(quad, dsgd(0.1), T.ring(6), steps=5)


def test_random_quadratics_heterogeneity_and_distance():
    task = simdl.tasks.random_quadratics(n_workers=6, dim=4, zeta2=0.7, r0=5.0, seed=2)
    A, b = np.asarray(task.data["A"], np.float64), np.asarray(task.data["b"], np.float64)
    x_star = np.asarray(task.data["x_star"], np.float64)
    g = np.einsum("imd,im->id", A, np.einsum("imd,d->im", A, x_star) - b)
    assert np.mean(np.sum(g * g, 1)) == pytest.approx(0.7, rel=1e-3)
    assert np.linalg.norm(x_star) == pytest.approx(5.0, rel=1e-4)
    assert np.abs(g.sum(0)).max() < 1e-3  # x* is the global optimum
    s = np.linalg.svd(A[0], compute_uv=False)
    np.testing.assert_allclose(np.sort(s), np.linspace(0.5, 1.0, 4), rtol=1e-4)


def test_worker_groups_equal_full_vmap():
    task = simdl.tasks.classification("digits", "mlp", n_workers=8, partition="iid", seed=0)
    a = simdl.simulate(task, dsgd(0.1, momentum=0.9), T.ring(8), steps=10, batch_size=8, eval_every=10)
    b = simdl.simulate(task, dsgd(0.1, momentum=0.9), T.ring(8), steps=10, batch_size=8, eval_every=10,
                       worker_batch=3)
    for x, y in zip(jax.tree_util.tree_leaves(a.params), jax.tree_util.tree_leaves(b.params), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="worker_batch"):
        simdl.simulate(task, dsgd(0.1), T.ring(8), steps=10, batch_size=8, worker_batch=0)


@pytest.fixture(scope="module")
def cnn_auto_run():
    """A CNN task (small evaluation subsets: only the trained parameters are compared) and its run with
    ``execution="auto"``, shared by the override tests."""
    task = simdl.tasks.classification("digits", "cnn", n_workers=2, partition="iid", seed=0, max_eval_samples=8,
                                      eval_batch_size=8, worker_eval_samples=8, train_eval_samples=8)
    return task, simdl.simulate(task, dsgd(0.1), T.ring(2), steps=4, batch_size=4, eval_every=4, execution="auto")


@pytest.mark.parametrize("execution", ["vmap", "map", "loop"])
def test_execution_overrides_give_the_same_numbers(cnn_auto_run, execution):
    task, ref = cnn_auto_run
    got = simdl.simulate(task, dsgd(0.1), T.ring(2), steps=4, batch_size=4, eval_every=4, execution=execution)
    assert got.info["execution"] == execution
    for x, y in zip(jax.tree_util.tree_leaves(ref.params), jax.tree_util.tree_leaves(got.params), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-5)


def test_unknown_execution_is_refused_before_compiling(quad):
    with pytest.raises(ValueError, match="unknown execution 'gpu'"):
        simdl.simulate(quad, dsgd(0.1), T.ring(8), steps=5, execution="gpu")


def test_blow_up_without_nan_is_marked_diverged():
    """Loss and consensus distance growing 1e3x over their first values ends the run as diverged at that step."""
    from simdl.runtime import simulate_batch

    task = simdl.tasks.random_quadratics(n_workers=4, dim=5, zeta2=1.0, seed=0)
    topo = simdl.topologies.ring(4)
    res = simdl.simulate(task, simdl.algorithms.dsgd(2.6), topo, steps=60, batch_size=4, eval_every=5)
    assert res.diverged_at is not None and res.diverged_at < 60
    assert res.history["step"][-1] == res.diverged_at and np.all(np.isfinite(res.history["loss"]))
    assert res.history["loss"][-1] > 1e3 * res.history["loss"][0]
    (bat, ok) = simulate_batch([task] * 2, lambda hp: simdl.algorithms.dsgd(lambda t: hp["learning_rate"]),
                               [{"learning_rate": 2.6}, {"learning_rate": 0.1}], topo, steps=60, batch_size=4,
                               eval_every=5, seeds=[0, 0])
    assert bat.diverged_at == res.diverged_at and ok.diverged_at is None
