"""Every Sora generation mode as one thing: which latent frames are given clean (t = 0), and how the
decoded window is stitched back to the user's frames. The sampler call is the same for all of them.

Sora (Brooks et al. 2024, "Video generation models as world simulators") prompts one model with images
and videos: image-to-video, extension forward and backward, connecting two videos, seamless loops.
With a per-token timestep these are only conditioning masks, named in training's vocabulary
(chronotope/diffusion/flow.py COND_MODES: none, first, last, first_last, head, tail; flow.span_mask).

The causal VAE decides where given frames can sit. Latent frame 0 codes ONE frame (an "image" latent);
every later latent frame codes 4 frames given the frames before it. So:

  head (i2v first, extend forward, long, the start of connect/loop): encode the given K = 4(k-1)+1
      frames as their own clip; its k latents ARE the first k latents of any clip starting with those
      frames (causality), so the conditioning is exact. The window's first K decoded frames replay
      them, and we keep the user's original frames instead.
  tail (extend backward, the end of connect/loop, i2v last): a tail latent codes 4 frames after some
      context. We encode the given frames F[0 : 4k+1] as a clip and drop its image latent: the k
      remaining latents code F[1 .. 4k] (with F[0] as causal context) and go at the window's tail.
      The decoded frame just before them stands in for F[0] and is replaced by the user's F[0].
      i2v with the image last encodes a still 5-frame clip of the image: "4 frames ending on it".

    plan = plan_extend(encode, video, n=5, k=2, direction="forward")
    frames = plan.assemble(decoded_window)    # the user's video + the new frames
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from chronotope.diffusion.flow import interpolate, span_mask, timesteps
from chronotope.pipeline.resolve import CONNECT_GAP, NEW_FRAMES, note
from chronotope.request import arg

Encoder = Callable[[np.ndarray], Tensor]  # uint8 frames [T, H, W, 3] (target size) -> latents [C, t, h, w]

TF = 4  # frames per latent frame after the first (the causal VAE's temporal factor)


@dataclass
class Plan:
    """Conditioning of one window of n latent frames, and how to turn its decoded frames into the output.

    latents: [C, n, h, w] clean values at the given positions (zeros elsewhere); mask: [n] bool, True = given.
    Output = head frames + decoded[keep] + tail frames (uint8 [T, H, W, 3] each, None = nothing).
    shot: [n] long, the shot of each latent frame counted back from the one being made (storyboards), or None.
    """

    latents: Tensor
    mask: Tensor
    keep: slice = field(default_factory=lambda: slice(None))
    head: np.ndarray | None = None
    tail: np.ndarray | None = None
    shot: Tensor | None = None

    @property
    def any(self) -> bool:
        return bool(self.mask.any())

    def assemble(self, decoded: np.ndarray) -> np.ndarray:
        """decoded window [T_w, H, W, 3] -> the mode's output frames [T, H, W, 3]."""
        parts = [p for p in (self.head, decoded[self.keep], self.tail) if p is not None and len(p)]
        return np.concatenate(parts) if len(parts) > 1 else parts[0]


def window_frames(n: int) -> int:
    """Pixel frames of a window of n latent frames: 4(n-1)+1."""
    return TF * (n - 1) + 1


def head_frames(k: int) -> int:
    """Pixel frames behind k head latents: K = 4(k-1)+1 (k = 1: one frame, an image latent)."""
    return TF * (k - 1) + 1


def _check_k(k: int, n: int, need_free: int, what: str) -> None:
    if k < 1:
        raise ValueError(f"{arg('cond_latent_frames', k)}: must be at least 1")
    if n - k < need_free:
        raise ValueError(
            f"{what}: a window of {n} latent frames ({window_frames(n)} frames) with "
            f"{arg('cond_latent_frames', k)} leaves {n - k} latent frames to generate, need >= {need_free}; "
            f"raise {arg('num_frames')} to at least {window_frames(k + need_free)} or lower {arg('cond_latent_frames')}"
        )


