"""World-bench's camera: global motion of the background by phase correlation, objects masked out.

Between consecutive frames, phase correlation (Kuglin & Hines 1975: the peak of the inverse FFT of the
normalised cross-power spectrum, refined to sub-pixel by a parabola through it and its neighbours) gives the
background's shift on the whole frame and on its left / right and top / bottom halves. The whole frame's shift
is the pan; the halves moving apart (or together) are a zoom: a zoom of log-rate r per step moves the right
half's centre W/4 r to the right and the left half's as far to the left. Object pixels (any palette color or
the pillar, dilated by 2 px) are filled with the frame's median background before the FFT, so the objects' own
motion does not pull the estimate (noisy videos are median-filtered first, as detection does); each peak is then refined by the least squared difference over the pixels that
are background in both frames (the masked holes move with the objects, and the FFT sees them).

Summed over the clip this is the camera's track (centre in units of min(H, W), zoom), its class in
world.camera's vocabulary, and what objects' own motion is: their track minus the camera's.

    est = estimate_camera(frames, fps=8)   # est.motion "pan-left", est.speed "slow", est.u / est.v / est.zoom [T]
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from chronotope.bench.palette import PILLAR_CLASS, classify_pixels
from chronotope.bench.templates import NOISY_SIGMA, estimate_noise, median3
from chronotope.world.camera import PAN_SPEED, ZOOM_RATE

NEAR_PX = 2.5  # a half frame's shift lies within this of the whole frame's (a zoom step moves it < 1 px at 64 px)
REFINE_PX = 2  # integer offsets tried around the phase-correlation peak by the masked refinement
ZOOM_BASELINE = 4  # frames between the two images whose halves measure a zoom
MAX_PAN = 0.5  # min(H, W) per second: twice the fast pan
DEFAULT_FPS = 8.0  # the World's; frame-based thresholds assume it when a video's fps is unknown
STATIC_SHARE = 1 / 3  # slower than this share of the slow speed (pan or zoom) reads as a static camera
PAN_SPLIT = math.sqrt(PAN_SPEED["slow"] * PAN_SPEED["fast"])  # slow / fast, per second
ZOOM_SPLIT = math.sqrt(ZOOM_RATE["slow"] * ZOOM_RATE["fast"])


@dataclass
class CameraEstimate:
    """The camera as read from the background: per-frame track and its class."""

    u: np.ndarray  # [T] camera centre, units of min(H, W), first frame 0 (right positive)
    v: np.ndarray  # [T] (down positive)
    zoom: np.ndarray  # [T] zoom factor, first frame 1
    motion: str  # world.camera.CAMERA_MOTIONS
    speed: str | None  # "slow" / "fast" (None when static)
    pan_rate: float  # camera pan speed, min(H, W) per second
    zoom_rate: float  # |log zoom| per second


def _object_mask(frames: np.ndarray) -> np.ndarray:
    """[T, H, W] True on object and pillar pixels, dilated by 2 px (their anti-aliased edges)."""
    cls = classify_pixels(frames)
    mask = ((cls >= 0) & (cls < PILLAR_CLASS - 3)) | (cls == PILLAR_CLASS)  # 8 object colors, the pillar
    for _ in range(2):
        grown = mask.copy()
        grown[:, 1:] |= mask[:, :-1]
        grown[:, :-1] |= mask[:, 1:]
        grown[:, :, 1:] |= mask[:, :, :-1]
        grown[:, :, :-1] |= mask[:, :, 1:]
        mask = grown
    return mask


def _prepared(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Luma float32 [T, H, W], lightly blurred, with object pixels set to each frame's median background and that
    median removed; and the background mask bool [T, H, W] (True where no object is)."""
    luma = frames.astype(np.float32).mean(-1)  # [T, H, W]
    luma[:, 1:-1] = 0.25 * luma[:, :-2] + 0.5 * luma[:, 1:-1] + 0.25 * luma[:, 2:]  # [1 2 1] / 4 over H, then W:
    luma[:, :, 1:-1] = 0.25 * luma[:, :, :-2] + 0.5 * luma[:, :, 1:-1] + 0.25 * luma[:, :, 2:]  # a smoother cost
    mask = _object_mask(frames)
    for t in range(luma.shape[0]):
        bg = luma[t][~mask[t]]
        fill = float(np.median(bg)) if bg.size else float(luma[t].mean())
        luma[t][mask[t]] = fill
        luma[t] -= fill
    return luma, ~mask


