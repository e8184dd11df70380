"""Low-rank adapters for training (Hu et al. 2021, "LoRA"): y = W x + b + alpha / r * B (A x), W frozen.

`add_lora` swaps the DiT's attention and MLP linears for `LoRALinear`s that keep the base weight and bias under
their own names (so the DiT's state dict and checkpoints keep their keys) and add `lora_A` [r, in] (random) and
`lora_B` [out, r] (zero: a fresh adapter changes nothing) beside them: PEFT / diffusers key names,
`blocks.0.attn.qkv.lora_A.weight`. Every other parameter is frozen, so the Trainer optimises the adapter
alone. `save_adapter` writes the folder chronotope/pipeline/lora.py reads and merges at sampling time.

    names = add_lora(dit, rank=16, targets=("attn", "cross", "mlp"))
    Trainer(DiTTask(dit, ...), out, steps).fit(); save_adapter(dit, "runs/lora/lora")
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor, nn

from chronotope.atomic import atomic_write, atomic_write_json, swap_in_folder
from chronotope.train.evaluate import lora_format

# target groups -> module names inside each DiT block (chronotope/dit/layers.py): self-attention's fused q/k/v
# projection and output, cross-attention's q, fused k/v and output, the MLP's two linears
TARGETS: dict[str, tuple[str, ...]] = {
    "attn": ("attn.qkv", "attn.proj"),
    "cross": ("cross.q", "cross.kv", "cross.proj"),
    "mlp": ("mlp.fc1", "mlp.fc2"),
}
DEFAULT_TARGETS = ("attn", "cross", "mlp")


class LoRALinear(nn.Linear):
    """A linear layer (its own weight [out, in] and bias, frozen) plus a rank-r update alpha / r * B A."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias  # the same Parameters: state-dict keys unchanged
        self.rank, self.alpha, self.scaling = rank, float(alpha), float(alpha) / rank
        self.lora_A = nn.Linear(base.in_features, rank, bias=False, device=base.weight.device)
        self.lora_B = nn.Linear(rank, base.out_features, bias=False, device=base.weight.device)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))  # as nn.Linear (and PEFT) initialise A
        nn.init.zeros_(self.lora_B.weight)  # B = 0: the adapted layer starts as the base layer exactly

    def forward(self, x: Tensor) -> Tensor:
        """x [..., in] -> [..., out]."""
        return F.linear(x, self.weight, self.bias) + self.lora_B(self.lora_A(x)) * self.scaling

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, rank={self.rank}, alpha={self.alpha:g}"


def check_lora(rank: int, alpha: float | None = None, targets: Sequence[str] = DEFAULT_TARGETS) -> float:
    """ValueError for a rank, alpha or target group that cannot be; returns alpha (default: rank)."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"LoRA rank must be a whole number >= 1 (4 to 64 is usual), got {rank!r}")
    alpha = float(rank if alpha is None else alpha)
    if not math.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"LoRA alpha must be a positive number (the update is scaled by alpha / rank), got {alpha}")
    unknown = [t for t in targets if t not in TARGETS]
    if unknown or not targets:
        raise ValueError(f"LoRA targets {list(targets)}: choose from {', '.join(TARGETS)} (default all three)")
    return alpha


def target_paths(dit: nn.Module, targets: Sequence[str] = DEFAULT_TARGETS) -> list[str]:
    """Module paths of the linears `targets` (names of TARGETS) select, e.g. blocks.0.attn.qkv."""
    check_lora(1, None, targets)
    suffixes = tuple(s for t in targets for s in TARGETS[t])
    paths = [name for name, m in dit.named_modules()
             if name.startswith("blocks.") and isinstance(m, nn.Linear) and name.split(".", 2)[-1] in suffixes]
    if not paths:
        raise ValueError(f"this DiT has no {'/'.join(targets)} linears to adapt (a class-conditional DiT has no "
                         "cross-attention; choose other targets)")
    return paths


def add_lora(dit: nn.Module, rank: int, alpha: float | None = None,
             targets: Sequence[str] = DEFAULT_TARGETS) -> list[str]:
    """Freeze `dit` and put LoRALinears (rank, alpha; alpha defaults to rank, a scaling of 1) on `targets`.
    Returns the adapted module paths."""
    alpha = check_lora(rank, alpha, targets)
    paths = target_paths(dit, targets)
    dit.requires_grad_(False)
    for path in paths:
        parent_path, _, name = path.rpartition(".")
        parent = dit.get_submodule(parent_path)
        base = getattr(parent, name)
        if rank > min(base.in_features, base.out_features):
            raise ValueError(f"LoRA rank {rank} is larger than {path} ({base.out_features} x {base.in_features}); "
                             f"choose at most {min(base.in_features, base.out_features)}")
        setattr(parent, name, LoRALinear(base, rank, alpha))
    dit.lora_targets = list(targets)  # recorded in the adapter's config
    return paths


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def lora_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The adapter alone: {path.lora_A.weight: [r, in], path.lora_B.weight: [out, r]}."""
    out = {}
    for path, layer in lora_layers(model).items():
        out[f"{path}.lora_A.weight"] = layer.lora_A.weight.detach()
        out[f"{path}.lora_B.weight"] = layer.lora_B.weight.detach()
    return out


def adapter_config(model: nn.Module, **extra) -> dict:
    """adapter_config.json of the adapters in `model`: rank, alpha, targets and the base DiT's signature."""
    layers = lora_layers(model)
    if not layers:
        raise ValueError("this model holds no LoRA layers; add them with add_lora(dit, rank)")
    first = next(iter(layers.values()))
    fmt = lora_format(model, {p: (m.out_features, m.in_features) for p, m in layers.items()})
    return {"format": fmt["format"], "peft_type": "LORA", "rank": first.rank, "alpha": first.alpha,
            "targets": list(getattr(model, "lora_targets", [])), "target_modules": sorted(layers),
            "base": fmt["base"], **extra}


def save_adapter(model: nn.Module, folder: str | os.PathLike, dtype: torch.dtype = torch.float16, **extra) -> None:
    """Write folder/adapter.safetensors (in `dtype`; float16 halves the file) + adapter_config.json, swapped in
    whole (a reader sees the old folder or the new one). `extra` goes into the config (e.g. the base model)."""
    tensors = {k: v.to(dtype).contiguous().cpu() for k, v in lora_state_dict(model).items()}
    config = adapter_config(model, dtype=str(dtype).removeprefix("torch."), **extra)

    fmt = lora_format(model, {})

    def write(tmp) -> None:
        os.makedirs(tmp, exist_ok=True)
        atomic_write(os.path.join(tmp, fmt["adapter_file"]),
                     lambda f: save_file(tensors, f, metadata={"format": fmt["format"]}))
        atomic_write_json(os.path.join(tmp, fmt["config_file"]), config, indent=2)

    swap_in_folder(folder, write)
