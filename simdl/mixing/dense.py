"""Dense application of a mixing matrix to a stacked pytree: ``X ← W X`` along the worker axis."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def dense_mix(weights: jax.Array, tree):
    """Return ``W @ X`` for every leaf of a stacked pytree.

    Args:
      weights: ``(n, n)`` mixing matrix (any float dtype; cast to each leaf's dtype). ``(W X)_i = Σ_j W_ij x_j``.
      tree: pytree whose leaves have a leading worker axis of size ``n``.

    Returns:
      A pytree of the same structure, shapes and dtypes.

    The contraction runs at ``Precision.HIGHEST`` so that GPUs do not fall back to TF32, which would corrupt
    consensus-distance measurements (docs/algorithms.md#consensus-distance).
    """

    def one(x):
        w = weights.astype(x.dtype)
        flat = x.reshape(x.shape[0], -1)
        out = jnp.matmul(w, flat, precision=jax.lax.Precision.HIGHEST)
        return out.reshape(x.shape)

    return jax.tree_util.tree_map(one, tree)


def mean_mix(tree, worker_weights=None):
    """Exact (weighted) average broadcast to every worker: ``W = 1 pᵀ`` with ``p`` = ``worker_weights``.

    Args:
      tree: stacked pytree, leading axis ``n``.
      worker_weights: optional ``(n,)`` non-negative weights summing to 1; uniform when ``None``.

    Returns:
      Pytree of the same shapes where every worker holds the average.
    """

    def one(x):
        if worker_weights is None:
            avg = jnp.mean(x, axis=0, keepdims=True)
        else:
            p = jnp.asarray(worker_weights, x.dtype).reshape((-1,) + (1,) * (x.ndim - 1))
            avg = jnp.sum(p * x, axis=0, keepdims=True)
        return jnp.broadcast_to(avg, x.shape)

    return jax.tree_util.tree_map(one, tree)