def _overlap(n: int, o: int) -> tuple[slice, slice]:
    """Slices of a and b along an axis of length n where a[i] meets b[i + o]."""
    return (slice(0, n - o), slice(o, n)) if o >= 0 else (slice(-o, n), slice(0, n + o))


def _refine(a: np.ndarray, va: np.ndarray, b: np.ndarray, vb: np.ndarray, dx: float, dy: float) -> tuple[float, float]:
    """The shift (dx, dy) refined by the least mean squared difference of the pixels that are background in both
    images (integer offsets within REFINE_PX of it, then a parabola through the best and its neighbours): unlike
    the FFT, it ignores the holes the masked objects cut, which move with them."""
    r = REFINE_PX
    cx, cy = int(round(dx)), int(round(dy))
    h, w = a.shape
    cost = np.full((2 * r + 1, 2 * r + 1), np.inf)
    for j, oy in enumerate(range(cy - r, cy + r + 1)):
        ya, yb = _overlap(h, oy)
        for i, ox in enumerate(range(cx - r, cx + r + 1)):
            xa, xb = _overlap(w, ox)
            both = va[ya, xa] & vb[yb, xb]
            if both.sum() >= 0.2 * a.size:
                cost[j, i] = float(np.mean((a[ya, xa][both] - b[yb, xb][both]) ** 2))
    if not np.isfinite(cost).any():
        return dx, dy
    j, i = np.unravel_index(int(np.argmin(cost)), cost.shape)

    def vertex(m: float, c: float, p: float) -> float:
        den = m - 2 * c + p
        return float(np.clip(0.5 * (m - p) / den, -0.5, 0.5)) if np.isfinite(m + p) and den > 1e-9 else 0.0

    fx = vertex(cost[j, i - 1], cost[j, i], cost[j, i + 1]) if 0 < i < 2 * r else 0.0
    fy = vertex(cost[j - 1, i], cost[j, i], cost[j + 1, i]) if 0 < j < 2 * r else 0.0
    return cx - r + i + fx, cy - r + j + fy


def _shift(a: np.ndarray, b: np.ndarray, near: tuple[float, float] | None = None,
           reach: float = 0.0) -> tuple[float, float]:
    """Sub-pixel (dx, dy) by which image b [h, w] is image a moved (phase correlation, Hann-windowed); near: look
    for the peak within `reach` (default NEAR_PX) pixels of this shift only (a periodic texture has aliased peaks)."""
    h, w = a.shape
    win = np.outer(np.hanning(h), np.hanning(w)).astype(np.float32)
    cross = np.fft.fft2(b * win) * np.conj(np.fft.fft2(a * win))
    r = np.fft.ifft2(cross / (np.abs(cross) + 1e-6)).real  # [h, w] peak at the shift (mod h, w)
    search = r
    if near is not None:
        oy = (np.arange(h)[:, None] - near[1] + h / 2) % h - h / 2  # signed circular offsets from `near`
        ox = (np.arange(w)[None, :] - near[0] + w / 2) % w - w / 2
        search = np.where(np.hypot(ox, oy) <= (reach or NEAR_PX), r, -np.inf)
    py, px = np.unravel_index(int(np.argmax(search)), r.shape)

    def refine(c: float, m: float, p: float) -> float:
        den = m - 2 * c + p
        return float(np.clip(0.5 * (m - p) / den, -0.5, 0.5)) if den < -1e-9 else 0.0

    dy = py + refine(r[py, px], r[(py - 1) % h, px], r[(py + 1) % h, px])
    dx = px + refine(r[py, px], r[py, (px - 1) % w], r[py, (px + 1) % w])
    return (dx - w if dx > w / 2 else dx), (dy - h if dy > h / 2 else dy)


