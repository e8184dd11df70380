"""VideoPipeline: text (and images, videos) -> video, every Sora mode as windows of one rollout.

The layout is the pipeline (as in flux): resolve the request (prepare.py: mode, size, frames, inputs, prompt
expansion -> text encoder) -> plan its windows (modes.py, storyboard.py: which latent frames each window is given
clean, t = 0) -> the rollout (rollout.py: per window, noise -> rectified-flow sampler with classifier-free guidance
over the DiT's packed tokens -> causal-VAE decode, streamed). Names follow diffusers.

    pipe = VideoPipeline.from_pretrained("runs/world-model")      # or .from_presets("debug", "debug")
    out = pipe("a red circle moves left", num_frames=17, height=64, width=64, seed=0)
    out.frames[0]                                                  # uint8 [17, 64, 64, 3]
    pipe("...", image="start.png")                                 # i2v; also video=, video_end=, mode="loop"

A model folder holds model_index.json (component classes, the text encoder *named*, defaults) and
vae/ and dit/ (config.json + model.safetensors each, or shards + an index: chronotope/weights.py).
"""

from __future__ import annotations

import functools
import inspect
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from chronotope.atomic import atomic_write_json
from chronotope.config import DIT_PRESETS, VAE_PRESETS
from chronotope.diffusion.samplers import FEW_STEPS, STEP_SAMPLERS, cfg_velocity, get_sampler
from chronotope.dit.conditioning import window_samples
from chronotope.dit.model import DiT
from chronotope.dit.patches import frame_tokens, pack, unpack
from chronotope.pipeline.plan import TF, Plan
from chronotope.pipeline.prepare import prepare
from chronotope.pipeline.rollout import roll, rollout, to_uint8
from chronotope.pipeline.storyboard import prepare_storyboard, storyboard_call
from chronotope.request import arg, check_request
from chronotope.text.encoder import DEFAULT_TEXT_ENCODER, load_text_encoder
from chronotope.text.vocabulary import DEFAULT_VOCABULARY, Vocabulary, resolve_vocabulary
from chronotope.vae.model import CausalVAE
from chronotope.vae.tiling import TILE_OVERLAP, auto_tile

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


# latent cells (batch x frames x height x width) one VAE decoder call takes at most: a 33-frame 128px clip (9 x 16 x 16)
DECODE_CELLS = 2304


