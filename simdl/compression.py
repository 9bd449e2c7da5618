"""Message compressors for communication-compressed gossip (CHOCO-SGD, arXiv 1902.00340).

A compressor is a pure function ``compressor(key, x) -> (q, nbytes)``: ``x`` is one tensor of one worker (any shape,
float dtype), ``q`` has the same shape and dtype (the decompressed message the receivers reconstruct) and
``nbytes`` is a float32 scalar, the size of the message on the wire. Byte conventions:

* ``identity``: ``d · itemsize``.
* ``top_k`` / ``random_k`` (sparsifiers): ``k · (itemsize + 4)``: the k values plus their int32 indices.
* ``qsgd``: ``4 + ⌈d (1 + ⌈log2(s + 1)⌉) / 8⌉``: one float32 norm, then per coordinate a sign bit and its level in
  ``⌈log2(s + 1)⌉`` bits (the plain encoding of Alistarh et al. 2017, without Elias coding).
* ``sign``: ``4 + ⌈d / 8⌉``: one float32 scale and one bit per coordinate.

:func:`compress_tree` applies a compressor leaf by leaf to one worker's pytree (per tensor, as the CHOCO reference
code does) and :func:`compress_stacked` to all workers at once (vmapped, a different key per worker).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

INDEX_BYTES = 4
NORM_BYTES = 4
COMPRESSORS = ("identity", "top_k", "random_k", "qsgd", "sign")


class Compressor(NamedTuple):
    """A compression operator ``Q``.

    Attributes:
      name: one of :data:`COMPRESSORS` (or a user name).
      fn: ``fn(key, x) -> (q, nbytes)``; ``x`` one worker's tensor, ``q`` same shape/dtype, ``nbytes`` float32 scalar.
      params: JSON-serialisable settings (recorded in results).
      delta: the contraction parameter δ of ``E‖Q(x) − x‖² ≤ (1 − δ)‖x‖²`` where it is known in closed form for a
        d-dimensional input (callable ``d -> δ``), else ``None``.
    """

    name: str
    fn: Callable
    params: dict
    delta: Callable[[int], float] | None = None

    def __call__(self, key, x):
        return self.fn(key, x)


def _size(x) -> int:
    return int(math.prod(x.shape))


def _check_fraction(fraction) -> float:
    f = float(fraction)
    if not (math.isfinite(f) and 0.0 < f <= 1.0):
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    return f


def num_kept(fraction: float, d: int) -> int:
    """Coordinates kept by a sparsifier: ``k = max(1, ⌊fraction · d⌋)`` (the rule of the CHOCO reference code)."""
    return max(1, int(fraction * d))


def identity() -> Compressor:
    """No compression: ``Q(x) = x``; bytes ``d · itemsize``."""

    def fn(key, x):
        return x, jnp.float32(_size(x) * x.dtype.itemsize)

    return Compressor("identity", fn, {}, lambda d: 1.0)


def _scatter(x, idx):
    flat = x.reshape(-1)
    return jnp.zeros_like(flat).at[idx].set(flat[idx]).reshape(x.shape)


def top_k(fraction: float = 0.1) -> Compressor:
    """Keep the ``k = max(1, ⌊fraction · d⌋)`` entries of largest magnitude (per tensor), zero the rest.

    Contractive with δ = k/d (Stich et al. 2018, arXiv 1809.07599). Bytes: ``k · (itemsize + 4)``.

    Raises:
      ValueError: ``fraction`` not in (0, 1].
    """
    f = _check_fraction(fraction)

    def fn(key, x):
        d = _size(x)
        k = num_kept(f, d)
        if k >= d:
            return x, jnp.float32(d * (x.dtype.itemsize + INDEX_BYTES))
        _, idx = jax.lax.top_k(jnp.abs(x.reshape(-1)), k)
        return _scatter(x, idx), jnp.float32(k * (x.dtype.itemsize + INDEX_BYTES))

    return Compressor("top_k", fn, {"fraction": f}, lambda d: num_kept(f, d) / d)


def random_k(fraction: float = 0.1, unbiased: bool = False) -> Compressor:
    """Keep ``k = max(1, ⌊fraction · d⌋)`` coordinates drawn uniformly without replacement (per tensor, from ``key``).

    ``unbiased=False`` (default, as in CHOCO-SGD): the kept values are sent as they are, δ = k/d.
    ``unbiased=True``: they are scaled by ``d/k`` so that ``E[Q(x)] = x`` (not contractive).
    Bytes: ``k · (itemsize + 4)`` (values plus indices).

    Raises:
      ValueError: ``fraction`` not in (0, 1].
    """
    f = _check_fraction(fraction)
    unbiased = bool(unbiased)

    def fn(key, x):
        d = _size(x)
        k = num_kept(f, d)
        nbytes = jnp.float32(k * (x.dtype.itemsize + INDEX_BYTES))
        if k >= d:
            return x, nbytes
        _, idx = jax.lax.top_k(jax.random.uniform(key, (d,)), k)  # a uniform random k-subset
        q = _scatter(x, idx)
        if unbiased:
            q = (q * (d / k)).astype(x.dtype)
        return q, nbytes

    delta = None if unbiased else (lambda d: num_kept(f, d) / d)
    return Compressor("random_k", fn, {"fraction": f, "unbiased": unbiased}, delta)


def qsgd(levels: int = 16, rescale: bool = False) -> Compressor:
    """QSGD stochastic quantization with ``s = levels`` levels (Alistarh et al. 2017, arXiv 1610.02132).

    ``Q(x)_i = ‖x‖₂ · sign(x_i) · ξ_i / s`` where, with ``l = ⌊s |x_i| / ‖x‖₂⌋``, ``ξ_i = l + 1`` with probability
    ``s |x_i| / ‖x‖₂ − l`` and ``ξ_i = l`` otherwise (stochastic rounding, from ``key``). Unbiased: ``E[Q(x)] = x``.
    ``rescale=True`` divides by ``τ = 1 + min(d/s², √d/s)``, the contractive (biased) version used by CHOCO-SGD
    (Koloskova et al. 2019, arXiv 1902.00340), with δ = 1/τ. Per tensor. x = 0 gives 0.
    Bytes: ``4 + ⌈d (1 + ⌈log2(s + 1)⌉) / 8⌉``.

    Raises:
      ValueError: ``levels`` not an integer ≥ 1.
    """
    if isinstance(levels, bool) or int(levels) != levels or levels < 1:
        raise ValueError(f"levels must be an integer >= 1, got {levels!r}")
    s = int(levels)
    rescale = bool(rescale)
    bits = 1 + math.ceil(math.log2(s + 1))

    def tau(d: int) -> float:
        return 1.0 + min(d / s**2, math.sqrt(d) / s)

    def fn(key, x):
        d = _size(x)
        xf = x.astype(jnp.float32)
        norm = jnp.sqrt(jnp.sum(jnp.square(xf)))
        safe = jnp.where(norm > 0, norm, 1.0)
        level = s * jnp.abs(xf) / safe
        lower = jnp.floor(level)
        up = jax.random.uniform(key, x.shape) < (level - lower)
        q = jnp.sign(xf) * norm * (lower + up) / s
        if rescale:
            q = q / tau(d)
        return q.astype(x.dtype), jnp.float32(NORM_BYTES + math.ceil(d * bits / 8))

    delta = (lambda d: 1.0 / tau(d)) if rescale else None
    return Compressor("qsgd", fn, {"levels": s, "rescale": rescale}, delta)


def sign() -> Compressor:
    """Scaled sign: ``Q(x) = (‖x‖₁ / d) · sign(x)`` per tensor, sign in {−1, +1} (0 maps to +1)
    (Karimireddy et al. 2019, arXiv 1901.09847). δ = ‖x‖₁² / (d ‖x‖₂²) depends on x. Bytes: ``4 + ⌈d / 8⌉``."""

    def fn(key, x):
        d = _size(x)
        scale = jnp.mean(jnp.abs(x))
        q = jnp.where(x >= 0, scale, -scale).astype(x.dtype)
        return q, jnp.float32(NORM_BYTES + math.ceil(d / 8))

    return Compressor("sign", fn, {})


def get(name: str, compression: float | None = None) -> Compressor:
    """Build a compressor by name; ``compression`` is the kept fraction for ``top_k``/``random_k`` (default 0.1)
    and the number of levels s for ``qsgd`` (default 16, contractive ``rescale=True`` version); ignored otherwise.

    Raises:
      ValueError: unknown name (valid ones listed) or an invalid ``compression``.
    """
    if name == "identity":
        return identity()
    if name == "top_k":
        return top_k(0.1 if compression is None else compression)
    if name == "random_k":
        return random_k(0.1 if compression is None else compression)
    if name == "qsgd":
        return qsgd(16 if compression is None else compression, rescale=True)
    if name == "sign":
        return sign()
    raise ValueError(f"unknown compressor {name!r}; valid: {', '.join(COMPRESSORS)}")


def compress_tree(compressor: Compressor, key, tree):
    """Apply ``compressor`` to every float leaf of ONE worker's pytree (leaf j uses ``fold_in(key, j)``).

    Returns:
      ``(q_tree, nbytes)``: same structure/shapes/dtypes; float32 scalar total bytes.
    """
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    out, total = [], jnp.float32(0.0)
    for j, x in enumerate(leaves):
        q, b = compressor(jax.random.fold_in(key, j), x)
        out.append(q)
        total = total + b
    return jax.tree_util.tree_unflatten(treedef, out), total


def compress_stacked(compressor: Compressor, key, stacked):
    """Compress every worker's model of a stacked pytree (leading axis n); worker i uses ``fold_in(key, i)``.

    Returns:
      ``(q_stacked, nbytes)``: same structure as ``stacked``; float32 ``(n,)`` bytes per worker message.
    """
    n = jax.tree_util.tree_leaves(stacked)[0].shape[0]
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(n))
    return jax.vmap(lambda k, t: compress_tree(compressor, k, t))(keys, stacked)
