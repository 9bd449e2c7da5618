"""The ``optimizer`` run key: a config names an optax optimizer as the workers' local optimizer."""

import numpy as np
import optax
import pytest

import simdl
from simdl.recipes import (
    OPTIMIZERS,
    optimizer_from_spec,
    resolve_run_kwargs,
    resolve_train,
    server_optimizer_from_spec,
)
from simdl.runtime import simulate_batch
from simdl.sweep import algorithm_builder, train_settings


@pytest.fixture(scope="module")
def quad():
    return simdl.tasks.random_quadratics(n_workers=4, dim=5, zeta2=1.0, noise=0.1, seed=0)


def _train(task, steps=6):
    return resolve_train(train_settings({"steps": steps, "batch_size": 2}), task)


def test_every_listed_optimizer_builds():
    for name in OPTIMIZERS:
        assert isinstance(optimizer_from_spec(name, 0.01), optax.GradientTransformation)


def test_config_optimizer_equals_the_api(quad):
    """``optimizer = {name = "adam", b1 = 0.8}`` in a run gives the same trajectory as
    ``dsgd(lr, optimizer=optax.adam(lr, b1=0.8))``."""
    topo = simdl.topologies.ring(4)
    run = {"algorithm": "dsgd", "learning_rate": 0.05, "optimizer": {"name": "adam", "b1": 0.8}}
    alg = algorithm_builder(run, quad, _train(quad))({})
    ref = simdl.algorithms.dsgd(0.05, optimizer=optax.adam(0.05, b1=0.8))
    a = simdl.simulate(quad, alg, topo, steps=6, batch_size=2, eval_every=3)
    b = simdl.simulate(quad, ref, topo, steps=6, batch_size=2, eval_every=3)
    np.testing.assert_array_equal(a.history["loss"], b.history["loss"])
    plain = simdl.simulate(quad, simdl.algorithms.dsgd(0.05), topo, steps=6, batch_size=2, eval_every=3)
    assert not np.allclose(a.history["loss"], plain.history["loss"])  # it is not SGD


def test_batched_learning_rates_reach_the_optimizer(quad):
    """Runs batched along the learning rate rebuild the optax optimizer at each run's rate: each batched run equals
    its single run."""
    topo = simdl.topologies.ring(4)
    run = {"algorithm": "dsgd", "learning_rate": 0.05, "optimizer": "adam"}
    fn = algorithm_builder(run, quad, _train(quad))
    lrs = [0.01, 0.1]
    batched = simulate_batch([quad, quad], fn, [{"learning_rate": lr} for lr in lrs], topo, steps=6, batch_size=2,
                             seeds=[0, 0], eval_every=3)
    for lr, res in zip(lrs, batched, strict=True):
        single = simdl.simulate(quad, simdl.algorithms.dsgd(lr, optimizer=optax.adam(lr)), topo, steps=6,
                                batch_size=2, eval_every=3)
        np.testing.assert_allclose(res.history["loss"], single.history["loss"], rtol=1e-5)


@pytest.mark.parametrize("spec,needle", [
    ("adamm", r"optimizer: unknown name 'adamm'; valid: sgd, adam"),
    ({"name": "adam", "beta1": 0.9}, r"optimizer: optax.adam takes no beta1; its keywords: b1, b2"),
    ({"name": "adam", "learning_rate": 0.1}, "set the run's learning_rate"),
    ({"b1": 0.9}, "expected a name"),
    (3, "expected a name"),
])
def test_bad_optimizer_specs(spec, needle):
    with pytest.raises(ValueError, match=needle):
        optimizer_from_spec(spec, 0.1)


def test_optimizer_on_an_algorithm_without_one(quad):
    with pytest.raises(ValueError, match="allreduce|has no local optimizer option"):
        resolve_run_kwargs({"algorithm": "cdsgd", "learning_rate": 0.1, "optimizer": "adam"}, quad, _train(quad))
    with pytest.raises(ValueError, match="optimizer needs the run's learning_rate"):
        resolve_run_kwargs({"algorithm": "dsgd", "optimizer": "adam"}, quad, _train(quad))


def test_config_server_optimizer_equals_the_api(quad):
    """``server_optimizer = {name = "adam", learning_rate = 0.05, eps = 1e-3}`` on fedavg gives the same trajectory
    as ``fedavg(lr, server_optimizer=optax.adam(0.05, eps=1e-3))``, and differs from plain FedAvg."""
    topo = simdl.topologies.complete(4)
    spec = {"name": "adam", "learning_rate": 0.05, "eps": 1e-3}
    run = {"algorithm": "fedavg", "learning_rate": 0.05, "local_steps": 2, "server_optimizer": spec}
    alg = algorithm_builder(run, quad, _train(quad))({})
    ref = simdl.algorithms.fedavg(0.05, local_steps=2, server_optimizer=optax.adam(0.05, eps=1e-3))
    a = simdl.simulate(quad, alg, topo, steps=6, batch_size=2, eval_every=2)
    b = simdl.simulate(quad, ref, topo, steps=6, batch_size=2, eval_every=2)
    np.testing.assert_array_equal(a.history["loss"], b.history["loss"])
    plain = simdl.simulate(quad, simdl.algorithms.fedavg(0.05, local_steps=2), topo, steps=6, batch_size=2,
                           eval_every=2)
    assert not np.allclose(a.history["loss"], plain.history["loss"])  # it is not server SGD(1.0)
    # "sgd" alone is plain FedAvg's SGD(1.0)
    sgd = algorithm_builder({**run, "server_optimizer": "sgd"}, quad, _train(quad))({})
    c = simdl.simulate(quad, sgd, topo, steps=6, batch_size=2, eval_every=2)
    np.testing.assert_array_equal(c.history["loss"], plain.history["loss"])


@pytest.mark.parametrize("spec,needle", [
    ("adam", r"server_optimizer: adam needs a server learning rate"),
    ({"name": "adamm", "learning_rate": 0.1}, r"server_optimizer: unknown name 'adamm'; valid: sgd, adam"),
    ({"name": "adam", "learning_rate": 0.1, "beta1": 0.9}, r"optax.adam takes no beta1; its keywords:"),
    ({"name": "sgd", "learning_rate": -1.0}, r"learning_rate must be a number > 0, got -1.0"),
    ({"learning_rate": 0.1}, "expected a name"),
])
def test_bad_server_optimizer_specs(spec, needle):
    with pytest.raises(ValueError, match=needle):
        server_optimizer_from_spec(spec)


def test_server_optimizer_on_an_algorithm_without_one(quad):
    with pytest.raises(ValueError, match=r"dsgd has no server optimizer \(algorithms with one: fedavg, fedprox"):
        resolve_run_kwargs({"algorithm": "dsgd", "learning_rate": 0.1, "server_optimizer": "sgd"}, quad,
                           _train(quad))
