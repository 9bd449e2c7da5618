"""Tests for simdl.recipes (schedules, learning-rate scaling, weight-decay mask, config keys) and simdl.scale."""

from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from simdl import recipes
from simdl.algorithms.local import local_optimizer
from simdl.config import apply_override
from simdl.scale import TINY_MODEL, apply_scale


def values(schedule, steps):
    return np.array([float(schedule(t)) for t in steps])


# ---------------------------------------------------------------- schedules


def test_warmup_multistep_follows_the_relaysgd_formula():
    # lr(t) = peak * t / W during warm-up (from 0), then x0.1 from each milestone step on
    s = recipes.warmup_multistep(0.4, warmup_steps=4, milestones=[6, 8], decay=0.1)
    np.testing.assert_allclose(values(s, range(10)), [0, 0.1, 0.2, 0.3, 0.4, 0.4, 0.04, 0.04, 0.004, 0.004],
                               rtol=1e-6, atol=1e-9)
    # QGM-style warm-up from a fraction of the peak; equal milestones multiply their factors
    s = recipes.warmup_multistep(1.0, warmup_steps=2, milestones=[5, 5], decay=[0.5, 0.2], warmup_start=0.5)
    np.testing.assert_allclose(values(s, range(7)), [0.5, 0.75, 1, 1, 1, 0.1, 0.1], rtol=1e-6)
    with pytest.raises(ValueError, match="one per milestone"):
        recipes.warmup_multistep(1.0, 0, [1, 2], [0.1])
    with pytest.raises(ValueError, match="learning rate must be"):
        recipes.warmup_multistep(0.0)


def test_epoch_helpers_relaysgd_200_epochs():
    spe = recipes.steps_per_epoch(3125, 32)  # CIFAR-10 over 16 workers, batch 32
    assert spe == 98
    s = recipes.warmup_multistep_epochs(0.1, spe, warmup_epochs=5, milestone_epochs=[150, 180], decay=0.1)
    np.testing.assert_allclose(values(s, [0, 245, 490, 150 * 98 - 1, 150 * 98, 180 * 98 - 1, 180 * 98]),
                               [0, 0.05, 0.1, 0.1, 0.01, 0.01, 0.001], rtol=1e-5, atol=1e-9)
    assert recipes.epochs_to_steps(200, spe) == 19600 and recipes.epochs_to_steps(0.5, 3) == 2
    with pytest.raises(ValueError, match="no training samples"):
        recipes.steps_per_epoch(0, 32)


def test_warmup_cosine():
    s = recipes.warmup_cosine(1.0, total_steps=12, warmup_steps=2, final=0.1)
    v = values(s, range(14))
    np.testing.assert_allclose(v[:3], [0, 0.5, 1.0], atol=1e-6)
    assert np.all(np.diff(v[2:13]) < 0) and v[12] == pytest.approx(0.1) and v[13] == pytest.approx(0.1)
    plain = recipes.warmup_cosine(0.3, total_steps=10)
    np.testing.assert_allclose(values(plain, range(11)), values(optax.cosine_decay_schedule(0.3, 10), range(11)))
    short = recipes.warmup_cosine(1.0, total_steps=4, warmup_steps=20)  # a smoke test ends inside the warm-up
    assert np.all(np.diff(values(short, range(5))) > 0)
    ep = recipes.warmup_cosine_epochs(1.0, epochs=3, steps_per_epoch=4, warmup_epochs=1)
    assert float(ep(4)) == pytest.approx(1.0) and float(ep(12)) == pytest.approx(0.0, abs=1e-7)


def test_schedule_from_spec_kinds_and_errors():
    s = recipes.schedule_from_spec({"kind": "warmup_multistep", "warmup_epochs": 1, "milestones": [0.5]}, 2.0,
                                   total_steps=10, steps_per_epoch=2)
    np.testing.assert_allclose(values(s, [0, 1, 2, 4, 5]), [0, 1, 2, 2, 0.2], rtol=1e-6)
    s = recipes.schedule_from_spec({"kind": "warmup_multistep", "milestone_epochs": [2], "decay": 0.5}, 1.0, 10, 3)
    np.testing.assert_allclose(values(s, [5, 6]), [1, 0.5])
    s = recipes.schedule_from_spec({"kind": "constant", "warmup_steps": 2, "warmup_start": "base"}, 1.0, 10,
                                   lr_factor=4.0)
    np.testing.assert_allclose(values(s, [0, 1, 2, 9]), [0.25, 0.625, 1, 1])
    with pytest.raises(ValueError, match="valid: constant, warmup_multistep, warmup_cosine"):
        recipes.schedule_from_spec({"kind": "step"}, 1.0, 10)
    with pytest.raises(ValueError, match="unknown key.*'final'"):
        recipes.schedule_from_spec({"kind": "warmup_multistep", "final": 0.1}, 1.0, 10)
    with pytest.raises(ValueError, match="fractions"):
        recipes.schedule_from_spec({"kind": "warmup_multistep", "milestones": [150]}, 1.0, 10)
    with pytest.raises(ValueError, match="needs a dataset task"):
        recipes.schedule_from_spec({"kind": "constant", "warmup_epochs": 1}, 1.0, 10, steps_per_epoch=None)
    with pytest.raises(ValueError, match="not both"):
        recipes.schedule_from_spec({"kind": "constant", "warmup_epochs": 1, "warmup_steps": 3}, 1.0, 10, 2)


