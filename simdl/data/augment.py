"""On-device image augmentation for CIFAR-style training (jax): random crop after zero padding, random flip.

Pure functions of a PRNG key; jit-able (``pad`` and ``flip`` are static) and vmappable over a worker axis,
e.g. ``jax.vmap(lambda k, x: random_crop_flip(k, x))(worker_keys, worker_batches)`` with keys (n,) and images
(n, B, H, W, C).
"""

from functools import partial

import jax
import jax.numpy as jnp


def hflip(images: jax.Array) -> jax.Array:
    """Mirror images left-right. images: (..., H, W, C) -> same shape and dtype."""
    return jnp.flip(images, axis=-2)


def _crop_flip_one(key: jax.Array, image: jax.Array, pad: int, flip: bool) -> jax.Array:
    height, width, channels = image.shape
    key_y, key_x, key_flip = jax.random.split(key, 3)
    padded = jnp.pad(image, ((pad, pad), (pad, pad), (0, 0)))
    dy = jax.random.randint(key_y, (), 0, 2 * pad + 1)
    dx = jax.random.randint(key_x, (), 0, 2 * pad + 1)
    zero = jnp.zeros((), dtype=dy.dtype)
    crop = jax.lax.dynamic_slice(padded, (dy, dx, zero), (height, width, channels))
    if not flip:
        return crop
    return jnp.where(jax.random.bernoulli(key_flip), hflip(crop), crop)


@partial(jax.jit, static_argnames=("pad", "flip"))
def random_crop_flip(key: jax.Array, images: jax.Array, pad: int = 4, flip: bool = True) -> jax.Array:
    """Per-sample random crop after zero padding, then a random horizontal flip with probability 1/2.

    Each image is zero-padded by ``pad`` pixels on every side and an (H, W) window is cut at a uniformly
    random offset in ``0 .. 2 * pad`` along each axis (the standard CIFAR augmentation of He et al. 2016,
    arXiv 1512.03385, with pad = 4). Each sample draws its own offsets and flip from ``key``.

    Args:
        key: a jax PRNG key.
        images: (B, H, W, C) float array (e.g. float32, already normalised; padding uses 0).
        pad: non-negative padding in pixels (static). ``pad=0`` disables cropping.
        flip: whether to apply random horizontal flips (static).

    Returns:
        (B, H, W, C) array, same dtype as ``images``.

    Raises:
        ValueError: if ``images`` is not 4-D or ``pad`` is negative.
    """
    if images.ndim != 4:
        raise ValueError(f"images must have shape (B, H, W, C), got shape {images.shape}")
    if pad < 0:
        raise ValueError(f"pad must be >= 0 pixels, got {pad}")
    keys = jax.random.split(key, images.shape[0])
    return jax.vmap(lambda k, x: _crop_flip_one(k, x, pad, flip))(keys, images)
