"""Does a DiT training step keep its device busy? Host share, attention calls and host syncs of a real step.

    .venv/bin/python benchmarks/train_step.py                  # CPU: world-s, 2,048-token packs
    python benchmarks/train_step.py --device cuda              # also tokens/s at 32k packs and DiT-XL MFU

The step is the Trainer's own (chronotope/train/trainer.py + dit_task.py) on an in-memory latent cache with
the shapes of the World training mix (64px at 1:1, 4:3, 3:4, 16:9, 9:16; 1-, 17- and 33-frame items, as
docs/training-world.md section 1) and the shipped DiT's layout (world-s, patch 1x1x1, absolute positions).
Latent values and captions are random: a step's cost does not depend on them.

- host_share: the part of a step's wall time outside the model's forward, backward and optimizer (pack
  building, noise, bookkeeping), from the torch profiler's `train/*` ranges. Target <= 0.03.
- attn_calls_per_block: attention calls (ops whose name holds "attention": the packed op, or SDPA kernels
  outside it) in one block forward on a real pack, beside distinct_lengths, the distinct sample lengths per
  pack. Target 2 (one self-, one cross-attention call, whatever the pack holds).
- graph_breaks_per_block: torch._dynamo.explain's graph breaks of that block forward. Target 0 (--compile
  then compiles each block whole).
- recompiles: dynamo recompiles of one DiTBlock compiled as train/parallel.py compiles it (dynamic=True; here
  with the aot_eager backend: the same guards as inductor without its C++ build) while it runs forward and
  backward on the block inputs of an epoch's first 50 packs, each of its own layout. Target 0.
- aten_ops_per_step: non-view ATen ops (TorchDispatchMode) in one steady training step: pack, forward, loss,
  backward, fused AdamW (the first step also creates the optimizer state, 3 ops per parameter once:
  aten_ops_first_step). On a GPU each is at least one launch: a proxy for launch-bound steps.
- make_pack_ms: host time of building one pack (the `train/pack` range); pack_fill: tokens per pack over the
  token budget (mean over an epoch's first packs).
- syncs_per_step: device-to-host reads (`aten::_local_scalar_dense`: .item(), bool(), int(), float() of a
  tensor) inside non-logging steps. The step's own host-side draws use numpy or .tolist() of CPU tensors,
  so on a CPU run every counted read would be a device read on a GPU. Target <= 1; on CUDA also counted
  with torch.cuda.set_sync_debug_mode.
- on CUDA: tokens_per_s of world-s at 32,768-token packs in bf16 (target >= 1.5M on one H100/H200) and
  mfu_xl, DiT-XL at 16,384-token packs of a 256px mix in bf16: 3 x forward FLOPs (chronotope.dit.flops)
  per second over 989 TFLOP/s, the H100/H200 dense bf16 peak (target >= 0.45).

Prints a table, then last `train_step: host_share=<x> attn_calls_per_block=<x> syncs_per_step=<x>
graph_breaks_per_block=<x> recompiles=<x> aten_ops_per_step=<x> make_pack_ms=<x> pack_fill=<x> [tokens_per_s=<x> mfu_xl=<x>]`; writes benchmarks/results/train_step.json (train_step_cuda.json on CUDA).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from dataclasses import replace
from itertools import islice, product

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from chronotope.config import DIT_PRESETS  # noqa: E402
from chronotope.dit.flops import count_flops  # noqa: E402
from chronotope.dit.model import DiT  # noqa: E402
from chronotope.sizes import size_for  # noqa: E402
from chronotope.train.dit_task import DiTTask, TextEmbeddings  # noqa: E402
from chronotope.train.trainer import Trainer  # noqa: E402

RATIOS = ("1:1", "4:3", "3:4", "16:9", "9:16")
FRAMES = (1, 17, 33)
TEXT_LEN, TEXT_DIM = 40, 384
PEAK_BF16 = 989e12  # H100 / H200 SXM dense bf16, the datasheet figure the MFU uses


class MemoryCache:
    """The part of LatentCache that DiTTask reads, held in memory: rows with shapes, and the latents."""

    def __init__(self, shapes: list[tuple[int, int, int, int]], seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.rows = [{"shape": list(s), "text": f"item {i}"} for i, s in enumerate(shapes)]
        self._latents = [torch.randn(s, generator=g).half() for s in shapes]
        self.dir, self.meta = None, {}

    def __len__(self) -> int:
        return len(self.rows)

    def latents(self, progress: bool = False) -> list[torch.Tensor]:
        return self._latents


def world_mix(resolution: str, n: int, channels: int = 16, factor: int = 8) -> list[tuple[int, int, int, int]]:
    """Latent shapes (C, T, H, W) of n items cycling through the World mix at `resolution` (8x VAE, 4x time)."""
    combos = [(size_for(resolution, r), t) for r, t in product(RATIOS, FRAMES)]
    return [(channels, (t - 1) // 4 + 1, h // factor, w // factor) for (h, w), t in
            (combos[i % len(combos)] for i in range(n))]


def random_text(n: int, seed: int = 1) -> TextEmbeddings:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(12, TEXT_LEN, (n,), generator=g)
    mask = torch.arange(TEXT_LEN)[None, :] < lengths[:, None]
    emb = torch.randn(n, TEXT_LEN, TEXT_DIM, generator=g).half()
    return TextEmbeddings(emb, mask, (torch.zeros(TEXT_LEN, TEXT_DIM).half(), torch.zeros(TEXT_LEN, dtype=torch.bool)))


def make_trainer(preset: str, resolution: str, budget: int, items: int, device: str, bf16: bool, steps: int,
                 out: str, **cfg_changes) -> Trainer:
    cfg = replace(DIT_PRESETS[preset](), **cfg_changes)
    cache = MemoryCache(world_mix(resolution, items, cfg.in_channels))
    task = DiTTask(DiT(cfg), cache, random_text(items), token_budget=budget, time_shift=3.0)
    return Trainer(task, out, steps=steps, lr=1e-4, log_every=10**9, ckpt_every=10**9, progress=False, plot=False,
                   device=device, bf16=bf16, samples_at="end")


CPU_ONLY_READS = ("aten::_fused_adamw_",)
CPU_KEYS = ("step_ms", "host_share", "pack_share", "make_pack_ms", "pack_fill", "attn_calls_per_block",
            "distinct_lengths", "graph_breaks_per_block", "recompiles", "aten_ops_per_step", "syncs_per_step",
            "cpu_kernel_reads_per_step")


def _under(event, names: tuple[str, ...]) -> bool:
    p = event.cpu_parent
    while p is not None:
        if p.name in names:
            return True
        p = p.cpu_parent
    return False


def profile_steps(trainer: Trainer, warmup: int) -> dict:
    """Run the trainer's steps under the torch profiler; measure its steps after `warmup` (the last step,
    which logs and checkpoints, is left out)."""
    from torch.profiler import ProfilerActivity, profile

    trainer.task.export = lambda *a, **k: None  # no model folder for a benchmark
    acts = [ProfilerActivity.CPU]
    with profile(activities=acts) as prof:
        trainer.fit()
    events = sorted(prof.events(), key=lambda e: e.time_range.start)
    steps = [e for e in events if e.name == "train/step"][warmup:-1]
    lo, hi = steps[0].time_range.start, steps[-1].time_range.end

    def inside(e) -> bool:
        return lo <= e.time_range.start and e.time_range.end <= hi

    def total(name: str) -> float:
        return sum(e.time_range.elapsed_us() for e in events if e.name == name and inside(e))

    wall = sum(s.time_range.elapsed_us() for s in steps)
    model = total("train/forward") - total("train/pack") + total("train/backward") + total("train/optimizer")
    reads = [e for e in events if e.name == "aten::_local_scalar_dense" and inside(e)]
    # the CPU kernel of fused AdamW reads its own step counters on the host (there is no device on a CPU);
    # its CUDA kernel does not: counted apart
    in_kernel = [e for e in reads if _under(e, CPU_ONLY_READS)]
    syncs = len(reads) - len(in_kernel)
    return {"steps": len(steps), "step_ms": wall / len(steps) / 1e3, "host_share": 1 - model / wall,
            "pack_share": total("train/pack") / wall, "make_pack_ms": total("train/pack") / len(steps) / 1e3,
            "syncs_per_step": syncs / len(steps), "cpu_kernel_reads_per_step": len(in_kernel) / len(steps)}


def pack_stats(task: DiTTask, packs: int = 50) -> dict:
    """Mean distinct sample lengths per pack and mean fill (tokens / budget) over the first packs of an epoch."""
    it = task.batches(0, 0)
    items = [next(it) for _ in range(packs)]
    return {"distinct_lengths": sum(len({task.lengths[i] for i in pk}) for pk in items) / packs,
            "pack_fill": sum(task.lengths[i] for pk in items for i in pk) / (packs * task.token_budget)}


class _CountOps(TorchDispatchMode):
    """Counts the ATen (and custom) ops that reach the dispatcher, views apart."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: dict[str, int] = {}
        self.views = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.is_view:
            self.views += 1
        else:
            name = str(func.overloadpacket)
            self.calls[name] = self.calls.get(name, 0) + 1
        return func(*args, **(kwargs or {}))


