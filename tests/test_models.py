"""Models: shapes, parameter counts, registry errors, decay mask, conv implementations, per-worker apply."""

from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from simdl.models import (
    MODELS,
    Conv,
    EvoNormS0,
    ResNet20,
    SmallCNN,
    conv2d,
    count_params,
    get_model,
    no_decay_mask,
    per_worker_apply,
    resolve_strategy,
)
from simdl.models.conv import explicit_padding, kernel_grad_method
from simdl.models.resnet import BasicBlock

KEY = jax.random.key(0)

SHAPES = [
    ("mlp", (3, 8, 8, 1)),
    ("mlp", (3, 60)),
    ("logreg", (3, 60)),
    ("logreg", (3, 28, 28, 1)),
    ("cnn", (3, 8, 8, 1)),
    ("cnn", (3, 28, 28, 1)),
    ("cnn", (3, 32, 32, 3)),
    ("lenet5", (3, 28, 28, 1)),
    ("lenet5", (3, 32, 32, 3)),
    ("cdsgd_cnn", (3, 28, 28, 1)),
    ("cdsgd_cnn", (3, 32, 32, 3)),
    ("resnet20", (2, 32, 32, 3)),
    ("vgg11", (2, 32, 32, 3)),
]


def _normal(seed, shape):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _labels(seed, shape):
    return jnp.asarray(np.random.default_rng(seed).integers(0, 10, size=shape), jnp.int32)


def _random_variables(net, x, n=None, seed=0):
    """Variables of ``net`` filled with numpy random numbers (no compiled init: keeps the tests fast); with
    ``n``, stacked for n workers, each different."""
    shapes = jax.eval_shape(net.init, KEY, x)
    rng = np.random.default_rng(seed)

    def fill(path, s):
        name = jax.tree_util.keystr(path)
        shape = s.shape if n is None else (n,) + s.shape
        if name.endswith(("['scale']", "['v']", "['var']")):
            return jnp.asarray(1.0 + 0.1 * rng.random(shape), jnp.float32)
        fan_in = int(np.prod(s.shape[:-1])) if len(s.shape) > 1 else 10
        return jnp.asarray(rng.normal(size=shape) / np.sqrt(fan_in), jnp.float32)

    return jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.mark.parametrize("name,shape", SHAPES)
def test_output_shape_and_dtype(name, shape):
    net = get_model(name, 7)
    x = jnp.zeros(shape)
    y = jax.eval_shape(net.apply, jax.eval_shape(net.init, KEY, x), x)
    assert y.shape == (shape[0], 7)
    assert y.dtype == jnp.float32


@pytest.mark.parametrize("name,shape", [("mlp", (3, 8, 8, 1)), ("logreg", (3, 60)), ("cnn", (3, 8, 8, 1))])
def test_small_models_run(name, shape):
    net = get_model(name, 7)
    x = _normal(0, shape)
    y = jax.jit(net.apply)(_random_variables(net, x), x)
    assert y.shape == (shape[0], 7) and y.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(y))) and float(jnp.std(y)) > 0


@pytest.mark.parametrize(
    "name,shape,kw,expected",
    [
        ("resnet20", (1, 32, 32, 3), {}, 272_474),
        ("resnet20", (1, 32, 32, 3), {"shortcut": "pad"}, 269_722),
        ("cdsgd_cnn", (1, 32, 32, 3), {}, 1_250_858),  # the Keras cifar10_cnn example's count
        ("lenet5", (1, 28, 28, 1), {}, 61_706),
        ("vgg11", (1, 32, 32, 3), {}, 9_225_610),
        ("mlp", (1, 64), {}, 64 * 128 + 128 + 128 * 10 + 10),
        ("logreg", (1, 60), {}, 610),
    ],
)
def test_param_counts(name, shape, kw, expected):
    shapes = jax.eval_shape(get_model(name, 10, **kw).init, KEY, jnp.zeros(shape))
    assert count_params(shapes["params"]) == expected
    if name == "resnet20":
        assert 0.26e6 < expected < 0.28e6


def test_unknown_model_lists_valid_names():
    with pytest.raises(ValueError) as err:
        get_model("resnet18", 10)
    for name in ("mlp", "logreg", "cnn", "lenet5", "cdsgd_cnn", "resnet20", "vgg11"):
        assert name in str(err.value)
    assert set(MODELS) == {"mlp", "logreg", "cnn", "lenet5", "cdsgd_cnn", "resnet20", "vgg11"}


