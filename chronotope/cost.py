"""The cost model of a generation request: its peak memory and its time from the model's configs, at float32 rates
measured on the project's machines, and the memory this machine has. Pure arithmetic; request.py scales the time by
how busy the CPU is now (thread_slowdown) and checks the result (check_cost) before anything that takes minutes.

    cost = sampling_cost(pipe.dit.config, pipe.vae.config, parameters, "cpu", batch=1, latent=(16, 5, 8, 8),
                         steps=30, guidance_passes=2, frames=17)
    cost.describe()   # "about 180.2 MB of memory and 7 s on cpu (320 tokens per video, 69,632 output pixels)"
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Cost:
    """Rough peak memory (bytes) and run time (seconds) of a request, and what they were derived from."""

    memory: float
    seconds: float
    tokens: int  # DiT tokens per sample
    pixels: int  # output pixels (frames x height x width) per sample
    device: str
    frames: int = 0  # output frames per sample
    # the same request at another frame count (one window of 4k+1 frames), for check_cost to name what fits
    at_frames: Callable[[int], Cost] | None = field(default=None, repr=False)
    frame_step: int = 4  # frame counts that fit go in steps of this (the VAE's temporal factor)

    def describe(self) -> str:
        return (f"about {format_bytes(self.memory)} of memory and {format_duration(self.seconds)} on {self.device} "
                f"({self.tokens:,} tokens per video, {self.pixels:,} output pixels)")


# effective float32 rates (FLOP/s) of one torch thread, fitted to the shipped model's CPU time measured on the
# project's 2-core machines (one torch thread; README "What things cost"): a DiT call of 2 x 320 tokens took
# 0.21 s, of 2 x 5,120 tokens 10.5 s (linear layers and attention both ~40 GFLOP/s); the VAE decoded in 2.7-3.3 us
# and encoded in 1.2-1.7 us per pixel (~25 GFLOP/s). GPU: a conservative fraction of an H100/H200-class card.
RATES = {"cpu": {"linear": 40e9, "attention": 40e9, "conv": 25e9},
         "cuda": {"linear": 40e12, "attention": 40e12, "conv": 40e12}}
# model evaluations per sampler step (heun's last step into t = 0 is a plain Euler step)
EVALUATIONS = {"heun": 2, "midpoint": 2}


def vae_flops(vae, frames: int, height: int, width: int, encode: bool = False,
              tile: tuple[int, int] | None = None) -> float:
    """FLOPs of decoding (or encoding) `frames` frames of height x width with a VAE of config `vae`, coded in
    spatial tiles of `tile` pixels (vae.tiling.auto_tile) or whole frames."""
    # 2 FLOP x 9 spatial taps x time_kernel x width^2 per conv per pixel of each level (1/4 the pixels per level
    # down); each res block has 2 convs, the decoder num_res_blocks + 1 per level, the encoder num_res_blocks
    blocks = vae.num_res_blocks + (0 if encode else 1)
    per_pixel = sum(36 * vae.time_kernel * blocks * c * c / 4**i for i, c in enumerate(vae.widths))
    flops = frames * height * width * per_pixel
    if vae.mid_attention:  # single-head attention over each latent frame's (or tile's) positions, width top
        th, tw = tile or (height, width)
        tiles = math.ceil(height / th) * math.ceil(width / tw)
        positions = th * tw / vae.spatial_factor**2
        flops += (frames / vae.temporal_factor + 1) * tiles * 4 * positions**2 * vae.widths[-1]
    return flops


def sampling_cost(dit, vae, parameters: int, kind: str, batch: int, latent: tuple[int, int, int, int], steps: int,
                  guidance_passes: int, frames: int, windows: int = 1, *, sampler: str = "euler",
                  encode_frames: int = 0, decode_frames: int | None = None,
                  tile: tuple[int, int] | None = None) -> Cost:
    """Peak memory and time on one idle thread ("cpu") or a GPU ("cuda") of sampling `batch` videos of latent
    (C, n, h, w) with a DiT of config `dit`, a VAE of config `vae` and `parameters` weights in all: `windows`
    sampler calls of `steps` steps each (EVALUATIONS model calls per step of `sampler`), `guidance_passes` samples
    per call (1, 2 with CFG, 3 with image guidance), then decoding `frames` frames per window (or `decode_frames`
    in all) and encoding `encode_frames` given frames, in spatial tiles of `tile` pixels (or whole frames)."""
    C, n, h, w = latent
    pt, ph, pw = dit.patch
    tokens = max(1, n // pt) * max(1, h // ph) * max(1, w // pw)
    L = batch * guidance_passes * tokens
    D, depth = dit.width, dit.depth
    # DiT, per block: (4 + 2) D^2 weights of self- and cross-attention and 2 mlp_ratio D^2 of the MLP at 2 FLOP per
    # weight per token; attention scores and values 4 L_i^2 D per sample (block-diagonal: each sample alone)
    linear = depth * 2 * (6 + 2 * dit.mlp_ratio) * D * D * L
    attention = depth * 4 * batch * guidance_passes * tokens * tokens * D
    evaluations = steps * EVALUATIONS.get(sampler, 1) - (sampler == "heun")
    # activations of one block held at once: x, qkv, attention out, MLP hidden (~12 D floats per token)
    dit_memory = 4.0 * 12 * D * L
    H, W = h * vae.spatial_factor, w * vae.spatial_factor
    decoded = windows * frames if decode_frames is None else decode_frames
    conv = batch * (vae_flops(vae, decoded, H, W, tile=tile) + vae_flops(vae, encode_frames, H, W, True, tile))
    # decoding holds one latent frame's output frames of a tile at every level (a few buffers each) plus the
    # causal cache; its attention's SDPA takes PyTorch's math path on CPU: (h*w)^2 scores per tile, ~2 copies
    th, tw = tile or (H, W)
    vae_memory = 4.0 * batch * vae.temporal_factor * th * tw * sum(3 * c / 4**i for i, c in enumerate(vae.widths))
    if vae.mid_attention:
        vae_memory += 2 * 4.0 * batch * (th * tw / vae.spatial_factor**2) ** 2
    latents_memory = 4.0 * batch * C * n * h * w * 4
    rate = RATES[kind]
    seconds = (windows * evaluations * (linear / rate["linear"] + attention / rate["attention"])
               + conv / rate["conv"])
    memory = 4.0 * parameters + latents_memory + max(dit_memory, vae_memory)
    return Cost(memory, seconds, tokens, frames * H * W, kind, frames, frame_step=vae.temporal_factor)


def available_memory(device: str = "cpu") -> float:
    """Bytes this process may still allocate on `device` (CPU: MemAvailable; GPU: free device memory)."""
    if device == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info()
        return float(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return float("inf")


def memory_limit(per_item: float, share: float = 0.5, device: str = "cpu") -> int:
    """How many items of `per_item` bytes fit in `share` of the memory available on `device` (at least 1): the
    limit of a count whose items are all held at once, so that a typo of a few zeros is refused, not swapped."""
    available = available_memory(device)
    return max(1, int(min(available * share / per_item, 2**62)))


def format_bytes(n: float) -> str:
    """1.2 GB, 350.0 MB, 12 kB: memory in an error message."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n / 1e3:.0f} kB"


def format_duration(s: float) -> str:
    """"40 s", "14 minutes", "3 hours": a time in a note."""
    if s >= 365 * 86400:
        return "more than a year"
    if s >= 2 * 86400:
        return f"{s / 86400:.0f} days"
    if s >= 2 * 3600:
        return f"{s / 3600:.0f} hours"
    if s >= 120:
        return f"{s / 60:.0f} minutes"
    return f"{max(s, 1):.0f} s"
