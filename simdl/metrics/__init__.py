"""Metrics over stacked worker models: consensus distance, worker mean, parameter counts."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def worker_mean(tree):
    """x̄: the average over the worker axis of every leaf (shapes lose the leading axis n)."""
    return jax.tree_util.tree_map(lambda x: jnp.mean(x, axis=0), tree)


def consensus_distance(tree) -> jax.Array:
    """Consensus distance Ξ² = (1/n) Σ_i ‖x_i − x̄‖² over all leaves (Kong et al. 2021, arXiv 2102.04828).

    Args:
      tree: stacked pytree, leading axis n; float leaves.

    Returns:
      float32 scalar (squared Euclidean norm, parameter units squared).
    """
    leaves = jax.tree_util.tree_leaves(tree)
    total = jnp.float32(0.0)
    for x in leaves:
        d = x - jnp.mean(x, axis=0, keepdims=True)
        total = total + jnp.sum(jnp.square(d).astype(jnp.float32)) / x.shape[0]
    return total


def param_count(tree, stacked: bool = True) -> int:
    """Number of scalar parameters of one model (leading worker axis dropped when ``stacked``)."""
    leaves = jax.tree_util.tree_leaves(tree)
    return int(sum(int(jnp.size(x)) // (x.shape[0] if stacked else 1) for x in leaves))
