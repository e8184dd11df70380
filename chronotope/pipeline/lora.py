"""LoRA adapters at sampling time (Hu et al. 2021, "LoRA: Low-Rank Adaptation"): read, check, merge, unmerge.

An adapter folder (written by `chronotope train lora`, chronotope/train/lora.py) holds

    adapter.safetensors    PEFT / diffusers key names: `blocks.0.attn.qkv.lora_A.weight` [r, in] and
                           `blocks.0.attn.qkv.lora_B.weight` [out, r], one pair per adapted linear of the DiT
    adapter_config.json    rank, alpha, target modules, and the base DiT's architecture and shape signature

Merging adds scale * alpha / r * B @ A to each adapted weight, so sampling costs nothing extra; several
adapters add up, each with its own scale; `unmerge` restores the weights kept aside at the first merge, bit
for bit. The merged adapters are recorded on the DiT itself (`merged(dit)`), so pipelines sharing a DiT agree.

    adapter = read_adapter("runs/lora")            # the run folder or its lora/ folder
    merge(pipe.dit, adapter, scale=0.8)            # ValueError when it was trained for another DiT
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

ADAPTER_FILE = "adapter.safetensors"
CONFIG_FILE = "adapter_config.json"
FORMAT = "chronotope-lora/1"
ARCH_FIELDS = ("width", "depth", "heads", "mlp_ratio", "text_dim", "in_channels", "patch")


@dataclass
class Adapter:
    """One adapter: config (adapter_config.json) and A [r, in] / B [out, r] per module path."""

    folder: Path
    config: dict
    a: dict[str, Tensor]
    b: dict[str, Tensor]

    @property
    def scaling(self) -> float:
        return float(self.config["alpha"]) / int(self.config["rank"])

    def delta(self, path: str, scale: float = 1.0) -> Tensor:
        """scale * alpha / r * B @ A: the change to `path`'s weight, [out, in] float32."""
        return (self.b[path].float() @ self.a[path].float()) * (scale * self.scaling)


def architecture(dit: nn.Module) -> dict:
    """The DiT config fields an adapter depends on (shown when one does not fit)."""
    cfg = json.loads(json.dumps(dit.config.to_dict()))  # tuples as lists, as the JSON file holds them
    return {k: cfg[k] for k in ARCH_FIELDS if k in cfg}


def shape_signature(shapes: dict[str, tuple[int, int]]) -> str:
    """A short hash of {module path: (out, in)}: equal signatures, equal shapes."""
    text = json.dumps(sorted((k, list(v)) for k, v in shapes.items()))
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def adapter_folder(path: str | os.PathLike) -> Path:
    """An adapter folder, or a `train lora` run folder holding one in lora/."""
    folder = Path(path)
    for candidate in (folder, folder / "lora"):
        if (candidate / CONFIG_FILE).is_file() and (candidate / ADAPTER_FILE).is_file():
            return candidate
    raise FileNotFoundError(f"{path}: no LoRA adapter ({CONFIG_FILE} + {ADAPTER_FILE}, or a lora/ folder holding "
                            "them); train one with `chronotope train lora --model DIR --data MANIFEST --out RUN`")


def read_adapter(path: str | os.PathLike) -> Adapter:
    """Read and check an adapter folder (or a run folder with lora/): ValueError names what is wrong."""
    folder = adapter_folder(path)
    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{folder / CONFIG_FILE}: not valid JSON ({err})") from None
    rank, alpha = config.get("rank"), config.get("alpha")
    if config.get("format") != FORMAT or not isinstance(rank, int) or rank < 1 or not isinstance(alpha, (int, float)):
        raise ValueError(f"{folder / CONFIG_FILE}: not a {FORMAT} adapter config (needs format {FORMAT!r}, "
                         f"an integer rank >= 1 and a number alpha; got format {config.get('format')!r}, "
                         f"rank {rank!r}, alpha {alpha!r})")
    tensors = load_file(str(folder / ADAPTER_FILE))
    a = {k[: -len(".lora_A.weight")]: v for k, v in tensors.items() if k.endswith(".lora_A.weight")}
    b = {k[: -len(".lora_B.weight")]: v for k, v in tensors.items() if k.endswith(".lora_B.weight")}
    stray = sorted(set(tensors) - {f"{p}.lora_A.weight" for p in a} - {f"{p}.lora_B.weight" for p in b})
    if set(a) != set(b) or stray or not a:
        raise ValueError(f"{folder / ADAPTER_FILE}: needs one lora_A and one lora_B weight per module; unpaired "
                         f"{sorted(set(a) ^ set(b))[:3]}, unexpected {stray[:3]}")
    for p in a:
        if a[p].dim() != 2 or b[p].dim() != 2 or a[p].shape[0] != rank or b[p].shape[1] != rank:
            raise ValueError(f"{folder / ADAPTER_FILE}: {p} has A {list(a[p].shape)} and B {list(b[p].shape)}, "
                             f"not [rank, in] and [out, rank] with rank {rank}")
    return Adapter(folder, config, a, b)


def check_fits(adapter: Adapter, dit: nn.Module) -> None:
    """ValueError unless every adapted module is a linear of this DiT with the adapter's (out, in) shape."""
    modules = dict(dit.named_modules())
    for path in sorted(adapter.a):
        want = (adapter.b[path].shape[0], adapter.a[path].shape[1])
        layer = modules.get(path)
        have = tuple(layer.weight.shape) if isinstance(layer, nn.Linear) else None
        if have != want:
            trained = adapter.config.get("base", {}).get("architecture", {})
            here = "missing here" if have is None else f"{list(have)} here"
            raise ValueError(
                f"LoRA adapter {adapter.folder} does not fit this model: {path} is {here}, the adapter "
                f"expects [out, in] = {list(want)}; it was trained for a DiT with {_describe(trained)}, this one "
                f"has {_describe(architecture(dit))}. Load it onto that model, or train one for this model with "
                "`chronotope train lora --model DIR`")


def merged(dit: nn.Module) -> list[dict]:
    """The adapters merged into `dit`'s weights so far: [{"path", "scale"}], in order."""
    return list(getattr(dit, "_lora_merged", []))


@torch.no_grad()
def merge(dit: nn.Module, adapter: Adapter, scale: float = 1.0) -> None:
    """Add `scale` x the adapter to the DiT's weights (after check_fits); the first merge keeps the originals."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"a LoRA scale must be a finite number (1 = as trained, 0 = off), got {scale!r}")
    check_fits(adapter, dit)
    modules = dict(dit.named_modules())
    originals = dit.__dict__.setdefault("_lora_originals", {})
    for path in adapter.a:
        weight = modules[path].weight
        if path not in originals:
            originals[path] = weight.detach().clone()
        if scale != 0:
            weight.copy_((weight.float() + adapter.delta(path, scale).to(weight.device)).to(weight.dtype))
    dit.__dict__.setdefault("_lora_merged", []).append({"path": str(adapter.folder), "scale": float(scale)})


@torch.no_grad()
def unmerge(dit: nn.Module) -> None:
    """Put back the weights every merged adapter changed (exactly as they were before the first merge)."""
    modules = dict(dit.named_modules())
    for path, weight in dit.__dict__.pop("_lora_originals", {}).items():
        modules[path].weight.copy_(weight)
    dit.__dict__.pop("_lora_merged", None)


def _describe(arch: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in arch.items()) or "an unrecorded architecture"
