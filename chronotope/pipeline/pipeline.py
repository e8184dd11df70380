"""VideoPipeline: text (and images, videos) -> video, every Sora mode through one sampler call.

The layout is the pipeline (as in flux): prompt expansion -> text encoder -> noise -> conditioning
(modes.py: which latent frames are given clean, t = 0) -> rectified-flow sampler with classifier-free
guidance over the DiT's packed tokens -> causal-VAE decode. Names follow diffusers. What a request means
(mode, size, frames, inputs) is resolved first (resolve.py); long videos run window by window (long_video.py).

    pipe = VideoPipeline.from_pretrained("runs/world-model")      # or .from_presets("debug", "debug")
    out = pipe("a red circle moves left", num_frames=17, height=64, width=64, seed=0)
    out.frames[0]                                                  # uint8 [17, 64, 64, 3]
    pipe("...", image="start.png")                                 # i2v; also video=, video_end=, mode="loop"

A model folder holds model_index.json (component classes, the text encoder *named*, defaults) and
vae/ and dit/ (config.json + model.safetensors each, or shards + an index: chronotope/weights.py).
"""

from __future__ import annotations

import functools
import json
import math
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from chronotope.atomic import atomic_write_json
from chronotope.config import DIT_PRESETS, VAE_PRESETS
from chronotope.diffusion.flow import shift_for_tokens, timesteps
from chronotope.diffusion.samplers import FEW_STEPS, cfg_velocity, get_sampler, shortcut
from chronotope.dit.model import DiT
from chronotope.dit.patches import Sample, pack, unpack
from chronotope.pipeline import modes
from chronotope.pipeline.long_video import generate_long
from chronotope.pipeline.resolve import (
    check_choices,
    fit_frames,
    frames_from,
    infer_mode,
    load_input,
    note,
    per_prompt,
    resolve_size,
    tokens_per_sample,
)
from chronotope.request import arg, check_cost, check_request, estimate_cost
from chronotope.text.encoder import DEFAULT_TEXT_ENCODER, load_text_encoder
from chronotope.text.expand import expand as _expand
from chronotope.vae.domain import CHECK_FRAMES, domain_note, reconstruction_psnr
from chronotope.vae.model import CausalVAE
from chronotope.vae.tiling import TILE_OVERLAP, auto_tile
from chronotope.video import write_video

DEFAULTS = {"height": 64, "width": 64, "num_frames": 17, "fps": 8.0, "time_shift": 1.0}
# sampling settings a request leaves out, when the model folder names none (model_index.json "defaults" may hold
# "num_inference_steps", "guidance_scale" and "sampler": a few-step model declares "sampler": "shortcut" there)
SAMPLING = {"num_inference_steps": 30, "guidance_scale": 5.0, "sampler": "euler"}


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