@pytest.mark.parametrize(
    "name,num_classes,kw,match",
    [
        ("cnn", 0, {}, "num_classes"),
        ("cnn", 10, {"width": 3}, "width"),
        ("resnet20", 10, {"norm": "layer"}, "group, evonorm, batch, none"),
        ("resnet20", 10, {"groups": 3}, "groups"),
        ("resnet20", 10, {"shortcut": "conv"}, "projection"),
        ("cnn", 10, {"conv_impl": "cudnn"}, "auto, xla, patches, lax"),
        ("vgg11", 10, {"norm": "weird"}, "valid"),
        ("cdsgd_cnn", 10, {"dropout": 0.7}, "dropout"),
    ],
)
def test_bad_arguments_raise(name, num_classes, kw, match):
    with pytest.raises(ValueError, match=match):
        get_model(name, num_classes, **kw)


@pytest.mark.parametrize(
    "name,shape", [("lenet5", (1, 8, 8, 1)), ("vgg11", (1, 28, 28, 1)), ("cnn", (1, 64))]
)
def test_too_small_or_flat_images_raise(name, shape):
    with pytest.raises(ValueError, match="NHWC|at least"):
        get_model(name, 10).init(KEY, jnp.zeros(shape))


@pytest.mark.parametrize("norm", ["group", "evonorm", "batch"])
def test_no_decay_mask_excludes_norm_params_and_biases(norm):
    variables = jax.eval_shape(ResNet20(10, norm=norm).init, KEY, jnp.zeros((1, 8, 8, 3)))
    mask = no_decay_mask(variables)
    flat = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(mask)}
    norm_leaves = [k for k in flat if "Norm" in k]
    assert norm_leaves, "the model has normalisation parameters"
    assert not any(flat[k] for k in norm_leaves)
    assert not any(v for k, v in flat.items() if k.endswith("['bias']"))
    kernels = [k for k in flat if k.endswith("['kernel']")]
    assert len(kernels) == 1 + 9 * 2 + 2 * 1 + 1  # stem, 9 blocks × 2, 2 projection shortcuts, classifier
    assert all(flat[k] for k in kernels)
    assert sum(flat.values()) == len(kernels)


def test_no_decay_mask_with_optax():
    shapes = jax.eval_shape(get_model("cnn", 10).init, KEY, jnp.zeros((1, 8, 8, 1)))
    params = jax.tree_util.tree_map(lambda s: jnp.ones(s.shape), shapes)
    tx = optax.add_decayed_weights(0.5, mask=no_decay_mask(params))
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params)
    for path, u in jax.tree_util.tree_leaves_with_path(updates):
        expected = 0.5 if jax.tree_util.keystr(path).endswith("['kernel']") else 0.0
        np.testing.assert_allclose(u, expected)


def test_evonorm_matches_formula():
    x = _normal(0, (2, 4, 4, 8)) * 3.0 + 1.0
    layer = EvoNormS0(groups=2)
    variables = jax.eval_shape(layer.init, KEY, x)
    p = {"v": jnp.linspace(0.5, 1.5, 8), "scale": jnp.linspace(-1, 2, 8), "bias": jnp.linspace(0, 1, 8)}
    y = jax.jit(layer.apply)({"params": p}, x)
    assert set(variables["params"]) == {"v", "scale", "bias"}
    xn, v, g, b = (np.asarray(a, np.float64) for a in (x, p["v"], p["scale"], p["bias"]))
    ref = np.empty_like(xn)
    for i in range(2):
        for grp in range(2):
            sl = slice(4 * grp, 4 * grp + 4)
            std = np.sqrt(xn[i, :, :, sl].var() + 1e-5)
            ref[i, :, :, sl] = xn[i, :, :, sl] / (1 + np.exp(-v[sl] * xn[i, :, :, sl])) / std
    np.testing.assert_allclose(y, ref * g + b, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="groups"):
        jax.eval_shape(EvoNormS0(groups=3).init, KEY, x)


def test_batchnorm_variant_updates_batch_stats():
    net = BasicBlock(8, strides=2, norm="batch")  # the block ResNet20(norm="batch") is built from
    x = _normal(0, (2, 6, 6, 4)) + 2.0
    variables = _random_variables(net, x)
    assert set(variables) == {"params", "batch_stats"}
    apply = jax.jit(net.apply, static_argnames=("train", "mutable"))
    y_train, updates = apply(variables, x, train=True, mutable=("batch_stats",))
    assert y_train.shape == (2, 3, 3, 8)
    old, new = variables["batch_stats"], updates["batch_stats"]
    assert jax.tree_util.tree_structure(old) == jax.tree_util.tree_structure(new)
    assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(old), jax.tree.leaves(new), strict=True))
    y_eval = apply(variables, x)  # running averages, no mutation needed
    assert not np.allclose(y_eval, y_train)


