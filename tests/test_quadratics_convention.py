"""The quadratics' two conventions (simdl/tasks/quadratics.py): the default f_i = ½‖A_i x − b_i‖², and
``convention="relaysgd"``, checked against a float64 numpy transcription of the RelaySGD authors' simulator
(Vogels et al. 2021, arXiv 2110.04175; epfml/relaysgd paper-figures/random_quadratics.py,
DistributedQuadraticsObjective, and paper-figures/algorithms.py all_reduce). The task stores float32 data, so the
comparisons are at float32 precision."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import simdl
from simdl.algorithms.averaging import allreduce

T = simdl.topologies


class TheirObjective:
    """numpy transcription of DistributedQuadraticsObjective's methods (random_quadratics.py:112-143), with
    A: (n, d, d) and B: (n, d) (their trailing singleton axis dropped)."""

    def __init__(self, A, B):
        self.A, self.B, self.n, self.d = A, B, A.shape[0], A.shape[2]
        AA, BB = A.reshape(-1, self.d), B.reshape(-1)
        self.optimum = np.linalg.solve(AA.T @ AA, AA.T @ BB)  # _optimum, line 158
        self.value_at_optimum = self(self.optimum)

    def __call__(self, x):  # line 113: sum ‖AA x − BB‖² / n, no ½
        return np.sum((self.A.reshape(-1, self.d) @ x - self.B.reshape(-1)) ** 2) / self.n

    def suboptimality_of_mean(self, X):  # lines 115-117
        return self(X.mean(0)) - self.value_at_optimum

    def local_losses(self, X):  # line 128
        return np.sum((np.einsum("nab,nb->na", self.A, X) - self.B) ** 2, axis=1)

    def grad(self, X, noise_stdev=0.0, z=None):  # lines 133-137; z replaces torch.randn_like(x)
        g = np.einsum("njk,nj->nk", self.A, np.einsum("nab,nb->na", self.A, X) - self.B)
        if noise_stdev > 0:
            g = g + z * (noise_stdev / np.sqrt(self.d))
        return g

    def zeta2(self):  # lines 139-143
        g = self.grad(np.repeat(self.optimum[None], self.n, 0))
        return np.mean(np.sum(g ** 2, axis=1))


def _instance(n=5, d=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d, d)), rng.standard_normal((n, d))


def _per_worker(task, X, key, step):
    """Loss values and gradients of every worker at X (its own row), as the runner would draw them."""
    losses, grads = [], []
    for i in range(task.n_workers):
        batch = task.sample(task.data, key, i, step, 1)
        p = {"x": jnp.asarray(X[i], jnp.float32)}
        v, g = jax.value_and_grad(task.loss)(p, batch)
        losses.append(float(v))
        grads.append(np.asarray(g["x"], np.float64))
    return np.asarray(losses), np.stack(grads)


def test_relaysgd_loss_and_gradient_match_their_objective():
    A, B = _instance()
    theirs = TheirObjective(A, B)
    task = simdl.tasks.quadratics(A, B, convention="relaysgd")
    X = np.random.default_rng(1).standard_normal(B.shape)
    losses, grads = _per_worker(task, X, jax.random.PRNGKey(0), 0)
    np.testing.assert_allclose(losses, theirs.local_losses(X), rtol=1e-5)  # value: no ½
    np.testing.assert_allclose(grads, theirs.grad(X), rtol=1e-5, atol=1e-5)  # gradient: A_iᵀ(A_i x − b_i)
    half = simdl.tasks.quadratics(A, B)
    half_losses, half_grads = _per_worker(half, X, jax.random.PRNGKey(0), 0)
    np.testing.assert_allclose(half_losses, 0.5 * theirs.local_losses(X), rtol=1e-5)  # default: with ½
    np.testing.assert_array_equal(half_grads, grads)  # the same gradient in both conventions


def test_relaysgd_gradient_noise_is_sigma_over_sqrt_d_per_coordinate():
    A, B = _instance(n=3, d=9)
    sigma, key, step = 0.7, jax.random.PRNGKey(5), 3
    theirs = TheirObjective(A, B)
    X = np.random.default_rng(2).standard_normal(B.shape)
    relay = simdl.tasks.quadratics(A, B, noise=sigma, convention="relaysgd")
    half = simdl.tasks.quadratics(A, B, noise=sigma)
    # the standard normal each worker draws (the same stream in both conventions)
    z = np.stack([np.asarray(jax.random.normal(jax.random.fold_in(key, step), (9,)), np.float64)
                  for _ in range(3)])
    _, g_relay = _per_worker(relay, X, key, step)
    _, g_half = _per_worker(half, X, key, step)
    np.testing.assert_allclose(g_relay, theirs.grad(X, sigma, z), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(g_half, theirs.grad(X) + sigma * z, rtol=1e-5, atol=1e-5)
    # the property their scaling states: E‖noise‖² = σ² (not σ² d)
    keys = jax.random.split(jax.random.PRNGKey(9), 4000)
    xi = np.asarray(jax.vmap(lambda k: relay.sample(relay.data, k, 0, 0, 1)["xi"])(keys), np.float64)
    assert np.mean(np.sum(xi ** 2, axis=1)) == pytest.approx(sigma ** 2, rel=0.05)
    xi_half = np.asarray(jax.vmap(lambda k: half.sample(half.data, k, 0, 0, 1)["xi"])(keys), np.float64)
    assert np.mean(np.sum(xi_half ** 2, axis=1)) == pytest.approx(sigma ** 2 * 9, rel=0.05)


def test_relaysgd_evaluate_reports_their_error():
    A, B = _instance(n=6, d=5, seed=3)
    theirs = TheirObjective(A, B)
    relay = simdl.tasks.quadratics(A, B, convention="relaysgd")
    half = simdl.tasks.quadratics(A, B)
    X = theirs.optimum + 0.3 * np.random.default_rng(4).standard_normal(B.shape)
    m_relay = relay.evaluate(relay.data, {"x": jnp.asarray(X, jnp.float32)})
    m_half = half.evaluate(half.data, {"x": jnp.asarray(X, jnp.float32)})
    np.testing.assert_allclose(float(m_relay["avg_model_loss"]), theirs(X.mean(0)), rtol=1e-5)
    np.testing.assert_allclose(float(m_relay["suboptimality"]), theirs.suboptimality_of_mean(X), rtol=1e-4)
    np.testing.assert_allclose(relay.info["f_star"], theirs.value_at_optimum, rtol=1e-9)
    np.testing.assert_allclose(float(m_relay["suboptimality"]), 2 * float(m_half["suboptimality"]), rtol=1e-6)
    np.testing.assert_allclose(float(m_relay["worker_suboptimality_mean"]),
                               np.mean([theirs(x) - theirs.value_at_optimum for x in X]), rtol=1e-4)
    assert float(m_relay["distance_to_opt"]) == float(m_half["distance_to_opt"])
    assert relay.info["convention"] == "relaysgd" and "convention" not in half.info


def test_all_reduce_curve_matches_their_simulator_number_for_number():
    """paper-figures/algorithms.py all_reduce (lines 483-505, momentum 0): state -= lr · grad, then the mean; the
    curve is task.error = suboptimality_of_mean after each number of steps."""
    task = simdl.tasks.random_quadratics(n_workers=8, dim=6, zeta2=1.0, r0=3.0, seed=1, convention="relaysgd")
    A, b = np.asarray(task.data["A"], np.float64), np.asarray(task.data["b"], np.float64)
    theirs = TheirObjective(A, b)
    assert theirs.zeta2() == pytest.approx(1.0, rel=1e-3)  # ζ² means the same thing in both
    lr, steps, every = 0.2, 30, 5
    X, curve = np.zeros((8, 6)), {}
    for t in range(1, steps + 1):
        X = X - lr * theirs.grad(X)
        X = np.repeat(X.mean(0, keepdims=True), 8, 0)
        curve[t] = theirs.suboptimality_of_mean(X)
    res = simdl.simulate(task, allreduce(lr), T.complete(8), steps=steps, batch_size=1, eval_every=every)
    hist = res.history
    assert list(hist["step"]) == list(range(every, steps + 1, every))
    np.testing.assert_allclose(hist["suboptimality"], [curve[t] for t in hist["step"]], rtol=2e-3, atol=1e-6)
    half = simdl.simulate(simdl.tasks.random_quadratics(n_workers=8, dim=6, zeta2=1.0, r0=3.0, seed=1),
                          allreduce(lr), T.complete(8), steps=steps, batch_size=1, eval_every=every)
    np.testing.assert_array_equal(np.asarray(half.params["x"]), np.asarray(res.params["x"]))  # same trajectory
    np.testing.assert_allclose(np.asarray(hist["suboptimality"]), 2 * np.asarray(half.history["suboptimality"]),
                               rtol=1e-6)


@pytest.mark.parametrize("convention", ["relay", "RelaySGD", None, ""])
def test_unknown_convention_raises(convention):
    A, B = _instance()
    with pytest.raises(ValueError, match="convention must be one of"):
        simdl.tasks.quadratics(A, B, convention=convention)
    with pytest.raises(ValueError, match="convention must be one of"):
        simdl.tasks.random_quadratics(n_workers=2, dim=2, convention=convention)
