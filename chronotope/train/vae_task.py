"""The VAE as a `TrainTask`: mixed sizes, durations and images from a manifest, one shared loop.

Items of different shapes cannot be stacked, so a batch is B data-set items in a deterministic
order (a permutation seeded by the epoch); inside the batch, items of the same shape go through
the VAE together and the loss is the item-weighted mean over shape groups (gradient accumulation
within one step). Unreadable items are skipped and counted (`bad_items`). At each checkpoint the
task writes an original-vs-reconstruction PNG strip and the model folder RUN_DIR/vae/ with
latent mean/std measured on a few training items (chronotope/vae/model.py measure_latent_stats).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from chronotope.atomic import atomic_write_json, swap_in_folder

_ITEM_ERRORS = (ValueError, OSError)  # a RuntimeError ("too many failures") must stop the run


class MixedLengths(torch.utils.data.Dataset):
    """One data set per clip length (e.g. 1 and 17 frames) seen as one: joint image + video training.

    Item i of the k-th data set is item sum(len(d) for d in datasets[:k]) + i here.
    """

    def __init__(self, datasets: Sequence[Any]) -> None:
        if not datasets:
            raise ValueError("MixedLengths needs at least one data set")
        self.datasets = list(datasets)
        self.offsets = np.cumsum([0] + [len(d) for d in self.datasets]).tolist()

    def __len__(self) -> int:
        return self.offsets[-1]

    def _locate(self, i: int) -> tuple[Any, int]:
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} items")
        k = int(np.searchsorted(self.offsets, i, side="right")) - 1
        return self.datasets[k], i - self.offsets[k]

    def __getitem__(self, i: int) -> dict[str, Any]:
        d, j = self._locate(i)
        return d[j]

    def load(self, i: int) -> dict[str, Any]:
        """Item i without skipping unreadable files (raises instead), for caches that record failures."""
        d, j = self._locate(i)
        return d.load(j) if hasattr(d, "load") else d[j]

    @property
    def failures(self) -> int:
        return sum(int(getattr(d, "failures", 0)) for d in self.datasets)

    def set_epoch(self, epoch: int) -> None:
        for d in self.datasets:
            if hasattr(d, "set_epoch"):
                d.set_epoch(epoch)


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """[3, T, H, W] float in [-1, 1] -> uint8 [T, H, W, 3]."""
    x = ((video.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(1, 2, 3, 0).cpu().numpy()


def strip(original: torch.Tensor, recon: torch.Tensor, max_frames: int = 5, min_height: int = 1) -> np.ndarray:
    """One image [2kH, n*kW, 3] uint8: n evenly spaced frames, originals on top, reconstructions
    below, enlarged by the integer k (nearest neighbour) that makes each row >= min_height pixels."""
    a, b = to_uint8(original), to_uint8(recon)  # [T, H, W, 3]
    idx = np.unique(np.linspace(0, len(a) - 1, min(max_frames, len(a))).round().astype(int))
    top = np.concatenate(list(a[idx]), axis=1)  # [H, n*W, 3]
    bottom = np.concatenate(list(b[idx]), axis=1)
    img = np.concatenate([top, bottom], axis=0)  # [2H, n*W, 3]
    k = max(1, -(-min_height // a.shape[1]))
    return img.repeat(k, axis=0).repeat(k, axis=1) if k > 1 else img


class VAETask:
    """Train a CausalVAE on `dataset` (items dict(video=[3, T, H, W] in [-1, 1], ...) or None).

    loss_kwargs go to chronotope.vae.losses.vae_loss (e.g. kl weight). `num_sample_items`
    fixed items are reconstructed at each checkpoint; `stats_items` items measure latent stats.

    decoder_only: freeze the encoder and keep the model's latent mean/std, so the latent space stays
    the one latent caches and DiTs were trained on; only the decoder learns to reconstruct from it
    (how the Stable Diffusion VAE was fine-tuned after release).
    """

    def __init__(
        self,
        model: nn.Module,
        dataset: Sequence[dict[str, Any] | None],
        batch_size: int = 4,
        loss_kwargs: dict[str, Any] | None = None,
        num_sample_items: int = 2,
        stats_items: int = 8,
        export_dir_name: str = "vae",
        decoder_only: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if len(dataset) == 0:
            raise ValueError("the training data set is empty; check the manifest and --num-frames/--max-pixels")
        self.model, self.dataset, self.batch_size = model, dataset, batch_size
        self.loss_kwargs = loss_kwargs or {}
        self.num_sample_items, self.stats_items = num_sample_items, stats_items
        self.export_dir_name = export_dir_name
        self.decoder_only = decoder_only
        if decoder_only:
            if model.config.latent_mean is None:
                raise ValueError("decoder-only training keeps the VAE's latent space: start it from a trained VAE "
                                 "folder whose config has latent_mean/latent_std (--init)")
            model.encoder.requires_grad_(False)
        self._own_failures = 0

    # -- data ------------------------------------------------------------------------------

    @property
    def bad_items(self) -> int:
        return self._own_failures + int(getattr(self.dataset, "failures", 0))

    def _load(self, i: int) -> dict[str, Any] | None:
        try:
            item = self.dataset[i]
        except _ITEM_ERRORS:
            item = None
        if item is None:
            self._own_failures += 1
        return item

    def batches(self, epoch_seed: int, position: int) -> Iterator[list[torch.Tensor]]:
        """Step b of the epoch reads items perm[b*G : (b+1)*G], G = B * world size, and this rank
        takes its B of them (a partial last step is dropped); yields lists of videos [3, T, H, W]
        (unreadable items left out). The order depends only on (epoch_seed, b): resume is exact."""
        from chronotope.train.trainer import get_rank, get_world_size

        n, rank, world = len(self.dataset), get_rank(), get_world_size()
        if hasattr(self.dataset, "set_epoch"):  # random clip starts depend on (seed, epoch, index) only
            self.dataset.set_epoch(epoch_seed)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(epoch_seed)).tolist()
        group = self.batch_size * world
        if n < group:
            raise ValueError(f"{n} items cannot fill one step of batch size {self.batch_size} x {world} ranks; "
                             "lower --batch-size or add data")
        for b in range(position, n // group):
            start = b * group + rank * self.batch_size
            items = [self._load(i) for i in perm[start:start + self.batch_size]]
            yield [it["video"] for it in items if it is not None]

    # -- loss ------------------------------------------------------------------------------

    def loss(self, model: nn.Module, batch: list[torch.Tensor], generator: torch.Generator
             ) -> tuple[torch.Tensor, dict[str, float]]:
        from chronotope.vae.losses import vae_loss

        if not batch:  # every item unreadable: a zero loss keeps DDP ranks in step, nothing changes
            zero = sum(p.sum() for p in model.parameters()) * 0.0
            return zero, {"items": 0}
        groups: dict[tuple[int, ...], list[torch.Tensor]] = {}
        for video in batch:
            groups.setdefault(tuple(video.shape), []).append(video)
        total, sums, pixels = 0.0, {}, 0
        device = next(model.parameters()).device
        # posterior noise from the task's (CPU) generator; on a GPU from the CUDA RNG instead, since a CPU
        # generator cannot draw CUDA tensors (so a GPU VAE run resumes exactly except for that noise)
        gen = generator if device.type == "cpu" else None
        for shape, videos in groups.items():
            x = torch.stack(videos).float().to(device)  # [b, 3, T, H, W]
            recon, posterior = model(x, sample=True, generator=gen)
            loss, metrics = vae_loss(x, recon, posterior, **self.loss_kwargs)
            w = len(videos) / len(batch)
            total = total + w * loss
            for k, v in metrics.items():
                if k == "loss":
                    continue
                sums[k] = sums.get(k, 0.0) + w * float(v)
            pixels += x[:, 0].numel()
        return total, {"items": len(batch), "pixels": float(pixels), "shapes": float(len(groups)), **sums}

    # -- checkpoint hooks ------------------------------------------------------------------

    def _fixed_items(self, count: int) -> list[torch.Tensor]:
        """The last `count` readable items (fixed across checkpoints, so strips are comparable; the
        last ones, because MixedLengths puts the longest clips last)."""
        out = []
        for i in reversed(range(len(self.dataset))):
            if len(out) >= count:
                break
            try:
                item = self.dataset[i]
            except _ITEM_ERRORS:
                item = None
            if item is not None:
                out.append(item["video"])
        return out

    @torch.no_grad()
    def samples(self, model: nn.Module, out_dir: Path, step: int) -> None:
        """out_dir/recon-<i>.png (originals on top, reconstructions below) + psnr.json."""
        from chronotope.vae.losses import psnr
        from chronotope.video import write_video

        out_dir.mkdir(parents=True, exist_ok=True)
        scores = {}
        for i, video in enumerate(self._fixed_items(self.num_sample_items)):
            x = video[None].float()
            recon = model.decode(model.encode(x).mode())  # [1, 3, T, H, W]
            write_video(out_dir / f"recon-{i}.png", strip(x[0], recon[0], min_height=128)[None], fps=1)
            scores[f"recon-{i}"] = float(psnr(x, recon))
        atomic_write_json(out_dir / "psnr.json", {"step": step, "psnr": scores})

    @torch.no_grad()
    def export(self, model: nn.Module, run_dir: Path, step: int) -> Path:
        """Write RUN_DIR/vae/ (config.json + model.safetensors) with measured latent mean/std."""
        from chronotope.vae.model import measure_latent_stats

        videos = [] if self.decoder_only else self._fixed_items(self.stats_items)
        if videos:
            mean, std = measure_latent_stats(model, (v[None].float() for v in videos))
            model.set_latent_stats(mean, [max(s, 1e-4) for s in std])
        def write(tmp: Path) -> None:
            model.save_pretrained(tmp)
            (tmp / "training.json").write_text(json.dumps({"step": step, "stats_items": len(videos)}))

        return swap_in_folder(Path(run_dir) / self.export_dir_name, write)
