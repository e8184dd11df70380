"""Trainer, checkpoints and EMA on a toy regression task (CPU, a few seconds)."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from chronotope.train import checkpoint as ckpt
from chronotope.train.ema import EMA
from chronotope.train.plots import read_metrics, redraw
from chronotope.train.trainer import Trainer, TrainingDiverged, TrainTask


class StopHere(Exception):
    pass


class ToyTask:
    """y = x·w with input noise from the task generator and dropout from the global RNG."""

    def __init__(self, seed: int = 0, n_batches: int = 7, batch: int = 8, nan_calls=(), stop_at_call=None,
                 kill_at_call=None) -> None:
        torch.manual_seed(seed)
        self.model = nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Dropout(0.1), nn.Linear(32, 1))
        g = torch.Generator().manual_seed(123)
        self.x = torch.randn(n_batches * batch, 4, generator=g)
        self.y = self.x @ torch.tensor([[1.0], [-2.0], [0.5], [0.0]]) + 0.3
        self.n_batches, self.batch = n_batches, batch
        self.nan_calls, self.stop_at_call, self.kill_at_call = set(nan_calls), stop_at_call, kill_at_call
        self.calls = 0
        self.bad_items = 0

    def batches(self, epoch_seed: int, position: int):
        perm = torch.randperm(len(self.x), generator=torch.Generator().manual_seed(epoch_seed))
        for i in range(position, self.n_batches):
            idx = perm[i * self.batch:(i + 1) * self.batch]
            yield self.x[idx], self.y[idx]

    def loss(self, model, batch, generator):
        self.calls += 1
        if self.calls == self.stop_at_call:
            raise StopHere()
        if self.calls == self.kill_at_call:
            os.kill(os.getpid(), signal.SIGKILL)
        x, y = batch
        x = x + 0.01 * torch.randn(x.shape, generator=generator)
        loss = F.mse_loss(model(x), y)
        if self.calls in self.nan_calls:
            loss = loss * float("nan")
        return loss, {"items": len(x), "mse": float(loss.detach())}

    def samples(self, model, out_dir: Path, step: int) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        # consumes every global RNG on purpose: the trainer must isolate it from training
        noise = torch.randn(3, 4)
        random.random(), np.random.rand()
        (out_dir / "pred.json").write_text(json.dumps(model(noise).flatten().tolist()))


def _trainer(task, out, **kw) -> Trainer:
    kw = {"steps": 20, "lr": 1e-2, "log_every": 1, "ckpt_every": 100, "progress": False, "plot": False, **kw}
    return Trainer(task, out, **kw)


def test_task_protocol():
    assert isinstance(ToyTask(), TrainTask)


def test_loss_decreases_and_metrics_logged(tmp_path):
    out = tmp_path / "run"
    result = _trainer(ToyTask(), out, steps=60, log_every=10, lr=2e-2, plot=True).fit()
    recs = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in recs] == [10, 20, 30, 40, 50, 60]
    for key in ("loss", "grad_norm", "lr", "throughput", "skipped", "skipped_total", "bad_items", "elapsed", "mse"):
        assert key in recs[0], key
    assert recs[0]["throughput_unit"] == "items" and recs[0]["throughput"] > 0
    assert recs[-1]["loss"] < 0.3 * recs[0]["loss"]
    assert result["step"] == 60 and result["checkpoint"].name == "ckpt-0000060"
    assert (out / "metrics.png").stat().st_size > 1000
    (out / "metrics.png").unlink()
    assert redraw(out).exists()


def test_lr_warmup_and_cosine(tmp_path):
    t = _trainer(ToyTask(), tmp_path, steps=100, warmup_steps=10, schedule="cosine", min_lr_ratio=0.1, lr=1.0)
    assert t.lr_at(0) == pytest.approx(0.1) and t.lr_at(9) == pytest.approx(1.0)
    assert t.lr_at(10) == pytest.approx(1.0) and t.lr_at(100) == pytest.approx(0.1)
    assert 0.1 < t.lr_at(55) < 1.0


def test_wsd_cooldown_finishes_a_resumed_constant_run(tmp_path):
    t = _trainer(ToyTask(), tmp_path / "a", steps=100, warmup_steps=10, schedule="wsd", decay_steps=20, lr=1.0)
    lrs = [t.lr_at(s) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[10:80] == [1.0] * 70  # warmup, then stable until the cooldown
    assert all(a > b for a, b in zip(lrs[79:], lrs[80:])) and lrs[99] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="decay_steps"):
        _trainer(ToyTask(), tmp_path / "b", steps=100, warmup_steps=10, schedule="wsd", decay_steps=95)
    with pytest.raises(ValueError, match="min_lr_ratio"):
        _trainer(ToyTask(), tmp_path / "c", steps=100, schedule="wsd", decay_steps=20, min_lr_ratio=1.5)

    # a constant-lr run, resumed with a longer wsd schedule: the cooldown starts where the new schedule says
    out = tmp_path / "run"
    _trainer(ToyTask(), out, steps=10, ckpt_every=10).fit()
    _trainer(ToyTask(), out, steps=20, ckpt_every=10, schedule="wsd", decay_steps=5, resume=True).fit()
    lr = {r["step"]: r["lr"] for r in read_metrics(out / "metrics.jsonl")}
    assert [lr[s] for s in range(1, 16)] == [1e-2] * 15
    assert lr[16] < 1e-2 and lr[20] == pytest.approx(1e-3)


def test_checkpoint_layout_and_retention(tmp_path):
    out = tmp_path / "run"
    _trainer(ToyTask(), out, steps=20, ckpt_every=5, keep_last=2).fit()
    names = sorted(p.name for p in out.iterdir() if p.name.startswith("ckpt-"))
    assert names == ["ckpt-0000015", "ckpt-0000020"]
    c = out / "ckpt-0000020"
    assert sorted(p.name for p in c.iterdir()) == [
        "COMPLETE", "ema.safetensors", "model.safetensors", "optimizer.safetensors", "trainer_state.json"]
    state = json.loads((c / "trainer_state.json").read_text())
    assert state["step"] == 20 and {"python", "numpy", "torch", "generator"} <= set(state["rng"])
    assert state["epoch"] == 2 and state["position"] == 6  # 7 batches per epoch
    assert set(load_file(str(c / "model.safetensors"))) == {"0.weight", "0.bias", "3.weight", "3.bias"}
    assert any(k.endswith("exp_avg_sq") for k in load_file(str(c / "optimizer.safetensors")))
    assert (out / "samples" / "ckpt-0000005" / "pred.json").exists()


def test_resume_ignores_partial_checkpoints(tmp_path):
    out = tmp_path / "run"
    _trainer(ToyTask(), out, steps=10, ckpt_every=5, keep_last=5).fit()
    shutil.copytree(out / "ckpt-0000010", out / "ckpt-0000090.tmp")
    shutil.copytree(out / "ckpt-0000010", out / "ckpt-0000050")
    (out / "ckpt-0000050" / "COMPLETE").unlink()
    assert ckpt.latest_checkpoint(out).name == "ckpt-0000010"
    t = _trainer(ToyTask(), out, steps=12, resume=True, keep_last=5)
    assert t.step == 10 and t.resumed_from.name == "ckpt-0000010"
    with pytest.raises(FileNotFoundError, match="COMPLETE"):
        ckpt.load_checkpoint(out / "ckpt-0000050")
    t.fit()
    assert not (out / "ckpt-0000090.tmp").exists()  # stale temp folders are cleaned after a good save
    assert ckpt.latest_checkpoint(out).name == "ckpt-0000012"


def test_nan_steps_are_skipped_and_counted(tmp_path):
    out = tmp_path / "run"
    task = ToyTask(nan_calls={3, 4, 9})
    before = [p.detach().clone() for p in task.model.parameters()]
    result = _trainer(task, out, steps=12, max_bad_steps=3).fit()
    assert result["skipped_total"] == 3
    recs = read_metrics(out / "metrics.jsonl")
    assert [r["skipped"] for r in recs[:5]] == [0, 0, 1, 1, 0] and recs[-1]["skipped_total"] == 3
    assert recs[2]["loss"] is None  # a window with only a skipped step has no loss
    assert all(torch.isfinite(p).all() for p in task.model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, task.model.parameters()))


def test_nan_k_in_a_row_stops_with_clear_error(tmp_path):
    out = tmp_path / "run"
    task = ToyTask(nan_calls=set(range(8, 100)))
    with pytest.raises(TrainingDiverged, match="4 steps in a row"):
        _trainer(task, out, steps=30, max_bad_steps=4, ckpt_every=5).fit()
    last = ckpt.latest_checkpoint(out)
    assert last.name == "ckpt-0000010"  # step 10 had skipped updates but finite weights
    assert all(torch.isfinite(v).all() for v in load_file(str(last / "model.safetensors")).values())


def test_checkpoint_refuses_nan_weights(tmp_path):
    sd = {"w": torch.tensor([1.0, float("nan")])}
    with pytest.raises(ValueError, match="NaN"):
        ckpt.save_checkpoint(tmp_path, 1, sd, {})
    assert ckpt.list_checkpoints(tmp_path) == []


def test_rng_and_optimizer_roundtrip():
    gen = torch.Generator().manual_seed(5)
    states = ckpt.capture_rng(gen)
    a = (random.random(), np.random.rand(), torch.rand(2), torch.rand(2, generator=gen))
    json.loads(json.dumps(states))  # JSON-able
    ckpt.restore_rng(states, gen)
    b = (random.random(), np.random.rand(), torch.rand(2), torch.rand(2, generator=gen))
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2]) and torch.equal(a[3], b[3])
    model = nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    tensors, meta = ckpt.flatten_optimizer(opt.state_dict())
    back = ckpt.unflatten_optimizer(tensors, json.loads(json.dumps(meta)))
    opt2 = torch.optim.AdamW(nn.Linear(3, 2).parameters(), lr=0.5)
    opt2.load_state_dict(back)
    assert opt2.param_groups[0]["lr"] == 0.1 and opt2.param_groups[0]["betas"] == (0.9, 0.999)
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])


def test_ema_decay_warmup():
    model = nn.Linear(2, 1, bias=False)
    ema = EMA(model, decay=0.999)
    assert ema.current_decay() == pytest.approx(0.1)
    with torch.no_grad():
        model.weight.fill_(1.0)
    for _ in range(455):
        ema.update(model)
    # a plain 0.999 EMA would still hold ~63% of the initial weights here; the warmed-up one ~none
    assert torch.allclose(ema.shadow["weight"], torch.ones(1, 2), atol=1e-3)
    plain_left = 0.999 ** 455
    assert plain_left > 0.6
    with pytest.raises(ValueError):
        EMA(model, decay=1.0)


def _losses(run: Path) -> list[tuple]:
    return [(r["step"], r["loss"], r["grad_norm"], r["lr"]) for r in read_metrics(run / "metrics.jsonl")]


def test_exact_resume_is_bitwise(tmp_path):
    torch.set_num_threads(1)
    kw = dict(steps=23, warmup_steps=4, schedule="cosine", lr=1e-2)
    a = tmp_path / "a"
    _trainer(ToyTask(), a, **kw).fit()
    b = tmp_path / "b"
    with pytest.raises(StopHere):
        _trainer(ToyTask(stop_at_call=14), b, ckpt_every=5, **kw).fit()
    assert len(read_metrics(b / "metrics.jsonl")) == 13
    t = _trainer(ToyTask(), b, ckpt_every=5, resume=True, **kw)
    assert t.step == 10
    t.fit()
    assert _losses(a) == _losses(b)
    wa, wb = (load_file(str(p / "ckpt-0000023" / "model.safetensors")) for p in (a, b))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    ea, eb = (load_file(str(p / "ckpt-0000023" / "ema.safetensors")) for p in (a, b))
    assert all(torch.equal(ea[k], eb[k]) for k in ea)


_CHILD = """
import sys, torch
sys.path.insert(0, {tests!r})
torch.set_num_threads(1)
from test_train import ToyTask, _trainer
_trainer(ToyTask(kill_at_call={kill}), {out!r}, ckpt_every=3, steps=23, warmup_steps=4, schedule="cosine",
         lr=1e-2, resume=True).fit()
