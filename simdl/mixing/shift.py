"""Shift-based mixing for circulant mixing matrices (rings, exponential and one-peer exponential graphs)."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp


def shift_mix(offsets: Sequence[int], coeffs, tree):
    """Return ``W X`` for a circulant ``W`` given as offsets and coefficients.

    ``(W X)_i = Σ_o c_o · X[(i + o) mod n]``.

    Args:
      offsets: static sequence of ints in ``[0, n)`` or a traced ``(k,)`` int32 array (time-varying graphs, where the
        offsets change with the step; ``jnp.roll`` handles traced shifts).
      coeffs: ``(k,)`` float weights (numpy or traced).
      tree: stacked pytree, leading axis ``n``.

    Returns:
      Pytree of the same structure, shapes and dtypes.
    """

    def one(x):
        c = jnp.asarray(coeffs, x.dtype)
        out = None
        for s in range(len(offsets)):
            o = offsets[s]
            term = c[s] * (x if (isinstance(o, int) and o == 0) else jnp.roll(x, -o, axis=0))
            out = term if out is None else out + term
        return out

    return jax.tree_util.tree_map(one, tree)
