"""The classification task: shards, on-device sampling, evaluation metrics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import simdl
from simdl.tasks.classification import _epoch_indices


@pytest.fixture(scope="module")
def task():
    return simdl.tasks.classification("digits", model="mlp", n_workers=8, partition="dirichlet", alpha=0.1, seed=0)


def test_shapes_and_shards(task):
    idx = np.asarray(task.data["indices"])
    assert idx.shape == (8, 1437 // 8) and task.shard_size == 1437 // 8
    assert len(np.unique(idx)) == idx.size
    assert task.info["alpha"] == 0.1 and task.kind == "classification"


def test_epoch_sampling_visits_every_sample_once_per_epoch():
    key = jax.random.PRNGKey(3)
    m, B = 10, 4
    pos = np.concatenate([np.asarray(_epoch_indices(key, t, m, B)) for t in range(5)])  # 20 draws = 2 epochs
    assert sorted(pos[:10].tolist()) == list(range(10)) and sorted(pos[10:].tolist()) == list(range(10))
    assert pos[:10].tolist() != pos[10:].tolist()


def test_sample_draws_from_the_workers_own_shard(task):
    key = jax.random.PRNGKey(0)
    for w in (0, 5):
        batch = task.sample(task.data, key, w, 3, 16)
        shard = np.asarray(task.data["indices"][w])
        ys = np.asarray(task.data["y"])[shard]
        assert batch["x"].shape == (16, 8, 8, 1) and set(np.asarray(batch["y"]).tolist()) <= set(ys.tolist())


def test_evaluate_reports_avg_and_worker_metrics(task):
    p = task.init_params(jax.random.PRNGKey(0))
    stacked = jax.tree_util.tree_map(lambda x: jnp.stack([x] * 8), p)
    m = jax.jit(task.evaluate)(task.data, stacked)
    for k in ("avg_model_loss", "avg_model_test_loss", "avg_model_accuracy", "worker_accuracy_mean",
              "worker_accuracy_min"):
        assert k in m
    assert float(m["worker_accuracy_min"]) == pytest.approx(float(m["avg_model_accuracy"]), abs=1e-6)
    assert float(m["avg_model_loss"]) == pytest.approx(np.log(10), rel=0.3)


def test_training_improves_accuracy_allreduce():
    task = simdl.tasks.classification("digits", "mlp", n_workers=4, partition="iid", seed=0)
    res = simdl.simulate(task, simdl.algorithms.allreduce(0.1), simdl.topologies.complete(4), steps=150,
                         batch_size=16, eval_every=50)
    assert res.history["avg_model_accuracy"][-1] > 0.8
    assert res.history["consensus_distance"][-1] < 1e-8


@pytest.mark.parametrize("kwargs,needle", [
    ({"partition": "pathological"}, "pathological"),
    ({"partition": "dirichlet", "alpha": 0.0}, "alpha"),
    ({"partition": "shards", "classes_per_worker": 11}, "11"),
    ({"model": "gpt"}, "gpt"),
    ({"dataset": "svhn"}, "svhn"),
    ({"n_workers": 0}, "n_workers"),
])
def test_bad_task_arguments(kwargs, needle):
    args = {"dataset": "digits", "model": "mlp", "n_workers": 4, **kwargs}
    with pytest.raises(ValueError, match=needle):
        simdl.tasks.classification(**args)


def test_batch_larger_than_shard_is_refused(task):
    with pytest.raises(ValueError, match="batch_size=500 is larger than a worker's shard"):
        simdl.simulate(task, simdl.algorithms.dsgd(0.1), simdl.topologies.ring(8), steps=5, batch_size=500)


def test_synthetic_fedprox_natural_partition_trains():
    task = simdl.tasks.classification("synthetic", "logreg", n_workers=6, partition="natural",
                                      dataset_kwargs={"alpha": 1.0, "beta": 1.0, "samples_per_worker": 50})
    assert task.shard_size == 50 and task.info["partition"] == "natural"
    res = simdl.simulate(task, simdl.algorithms.dsgd(0.05), simdl.topologies.ring(6), steps=100, batch_size=10,
                         eval_every=50)
    assert res.history["avg_model_loss"][-1] < res.history["avg_model_loss"][0]
    with pytest.raises(ValueError, match="natural"):
        simdl.tasks.classification("synthetic", "logreg", n_workers=6, partition="iid")
    with pytest.raises(ValueError, match="natural"):
        simdl.tasks.classification("digits", "mlp", n_workers=6, partition="natural")


def test_batchnorm_is_refused_with_a_clear_message():
    with pytest.raises(ValueError, match="BatchNorm"):
        simdl.tasks.classification("digits", "cnn", n_workers=4, model_kwargs={"norm": "batch"})
