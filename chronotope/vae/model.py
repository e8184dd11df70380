"""Causal 3D VAE: the video compression network (Sora's; layout of Wan 2.1's VAE, MAGVIT-v2's causality).

The first frame is coded alone and every `temporal_factor` further frames make one more latent
frame, so a 4k+1-frame clip gives k+1 latent frames and an image gives one: images and videos share
one latent space. Long clips are coded in time chunks with a causal cache (same numbers as whole-clip
coding) and large frames in blended spatial tiles, so memory stays flat as length and size grow.

Latent convention: `encode(x)` gives the raw posterior; `encode_latents(x)` gives *normalised*
latents ((z - latent_mean) / latent_std) and `decode_latents(z)` takes them. The DiT only sees these.

    vae = CausalVAE(VAE_PRESETS["world"]())
    z = vae.encode_latents(x)            # x: [B, 3, 17, 64, 64] in [-1, 1] -> z: [B, 16, 5, 8, 8]
    for frames in vae.decode_iter(z):    # bounded memory: [B, 3, 1 or 4, 64, 64] per latent frame
        ...
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from chronotope.atomic import atomic_write_json
from chronotope.config import VAEConfig, config_from_dict
from chronotope.vae.layers import (
    CHANNELS_LAST,
    Cache,
    CausalConv3d,
    Downsample,
    FrameGroupNorm,
    ResBlock,
    SpatialAttention,
    Upsample,
    match_channels,
)
from chronotope.vae.tiling import tiled_call

Tile = int | tuple[int, int] | None  # spatial tile in pixels: one side, (height, width), or None (whole frames)


class DiagonalGaussian:
    """Posterior N(mean, exp(logvar)) from moments [B, 2C, t, h, w] (mean first, then logvar)."""

    def __init__(self, moments: torch.Tensor) -> None:
        self.moments = moments
        self.mean, logvar = moments.chunk(2, dim=1)  # 2 x [B, C, t, h, w]
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        noise = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * noise

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL(q || N(0, I)) summed over C, t, h, w: [B]."""
        return 0.5 * (self.mean.square() + self.logvar.exp() - 1.0 - self.logvar).sum(dim=(1, 2, 3, 4))


