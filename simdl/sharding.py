"""Multi-device simulation: a 1-D device mesh over the worker axis, placement of stacked state, sharded mixing.

The stacked worker axis (axis 0 of every per-worker leaf) is block-sharded over the mesh axis ``"workers"``:
with n workers on D devices, device d holds workers ``d·b .. (d+1)·b − 1`` (b = n / D). Per-worker computation
(vmapped gradients, local optimizers) then runs where the worker lives, and mixing exchanges only the rows it
needs (:mod:`simdl.mixing.sharded`). Task data are replicated. Multi-host: call ``jax.distributed.initialize()``
in every process first; :func:`worker_mesh` then spans the devices of all processes (docs/multi_device.md).
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from simdl.mixing.sharded import AXIS, ShardedMixer, check_divisible, make_sharded_mixer

__all__ = ["AXIS", "Placement", "ShardedMixer", "check_divisible", "make_sharded_mixer", "placement",
           "state_shardings", "worker_mesh"]


def worker_mesh(devices: int | Sequence | Mesh | None = None, n: int | None = None) -> Mesh:
    """A 1-D :class:`jax.sharding.Mesh` with axis name ``"workers"``.

    Args:
      devices: ``None`` = all devices (``jax.devices()``: the local devices in a single process, the devices of
        every process after ``jax.distributed.initialize``); an int k = the first k of them; a sequence of
        ``jax.Device``; or a ready ``Mesh`` with the single axis ``"workers"`` (returned as is).
      n: optional worker count; checked to be divisible by the device count.

    Raises:
      ValueError: k outside ``1..jax.device_count()``, an empty sequence or one holding non-devices / duplicates,
        a mesh with other axes, or ``n`` not divisible by the device count (the message names both).
    """
    if isinstance(devices, Mesh):
        if tuple(devices.axis_names) != (AXIS,):
            raise ValueError(f"mesh must have the single axis {AXIS!r}, got axes {devices.axis_names}")
        mesh = devices
    else:
        available = jax.devices()
        if devices is None:
            chosen = list(available)
        elif isinstance(devices, (int, np.integer)) and not isinstance(devices, bool):
            k = operator.index(devices)
            if not 1 <= k <= len(available):
                raise ValueError(f"devices={k} must be between 1 and the number of available devices "
                                 f"({len(available)}: {available[0].platform}); on CPU set "
                                 "XLA_FLAGS=--xla_force_host_platform_device_count=K before importing jax")
            chosen = list(available[:k])
        elif isinstance(devices, Sequence) and not isinstance(devices, str):
            chosen = list(devices)
            if not chosen or not all(isinstance(d, jax.Device) for d in chosen) or len(set(chosen)) != len(chosen):
                raise ValueError(f"devices must be a non-empty sequence of distinct jax.Device, got {devices!r}")
        else:
            raise ValueError(f"devices must be None, an int, a sequence of jax.Device or a Mesh, got {devices!r}")
        mesh = Mesh(np.asarray(chosen, dtype=object), (AXIS,))
    if n is not None:
        check_divisible(int(n), int(mesh.shape[AXIS]))
    return mesh


def state_shardings(tree, mesh: Mesh, n: int, run_axis: bool = False):
    """Shardings for a pytree: ``P("workers")`` for leaves whose leading axis has size ``n`` (stacked per-worker
    values), replicated ``P()`` for all others (scalars, step counters, relay edge buffers, reference models).
    ``run_axis=True`` (batched runs, :func:`simdl.simulate_batch`): the worker axis is axis 1, after the run axis,
    and per-worker leaves get ``P(None, "workers")``."""
    axis = 1 if run_axis else 0
    spec = P(None, AXIS) if run_axis else P(AXIS)

    def one(x):
        shape = np.shape(x)
        return NamedSharding(mesh, spec if len(shape) > axis and shape[axis] == n else P())

    return jax.tree_util.tree_map(one, tree)


class Placement(NamedTuple):
    """How a run is laid out on a mesh: ``put`` shards per-worker leaves, ``replicate`` copies data everywhere.

    Attributes:
      mesh: the worker mesh.
      n: number of workers.
      run_axis: whether per-worker leaves carry a leading run axis (batched runs: the worker axis is axis 1).
    """

    mesh: Mesh
    n: int
    run_axis: bool = False

    def shardings(self, tree) -> Any:
        """:func:`state_shardings` of ``tree``."""
        return state_shardings(tree, self.mesh, self.n, self.run_axis)

    def put(self, tree):
        """``tree`` with per-worker leaves sharded over the mesh and the rest replicated."""
        return jax.device_put(tree, self.shardings(tree))

    @property
    def replicated(self) -> NamedSharding:
        """The fully replicated sharding ``P()`` on the mesh."""
        return NamedSharding(self.mesh, P())

    def replicate(self, tree):
        """``tree`` replicated on every device of the mesh."""
        return jax.device_put(tree, self.replicated)


def placement(devices, n: int, run_axis: bool = False) -> Placement:
    """:class:`Placement` of ``n`` workers on ``worker_mesh(devices, n)`` (raises as :func:`worker_mesh`)."""
    return Placement(worker_mesh(devices, n), int(n), bool(run_axis))
