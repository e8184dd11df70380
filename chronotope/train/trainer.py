"""One training loop for every model: a `TrainTask` ("model + loss + batches") and a `Trainer`.

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
import math
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from chronotope.train import checkpoint as ckpt
from chronotope.train import parallel
from chronotope.train.ema import EMA
from chronotope.train.log_window import LogWindow
from chronotope.train.plots import plot_metrics, read_metrics


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


# --- rank helpers (the only place that knows about torch.distributed) -------------------------


def get_rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", 0))


def get_world_size() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return int(os.environ.get("WORLD_SIZE", 1))


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP (`.module`) or torch.compile (`._orig_mod`) wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# --- the loop ---------------------------------------------------------------------------------


SCHEDULES = ("constant", "cosine", "wsd")
MAX_BUDGET_S = 30 * 86400.0  # a time budget past 30 days is a typo, not a run anyone waits for


class Trainer:
    """Train `task.model` for `steps` optimizer steps, writing everything under `out_dir`.

    out_dir/metrics.jsonl   one JSON line per logged step
    out_dir/metrics.png     loss / grad norm / lr / throughput, redrawn at each checkpoint
    out_dir/ckpt-0000100/   checkpoints (newest `keep_last` kept)
    out_dir/samples/ckpt-0000100/   task.samples output at each checkpoint
    """

    def __init__(
        self,
        task: TrainTask,
        out_dir: str | os.PathLike,
        steps: int,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_steps: int = 0,
        schedule: str = "constant",
        min_lr_ratio: float = 0.1,
        decay_steps: int = 0,
        grad_clip: float | None = 1.0,
        ema_decay: float | None = 0.999,
        ckpt_every: int = 100,
        keep_last: int = 3,
        log_every: int = 10,
        seed: int = 0,
        max_bad_steps: int = 5,
        resume: bool = False,
        progress: bool = True,
        plot: bool = True,
        config: dict[str, Any] | None = None,
        grad_accum: int = 1,
        parallel_mode: str = "auto",
        activation_checkpointing: bool = False,
        compile: bool = False,
        bf16: bool = False,
        device: str | None = None,
        time_budget_s: float | None = None,
        decay_frac: float = 0.2,
        samples_at: str | None = None,
    ) -> None:
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
        if not 0 <= min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must be in [0, 1] (the final lr as a fraction of lr), got {min_lr_ratio}")
        if schedule == "wsd" and time_budget_s is None and not 0 < decay_steps <= steps - warmup_steps:
            raise ValueError(f"schedule 'wsd' needs 0 < decay_steps <= steps - warmup_steps "
                             f"({steps - warmup_steps}), got {decay_steps}")
        for name, value in (("ckpt_every", ckpt_every), ("keep_last", keep_last), ("log_every", log_every),
                            ("max_bad_steps", max_bad_steps), ("grad_accum", grad_accum)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {lr}")
        if time_budget_s is not None and not 0 < time_budget_s <= MAX_BUDGET_S:  # refuses nan and inf alike
            raise ValueError(f"time_budget_s must be a number of seconds > 0 and at most {MAX_BUDGET_S:g} (30 days), "
                             f"got {time_budget_s}")
        if not 0 < decay_frac <= 1:
            raise ValueError(f"decay_frac (the cooldown's share of the time budget) must be in (0, 1], got {decay_frac}")
        if samples_at not in (None, "checkpoint", "end"):
            raise ValueError(f"samples_at must be 'checkpoint' or 'end', got {samples_at!r}")
        self.time_budget_s, self.decay_frac = time_budget_s, decay_frac
        self.task, self.out_dir, self.steps = task, Path(out_dir), steps
        self.lr, self.warmup_steps, self.schedule, self.min_lr_ratio = lr, warmup_steps, schedule, min_lr_ratio
        self.decay_steps = decay_steps
        self.grad_clip, self.ckpt_every, self.keep_last, self.log_every = grad_clip, ckpt_every, keep_last, log_every
        self.seed, self.max_bad_steps, self.progress, self.plot = seed, max_bad_steps, progress, plot
        # scale-out: join torchrun's process group (a no-op for one process), then wrap from outside
        self.dist = parallel.init_distributed(device)
        self.parallel_mode = parallel.resolve_parallel(parallel_mode, self.dist.world_size, self.dist.device)
        parallel.check_bf16(bf16, self.dist.device)
        self.grad_accum, self.bf16, self.device = grad_accum, bf16, self.dist.device
        # sample grids cost seconds of CPU but stall a GPU: at every checkpoint on CPU, at the end on a GPU
        self.samples_at = samples_at or ("checkpoint" if self.device.type == "cpu" else "end")
        self.config = {
            "steps": steps, "lr": lr, "weight_decay": weight_decay, "betas": list(betas),
            "warmup_steps": warmup_steps, "schedule": schedule, "min_lr_ratio": min_lr_ratio, "decay_steps": decay_steps,
            "grad_clip": grad_clip, "ema_decay": ema_decay, "seed": seed, "world_size": self.dist.world_size,
            "grad_accum": grad_accum, "parallel": self.parallel_mode, "compile": compile, "bf16": bf16,
            "activation_checkpointing": activation_checkpointing, "time_budget_s": time_budget_s,
            "decay_frac": decay_frac, "task": config or {},
        }
        self.model = parallel.parallelize(task.model, self.parallel_mode, self.device,
                                          activation_checkpointing=activation_checkpointing, compile=compile)
        seed_everything(seed)
        # the task's noise generator: its own stream per rank, so ranks do not draw identical noise
        self.generator = torch.Generator().manual_seed(self._noise_seed(self.dist.rank))
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the task's model has no trainable parameters")
        self.params = params
        # fused AdamW: one kernel for the whole update, and it takes `found_inf` (the non-finite guard)
        # on the device; FSDP's DTensor parameters keep the default implementation
        self.fused = self.parallel_mode != "fsdp"
        self.optimizer = torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay,
                                           **({"fused": True} if self.fused else {}))
        self.ema = EMA(unwrap(self.model), ema_decay) if ema_decay else None
        # progress state (all of it goes into the checkpoint); the two skip counters live on the device
        self.step, self.epoch, self.position = 0, 0, 0
        self._skipped = torch.zeros((), dtype=torch.int64, device=self.device)  # steps skipped in all
        self._bad_run = torch.zeros((), dtype=torch.int64, device=self.device)  # non-finite steps in a row
        self.elapsed_before = 0.0
        self.time_progress = 0.0  # fraction of time_budget_s spent, refreshed at log steps (all ranks agree)
        self.resumed_from: Path | None = None
        if resume:
            self._resume()
        elif ckpt.latest_checkpoint(self.out_dir) is not None:
            raise ValueError(f"{self.out_dir} already holds checkpoints ({ckpt.latest_checkpoint(self.out_dir).name}); "
                             "pass resume=True (--resume) to continue that run, or choose a new output folder")
        if self.resumed_from is None:
            self._truncate_metrics(0)  # a run starting at step 0 owns the log (a crash before ckpt 1 left lines)

    def _noise_seed(self, rank: int, salt: int = 0) -> int:
        return self.seed + 1 + _RANK_STRIDE * rank + salt

    @property
    def skipped_total(self) -> int:
        return int(self._skipped)  # a host read: log steps and checkpoints only

    @property
    def bad_in_a_row(self) -> int:
        return int(self._bad_run)

    # -- schedule --------------------------------------------------------------------------

    def lr_at(self, step: int) -> float:
        """Learning rate for optimizer step `step` (0-based): linear warmup, then

        constant: lr;
        cosine:   lr -> min_lr_ratio * lr over the steps after warmup;
        wsd:      warmup-stable-decay: lr until the last `decay_steps` steps, then a (1 - sqrt) cooldown to
                  min_lr_ratio * lr. A constant-lr run can be resumed with it (a larger `steps`) to finish:
                  the cooldown buys most of what a cosine run of the same length would.
        """
        if self.warmup_steps and step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        low = self.min_lr_ratio
        if self.time_budget_s is not None:  # by the clock: stable, then the last decay_frac of the time cools down
            if self.schedule == "constant":
                return self.lr
            if self.schedule == "cosine":
                return self.lr * (low + (1 - low) * 0.5 * (1 + math.cos(math.pi * min(1.0, self.time_progress))))
            progress = min(1.0, max(0.0, (self.time_progress - (1 - self.decay_frac)) / self.decay_frac))
            return self.lr * (low + (1 - low) * (1 - math.sqrt(progress)))
        if self.schedule == "cosine":
            span = max(1, self.steps - self.warmup_steps)
            progress = min(1.0, (step - self.warmup_steps) / span)
            return self.lr * (low + (1 - low) * 0.5 * (1 + math.cos(math.pi * progress)))
        if self.schedule == "wsd":
            start = self.steps - self.decay_steps
            progress = min(1.0, max(0.0, (step + 1 - start) / self.decay_steps))
            return self.lr * (low + (1 - low) * (1 - math.sqrt(progress)))
        return self.lr

    # -- data ------------------------------------------------------------------------------

    def _epoch_seed(self, epoch: int) -> int:
        return self.seed * 1_000_003 + epoch

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
            ckpt.prune_checkpoints(self.out_dir, self.keep_last)
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
            if self.plot and final and self.metrics_path.exists():
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
        if is_main_process() and self.progress:
            tqdm.write(f"[train] {msg}")

    def _log(self, record: dict[str, Any]) -> None:
        if not is_main_process():
            return
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    # -- main loop -------------------------------------------------------------------------

    def _time_up(self) -> bool:
        return self.time_budget_s is not None and self.time_progress >= 1.0

    def _refresh_time(self, elapsed: float) -> None:
        """Time budget progress from `elapsed` seconds (at log steps, from a value every rank agrees on)."""
        if self.time_budget_s is not None:
            self.time_progress = elapsed / self.time_budget_s

    def _accumulate(self) -> tuple[torch.Tensor, dict[str, Any]]:
        """Forward + backward of `grad_accum` micro-batches; gradients hold their mean. Under DDP only
        the last backward all-reduces (no_sync before). Returns (mean loss on the device, merged metrics)."""
        total, merged = None, {}
        for micro in range(self.grad_accum):
            batch = self._next_batch()
            with parallel.no_sync(self.model, skip_sync=micro < self.grad_accum - 1):
                with torch.profiler.record_function("train/forward"), parallel.autocast(self.bf16, self.device):
                    loss, metrics = self.task.loss(self.model, batch, self.generator)
                # also for a NaN loss, so DDP ranks stay in step; the update is skipped in fit
                with torch.profiler.record_function("train/backward"):
                    (loss if self.grad_accum == 1 else loss / self.grad_accum).backward()
            loss = loss.detach().float()
            total = loss if total is None else total + loss
            for k, v in metrics.items():
                if isinstance(v, (int, float, torch.Tensor)):
                    merged.setdefault(k, []).append(v)
        out = {k: (sum(v) if k in _COUNT_KEYS else sum(v) / len(v)) for k, v in merged.items()}
        return total / self.grad_accum, out

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
        bar = tqdm(total=None if self.time_budget_s else self.steps, initial=self.step, desc="train", unit="step",
                   dynamic_ncols=True, disable=not (self.progress and is_main_process()))
        self.model.train()
        try:
            while self.step < self.steps and not self._time_up():
                lr = self.lr_at(self.step)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                with torch.profiler.record_function("train/step"):
                    loss, metrics = self._accumulate()
                    with torch.profiler.record_function("train/optimizer"):
                        clip = self.grad_clip if self.grad_clip else float("inf")
                        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, clip)
                        if hasattr(grad_norm, "full_tensor"):  # FSDP: a DTensor
                            grad_norm = grad_norm.full_tensor()
                        ok = torch.isfinite(loss) & torch.isfinite(grad_norm)
                        ok = parallel.all_ranks_ok(ok)  # every rank skips the same steps (a collective, no host read)
                    self._optimizer_step(ok)
                    self.optimizer.zero_grad(set_to_none=True)
                    self.step += 1
                    win.add(loss, grad_norm, metrics, ok, self._bad_run)
                if self.time_budget_s is not None and self.dist.world_size == 1:
                    self._refresh_time(self._elapsed())  # the host clock: no device read (ranks agree at log steps)
                bar.update(1)
                if self.step % self.log_every == 0 or self.step == self.steps or self._time_up():
                    record = win.record(self, lr)  # the one host read of the window
                    self._refresh_time(record["elapsed_max"])
                    self._log({k: v for k, v in record.items() if k != "elapsed_max" and k != "bad_run_max"})
                    clock = (f" {record['elapsed'] / 60:.1f}/{self.time_budget_s / 60:.1f} min"
                             if self.time_budget_s else "")
                    bar.set_postfix_str(
                        f"loss {_fmt(record['loss'])} {record['throughput']:.3g} {record['throughput_unit']}/s "
                        f"bad {record['bad_items']} skip {record['skipped_total']}{clock}", refresh=False)
                    if record["skipped"]:
                        self._print(f"steps {self.step - win.steps + 1}-{self.step}: {record['skipped']} non-finite "
                                    f"loss / grad norm, updates skipped")
                    if record["bad_run_max"] >= self.max_bad_steps:
                        raise TrainingDiverged(
                            f"{record['bad_run_max']} steps in a row had a non-finite loss or gradient norm (by step "
                            f"{self.step}); stopping. Lower --lr, set a grad clip, or check the data. The last good "
                            f"checkpoint is {ckpt.latest_checkpoint(self.out_dir)}."
                        )
                    win = LogWindow(self.device)
                if self.step % self.ckpt_every == 0 or self.step == self.steps or self._time_up():
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
