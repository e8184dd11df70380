"""Scale-out (chronotope/train/parallel.py): 2-process gloo DDP on CPU, gradient accumulation, activation
checkpointing, compile, the per-rank data split and the CLI options. CPU only, tiny shapes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from chronotope.config import DIT_PRESETS, VAE_PRESETS
from chronotope.data.latent_cache import LatentCache, encode_to_cache
from chronotope.dit.model import DiT
from chronotope.pipeline import DebugTextEncoder
from chronotope.train import parallel
from chronotope.train.dit_task import DiTTask, TextEmbeddings, plan_packs
from chronotope.train.plots import read_metrics
from chronotope.train.trainer import Trainer, get_rank, get_world_size

# --- shared helpers (also imported by the torchrun worker below) ---------------------------------


class FakeVAE(nn.Module):
    """Stands in for the VAE in encode_to_cache: [B, 3, T, H, W] -> 4 "latent" channels [B, 4, 1 + (T-1)/4, H/8, W/8]."""

    def encode_latents(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.cat([x, x.mean(1, keepdim=True)], dim=1)  # [B, 4, T, H, W]
        return z[:, :, ::4, ::8, ::8] * 3.0


def make_cache(folder: Path, n: int = 24) -> LatentCache:
    """A tiny latent cache of n random images and 5-frame clips at 32x32 and 32x48, with World-like captions."""
    g = torch.Generator().manual_seed(0)
    words = ["red", "blue", "circle", "square", "moves", "left", "right", "falls"]
    items = []
    for i in range(n):
        T, W = (1, 5)[i % 2], (32, 48)[(i // 2) % 2]
        caption = " ".join(words[j] for j in torch.randint(0, len(words), (4,), generator=g).tolist())
        items.append({"video": torch.rand(3, T, 32, W, generator=g) * 2 - 1, "text": caption})
    encode_to_cache(FakeVAE(), items, folder, shard_size=10, progress=False)
    return LatentCache(folder)


def debug_text(cache: LatentCache) -> TextEmbeddings:
    """Caption embeddings from DebugTextEncoder (no MiniLM: fast, deterministic)."""
    emb, mask = DebugTextEncoder(384).encode([str(r["text"]) for r in cache.rows])  # [N, Lt, 384], [N, Lt]
    null = (torch.zeros(emb.shape[1], 384).half(), torch.zeros(emb.shape[1], dtype=torch.bool))
    return TextEmbeddings(emb.half(), mask, null)


def dit_task(cache_dir: Path, token_budget: int = 24) -> DiTTask:
    torch.manual_seed(0)
    cache = LatentCache(cache_dir)
    return DiTTask(DiT(DIT_PRESETS["debug"]()), cache, debug_text(cache), token_budget=token_budget,
                   caption_dropout=0.5)


class RegressionTask:
    """Noise-free regression whose loss is a mean over items: a step of 2 ranks x b items equals a step of
    1 rank x 2b items. Each step reads G = b x world items of a seeded permutation; this rank takes its b."""

    def __init__(self, batch: int, n: int = 64) -> None:
        torch.manual_seed(0)
        self.model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(n, 4, generator=g)
        self.y = torch.sin(self.x @ torch.tensor([[1.0], [-2.0], [0.5], [0.3]]))
        self.batch = batch

    def batches(self, epoch_seed: int, position: int):
        rank, world = get_rank(), get_world_size()
        perm = torch.randperm(len(self.x), generator=torch.Generator().manual_seed(epoch_seed))
        group = self.batch * world
        for b in range(position, len(self.x) // group):
            idx = perm[b * group + rank * self.batch: b * group + (rank + 1) * self.batch]
            yield self.x[idx], self.y[idx]

    def loss(self, model, batch, generator):
        x, y = batch
        return F.mse_loss(model(x), y), {"items": len(x)}


def regression_trainer(batch: int, out: Path, **kw) -> Trainer:
    kw = {"steps": 6, "lr": 1e-2, "log_every": 1, "ckpt_every": 100, "progress": False, "plot": False,
          "ema_decay": None, **kw}
    return Trainer(RegressionTask(batch), out, **kw)


_WORKER = r"""
import json, os, sys
from pathlib import Path
import torch
torch.set_num_threads(1)
sys.path.insert(0, {tests!r})
from safetensors.torch import save_file
from test_parallel import dit_task, regression_trainer
from chronotope.train.trainer import Trainer, get_rank, unwrap
from chronotope.train import parallel

