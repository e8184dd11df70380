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

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from chronotope.pipeline.plan import Plan, window_frames
from chronotope.vae.tiling import TILE_OVERLAP
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
    Memory keeps for the next window; stream: its decoded latents continue the clip the windows before decoded
    (one causal decoder across windows, as a rolling schedule emits a frame at a time) instead of starting one."""

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
    stream: bool = False


@dataclass
class Memory:
    """What a planner sees of the windows made so far: the last window's initial state and latents
    [B, C, n, h, w], and its last `keep_frames` decoded frames per video (uint8 [K, H, W, 3]). Bounded: one
    window's worth, however long the video; a planner that needs more (storyboards) keeps its own bounded window."""

    noise: Tensor | None = None
    z: Tensor | None = None
    frames: list[np.ndarray] = field(default_factory=list)
    decoder: "StreamDecoder | None" = None


def to_uint8(x: Tensor) -> np.ndarray:
    """Pixels [B, 3, T, H, W] in [-1, 1] -> uint8 [B, T, H, W, 3]."""
    return ((x.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 4, 1).cpu().numpy()


class FrameSink:
    """Collects a video's frames, or streams them into an mp4 at `path` (chronotope.video.Mp4Writer: atomic,
    removed on failure), so a long video never sits in memory and a failure leaves no output file.
    collect=True keeps every frame (and writes the file at the end), for outputs the caller gets back whole;
    live=True writes the mp4 at its path as frames come, playable while it grows and kept when stopped."""

    def __init__(self, path: str | None, fps: float, collect: bool = False, live: bool = False):
        self.path, self.fps, self.frames = path, fps, []
        stream = not collect and path is not None and str(path).lower().endswith(".mp4")
        self.writer = Mp4Writer(path, fps, live=live) if stream else None

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


def roll(pipe, planner: Callable[[Memory], Iterator[Window]], run: dict
         ) -> Iterator[tuple[Window, Tensor, list[list[np.ndarray]]]]:
    """The windows the planner yields, one at a time: sampled (pipe.denoise), decoded in chunks, and the Memory the
    planner reads for the next one filled in. Yields (window, its latents [B, C, n, h, w], the frames it writes per
    video: uint8 chunks [k, H, W, 3] in order). run: the sampler settings of every window (sampler,
    guidance_scale, image_guidance_scale, progress)."""
    memory = Memory()
    for w in planner(memory):
        noise = w.x if isinstance(w.x, Tensor) else None
        if noise is None:
            shape = (w.cond[0].shape[0], *w.plan.latents.shape[-4:-3], w.plan.mask.numel(), *w.plan.latents.shape[-2:])
            noise = pipe.initial_noise(shape, w.generator)  # [B, C, n, h, w]
        x = w.x(noise) if callable(w.x) else noise
        z = pipe.denoise(x, w.ts, w.cond, w.uncond, w.plan, generator=w.generator, **run)  # [B, C, n, h, w]
        memory.noise, memory.z = noise, z
        yield w, z, (_decode(pipe, w, z, memory) if w.decode is not None else [[] for _ in range(z.shape[0])])


def rollout(pipe, planner: Callable[[Memory], Iterator[Window]], sinks: list[FrameSink], run: dict,
            bar: tuple[str, str, int] | None = None) -> tuple[list[np.ndarray], Tensor, Tensor]:
    """Run every window the planner yields (roll) into the sinks, one per video; bar: (desc, unit, total) of a
    progress bar that counts written frames (unit "frame") or windows. Returns (frames per video, [] when streamed
    to a file; recorded latents [B, C, t, h, w] along t; their mask [B, t], True = given)."""
    latents, masks = [], []
    progress = tqdm(total=bar[2], desc=bar[0], unit=bar[1], disable=not run["progress"]) if bar else None
    try:
        for w, z, parts in roll(pipe, planner, run):
            latents.append(z[:, :, w.record])
            masks.append(w.plan.mask[w.record])
            for sink, chunks in zip(sinks, parts):
                for chunk in chunks:
                    sink.write(chunk)
            if progress is not None:
                progress.update(sum(len(c) for c in parts[0]) if bar[1] == "frame" else 1)
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


def _decode(pipe, w: Window, z: Tensor, memory: Memory) -> list[list[np.ndarray]]:
    """Decode the window's latents chunk by chunk (bounded memory: the VAE's causal cache) -> per video, what it
    writes: head + decoded[keep] + tail when the window writes; the Memory keeps the last keep_frames decoded
    frames. A streaming window continues the decoder of the windows before it (memory.decoder)."""
    zd = z[:, :, w.decode]
    B, plan = z.shape[0], w.plan
    if w.stream:
        memory.decoder = memory.decoder or StreamDecoder(pipe, *zd.shape[-2:])
        chunks, lo, hi = memory.decoder.push(zd), 0, None
    else:
        chunks = pipe.iter_frames(zd)  # [B, c, H, W, 3] each
        lo, hi, _ = plan.keep.indices(window_frames(zd.shape[2]))
    out = [[plan.head] if w.write and plan.head is not None else [] for _ in range(B)]
    seen, tail = 0, [[] for _ in range(B)]
    for chunk in chunks:
        a = max(lo, seen) - seen
        b = chunk.shape[1] if hi is None else min(hi, seen + chunk.shape[1]) - seen
        if w.write and a < b:
            for i in range(B):
                out[i].append(chunk[i, a:b])
        seen += chunk.shape[1]
        if w.keep_frames:
            tail = [(tail[i] + [chunk[i]])[-w.keep_frames:] for i in range(B)]  # at most K chunks hold the last K
    if w.write and plan.tail is not None:
        for i in range(B):
            out[i].append(plan.tail)
    memory.frames = [np.concatenate(t)[-w.keep_frames:] for t in tail] if w.keep_frames else []
    return out


class StreamDecoder:
    """The VAE's causal decoder over latents that arrive a few frames at a time (a rolling schedule finishes one
    latent frame per few model calls): each push decodes what it is given as the continuation of everything pushed
    before, so the frames are those of decoding the whole stream at once, and memory holds the causal cache only."""

    def __init__(self, pipe, h: int, w: int):
        sf = pipe.vae.config.spatial_factor
        self.pipe, self.pending = pipe, deque()
        self.frames = pipe.vae.decode_iter(self._feed(), 1, tile_size=pipe.tile(h * sf, w * sf),
                                           tile_overlap=TILE_OVERLAP)

    def _feed(self) -> Iterator[Tensor]:
        while True:
            yield self.pending.popleft()

    @torch.no_grad()
    def push(self, latents: Tensor) -> list[np.ndarray]:
        """Normalised latents [B, C, k, h, w] -> k uint8 chunks [B, n, H, W, 3] (the first latent frame of the
        stream: 1 frame, later ones: the VAE's temporal factor)."""
        out = []
        for i in range(latents.shape[2]):
            self.pending.append(self.pipe.vae.denormalize(latents[:, :, i:i + 1]))
            out.append(to_uint8(next(self.frames)))
        return out
