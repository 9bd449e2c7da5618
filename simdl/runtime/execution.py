"""Per-worker execution: how the n workers' losses and gradients are computed (vmap, ``lax.map`` in groups, a Python
loop), in which dtype (mixed precision), and what ``execution="auto"`` resolves to for a model on a device."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from simdl.tasks.base import Task


def check_execution(execution: str) -> str:
    """Validate a per-worker execution strategy name (raises ValueError listing the valid ones)."""
    from simdl.models.batched import STRATEGIES

    if execution not in STRATEGIES:
        raise ValueError(f"unknown execution {execution!r}; valid: {', '.join(STRATEGIES)}")
    return execution


#: Valid ``compute_dtype`` values: the dtype of the per-worker forward and backward passes.
COMPUTE_DTYPES = ("float32", "bfloat16")


def check_compute_dtype(compute_dtype) -> str:
    """Validate a ``compute_dtype`` name (one of :data:`COMPUTE_DTYPES`); raises ValueError naming the bad value."""
    if not isinstance(compute_dtype, str) or compute_dtype not in COMPUTE_DTYPES:
        raise ValueError(f"compute_dtype must be 'float32' or 'bfloat16', got {compute_dtype!r}")
    return compute_dtype


def cast_floating(tree, dtype):
    """``tree`` with every floating-point array leaf cast to ``dtype`` (integer, bool and key leaves unchanged)."""
    dtype = jnp.dtype(dtype)

    def cast(x):
        x = jnp.asarray(x)
        return x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x

    return jax.tree_util.tree_map(cast, tree)


def in_compute_dtype(loss: Callable, compute_dtype: str = "float32") -> Callable:
    """``loss(params, batch)`` evaluated in ``compute_dtype``: the floating leaves of ``params`` and ``batch`` are cast
    to it inside the function and the value is returned as a float32 scalar. Differentiating the result w.r.t.
    float32 params gives float32 gradients (the cast's transpose casts the cotangents back), while the model's
    forward and backward passes run in ``compute_dtype``. ``"float32"`` returns ``loss`` itself.

    Raises:
      ValueError: ``compute_dtype`` not in :data:`COMPUTE_DTYPES`.
    """
    check_compute_dtype(compute_dtype)
    if compute_dtype == "float32":
        return loss
    dtype = jnp.dtype(compute_dtype)

    def cast_loss(params, batch):
        return jnp.asarray(loss(cast_floating(params, dtype), cast_floating(batch, dtype))).astype(jnp.float32)

    return cast_loss


def resolve_execution(task: Task, execution: str, worker_batch: int | None, stacked_params,
                      batch_size: int) -> dict:
    """What ``execution="auto"`` (or an override) resolves to for ``task`` on the default backend: ``execution``
    (``"vmap"``, ``"map"`` or ``"loop"``), ``map_batch_size`` (workers per ``lax.map`` iteration, ``None`` unless
    ``"map"``), ``conv_impl`` (the convolution implementations a training step uses, ``"+"``-joined; ``None`` for
    a dense model) and ``conv_layers`` (one entry per convolution, in call order). ``stacked_params``: parameters
    with the worker axis (shapes suffice); ``batch_size``: the per-worker batch B (``conv_impl="auto"`` depends on
    it, see :func:`simdl.models.conv.resolve_conv_impl`)."""
    from simdl.models.batched import resolve_strategy
    from simdl.models.conv import layer_impls

    how = "map" if worker_batch is not None else resolve_strategy(check_execution(execution), stacked_params)
    one = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), stacked_params)
    key = jax.ShapeDtypeStruct((2,), jnp.uint32)
    batch = jax.eval_shape(lambda d, k: task.sample(d, k, 0, 0, int(batch_size)), task.data, key)
    layers = layer_impls(task.loss, one, batch)
    return {"execution": how, "map_batch_size": (worker_batch or 1) if how == "map" else None,
            "conv_impl": "+".join(sorted(set(layers))) or None, "conv_layers": layers}


def per_worker_grads(loss: Callable, worker_batch: int | None = None, execution: str = "auto",
                     compute_dtype: str = "float32") -> Callable:
    """``(stacked_params, stacked_batch) -> (losses (n,), stacked_grads)``: every worker's loss and gradient.

    ``execution`` picks how the n per-worker computations run (:func:`simdl.models.batched.per_worker_apply`):
    ``"vmap"`` (all n at once), ``"map"`` (``lax.map``, one worker or ``worker_batch`` workers per iteration: on CPU
    this avoids the grouped convolutions vmap creates for per-worker conv kernels), ``"loop"``, or ``"auto"``
    (default: vmap on accelerators and for dense models, map for convolutional models on CPU; chosen by measurement,
    see ``benchmarks/``). An int ``worker_batch`` = k forces ``lax.map`` over groups of k workers, bounding
    activation memory to k workers at a time. All choices give the same numbers.

    ``compute_dtype`` (``"float32"`` or ``"bfloat16"``, :func:`in_compute_dtype`): the dtype of each worker's forward
    and backward pass; the parameters' floating leaves (and the batch's) are cast to it inside the differentiated
    function, so ``losses`` are float32 and the gradients have the parameters' dtype (float32) either way.
    """
    from simdl.models.batched import per_worker_apply

    vg = jax.value_and_grad(in_compute_dtype(loss, compute_dtype))
    if worker_batch is not None:
        return per_worker_apply(vg, "map", worker_batch)
    return per_worker_apply(vg, execution)