def block_probe(task: DiTTask) -> dict:
    """On the epoch's first pack: attention calls and dynamo graph breaks of one DiTBlock forward, and the
    non-view ops of one whole training step (pack, forward, loss, backward, fused AdamW)."""
    model, gen = task.model, torch.Generator().manual_seed(0)
    items = next(task.batches(0, 0))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    counts = []
    for _ in range(2):  # the first step also creates the optimizer's state (3 ops per parameter, once): not counted
        with _CountOps() as step_ops:
            loss, _ = task.loss(model, items, gen)
            loss.backward()
            opt.step()
        opt.zero_grad(set_to_none=True)
        counts.append(sum(n for name, n in step_ops.calls.items() if not name.startswith("profiler.")))
    seen = {}
    hook = model.blocks[0].register_forward_pre_hook(lambda m, args: seen.setdefault("args", args))
    with torch.no_grad():
        packed, _, text, mask = task.make_pack(items, gen)
        model(packed, text, mask)
    hook.remove()
    block = model.blocks[0]
    with _CountOps() as block_ops, torch.no_grad():
        block(*seen["args"])
    explained = torch._dynamo.explain(block)(*seen["args"])
    torch._dynamo.reset()
    return {"attn_calls_per_block": sum(n for name, n in block_ops.calls.items() if "attention" in name),
            "graph_breaks_per_block": explained.graph_break_count,
            "aten_ops_per_step": counts[1], "aten_ops_first_step": counts[0]}


