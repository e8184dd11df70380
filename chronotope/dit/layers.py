"""DiT blocks (Peebles & Xie 2023) for packed sequences: adaLN-Zero, RMS QK-norm, 3D RoPE, text cross-attention.

Conditioning is per token (every token may carry its own timestep; clean conditioning frames carry
t = 0). Tokens share few distinct conditions, so the adaLN projection runs on the U distinct rows
`c [U, D]` and is gathered to tokens with `inv [L]`: per-token modulation at per-sample cost.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from chronotope.dit.attention import Segments, attention, cross_attention, run_table
from chronotope.dit.embeddings import apply_rope
from chronotope.dit.fused import norm_rope


class Context:
    """What every block needs about the packed sequence, computed once per forward."""

    def __init__(self, cu_seqlens: Tensor, max_seqlen: int, seg: Segments, rope: tuple[Tensor, Tensor] | None,
                 inv: Tensor, text: Tensor | None, text_mask: Tensor | None, backend: str,
                 one_cond: bool | None = None):
        self.cu_seqlens, self.max_seqlen, self.seg = cu_seqlens, max_seqlen, seg
        # the runs as a host tensor [R, 4]: what the attention op reads. Under torch.compile (train/parallel.py
        # compiles each block) a tensor, unlike Python ints, lets one graph serve every pack structure
        self.runs = run_table(seg)
        # compile(dynamic=True) makes every dim symbolic, specialises sizes 0 and 1 and ties equal sizes ("duck
        # sizing"): a first pack of 3 samples in 3 runs would tie N to R, a guard a later pack fails (a recompile).
        # The caption length is fixed (static); the pack's counts (samples, runs) are free sizes of their own
        for t in (text, text_mask):
            if t is not None and not torch.compiler.is_compiling():
                torch._dynamo.mark_static(t, 1)
                free_size(t, 0, "samples")
        free_size(self.runs, 0, "runs")
        self.rope = rope  # (cos, sin) each [L, 1, 1, hd], or None (the DiT paper's check has no RoPE)
        self.inv = inv  # [L] long: row of the distinct-condition table for each token
        self.text, self.text_mask = text, text_mask  # [N, Lt, D], [N, Lt] bool or None
        self.backend = backend
        # fast path: one run of N equal-length samples, each with one condition -> modulate by broadcasting
        # over x viewed as [N, l, D] instead of gathering [L, 6D] per-token rows. one_cond: whether every
        # sample has one condition, known on the host (PackInfo); None = read it from `inv` (a host read)
        self.grouped: tuple[int, int] | None = None
        self.sample_rows: Tensor | None = None
        if len(seg.runs) == 1:
            _, _, n, length = seg.runs[0]
            rows = inv.view(n, length)  # [N, l]
            if one_cond if one_cond is not None else bool((rows == rows[:, :1]).all()):
                self.grouped, self.sample_rows = (n, length), rows[:, 0]

    def expand(self, mod: Tensor) -> Tensor:
        """Per-condition rows [U, k] -> per-token [L, k], or [N, 1, k] to broadcast over x viewed [N, l, D]."""
        # compiled, always the per-token gather (inductor fuses it): a branch on the pack would be a guard,
        # and a pack that takes the other branch a recompile
        if not torch.compiler.is_compiling() and self.grouped is not None:
            return mod.index_select(0, self.sample_rows).unsqueeze(1)  # [N, 1, k]
        return mod.index_select(0, self.inv)  # [L, k]

    def view(self, x: Tensor) -> Tensor:
        """x [L, D] -> the layout `expand` broadcasts against ([N, l, D] on the fast path)."""
        return x.view(*self.grouped, x.shape[-1]) if not torch.compiler.is_compiling() and self.grouped is not None \
            else x


def free_size(t: Tensor, dim: int, name: str) -> None:
    """Mark dim `dim` of `t` as a size a compiled block never specialises on nor ties to another (an unbacked
    symbol; `name` ties it to the same count in other tensors). A mark for the inputs of a compiled region: none
    inside one (a whole compiled model traces its own sizes)."""
    if not torch.compiler.is_compiling():
        torch._dynamo.decorators.mark_unbacked(t, dim, shape_id=name)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return torch.addcmul(shift, x, 1 + scale)  # x * (1 + scale) + shift


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        if torch.compiler.is_compiling():  # let inductor fuse the plain op
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        return norm_rope(x, self.weight, eps=self.eps)  # eager: fused analytic backward (fused.py)


class SelfAttention(nn.Module):
    def __init__(self, width: int, heads: int, qk_norm: bool = True):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)  # fused projection: one matmul instead of three
        # RMS QK-norm: q and k normalised together, one learned scale each ([2, hd]); halves elementwise passes
        self.qk_norm = nn.Parameter(torch.ones(2, width // heads)) if qk_norm else None
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor, ctx: Context) -> Tensor:
        qkv = self.qkv(x).unflatten(-1, (3, self.heads, -1))  # [L, 3, nh, hd]
        qk, v = qkv.split([2, 1], dim=1)  # [L, 2, nh, hd], [L, 1, nh, hd] (split: backward is one cat)
        if self.qk_norm is not None and not torch.compiler.is_compiling():
            # eager: norm, scale and RoPE in one autograd node with an analytic backward (fused.py)
            qk = norm_rope(qk, self.qk_norm[:, None, :], *(ctx.rope or (None, None)))  # [L, 2, nh, hd]
        else:  # compiled (inductor fuses these itself) or no QK-norm
            if self.qk_norm is not None:
                qk = F.rms_norm(qk, (qk.shape[-1],), eps=1e-6) * self.qk_norm[:, None, :]
            if ctx.rope is not None:
                qk = apply_rope(qk, *ctx.rope)  # cos/sin [L, 1, 1, hd]
        q, k = qk.unbind(1)  # each [L, nh, hd]
        o = attention(q, k, v.squeeze(1), ctx.cu_seqlens, ctx.max_seqlen, ctx.backend, runs=ctx.runs)  # [L, nh, hd]
        return self.proj(o.flatten(1))  # [L, D]


class CrossAttention(nn.Module):
    def __init__(self, width: int, heads: int, qk_norm: bool = True):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.q_norm = RMSNorm(width // heads) if qk_norm else nn.Identity()
        self.k_norm = RMSNorm(width // heads) if qk_norm else nn.Identity()
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor, ctx: Context) -> Tensor:
        q = self.q_norm(self.q(x).unflatten(-1, (self.heads, -1)))  # [L, nh, hd]
        k, v = self.kv(ctx.text).unflatten(-1, (2, self.heads, -1)).unbind(2)  # each [N, Lt, nh, hd]
        k = self.k_norm(k)
        o = cross_attention(q, k, v, ctx.text_mask, ctx.cu_seqlens, runs=ctx.runs)  # [L, nh, hd]
        return self.proj(o.flatten(1))  # [L, D]


class Mlp(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: Tensor) -> Tensor:
        # exact (erf) GELU, not DiT/Wan's tanh approximation: the same curve to < 1e-3, and on CPU ATen ~4x faster
        # (2.9 vs 10.8 ms forward, 9 vs 23 ms fwd+bwd on [1280, 2048] at 1 thread; benchmarks/dit.py)
        return self.fc2(F.gelu(self.fc1(x)))


class DiTBlock(nn.Module):
    """x + gate * attn(modulate(norm(x))); x + cross_attn(norm(x)) [text]; x + gate * mlp(modulate(norm(x)))."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, qk_norm: bool = True,
                 cross_attention: bool = True):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(width, heads, qk_norm)
        self.norm_cross = nn.LayerNorm(width, eps=1e-6) if cross_attention else None
        self.cross = CrossAttention(width, heads, qk_norm) if cross_attention else None
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(width, int(width * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))

    def forward(self, x: Tensor, c: Tensor, ctx: Context) -> Tensor:
        """x [L, D] tokens; c [U, D] distinct conditions (ctx.inv maps tokens to rows). Returns [L, D]."""
        mod = ctx.expand(self.adaLN_modulation(c))  # [U, 6D] -> [L, 6D] (or [N, 1, 6D] on the fast path)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod.chunk(6, dim=-1)  # each [L, D]
        flat = x.shape
        x = ctx.view(x)  # [L, D] or [N, l, D]
        h = modulate(self.norm1(x), shift_msa, scale_msa).view(flat)  # [L, D]
        x = torch.addcmul(x, gate_msa, self.attn(h, ctx).view_as(x))
        if self.cross is not None:
            x = x + self.cross(self.norm_cross(x).view(flat), ctx).view_as(x)
        x = torch.addcmul(x, gate_mlp, self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp)))
        return x.view(flat)


class FinalLayer(nn.Module):
    """adaLN (shift, scale) then a linear to the patch dim [L, C*pt*ph*pw]."""

    def __init__(self, width: int, out_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(width, out_dim)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))

    def forward(self, x: Tensor, c: Tensor, ctx: Context) -> Tensor:
        shift, scale = ctx.expand(self.adaLN_modulation(c)).chunk(2, dim=-1)  # each [L, D] (or [N, 1, D])
        return self.linear(modulate(self.norm(ctx.view(x)), shift, scale)).view(x.shape[0], -1)  # [L, out_dim]
