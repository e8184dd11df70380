"""Every Sora generation mode as a plan of windows for the one rollout (rollout.py): which latent frames each
window is given clean (plan.py), which window comes next, and what the mode adds to a request.

Sora (Brooks et al. 2024, "Video generation models as world simulators") prompts one model with images and
videos: image-to-video, extension forward and backward, connecting two videos, seamless loops, long videos.
With a per-token timestep these are only conditioning masks over windows: t2v, t2i, i2v, extend, connect and
edit are one window; loop is two (the second given the first's head and tail); long is a window and then windows
given the last frames of the one before (re-encoded, so each starts with a proper image latent); storyboards
(storyboard.py) a window per shot given the last latents of the shots before.

Adding a mode = its window-length function, its planner and one MODES entry (VideoPipeline.__call__ reads only
this table).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from chronotope.diffusion.flow import interpolate, timesteps
from chronotope.pipeline.plan import (TF, Plan, head_frames, loop_closure, loop_window, plan_connect, plan_extend,
                                      plan_i2v, plan_loop, plan_none, window_frames)
from chronotope.pipeline.resolve import CONNECT_GAP, NEW_FRAMES, note
from chronotope.pipeline.rollout import Memory, Window
from chronotope.pipeline.stream import Rolling, Timeline, rolling_windows
from chronotope.request import arg


@dataclass
class Request:
    """A resolved request as the mode functions see it (prepare.py fills it; `window` may trim frames_in or set
    defaults). T: window frames; total: output frames (long); shape: latent (C, n, h, w) of a window; B videos;
    ts: the timesteps; cond / uncond: the encoded prompts; conditions: per-frame conditions [n] by name."""

    mode: str
    num_frames: int | None
    frames_in: dict[str, np.ndarray]
    notes: list[str]
    cond_latent_frames: int | None
    gap_frames: int | None
    window_frames: int | None
    direction: str
    image_position: str
    strength: float | None
    num_inference_steps: int
    T: int = 0
    total: int | None = None
    shape: tuple[int, int, int, int] = (0, 0, 0, 0)
    k: int | None = None
    shift: float = 1.0
    ts: Tensor | None = None
    cond: tuple[Tensor, Tensor] | None = None
    uncond: tuple[Tensor, Tensor] | None = None
    generator: torch.Generator | None = None
    conditions: dict[str, Tensor] = field(default_factory=dict)
    timeline: Timeline | None = None  # stream: prompts that change at given frames

    def window(self, plan: Plan, **kw) -> Window:
        """A Window of this request's prompts, timesteps and generator; its per-frame conditions are the plan's."""
        plan.conditions = {**self.conditions, **plan.conditions}
        return Window(plan, self.ts, self.cond, self.uncond, self.generator, **kw)


Planner = Callable[..., Iterator[Window]]  # (pipe, request, memory) -> the windows, one at a time


@dataclass
class Mode:
    """window(pipe, r) -> T; windows(pipe, r, memory) -> the Windows of the rollout. `given_ends`: sides a default
    k is taken from; `passes(r)`: sampler calls and `encodes(r)`: frames the plan encodes (cost); `extra(r)`:
    params it records; `report(frames)`: params measured on the output; `streams`: its frames go to the output
    file as they come (long videos) instead of being returned whole."""

    window: Callable[..., int]
    windows: Planner
    given_ends: int = 1
    passes: Callable[[Request], int] = lambda r: 1
    encodes: Callable[[Request], int] = lambda r: 0
    extra: Callable[[Request], dict] = lambda r: {}
    report: Callable[[list[np.ndarray]], dict] | None = None
    streams: bool = False


def _given_or(default: Callable[..., int]) -> Callable[..., int]:
    """t2v, i2v, extend, connect: num_frames as given, else the mode's default."""
    return lambda pipe, r: r.num_frames if r.num_frames is not None else default(pipe, r)


def _window_t2i(pipe, r: Request) -> int:
    if r.num_frames not in (None, 1):
        raise ValueError(f"{arg('mode', 't2i')} makes one frame; got {arg('num_frames', r.num_frames)} "
                         f"(use t2v for videos)")
    return 1


