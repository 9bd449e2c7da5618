"""Flax (linen) models: MLP, logistic regression, small CNNs, ResNet-20 and VGG-11; per-worker execution.

Every model takes float32 inputs (NHWC images, or flat vectors for ``mlp``/``logreg``) and
``train: bool = False`` and returns logits ``(B, num_classes)`` float32. Build by name with :func:`get_model`;
apply to stacked workers with :func:`per_worker_apply`.
"""

from simdl.models.batched import STRATEGIES, per_worker_apply, resolve_strategy
from simdl.models.cnn import CDSGDNet, LeNet5, SmallCNN
from simdl.models.conv import CONV_IMPLS, Conv, conv2d
from simdl.models.mlp import MLP, LogisticRegression
from simdl.models.norms import NORMS, EvoNormS0
from simdl.models.registry import MODELS, count_params, get_model, no_decay_mask
from simdl.models.resnet import ResNet20
from simdl.models.vgg import VGG11

__all__ = [
    "CDSGDNet", "CONV_IMPLS", "Conv", "EvoNormS0", "LeNet5", "LogisticRegression", "MLP", "MODELS", "NORMS",
    "ResNet20", "STRATEGIES", "SmallCNN", "VGG11", "conv2d", "count_params", "get_model", "no_decay_mask",
    "per_worker_apply", "resolve_strategy",
]