"""


@pytest.mark.slow
def test_kill9_resume_matches_uninterrupted(tmp_path):
    torch.set_num_threads(1)
    kw = dict(steps=23, warmup_steps=4, schedule="cosine", lr=1e-2)
    a = tmp_path / "a"
    _trainer(ToyTask(), a, ckpt_every=3, **kw).fit()
    b = tmp_path / "b"
    kill = random.Random().randint(2, 22)
    code = _CHILD.format(tests=str(Path(__file__).parent), kill=kill, out=str(b))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    first = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert first.returncode == -signal.SIGKILL, first.stderr
    done = subprocess.run([sys.executable, "-c", code.replace(f"kill_at_call={kill}", "kill_at_call=None")],
                          env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert _losses(a) == _losses(b), f"kill at call {kill}"
    wa, wb = (load_file(str(p / "ckpt-0000023" / "model.safetensors")) for p in (a, b))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_fresh_run_refuses_a_folder_with_checkpoints(tmp_path):
    _trainer(ToyTask(), tmp_path, steps=2).fit()
    with pytest.raises(ValueError, match="resume"):
        _trainer(ToyTask(), tmp_path, steps=4)
    with pytest.raises(ValueError, match="steps must be"):
        _trainer(ToyTask(), tmp_path / "x", steps=0)


def test_time_budget_stops_the_run_and_cools_down_by_the_clock(tmp_path, monkeypatch):
    """time_budget_s: the loop ends when the (checkpointed) clock is spent, the wsd cooldown follows the time,
    and a resumed run continues the same clock instead of starting a new budget."""
    import chronotope.train.trainer as trainer_mod

    clock = [0.0]
    monkeypatch.setattr(trainer_mod.time, "perf_counter", lambda: clock[0])

    class Ticking(ToyTask):  # every loss call takes one "second"
        def loss(self, model, batch, generator):
            clock[0] += 1.0
            return super().loss(model, batch, generator)

    out = tmp_path / "run"
    t = _trainer(Ticking(), out, steps=10_000, time_budget_s=20.0, schedule="wsd", decay_frac=0.25, lr=1.0,
                 ckpt_every=1000)
    t.time_progress = 0.5
    assert t.lr_at(100) == 1.0
    t.time_progress = 0.875  # halfway through the cooldown (the last quarter of the time)
    assert t.lr_at(100) == pytest.approx(0.1 + 0.9 * (1 - 0.5 ** 0.5))
    t.time_progress = 0.0
    result = t.fit()
    assert result["step"] == 20 and result["checkpoint"].name == "ckpt-0000020"  # stopped by the clock
    lrs = [r["lr"] for r in read_metrics(out / "metrics.jsonl")]
    assert lrs[0] == 1.0 and lrs[-1] < lrs[14] <= 1.0
    # the same command again: the budget is spent, nothing more to do
    again = _trainer(Ticking(), out, steps=10_000, time_budget_s=20.0, resume=True).fit()
    assert again["step"] == 20
    # a larger budget continues from the saved clock
    more = _trainer(Ticking(), out, steps=10_000, time_budget_s=25.0, resume=True).fit()
    assert more["step"] == 25
