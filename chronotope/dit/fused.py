"""Hand-fused QK RMS-norm (+ learned scale) (+ rotary embedding) with an analytic backward, for eager CPU speed.

Written as autograd over the separate ops, RMSNorm -> scale -> RoPE costs ~5 passes over q/k forward and ~12
backward (autograd decomposes rms_norm's backward into pow/mul/sum/... and RoPE into cat + muls); this
`torch.autograd.Function` does 3 forward and ~6 backward passes (a profile of the CPU step: about
10% of the DiT step was these passes). Numerically it is the same function (tests/test_dit.py checks
values and gradients against the unfused ops).

    y = rope(rms_norm(x) * w)        rope(m) = m * cos + swap(m) * sin,  swap(m) = cat(m2, m1)

where sin carries the rotate-half sign (`RoPE3D` folds it in), so the transpose of rope is
g * cos + swap(g * sin).
"""

from __future__ import annotations

import torch
from torch import Tensor


def _rope_(out: Tensor, m: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """out = m * cos + swap(m) * sin, written into `out` (two half-passes instead of cat + mul + add)."""
    h = m.shape[-1] // 2
    torch.mul(m, cos, out=out)
    out[..., :h].addcmul_(m[..., h:], sin[..., :h])
    out[..., h:].addcmul_(m[..., :h], sin[..., h:])
    return out


def _rope_t_(out: Tensor, g: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Transpose of `_rope_`: out = g * cos + swap(g * sin)."""
    h = g.shape[-1] // 2
    torch.mul(g, cos, out=out)
    out[..., :h].addcmul_(g[..., h:], sin[..., h:])
    out[..., h:].addcmul_(g[..., :h], sin[..., :h])
    return out


class _NormRoPE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, cos: Tensor | None, sin: Tensor | None, eps: float) -> Tensor:
        hd = x.shape[-1]
        n, r = torch.ops.aten._fused_rms_norm(x, [hd], None, eps)  # n [..., hd] contiguous, r [..., 1]
        if cos is None:
            y = n * w
        else:
            y = _rope_(torch.empty_like(n), n, w * cos, _swap(w) * sin)  # weight folded into the small tables
        ctx.save_for_backward(n, r, w, cos, sin)
        return y

    @staticmethod
    def backward(ctx, g: Tensor):
        n, r, w, cos, sin = ctx.saved_tensors
        g = g.contiguous()
        dm = g if cos is None else _rope_t_(torch.empty_like(g), g, cos, sin)  # d(n * w)
        dw = None
        if ctx.needs_input_grad[1]:  # reduce the leading (token) dims first: a contiguous, vectorised sum
            prod = dm * n
            dw = prod.flatten(0, prod.ndim - w.ndim - 1).sum(0).sum_to_size(w.shape) if prod.ndim > w.ndim \
                else prod.sum_to_size(w.shape)
        dn = dm * w
        s = (dn * n).mean(-1, keepdim=True)  # [..., 1]
        dx = torch.addcmul(dn, n, s, value=-1).mul_(r)  # r * (dn - n * mean(dn * n))
        return dx, dw, None, None, None


def _swap(w: Tensor) -> Tensor:
    """cat(w2, w1) over the last dim: the scale that lands on the swapped half in rope(n * w)."""
    h = w.shape[-1] // 2
    return torch.cat([w[..., h:], w[..., :h]], dim=-1)


def norm_rope(x: Tensor, weight: Tensor, cos: Tensor | None = None, sin: Tensor | None = None,
              eps: float = 1e-6) -> Tensor:
    """rope(rms_norm(x) * weight) over the last dim, fused.

    x: [..., hd] (any strides); weight: broadcastable to x's trailing dims (e.g. [2, 1, hd] for stacked q/k
    [L, 2, nh, hd], or [hd]); cos, sin: None (no RoPE) or broadcastable to x ([L, 1, 1, hd], sign folded in
    sin as `RoPE3D` returns it). Returns a contiguous tensor shaped like x.
    """
    if (cos is None) != (sin is None):
        raise ValueError("norm_rope needs both cos and sin, or neither")
    if x.shape[-1] % 2 and cos is not None:
        raise ValueError(f"RoPE needs an even head dim, got {x.shape[-1]}")
    return _NormRoPE.apply(x, weight, cos, sin, eps)
