"""The steps between two log lines of the Trainer: sums kept on the device, read once per log line.

`add` takes each step's loss, gradient norm and finite flag as device tensors (no host read);
`record` stacks them into one tensor, reads it once, reduces over ranks and returns the log line.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from chronotope.train import parallel


class LogWindow:
    """Accumulates the steps between two log lines on the device; `record` reads them once."""

    def __init__(self, device: torch.device) -> None:
        self.t0 = time.perf_counter()
        zero = torch.zeros((), dtype=torch.float64, device=device)
        self.loss_sum, self.grad_sum, self.ok_steps, self.bad_run_max = zero, zero, zero, zero
        self.extra: dict[str, list[Any]] = {}
        self.count, self.unit, self.steps = 0.0, "items", 0
        self.last = torch.full((), float("nan"), device=device)
        self.last_loss = float("nan")

    def add(self, loss: torch.Tensor, grad_norm: torch.Tensor, metrics: dict[str, Any], ok: torch.Tensor,
            bad_run: torch.Tensor) -> None:
        okf = ok.to(torch.float64)
        self.loss_sum = self.loss_sum + torch.where(ok, loss.double(), 0.0)
        self.grad_sum = self.grad_sum + torch.where(ok, grad_norm.double(), 0.0)
        self.ok_steps = self.ok_steps + okf
        self.bad_run_max = torch.maximum(self.bad_run_max, bad_run.double())
        self.last, self.steps = loss, self.steps + 1
        if "tokens" in metrics:
            self.count, self.unit = self.count + float(metrics["tokens"]), "tokens"
        elif "items" in metrics:
            self.count += float(metrics["items"])
        else:
            self.count += 1
        for k, v in metrics.items():
            if k not in ("tokens", "items"):
                self.extra.setdefault(k, []).append(v)

    def record(self, trainer: Any, lr: float) -> dict[str, Any]:
        """The log line of this window. Under several ranks a collective (every rank calls it at the same
        step): loss, grad norm and extras are means over all ranks' steps, throughput and bad items sums."""
        tensors = [v for vs in self.extra.values() for v in vs if isinstance(v, torch.Tensor)]
        device_values = torch.stack([self.loss_sum, self.grad_sum, self.ok_steps, self.bad_run_max,
                                     self.last.double(), trainer._skipped.double(),
                                     *(t.detach().double().reshape(()) for t in tensors)]).tolist()  # one read
        loss_sum, grad_sum, ok_steps, bad_run_max, last, skipped_total = device_values[:6]
        host_tensor_values = iter(device_values[6:])
        extra = {k: [next(host_tensor_values) if isinstance(v, torch.Tensor) else float(v) for v in vs]
                 for k, vs in self.extra.items()}
        extra = {k: [x for x in vs if math.isfinite(x)] for k, vs in extra.items()}
        self.last_loss = last
        ok_steps = int(ok_steps)
        dt = max(time.perf_counter() - self.t0, 1e-9)
        mine = {"loss": (loss_sum, ok_steps), "grad_norm": (grad_sum, ok_steps),
                **{k: (sum(v), len(v)) for k, v in extra.items()}}
        local = (mine, self.count, int(getattr(trainer.task, "bad_items", 0)), trainer._elapsed(), int(bad_run_max))
        ranks = parallel.all_gather(local) if trainer.dist.world_size > 1 else [local]
        sums: dict[str, list[float]] = {}
        for m, *_ in ranks:
            for k, (total, n) in m.items():
                acc = sums.setdefault(k, [0.0, 0])
                acc[0], acc[1] = acc[0] + total, acc[1] + n
        mean = {k: (total / n if n else float("nan")) for k, (total, n) in sums.items()}
        rec = {
            "step": trainer.step, "loss": mean["loss"], "grad_norm": mean["grad_norm"], "lr": lr,
            "throughput": sum(r[1] for r in ranks) / dt, "throughput_unit": self.unit,
            "skipped": self.steps - ok_steps, "skipped_total": int(skipped_total),
            "bad_items": sum(r[2] for r in ranks), "epoch": trainer.epoch, "elapsed": round(trainer._elapsed(), 3),
            "elapsed_max": max(r[3] for r in ranks), "bad_run_max": max(r[4] for r in ranks),
        }
        if trainer.dist.world_size > 1:
            rec["world_size"] = trainer.dist.world_size
        rec.update({k: v for k, v in mean.items() if k not in rec})  # the trainer's keys win
        # JSON has no NaN: a window of only skipped steps logs null
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in rec.items()}
