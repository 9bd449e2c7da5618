"""simdl: simulate decentralized deep learning on one machine.

All n workers' parameters are stacked on a leading worker axis and stepped together with ``jax.vmap``; mixing
matrices and RelaySum trees act on that axis; whole runs compile to ``jit(lax.scan(step))``.
"""

from simdl import algorithms, faults, memory, metrics, mixing, schedules, tasks, topologies
from simdl.simulate import SimulationResult, simulate

__version__ = "0.1.0"

__all__ = ["SimulationResult", "__version__", "algorithms", "faults", "memory", "metrics", "mixing", "schedules",
           "simulate", "tasks", "topologies"]
