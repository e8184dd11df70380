"""The recipe of `chronotope train world-model` (every option, its device defaults and checks) and its run folder
OUT/state.json (the recipe, and per stage the seconds spent across resumes, done, and what it made)."""

from __future__ import annotations

import json
import math
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from chronotope.atomic import atomic_write_json
from chronotope.request import arg, check_device, check_range, memory_limit
from chronotope.text.encoder import DEFAULT_TEXT_ENCODER
from chronotope.train.build import DiTPlan
from chronotope.train.trainer import MAX_BUDGET_S
from chronotope.world.mix import WorldMix

_FREE = ("threads", "progress", "workers", "encode_batch", "text_batch", "ckpt_minutes", "max_shard_size",
         "bench_prompts")  # options a resumed run may change; every other one must match the run in OUT
# options added after runs were recorded, left out of the record at these defaults
_LATER = {"shot_embed": 0, "few_step": False, "shortcut_share": 0.5, "guidance": None, "data": None, "clip_frames": 17,
          "max_pixels": 4096}


MAX_MINUTES = MAX_BUDGET_S / 60
ITEM_BYTES = 2048  # an item's row of the cache index (caption, spec, shapes) in memory, with a margin
# (low, high, why) of the recipe's other counts: each is held in memory at once or costs time per unit
COUNTS = {
    "workers": (1, 4 * (os.cpu_count() or 1), f" (4 render processes per CPU core, {os.cpu_count() or 1} here)"),
    "shard_size": (1, 65_536, " (items per shard file, written whole from memory)"),
    "encode_batch": (1, 4_096, " (clips in one VAE call, held in memory at once)"),
    "text_batch": (1, 65_536, " (captions in one text-encoder call)"),
    "token_budget": (1, 1 << 22, " (tokens of one pack; attention memory grows with its square)"),
    "max_steps": (1, 100_000_000, ""),
    "bench_prompts": (0, 10_000, " (World-bench prompts after training; 10,000 take hours)"),
    "warmup": (0, 100_000_000, ""),
}


def _flag(name: str) -> str:
    """The recipe's field as `train world-model` spells it (its fields are named after the options)."""
    return "--" + name.replace("_", "-")


