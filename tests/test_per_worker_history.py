"""The history keeps each worker's own test accuracy and loss as ``(evaluations, n)`` arrays, single and batched."""

import numpy as np

import simdl
from simdl.runtime import simulate_batch


def _task():
    return simdl.tasks.classification(dataset="digits", model="logreg", n_workers=4, alpha=0.1, seed=0)


def test_single_run_history_has_per_worker_arrays():
    task = _task()
    res = simdl.simulate(task, simdl.algorithms.dsgd(0.1), simdl.topologies.ring(4), steps=6, batch_size=4,
                         eval_every=2)
    acc, loss = res.history["worker_accuracy"], res.history["worker_test_loss"]
    assert acc.shape == (3, 4) and loss.shape == (3, 4)
    np.testing.assert_allclose(acc.min(axis=1), res.history["worker_accuracy_min"], rtol=1e-6)
    np.testing.assert_allclose(acc.mean(axis=1), res.history["worker_accuracy_mean"], rtol=1e-5)
    assert np.all((acc >= 0) & (acc <= 1)) and np.all(loss > 0)
    assert "worker_accuracy" not in res.final  # finals stay scalars


def test_batched_runs_history_has_per_worker_arrays():
    task = _task()
    fn = lambda hp: simdl.algorithms.dsgd(lambda t: hp["learning_rate"])  # noqa: E731
    res = simulate_batch([task, task], fn, [{"learning_rate": 0.1}, {"learning_rate": 0.3}],
                         simdl.topologies.ring(4), steps=4, batch_size=4, eval_every=2, seeds=[0, 0])
    for r in res:
        assert r.history["worker_accuracy"].shape == (2, 4)
        np.testing.assert_allclose(r.history["worker_accuracy"].min(axis=1), r.history["worker_accuracy_min"],
                                   rtol=1e-6)
    assert not np.allclose(res[0].history["worker_test_loss"], res[1].history["worker_test_loss"])
