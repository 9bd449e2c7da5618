"""The task protocol: a loss/gradient oracle per worker, its data on device, and how to evaluate stacked models."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np


class Task(NamedTuple):
    """A training problem split over ``n_workers`` workers.

    Attributes:
      name: short identifier, e.g. ``"digits/mlp"`` or ``"quadratics"``.
      n_workers: number of workers n.
      data: pytree of device arrays (training/test data, partitions); passed into compiled functions as an
        argument, never baked in as a constant.
      init_params: ``init_params(key) -> params`` for ONE model; every worker starts from the same x⁰.
      loss: ``loss(params, batch) -> float32 scalar``: one worker's minibatch objective (differentiated by the runner).
        Under ``simulate(..., compute_dtype="bfloat16")`` the runner passes ``params`` and ``batch`` with their
        floating leaves cast to bfloat16 and casts the value to float32; the loss should then compute in the params'
        dtype (classification: the model in bf16, the cross-entropy on float32 logits).
      sample: ``sample(data, key, worker, step, batch_size) -> batch``: worker ``worker``'s minibatch at ``step``, drawn
        on device from its own shard; ``key`` is the worker's own PRNG stream; ``batch_size`` is static.
      evaluate: ``evaluate(data, stacked_params) -> dict[str, scalar]``: metrics of the averaged model x̄ and of each
        worker's own model (``avg_model_loss``, ...); jit-able.
      shard_size: training samples per worker (every worker holds the same number); 0 when not sample-based.
      worker_weights: ``(n,)`` float64, each worker's share of the data (sums to 1).
      info: JSON-serialisable description (dataset, model, partition, α, ...).
      kind: ``"classification"`` or ``"quadratic"`` (what ``evaluate`` reports).
    """

    name: str
    n_workers: int
    data: Any
    init_params: Callable
    loss: Callable
    sample: Callable
    evaluate: Callable
    shard_size: int
    worker_weights: np.ndarray
    info: dict
    kind: str
