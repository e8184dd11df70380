"""World-bench detector: palette classification -> connected components -> per-object measurements.

Every pixel is given the nearest of the World's reference colors (8 object colors, 3 backgrounds,
the pillar) when it lies within `max_dist` of it; same-class 4-connected pixels of a frame form a
component (labelled by vectorised union-find: hook roots, then pointer-jump, O(log N) rounds of
numpy, no scipy). For each object color and frame we keep the component with the most *interior*
pixels (pixels whose 4 neighbours share its class): anti-aliased fringes, e.g. the pink ring that a
red disc on white leaves, are one pixel wide, have no interior and never win or count as objects.

Noisy videos (robust noise estimate from the median absolute difference of neighbouring pixels, Donoho's
MAD estimator, above NOISY_SIGMA levels) are first cleaned by an exact 3x3 median filter per frame and
channel (a median is unbiased even where noise clips at 0 or 255), and each object is then measured by
matched templates instead of its rim: the per-pixel coverage is compared with a circle, a square and a
triangle of the component's area at its centroid, and the best fit gives the shape and the extent.
Residual noise makes the bbox and rim of a component ragged; the sum of squared errors over a template
averages it out. Flicker, which must report the noise, is measured by score.py on the raw frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from chronotope.world.vocab import BACKGROUNDS, COLORS, PILLAR_COLOR

COLOR_NAMES: tuple[str, ...] = tuple(COLORS)  # class ids 0..7
BACKGROUND_NAMES: tuple[str, ...] = tuple(BACKGROUNDS)  # class ids 8..10
PILLAR_CLASS = len(COLORS) + len(BACKGROUNDS)  # 11
_REFS = np.array(
    [COLORS[c] for c in COLOR_NAMES] + [BACKGROUNDS[b] for b in BACKGROUND_NAMES] + [PILLAR_COLOR],
    dtype=np.float32,
)  # [12, 3]

# The fill ratio (area / bbox area) of each shape in the continuum; shape_of_fill splits between them.
FILL: dict[str, float] = {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5}


@dataclass
class Detections:
    """Largest (by interior) component of each object color in each frame; arrays are [T, K], K = 8 colors.

    area: pixels (0 where absent); interior: pixels whose 4 neighbours share the class; cy, cx: centroid
    in pixels; y0, y1, x0, x1: inclusive bbox; present: interior >= 1; significant[T, K]: the color has
    a component large enough to count as an object; pillar: (x0, x1) columns of the pillar or None.
    soft_*: the same component measured with per-pixel coverage alpha = projection of (pixel - background)
    on (color - background), over the component grown by two pixels: exact for anti-aliased edges, so the
    fill ratio of a 7-pixel square is still ~1 (its corner pixels are partly covered, not absent).
    """

    area: np.ndarray
    interior: np.ndarray
    cy: np.ndarray
    cx: np.ndarray
    y0: np.ndarray
    y1: np.ndarray
    x0: np.ndarray
    x1: np.ndarray
    soft_area: np.ndarray  # coverage-weighted area / width / height (anti-aliasing undone), [T, K]
    soft_w: np.ndarray
    soft_h: np.ndarray
    significant: np.ndarray
    pillar: tuple[int, int] | None
    border_color: np.ndarray  # [T, 3] per-frame median of the border pixels
    height: int
    width: int
    noise_sigma: float = 0.0  # estimated per-pixel noise std of the input (0-255 levels)
    denoised: bool = False  # True when detection ran on the median-filtered frames with template fits

    @property
    def present(self) -> np.ndarray:
        return self.interior >= 1

    @property
    def fill(self) -> np.ndarray:
        """Fill ratio area / bbox area from coverage, [T, K] (0 where absent): circle pi/4, square 1, triangle 1/2."""
        box = self.soft_w * self.soft_h
        return np.where(self.present & (box > 0), self.soft_area / np.maximum(box, 1e-9), 0.0)

    @property
    def extent(self) -> np.ndarray:
        """max(width, height) / min(H, W) from coverage, [T, K]: the diameter / side / base of the shape."""
        return np.where(self.present, np.maximum(self.soft_w, self.soft_h) / min(self.height, self.width), 0.0)

    def touches_border(self, margin: int = 0) -> np.ndarray:
        """[T, K] True where the bbox touches the frame edge (the object may be cut by it)."""
        return (
            (self.y0 <= margin) | (self.x0 <= margin)
            | (self.y1 >= self.height - 1 - margin) | (self.x1 >= self.width - 1 - margin)
        )

    def touches_pillar(self, margin: int = 1) -> np.ndarray:
        """[T, K] True where the bbox is within `margin` pixels of the pillar's columns."""
        if self.pillar is None:
            return np.zeros_like(self.present)
        p0, p1 = self.pillar
        return (self.x1 >= p0 - 1 - margin) & (self.x0 <= p1 + 1 + margin)


