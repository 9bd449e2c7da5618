"""Dense models: multilayer perceptron and multinomial logistic regression."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


def as_floating(x: jax.Array) -> jax.Array:
    """``x`` unchanged if it is floating point (float32, or bfloat16 for mixed precision), else cast to float32."""
    return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.float32)


def flatten(x: jax.Array) -> jax.Array:
    """``(B, ...)`` -> ``(B, prod(...))``. Raises ValueError for inputs without a batch axis."""
    if x.ndim < 2:
        raise ValueError(f"expected a batch of inputs (B, ...), got shape {x.shape}")
    return x.reshape((x.shape[0], -1))


class MLP(nn.Module):
    """Multilayer perceptron: flatten, ``Dense(h) -> ReLU`` for each h in ``hidden``, ``Dense(num_classes)``.

    Input float ``(B, ...)`` (images ``(B, H, W, C)`` or vectors ``(B, d)``; non-float inputs are cast to float32);
    output logits ``(B, num_classes)``, float32, or bfloat16 when params and inputs are bfloat16 (the layers compute
    in the promoted dtype of input and params). ``train`` is accepted for a uniform model interface and ignored.
    """

    hidden: Sequence[int] = (128,)
    num_classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = as_floating(flatten(x))
        for h in self.hidden:
            x = nn.relu(nn.Dense(h)(x))
        return nn.Dense(self.num_classes)(x)


class LogisticRegression(nn.Module):
    """Multinomial logistic regression: one ``Dense(num_classes)`` on the flattened input (e.g. the
    Synthetic(α, β) data of FedProx, Li et al. 2018, arXiv 1812.06127).

    Input float ``(B, ...)``; output logits ``(B, num_classes)`` in the promoted dtype of input and params (float32;
    bfloat16 for bfloat16 inputs and params); ``train`` is ignored.
    """

    num_classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        return nn.Dense(self.num_classes)(as_floating(flatten(x)))
