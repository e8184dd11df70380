"""The whole World model in one command, within a wall-clock budget: data -> VAE -> cache -> DiT -> export -> score.

    chronotope train world-model --minutes 8 --device cuda --out runs/wm [--vae DIR | --train-vae] [--items N]

The recipe of docs/training-world.md, time-boxed. Stages, each resumable (all state under OUT, in
OUT/state.json; kill -9 and the same command continues where it stopped):

  vae     the VAE: --vae DIR (default: the shipped one), or --train-vae for --vae-share of the budget
  data    World items rendered in memory by worker processes and encoded batched on the device into the
          latent cache OUT/cache (chronotope/train/world_data.py), until --data-share of the budget is
          spent (at a shard boundary) or 200,000 items; --items N for exactly N
  text    caption embeddings of the cache on the device (TextEmbeddings)
  rebase  only when --init takes other latents than this run's VAE: its DiT moved onto them by transfer
          (chronotope/train/transfer.py: trunk kept, input and output layers mapped by least squares)
  dit     the DiT for the time left (--few-step: --init distilled into a 1-8-step sampler, train/few_step.py) (Trainer(time_budget_s=...)): warmup in steps, then a constant lr and
          a cooldown over the last --decay-frac of the time, ending at the budget; checkpoints about every
          --ckpt-minutes (the step interval comes from the speed of the first 20 steps)
  export  OUT/model: fp16 weights, sharded to --max-shard-size when given (chronotope/weights.py)
  bench   a quick World-bench t2v score of OUT/model, in memory (--bench-prompts N, 0 = skip)

The budget covers vae + data + text + dit; export and the quick bench come after it (seconds on a GPU).
"""

from __future__ import annotations

import json
import math
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from chronotope.atomic import atomic_write_json, swap_in_folder
from chronotope.request import arg, check_device, check_range, memory_limit
from chronotope.train.trainer import MAX_BUDGET_S
from chronotope.pipeline import DEFAULT_TEXT_ENCODER
from chronotope.world.mix import WorldMix

PROBE_STEPS = 20  # the first segment of a training stage, whose speed sets the checkpoint interval
_FREE = ("threads", "progress", "workers", "encode_batch", "text_batch", "ckpt_minutes", "max_shard_size",
         "bench_prompts")  # options a resumed run may change; every other one must match the run in OUT
# options added after runs were recorded, left out of the record at these defaults
_LATER = {"shot_embed": 0, "few_step": False, "shortcut_share": 0.5, "guidance": None}


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
        if r.shot_embed < 0 or r.shot_embed == 1:
            raise ValueError(f"--shot-embed is 0 (off) or the rows of the shot embedding, at least 2 (3 tells the "
                             f"new shot and both context shots apart), got {r.shot_embed}")
        if len(r.patch) != 3 or min(r.patch) < 1:
            raise ValueError(f"--patch takes three positive sizes PT,PH,PW such as 1,1,1, got {list(r.patch)}")
        if r.few_step and not r.init:
            raise ValueError("--few-step distils a trained model: give --init DIR (the teacher, e.g. "
                             "chronotope/assets/world-model)")
        if not 0 <= r.shortcut_share <= 1:
            raise ValueError(f"--shortcut-share is a share of the packs in [0, 1], got {r.shortcut_share}")
        if r.train_vae and r.vae:
            raise ValueError("give --vae DIR (reuse a VAE) or --train-vae (train one), not both")
        if r.vae and not (Path(r.vae) / "config.json").is_file():  # before OUT is made
            raise FileNotFoundError(f"--vae {r.vae}: not a VAE folder (config.json + model.safetensors)")
        if r.max_shard_size is not None:
            from chronotope.weights import parse_size

            parse_size(r.max_shard_size)
        return r

    def fixed(self) -> dict[str, Any]:
        """The options that decide the run's data and models (recorded in OUT/state.json)."""
        d = asdict(self)
        d["mix"], d["patch"] = self.mix.to_dict(), list(self.patch)
        later = {k: v for k, v in _LATER.items() if d.get(k) == v}  # at their default: runs from before them resume
        return {k: v for k, v in d.items() if k not in _FREE and k != "out" and k not in later}


