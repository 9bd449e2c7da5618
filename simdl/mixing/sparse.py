"""Neighbour-slot sparse mixing: cost proportional to the number of edges, not n²."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def sparse_mix(index: jax.Array, weight: jax.Array, tree):
    """Return ``W X`` using a neighbour-slot representation of ``W``.

    Args:
      index: ``(n, k)`` int32; ``index[i, s]`` is the worker whose model fills slot ``s`` of worker ``i``
        (slot 0 is the worker itself; unused slots point anywhere with weight 0).
      weight: ``(n, k)`` float; ``(W X)_i = Σ_s weight[i, s] · X[index[i, s]]``.
      tree: stacked pytree, leading axis ``n``.

    Returns:
      Pytree of the same structure, shapes and dtypes.

    Each slot is one gather of the stacked leaf plus one fused multiply-add, so the work is ``k`` passes over the
    parameters (k = 1 + max in-degree).
    """

    k = index.shape[1]

    def one(x):
        w = weight.astype(x.dtype)
        bshape = (x.shape[0],) + (1,) * (x.ndim - 1)
        out = w[:, 0].reshape(bshape) * jnp.take(x, index[:, 0], axis=0)
        for s in range(1, k):
            out = out + w[:, s].reshape(bshape) * jnp.take(x, index[:, s], axis=0)
        return out

    return jax.tree_util.tree_map(one, tree)
