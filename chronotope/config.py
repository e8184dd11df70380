"""Typed configs for every model, and their presets as small functions (no inheritance, no registries).

`VAE_PRESETS["world"]()` returns a fresh `VAEConfig`; `DIT_PRESETS["world-s"]()` a fresh `DiTConfig`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import ClassVar


def config_from_dict(cls, data: dict):
    """Build a config dataclass from a dict (e.g. a config.json), rejecting unknown keys clearly.

    A key the class has retired (`cls.RETIRED`: name -> the value it always had by default) is dropped when the
    dict holds that value, so folders saved before its removal still load; any other value is refused. A key the
    dict lacks takes `cls.ABSENT`'s value when it has one (the value folders saved before the key existed were
    made with, where today's default differs), else the default."""
    names = {f.name for f in fields(cls)}
    data = {**getattr(cls, "ABSENT", {}), **data}
    retired = getattr(cls, "RETIRED", {})
    for key in set(data) & set(retired):
        if data[key] != retired[key]:
            raise ValueError(f"{cls.__name__} {key}={data[key]!r}: that option was an experiment and has been "
                             f"removed (only {key}={retired[key]!r} loads); this folder needs the Chronotope "
                             "version that wrote it")
    data = {k: v for k, v in data.items() if k not in retired}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys {unknown}; valid keys: {sorted(names)}")
    return cls(**data)


# === VAE ========================================================================================


@dataclass
class VAEConfig:
    """Causal 3D VAE (chronotope/vae/model.py). Compression per 4 frames = in_channels*tf*sf*sf / latent_channels.

    `widths[i]` is the channel width at resolution level i (level 0 = full resolution); there are
    log2(spatial_factor) downsampling stages, so len(widths) == log2(spatial_factor) + 1. The time
    downsampling happens in the last log2(temporal_factor) stages (Wan 2.1: [False, True, True]).
    `latent_mean` / `latent_std` (per latent channel, measured by `measure_latent_stats`) turn raw
    latents into the normalised latents the DiT sees; None means identity (0 / 1).
    """

    in_channels: int = 3
    latent_channels: int = 16
    temporal_factor: int = 4
    spatial_factor: int = 8
    widths: list[int] = field(default_factory=lambda: [32, 64, 128, 128])
    num_res_blocks: int = 2  # per encoder level; the decoder uses num_res_blocks + 1 (as SD / Wan)
    mid_attention: bool = True  # per-frame spatial self-attention in the middle blocks
    shortcuts: bool = True  # DC-AE's parameter-free space/time-to-channel residuals at every resampling step
    time_kernel: int = 3  # time taps of the 3x3 convs outside the resampling layers; 1 = per-frame convs
    latent_mean: list[float] | None = None
    latent_std: list[float] | None = None

    def __post_init__(self) -> None:
        if self.temporal_factor not in (1, 2, 4):
            raise ValueError(f"temporal_factor must be 1, 2 or 4, got {self.temporal_factor}")
        if self.spatial_factor not in (4, 8, 16):
            raise ValueError(f"spatial_factor must be 4, 8 or 16, got {self.spatial_factor}")
        if self.time_kernel not in (1, 3):
            raise ValueError(f"time_kernel must be 1 (per-frame convs) or 3 (3x3x3 convs), got {self.time_kernel}")
        n_down = self.spatial_factor.bit_length() - 1
        if len(self.widths) != n_down + 1:
            raise ValueError(
                f"widths needs log2(spatial_factor) + 1 = {n_down + 1} entries for spatial_factor "
                f"{self.spatial_factor}, got {len(self.widths)}: {self.widths}"
            )
        if any(w < 2 or w % 2 for w in self.widths):
            raise ValueError(f"widths must be even and >= 2 (the decoder halves them when upsampling), got {self.widths}")
        if self.num_res_blocks < 1 or self.latent_channels < 1 or self.in_channels < 1:
            raise ValueError("num_res_blocks, latent_channels and in_channels must be >= 1")
        for name in ("latent_mean", "latent_std"):
            value = getattr(self, name)
            if value is not None and len(value) != self.latent_channels:
                raise ValueError(f"{name} needs {self.latent_channels} values (one per latent channel), got {len(value)}")
        if self.latent_std is not None and min(self.latent_std) <= 0:
            raise ValueError(f"latent_std must be positive, got {self.latent_std}")

    @property
    def temporal_down(self) -> list[bool]:
        """Per downsampling stage: does it also halve time? The last log2(temporal_factor) stages do."""
        n_down = len(self.widths) - 1
        n_time = self.temporal_factor.bit_length() - 1
        return [i >= n_down - n_time for i in range(n_down)]

    @property
    def compression(self) -> float:
        """Pixel values per latent value, counted per temporal_factor frames."""
        return self.in_channels * self.temporal_factor * self.spatial_factor**2 / self.latent_channels

    def to_dict(self) -> dict:
        return asdict(self)


def _vae_debug() -> VAEConfig:
    """Tiny widths for CPU tests (seconds)."""
    return VAEConfig(latent_channels=4, widths=[8, 8, 16, 16], num_res_blocks=1)


def _vae_world() -> VAEConfig:
    """Small and fast, sized for 64px World clips: 8x space, 4x time, 16 channels = 48x compression.
    Narrow at full resolution (where the FLOPs are), wide at 8x8. Per-frame 3x3 convs (time_kernel=1):
    time is mixed only by the causal time down/upsampling convs. On 2 CPU cores this learns images
    ~2 dB faster per step than 3x3x3 convs and steps 2.5x faster (docs/training-world.md)."""
    return VAEConfig(latent_channels=16, widths=[16, 32, 64, 128], num_res_blocks=1, time_kernel=1)


