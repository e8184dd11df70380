"""Re-base a trained DiT on a new latent space: keep the transformer trunk, map its input and output layers.

Two VAEs that see the same clip at the same token grid (e.g. `world` at patch 1x1x1 and `world-4x` at patch
1x2x2: 8x8 tokens per 64 px frame) give two descriptions of every token: 16 features in the old latent, 64 in
the new. Least squares over the tokens of a few hundred clips fits both linear maps between them,

    z_old ~= A z_new + a        (new -> old, for the input)
    z_new ~= B z_old + b        (old -> new, for the output)

and the DiT's patch embedding and final projection are composed with them, so the trunk sees, at step 0,
about what it saw before: x_embedder'(z_new) = W_in (A z_new + a) + c_in, and the velocity v_new = eps_new -
x0_new ~= B v_old - b. What the 16 old features cannot say (the new latent's finer detail) starts unmapped and
is learned by fine-tuning.

    maps = fit_latent_maps(old_vae, new_vae, clips, old_patch=(1, 1, 1), new_patch=(1, 2, 2))
    model = rebase_dit(dit, maps, in_channels=new_vae.config.latent_channels, patch=(1, 2, 2))
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from chronotope.dit.model import DiT
from chronotope.dit.patches import Patch, patchify, token_grid


@dataclass
class LinearMap:
    """y ~= weight @ x + bias per token, fitted by least squares; r2 = variance of y explained (0..1)."""

    weight: Tensor  # [Dy, Dx]
    bias: Tensor  # [Dy]
    r2: float

    @classmethod
    def fit(cls, x: Tensor, y: Tensor, ridge: float = 1e-4) -> "LinearMap":
        """x [N, Dx], y [N, Dy] paired rows -> the ridge-regularised least-squares map (float64 solve)."""
        if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
            raise ValueError(f"fit needs paired rows x [N, Dx] and y [N, Dy], got {tuple(x.shape)} and {tuple(y.shape)}")
        if x.shape[0] <= x.shape[1]:
            raise ValueError(f"fit needs more rows ({x.shape[0]}) than features ({x.shape[1]}): give more clips")
        x64, y64 = x.double(), y.double()
        mx, my = x64.mean(0), y64.mean(0)
        xc, yc = x64 - mx, y64 - my
        gram = xc.T @ xc / len(xc)  # [Dx, Dx]
        gram += ridge * torch.eye(gram.shape[0], dtype=gram.dtype) * gram.diagonal().mean()
        weight = torch.linalg.solve(gram, xc.T @ yc / len(xc)).T  # [Dy, Dx]
        residual = yc - xc @ weight.T
        r2 = 1.0 - float(residual.pow(2).sum() / yc.pow(2).sum().clamp_min(1e-12))
        return cls(weight.float(), (my - weight @ mx).float(), r2)


@dataclass
class LatentMaps:
    """Both directions between an old and a new latent space, on the tokens of one grid."""

    new_to_old: LinearMap  # A, a: [D_old, D_new], [D_old]
    old_to_new: LinearMap  # B, b: [D_new, D_old], [D_new]
    tokens: int  # paired tokens the fit saw

    def summary(self) -> dict:
        return {"tokens": self.tokens, "r2_new_to_old": round(self.new_to_old.r2, 4),
                "r2_old_to_new": round(self.old_to_new.r2, 4)}


def paired_tokens(old_latents: list[Tensor], new_latents: list[Tensor], old_patch: Patch,
                  new_patch: Patch) -> tuple[Tensor, Tensor]:
    """Latents of the same clips [C, T, H, W] in both spaces -> their tokens [N, D_old], [N, D_new], row for row.
    ValueError when a clip's two token grids differ (the patches must give both latents one grid)."""
    old_rows, new_rows = [], []
    for zo, zn in zip(old_latents, new_latents, strict=True):
        go, gn = token_grid(tuple(zo.shape[1:]), old_patch), token_grid(tuple(zn.shape[1:]), new_patch)
        if go != gn:
            raise ValueError(f"the two latents give different token grids ({go} at patch {old_patch}, {gn} at "
                             f"{new_patch}); choose patches that cut both into the same grid")
        old_rows.append(patchify(zo, old_patch))  # [L, C_old*p]
        new_rows.append(patchify(zn, new_patch))  # [L, C_new*p]
    return torch.cat(old_rows), torch.cat(new_rows)


@torch.no_grad()
def fit_latent_maps(old_vae: torch.nn.Module, new_vae: torch.nn.Module, clips: list[np.ndarray],
                    old_patch: Patch, new_patch: Patch, batch_size: int = 16) -> LatentMaps:
    """Encode uint8 clips [T, H, W, 3] with both VAEs (normalised latents, posterior mean) and fit both maps."""
    from chronotope.train.world_data import encode_batched

    device = next(old_vae.parameters()).device
    old_z = encode_batched(old_vae.eval(), clips, device, batch_size)
    new_z = encode_batched(new_vae.eval(), clips, device, batch_size)
    old_tok, new_tok = paired_tokens(old_z, new_z, old_patch, new_patch)
    return LatentMaps(LinearMap.fit(new_tok, old_tok), LinearMap.fit(old_tok, new_tok), len(old_tok))


@torch.no_grad()
def rebase_dit(dit: DiT, maps: LatentMaps, in_channels: int, patch: Patch) -> DiT:
    """A copy of `dit` for latents of `in_channels` channels at `patch`: trunk, text, time and position layers
    kept; input projection W_in A (bias W_in a + c_in), output projection B W_out (bias B c_out - b)."""
    cfg = dit.config
    if cfg.out_channels not in (None, cfg.in_channels):
        raise ValueError("rebase_dit maps a DiT whose output is its input's velocity (out_channels unset)")
    old_dim, new_dim = dit.patch_dim, in_channels * int(np.prod(patch))
    a, b = maps.new_to_old, maps.old_to_new
    if tuple(a.weight.shape) != (old_dim, new_dim) or tuple(b.weight.shape) != (new_dim, old_dim):
        raise ValueError(f"the maps are {tuple(a.weight.shape)} / {tuple(b.weight.shape)}, but the DiT's tokens have "
                         f"{old_dim} features and the new latent's {new_dim}")
    model = dit._rebuilt(fresh=("x_embedder.", "final_layer.linear."), in_channels=in_channels, patch=tuple(patch))
    w_in, c_in = dit.x_embedder.weight, dit.x_embedder.bias  # [D, old], [D]
    model.x_embedder.weight.copy_(w_in @ a.weight)  # [D, new]
    model.x_embedder.bias.copy_(w_in @ a.bias + c_in)
    w_out, c_out = dit.final_layer.linear.weight, dit.final_layer.linear.bias  # [old, D], [old]
    model.final_layer.linear.weight.copy_(b.weight @ w_out)  # [new, D]
    model.final_layer.linear.bias.copy_(b.weight @ c_out - b.bias)  # v = eps - x0: the map's offset enters negated
    return model


__all__ = ["LatentMaps", "LinearMap", "fit_latent_maps", "paired_tokens", "rebase_dit"]