class _Stop(Exception):
    pass


def recompile_probe(task: DiTTask, packs: int = 50, backend: str = "aot_eager") -> dict:
    """Recompiles of one compiled DiTBlock (as train/parallel.py compiles it: dynamic=True) over the block inputs
    of an epoch's first `packs` packs, each of its own layout: dynamo frames compiled after the first."""
    from torch._dynamo.utils import counters

    model, gen, inputs = task.model, torch.Generator().manual_seed(0), []

    def grab(m, args):
        x, c, ctx = args
        inputs.append((x.detach().requires_grad_(), c.detach().requires_grad_(), ctx))
        raise _Stop  # the block's inputs are all this needs: stop the forward there

    hook = model.blocks[0].register_forward_pre_hook(grab)
    for items in islice(task.batches(0, 0), packs):
        packed, _, text, mask = task.make_pack(items, gen)
        try:
            with torch.no_grad():
                model(packed, text, mask)
        except _Stop:
            pass
    hook.remove()
    torch._dynamo.reset()
    counters.clear()
    block = torch.compile(model.blocks[0], backend=backend, dynamic=True)
    for args in inputs:
        block(*args).sum().backward()
    frames = counters["frames"]["ok"]
    torch._dynamo.reset()
    model.zero_grad(set_to_none=True)
    return {"recompiles": frames - 1, "recompile_packs": len(inputs)}