@dataclass
class WorldModelRecipe:
    """Every option of `chronotope train world-model`; None = a default chosen for the device (`resolved`)."""

    out: str
    minutes: float = 10.0
    device: str | None = None
    seed: int = 0
    # the data: None renders the World (`mix`); a manifest CSV's clips instead (`train model --data`), each read as
    # its first `clip_frames` frames (the longest 4k+1 prefix of a shorter one) at about `max_pixels` per frame
    data: str | None = None
    clip_frames: int = 17
    max_pixels: int = 4096
    items: int | None = None
    data_share: float = 0.2
    mix: WorldMix = field(default_factory=WorldMix)
    shard_size: int | None = None  # items per cache shard (256 on CPU, 2048 on CUDA)
    encode_batch: int | None = None  # clips per VAE call (16 / 256)
    workers: int | None = None  # render processes (cpu count - 1, at most 16; 1 renders in this process)
    vae: str | None = None  # a VAE folder; None: the shipped model's
    train_vae: bool = False
    vae_preset: str = "world"
    vae_share: float = 0.25
    text_encoder: str = DEFAULT_TEXT_ENCODER
    text_encoder_name: str | None = None  # what the model folder names; None: detected (`_encoder_name`)
    text_batch: int | None = None  # captions per text-encoder call (64 / 1024)
    dit_preset: str = "world-s"
    patch: tuple[int, int, int] = (1, 1, 1)
    abs_pos: bool = True
    shot_embed: int = 0  # > 0: a shot-aware DiT (DiTConfig.shot_embed) that learns from the mix's storyboards
    init: str | None = None
    few_step: bool = False  # distil --init into a few-step, guidance-folded DiT (train/few_step.py)
    shortcut_share: float = 0.5  # with few_step: share of packs on shortcut self-consistency (0: guidance only)
    guidance: float | None = None  # with few_step: the CFG scale folded in; None: --init's model_index.json, else 5
    time_shift: float = 3.0
    token_budget: int | None = None  # tokens per pack (2048 / 32768)
    lr: float | None = None  # 3e-4 on CPU, 5e-4 for CUDA's 16x larger packs
    warmup: int = 100
    decay_frac: float = 0.2
    ckpt_minutes: float = 2.0
    max_steps: int = 1_000_000
    bf16: bool | None = None  # on CUDA
    max_shard_size: str | None = None
    bench_prompts: int = 20
    threads: int | None = None
    progress: bool = True

    def resolved(self) -> WorldModelRecipe:
        """A copy with the device's defaults filled in; ValueError for options that cannot work."""
        device = check_device(self.device)  # before OUT is made: a CPU-only PyTorch asked for cuda writes nothing
        if device not in ("cpu", "cuda"):
            raise ValueError(f"{arg('device', device)}: must be cpu or cuda")
        gpu = device == "cuda"
        pick = lambda value, cpu, cuda: value if value is not None else (cuda if gpu else cpu)  # noqa: E731
        r = WorldModelRecipe(**{f.name: getattr(self, f.name) for f in fields(self)})
        r.device, r.patch = device, tuple(r.patch)
        r.shard_size, r.encode_batch = pick(r.shard_size, 256, 2048), pick(r.encode_batch, 16, 256)
        r.text_batch, r.token_budget = pick(r.text_batch, 64, 1024), pick(r.token_budget, 2048, 32768)
        r.lr, r.bf16 = pick(r.lr, 3e-4, 5e-4), pick(r.bf16, False, True)
        r.workers = pick(r.workers, 1, max(1, min(16, (os.cpu_count() or 2) - 1)))
        month = " (30 days: a budget past that is a typo, not a run anyone waits for)"
        for name, hi, why in (("minutes", MAX_MINUTES, month), ("ckpt_minutes", MAX_MINUTES, month),
                              ("lr", 1.0, " (AdamW diverges long before)"), ("time_shift", 100.0, "")):
            check_range(_flag(name), getattr(r, name), 0.0, hi, open_low=True, why=why)
        for name in ("data_share", "vae_share", "decay_frac"):
            value = getattr(r, name)
            if not (math.isfinite(value) and 0 < value < 1):
                raise ValueError(f"{_flag(name)} {value}: is a share of the budget, greater than 0 and less than 1")
        if r.items is not None:
            check_range(_flag("items"), r.items, 1, memory_limit(ITEM_BYTES), integer=True,
                        why=f" (the cache's index, about {ITEM_BYTES // 1000} kB per item, is held in memory)")
        for name, value in (("workers", r.workers), ("shard_size", r.shard_size), ("encode_batch", r.encode_batch),
                            ("text_batch", r.text_batch), ("token_budget", r.token_budget),
                            ("max_steps", r.max_steps), ("bench_prompts", r.bench_prompts), ("warmup", r.warmup)):
            lo, hi, why = COUNTS[name]
            check_range(_flag(name), value, lo, hi, integer=True, why=why)
        r.dit_plan().check()
        if r.few_step and not r.init:
            raise ValueError("--few-step distils a trained model: give --init DIR (the teacher, e.g. "
                             "chronotope/assets/world-model)")
        if not 0 <= r.shortcut_share <= 1:
            raise ValueError(f"--shortcut-share is a share of the packs in [0, 1], got {r.shortcut_share}")
        if r.data is not None:
            if not Path(r.data).is_file():  # before OUT is made
                raise FileNotFoundError(f"--data {r.data}: no such manifest; build one from a folder of clips with "
                                        f"`chronotope manifest DIR --out {r.data}`")
            r.data = str(Path(r.data).resolve())
            check_range("--num-frames", r.clip_frames, 1, 100_001, integer=True)
            if (r.clip_frames - 1) % 4:
                raise ValueError(f"--num-frames {r.clip_frames}: clips have 4k+1 frames (1, 5, 9, 13, 17, ...)")
            check_range("--max-pixels", r.max_pixels, 64, 16_384 ** 2, integer=True)
        if r.train_vae and r.vae:
            raise ValueError("give --vae DIR (reuse a VAE) or --train-vae (train one), not both")
        if r.vae and not (Path(r.vae) / "config.json").is_file():  # before OUT is made
            raise FileNotFoundError(f"--vae {r.vae}: not a VAE folder (config.json + model.safetensors)")
        if r.max_shard_size is not None:
            from chronotope.weights import parse_size

            parse_size(r.max_shard_size)
        return r

    def dit_plan(self) -> DiTPlan:
        """The DiT this recipe trains (train/build.py): --init distilled when --few-step."""
        return DiTPlan(preset=self.dit_preset, init=self.init, patch=tuple(self.patch), abs_pos=self.abs_pos,
                       shot_embed=self.shot_embed, teacher=self.init if self.few_step else None, seed=self.seed)

    def guidance_scale(self) -> float:
        """The CFG scale a few-step run folds in: --guidance, else --init's (model_index.json), else 5."""
        from chronotope.train.few_step import teacher_settings

        return teacher_settings(self.init, self.guidance, self.time_shift)[0]

    def pipeline_defaults(self) -> dict[str, Any]:
        """model_index.json defaults of OUT/model: the shift rule, and a few-step model's sampling."""
        from chronotope.train.few_step import few_step_defaults

        few = few_step_defaults(self.guidance_scale(), self.shortcut_share) if self.few_step else {}
        return {"time_shift": self.time_shift, **few}

    def encoder_name(self) -> str:
        """What the model folder names as its text encoder: --text-encoder-name, else the bundled package's name
        when --text-encoder is it or a copy of its folder, else the folder's absolute path."""
        from chronotope.text.encoder import is_bundled_copy

        if self.text_encoder_name:
            return self.text_encoder_name
        if self.text_encoder in (DEFAULT_TEXT_ENCODER, "debug"):
            return self.text_encoder
        return DEFAULT_TEXT_ENCODER if is_bundled_copy(self.text_encoder) else str(Path(self.text_encoder).resolve())

    def fixed(self) -> dict[str, Any]:
        """The options that decide the run's data and models (recorded in OUT/state.json)."""
        d = asdict(self)
        d["mix"], d["patch"] = self.mix.to_dict(), list(self.patch)
        later = {k: v for k, v in _LATER.items() if d.get(k) == v}  # at their default: runs from before them resume
        return {k: v for k, v in d.items() if k not in _FREE and k != "out" and k not in later}


