"""The World's camera: pans and zooms over a textured background, opt-in per scene.

Objects live in world coordinates (units of s = min(H, W), origin at the centre of the first frame, v down);
the camera maps them to the screen as  screen = (world - centre(t)) * zoom(t),  so an object's motion on
screen is its own motion combined with the camera's. A camera that pans left moves its centre left, so the
background (and every still object) slides right on screen; zooming in grows zoom(t) = exp(rate * t).

    pan  left / right / up / down   slow 0.12, fast 0.25 of min(H, W) per second (the speeds of the objects)
    zoom in / out                   slow 0.10, fast 0.20 per second in log scale (x1.5 / x2.2 over 4 s)

A plain background shows no camera motion, so camera scenes draw one of TEXTURES in world coordinates, in a
neutral shade near the background colour (close enough that World-bench still reads the background colour
and never an object colour or the pillar).

Per-frame conditioning (dit/conditioning.py) reads one integer class per pixel frame from CAMERA_CLASSES:
0 is static, then one per (motion, speed), e.g. "pan-left:slow" -> 1. `parse_camera` turns a user's value
into that class.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CAMERA_MOTIONS: tuple[str, ...] = ("static", "pan-left", "pan-right", "pan-up", "pan-down", "zoom-in", "zoom-out")
CAMERA_SPEEDS: tuple[str, ...] = ("slow", "fast")
# the per-frame condition's classes: 0 static, then every moving (motion, speed) in this order
CAMERA_CLASSES: tuple[str, ...] = ("static",) + tuple(f"{m}:{s}" for m in CAMERA_MOTIONS[1:] for s in CAMERA_SPEEDS)
PAN_SPEED = {"slow": 0.12, "fast": 0.25}
ZOOM_RATE = {"slow": 0.10, "fast": 0.20}
PAN_DIRECTIONS = {"pan-left": (-1.0, 0.0), "pan-right": (1.0, 0.0), "pan-up": (0.0, -1.0), "pan-down": (0.0, 1.0)}
TEXTURES: tuple[str, ...] = ("grid", "dots", "stars")
# texture shade per background: nearest to its own background colour, never to an object colour or the pillar
TEXTURE_SHADE = {"black": 38.0, "white": 200.0, "gray": 165.0}
_PERIOD = {"grid": 0.2, "dots": 0.2, "stars": 0.125}  # lattice period, units of min(H, W)
_LINE, _DOT, _STAR = 0.016, 0.035, 0.022  # grid half line width, dot radius, star radius


@dataclass(frozen=True)
class Camera:
    """One camera motion of a clip: `motion` in CAMERA_MOTIONS, `speed` in CAMERA_SPEEDS (None when static)."""

    motion: str = "static"
    speed: str | None = None

    def __post_init__(self) -> None:
        if self.motion not in CAMERA_MOTIONS:
            raise ValueError(f"unknown camera motion {self.motion!r}; valid: {', '.join(CAMERA_MOTIONS)}")
        if self.motion != "static" and self.speed not in CAMERA_SPEEDS:
            raise ValueError(f"camera speed must be one of {', '.join(CAMERA_SPEEDS)}, got {self.speed!r}")

    @property
    def label(self) -> str:
        """Its CAMERA_CLASSES name: "static" or "pan-left:slow"."""
        return "static" if self.motion == "static" else f"{self.motion}:{self.speed}"

    @property
    def index(self) -> int:
        return CAMERA_CLASSES.index(self.label)

    def spec(self) -> dict:
        return {"motion": self.motion, "speed": None if self.motion == "static" else self.speed}

    def track(self, times: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Centre (cu, cv) in world units and zoom factor at `times` [T] seconds; each [T] float64."""
        t = np.asarray(times, dtype=np.float64)
        cu, cv, zoom = np.zeros_like(t), np.zeros_like(t), np.ones_like(t)
        if self.motion in PAN_DIRECTIONS:
            su, sv = PAN_DIRECTIONS[self.motion]
            cu, cv = su * PAN_SPEED[self.speed] * t, sv * PAN_SPEED[self.speed] * t
        elif self.motion in ("zoom-in", "zoom-out"):
            zoom = np.exp((1.0 if self.motion == "zoom-in" else -1.0) * ZOOM_RATE[self.speed] * t)
        return cu, cv, zoom


def parse_camera(value: str) -> int:
    """A user's camera value ("static", "pan-left:slow", "zoom-in:fast"; "pan-left" means slow) -> its class
    index in CAMERA_CLASSES; ValueError naming the valid values."""
    text = str(value).strip().lower().replace("_", "-").replace(" ", "-")
    if text in CAMERA_MOTIONS[1:]:
        text += ":slow"
    if text not in CAMERA_CLASSES:
        raise ValueError(f"unknown camera {value!r}; valid: {', '.join(CAMERA_CLASSES)} "
                         f"(a motion alone means :slow)")
    return CAMERA_CLASSES.index(text)