def frame_steps(frames: np.ndarray, fps: float = 8.0) -> np.ndarray:
    """Per consecutive pair: background shift dx, dy (pixels) and log zoom; float [T - 1, 3].

    A camera moves at most MAX_PAN of min(H, W) per second: beyond that lie the aliased peaks of a periodic
    texture (a grid). The halves' shifts are measured ZOOM_BASELINE frames apart: a zoom moves them apart by
    under a pixel per frame, where a sub-pixel peak is biased toward the whole pixel."""
    g, valid = _prepared(frames)
    T, H, W = g.shape
    out = np.zeros((max(T - 1, 0), 3))
    reach = max(NEAR_PX, MAX_PAN * min(H, W) / fps)

    def shift(t0: int, t1: int, ys: slice, xs: slice, near: tuple[float, float], radius: float) -> tuple[float, float]:
        a, b, va, vb = g[t0, ys, xs], g[t1, ys, xs], valid[t0, ys, xs], valid[t1, ys, xs]
        return _refine(a, va, b, vb, *_shift(a, b, near, radius))

    full, left, right = slice(None), slice(0, W // 2), slice(W // 2, None)
    top, bottom = slice(0, H // 2), slice(H // 2, None)
    for t in range(T - 1):
        out[t, :2] = shift(t, t + 1, full, full, (0.0, 0.0), reach)
    k = min(ZOOM_BASELINE, T - 1)
    total, count = np.zeros(T - 1), np.zeros(T - 1)
    for t in range(T - k):
        near = tuple(out[t:t + k, :2].sum(0))
        lx, _ = shift(t, t + k, full, left, near, NEAR_PX)
        rx, _ = shift(t, t + k, full, right, near, NEAR_PX)
        _, ty = shift(t, t + k, top, full, near, NEAR_PX)
        _, by = shift(t, t + k, bottom, full, near, NEAR_PX)
        total[t:t + k] += 0.5 * ((rx - lx) / (W / 2) + (by - ty) / (H / 2)) / k
        count[t:t + k] += 1
    out[:, 2] = total / np.maximum(count, 1)
    return out


def estimate_camera(frames: np.ndarray, fps: float | None = None) -> CameraEstimate:
    """The camera of a video uint8 [T, H, W, 3] (T >= 2) from its background's motion."""
    T, H, W, _ = frames.shape
    if T < 2:
        raise ValueError("a camera moves over time: give a video of at least 2 frames")
    fps = float(fps) if fps else DEFAULT_FPS
    m = min(H, W)
    if estimate_noise(frames) > NOISY_SIGMA:  # as detection does: a median filter keeps the texture's edges
        frames = median3(frames)
    steps = frame_steps(frames, fps)  # [T-1, 3]
    zoom = np.exp(np.concatenate([[0.0], np.cumsum(steps[:, 2])]))  # [T]
    # the background moving right on screen is the camera moving left, by its shift over the zoomed scale
    u = np.concatenate([[0.0], np.cumsum(-steps[:, 0] / (m * zoom[1:]))])
    v = np.concatenate([[0.0], np.cumsum(-steps[:, 1] / (m * zoom[1:]))])
    seconds = (T - 1) / fps
    pan_rate = math.hypot(u[-1], v[-1]) / seconds
    zoom_rate = abs(math.log(zoom[-1])) / seconds
    pan_level, zoom_level = pan_rate / PAN_SPEED["slow"], zoom_rate / ZOOM_RATE["slow"]
    if max(pan_level, zoom_level) < STATIC_SHARE:
        motion, speed = "static", None
    elif pan_level >= zoom_level:
        if abs(u[-1]) >= abs(v[-1]):
            motion = "pan-left" if u[-1] < 0 else "pan-right"
        else:
            motion = "pan-up" if v[-1] < 0 else "pan-down"
        speed = "fast" if pan_rate > PAN_SPLIT else "slow"
    else:
        motion = "zoom-in" if zoom[-1] > 1 else "zoom-out"
        speed = "fast" if zoom_rate > ZOOM_SPLIT else "slow"
    return CameraEstimate(u=u, v=v, zoom=zoom, motion=motion, speed=speed, pan_rate=pan_rate, zoom_rate=zoom_rate)


def to_world(x: np.ndarray, y: np.ndarray, est: CameraEstimate, width: float, height: float) -> tuple[np.ndarray,
                                                                                                      np.ndarray]:
    """An on-screen track x, y [T] (units of min(H, W) from the top-left; frame width / height in those units)
    as world positions: the object's own motion, the camera's taken out (screen = (world - centre) * zoom)."""
    return ((x - width / 2) / est.zoom + est.u + width / 2, (y - height / 2) / est.zoom + est.v + height / 2)


__all__ = ["CameraEstimate", "estimate_camera", "frame_steps", "to_world"]
