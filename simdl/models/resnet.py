"""ResNet-20 for CIFAR (He et al. 2016, arXiv 1512.03385, §4.2) with a choice of normalisation."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from simdl.models.cnn import check_image
from simdl.models.conv import Conv, check_conv_impl
from simdl.models.norms import check_norm, make_norm

SHORTCUTS = ("projection", "pad")


class BasicBlock(nn.Module):
    """Two 3×3 convolutions with normalisation and an identity / downsampling shortcut.

    ``shortcut="projection"``: 1×1 strided convolution + norm when the shape changes (as in the codebases of
    RelaySGD/QGM); ``"pad"``: He et al.'s option A (stride-2 subsampling and zero channel padding, no params).
    """

    features: int
    strides: int = 1
    norm: str = "group"
    groups: int = 2
    shortcut: str = "projection"
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        bias = self.norm == "none"
        y = Conv(self.features, (3, 3), self.strides, use_bias=bias, impl=self.conv_impl)(x)
        y = nn.relu(make_norm(self.norm, self.groups, train)(y))
        y = Conv(self.features, (3, 3), use_bias=bias, impl=self.conv_impl)(y)
        y = make_norm(self.norm, self.groups, train)(y)
        if self.strides != 1 or x.shape[-1] != self.features:
            if self.shortcut == "projection":
                x = Conv(self.features, (1, 1), self.strides, use_bias=bias, impl=self.conv_impl)(x)
                x = make_norm(self.norm, self.groups, train)(x)
            else:
                x = x[:, :: self.strides, :: self.strides, :]
                extra = self.features - x.shape[-1]
                x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))
        return nn.relu(x + y)


class ResNet20(nn.Module):
    """CIFAR ResNet-20 (He et al. 2016, arXiv 1512.03385): conv3×3(16) + norm + ReLU, three stages of three
    :class:`BasicBlock` with 16/32/64 channels (stride 2 entering stages 2 and 3), global average pooling,
    ``Dense(num_classes)``. 0.27M params with 10 classes and GroupNorm: 272,474 with the default projection
    shortcuts, 269,722 with ``shortcut="pad"``.

    Attributes:
      num_classes: output classes.
      norm: ``"group"`` (default; GroupNorm as in RelaySGD arXiv 2110.04175 and QGM arXiv 2102.04761),
        ``"evonorm"`` (EvoNorm-S0, arXiv 2004.02967), ``"batch"`` (BatchNorm; running statistics in the
        mutable ``batch_stats`` collection: train with ``apply(..., train=True, mutable=["batch_stats"])``; in
        simdl each worker's statistics are stacked with its model state) or ``"none"`` (convolutions get
        biases instead).
      groups: groups of GroupNorm / EvoNorm (must divide 16).
      shortcut: ``"projection"`` or ``"pad"`` (see :class:`BasicBlock`).
      conv_impl: see :mod:`simdl.models.conv`.

    Input NHWC float32 ``(B, H, W, C)`` with H, W ≥ 4; output logits ``(B, num_classes)`` float32 (bfloat16 inputs
    with bfloat16 params compute, and return, in bfloat16; see :mod:`simdl.models.cnn`).

    Raises:
      ValueError: unknown ``norm`` / ``shortcut`` / ``conv_impl``, ``groups`` not dividing 16, bad input
        shape.
    """

    num_classes: int = 10
    norm: str | None = "group"
    groups: int = 2
    shortcut: str = "projection"
    conv_impl: str = "auto"

    def __post_init__(self):
        check_norm(self.norm)
        check_conv_impl(self.conv_impl)
        if self.shortcut not in SHORTCUTS:
            raise ValueError(f"unknown shortcut {self.shortcut!r}; valid: {', '.join(SHORTCUTS)}")
        g = self.groups
        if isinstance(g, bool) or not isinstance(g, int) or g < 1 or 16 % g:
            raise ValueError(f"groups must be a positive divisor of 16, got {self.groups!r}")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        norm = check_norm(self.norm)
        x = check_image(x, 4, "ResNet20")
        x = Conv(16, (3, 3), use_bias=norm == "none", impl=self.conv_impl)(x)
        x = nn.relu(make_norm(norm, self.groups, train)(x))
        for stage, features in enumerate((16, 32, 64)):
            for block in range(3):
                strides = 2 if stage > 0 and block == 0 else 1
                x = BasicBlock(features, strides, norm, self.groups, self.shortcut, self.conv_impl)(x, train)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes)(x)