def cpu_measure(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as out:
        tr = make_trainer("world-s", "64px", 2048, 600, "cpu", False, args.warmup + args.steps + 1, out,
                          patch=(1, 1, 1), abs_pos=True)
        res = profile_steps(tr, args.warmup)
        res.update(pack_stats(tr.task), **block_probe(tr.task), **recompile_probe(tr.task, args.recompile_packs))
    return res


def cuda_run(preset: str, resolution: str, budget: int, items: int, steps: int, warmup: int, out: str,
             device: str = "cuda", compile: bool = False, **changes) -> dict:
    """bf16 training steps on CUDA through Trainer.fit: tokens/s and MFU of `steps` steps after `warmup`
    (the device synchronised only at the two ends), and the synchronising calls inside them
    (torch.cuda.set_sync_debug_mode). The last step, which logs and checkpoints, is not measured.
    compile: each block compiled as train/parallel.py does (inductor; aot_eager on CPU), the compile inside the
    warm-up steps, and the recompiles of all steps counted (dynamo frames past one per block).
    device="cpu" runs the same code in fp32 (a check of the script, not a measurement)."""
    from torch._dynamo.utils import counters

    from chronotope.train import parallel

    cuda = device == "cuda"
    tr = make_trainer(preset, resolution, budget, items, device, cuda, warmup + steps + 1,
                      os.path.join(out, f"{preset}-{budget}"), **changes)
    if compile:
        parallel.apply_compile(tr.model, "inductor" if cuda else "aot_eager")
    torch._dynamo.reset()
    counters.clear()
    tr.task.export = lambda *a, **k: None
    task, cfg = tr.task, tr.task.model.config
    packs = list(task.batches(0, 0))[warmup:warmup + steps]  # the packs of the measured steps (epoch 0)
    if len(packs) < steps:
        raise ValueError(f"{items} items fill only {len(packs) + warmup} packs; raise items")
    flops = sum(3 * count_flops(cfg, [tuple(task.cache.rows[j]["shape"][1:]) for j in pk], text_len=TEXT_LEN).flops
                for pk in packs)
    tokens = sum(task.lengths[j] for pk in packs for j in pk)
    marks: dict[str, float] = {}
    done = [0]
    step_once = tr._optimizer_step

    def hooked(ok):
        step_once(ok)
        done[0] += 1
        if done[0] == warmup:
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.set_sync_debug_mode("warn")
            marks["t0"], marks["before"] = time.perf_counter(), len(caught)
        elif done[0] == warmup + steps:
            if cuda:
                torch.cuda.set_sync_debug_mode(0)
                torch.cuda.synchronize()
            marks["t1"] = time.perf_counter()
            marks["syncs"] = sum("synchroniz" in str(w.message) for w in caught[marks["before"]:])
            marks["other_warnings"] = sorted({str(w.message)[:120] for w in caught[marks["before"]:]
                                              if "synchroniz" not in str(w.message)})

    tr._optimizer_step = hooked
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tr.fit()
    dt = marks["t1"] - marks["t0"]
    # dynamo inlines nn modules: one compiled frame serves every block; each further one is a recompile
    recompiles = counters["frames"]["ok"] - 1 if compile else float("nan")
    return {"recompiles": recompiles, "compiled": compile, "tokens_per_s": tokens / dt,
            "mfu": flops / dt / PEAK_BF16, "step_ms": 1e3 * dt / steps,
            "syncs_per_step": marks["syncs"] / steps, "params_m": sum(p.numel() for p in task.model.parameters()) / 1e6,
            "tokens_per_step": tokens / steps, "other_warnings": marks["other_warnings"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--steps", type=int, default=6, help="measured steps (default 6; x3 for world-s on CUDA)")
    p.add_argument("--warmup", type=int, default=2, help="steps before measuring (default 2)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--only-cuda", action="store_true", help="skip the CPU measurement")
    p.add_argument("--compile", action="store_true", help="CUDA steps with every block compiled (train/parallel.py)")
    p.add_argument("--cpu-check", action="store_true",
                   help="run the CUDA measurement's code on CPU at a tiny size (a check of the script, no numbers)")
    p.add_argument("--recompile-packs", type=int, default=50, help="packs the compiled block runs (default 50)")
    p.add_argument("--xl-steps", type=int, default=None, help="measured DiT-XL steps (default --steps)")
    p.add_argument("--out", default=None, help="JSON to write (default benchmarks/results/train_step[_cuda].json)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    res: dict = {"device": args.device, "torch": torch.__version__, "command": " ".join(sys.argv)}
    if args.only_cuda:
        cpu = {k: float("nan") for k in CPU_KEYS}
    else:
        cpu = cpu_measure(args)
    res["cpu_world_s_2048"] = cpu
    print(f"world-s, patch 1x1x1, 2,048-token packs, CPU ({torch.get_num_threads()} threads):")
    for k in CPU_KEYS:
        print(f"  {k:<27}{cpu[k]:.4g}")
    line = (f"train_step: host_share={cpu['host_share']:.3f} attn_calls_per_block={cpu['attn_calls_per_block']:.2f} "
            f"syncs_per_step={cpu['syncs_per_step']:.2f} graph_breaks_per_block={cpu['graph_breaks_per_block']:.0f} "
            f"recompiles={cpu['recompiles']:.0f} "
            f"aten_ops_per_step={cpu['aten_ops_per_step']:.0f} make_pack_ms={cpu['make_pack_ms']:.2f} "
            f"pack_fill={cpu['pack_fill']:.3f}")
    if args.device == "cuda" or args.cpu_check:
        dev = "cpu" if args.cpu_check else "cuda"
        res["gpu"] = torch.cuda.get_device_name() if dev == "cuda" else "none (--cpu-check: fp32 on CPU, tiny)"
        # --cpu-check: the same code on tiny packs, to test the script where there is no GPU
        ws_budget, ws_items, xl_preset, xl_budget, xl_items = ((32768, 20000, "XL", 16384, 800) if dev == "cuda" else
                                                               (512, 400, "debug", 256, 200))
        with tempfile.TemporaryDirectory() as out:
            ws = cuda_run("world-s", "64px", ws_budget, ws_items, args.steps * 3, args.warmup + 2, out, dev,
                          args.compile, patch=(1, 1, 1), abs_pos=True)
            xl = cuda_run(xl_preset, "256px" if dev == "cuda" else "64px", xl_budget, xl_items,
                          args.xl_steps or args.steps, args.warmup, out, dev, args.compile)
        res["cuda_world_s_32768"], res["cuda_xl_16384"] = ws, xl
        print(f"recompiles after warm-up: world-s {ws['recompiles']}, XL {xl['recompiles']} (compiled: {args.compile})")
        print(f"CUDA {res['gpu']}, bf16: world-s 32k packs {ws['tokens_per_s']:.4g} tokens/s ({ws['step_ms']:.1f} ms/step, "
              f"syncs/step {ws['syncs_per_step']:.2f}); XL 16k packs MFU {xl['mfu']:.3f} ({xl['step_ms']:.1f} ms/step, "
              f"syncs/step {xl['syncs_per_step']:.2f})")
        line += f" tokens_per_s={ws['tokens_per_s']:.0f} mfu_xl={xl['mfu']:.3f}"
    name = "train_step_cuda.json" if args.device == "cuda" or args.cpu_check else "train_step.json"
    path = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(res, f, indent=1)
    print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
