"""Mixing with the worker axis block-sharded over a device mesh: ``jax.shard_map`` + ``lax.ppermute``.

The n workers are split into D contiguous blocks of ``b = n / D`` rows, block d on device d of the mesh axis
:data:`AXIS`. Each path below equals dense ``W @ X`` (tested against numpy) and moves only the rows a device needs:

* ``shift`` (circulant W: ring, exponential, one-peer exponential). ``y[i] = x[(i + o) mod n]`` with
  ``o = q·b + r`` (0 ≤ r < b) is, on device d, ``concat(block_{d+q}[r:], block_{d+q+1}[:r])``: one ``ppermute``
  of the ``b − r`` tail rows from device d+q and one of the ``r`` head rows from device d+q+1, each skipped when
  it is the device's own block. A ring (o = ±1) exchanges exactly one edge row with each neighbouring device;
  large offsets move whole blocks.
* ``sparse`` (any graph, from ``Topology.neighbor_slots``). A static schedule computed at build time: for every
  device distance δ = source − dest (mod D) with at least one edge, each source sends the (padded) list of its
  rows that device source − δ reads; the receiver appends them after its own block and does the neighbour-slot
  sum with local indices. Traffic = the rows on cut edges (padded to the largest block pair per δ).
* ``mean`` (W = 11ᵀ/n): local mean then ``lax.pmean`` (an all-reduce of one row).
* ``dense`` (documented fallback, used when chosen explicitly or by ``auto`` for dense graphs): ``all_gather`` of
  X then the block's rows of W times X, at ``Precision.HIGHEST``. The other paths never all-gather.

Time-varying topologies compile one branch per step of the period and pick it with ``lax.switch(step % period)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from simdl.mixing.mixer import choose_method, split_map

AXIS = "workers"


def check_divisible(n: int, n_devices: int) -> None:
    """Raise ValueError unless ``n`` workers split into equal blocks over ``n_devices`` devices."""
    if n_devices < 1 or n % n_devices:
        raise ValueError(f"n={n} workers cannot be split evenly over {n_devices} devices; the worker count must be "
                         f"divisible by the device count (use n a multiple of {n_devices}, or fewer devices)")


# --------------------------------------------------------------------------- static plans (numpy, built once)
@dataclass(frozen=True, eq=False)
class ShiftPlan:
    """``(W X)_i = Σ c · X[(i + o) mod n]`` over ``terms = ((o, c), ...)`` (static Python ints/floats)."""

    terms: tuple[tuple[int, float], ...]


@dataclass(frozen=True, eq=False)
class SlotPlan:
    """Neighbour-slot mixing on D blocks.

    Attributes:
      deltas: device distances δ (1..D−1) whose ``ppermute`` carries rows (device s sends to s − δ).
      send: one ``(D, m_δ)`` int32 table per δ: row s = local rows device s sends (padded with 0).
      index: ``(D, b, k)`` int32 slot indices into the receiver's buffer ``[own block; recv_δ1; recv_δ2; ...]``.
      weight: ``(D, b, k)`` float32 slot weights (0 on padding).
    """

    deltas: tuple[int, ...]
    send: tuple[np.ndarray, ...]
    index: np.ndarray
    weight: np.ndarray


@dataclass(frozen=True, eq=False)
class DensePlan:
    """``rows``: ``(D, b, n)`` float32, block d of W's rows."""

    rows: np.ndarray


