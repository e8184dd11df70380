"""Position and timestep embeddings: 3D RoPE over (t, h, w) ids (flux's EmbedND) and DiT's TimestepEmbedder.

Position scheme ("min-side normalised RoPE", NaViT's fractional positions / position interpolation):
time keeps integer frame ids; the spatial ids of a sample with an h x w token grid are multiplied by
`ref / min(h, w)`. At the training resolution (min side = ref tokens) positions are the plain integers
0, 1, 2, ... (sharp local structure); a larger image gets finer fractional steps over the SAME range
(interpolation, which RoPE handles smoothly) instead of positions the model never saw (extrapolation);
an aspect ratio extends only the long side, as in the World whose units are fractions of min(H, W).
`pos_scaling="none"` gives the flux/Wan integer scheme.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch import Tensor

from chronotope.dit.patches import Grid


def default_rope_axes(head_dim: int) -> tuple[int, int, int]:
    """Split the head dim about 2:3:3 over (t, h, w), each part even: 64 -> (16, 24, 24), 72 -> (20, 26, 26)."""
    if head_dim % 2 or head_dim < 6:
        raise ValueError(f"RoPE needs an even head dim >= 6, got {head_dim}")
    hw = 2 * (3 * head_dim // 16)
    return (head_dim - 2 * hw, hw, hw)


def rope_positions(ids: Tensor, sample_idx: Tensor, grids: list[Grid], scaling: str = "min_side",
                   ref: float = 16.0) -> Tensor:
    """Integer ids [L, 3] -> float positions [L, 3] under the chosen scheme (see the file docstring)."""
    pos = ids.to(torch.float32)
    if scaling == "none":
        return pos
    if scaling != "min_side":
        raise ValueError(f"unknown pos_scaling {scaling!r}; choose 'min_side' or 'none'")
    scale = torch.tensor([ref / min(g[1], g[2]) for g in grids], dtype=torch.float32)  # [N], host values
    if ids.is_cuda:  # pinned and asynchronous: a plain copy from pageable memory waits for the GPU
        scale = scale.pin_memory().to(ids.device, non_blocking=True)
    s = scale[sample_idx]  # [L]
    return torch.stack([pos[:, 0], pos[:, 1] * s, pos[:, 2] * s], dim=1)  # [L, 3]


class RoPE3D(nn.Module):
    """Rotary embedding with the head dim split over the (t, h, w) axes (rotate-half layout)."""

    def __init__(self, axes_dim: tuple[int, int, int], theta: float = 10000.0):
        super().__init__()
        if any(d % 2 for d in axes_dim):
            raise ValueError(f"every RoPE axis dim must be even, got {axes_dim}")
        self.axes_dim = tuple(axes_dim)
        self.theta = theta

    def forward(self, pos: Tensor) -> tuple[Tensor, Tensor]:
        """pos [L, 3] float -> (cos, sin), each [L, 1, 1, hd] to broadcast over (q/k, heads).

        sin carries the rotate-half sign (first half negated) so `apply_rope` needs no negation pass.
        """
        angles = []
        for axis, d in enumerate(self.axes_dim):
            omega = self.theta ** (-torch.arange(0, d, 2, dtype=torch.float64, device=pos.device) / d)  # [d/2]
            angles.append(pos[:, axis, None].double() * omega)  # [L, d/2]
        a = torch.cat(angles, dim=1).float()  # [L, hd/2]
        cos, sin = a.cos(), a.sin()  # [L, hd/2]
        cos = torch.cat([cos, cos], dim=1)[:, None, None, :]  # [L, 1, 1, hd]
        sin = torch.cat([-sin, sin], dim=1)[:, None, None, :]
        return cos, sin


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x [L, ..., hd] rotated by per-token angles cos/sin [L, 1.., hd] (rotate-half pairing i <-> i + hd/2)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.addcmul(x * cos, torch.cat([x2, x1], dim=-1), sin)  # (x1, x2) -> (x1 c - x2 s, x2 c + x1 s)


def position_features(pos: Tensor, dim_per_axis: int = 32, max_period: float = 64.0) -> Tensor:
    """Sinusoidal features of float positions [L, 3] -> [L, 3 * dim_per_axis]: per axis cos and sin at
    dim_per_axis / 2 frequencies from 1 down to 1 / max_period (periods of about 6 to 400 positions,
    so they tell apart every token of a clip, where the 10,000-period timestep features would not)."""
    half = dim_per_axis // 2
    freqs = max_period ** (-torch.arange(half, dtype=torch.float32, device=pos.device) / half)  # [half]
    args = pos.float()[:, :, None] * freqs  # [L, 3, half]
    return torch.cat([args.cos(), args.sin()], dim=-1).flatten(1)  # [L, 3 * dim_per_axis]


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal features of t in [0, 1] (scaled by 1000 as in DiT): [n] -> [n, dim]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = 1000.0 * t.float()[:, None] * freqs[None]  # [n, half]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEmbedder(nn.Module):
    """DiT's TimestepEmbedder: sinusoidal features -> MLP. Applied per token: t [L] -> [L, D]."""

    def __init__(self, width: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(timestep_embedding(t, self.freq_dim))
