"""Evaluation: every worker's own model on a bounded, recorded test subset; same numbers whatever the grouping;
the resolved per-worker strategy recorded in ``info``."""

import jax
import numpy as np
import pytest

import simdl
from simdl.models import get_model
from simdl.runtime import resolve_execution
from simdl.tasks.classification import worker_eval_group, worker_eval_size


def _perturbed(task, n, scale=0.3):
    """n different worker models: x⁰ plus seeded noise per worker."""
    p = task.init_params(jax.random.PRNGKey(0))
    leaves, tree = jax.tree_util.tree_flatten(p)
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    out = [x[None] + scale * jax.random.normal(k, (n,) + x.shape) for x, k in zip(leaves, keys, strict=True)]
    return jax.tree_util.tree_unflatten(tree, out)


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_worker_metrics_equal_a_per_worker_loop_on_the_recorded_subset(model):
    n, m = 4, 50
    task = simdl.tasks.classification("digits", model, n_workers=n, partition="iid", worker_eval_samples=m)
    ds = simdl.data.load_dataset("digits")
    assert task.info["evaluation"]["worker_test_samples"] == m
    xs, ys, mask = (np.asarray(a) for a in task.data["worker_test"])
    x, y = xs.reshape((-1,) + xs.shape[2:])[mask.reshape(-1) > 0], ys.reshape(-1)[mask.reshape(-1) > 0]
    assert len(y) == m
    # the subset consists of test samples (rows of the test set), without repeats
    rows = {r.tobytes(): i for i, r in enumerate(ds.x_test)}
    idx = [rows[r.tobytes()] for r in x]
    assert len(set(idx)) == m and np.array_equal(ds.y_test[idx], y)
    stacked = jax.jit(lambda: _perturbed(task, n))()  # one compilation (eagerly: one per op)
    metrics = jax.jit(task.evaluate)(task.data, stacked)
    net = get_model(model, 10)
    norm = (x.astype(np.float32) / ds.scale - ds.mean) / ds.std
    apply = jax.jit(net.apply)  # one compilation for the n workers (eagerly: every op compiled on its own)
    acc = [float(np.mean(np.argmax(apply(jax.tree.map(lambda a, i=i: a[i], stacked), norm), -1) == y))
           for i in range(n)]
    assert float(metrics["worker_accuracy_mean"]) == pytest.approx(np.mean(acc), abs=1e-6)
    assert float(metrics["worker_accuracy_min"]) == pytest.approx(np.min(acc), abs=1e-6)
    assert np.ptp(acc) > 0  # the workers really differ, so min != mean is tested


def test_auto_subset_size_bounds_the_work_per_evaluation():
    assert worker_eval_size("auto", 16, 10_000) == 384
    assert worker_eval_size("auto", 64, 10_000) == 96
    assert worker_eval_size("auto", 1024, 10_000) == 64
    assert worker_eval_size("auto", 4, 300) == 300
    assert worker_eval_size(None, 64, 10_000) == worker_eval_size("all", 64, 10_000) == 10_000
    assert worker_eval_size(7, 64, 10_000) == 7
    for bad in (0, -3, "some", 2.5, True):
        with pytest.raises(ValueError, match="worker_eval_samples"):
            worker_eval_size(bad, 4, 100)


def test_evaluation_groups_workers_by_strategy():
    cnn = jax.eval_shape(lambda: _perturbed(simdl.tasks.classification("digits", "cnn", n_workers=2), 5))
    mlp = jax.eval_shape(lambda: _perturbed(simdl.tasks.classification("digits", "mlp", n_workers=2), 5))
    if jax.default_backend() == "cpu":
        assert worker_eval_group(cnn, 1000) == 1  # one conv model at a time on CPU
    assert worker_eval_group(mlp, 1000) == 8 and worker_eval_group(mlp, 10_000) == 1


def test_train_objective_subset_spans_every_workers_shard():
    task = simdl.tasks.classification("digits", "mlp", n_workers=10, partition="shards", classes_per_worker=1,
                                      train_eval_samples=300)
    ys, mask = np.asarray(task.data["train_eval"][1]), np.asarray(task.data["train_eval"][2])
    assert int(mask.sum()) == 300 and task.info["evaluation"]["avg_model_train_samples"] == 300
    assert len(set(ys.reshape(-1)[mask.reshape(-1) > 0].tolist())) == 10  # every worker's class is represented
    with pytest.raises(ValueError, match="train_eval_samples"):
        simdl.tasks.classification("digits", "mlp", n_workers=2, train_eval_samples=0)


