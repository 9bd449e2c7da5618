"""``scale · (W − I) Y`` from neighbour differences, ``scale · Σ_{j≠i} W_ij (y_j − y_i)``.

Mathematically ``W Y − Y`` for a row-stochastic W; computing it from differences keeps the rounding error relative to
the (small) disagreement between neighbours instead of the models' magnitude. Bias-corrected gossip (D², exact
diffusion) integrates this term, so the plain ``W Y − Y`` would drift in float32 (a systematic ~1 ulp of x per step
at the fixed point). Reached by algorithms through :meth:`simdl.algorithms.Context.mix_delta`.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from simdl.mixing.mixer import split_map


def slot_difference(index, weight, y, scale: float = 1.0):
    """``scale · Σ_{s≥1} weight[i, s] (y[index[i, s]] − y_i)`` of one stacked leaf (slot 0 = self, skipped).

    Args:
      index: int ``(n, k)`` neighbour slots (numpy, or a traced jax array).
      weight: float ``(n, k)`` slot weights ``W[i, index[i, s]]`` (numpy: static; jax: e.g. a faulty step's
        weights). Empty slots have weight 0.
      y: ``(n, ...)`` leaf, any float dtype; the result has its shape and dtype.
      scale: multiplies the off-diagonal weights (0.5 for ``(I + W)/2``).
    """
    if isinstance(weight, np.ndarray):
        w_all = (scale * weight[:, 1:]).astype(np.float32)
        idx = np.asarray(index)[:, 1:]
    else:
        w_all = scale * weight[:, 1:]
        idx = index[:, 1:]
    out = jnp.zeros_like(y)
    bshape = (y.shape[0],) + (1,) * (y.ndim - 1)
    for s in range(idx.shape[1]):
        w = jnp.asarray(w_all[:, s], y.dtype).reshape(bshape)
        out = out + w * (jnp.take(y, jnp.asarray(idx[:, s]), axis=0) - y)
    return out


def neighbor_difference(topology, tree, scale: float = 1.0):
    """``scale · (W − I) Y`` of a stacked pytree on a static topology (``weights_at(0)``), from neighbour differences.

    Uses shifts (``jnp.roll``) for a circulant W with at most 8 offsets, else neighbour slots. A split topology
    (``Topology.is_split``, double binary trees) uses tree t's matrix on coordinates ``k mod T = t``
    (:func:`simdl.mixing.split_map`), like the mixers.

    Args:
      topology: a static :class:`simdl.topologies.Topology`.
      tree: stacked pytree, leading axis n (same shapes/dtypes out).
      scale: multiplies W's off-diagonal weights (0.5 for ``(I + W)/2``).
    """
    if topology.is_split:
        return split_map([partial(slot_difference, *topology.tree_neighbor_slots(t), scale=scale)
                          for t in range(len(topology.tree_weights))], tree)
    circ = topology.circulant_offsets(0)
    if circ is not None and len(circ) <= 8:
        terms = [(o, scale * c) for o, c in circ if o != 0]

        def one(y):
            out = jnp.zeros_like(y)
            for o, c in terms:
                out = out + jnp.asarray(c, y.dtype) * (jnp.roll(y, -o, axis=0) - y)
            return out

        return jax.tree_util.tree_map(one, tree)
    index, weight = topology.neighbor_slots(0)
    return jax.tree_util.tree_map(partial(slot_difference, index, weight, scale=scale), tree)