def slot_plan(index: np.ndarray, weight: np.ndarray, n_devices: int) -> SlotPlan:
    """Build the static exchange schedule of one neighbour-slot matrix (see :class:`SlotPlan`).

    Args:
      index, weight: ``(n, k)`` from ``Topology.neighbor_slots`` (``(W X)_i = Σ_s weight[i, s] X[index[i, s]]``).
      n_devices: D, dividing n.
    """
    n, k = index.shape
    check_divisible(n, n_devices)
    b = n // n_devices
    used = weight != 0
    # needed[δ][d] = sorted global rows device d reads from device (d + δ) mod D
    needed = {delta: [] for delta in range(1, n_devices)}
    for d in range(n_devices):
        rows = index[d * b:(d + 1) * b][used[d * b:(d + 1) * b]]
        for delta in range(1, n_devices):
            s = (d + delta) % n_devices
            needed[delta].append(np.unique(rows[(rows >= s * b) & (rows < (s + 1) * b)]))
    deltas = tuple(dl for dl in range(1, n_devices) if any(len(r) for r in needed[dl]))
    send, position = [], [dict() for _ in range(n_devices)]
    start = b
    for delta in deltas:
        m = max(len(r) for r in needed[delta])
        table = np.zeros((n_devices, m), np.int32)
        for d, rows in enumerate(needed[delta]):
            s = (d + delta) % n_devices
            table[s, :len(rows)] = rows - s * b
            for p, j in enumerate(rows):
                position[d][int(j)] = start + p
        send.append(table)
        start += m
    local_index = np.zeros((n_devices, b, k), np.int32)
    local_weight = np.where(used, weight, 0.0).astype(np.float32).reshape(n_devices, b, k)
    for d in range(n_devices):
        for i in range(b):
            for s in range(k):
                j = int(index[d * b + i, s])
                if not used[d * b + i, s]:
                    continue
                local_index[d, i, s] = j - d * b if d * b <= j < (d + 1) * b else position[d][j]
    return SlotPlan(deltas, tuple(send), local_index, local_weight)


# --------------------------------------------------------------------------- per-device kernels (inside shard_map)
def _from_device(rows: jax.Array, shift: int, n_devices: int) -> jax.Array:
    """On device d, return ``rows`` as held by device ``(d + shift) mod D`` (a ``ppermute``; local when 0)."""
    if shift % n_devices == 0 or rows.shape[0] == 0:
        return rows
    perm = [(s, (s - shift) % n_devices) for s in range(n_devices)]
    return lax.ppermute(rows, AXIS, perm)


def block_shift(x: jax.Array, offset: int, n: int, n_devices: int) -> jax.Array:
    """This device's block of ``y[i] = X[(i + offset) mod n]`` given its block ``x`` (``(b, ...)``)."""
    b = x.shape[0]
    q, r = divmod(offset % n, b)
    head = _from_device(x[r:], q, n_devices)
    if r == 0:
        return head
    return jnp.concatenate([head, _from_device(x[:r], q + 1, n_devices)], axis=0)


def _shift_local(plan: ShiftPlan, n: int, n_devices: int, tree):
    def one(x):
        out = None
        for o, c in plan.terms:
            term = jnp.asarray(c, x.dtype) * block_shift(x, o, n, n_devices)
            out = term if out is None else out + term
        return out

    return jax.tree_util.tree_map(one, tree)


def _slot_local(plan: SlotPlan, n_devices: int, tree, index, weight, *send):
    index, weight = index[0], weight[0]
    k = index.shape[1]

    def one(x):
        parts = [x]
        for delta, table in zip(plan.deltas, send, strict=True):
            parts.append(_from_device(jnp.take(x, table[0], axis=0, mode="clip"), delta, n_devices))
        buf = jnp.concatenate(parts, axis=0) if len(parts) > 1 else x
        w = weight.astype(x.dtype)
        bshape = (x.shape[0],) + (1,) * (x.ndim - 1)
        out = None
        for s in range(k):
            term = w[:, s].reshape(bshape) * jnp.take(buf, index[:, s], axis=0, mode="clip")
            out = term if out is None else out + term
        return out

    return jax.tree_util.tree_map(one, tree)


def _dense_local(tree, rows):
    rows = rows[0]

    def one(x):
        full = lax.all_gather(x, AXIS, tiled=True)
        flat = full.reshape(full.shape[0], -1)
        out = jnp.matmul(rows.astype(x.dtype), flat, precision=lax.Precision.HIGHEST)
        return out.reshape(x.shape)

    return jax.tree_util.tree_map(one, tree)


def _mean_local(tree):
    def one(x):
        avg = lax.pmean(jnp.mean(x, axis=0, keepdims=True), AXIS)
        return jnp.broadcast_to(avg, x.shape)

    return jax.tree_util.tree_map(one, tree)


