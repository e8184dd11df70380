"""Latent cache: VAE latents of a manifest, computed once and read many times by DiT training.

As in Open-Sora / LTX-Video pre-extraction: `encode_to_cache` runs `vae.encode_latents`
(posterior mean, normalised) over a data set and writes safetensors shards plus an index:

    CACHE/shard-00000.safetensors   "<key>.latent" -> [C, t, h, w] float16/bfloat16 (room for
                                    more tensors per item, e.g. "<key>.text_emb")
    CACHE/index.jsonl               one line per item: key, shard, shape, text, short_text, spec,
                                    path, num_frames, height, width, fps
    CACHE/cache.json                vae folder + config, settings, created, completed shards, counts

Resumable: shard k holds data-set items [k*S, (k+1)*S); it is written atomically, then its
index lines appended, then cache.json records it complete. A re-run skips completed shards and
drops index lines of a shard that never got recorded (a crash between the two writes).
`LatentCache(dir)` reads it back as a torch Dataset; `shard_for_rank` splits it for DDP.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from chronotope.atomic import atomic_write_text
from chronotope.video import VideoReadError

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
_META_KEYS = ("text", "short_text", "spec", "path", "fps")


def _read_index(path: Path) -> list[dict[str, Any]]:
    rows = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # torn last line of a crashed run
                continue
    return rows


def shard_name(k: int) -> str:
    return f"shard-{k:05d}.safetensors"


def encode_to_cache(
    vae: torch.nn.Module,
    dataset: Sequence[dict[str, Any] | None],
    out_dir: str | os.PathLike,
    *,
    vae_dir: str | None = None,
    shard_size: int = 256,
    dtype: str = "float16",
    settings: dict[str, Any] | None = None,
    encode_kwargs: dict[str, Any] | None = None,
    extra_tensors: Callable[[dict[str, Any]], dict[str, torch.Tensor]] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Encode every item of `dataset` into the cache at `out_dir`; returns the counts of cache.json.

    dataset.load(i) (or dataset[i]): dict(video=[3, T, H, W] float in [-1, 1], text, ...), or None /
    an exception for an unreadable item (counted in `failures`, listed with its reason). `settings` (e.g. manifest,
    num_frames, max_pixels) must match on a re-run, so a resumed cache is one consistent set.
    extra_tensors(item) -> {name: tensor}: more tensors stored per item as "<key>.<name>" (e.g. text
    embeddings); LatentCache returns them under `name`.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta_path, index_path = out / "cache.json", out / "index.jsonl"
    settings = {"shard_size": shard_size, "dtype": dtype, "num_items": len(dataset), **(settings or {})}
    if meta_path.exists():
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta["settings"] != settings:
            raise ValueError(
                f"{out} already holds a cache made with settings {meta['settings']}, not {settings}; "
                "use another --out folder or the same options to resume"
            )
    else:
        cfg = getattr(vae, "config", None)
        meta = {
            "vae": vae_dir, "vae_config": cfg.to_dict() if hasattr(cfg, "to_dict") else None,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "settings": settings,
            "shards": {}, "items": 0, "failures": 0, "failed": [],
        }
    done = set(meta["shards"])
    # keep only index lines of recorded shards (a crash may have appended lines of an unrecorded one)
    rows = [r for r in _read_index(index_path) if r.get("shard") in done]
    atomic_write_text(index_path, "".join(json.dumps(r) + "\n" for r in rows))
    n_shards = (len(dataset) + shard_size - 1) // shard_size
    todo = [k for k in range(n_shards) if shard_name(k) not in done]
    bar = tqdm(total=len(dataset), initial=len(dataset) - sum(
        min(shard_size, len(dataset) - k * shard_size) for k in todo), desc="encode", unit="item",
        disable=not progress, dynamic_ncols=True)
    load = getattr(dataset, "load", dataset.__getitem__)  # VideoDataset.load raises instead of skipping
    was_training = vae.training
    vae.eval()
    try:
        for k in todo:
            tensors, lines, failed = {}, [], []
            for i in range(k * shard_size, min((k + 1) * shard_size, len(dataset))):
                try:
                    item = load(i)
                    if item is None:
                        raise ValueError("unreadable item")
                    video = item["video"]  # [3, T, H, W]
                    with torch.no_grad():
                        z = vae.encode_latents(video[None].float(), **(encode_kwargs or {}))[0]  # [C, t, h, w]
                except (VideoReadError, ValueError, OSError, RuntimeError) as err:
                    failed.append({"index": i, "path": _item_path(dataset, i), "error": str(err)[:300]})
                    bar.update(1)
                    continue
                key = f"{i:08d}"
                tensors[f"{key}.latent"] = z.to(_DTYPES[dtype]).contiguous()
                for name, t in (extra_tensors(item) if extra_tensors else {}).items():
                    if name == "latent" or not name.isidentifier():
                        raise ValueError(f"extra tensor name {name!r} must be an identifier other than 'latent'")
                    tensors[f"{key}.{name}"] = t.detach().cpu().contiguous()
                line = {"key": key, "shard": shard_name(k), "shape": list(z.shape),
                        "num_frames": int(video.shape[1]), "height": int(video.shape[2]), "width": int(video.shape[3])}
                line.update({m: item.get(m) for m in _META_KEYS})
                lines.append(line)
                bar.update(1)
                bar.set_postfix_str(f"bad {meta['failures'] + len(failed)}", refresh=False)
            name = shard_name(k)
            tmp = out / f".{name}.tmp{os.getpid()}"
            save_file(tensors, str(tmp), metadata={"format": "pt"})
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, out / name)  # 1. the shard, whole
            with open(index_path, "a", encoding="utf-8") as f:  # 2. its index lines
                f.write("".join(json.dumps(r) + "\n" for r in lines))
                f.flush()
                os.fsync(f.fileno())
            meta["shards"][name] = {"items": len(lines), "failures": len(failed)}  # 3. recorded complete
            meta["items"] += len(lines)
            meta["failures"] += len(failed)
            meta["failed"] += failed
            atomic_write_text(meta_path, json.dumps(meta, indent=1))
    finally:
        bar.close()
        vae.train(was_training)
    if not meta_path.exists():  # an empty data set still leaves a valid (empty) cache
        atomic_write_text(meta_path, json.dumps(meta, indent=1))
    return {"items": meta["items"], "failures": meta["failures"], "shards": len(meta["shards"]),
            "encoded_now": sum(meta["shards"][shard_name(k)]["items"] for k in todo)}


def _item_path(dataset: Any, i: int) -> str | None:
    rows = getattr(dataset, "rows", None)
    try:
        return str(rows[i]["path"]) if rows is not None else None
    except (IndexError, KeyError, TypeError):
        return None


class LatentCache(Dataset):
    """Read a latent cache: item i = dict(latent [C, t, h, w] float32, key, text, short_text, spec,
    path, num_frames, height, width, fps, + any extra tensors stored for the item, as float32)."""

    def __init__(self, cache_dir: str | os.PathLike, rows: list[dict[str, Any]] | None = None) -> None:
        self.dir = Path(cache_dir)
        meta_path = self.dir / "cache.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{meta_path} not found; build the cache with `chronotope encode MANIFEST --out {self.dir}`")
        self.meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if rows is None:
            done = set(self.meta["shards"])
            rows = [r for r in _read_index(self.dir / "index.jsonl") if r.get("shard") in done]
        self.rows = rows
        self._handles: dict[str, Any] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def shapes(self) -> list[tuple[int, ...]]:
        """Latent shape (C, t, h, w) of every item, without reading tensors (for bucketing/packing)."""
        return [tuple(r["shape"]) for r in self.rows]

    def _open(self, shard: str):
        h = self._handles.get(shard)
        if h is None:  # opened lazily, so each DataLoader worker gets its own memory map
            h = self._handles[shard] = safe_open(str(self.dir / shard), framework="pt")
        return h

    def __getitem__(self, i: int) -> dict[str, Any]:
        row = self.rows[i]
        h = self._open(row["shard"])
        prefix = row["key"] + "."
        item = {k: v for k, v in row.items() if k != "shape"}
        for name in h.keys():
            if name.startswith(prefix):
                item[name[len(prefix):]] = h.get_tensor(name).float()
        return item

    def shard_for_rank(self, rank: int, world_size: int, drop_last: bool = True) -> LatentCache:
        """This rank's share (items rank, rank + W, ...); drop_last keeps every rank the same length
        so DDP ranks take the same number of steps."""
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        n = len(self.rows) // world_size * world_size if drop_last else len(self.rows)
        return LatentCache(self.dir, self.rows[:n][rank::world_size])

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers re-open their own handles
        return {**self.__dict__, "_handles": {}}
