"""Local optimizers (run independently on every worker, vmapped over the worker axis), built from optax."""

from __future__ import annotations

import jax
import optax

from simdl.algorithms.base import as_schedule, check_momentum, check_nonneg


def local_optimizer(
    learning_rate,
    momentum: float = 0.0,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    optimizer: optax.GradientTransformation | None = None,
    weight_decay_mask=None,
) -> optax.GradientTransformation:
    """The per-worker optimizer: weight decay added to the gradient, then SGD with PyTorch-convention momentum.

    ``buf ← β buf + g`` (buf starts at 0); heavy-ball ``D = buf``; Nesterov ``D = g + β buf``; ``x ← x − η_t D``
    (docs/algorithms.md#local-momentum). This is ``optax.sgd`` after ``optax.add_decayed_weights``.

    Args:
      learning_rate: float or optax schedule of the step index.
      momentum: β ∈ [0, 1); 0 disables momentum.
      nesterov: Nesterov momentum (needs ``momentum > 0``).
      weight_decay: λ ≥ 0, L2 term ``λ x`` added to the gradient.
      optimizer: any optax transformation to use instead of SGD (e.g. ``optax.adam(1e-3)``); its updates are the
        local step ``−η D``; weight decay is still added to the gradient first.
      weight_decay_mask: optional pytree of bools (or callable) selecting which leaves get weight decay.

    Raises:
      ValueError: momentum outside [0, 1), negative weight decay, ``nesterov`` without momentum, or ``optimizer``
        together with momentum.
    """
    momentum = check_momentum(momentum)
    weight_decay = check_nonneg("weight_decay", weight_decay)
    if nesterov and momentum == 0.0:
        raise ValueError("nesterov=True needs momentum > 0, got momentum=0")
    parts = []
    if weight_decay:
        parts.append(optax.add_decayed_weights(weight_decay, mask=weight_decay_mask))
    if optimizer is not None:
        if momentum:
            raise ValueError(f"pass momentum inside `optimizer`, not both (got momentum={momentum})")
        parts.append(optimizer)
    else:
        parts.append(optax.sgd(as_schedule(learning_rate), momentum=momentum or None, nesterov=nesterov))
    return optax.chain(*parts)


def vmapped_init(opt: optax.GradientTransformation, stacked_params):
    """Per-worker optimizer states stacked on the worker axis."""
    return jax.vmap(opt.init)(stacked_params)


def vmapped_update(opt: optax.GradientTransformation, grads, opt_state, params):
    """Per-worker ``opt.update`` over the worker axis; returns ``(updates, opt_state)``."""
    return jax.vmap(opt.update)(grads, opt_state, params)