class _Run:
    """OUT/state.json: the recipe and, per stage, seconds spent (across resumes), done, and what it made."""

    def __init__(self, recipe: WorldModelRecipe) -> None:
        self.recipe, self.out = recipe, Path(recipe.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.path = self.out / "state.json"
        fixed = json.loads(json.dumps(recipe.fixed()))
        if self.path.exists():
            self.state = json.loads(self.path.read_text(encoding="utf-8"))
            diff = sorted(k for k in set(fixed) | set(self.state["recipe"]) if fixed.get(k) != self.state["recipe"].get(k))
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
        clock = _Clock(self, name)
        try:
            yield clock
        finally:
            clock.tick()


class _Clock:
    def __init__(self, run: _Run, name: str) -> None:
        self.run, self.name, self.t = run, name, time.perf_counter()

    def tick(self) -> None:
        now = time.perf_counter()
        self.run.stage(self.name)["seconds"] += now - self.t
        self.t = now
        self.run.save()


def _say(recipe: WorldModelRecipe, msg: str) -> None:
    if recipe.progress:
        tqdm.write(f"[world-model] {msg}")


# --- stages ------------------------------------------------------------------------------------


def _fit_within(run: _Run, name: str, task: Any, budget_s: float, *, lr: float, bf16: bool,
                config: dict[str, Any]) -> dict[str, Any]:
    """Train `task` under OUT/train-<name> for `budget_s` seconds of the trainer's clock (across resumes):
    PROBE_STEPS steps first, whose speed sets a checkpoint interval of about --ckpt-minutes, then the rest."""
    from chronotope.train.plots import read_metrics
    from chronotope.train.trainer import Trainer

    r, st, run_dir = run.recipe, run.stage(name), run.out / f"train-{name}"
    common = dict(lr=lr, warmup_steps=r.warmup, schedule="wsd", decay_frac=r.decay_frac, time_budget_s=budget_s,
                  seed=r.seed, resume=True, progress=r.progress, plot=False, bf16=bf16, device=r.device,
                  keep_last=2, log_every=10, config=config)
    if "ckpt_every" not in st:
        result = Trainer(task, run_dir, steps=PROBE_STEPS, ckpt_every=PROBE_STEPS, **common).fit()
        log = run_dir / "metrics.jsonl"
        rows = [m for m in read_metrics(log) if m.get("elapsed") is not None] if log.exists() else []
        if len(rows) >= 2 and rows[-1]["step"] > rows[-2]["step"]:  # steps 10-20: past the first steps' set-up
            per_step = (rows[-1]["elapsed"] - rows[-2]["elapsed"]) / (rows[-1]["step"] - rows[-2]["step"])
        else:  # the budget ran out first: the checkpoint's clock
            state = json.loads((result["checkpoint"] / "trainer_state.json").read_text())
            per_step = state["elapsed"] / max(1, state["step"])
        st["ckpt_every"] = max(PROBE_STEPS, round(r.ckpt_minutes * 60 / max(per_step, 1e-6)))
        run.save()
        _say(r, f"{name}: {per_step:.3f} s per step; a checkpoint every {st['ckpt_every']} steps")
    return Trainer(task, run_dir, steps=max(r.max_steps, PROBE_STEPS), ckpt_every=st["ckpt_every"], **common).fit()


def stage_vae(run: _Run) -> str:
    """The VAE folder: --vae, the shipped one, or one trained here on the mix's items (rendered as needed)."""
    from chronotope.config import VAE_PRESETS
    from chronotope.pipeline import default_model_dir

    r = run.recipe
    if not r.train_vae:
        folder = Path(r.vae) if r.vae else default_model_dir() / "vae"
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"--vae {folder}: not a VAE folder (config.json + model.safetensors)")
        return str(folder.resolve())
    folder = run.out / "train-vae" / "vae"
    if run.stage("vae")["done"]:
        return str(folder.resolve())
    if r.vae_preset not in VAE_PRESETS:
        raise ValueError(f"unknown VAE preset {r.vae_preset!r}; choose one of {sorted(VAE_PRESETS)}")
    from chronotope.train.trainer import seed_everything
    from chronotope.train.vae_task import VAETask
    from chronotope.train.world_data import WorldClips
    from chronotope.vae.model import CausalVAE

    with run.timed("vae"):
        seed_everything(r.seed)
        model = CausalVAE(VAE_PRESETS[r.vae_preset]())
        batch = 4 if r.device == "cpu" else 32
        data = WorldClips(r.mix, r.seed, max(r.items or 8000, batch))
        task = VAETask(model, data, batch_size=batch, num_sample_items=0)  # no PNG strips: no PyAV needed
        result = _fit_within(run, "vae", task, r.vae_share * run.budget_s, lr=3e-4, bf16=False,
                             config={"vae": model.config.to_dict(), "preset": r.vae_preset, "batch_size": batch})
    run.finish("vae", steps=result["step"])
    return str(folder.resolve())