class VideoPipeline:
    """vae (CausalVAE) + dit (DiT) + text_encoder (anything with encode(prompts) -> (emb, mask)).

    text_encoder may be None: it is loaded on first use from `text_encoder_name`.
    """

    def __init__(self, vae: CausalVAE, dit: DiT, text_encoder=None, text_encoder_name: str = DEFAULT_TEXT_ENCODER,
                 defaults: dict | None = None, vocabulary: Vocabulary | str | None = DEFAULT_VOCABULARY):
        if dit.config.in_channels != vae.config.latent_channels:
            raise ValueError(f"the DiT takes {dit.config.in_channels} latent channels but the VAE makes "
                             f"{vae.config.latent_channels}; build the DiT with in_channels={vae.config.latent_channels}")
        if vae.config.temporal_factor != TF:
            raise ValueError(f"the VAE compresses time {vae.config.temporal_factor}x; generation plans windows of a "
                             f"{TF}x causal VAE (pipeline/plan.py TF)")
        self.vae, self.dit = vae.eval(), dit.eval()
        self._text_encoder, self.text_encoder_name = text_encoder, text_encoder_name
        self.defaults = {**DEFAULTS, **(defaults or {})}
        # the language prompts are expanded in (text/vocabulary.py), and its name for model_index.json
        self.vocabulary = resolve_vocabulary(vocabulary)
        self.vocabulary_name = vocabulary if vocabulary is None or isinstance(vocabulary, str) else None

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
        return VideoPipeline(self.vae, self.dit, self._text_encoder, self.text_encoder_name, {**self.defaults, **changes},
                             self.vocabulary if self.vocabulary_name is None else self.vocabulary_name)

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
        if self.vocabulary_name != DEFAULT_VOCABULARY:  # a folder that names none speaks the World's
            index["vocabulary"] = self.vocabulary_name
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
                   text_encoder, name, index.get("defaults"), index.get("vocabulary", DEFAULT_VOCABULARY))

    # --- pixels <-> latents ---------------------------------------------------------------------------

    def tile(self, height: int, width: int) -> tuple[int, int] | None:
        """Spatial tiles for frames larger than vae.tiling.TILE pixels a side (None: whole frames), so the VAE's
        memory does not grow with the frame size."""
        return auto_tile(height, width, self.vae.config.spatial_factor)

    @torch.no_grad()
    def encode_video(self, frames: np.ndarray) -> Tensor:
        """uint8 frames [T, H, W, 3] (T = 4k+1, H and W multiples of 16) -> normalised latents [C, t, h, w]."""
        x = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device).float() / 127.5 - 1.0  # [T, H, W, 3]
        x = x.permute(3, 0, 1, 2)[None]  # [1, 3, T, H, W]
        chunk = 16 if x.shape[2] > 17 else None  # long inputs: causal chunks keep memory flat
        return self.vae.encode_latents(x, chunk_frames=chunk, tile_size=self.tile(*x.shape[-2:]),
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
        tile = self.tile(h * sf, w * sf)
        for x in self.vae.decode_iter(self.vae.denormalize(latents), chunk_latent_frames, tile_size=tile,
                                      tile_overlap=TILE_OVERLAP):
            yield to_uint8(x)

    def decode(self, latents: Tensor) -> np.ndarray:
        """Normalised latents [B, C, t, h, w] -> uint8 [B, T, H, W, 3]."""
        return np.concatenate(list(self.iter_frames(latents)), axis=1)

    # --- the one denoising loop ------------------------------------------------------------------------

    def _model_fn(self, x: Tensor, t: Tensor, context: tuple[Tensor, Tensor], conditions: dict[str, Tensor] | None = None,
                  step: Tensor | float | None = None) -> Tensor:
        """Batched latents x [N, C, n, h, w] and per-frame t (broadcastable to [N, 1, n, 1, 1]) -> velocity
        [N, C, n, h, w], through the DiT's packed sequence (one block-diagonal sequence for all N), laid out by
        dit/conditioning.py as training lays out its packs. conditions: per-frame conditions, name -> [n].
        step: the step size d of a few-step DiT (its average velocity over [t - d, t]; a float or per frame)."""
        emb, mask = context
        N, _, n = x.shape[:3]
        t_frames = t.expand(N, 1, n, 1, 1).reshape(N, n)  # [N, n]: 0 at given frames
        packed = pack(window_samples(x, t_frames, conditions), patch=self.dit.config.patch).to(x.device)
        if isinstance(step, Tensor):  # per frame -> per token, laid out as the pack lays out every per-frame value
            per_frame = step.expand(N, 1, n, 1, 1).reshape(N, n).cpu()
            step = frame_tokens(list(per_frame), packed.grids, packed.patch, "step", torch.float32).to(x.device)
        v = self.dit(packed, emb, mask, step=step) if step is not None else self.dit(packed, emb, mask)  # [L, C*pt*ph*pw]
        return torch.stack(unpack(packed, v))  # [N, C, n, h, w]

    @torch.no_grad()
    def denoise(self, x: Tensor, ts: Tensor, cond: tuple[Tensor, Tensor], uncond: tuple[Tensor, Tensor] | None,
                plan: Plan, sampler: str = "euler", guidance_scale: float = 1.0,
                image_guidance_scale: float | None = None, generator: torch.Generator | None = None,
                progress: bool = True) -> Tensor:
        """One sampler call: x [B, C, n, h, w] at ts[0] -> clean latents. ts: [S], or per frame [S, 1, 1, n].
        The plan's given latent frames ride along clean with t = 0 (x_cond / cond_mask) and its per-frame
        conditions go to every model call; CFG when guidance_scale > 1 (uncond = negative prompt). A few-step
        sampler (STEP_SAMPLERS: guidance folded into the weights) makes one DiT evaluation per step."""
        B = x.shape[0]
        x_cond = mask = None
        if plan.any:
            lat = plan.latents if plan.latents.dim() == 5 else plan.latents[None]  # per video or shared
            x_cond = lat.expand(B, -1, -1, -1, -1).to(x)  # [B, C, n, h, w]
            mask = plan.mask[None, None].expand(B, 1, -1).to(x.device)  # [B, 1, n]: aligned to B, C, n
        model_fn = functools.partial(self._model_fn, conditions=plan.conditions) if plan.conditions else self._model_fn
        use_cfg = guidance_scale > 1.0 and uncond is not None and sampler not in STEP_SAMPLERS
        igs = image_guidance_scale if (plan.any and use_cfg) else None
        if use_cfg:
            fn = cfg_velocity(model_fn, guidance_scale, cond, uncond, image_guidance_scale=igs,
                              x_cond=x_cond if igs is not None else None, cond_mask=mask if igs is not None else None,
                              generator=generator)
        else:
            fn = functools.partial(_with_context, model_fn, cond)
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
        if sampler not in STEP_SAMPLERS:
            return steps, float(d["guidance_scale"] if guidance_scale is None else guidance_scale), sampler
        if not self.dit.config.step_embed:
            raise ValueError(f"{arg('sampler', 'shortcut')} needs a few-step DiT (one trained with a step embedding: "
                             "`chronotope train dit --few-step`); this one samples with euler, heun, midpoint or dpm++2m")
        if steps not in FEW_STEPS:
            raise ValueError(f"{arg('num_inference_steps', steps)}: a few-step model samples in "
                             f"{', '.join(map(str, FEW_STEPS))} steps (the ones it was trained for)")
        folded = float(d["guidance_scale"]) if d["sampler"] in STEP_SAMPLERS else SAMPLING["guidance_scale"]
        negatives = [negative_prompt] if negative_prompt is None or isinstance(negative_prompt, str) else negative_prompt
        if guidance_scale is not None and float(guidance_scale) != folded:
            raise ValueError(f"{arg('guidance_scale', guidance_scale)}: this few-step model has guidance {folded:g} "
                             "folded into its weights, one evaluation per step; it cannot change (leave it out)")
        if any(negatives) or image_guidance_scale is not None:
            what = arg("negative_prompt") if any(negatives) else arg("image_guidance_scale")
            raise ValueError(f"{what}: a few-step model's guidance is folded in (against the empty caption), so "
                             "there is no second branch to steer; leave it out")
        return steps, folded, sampler

    def initial_noise(self, shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
        """Standard normal noise of `shape`, drawn on the CPU (the same numbers on any device), moved to ours."""
        return torch.randn(shape, generator=generator, dtype=torch.float32).to(self.device)

    def encode_prompts(self, prompts: list[str], negative: list[str]) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
        """Both prompt lists in one encoder call (same token length L, as batched CFG needs)."""
        emb, mask = self.text_encoder.encode(list(prompts) + list(negative))
        emb, mask, B = emb.to(self.device), mask.to(self.device), len(prompts)
        return (emb[:B], mask[:B]), (emb[B:], mask[B:])

    def __call__(
        self, prompt: str | list[str] | None = None, negative_prompt: str | list[str] | None = None, *,
        height: int | None = None, width: int | None = None, num_frames: int | None = None, fps: float | None = None,
        resolution: str | None = None, aspect_ratio: str | None = None, duration: float | None = None,
        num_inference_steps: int | None = None, guidance_scale: float | None = None,
        image_guidance_scale: float | None = None, seed: int | None = None, generator: torch.Generator | None = None,
        sampler: str | None = None, image=None, video=None, video_end=None, strength: float | None = None,
        mode: str | None = None, direction: str = "forward", image_position: str = "first",
        cond_latent_frames: int | None = None, window_frames: int | None = None, gap_frames: int | None = None,
        shift: float | None = None, conditions: dict | None = None, expand_prompt: bool = True,
        output_path: str | list[str] | None = None, progress: bool = True, storyboard: list[dict] | dict | None = None,
    ) -> PipelineOutput:
        """Generate one video per prompt in any mode (or one video of several shots from `storyboard`).

        Every mode is a plan of windows for one rollout: resolve the request (prepare.py: each value used as given
        or refused with the nearest valid one, a cost estimate, notes), plan its windows (modes.py, storyboard.py),
        run them (rollout.py: sample, decode, stream). Arguments: docs/python-api.md; `conditions`: per-frame
        conditions by name (dit/conditioning.py). Returns frames, latents, the prompts as encoded, params, notes.
        """
        call = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        if storyboard is not None and mode != "stream":  # several shots, one video (a stream: its timeline)
            job = prepare_storyboard(self, storyboard, storyboard_call(call))
        else:
            job = prepare(self, call)
        frames, latents, mask = rollout(self, job.planner, job.sinks, job.run, job.bar)
        s, params = job.settings, job.params
        if job.mode != "storyboard" and "output_frames" not in params:
            params["output_frames"] = len(frames[0])  # what the video holds (extend and connect add given frames)
        if job.report is not None:
            params.update(job.report(frames))
        return PipelineOutput(frames, latents, job.prompts, s.seed, s.fps, job.mode, mask, params, s.notes)

    def stream(self, prompt: str | None = None, **kwargs) -> Iterator[np.ndarray]:
        """pipe(prompt, mode="stream", **kwargs) a piece at a time: uint8 frames [k, H, W, 3] as each latent frame
        finishes (the first within a window's steps of the start), with `output_path` growing alongside, playable
        while it grows and kept if the loop is stopped (Ctrl-C, break). storyboard=: a timeline instead of a prompt
        (the prompt changing at its shots' frames, no cuts)."""
        if not isinstance(prompt, str) and kwargs.get("storyboard") is None:
            raise ValueError("stream makes one video: give one prompt (a string), or a timeline (storyboard=)")
        unknown = sorted(set(kwargs) - set(CALL_DEFAULTS))
        if unknown or "mode" in kwargs:
            raise ValueError(f"stream takes {', '.join(k for k in CALL_DEFAULTS if k != 'mode')}; "
                             f"got {', '.join(unknown or ['mode'])}")
        job = prepare(self, {**CALL_DEFAULTS, **kwargs, "prompt": prompt, "mode": "stream"})
        sink = job.sinks[0]
        try:
            for _, _, parts in roll(self, job.planner, job.run):
                for chunk in parts[0]:
                    sink.write(chunk)
                    yield chunk
        except BaseException:  # an error, Ctrl-C or a consumer that stopped early (GeneratorExit)
            sink.close(ok=False)
            raise
        sink.close(ok=True)



def _with_context(model_fn, context: tuple[Tensor, Tensor], x: Tensor, t: Tensor, **step) -> Tensor:
    """velocity_fn(x, t[, step=d]) of one text context: model_fn(x, t, context[, step=d])."""
    return model_fn(x, t, context, **step)


# every argument of VideoPipeline.__call__ and its default, as prepare.py takes a call
CALL_DEFAULTS = {name: p.default for name, p in inspect.signature(VideoPipeline.__call__).parameters.items()
                 if name != "self"}
