"""Spatial tiling with linearly blended overlaps, so the VAE's memory does not grow with frame size.

A frame is cut into overlapping tiles, each tile is coded alone, and the results are stitched with
weights that ramp linearly across each overlap (weights of neighbouring tiles sum to one there).
The stitch divides by the summed weights, so a position-wise function is reproduced exactly and a
convolutional one differs only near tile borders, where the blend hides the seams.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

# automatic tiles (auto_tile): at most TILE x TILE pixels each, overlapping by TILE_OVERLAP. Measured on the
# shipped World VAE, reconstruct of a 33-frame 1280x720 clip (README "Reconstruct"): untiled, the mid blocks'
# attention over all 14,400 latent positions of a frame held several GB; 384-pixel tiles bound it.
TILE = 384
TILE_OVERLAP = 32


def tile_spans(size: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """[start, end) spans of length `tile` stepping by tile - overlap; the last one ends at `size`."""
    if tile >= size:
        return [(0, size)]
    if not 0 <= overlap < tile:
        raise ValueError(f"tile_overlap must be >= 0 and smaller than tile_size ({tile}), got {overlap}")
    stride = tile - overlap
    starts = list(range(0, size - tile, stride)) + [size - tile]
    return [(s, s + tile) for s in starts]


def fit_tile(size: int, max_tile: int, overlap: int, multiple: int) -> int:
    """The smallest tile (a multiple of `multiple`, at most max(size, max_tile)) that covers `size` in as few
    tiles of at most `max_tile` as possible, so the last tile is not pushed back over its neighbour."""
    if size <= max_tile:
        return size
    count = math.ceil((size - overlap) / (max_tile - overlap))
    tile = math.ceil((size + (count - 1) * overlap) / count)
    return min(size, math.ceil(tile / multiple) * multiple)


def auto_tile(height: int, width: int, multiple: int, max_tile: int = TILE,
              overlap: int = TILE_OVERLAP) -> tuple[int, int] | None:
    """(tile_h, tile_w) in pixels for frames of height x width, or None when one tile covers the frame.
    Tiles are at most max_tile pixels a side, so a coder's working memory stays flat as frames grow."""
    if height <= max_tile and width <= max_tile:
        return None
    return fit_tile(height, max_tile, overlap, multiple), fit_tile(width, max_tile, overlap, multiple)


def _ramp(length: int, overlap: int, ramp_in: bool, ramp_out: bool) -> torch.Tensor:
    """Weights along one axis of a tile: 1 inside, linear ramps over `overlap` at blended edges. [length]"""
    w = torch.ones(length)
    n = min(overlap, length)
    if n > 0:
        up = (torch.arange(n, dtype=torch.float32) + 0.5) / n  # strictly positive, up[k] + up[n-1-k] = 1
        if ramp_in:
            w[:n] = torch.minimum(w[:n], up)
        if ramp_out:
            w[-n:] = torch.minimum(w[-n:], up.flip(0))
    return w


def tiled_call(
    fn: Callable[[torch.Tensor, int], torch.Tensor],
    x: torch.Tensor,
    tile: int | tuple[int, int],
    overlap: int,
    scale: tuple[int, int] = (1, 1),
) -> torch.Tensor:
    """Apply `fn(x_tile, tile_index)` on overlapping spatial tiles of x and blend the outputs.

    x: [B, C, T, H, W]; tile (one side, or (height, width)), overlap in x's pixels; fn maps [B, C, T, h, w]
    to [B, C', T', h*s, w*s] with s = scale[0] / scale[1] (8/1 for a decoder, 1/8 for an encoder). tile,
    overlap and tile starts must be multiples of scale[1]. `tile_index` lets fn keep per-tile state (a causal cache).
    Returns [B, C', T', H*s, W*s].
    """
    num, den = scale
    H, W = x.shape[-2:]
    tile_h, tile_w = (tile, tile) if isinstance(tile, int) else tile
    for name, value in (("tile_size", tile_h), ("tile_size", tile_w), ("tile_overlap", overlap), ("height", H),
                        ("width", W)):
        if value % den:
            raise ValueError(f"{name} must be a multiple of {den} here, got {value}")
    rows, cols = tile_spans(H, tile_h, overlap), tile_spans(W, tile_w, overlap)
    out_overlap = overlap * num // den
    out = weight = None
    index = 0
    for i, (h0, h1) in enumerate(rows):
        for j, (w0, w1) in enumerate(cols):
            y = fn(x[..., h0:h1, w0:w1], index)  # [B, C', T', (h1-h0)*s, (w1-w0)*s]
            index += 1
            if out is None:
                out = y.new_zeros(*y.shape[:3], H * num // den, W * num // den)
                weight = y.new_zeros(out.shape[-2:])
            wh = _ramp(y.shape[-2], out_overlap, i > 0, i < len(rows) - 1)
            ww = _ramp(y.shape[-1], out_overlap, j > 0, j < len(cols) - 1)
            w2 = (wh[:, None] * ww[None, :]).to(y)  # [h, w]
            oh, ow = h0 * num // den, w0 * num // den
            out[..., oh : oh + y.shape[-2], ow : ow + y.shape[-1]] += y * w2
            weight[oh : oh + y.shape[-2], ow : ow + y.shape[-1]] += w2
    return out / weight
