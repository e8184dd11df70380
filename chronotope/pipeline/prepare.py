"""What a generation call means, settled before any work: the one request set-up of every mode and of storyboards.

Sampling settings (the model folder's defaults), every number checked (request.check_request), the seed, the
output size and frame rate, the cost estimate (refused past memory or a day; a note past a minute); then for a
mode: its inputs loaded and fitted, its window, latent shape and conditioning span, the prompts expanded and
encoded, the timesteps, and the params the sidecar records. Notes (stderr, `notes`, the sidecar) say what was
resolved for the user or is out of the model's domain.

    job = prepare(pipe, call)          # call: VideoPipeline.__call__'s arguments by name
    frames, latents, mask = rollout(pipe, job.planner, job.sinks, job.run, job.bar)
"""

from __future__ import annotations

import math
import os
import secrets
from dataclasses import dataclass, field

import numpy as np
import torch

from chronotope.diffusion.flow import shift_for_tokens, timesteps
from chronotope.diffusion.samplers import STEP_SAMPLERS
from chronotope.dit.conditioning import check_conditions, parse_conditions
from chronotope.pipeline.modes import MODES, Request
from chronotope.pipeline.resolve import (check_choices, fit_frames, frames_from, infer_mode, load_input, note,
                                         per_prompt, resolve_size, tokens_per_sample)
from chronotope.pipeline.rollout import FrameSink
from chronotope.pipeline.stream import stream_timeline
from chronotope.request import arg, check_cost, check_request, estimate_cost
from chronotope.text.expand import expand
from chronotope.vae.domain import CHECK_FRAMES, domain_note, reconstruction_psnr


@dataclass
class Settings:
    """What every call settles first (modes and storyboards alike)."""

    steps: int
    guidance: float
    sampler: str
    seed: int
    generator: torch.Generator
    height: int
    width: int
    fps: float
    notes: list[str] = field(default_factory=list)

    def guidance_passes(self, image_guidance: bool = False) -> int:
        """Model evaluations per step: 1 without guidance or for a few-step model, 2 with CFG, 3 with image CFG."""
        if self.guidance <= 1.0 or self.sampler in STEP_SAMPLERS:
            return 1
        return 3 if image_guidance else 2


@dataclass
class Job:
    """A prepared call: the rollout's planner (memory -> windows), sinks (one per video), run settings and
    progress bar, and what the output reports (mode, prompts as encoded, params, notes)."""

    mode: str
    planner: object
    sinks: list[FrameSink]
    run: dict
    bar: tuple[str, str, int] | None
    prompts: list[str]
    settings: Settings
    params: dict
    report: object = None


def settle(pipe, c: dict, fallback: tuple[int, int] | None = None, in_fps: float = 0.0) -> Settings:
    """Sampling defaults, seed and generator, size and frame rate of a call (c: its arguments by name)."""
    steps, guidance, sampler = pipe.sampling(c.get("num_inference_steps"), c.get("guidance_scale"), c.get("sampler"),
                                             c.get("negative_prompt"), c.get("image_guidance_scale"))
    check_choices(sampler=sampler)
    seed, generator = c.get("seed"), c.get("generator")
    if seed is None:
        seed = generator.initial_seed() if generator is not None else secrets.randbelow(2**31)
    generator = generator or torch.Generator().manual_seed(int(seed))
    H, W = resolve_size(pipe, c.get("height"), c.get("width"), c.get("resolution"), c.get("aspect_ratio"), fallback)
    fps = float(c["fps"] if c.get("fps") is not None else (in_fps or pipe.defaults["fps"]))
    return Settings(steps, guidance, sampler, int(seed), generator, H, W, fps)


def shift_for(pipe, shape: tuple[int, int, int, int], shift: float | None) -> float:
    """The timestep shift of a window of latent `shape` (C, n, h, w): as given, else the model's token rule."""
    if shift is not None:
        return float(shift)
    return shift_for_tokens(tokens_per_sample(pipe, *shape[1:]), scale=float(pipe.defaults["time_shift"]))