# --------------------------------------------------------------------------- the mixer
@dataclass(frozen=True, eq=False)
class ShardedMixer:
    """Applies ``W_t`` to a stacked pytree whose worker axis is sharded over ``mesh`` (axis :data:`AXIS`).

    Same interface as :class:`simdl.mixing.Mixer`: ``mixer(tree, step) == W_{step} @ X`` along axis 0.

    Attributes:
      method: ``shift``, ``sparse``, ``dense`` or ``mean``.
      n: number of workers (divisible by the mesh size).
      period: number of distinct mixing matrices.
      mesh: the 1-D :class:`jax.sharding.Mesh` with axis ``"workers"``.
      plans: one static plan per step of the period (``None`` for ``mean``), or per tree of a split topology.
      parts: T for a split topology (coordinate k mixed by tree ``k mod T``, :func:`simdl.mixing.split_map`), else 1.
    """

    method: str
    n: int
    period: int
    mesh: Mesh
    plans: tuple[Any, ...]
    parts: int = 1

    @property
    def n_devices(self) -> int:
        return int(self.mesh.shape[AXIS])

    def _apply(self, plan, tree):
        spec = P(AXIS)
        smap = partial(jax.shard_map, mesh=self.mesh, out_specs=spec)
        if self.method == "mean":
            return smap(_mean_local, in_specs=(spec,))(tree)
        if self.method == "shift":
            return smap(partial(_shift_local, plan, self.n, self.n_devices), in_specs=(spec,))(tree)
        if self.method == "dense":
            return smap(_dense_local, in_specs=(spec, spec))(tree, plan.rows)
        fn = partial(_slot_local, plan, self.n_devices)
        specs = (spec,) * (3 + len(plan.send))
        return smap(fn, in_specs=specs)(tree, plan.index, plan.weight, *plan.send)

    def __call__(self, tree, step=0):
        if self.parts > 1:
            return split_map([partial(self._apply, plan) for plan in self.plans], tree)
        if self.period == 1 or self.method == "mean":
            return self._apply(self.plans[0], tree)
        if isinstance(step, (int, np.integer)):
            return self._apply(self.plans[int(step) % self.period], tree)
        branches = [partial(self._apply, plan) for plan in self.plans]
        return lax.switch(jnp.asarray(step, jnp.int32) % self.period, branches, tree)


def make_sharded_mixer(topology, mesh: Mesh, method: str = "auto") -> ShardedMixer:
    """Build the :class:`ShardedMixer` of ``topology`` for a worker axis block-sharded over ``mesh``.

    Args:
      topology: a :class:`simdl.topologies.Topology` (static or time-varying).
      mesh: 1-D mesh with axis ``"workers"`` (:func:`simdl.sharding.worker_mesh`).
      method: ``auto`` (default), ``dense``, ``sparse``, ``shift`` or ``mean``; the same choice rules as
        :func:`simdl.mixing.choose_method`.

    Raises:
      ValueError: the mesh has no ``"workers"`` axis or other axes, ``topology.n`` is not divisible by the device
        count, or an unknown / incompatible ``method``.
    """
    if not isinstance(mesh, Mesh) or tuple(mesh.axis_names) != (AXIS,):
        raise ValueError(f"mesh must be a 1-D jax.sharding.Mesh with axis name {AXIS!r}, got {mesh!r}; "
                         "use simdl.sharding.worker_mesh()")
    n_devices = int(mesh.shape[AXIS])
    check_divisible(topology.n, n_devices)
    method = choose_method(topology, method)
    period = topology.period
    if topology.is_split and method != "mean":
        b = topology.n // n_devices
        trees = range(len(topology.tree_weights))
        if method == "dense":
            plans = tuple(DensePlan(np.asarray(w, np.float32).reshape(n_devices, b, topology.n))
                          for w in topology.tree_weights)
        else:
            plans = tuple(slot_plan(*topology.tree_neighbor_slots(t), n_devices) for t in trees)
        return ShardedMixer(method=method, n=topology.n, period=1, mesh=mesh, plans=plans, parts=len(plans))
    if method == "mean":
        plans: tuple = (None,)
    elif method == "shift":
        plans = tuple(ShiftPlan(tuple((int(o), float(c)) for o, c in topology.circulant_offsets(s)))
                      for s in range(period))
    elif method == "dense":
        b = topology.n // n_devices
        plans = tuple(DensePlan(np.asarray(topology.weights_at(s), np.float32).reshape(n_devices, b, topology.n))
                      for s in range(period))
    else:
        plans = tuple(slot_plan(*topology.neighbor_slots(s), n_devices) for s in range(period))
    return ShardedMixer(method=method, n=topology.n, period=period, mesh=mesh, plans=plans)