def _need_frames(frames: np.ndarray, count: int, what: str, k: int) -> None:
    if len(frames) < count:
        raise ValueError(
            f"{what} has {len(frames)} frames; conditioning on {arg('cond_latent_frames', k)} latent frames needs "
            f"at least {count}; pass a longer video or {arg('cond_latent_frames', max(1, (len(frames) - 1) // TF))}"
        )


def head_latents(encode: Encoder, frames: np.ndarray, k: int) -> Tensor:
    """Latents [C, k, h, w] for the head of a window from the LAST K = 4(k-1)+1 frames of `frames`."""
    K = head_frames(k)
    _need_frames(frames, K, "the video", k)
    return encode(frames[len(frames) - K:])


def tail_latents(encode: Encoder, frames: np.ndarray, k: int) -> Tensor:
    """Latents [C, k, h, w] for the tail of a window: frames[0 : 4k+1] encoded, image latent dropped."""
    _need_frames(frames, TF * k + 1, "the video", k)
    return encode(frames[: TF * k + 1])[:, 1:]


def _given(cond: str, n: int, z: Tensor, k: int = 1) -> tuple[Tensor, Tensor]:
    """Latents [C, n, h, w] holding z [C, k or 2k, h, w] at the frames that flow.span_mask(cond, n, k) gives
    (zeros elsewhere), and that mask [n]."""
    mask = span_mask(cond, n, k)
    C, _, h, w = z.shape
    latents = z.new_zeros(C, n, h, w)
    latents[:, mask] = z
    return latents, mask


# --- the modes ----------------------------------------------------------------------------------


def plan_none(shape: tuple[int, int, int, int]) -> Plan:
    """Text-to-video / text-to-image: nothing given. shape = latent (C, n, h, w)."""
    C, n, h, w = shape
    return Plan(torch.zeros(C, n, h, w), torch.zeros(n, dtype=torch.bool))


def plan_i2v(encode: Encoder, image: np.ndarray, n: int, position: str = "first") -> Plan:
    """The image [1, H, W, 3] as the first frame (exact image latent) or the last (a still clip's tail)."""
    if position not in ("first", "last"):
        raise ValueError(f"image_position must be 'first' or 'last', got {position!r}")
    if position == "first":
        return Plan(*_given("first", n, encode(image[:1])))  # [C, 1, h, w]: the image latent
    if n < 2:
        raise ValueError(f"{arg('image_position', 'last')} needs a video ({arg('num_frames')} >= 5); a 1-frame "
                         "output is the image itself")
    z = tail_latents(encode, np.repeat(image[:1], TF + 1, axis=0), 1)  # [C, 1, h, w]: 4 still frames
    return Plan(*_given("last", n, z))


def plan_extend(encode: Encoder, video: np.ndarray, n: int, k: int, direction: str = "forward") -> Plan:
    """Extend `video` [T, H, W, 3] forward (its end at the window's head) or backward (its start at the tail).

    Output: the whole given video plus 4(n-k) new frames after it (forward) or 4(n-k-1) before it (backward).
    """
    if direction == "forward":
        _check_k(k, n, 1, "extend forward")
        latents, mask = _given("head", n, head_latents(encode, video, k), k)
        return Plan(latents, mask, keep=slice(head_frames(k), None), head=video)
    if direction == "backward":
        _check_k(k, n, 2, "extend backward")  # the free latent 0 stands in for video[0]: one more to gain frames
        latents, mask = _given("tail", n, tail_latents(encode, video, k), k)
        return Plan(latents, mask, keep=slice(0, window_frames(n) - TF * k - 1), tail=video)
    raise ValueError(f"direction must be 'forward' or 'backward', got {direction!r}")


def plan_connect(encode: Encoder, video: np.ndarray, video_end: np.ndarray, n: int, k: int) -> Plan:
    """Frames between the end of `video` and the start of `video_end`: head from one, tail from the other.

    Output: video + 4(n - 2k) - 1 generated frames + video_end.
    """
    _check_k(2 * k, n, 1, "connect")
    zh, zt = head_latents(encode, video, k), tail_latents(encode, video_end, k)
    latents, mask = _given("first_last", n, torch.cat([zh, zt], dim=1), k)  # [C, n, h, w]
    keep = slice(head_frames(k), window_frames(n) - TF * k - 1)
    return Plan(latents, mask, keep=keep, head=video, tail=video_end)


