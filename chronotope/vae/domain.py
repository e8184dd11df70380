"""Is an input inside what a model was trained on? Its VAE's own reconstruction error says so.

A VAE codes well only what it was trained on: the shipped World VAE reconstructs World clips at about
31 dB PSNR (25-39 dB over 24 rendered clips) but real footage at about 20 dB. The DiT sees only latents,
so an input the VAE cannot code is one the DiT never saw either: editing, extending or animating it gives
black frames or noise. `chronotope reconstruct` and every generation mode that takes an image or a video
measure this and say so (a note on stderr and in the sidecar) instead of returning a bad result as normal.

    psnr = reconstruction_psnr(vae, frames)            # uint8 [T, H, W, 3] -> dB
    text = domain_note(psnr, "the video")               # None when in domain, else a sentence for the user
"""

from __future__ import annotations

import numpy as np
import torch

from chronotope.vae.losses import psnr_from_mse
from chronotope.vae.tiling import TILE_OVERLAP, auto_tile

# what the shipped World VAE reaches on World clips (median of 24 rendered 64px clips, 1 and 17 frames)
DOMAIN_PSNR = 31.0
# an input this far below it is out of the model's domain: the worst of those World clips was 25.1 dB,
# a smooth colour ramp 24.2 dB; real footage 19-21 dB, noise 10 dB
DOMAIN_MARGIN = 8.0
# frames of a given video checked (the first 4k+1): enough to judge, a bounded cost for long videos
CHECK_FRAMES = 17


@torch.no_grad()
def reconstruction_psnr(vae, frames: np.ndarray) -> float:
    """PSNR (dB) of uint8 frames [T, H, W, 3] (H, W multiples of the VAE's factor) against their encode + decode
    through `vae`, over the first CHECK_FRAMES (4k+1) frames."""
    T = min(len(frames), CHECK_FRAMES)
    T = (T - 1) // vae.config.temporal_factor * vae.config.temporal_factor + 1
    device = next(vae.parameters()).device
    x = torch.from_numpy(np.ascontiguousarray(frames[:T])).to(device).float() / 127.5 - 1.0  # [T, H, W, 3]
    x = x.permute(3, 0, 1, 2)[None]  # [1, 3, T, H, W]
    tile = auto_tile(*x.shape[-2:], vae.config.spatial_factor)  # large frames in tiles: flat memory
    y = vae.decode(vae.encode(x, chunk_frames=None if tile is None else 4, tile_size=tile, tile_overlap=TILE_OVERLAP
                              ).mode(), tile_size=tile, tile_overlap=TILE_OVERLAP)
    return psnr_from_mse(float((y - x).square().mean()))


def domain_note(psnr: float, what: str, usual: float = DOMAIN_PSNR, margin: float = DOMAIN_MARGIN) -> str | None:
    """A note for the user when `what` (e.g. "the video") reconstructs at `psnr` dB, far below the `usual` dB
    of the model's own data; None when it is within `margin` of it."""
    if psnr >= usual - margin:
        return None
    return (f"{what} is out of the model's domain: its VAE reconstructs it at {psnr:.1f} dB PSNR, against about "
            f"{usual:.0f} dB on the data it was trained on (the shipped model: World clips only), so results on it "
            "are unreliable (black frames or noise are likely); train or fine-tune on such footage first")