def _window_loop(pipe, r: Request) -> int:
    r.k = 1 if r.cond_latent_frames is None else r.cond_latent_frames
    return window_frames(loop_window(16 if r.num_frames is None else r.num_frames, r.k))


def _window_edit(pipe, r: Request) -> int:
    v = r.frames_in["video"]
    T = r.num_frames if r.num_frames is not None else (len(v) - 1) // TF * TF + 1
    if T > len(v):
        raise ValueError(f"edit: the video has {len(v)} frames, fewer than {arg('num_frames', T)}")
    if T < len(v):
        note(r.notes, f"edit: using the first {T} of the video's {len(v)} frames (clips have 4k+1 frames)")
    r.frames_in["video"] = v[:T]
    r.strength = 0.7 if r.strength is None else r.strength
    return T


def _window_long(pipe, r: Request) -> int:
    T = r.window_frames if r.window_frames is not None else pipe.defaults["num_frames"]
    r.total = r.num_frames if r.num_frames is not None else T
    return T


def _window_extend(pipe, r: Request) -> int:  # NEW_FRAMES new frames after (forward) or before (backward) 2 given latents
    k0 = 2 if r.cond_latent_frames is None else r.cond_latent_frames
    return window_frames(k0 + NEW_FRAMES // TF + (r.direction == "backward"))


def _window_connect(pipe, r: Request) -> int:  # a CONNECT_GAP-frame gap between 2 given latent frames of each video
    k0 = 2 if r.cond_latent_frames is None else r.cond_latent_frames
    return window_frames(2 * k0 + ((CONNECT_GAP if r.gap_frames is None else r.gap_frames) + 1) // TF)


def _one(plan: Callable[..., Plan]) -> Planner:
    """The planner of a one-window mode."""
    def windows(pipe, r: Request, memory: Memory) -> Iterator[Window]:
        yield r.window(plan(pipe, r))
    return windows


def _plan_i2v(pipe, r: Request) -> Plan:
    return plan_i2v(pipe.encode_video, r.frames_in["image"], r.shape[1], r.image_position)


def _plan_extend(pipe, r: Request) -> Plan:
    return plan_extend(pipe.encode_video, r.frames_in["video"], r.shape[1], r.k, r.direction)


def _plan_connect(pipe, r: Request) -> Plan:
    return plan_connect(pipe.encode_video, r.frames_in["video"], r.frames_in["video_end"], r.shape[1], r.k)


def _windows_edit(pipe, r: Request, memory: Memory) -> Iterator[Window]:
    """SDEdit: the video's latents noised to t = strength, then denoised from there."""
    z0 = pipe.encode_video(r.frames_in["video"])[None]  # [1, C, n, h, w]
    window = r.window(plan_none(r.shape), x=lambda noise: interpolate(z0.to(noise).expand_as(noise), noise, r.strength))
    window.ts = timesteps(max(1, math.ceil(r.num_inference_steps * r.strength)), r.shift, start=r.strength)
    yield window


def _windows_loop(pipe, r: Request, memory: Memory) -> Iterator[Window]:
    """Pass 1 is plain t2v; pass 2 reuses the same noise with the head and tail given."""
    yield r.window(plan_none(r.shape), decode=None, write=False, record=slice(0, 0))
    z1 = memory.z  # [B, C, n, h, w]
    heads = pipe.decode(z1[:, :, : r.k + 1])  # [B, 4k+1, H, W, 3]: exact, the VAE is causal
    plans = [plan_loop(pipe.encode_video, z1[b], heads[b], r.k) for b in range(len(z1))]
    yield r.window(Plan(torch.stack([p.latents for p in plans]), plans[0].mask, plans[0].keep), x=memory.noise)


def _windows_long(pipe, r: Request, memory: Memory) -> Iterator[Window]:
    """Window 1 (t2v, or i2v from the image), then windows given the last K = 4(k-1)+1 decoded frames of the one
    before, re-encoded (plan_extend), until `total` frames; each writes only its new frames."""
    C, n_w, h, w = r.shape
    k, K = r.k, head_frames(r.k)
    if n_w <= k:
        raise ValueError(f"long: {arg('window_frames')} must exceed the conditioning ({K} frames, "
                         f"{arg('cond_latent_frames', k)}); use {arg('window_frames')} >= {window_frames(k + 1)}")
    n_total = (r.total - 1) // TF + 1
    n, image = min(n_w, n_total), r.frames_in.get("image")
    first = plan_i2v(pipe.encode_video, image, n, r.image_position) if image is not None else plan_none((C, n, h, w))
    yield r.window(first, keep_frames=K)
    done = n
    while done < n_total:
        n = min(n_w, k + (n_total - done))
        plans = [plan_extend(pipe.encode_video, frames, n, k, "forward") for frames in memory.frames]
        plan = Plan(torch.stack([p.latents for p in plans]), plans[0].mask, keep=slice(K, None))
        yield r.window(plan, record=slice(k, None), keep_frames=K)
        done += n - k


def _window_stream(pipe, r: Request) -> int:
    """A stream's frames in flight: the rolling window and its context (stream.Rolling)."""
    r.total = r.num_frames if r.num_frames is not None else pipe.defaults["num_frames"]
    rolling = Rolling(r.num_inference_steps)
    return window_frames(rolling.active + rolling.context())


def _windows_stream(pipe, r: Request, memory: Memory) -> Iterator[Window]:
    yield from rolling_windows(pipe, r, memory, Rolling(r.num_inference_steps))


def _stream_params(r: Request) -> dict:
    rolling = Rolling(r.num_inference_steps)
    return {"num_frames": r.total, "rolling": {"active": rolling.active, "steps": rolling.every * rolling.active,
                                               "sink": rolling.sink, "recent": rolling.recent},
            **({"timeline": r.timeline.params()} if r.timeline else {})}


def _long_windows(r: Request) -> int:
    n, k = r.shape[1], r.k
    return 1 + max(0, math.ceil(((r.total - 1) // TF + 1 - n) / max(1, n - k)))


def _k_param(r: Request) -> dict:
    return {"cond_latent_frames": r.k}


def _loop_params(r: Request) -> dict:
    """A loop of num_frames frames is cut from a window of 4k more: the sidecar records both, as they are."""
    return {**_k_param(r), "num_frames": window_frames(r.shape[1] - r.k) - 1, "window_frames": r.T}


MODES: dict[str, Mode] = {
    "t2v": Mode(_given_or(lambda pipe, r: pipe.defaults["num_frames"]), _one(lambda pipe, r: plan_none(r.shape))),
    "t2i": Mode(_window_t2i, _one(lambda pipe, r: plan_none(r.shape))),
    "i2v": Mode(_given_or(lambda pipe, r: pipe.defaults["num_frames"]), _one(_plan_i2v),
                encodes=lambda r: 1 if r.image_position == "first" else TF + 1),
    "extend": Mode(_given_or(_window_extend), _one(_plan_extend), extra=_k_param, encodes=lambda r: TF * r.k + 1),
    "connect": Mode(_given_or(_window_connect), _one(_plan_connect), given_ends=2, encodes=lambda r: 2 * (TF * r.k + 1),
                    extra=lambda r: {**_k_param(r), "gap_frames": TF * (r.shape[1] - 2 * r.k) - 1}),
    "loop": Mode(_window_loop, _windows_loop, passes=lambda r: 2, extra=_loop_params, encodes=lambda r: TF * r.k + 1,
                 report=lambda frames: {"loop_closure": [loop_closure(f) for f in frames]}),
    "edit": Mode(_window_edit, _windows_edit, encodes=lambda r: r.T),
    "long": Mode(_window_long, _windows_long, passes=_long_windows, streams=True,
                 encodes=lambda r: (_long_windows(r) - 1) * head_frames(r.k) + ("image" in r.frames_in),
                 extra=lambda r: {**_k_param(r), "num_frames": r.total, "window_frames": r.T}),
    # cost: a call per `every` levels of each frame's steps, as windows of `steps` calls over the frames in flight
    "stream": Mode(_window_stream, _windows_stream, streams=True, extra=_stream_params,
                   passes=lambda r: math.ceil(Rolling(r.num_inference_steps).calls((r.total - 1) // TF + 1)
                                              / r.num_inference_steps)),
}
