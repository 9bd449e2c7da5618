"""Small convolutional networks for 8×8 / 28×28 / 32×32 images.

All take NHWC float images ``(B, H, W, C)`` (non-float images are cast to float32) and return logits
``(B, num_classes)`` in the compute dtype: float32, or bfloat16 when inputs and params are bfloat16 (mixed precision,
``simdl.simulate(..., compute_dtype="bfloat16")``: every convolution, matmul and norm then runs in bfloat16).
``conv_impl`` picks the convolution implementation (:mod:`simdl.models.conv`); parameters are identical for every
choice, so a model trained with one implementation can be evaluated with another.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from simdl.models.conv import Conv, check_conv_impl


def check_image(x: jax.Array, min_hw: int, model: str) -> jax.Array:
    """Validate an NHWC image batch of spatial size at least ``min_hw``; return it as a float array: floating inputs
    keep their dtype (float32 or bfloat16, the model's compute dtype), others (uint8) become float32."""
    if x.ndim != 4:
        raise ValueError(f"{model} expects NHWC images (B, H, W, C), got shape {x.shape}")
    if min(x.shape[1:3]) < min_hw:
        raise ValueError(f"{model} needs images of at least {min_hw}x{min_hw}, got {x.shape[1]}x{x.shape[2]}")
    return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.float32)


def _flatten(x: jax.Array) -> jax.Array:
    return x.reshape((x.shape[0], -1))


class SmallCNN(nn.Module):
    """Small CNN: ``conv3×3(32) -> ReLU -> avgpool2 -> conv3×3(64) -> ReLU -> avgpool2 -> Dense(128) ->
    ReLU -> Dense(num_classes)`` (SAME convolutions). Works on any image of at least 4×4 (8×8×1 digits: 53k
    params with 10 classes; 28×28×1: 0.42M; 32×32×3: 0.54M).

    Raises ValueError for non-NHWC inputs, images smaller than 4×4, or an unknown ``conv_impl``.
    """

    num_classes: int = 10
    conv_impl: str = "auto"

    def __post_init__(self):
        check_conv_impl(self.conv_impl)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = check_image(x, 4, "SmallCNN")
        x = nn.avg_pool(nn.relu(Conv(32, (3, 3), impl=self.conv_impl)(x)), (2, 2), (2, 2))
        x = nn.avg_pool(nn.relu(Conv(64, (3, 3), impl=self.conv_impl)(x)), (2, 2), (2, 2))
        x = nn.relu(nn.Dense(128)(_flatten(x)))
        return nn.Dense(self.num_classes)(x)


class LeNet5(nn.Module):
    """LeNet-5 (LeCun et al. 1998, "Gradient-based learning applied to document recognition"), modern variant:
    ``conv5×5(6, SAME) -> ReLU -> maxpool2 -> conv5×5(16, VALID) -> ReLU -> maxpool2 -> Dense(120) -> ReLU ->
    Dense(84) -> ReLU -> Dense(num_classes)``. ReLU and max pooling replace the original scaled tanh and
    trainable subsampling; the SAME first convolution makes 28×28 inputs follow the original 32×32 geometry
    (16·5·5 = 400 features; 61.7k params for 28×28×1 with 10 classes). Needs images of at least 10×10
    (not 8×8 digits).

    Raises ValueError for non-NHWC inputs, images smaller than 10×10, or an unknown ``conv_impl``.
    """

    num_classes: int = 10
    conv_impl: str = "auto"

    def __post_init__(self):
        check_conv_impl(self.conv_impl)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = check_image(x, 10, "LeNet5")
        x = nn.max_pool(nn.relu(Conv(6, (5, 5), padding="SAME", impl=self.conv_impl)(x)), (2, 2), (2, 2))
        x = nn.max_pool(nn.relu(Conv(16, (5, 5), padding="VALID", impl=self.conv_impl)(x)), (2, 2), (2, 2))
        x = nn.relu(nn.Dense(120)(_flatten(x)))
        x = nn.relu(nn.Dense(84)(x))
        return nn.Dense(self.num_classes)(x)


class CDSGDNet(nn.Module):
    """The 4-convolution CNN of CDSGD (Jiang et al. 2017, arXiv 1706.07880), i.e. the Keras ``cifar10_cnn``
    example: ``conv3×3(32, SAME) -> conv3×3(32, VALID) -> maxpool2 -> [dropout .25] -> conv3×3(64, SAME) ->
    conv3×3(64, VALID) -> maxpool2 -> [dropout .25] -> Dense(512) -> [dropout .5] -> Dense(num_classes)``,
    ReLU after every hidden layer. 1.25M params on 32×32×3 with 10 classes. Needs images of at least 10×10.

    Dropout is off by default (``dropout=0``); with ``dropout > 0`` the three dropout layers use rates
    ``(dropout, dropout, 2·dropout)`` (Keras: 0.25, 0.25, 0.5) when ``train=True``, which needs a
    ``"dropout"`` PRNG stream (``apply(..., train=True, rngs={"dropout": key})``).

    Raises ValueError for non-NHWC inputs, images smaller than 10×10, ``dropout`` outside [0, 0.5), or an
    unknown ``conv_impl``.
    """

    num_classes: int = 10
    dropout: float = 0.0
    conv_impl: str = "auto"

    def __post_init__(self):
        check_conv_impl(self.conv_impl)
        if not 0.0 <= self.dropout < 0.5:
            raise ValueError(f"dropout must be in [0, 0.5), got {self.dropout!r}")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = check_image(x, 10, "CDSGDNet")
        det = not train or self.dropout == 0.0
        for c in (32, 64):
            x = nn.relu(Conv(c, (3, 3), padding="SAME", impl=self.conv_impl)(x))
            x = nn.relu(Conv(c, (3, 3), padding="VALID", impl=self.conv_impl)(x))
            x = nn.max_pool(x, (2, 2), (2, 2))
            x = nn.Dropout(self.dropout, deterministic=det)(x)
        x = nn.relu(nn.Dense(512)(_flatten(x)))
        x = nn.Dropout(2 * self.dropout, deterministic=det)(x)
        return nn.Dense(self.num_classes)(x)
