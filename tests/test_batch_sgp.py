"""simulate_batch with an algorithm whose ``params`` combine state leaves (SGP: x / w): each batched run's final
parameters equal its single run's."""

import numpy as np

import simdl
from simdl.runtime import simulate_batch


def test_sgp_batched_over_seeds_equals_single_runs():
    task = simdl.tasks.random_quadratics(n_workers=8, dim=4, noise=0.1, seed=0)
    topo = simdl.topologies.one_peer_exponential(8)
    res = simulate_batch([task, task], lambda hp: simdl.algorithms.sgp(0.05), [{}, {}], topo, steps=6,
                         batch_size=2, seeds=[0, 1], eval_every=3)
    for seed, r in zip((0, 1), res, strict=True):
        single = simdl.simulate(task, simdl.algorithms.sgp(0.05), topo, steps=6, batch_size=2, seed=seed,
                                eval_every=3)
        for a, b in zip(jax_leaves(r.params), jax_leaves(single.params), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(r.history["loss"], single.history["loss"], rtol=1e-5)


def jax_leaves(tree):
    import jax

    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]