def plan_loop(encode: Encoder, first_pass: Tensor, first_frames: np.ndarray, k: int) -> Plan:
    """Second pass of a seamless loop: the window's head is the first pass's head (exact latents) and its
    tail replays the first pass's frames 1..4k, so the window's frames [0, T_w - 4k - 1) continue into
    frame 0 when played in a cycle. first_pass: [C, n, h, w]; first_frames: its decoded frames [>= 4k+1, ...].
    """
    n = first_pass.shape[1]
    _check_k(2 * k, n, 1, "loop")
    z = torch.cat([first_pass[:, :k], tail_latents(encode, first_frames, k).to(first_pass)], dim=1)
    latents, mask = _given("first_last", n, z, k)
    return Plan(latents, mask, keep=slice(0, window_frames(n) - TF * k - 1))


def loop_window(loop_frames: int, k: int) -> int:
    """Latent frames of the window that yields a loop of `loop_frames` frames (a multiple of 4)."""
    if loop_frames < TF or loop_frames % TF:
        lo = max(TF, loop_frames // TF * TF)
        near = f"{lo} or {lo + TF}" if lo != loop_frames and loop_frames > TF else str(lo)
        raise ValueError(
            f"{arg('num_frames', loop_frames)}: a loop's length must be a multiple of {TF} (the frame after the "
            f"last is the first; the causal VAE adds frames 4 at a time); nearest valid: {near}"
        )
    return loop_frames // TF + 1 + k


def loop_closure(frames: np.ndarray) -> dict[str, float]:
    """How seamless a loop is: mean |frame[0] - frame[-1]| (the wrap-around step) against the mean
    |frame[i+1] - frame[i]| inside the clip, in uint8 levels. ratio ~ 1 means the wrap looks like any step."""
    x = frames.astype(np.float32)
    if len(x) < 2:
        raise ValueError("loop_closure needs at least 2 frames")
    steps = np.abs(np.diff(x, axis=0)).mean(axis=(1, 2, 3))  # [T-1]
    wrap = float(np.abs(x[0] - x[-1]).mean())
    inner = float(steps.mean())
    return {"wrap_diff": wrap, "mean_step_diff": inner, "ratio": wrap / max(inner, 1e-6)}


# The mode table: what each mode adds to the common request -> window -> plan -> denoise -> decode.
# Adding a mode = its window and plan functions + one MODES entry (VideoPipeline.__call__ reads only this).


@dataclass
class Request:
    """A resolved request as the mode functions see it (pipeline.__call__ fills it; `window` may trim
    frames_in or set defaults). T: window frames; total: output frames (long); shape: latent (C, n, h, w)."""

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


Denoise = Callable[[Tensor, Tensor, Plan], Tensor]  # (x [B, C, n, h, w], timesteps, plan) -> clean latents


@dataclass
class Mode:
    """window(pipe, r) -> T; plan(pipe, r, noise, ts, denoise) -> (Plan, x at ts[0], ts). `given_ends`: sides
    a default k is taken from; `windows(r)`: sampler calls and `encodes(r)`: frames the plan encodes (cost);
    `extra(r)`: params it records; `report(frames)`: params measured on the output."""

    window: Callable[..., int]
    plan: Callable[..., tuple[Plan, Tensor, Tensor]] | None
    given_ends: int = 1
    windows: Callable[[Request], int] = lambda r: 1
    encodes: Callable[[Request], int] = lambda r: 0
    extra: Callable[[Request], dict] = lambda r: {}
    report: Callable[[list[np.ndarray]], dict] | None = None


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
    T = r.num_frames if r.num_frames is not None else (len(v) - 1) // 4 * 4 + 1
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


def _plan_none(pipe, r: Request, noise: Tensor, ts: Tensor, denoise: Denoise):
    return plan_none(r.shape), noise, ts


def _plan_edit(pipe, r: Request, noise: Tensor, ts: Tensor, denoise: Denoise):
    plan = plan_none(r.shape)
    z0 = pipe.encode_video(r.frames_in["video"]).to(noise)[None]  # [1, C, n, h, w]
    ts = timesteps(max(1, math.ceil(r.num_inference_steps * r.strength)), r.shift, start=r.strength)
    return plan, interpolate(z0.expand_as(noise), noise, r.strength), ts  # x_t at t = strength


def _plan_i2v(pipe, r: Request, noise: Tensor, ts: Tensor, denoise: Denoise):
    return plan_i2v(pipe.encode_video, r.frames_in["image"], r.shape[1], r.image_position), noise, ts


def _plan_extend(pipe, r: Request, noise: Tensor, ts: Tensor, denoise: Denoise):
    return plan_extend(pipe.encode_video, r.frames_in["video"], r.shape[1], r.k, r.direction), noise, ts


def _plan_connect(pipe, r: Request, noise: Tensor, ts: Tensor, denoise: Denoise):
    video, end = r.frames_in["video"], r.frames_in["video_end"]
    return plan_connect(pipe.encode_video, video, end, r.shape[1], r.k), noise, ts


def _plan_loop(pipe, r: Request, noise: Tensor, ts: Tensor, denoise: Denoise):
    """Pass 1 is plain t2v; pass 2 reuses the same noise with the head and tail given."""
    z1 = denoise(noise, ts, plan_none(r.shape))
    heads = pipe.decode(z1[:, :, : r.k + 1])  # [B, 4k+1, H, W, 3]: exact, the VAE is causal
    plans = [plan_loop(pipe.encode_video, z1[b], heads[b], r.k) for b in range(len(z1))]
    return Plan(torch.stack([p.latents for p in plans]), plans[0].mask, plans[0].keep), noise, ts


def _long_windows(r: Request) -> int:
    n, k = r.shape[1], r.k
    return 1 + max(0, math.ceil(((r.total - 1) // 4 + 1 - n) / max(1, n - k)))


def _k_param(r: Request) -> dict:
    return {"cond_latent_frames": r.k}


def _loop_params(r: Request) -> dict:
    """A loop of num_frames frames is cut from a window of 4k more: the sidecar records both, as they are."""
    return {**_k_param(r), "num_frames": window_frames(r.shape[1] - r.k) - 1, "window_frames": r.T}


MODES: dict[str, Mode] = {
    "t2v": Mode(_given_or(lambda pipe, r: pipe.defaults["num_frames"]), _plan_none),
    "t2i": Mode(_window_t2i, _plan_none),
    "i2v": Mode(_given_or(lambda pipe, r: pipe.defaults["num_frames"]), _plan_i2v,
                encodes=lambda r: 1 if r.image_position == "first" else TF + 1),
    "extend": Mode(_given_or(_window_extend), _plan_extend, extra=_k_param, encodes=lambda r: TF * r.k + 1),
    "connect": Mode(_given_or(_window_connect), _plan_connect, given_ends=2, encodes=lambda r: 2 * (TF * r.k + 1),
                    extra=lambda r: {**_k_param(r), "gap_frames": TF * (r.shape[1] - 2 * r.k) - 1}),
    "loop": Mode(_window_loop, _plan_loop, windows=lambda r: 2, extra=_loop_params, encodes=lambda r: TF * r.k + 1,
                 report=lambda frames: {"loop_closure": [loop_closure(f) for f in frames]}),
    "edit": Mode(_window_edit, _plan_edit, encodes=lambda r: r.T),
    "long": Mode(_window_long, None, windows=_long_windows,  # window by window: long_video.generate_long
                 encodes=lambda r: (_long_windows(r) - 1) * head_frames(r.k) + ("image" in r.frames_in),
                 extra=lambda r: {**_k_param(r), "num_frames": r.total, "window_frames": r.T}),
}
