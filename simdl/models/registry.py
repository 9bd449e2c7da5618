"""Model names -> constructors, parameter counting and the weight-decay mask."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import numpy as np

from simdl.models.cnn import CDSGDNet, LeNet5, SmallCNN
from simdl.models.mlp import MLP, LogisticRegression
from simdl.models.resnet import ResNet20
from simdl.models.vgg import VGG11

MODELS: dict[str, type[nn.Module]] = {
    "mlp": MLP,
    "logreg": LogisticRegression,
    "cnn": SmallCNN,
    "lenet5": LeNet5,
    "cdsgd_cnn": CDSGDNet,
    "resnet20": ResNet20,
    "vgg11": VGG11,
}


def _fields(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.init and f.name not in ("parent", "name")]


def get_model(name: str, num_classes: int, **kw) -> nn.Module:
    """Build model ``name`` with ``num_classes`` outputs; ``kw`` are its other attributes (e.g. ``hidden``,
    ``norm``, ``groups``, ``conv_impl``).

    Raises:
      ValueError: unknown name (lists :data:`MODELS`), ``num_classes < 1``, or an attribute the model does not
        have (lists the valid ones).
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid: {', '.join(MODELS)}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    cls = MODELS[name]
    valid = [f for f in _fields(cls) if f != "num_classes"]
    bad = sorted(set(kw) - set(valid))
    if bad:
        raise ValueError(f"model {name!r} has no attribute(s) {', '.join(bad)}; valid: {', '.join(valid)}")
    return cls(num_classes=int(num_classes), **kw)


def count_params(params) -> int:
    """Total number of scalars in a pytree (e.g. ``model.init(...)`` or its ``"params"``)."""
    return int(sum(np.prod(np.shape(x), dtype=np.int64) for x in jax.tree_util.tree_leaves(params)))


def _leaf_name(path) -> str | None:
    last = path[-1] if path else None
    return getattr(last, "key", getattr(last, "name", None))


def no_decay_mask(params) -> object:
    """Weight-decay mask for ``optax.add_decayed_weights(mask=...)``: True exactly for leaves named
    ``kernel`` (convolution and dense weights), False for biases, normalisation parameters
    (GroupNorm/BatchNorm ``scale``, ``bias``; EvoNorm ``v``, ``scale``, ``bias``) and batch statistics.
    Same structure as ``params``, bool leaves."""
    return jax.tree_util.tree_map_with_path(lambda p, _: _leaf_name(p) == "kernel", params)


