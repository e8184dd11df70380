"""Rasterise a World scene into uint8 frames [T, H, W, 3] with per-frame ground-truth tracks.

Anti-aliasing is analytic coverage (no supersampling, so it costs one pass): a square's pixel
coverage is the exact product of its 1-D box overlaps, a circle's is clip(R - dist + 1/2), a
triangle's the product of its base overlap and clip(1/2 - signed distance) to its slanted sides.
Everything is numpy-vectorised over frames; each object only touches the rows and columns it
crosses during the clip. The pillar is composited last, in front of every object.

Tracks (one dict per object, arrays of length T): 'x', 'y' the shape's geometric centroid in
pixels (pixel centres at i + 0.5; a triangle's lies d/6 below its box centre), 'size' the box
side d in pixels, 'visible' the fraction of the shape's area inside the frame and not behind the
pillar (other objects do not count), plus 'color', 'shape', 'motion', 'speed'.

A camera scene (world/camera.py) draws its texture and places its objects through the camera: screen =
(world - centre(t)) * zoom(t), so 'x', 'y', 'size' are on-screen values and `Render.camera` holds the
camera's track per frame ('u', 'v' centre in units of min(H, W), 'zoom', 'class' its CAMERA_CLASSES index).
A scene without a camera renders exactly as before the camera existed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..sizes import nearest_multiples
from .camera import camera_conditions, draw_background
from .scene import PILLAR_WIDTH, Scene
from .vocab import BACKGROUNDS, COLORS, PILLAR_COLOR

_AREA = {"circle": math.pi / 4, "square": 1.0, "triangle": 0.5}  # shape area / d^2
# peak bytes per pixel per frame of render() and writing its frames: the float canvas, the coverage masks and the
# uint8 frames measured 19-29 (tracemalloc, 17 frames at 256x256), with a margin for the video encoder
RENDER_BYTES = 48
_SQRT5 = math.sqrt(5.0)


@dataclass
class Render:
    frames: np.ndarray  # uint8 [T, H, W, 3]
    tracks: list[dict]  # per object: 'x', 'y', 'size', 'visible' float arrays [T]; 'color', 'shape', ...
    times: np.ndarray  # float [T] seconds
    fps: float
    spec: dict
    camera: dict | None = None  # camera scenes: 'u', 'v', 'zoom' float [T], 'class' list of T ints


def check_frame_size(height: int, width: int) -> None:
    """The World renders any even height and width >= 16; raise ValueError naming valid neighbours."""
    for name, x in (("height", height), ("width", width)):
        if not isinstance(x, (int, np.integer)) or x < 16 or x % 2:
            near = nearest_multiples(int(x), 2, 16) if isinstance(x, (int, np.integer, float)) else [16]
            raise ValueError(f"{name} must be an even integer >= 16, got {x!r}; nearest valid: "
                             f"{' or '.join(map(str, near))}")


def check_clip_memory(height: int, width: int, num_frames: int, workers: int = 1) -> None:
    """ValueError, before any rendering, when `workers` clips of num_frames x height x width at once need more than
    half the memory available (RENDER_BYTES per pixel per frame); it names the most frames that fit at that size."""
    from chronotope.cost import available_memory, format_bytes

    available = available_memory()
    need = RENDER_BYTES * num_frames * height * width * workers
    if need > available / 2:
        most = int(available / 2 // (RENDER_BYTES * height * width * workers))
        fit = f"; at {width}x{height} at most {most} frames fit" if most >= 1 else "; ask for a smaller size"
        each = f" each, {workers} at once" if workers > 1 else ""
        raise ValueError(f"a {num_frames}-frame {width}x{height} clip needs about {format_bytes(need / workers)} to "
                         f"render{each}, more than half of the {format_bytes(available)} available{fit}")


def _box_overlap(centers: np.ndarray, half: float, grid: np.ndarray) -> np.ndarray:
    """Exact overlap of [c - half, c + half] with unit pixels [g, g + 1]: centers [T], grid [N] -> [T, N]."""
    lo = np.maximum(grid[None, :], (centers - half)[:, None])
    hi = np.minimum(grid[None, :] + 1, (centers + half)[:, None])
    return np.clip(hi - lo, 0.0, 1.0)


def _coverage(shape: str, cx: np.ndarray, cy: np.ndarray, half: float | np.ndarray, xs: np.ndarray,
              ys: np.ndarray) -> np.ndarray:
    """Pixel coverage [T, len(ys), len(xs)] of a shape with box centre (cx, cy) [T] and half side `half` (px; a
    float, or [T] under a zooming camera)."""
    scalar = half  # broadcast against [T, h, w] below
    if np.ndim(half):
        scalar = np.asarray(half, dtype=np.float32)[:, None, None]  # [T, 1, 1]
    if shape == "square":
        return _box_overlap(cy, half, ys)[:, :, None] * _box_overlap(cx, half, xs)[:, None, :]
    dx = (xs[None, :] + 0.5 - cx[:, None]).astype(np.float32)[:, None, :]  # [T, 1, w]
    dy = (ys[None, :] + 0.5 - cy[:, None]).astype(np.float32)[:, :, None]  # [T, h, 1]
    if shape == "circle":
        return np.clip(scalar + 0.5 - np.sqrt(dx * dx + dy * dy), 0.0, 1.0)
    if shape == "triangle":  # apex (cx, cy - half), base corners (cx +- half, cy + half)
        base = _box_overlap(cy, half, ys)[:, :, None].astype(np.float32)  # rows above the base line
        sides = np.clip(0.5 - (2 * np.abs(dx) - dy - scalar) / _SQRT5, 0.0, 1.0)
        return base * sides
    raise ValueError(f"unknown shape {shape!r}")


def render(scene: Scene, height: int, width: int, num_frames: int, fps: float,
           frozen_background: bool = False) -> Render:
    """Render `scene` at any even height/width >= 16, any frame count >= 1 and fps > 0.

    frozen_background (camera scenes, for World-bench's corruptions): the texture stays where the first frame
    shows it while the objects still move as the camera sees them."""
    check_frame_size(height, width)
    if not isinstance(num_frames, (int, np.integer)) or num_frames < 1:
        raise ValueError(f"num_frames must be a positive integer, got {num_frames!r}")
    if not (isinstance(fps, (int, float, np.integer, np.floating)) and fps > 0 and math.isfinite(fps)):
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    H, W, T = int(height), int(width), int(num_frames)
    s = min(H, W)
    times = np.arange(T, dtype=np.float64) / float(fps)  # [T]

    canvas = np.empty((T, H, W, 3), dtype=np.float32)
    canvas[:] = np.asarray(BACKGROUNDS[scene.background], dtype=np.float32)
    camera = None
    if scene.camera is not None:
        cam_u, cam_v, zoom = scene.camera.track(times)  # [T] each
        draw_background(canvas, BACKGROUNDS[scene.background], scene.background, scene.texture or "grid",
                        scene.camera, times[:1].repeat(T) if frozen_background else times)
        camera = {"u": cam_u, "v": cam_v, "zoom": zoom, "class": camera_conditions(scene.camera, T)}
    pillar_cols = None  # [W] pillar coverage per column
    if scene.pillar_u is not None:
        pillar_cols = _box_overlap(np.array([W / 2 + scene.pillar_u * s]), PILLAR_WIDTH * s / 2,
                                   np.arange(W, dtype=np.float64))[0].astype(np.float32)

    tracks = []
    for obj in scene.objects:
        u, v = obj.trajectory(times, W / (2 * s), H / (2 * s))
        if camera is None:
            cx, cy = W / 2 + u * s, H / 2 + v * s  # [T] box centre in pixels
            d = obj.diameter * s
        else:  # through the camera: on-screen centre and side [T]
            cx = W / 2 + (u - camera["u"]) * camera["zoom"] * s
            cy = H / 2 + (v - camera["v"]) * camera["zoom"] * s
            d = obj.diameter * s * camera["zoom"]
        half = d / 2
        visible = np.zeros(T, dtype=np.float64)
        # rows / columns this object touches over the whole clip, clipped to the frame
        reach = float(np.max(half))
        x0, x1 = max(0, int(np.floor(cx.min() - reach - 1))), min(W, int(np.ceil(cx.max() + reach + 1)))
        y0, y1 = max(0, int(np.floor(cy.min() - reach - 1))), min(H, int(np.ceil(cy.max() + reach + 1)))
        if x0 < x1 and y0 < y1:
            xs = np.arange(x0, x1, dtype=np.float64)
            ys = np.arange(y0, y1, dtype=np.float64)
            cov = _coverage(obj.shape, cx, cy, half, xs, ys).astype(np.float32)  # [T, h, w]
            seen = cov if pillar_cols is None else cov * (1 - pillar_cols[x0:x1])
            visible = seen.sum(axis=(1, 2), dtype=np.float64) / (_AREA[obj.shape] * d * d)
            region = canvas[:, y0:y1, x0:x1]  # view: composite in place, "over" operator
            color = np.asarray(COLORS[obj.color], dtype=np.float32)
            region += cov[..., None] * (color - region)
        centroid_y = cy + (d / 6 if obj.shape == "triangle" else 0.0)
        tracks.append({"x": cx, "y": centroid_y, "size": np.full(T, d), "visible": np.clip(visible, 0.0, 1.0),
                       "color": obj.color, "shape": obj.shape, "motion": obj.motion, "speed": obj.speed})

    cols = np.nonzero(pillar_cols)[0] if pillar_cols is not None else np.zeros(0, dtype=int)
    if cols.size:  # a pillar in view
        a, b = int(cols.min()), int(cols.max()) + 1
        region = canvas[:, :, a:b]
        region += pillar_cols[a:b, None] * (np.asarray(PILLAR_COLOR, dtype=np.float32) - region)

    frames = np.rint(canvas, out=canvas).astype(np.uint8)
    return Render(frames=frames, tracks=tracks, times=times, fps=float(fps), spec=scene.spec, camera=camera)