out = Path({out!r})
# 1. the debug DiT on a latent cache, DDP over 2 gloo processes
task = dit_task(Path({cache!r}))
seen, orig = [], task.loss
def loss(model, batch, generator):
    value, metrics = orig(model, batch, generator)
    seen.append({{"items": list(batch), "loss": float(value.detach())}})
    return value, metrics
task.loss = loss
kw = dict(lr=1e-3, log_every=1, ckpt_every=2, progress=False, plot=False)
trainer = Trainer(task, out / "dit", steps=4, **kw)
trainer.fit()
rank = get_rank()
# the same run stopped at step 2 and resumed (in the same processes) to step 4
Trainer(dit_task(Path({cache!r})), out / "dit-resumed", steps=2, **kw).fit()
Trainer(dit_task(Path({cache!r})), out / "dit-resumed", steps=4, resume=True, **kw).fit()
save_file(dict(unwrap(trainer.model).state_dict()), str(out / f"dit-rank{{rank}}.safetensors"))
(out / f"dit-rank{{rank}}.json").write_text(json.dumps({{"seen": seen, "mode": trainer.parallel_mode,
    "gen": trainer.generator.initial_seed()}}))
# 2. the regression task: 2 ranks x 4 items per step
t = regression_trainer(4, out / "reg")
t.fit()
save_file(dict(unwrap(t.model).state_dict()), str(out / f"reg-rank{{rank}}.safetensors"))
parallel.destroy_distributed()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the 2-process test --------------------------------------------------------------------------


@pytest.mark.slow
def test_ddp_two_processes_gloo(tmp_path):
    """torchrun --nproc_per_node 2 on CPU: ranks end with identical weights, each trained on its own packs with
    its own noise, logs hold the mean over ranks, a resumed run is exact, and a 2 x 4 regression run equals a
    1 x 8 run."""
    make_cache(tmp_path / "cache")
    script = tmp_path / "worker.py"
    script.write_text(_WORKER.format(tests=str(Path(__file__).parent), out=str(tmp_path), cache=str(tmp_path / "cache")))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent.parent)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--nnodes", "1",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(script)]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    # DiT: identical weights on both ranks (DDP averages gradients; every rank takes the same step)
    w0, w1 = (load_file(str(tmp_path / f"dit-rank{r}.safetensors")) for r in (0, 1))
    assert w0.keys() == w1.keys() and all(torch.equal(w0[k], w1[k]) for k in w0)
    init = dit_task(tmp_path / "cache").model.state_dict()
    assert any(not torch.equal(init[k], w0[k]) for k in w0)  # and they trained
    r0, r1 = (json.loads((tmp_path / f"dit-rank{r}.json").read_text()) for r in (0, 1))
    assert r0["mode"] == "ddp" and r0["gen"] != r1["gen"]  # each rank its own noise stream
    for a, b in zip(r0["seen"], r1["seen"]):
        assert not set(a["items"]) & set(b["items"])  # each rank its own packs
    logged = [r["loss"] for r in read_metrics(tmp_path / "dit" / "metrics.jsonl")]
    assert logged == pytest.approx([(a["loss"] + b["loss"]) / 2 for a, b in zip(r0["seen"], r1["seen"])], rel=1e-6)
    state = json.loads((tmp_path / "dit" / "ckpt-0000004" / "trainer_state.json").read_text())
    assert state["config"]["world_size"] == 2 and len(state["rng_ranks"]) == 2
    assert state["rng_ranks"][0]["generator"] != state["rng_ranks"][1]["generator"]
    # resume under DDP on the same number of ranks is exact: every rank's RNGs are restored
    resumed = read_metrics(tmp_path / "dit-resumed" / "metrics.jsonl")
    assert [(r["step"], r["loss"], r["grad_norm"]) for r in resumed] == [
        (r["step"], r["loss"], r["grad_norm"]) for r in read_metrics(tmp_path / "dit" / "metrics.jsonl")]
    wr = load_file(str(tmp_path / "dit-resumed" / "ckpt-0000004" / "model.safetensors"))
    assert all(torch.equal(wr[k], w0[k]) for k in w0)

    # regression: 2 ranks x 4 items == 1 rank x 8 items. Tolerance 1e-5: the all-reduce sums the two half-batch
    # gradients in another order than one mean over 8 items (float rounding ~1e-7), which Adam carries over 6 steps
    single = regression_trainer(8, tmp_path / "single")
    single.fit()
    two = [r["loss"] for r in read_metrics(tmp_path / "reg" / "metrics.jsonl")]
    one = [r["loss"] for r in read_metrics(tmp_path / "single" / "metrics.jsonl")]
    assert len(two) == len(one) == 6 and two == pytest.approx(one, rel=1e-5, abs=1e-7)
    r0 = load_file(str(tmp_path / "reg-rank0.safetensors"))
    for k, v in single.model.state_dict().items():
        torch.testing.assert_close(r0[k], v, atol=1e-5, rtol=1e-5)


