"""Long videos: autoregressive windows, each conditioned on the last frames of the one before, streamed out.

Sora extends videos to any length; with one model that conditions on clean frames this is a loop over
windows of extension forward (modes.py plan_extend): window 1 is t2v (or i2v), window i+1 is
given the last K = 4(k-1)+1 decoded frames of window i, re-encoded as a clip (so its first latent is a
proper image latent). Each window is decoded with the VAE's causal chunked decoder (decode_iter) and its
frames go straight to the output file: memory holds one window's latents and K frames, whatever the length.

    frames, latents, mask = generate_long(pipe, None, total=97, n_w=5, k=2, ...)   # via pipe(mode="long")
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from chronotope.pipeline import modes
from chronotope.request import arg
from chronotope.video import Mp4Writer, write_video


class FrameSink:
    """Collects frames, or streams them into an mp4 at `path` (chronotope.video.Mp4Writer: atomic, removed
    on failure), so a long video never sits in memory and a failure leaves no output file."""

    def __init__(self, path: str | None, fps: float):
        self.path, self.fps, self.frames = path, fps, []
        self.writer = Mp4Writer(path, fps) if path is not None and str(path).lower().endswith(".mp4") else None

    def write(self, frames: np.ndarray) -> None:  # uint8 [n, H, W, 3]
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


def generate_long(pipe, image: np.ndarray | None, total: int, n_w: int, k: int, chw: tuple[int, int, int],
                  cond: tuple[torch.Tensor, torch.Tensor], uncond: tuple[torch.Tensor, torch.Tensor], ts: torch.Tensor,
                  run: dict, paths: list[str] | None, fps: float, image_position: str = "first"
                  ) -> tuple[list[np.ndarray], torch.Tensor, torch.Tensor]:
    """Window 1 (t2v, or i2v from `image`), then windows conditioned on the last 4(k-1)+1 decoded frames of
    the previous one (modes.plan_extend), until `total` frames. Decoding is chunked (decode_iter) and the
    frames go to the sinks as they come; only the last K frames per video are kept for the next window."""
    C, h, w = chw
    B = cond[0].shape[0]
    n_total = (total - 1) // 4 + 1
    K = modes.head_frames(k)
    if n_w <= k:
        raise ValueError(f"long: {arg('window_frames')} must exceed the conditioning ({K} frames, "
                         f"{arg('cond_latent_frames', k)}); use {arg('window_frames')} >= {modes.window_frames(k + 1)}")
    sinks = [FrameSink(p, fps) for p in (paths or [None] * B)]
    kept, latents, masks = [None] * B, [], []
    n_done = 0  # latent frames of the whole video produced so far (new ones only)
    bar = tqdm(total=total, desc="long video", unit="frame", disable=not run["progress"])
    try:
        while n_done < n_total:
            if n_done == 0:
                n = min(n_w, n_total)
                plan = (modes.plan_i2v(pipe.encode_video, image, n, image_position) if image is not None
                        else modes.plan_none((C, n, h, w)))
                skip = 0
            else:
                n = min(n_w, k + (n_total - n_done))
                plans = [modes.plan_extend(pipe.encode_video, kept[b], n, k, "forward") for b in range(B)]
                plan = modes.Plan(torch.stack([p.latents for p in plans]), plans[0].mask)
                skip = K  # the window's first K frames replay the previous window's last K
            noise = pipe.initial_noise((B, C, n, h, w), run["generator"])
            z = pipe.denoise(noise, ts, cond, uncond, plan, **run)  # [B, C, n, h, w]
            latents.append(z if n_done == 0 else z[:, :, k:])
            masks.append(plan.mask if n_done == 0 else plan.mask[k:])
            seen, tail = 0, [[] for _ in range(B)]
            for chunk in pipe.iter_frames(z):  # [B, c, H, W, 3]
                lo = max(0, skip - seen)
                seen += chunk.shape[1]
                for b in range(B):
                    if lo < chunk.shape[1]:
                        sinks[b].write(chunk[b, lo:])
                    tail[b] = (tail[b] + [chunk[b]])[-K:]  # at most K chunks hold the last K frames
                bar.update(max(0, chunk.shape[1] - lo))
            kept = [np.concatenate(t)[-K:] for t in tail]
            n_done += n if n_done == 0 else n - k
        frames = [s.close(ok=True) for s in sinks]
    except BaseException:
        for s in sinks:
            s.close(ok=False)
        raise
    finally:
        bar.close()
    frames = [] if paths is not None and all(s.writer is not None for s in sinks) else list(frames)
    mask = torch.cat(masks)[None].expand(B, -1).clone()
    return frames, torch.cat(latents, dim=2), mask
