"""Scale-out from outside the model (torchtitan's `parallelize`): DDP / FSDP2, activation checkpointing,
torch.compile, bf16 autocast, and the few collectives the trainer needs.

Model files never import torch.distributed: `parallelize(model, ...)` wraps a plain module in the
order torchtitan uses (activation checkpointing -> compile -> data parallel), and the Trainer asks
this file for state dicts, `no_sync`, and metric reductions, so one loop runs on 1 CPU core or 64 GPUs:

    torchrun --nproc_per_node 8 -m chronotope.cli train dit --preset B --data CACHE --out RUN

- DDP (Li et al. 2020): every rank holds the model, gradients are all-reduced (averaged) in backward.
- FSDP2 (`torch.distributed.fsdp.fully_shard`, Zhao et al. 2023): parameters, gradients and optimizer
  state sharded per DiT/VAE block; GPU only. Its checkpoint path gathers a full (unsharded) state dict
  through torch.distributed.checkpoint.state_dict; it is written for GPUs and NOT exercised by the CPU
  tests (marked "FSDP (GPU, untested on CPU)" below).
- Activation checkpointing (Chen et al. 2016): each block's activations are recomputed in backward.
"""

from __future__ import annotations

import contextlib
import math
import os
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

PARALLEL_MODES = ("auto", "none", "ddp", "fsdp")
_DDP_MODELS: weakref.WeakSet = weakref.WeakSet()  # DDP wrappers made here, released by destroy_distributed


# --- process group ------------------------------------------------------------------------------


