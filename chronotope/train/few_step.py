"""Few-step sampling by distillation: a student DiT that samples in 1, 2, 4 or 8 steps, guidance folded in.

The student is the teacher's weights plus a zero-initialised step-size embedding (`DiT.extended(step_embed=True)`), so at
first it IS the teacher's conditional velocity at every step size. Each pack trains one of two targets:

  guidance  (d = 0)  the teacher's classifier-free-guided velocity v_u + s (v_c - v_u) at the pack's noisy
                     latents: guidance folded in, one evaluation where CFG needs two (Meng et al. 2023)
  shortcut  (d > 0)  self-consistency of shortcut models (Frans et al. 2024, arXiv 2410.12557): one step of 2d
                     lands where two steps of d land, s(x_t, t, 2d) = weighted mean of s(x_t, t, d) and
                     s(x_{t-d}, t - d, d), both computed by the student itself without grad; the finest level's
                     half steps are Euler steps of the d = 0 (guided) velocity

Where the steps live: the step embedding takes d in the model's own time t (the interval [t - d, t] crossed), so
its target, the average velocity over that interval, is a property of the flow alone. The start points and levels
are drawn where the sampler goes: uniform in unshifted time on the dyadic grids of 1, 2, 4, 8 and 16 steps, mapped
through each sample's own shift (flow.shift_for_tokens of its token count x time_shift, the rule of sampling).
Drawn in unshifted time, a 4-step level's pairs are exactly the (t, d) a 4-step sampler asks for, at every size.

Conditioning tokens (i2v, extend, connect, loop, long) stay clean with t = 0 and d = 0 as in the teacher's
training: the packs draw the task's conditioning modes (DiTTask, flow.DEFAULT_COND_PROBS).

    chronotope train world-model --init chronotope/assets/world-model --few-step --minutes 45 --out runs/fs
    chronotope train dit --data CACHE --few-step --teacher chronotope/assets/world-model --out runs/fs
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from chronotope.diffusion import flow
from chronotope.diffusion.samplers import FEW_STEPS
from chronotope.dit.patches import PackedBatch
from chronotope.train.dit_task import DiTTask

# self-consistency levels: a step of 1 / 2^j of unshifted time, j = 0 .. LEVELS - 1 (1, 2, 4, 8, 16 steps); the
# finest level's half steps (1 / 32) are plain Euler steps of the guided velocity
LEVELS = 5


class FewStepTask(DiTTask):
    """DiTTask whose targets come from a frozen `teacher` DiT (guidance) and from the student itself (shortcut).

    guidance_scale: the CFG scale folded in (the teacher's default, 5 for the shipped model); shortcut_share: the
    share of packs trained on self-consistency (0 = guidance distillation alone: a student for plain Euler).
    """

    def __init__(self, model: nn.Module, cache: Any, text: Any, teacher: nn.Module, guidance_scale: float = 5.0,
                 shortcut_share: float = 0.5, **kwargs: Any) -> None:
        if not getattr(model.config, "step_embed", False):
            raise ValueError("a few-step student needs a step-size embedding: build it with DiT.extended(step_embed=True)")
        if not 0.0 <= shortcut_share <= 1.0:
            raise ValueError(f"--shortcut-share is a share of the packs in [0, 1], got {shortcut_share}")
        if not guidance_scale >= 1.0:
            raise ValueError(f"the guidance scale to fold in must be >= 1 (1 = none), got {guidance_scale}")
        kwargs.setdefault("caption_dropout", 0.0)  # the student always reads its caption; guidance is in the target
        super().__init__(model, cache, text, **kwargs)
        self.teacher = teacher.eval().requires_grad_(False)
        self.guidance_scale, self.shortcut_share = float(guidance_scale), float(shortcut_share)

    def loss(self, model: nn.Module, batch: list[int], generator: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        device = next(model.parameters()).device
        packed, target, text, mask = self.make_pack(batch, generator, device)
        kind = "shortcut" if float(torch.rand((), generator=generator)) < self.shortcut_share else "guidance"
        if kind == "guidance":
            step, goal = 0.0, self._guided(packed, text, mask)
        else:
            packed, step, goal = self._shortcut(model, batch, packed, target, text, mask, generator)
        v = model(packed, text, mask, step=step)  # [L, D]
        m = packed.loss_mask.to(torch.float32)
        loss = ((v.float() - goal).square().mean(-1) * m).sum() / m.sum().clamp_min(1.0)
        tokens = int(packed.tokens.shape[0])
        return loss, {"tokens": tokens, "samples": len(batch), "fill": tokens / self.token_budget,
                      "shortcut_packs": float(kind == "shortcut")}

    @torch.no_grad()
    def _guided(self, packed: PackedBatch, text: Tensor, mask: Tensor) -> Tensor:
        """The teacher's CFG velocity [L, D] at the pack: v_u + s (v_c - v_u), uncond = the empty caption."""
        teacher = self.teacher.to(packed.tokens.device)
        null_emb = self.text.null[0].float().expand_as(text)  # [N, Lt, Dt]
        null_mask = self.text.null[1].expand_as(mask)  # [N, Lt], all False: the model's null token
        v_c, v_u = teacher(packed, text, mask).float(), teacher(packed, null_emb, null_mask).float()
        return v_u + self.guidance_scale * (v_c - v_u)

    @torch.no_grad()
    def _pairs(self, items: list[int], generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Per sample (the pack's order): t, t - d, t - 2d in shifted time, and whether its half steps are the
        finest (Euler with d = 0). Level j: 2d = 2^-j of unshifted time, the start one of the grid's points."""
        n = len(items)
        own = torch.tensor([self.own_lengths[i] for i in items])
        shift = flow.shift_for_tokens(own, scale=self.time_shift)  # [N]: the sampler's rule
        level = torch.randint(LEVELS, (n,), generator=generator)  # [N]
        big = 0.5 ** level.double()  # [N] 2d in unshifted time
        start = (torch.floor(torch.rand(n, generator=generator, dtype=torch.float64) / big) + 1) * big  # [N] in (0, 1]
        u = torch.stack([start, start - big / 2, start - big])  # [3, N]
        t = flow.apply_shift(u.clamp(0, 1), shift.double()[None].expand(3, -1)).float()  # [3, N]
        return t[0], t[1], t[2], level == LEVELS - 1

    def _shortcut(self, model: nn.Module, batch: list[int], packed: PackedBatch, target: Tensor, text: Tensor,
                  mask: Tensor, generator: torch.Generator) -> tuple[PackedBatch, Tensor, Tensor]:
        """The pack re-noised at the drawn starts t, the big step's size per token, and the two-half-step target."""
        items = sorted(batch, key=lambda i: -self.lengths[i])  # make_pack's order
        t0, t1, t2, finest = (x.to(packed.tokens.device) for x in self._pairs(items, generator))
        idx, cond = packed.sample_idx, packed.is_cond
        tok = lambda per_sample: torch.where(cond, 0.0, per_sample[idx])  # noqa: E731  [N] -> [L], 0 where given
        # x_t = x0 + t (noise - x0) = old x_t + (t_new - t_old) * target: the same x0 and noise at the new time
        x = packed.tokens + (tok(t0) - packed.timestep)[:, None] * target  # [L, D]
        at_t0 = _at(packed, x, tok(t0), t0)
        small1 = torch.where(finest, 0.0, t0 - t1)  # [N] first half step (0: Euler, d = 0)
        small2 = torch.where(finest, 0.0, t1 - t2)
        with torch.no_grad():
            s1 = model(at_t0, text, mask, step=tok(small1)).float()  # [L, D]
            x1 = x + (tok(t1) - tok(t0))[:, None] * s1  # one half step: t0 -> t1 (given tokens stay)
            s2 = model(_at(packed, x1, tok(t1), t1), text, mask, step=tok(small2)).float()
        d1, d2 = tok(t0 - t1)[:, None], tok(t1 - t2)[:, None]
        goal = (d1 * s1 + d2 * s2) / (d1 + d2).clamp_min(1e-12)  # average velocity over both halves; 0 where given
        return at_t0, tok(t0 - t2), goal

    # -- checkpoint hooks ------------------------------------------------------------------

    def pipeline_defaults(self) -> dict[str, Any]:
        """The exported folder declares its sampling: shortcut in 4 steps with the folded guidance (a pure guidance
        distillation, shortcut_share 0, declares Euler without CFG instead)."""
        return {**super().pipeline_defaults(), **few_step_defaults(self.guidance_scale, self.shortcut_share)}


def few_step_defaults(guidance_scale: float, shortcut_share: float) -> dict[str, Any]:
    """model_index.json defaults of a distilled model (VideoPipeline.sampling reads them)."""
    if shortcut_share > 0:
        return {"sampler": "shortcut", "num_inference_steps": 4, "guidance_scale": float(guidance_scale)}
    return {"sampler": "euler", "num_inference_steps": 4, "guidance_scale": 1.0, "folded_guidance": float(guidance_scale)}


def _at(packed: PackedBatch, x: Tensor, t_tok: Tensor, t: Tensor) -> PackedBatch:
    """`packed` with tokens x [L, D] at per-token times t_tok [L] (per-sample t [N]; its timestep table too)."""
    info = packed.info
    if info is not None and info.t_table is not None:  # row 0: t = 0 (given), row 1 + i: sample i
        info = replace(info, t_table=torch.cat([t.new_zeros(1), t]))
    return replace(packed, tokens=x, timestep=t_tok, info=info)


def teacher_defaults(folder: str) -> dict[str, Any]:
    """The sampling defaults of a model folder (model_index.json: guidance_scale, time_shift, ...); {} for a DiT
    folder alone."""
    import json
    from pathlib import Path

    index = Path(folder) / "model_index.json"
    return dict(json.loads(index.read_text()).get("defaults", {})) if index.is_file() else {}


def teacher_settings(teacher: str, guidance: float | None, time_shift: float | None) -> tuple[float, float]:
    """(guidance scale to fold in, time shift to train at) of a distillation of `teacher`: the options when given,
    else the teacher folder's sampling defaults, else 5 and 1."""
    taught = teacher_defaults(teacher)
    return (float(guidance if guidance is not None else taught.get("guidance_scale", 5.0)),
            float(time_shift if time_shift is not None else taught.get("time_shift", 1.0)))


__all__ = ["FEW_STEPS", "FewStepTask", "LEVELS", "few_step_defaults", "teacher_defaults", "teacher_settings"]