def stage_data(run: _Run, vae_dir: str):
    """OUT/cache: the mix rendered and encoded (or what a stopped run left of it, continued)."""
    from chronotope.data.latent_cache import LatentCache
    from chronotope.train.world_data import build_world_cache
    from chronotope.vae.model import CausalVAE

    r, st = run.recipe, run.stage("data")
    if not st["done"]:
        vae = CausalVAE.from_pretrained(vae_dir)
        spent = st["seconds"]
        with run.timed("data") as clock:
            counts = build_world_cache(
                run.out / "cache", vae, vae_dir=vae_dir, mix=r.mix, seed=r.seed, items=r.items,
                budget_s=None if r.items else r.data_share * run.budget_s, spent_s=spent, shard_size=r.shard_size,
                device=r.device, batch_size=r.encode_batch, workers=r.workers, progress=r.progress,
                on_shard=lambda k, seconds: clock.tick())
        run.finish("data", items=counts["items"])
    return LatentCache(run.out / "cache")


def _encoder_name(recipe: WorldModelRecipe) -> str:
    """What the model folder names as its text encoder: --text-encoder-name, else the bundled package's name
    when --text-encoder is it or a copy of its folder, else the folder's absolute path."""
    from chronotope.text.encoder import is_bundled_copy

    name = recipe.text_encoder
    if recipe.text_encoder_name:
        return recipe.text_encoder_name
    if name in (DEFAULT_TEXT_ENCODER, "debug"):
        return name
    return DEFAULT_TEXT_ENCODER if is_bundled_copy(name) else str(Path(name).resolve())


def stage_text(run: _Run, cache, text_dim: int):
    """(TextEmbeddings of every cached caption, the text encoder on the device, the name the model records)."""
    from chronotope.pipeline import load_text_encoder
    from chronotope.train.dit_task import TextEmbeddings

    r = run.recipe
    encoder = load_text_encoder(r.text_encoder, text_dim, device=r.device)
    if run.stage("text")["done"]:  # rebuilt in memory on a resume; its time was counted the first time
        return TextEmbeddings.build(cache, encoder, batch_size=r.text_batch, progress=r.progress), encoder, _encoder_name(r)
    with run.timed("text"):
        text = TextEmbeddings.build(cache, encoder, batch_size=r.text_batch, progress=r.progress)
    run.finish("text", captions=len(cache))
    return text, encoder, _encoder_name(r)


