"""Choose how to apply a topology's mixing matrix to stacked parameters, and build the function that does it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax.numpy as jnp
import numpy as np

from simdl.mixing.dense import dense_mix, mean_mix
from simdl.mixing.shift import shift_mix
from simdl.mixing.sparse import sparse_mix

METHODS = ("auto", "dense", "sparse", "shift", "mean")


def _is_uniform_average(w: np.ndarray) -> bool:
    n = w.shape[0]
    return bool(np.allclose(w, 1.0 / n, rtol=0, atol=1e-12))


def choose_method(topology, method: str = "auto") -> str:
    """Pick the mixing path for ``topology``.

    ``auto`` rules (measured in ``benchmarks/mixing.py``): exact average ``11ᵀ/n`` → ``mean``; circulant with at most
    8 offsets at every step → ``shift``; otherwise neighbour slots (``sparse``) unless the slot count exceeds n/4,
    where one dense matmul is cheaper.

    Raises:
      ValueError: unknown ``method`` or a ``method`` the topology cannot use (``shift`` on a non-circulant graph,
        ``mean`` on a W that is not 11ᵀ/n).
    """
    if method not in METHODS:
        raise ValueError(f"unknown mixing method {method!r}; valid: {', '.join(METHODS)}")
    mats = [topology.weights_at(s) for s in range(topology.period)]
    if method == "mean":
        if not all(_is_uniform_average(w) for w in mats):
            raise ValueError(f"mixing method 'mean' needs W = 11ᵀ/n, but {topology.name} has other weights")
        return method
    circ = [topology.circulant_offsets(s) for s in range(topology.period)]
    if method == "shift":
        if any(c is None for c in circ):
            raise ValueError(f"mixing method 'shift' needs a circulant W; {topology.name} is not circulant")
        return method
    if method != "auto":
        return method
    if all(_is_uniform_average(w) for w in mats):
        return "mean"
    if all(c is not None for c in circ) and max(len(c) for c in circ) <= 8:
        return "shift"
    index, _ = topology.neighbor_slots(0)
    return "sparse" if index.shape[1] <= max(4, topology.n // 4) else "dense"


@dataclass(frozen=True, eq=False)
class Mixer:
    """Applies ``W_t`` to a stacked pytree: ``mixer(tree, step) == W_{step} @ X`` along the worker axis.

    Attributes:
      method: one of ``dense``, ``sparse``, ``shift``, ``mean``.
      n: number of workers.
      period: number of distinct mixing matrices (1 for static topologies).
      tables: static numpy arrays used by the chosen method (stacked over the period).
    """

    method: str
    n: int
    period: int
    tables: Any

    def __call__(self, tree, step=0):
        t = self.tables
        if self.method == "mean":
            return mean_mix(tree)
        if self.method == "dense":
            w = t["weights"][0] if self.period == 1 else jnp.asarray(t["weights"])[step % self.period]
            return dense_mix(jnp.asarray(w), tree)
        if self.method == "sparse":
            if self.period == 1:
                return sparse_mix(jnp.asarray(t["index"][0]), jnp.asarray(t["weight"][0]), tree)
            p = step % self.period
            return sparse_mix(jnp.asarray(t["index"])[p], jnp.asarray(t["weight"])[p], tree)
        # shift
        if self.period == 1:
            return shift_mix(tuple(int(o) for o in t["offsets"][0]), t["coeffs"][0], tree)
        p = step % self.period
        offs = jnp.asarray(t["offsets"])[p]
        return shift_mix([offs[s] for s in range(t["offsets"].shape[1])], jnp.asarray(t["coeffs"])[p], tree)


def make_mixer(topology, method: str = "auto") -> Mixer:
    """Build the :class:`Mixer` for ``topology`` (static or time-varying).

    Args:
      topology: a :class:`simdl.topologies.Topology`.
      method: ``auto`` (default), ``dense``, ``sparse``, ``shift`` or ``mean``; see :func:`choose_method`.

    Returns:
      A :class:`Mixer`; all tables are float32 / int32 numpy arrays stacked over the topology's period.
    """
    method = choose_method(topology, method)
    period = topology.period
    if method == "mean":
        tables = {}
    elif method == "dense":
        tables = {"weights": np.stack([topology.weights_at(s) for s in range(period)]).astype(np.float32)}
    elif method == "sparse":
        slots = [topology.neighbor_slots(s) for s in range(period)]
        k = max(i.shape[1] for i, _ in slots)
        idx = np.zeros((period, topology.n, k), np.int32)
        wgt = np.zeros((period, topology.n, k), np.float32)
        for p, (i, w) in enumerate(slots):
            idx[p, :, : i.shape[1]] = i
            idx[p, :, i.shape[1]:] = np.arange(topology.n)[:, None]
            wgt[p, :, : w.shape[1]] = w
        tables = {"index": idx, "weight": wgt}
    else:
        circ = [topology.circulant_offsets(s) for s in range(period)]
        k = max(len(c) for c in circ)
        offs = np.zeros((period, k), np.int32)
        coef = np.zeros((period, k), np.float32)
        for p, c in enumerate(circ):
            for s, (o, w) in enumerate(c):
                offs[p, s], coef[p, s] = o, w
        tables = {"offsets": offs, "coeffs": coef}
    return Mixer(method=method, n=topology.n, period=period, tables=tables)
