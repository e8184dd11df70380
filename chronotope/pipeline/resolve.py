"""Request resolution: what a generation request means before any work. The mode (asked for, or implied by the
inputs), the output size, the frame count, the given images and videos loaded and fitted to that size, and the
notes a user sees about anything resolved for them. Validation of the numbers themselves is chronotope/request.py
(shared with the command line); the pipeline (pipeline.py) calls these, then builds the mode's plan (modes.py).
"""

from __future__ import annotations

import math
import os
import sys

import numpy as np
import torch

from chronotope.request import MODES, TEMPORAL_FACTOR, arg
from chronotope.sizes import nearest_multiples, size_for
from chronotope.video import read_video

# default length of what extend and connect add: extend adds 12 frames in either direction (a 17-frame
# window forward, 21 backward: the free latent before the given tail costs one), connect fills an 11-frame
# gap (4m-1 frames: the nearest to 12). Both keep 2 given latent frames (5 frames) from each video.
NEW_FRAMES = 12
CONNECT_GAP = 11


def infer_mode(mode: str | None, num_frames: int | None, given: dict[str, bool]) -> str:
    """The mode asked for, or the one the inputs imply; ValueError for a missing or an unused input (what each mode
    needs and uses: request.MODES)."""
    if mode is None:
        mode = ("connect" if given["video_end"] else "edit" if given["strength"] else "extend" if given["video"]
                else "i2v" if given["image"] else "t2i" if num_frames == 1 else "t2v")
    if mode not in MODES:
        raise ValueError(f"{arg('mode', mode)}: unknown mode; valid: {', '.join(MODES)}")
    missing = [k for k in MODES[mode].needs if not given[k]]
    if missing:
        what = " and ".join(arg(k) for k in missing)
        raise ValueError(f"{arg('mode', mode)} needs {what}: {'they are' if len(missing) > 1 else 'it is'} missing")
    unused = [k for k, v in given.items() if v and k not in MODES[mode].uses]
    if unused:
        users = "; ".join(f"{k}: {'/'.join(m for m, facts in MODES.items() if k in facts.uses)}" for k in unused)
        raise ValueError(f"{arg('mode', mode)} does not use {', '.join(arg(k) for k in unused)}; drop it or choose "
                         f"a mode that does ({users})")
    return mode


def frames_from(num_frames: int | None, duration: float | None, fps: float) -> int | None:
    """num_frames, or duration x fps when that is a whole 4k+1; ValueError names the nearest valid durations."""
    if duration is None:
        return num_frames
    if num_frames is not None:
        raise ValueError(f"give {arg('num_frames')} or {arg('duration')}, not both")
    n, tf = duration * fps, TEMPORAL_FACTOR
    if abs(n - round(n)) < 1e-6 and round(n) >= 1 and (round(n) - 1) % tf == 0:
        return int(round(n))
    lo = max(1, int((n - 1) // tf) * tf + 1)
    near = ", ".join(f"{k} frames ({k / fps:g} s)" for k in (lo, lo + tf))
    raise ValueError(f"{arg('duration', duration)}: {duration:g} s at {fps:g} fps is {n:g} frames; clips have "
                     f"{tf}k+1 frames, nearest valid: {near}")


def load_input(source, what: str) -> tuple[np.ndarray, float]:
    """Path or uint8 array -> uint8 [T, H, W, 3], fps (0 for arrays and images). VideoReadError if unreadable."""
    if isinstance(source, (str, os.PathLike)):
        return read_video(source)
    frames = np.asarray(source)
    frames = frames[None] if frames.ndim == 3 else frames
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"{what} must be a file path or uint8 frames [T, H, W, 3] / [H, W, 3], got "
                         f"{frames.dtype} {tuple(frames.shape)}")
    return frames, 0.0


def per_prompt(value, n: int, name: str) -> list[str]:
    if value is None or isinstance(value, str):
        return [value or ""] * n
    if len(value) != n:
        raise ValueError(f"{name} has {len(value)} entries for {n} prompts; give one or a string")
    return list(value)


def check_choices(**given: str) -> None:
    """sampler / direction / image_position: one of their valid values, checked before any work."""
    from chronotope.diffusion.samplers import SAMPLERS

    valid = {"sampler": (*SAMPLERS, "shortcut"), "direction": ("forward", "backward"), "image_position": ("first", "last")}
    for name, value in given.items():
        if value not in valid[name]:
            raise ValueError(f"{arg(name, value)}: not one of {', '.join(valid[name])}")


def fit_frames(pipe, frames: np.ndarray, H: int, W: int, what: str, notes: list[str]) -> np.ndarray:
    """uint8 [T, h0, w0, 3] -> [T, H, W, 3]: resize to cover, center-crop, with a note when the size changes."""
    from chronotope.data.dataset import resize_crop

    if frames.shape[1:3] == (H, W):
        return np.ascontiguousarray(frames)
    note(notes, f"{what}: resized and center-cropped {frames.shape[2]}x{frames.shape[1]} -> {W}x{H}")
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()  # [T, 3, h0, w0]
    return resize_crop(x, H, W).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def note(notes: list[str], text: str) -> None:
    notes.append(text)
    print(f"note: {text}", file=sys.stderr)


def resolve_size(pipe, height: int | None, width: int | None, resolution, aspect_ratio,
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


def tokens_per_sample(pipe, n: int, h: int, w: int) -> int:
    pt, ph, pw = pipe.dit.config.patch
    return (n // pt) * (h // ph) * (w // pw)