# ---------------------------------------------------------------- scaling and weight decay


def test_scaled_lr_rules():
    assert recipes.scaled_lr(0.1, 16, 32, "linear", base_batch=64) == pytest.approx(0.8)  # QGM, 16-ring
    assert recipes.scaled_lr(0.1, 32, 32, "linear", base_batch=64) == pytest.approx(1.6)  # QGM, social network
    assert recipes.scaled_lr(0.1, 16, 32, "sqrt", base_batch=128) == pytest.approx(0.2)
    assert recipes.scaled_lr(0.1, 16, 32, "none") == pytest.approx(0.1)
    assert recipes.scaled_lr(0.1, 4, 32) == pytest.approx(0.4)  # base_batch defaults to the batch: x n
    with pytest.raises(ValueError, match="valid: linear, sqrt, none"):
        recipes.scaled_lr(0.1, 4, 32, "cubic")


def test_no_decay_mask_spares_norm_and_bias_in_the_local_optimizer():
    import flax.linen as nn

    class Net(nn.Module):  # a kernel, a bias and a normalisation scale/bias, as in the conv nets
        @nn.compact
        def __call__(self, x):
            return nn.GroupNorm(num_groups=2)(nn.Dense(4)(x))

    params = Net().init(jax.random.PRNGKey(0), jnp.ones((1, 3)))
    mask_fn = recipes.weight_decay_mask(False)
    assert recipes.weight_decay_mask(True) is None
    opt = local_optimizer(0.5, weight_decay=0.1, weight_decay_mask=mask_fn)
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    updates, _ = opt.update(zeros, opt.init(params), params)
    flat_u = jax.tree_util.tree_flatten_with_path(updates)[0]
    flat_p = dict(jax.tree_util.tree_flatten_with_path(params)[0])
    kinds = set()
    for path, u in flat_u:
        name = path[-1].key
        kinds.add(name)
        expected = -0.5 * 0.1 * flat_p[path] if name == "kernel" else jnp.zeros_like(u)
        np.testing.assert_allclose(u, expected, rtol=1e-6, atol=1e-8, err_msg=str(path))
    assert {"kernel", "scale", "bias"} <= kinds
    with pytest.raises(ValueError, match="true or false"):
        recipes.weight_decay_mask("no")


# ---------------------------------------------------------------- config keys


TASK = SimpleNamespace(n_workers=4, shard_size=100)  # what the recipes read from a task
TRAIN = {"steps": 50, "batch_size": 10}  # 10 steps per epoch


def test_resolve_run_kwargs_schedule_scaling_and_passthrough():
    run = {"name": "r", "algorithm": "dsgd", "topology": "ring", "learning_rate": 0.1, "momentum": 0.9,
           "lr_scaling": {"rule": "linear", "base_batch": 20},
           "schedule": {"kind": "warmup_multistep", "warmup_epochs": 1, "milestones": [0.8]}}
    kw = recipes.resolve_run_kwargs(run, TASK, TRAIN)
    assert set(kw) == {"learning_rate", "momentum"}  # recipe and topology keys are consumed
    lr = kw["learning_rate"]  # peak 0.1 * 4 * 10 / 20 = 0.2, warm-up 10 steps, x0.1 from step 40
    np.testing.assert_allclose(values(lr, [5, 10, 39, 40]), [0.1, 0.2, 0.2, 0.02], rtol=1e-6)
    assert recipes.resolve_run_kwargs({"algorithm": "dsgd", "learning_rate": 0.1, "lr_scaling": "sqrt"},
                                      TASK, TRAIN)["learning_rate"] == pytest.approx(0.2)
    plain = recipes.resolve_run_kwargs({"algorithm": "dsgd", "learning_rate": 0.1}, TASK, TRAIN)
    assert plain == {"learning_rate": 0.1}
    with pytest.raises(ValueError, match="need a learning_rate"):
        recipes.resolve_run_kwargs({"algorithm": "cdsgd", "schedule": {"kind": "constant"}}, TASK, TRAIN)


