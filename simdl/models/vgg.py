"""VGG-11 for CIFAR (Simonyan & Zisserman 2014, arXiv 1409.1556, configuration A)."""

from __future__ import annotations

import flax.linen as nn
import jax

from simdl.models.cnn import check_image
from simdl.models.conv import Conv, check_conv_impl
from simdl.models.norms import check_norm, make_norm

VGG11_CONFIG = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class VGG11(nn.Module):
    """VGG-11 for 32×32 images: 3×3 SAME convolutions (ReLU) with channels
    64-M-128-M-256-256-M-512-512-M-512-512-M (M = 2×2 max pooling), flatten (1×1×512 on 32×32), then a single
    ``Dense(num_classes)``, as in the common CIFAR VGG variants (no 4096-wide classifier). Without
    normalisation by default, as in RelaySGD (arXiv 2110.04175). 9.23M params with 10 classes.

    Attributes:
      num_classes: output classes.
      norm: ``None``/``"none"`` (default; convolutions have biases), ``"group"``, ``"evonorm"`` or ``"batch"``
        (see :func:`simdl.models.norms.make_norm`) after every convolution.
      groups: groups for GroupNorm / EvoNorm.
      conv_impl: see :mod:`simdl.models.conv`.

    Input NHWC float32 ``(B, H, W, C)`` with H, W ≥ 32; output logits ``(B, num_classes)`` float32 (bfloat16 inputs
    with bfloat16 params compute, and return, in bfloat16; see :mod:`simdl.models.cnn`).

    Raises:
      ValueError: unknown ``norm``/``conv_impl``, images smaller than 32×32.
    """

    num_classes: int = 10
    norm: str | None = None
    groups: int = 2
    conv_impl: str = "auto"

    def __post_init__(self):
        check_norm(self.norm)
        check_conv_impl(self.conv_impl)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        norm = check_norm(self.norm)
        x = check_image(x, 32, "VGG11")
        for v in VGG11_CONFIG:
            if v == "M":
                x = nn.max_pool(x, (2, 2), (2, 2))
            else:
                x = Conv(v, (3, 3), use_bias=norm == "none", impl=self.conv_impl)(x)
                x = nn.relu(make_norm(norm, self.groups, train)(x))
        return nn.Dense(self.num_classes)(x.reshape((x.shape[0], -1)))