# latent cells (batch x frames x height x width) one VAE decoder call takes at most: a 33-frame 128px clip (9 x 16 x 16)
DECODE_CELLS = 2304


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

    def with_defaults(self, **changes) -> "VideoPipeline":
        """The same models (shared, not copied) with some defaults changed, e.g. with_defaults(time_shift=1.5);
        this pipeline is left as it is."""
        return VideoPipeline(self.vae, self.dit, self._text_encoder, self.text_encoder_name, {**self.defaults, **changes})

    def to(self, device: str | torch.device) -> "VideoPipeline":
        self.vae.to(device)
        self.dit.to(device)
        return self

    # --- LoRA adapters (pipeline/lora.py: merged into the DiT's weights, so sampling costs nothing extra) -----

    def load_lora(self, path: str | os.PathLike, scale: float = 1.0) -> "VideoPipeline":
        """Merge the adapter at `path` (a `train lora` run folder or its lora/) into the DiT, times `scale`;
        several calls add up. ValueError when it was trained for a DiT of another shape."""
        from chronotope.pipeline import lora

        check_request(lora_scale=scale)
        lora.merge(self.dit, lora.read_adapter(path), scale)
        return self

    def unload_lora(self) -> "VideoPipeline":
        """Restore the DiT's weights as they were before the first load_lora."""
        from chronotope.pipeline import lora

        lora.unmerge(self.dit)
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

    def _tile(self, height: int, width: int) -> tuple[int, int] | None:
        """Spatial tiles for frames larger than vae.tiling.TILE pixels a side (None: whole frames), so the VAE's
        memory does not grow with the frame size."""
        return auto_tile(height, width, self.vae.config.spatial_factor)

    @torch.no_grad()
    def encode_video(self, frames: np.ndarray) -> Tensor:
        """uint8 frames [T, H, W, 3] (T = 4k+1, H and W multiples of 16) -> normalised latents [C, t, h, w]."""
        x = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device).float() / 127.5 - 1.0  # [T, H, W, 3]
        x = x.permute(3, 0, 1, 2)[None]  # [1, 3, T, H, W]
        chunk = 16 if x.shape[2] > 17 else None  # long inputs: causal chunks keep memory flat
        return self.vae.encode_latents(x, chunk_frames=chunk, tile_size=self._tile(*x.shape[-2:]),
                                       tile_overlap=TILE_OVERLAP)[0]

    @torch.no_grad()
    def iter_frames(self, latents: Tensor, chunk_latent_frames: int | None = None):
        """Normalised latents [B, C, t, h, w] -> uint8 chunks [B, n, H, W, 3], bounded memory (causal cache).

        chunk_latent_frames: latent frames per decoder call; None: as many as DECODE_CELLS allows, so a short
        clip decodes in one call (33 frames of 64px: 0.13 s against 0.17 s frame by frame on 2 cores) and a
        long or large one in chunks whose memory does not grow with its length."""
        B, _, _, h, w = latents.shape
        if chunk_latent_frames is None:
            chunk_latent_frames = max(1, DECODE_CELLS // (B * h * w))
        sf = self.vae.config.spatial_factor
        tile = self._tile(h * sf, w * sf)
        for x in self.vae.decode_iter(self.vae.denormalize(latents), chunk_latent_frames, tile_size=tile,
                                      tile_overlap=TILE_OVERLAP):
            yield to_uint8(x)

    def decode(self, latents: Tensor) -> np.ndarray:
        """Normalised latents [B, C, t, h, w] -> uint8 [B, T, H, W, 3]."""
        return np.concatenate(list(self.iter_frames(latents)), axis=1)

    # --- the one denoising loop ------------------------------------------------------------------------

    def _model_fn(self, x: Tensor, t: Tensor, context: tuple[Tensor, Tensor], shot: Tensor | None = None,
                  step: float | None = None) -> Tensor:
        """Batched latents x [N, C, n, h, w] and per-frame t (broadcastable to [N, 1, n, 1, 1]) -> velocity
        [N, C, n, h, w], through the DiT's packed sequence (one block-diagonal sequence for all N).
        shot: [n] long, each latent frame's shot counted back from the one being made (storyboards).
        step: the step size d of a few-step DiT (its average velocity over [t - d, t]); None = 0."""
        emb, mask = context
        N, _, n = x.shape[:3]
        t_frames = t.expand(N, 1, n, 1, 1).reshape(N, n)  # [N, n]: 0 at given frames
        samples = [Sample(x[i], timestep=t_frames[i], text_idx=i, shot=shot) for i in range(N)]
        packed = pack(samples, patch=self.dit.config.patch).to(x.device)
        v = self.dit(packed, emb, mask, step=step) if step is not None else self.dit(packed, emb, mask)  # [L, C*pt*ph*pw]
        return torch.stack(unpack(packed, v))  # [N, C, n, h, w]

    @torch.no_grad()
    def denoise(self, x: Tensor, ts: Tensor, cond: tuple[Tensor, Tensor], uncond: tuple[Tensor, Tensor] | None,
                plan: modes.Plan, sampler: str = "euler", guidance_scale: float = 1.0,
                image_guidance_scale: float | None = None, generator: torch.Generator | None = None,
                progress: bool = True) -> Tensor:
        """One sampler call: x [B, C, n, h, w] at t = ts[0] -> clean latents. The plan's given latent frames
        ride along clean with t = 0 (x_cond / cond_mask); CFG when guidance_scale > 1 (uncond = negative prompt).
        sampler "shortcut" (a few-step DiT, guidance folded in): one DiT evaluation per step, no CFG branch."""
        B = x.shape[0]
        x_cond = mask = None
        if plan.any:
            lat = plan.latents if plan.latents.dim() == 5 else plan.latents[None]  # per video or shared
            x_cond = lat.expand(B, -1, -1, -1, -1).to(x)  # [B, C, n, h, w]
            mask = plan.mask[None, None].expand(B, 1, -1).to(x.device)  # [B, 1, n]: aligned to B, C, n
        model_fn = self._model_fn if plan.shot is None else functools.partial(self._model_fn, shot=plan.shot)
        if sampler == "shortcut":
            fn = lambda xx, tt, d: model_fn(xx, tt, cond, step=d)  # noqa: E731
            return shortcut(fn, x, ts.to(x.device), x_cond=x_cond, cond_mask=mask, progress=progress)
        use_cfg = guidance_scale > 1.0 and uncond is not None
        igs = image_guidance_scale if (plan.any and use_cfg) else None
        if use_cfg:
            fn = cfg_velocity(model_fn, guidance_scale, cond, uncond, image_guidance_scale=igs,
                              x_cond=x_cond if igs is not None else None, cond_mask=mask if igs is not None else None,
                              generator=generator)
        else:
            fn = lambda xx, tt: model_fn(xx, tt, cond)  # noqa: E731
        return get_sampler(sampler)(fn, x, ts.to(x.device), x_cond=x_cond, cond_mask=mask, progress=progress)

    def sampling(self, num_inference_steps: int | None = None, guidance_scale: float | None = None,
                 sampler: str | None = None, negative_prompt=None, image_guidance_scale: float | None = None
                 ) -> tuple[int, float, str]:
        """(steps, guidance, sampler) of a request: each None takes the model folder's default (model_index.json),
        else SAMPLING's. A few-step model (defaults "sampler": "shortcut", a DiT with a step embedding) samples in
        FEW_STEPS steps of one evaluation each, its guidance folded in: a guidance_scale other than the folded one,
        a negative prompt or an image guidance scale cannot change it, and is refused."""
        d = {**SAMPLING, **{k: self.defaults[k] for k in SAMPLING if k in self.defaults}}
        sampler = d["sampler"] if sampler is None else sampler
        steps = int(d["num_inference_steps"]) if num_inference_steps is None else num_inference_steps
        if sampler != "shortcut":
            return steps, float(d["guidance_scale"] if guidance_scale is None else guidance_scale), sampler
        if not self.dit.config.step_embed:
            raise ValueError(f"{arg('sampler', 'shortcut')} needs a few-step DiT (one trained with a step embedding: "
                             "`chronotope train dit --few-step`); this one samples with euler, heun, midpoint or dpm++2m")
        if steps not in FEW_STEPS:
            raise ValueError(f"{arg('num_inference_steps', steps)}: a few-step model samples in "
                             f"{', '.join(map(str, FEW_STEPS))} steps (the ones it was trained for)")
        folded = float(d["guidance_scale"]) if d["sampler"] == "shortcut" else 5.0
        negatives = [negative_prompt] if negative_prompt is None or isinstance(negative_prompt, str) else negative_prompt
        if guidance_scale is not None and float(guidance_scale) != folded:
            raise ValueError(f"{arg('guidance_scale', guidance_scale)}: this few-step model has guidance {folded:g} "
                             "folded into its weights, one evaluation per step; it cannot change (leave it out)")
        if any(negatives) or image_guidance_scale is not None:
            what = arg("negative_prompt") if any(negatives) else arg("image_guidance_scale")
            raise ValueError(f"{what}: a few-step model's guidance is folded in (against the empty caption), so "
                             "there is no second branch to steer; leave it out")
        return steps, folded, sampler

    def _storyboard(self, storyboard, prompt, given: dict) -> PipelineOutput:
        """__call__(storyboard=...): the settings a storyboard takes go to generate_storyboard; a prompt or a
        per-video input (image, video, mode, num_frames, ...) is refused, since each shot names its own."""
        from chronotope.pipeline.storyboard import generate_storyboard

        takes = ("negative_prompt", "height", "width", "resolution", "aspect_ratio", "fps", "num_inference_steps",
                 "guidance_scale", "seed", "sampler", "shift", "expand_prompt", "output_path", "progress")
        defaults = {"direction": "forward", "image_position": "first", "num_inference_steps": 30,
                    "guidance_scale": 5.0, "sampler": "euler", "expand_prompt": True, "progress": True}
        extra = [k for k, v in given.items() if k not in takes + ("self", "storyboard", "prompt", "generator")
                 and v is not None and v != defaults.get(k)]
        if prompt is not None or extra:
            what = ", ".join(arg(k) for k in (["prompt"] if prompt is not None else []) + extra)
            raise ValueError(f"a storyboard sets each shot's prompt and length itself; drop {what} (or the storyboard)")
        if given.get("generator") is not None and given.get("seed") is None:
            given["seed"] = given["generator"].initial_seed()
        frames, z, params, notes = generate_storyboard(self, storyboard, **{k: given[k] for k in takes})
        mask = torch.zeros(1, z.shape[2], dtype=torch.bool)  # no frame of the last shot was given
        return PipelineOutput([] if frames is None else [frames], z, [s["expanded_prompt"] for s in params["shots"]],
                              params["seed"], params["fps"], "storyboard", mask, params, notes)

    def initial_noise(self, shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
        """Standard normal noise of `shape`, drawn on the CPU (the same numbers on any device), moved to ours."""
        return torch.randn(shape, generator=generator, dtype=torch.float32).to(self.device)

    def expand_prompts(self, prompts: list[str], seed: int, enabled: bool, notes: list[str]) -> list[str]:
        """Each prompt expanded (text/expand.py) when `enabled`, with a note for each one left as written because
        it is not a World prompt: the model knows only the World's English vocabulary."""
        texts = []
        for i, prompt in enumerate(prompts):
            out = _expand(prompt, seed, None if enabled else False)
            texts.append(out.text)
            if enabled and not out.expanded and out.spec is None and prompt.strip():
                which = "" if len(prompts) == 1 else f"prompt {i + 1}: "
                note(notes, f"{which}prompt expansion skipped ({out.note}); the model was trained on English World "
                            "captions only, so this prompt is out of its domain")
        return texts

    def note_truncation(self, texts: list[str], negatives: list[str], notes: list[str]) -> None:
        """A note for each prompt longer than the text encoder reads (its max_length tokens): the rest is cut."""
        cut_of = getattr(self.text_encoder, "truncation", None)
        if cut_of is None:  # an encoder that reads any length (DebugTextEncoder)
            return
        for label, items in (("prompt", texts), ("negative prompt", negatives)):
            for i, text in enumerate(items):
                cut = cut_of(text) if text.strip() else None
                if cut is not None:
                    total, kept, chars = cut
                    which = label if len(items) == 1 else f"{label} {i + 1}"
                    note(notes, f"the {which} is {total:,} tokens long and the text encoder reads {kept} (special "
                                f"tokens included): {total - kept:,} tokens after its first {chars:,} of "
                                f"{len(text):,} characters are dropped and have no effect")

    def check_domain(self, frames_in: dict[str, np.ndarray], notes: list[str]) -> dict[str, float]:
        """PSNR (dB) of each given image / video through this pipeline's VAE (vae/domain.py), with a note for each
        one far below what the model reaches on its own data: out of its domain, results are unreliable."""
        psnrs = {}
        for name, frames in frames_in.items():
            psnrs[name] = round(reconstruction_psnr(self.vae, frames), 2)
            text = domain_note(psnrs[name], f"the {'image' if name == 'image' else 'video'} ({arg(name)})")
            if text is not None:
                note(notes, text)
        return psnrs

    def encode_prompts(self, prompts: list[str], negative: list[str]) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
        """Both prompt lists in one encoder call (same token length L, as batched CFG needs)."""
        emb, mask = self.text_encoder.encode(list(prompts) + list(negative))
        emb, mask, B = emb.to(self.device), mask.to(self.device), len(prompts)
        return (emb[:B], mask[:B]), (emb[B:], mask[B:])

    def __call__(
        self,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_frames: int | None = None,
        fps: float | None = None,
        resolution: str | None = None,
        aspect_ratio: str | None = None,
        duration: float | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        image_guidance_scale: float | None = None,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        sampler: str | None = None,
        image=None,
        video=None,
        video_end=None,
        strength: float | None = None,
        mode: str | None = None,
        direction: str = "forward",
        image_position: str = "first",
        cond_latent_frames: int | None = None,
        window_frames: int | None = None,
        gap_frames: int | None = None,
        shift: float | None = None,
        expand_prompt: bool = True,
        output_path: str | list[str] | None = None,
        progress: bool = True,
        storyboard: list[dict] | dict | None = None,
    ) -> PipelineOutput:
        """Generate one video per prompt in any mode; every mode is one sampler call with different clean frames.

        num_frames: frames of the output clip (4k+1) for t2v/i2v/edit/long (long: the total); for extend and
        connect the generated window, given frames included (the output holds the whole given videos plus
        the new frames); for loop the loop length (a multiple of 4; the frame after the last is the first).
        By default extend adds NEW_FRAMES (12) frames either way and connect fills a CONNECT_GAP (11) frame gap.
        gap_frames (connect): frames generated between the two videos (4m-1: 3, 7, 11, ...), instead of num_frames.
        cond_latent_frames: latent frames taken from a given video (1 = its last frame, 2 = last 5, ...).
        Every value is used as given or refused (ValueError naming the nearest valid one; request.check_request),
        and a request that cannot fit in memory, or would run past a day, is refused before it starts
        (request.check_cost); one that takes minutes gets a note with the estimate. Notes (stderr, `notes`, the
        sidecar) also say what was changed or is out of the model's domain: a prompt cut to the text encoder's
        length, a prompt expansion skipped (not a World prompt), a given image or video that the VAE reconstructs
        far below its usual PSNR (params["input_psnr"]; vae/domain.py).
        image/video/video_end: a path or uint8 frames; other sizes are resized and center-cropped.
        strength (edit): 0 keeps the video, 1 ignores it. output_path: also write the video(s) there
        (atomically; long mode streams frames as they are decoded and then returns no frames).
        num_inference_steps / guidance_scale / sampler: None = the model folder's defaults (`sampling`); a few-step
        model samples with "shortcut" in 1, 2, 4 or 8 steps, guidance folded in.
        """
        if storyboard is not None:  # several shots, one video (pipeline/storyboard.py)
            return self._storyboard(storyboard, prompt, locals())
        if prompt is None:
            raise ValueError("give a prompt (or storyboard=[{\"prompt\": ..., \"num_frames\": ...}, ...])")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts:
            raise ValueError("give at least one prompt")
        B, notes = len(prompts), []
        num_inference_steps, guidance_scale, sampler = self.sampling(num_inference_steps, guidance_scale, sampler,
                                                                     negative_prompt, image_guidance_scale)
        negatives = per_prompt(negative_prompt, B, "negative_prompt")
        given = {"image": image is not None, "video": video is not None, "video_end": video_end is not None,
                 "strength": strength is not None}
        mode = infer_mode(mode, num_frames, given)
        warnings = check_request(prompt=prompts, mode=mode, height=height, width=width, num_frames=num_frames, fps=fps,
                                 duration=duration, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                                 image_guidance_scale=image_guidance_scale, strength=strength, shift=shift, seed=seed,
                                 cond_latent_frames=cond_latent_frames, window_frames=window_frames, gap_frames=gap_frames)
        check_choices(sampler=sampler, direction=direction, image_position=image_position)
        if gap_frames is not None and (mode != "connect" or num_frames is not None or duration is not None):
            raise ValueError(f"{arg('gap_frames')} sets the length of a connect (mode connect), instead of "
                             f"{arg('num_frames')}: give one of them")
        if seed is None:
            seed = generator.initial_seed() if generator is not None else secrets.randbelow(2**31)
        generator = generator or torch.Generator().manual_seed(int(seed))

        inputs = {k: load_input(v, k) for k, v in (("image", image), ("video", video), ("video_end", video_end)) if v is not None}
        first = next(iter(inputs.values()), None)
        fallback = None
        if first is not None:
            step = self.vae.config.spatial_factor * self.dit.config.patch[1]
            fallback = (max(step, first[0].shape[1] // step * step), max(step, first[0].shape[2] // step * step))
        H, W = resolve_size(self, height, width, resolution, aspect_ratio, fallback)
        in_fps = next((f for _, f in inputs.values() if f > 0), 0.0)
        fps = float(fps if fps is not None else (in_fps or self.defaults["fps"]))
        num_frames = frames_from(num_frames, duration, fps)
        frames_in = {k: fit_frames(self, f, H, W, k, notes) for k, (f, _) in inputs.items()}
        spec = modes.MODES[mode]
        r = modes.Request(mode, num_frames, frames_in, notes, cond_latent_frames, gap_frames, window_frames, direction,
                          image_position, strength, num_inference_steps)
        r.T = T = spec.window(self, r)  # the window's length in frames
        r.shape = C, n, h, w = self.vae.latent_shape(T, H, W)
        if r.k is None:
            r.k = cond_latent_frames if cond_latent_frames is not None else max(1, min(2, (n - 1) // spec.given_ends))
        if shift is None:
            shift = shift_for_tokens(tokens_per_sample(self, n, h, w), scale=float(self.defaults["time_shift"]))
        r.shift = shift
        passes = 1 if guidance_scale <= 1.0 or sampler == "shortcut" else (3 if image_guidance_scale is not None and mode != "t2v" else 2)
        steps = max(1, math.ceil(num_inference_steps * r.strength)) if mode == "edit" else num_inference_steps
        windows, checked = spec.windows(r), sum(min(len(f), CHECK_FRAMES) for f in frames_in.values())
        cost = estimate_cost(self, B, (C, n, h, w), steps, passes, T, windows, sampler=sampler,  # + the domain check
                             encode_frames=spec.encodes(r) + checked)
        long_note = check_cost(cost)
        for text in warnings + ([long_note] if long_note else []):
            note(notes, text)
        input_psnr = self.check_domain(frames_in, notes)

        texts = self.expand_prompts(prompts, int(seed), expand_prompt, notes)
        self.note_truncation(texts, negatives, notes)
        cond, uncond = self.encode_prompts(texts, negatives)
        run = dict(sampler=sampler, guidance_scale=guidance_scale, image_guidance_scale=image_guidance_scale,
                   generator=generator, progress=progress)
        ts = timesteps(num_inference_steps, shift)
        paths = None if output_path is None else ([output_path] if isinstance(output_path, (str, os.PathLike)) else list(output_path))
        if paths is not None and len(paths) != B:
            raise ValueError(f"output_path needs one path per prompt ({B}), got {len(paths)}")

        params = dict(prompt=prompts[0] if B == 1 else prompts, mode=mode, height=H, width=W, num_frames=T, fps=fps, num_inference_steps=num_inference_steps,
                      guidance_scale=guidance_scale, image_guidance_scale=image_guidance_scale, sampler=sampler,
                      shift=float(shift), seed=int(seed), negative_prompt=negatives[0] if B == 1 else negatives, direction=direction,
                      image_position=image_position, strength=r.strength, expand_prompt=expand_prompt,
                      **({"lora": list(self.dit._lora_merged)} if getattr(self.dit, "_lora_merged", None) else {}),
                      **{k: os.fspath(v) for k, v in (("image", image), ("video", video), ("video_end", video_end))
                         if isinstance(v, (str, os.PathLike))})
        params.update(spec.extra(r))
        if input_psnr:
            params["input_psnr"] = input_psnr  # dB through the VAE: far below ~31 = out of the model's domain
        if spec.plan is None:  # long: window by window
            frames, latents, mask = generate_long(self, frames_in.get("image"), r.total, n, r.k, (C, h, w), cond, uncond, ts,
                                                  run, paths, fps, image_position)
            params["output_frames"] = r.total
            return PipelineOutput(frames, latents, texts, int(seed), fps, mode, mask, params, notes)

        noise = self.initial_noise((B, C, n, h, w), generator)  # [B, C, n, h, w]
        plan, x, ts = spec.plan(self, r, noise, ts, lambda x, ts, plan: self.denoise(x, ts, cond, uncond, plan, **run))
        z = self.denoise(x, ts, cond, uncond, plan, **run)
        decoded = self.decode(z)  # [B, T, H, W, 3]
        frames = [plan.assemble(decoded[b]) for b in range(B)]
        params["output_frames"] = len(frames[0])  # what the video holds (extend and connect add the given frames)
        if spec.report is not None:
            params.update(spec.report(frames))
        for path, f in zip(paths or [], frames):
            write_video(path, f, fps)
        return PipelineOutput(frames, z, texts, int(seed), fps, mode, plan.mask[None].expand(B, -1).clone(), params, notes)