def test_resolve_run_kwargs_decay_norm_local_epochs_and_clr():
    kw = recipes.resolve_run_kwargs({"algorithm": "dsgd", "learning_rate": 0.1, "weight_decay": 1e-4,
                                     "decay_norm": False}, TASK, TRAIN)
    from simdl.models import no_decay_mask

    assert kw["weight_decay_mask"] is no_decay_mask
    with pytest.raises(ValueError, match="qg_dsgdm has no weight_decay_mask.*dsgd"):
        recipes.resolve_run_kwargs({"algorithm": "qg_dsgdm", "learning_rate": 0.1, "weight_decay": 1e-4,
                                    "decay_norm": False}, TASK, TRAIN)
    assert "weight_decay_mask" not in recipes.resolve_run_kwargs(
        {"algorithm": "qg_dsgdm", "learning_rate": 0.1, "decay_norm": False}, TASK, TRAIN)  # no decay: harmless
    kw = recipes.resolve_run_kwargs({"algorithm": "local_sgd", "learning_rate": 0.1, "local_epochs": 2}, TASK, TRAIN)
    assert kw == {"learning_rate": 0.1, "local_steps": 20}
    with pytest.raises(ValueError, match="local_steps or local_epochs"):
        recipes.resolve_run_kwargs({"algorithm": "local_sgd", "learning_rate": 0.1, "local_epochs": 1,
                                    "local_steps": 3}, TASK, TRAIN)
    with pytest.raises(ValueError, match="not dsgd"):
        recipes.resolve_run_kwargs({"algorithm": "dsgd", "learning_rate": 0.1, "local_epochs": 1}, TASK, TRAIN)
    clr = recipes.resolve_run_kwargs({"algorithm": "model_averaging_clr", "local_epochs": 2}, TASK, TRAIN)
    assert clr == {"local_epochs": 2, "steps_per_epoch": 10}
    with pytest.raises(ValueError, match="own cyclical schedule"):
        recipes.resolve_run_kwargs({"algorithm": "model_averaging_clr", "learning_rate": 0.1,
                                    "schedule": {"kind": "constant"}}, TASK, TRAIN)


def test_learning_rate_fn_with_a_traced_learning_rate():
    run = {"algorithm": "dsgd", "lr_scaling": "linear",
           "schedule": {"kind": "warmup_cosine", "warmup_steps": 5, "final": 0.0}}
    to_lr = recipes.learning_rate_fn(run, TASK, TRAIN)
    traced = jax.jit(lambda lr, t: to_lr(lr)(t))
    ref = to_lr(0.05)
    for t in [0, 3, 5, 20, 49]:
        assert float(traced(jnp.float32(0.05), t)) == pytest.approx(float(ref(t)), rel=1e-5)
    assert float(ref(5)) == pytest.approx(0.2)  # 0.05 scaled x4 (n = 4, base batch = batch)
    no_sched = recipes.learning_rate_fn({"algorithm": "dsgd"}, TASK, TRAIN)
    assert float(jax.jit(lambda lr: no_sched(lr)(7))(jnp.float32(0.3))) == pytest.approx(0.3)


def test_resolve_train_epochs():
    assert recipes.resolve_train({"epochs": 2.5, "batch_size": 10}, TASK)["steps"] == 25
    assert recipes.resolve_train({"batch_size": 10}, TASK)["steps"] == recipes.DEFAULT_STEPS
    assert recipes.resolve_train({"steps": 7, "batch_size": 10}, TASK)["steps"] == 7
    with pytest.raises(ValueError, match="both steps=7 and epochs=2"):
        recipes.resolve_train({"steps": 7, "epochs": 2, "batch_size": 10}, TASK)
    with pytest.raises(ValueError, match="epochs are undefined"):
        recipes.resolve_train({"epochs": 2, "batch_size": 10}, SimpleNamespace(n_workers=4, shard_size=0))


# ---------------------------------------------------------------- scale presets


def test_apply_scale_tiny_and_full():
    cfg = {"task": {"dataset": "cifar10", "model": "vgg11", "n_workers": 16, "dataset_kwargs": {"data_dir": "/d"}},
           "train": {"epochs": 200, "batch_size": 32, "eval_every": 980, "seed": 3},
           "runs": [{"algorithm": "relaysgd", "schedule": {"kind": "constant"}}]}
    tiny = apply_scale(apply_override(cfg, "scale=tiny"))
    assert tiny["scale"] == "tiny" and "epochs" not in tiny["train"]
    assert tiny["train"] == {"steps": 4, "batch_size": 2, "eval_every": 2, "seed": 3}
    assert tiny["task"]["model"] == TINY_MODEL and tiny["task"]["n_workers"] == 16
    assert tiny["task"]["dataset_kwargs"] == {"data_dir": "/d", "max_train": 128, "max_test": 32, "stand_in": True}
    assert tiny["runs"] == cfg["runs"] and cfg["train"]["epochs"] == 200  # input untouched
    mlp = apply_scale({"task": {"dataset": "digits", "model": "mlp"}}, "tiny")["task"]
    assert mlp["model"] == "mlp" and mlp["model_kwargs"] == {"hidden": [8]} and "dataset_kwargs" not in mlp
    assert apply_scale(cfg) == {**cfg, "scale": "full"}
    with pytest.raises(ValueError, match="valid: full, tiny"):
        apply_scale(cfg, "huge")
