"""D² (Tang et al. 2018, arXiv 1803.07068) and Exact Diffusion (Yuan et al. 2017, arXiv 1702.05122); see
docs/algorithms.md#d2 and docs/algorithms.md#exact_diffusion.

Both remove the heterogeneity bias of D-SGD: with a constant step and exact gradients they converge to the exact
optimum. With U_t the local update (``−η g`` for plain SGD; the local optax optimizer's update in general):

``X_{t+1} = W̃ (X_t + U_t + C_t)``, ``C_{t+1} = X_{t+1} − X_t − U_t``, ``C_0 = 0``

i.e. ``X_{t+1} = W̃ (2 X_t − X_{t−1} + U_t − U_{t−1})``. D² uses ``W̃ = W``; its analysis needs
``λ_min(W) > −1/3``. At the boundary ``λ_min = −1/3`` (the plain Metropolis–Hastings ring with even n, which the D²
authors ran) it is accepted with a warning, below it refused. Exact Diffusion uses ``W̃ = (I + W)/2``, whose
eigenvalues are ≥ 0, so it has no spectral condition.

Implementation: with ``Y = X_t + U_t + C_t`` and ``L = (W̃ − I) Y`` computed from neighbour differences
(:func:`laplacian`), ``X_{t+1} = Y + L`` and ``C_{t+1} = C_t + L`` (the same iterates in exact arithmetic). The
literal ``C_{t+1} = X_{t+1} − X_t − U_t`` accumulates a systematic float32 rounding error in the worker mean of C,
which drifts the iterate away from the optimum (suboptimality 7e-6 → 3e-4 over 1k → 6k steps on a 16-ring);
the difference form stays at ~1e-12.
"""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from simdl.algorithms.base import Algorithm, as_schedule, gossip_bytes, record_hyperparams, tree_add
from simdl.algorithms.local import local_optimizer, vmapped_init, vmapped_update
from simdl.mixing import neighbor_difference

D2_LAMBDA_MIN = -1.0 / 3.0
#: λ_min within this of −1/3 counts as the boundary (accepted with a warning); below −1/3 − tol is refused.
D2_LAMBDA_TOL = 1e-9
STOCHASTIC_TOL = 1e-8


class D2State(NamedTuple):
    """State of D² / Exact Diffusion.

    Attributes:
      params: stacked worker models X_t.
      correction: stacked C_t = X_t − X_{t−1} − U_{t−1} (zeros at start).
      opt_state: stacked local optimizer state.
    """

    params: Any
    correction: Any
    opt_state: Any


def check_doubly_stochastic(topology, name: str) -> None:
    """Raise ValueError unless every mixing matrix of ``topology``'s period (of each tree, when split) has columns
    summing to 1 (to 1e-8).

    Mean-preserving corrections (D², Exact Diffusion, gradient tracking) need ``1ᵀ W = 1ᵀ``.
    """
    mats = topology.tree_weights if topology.is_split else topology.period_weights
    what = "tree" if topology.is_split else "step"
    for s, w in enumerate(mats):
        cols = np.asarray(w).sum(axis=0)
        worst = int(np.argmax(np.abs(cols - 1.0)))
        if abs(cols[worst] - 1.0) > STOCHASTIC_TOL:
            raise ValueError(f"{name} needs a doubly stochastic mixing matrix, but {topology.name} ({what} {s}) has "
                             f"column {worst} summing to {float(cols[worst])!r}; use symmetric weights such as "
                             "'metropolis'")


def check_d2_spectrum(topology) -> None:
    """Check D²'s spectral condition ``λ_min(W) > −1/3`` (arXiv 1803.07068) on ``topology``.

    ``λ_min ≥ −1/3 − 1e-9`` is accepted; at the boundary (``|λ_min + 1/3| ≤ 1e-9``, e.g. the plain MH ring with even
    n, as the D² authors ran it) a :class:`UserWarning` says that convergence is not guaranteed.

    Raises:
      ValueError: ``λ_min(W) < −1/3 − 1e-9``.
    """
    lam = float(topology.lambda_min)
    if lam < D2_LAMBDA_MIN - D2_LAMBDA_TOL:
        raise ValueError(f"d2 needs lambda_min(W) >= -1/3, but {topology.name} has lambda_min = {lam:.6g}. Use a "
                         "larger self weight (e.g. W' = a I + (1 - a) W with a > 0), or exact_diffusion, which mixes "
                         "with (I + W)/2")
    if lam <= D2_LAMBDA_MIN + D2_LAMBDA_TOL:
        warnings.warn(f"d2: {topology.name} has lambda_min(W) = {lam:.6g}, at the boundary -1/3 of D2's condition "
                      "lambda_min(W) > -1/3; convergence is not guaranteed there (a larger self weight or "
                      "exact_diffusion avoids it)", UserWarning, stacklevel=3)


