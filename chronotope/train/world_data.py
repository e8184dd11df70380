"""World data for the World-model recipe, in memory: rendered by worker processes, encoded in batches on the device.

`build_world_cache` writes the latent cache DiT training reads (chronotope/data/latent_cache.py, through its
`CacheWriter`) without a file per clip: shard k holds items [k*S, (k+1)*S) of a World mix
(chronotope/world/mix.py), rendered by a spawn pool one shard ahead of the encoder, grouped by shape and
encoded `batch_size` clips at a time (`vae.encode_latents`, posterior mean, normalised); a storyboard of the
mix is encoded shot by shot (latent_cache.storyboard_shots: one clip, caption and link per shot, as
`chronotope encode` stores a storyboard of a manifest). Shards are written whole, so a killed run redoes at
most the shard it was in. `WorldClips` serves the same items as pixels, for
training a VAE first.

    build_world_cache("runs/wm/cache", vae, vae_dir=..., mix=WorldMix(), seed=0, items=2000, device="cuda")
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from chronotope.data.latent_cache import CacheWriter, storyboard_shots
from chronotope.world.mix import WorldMix, render_item

MAX_ITEMS = 200_000  # a time-bounded data stage stops here at the latest


@torch.no_grad()
def encode_batched(vae: torch.nn.Module, clips: list[np.ndarray], device: torch.device | str,
                   batch_size: int) -> list[torch.Tensor]:
    """uint8 clips [T, H, W, 3] of any shapes -> normalised latents [C, t, h, w] (CPU), in order.
    Clips of one shape go through the VAE together, `batch_size` at a time; pixels travel as uint8."""
    out: list[torch.Tensor | None] = [None] * len(clips)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, clip in enumerate(clips):
        groups.setdefault(clip.shape, []).append(i)
    for idx in groups.values():
        for s in range(0, len(idx), batch_size):
            part = idx[s:s + batch_size]
            x = torch.from_numpy(np.stack([clips[i] for i in part])).to(device)  # [B, T, H, W, 3] uint8
            x = x.permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0  # [B, 3, T, H, W] in [-1, 1]
            z = vae.encode_latents(x).float().cpu()  # [B, C, t, h, w]
            for j, i in enumerate(part):
                out[i] = z[j]
    return out  # type: ignore[return-value]


def clip_fields(index: int, row: dict) -> list[tuple[slice, dict]]:
    """(frame slice, index fields) of each clip of mix item `index`: the item whole, or each shot of a storyboard."""
    if not row.get("shots"):
        return [(slice(None), row)]
    base = {k: v for k, v in row.items() if k not in ("shots", "text", "short_text", "spec", "num_frames")}
    return [(sl, {**base, **fields}) for sl, fields in storyboard_shots(row["shots"], index)]


def _render_many(job: Callable[[int], tuple[np.ndarray, dict]], indices: range) -> list[tuple[np.ndarray, dict]]:
    return [job(i) for i in indices]


def build_world_cache(
    out_dir: str | os.PathLike,
    vae: torch.nn.Module,
    *,
    vae_dir: str,
    mix: WorldMix,
    seed: int = 0,
    items: int | None = None,
    budget_s: float | None = None,
    spent_s: float = 0.0,
    shard_size: int = 256,
    device: torch.device | str = "cpu",
    batch_size: int = 16,
    workers: int = 1,
    progress: bool = True,
    on_shard: Callable[[int, float], None] | None = None,
) -> dict[str, Any]:
    """Render and encode World items into the cache at `out_dir`, shard by shard; returns the cache's counts.

    items: exactly this many; None: shards until `budget_s` seconds are spent (counting `spent_s` from
    earlier runs; checked after each shard, and at least one shard is written) or MAX_ITEMS are done.
    workers > 1: a spawn pool renders the next shard while this process encodes the current one.
    on_shard(k, seconds): called after shard k is written with the seconds since the last call (to record
    the time spent, so a resumed run keeps to the same budget)."""
    if items is not None and items < 1:
        raise ValueError(f"--items must be >= 1, got {items}")
    if shard_size < 1 or batch_size < 1:
        raise ValueError(f"shard size and batch size must be >= 1, got {shard_size} and {batch_size}")
    if items is None and budget_s is None:
        raise ValueError("give the number of items or a time budget for the data stage")
    total = items if items is not None else MAX_ITEMS
    settings = {"source": "world-mix", "mix": mix.to_dict(), "seed": seed, "num_items": total,
                "shard_size": shard_size, "dtype": "float16", "vae": vae_dir}
    writer = CacheWriter(out_dir, settings, vae=vae, vae_dir=vae_dir)
    n_shards = (total + shard_size - 1) // shard_size
    todo = [k for k in range(n_shards) if not writer.is_done(k)]
    shard_items = lambda k: range(k * shard_size, min((k + 1) * shard_size, total))  # noqa: E731
    job = functools.partial(render_item, mix, seed)
    device = torch.device(device)
    was_training = vae.training
    vae.eval().to(device)
    done = sum(len(shard_items(k)) for k in range(n_shards) if writer.is_done(k))  # mix items (a storyboard is one)
    bar = tqdm(total=items, initial=done, desc="world data", unit="item", disable=not progress, dynamic_ncols=True)
    pool = multiprocessing.get_context("spawn").Pool(workers) if workers > 1 and todo else None
    t_last = time.perf_counter()
    spent = spent_s

    def submit(j: int):
        if j >= len(todo):
            return None
        if pool is None:
            return functools.partial(_render_many, job, shard_items(todo[j]))
        return pool.map_async(job, shard_items(todo[j]), chunksize=max(1, shard_size // (4 * workers))).get

    try:
        pending = submit(0)
        for j, k in enumerate(todo):
            if budget_s is not None and items is None and spent >= budget_s and writer.meta["items"] > 0:
                break  # the data share of the budget is spent (at a shard boundary)
            rendered = pending()
            pending = submit(j + 1)  # the pool renders the next shard while this one is encoded
            clips = [(i, frames[sl], fields) for i, (frames, row) in zip(shard_items(k), rendered)
                     for sl, fields in clip_fields(i, row)]
            latents = encode_batched(vae, [frames for _, frames, _ in clips], device, batch_size)
            writer.write_shard(k, [(i, z, fields, {}) for z, (i, _, fields) in zip(latents, clips)])
            now = time.perf_counter()
            spent, seconds, t_last = spent + now - t_last, now - t_last, now
            if on_shard is not None:
                on_shard(k, seconds)
            bar.update(len(rendered))
            bar.set_postfix_str(f"shard {k} {spent:.0f}s", refresh=False)
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
            pool.join()
        vae.train(was_training)
    writer.flush()
    return {**writer.counts(), "seconds": spent}


class WorldClips(torch.utils.data.Dataset):
    """Items 0..n-1 of a World mix as VAE training data, rendered when asked (a few ms each):
    dict(video=[3, T, H, W] float in [-1, 1], text), clips cut to their first `max_frames` frames."""

    def __init__(self, mix: WorldMix, seed: int, n: int, max_frames: int = 17) -> None:
        if n < 1:
            raise ValueError(f"need at least one item, got {n}")
        self.mix, self.seed, self.n, self.max_frames = mix, seed, n, max_frames

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Any]:
        frames, row = render_item(self.mix, self.seed, i)
        if row.get("shots"):  # a storyboard: its first shot, never frames across a cut
            frames = frames[: row["shots"][0]["num_frames"]]
        video = torch.from_numpy(frames[: self.max_frames]).permute(3, 0, 1, 2).float() / 127.5 - 1.0
        return {"video": video, "text": row["text"]}


__all__ = ["MAX_ITEMS", "WorldClips", "build_world_cache", "clip_fields", "encode_batched"]
