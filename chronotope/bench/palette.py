"""The World's palette as World-bench reads it: every pixel classified to the nearest reference color (8 object
colors, 3 backgrounds, the pillar) within a distance, an object color also owning its mixes with the frame's
background (see _lut: a generator's slightly dark yellow is yellow, not orange).
"""

from __future__ import annotations

import numpy as np

from chronotope.world.vocab import BACKGROUNDS, COLORS, PILLAR_COLOR

COLOR_NAMES: tuple[str, ...] = tuple(COLORS)  # class ids 0..7
BACKGROUND_NAMES: tuple[str, ...] = tuple(BACKGROUNDS)  # class ids 8..10
PILLAR_CLASS = len(COLORS) + len(BACKGROUNDS)  # 11
REFS = np.array(
    [COLORS[c] for c in COLOR_NAMES] + [BACKGROUNDS[b] for b in BACKGROUND_NAMES] + [PILLAR_COLOR],
    dtype=np.float32,
)  # [12, 3]

SHADE_MIN = 0.45  # an object color mixed with the background down to this share still classifies as that color ...
SHADE_DIST = 40.0  # ... within this distance of the mix (a mix of two other colors, e.g. the pillar's edge, is not)
_LUT: dict[tuple[float, int | None], np.ndarray] = {}


def _lut(max_dist: float, background: int | None = None) -> np.ndarray:
    """Class of every color quantised to 6 bits per channel (bin centres), int8 [64**3]; built once per key.

    background None: the nearest reference color. An index into BACKGROUND_NAMES: each object color is also
    the segment from itself to its mix with that background at SHADE_MIN (b + a (c - b), a in [SHADE_MIN, 1]);
    a pixel that holds at least SHADE_MIN of the color (its projection a) and lies within SHADE_DIST of the
    segment takes that color, so a component ends near where the object covers half a pixel. A slightly dark or
    washed-out shade, as blur or a generator leave it, keeps its hue: (182, 159, 49), inside the shipped model's
    small yellow triangle on black, lies 68 levels from orange and 79 from yellow, but 24 from yellow's segment
    (at a = 0.75).
    """
    key = (max_dist, background)
    if key not in _LUT:
        q = (np.arange(64, dtype=np.float32) * 4 + 1.5)
        grid = np.stack(np.meshgrid(q, q, q, indexing="ij"), -1).reshape(-1, 3)  # [64**3, 3]
        d2 = ((grid[:, None, :] - REFS) ** 2).sum(-1)  # [64**3, 12]
        if background is not None:
            K = len(COLOR_NAMES)
            b = REFS[K + background]  # [3]
            v = REFS[:K] - b  # [8, 3]
            a = ((grid - b) @ v.T) / (v * v).sum(-1)  # [64**3, 8] share of the color along its line from b
            shade = ((grid[:, None, :] - b - np.minimum(a, 1.0)[..., None] * v) ** 2).sum(-1)  # [64**3, 8]
            d2[:, :K] = np.where((a >= SHADE_MIN) & (shade <= SHADE_DIST**2), shade, d2[:, :K])
        cls = d2.argmin(-1).astype(np.int8)
        cls[d2.min(-1) > max_dist**2] = -1
        _LUT[key] = cls
    return _LUT[key]


def classify_pixels(frames: np.ndarray, max_dist: float = 90.0, background: np.ndarray | None = None) -> np.ndarray:
    """frames uint8 [T, H, W, 3] -> class map int8 [T, H, W]: nearest reference color id, -1 if none is within max_dist.

    background: int [T], each frame's index into BACKGROUND_NAMES; object colors then also match their shades
    mixed with it (see _lut). A lookup table over colors quantised to 6 bits per channel (error <= 2 levels).
    """
    q = (frames >> 2).astype(np.int32)  # [T, H, W, 3]
    code = (q[..., 0] << 12) | (q[..., 1] << 6) | q[..., 2]  # [T, H, W]
    if background is None:
        return _lut(float(max_dist))[code]
    out = np.empty(code.shape, dtype=np.int8)
    for b in np.unique(background):
        on = background == b
        out[on] = _lut(float(max_dist), int(b))[code[on]]
    return out


def nearest_background(rgb: np.ndarray) -> np.ndarray:
    """rgb float [..., 3] -> index into BACKGROUND_NAMES of the nearest background color, [...]."""
    refs = REFS[len(COLOR_NAMES):PILLAR_CLASS]  # [3, 3]
    return ((rgb[..., None, :] - refs) ** 2).sum(-1).argmin(-1)
