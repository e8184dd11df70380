"""The one way a training run gets its DiT, and the task that trains it: every recipe (`train dit`, `train
world-model`, `train lora`) describes what it wants as a `DiTPlan` and calls `build_dit`.

Where the DiT comes from, first match wins:

  resumed  the newest complete checkpoint of the run: its architecture (the Trainer loads its weights)
  --init   a DiT or model folder: its config and weights, then the plan's additions (`DiT.extended`: a finer
           patch, absolute positions, a shot embedding, all zero-initialised or exact, so step 0 is the init model)
  teacher  few-step without --init: the student starts as the teacher
  preset   a fresh `DIT_PRESETS[preset]` at the data's latent channels

then few-step adds a step-size embedding (train/few_step.py) and LoRA its adapters (train/lora.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from chronotope.config import DIT_PRESETS, DiTConfig, config_from_dict
from chronotope.train.checkpoint import resumed_task


@dataclass
class LoRASpec:
    """Adapters on the DiT's linears (train/lora.py add_lora); alpha None = rank."""

    rank: int = 16
    alpha: float | None = None
    targets: tuple[str, ...] = ("attn", "cross", "mlp")


@dataclass
class DiTPlan:
    """What a run asks of its DiT. abs_pos: None = the preset's (or --init's) choice, True = absolute position
    features (added to an --init DiT without them), False = a fresh DiT without them. shot_embed: 0 = off, else
    the rows of a shot-index embedding (storyboards). teacher: few-step distillation of that folder."""

    preset: str = "world-s"
    init: str | None = None
    patch: tuple[int, int, int] | None = None
    abs_pos: bool | None = None
    shot_embed: int = 0
    teacher: str | None = None
    lora: LoRASpec | None = None
    seed: int = 0

    def check(self) -> None:
        """ValueError for options that cannot work, before anything is read."""
        if self.preset not in DIT_PRESETS:
            raise ValueError(f"unknown DiT preset {self.preset!r}; choose one of {sorted(DIT_PRESETS)}")
        if self.patch is not None and (len(self.patch) != 3 or min(self.patch) < 1):
            raise ValueError(f"--patch takes three positive sizes PT,PH,PW such as 1,1,1, got {list(self.patch)}")
        if self.shot_embed < 0 or self.shot_embed == 1:
            raise ValueError(f"--shot-embed is 0 (off) or the rows of the shot embedding, at least 2 (3 tells the "
                             f"new shot and both context shots apart), got {self.shot_embed}")


@dataclass
class BuiltDiT:
    """A run's DiT; `saved`: the resumed run's task record (None for a new run); `teacher`: few-step's, frozen."""

    model: nn.Module
    saved: dict[str, Any] | None = None
    teacher: nn.Module | None = None


def dit_folder(path: str | Path) -> Path:
    """A DiT folder (config.json + weights), or a model folder's dit/ subfolder."""
    folder = Path(path)
    if (folder / "dit" / "config.json").is_file():
        folder = folder / "dit"
    if not (folder / "config.json").is_file():
        raise ValueError(f"--init {path}: not a DiT folder (config.json + model.safetensors) nor a model folder "
                         "with a dit/ inside (see `chronotope train dit` exports: RUN_DIR/dit or RUN_DIR/model)")
    return folder


def _coarser(old: tuple[int, ...], new: tuple[int, ...]) -> bool:
    """True when `new` is not a refinement of `old` (DiT.extended cannot reach it)."""
    return any(o % n for o, n in zip(old, new))


def build_dit(plan: DiTPlan, channels: int, resume_dir: str | Path | None = None,
              rebase: Callable[[nn.Module], nn.Module] | None = None) -> BuiltDiT:
    """The DiT `plan` asks for, taking `channels`-channel latents (the VAE's). resume_dir: the run folder when the
    run resumes. rebase: maps an --init DiT made for other latents (channels, or a coarser patch) onto these
    (train world-model's transfer); without it such an --init is refused."""
    from chronotope.dit.model import DiT
    from chronotope.train.ranks import seed_everything

    plan.check()
    seed_everything(plan.seed)  # a fresh DiT's weights (and a new embedding's) follow the seed
    saved = resumed_task(resume_dir)
    source = plan.init or plan.teacher
    if saved is not None and "dit" in saved:
        model = DiT(config_from_dict(DiTConfig, saved["dit"]))
    elif source:
        model = DiT.from_pretrained(dit_folder(source)).train()
        if rebase is not None and (model.config.in_channels != channels
                                   or (plan.patch is not None and _coarser(model.config.patch, tuple(plan.patch)))):
            model = rebase(model)
        model = _with_additions(model, plan)
        if model.config.in_channels != channels:
            raise ValueError(f"--init {source} takes {model.config.in_channels}-channel latents but the data holds "
                             f"{channels}; use that DiT's VAE")
    else:
        config = DIT_PRESETS[plan.preset]()
        config.in_channels = channels
        config.patch = tuple(plan.patch) if plan.patch is not None else config.patch
        config.abs_pos = config.abs_pos if plan.abs_pos is None else plan.abs_pos
        config.shot_embed = plan.shot_embed or config.shot_embed
        model = DiT(config)
    teacher = None
    if plan.teacher:  # the student: the model plus a zero step embedding, so it starts as the teacher
        model = model if model.config.step_embed else model.extended(step_embed=True)
        teacher = DiT.from_pretrained(dit_folder(plan.teacher)).eval()
        if teacher.config.step_embed:
            raise ValueError(f"--teacher {plan.teacher} is already a few-step model; distil from a multi-step one")
    if plan.lora is not None:
        from chronotope.train.lora import add_lora

        add_lora(model, plan.lora.rank, plan.lora.alpha, plan.lora.targets)
    return BuiltDiT(model, saved, teacher)


def _with_additions(model: nn.Module, plan: DiTPlan) -> nn.Module:
    """An --init DiT with the plan's finer patch, absolute positions and shot embedding (each exact at step 0)."""
    finer = plan.patch is not None and tuple(plan.patch) != model.config.patch
    return model.extended(patch=tuple(plan.patch) if finer else None,
                          abs_pos=bool(plan.abs_pos) and not model.config.abs_pos,
                          shot_embed=plan.shot_embed if plan.shot_embed and not model.config.shot_embed else 0)


def dit_task(built: BuiltDiT, cache: Any, text: Any, guidance: float = 5.0, shortcut_share: float = 0.5,
             **options: Any) -> Any:
    """The task that trains `built`: few-step distillation when it has a teacher, else rectified flow (DiTTask);
    options: DiTTask's (token_budget, time_shift, ...)."""
    from chronotope.train.dit_task import DiTTask

    if built.teacher is None:
        return DiTTask(built.model, cache, text, **options)
    from chronotope.train.few_step import FewStepTask

    options.pop("caption_dropout", None)  # the student always reads its caption; guidance is in the target
    return FewStepTask(built.model, cache, text, built.teacher, guidance_scale=guidance, shortcut_share=shortcut_share,
                       **options)