class WorldRun:
    """OUT/state.json: the recipe and, per stage, seconds spent (across resumes), done, and what it made."""

    def __init__(self, recipe: WorldModelRecipe) -> None:
        self.recipe, self.out = recipe, Path(recipe.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.path = self.out / "state.json"
        fixed = json.loads(json.dumps(recipe.fixed()))
        if self.path.exists():
            self.state = json.loads(self.path.read_text(encoding="utf-8"))
            saved = self.state["recipe"]
            diff = sorted(k for k in set(fixed) | set(saved) if fixed.get(k) != saved.get(k))
            if diff:
                was = ", ".join(f"{k}={self.state['recipe'].get(k)!r}" for k in diff)
                raise ValueError(f"{self.out} holds a world-model run with other options ({was}); run the same "
                                 "command to continue it, or choose a new --out")
        else:
            self.state = {"recipe": fixed, "budget_s": recipe.minutes * 60, "stages": {}}
            self.save()
        self.budget_s = float(self.state["budget_s"])

    def stage(self, name: str) -> dict[str, Any]:
        return self.state["stages"].setdefault(name, {"seconds": 0.0, "done": False})

    def spent(self, *names: str) -> float:
        return sum(self.stage(n)["seconds"] for n in names)

    def finish(self, name: str, **info: Any) -> None:
        self.stage(name).update(info, done=True)
        self.save()

    def save(self) -> None:
        atomic_write_json(self.path, self.state)

    @contextmanager
    def timed(self, name: str):
        """Adds the stage's wall-clock to the state at every `tick()` and at the end (also on errors)."""
        clock = StageClock(self, name)
        try:
            yield clock
        finally:
            clock.tick()


class StageClock:
    def __init__(self, run: WorldRun, name: str) -> None:
        self.run, self.name, self.t = run, name, time.perf_counter()

    def tick(self) -> None:
        now = time.perf_counter()
        self.run.stage(self.name)["seconds"] += now - self.t
        self.t = now
        self.run.save()