def laplacian(topology, tree, scale: float = 1.0):
    """``scale · (W − I) Y`` of a static topology from neighbour differences (:func:`simdl.mixing.neighbor_difference`;
    the step itself uses :meth:`simdl.algorithms.Context.mix_delta`, which gossip faults can override)."""
    return neighbor_difference(topology, tree, scale)


def _d2_family(name: str, learning_rate, half_mix: bool, momentum: float, nesterov: bool, weight_decay: float,
               optimizer: optax.GradientTransformation | None, weight_decay_mask) -> Algorithm:
    opt = local_optimizer(learning_rate, momentum, nesterov, weight_decay, optimizer, weight_decay_mask)
    schedule = as_schedule(learning_rate)

    def init(params, ctx):
        check_doubly_stochastic(ctx.topology, name)
        if not half_mix:
            check_d2_spectrum(ctx.topology)
        return D2State(params, jax.tree_util.tree_map(jnp.zeros_like, params), vmapped_init(opt, params))

    scale = 0.5 if half_mix else 1.0

    def step(state, grads, ctx):
        x = state.params
        updates, opt_state = vmapped_update(opt, grads, state.opt_state, x)
        y = tree_add(tree_add(x, updates), state.correction)
        lap = ctx.mix_delta(y, scale)  # (W̃ − I) Y from neighbour differences (W'_t under gossip faults)
        new = tree_add(y, lap)  # W̃ Y
        corr = tree_add(state.correction, lap)  # = X_{t+1} − X_t − U_t
        return D2State(new, corr, opt_state), {"lr": schedule(ctx.step), "bytes_sent": gossip_bytes(ctx, x)}

    hp = record_hyperparams(learning_rate=learning_rate, momentum=momentum, nesterov=nesterov,
                            weight_decay=weight_decay,
                optimizer=optimizer)
    return Algorithm(name, init, step, lambda s: s.params, lambda s: s.params, hp,
                     frozenset({"connected", "static"}))


def d2(learning_rate, momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0,
       optimizer: optax.GradientTransformation | None = None, weight_decay_mask=None) -> Algorithm:
    """D² (Tang et al. 2018, arXiv 1803.07068): ``X_{t+1} = W (X_t + U_t + C_t)``, ``C_{t+1} = X_{t+1} − X_t − U_t``.

    The paper's D² has no momentum (default); ``momentum``/``nesterov``/``optimizer`` change the local update U_t
    (see :func:`simdl.algorithms.local.local_optimizer`). Needs a static, doubly stochastic W with
    ``λ_min(W) > −1/3``. The boundary ``λ_min(W) = −1/3`` (to 1e-9; the plain MH ring with even n, what the D² authors
    ran) is accepted with a :class:`UserWarning` (convergence not guaranteed); to be safe, raise the self weight or
    use :func:`exact_diffusion`.

    Returns:
      :class:`Algorithm` with state :class:`D2State`; one model per out-edge per step.

    Raises:
      ValueError: invalid optimizer settings (factory); at ``init``: W not doubly stochastic, or
        ``λ_min(W) < −1/3 − 1e-9``.

    Warns:
      UserWarning: at ``init``, when ``λ_min(W)`` is −1/3 to within 1e-9.
    """
    return _d2_family("d2", learning_rate, False, momentum, nesterov, weight_decay, optimizer, weight_decay_mask)


def exact_diffusion(learning_rate, momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0,
                    optimizer: optax.GradientTransformation | None = None, weight_decay_mask=None) -> Algorithm:
    """Exact Diffusion (Yuan et al. 2017, arXiv 1702.05122) = D² with ``W̃ = (I + W)/2``:
    adapt ``ψ_{t+1} = x_t + U_t``, correct ``φ = ψ_{t+1} + x_t − ψ_t``, combine ``x_{t+1} = W̃ φ``.

    W̃'s eigenvalues are ``(1 + λ(W))/2 ≥ 0``, so any static doubly stochastic W is accepted (e.g. the even MH ring).

    Raises:
      ValueError: invalid optimizer settings (factory); at ``init``: W not doubly stochastic.
    """
    return _d2_family("exact_diffusion", learning_rate, True, momentum, nesterov, weight_decay, optimizer,
                      weight_decay_mask)