def _dit_model(run: _Run, channels: int):
    """The DiT to train: the checkpoint's architecture when resuming, else --init's or the preset's."""
    from chronotope.config import DIT_PRESETS, DiTConfig, config_from_dict
    from chronotope.dit.model import DiT
    from chronotope.train.checkpoint import latest_checkpoint
    from chronotope.train.dit_task import dit_folder
    from chronotope.train.trainer import seed_everything

    r = run.recipe
    seed_everything(r.seed)
    last = latest_checkpoint(run.out / "train-dit")
    if last is not None:  # its weights are loaded by the trainer
        saved = json.loads((last / "trainer_state.json").read_text())["config"]["task"]
        return DiT(config_from_dict(DiTConfig, saved["dit"]))
    if r.init:
        model = DiT.from_pretrained(dit_folder(r.init)).train()
        if model.config.in_channels != channels or _coarser(model.config.patch, tuple(r.patch)):
            model = _rebased(run, model, channels)  # another latent space: trunk kept, ends mapped
        if tuple(r.patch) != model.config.patch:
            model = model.with_patch(tuple(r.patch))
        if r.abs_pos and not model.config.abs_pos:
            model = model.with_abs_pos()
        if r.shot_embed and not model.config.shot_embed:
            model = model.with_shot_embed(r.shot_embed)
        if r.few_step and not model.config.step_embed:  # the student: the teacher plus a zero step embedding
            model = model.with_step_embed()
        if model.config.in_channels != channels:
            raise ValueError(f"--init {r.init} takes {model.config.in_channels}-channel latents but the VAE makes "
                             f"{channels}; use that DiT's VAE (--vae)")
        return model
    if r.dit_preset not in DIT_PRESETS:
        raise ValueError(f"unknown DiT preset {r.dit_preset!r}; choose one of {sorted(DIT_PRESETS)}")
    config = DIT_PRESETS[r.dit_preset]()
    config.in_channels, config.patch, config.abs_pos = channels, tuple(r.patch), r.abs_pos or config.abs_pos
    config.shot_embed = r.shot_embed or config.shot_embed
    return DiT(config)


REBASE_CLIPS = 384  # clips whose tokens in both latent spaces fit the maps of a re-based DiT (~150k tokens)


def _coarser(old: tuple[int, ...], new: tuple[int, ...]) -> bool:
    """True when `new` is not a refinement of `old` (with_patch cannot reach it)."""
    return any(o % n for o, n in zip(old, new))


def _rebased(run: _Run, model, channels: int):
    """--init's DiT moved onto this run's VAE (train/transfer.py), fitted on REBASE_CLIPS clips of the mix
    encoded by both VAEs; kept in OUT/rebase/dit (step 0 of the fine-tuning), the fit in state.json."""
    from chronotope.dit.model import DiT
    from chronotope.train.transfer import fit_latent_maps, rebase_dit
    from chronotope.vae.model import CausalVAE
    from chronotope.world.mix import render_item

    r, folder = run.recipe, run.out / "rebase" / "dit"
    if (folder / "config.json").is_file():
        return DiT.from_pretrained(folder).train()
    old_vae_dir = Path(r.init) / "vae"
    if not (old_vae_dir / "config.json").is_file():
        raise ValueError(f"--init {r.init} takes other latents than this run's VAE ({model.config.in_channels} "
                         f"channels at patch {list(model.config.patch)}); to re-base it, --init must be a model folder "
                         "with its vae/ (e.g. chronotope/assets/world-model)")
    with run.timed("rebase"):
        clips = []
        for i in range(REBASE_CLIPS):
            frames, row = render_item(r.mix, r.seed + 1, i)  # another seed than the training items
            clips.append(frames[: row["shots"][0]["num_frames"]] if row.get("shots") else frames)
        new_vae = CausalVAE.from_pretrained(stage_vae(run)).to(r.device)
        maps = fit_latent_maps(CausalVAE.from_pretrained(old_vae_dir).to(r.device), new_vae, clips,
                               model.config.patch, tuple(r.patch), batch_size=r.encode_batch)
        rebased = rebase_dit(model.cpu(), maps, channels, tuple(r.patch))
        rebased.save_pretrained(folder)
    run.finish("rebase", **maps.summary())
    _say(r, f"re-based --init on this VAE: latents mapped with R2 {maps.new_to_old.r2:.3f} (new -> old) and "
            f"{maps.old_to_new.r2:.3f} (old -> new) over {maps.tokens} tokens; step 0 in {folder}")
    return rebased


