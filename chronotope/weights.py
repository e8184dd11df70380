"""Model weights on disk: one `model.safetensors`, or shards with an index, as diffusers and transformers write them.

Both models' folders (`CausalVAE`, `DiT`) save and load through here. A large state dict, or a host that caps
file sizes, gets `max_shard_size` ("10MB", "2GB", or bytes): the tensors are split, in order, into
`model-00001-of-00003.safetensors`, ... so that no file exceeds the limit, plus `model.safetensors.index.json`
= {"metadata": {"total_size": bytes of tensor data}, "weight_map": {tensor name: file}}. `dtype` stores floating
tensors in another precision (fp16 halves a model folder; loading casts back to the model's dtype).

    save_weights(model.state_dict(), folder, dtype=torch.float16, max_shard_size="10MB")
    model.load_state_dict(load_weights(folder))
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from chronotope.atomic import atomic_write, atomic_write_json

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
_SHARD = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
_METADATA = {"format": "pt"}


def parse_size(size: int | str) -> int:
    """Bytes of a size written as diffusers does: 10MB = 10**6 * 10, 10MiB = 2**20 * 10, or a plain integer."""
    if isinstance(size, int):
        value = size
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B|B)?\s*", str(size), flags=re.IGNORECASE)
        if m is None:
            raise ValueError(f"shard size {size!r} is not understood; use e.g. 10MB, 500KB, 2GB or 1GiB")
        value = int(float(m.group(1)) * _UNITS[(m.group(2) or "").upper()])
    if value < 1:
        raise ValueError(f"shard size must be positive, got {size!r}")
    return value


def _header_bytes(entries: list[tuple[str, torch.Tensor]], limit: int) -> int:
    """An upper bound of a safetensors header for these tensors: 8 length bytes + compact JSON + 8-byte padding;
    dtypes counted at the longest name, offsets at the digits of `limit` (no offset in a file that fits exceeds it)."""
    body = {"__metadata__": _METADATA}
    body.update({name: {"dtype": "F8_E4M3", "shape": list(t.shape), "data_offsets": [limit, limit]}
                 for name, t in entries})
    return 8 + len(json.dumps(body, separators=(",", ":"))) + 8


def plan_shards(tensors: dict[str, torch.Tensor], max_bytes: int) -> list[list[str]]:
    """Tensor names split in order into files of at most `max_bytes` each (header included)."""
    shards: list[list[tuple[str, torch.Tensor]]] = [[]]
    data = 0
    for name, t in tensors.items():
        size = t.numel() * t.element_size()
        alone = _header_bytes([(name, t)], max_bytes) + size
        if alone > max_bytes:
            raise ValueError(f"tensor {name} {tuple(t.shape)} takes {alone:,} bytes in a file of its own, more than "
                             f"the shard size {max_bytes:,}; raise --max-shard-size")
        current = shards[-1]
        if current and _header_bytes(current + [(name, t)], max_bytes) + data + size > max_bytes:
            shards.append([])
            data = 0
        shards[-1].append((name, t))
        data += size
    return [[name for name, _ in shard] for shard in shards]


def save_weights(state_dict: dict[str, torch.Tensor], folder: str | os.PathLike, dtype: torch.dtype | None = None,
                 max_shard_size: int | str | None = None) -> list[Path]:
    """Write `state_dict` into `folder` as model.safetensors, or as shards + index when it does not fit in
    `max_shard_size`; each file atomically. Files of the other layout are removed afterwards, so the folder
    holds one set (a reader that must never see a mixed folder writes a new one and swaps it in whole,
    chronotope.atomic.swap_in_folder). Returns the weight files written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, t in state_dict.items():
        t = t.detach().cpu()
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        tensors[name] = t.contiguous()
    limit = parse_size(max_shard_size) if max_shard_size is not None else None
    shards = plan_shards(tensors, limit) if limit is not None else [list(tensors)]
    if len(shards) == 1:
        atomic_write(folder / WEIGHTS_NAME, lambda tmp: save_file(tensors, tmp, metadata=_METADATA))
        written = [folder / WEIGHTS_NAME]
    else:
        written = []
        for k, names in enumerate(shards):
            path = folder / f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
            part = {n: tensors[n] for n in names}
            atomic_write(path, lambda tmp, part=part: save_file(part, tmp, metadata=_METADATA))
            written.append(path)
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        atomic_write_json(folder / INDEX_NAME, {"metadata": {"total_size": total},
                                                "weight_map": {n: written[k].name for k, ns in enumerate(shards)
                                                               for n in ns}})
    keep = {p.name for p in written} | ({INDEX_NAME} if len(shards) > 1 else set())
    for p in folder.iterdir():
        if (p.name in (WEIGHTS_NAME, INDEX_NAME) or _SHARD.fullmatch(p.name)) and p.name not in keep:
            p.unlink()
    return written


def has_weights(folder: str | os.PathLike) -> bool:
    folder = Path(folder)
    return (folder / INDEX_NAME).is_file() or (folder / WEIGHTS_NAME).is_file()


def load_weights(folder: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict stored in `folder` by save_weights (either layout), as stored (cast on load_state_dict)."""
    folder = Path(folder)
    index = folder / INDEX_NAME
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{index} has no weight_map; it should map every tensor name to its shard file")
        out: dict[str, torch.Tensor] = {}
        for file in dict.fromkeys(weight_map.values()):
            if Path(file).name != file:
                raise ValueError(f"{index} names {file!r}; shard files must lie beside the index")
            if not (folder / file).is_file():
                raise FileNotFoundError(f"{folder / file} (named by {index.name}) is missing")
            out.update(load_file(str(folder / file)))
        missing = set(weight_map) - set(out)
        if missing:
            raise ValueError(f"{index} maps {len(missing)} tensors its shards do not hold, e.g. {sorted(missing)[0]}")
        return {name: out[name] for name in weight_map}
    if not (folder / WEIGHTS_NAME).is_file():
        raise FileNotFoundError(f"{folder} has neither {WEIGHTS_NAME} nor {INDEX_NAME}")
    return load_file(str(folder / WEIGHTS_NAME))


__all__ = ["INDEX_NAME", "WEIGHTS_NAME", "has_weights", "load_weights", "parse_size", "plan_shards",
           "save_weights"]
