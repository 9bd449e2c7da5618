"""QGM options against float64 numpy transcriptions of the authors' code (Lin et al. 2021, arXiv 2102.04761;
github.com/epfml/quasi-global-momentum, ``code/pcode/optim``):

* ``qg_dsgdm(mu=…, local_step=…)``: ``decentralized_qg_sgd.py`` ``SGD.step`` (``--slow_buffer_conf``: factor,
  local_step);
* ``qg_adam(variant=…, normalize=…)``: ``decentralized_qg_adam{_v2,,_v1}.py`` ``Adam.step`` and ``normalize_tensor`` /
  ``get_tensor_norm``, transcribed in torch layout (OIHW conv, ``(out, in)`` linear) and compared through the
  flax-layout (HWIO, ``(in, out)``) leaves simdl uses.

A tiny stacked model (conv kernel, dense kernel, bias) on a ring of 4 workers with a fixed float64 W.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import simdl
from simdl.algorithms.base import Context
from simdl.algorithms.gossip import dsgd
from simdl.algorithms.qgm import NORMALIZATIONS, QG_ADAM_VARIANTS, qg_adam, qg_dsgdm

N = 4
SHAPES = {"bias": (3,), "conv": (3, 3, 2, 4), "dense": (5, 3)}  # flax layouts: HWIO conv, (in, out) dense
W = (np.eye(N) + np.roll(np.eye(N), 1, axis=1) + np.roll(np.eye(N), -1, axis=1)) / 3.0  # ring, Metropolis
TOPO = simdl.topologies.ring(N)


@pytest.fixture(autouse=True)
def _x64():
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", False)


def _mix(tree):
    return jax.tree_util.tree_map(lambda x: jnp.tensordot(jnp.asarray(W), x, axes=1), tree)


def _ctx(t):
    return Context(jnp.int32(t), jax.random.PRNGKey(t), TOPO, _mix, np.full(N, 1.0 / N))


def _tree(rng, scale=1.0):
    return {k: scale * rng.standard_normal((N,) + s) for k, s in SHAPES.items()}


def _j(tree):
    return {k: jnp.asarray(v, jnp.float64) for k, v in tree.items()}


def _np(tree):
    return {k: np.asarray(v, np.float64) for k, v in tree.items()}


def _wmix(tree):
    return {k: np.tensordot(W, v, axes=1) for k, v in tree.items()}


def _run(alg, x0, grads):
    state = alg.init(_j(x0), _ctx(0))
    assert all(v.dtype == jnp.float64 for v in state.params.values())
    out = []
    for t, g in enumerate(grads):
        state, aux = alg.step(state, _j(g), _ctx(t))
        out.append((state, aux))
    return out


def _close(got, want, tol=1e-11):
    got = _np(got)
    for k in SHAPES:
        np.testing.assert_allclose(got[k], want[k], rtol=tol, atol=tol, err_msg=k)


# ----------------------------------------------------------------------------------------------- qg_dsgdm


def _ref_qg_sgd(x, grads, lr_at, beta, nesterov, wd, factor, local_step):
    """decentralized_qg_sgd.py SGD.step, per leaf (all element-wise but the gossip)."""
    mb = {k: np.zeros_like(v) for k, v in x.items()}  # momentum_buffer
    vsb = {k: np.zeros_like(v) for k, v in x.items()}  # virtual_seq_buffer
    out = []
    for t, g in enumerate(grads):  # conf.local_index == t during step t
        lr = lr_at(t)
        half = {}
        for k in x:
            gk = g[k] + wd * x[k]
            m = mb[k] * beta + gk
            d = gk + beta * m if nesterov else m
            half[k] = x[k] - d * lr
        xp = _wmix(half)
        for k in x:
            vsb[k] = vsb[k] + (x[k] - xp[k]) / lr
        if t % local_step == 0:
            for k in x:
                mb[k] = mb[k] * (1 - factor) + factor * (vsb[k] / local_step)
                vsb[k] = np.zeros_like(vsb[k])
        x = xp
        out.append(({k: v.copy() for k, v in x.items()}, {k: v.copy() for k, v in mb.items()},
                    {k: v.copy() for k, v in vsb.items()}))
    return out


@pytest.mark.parametrize("momentum,nesterov,mu,local_step,wd,schedule", [
    (0.9, True, 0.9, 1, 0.0, False),  # the defaults
    (0.9, True, 0.8, 3, 1e-2, False),
    (0.5, False, None, 2, 0.0, False),  # mu=None ties μ to β
    (0.5, True, 0.9, 1, 0.0, False),  # default μ = 0.9 whatever β (reference factor 0.1)
    (0.9, False, 0.9, 4, 1e-3, True),
])
def test_qg_dsgdm_matches_reference_code(momentum, nesterov, mu, local_step, wd, schedule):
    rng = np.random.default_rng(0)
    x0 = _tree(rng)
    grads = [_tree(rng) for _ in range(9)]
    lr = optax.linear_schedule(0.2, 0.05, 8) if schedule else 0.1
    alg = qg_dsgdm(lr, momentum=momentum, nesterov=nesterov, weight_decay=wd, mu=mu, local_step=local_step)
    got = _run(alg, x0, grads)
    factor = 1 - (momentum if mu is None else mu)
    lr_at = (lambda t: float(lr(jnp.int32(t)))) if schedule else (lambda t: 0.1)  # the rate the step sees
    ref = _ref_qg_sgd(x0, grads, lr_at, momentum, nesterov, wd, factor, local_step)
    for t, ((state, aux), (x, mb, vsb)) in enumerate(zip(got, ref, strict=True)):
        _close(state.params, x)
        _close(state.buffer, mb, 1e-10)
        if local_step == 1:
            assert state.accum is None
        else:
            _close(state.accum, vsb, 1e-10)
        nbytes = sum(int(np.prod(s)) for s in SHAPES.values()) * 8  # float64 model
        np.testing.assert_allclose(np.asarray(aux["bytes_sent"]), 2 * nbytes, err_msg=f"step {t}")  # gossip every step


def test_qg_dsgdm_local_step_refreshes_the_buffer_only_every_k_steps():
    rng = np.random.default_rng(1)
    got = _run(qg_dsgdm(0.1, local_step=3), _tree(rng), [_tree(rng) for _ in range(8)])
    prev = None
    for t, (state, _) in enumerate(got):
        buf = _np(state.buffer)
        if prev is not None:
            same = all(np.array_equal(buf[k], prev[k]) for k in SHAPES)
            assert same == (t % 3 != 0), t
        if t % 3 == 0:
            assert all(not np.any(np.asarray(v)) for v in state.accum.values())  # window restarted
        prev = buf


def test_qg_dsgdm_local_step_one_is_the_plain_rule():
    rng = np.random.default_rng(2)
    x0, grads = _tree(rng), [_tree(rng) for _ in range(5)]
    a = _run(qg_dsgdm(0.1), x0, grads)
    b = _ref_qg_sgd(x0, grads, lambda t: 0.1, 0.9, True, 0.0, 0.1, 1)
    for (s, _), (x, mb, _) in zip(a, b, strict=True):
        _close(s.params, x)
        _close(s.buffer, mb, 1e-10)


def test_qg_dsgdm_local_step_reaches_the_dsgd_fixed_point():
    """Paper property (m̂ → 0 at a fixed point, so the fixed point is D-SGD's) still holds when m̂ is refreshed with
    the mean displacement of a K-step window."""
    jax.config.update("jax_enable_x64", False)
    task = simdl.tasks.random_quadratics(n_workers=16, dim=10, zeta2=10.0, r0=10.0, seed=0)
    run = lambda alg: simdl.simulate(task, alg, simdl.topologies.ring(16), steps=3000, eval_every=1000)  # noqa: E731
    qgm, base = run(qg_dsgdm(0.02, nesterov=False, local_step=4)), run(dsgd(0.02))
    np.testing.assert_allclose(np.asarray(qgm.params["x"]), np.asarray(base.params["x"]), rtol=0, atol=2e-4)
    assert float(jnp.max(jnp.abs(qgm.state.buffer["x"]))) < 1e-3


@pytest.mark.parametrize("kwargs,match", [
    ({"local_step": 0}, "local_step"),
    ({"local_step": -2}, "local_step"),
    ({"local_step": 2.5}, "local_step"),
    ({"local_step": 2.0}, "local_step"),
    ({"local_step": True}, "local_step"),
    ({"local_step": "2"}, "local_step"),
    ({"mu": 1.0}, "mu"),
    ({"mu": -0.1}, "mu"),
])
def test_qg_dsgdm_rejects_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        qg_dsgdm(0.1, **kwargs)


def test_qg_dsgdm_records_its_options():
    hp = qg_dsgdm(0.1, momentum=0.8, nesterov=False, weight_decay=1e-4, mu=0.7, local_step=5).hyperparams
    assert hp == {"learning_rate": 0.1, "momentum": 0.8, "nesterov": False, "weight_decay": 1e-4, "mu": 0.7,
                  "local_step": 5}


# ------------------------------------------------------------------------------------------------ qg_adam


def _to_torch(k, a):
    """One worker's flax-layout leaf in torch layout: HWIO -> OIHW, (in, out) -> (out, in)."""
    return a.transpose(3, 2, 0, 1) if a.ndim == 4 else (a.T if a.ndim == 2 else a)


def _from_torch(k, a):
    return a.transpose(2, 3, 1, 0) if a.ndim == 4 else (a.T if a.ndim == 2 else a)


def _torch_tensor_norm(t, scheme):
    """get_tensor_norm of the reference (torch layout)."""
    if scheme == "layer_wise":
        return np.sqrt(np.sum(t * t))
    if t.ndim > 2:  # conv: each output channel
        inner = np.sqrt(np.sum(t * t, axis=(2, 3), keepdims=True))
        return np.sqrt(np.sum(inner * inner, axis=1, keepdims=True))
    if t.ndim == 2:  # linear: norm over dim 0
        return np.sqrt(np.sum(t * t, axis=0, keepdims=True))
    return np.sqrt(np.sum(t * t))


def _ref_normalize(tree, style, eps):
    """normalize_tensor of the reference, worker by worker (its flatten buffer = all leaves of one worker)."""
    if style == "none":
        return {k: v.copy() for k, v in tree.items()}
    out = {k: np.empty_like(v) for k, v in tree.items()}
    for i in range(N):
        if style == "global_wise":
            nrm = np.sqrt(sum(np.sum(tree[k][i] ** 2) for k in tree))
            for k in tree:
                out[k][i] = tree[k][i] / (nrm + eps)
        else:
            for k in tree:
                t = _to_torch(k, tree[k][i])
                out[k][i] = _from_torch(k, t / (_torch_tensor_norm(t, style) + eps))
    return out


def _ref_qg_adam(x, grads, lr, b1, b2, eps, wd, variant, normalize, neps):
    """decentralized_qg_adam{_v2,,_v1}.py Adam.step (the d̃ normalisation made selectable)."""
    buf1 = {k: np.zeros_like(v) for k, v in x.items()}  # momentum_buffer1
    buf2 = {k: np.zeros_like(v) for k, v in x.items()}  # momentum_buffer2
    out = []
    for t, g in enumerate(grads):
        if variant == "v1":
            g = _ref_normalize(g, "filter_wise", neps)
        bc1, bc2 = 1 - b1 ** (t + 1), 1 - b2 ** (t + 1)
        half, new1 = {}, {}
        for k in x:
            gk = g[k] + wd * x[k]
            alpha = 1.0 if variant == "paper" else 1 - b1
            exp_avg = buf1[k] * b1 + alpha * gk
            exp_avg_sq = buf2[k] * b2 + (1 - b2) * gk * gk
            denom = np.sqrt(exp_avg_sq) / np.sqrt(bc2) + eps
            half[k] = x[k] - (lr / bc1) * exp_avg / denom
            new1[k] = exp_avg
        xp = _wmix(half)
        dn = _ref_normalize({k: x[k] - xp[k] for k in x}, normalize, neps)
        for k in x:
            buf1[k] = new1[k] if variant == "v2" else buf1[k] * b1 + (1 - b1) * dn[k]
            buf2[k] = buf2[k] * b2 + (1 - b2) * dn[k] * dn[k]
        x = xp
        out.append(({k: v.copy() for k, v in x.items()}, {k: v.copy() for k, v in buf1.items()},
                    {k: v.copy() for k, v in buf2.items()}))
    return out


@pytest.mark.parametrize("variant,normalize,wd", [
    ("v2", "global_wise", 0.0),  # the defaults
    ("v2", "filter_wise", 1e-3),
    ("v2", "layer_wise", 0.0),
    ("paper", "global_wise", 1e-3),
    ("paper", "layer_wise", 0.0),
    ("paper", "none", 0.0),
    ("v1", "global_wise", 1e-3),
    ("v1", "filter_wise", 0.0),
])
def test_qg_adam_matches_reference_code(variant, normalize, wd):
    rng = np.random.default_rng(3)
    x0 = _tree(rng)
    grads = [_tree(rng, scale=0.1 + t) for t in range(6)]
    alg = qg_adam(0.01, variant=variant, normalize=normalize, weight_decay=wd)
    got = _run(alg, x0, grads)
    ref = _ref_qg_adam(x0, grads, 0.01, 0.9, 0.999, 1e-8, wd, variant, normalize, 1e-8)
    for (state, _), (x, m, v) in zip(got, ref, strict=True):
        _close(state.params, x)
        _close(state.m, m, 1e-9)
        _close(state.v, v, 1e-9)


def test_qg_adam_default_is_the_v2_rule():
    rng = np.random.default_rng(4)
    x0, grads = _tree(rng), [_tree(rng) for _ in range(4)]
    a = _run(qg_adam(0.01), x0, grads)
    b = _run(qg_adam(0.01, variant="v2", normalize="global_wise"), x0, grads)
    ref = _ref_qg_adam(x0, grads, 0.01, 0.9, 0.999, 1e-8, 0.0, "v2", "global_wise", 1e-8)
    for (sa, _), (sb, _), (x, m, _) in zip(a, b, ref, strict=True):
        _close(sa.params, x)
        _close(sa.m, m, 1e-9)  # ordinary local Adam first moment: β1 m + (1 − β1) g
        for k in SHAPES:
            np.testing.assert_array_equal(np.asarray(sa.params[k]), np.asarray(sb.params[k]))


def _filter_sq_sums(v, style):
    """Per-unit sums of a flax-layout leaf stack ``(N, *s)`` for the units of ``style``."""
    out = {}
    for k, a in v.items():
        if style == "layer_wise" or a.ndim == 2:
            out[k] = a.reshape(N, -1).sum(1)
        elif a.ndim == 5:
            out[k] = a.sum(axis=(1, 2, 3))  # per output channel O of HWIO
        else:
            out[k] = a.sum(axis=2)  # dense (in, out): per input feature
    return out


@pytest.mark.parametrize("normalize", ["global_wise", "layer_wise", "filter_wise"])
def test_qg_adam_normalised_displacement_has_unit_norm_per_unit(normalize):
    """After one step from zero buffers v̂ = (1 − β2) d̃², so v̂/(1 − β2) sums to ‖d̃‖² = 1 over each normalisation
    unit (the whole worker model, each leaf, each filter), whatever the size of the displacement."""
    rng = np.random.default_rng(5)
    for scale in (1e-3, 1.0, 1e3):
        (state, _), = _run(qg_adam(0.01 * scale, normalize=normalize), _tree(rng), [_tree(rng)])
        v = {k: np.asarray(a) / (1 - 0.999) for k, a in state.v.items()}
        if normalize == "global_wise":
            np.testing.assert_allclose(sum(a.reshape(N, -1).sum(1) for a in v.values()), 1.0, rtol=1e-6)
        else:
            for k, s in _filter_sq_sums(v, normalize).items():
                np.testing.assert_allclose(s, 1.0, rtol=1e-6, err_msg=k)


def test_qg_adam_v1_normalises_the_gradient_filter_wise():
    """v1 feeds filter-normalised gradients to Adam: rescaling a gradient filter leaves the step unchanged."""
    rng = np.random.default_rng(6)
    x0, g = _tree(rng), _tree(rng)
    g2 = {k: v.copy() for k, v in g.items()}
    g2["conv"][..., 1] *= 50.0  # one output channel of the HWIO conv kernel
    g2["dense"][:, 2, :] *= 0.02  # one input feature of the (in, out) dense kernel
    g2["bias"] *= 7.0
    for variant, same in (("v1", True), ("paper", False)):
        (a, _), = _run(qg_adam(0.01, variant=variant), x0, [g])
        (b, _), = _run(qg_adam(0.01, variant=variant), x0, [g2])
        diff = max(float(np.max(np.abs(np.asarray(a.params[k]) - np.asarray(b.params[k])))) for k in SHAPES)
        assert (diff < 1e-9) == same, (variant, diff)


@pytest.mark.parametrize("kwargs,match", [
    ({"variant": "v3"}, "variant"),
    ({"variant": "v0"}, "variant"),
    ({"normalize": "global"}, "normalize"),
    ({"normalize": "filter"}, "normalize"),
    ({"normalize": None}, "normalize"),
    ({"norm_eps": -1e-8}, "norm_eps"),
])
def test_qg_adam_rejects_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        qg_adam(0.01, **kwargs)


def test_qg_adam_records_its_options():
    hp = qg_adam(0.01, b1=0.8, b2=0.99, eps=1e-6, weight_decay=1e-4, variant="v1", normalize="layer_wise",
                 norm_eps=1e-6).hyperparams
    assert hp == {"learning_rate": 0.01, "b1": 0.8, "b2": 0.99, "eps": 1e-6, "weight_decay": 1e-4, "variant": "v1",
                  "normalize": "layer_wise", "norm_eps": 1e-6}
    assert QG_ADAM_VARIANTS[0] == "v2" and NORMALIZATIONS[0] == "global_wise"
