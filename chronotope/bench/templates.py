"""The World's three shapes as World-bench measures them: each one's fill ratio and vertical skew, and, for noisy
videos, a robust noise estimate, an exact 3x3 median filter and the matched-template measure of an object (the
coverage of a circle, a square and a triangle of its area at its centroid; the best fit gives shape and extent).
"""

from __future__ import annotations

import numpy as np

from chronotope.bench.palette import REFS

# The fill ratio (area / bbox area) and the vertical skewness of the area (SKEW) of each shape in the continuum;
# shape_of splits between them. World triangles stand apex up: 2/3 of their area lies in the lower half.
FILL: dict[str, float] = {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5}
SKEW: dict[str, float] = {"circle": 0.0, "square": 0.0, "triangle": -2 * np.sqrt(2) / 5}  # -0.566

NOISY_SIGMA = 6.0  # noise std (0-255 levels) above which detection denoises; World renders estimate 0
NOISY_OBJECT = 1.5  # ... where a solid component must be this many times larger to count as an object
_SCALES = (0.8, 0.9, 1.0, 1.1, 1.2)  # template sizes tried, relative to the component's area


def estimate_noise(frames: np.ndarray, max_frames: int = 8) -> float:
    """Robust per-pixel noise std of frames uint8 [T, H, W, 3] in 0-255 levels (0 for flat synthetic renders).

    Median absolute difference of horizontally neighbouring pixels / (0.6745 * sqrt 2): flat regions,
    which are most pixels of a World video, give 0 without noise; edges are too few to move the median.
    """
    f = frames[:: max(1, frames.shape[0] // max_frames)].astype(np.int16)  # a sample of <= ~max_frames frames
    if f.shape[2] < 2:
        return 0.0
    return float(np.median(np.abs(f[:, :, 1:] - f[:, :, :-1]))) / (0.6745 * np.sqrt(2.0))


def median3(frames: np.ndarray) -> np.ndarray:
    """Exact 3x3 spatial median of each frame and channel, frames uint8 [T, H, W, C] -> same (edges replicated).

    Sort every horizontal triple (lo <= mid <= hi), then the median of the 9 is the median of
    (max of the 3 lo's, median of the 3 mid's, min of the 3 hi's) over the vertical triple: 19 min/max ops.
    """
    p = np.pad(frames, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")  # [T, H+2, W+2, C]
    a, b, c = p[:, :, :-2], p[:, :, 1:-1], p[:, :, 2:]  # [T, H+2, W, C] each

    def sort3(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        mid = np.maximum(lo, np.minimum(hi, c))
        return np.minimum(lo, c), mid, np.maximum(hi, c)

    lo, mid, hi = sort3(a, b, c)
    lo = np.maximum(np.maximum(lo[:, :-2], lo[:, 1:-1]), lo[:, 2:])  # [T, H, W, C]
    hi = np.minimum(np.minimum(hi[:, :-2], hi[:, 1:-1]), hi[:, 2:])
    mid = sort3(mid[:, :-2], mid[:, 1:-1], mid[:, 2:])[1]
    return sort3(lo, mid, hi)[1]


def _template(shape: str, d: float, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Coverage [h, w] of a shape of size d (diameter / side / base = height) whose centroid is at offsets 0.

    dx [1, w], dy [h, 1]: pixel-centre offsets from the centroid. Same edges as world.render's coverage.
    """
    half = d / 2
    if shape == "circle":
        return np.clip(half + 0.5 - np.sqrt(dx * dx + dy * dy), 0.0, 1.0)
    if shape == "square":
        return np.clip(half + 0.5 - np.abs(dx), 0.0, 1.0) * np.clip(half + 0.5 - np.abs(dy), 0.0, 1.0)
    dy = dy + half / 3  # offsets from the box centre: a triangle's centroid lies d/6 below it
    rows = np.clip(half + 0.5 - np.abs(dy), 0.0, 1.0)
    return rows * np.clip(0.5 - (2 * np.abs(dx) - dy - half) / np.sqrt(5.0), 0.0, 1.0)


def template_measure(
    frame: np.ndarray, obj: np.ndarray, body: np.ndarray, lab: np.ndarray, root: int, k: int,
    bg: np.ndarray, box: tuple[int, int, int, int], pillar: tuple[int, int] | None,
) -> tuple[float, float, float, float, float]:
    """(area, width, height, skew, plateau 1) of one component of a denoised frame from its best-fitting template.

    The coverage alpha (projection on color - background, as in _soft_measure) over the box grown by 3 px
    is compared with each shape of the component's area at its centroid; the returned (area, w, h) have
    the best shape's fill ratio, size and skew, so Detections.fill / extent / skew read as for clean videos.
    """
    H, W = obj.shape
    y0, y1, x0, x1 = box
    ya, yb, xa, xb = max(y0 - 3, 0), min(y1 + 4, H), max(x0 - 3, 0), min(x1 + 4, W)
    own = lab[ya:yb, xa:xb] == root  # [h, w]
    o = obj[ya:yb, xa:xb]
    weight = ~((o >= 0) & (o != k) & body[ya:yb, xa:xb])  # other objects may cover this one: no evidence
    if pillar is not None:
        weight[:, max(pillar[0] - 1 - xa, 0):max(pillar[1] + 2 - xa, 0)] = False
    v = REFS[k] - bg  # [3]
    n2 = float(v @ v)
    if n2 < 30.0**2:
        alpha = own.astype(np.float32)
    else:
        alpha = np.clip((frame[ya:yb, xa:xb].astype(np.float32) - bg) @ v / n2, 0.0, 1.0)
    area = float(own.sum())
    ys, xs = np.nonzero(own)
    dy = (np.arange(ya, yb, dtype=np.float32) - (ys.mean() + ya))[:, None]  # [h, 1]
    dx = (np.arange(xa, xb, dtype=np.float32) - (xs.mean() + xa))[None, :]  # [1, w]
    best, best_d, best_err = "circle", 0.0, np.inf
    for shape, fill in FILL.items():
        for scale in _SCALES:  # the component's area is itself noisy (ragged rim): search the size too
            d = scale * np.sqrt(area / fill)
            err = float((weight * (alpha - _template(shape, d, dx, dy)) ** 2).sum())
            if err < best_err:
                best, best_d, best_err = shape, d, err
    return FILL[best] * best_d * best_d, best_d, best_d, SKEW[best], 1.0