_LUT: dict[float, np.ndarray] = {}


def _lut(max_dist: float) -> np.ndarray:
    """Class of every color quantised to 6 bits per channel (bin centres), int8 [64**3]; built once per max_dist."""
    if max_dist not in _LUT:
        q = (np.arange(64, dtype=np.float32) * 4 + 1.5)
        grid = np.stack(np.meshgrid(q, q, q, indexing="ij"), -1).reshape(-1, 3)  # [64**3, 3]
        d2 = ((grid[:, None, :] - _REFS) ** 2).sum(-1)  # [64**3, 12]
        cls = d2.argmin(-1).astype(np.int8)
        cls[d2.min(-1) > max_dist**2] = -1
        _LUT[max_dist] = cls
    return _LUT[max_dist]


def classify_pixels(frames: np.ndarray, max_dist: float = 90.0) -> np.ndarray:
    """frames uint8 [T, H, W, 3] -> class map int8 [T, H, W]: nearest reference color id, -1 if none is within max_dist.

    A lookup table over colors quantised to 6 bits per channel (error <= 2 levels per channel).
    """
    q = (frames >> 2).astype(np.int32)  # [T, H, W, 3]
    return _lut(float(max_dist))[(q[..., 0] << 12) | (q[..., 1] << 6) | q[..., 2]]


def label_components(cls: np.ndarray) -> np.ndarray:
    """Connected components of equal class, 4-connectivity within each frame.

    cls int [T, H, W] (-1 = unlabelled) -> labels int64 [T*H*W] (flat): the smallest flat index of
    the pixel's component; unlabelled pixels keep their own index. Union-find in numpy: every round
    hooks the larger root of each still-split edge onto the smaller one, then pointer-jumps to roots.
    """
    T, H, W = cls.shape
    idx = np.arange(T * H * W, dtype=np.int64).reshape(T, H, W)
    eh = (cls[:, :, 1:] == cls[:, :, :-1]) & (cls[:, :, 1:] >= 0)  # [T, H, W-1]
    ev = (cls[:, 1:, :] == cls[:, :-1, :]) & (cls[:, 1:, :] >= 0)  # [T, H-1, W]
    a = np.concatenate([idx[:, :, :-1][eh], idx[:, :-1, :][ev]])
    b = np.concatenate([idx[:, :, 1:][eh], idx[:, 1:, :][ev]])
    lab = idx.reshape(-1).copy()
    while a.size:
        la, lb = lab[a], lab[b]
        split = la != lb
        a, b, la, lb = a[split], b[split], la[split], lb[split]  # merged edges stay merged
        if not a.size:
            break
        lab[np.maximum(la, lb)] = np.minimum(la, lb)  # roots hook onto smaller roots: no cycles
        while True:
            nxt = lab[lab]
            if np.array_equal(nxt, lab):
                break
            lab = nxt
    return lab


def _interior(cls: np.ndarray) -> np.ndarray:
    """[T, H, W] bool: labelled pixels whose 4 neighbours (inside the frame) share their class."""
    pad = np.pad(cls, ((0, 0), (1, 1), (1, 1)), mode="edge")
    c = pad[:, 1:-1, 1:-1]
    same = (pad[:, :-2, 1:-1] == c) & (pad[:, 2:, 1:-1] == c) & (pad[:, 1:-1, :-2] == c) & (pad[:, 1:-1, 2:] == c)
    return same & (c >= 0)


def find_pillar(cls: np.ndarray, min_fraction: float = 0.6) -> tuple[int, int] | None:
    """Columns (x0, x1) where >= min_fraction of all pixels are pillar-colored, or None (no pillar)."""
    col = (cls == PILLAR_CLASS).mean(axis=(0, 1))  # [W]
    cols = np.flatnonzero(col >= min_fraction)
    if cols.size == 0:
        return None
    return int(cols.min()), int(cols.max())