def stage_dit(run: _Run, cache, text, encoder_name: str) -> dict[str, Any]:
    """Train the DiT for the budget left by the stages before (fixed when it first starts)."""
    from chronotope.train.dit_task import DiTTask

    r, st = run.recipe, run.stage("dit")
    if st["done"]:
        return st
    model = _dit_model(run, cache.rows[0]["shape"][0])  # a re-based --init is timed as its own stage
    before = ("vae", "data", "text", "rebase")
    if "budget_s" not in st:
        left = run.budget_s - run.spent(*before)
        st["budget_s"] = max(left, 0.05 * run.budget_s)
        if left < 0.05 * run.budget_s:
            _say(r, f"the stages before the DiT took {run.spent(*before):.0f} s of the "
                    f"{run.budget_s:.0f} s budget; the DiT still gets {st['budget_s']:.0f} s")
        run.save()
    with run.timed("dit"):
        common = dict(token_budget=r.token_budget, time_shift=r.time_shift, text_encoder_name=encoder_name)
        if r.few_step:
            from chronotope.dit.model import DiT
            from chronotope.train.dit_task import dit_folder
            from chronotope.train.few_step import FewStepTask

            teacher = DiT.from_pretrained(dit_folder(r.init))
            task = FewStepTask(model, cache, text, teacher, guidance_scale=_guidance(r), shortcut_share=r.shortcut_share,
                               **common)
        else:
            task = DiTTask(model, cache, text, **common)
        config = {"dit": model.config.to_dict(), "token_budget": r.token_budget, "time_shift": r.time_shift,
                  "text_encoder": encoder_name, "init": r.init, "cond_probs": None}
        _say(r, f"DiT: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, {len(cache)} items, "
                f"{r.token_budget} tokens per pack, {st['budget_s']:.0f} s")
        result = _fit_within(run, "dit", task, st["budget_s"], lr=r.lr, bf16=r.bf16, config=config)
    run.finish("dit", steps=result["step"])
    return st


def _guidance(r: WorldModelRecipe) -> float:
    """The CFG scale a few-step run folds in: --guidance, else --init's (model_index.json), else 5."""
    from chronotope.train.few_step import teacher_defaults

    return float(r.guidance if r.guidance is not None else teacher_defaults(r.init).get("guidance_scale", 5.0))


def _defaults(r: WorldModelRecipe) -> dict[str, Any]:
    """model_index.json defaults of OUT/model: the shift rule, and a few-step model's sampling."""
    from chronotope.train.few_step import few_step_defaults

    return {"time_shift": r.time_shift, **(few_step_defaults(_guidance(r), r.shortcut_share) if r.few_step else {})}


def stage_export(run: _Run, vae_dir: str, encoder_name: str) -> Path:
    """OUT/model from the DiT's last export (EMA weights) and the VAE, stored in fp16, swapped in whole."""
    from chronotope.dit.model import DiT
    from chronotope.pipeline import VideoPipeline
    from chronotope.vae.model import CausalVAE

    r, folder = run.recipe, run.out / "model"
    if run.stage("export")["done"] and (folder / "model_index.json").is_file():
        return folder
    with run.timed("export"):
        pipe = VideoPipeline(CausalVAE.from_pretrained(vae_dir), DiT.from_pretrained(run.out / "train-dit" / "dit"),
                             None, encoder_name, _defaults(r))

        def write(tmp: Path) -> None:
            pipe.save_pretrained(tmp, dtype=torch.float16, max_shard_size=r.max_shard_size)
            atomic_write_json(tmp / "training.json", {"recipe": r.fixed(), "vae": vae_dir,
                                                      "dit_steps": run.stage("dit").get("steps")})

        swap_in_folder(folder, write)
    run.finish("export")
    return folder