@dataclass
class DistInfo:
    """Where this process sits: rank among world_size processes, its device and the backend (None = 1 process)."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None


def init_distributed(device: str | None = None) -> DistInfo:
    """Join the process group that `torchrun` describes in the environment (RANK, WORLD_SIZE, LOCAL_RANK,
    MASTER_ADDR, MASTER_PORT): NCCL on GPUs, gloo on CPU. A plain `python` run (no WORLD_SIZE) is 1 process.

    device: "cpu", "cuda" or None (cuda:LOCAL_RANK when a GPU is visible, else cpu). Idempotent.
    """
    world = int(os.environ.get("WORLD_SIZE", 1))
    rank, local_rank = int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda was asked for but torch sees no GPU; use --device cpu")
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        dev = torch.device("cuda", torch.cuda.current_device())
    else:
        dev = torch.device("cpu")
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, dev, dist.get_backend())
    if world <= 1:
        return DistInfo(0, 1, 0, dev, None)
    if "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
        raise ValueError(f"WORLD_SIZE={world} but MASTER_ADDR/MASTER_PORT are not set; launch with "
                         "`torchrun --nproc_per_node N -m chronotope.cli train ...`")
    backend = "nccl" if dev.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, rank=rank, world_size=world,
                            device_id=dev if dev.type == "cuda" else None)
    return DistInfo(rank, world, local_rank, dev, backend)


def destroy_distributed(barrier: bool = True) -> None:
    """Leave the process group: wait for every rank (barrier), free the DDP reducers made by parallelize,
    then destroy the group, so no rank tears gloo down in interpreter teardown while its peer still runs.
    On a loaded 2-core machine the 2-rank CPU test aborted at exit ("terminate called without an active
    exception") in 1 of 11 runs before, 2 of 32 with the barrier alone, 0 of 50 with both.
    Pass barrier=False when leaving on an error: the other ranks may never reach it."""
    if dist.is_available() and dist.is_initialized():
        if barrier:
            dist.barrier()
        for ddp in list(_DDP_MODELS):  # free each DDP reducer now, not in interpreter teardown at exit
            ddp.reducer = None
        dist.destroy_process_group()


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def resolve_parallel(mode: str, world_size: int, device: torch.device) -> str:
    """'auto' -> 'ddp' when world_size > 1 else 'none'. FSDP2 needs GPUs: on CPU it is refused."""
    if mode not in PARALLEL_MODES:
        raise ValueError(f"--parallel must be one of {PARALLEL_MODES}, got {mode!r}")
    if mode == "auto":
        return "ddp" if world_size > 1 else "none"
    if mode in ("ddp", "fsdp") and world_size == 1 and not (dist.is_available() and dist.is_initialized()):
        raise ValueError(f"--parallel {mode} needs several processes: launch with "
                         f"`torchrun --nproc_per_node N -m chronotope.cli train ...` (or use --parallel none)")
    if mode == "fsdp" and device.type != "cuda":
        raise ValueError("--parallel fsdp (FSDP2) is GPU-only here; on CPU use --parallel ddp (the default under "
                         "torchrun): the models that fit a CPU fit every rank whole")
    if mode == "none" and world_size > 1:
        raise ValueError(f"--parallel none under {world_size} processes would train {world_size} unrelated models; "
                         "use --parallel ddp or fsdp")
    return mode


def check_bf16(bf16: bool, device: torch.device) -> None:
    """bf16 autocast is for GPUs: on these CPUs bf16 matmul runs at ~0.3 GFLOP/s against ~180 for fp32."""
    if bf16 and device.type != "cuda":
        raise ValueError("--bf16 is refused on CPU: bf16 matmul on this CPU is about 600x slower than fp32 "
                         "(0.3 vs 180 GFLOP/s measured); CPU training runs in fp32, drop --bf16")


def autocast(bf16: bool, device: torch.device) -> contextlib.AbstractContextManager:
    """torch.autocast(bf16) on GPU when asked (weights and optimizer stay fp32); a no-op otherwise."""
    if not bf16:
        return contextlib.nullcontext()
    check_bf16(bf16, device)
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def micro_batches_for_budget(global_tokens: int, per_rank_tokens: int, world_size: int) -> int:
    """Gradient-accumulation steps that reach `global_tokens` per optimizer step:
    ceil(global / (per-rank pack budget * world size)), at least 1."""
    if global_tokens < 1 or per_rank_tokens < 1 or world_size < 1:
        raise ValueError(f"token budgets and world size must be >= 1, got global {global_tokens}, "
                         f"per rank {per_rank_tokens}, world {world_size}")
    return max(1, math.ceil(global_tokens / (per_rank_tokens * world_size)))


# --- wrapping the model from outside ------------------------------------------------------------


def block_types() -> tuple[type, ...]:
    """The repeated blocks that activation checkpointing, compile and FSDP work on: DiT blocks and VAE ResBlocks."""
    from chronotope.dit.layers import DiTBlock

    types: list[type] = [DiTBlock]
    try:  # the VAE package is optional for a DiT-only install
        from chronotope.vae.layers import ResBlock

        types.append(ResBlock)
    except ImportError:
        pass
    return tuple(types)


def _blocks(model: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    """(parent, attribute name, block) for every block in `model` (outermost ones only)."""
    kinds, found = block_types(), []

    def walk(parent: nn.Module) -> None:
        for name, child in parent.named_children():
            inner = getattr(child, "_checkpoint_wrapped_module", child)
            if isinstance(inner, kinds):
                found.append((parent, name, child))
            else:
                walk(child)

    walk(model)
    return found


def apply_activation_checkpointing(model: nn.Module) -> int:
    """Recompute each block's activations in backward (non-reentrant torch.utils.checkpoint) instead of
    storing them; returns how many blocks were wrapped. State-dict keys do not change (the wrapper strips
    its prefix), so checkpoints load with or without it."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointImpl, checkpoint_wrapper

    n = 0
    for parent, name, block in _blocks(model):
        if not hasattr(block, "_checkpoint_wrapped_module"):
            setattr(parent, name, checkpoint_wrapper(block, checkpoint_impl=CheckpointImpl.NO_REENTRANT))
            n += 1
    return n


def apply_compile(model: nn.Module, backend: str = "inductor") -> int:
    """torch.compile each block in place (`Module.compile`: keys and deepcopy unchanged). Per block, as
    torchtitan: packed sequences change length every step, and one small graph per block recompiles least."""
    blocks = _blocks(model)
    for _, _, block in blocks:
        block.compile(backend=backend, dynamic=True)
    return len(blocks)


def parallelize(model: nn.Module, mode: str, device: torch.device, *, activation_checkpointing: bool = False,
                compile: bool = False, compile_backend: str = "inductor") -> nn.Module:
    """Move `model` to `device` and wrap it: activation checkpointing -> compile -> DDP or FSDP2.

    mode: 'none' | 'ddp' | 'fsdp' (resolve 'auto' with `resolve_parallel` first). Returns the module to
    train; the plain model stays reachable (trainer.unwrap for DDP; FSDP2 shards it in place).
    """
    if mode not in ("none", "ddp", "fsdp"):
        raise ValueError(f"parallelize mode must be 'none', 'ddp' or 'fsdp' (resolve 'auto' first), got {mode!r}")
    model = model.to(device)
    if activation_checkpointing:
        apply_activation_checkpointing(model)
    if compile:
        apply_compile(model, compile_backend)
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        # find_unused_parameters: the DiT's learned null-caption token only gets a gradient in packs that
        # hold a dropped caption, which differs between ranks and steps
        ids = [device.index] if device.type == "cuda" else None
        ddp = DDP(model, device_ids=ids, find_unused_parameters=True)
        _DDP_MODELS.add(ddp)
        return ddp
    if mode == "fsdp":  # FSDP (GPU, untested on CPU)
        from torch.distributed.fsdp import fully_shard

        for _, _, block in _blocks(model):
            fully_shard(block)
        fully_shard(model)
    return model


def is_fsdp(model: nn.Module) -> bool:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:
        return False
    return isinstance(model, FSDPModule)


def no_sync(model: nn.Module, skip_sync: bool) -> contextlib.AbstractContextManager:
    """Inside: a DDP backward accumulates locally without the all-reduce (all but the last micro-batch)."""
    if skip_sync and hasattr(model, "no_sync") and not is_fsdp(model):
        return model.no_sync()
    if skip_sync and is_fsdp(model):  # FSDP (GPU, untested on CPU): keep gradients unsharded until the last
        return _fsdp_no_sync(model)
    return contextlib.nullcontext()


@contextlib.contextmanager
def _fsdp_no_sync(model: nn.Module) -> Iterator[None]:
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


# --- state dicts (full, on every rank; rank 0 writes) ---------------------------------------------


def _plain(model: nn.Module) -> nn.Module:
    while isinstance(getattr(model, "module", None), nn.Module):  # DDP
        model = model.module
    return model


def model_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The full state dict of the plain model. Under FSDP a collective: every rank must call it."""
    if is_fsdp(model):  # FSDP (GPU, untested on CPU)
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return _plain(model).state_dict()


def load_model_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a full state dict on every rank (each rank reads the same checkpoint)."""
    if is_fsdp(model):  # FSDP (GPU, untested on CPU)
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, strict=True))
        return
    _plain(model).load_state_dict(state, strict=True)