# --- single-process tests ------------------------------------------------------------------------


def test_grad_accumulation_matches_one_big_batch(tmp_path):
    """2 micro-batches of 4 == 1 batch of 8 (same items, loss = mean over items; float tolerance)."""
    torch.set_num_threads(1)
    big = regression_trainer(8, tmp_path / "big")
    big.fit()
    acc = regression_trainer(4, tmp_path / "acc", grad_accum=2)
    acc.fit()
    a = [r["loss"] for r in read_metrics(tmp_path / "big" / "metrics.jsonl")]
    b = [r["loss"] for r in read_metrics(tmp_path / "acc" / "metrics.jsonl")]
    assert a == pytest.approx(b, rel=1e-6, abs=1e-8)
    for k, v in big.model.state_dict().items():
        torch.testing.assert_close(acc.model.state_dict()[k], v, atol=1e-6, rtol=1e-6)
    recs = read_metrics(tmp_path / "acc" / "metrics.jsonl")
    assert recs[0]["throughput_unit"] == "items" and acc.position == 2 * 6 % 16  # 16 micro-batches per epoch
    # without accumulation, 4-item steps differ: the test can tell
    small = regression_trainer(4, tmp_path / "small")
    small.fit()
    assert [r["loss"] for r in read_metrics(tmp_path / "small" / "metrics.jsonl")][1:] != pytest.approx(a[1:], rel=1e-3)


def _dit_grads(model: nn.Module, task: DiTTask) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss, _ = task.loss(model, [0, 1, 2, 3], torch.Generator().manual_seed(3))
    loss.backward()
    return float(loss.detach()), {n.replace("_checkpoint_wrapped_module.", ""): p.grad.clone()
                         for n, p in model.named_parameters() if p.grad is not None}


def test_activation_checkpointing_same_gradients(tmp_path):
    make_cache(tmp_path / "cache", n=8)
    task = dit_task(tmp_path / "cache", token_budget=64)
    keys = list(task.model.state_dict())
    loss_a, grads_a = _dit_grads(task.model, task)
    assert parallel.apply_activation_checkpointing(task.model) == DIT_PRESETS["debug"]().depth
    assert parallel.apply_activation_checkpointing(task.model) == 0  # idempotent
    assert list(task.model.state_dict()) == keys  # checkpoints load with or without it
    assert type(task.model.blocks[0]).__name__ == "CheckpointWrapper"
    loss_b, grads_b = _dit_grads(task.model, task)
    assert loss_a == loss_b and grads_a.keys() == grads_b.keys()
    for k in grads_a:
        torch.testing.assert_close(grads_b[k], grads_a[k], atol=1e-6, rtol=1e-5)


def test_activation_checkpointing_vae_blocks():
    from chronotope.vae.model import CausalVAE

    torch.manual_seed(0)
    vae = CausalVAE(VAE_PRESETS["debug"]())
    x = torch.rand(1, 3, 5, 16, 16) * 2 - 1

    def grads() -> dict[str, torch.Tensor]:
        vae.zero_grad(set_to_none=True)
        recon, _ = vae(x, sample=True, generator=torch.Generator().manual_seed(0))
        recon.square().mean().backward()
        return {n.replace("_checkpoint_wrapped_module.", ""): p.grad.clone() for n, p in vae.named_parameters()}

    before = grads()
    assert parallel.apply_activation_checkpointing(vae) > 0
    after = grads()
    for k in before:
        torch.testing.assert_close(after[k], before[k], atol=1e-6, rtol=1e-5)


