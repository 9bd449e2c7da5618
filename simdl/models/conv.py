"""2-D convolution with interchangeable implementations, parameter-compatible with ``flax.linen.Conv``.

Why: simdl evaluates every worker's model with its own weights, usually as ``jax.vmap(model.apply)``. A
vmapped convolution with per-worker kernels becomes a *grouped* convolution, which XLA:CPU runs far
slower than an ordinary one; and inside ``lax.map``/``lax.scan`` XLA:CPU keeps the non-canonical
dimension layouts that JAX's autodiff gives the backward convolutions, which falls onto a very slow
generic path (measured 10-70x slower). The implementations here avoid both:

* ``"xla"``: ``lax.conv_general_dilated`` forward, with a custom VJP written in canonical layouts (explicit
  transposes), so it stays fast inside loops: the input gradient is a convolution with the flipped kernel; the
  kernel gradient is, by shape, one ``B·Ho·Wo``-contracting matmul per kernel tap (large maps), one matmul of
  the transposed patch matrix (≤ 4 input channels, e.g. an image's first layer) or a channels-as-batch
  convolution (small maps). Gradients equal JAX's own.
* ``"patches"``: im2col by strided slices, then one matmul against the ``(kh·kw·cin, cout)`` kernel. Under
  ``vmap`` that matmul becomes a batched matmul instead of a grouped convolution.
* ``"lax"``: plain ``lax.conv_general_dilated`` with JAX's autodiff (the reference).
* ``"auto"``: per layer, ``"patches"`` when the patch matrix ``(B·Ho·Wo, kh·kw·cin)`` has at most
  :data:`PATCHES_MAX_ELEMENTS` elements (the small per-worker batches of training), ``"xla"`` otherwise (large
  evaluation batches, large maps). On a 2-core CPU this made SmallCNN 28×28 training 1.8× faster than ``"xla"``
  alone and kept evaluation at ``"xla"`` speed (``benchmarks/conv_strategies.py``).

``"xla"`` supports reverse mode (also grad-of-grad) but not forward mode (``jax.jvp``/``jacfwd``): use
``"lax"`` or ``"patches"`` for those.

All take and give NHWC float arrays and HWIO kernels, so the same parameters work with every implementation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

CONV_IMPLS = ("auto", "xla", "patches", "lax")
_DN = ("NHWC", "HWIO", "NHWC")
Pads = tuple[tuple[int, int], tuple[int, int]]


def check_conv_impl(impl: str) -> str:
    """Return ``impl`` if it is one of :data:`CONV_IMPLS`. Raises ValueError otherwise."""
    if impl not in CONV_IMPLS:
        raise ValueError(f"unknown conv_impl {impl!r}; valid: {', '.join(CONV_IMPLS)}")
    return impl


#: ``conv_impl="auto"`` uses ``"patches"`` for a convolution whose patch matrix ``(B·Ho·Wo, kh·kw·cin)`` has at
#: most this many elements (small per-worker training batches: one cache-sized matmul per layer), ``"xla"`` above
#: (large batches, e.g. evaluation, and large feature maps). Measured on XLA:CPU, see ``benchmarks/RESULTS.md``.
PATCHES_MAX_ELEMENTS = 2**21


def resolve_conv_impl(impl: str, patch_elements: int | None = None) -> str:
    """The concrete implementation of a convolution for ``impl``: ``"auto"`` is ``"patches"`` when its patch
    matrix has at most :data:`PATCHES_MAX_ELEMENTS` elements (``patch_elements``; unknown: ``"xla"``), else
    ``"xla"``; validates ``impl``."""
    check_conv_impl(impl)
    if impl != "auto":
        return impl
    return "patches" if patch_elements is not None and patch_elements <= PATCHES_MAX_ELEMENTS else "xla"


def layer_impls(fn: Callable, *args) -> list[str]:
    """The concrete implementation :func:`conv2d` uses for every :class:`Conv` layer that ``fn(*args)`` calls, in
    call order, found by tracing ``fn`` abstractly (``jax.eval_shape``; nothing is computed) with a flax method
    interceptor; ``[]`` for a dense model. E.g. ``layer_impls(task.loss, params, batch)`` for one worker."""
    found: list[str] = []

    def record(next_fun, call_args, call_kwargs, context):
        module = context.module
        if isinstance(module, Conv) and context.method_name == "__call__":
            x = call_args[0]
            ks = tuple(module.kernel_size)
            strides = (module.strides,) * 2 if isinstance(module.strides, int) else tuple(module.strides)
            pads = explicit_padding(x.shape[1:3], ks, strides, module.padding)
            out_hw = [_out_size(n, k, st, p) for n, k, st, p in zip(x.shape[1:3], ks, strides, pads, strict=True)]
            found.append(resolve_conv_impl(module.impl, x.shape[0] * out_hw[0] * out_hw[1] * ks[0] * ks[1]
                                           * x.shape[-1]))
        return next_fun(*call_args, **call_kwargs)

    with nn.intercept_methods(record):
        jax.eval_shape(lambda *a: fn(*a), *args)  # a fresh function: a cached trace would skip the interceptor
    return found


def explicit_padding(in_hw: Sequence[int], kernel_hw: Sequence[int], strides: Sequence[int], padding) -> Pads:
    """``((lo, hi), (lo, hi))`` spatial padding for ``"SAME"``, ``"VALID"``, an int or explicit pairs."""
    if isinstance(padding, str):
        if padding.upper() not in ("SAME", "VALID"):
            raise ValueError(f"padding must be 'SAME', 'VALID', an int or ((lo, hi), (lo, hi)), "
                             f"got {padding!r}")
        pads = lax.padtype_to_pads(tuple(in_hw), tuple(kernel_hw), tuple(strides), padding.upper())
        return tuple((int(lo), int(hi)) for lo, hi in pads)
    if isinstance(padding, int):
        return ((padding, padding), (padding, padding))
    pads = tuple(tuple(int(v) for v in p) for p in padding)
    if len(pads) != 2 or any(len(p) != 2 for p in pads):
        raise ValueError(f"padding must be 'SAME', 'VALID', an int or ((lo, hi), (lo, hi)), got {padding!r}")
    return pads


def _out_size(n: int, k: int, s: int, pad: tuple[int, int]) -> int:
    return (n + pad[0] + pad[1] - k) // s + 1


def _conv_lax(x, kernel, strides, pads):
    return lax.conv_general_dilated(x, kernel, strides, pads, dimension_numbers=_DN)


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_xla(x, kernel, strides, pads):
    return _conv_lax(x, kernel, strides, pads)


def _conv_xla_fwd(x, kernel, strides, pads):
    return _conv_lax(x, kernel, strides, pads), (x, kernel)


def _conv_xla_bwd(strides, pads, res, g):
    x, kernel = res
    kh, kw = kernel.shape[:2]
    in_hw, out_hw, k_hw = x.shape[1:3], g.shape[1:3], (kh, kw)
    # dx: stride-1 convolution of the stride-dilated cotangent with the flipped, in/out-swapped kernel.
    dx_pads = tuple(
        (k - 1 - p[0], n - (m - 1) * s - 1 + p[0])
        for n, m, k, s, p in zip(in_hw, out_hw, k_hw, strides, pads, strict=True)
    )
    k_t = jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)
    dx = lax.conv_general_dilated(g, k_t, (1, 1), dx_pads, lhs_dilation=strides, dimension_numbers=_DN)
    dk = _kernel_grad(x, g, kernel.shape, strides, pads)
    return dx.astype(x.dtype), dk.astype(kernel.dtype)


def kernel_grad_method(kernel_shape, out_hw, strides) -> str:
    """How :func:`conv2d` (``impl="xla"``) computes a convolution's kernel gradient, by shape (measured on
    XLA:CPU inside ``lax.map``, see ``benchmarks/RESULTS.md``): ``"im2col"`` (one matmul of a row-shifted patch
    matrix), ``"taps"`` (one row-contracting matmul per kernel tap) or ``"conv"`` (a channels-as-batch convolution;
    the only one for strides other than 1)."""
    kh, kw, cin, cout = kernel_shape
    if tuple(strides) != (1, 1):
        return "conv"
    if cin <= 4:
        return "im2col"
    return "taps" if out_hw[0] * out_hw[1] >= 100 else "conv"


def _kernel_grad(x, g, kernel_shape, strides, pads):
    """dL/dkernel ``(kh, kw, cin, cout)`` of a convolution with input ``x`` and output cotangent ``g``, by the
    formulation :func:`kernel_grad_method` picks."""
    kh, kw, cin, cout = kernel_shape
    b, ho, wo, _ = g.shape
    need = tuple((o - 1) * s + k for o, s, k in zip((ho, wo), strides, (kh, kw), strict=True))
    hi = tuple(nd - n - p[0] for nd, n, p in zip(need, x.shape[1:3], pads, strict=True))
    cfg = ((0, 0, 0), (pads[0][0], hi[0], 0), (pads[1][0], hi[1], 0), (0, 0, 0))
    xp = lax.pad(x, jnp.zeros((), x.dtype), cfg)
    method = kernel_grad_method(kernel_shape, (ho, wo), strides)
    if method != "conv":
        # Row shifts: with x padded to (B, H', W') and g zero-padded to the same grid, both flattened to rows,
        # tap (i, j) pairs g's row r with x's row r + i·W' + j: contiguous row ranges, no strided windows. Rows of
        # g's padding are zero and contribute nothing.
        hp, wp = xp.shape[1:3]
        gp = lax.pad(g, jnp.zeros((), g.dtype), ((0, 0, 0), (0, hp - ho, 0), (0, wp - wo, 0), (0, 0, 0)))
        rows = b * hp * wp
        length = rows - (kh - 1) * wp - (kw - 1)
        xf, gf = xp.reshape(rows, cin), gp.reshape(rows, cout)[:length]
        dot = partial(lax.dot_general, dimension_numbers=(((0,), (0,)), ((), ())))
        shifted = [lax.slice_in_dim(xf, i * wp + j, i * wp + j + length) for i in range(kh) for j in range(kw)]
        if method == "im2col":
            return dot(jnp.concatenate(shifted, axis=1), gf).reshape(kh, kw, cin, cout)
        return jnp.stack([dot(s, gf) for s in shifted]).reshape(kh, kw, cin, cout)
    lhs = xp.transpose(3, 1, 2, 0)  # (cin, H', W', B)
    rhs = g.transpose(1, 2, 0, 3)  # (Ho, Wo, B, cout)
    dk = lax.conv_general_dilated(lhs, rhs, (1, 1), "VALID", rhs_dilation=strides, dimension_numbers=_DN)
    return dk.transpose(1, 2, 0, 3)


_conv_xla.defvjp(_conv_xla_fwd, _conv_xla_bwd)


def _conv_patches(x, kernel, strides, pads):
    kh, kw, cin, cout = kernel.shape
    b, h, w, _ = x.shape
    ho, wo = (_out_size(n, k, s, p) for n, k, s, p in zip((h, w), (kh, kw), strides, pads, strict=True))
    xp = lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (*pads[0], 0), (*pads[1], 0), (0, 0, 0)))
    cols = [
        lax.slice(xp, (0, i, j, 0), (b, i + (ho - 1) * strides[0] + 1, j + (wo - 1) * strides[1] + 1, cin),
                  (1, strides[0], strides[1], 1))
        for i in range(kh)
        for j in range(kw)
    ]
    patches = cols[0] if len(cols) == 1 else jnp.stack(cols, axis=3).reshape(b, ho, wo, kh * kw * cin)
    return jnp.einsum("bhwk,ko->bhwo", patches, kernel.reshape(kh * kw * cin, cout))


def conv2d(x: jax.Array, kernel: jax.Array, strides: Sequence[int] = (1, 1), padding: Any = "SAME",
           impl: str = "auto") -> jax.Array:
    """2-D cross-correlation, like ``lax.conv_general_dilated`` with NHWC/HWIO layouts.

    Args:
      x: float ``(B, H, W, cin)``.
      kernel: float ``(kh, kw, cin, cout)``.
      strides: ``(sh, sw)``.
      padding: ``"SAME"``, ``"VALID"``, an int, or ``((lo, hi), (lo, hi))``.
      impl: one of :data:`CONV_IMPLS` (see the module docstring).

    Returns:
      ``(B, Ho, Wo, cout)`` in the dtype of ``x``.

    Raises:
      ValueError: unknown ``impl`` or ``padding``, wrong ranks, or ``cin`` mismatch.
    """
    if x.ndim != 4 or kernel.ndim != 4:
        raise ValueError(f"conv2d expects x (B, H, W, C) and kernel (kh, kw, cin, cout), got {x.shape}, "
                         f"{kernel.shape}")
    if x.shape[-1] != kernel.shape[2]:
        raise ValueError(f"input has {x.shape[-1]} channels but the kernel expects {kernel.shape[2]}")
    check_conv_impl(impl)
    strides = tuple(int(s) for s in strides)
    pads = explicit_padding(x.shape[1:3], kernel.shape[:2], strides, padding)
    sizes = zip(x.shape[1:3], kernel.shape[:2], strides, pads, strict=True)
    if any(_out_size(n, k, s, p) < 1 for n, k, s, p in sizes):
        raise ValueError(f"input spatial size {tuple(x.shape[1:3])} is too small for kernel "
                         f"{tuple(kernel.shape[:2])} with padding {pads}")
    ho, wo = (_out_size(n, k, s, p) for n, k, s, p in zip(x.shape[1:3], kernel.shape[:2], strides, pads, strict=True))
    impl = resolve_conv_impl(impl, x.shape[0] * ho * wo * kernel.shape[0] * kernel.shape[1] * kernel.shape[2])
    if impl == "xla":
        return _conv_xla(x, kernel, strides, pads)
    if impl == "patches":
        return _conv_patches(x, kernel, strides, pads)
    return _conv_lax(x, kernel, strides, pads)


class Conv(nn.Module):
    """Drop-in for ``nn.Conv`` (2-D, NHWC) with a selectable implementation; same parameter names and shapes:
    ``kernel`` ``(kh, kw, cin, cout)`` and ``bias`` ``(cout,)``.

    Attributes:
      features: output channels.
      kernel_size: ``(kh, kw)``.
      strides: ``(sh, sw)`` (an int means both).
      padding: ``"SAME"``, ``"VALID"``, an int or explicit pairs.
      use_bias: add a bias.
      impl: ``"auto"``, ``"xla"``, ``"patches"`` or ``"lax"`` (see :func:`conv2d`).
      kernel_init / bias_init: as in ``nn.Conv`` (LeCun normal / zeros).

    Input ``(B, H, W, cin)`` float, output ``(B, Ho, Wo, features)`` in the input's dtype (the kernel and bias are
    cast to it: float32, or bfloat16 for mixed precision).
    """

    features: int
    kernel_size: Sequence[int] = (3, 3)
    strides: int | Sequence[int] = 1
    padding: Any = "SAME"
    use_bias: bool = True
    impl: str = "auto"
    kernel_init: Callable = nn.initializers.lecun_normal()
    bias_init: Callable = nn.initializers.zeros_init()

    def __post_init__(self):
        check_conv_impl(self.impl)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        ks = tuple(self.kernel_size)
        strides = (self.strides, self.strides) if isinstance(self.strides, int) else tuple(self.strides)
        kernel = self.param("kernel", self.kernel_init, ks + (x.shape[-1], self.features), jnp.float32)
        y = conv2d(x, kernel.astype(x.dtype), strides, self.padding, self.impl)
        if self.use_bias:
            y = y + self.param("bias", self.bias_init, (self.features,), jnp.float32).astype(y.dtype)
        return y
