"""Mixed precision: ``compute_dtype="bfloat16"`` runs the per-worker forward/backward passes in bfloat16 while the
parameters, optimizer state, gradients seen by the algorithm, mixing and metrics stay float32."""

import json
import re
import sys
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import simdl
from simdl.algorithms import dsgd
from simdl.algorithms.base import Context
from simdl.cli import main
from simdl.metrics import consensus_distance
from simdl.mixing import make_mixer
from simdl.models import get_model
from simdl.runtime import build_step, cast_floating, in_compute_dtype, per_worker_grads, simulate_batch

T = simdl.topologies
#: Tolerances of bf16 per-worker gradients vs float32 (SmallCNN on digits at x⁰ + noise, B = 32), measured: the
#: whole gradient's relative error is 3-5% per worker (cosine ≥ 0.999). That is intrinsic to bfloat16 (8-bit
#: mantissa, relative rounding 2^-9 per value): merely rounding the float32 parameters to bf16 and computing in
#: float32 already moves it by 2-3%, because the lower layers' gradients are sums of cancelling per-sample terms
#: routed through ReLUs. The output layer's gradient agrees to < 1%.
GRAD_RTOL = 0.1  # relative error of each worker's whole gradient
GRAD_COS = 0.995  # cosine similarity of each worker's whole gradient
OUTPUT_LAYER_RTOL = 2e-2  # relative error of the last Dense layer's kernel gradient
ROUNDING_FACTOR = 3.0  # bf16 compute error <= this x the error from rounding only the params to bf16


def _float_dtypes(tree) -> set[str]:
    return {str(x.dtype) for x in jax.tree_util.tree_leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)}