def _vae_world_4x() -> VAEConfig:
    """`world` with 4x space instead of 8x (12x compression): a 64px frame is a 16x16 latent, so a 10-pixel
    object spans 2.5 latent cells, not 1.2. A DiT at patch (1, 2, 2) sees as many tokens (8x8 per 64px frame)
    as the shipped DiT on `world` at (1, 1, 1). Both resampling stages halve time."""
    return VAEConfig(latent_channels=16, spatial_factor=4, widths=[16, 64, 128], num_res_blocks=1, time_kernel=1)


def _vae_world_c64() -> VAEConfig:
    """`world` with 64 latent channels instead of 16 (12x compression, as `world-4x`): same 8x8 cells at
    64px, four times the numbers per cell: the shipped DiT's patch (1, 1, 1) keeps its token count."""
    return VAEConfig(latent_channels=64, widths=[16, 32, 64, 128], num_res_blocks=1, time_kernel=1)


def _vae_wan_match() -> VAEConfig:
    """Same compression and widths as diffusers' AutoencoderKLWan(base_dim=32, z_dim=16), for benchmarks."""
    return VAEConfig(latent_channels=16, widths=[32, 64, 128, 128], num_res_blocks=2, mid_attention=True)


VAE_PRESETS: dict[str, Callable[[], VAEConfig]] = {
    "debug": _vae_debug,
    "world": _vae_world,
    "world-4x": _vae_world_4x,
    "world-c64": _vae_world_c64,
    "wan-match": _vae_wan_match,
}


# === DiT ========================================================================================


@dataclass
class DiTConfig:
    """Diffusion transformer (chronotope/dit/model.py). Tokens are pt x ph x pw latent cubes."""

    in_channels: int = 16  # latent channels of the VAE
    out_channels: int | None = None  # None = in_channels (2x in_channels = the DiT paper's learned sigma)
    patch: tuple[int, int, int] = (1, 2, 2)
    width: int = 256
    depth: int = 6
    heads: int = 4
    mlp_ratio: float = 4.0
    text_dim: int = 384  # MiniLM-L6 token embeddings
    num_classes: int = 0  # > 0: class-conditional (the DiT paper), no text cross-attention
    qk_norm: bool = True
    rope: bool = True  # False: no position encoding inside the blocks (only for the DiT paper FLOP check)
    rope_axes: tuple[int, int, int] | None = None  # head-dim split over (t, h, w); None = about 2:3:3
    rope_theta: float = 10000.0
    pos_scaling: str = "min_side"  # "min_side": spatial ids x pos_ref / min(h, w) tokens; "none": integers
    pos_ref: float = 16.0  # token extent of the shorter side that maps to integer positions
    freq_dim: int = 256  # sinusoidal timestep features
    # also add sinusoidal features of each token's (t, h, w) position to its embedding (zero-initialised
    # projection): RoPE gives attention only relative offsets, so without them a token cannot tell the
    # first frame from the last, which "starts right, moves left" needs when the frames are still noise.
    # The shipped World model has them, and so has every preset but debug and the DiT paper's sizes
    abs_pos: bool = True
    # storyboards: > 0 adds a zero-initialised learned embedding of each token's shot index (0 = the
    # shot being made, j = the j-th shot before it, capped at shot_embed - 1), so earlier shots given as clean
    # context read as "another shot", not as frames to continue. 0 = off (the shipped model: it loads unchanged)
    shot_embed: int = 0
    # few-step sampling: True adds a zero-initialised embedding of each token's step size d (the interval
    # of time the model is asked to cross in one step), summed with the timestep embedding: the model returns the
    # average velocity over [t - d, t] (shortcut models, Frans et al. 2024), d = 0 the instantaneous one.
    # False = off (the shipped model: it loads unchanged)
    step_embed: bool = False
    # per-frame conditions besides the shot index (dit/conditioning.py FRAME_CONDITIONS): name -> embedder size
    conditions: dict[str, int] = field(default_factory=dict)
    attention: str = "auto"  # "auto" | "sdpa" | "flex" | "flash"
    # removed options and the value they always had in the folders that still hold them (config_from_dict)
    RETIRED: ClassVar[dict[str, object]] = {"pooled_text": False}
    # what a folder saved before an option existed was made with, where the default has changed since
    ABSENT: ClassVar[dict[str, object]] = {"abs_pos": False}

    def __post_init__(self) -> None:
        self.patch = tuple(self.patch)
        if self.rope_axes is not None:
            self.rope_axes = tuple(self.rope_axes)
        if self.width % self.heads:
            raise ValueError(f"width {self.width} must be divisible by heads {self.heads}")

    def to_dict(self) -> dict:
        return asdict(self)


def _dit(**kw) -> DiTConfig:
    return DiTConfig(**kw)


DIT_PRESETS = {
    # every test runs on this one, on CPU, in seconds (no absolute positions: its outputs stay what tests pinned)
    "debug": lambda: _dit(in_channels=4, width=64, depth=2, heads=4, pos_ref=4.0, abs_pos=False),
    # 64px World clips with an 8x VAE: a 17-frame clip is 5 x 4 x 4 = 80 tokens at patch (1, 2, 2); the shipped
    # model is this one at patch (1, 1, 1)
    "world-s": lambda: _dit(in_channels=16, width=256, depth=6, heads=4, pos_ref=4.0),
    # the DiT paper's sizes (Peebles & Xie 2023, Table 1), text-conditioned here, without absolute positions as there
    "S": lambda: _dit(width=384, depth=12, heads=6, abs_pos=False),
    "B": lambda: _dit(width=768, depth=12, heads=12, abs_pos=False),
    "L": lambda: _dit(width=1024, depth=24, heads=16, abs_pos=False),
    "XL": lambda: _dit(width=1152, depth=28, heads=16, abs_pos=False),
}
