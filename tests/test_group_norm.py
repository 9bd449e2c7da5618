"""simdl.models.norms.GroupNorm: the values and gradients of flax.linen.GroupNorm, with its own VJP."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from simdl.models import get_model
from simdl.models.norms import GroupNorm


@pytest.fixture(autouse=True)
def _x64():
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", False)


def _setup(shape, groups, dtype=jnp.float64):
    rng = np.random.RandomState(sum(shape) + groups)
    x = jnp.asarray(rng.randn(*shape) * 3 + 1.5, dtype)
    r = jnp.asarray(rng.randn(*shape), dtype)
    ref = nn.GroupNorm(num_groups=groups, epsilon=1e-5, param_dtype=dtype, dtype=dtype)
    p = ref.init(jax.random.PRNGKey(0), x)
    p = jax.tree_util.tree_map(lambda a: a + jnp.asarray(rng.randn(*a.shape), dtype), p)
    return x, r, ref, p


@pytest.mark.parametrize("shape,groups", [((3, 5, 4, 8), 2), ((2, 3, 3, 16), 4), ((2, 4, 4, 6), 3),
                                          ((1, 2, 2, 4), 1), ((2, 3, 3, 4), 4)])
def test_values_and_gradients_equal_flax(shape, groups):
    x, r, ref, p = _setup(shape, groups)
    mine = GroupNorm(groups=groups)
    np.testing.assert_allclose(mine.apply(p, x), ref.apply(p, x), rtol=0, atol=1e-12)
    g_ref = jax.grad(lambda p, x: jnp.sum(ref.apply(p, x) * r), argnums=(0, 1))(p, x)
    g_mine = jax.grad(lambda p, x: jnp.sum(mine.apply(p, x) * r), argnums=(0, 1))(p, x)
    for a, b in zip(jax.tree_util.tree_leaves(g_mine), jax.tree_util.tree_leaves(g_ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)


def test_second_order_gradient_equals_flax():
    x, r, ref, p = _setup((2, 3, 3, 4), 2)
    mine = GroupNorm(groups=2)

    def grad_norm(module):
        return lambda x: jnp.sum(jnp.square(jax.grad(lambda x: jnp.sum(jnp.sin(module.apply(p, x)) * r))(x)))

    np.testing.assert_allclose(jax.grad(grad_norm(mine))(x), jax.grad(grad_norm(ref))(x), rtol=1e-9, atol=1e-10)


def test_bfloat16_input_stays_bfloat16_and_close():
    x, _, ref, p = _setup((2, 4, 4, 8), 2, jnp.float32)
    y = GroupNorm(groups=2).apply(p, x.astype(jnp.bfloat16))
    assert y.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(y, np.float32), ref.apply(p, x), rtol=0, atol=0.1)


def test_same_parameter_tree_as_flax_groupnorm_in_resnet():
    model = get_model("resnet20", num_classes=10, norm="group")
    params = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3), jnp.float32))
    norms = [k for k in params["params"] if k.startswith("GroupNorm")]
    assert norms == ["GroupNorm_0"]
    assert set(params["params"]["GroupNorm_0"]) == {"scale", "bias"}


def test_bad_groups_and_rank():
    with pytest.raises(ValueError, match="groups=3"):
        GroupNorm(groups=3).init(jax.random.PRNGKey(0), jnp.zeros((1, 2, 2, 8)))
    with pytest.raises(ValueError, match="expects"):
        GroupNorm(groups=2).init(jax.random.PRNGKey(0), jnp.zeros((2, 8)))