def prepare(pipe, c: dict) -> Job:
    """The Job of a one-prompt-per-video call in any mode (c: VideoPipeline.__call__'s arguments by name); a stream
    may take a storyboard as its timeline (one video, the prompt changing at the shots' frames)."""
    timeline = None
    if c.get("storyboard") is not None:
        c, timeline = stream_timeline(c, float(c["fps"] or pipe.defaults["fps"]))
    if c["prompt"] is None:
        raise ValueError("give a prompt (or storyboard=[{\"prompt\": ..., \"num_frames\": ...}, ...])")
    prompts = [c["prompt"]] if isinstance(c["prompt"], str) else list(c["prompt"])
    if not prompts:
        raise ValueError("give at least one prompt")
    B, notes = len(prompts), []
    given = {k: c[k] is not None for k in ("image", "video", "video_end", "strength")}
    mode = infer_mode(c["mode"], c["num_frames"], given)
    warnings = check_request(prompt=prompts, mode=mode, **{k: c[k] for k in (
        "height", "width", "num_frames", "fps", "duration", "num_inference_steps", "guidance_scale",
        "image_guidance_scale", "strength", "shift", "seed", "cond_latent_frames", "window_frames", "gap_frames")})
    check_choices(direction=c["direction"], image_position=c["image_position"])
    if c["gap_frames"] is not None and (mode != "connect" or c["num_frames"] is not None or c["duration"] is not None):
        raise ValueError(f"{arg('gap_frames')} sets the length of a connect (mode connect), instead of "
                         f"{arg('num_frames')}: give one of them")
    negatives = per_prompt(c["negative_prompt"], B, "negative_prompt")
    inputs = {k: load_input(c[k], k) for k in ("image", "video", "video_end") if c[k] is not None}
    s = settle(pipe, c, _input_size(pipe, inputs), next((f for _, f in inputs.values() if f > 0), 0.0))
    s.notes = notes
    frames_in = {k: fit_frames(pipe, f, s.height, s.width, k, notes) for k, (f, _) in inputs.items()}
    spec = MODES[mode]
    r = Request(mode, frames_from(c["num_frames"], c["duration"], s.fps), frames_in, notes, c["cond_latent_frames"],
                c["gap_frames"], c["window_frames"], c["direction"], c["image_position"], c["strength"], s.steps)
    r.T = spec.window(pipe, r)  # the window's length in frames
    r.shape = C, n, h, w = pipe.vae.latent_shape(r.T, s.height, s.width)
    if r.k is None:
        r.k = c["cond_latent_frames"] if c["cond_latent_frames"] is not None else max(1, min(2, (n - 1) // spec.given_ends))
    r.shift = shift_for(pipe, r.shape, c["shift"])
    check_conditions(pipe.dit.config, c.get("conditions") or {})
    r.conditions = parse_conditions(c.get("conditions") or {}, n)
    igs = c["image_guidance_scale"] is not None and mode != "t2v"
    steps = max(1, math.ceil(s.steps * r.strength)) if mode == "edit" else s.steps
    checked = sum(min(len(f), CHECK_FRAMES) for f in frames_in.values())
    cost = estimate_cost(pipe, B, r.shape, steps, s.guidance_passes(igs), r.T, spec.passes(r),
                         sampler=s.sampler, encode_frames=spec.encodes(r) + checked)  # + the domain check
    for text in warnings + [t for t in [check_cost(cost)] if t]:
        note(notes, text)
    input_psnr = check_domain(pipe, frames_in, notes)
    texts = expand_prompts(prompts, s.seed, c["expand_prompt"], notes, pipe.vocabulary)
    note_truncation(pipe, texts, negatives, notes)
    r.cond, r.uncond = pipe.encode_prompts(texts, negatives)
    if timeline is not None:
        timeline.encode(pipe, s.seed, c["expand_prompt"], negatives[0])
        r.timeline, texts = timeline, timeline.texts
    r.ts, r.generator = timesteps(s.steps, r.shift), s.generator
    paths = _output_paths(c["output_path"], B)
    params = dict(prompt=prompts[0] if B == 1 else prompts, mode=mode, height=s.height, width=s.width, num_frames=r.T,
                  fps=s.fps, num_inference_steps=s.steps, guidance_scale=s.guidance,
                  image_guidance_scale=c["image_guidance_scale"], sampler=s.sampler, shift=float(r.shift), seed=s.seed,
                  negative_prompt=negatives[0] if B == 1 else negatives, direction=c["direction"],
                  image_position=c["image_position"], strength=r.strength, expand_prompt=c["expand_prompt"],
                  **({"lora": list(pipe.dit._lora_merged)} if getattr(pipe.dit, "_lora_merged", None) else {}),
                  **{k: os.fspath(c[k]) for k in ("image", "video", "video_end") if isinstance(c[k], (str, os.PathLike))},
                  **({"conditions": {k: str(v) for k, v in c["conditions"].items()}} if c.get("conditions") else {}))
    params.update(spec.extra(r))
    if input_psnr:
        params["input_psnr"] = input_psnr  # dB through the VAE: far below ~31 = out of the model's domain
    if spec.streams:
        params["output_frames"] = r.total
    sinks = [FrameSink(p, s.fps, collect=not spec.streams, live=mode == "stream") for p in paths]
    run = dict(sampler=s.sampler, guidance_scale=s.guidance, image_guidance_scale=c["image_guidance_scale"],
               progress=c["progress"])
    bar = ("long video" if mode == "long" else mode, "frame", r.total) if spec.streams else None
    return Job(mode, lambda memory: spec.windows(pipe, r, memory), sinks, run, bar, texts, s, params, spec.report)


def _input_size(pipe, inputs: dict) -> tuple[int, int] | None:
    """The size of the first given image or video, down to the model's size step: the output's when none is asked."""
    first = next(iter(inputs.values()), None)
    if first is None:
        return None
    step = pipe.vae.config.spatial_factor * pipe.dit.config.patch[1]
    return max(step, first[0].shape[1] // step * step), max(step, first[0].shape[2] // step * step)


def _output_paths(output_path, B: int) -> list[str | None]:
    if output_path is None:
        return [None] * B
    paths = [output_path] if isinstance(output_path, (str, os.PathLike)) else list(output_path)
    if len(paths) != B:
        raise ValueError(f"output_path needs one path per prompt ({B}), got {len(paths)}")
    return paths


def expand_prompts(prompts: list[str], seed: int, enabled: bool, notes: list[str], vocabulary=None) -> list[str]:
    """Each prompt expanded (text/expand.py) in the model's `vocabulary` when `enabled`, with a note for each one left
    as written because it is outside that vocabulary: the model knows only the words it was trained on."""
    texts = []
    for i, prompt in enumerate(prompts):
        out = expand(prompt, seed, None if enabled else False, vocabulary=vocabulary)
        texts.append(out.text)
        if enabled and not out.expanded and out.spec is None and prompt.strip():
            which = "" if len(prompts) == 1 else f"prompt {i + 1}: "
            note(notes, f"{which}prompt expansion skipped ({out.note}); the model was trained on English World "
                        "captions only, so this prompt is out of its domain")
    return texts


def note_truncation(pipe, texts: list[str], negatives: list[str], notes: list[str]) -> None:
    """A note for each prompt longer than the text encoder reads (its max_length tokens): the rest is cut."""
    cut_of = getattr(pipe.text_encoder, "truncation", None)
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


def check_domain(pipe, frames_in: dict[str, np.ndarray], notes: list[str]) -> dict[str, float]:
    """PSNR (dB) of each given image / video through the pipeline's VAE (vae/domain.py), with a note for each one
    far below what the model reaches on its own data: out of its domain, results are unreliable."""
    psnrs = {}
    for name, frames in frames_in.items():
        psnrs[name] = round(reconstruction_psnr(pipe.vae, frames), 2)
        text = domain_note(psnrs[name], f"the {'image' if name == 'image' else 'video'} ({arg(name)})")
        if text is not None:
            note(notes, text)
    return psnrs