def test_cdsgd_dropout_only_in_training():
    net = get_model("cdsgd_cnn", 10, dropout=0.25)
    x = _normal(0, (2, 12, 12, 1))
    variables = _random_variables(net, x)
    apply = jax.jit(net.apply, static_argnames="train")
    y_eval = apply(variables, x)
    np.testing.assert_array_equal(y_eval, apply(variables, x, train=False))
    y1 = apply(variables, x, train=True, rngs={"dropout": jax.random.key(1)})
    y2 = apply(variables, x, train=True, rngs={"dropout": jax.random.key(2)})
    assert not np.allclose(y1, y2) and not np.allclose(y1, y_eval)


# ---- convolution implementations ----

CONV_CASES = [  # (stride-1 and even stride-2 SAME 3×3 are covered by the model tests below)
    ((2, 9, 9, 3), (3, 3, 3, 5), (2, 2), "SAME"),
    ((2, 9, 7, 2), (3, 3, 2, 4), (2, 2), "VALID"),
    ((2, 8, 8, 4), (1, 1, 4, 6), (2, 2), "SAME"),
    ((2, 10, 10, 2), (5, 5, 2, 3), (1, 1), "VALID"),
    ((2, 8, 8, 2), (3, 3, 2, 3), (1, 1), ((2, 0), (1, 3))),
    # every kernel-gradient formulation (kernel_grad_method): per-tap matmuls (stride 1, ≥ 100 output pixels),
    # channels-as-batch convolution (small maps, or strides), row-shifted im2col (≤ 4 input channels)
    ((2, 12, 12, 8), (3, 3, 8, 4), (1, 1), "SAME"),
    ((2, 12, 11, 6), (3, 3, 6, 5), (1, 1), ((0, 2), (1, 1))),
    ((2, 6, 6, 8), (3, 3, 8, 3), (1, 1), "SAME"),
    ((2, 7, 6, 8), (3, 3, 8, 3), (2, 2), "VALID"),
]


