"""The Trainer's settings as one typed dataclass, checked when made, and the learning-rate schedule they define.

    Trainer(task, TrainerConfig(out_dir="runs/x", steps=1000, lr=3e-4, schedule="wsd", decay_steps=200))

Schedules: linear warmup, then constant, cosine (to min_lr_ratio x lr), or warmup-stable-decay (WSD: constant, then
a 1 - sqrt cooldown over the last decay_steps, Hägele et al. 2024). With `time_budget_s` a run is bounded by the
clock instead of its step count, and the schedule after warmup follows the share of the time spent.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

SCHEDULES = ("constant", "cosine", "wsd")
MAX_BUDGET_S = 30 * 86400.0  # a time budget past 30 days is a typo, not a run anyone waits for


@dataclass
class TrainerConfig:
    """Everything the Trainer is told. `record`: the task's own settings (its model's architecture, its data),
    saved in every checkpoint (trainer_state.json config.task) so that a resumed run rebuilds the same task."""

    out_dir: str | os.PathLike
    steps: int
    # optimizer and schedule
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0
    schedule: str = "constant"
    min_lr_ratio: float = 0.1
    decay_steps: int = 0
    time_budget_s: float | None = None
    decay_frac: float = 0.2  # with time_budget_s: the cooldown's share of the time
    grad_clip: float | None = 1.0
    ema_decay: float | None = 0.999
    max_bad_steps: int = 5  # non-finite steps in a row that stop the run
    # checkpoints, logs, samples
    ckpt_every: int = 100
    keep_last: int = 3
    log_every: int = 10
    seed: int = 0
    resume: bool = False
    progress: bool = True
    plot: bool = True
    samples_at: str | None = None  # "checkpoint" | "end"; None: at every checkpoint on CPU, at the end on a GPU
    record: dict[str, Any] = field(default_factory=dict)
    # scale-out (chronotope/train/parallel.py)
    grad_accum: int = 1
    parallel_mode: str = "auto"
    activation_checkpointing: bool = False
    compile: bool = False
    bf16: bool = False
    device: str | None = None

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must be in [0, 1] (the final lr as a fraction of lr), "
                             f"got {self.min_lr_ratio}")
        if (self.schedule == "wsd" and self.time_budget_s is None
                and not 0 < self.decay_steps <= self.steps - self.warmup_steps):
            raise ValueError(f"schedule 'wsd' needs 0 < decay_steps <= steps - warmup_steps "
                             f"({self.steps - self.warmup_steps}), got {self.decay_steps}")
        for name in ("ckpt_every", "keep_last", "log_every", "max_bad_steps", "grad_accum"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr}")
        if self.time_budget_s is not None and not 0 < self.time_budget_s <= MAX_BUDGET_S:  # refuses nan and inf
            raise ValueError(f"time_budget_s must be a number of seconds > 0 and at most {MAX_BUDGET_S:g} (30 days), "
                             f"got {self.time_budget_s}")
        if not 0 < self.decay_frac <= 1:
            raise ValueError(f"decay_frac (the cooldown's share of the time budget) must be in (0, 1], "
                             f"got {self.decay_frac}")
        if self.samples_at not in (None, "checkpoint", "end"):
            raise ValueError(f"samples_at must be 'checkpoint' or 'end', got {self.samples_at!r}")

    def saved(self, world_size: int, parallel_mode: str) -> dict[str, Any]:
        """The run's config as every checkpoint stores it (trainer_state.json "config")."""
        return {
            "steps": self.steps, "lr": self.lr, "weight_decay": self.weight_decay, "betas": list(self.betas),
            "warmup_steps": self.warmup_steps, "schedule": self.schedule, "min_lr_ratio": self.min_lr_ratio,
            "decay_steps": self.decay_steps, "grad_clip": self.grad_clip, "ema_decay": self.ema_decay,
            "seed": self.seed, "world_size": world_size, "grad_accum": self.grad_accum, "parallel": parallel_mode,
            "compile": self.compile, "bf16": self.bf16, "activation_checkpointing": self.activation_checkpointing,
            "time_budget_s": self.time_budget_s, "decay_frac": self.decay_frac, "task": self.record or {},
        }


def lr_at(cfg: TrainerConfig, step: int, time_progress: float = 0.0) -> float:
    """Learning rate for optimizer step `step` (0-based), `time_progress` the share of time_budget_s spent:
    linear warmup, then

    constant: lr;
    cosine:   lr -> min_lr_ratio * lr over the steps (or the time) after warmup;
    wsd:      warmup-stable-decay: lr until the last `decay_steps` steps (the last decay_frac of the time), then a
              (1 - sqrt) cooldown to min_lr_ratio * lr. A constant-lr run can be resumed with it (a larger `steps`)
              to finish: the cooldown buys most of what a cosine run of the same length would.
    """
    lr, low = cfg.lr, cfg.min_lr_ratio
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return lr
    if cfg.time_budget_s is not None:  # by the clock
        if cfg.schedule == "cosine":
            return lr * (low + (1 - low) * 0.5 * (1 + math.cos(math.pi * min(1.0, time_progress))))
        progress = min(1.0, max(0.0, (time_progress - (1 - cfg.decay_frac)) / cfg.decay_frac))
        return lr * (low + (1 - low) * (1 - math.sqrt(progress)))
    if cfg.schedule == "cosine":
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
        return lr * (low + (1 - low) * 0.5 * (1 + math.cos(math.pi * progress)))
    progress = min(1.0, max(0.0, (step + 1 - (cfg.steps - cfg.decay_steps)) / cfg.decay_steps))
    return lr * (low + (1 - low) * (1 - math.sqrt(progress)))