def _soft_measure(
    frame: np.ndarray, obj: np.ndarray, body: np.ndarray, lab: np.ndarray, root: int, k: int,
    bg: np.ndarray, box: tuple[int, int, int, int], pillar: tuple[int, int] | None,
) -> tuple[float, float, float]:
    """(area, width, height) of one component from per-pixel coverage; 2-D inputs are one frame [H, W]."""
    H, W = obj.shape
    y0, y1, x0, x1 = box
    ya, yb, xa, xb = max(y0 - 2, 0), min(y1 + 3, H), max(x0 - 2, 0), min(x1 + 3, W)
    own = lab[ya:yb, xa:xb] == root  # [h, w]
    grown = own
    for _ in range(2):  # two 3x3 dilations: the anti-aliased rim, whose outer pixels fail the color test
        g = grown.copy()
        g[:, 1:] |= grown[:, :-1]
        g[:, :-1] |= grown[:, 1:]
        grown = g.copy()
        grown[1:] |= g[:-1]
        grown[:-1] |= g[1:]
    o = obj[ya:yb, xa:xb]
    grown &= ~((o >= 0) & (o != k) & body[ya:yb, xa:xb])  # never another object (its rim included)
    if pillar is not None:  # nor the pillar and its anti-aliased columns
        grown[:, max(pillar[0] - 1 - xa, 0):max(pillar[1] + 2 - xa, 0)] = False
    v = _REFS[k] - bg  # [3]
    n2 = float(v @ v)
    if n2 < 30.0**2:  # color too close to the background to unmix: hard mask
        alpha = own.astype(np.float32)
    else:
        alpha = np.clip((frame[ya:yb, xa:xb].astype(np.float32) - bg) @ v / n2, 0.0, 1.0) * grown
    return float(alpha.sum()), float(alpha.max(0).sum()), float(alpha.max(1).sum())


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


def _template_measure(
    frame: np.ndarray, obj: np.ndarray, body: np.ndarray, lab: np.ndarray, root: int, k: int,
    bg: np.ndarray, box: tuple[int, int, int, int], pillar: tuple[int, int] | None,
) -> tuple[float, float, float]:
    """(area, width, height) of one component of a denoised frame from its best-fitting shape template.

    The coverage alpha (projection on color - background, as in _soft_measure) over the box grown by 3 px
    is compared with each shape of the component's area at its centroid; the returned (area, w, h) have
    the best shape's fill ratio and size, so Detections.fill / extent read as for clean videos.
    """
    H, W = obj.shape
    y0, y1, x0, x1 = box
    ya, yb, xa, xb = max(y0 - 3, 0), min(y1 + 4, H), max(x0 - 3, 0), min(x1 + 4, W)
    own = lab[ya:yb, xa:xb] == root  # [h, w]
    o = obj[ya:yb, xa:xb]
    weight = ~((o >= 0) & (o != k) & body[ya:yb, xa:xb])  # other objects may cover this one: no evidence
    if pillar is not None:
        weight[:, max(pillar[0] - 1 - xa, 0):max(pillar[1] + 2 - xa, 0)] = False
    v = _REFS[k] - bg  # [3]
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
    return FILL[best] * best_d * best_d, best_d, best_d


