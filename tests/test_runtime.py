"""The unified runtime: hyperparameters as traced state, and features batched runs now share with single runs."""

import jax
import numpy as np
import pytest

import simdl
from simdl.algorithms import dsgd, inject_hyperparams
from simdl.runtime import Hook

T = simdl.topologies


def _quad():
    return simdl.tasks.random_quadratics(n_workers=4, dim=3, zeta2=1.0, seed=0)


def _fn(hp):
    return dsgd(lambda t: hp["learning_rate"])


def test_injected_step_reads_the_state_not_the_factory_values():
    quad, topo = _quad(), T.ring(4)
    a = simdl.simulate(quad, dsgd(0.05), topo, steps=6, batch_size=1, eval_every=3)
    injected = inject_hyperparams(_fn)(learning_rate=0.3)
    state = injected.init({"x": jax.numpy.zeros((4, 3))}, None)
    assert state.hyperparams["learning_rate"].dtype == np.float32
    (b,) = simdl.simulate_batch([quad], _fn, [{"learning_rate": 0.05}], topo, steps=6, batch_size=1, eval_every=3)
    np.testing.assert_allclose(b.history["loss"], a.history["loss"], rtol=1e-6)
    assert b.info["algorithm"]["learning_rate"] == 0.05 and b.info["batched_runs"] == 1


@pytest.mark.parametrize("bad", [True, "0.1", float("nan")])
def test_injected_hyperparameter_must_be_a_number(bad):
    with pytest.raises(ValueError, match="hyperparameter learning_rate"):
        inject_hyperparams(_fn)(learning_rate=bad)


def test_batched_checkpoint_resume_equals_uninterrupted(tmp_path):
    quad, topo = _quad(), T.ring(4)
    kw = dict(batch_size=1, eval_every=4, seeds=[0, 1])
    hps = [{"learning_rate": 0.05}, {"learning_rate": 0.1}]
    full = simdl.simulate_batch([quad] * 2, _fn, hps, topo, steps=12, **kw)
    simdl.simulate_batch([quad] * 2, _fn, hps, topo, steps=8, checkpoint_dir=tmp_path, **kw)
    resumed = simdl.simulate_batch([quad] * 2, _fn, hps, topo, steps=12, checkpoint_dir=tmp_path, resume=True, **kw)
    for f, r in zip(full, resumed, strict=True):
        np.testing.assert_array_equal(f.history["loss"], r.history["loss"])
    other = [{"learning_rate": 0.05}, {"learning_rate": 0.2}]
    with pytest.raises(ValueError, match="learning_rate: 0.1 != 0.2"):
        simdl.simulate_batch([quad] * 2, _fn, other, topo, steps=12, checkpoint_dir=tmp_path, resume=True, **kw)


def test_hooks_see_every_evaluation_of_a_batch():
    seen = []

    class Count(Hook):
        def on_evaluation(self, loop, rows):
            seen.append((loop.done, len(rows)))

    simdl.simulate_batch([_quad()] * 3, _fn, [{"learning_rate": 0.05}] * 3, T.ring(4), steps=6, batch_size=1,
                         eval_every=2, hooks=[Count()], progress=True)
    assert seen == [(2, 3), (4, 3), (6, 3)]