def camera_of(spec_camera: dict | None) -> Camera:
    """The Camera of a spec's "camera" entry ({"motion", "speed"}); None or a missing entry: static."""
    if not spec_camera:
        return Camera()
    if not isinstance(spec_camera, dict):
        raise ValueError(f"a spec's camera is {{'motion': ..., 'speed': ...}}, got {spec_camera!r}")
    return Camera(spec_camera.get("motion") or "static", spec_camera.get("speed"))


def camera_conditions(camera: Camera, num_frames: int) -> list[int]:
    """One class index per pixel frame (the camera moves the same way all clip long)."""
    return [camera.index] * int(num_frames)


def sample_camera(rng: np.random.Generator, static_share: float = 1 / 7) -> Camera:
    """A camera drawn from `rng`: static with `static_share`, else a uniform moving motion and speed."""
    if rng.random() < static_share:
        return Camera()
    return Camera(str(rng.choice(CAMERA_MOTIONS[1:])), str(rng.choice(CAMERA_SPEEDS)))


def _hash(i: np.ndarray, j: np.ndarray, salt: int) -> np.ndarray:
    """Deterministic pseudo-random numbers in [0, 1) per integer lattice cell (i, j)."""
    h = (i.astype(np.int64) * 73856093) ^ (j.astype(np.int64) * 19349663) ^ (salt * 83492791)
    h = (h ^ (h >> 13)) * 1274126177
    return ((h ^ (h >> 16)) & 0xFFFF).astype(np.float32) / 65536.0


def texture_alpha(texture: str, wu: np.ndarray, wv: np.ndarray, px: np.ndarray) -> np.ndarray:
    """Coverage in [0, 1] of `texture` at world points (wu, wv) (units of min(H, W)); px: pixels per world unit
    at each point (anti-aliasing: edges spread over one pixel). Arrays broadcast together."""
    if texture not in TEXTURES:
        raise ValueError(f"unknown texture {texture!r}; valid: {', '.join(TEXTURES)}")
    p = _PERIOD[texture]
    fu, fv = wu / p, wv / p
    if texture == "grid":
        du = np.abs(fu - np.round(fu)) * p  # distance to the nearest vertical line
        dv = np.abs(fv - np.round(fv)) * p
        return np.clip((_LINE - np.minimum(du, dv)) * px + 0.5, 0.0, 1.0)
    if texture == "dots":
        dist = np.hypot(fu - np.round(fu), fv - np.round(fv)) * p
        return np.clip((_DOT - dist) * px + 0.5, 0.0, 1.0)
    iu, iv = np.floor(fu), np.floor(fv)  # stars: one star at a random spot of most lattice cells
    ju, jv = 0.2 + 0.6 * _hash(iu, iv, 1), 0.2 + 0.6 * _hash(iu, iv, 2)
    on = _hash(iu, iv, 3) < 0.7
    dist = np.hypot(fu - iu - ju, fv - iv - jv) * p
    return np.where(on, np.clip((_STAR - dist) * px + 0.5, 0.0, 1.0), 0.0)


def draw_background(canvas: np.ndarray, base: tuple[int, int, int], background: str, texture: str,
                    camera: Camera, times: np.ndarray) -> None:
    """Composite `texture` as the camera sees it at `times` onto canvas float32 [T, H, W, 3] (filled with `base`)."""
    T, H, W, _ = canvas.shape
    s = min(H, W)
    cu, cv, zoom = camera.track(times)  # [T] each
    scale = (s * zoom)[:, None, None]  # [T, 1, 1] pixels per world unit
    x = (np.arange(W) + 0.5 - W / 2)[None, None, :]  # [1, 1, W]
    y = (np.arange(H) + 0.5 - H / 2)[None, :, None]  # [1, H, 1]
    wu = cu[:, None, None] + x / scale  # [T, 1, W]
    wv = cv[:, None, None] + y / scale  # [T, H, 1]
    alpha = texture_alpha(texture, wu, wv, scale).astype(np.float32)  # [T, H, W]
    shade = np.float32(TEXTURE_SHADE[background])
    canvas += alpha[..., None] * (shade - np.asarray(base, dtype=np.float32))


__all__ = ["CAMERA_CLASSES", "CAMERA_MOTIONS", "CAMERA_SPEEDS", "Camera", "PAN_SPEED", "TEXTURES", "ZOOM_RATE",
           "camera_conditions", "camera_of", "draw_background", "parse_camera", "sample_camera", "texture_alpha"]
