"""Frame sizes from an area preset and an aspect ratio (Open-Sora / NaViT style resolution buckets).

`resolution` names an area, not a height: "64px" is about 64 * 64 pixels, "480p" about
480 * 853 (the area of a 16:9 frame 480 high). `size_for` picks, for an aspect ratio "W:H",
the height and width that are multiples of 16 (8x VAE * patch 2) closest to that area and ratio:

    size_for("64px", "16:9")  -> (48, 80)     size_for("64px", "9:16") -> (80, 48)
    size_for("64px", "1:1")   -> (64, 64)     size_for("256px", "16:9") -> (192, 336)
"""

from __future__ import annotations

import math
import re

from chronotope.request import arg

MULTIPLE = 16  # height and width of model inputs are multiples of this


def parse_resolution(resolution: str | int) -> int:
    """Target area in pixels of a resolution preset: 64, "64", "64px" (N*N) or "480p" (N * N*16/9)."""
    if isinstance(resolution, int):
        if resolution < MULTIPLE:
            raise ValueError(f"{arg('resolution', resolution)}: must be at least {MULTIPLE}")
        return resolution * resolution
    m = re.fullmatch(r"\s*(\d+)\s*(px|p)?\s*", str(resolution).lower())
    if m is None:
        raise ValueError(f"{arg('resolution', resolution)}: not understood; use e.g. 64px, 256px, 480p or 720p")
    n = int(m.group(1))
    if n < MULTIPLE:
        raise ValueError(f"{arg('resolution', resolution)}: must be at least {MULTIPLE}px")
    if m.group(2) == "p":  # video convention: "480p" is the height of a 16:9 frame
        return round(n * n * 16 / 9)
    return n * n


def parse_aspect_ratio(aspect_ratio: str | float) -> float:
    """Width / height of an aspect ratio written "W:H" (e.g. "16:9") or as a number (e.g. 1.78)."""
    if isinstance(aspect_ratio, (int, float)):
        ratio = float(aspect_ratio)
    else:
        text = str(aspect_ratio).strip()
        try:
            if ":" in text:
                w, h = text.split(":")
                ratio = float(w) / float(h)
            else:
                ratio = float(text)
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"{arg('aspect_ratio', aspect_ratio)}: not understood; use W:H such as 16:9, 1:1 or 9:16")
    if not (ratio > 0 and math.isfinite(ratio)):
        raise ValueError(f"{arg('aspect_ratio', aspect_ratio)}: must be positive and finite, such as 16:9, 1:1 or 9:16")
    return ratio


def size_for(resolution: str | int, aspect_ratio: str | float, multiple: int = MULTIPLE) -> tuple[int, int]:
    """(height, width), multiples of `multiple`, whose area and ratio are closest to the request.

    Rule: among the multiples around the ideal h = sqrt(area / r), w = h * r, take the pair that
    minimises |log(area error)| + 2 |log(ratio error)| (the shape matters more than the pixel count,
    so "32px" at 16:9 is 32x48, not a square); ties go to the smaller frame.
    """
    area = parse_resolution(resolution)
    ratio = parse_aspect_ratio(aspect_ratio)
    h_ideal = math.sqrt(area / ratio)
    w_ideal = h_ideal * ratio

    def around(x: float) -> list[int]:
        lo = max(multiple, int(x // multiple) * multiple)
        return sorted({lo, lo + multiple, max(multiple, lo - multiple)})

    best: tuple[float, int, int, int] | None = None
    for h in around(h_ideal):
        for w in around(w_ideal):
            err = abs(math.log(h * w / area)) + 2 * abs(math.log((w / h) / ratio))
            key = (round(err, 9), h * w, h, w)
            if best is None or key < best:
                best = key
    assert best is not None  # around() is never empty
    return best[2], best[3]


def nearest_multiples(x: int, multiple: int = MULTIPLE, minimum: int | None = None) -> list[int]:
    """The valid values nearest to x (one, or two when x lies between), for error messages."""
    minimum = multiple if minimum is None else minimum
    lo = max(minimum, (x // multiple) * multiple)
    hi = max(minimum, lo + multiple if x > lo else lo)
    return sorted({lo, hi})