def test_full_worker_evaluation_is_an_option():
    task = simdl.tasks.classification("digits", "mlp", n_workers=64, partition="iid", worker_eval_samples="all")
    ev = task.info["evaluation"]
    assert ev["worker_test_samples"] == ev["avg_model_test_samples"] == 360 and ev["worker_test_subset"] == "all"
    default = simdl.tasks.classification("digits", "mlp", n_workers=64, partition="iid").info["evaluation"]
    assert default["worker_test_samples"] == 96 and "seeded subset" in default["worker_test_subset"]


def test_resolved_strategy_for_stacked_conv_model_on_cpu():
    task = simdl.tasks.classification("digits", "cnn", n_workers=4, partition="iid")
    res = simdl.simulate(task, simdl.algorithms.dsgd(0.05), simdl.topologies.ring(4), steps=4, batch_size=8,
                         eval_every=2)
    if jax.default_backend() == "cpu":
        assert res.info["execution"] == "map" and res.info["map_batch_size"] == 1
    # conv_impl="auto": im2col ("patches") for small patch matrices (B·Ho·Wo·kh·kw·cin <= 2**21), "xla" above
    assert res.info["conv_impl"] == "patches" and res.info["conv_layers"] == ["patches", "patches"]
    shapes = jax.eval_shape(lambda: _perturbed(task, 4))
    big = resolve_execution(task, "auto", None, shapes, batch_size=1024)  # layer 2: 1024·16·288 > 2**21
    assert big["conv_layers"] == ["patches", "xla"] and big["conv_impl"] == "patches+xla"
    assert res.info["evaluations"] == 2 and 0 < res.info["eval_first_time_s"] <= res.info["eval_time_s"]
    mlp = simdl.tasks.classification("digits", "mlp", n_workers=4)
    shapes = jax.eval_shape(lambda: _perturbed(mlp, 4))
    assert resolve_execution(mlp, "auto", None, shapes, 8)["execution"] == "vmap"
    assert resolve_execution(mlp, "auto", None, shapes, 8)["conv_impl"] is None
    assert resolve_execution(mlp, "auto", 2, shapes, 8) == {"execution": "map", "map_batch_size": 2,
                                                             "conv_impl": None, "conv_layers": []}
    lax_task = simdl.tasks.classification("digits", "cnn", n_workers=4, model_kwargs={"conv_impl": "lax"})
    shapes = jax.eval_shape(lambda: _perturbed(lax_task, 4))
    assert resolve_execution(lax_task, "vmap", None, shapes, 8)["conv_layers"] == ["lax", "lax"]


def test_conv_impl_auto_threshold():
    from simdl.models.conv import PATCHES_MAX_ELEMENTS, resolve_conv_impl

    assert resolve_conv_impl("auto", PATCHES_MAX_ELEMENTS) == "patches"
    assert resolve_conv_impl("auto", PATCHES_MAX_ELEMENTS + 1) == "xla"
    assert resolve_conv_impl("auto") == "xla" and resolve_conv_impl("lax", 1) == "lax"
    with pytest.raises(ValueError, match="conv_impl"):
        resolve_conv_impl("fft")


def test_loss_unchanged_by_evaluation_settings():
    """The evaluation subsets change what is measured, never the training."""
    a = simdl.tasks.classification("digits", "mlp", n_workers=4, partition="iid")
    b = simdl.tasks.classification("digits", "mlp", n_workers=4, partition="iid", worker_eval_samples=10,
                                   train_eval_samples=10)
    kw = dict(steps=6, batch_size=8, eval_every=3)
    ra = simdl.simulate(a, simdl.algorithms.dsgd(0.1), simdl.topologies.ring(4), **kw)
    rb = simdl.simulate(b, simdl.algorithms.dsgd(0.1), simdl.topologies.ring(4), **kw)
    np.testing.assert_array_equal(ra.history["loss"], rb.history["loss"])
    assert ra.final["avg_model_accuracy"] == rb.final["avg_model_accuracy"]