def test_conv_cases_cover_every_kernel_gradient_method():
    methods = set()
    for xs, ks, strides, padding in CONV_CASES:
        pads = explicit_padding(xs[1:3], ks[:2], strides, padding)
        out = [(n + p[0] + p[1] - k) // s + 1 for n, k, s, p in zip(xs[1:3], ks[:2], strides, pads, strict=True)]
        methods.add(kernel_grad_method(ks, out, strides))
    assert methods == {"taps", "conv", "im2col"}


@pytest.mark.parametrize("xs,ks,strides,padding", CONV_CASES)
def test_conv2d_matches_lax_values_and_grads_under_vmap(xs, ks, strides, padding):
    x = _normal(1, (2,) + xs)
    k = _normal(2, (2,) + ks)
    dn = ("NHWC", "HWIO", "NHWC")

    @jax.jit
    def all_impls(x, k):
        ref = jax.vmap(partial(jax.lax.conv_general_dilated, window_strides=strides, padding=padding,
                               dimension_numbers=dn))
        out = {"ref": ref(x, k)}
        for impl in ("lax", "xla", "patches"):
            f = jax.vmap(lambda a, b, impl=impl: conv2d(a, b, strides, padding, impl))
            out[impl] = (f(x, k), jax.grad(lambda x, k, f=f: jnp.sum(jnp.sin(f(x, k))), (0, 1))(x, k))
        return out

    out = all_impls(x, k)
    np.testing.assert_allclose(out["lax"][0], out["ref"], rtol=1e-4, atol=1e-4)
    for impl in ("xla", "patches"):
        for a, b in zip(jax.tree.leaves(out["lax"]), jax.tree.leaves(out[impl]), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_conv_module_is_parameter_compatible_with_nn_conv():
    x = _normal(0, (2, 9, 9, 3))
    ref = nn.Conv(8, (3, 3), strides=2, padding="SAME")
    params = _random_variables(ref, x)
    ours = Conv(8, (3, 3), strides=2, padding="SAME")
    assert jax.tree.map(jnp.shape, jax.eval_shape(ours.init, KEY, x)) == jax.tree.map(jnp.shape, params)

    @jax.jit
    def outs(params, x):
        impls = ("auto", "xla", "patches", "lax")
        return ref.apply(params, x), [Conv(8, (3, 3), 2, "SAME", impl=i).apply(params, x) for i in impls]

    expected, got = outs(params, x)
    for out in got:
        np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="padding"):
        conv2d(x, jnp.zeros((3, 3, 3, 8)), padding="FULL")
    with pytest.raises(ValueError, match="channels"):
        conv2d(x, jnp.zeros((3, 3, 4, 8)))


def _value_and_grad(net, variables, x, y, strategy="vmap"):
    fwd = per_worker_apply(net.apply, strategy)

    def loss(v):
        return jnp.sum(optax.softmax_cross_entropy_with_integer_labels(fwd(v, x), y))

    return jax.value_and_grad(loss)(variables)


def test_model_conv_impls_agree_under_vmap():
    n, shape = 2, (3, 8, 8, 1)
    x = _normal(3, (n,) + shape)
    y = _labels(4, (n, shape[0]))
    variables = _random_variables(SmallCNN(10), x[0], n)

    @jax.jit
    def all_impls(variables):
        impls = ("lax", "xla", "patches")
        return {i: _value_and_grad(SmallCNN(10, conv_impl=i), variables, x, y) for i in impls}

    out = all_impls(variables)
    for impl in ("xla", "patches"):
        for a, b in zip(jax.tree.leaves(out["lax"]), jax.tree.leaves(out[impl]), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_resnet_block_conv_impls_agree_under_vmap():
    """A downsampling block: stride-2 3×3 conv, 1×1 stride-2 projection, GroupNorm."""
    n = 2
    x = _normal(5, (n, 2, 8, 8, 16))
    impls = ("lax", "xla", "patches")
    variables = _random_variables(BasicBlock(32, strides=2), x[0], n)

    @jax.jit
    def all_impls(variables):
        out = {}
        for impl in impls:
            f = jax.vmap(BasicBlock(32, strides=2, conv_impl=impl).apply)
            out[impl] = jax.value_and_grad(lambda v, f=f: jnp.sum(jnp.tanh(f(v, x))))(variables)
        return out

    out = all_impls(variables)
    for impl in ("xla", "patches"):
        for a, b in zip(jax.tree.leaves(out["lax"]), jax.tree.leaves(out[impl]), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


# ---- per-worker strategies ----


def test_per_worker_strategies_agree():
    n = 3
    net = SmallCNN(10)
    x = _normal(6, (n, 4, 8, 8, 1))
    y = _labels(7, (n, 4))
    variables = _random_variables(net, x[0], n)

    @jax.jit
    def all_strategies(variables):
        grads = {s: _value_and_grad(net, variables, x, y, s) for s in ("vmap", "map", "loop")}
        one = net.apply(jax.tree.map(lambda a: a[1], variables), x[1])
        return grads, one, per_worker_apply(net.apply, "map", map_batch_size=2)(variables, x)

    grads, one, batched = all_strategies(variables)
    for strategy in ("map", "loop"):
        for a, b in zip(jax.tree.leaves(grads["vmap"]), jax.tree.leaves(grads[strategy]), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    # worker i's output depends only on worker i's params and data
    np.testing.assert_allclose(batched[1], one, rtol=1e-4, atol=1e-4)
    assert not np.allclose(batched[0], batched[1])


def test_per_worker_strategy_resolution_and_errors():
    stack = lambda tree: jax.tree.map(lambda a: jax.ShapeDtypeStruct((5,) + a.shape, a.dtype), tree)  # noqa: E731
    conv_params = stack(jax.eval_shape(SmallCNN(10).init, KEY, jnp.zeros((1, 8, 8, 1))))
    mlp_params = stack(jax.eval_shape(get_model("mlp", 10).init, KEY, jnp.zeros((1, 64))))
    assert resolve_strategy("auto", conv_params, backend="cpu") == "map"
    assert resolve_strategy("auto", mlp_params, backend="cpu") == "vmap"
    assert resolve_strategy("auto", conv_params, backend="gpu") == "vmap"
    assert resolve_strategy("loop", conv_params) == "loop"
    with pytest.raises(ValueError, match="vmap, map, loop, auto"):
        per_worker_apply(lambda p, x: x, "pmap")
    with pytest.raises(ValueError, match="map_batch_size"):
        per_worker_apply(lambda p, x: x, "map", map_batch_size=0)
    with pytest.raises(ValueError, match="leading"):
        per_worker_apply(lambda p, x: x, "vmap")({"w": jnp.zeros((3, 2))}, jnp.zeros((4, 2)))
