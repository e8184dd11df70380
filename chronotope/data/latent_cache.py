"""Latent cache: VAE latents of a manifest, computed once and read many times by DiT training.

As in Open-Sora / LTX-Video pre-extraction: `encode_to_cache` runs `vae.encode_latents`
(posterior mean, normalised) over a data set and writes safetensors shards plus an index:

    CACHE/shard-00000.safetensors   "<key>.latent" -> [C, t, h, w] float16/bfloat16 (room for
                                    more tensors per item, e.g. "<key>.text_emb")
    CACHE/index.jsonl               one line per item: key, shard, shape, text, short_text, spec,
                                    path, num_frames, height, width, fps; a storyboard's shots are
                                    items of their own (key "<index>-<shot>") with storyboard (the
                                    storyboard's key), shot (0, 1, ...) and num_shots
    CACHE/cache.json                vae folder + config, settings, created, completed shards, counts

Resumable: shard k holds data-set items [k*S, (k+1)*S); it is written atomically, then its
index lines appended, then cache.json records it complete. A re-run skips completed shards and
drops index lines of a shard that never got recorded (a crash between the two writes). `CacheWriter`
does this writing for any producer of latents (also the World-model recipe, which encodes in batches).
`LatentCache(dir)` reads it back as a torch Dataset; `shard_for_rank` splits it for DDP.

Storyboards (a manifest row or World item with a `shots` list) are cut at their cuts by
`storyboard_shots`: each shot is its own causal-VAE clip (4k+1 frames, its first frame coded alone, as
pipeline/storyboard.py decodes it) with its own caption and spec, linked to its storyboard.
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

from chronotope.atomic import atomic_write, atomic_write_text
from chronotope.video import VideoReadError

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
_META_KEYS = ("text", "short_text", "spec", "path", "fps", "conditions")  # conditions: per-frame values by name


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


def item_key(index: int, shot: int | None = None) -> str:
    """An item's key: its data-set index, and for a storyboard's shot the shot index ("00000012-1")."""
    return f"{index:08d}" if shot is None else f"{index:08d}-{shot}"


def storyboard_shots(shots: list[dict] | str, index: int) -> list[tuple[slice, dict[str, Any]]]:
    """The shots of storyboard `index` (its `shots` column: start, num_frames, text, short_text, spec per shot)
    as (frame slice of the storyboard's video, index fields) pairs; the fields link each shot to its storyboard
    (storyboard = the storyboard's key, shot, num_shots). ValueError for a shot that is not a 4k+1-frame clip."""
    shots = json.loads(shots) if isinstance(shots, str) else shots
    out = []
    for j, shot in enumerate(shots):
        start, n = int(shot["start"]), int(shot["num_frames"])
        if n < 1 or (n - 1) % 4:
            raise ValueError(f"storyboard shot {j + 1} has {n} frames; each shot is its own causal-VAE clip of "
                             f"4k+1 frames (render storyboards with --num-frames such as 17,33)")
        spec = shot.get("spec")
        fields = {"text": shot.get("text", ""), "short_text": shot.get("short_text"),
                  "spec": spec if isinstance(spec, str) or spec is None else json.dumps(spec, separators=(",", ":")),
                  "num_frames": n, "storyboard": item_key(index), "shot": j, "num_shots": len(shots)}
        out.append((slice(start, start + n), fields))
    return out


class CacheWriter:
    """Writes a cache shard by shard, resumably; `encode_to_cache` and the World-model recipe
    (chronotope/train/world_data.py, which renders and encodes in memory) both write through it.

    Opening an existing cache checks that its `settings` are these (a resumed cache is one consistent
    set) and drops index lines of shards that were never recorded complete. `write_shard(k, entries)`
    then makes shard k durable in three steps: the shard file (atomically), its index lines, the record
    in cache.json; a crash between them leaves the shard to be redone.
    """

    def __init__(self, out_dir: str | os.PathLike, settings: dict[str, Any], *, vae: torch.nn.Module | None = None,
                 vae_dir: str | None = None, dtype: str = "float16") -> None:
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        self.out, self.dtype = Path(out_dir), dtype
        self.out.mkdir(parents=True, exist_ok=True)
        self.meta_path, self.index_path = self.out / "cache.json", self.out / "index.jsonl"
        if self.meta_path.exists():
            self.meta = json.loads(self.meta_path.read_text(encoding="utf-8"))
            if self.meta["settings"] != settings:
                raise ValueError(
                    f"{self.out} already holds a cache made with settings {self.meta['settings']}, not {settings}; "
                    "use another --out folder or the same options to resume"
                )
        else:
            cfg = getattr(vae, "config", None)
            self.meta = {
                "vae": vae_dir, "vae_config": cfg.to_dict() if hasattr(cfg, "to_dict") else None,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "settings": settings,
                "shards": {}, "items": 0, "failures": 0, "failed": [],
            }
        # keep only index lines of recorded shards (a crash may have appended lines of an unrecorded one)
        rows = [r for r in _read_index(self.index_path) if r.get("shard") in self.meta["shards"]]
        atomic_write_text(self.index_path, "".join(json.dumps(r) + "\n" for r in rows))

    def is_done(self, k: int) -> bool:
        return shard_name(k) in self.meta["shards"]

    def write_shard(self, k: int, entries: list[tuple[int, torch.Tensor, dict[str, Any], dict[str, torch.Tensor]]],
                    failed: list[dict[str, Any]] | None = None) -> None:
        """Shard k from entries (data-set index, latent [C, t, h, w], index line fields, extra tensors); a
        storyboard's shots share their data-set index and differ by their `shot` field."""
        name, failed = shard_name(k), failed or []
        tensors, lines = {}, []
        for i, z, fields, extra in entries:
            key = item_key(i, fields.get("shot"))
            tensors[f"{key}.latent"] = z.detach().cpu().to(_DTYPES[self.dtype]).contiguous()
            for tname, t in extra.items():
                if tname == "latent" or not tname.isidentifier():
                    raise ValueError(f"extra tensor name {tname!r} must be an identifier other than 'latent'")
                tensors[f"{key}.{tname}"] = t.detach().cpu().contiguous()
            lines.append({"key": key, "shard": name, "shape": list(z.shape), **fields})
        atomic_write(self.out / name, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))  # 1. the shard
        with open(self.index_path, "a", encoding="utf-8") as f:  # 2. its index lines
            f.write("".join(json.dumps(r) + "\n" for r in lines))
            f.flush()
            os.fsync(f.fileno())
        self.meta["shards"][name] = {"items": len(lines), "failures": len(failed)}  # 3. recorded complete
        self.meta["items"] += len(lines)
        self.meta["failures"] += len(failed)
        self.meta["failed"] += failed
        self.flush()

    def flush(self) -> None:
        """Write cache.json (an empty data set still leaves a valid, empty cache)."""
        atomic_write_text(self.meta_path, json.dumps(self.meta, indent=1))

    def counts(self, shards: list[int] = ()) -> dict[str, int]:
        """items, failures, shards of the whole cache; encoded_now: items of `shards`."""
        return {"items": self.meta["items"], "failures": self.meta["failures"], "shards": len(self.meta["shards"]),
                "encoded_now": sum(self.meta["shards"][shard_name(k)]["items"] for k in shards)}


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
    settings = {"shard_size": shard_size, "dtype": dtype, "num_items": len(dataset), **(settings or {})}
    writer = CacheWriter(out_dir, settings, vae=vae, vae_dir=vae_dir, dtype=dtype)
    n_shards = (len(dataset) + shard_size - 1) // shard_size
    todo = [k for k in range(n_shards) if not writer.is_done(k)]
    bar = tqdm(total=len(dataset), initial=len(dataset) - sum(
        min(shard_size, len(dataset) - k * shard_size) for k in todo), desc="encode", unit="item",
        disable=not progress, dynamic_ncols=True)
    load = getattr(dataset, "load", dataset.__getitem__)  # VideoDataset.load raises instead of skipping
    was_training = vae.training
    vae.eval()
    try:
        for k in todo:
            entries, failed = [], []
            for i in range(k * shard_size, min((k + 1) * shard_size, len(dataset))):
                try:
                    item = load(i)
                    if item is None:
                        raise ValueError("unreadable item")
                    clips = _clips(item, i)
                    with torch.no_grad():  # each clip [3, T, H, W] -> [C, t, h, w]
                        latents = [vae.encode_latents(v[None].float(), **(encode_kwargs or {}))[0] for v, _ in clips]
                except (VideoReadError, ValueError, OSError, RuntimeError) as err:
                    failed.append({"index": i, "path": _item_path(dataset, i), "error": str(err)[:300]})
                    bar.update(1)
                    continue
                extra = extra_tensors(item) if extra_tensors else {}
                entries += [(i, z, fields, extra) for z, (_, fields) in zip(latents, clips)]
                bar.update(1)
                bar.set_postfix_str(f"bad {writer.meta['failures'] + len(failed)}", refresh=False)
            writer.write_shard(k, entries, failed)
    finally:
        bar.close()
        vae.train(was_training)
    if not writer.meta_path.exists():
        writer.flush()
    return writer.counts(todo)


def _clips(item: dict[str, Any], i: int) -> list[tuple[torch.Tensor, dict[str, Any]]]:
    """(video [3, T, H, W], index fields) of each clip of data-set item i: the item, or each shot of a storyboard."""
    video = item["video"]  # [3, T, H, W]
    fields = {"num_frames": int(video.shape[1]), "height": int(video.shape[2]), "width": int(video.shape[3]),
              **{m: item.get(m) for m in _META_KEYS}}
    if not item.get("shots"):
        return [(video, fields)]
    shots = storyboard_shots(item["shots"], i)
    if shots[-1][0].stop > video.shape[1]:
        raise ValueError(f"the storyboard's shots cover {shots[-1][0].stop} frames but its video has {video.shape[1]}")
    return [(video[:, sl], {**fields, **shot}) for sl, shot in shots]


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
            raise FileNotFoundError(f"{meta_path} not found: {self.dir} is not a finished latent cache; build it (or "
                                    f"finish it: encoding resumes) with `chronotope encode MANIFEST.csv --vae VAE_DIR "
                                    f"--out {self.dir}`")
        self.meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if rows is None:
            done = set(self.meta["shards"])
            rows = [r for r in _read_index(self.dir / "index.jsonl") if r.get("shard") in done]
        self.rows = rows
        self._handles: dict[str, Any] = {}
        self._names: dict[str, dict[str, list[str]]] = {}  # shard -> item key -> its tensor names

    def __len__(self) -> int:
        return len(self.rows)

    def shapes(self) -> list[tuple[int, ...]]:
        """Latent shape (C, t, h, w) of every item, without reading tensors (for bucketing/packing)."""
        return [tuple(r["shape"]) for r in self.rows]

    def _open(self, shard: str):
        h = self._handles.get(shard)
        if h is None:  # opened lazily, so each DataLoader worker gets its own memory map
            h = self._handles[shard] = safe_open(str(self.dir / shard), framework="pt")
            names: dict[str, list[str]] = {}
            for name in h.keys():  # one scan per shard, not one per item
                names.setdefault(name.partition(".")[0], []).append(name)
            self._names[shard] = names
        return h

    def __getitem__(self, i: int) -> dict[str, Any]:
        row = self.rows[i]
        h = self._open(row["shard"])
        item = {k: v for k, v in row.items() if k != "shape"}
        for name in self._names[row["shard"]].get(row["key"], []):
            item[name.partition(".")[2]] = h.get_tensor(name).float()
        return item

    def latents(self, progress: bool = False) -> list[torch.Tensor]:
        """Every item's latent [C, t, h, w] in row order, in the cache's dtype, reading each shard once
        (for training sets that fit in memory: no per-item file access during training)."""
        from safetensors.torch import load_file

        by_shard: dict[str, list[int]] = {}
        for i, row in enumerate(self.rows):
            by_shard.setdefault(row["shard"], []).append(i)
        out: list[torch.Tensor | None] = [None] * len(self.rows)
        for shard, idx in tqdm(by_shard.items(), desc="load cache", unit="shard", disable=not progress):
            data = load_file(str(self.dir / shard))
            for i in idx:
                out[i] = data[self.rows[i]["key"] + ".latent"]
        return out  # type: ignore[return-value]

    def shard_for_rank(self, rank: int, world_size: int, drop_last: bool = True) -> LatentCache:
        """This rank's share (items rank, rank + W, ...); drop_last keeps every rank the same length
        so DDP ranks take the same number of steps."""
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        n = len(self.rows) // world_size * world_size if drop_last else len(self.rows)
        return LatentCache(self.dir, self.rows[:n][rank::world_size])

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers re-open their own handles
        return {**self.__dict__, "_handles": {}, "_names": {}}
