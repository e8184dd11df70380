"""VideoPipeline: text (and images, videos) -> video, every Sora mode through one sampler call.

The layout is the pipeline (as in flux): prompt expansion -> text encoder -> noise -> conditioning
(chronotope/modes.py: which latent frames are given clean, t = 0) -> rectified-flow sampler with
classifier-free guidance over the DiT's packed tokens -> causal-VAE decode. Names follow diffusers.

    pipe = VideoPipeline.from_pretrained("runs/world-model")      # or .from_presets("debug", "debug")
    out = pipe("a red circle moves left", num_frames=17, height=64, width=64, seed=0)
    out.frames[0]                                                  # uint8 [17, 64, 64, 3]
    pipe("...", image="start.png")                                 # i2v; also video=, video_end=, mode="loop"

A model folder holds model_index.json (component classes, the text encoder *named*, defaults) and
vae/ and dit/ (config.json + model.safetensors each, or shards + an index: chronotope/weights.py).
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from chronotope import modes
from chronotope.atomic import atomic_write_json
from chronotope.config import DIT_PRESETS, VAE_PRESETS
from chronotope.diffusion.samplers import cfg_velocity, get_sampler
from chronotope.dit.model import DiT
from chronotope.dit.patches import Sample, pack, unpack
from chronotope.request import MODES, arg
from chronotope.sizes import nearest_multiples, size_for
from chronotope.text.encoder import DEFAULT_TEXT_ENCODER, DebugTextEncoder, load_text_encoder
from chronotope.vae.model import CausalVAE

DEFAULTS = {"height": 64, "width": 64, "num_frames": 17, "fps": 8.0, "time_shift": 1.0}
ASSETS = Path(__file__).parent / "assets" / "world-model"


def default_model_dir() -> Path:
    """The shipped model folder; FileNotFoundError until one is shipped (pass --model DIR meanwhile)."""
    if not (ASSETS / "model_index.json").is_file():
        raise FileNotFoundError(
            f"no model is shipped yet at {ASSETS}; pass --model DIR (a folder written by "
            "VideoPipeline.save_pretrained or by `chronotope train dit`)"
        )
    return ASSETS


@dataclass
class PipelineOutput:
    """frames: one uint8 [T, H, W, 3] per video; latents: [B, C, t, h, w] of the (last) generated window
    (long: every window's new latents along t); prompts: the captions actually encoded (expanded);
    cond_mask: [B, t] which latent frames were given; params: every resolved setting (for sidecars)."""

    frames: list[np.ndarray]
    latents: Tensor
    prompts: list[str]
    seed: int
    fps: float
    mode: str
    cond_mask: Tensor
    params: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def to_uint8(x: Tensor) -> np.ndarray:
    """Pixels [B, 3, T, H, W] in [-1, 1] -> uint8 [B, T, H, W, 3]."""
    return ((x.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 4, 1).cpu().numpy()


class VideoPipeline:
    """vae (CausalVAE) + dit (DiT) + text_encoder (anything with encode(prompts) -> (emb, mask)).

    text_encoder may be None: it is loaded on first use from `text_encoder_name`.
    """

    def __init__(self, vae: CausalVAE, dit: DiT, text_encoder=None, text_encoder_name: str = DEFAULT_TEXT_ENCODER,
                 defaults: dict | None = None):
        if dit.config.in_channels != vae.config.latent_channels:
            raise ValueError(f"the DiT takes {dit.config.in_channels} latent channels but the VAE makes "
                             f"{vae.config.latent_channels}; build the DiT with in_channels={vae.config.latent_channels}")
        self.vae, self.dit = vae.eval(), dit.eval()
        self._text_encoder, self.text_encoder_name = text_encoder, text_encoder_name
        self.defaults = {**DEFAULTS, **(defaults or {})}

    @property
    def text_encoder(self):
        if self._text_encoder is None:
            self._text_encoder = load_text_encoder(self.text_encoder_name, self.dit.config.text_dim)
        return self._text_encoder

    @property
    def device(self) -> torch.device:
        return next(self.dit.parameters()).device

    def to(self, device: str | torch.device) -> "VideoPipeline":
        self.vae.to(device)
        self.dit.to(device)
        return self

    # --- folders ------------------------------------------------------------------------------------

    @classmethod
    def from_presets(cls, vae: str = "debug", dit: str = "debug", text_encoder: str = "debug", seed: int = 0,
                     defaults: dict | None = None) -> "VideoPipeline":
        """Random-weight pipeline from presets (tests, debugging). The DiT's zero-initialised output layers get
        small random weights so that it is not the identity (a zero velocity would ignore text and frames)."""
        for name, presets in ((vae, VAE_PRESETS), (dit, DIT_PRESETS)):
            if name not in presets:
                raise ValueError(f"unknown preset {name!r}; choose one of {sorted(presets)}")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            v = CausalVAE(VAE_PRESETS[vae]())
            cfg = DIT_PRESETS[dit]()
            cfg.in_channels = v.config.latent_channels
            d = DiT(cfg)
            with torch.no_grad():
                for p in d.parameters():
                    if not p.any():
                        p.normal_(0.0, 0.02)
        return cls(v, d, None, text_encoder, defaults)

    def save_pretrained(self, folder: str | os.PathLike, dtype: torch.dtype | None = None,
                        max_shard_size: int | str | None = None) -> None:
        """Write model_index.json + vae/ + dit/ (each file atomically); the text encoder is named, not copied.
        dtype: store the weights in it (torch.float16 ships a folder half the size; loading casts back);
        max_shard_size: split weights over model-0000k-of-0000n.safetensors files no larger (e.g. "10MB")."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.vae.save_pretrained(folder / "vae", dtype=dtype, max_shard_size=max_shard_size)
        self.dit.save_pretrained(str(folder / "dit"), dtype=dtype, max_shard_size=max_shard_size)
        index = {"_class_name": "VideoPipeline", "vae": ["chronotope.vae.model", "CausalVAE"],
                 "dit": ["chronotope.dit.model", "DiT"], "text_encoder": self.text_encoder_name,
                 "defaults": self.defaults}
        atomic_write_json(folder / "model_index.json", index)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, text_encoder=None) -> "VideoPipeline":
        folder = Path(folder)
        index_path = folder / "model_index.json"
        if not index_path.is_file():
            raise FileNotFoundError(f"{folder} has no model_index.json; a model folder is written by "
                                    "VideoPipeline.save_pretrained (model_index.json, vae/, dit/)")
        index = json.loads(index_path.read_text())
        for key, want in (("vae", "CausalVAE"), ("dit", "DiT")):  # never import a class named by a file
            if list(index.get(key, []))[-1:] != [want]:
                raise ValueError(f"{index_path}: component {key!r} must be {want}, got {index.get(key)}")
        name = index.get("text_encoder", DEFAULT_TEXT_ENCODER)
        if name not in (DEFAULT_TEXT_ENCODER, "debug") and not Path(name).is_absolute():
            local = folder / name  # a relative path is relative to the model folder
            name = str(local) if local.exists() else name
        return cls(CausalVAE.from_pretrained(folder / "vae"), DiT.from_pretrained(str(folder / "dit")),
                   text_encoder, name, index.get("defaults"))

    # --- pixels <-> latents ---------------------------------------------------------------------------

    @torch.no_grad()
    def encode_video(self, frames: np.ndarray) -> Tensor:
        """uint8 frames [T, H, W, 3] (T = 4k+1, H and W multiples of 16) -> normalised latents [C, t, h, w]."""
        x = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device).float() / 127.5 - 1.0  # [T, H, W, 3]
        x = x.permute(3, 0, 1, 2)[None]  # [1, 3, T, H, W]
        chunk = 16 if x.shape[2] > 17 else None  # long inputs: causal chunks keep memory flat
        return self.vae.encode_latents(x, chunk_frames=chunk)[0]

    @torch.no_grad()
    def iter_frames(self, latents: Tensor, chunk_latent_frames: int = 1):
        """Normalised latents [B, C, t, h, w] -> uint8 chunks [B, n, H, W, 3], bounded memory (causal cache)."""
        for x in self.vae.decode_iter(self.vae.denormalize(latents), chunk_latent_frames):
            yield to_uint8(x)

    def decode(self, latents: Tensor) -> np.ndarray:
        """Normalised latents [B, C, t, h, w] -> uint8 [B, T, H, W, 3]."""
        return np.concatenate(list(self.iter_frames(latents)), axis=1)

    # --- the one denoising loop ------------------------------------------------------------------------

    def _model_fn(self, x: Tensor, t: Tensor, context: tuple[Tensor, Tensor]) -> Tensor:
        """Batched latents x [N, C, n, h, w] and per-frame t (broadcastable to [N, 1, n, 1, 1]) -> velocity
        [N, C, n, h, w], through the DiT's packed sequence (one block-diagonal sequence for all N)."""
        emb, mask = context
        N, _, n = x.shape[:3]
        t_frames = t.expand(N, 1, n, 1, 1).reshape(N, n)  # [N, n]: 0 at given frames
        samples = [Sample(x[i], timestep=t_frames[i], text_idx=i) for i in range(N)]
        packed = pack(samples, patch=self.dit.config.patch).to(x.device)
        v = self.dit(packed, emb, mask)  # [L, C*pt*ph*pw]
        return torch.stack(unpack(packed, v))  # [N, C, n, h, w]

    @torch.no_grad()
    def denoise(self, x: Tensor, ts: Tensor, cond: tuple[Tensor, Tensor], uncond: tuple[Tensor, Tensor] | None,
                plan: modes.Plan, sampler: str = "euler", guidance_scale: float = 1.0,
                image_guidance_scale: float | None = None, generator: torch.Generator | None = None,
                progress: bool = True) -> Tensor:
        """One sampler call: x [B, C, n, h, w] at t = ts[0] -> clean latents. The plan's given latent frames
        ride along clean with t = 0 (x_cond / cond_mask); CFG when guidance_scale > 1 (uncond = negative prompt)."""
        B = x.shape[0]
        x_cond = mask = None
        if plan.any:
            lat = plan.latents if plan.latents.dim() == 5 else plan.latents[None]  # per video or shared
            x_cond = lat.expand(B, -1, -1, -1, -1).to(x)  # [B, C, n, h, w]
            mask = plan.mask[None, None].expand(B, 1, -1).to(x.device)  # [B, 1, n]: aligned to B, C, n
        use_cfg = guidance_scale > 1.0 and uncond is not None
        igs = image_guidance_scale if (plan.any and use_cfg) else None
        if use_cfg:
            fn = cfg_velocity(self._model_fn, guidance_scale, cond, uncond, image_guidance_scale=igs,
                              x_cond=x_cond if igs is not None else None, cond_mask=mask if igs is not None else None,
                              generator=generator)
        else:
            fn = lambda xx, tt: self._model_fn(xx, tt, cond)  # noqa: E731
        return get_sampler(sampler)(fn, x, ts.to(x.device), x_cond=x_cond, cond_mask=mask, progress=progress)

    def encode_prompts(self, prompts: list[str], negative: list[str]) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
        """Both prompt lists in one encoder call (same token length L, as batched CFG needs)."""
        emb, mask = self.text_encoder.encode(list(prompts) + list(negative))
        emb, mask, B = emb.to(self.device), mask.to(self.device), len(prompts)
        return (emb[:B], mask[:B]), (emb[B:], mask[B:])

    def __call__(self, prompt: str | list[str], **kwargs) -> PipelineOutput:
        """Generate; see chronotope.generate.generate for every argument (diffusers' names)."""
        from chronotope.generate import generate

        return generate(self, prompt, **kwargs)