def stage_bench(run: _Run, model_dir: Path, encoder: Any) -> dict[str, Any] | None:
    """World-bench t2v of OUT/model on its first --bench-prompts prompts, in memory, on the training device."""
    from chronotope.bench.generate import score_t2v
    from chronotope.pipeline import VideoPipeline

    r, st = run.recipe, run.stage("bench")
    if r.bench_prompts == 0:
        return None
    if st["done"] and st.get("prompts") == r.bench_prompts:
        return st
    with run.timed("bench"):
        pipe = VideoPipeline.from_pretrained(model_dir, text_encoder=encoder).to(r.device)
        result = score_t2v(pipe, r.bench_prompts, progress=r.progress)
    run.finish("bench", **result)
    return st


def _tokens_trained(run_dir: Path, token_budget: int, steps: int) -> int:
    """Tokens the DiT trained on, from its log: each line's mean pack fill x budget x the steps it covers;
    steps after the last line (a run that stopped on time between two) at the mean fill."""
    from chronotope.train.plots import read_metrics

    total, last, fills = 0.0, 0, []
    for m in read_metrics(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").exists() else []:
        if m.get("fill") is not None:
            total += m["fill"] * token_budget * (m["step"] - last)
            fills.append(m["fill"])
        last = m["step"]
    total += (sum(fills) / len(fills) if fills else 1.0) * token_budget * max(0, steps - last)
    return int(round(total))


def train_world_model(recipe: WorldModelRecipe) -> dict[str, Any]:
    """Run (or continue) every stage; writes OUT/summary.json and returns it."""
    r = recipe.resolved()
    if r.threads:
        torch.set_num_threads(r.threads)
    run = _Run(r)
    _say(r, f"{run.budget_s / 60:g} min on {r.device}; state in {run.path}")
    vae_dir = stage_vae(run)
    cache = stage_data(run, vae_dir)
    from chronotope.config import DIT_PRESETS

    text_dim = DIT_PRESETS[r.dit_preset]().text_dim if r.dit_preset in DIT_PRESETS else 384
    text, encoder, name = stage_text(run, cache, text_dim)
    stage_dit(run, cache, text, name)
    model_dir = stage_export(run, vae_dir, name)
    bench = stage_bench(run, model_dir, encoder)
    stages = run.state["stages"]
    summary = {
        "model": str(model_dir), "device": r.device, "items": stages["data"].get("items"),
        "dit_steps": stages["dit"].get("steps"), "tokens": _tokens_trained(run.out / "train-dit", r.token_budget, stages["dit"].get("steps") or 0),
        "minutes": sum(s["seconds"] for s in stages.values()) / 60, "budget_minutes": run.budget_s / 60,
        "t2v_overall": bench["t2v_overall"] if bench else None,
        "bench": {k: bench[k] for k in ("prompts", "attributes", "seconds_per_video")} if bench else None,
        "seconds": {k: round(s["seconds"], 1) for k, s in stages.items()}, "text_encoder": name, "vae": vae_dir,
    }
    atomic_write_json(run.out / "summary.json", summary)
    return summary


def summary_line(summary: dict[str, Any]) -> str:
    score = summary["t2v_overall"]
    return (f"world-model: items={summary['items']} dit_steps={summary['dit_steps']} tokens={summary['tokens']} "
            f"minutes={summary['minutes']:.2f} t2v_overall={'skipped' if score is None else f'{score:.3f}'}")


__all__ = ["WorldModelRecipe", "summary_line", "train_world_model"]
