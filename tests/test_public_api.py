"""The flat public face: the names a user reaches from ``import simdl``."""

import simdl


def test_top_level_names_are_the_protocols_and_runners():
    from simdl.algorithms.base import Algorithm, Context
    from simdl.faults import Faults
    from simdl.runtime import simulate_batch
    from simdl.tasks.base import Task
    from simdl.topologies.base import Topology

    assert simdl.Algorithm is Algorithm and simdl.Context is Context
    assert simdl.simulate_batch is simulate_batch and simdl.Faults is Faults
    assert simdl.Task is Task and simdl.Topology is Topology
    assert isinstance(simdl.topologies.ring(4), simdl.Topology)
    assert isinstance(simdl.algorithms.dsgd(0.1), simdl.Algorithm)
    assert set(simdl.__all__) <= set(dir(simdl))


def test_one_batched_run_equals_simulate():
    task = simdl.tasks.random_quadratics(n_workers=4, dim=3, seed=0)
    topo = simdl.topologies.ring(4)
    one = simdl.simulate(task, simdl.algorithms.dsgd(0.05), topo, steps=6, batch_size=4, eval_every=3, seed=1)
    (batched,) = simdl.simulate_batch([task], lambda hp: simdl.algorithms.dsgd(0.05), [{}], topo, steps=6,
                                      batch_size=4, eval_every=3, seeds=[1])
    for key, ref in one.history.items():
        assert key in batched.history
        assert abs(batched.history[key] - ref).max() <= 1e-5 * (1 + abs(ref).max()), key
