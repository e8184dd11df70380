"""A clip through a VAE and back in bounded memory, with PSNR / SSIM: what `chronotope reconstruct` runs.

The clip streams through: a time chunk is resized, encoded (causal cache), its latents decoded (causal cache),
compared with the input frame by frame and written out before the next chunk is read, so the numbers are
those of one whole-clip encode + decode while only a few frames are ever held in float. Frames larger than
vae.tiling.TILE pixels a side are coded in blended spatial tiles, and SSIM is summed in row strips, so the
working memory does not grow with the frame size either. Measured on the shipped World VAE (README "What
things cost"): 33 frames of 1280x720 peaked at 9.6 GB of memory before, 2.0 GB with tiles.

    psnr, ssim = reconstruct(vae, frames, 720, 1280, write=out.append)   # frames: uint8 [T, H0, W0, 3]
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from chronotope.data.dataset import resize_crop
from chronotope.vae.losses import psnr_from_mse, ssim
from chronotope.vae.model import CausalVAE, Tile
from chronotope.vae.tiling import TILE, TILE_OVERLAP, auto_tile

SSIM_ROWS = 256  # rows of a frame per SSIM strip


def chunk_frames_for(height: int, width: int, temporal_factor: int, frames: int = 16) -> int:
    """Frames per encoder chunk: `frames` for frames up to a TILE x TILE area, fewer (a multiple of the temporal
    factor) for larger ones, so the chunk in float stays near 16 such frames whatever the frame size."""
    fit = frames * TILE * TILE // (height * width)
    return max(temporal_factor, min(frames, fit // temporal_factor * temporal_factor))


def tile_for(height: int, width: int, spatial_factor: int, tile_size: int | None = None) -> tuple[Tile, int]:
    """(tile, overlap) in pixels: automatic tiles (tile_size None: vae.tiling.auto_tile), whole frames (0, or a
    tile covering the frame), or tile_size x tile_size; tiles overlap by TILE_OVERLAP, at most half a tile."""
    if tile_size is None:
        tile: Tile = auto_tile(height, width, spatial_factor)
    else:
        tile = None if tile_size == 0 or tile_size >= max(height, width) else tile_size
    side = None if tile is None else min(tile) if isinstance(tile, tuple) else tile
    return tile, 0 if side is None else min(TILE_OVERLAP, side // 2 // spatial_factor * spatial_factor)


def frame_errors(ref: torch.Tensor, out: torch.Tensor, rows: int = SSIM_ROWS) -> tuple[float, float]:
    """(mean squared error, SSIM) of one frame pair [3, H, W] in [-1, 1]; SSIM (vae.losses.ssim, valid positions)
    is summed over strips of `rows` rows that overlap by its window, so it equals the whole frame's."""
    mse = float(torch.nn.functional.mse_loss(out, ref))
    H, W = ref.shape[-2:]
    k = 11  # losses.ssim's window; smaller frames shrink it: compute those whole
    if H < k or W < k or H <= rows:
        return mse, float(ssim(ref[None], out[None]))
    total = 0.0
    for r0 in range(0, H - k + 1, rows):
        r1 = min(H, r0 + rows + k - 1)  # valid rows r0 .. r1 - k
        total += float(ssim(ref[None, :, r0:r1], out[None, :, r0:r1])) * (r1 - r0 - k + 1)
    return mse, total / (H - k + 1)


@torch.no_grad()
def reconstruct(vae: CausalVAE, frames: np.ndarray, height: int, width: int, *, tile: Tile = None,
                overlap: int = TILE_OVERLAP, chunk_frames: int | None = None, chunk_latent_frames: int = 1,
                write: Callable[[np.ndarray], None] = lambda chunk: None,
                progress: Callable[[int], object] = lambda n: None) -> tuple[float, float]:
    """Encode and decode uint8 frames [T, H0, W0, 3] (T = 4k+1) at height x width (resized to cover and
    center-cropped), handing each decoded chunk, uint8 [n, height, width, 3], to `write` and its frame count to
    `progress` as it comes. chunk_frames: frames per encoder chunk (None: chunk_frames_for). Returns (PSNR in
    dB, mean SSIM) against the resized input."""
    T = len(frames)
    tf = vae.config.temporal_factor
    chunk_frames = chunk_frames or chunk_frames_for(height, width, tf)

    def pixels(lo: int, hi: int) -> torch.Tensor:
        """Frames [lo, hi) as the VAE takes them: [1, 3, n, height, width] in [-1, 1]."""
        x = torch.from_numpy(frames[lo:hi]).permute(0, 3, 1, 2).float()  # [n, 3, H0, W0]
        x = resize_crop(x, height, width).clamp_(0, 255).div_(127.5).sub_(1.0)
        return x.permute(1, 0, 2, 3)[None]

    spans = [(0, 1)] + [(lo, min(lo + chunk_frames, T)) for lo in range(1, T, chunk_frames)]
    latents = (p.mode() for p in vae.encode_chunks((pixels(lo, hi) for lo, hi in spans), tile, overlap))
    t0, mse_sum, ssim_sum = 0, 0.0, 0.0
    for piece in vae.decode_iter(latents, chunk_latent_frames, tile_size=tile, tile_overlap=overlap):
        n = piece.shape[2]  # [1, 3, n, height, width]
        for i in range(n):
            mse, s = frame_errors(pixels(t0 + i, t0 + i + 1)[0, :, 0], piece[0, :, i])
            mse_sum, ssim_sum = mse_sum + mse, ssim_sum + s
        out = piece[0].add_(1.0).mul_(127.5).round_().clamp_(0, 255).to(torch.uint8)  # [3, n, height, width]
        write(out.permute(1, 2, 3, 0).numpy())
        t0 += n
        progress(n)
    return psnr_from_mse(mse_sum / T), ssim_sum / T
