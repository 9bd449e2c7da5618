"""Batched runs (one compiled program over a run axis) equal separate runs."""

import numpy as np
import optax
import pytest

import simdl
from simdl.runtime import simulate_batch


def _dsgd(hp):
    return simdl.algorithms.dsgd(lambda t: hp["learning_rate"], momentum=0.5)


def test_batch_over_learning_rates_and_seeds_equals_separate_runs():
    task = simdl.tasks.random_quadratics(n_workers=8, dim=4, noise=0.2, seed=0)
    topo = simdl.topologies.ring(8)
    hps = [{"learning_rate": 0.1}, {"learning_rate": 0.3}, {"learning_rate": 0.1}]
    seeds = [0, 0, 1]
    res = simulate_batch([task] * 3, _dsgd, hps, topo, steps=30, eval_every=10, seeds=seeds)
    assert res[0].info["compiles"] == 1 and res[0].info["batched_runs"] == 3
    for r, hp, seed in zip(res, hps, seeds, strict=True):
        ref = simdl.simulate(task, simdl.algorithms.dsgd(hp["learning_rate"], momentum=0.5), topo, steps=30,
                             eval_every=10, seed=seed)
        np.testing.assert_allclose(np.asarray(r.params["x"]), np.asarray(ref.params["x"]), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(r.history["suboptimality"], ref.history["suboptimality"], rtol=1e-3)
    assert not np.allclose(np.asarray(res[0].params["x"]), np.asarray(res[2].params["x"]))


def test_batch_over_dirichlet_alpha_partitions():
    tasks = [simdl.tasks.classification("digits", "mlp", n_workers=4, alpha=a, seed=0) for a in (0.1, 10.0)]
    topo = simdl.topologies.ring(4)
    res = simulate_batch(tasks, _dsgd, [{"learning_rate": 0.1}] * 2, topo, steps=20, batch_size=8, eval_every=10,
                         seeds=[0, 0])
    for task, r in zip(tasks, res, strict=True):
        ref = simdl.simulate(task, simdl.algorithms.dsgd(0.1, momentum=0.5), topo, steps=20, batch_size=8,
                             eval_every=10)
        np.testing.assert_allclose(r.history["avg_model_accuracy"], ref.history["avg_model_accuracy"], atol=1e-6)
        np.testing.assert_allclose(r.history["loss"], ref.history["loss"], rtol=1e-4)


def test_one_diverging_run_does_not_stop_the_others():
    task = simdl.tasks.random_quadratics(n_workers=4, dim=3, seed=0)
    res = simulate_batch([task] * 2, _dsgd, [{"learning_rate": 80.0}, {"learning_rate": 0.1}],
                         simdl.topologies.ring(4), steps=200, eval_every=10)
    assert res[0].diverged_at is not None and res[1].diverged_at is None
    assert res[1].history["step"][-1] == 200 and len(res[0].history.get("step", [])) < 20


def test_mismatched_inputs_raise():
    task = simdl.tasks.random_quadratics(n_workers=4, dim=3)
    with pytest.raises(ValueError, match="as many hparams"):
        simulate_batch([task] * 2, _dsgd, [{"learning_rate": 0.1}], simdl.topologies.ring(4), steps=10)


def test_batched_learning_rate_out_of_range_is_refused_before_compiling():
    task = simdl.tasks.random_quadratics(n_workers=4, dim=3, seed=0)
    with pytest.raises(ValueError, match=r"learning_rate schedule gives -0\.1 at step 0"):
        simulate_batch([task] * 2, _dsgd, [{"learning_rate": 0.1}, {"learning_rate": -0.1}],
                       simdl.topologies.ring(4), steps=10)
    with pytest.raises(ValueError, match="at step 0"):
        simdl.algorithms.dsgd(lambda t: float("nan"))
    simdl.algorithms.dsgd(optax.linear_schedule(0.0, 0.1, 10))  # warm-up from 0 is allowed