def _note(notes: list[str], text: str) -> None:
    notes.append(text)
    print(f"note: {text}", file=sys.stderr)


def resolve_size(pipe: VideoPipeline, height: int | None, width: int | None, resolution, aspect_ratio,
                 fallback: tuple[int, int] | None = None) -> tuple[int, int]:
    """(height, width) from height/width, or resolution + aspect_ratio (either alone: the other from the
    model's default size, a square), or the input's size, or the defaults. ValueError names the nearest
    valid sizes: multiples of the VAE's spatial factor x the DiT's spatial patch (8 x 1 for the shipped
    model, 8 x 2 = 16 for the patch-2 presets)."""
    if (height is None) != (width is None):
        raise ValueError(f"give {arg('height')} and {arg('width')} together (or {arg('resolution')} and "
                         f"{arg('aspect_ratio')})")
    if height is not None and (resolution is not None or aspect_ratio is not None):
        which = arg("resolution") if resolution is not None else arg("aspect_ratio")
        raise ValueError(f"give either {arg('height')}/{arg('width')} or {which}, not both")
    if resolution is not None or aspect_ratio is not None:
        if resolution is None:  # the default frame's area, e.g. 64x64 -> "64px"
            resolution = f"{round(math.sqrt(pipe.defaults['height'] * pipe.defaults['width']))}px"
        height, width = size_for(resolution, aspect_ratio or "1:1")
    elif height is None:
        height, width = fallback or (pipe.defaults["height"], pipe.defaults["width"])
    step = pipe.vae.config.spatial_factor * pipe.dit.config.patch[1]
    for name, value in (("height", height), ("width", width)):
        if value < step or value % step:
            near = " or ".join(map(str, nearest_multiples(max(value, 1), step)))
            raise ValueError(f"{arg(name, value)}: must be a multiple of {step} (VAE x{pipe.vae.config.spatial_factor}"
                             f" x patch {pipe.dit.config.patch[1]}); nearest valid: {near}")
    return int(height), int(width)


def tokens_per_sample(pipe: VideoPipeline, n: int, h: int, w: int) -> int:
    pt, ph, pw = pipe.dit.config.patch
    return (n // pt) * (h // ph) * (w // pw)


def initial_noise(shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> Tensor:
    return torch.randn(shape, generator=generator, dtype=torch.float32).to(device)


__all__ = ["DEFAULT_TEXT_ENCODER", "MODES", "DebugTextEncoder", "PipelineOutput", "VideoPipeline", "default_model_dir", "load_text_encoder",
           "resolve_size"]
