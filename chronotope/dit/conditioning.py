"""What the DiT is conditioned on, in one place: the per-frame conditions it can learn, and the one function that
lays a window's conditioning out as packed samples, for sampling and training alike.

The DiT sees, per token: its noise level t (0 = a clean context token, given as i2v, extension and storyboards
give frames), its 3D position, and any per-frame conditions its config names; per sample, a caption; per call,
the step size of a few-step model. Per-frame conditions are entries of FRAME_CONDITIONS: each says how the DiT
embeds its value (added to the tokens of its frame, zero-initialised so a trained model gains it by fine-tuning
and computes exactly what it did before), what a token that gives no value gets, and how a user's value becomes
one value per latent frame. The shot index of storyboards (dit/shots.py) is the first entry; adding a condition
(camera motion, say) is one entry here, a `DiTConfig.conditions` size to build a model with it, and its data
(each training clip's per-frame values, `Sample.conditions`): docs/architecture.md walks through it.

    samples = window_samples(x, t, conditions={"shot": shot})   # x [N, C, n, h, w], t [N, n]
    packed = pack(samples, patch=dit.config.patch)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor

from chronotope.config import DiTConfig
from chronotope.dit.patches import Sample


@dataclass(frozen=True)
class FrameCondition:
    """One per-frame condition: `size(config)` how large the model's embedder is (0: the model has none);
    `build(size, width)` that embedder, zero at the start (the DiT holds it as `{name}_embedder`);
    `embed(embedder, values [L])` -> [L, width] added to the tokens; `null(embedder)` -> [width] for tokens of a
    pack that gives no value; `parse(value, n)` a user's value -> [n] per latent frame (ValueError on bad input;
    None: set by the pipeline, not by users); `dtype` of the values."""

    size: Callable[[DiTConfig], int]
    build: Callable[[int, int], nn.Module]
    embed: Callable[[nn.Module, Tensor], Tensor]
    null: Callable[[nn.Module], Tensor]
    parse: Callable[[Any, int], Tensor] | None = None
    dtype: torch.dtype = torch.long
    help: str = ""


def _zero_embedding(rows: int, width: int) -> nn.Module:
    table = nn.Embedding(rows, width)
    nn.init.zeros_(table.weight)
    return table


def _lookup(table: nn.Module, values: Tensor) -> Tensor:
    return table(values.clamp(0, table.num_embeddings - 1))  # [L, D]


def _first_row(table: nn.Module) -> Tensor:
    return table.weight[0]


def _parse_camera(value: Any, n: int) -> Tensor:
    """"pan-left:slow" (a World camera class, world/camera.py; a motion alone is slow) -> [n] class indices."""
    from chronotope.world.camera import parse_camera

    return torch.full((n,), parse_camera(value), dtype=torch.long)


def _camera_size(cfg: DiTConfig) -> int:
    return cfg.conditions.get("camera", 0)


FRAME_CONDITIONS: dict[str, FrameCondition] = {
    # storyboards: each frame's shot counted back from the one being made (0 = the new shot, j = j shots before
    # it, capped at size - 1), so earlier shots given as clean context read as "another shot" (dit/shots.py)
    "shot": FrameCondition(size=lambda cfg: cfg.shot_embed, build=_zero_embedding, embed=_lookup, null=_first_row,
                           help="shot index of each frame, counted back from the shot being made"),
    # the World's camera (world/camera.py CAMERA_CLASSES: static, pan-left:slow, ..., zoom-out:fast), per frame
    "camera": FrameCondition(size=_camera_size, build=_zero_embedding, embed=_lookup, null=_first_row,
                             parse=_parse_camera, help="the camera's motion: static, pan-left[:slow|fast], ..."),
}


def model_conditions(config: DiTConfig) -> dict[str, int]:
    """{name: embedder size} of the per-frame conditions a DiT of `config` takes."""
    sizes = {name: c.size(config) for name, c in FRAME_CONDITIONS.items()}
    return {name: size for name, size in sizes.items() if size > 0}


def check_conditions(config: DiTConfig, given: dict[str, Any]) -> None:
    """ValueError for a condition no entry defines or the model was not trained with."""
    takes = model_conditions(config)
    for name in given:
        if name not in FRAME_CONDITIONS:
            raise ValueError(f"unknown condition {name!r}; defined: {', '.join(FRAME_CONDITIONS)}")
        if name not in takes:
            raise ValueError(f"this model was not trained with the {name!r} condition (it takes "
                             f"{', '.join(takes) or 'none'}); train one with DiTConfig.conditions[{name!r}] > 0")


def parse_conditions(given: dict[str, Any], n: int) -> dict[str, Tensor]:
    """Users' values -> per-latent-frame values [n] each, through each entry's `parse`."""
    out = {}
    for name, value in given.items():
        entry = FRAME_CONDITIONS.get(name)
        if entry is None or entry.parse is None:
            raise ValueError(f"{name!r} is not a condition a request can set; settable: "
                             f"{', '.join(k for k, c in FRAME_CONDITIONS.items() if c.parse) or 'none'}")
        out[name] = entry.parse(value, n) if not isinstance(value, Tensor) else value
    return out


def latent_frame_values(values: list | np.ndarray | None, num_latent_frames: int, temporal_factor: int) -> np.ndarray:
    """A clip's per-frame values (one per pixel frame, as a data source writes them; None = 0) -> one per latent
    frame: the value of the last frame each latent frame codes (frame 0, then frames 4j for a 4x causal VAE)."""
    if values is None:
        return np.zeros(num_latent_frames)
    per_frame = np.asarray(values)[::temporal_factor][:num_latent_frames]
    if len(per_frame) != num_latent_frames:
        raise ValueError(f"{len(values)} per-frame values cannot cover {num_latent_frames} latent frames")
    return per_frame


def window_samples(x: Tensor, t: Tensor, conditions: dict[str, Tensor] | None = None,
                   is_cond: Tensor | None = None) -> list[Sample]:
    """A window's latents x [N, C, n, h, w] at per-frame times t [N, n] -> N samples for `pack`, sample i reading
    caption i; conditions: per-frame values [n] (shared) or [N, n]; is_cond [n] or [N, n]: clean context frames
    (never dropped, out of the loss)."""
    N = x.shape[0]
    conditions = conditions or {}

    def row(v: Tensor | None, i: int) -> Tensor | None:
        return v if v is None or v.dim() == 1 else v[i]

    return [Sample(x[i], timestep=t[i], is_cond=row(is_cond, i), text_idx=i,
                   conditions={k: row(v, i) for k, v in conditions.items()}) for i in range(N)]