def optimizer_state_dict(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's state dict with integer parameter keys (as checkpoint.flatten_optimizer expects).
    Under FSDP the sharded state is gathered (a collective) and its FQN keys mapped to indices."""
    if not is_fsdp(model):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict  # FSDP (GPU)

    full = get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    order = [fqn for g in full["param_groups"] for fqn in g["params"]]
    index = {fqn: i for i, fqn in enumerate(order)}
    groups, start = [], 0
    for g in full["param_groups"]:
        groups.append({**g, "params": list(range(start, start + len(g["params"])))})
        start += len(g["params"])
    return {"state": {index[k]: v for k, v in full["state"].items()}, "param_groups": groups,
            "fqns": order}


def load_optimizer_state_dict(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    if not is_fsdp(model):
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict  # FSDP (GPU)

    fqns = _fqns(model)
    groups = [{**g, "params": [fqns[i] for i in g["params"]]} for g in state["param_groups"]]
    full = {"state": {fqns[int(i)]: v for i, v in state["state"].items()}, "param_groups": groups}
    set_optimizer_state_dict(model, optimizer, full, options=StateDictOptions(full_state_dict=True))


def _fqns(model: nn.Module) -> list[str]:
    """Parameter names in `model.parameters()` order (the optimizer's index order)."""
    return [name.replace("_checkpoint_wrapped_module.", "") for name, _ in model.named_parameters()]


def gather_full(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """DTensors (FSDP shards, e.g. the EMA shadow) -> full tensors; plain tensors pass. A collective under FSDP."""
    return {k: (v.full_tensor() if hasattr(v, "full_tensor") else v) for k, v in tensors.items()}


def shard_like(full: dict[str, torch.Tensor], like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Full tensors -> this rank's shards laid out as the DTensors in `like` (plain tensors pass)."""
    out = {}
    for k, v in full.items():
        ref = like.get(k)
        if ref is not None and hasattr(ref, "device_mesh"):  # FSDP (GPU, untested on CPU)
            from torch.distributed.tensor import distribute_tensor

            v = distribute_tensor(v.to(ref.device_mesh.device_type), ref.device_mesh, ref.placements)
        out[k] = v
    return out


def plain_copy(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """A new unwrapped model of the same class and config holding `state` (for samples/export under FSDP)."""
    from torch.distributed.fsdp import FSDPModule

    cls = next(c for c in type(model).__mro__ if not issubclass(c, FSDPModule))
    clone = cls(model.config)
    clone.load_state_dict(state, strict=True)
    return clone


# --- collectives for the trainer ------------------------------------------------------------------


def all_gather(obj: Any) -> list[Any]:
    """Every rank's `obj` (small picklable Python values: metric sums, RNG states), in rank order."""
    if _world() == 1:
        return [obj]
    out: list[Any] = [None] * _world()
    dist.all_gather_object(out, obj)
    return out


def all_ranks_ok(ok: torch.Tensor) -> torch.Tensor:
    """`ok` (a 0-dim bool on the device) AND-ed over every rank, on the device: no host read."""
    if _world() == 1:
        return ok
    t = ok.to(torch.int32).reshape(1)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return t[0] > 0
