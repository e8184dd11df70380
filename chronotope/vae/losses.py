"""VAE training objective and reconstruction metrics, with no downloaded weights (no LPIPS).

loss = L1 + ssim_weight * (1 - SSIM) + grad_weight * L1 of image gradients + kl_weight * KL.
SSIM (Wang et al. 2004, Gaussian window) and image-gradient L1 push toward sharp edges, but they trade
against PSNR: on World images (world preset, 200 steps, docs/training-world.md) L1 alone reached
22.4 dB, L1 + 0.2 SSIM 20.0 dB, L1 + 0.5 gradient 20.2 dB, L1 + 0.05 SSIM 21.5 dB. The defaults keep a
small SSIM term and no gradient term. The KL is summed over latent values and divided by the number
of pixel values, so kl_weight = 1e-6 means what it means in Stable Diffusion's VAE (a nearly deterministic latent).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from chronotope.vae.model import DiagonalGaussian


def _frames(x: torch.Tensor) -> torch.Tensor:
    """[B, C, T, H, W] or [B, C, H, W] -> frames [N, C, H, W]."""
    if x.ndim == 5:
        return x.transpose(1, 2).flatten(0, 1)  # [B*T, C, H, W]
    if x.ndim == 4:
        return x
    raise ValueError(f"expected [B, C, T, H, W] or [B, C, H, W], got shape {tuple(x.shape)}")


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """PSNR in dB between two tensors in [-1, 1] (peak-to-peak 2), over all values: a 0-dim tensor."""
    if a.shape != b.shape:
        raise ValueError(f"psnr needs equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
    mse = F.mse_loss(a.float(), b.float()).clamp_min(1e-12)
    return 10.0 * torch.log10(4.0 / mse)


def psnr_from_mse(mse: float) -> float:
    """PSNR in dB of a mean squared error between values in [-1, 1] (peak-to-peak 2), as `psnr` computes it;
    for errors accumulated chunk by chunk (chronotope reconstruct decodes a clip in bounded memory)."""
    return 10.0 * math.log10(4.0 / max(mse, 1e-12))


def _gaussian_window(size: int, sigma: float, channels: int, like: torch.Tensor) -> torch.Tensor:
    coords = torch.arange(size, dtype=like.dtype, device=like.device) - (size - 1) / 2
    g = torch.exp(-coords.square() / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()  # [C, 1, k, k]


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM over frames and channels of two tensors in [-1, 1] ([B, C, T, H, W] or [B, C, H, W]).
    Gaussian window (shrunk to fit frames smaller than `window`), valid positions only. Differentiable."""
    if a.shape != b.shape:
        raise ValueError(f"ssim needs equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
    x, y = _frames(a.float()), _frames(b.float())
    C = x.shape[1]
    k = min(window, x.shape[-2], x.shape[-1])
    k -= 1 - k % 2  # odd
    w = _gaussian_window(k, sigma * k / window, C, x)
    c1, c2 = (0.01 * 2.0) ** 2, (0.03 * 2.0) ** 2  # data range 2

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, w, groups=C)

    mx, my = blur(x), blur(y)
    sxx = blur(x * x) - mx.square()
    syy = blur(y * y) - my.square()
    sxy = blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx.square() + my.square() + c1) * (sxx + syy + c2))
    return s.mean()


def gradient_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """L1 between the spatial (and, for videos, temporal) finite differences of a and b."""
    loss = (a.diff(dim=-1) - b.diff(dim=-1)).abs().mean() + (a.diff(dim=-2) - b.diff(dim=-2)).abs().mean()
    if a.ndim == 5 and a.shape[2] > 1:
        loss = loss + (a.diff(dim=2) - b.diff(dim=2)).abs().mean()
    return loss


def vae_loss(
    x: torch.Tensor,
    recon: torch.Tensor,
    posterior: DiagonalGaussian,
    kl_weight: float = 1e-6,
    ssim_weight: float = 0.05,
    grad_weight: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """x, recon: [B, 3, T, H, W] in [-1, 1] -> (scalar loss, metrics: l1, ssim, grad, kl, psnr, loss)."""
    if x.shape != recon.shape:
        raise ValueError(f"x and recon must have equal shapes, got {tuple(x.shape)} and {tuple(recon.shape)}")
    l1 = (recon - x).abs().mean()
    s = ssim(recon, x) if ssim_weight else recon.new_zeros(())
    g = gradient_l1(recon, x) if grad_weight else recon.new_zeros(())
    kl = posterior.kl().mean() / (x[0].numel())  # per pixel value
    loss = l1 + ssim_weight * (1.0 - s) + grad_weight * g + kl_weight * kl
    with torch.no_grad():
        p = psnr(recon.detach().clamp(-1, 1), x)
    metrics = {"loss": loss, "l1": l1, "ssim": s, "grad": g, "kl": kl, "psnr": p}
    metrics = {k: v.item() for k, v in metrics.items()}
    return loss, metrics
