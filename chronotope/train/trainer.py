"""One training loop for every model: a `TrainTask` ("model + loss + batches") and a `Trainer` told what to do by
a `TrainerConfig` (chronotope/train/trainer_config.py: its settings and the learning-rate schedule).

The VAE (chronotope/train/vae_task.py) and the DiT plug into the same loop: AdamW with optional
linear warmup and cosine decay, gradient clipping, EMA with warmed-up decay, NaN/inf steps
skipped (K in a row stop the run), a tqdm bar, `metrics.jsonl` + `metrics.png`, crash-safe
checkpoints (chronotope/train/checkpoint.py) and bit-exact resume: the data order is a pure
function of (epoch seed, position) and every RNG is saved, so a run stopped at step k and resumed
reproduces the uninterrupted run. Distribution (DDP/FSDP/compile) wraps `task.model` from
outside (chronotope/train/parallel.py); here only small rank helpers decide who writes.

A step never waits for the device (benchmarks/train_step.py counts it): loss, gradient norm and the
"step was finite" flag stay on the device, the non-finite guard skips the update inside the fused
AdamW kernel (`found_inf`, as GradScaler does) and the EMA (`ok`), and the host reads the window's
sums once per log line. `time_budget_s` bounds a run by wall-clock instead of steps (its lr
schedule then follows the time spent, and a resumed run continues the same clock).

Under `torchrun` the same loop is data parallel: each rank reads its own share of every step's
data (the task splits by `get_rank()`), draws its own noise (generator seeded by seed + rank),
accumulates `grad_accum` micro-batches (DDP all-reduces only the last), and the logged metrics
are reduced over ranks; rank 0 alone writes logs, plots and checkpoints.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn
from tqdm.auto import tqdm

from chronotope.train import checkpoint as ckpt
from chronotope.train import parallel
from chronotope.train.ema import EMA
from chronotope.train.log_window import LogWindow
from chronotope.train.plots import plot_metrics, read_metrics
from chronotope.train.ranks import (barrier, get_rank, get_world_size, is_main_process,  # noqa: F401 (re-exported)
                                    seed_everything, unwrap)
from chronotope.train.trainer_config import MAX_BUDGET_S, SCHEDULES, TrainerConfig, lr_at  # noqa: F401


@runtime_checkable
class TrainTask(Protocol):
    """What a model brings to the Trainer.

    batches(epoch_seed, position): the batches of one epoch in a deterministic order given
        `epoch_seed`, starting at batch index `position` (so a resume continues at the exact item).
    loss(model, batch, generator): (scalar loss tensor, metrics); metrics may hold "items" or
        "tokens" (counts for throughput) and any floats to log. Draw noise from `generator`.
    Optional: samples(model, out_dir, step) writes PNG/GIF samples at each checkpoint;
        export(model, run_dir, step) writes a model folder; `bad_items` counts skipped data.
    """

    model: nn.Module

    def batches(self, epoch_seed: int, position: int) -> Iterator[Any]: ...

    def loss(self, model: nn.Module, batch: Any, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]: ...


_RANK_STRIDE = 1_000_003  # noise seed of rank r: seed + 1 + r * stride (rank 0 keeps seed + 1)
_COUNT_KEYS = ("tokens", "items", "samples", "pixels")  # metrics summed over micro-batches; others averaged


class TrainingDiverged(RuntimeError):
    """Raised when `max_bad_steps` optimizer steps in a row had a NaN/inf loss or gradient norm."""


# --- the loop ---------------------------------------------------------------------------------


class Trainer:
    """Train `task.model` for `steps` optimizer steps, writing everything under `out_dir`.

    out_dir/metrics.jsonl   one JSON line per logged step
    out_dir/metrics.png     loss / grad norm / lr / throughput, redrawn at each checkpoint
    out_dir/ckpt-0000100/   checkpoints (newest `keep_last` kept)
    out_dir/samples/ckpt-0000100/   task.samples output at each checkpoint
    """

    def __init__(self, task: TrainTask, out_dir: str | os.PathLike | TrainerConfig | None = None,
                 steps: int | None = None, **options: Any) -> None:
        """Trainer(task, TrainerConfig(...)), or its fields as keywords: Trainer(task, out_dir, steps, lr=..., ...);
        `config=` names the task's record (TrainerConfig.record), as in older calls."""
        if isinstance(out_dir, TrainerConfig):
            cfg = out_dir
        else:
            options["record"] = options.pop("config", None) or options.get("record") or {}
            cfg = TrainerConfig(out_dir=out_dir, steps=steps, **options)
        self.cfg, self.task, self.out_dir, self.steps = cfg, task, Path(cfg.out_dir), cfg.steps
        # scale-out: join torchrun's process group (a no-op for one process), then wrap from outside
        self.dist = parallel.init_distributed(cfg.device)
        self.parallel_mode = parallel.resolve_parallel(cfg.parallel_mode, self.dist.world_size, self.dist.device)
        parallel.check_bf16(cfg.bf16, self.dist.device)
        self.device = self.dist.device
        # sample grids cost seconds of CPU but stall a GPU: at every checkpoint on CPU, at the end on a GPU
        self.samples_at = cfg.samples_at or ("checkpoint" if self.device.type == "cpu" else "end")
        self.config = cfg.saved(self.dist.world_size, self.parallel_mode)
        self.model = parallel.parallelize(task.model, self.parallel_mode, self.device,
                                          activation_checkpointing=cfg.activation_checkpointing, compile=cfg.compile)
        seed_everything(cfg.seed)
        # the task's noise generator: its own stream per rank, so ranks do not draw identical noise
        self.generator = torch.Generator().manual_seed(self._noise_seed(self.dist.rank))
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("the task's model has no trainable parameters")
        # fused AdamW: one kernel for the whole update, and it takes `found_inf` (the non-finite guard)
        # on the device; FSDP's DTensor parameters keep the default implementation
        self.fused = self.parallel_mode != "fsdp"
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay,
                                           **({"fused": True} if self.fused else {}))
        self.ema = EMA(unwrap(self.model), cfg.ema_decay) if cfg.ema_decay else None
        # progress state (all of it goes into the checkpoint); the two skip counters live on the device
        self.step, self.epoch, self.position = 0, 0, 0
        self._skipped = torch.zeros((), dtype=torch.int64, device=self.device)  # steps skipped in all
        self._bad_run = torch.zeros((), dtype=torch.int64, device=self.device)  # non-finite steps in a row
        self.elapsed_before = 0.0
        self.time_progress = 0.0  # fraction of time_budget_s spent, refreshed at log steps (all ranks agree)
        self.resumed_from: Path | None = None
        if cfg.resume:
            self._resume()
        elif ckpt.latest_checkpoint(self.out_dir) is not None:
            raise ValueError(f"{self.out_dir} already holds checkpoints ({ckpt.latest_checkpoint(self.out_dir).name}); "
                             "pass resume=True (--resume) to continue that run, or choose a new output folder")
        if self.resumed_from is None:
            self._truncate_metrics(0)  # a run starting at step 0 owns the log (a crash before ckpt 1 left lines)

    def _noise_seed(self, rank: int, salt: int = 0) -> int:
        return self.cfg.seed + 1 + _RANK_STRIDE * rank + salt

    @property
    def skipped_total(self) -> int:
        return int(self._skipped)  # a host read: log steps and checkpoints only

    @property
    def bad_in_a_row(self) -> int:
        return int(self._bad_run)

    # -- schedule --------------------------------------------------------------------------

    def lr_at(self, step: int) -> float:
        """Learning rate for optimizer step `step` (0-based): trainer_config.lr_at at this run's time progress."""
        return lr_at(self.cfg, step, self.time_progress)

    # -- data ------------------------------------------------------------------------------

    def _epoch_seed(self, epoch: int) -> int:
        return self.cfg.seed * 1_000_003 + epoch

    def _next_batch(self) -> Any:
        for _ in range(2):
            if self._it is None:
                self._it = iter(self.task.batches(self._epoch_seed(self.epoch), self.position))
            try:
                batch = next(self._it)
                self.position += 1
                return batch
            except StopIteration:
                self._it, self.epoch, self.position = None, self.epoch + 1, 0
        raise ValueError("the task yielded no batches for a whole epoch; is the data set empty or the batch too large?")

    # -- checkpoints -----------------------------------------------------------------------

    def _state(self, rng_ranks: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        state = {
            "epoch": self.epoch, "position": self.position, "skipped_total": self.skipped_total,
            "bad_in_a_row": self.bad_in_a_row, "elapsed": self._elapsed(),
            "ema_updates": self.ema.num_updates if self.ema else 0,
            "rng": ckpt.capture_rng(self.generator), "config": self.config,
        }
        if rng_ranks is not None:  # every rank's RNGs: exact resume on the same number of ranks
            state["rng_ranks"] = rng_ranks
        return state

    def save(self) -> Path | None:
        """Checkpoint the current step (rank 0 writes; others wait); then samples, export, plot, prune.

        Every rank takes part in gathering the state (FSDP shards, each rank's RNG); only rank 0 writes."""
        model_sd = parallel.model_state_dict(self.model)
        opt_sd = parallel.optimizer_state_dict(self.model, self.optimizer)
        ema_sd = parallel.gather_full(self.ema.state_dict()) if self.ema else None
        rng_ranks = parallel.all_gather(ckpt.capture_rng(self.generator)) if self.dist.world_size > 1 else None
        path = None
        if is_main_process():
            path = ckpt.save_checkpoint(self.out_dir, self.step, model_sd, self._state(rng_ranks), opt_sd, ema_sd)
            ckpt.prune_checkpoints(self.out_dir, self.cfg.keep_last)
            self._after_checkpoint(path, ema_sd if ema_sd is not None else model_sd)
        barrier()
        return path

    def _after_checkpoint(self, path: Path, eval_state: dict[str, torch.Tensor] | None = None) -> None:
        """Samples, exported model and plot, with every RNG put back so they do not change training."""
        rng = ckpt.capture_rng(self.generator)
        try:
            model = unwrap(self.model)
            if parallel.is_fsdp(model):  # FSDP (GPU, untested on CPU): a plain copy from the gathered weights
                eval_model = parallel.plain_copy(model, eval_state).to(self.device)
            else:
                eval_model = self.ema.averaged_model(model) if self.ema else model
            was_training = eval_model.training
            eval_model.eval()
            final = self.step >= self.steps or self._time_up()
            with torch.no_grad():
                if hasattr(self.task, "samples") and (self.samples_at == "checkpoint" or final):
                    self.task.samples(eval_model, self.out_dir / "samples" / path.name, self.step)
                if hasattr(self.task, "export"):
                    self.task.export(eval_model, self.out_dir, self.step)
            eval_model.train(was_training)
            # the plot is drawn once, at the end (matplotlib's first import can take a minute);
            # `chronotope plot RUN_DIR` redraws it while a run trains
            if self.cfg.plot and final and self.metrics_path.exists():
                plot_metrics(read_metrics(self.metrics_path), self.out_dir / "metrics.png", title=self.out_dir.name)
        finally:
            ckpt.restore_rng(rng, self.generator)

    def _resume(self) -> None:
        path = ckpt.latest_checkpoint(self.out_dir)
        if path is None:
            self._print(f"no complete checkpoint in {self.out_dir}; starting from step 0")
            return
        data = ckpt.load_checkpoint(path)
        state = data["state"]
        parallel.load_model_state_dict(self.model, data["model"])
        if data["optimizer"] is not None:
            parallel.load_optimizer_state_dict(self.model, self.optimizer, data["optimizer"])
            _match_param_layout(self.optimizer)
        if self.ema is not None:
            if data["ema"] is not None:
                self.ema.load_state_dict(parallel.shard_like(data["ema"], self.ema.shadow), state.get("ema_updates", 0))
            else:  # the run had no EMA before: start one from the current weights
                self.ema = EMA(unwrap(self.model), self.ema.decay)
        self.step, self.epoch, self.position = state["step"], state["epoch"], state["position"]
        self._skipped.fill_(int(state["skipped_total"]))
        self._bad_run.fill_(int(state["bad_in_a_row"]))
        self.elapsed_before = state["elapsed"]
        self._refresh_time(self.elapsed_before)  # this run's budget, on the saved clock
        saved_world = int(state.get("config", {}).get("world_size", 1))
        rank, world = self.dist.rank, self.dist.world_size
        if saved_world == world and world > 1 and len(state.get("rng_ranks", [])) == world:
            ckpt.restore_rng(state["rng_ranks"][rank], self.generator)  # exact: each rank its own stream
        else:
            ckpt.restore_rng(state["rng"], self.generator)
            if rank > 0:  # a new rank (or a run saved before rng_ranks): a fresh stream of its own
                self.generator.manual_seed(self._noise_seed(rank, salt=self.step))
        if saved_world != world:  # `position` counts this rank's batches: keep the global data position
            self.position = self.position * saved_world // world
            self._print(f"resuming a {saved_world}-rank run on {world} ranks: data split and noise continue "
                        "from the same epoch and global position, but not bit-exactly")
        self.resumed_from = path
        self._truncate_metrics(self.step)
        self._print(f"resumed from {path} at step {self.step}")

    def _truncate_metrics(self, step: int) -> None:
        """Drop log lines past `step` (written by a run that crashed after its last checkpoint)."""
        if is_main_process() and self.metrics_path.exists():
            keep = [r for r in read_metrics(self.metrics_path) if r.get("step", 0) <= step]
            ckpt.atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in keep))

    # -- logging ---------------------------------------------------------------------------

    @property
    def metrics_path(self) -> Path:
        return self.out_dir / "metrics.jsonl"

    def _elapsed(self) -> float:
        return self.elapsed_before + (time.perf_counter() - self._t0 if hasattr(self, "_t0") else 0.0)

    def _print(self, msg: str) -> None:
        if is_main_process() and self.cfg.progress:
            tqdm.write(f"[train] {msg}")

    def _log(self, record: dict[str, Any]) -> None:
        if not is_main_process():
            return
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    # -- main loop -------------------------------------------------------------------------

    def _time_up(self) -> bool:
        return self.cfg.time_budget_s is not None and self.time_progress >= 1.0

    def _refresh_time(self, elapsed: float) -> None:
        """Time budget progress from `elapsed` seconds (at log steps, from a value every rank agrees on)."""
        if self.cfg.time_budget_s is not None:
            self.time_progress = elapsed / self.cfg.time_budget_s

    def _accumulate(self) -> tuple[torch.Tensor, dict[str, Any]]:
        """Forward + backward of `grad_accum` micro-batches; gradients hold their mean. Under DDP only
        the last backward all-reduces (no_sync before). Returns (mean loss on the device, merged metrics)."""
        total, merged = None, {}
        for micro in range(self.cfg.grad_accum):
            batch = self._next_batch()
            with parallel.no_sync(self.model, skip_sync=micro < self.cfg.grad_accum - 1):
                with torch.profiler.record_function("train/forward"), parallel.autocast(self.cfg.bf16, self.device):
                    loss, metrics = self.task.loss(self.model, batch, self.generator)
                # also for a NaN loss, so DDP ranks stay in step; the update is skipped in fit
                with torch.profiler.record_function("train/backward"):
                    (loss if self.cfg.grad_accum == 1 else loss / self.cfg.grad_accum).backward()
            loss = loss.detach().float()
            total = loss if total is None else total + loss
            for k, v in metrics.items():
                if isinstance(v, (int, float, torch.Tensor)):
                    merged.setdefault(k, []).append(v)
        out = {k: (sum(v) if k in _COUNT_KEYS else sum(v) / len(v)) for k, v in merged.items()}
        return total / self.cfg.grad_accum, out

    def _optimizer_step(self, ok: torch.Tensor) -> None:
        """AdamW and EMA step where `ok` (a 0-dim bool on the device) holds; an exact skip elsewhere."""
        with torch.profiler.record_function("train/optimizer"):
            if self.fused:
                self.optimizer.found_inf = (~ok).float()  # the fused kernel leaves params and state as they were
                self.optimizer.step()
            elif bool(ok):  # FSDP: one host read of the flag
                self.optimizer.step()
            if self.ema is not None:
                self.ema.update(unwrap(self.model), ok)
        self._skipped += (~ok).long()
        self._bad_run = (self._bad_run + 1) * (~ok).long()

    def fit(self) -> dict[str, Any]:
        """Run until `steps` (or `time_budget_s`); returns dict(step, loss, skipped_total, checkpoint, resumed_from)."""
        if is_main_process():
            self.out_dir.mkdir(parents=True, exist_ok=True)
        self._t0 = time.perf_counter()
        self._it = None
        win = LogWindow(self.device)
        last_path = self.resumed_from
        # a run bounded by the clock shows its minutes; its step count is only an upper bound
        bar = tqdm(total=None if self.cfg.time_budget_s else self.steps, initial=self.step, desc="train", unit="step",
                   dynamic_ncols=True, disable=not (self.cfg.progress and is_main_process()))
        self.model.train()
        try:
            while self.step < self.steps and not self._time_up():
                lr = self.lr_at(self.step)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                with torch.profiler.record_function("train/step"):
                    loss, metrics = self._accumulate()
                    with torch.profiler.record_function("train/optimizer"):
                        clip = self.cfg.grad_clip if self.cfg.grad_clip else float("inf")
                        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, clip)
                        if hasattr(grad_norm, "full_tensor"):  # FSDP: a DTensor
                            grad_norm = grad_norm.full_tensor()
                        ok = torch.isfinite(loss) & torch.isfinite(grad_norm)
                        ok = parallel.all_ranks_ok(ok)  # every rank skips the same steps (a collective, no host read)
                    self._optimizer_step(ok)
                    self.optimizer.zero_grad(set_to_none=True)
                    self.step += 1
                    win.add(loss, grad_norm, metrics, ok, self._bad_run)
                if self.cfg.time_budget_s is not None and self.dist.world_size == 1:
                    self._refresh_time(self._elapsed())  # the host clock: no device read (ranks agree at log steps)
                bar.update(1)
                if self.step % self.cfg.log_every == 0 or self.step == self.steps or self._time_up():
                    record = win.record(self, lr)  # the one host read of the window
                    self._refresh_time(record["elapsed_max"])
                    self._log({k: v for k, v in record.items() if k != "elapsed_max" and k != "bad_run_max"})
                    clock = (f" {record['elapsed'] / 60:.1f}/{self.cfg.time_budget_s / 60:.1f} min"
                             if self.cfg.time_budget_s else "")
                    bar.set_postfix_str(
                        f"loss {_fmt(record['loss'])} {record['throughput']:.3g} {record['throughput_unit']}/s "
                        f"bad {record['bad_items']} skip {record['skipped_total']}{clock}", refresh=False)
                    if record["skipped"]:
                        self._print(f"steps {self.step - win.steps + 1}-{self.step}: {record['skipped']} non-finite "
                                    f"loss / grad norm, updates skipped")
                    if record["bad_run_max"] >= self.cfg.max_bad_steps:
                        raise TrainingDiverged(
                            f"{record['bad_run_max']} steps in a row had a non-finite loss or gradient norm (by step "
                            f"{self.step}); stopping. Lower --lr, set a grad clip, or check the data. The last good "
                            f"checkpoint is {ckpt.latest_checkpoint(self.out_dir)}."
                        )
                    win = LogWindow(self.device)
                if self.step % self.cfg.ckpt_every == 0 or self.step == self.steps or self._time_up():
                    last_path = self.save() or last_path
        finally:
            bar.close()
        return {"step": self.step, "loss": win.last_loss, "skipped_total": self.skipped_total,
                "checkpoint": last_path, "resumed_from": self.resumed_from}


def _match_param_layout(optimizer: torch.optim.Optimizer) -> None:
    """Give loaded moment tensors their parameter's memory layout: a checkpoint stores them contiguous, and
    the fused AdamW kernel walks a parameter and its moments as flat memory, so a channels-last convolution
    weight would otherwise be updated with another element's moments."""
    for p, state in optimizer.state.items():
        for k, v in state.items():
            if isinstance(v, torch.Tensor) and v.shape == p.shape and v.stride() != p.stride():
                state[k] = torch.empty_like(p, dtype=v.dtype).copy_(v)


def _fmt(x: float | None) -> str:
    return "nan" if x is None else f"{x:.4g}"