@pytest.mark.slow
def test_compile_blocks_keeps_keys_and_outputs(tmp_path):
    """Per-block torch.compile in place (backend 'eager' here: inductor needs minutes of C++ builds on 2 cores)."""
    make_cache(tmp_path / "cache", n=8)
    task = dit_task(tmp_path / "cache", token_budget=64)
    keys = list(task.model.state_dict())
    loss_a, _ = _dit_grads(task.model, task)
    assert parallel.apply_compile(task.model, backend="eager") == DIT_PRESETS["debug"]().depth
    loss_b, _ = _dit_grads(task.model, task)
    assert list(task.model.state_dict()) == keys and loss_a == pytest.approx(loss_b, rel=1e-6)


def test_dit_packs_split_across_ranks(tmp_path, monkeypatch):
    make_cache(tmp_path / "cache")
    task = dit_task(tmp_path / "cache")
    order = torch.randperm(len(task.lengths), generator=torch.Generator().manual_seed(7)).tolist()
    everything = plan_packs(task.lengths, order, task.token_budget)
    assert len(list(task.batches(7, 0))) == len(everything)
    monkeypatch.setenv("WORLD_SIZE", "3")
    shares = []
    for r in range(3):
        monkeypatch.setenv("RANK", str(r))
        shares.append(list(task.batches(7, 0)))
    n = len(everything) // 3 * 3
    assert len({len(s) for s in shares}) == 1 and sum(len(s) for s in shares) == n  # same number of steps
    assert sorted(map(tuple, (p for s in shares for p in s))) == sorted(map(tuple, everything[:n]))
    monkeypatch.setenv("RANK", "1")
    assert list(task.batches(7, 1)) == shares[1][1:]  # resume position counts this rank's packs
    monkeypatch.setenv("WORLD_SIZE", str(len(everything) + 1))
    with pytest.raises(ValueError, match="fewer than"):
        next(task.batches(7, 0))


def test_options_checked_with_clear_errors(tmp_path):
    cpu = torch.device("cpu")
    assert parallel.resolve_parallel("auto", 1, cpu) == "none"
    assert parallel.resolve_parallel("auto", 4, cpu) == "ddp"
    with pytest.raises(ValueError, match="GPU"):
        parallel.resolve_parallel("fsdp", 2, cpu)
    with pytest.raises(ValueError, match="torchrun"):
        parallel.resolve_parallel("ddp", 1, cpu)
    with pytest.raises(ValueError, match="one of"):
        parallel.resolve_parallel("zero3", 2, cpu)
    with pytest.raises(ValueError, match="600x"):
        regression_trainer(8, tmp_path / "bf16", bf16=True)
    with pytest.raises(ValueError, match="grad_accum"):
        regression_trainer(8, tmp_path / "acc0", grad_accum=0)
    assert parallel.micro_batches_for_budget(8192, 2048, 1) == 4
    assert parallel.micro_batches_for_budget(8192, 2048, 8) == 1
    assert parallel.micro_batches_for_budget(10000, 1024, 2) == 5  # ceil(10000 / 2048)
    with pytest.raises(ValueError):
        parallel.micro_batches_for_budget(0, 1024, 2)


def test_cli_options_and_plot_verb(tmp_path, capsys):
    from chronotope.cli import build_parser, main
    from chronotope.cli.trainer_options import trainer_options

    args = build_parser().parse_args(["train", "dit", "--data", "c", "--out", str(tmp_path / "r"), "--parallel", "ddp",
                                      "--activation-checkpointing", "--compile", "--grad-accum", "3",
                                      "--global-token-budget", "4096"])
    kw = trainer_options(args)
    assert kw["parallel_mode"] == "ddp" and kw["activation_checkpointing"] and kw["compile"] and kw["grad_accum"] == 3
    assert args.global_token_budget == 4096 and not kw["bf16"]
    regression_trainer(8, tmp_path / "run", steps=2).fit()
    assert not (tmp_path / "run" / "metrics.png").exists()
    assert main(["plot", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "metrics.png").stat().st_size > 1000
    assert main(["plot", str(tmp_path / "nothing")]) == 2
    assert "no metrics log" in capsys.readouterr().err
