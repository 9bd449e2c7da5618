"""CHOCO-SGD: decentralized SGD with compressed communication (Koloskova et al. 2019, arXiv 1902.00340;
docs/algorithms.md#choco_sgd).

Every worker keeps its model x_i and a public copy x̂_i that all its neighbours also hold (x̂ = 0 at start); only
compressed differences ``q = Q(· − x̂)`` travel. Two orders are offered:

* ``order="gossip_first"`` (default; docs/algorithms.md#choco_sgd and the authors' deep-learning code,
  ``ParallelCHOCO`` in epfml/ChocoSGD): ``x^½ = x − η D``; ``x ← x^½ + γ Σ_j W_ij (x̂_j − x̂_i)``; ``q = Q(x − x̂)``;
  ``x̂ ← x̂ + q``. With Q = identity and γ = 1 this is D-PSGD / CTA gossip, ``X ← W X − η D``
  (``dsgd(..., order="cta")``).
* ``order="compress_first"`` (Algorithm 1 of arXiv 1902.00340): ``x^½ = x − η D``; ``q = Q(x^½ − x̂)``;
  ``x̂ ← x̂ + q``; ``x ← x^½ + γ Σ_j W_ij (x̂_j − x̂_i)`` with the updated copies. With Q = identity and γ = 1 this is
  D-SGD / ATC gossip, ``X ← W (X − η D)`` (``dsgd``).

``Σ_j W_ij (x̂_j − x̂_i) = (W x̂)_i − x̂_i`` since W is row-stochastic. Bytes per worker and step: the compressed
message size (values + indices for sparsifiers, see :mod:`simdl.compression`) times its out-degree.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from simdl import compression as C
from simdl.algorithms.base import Algorithm, as_schedule, record_hyperparams, tree_add, tree_sub
from simdl.algorithms.local import local_optimizer, vmapped_init, vmapped_update

ORDERS = ("gossip_first", "compress_first")


class ChocoState(NamedTuple):
    """State of CHOCO-SGD.

    Attributes:
      params: stacked worker models x.
      public: stacked public copies x̂ (zeros at start; worker i's copy is shared by all its neighbours).
      opt_state: stacked local optimizer state.
    """

    params: Any
    public: Any
    opt_state: Any


def _consensus(ctx, x, public, gamma):
    """``x + γ (W x̂ − x̂)``."""
    mixed = ctx.mix(public)
    return jax.tree_util.tree_map(lambda a, m, h: (a + gamma * (m - h)).astype(a.dtype), x, mixed, public)


def choco_sgd(learning_rate, momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0,
              gamma: float = 0.1, compressor="top_k", compression: float | None = 0.1, order: str = "gossip_first",
              optimizer: optax.GradientTransformation | None = None, weight_decay_mask=None) -> Algorithm:
    """CHOCO-SGD (Koloskova, Stich, Jaggi 2019, arXiv 1902.00340). See the module docstring for the update.

    Args:
      learning_rate: float or optax schedule.
      momentum: local momentum β of the local optimizer (D = its update / −η); 0 = plain SGD.
      nesterov: Nesterov local momentum.
      weight_decay: λ, added to the gradient before momentum.
      optimizer: optional optax transformation used as the local optimizer instead of SGD.
      weight_decay_mask: optional pytree/callable of bools: which leaves get weight decay.
      gamma: consensus step size γ ∈ (0, 1]. The paper tunes γ per compressor and graph *(no universal default)*;
        0.1 suits top-10% on rings (see tests); γ = 1 with the identity compressor is exact gossip.
      compressor: a :class:`simdl.compression.Compressor`, or a name in :data:`simdl.compression.COMPRESSORS`.
      compression: with a name: the kept fraction for ``top_k``/``random_k`` (default 0.1 = 10%), the number of
        levels s for ``qsgd`` (contractive, rescaled version); ignored for ``sign``/``identity``.
      order: ``"gossip_first"`` (default, docs/algorithms.md#choco_sgd) or ``"compress_first"`` (the paper's
        Algorithm 1).

    Returns:
      :class:`Algorithm` with state :class:`ChocoState`; needs a static topology.

    Raises:
      ValueError: unknown order or compressor name (valid ones listed), γ not in (0, 1], invalid compression or
        optimizer settings.
    """
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    g = float(gamma)
    if not (np.isfinite(g) and 0.0 < g <= 1.0):
        raise ValueError(f"gamma must be in (0, 1], got {gamma!r}")
    if isinstance(compressor, C.Compressor):
        comp = compressor
    elif isinstance(compressor, str):
        comp = C.get(compressor, compression)
    else:
        raise ValueError(f"compressor must be a simdl.compression.Compressor or one of {C.COMPRESSORS}, "
                         f"got {compressor!r}")
    opt = local_optimizer(learning_rate, momentum, nesterov, weight_decay, optimizer, weight_decay_mask)
    schedule = as_schedule(learning_rate)

    def init(params, ctx):
        return ChocoState(params, jax.tree_util.tree_map(jnp.zeros_like, params), vmapped_init(opt, params))

    def step(state, grads, ctx):
        x = state.params
        updates, opt_state = vmapped_update(opt, grads, state.opt_state, x)
        half = tree_add(x, updates)
        if order == "compress_first":
            q, nbytes = C.compress_stacked(comp, ctx.key, tree_sub(half, state.public))
            public = tree_add(state.public, q)
            new = _consensus(ctx, half, public, g)
        else:
            new = _consensus(ctx, half, state.public, g)
            q, nbytes = C.compress_stacked(comp, ctx.key, tree_sub(new, state.public))
            public = tree_add(state.public, q)
        topo = ctx.topology
        degs = np.stack([topo.out_degree(s) for s in range(topo.period)]).astype(np.float32)
        deg = jnp.asarray(degs[0]) if topo.period == 1 else jnp.asarray(degs)[ctx.step % topo.period]
        return ChocoState(new, public, opt_state), {"lr": schedule(ctx.step), "bytes_sent": deg * nbytes}

    hp = record_hyperparams(learning_rate=learning_rate, momentum=momentum, nesterov=nesterov,
                            weight_decay=weight_decay,
                gamma=g, compressor=comp.name, order=order, optimizer=optimizer, **comp.params)
    return Algorithm("choco_sgd", init, step, lambda s: s.params, lambda s: s.params, hp,
                     frozenset({"connected", "static"}))
