"""Exponential moving average of model weights (Polyak averaging), with the decay warmed up.

A plain EMA with decay 0.999 still holds ~63% of the initial weights after 455 steps, so the
decay follows min(decay, (1 + n) / (10 + n)) with n the number of updates (as in timm / the
TensorFlow `ExponentialMovingAverage(num_updates=...)`): early averages track the model closely.
The shadow weights are float32 copies kept outside the model, so any wrapper (DDP, FSDP,
compile) can be applied to the model from outside without touching the EMA. The update count lives
on the weights' device and `update(model, ok)` takes the trainer's device-side "step was applied"
flag, so a training step never waits for the GPU to decide whether to average.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """Shadow copy of a model's floating-point parameters and buffers.

    `update(model)` after each optimizer step; `copy_to(model)` to evaluate with the average;
    `state_dict()` / `load_state_dict()` for checkpoints (tensors only, plus `num_updates`).
    """

    def __init__(self, model: nn.Module, decay: float = 0.999) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}; typical values are 0.99 to 0.9999")
        self.decay = decay
        self.shadow: dict[str, torch.Tensor] = {
            name: t.detach().to(torch.float32).clone() if t.is_floating_point() else t.detach().clone()
            for name, t in model.state_dict().items()
        }
        device = next(iter(self.shadow.values())).device if self.shadow else torch.device("cpu")
        self._updates = torch.zeros((), dtype=torch.float64, device=device)  # applied updates, on the device
        self._pairs: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # (shadow, live) floating tensors

    @property
    def num_updates(self) -> int:
        return int(self._updates)  # a host read: checkpoints only

    def current_decay(self) -> float:
        """The decay the next update will use: min(decay, (1 + n) / (10 + n))."""
        n = self.num_updates
        return min(self.decay, (1.0 + n) / (10.0 + n))

    @torch.no_grad()
    def update(self, model: nn.Module, ok: torch.Tensor | None = None) -> None:
        """s = d * s + (1 - d) * t for every floating tensor; with `ok` (a 0-dim bool on the device) the
        update and its count apply only where ok is True, without a host read."""
        if self._pairs is None:  # the live tensors keep their storage across steps: gather them once
            live = model.state_dict()
            self._pairs = [(s, live[k].detach()) for k, s in self.shadow.items()]
            self._ints = [(s, t) for s, t in self._pairs if not s.is_floating_point()]
        n = self._updates
        d = torch.clamp((1.0 + n) / (10.0 + n), max=self.decay)  # warmed-up decay, [] float64
        w = (1.0 - d).to(torch.float32)
        if ok is not None:
            w = w * ok.to(w.dtype)
        shadows = [s for s, _ in self._pairs if s.is_floating_point()]
        lives = [t.to(torch.float32) for s, t in self._pairs if s.is_floating_point()]
        # s += w * (t - s) in one pass and no temporaries: lerp's list-of-tensors overload (a 0-dim weight per
        # tensor, broadcast), not its Scalar one, which would read w to the host
        torch._foreach_lerp_(shadows, lives, [w] * len(shadows))
        for s, t in self._ints:
            s.copy_(t)  # integer buffers (e.g. counters) follow the model
        self._updates += 1 if ok is None else ok.to(torch.float64)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Load the averaged weights into `model` (in its own dtypes)."""
        model.load_state_dict({k: v for k, v in self.shadow.items()}, strict=True)

    def averaged_model(self, model: nn.Module) -> nn.Module:
        """A deep copy of `model` holding the averaged weights (the original is untouched)."""
        clone = copy.deepcopy(model)
        self.copy_to(clone)
        return clone

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, tensors: dict[str, torch.Tensor], num_updates: int) -> None:
        missing = sorted(set(self.shadow) - set(tensors))
        unexpected = sorted(set(tensors) - set(self.shadow))
        if missing or unexpected:
            raise ValueError(
                f"EMA weights do not match the model (missing {missing[:5]}, unexpected {unexpected[:5]}); "
                "was the checkpoint made with a different model config?"
            )
        for k, v in tensors.items():
            self.shadow[k].copy_(v)
        self._updates.fill_(int(num_updates))
