"""The one rollout: a video made window by window, each window one sampler call that sees a bounded memory of
what came before, its frames decoded and streamed out as they come.

Every mode is a plan of windows (modes.py): t2v, i2v, extend, connect and edit are one window; a loop is two
(the second sees the first); a long video is a window and then windows that continue the last frames of the one
before; a storyboard is a window per shot, each seeing the last latent frames of the shots before it
(storyboard.py). A planner is a generator that yields Windows and reads the Memory the rollout fills after each
one, so long mode and storyboards are two ways of planning windows, not two loops, and streaming is a third.

A window knows its latent frames (given ones clean, t = 0; the plan's mask), its prompt (cond / uncond), its
noise levels (`ts`: one schedule [S], or one per frame [S, 1, 1, n], diffusion/samplers.py) and which latents of
the past it sees (the plan's latents: re-encoded frames or earlier latents, placed before the new frames).

    frames, latents, mask = rollout(pipe, planner, sinks, run)   # planner(memory) -> Iterator[Window]
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from chronotope.pipeline.plan import Plan, window_frames
from chronotope.video import Mp4Writer, write_video

Context = tuple[Tensor, Tensor]  # text (emb [B, Lt, D], mask [B, Lt])


@dataclass
class Window:
    """One sampler call of a rollout.

    plan: the window's conditioning (given latents and mask [n], per-frame conditions) and what of its decoded
    frames is output (keep, with head / tail frames around them). x: the state at ts[0], [B, C, n, h, w]; None
    draws noise from `generator` when the window runs; a function of that noise for a state built from it (edit).
    decode: latent frames decoded (None: none, the window only feeds the next one); record: latent frames that
    enter the output latents; write: whether its frames go to the output; keep_frames: decoded frames the
    Memory keeps for the next window."""

    plan: Plan
    ts: Tensor
    cond: Context
    uncond: Context | None
    generator: torch.Generator
    x: Tensor | Callable[[Tensor], Tensor] | None = None
    decode: slice | None = field(default_factory=lambda: slice(None))
    record: slice = field(default_factory=lambda: slice(None))
    write: bool = True
    keep_frames: int = 0


@dataclass
class Memory:
    """What a planner sees of the windows made so far: the last window's initial state and latents
    [B, C, n, h, w], and its last `keep_frames` decoded frames per video (uint8 [K, H, W, 3]). Bounded: one
    window's worth, however long the video; a planner that needs more (storyboards) keeps its own bounded window."""

    noise: Tensor | None = None
    z: Tensor | None = None
    frames: list[np.ndarray] = field(default_factory=list)


class FrameSink:
    """Collects a video's frames, or streams them into an mp4 at `path` (chronotope.video.Mp4Writer: atomic,
    removed on failure), so a long video never sits in memory and a failure leaves no output file.
    collect=True keeps every frame (and writes the file at the end), for outputs the caller gets back whole."""

    def __init__(self, path: str | None, fps: float, collect: bool = False):
        self.path, self.fps, self.frames = path, fps, []
        stream = not collect and path is not None and str(path).lower().endswith(".mp4")
        self.writer = Mp4Writer(path, fps) if stream else None

    def write(self, frames: np.ndarray) -> None:  # uint8 [n, H, W, 3]
        if not len(frames):
            return
        if self.writer is not None:
            self.writer.write(frames)
        else:
            self.frames.append(frames)

    def close(self, ok: bool = True) -> np.ndarray | None:
        if self.writer is not None:
            self.writer.close(ok)
            return None
        frames = np.concatenate(self.frames) if self.frames else None
        if ok and self.path is not None and frames is not None:
            write_video(self.path, frames, self.fps)
        return frames


def rollout(pipe, planner: Callable[[Memory], Iterator[Window]], sinks: list[FrameSink], run: dict,
            bar: tuple[str, str, int] | None = None) -> tuple[list[np.ndarray], Tensor, Tensor]:
    """Run every window the planner yields: sample it (pipe.denoise), decode it in chunks into the sinks (one per
    video), and fill the Memory the planner reads for the next. run: the sampler settings of every window
    (sampler, guidance_scale, image_guidance_scale, progress); bar: (desc, unit, total) of a progress bar that
    counts written frames (unit "frame") or windows. Returns (frames per video, [] when streamed to a file;
    recorded latents [B, C, t, h, w] along t; their mask [B, t], True = given)."""
    memory, latents, masks = Memory(), [], []
    progress = tqdm(total=bar[2], desc=bar[0], unit=bar[1], disable=not run["progress"]) if bar else None
    try:
        for w in planner(memory):
            noise = w.x if isinstance(w.x, Tensor) else None
            if noise is None:
                shape = (w.cond[0].shape[0], *w.plan.latents.shape[-4:-3], w.plan.mask.numel(),
                         *w.plan.latents.shape[-2:])
                noise = pipe.initial_noise(shape, w.generator)  # [B, C, n, h, w]
            x = w.x(noise) if callable(w.x) else noise
            z = pipe.denoise(x, w.ts, w.cond, w.uncond, w.plan, generator=w.generator, **run)  # [B, C, n, h, w]
            latents.append(z[:, :, w.record])
            masks.append(w.plan.mask[w.record])
            memory.noise, memory.z = noise, z
            written = _decode(pipe, w, z, sinks, memory) if w.decode is not None else 0
            if progress is not None:
                progress.update(written if bar[1] == "frame" else 1)
        frames = [s.close(ok=True) for s in sinks]
    except BaseException:
        for s in sinks:
            s.close(ok=False)
        raise
    finally:
        if progress is not None:
            progress.close()
    B = latents[-1].shape[0]
    return [f for f in frames if f is not None], torch.cat(latents, dim=2), torch.cat(masks)[None].expand(B, -1).clone()


def _decode(pipe, w: Window, z: Tensor, sinks: list[FrameSink], memory: Memory) -> int:
    """Decode the window's latents chunk by chunk (bounded memory: the VAE's causal cache); each video's sink gets
    head + decoded[keep] + tail when the window writes; the Memory keeps the last keep_frames decoded frames.
    Returns the decoded frames written per video."""
    zd = z[:, :, w.decode]
    B, plan = z.shape[0], w.plan
    lo, hi, _ = plan.keep.indices(window_frames(zd.shape[2]))
    if w.write and plan.head is not None:
        for s in sinks:
            s.write(plan.head)
    seen, written, tail = 0, 0, [[] for _ in range(B)]
    for chunk in pipe.iter_frames(zd):  # [B, c, H, W, 3]
        a, b = max(lo, seen) - seen, min(hi, seen + chunk.shape[1]) - seen
        if w.write and a < b:
            for i in range(B):
                sinks[i].write(chunk[i, a:b])
            written += b - a
        seen += chunk.shape[1]
        if w.keep_frames:
            tail = [(tail[i] + [chunk[i]])[-w.keep_frames:] for i in range(B)]  # at most K chunks hold the last K
    if w.write and plan.tail is not None:
        for s in sinks:
            s.write(plan.tail)
    memory.frames = [np.concatenate(t)[-w.keep_frames:] for t in tail] if w.keep_frames else []
    return written