def _perturbed(params, n: int, scale: float = 0.05, seed: int = 0):
    """n different workers: x⁰ plus per-worker Gaussian noise, stacked on axis 0."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    out = [x[None] + scale * jax.random.normal(k, (n,) + x.shape, x.dtype) for x, k in zip(leaves, keys, strict=True)]
    return jax.tree_util.tree_unflatten(treedef, out)


def _batches(task, n: int, batch_size: int, step: int = 0, data=None):
    keys = jax.vmap(partial(jax.random.fold_in, jax.random.PRNGKey(1)))(jnp.arange(n))
    data = task.data if data is None else data
    return jax.vmap(task.sample, in_axes=(None, 0, 0, None, None))(data, keys, jnp.arange(n), step, batch_size)


def _dot_conv_types(hlo_text: str) -> list[set[str]]:
    """For every dot_general / convolution of a lowered StableHLO module: the element types of its operands and
    result (e.g. ``{"bf16"}``)."""
    lines = [ln for ln in hlo_text.splitlines() if "stablehlo.dot_general" in ln or "stablehlo.convolution" in ln]
    return [set(re.findall(r"tensor<(?:[0-9]+x)*([a-z]+[0-9]+)>", ln)) for ln in lines]


@pytest.fixture(scope="module")
def digits_cnn():
    return simdl.tasks.classification("digits", "cnn", n_workers=4, partition="iid", seed=0)


@pytest.fixture(scope="module")
def digits_mlp():
    return simdl.tasks.classification("digits", "mlp", n_workers=4, partition="iid", seed=0)


# --------------------------------------------------------------------------- mixing and state stay float32


def test_mixing_and_consensus_distance_are_float32_and_unchanged(digits_mlp):
    """A step with learning rate 0 is exactly the mixing step: with bf16 compute it gives the float32 mixing of
    the same float32 params (bit for bit the float32-compute step) and the same consensus distance."""
    task, n = digits_mlp, 4
    topo = T.ring(n)
    mixer = make_mixer(topo, "dense")
    alg = dsgd(lambda t: 0.0, momentum=0.9)  # a zero schedule (a float learning rate must be > 0)
    steps = {dt: build_step(task, alg, topo, mixer, 16, compute_dtype=dt) for dt in ("float32", "bfloat16")}

    @jax.jit  # one compilation for everything (eager ops would compile one by one)
    def run(data):
        params = _perturbed(task.init_params(jax.random.PRNGKey(0)), n)
        key = jax.random.PRNGKey(2)
        state0 = alg.init(params, Context(jnp.int32(0), key, topo, partial(mixer, step=0),
                                          np.asarray(task.worker_weights)))
        worker_keys = jax.vmap(partial(jax.random.fold_in, jax.random.PRNGKey(1)))(jnp.arange(n))
        out = {dt: step(state0, jnp.int32(0), data, worker_keys, key)[:2] for dt, step in steps.items()}
        expected = mixer(params, step=0)  # float32 mixing of the same params
        xi = {dt: consensus_distance(alg.params(state)) for dt, (state, _) in out.items()}
        return out, expected, xi, consensus_distance(expected)

    out, expected, xi, xi_ref = run(task.data)
    for dt, (state, loss) in out.items():
        assert _float_dtypes(state) == {"float32"} and loss.dtype == jnp.float32, dt  # momentum buffers included
    mixed, ref = alg.params(out["bfloat16"][0]), alg.params(out["float32"][0])
    for got, want, r in zip(jax.tree_util.tree_leaves(mixed), jax.tree_util.tree_leaves(expected),
                            jax.tree_util.tree_leaves(ref), strict=True):
        assert got.dtype == want.dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(r))  # = the float32-compute step, bit for bit
    assert xi["bfloat16"].dtype == jnp.float32 and float(xi_ref) > 0
    np.testing.assert_allclose(float(xi["bfloat16"]), float(xi_ref), rtol=1e-6)
    assert float(xi["bfloat16"]) == float(xi["float32"])


def test_params_and_optimizer_state_stay_float32_after_a_run(digits_mlp):
    res = simdl.simulate(digits_mlp, dsgd(0.1, momentum=0.9), T.ring(4), steps=10, batch_size=16, eval_every=5,
                         compute_dtype="bfloat16")
    assert _float_dtypes(res.params) == {"float32"}
    assert _float_dtypes(res.state) == {"float32"}  # momentum buffers included
    assert res.info["compute_dtype"] == "bfloat16"
    assert all(np.isfinite(v) for v in res.final.values())


# --------------------------------------------------------------------------- gradients


def test_bf16_per_worker_grads_agree_with_float32(digits_cnn):
    task, n = digits_cnn, 4
    grads_fn = {dt: per_worker_grads(task.loss, execution="map", compute_dtype=dt) for dt in ("float32", "bfloat16")}

    @jax.jit
    def run(data):
        params = _perturbed(task.init_params(jax.random.PRNGKey(0)), n)
        batch = _batches(task, n, 32, data=data)
        rounded = jax.tree_util.tree_map(lambda x: x.astype(jnp.bfloat16).astype(jnp.float32), params)
        out = {dt: f(params, batch) for dt, f in grads_fn.items()}
        out["rounded"] = grads_fn["float32"](rounded, batch)  # float32 compute on params rounded to bf16
        return out

    out = run(task.data)
    for dt in ("float32", "bfloat16"):
        losses, grads = out[dt]
        assert losses.dtype == jnp.float32 and losses.shape == (n,) and _float_dtypes(grads) == {"float32"}
    (l32, g32), (l16, g16), (_, g_rounded) = out["float32"], out["bfloat16"], out["rounded"]
    np.testing.assert_allclose(np.asarray(l16), np.asarray(l32), rtol=1e-2)

    def flat(g):
        return np.concatenate([np.asarray(x).reshape(n, -1) for x in jax.tree_util.tree_leaves(g)], axis=1)

    def rel_err(a, b):
        return np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)

    f32, f16 = flat(g32), flat(g16)
    rel = rel_err(f16, f32)
    cos = np.sum(f16 * f32, 1) / (np.linalg.norm(f16, axis=1) * np.linalg.norm(f32, axis=1))
    assert rel.max() < GRAD_RTOL and cos.min() > GRAD_COS, (rel, cos)
    assert rel.min() > 0  # bf16 really changed the computation
    assert np.all(rel <= ROUNDING_FACTOR * rel_err(flat(g_rounded), f32)), rel
    last = g32["params"]["Dense_1"]["kernel"]
    out_rel = rel_err(flat(g16["params"]["Dense_1"]["kernel"]), flat(last))
    assert out_rel.max() < OUTPUT_LAYER_RTOL, out_rel


def test_float32_compute_dtype_is_the_plain_loss(digits_cnn):
    assert in_compute_dtype(digits_cnn.loss, "float32") is digits_cnn.loss


# --------------------------------------------------------------------------- models really compute in bf16


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_classification_step_runs_dots_and_convs_in_bf16(model):
    kw = {"model_kwargs": {"conv_impl": "xla"}} if model == "cnn" else {}  # a real convolution op (auto: im2col)
    task = simdl.tasks.classification("digits", model, n_workers=2, partition="iid", seed=0, **kw)
    params = jax.eval_shape(lambda: _perturbed(task.init_params(jax.random.PRNGKey(0)), 2))  # abstract: lowered only
    batch = jax.eval_shape(lambda: _batches(task, 2, 8))
    for dt, tag in (("bfloat16", "bf16"), ("float32", "f32")):
        text = jax.jit(per_worker_grads(task.loss, compute_dtype=dt)).lower(params, batch).as_text()
        types = _dot_conv_types(text)
        assert types and all(t == {tag} for t in types), (dt, types)
    if model == "cnn":
        assert any("stablehlo.convolution" in ln for ln in text.splitlines())


@pytest.mark.parametrize("model,kw,shape", [
    ("cnn", {"conv_impl": "xla"}, (2, 8, 8, 8)),
    ("cnn", {"conv_impl": "patches"}, (2, 8, 8, 3)),
    ("cnn", {"conv_impl": "lax"}, (2, 8, 8, 3)),
    ("resnet20", {"norm": "group"}, (2, 8, 8, 3)),
    ("resnet20", {"norm": "evonorm"}, (2, 8, 8, 3)),
    ("vgg11", {}, (2, 32, 32, 3)),
])
def test_models_compute_in_bf16_given_bf16_params_and_inputs(model, kw, shape):
    net = get_model(model, 10, **kw)
    x = jax.ShapeDtypeStruct(shape, jnp.float32)  # abstract: only traced and lowered, nothing runs
    params = jax.eval_shape(net.init, jax.random.PRNGKey(0), x)

    def loss(p, batch):
        return jnp.mean(jnp.square(net.apply(p, batch["x"]).astype(jnp.float32)))

    f = in_compute_dtype(loss, "bfloat16")
    types = _dot_conv_types(jax.jit(jax.value_and_grad(f)).lower(params, {"x": x}).as_text())
    assert types and all(t == {"bf16"} for t in types), types
    value, grads = jax.eval_shape(jax.value_and_grad(f), params, {"x": x})
    assert value.dtype == jnp.float32 and _float_dtypes(grads) == {"float32"}
    logits = jax.eval_shape(lambda p, x: net.apply(cast_floating(p, jnp.bfloat16), x.astype(jnp.bfloat16)), params, x)
    assert logits.dtype == jnp.bfloat16 and logits.shape == (shape[0], 10)
    assert jax.eval_shape(net.apply, params, x).dtype == jnp.float32  # float32 stays float32


# --------------------------------------------------------------------------- training reaches float32 accuracy


@pytest.mark.parametrize("model,steps,batch_size", [("mlp", 300, 32), ("cnn", 300, 16)])
def test_bf16_training_reaches_float32_accuracy(model, steps, batch_size):
    task = simdl.tasks.classification("digits", model, n_workers=4, partition="iid", seed=0)
    acc = {}
    for dt in ("float32", "bfloat16"):
        res = simdl.simulate(task, dsgd(0.1, momentum=0.9), T.ring(4), steps=steps, batch_size=batch_size,
                             eval_every=steps, compute_dtype=dt)
        assert res.diverged_at is None and res.info["compute_dtype"] == dt
        acc[dt] = res.final["avg_model_accuracy"]
    assert acc["float32"] > 0.9
    assert abs(acc["bfloat16"] - acc["float32"]) <= 0.01, acc


def test_quadratic_tasks_still_train_in_bf16():
    """Tasks without a model compute their loss in bf16 too (parameters and data are cast inside the loss); the
    state stays float32 and the runs still converge, to bf16 resolution."""
    quad = simdl.tasks.random_quadratics(n_workers=4, dim=5, zeta2=1.0, r0=10.0, seed=1)
    mean = simdl.tasks.mean_estimation(4, dim=5, noise=0.0)
    for task in (quad, mean):
        res = simdl.simulate(task, dsgd(0.3), T.complete(4), steps=200, eval_every=100, compute_dtype="bfloat16")
        ref = simdl.simulate(task, dsgd(0.3), T.complete(4), steps=200, eval_every=100)
        assert _float_dtypes(res.state) == {"float32"} and res.diverged_at is None
        x0 = {"x": jnp.zeros((1, 5), jnp.float32)}  # both tasks start at 0
        start = float(jax.jit(task.evaluate)(task.data, x0)["suboptimality"])
        assert res.final["suboptimality"] < 1e-3 * start
        np.testing.assert_allclose(np.asarray(res.params["x"]), np.asarray(ref.params["x"]), atol=0.1)


def test_simulate_batch_accepts_compute_dtype():
    quad = simdl.tasks.random_quadratics(n_workers=4, dim=3, seed=1)
    out = simulate_batch([quad, quad], lambda hp: dsgd(lambda t: hp["learning_rate"]),
                         [{"learning_rate": 0.1}, {"learning_rate": 0.2}], T.ring(4), steps=20, eval_every=10,
                         compute_dtype="bfloat16")
    assert [r.info["compute_dtype"] for r in out] == ["bfloat16", "bfloat16"]
    assert all(_float_dtypes(r.state) == {"float32"} for r in out)


# --------------------------------------------------------------------------- validation before compiling


@pytest.mark.parametrize("bad", ["float16", "bf16", None, jnp.bfloat16])
def test_invalid_compute_dtype_is_refused_before_compiling(monkeypatch, bad):
    quad = simdl.tasks.random_quadratics(n_workers=4, dim=3, seed=1)

    def no_compile(*a, **k):
        raise AssertionError("compiled before validating compute_dtype")

    monkeypatch.setattr(sys.modules["simdl.runtime.loop"], "build_chunk", no_compile)
    monkeypatch.setattr(sys.modules["simdl.memory"], "build_step", no_compile)
    msg = re.escape(f"compute_dtype must be 'float32' or 'bfloat16', got {bad!r}")
    with pytest.raises(ValueError, match=msg):
        simdl.simulate(quad, dsgd(0.1), T.ring(4), steps=5, compute_dtype=bad)
    with pytest.raises(ValueError, match=msg):
        simulate_batch([quad], lambda hp: dsgd(0.1), [{}], T.ring(4), steps=5, compute_dtype=bad)
    with pytest.raises(ValueError, match=msg):
        simdl.memory.estimate(quad, dsgd(0.1), T.ring(4), 4, compute_dtype=bad)


# --------------------------------------------------------------------------- config / CLI / sweep


CLI_CFG = """
[task]
dataset = "digits"
model = "mlp"
n_workers = 4
partition = "iid"
[train]
steps = 20
eval_every = 10
batch_size = 16
compute_dtype = "{dtype}"
[[runs]]
algorithm = "dsgd"
learning_rate = 0.1
momentum = 0.9
"""


def test_train_compute_dtype_through_the_cli(tmp_path, monkeypatch):
    seen = []
    real = simdl.simulate

    def spy(*args, **kwargs):
        res = real(*args, **kwargs)
        seen.append((kwargs.get("compute_dtype"), res.info["compute_dtype"], _float_dtypes(res.state)))
        return res

    monkeypatch.setattr(simdl, "simulate", spy)
    cfg = tmp_path / "c.toml"
    cfg.write_text(CLI_CFG.format(dtype="bfloat16"))
    assert main(["run", str(cfg), "--out", str(tmp_path / "o"), "--quiet", "--no-plots"]) == 0
    assert seen == [("bfloat16", "bfloat16", {"float32"})]
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    assert res["config"]["train"]["compute_dtype"] == "bfloat16"
    assert res["runs"][0]["compute_dtype"] == "bfloat16"  # from result.info (simdl.results.STRATEGY_KEYS)
    assert res["runs"][0]["status"] == "ok" and 0.0 <= res["runs"][0]["final"]["avg_model_accuracy"] <= 1.0


def test_bad_compute_dtype_in_the_config_is_rejected(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text(CLI_CFG.format(dtype="float16"))
    assert main(["run", str(cfg), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "compute_dtype must be 'float32' or 'bfloat16', got 'float16'" in capsys.readouterr().err
    assert not (tmp_path / "o" / "results.json").exists()
    assert main(["run", "--out", str(tmp_path / "o2"), "--quiet", "--set", "train.compute_dtype=fp8"]) == 2
    assert "got 'fp8'" in capsys.readouterr().err


SWEEP_CFG = """
[task]
kind = "random_quadratics"
n_workers = 4
dim = 3
[train]
steps = 20
eval_every = 10
[[runs]]
algorithm = "dsgd"
learning_rate = 0.1
[sweep]
"train.compute_dtype" = {values}
"""


def test_sweep_over_compute_dtype(tmp_path, capsys):
    cfg = tmp_path / "s.toml"
    cfg.write_text(SWEEP_CFG.format(values='["float32", "bfloat16"]'))
    assert main(["sweep", str(cfg), "--out", str(tmp_path / "o"), "--quiet", "--no-plots"]) == 0
    assert "2 runs in 2 compile groups" in capsys.readouterr().out  # a dtype is not batchable: one program each
    recs = [json.loads(p.read_text()) for p in sorted((tmp_path / "o" / "runs").glob("*.json"))]
    assert sorted(r["train"]["compute_dtype"] for r in recs) == ["bfloat16", "float32"]
    assert all(r["compute_dtype"] == r["train"]["compute_dtype"] for r in recs)
    assert all(r["status"] == "ok" for r in recs)
    bad = tmp_path / "bad.toml"
    bad.write_text(SWEEP_CFG.format(values='["float32", "half"]'))
    assert main(["sweep", str(bad), "--out", str(tmp_path / "o2"), "--quiet"]) == 2
    assert "compute_dtype must be 'float32' or 'bfloat16', got 'half'" in capsys.readouterr().err
    assert not list((tmp_path / "o2").glob("runs/*.json"))
