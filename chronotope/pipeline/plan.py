"""The plan of a window: which latent frames are given clean (t = 0), and how its decoded frames are stitched
back to the user's frames. Every Sora generation mode is such a plan (modes.py); the sampler call is the same.

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
    plan.keep, plan.head, plan.tail           # the output: the user's video + decoded[keep]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from chronotope.diffusion.flow import span_mask
from chronotope.request import arg

Encoder = Callable[[np.ndarray], Tensor]  # uint8 frames [T, H, W, 3] (target size) -> latents [C, t, h, w]

TF = 4  # frames per latent frame after the first (the causal VAE's temporal factor)


@dataclass
class Plan:
    """Conditioning of one window of n latent frames, and how to turn its decoded frames into the output.

    latents: [C, n, h, w] clean values at the given positions (zeros elsewhere); mask: [n] bool, True = given.
    Output = head frames + decoded[keep] + tail frames (uint8 [T, H, W, 3] each, None = nothing).
    conditions: per-frame conditions of the window (dit/conditioning.py), name -> [n], e.g. "shot" (storyboards).
    """

    latents: Tensor
    mask: Tensor
    keep: slice = field(default_factory=lambda: slice(None))
    head: np.ndarray | None = None
    tail: np.ndarray | None = None
    conditions: dict[str, Tensor] = field(default_factory=dict)

    @property
    def any(self) -> bool:
        return bool(self.mask.any())


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


def plan_context(context: list[Tensor], shape: tuple[int, int, int, int],
                 conditions: dict[str, Tensor] | None = None) -> Plan:
    """Earlier latents ([C, k_i, h, w] each, oldest first) given as clean context before the n new latent frames
    of `shape` (C, n, h, w): latents [C, m + n, h, w], mask [m + n] (True = given), per-frame `conditions` [m + n].
    Storyboards give each shot the last frames of the shots before it this way."""
    C, n, h, w = shape
    given = torch.cat(context, dim=1) if context else torch.zeros(C, 0, h, w)
    m = given.shape[1]
    latents = torch.cat([given, given.new_zeros(C, n, h, w)], dim=1)
    mask = torch.cat([torch.ones(m, dtype=torch.bool), torch.zeros(n, dtype=torch.bool)])
    return Plan(latents, mask, conditions=dict(conditions or {}))
