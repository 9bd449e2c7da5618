"""Communication topologies: graphs, mixing weights, spectral quantities, trees, time-varying schedules.

Pure numpy/networkx. ``(W X)_i = sum_j W[i, j] x_j``; every factory returns a :class:`Topology`.
``TOPOLOGIES`` maps names to factories ``f(n, **kw)`` and :func:`get` builds one by name (for the CLI).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

import numpy as np

from simdl.topologies.base import Topology, check_count
from simdl.topologies.graphs import (
    SOCIAL_NETWORK_N,
    base_graph,
    complete,
    erdos_renyi,
    exponential,
    from_networkx,
    from_weights,
    hypercube,
    one_peer_exponential,
    ring,
    social_network,
    star,
    torus,
)
from simdl.topologies.spectral import circulant_offsets, lambda_min, rho, spectral_gap
from simdl.topologies.trees import binary_tree, chain, double_binary_trees, spanning_tree
from simdl.topologies.weights import metropolis_hastings, uniform_weights, validate_mixing_matrix


def _torus_n(n: int, rows: int | None = None, cols: int | None = None,
             weights: str | np.ndarray = "metropolis") -> Topology:
    """Torus of n workers; default shape is the most square rows × cols = n with rows <= cols."""
    if rows is None and cols is None:
        n = check_count(n)
        rows = max(r for r in range(1, math.isqrt(n) + 1) if n % r == 0)
        cols = n // rows
    elif rows is None:
        rows = check_count(n) // check_count(cols, "cols")
    elif cols is None:
        cols = check_count(n) // check_count(rows, "rows")
    t = torus(rows, cols, weights)
    if t.n != n:
        raise ValueError(f"torus rows*cols must equal n={n}, got rows={rows}, cols={cols}")
    return t


def _social_network_n(n: int = SOCIAL_NETWORK_N, weights: str | np.ndarray = "metropolis") -> Topology:
    """Social network graph; it has exactly 32 workers."""
    if n != SOCIAL_NETWORK_N:
        raise ValueError(f"social_network has exactly {SOCIAL_NETWORK_N} workers, got n={n!r}")
    return social_network(weights)


TOPOLOGIES: dict[str, Callable[..., Topology]] = {
    "ring": ring,
    "chain": chain,
    "torus": _torus_n,
    "complete": complete,
    "star": star,
    "hypercube": hypercube,
    "exponential": exponential,
    "one_peer_exponential": one_peer_exponential,
    "erdos_renyi": erdos_renyi,
    "social_network": _social_network_n,
    "binary_tree": binary_tree,
    "double_binary_trees": double_binary_trees,
    "base": base_graph,
}


def lazy(topology: Topology, self_weight: float) -> Topology:
    """The lazy version ``W' = a I + (1 − a) W`` (``a = self_weight``) of a topology, for every matrix of its schedule.

    Shifts every eigenvalue λ to ``a + (1 − a) λ``: e.g. ``a = 0.1`` on an even Metropolis–Hastings ring lifts
    ``λ_min = −1/3`` above −1/3, which D² needs (docs/algorithms.md#d2).

    Raises:
        ValueError: ``self_weight`` outside [0, 1).
    """
    a = float(self_weight)
    if not 0.0 <= a < 1.0:
        raise ValueError(f"self_weight must be in [0, 1), got {self_weight!r}")
    eye = np.eye(topology.n)
    mats = [a * eye + (1 - a) * np.asarray(topology.weights_at(s)) for s in range(topology.period)]
    per_tree = None if not topology.is_split else tuple(a * eye + (1 - a) * w for w in topology.tree_weights)
    return Topology(f"lazy({topology.name},{a:g})", topology.graph, mats[0],
                    tuple(mats) if topology.is_time_varying else None, topology.trees, per_tree)


def get(name: str, n: int, lazy_weight: float = 0.0, **kw) -> Topology:
    """Build the topology registered as ``name`` with n workers (``TOPOLOGIES[name](n, **kw)``).

    Examples: ``get("ring", 16)``, ``get("torus", 16)`` (4 × 4), ``get("erdos_renyi", 16, p=0.3, seed=1)``,
    ``get("social_network", 32)``.

    Raises:
        ValueError: unknown name (valid names listed), missing or unknown keywords (allowed ones listed),
            or anything the factory rejects (e.g. social_network with n != 32, hypercube with n != 2^k).

    ``lazy_weight = a > 0`` returns :func:`lazy` ``(topology, a)``.
    """
    if name not in TOPOLOGIES:
        raise ValueError(f"unknown topology {name!r}; valid names: {', '.join(sorted(TOPOLOGIES))}")
    factory = TOPOLOGIES[name]
    sig = inspect.signature(factory)
    try:
        sig.bind(n, **kw)
    except TypeError as err:
        allowed = list(sig.parameters)[1:]
        raise ValueError(f"bad arguments for topology {name!r}: {err}; keywords allowed: {allowed}") from None
    topo = factory(n, **kw)
    return lazy(topo, lazy_weight) if lazy_weight else topo


__all__ = [
    "TOPOLOGIES",
    "Topology",
    "base_graph",
    "binary_tree",
    "chain",
    "circulant_offsets",
    "complete",
    "double_binary_trees",
    "erdos_renyi",
    "exponential",
    "from_networkx",
    "from_weights",
    "get",
    "hypercube",
    "lazy",
    "lambda_min",
    "metropolis_hastings",
    "one_peer_exponential",
    "rho",
    "ring",
    "social_network",
    "spanning_tree",
    "spectral_gap",
    "star",
    "torus",
    "uniform_weights",
    "validate_mixing_matrix",
]