def detect(frames: np.ndarray, max_dist: float = 90.0, min_object: float = 0.001,
           denoise: bool | None = None) -> Detections:
    """Measure every object color in every frame of frames uint8 [T, H, W, 3].

    A color counts as an object in a frame (`significant`) when its best component has at least
    min_object * min(H, W)^2 interior pixels (2 to 4 pixels at 48 to 64 px: a small triangle there has ~6 to 12).
    denoise: median-filter and fit templates (see the module docstring); None = when estimate_noise > NOISY_SIGMA.
    """
    T, H, W, _ = frames.shape
    sigma = estimate_noise(frames)
    noisy = sigma > NOISY_SIGMA if denoise is None else bool(denoise)
    if noisy:
        frames = median3(frames)
    measure = _template_measure if noisy else _soft_measure
    K = len(COLOR_NAMES)
    cls = classify_pixels(frames, max_dist)
    obj = cls.copy()
    obj[(obj < 0) | (obj >= K)] = -1  # only object colors form components
    lab = label_components(obj)
    inner = _interior(obj).reshape(-1)
    flat_cls = obj.reshape(-1)
    pix = np.flatnonzero(flat_cls >= 0)
    out = {k: np.zeros((T, K), dtype=np.float64) for k in ("area", "interior", "cy", "cx", "y0", "y1", "x0", "x1")}
    if pix.size:
        order = np.argsort(lab[pix], kind="stable")
        pix = pix[order]
        roots, starts = np.unique(lab[pix], return_index=True)
        t, rem = np.divmod(pix, H * W)
        y, x = np.divmod(rem, W)
        area = np.diff(np.append(starts, pix.size)).astype(np.float64)
        interior = np.add.reduceat(inner[pix].astype(np.float64), starts)
        cy = np.add.reduceat(y.astype(np.float64), starts) / area
        cx = np.add.reduceat(x.astype(np.float64), starts) / area
        y0, y1 = np.minimum.reduceat(y, starts), np.maximum.reduceat(y, starts)
        x0, x1 = np.minimum.reduceat(x, starts), np.maximum.reduceat(x, starts)
        ct = t[starts]
        ck = flat_cls[roots].astype(np.int64)
        # best component per (frame, color): most interior pixels, then largest area
        best = np.lexsort((area, interior, ct * K + ck))
        key = (ct * K + ck)[best]
        last = np.append(key[1:] != key[:-1], True)
        sel = best[last]
        for name, val in (("area", area), ("interior", interior), ("cy", cy), ("cx", cx),
                          ("y0", y0), ("y1", y1), ("x0", x0), ("x1", x1)):
            out[name][ct[sel], ck[sel]] = val[sel]
    m = min(H, W)
    significant = out["interior"] >= max(2.0, min_object * m * m * (NOISY_OBJECT if noisy else 1.0))
    border = np.concatenate(
        [frames[:, 0], frames[:, -1], frames[:, 1:-1, 0], frames[:, 1:-1, -1]], axis=1
    )  # [T, 2W + 2(H-2), 3]
    border_color = np.median(border.astype(np.float32), axis=1)  # [T, 3]
    pillar = find_pillar(cls)
    soft = {k: np.zeros((T, K), dtype=np.float64) for k in ("soft_area", "soft_w", "soft_h")}
    if pix.size:
        # pixels of components with an interior (real objects, not anti-aliasing fringes), [T, H, W]
        body = np.zeros(T * H * W, dtype=bool)
        body[pix] = np.repeat(interior >= 1, np.diff(np.append(starts, pix.size)))
        lab3, body3 = lab.reshape(T, H, W), body.reshape(T, H, W)
        for i in sel[out["interior"][ct[sel], ck[sel]] >= 1]:
            ti, ki = int(ct[i]), int(ck[i])
            a, w, h = measure(frames[ti], obj[ti], body3[ti], lab3[ti], int(roots[i]), ki, border_color[ti],
                                    (int(y0[i]), int(y1[i]), int(x0[i]), int(x1[i])), pillar)
            soft["soft_area"][ti, ki], soft["soft_w"][ti, ki], soft["soft_h"][ti, ki] = a, w, h
            if noisy and h > 0:  # the fitted template's box: the raw bbox of a noisy component is ragged
                cyc, cxc = out["cy"][ti, ki] + 0.5, out["cx"][ti, ki] + 0.5  # continuous centroid
                top = cyc - (2 * h / 3 if shape_of_fill(np.float64(a / (w * h))) == 2 else h / 2)
                out["x0"][ti, ki] = max(np.floor(cxc - w / 2 + 0.25), 0)
                out["x1"][ti, ki] = min(np.ceil(cxc + w / 2 - 0.25) - 1, W - 1)
                out["y0"][ti, ki] = max(np.floor(top + 0.25), 0)
                out["y1"][ti, ki] = min(np.ceil(top + h - 0.25) - 1, H - 1)
    return Detections(
        **{k: v for k, v in out.items()},
        **soft,
        significant=significant,
        pillar=pillar,
        border_color=border_color,
        height=H,
        width=W,
        noise_sigma=sigma,
        denoised=noisy,
    )


def nearest_background(rgb: np.ndarray) -> np.ndarray:
    """rgb float [..., 3] -> index into BACKGROUND_NAMES of the nearest background color, [...]."""
    refs = _REFS[len(COLOR_NAMES):PILLAR_CLASS]  # [3, 3]
    return ((rgb[..., None, :] - refs) ** 2).sum(-1).argmin(-1)


def shape_of_fill(fill: np.ndarray) -> np.ndarray:
    """Fill ratio [...] -> shape index into ("circle", "square", "triangle") by the nearest boundary."""
    # measured on World renders at 48-64 px: triangles 0.49-0.67 (1st-99th percentile, the apex
    # pixels are faint), circles 0.68-0.83, squares 0.87-1.0
    return np.where(fill >= 0.89, 1, np.where(fill >= 0.665, 0, 2))