class Stack(nn.ModuleList):
    """Blocks applied in order, each given the causal cache."""

    def forward(self, x: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        for block in self:
            x = block(x, cache)
        return x


def _mid(width: int, attention: bool, time_kernel: int) -> Stack:
    attn = [SpatialAttention(width)] if attention else []
    return Stack([ResBlock(width, width, time_kernel=time_kernel), *attn,
                  ResBlock(width, width, time_kernel=time_kernel)])


class Encoder(nn.Module):
    """[B, 3, T, H, W] -> moments [B, 2*latent, 1 + (T-1)/tf, H/sf, W/sf]."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        w = cfg.widths
        kernel = (cfg.time_kernel, 3, 3)
        self.conv_in = CausalConv3d(cfg.in_channels, w[0], kernel)
        blocks: list[nn.Module] = []
        prev = w[0]
        for level, width in enumerate(w):
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResBlock(prev, width, shortcut=cfg.shortcuts, time_kernel=cfg.time_kernel))
                prev = width
            if level < len(w) - 1:
                blocks.append(Downsample(width, time=cfg.temporal_down[level], shortcut=cfg.shortcuts))
        self.down = Stack(blocks)
        self.mid = _mid(prev, cfg.mid_attention, cfg.time_kernel)
        self.norm_out = FrameGroupNorm(prev)
        self.conv_out = CausalConv3d(prev, 2 * cfg.latent_channels, kernel)
        self.shortcut = cfg.shortcuts
        # Start with a narrow posterior (std ~ 0.05): with the default init the sampled noise (std ~ 1)
        # drowns the signal and the first hundreds of steps only learn to shrink it.
        with torch.no_grad():
            self.conv_out.bias[cfg.latent_channels :].fill_(-6.0)

    def forward(self, x: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        x = self.conv_in(x, cache)
        x = self.mid(self.down(x, cache), cache)
        moments = self.conv_out(F.silu(self.norm_out(x)), cache)  # [B, 2*latent, t, h, w]
        if self.shortcut:  # the mean also gets the features averaged down to the latent width
            mean, logvar = moments.chunk(2, dim=1)
            moments = torch.cat([mean + match_channels(x, mean.shape[1]), logvar], dim=1)
        return moments


class Decoder(nn.Module):
    """latent [B, latent, t, h, w] -> [B, 3, 1 + (t-1)*tf, h*sf, w*sf] (Wan 2.1's widths, halved at upsampling)."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        w = cfg.widths[::-1]
        time_up = cfg.temporal_down[::-1]
        kernel = (cfg.time_kernel, 3, 3)
        self.conv_in = CausalConv3d(cfg.latent_channels, w[0], kernel)
        self.shortcut = cfg.shortcuts
        self.mid = _mid(w[0], cfg.mid_attention, cfg.time_kernel)
        blocks: list[nn.Module] = []
        prev = w[0]
        for level, width in enumerate(w):
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResBlock(prev, width, shortcut=cfg.shortcuts, time_kernel=cfg.time_kernel))
                prev = width
            if level < len(w) - 1:
                blocks.append(Upsample(width, width // 2, time=time_up[level], shortcut=cfg.shortcuts))
                prev = width // 2
        self.up = Stack(blocks)
        self.norm_out = FrameGroupNorm(prev)
        self.conv_out = CausalConv3d(prev, cfg.in_channels, kernel)

    def forward(self, z: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        x = self.conv_in(z, cache)  # [B, w0, t, h, w]
        if self.shortcut:
            x = x + match_channels(z, x.shape[1])
        x = self.mid(x, cache)
        x = self.up(x, cache)
        return self.conv_out(F.silu(self.norm_out(x)), cache)


def _nearest(value: int, step: int, offset: int = 0) -> str:
    lo = max(offset, (value - offset) // step * step + offset)
    return f"{lo} or {lo + step}" if lo != value else str(value)


class CausalVAE(nn.Module):
    """Causal 3D VAE. Pixels [B, C, T, H, W] in [-1, 1] <-> latents [B, latent, 1 + (T-1)/tf, H/sf, W/sf]."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        # Activations and weights live in channels-last memory ([B, T, H, W, C] order, same tensor shapes):
        # oneDNN's convolutions and the fused RMS norm run 1.5-3x faster on it than on [B, C, T, H, W].
        self.to(memory_format=CHANNELS_LAST)

    # --- shapes ---------------------------------------------------------------------------------

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """(C, t, h, w) of the latent of a num_frames x height x width clip; ValueError names valid sizes."""
        tf, sf = self.config.temporal_factor, self.config.spatial_factor
        if num_frames < 1 or (num_frames - 1) % tf:
            raise ValueError(
                f"num_frames must be {tf}k+1 (1, {1 + tf}, {1 + 2 * tf}, ...) for temporal_factor {tf}, "
                f"got {num_frames}; nearest valid: {_nearest(max(num_frames, 1), tf, 1)}"
            )
        for name, size in (("height", height), ("width", width)):
            if size < sf or size % sf:
                raise ValueError(
                    f"{name} must be a multiple of spatial_factor {sf}, got {size}; "
                    f"nearest valid: {_nearest(max(size, sf), sf)}"
                )
        return self.config.latent_channels, 1 + (num_frames - 1) // tf, height // sf, width // sf

    def _check_pixels(self, x: torch.Tensor) -> None:
        if x.ndim != 5 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"expected pixels [B, {self.config.in_channels}, T, H, W], got shape {tuple(x.shape)}")
        self.latent_shape(*x.shape[2:])

    def _check_latents(self, z: torch.Tensor) -> None:
        if z.ndim != 5 or z.shape[1] != self.config.latent_channels:
            raise ValueError(
                f"expected latents [B, {self.config.latent_channels}, t, h, w], got shape {tuple(z.shape)}"
            )

    def _check_tiling(self, tile_size: Tile, tile_overlap: int) -> None:
        sf = self.config.spatial_factor
        sides = () if tile_size is None else (tile_size,) * 2 if isinstance(tile_size, int) else tuple(tile_size)
        if any(t < 2 * sf or t % sf or not 0 <= tile_overlap < t for t in sides) or tile_overlap % sf:
            raise ValueError(
                f"tile_size must be a multiple of {sf} (>= {2 * sf}) and tile_overlap a multiple of {sf} "
                f"smaller than tile_size, got tile_size={tile_size}, tile_overlap={tile_overlap}"
            )

    # --- encode ---------------------------------------------------------------------------------

    def encode(self, x: torch.Tensor, chunk_frames: int | None = 16, tile_size: Tile = None,
               tile_overlap: int = 16) -> DiagonalGaussian:
        """x: [B, 3, T, H, W] in [-1, 1] -> posterior over raw latents [B, C, 1 + (T-1)/tf, H/sf, W/sf].

        chunk_frames: code the first frame, then chunk_frames frames at a time (a multiple of
        temporal_factor) with a causal cache, so memory does not grow with length; None codes the
        whole clip at once (what training does: same numbers, one pass). tile_size (one side, or
        (height, width)) / tile_overlap (pixels, multiples of spatial_factor): code overlapping spatial tiles.
        """
        self._check_pixels(x)
        tf = self.config.temporal_factor
        if chunk_frames is None:
            self._check_tiling(tile_size, tile_overlap)
            sf = self.config.spatial_factor
            return DiagonalGaussian(self._run(self.encoder, x, None, tile_size, tile_overlap, (1, sf)).contiguous())
        if chunk_frames < 1 or chunk_frames % tf:
            raise ValueError(f"chunk_frames must be a positive multiple of temporal_factor {tf}, got {chunk_frames}")
        rest = x[:, :, 1:].split(chunk_frames, dim=2) if x.shape[2] > 1 else ()
        moments = [p.moments for p in self.encode_chunks([x[:, :, :1], *rest], tile_size, tile_overlap)]
        return DiagonalGaussian(torch.cat(moments, dim=2).contiguous())  # [B, 2C, t, h, w]

    def encode_chunks(
        self, chunks: Iterable[torch.Tensor], tile_size: Tile = None, tile_overlap: int = 16
    ) -> Iterator[DiagonalGaussian]:
        """Encode a clip given as consecutive time chunks [B, 3, n_i, H, W] (the first frame alone, then
        multiples of temporal_factor), yielding each chunk's posterior [B, C, n_i / tf (1 for the first), h, w].
        A causal cache carries between chunks (the numbers of `encode`), and chunks are read only as they are
        needed, so a caller can stream a clip in and its latents out (chronotope reconstruct does)."""
        self._check_tiling(tile_size, tile_overlap)
        sf = self.config.spatial_factor
        caches: dict[int, Cache] = {}
        for chunk in chunks:
            yield DiagonalGaussian(self._run(self.encoder, chunk, caches, tile_size, tile_overlap, (1, sf)))

    @staticmethod
    def _run(
        net: nn.Module,
        x: torch.Tensor,
        caches: dict[int, Cache] | None,
        tile: Tile,
        overlap: int,
        scale: tuple[int, int],
    ) -> torch.Tensor:
        """Run the encoder or decoder on one time chunk, whole or in blended tiles (each tile keeps its
        own causal cache, caches[tile_index]; caches=None codes without a cache)."""

        def one(t: torch.Tensor, index: int) -> torch.Tensor:
            cache = None if caches is None else caches.setdefault(index, {})
            return net(t.contiguous(memory_format=CHANNELS_LAST), cache)

        return one(x, 0) if tile is None else tiled_call(one, x, tile, overlap, scale)

    # --- decode ---------------------------------------------------------------------------------

    def decode_iter(
        self,
        z: torch.Tensor | Iterable[torch.Tensor],
        chunk_latent_frames: int = 1,
        tile_size: Tile = None,
        tile_overlap: int = 16,
        clamp: bool = True,
    ) -> Iterator[torch.Tensor]:
        """Decode raw latents [B, C, t, h, w] chunk by chunk with a causal cache, yielding pixel chunks
        [B, 3, n, H, W] (n = 1 + (k-1)*tf for the first chunk of k latent frames, k*tf after), so a caller
        that writes frames out as they come holds one chunk at a time. z may also be an iterable of
        consecutive latent pieces (e.g. from encode_chunks), each split into chunk_latent_frames.
        tile_size (one side, or (height, width)) / tile_overlap in pixels."""
        self._check_tiling(tile_size, tile_overlap)
        if chunk_latent_frames < 1:
            raise ValueError(f"chunk_latent_frames must be >= 1, got {chunk_latent_frames}")
        sf = self.config.spatial_factor
        caches: dict[int, Cache] = {}
        tile = None if tile_size is None else (
            tile_size // sf if isinstance(tile_size, int) else (tile_size[0] // sf, tile_size[1] // sf))
        for piece in [z] if isinstance(z, torch.Tensor) else z:
            self._check_latents(piece)
            for chunk in piece.split(chunk_latent_frames, dim=2):
                x = self._run(self.decoder, chunk, caches, tile, tile_overlap // sf, (sf, 1)).contiguous()
                yield x.clamp_(-1.0, 1.0) if clamp else x

    def decode(self, z: torch.Tensor, chunk_latent_frames: int | None = 4, tile_size: Tile = None,
               tile_overlap: int = 16, clamp: bool = True) -> torch.Tensor:
        """Raw latents [B, C, t, h, w] -> pixels [B, 3, 1 + (t-1)*tf, h*sf, w*sf] clamped to [-1, 1].
        Decodes chunk_latent_frames at a time with a causal cache (bounded memory); None decodes all
        latent frames at once (same numbers, memory grows with length)."""
        if chunk_latent_frames is None and tile_size is None:
            self._check_latents(z)
            x = self.decoder(z.contiguous(memory_format=CHANNELS_LAST)).contiguous()
            return x.clamp_(-1.0, 1.0) if clamp else x
        chunk = z.shape[2] if chunk_latent_frames is None else chunk_latent_frames
        return torch.cat(list(self.decode_iter(z, chunk, tile_size, tile_overlap, clamp)), dim=2)

    def forward(
        self, x: torch.Tensor, sample: bool = True, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, DiagonalGaussian]:
        """Training pass: x [B, 3, T, H, W] -> (recon [B, 3, T, H, W], unclamped, posterior)."""
        posterior = self.encode(x, chunk_frames=None)
        z = posterior.sample(generator) if sample else posterior.mode()
        return self.decoder(z.contiguous(memory_format=CHANNELS_LAST)).contiguous(), posterior

    # --- normalised latents (what the DiT sees) -------------------------------------------------

    def _stats(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.config
        mean = torch.tensor(c.latent_mean or [0.0] * c.latent_channels, dtype=z.dtype, device=z.device)
        std = torch.tensor(c.latent_std or [1.0] * c.latent_channels, dtype=z.dtype, device=z.device)
        return mean.view(1, -1, 1, 1, 1), std.view(1, -1, 1, 1, 1)

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats(z)
        return (z - mean) / std

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats(z)
        return z * std + mean

    def set_latent_stats(self, mean: list[float], std: list[float]) -> None:
        self.config.latent_mean, self.config.latent_std = list(mean), list(std)
        self.config.__post_init__()  # validate lengths and signs

    def encode_latents(
        self, x: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None, **kwargs
    ) -> torch.Tensor:
        """x [B, 3, T, H, W] -> normalised latents [B, C, t, h, w]; kwargs go to `encode` (chunking, tiling)."""
        posterior = self.encode(x, **kwargs)
        return self.normalize(posterior.sample(generator) if sample else posterior.mode())

    def decode_latents(self, z: torch.Tensor, **kwargs) -> torch.Tensor:
        """Normalised latents [B, C, t, h, w] -> pixels [B, 3, T, H, W]; kwargs go to `decode`."""
        return self.decode(self.denormalize(z), **kwargs)

    # --- folders --------------------------------------------------------------------------------

    def save_pretrained(self, directory: str | os.PathLike, dtype: torch.dtype | None = None,
                        max_shard_size: int | str | None = None) -> None:
        """Write config.json and model.safetensors (or shards + index when over `max_shard_size`) into
        `directory`, each atomically; `dtype` stores the weights in another precision (loading casts back)."""
        from chronotope.weights import save_weights

        directory = Path(directory)
        save_weights(self.state_dict(), directory, dtype=dtype, max_shard_size=max_shard_size)
        atomic_write_json(directory / "config.json", self.config.to_dict(), indent=2)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> CausalVAE:
        from chronotope.weights import has_weights, load_weights

        directory = Path(directory)
        if not (directory / "config.json").is_file() or not has_weights(directory):
            raise FileNotFoundError(f"{directory} lacks config.json or its weights; a VAE folder holds config.json "
                                    "and model.safetensors (or shards + model.safetensors.index.json)")
        config = config_from_dict(VAEConfig, json.loads((directory / "config.json").read_text()))
        vae = cls(config)
        vae.load_state_dict(load_weights(directory))
        return vae.eval()


@torch.no_grad()
def measure_latent_stats(vae: CausalVAE, batches: Iterable[torch.Tensor]) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of raw latents (posterior modes) over pixel batches [B, 3, T, H, W].
    Set them with `vae.set_latent_stats(mean, std)` so that normalised latents have mean 0, std 1."""
    total = total_sq = None
    count = 0
    for x in batches:
        z = vae.encode(x).mode().double()  # [B, C, t, h, w]
        s, sq = z.sum(dim=(0, 2, 3, 4)), z.square().sum(dim=(0, 2, 3, 4))
        total, total_sq = (s, sq) if total is None else (total + s, total_sq + sq)
        count += z.numel() // z.shape[1]
    if total is None:
        raise ValueError("measure_latent_stats got no batches")
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(1e-12).sqrt()
    return mean.tolist(), std.tolist()
