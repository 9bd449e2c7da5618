"""simdl: simulate decentralized deep learning on one machine.

All n workers' parameters are stacked on a leading worker axis and stepped together with ``jax.vmap``; mixing
matrices and RelaySum trees act on that axis; whole runs compile to ``jit(lax.scan(step))``.

The flat face: :func:`simulate` (one run), :func:`simulate_batch` (R runs as one vmapped program), the protocols
:class:`Algorithm`, :class:`Context`, :class:`Task`, :class:`Topology`, the fault model :class:`Faults`, the
system model :class:`SystemModel` (simulated time), and the subpackages ``algorithms``, ``topologies``, ``tasks``,
``mixing``, ``faults``, ``memory``, ``metrics``, ``schedules``, ``systems``.
"""

from simdl import (
    algorithms,
    faults,
    memory,
    metrics,
    mixing,
    participation,
    runtime,
    schedules,
    systems,
    tasks,
    topologies,
)
from simdl.algorithms.base import Algorithm, Context
from simdl.faults import Faults
from simdl.runtime import SimulationResult, simulate, simulate_batch
from simdl.systems import SystemModel
from simdl.tasks.base import Task
from simdl.topologies.base import Topology

__version__ = "0.1.0"

__all__ = ["Algorithm", "Context", "Faults", "SimulationResult", "SystemModel", "Task", "Topology", "__version__",
           "algorithms", "faults", "memory", "metrics", "mixing", "participation", "runtime", "schedules", "simulate",
           "simulate_batch", "systems", "tasks", "topologies"]
