"""World-bench generate-and-score: sample fresh World prompts, generate them with a model in every Sora
mode, score the outputs against the prompts' specs, and write the proof (results.json, report.md, plots).

The prompts are World scenes drawn with seeds far from any training seed (default 10_000_000 + ...),
a share of them held-out compositions (purple triangle, cyan square, orange circle), captioned with
`detailed_caption` (the style the model was trained on). Each prompt cycles through the trained and
untrained aspect ratios and the frame counts; each mode uses the ground-truth render of the same scene
where it needs an image or a video (i2v, extend, connect). Every output is saved under OUT/videos/ with
a sidecar JSON ("spec", "prompt", and the record), so `chronotope bench run OUT/videos` re-scores them,
and a re-run skips every job whose sidecar is there (resumable).

    chronotope bench generate-and-score --model runs/world-model --out bench_gen --num 200
    run_generate_and_score(pipe, BenchConfig(out="bench_gen", num=20))   # -> results dict
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field

import numpy as np
from tqdm import tqdm

from chronotope.atomic import atomic_write_json
from chronotope.bench.modes import BENCH, run_job
from chronotope.bench.score import ATTRIBUTES, SCORER_VERSION, score_video
from chronotope.pipeline.pipeline import SAMPLING
from chronotope.request import MODES, TEMPORAL_FACTOR
from chronotope.sizes import parse_aspect_ratio, size_for
from chronotope.world import detailed_caption, is_heldout, sample_scene
from chronotope.world.vocab import COLORS, HELDOUT, SHAPES

BENCH_MODES: tuple[str, ...] = tuple(m for m in MODES if m in BENCH)  # in request.MODES' order
BENCH_STEPS = 20  # sampling steps of a model whose folder names none (the pipeline's own default is SAMPLING's)


@dataclass
class BenchConfig:
    """Everything that decides the jobs (CLI flags of `chronotope bench generate-and-score`)."""

    out: str
    num: int = 200
    seed: int = 10_000_000
    aspect_ratios: list[str] = field(default_factory=lambda: ["1:1", "16:9", "9:16"])
    untrained_aspect_ratios: list[str] = field(default_factory=lambda: ["2:1", "1:2"])
    num_frames: list[int] = field(default_factory=lambda: [17, 33])
    resolution: str = "64px"
    modes: list[str] = field(default_factory=lambda: list(BENCH_MODES))
    steps: int | None = None  # None: the model's (model_index.json num_inference_steps), else BENCH_STEPS
    guidance: float | None = None  # None: the model's default (model_index.json), else the pipeline's (SAMPLING)
    time_shift: float | None = None  # scale of the sampler's token-count shift; None: the model's (model_index.json)
    sampler: str | None = None  # None: the model's (a few-step folder declares shortcut), else SAMPLING's
    steps_table: list[int] | None = None  # None: 5, 10, 20, 50; 1, 2, 4, 8 for a few-step model
    steps_table_prompts: int = 20
    heldout_fraction: float = 0.15
    composition: tuple[str, str] | None = None  # (color, shape): every prompt shows it (heldout_fraction unused)
    long_window: int | None = None  # None: the model's default num_frames (its training length)
    grid_videos: int = 8
    progress: bool = True

    def check(self) -> None:
        """ValueError with a fix for any flag that cannot work."""
        if self.num < 1:
            raise ValueError(f"--num must be >= 1, got {self.num}")
        if self.seed < 0:
            raise ValueError(f"--seed must be >= 0, got {self.seed}")
        unknown = [m for m in self.modes if m not in BENCH_MODES]
        if unknown or not self.modes:
            raise ValueError(f"unknown mode(s) {unknown or self.modes}; choose from {','.join(BENCH_MODES)}")
        if not self.aspect_ratios:
            raise ValueError("give at least one trained aspect ratio (--aspect-ratios 1:1,16:9,9:16)")
        for ar in self.aspect_ratios + self.untrained_aspect_ratios:
            parse_aspect_ratio(ar)
        if not self.num_frames:
            raise ValueError("give at least one frame count (--num-frames 17,33)")
        least = 9 if "connect" in self.modes else 5
        for t in self.num_frames:
            if t < least or (t - 1) % TEMPORAL_FACTOR:
                raise ValueError(f"--num-frames entries must be 4k+1 and >= {least} (the modes need video; "
                                 f"t2i makes the images), got {t}; e.g. 17,33")
        if (self.steps is not None and self.steps < 1) or any(s < 1 for s in self.steps_table or []):
            raise ValueError(f"--steps and --steps-table entries must be >= 1, got {self.steps}, {self.steps_table}")
        if self.time_shift is not None and not self.time_shift > 0:
            raise ValueError(f"--time-shift must be > 0 (1 = the plain rule, the model's own is in its "
                             f"model_index.json), got {self.time_shift}")
        if not 0.0 <= self.heldout_fraction <= 1.0:
            raise ValueError(f"--include-heldout-fraction must be in [0, 1], got {self.heldout_fraction}")
        if self.composition is not None:
            color, shape = self.composition
            if color not in COLORS or shape not in SHAPES:
                raise ValueError(f"--composition {color}:{shape}: give COLOR:SHAPE with a color of "
                                 f"{','.join(COLORS)} and a shape of {','.join(SHAPES)}, e.g. purple:triangle")


@dataclass(frozen=True)
class BenchPrompt:
    """One fresh World prompt and the size it is generated at."""

    index: int
    scene_seed: int
    heldout: bool
    caption: str
    spec: dict
    aspect_ratio: str
    trained_ar: bool
    height: int
    width: int
    num_frames: int


@dataclass(frozen=True)
class Job:
    prompt: BenchPrompt
    mode: str
    steps: int

    @property
    def name(self) -> str:
        return f"{self.prompt.index:05d}_{self.mode}_s{self.steps}"

    @property
    def ext(self) -> str:
        return ".png" if self.mode == "t2i" else ".mp4"


def _is_heldout_slot(i: int, fraction: float) -> bool:
    """Prompt i is held-out when the running count floor((i+1) f) steps up: exactly round-down(n f) of n."""
    return math.floor((i + 1) * fraction + 1e-9) > math.floor(i * fraction + 1e-9)


def shows_composition(spec: dict, composition: tuple[str, str]) -> bool:
    """Whether a World spec has an object of that (color, shape)."""
    return any((o["color"], o["shape"]) == tuple(composition) for o in spec["objects"])


def plan_prompts(cfg: BenchConfig) -> list[BenchPrompt]:
    """cfg.num prompts: prompt i's scene seed is cfg.seed + 1000 i (+ j, the first j that gives a held-out
    composition when slot i is a held-out one, or that shows cfg.composition in every slot when it is set);
    sizes cycle through (aspect ratio, num_frames) pairs."""
    ars = [(a, True) for a in cfg.aspect_ratios] + [(a, False) for a in cfg.untrained_aspect_ratios]
    combos = [(ar, t) for ar in ars for t in cfg.num_frames]
    prompts = []
    for i in range(cfg.num):
        want_heldout = _is_heldout_slot(i, cfg.heldout_fraction)
        if cfg.composition is not None:  # a held-out composition is drawn only with held-out pairs allowed
            want_heldout = tuple(cfg.composition) in HELDOUT
        for j in range(1000):
            seed = cfg.seed + 1000 * i + j
            scene = sample_scene(seed, include_heldout=want_heldout)
            if cfg.composition is not None:
                if shows_composition(scene.spec, cfg.composition):
                    want_heldout = is_heldout(scene.spec)  # what run_job re-draws the scene with: the same scene
                    break
            elif is_heldout(scene.spec) == want_heldout:
                break
        else:  # a held-out pair, or one given composition, has probability >= 0.05 per scene: 1000 misses do not happen
            raise RuntimeError(f"no {'scene with ' + ' '.join(cfg.composition) if cfg.composition else 'held-out scene'} "
                               f"among seeds {cfg.seed + 1000 * i}..+999")
        (ar, trained), t = combos[i % len(combos)]
        h, w = size_for(cfg.resolution, ar)
        prompts.append(BenchPrompt(i, seed, want_heldout, detailed_caption(scene, seed), scene.spec, ar, trained,
                                   h, w, t))
    return prompts


def plan_jobs(cfg: BenchConfig, prompts: list[BenchPrompt]) -> list[Job]:
    """Every mode for every prompt at cfg.steps, plus t2v at each steps-table count for the first prompts
    (the t2v job at cfg.steps doubles as the steps table's entry for that count)."""
    jobs = {Job(p, m, cfg.steps).name: Job(p, m, cfg.steps) for p in prompts for m in cfg.modes}
    for p in prompts[: cfg.steps_table_prompts]:
        for s in cfg.steps_table:
            jobs.setdefault(Job(p, "t2v", s).name, Job(p, "t2v", s))
    return list(jobs.values())


def score_t2v(pipe, num: int, steps: int | None = None, progress: bool = True) -> dict:
    """World-bench t2v on its first `num` prompts (the published sizes and seeds), generated and scored in
    memory: no video files, no PyAV (a quick score where only the number is wanted, e.g. at the end of
    `chronotope train world-model`). Returns t2v_overall (the mean over all its prompts, held-out ones included) and
    each attribute's mean. steps: None = the model's (model_index.json), else BENCH_STEPS."""
    steps = steps if steps is not None else int(pipe.defaults.get("num_inference_steps", BENCH_STEPS))
    prompts = plan_prompts(BenchConfig(out="", num=num, modes=["t2v"], steps_table=[]))
    fps, guidance = float(pipe.defaults["fps"]), model_guidance(pipe)
    scores, t0 = [], time.perf_counter()
    for p in tqdm(prompts, desc="world-bench t2v", unit="video", disable=not progress):
        out = pipe(p.caption, num_frames=p.num_frames, height=p.height, width=p.width, num_inference_steps=steps,
                   guidance_scale=guidance, seed=p.scene_seed, fps=fps, expand_prompt=False, progress=False)
        scores.append(score_video(out.frames[0], p.spec, fps=fps))

    def mean(key: str) -> float | None:
        values = [s[key] for s in scores if s.get(key) is not None]
        return float(np.mean(values)) if values else None

    return {"prompts": num, "t2v_overall": mean("overall"), "attributes": {a: mean(a) for a in ATTRIBUTES},
            "seconds_per_video": (time.perf_counter() - t0) / max(1, num)}


def _signature(job: Job, cfg: BenchConfig, model: str, guidance: float, lora: list[dict] | None = None) -> dict:
    """What makes a saved video reusable on a re-run: same prompt, size, mode, steps, sampler, shift, model,
    LoRA adapters (`lora`: [{"path", "scale"}] merged into the pipeline's DiT)."""
    p = job.prompt
    sig = {"model": os.path.abspath(model) if model else "", "mode": job.mode, "scene_seed": p.scene_seed, "height": p.height, "width": p.width,
           "num_frames": p.num_frames, "steps": job.steps, "guidance_scale": guidance, "sampler": cfg.sampler,
           "long_window": cfg.long_window if job.mode == "long" else None}
    if SCORER_VERSION > 1:  # sidecars of scorer 1 carry no version: they match only while it is 1
        sig["scorer"] = SCORER_VERSION
    if cfg.time_shift is not None:  # only when overridden, so earlier runs' sidecars stay reusable
        sig["time_shift"] = cfg.time_shift
    if lora:  # likewise only with adapters merged into the model
        sig["lora"] = lora
    return sig


def _write_json(path: str, data: dict) -> None:
    atomic_write_json(path, data)


def _load_sidecar(path: str, signature: dict) -> dict | None:
    """The record of a finished job, or None when it must be (re)made: no sidecar, a torn one, a missing
    video, or one made with other settings."""
    try:
        with open(path, encoding="utf-8") as f:
            side = json.load(f)
    except (OSError, json.JSONDecodeError):
        return None
    record = side.get("record") if isinstance(side, dict) else None
    video = os.path.join(os.path.dirname(path), str(side.get("video", "")))
    if side.get("job") != signature or not record or not os.path.isfile(video):
        return None
    return record


def run_generate_and_score(pipe, cfg: BenchConfig, model: str = "") -> dict:
    """Run every job (skipping finished ones), then aggregate and write OUT/results.json, report.md,
    grid.gif and plots. Returns the results dict; `generated` / `skipped` count this run's jobs."""
    cfg = with_model_sampling(cfg, pipe)
    cfg.check()
    guidance = float(cfg.guidance) if cfg.guidance is not None else model_guidance(pipe)
    if cfg.time_shift is not None:  # every mode's schedule reads the shift rule's scale from the defaults
        pipe = pipe.with_defaults(time_shift=float(cfg.time_shift))  # the caller's pipeline is left as it came
    return _run_jobs(pipe, cfg, model, guidance)


def model_guidance(pipe) -> float:
    """The guidance scale the model folder declares (model_index.json), else the pipeline's default (SAMPLING)."""
    return float(pipe.defaults.get("guidance_scale", SAMPLING["guidance_scale"]))


def with_model_sampling(cfg: BenchConfig, pipe) -> BenchConfig:
    """cfg with the steps, sampler and steps table it leaves None taken from the model folder (model_index.json):
    a few-step model is benched at its own steps (4) with a 1, 2, 4, 8 table, any other at BENCH_STEPS with 5, 10,
    20, 50."""
    from dataclasses import replace

    d = pipe.defaults
    few = "folded_guidance" in d or (cfg.sampler or d.get("sampler")) == "shortcut"
    steps = cfg.steps if cfg.steps is not None else int(d.get("num_inference_steps", BENCH_STEPS))
    return replace(cfg, steps=steps, sampler=cfg.sampler or str(d.get("sampler", SAMPLING["sampler"])),
                   steps_table=cfg.steps_table if cfg.steps_table is not None else ([1, 2, 4, 8] if few else [5, 10, 20, 50]))


def _run_jobs(pipe, cfg: BenchConfig, model: str, guidance: float) -> dict:
    """run_generate_and_score's work, with the pipeline's defaults already as the run wants them."""
    from chronotope.bench.generate_report import aggregate, write_outputs
    from chronotope.pipeline.lora import merged
    from chronotope.video import write_video

    fps = float(pipe.defaults["fps"])
    videos_dir = os.path.join(cfg.out, "videos")
    os.makedirs(videos_dir, exist_ok=True)
    prompts = plan_prompts(cfg)
    jobs = plan_jobs(cfg, prompts)
    lora = [{**a, "path": os.path.abspath(a["path"])} for a in merged(pipe.dit)] if hasattr(pipe, "dit") else []
    records, generated, skipped, warm = [], 0, 0, False
    for job in tqdm(jobs, desc="generate-and-score", unit="video", disable=not cfg.progress):
        path = os.path.join(videos_dir, job.name + job.ext)
        side_path = os.path.join(videos_dir, job.name + ".json")
        signature = _signature(job, cfg, model, guidance, lora)
        record = _load_sidecar(side_path, signature)
        if record is not None:
            records.append(record)
            skipped += 1
            continue
        if not warm:  # one-time costs (text encoder load, first kernels) stay out of the timings
            pipe(job.prompt.caption, num_frames=1, height=16, width=16, num_inference_steps=1, seed=0,
                 expand_prompt=False, progress=False)
            warm = True
        frames, record = run_job(pipe, job, cfg, fps, guidance)
        record["path"] = os.path.relpath(path, cfg.out)
        write_video(path, frames, fps)
        _write_json(side_path, {"prompt": job.prompt.caption, "spec": job.prompt.spec, "video": job.name + job.ext,
                                "job": signature, "record": record})
        records.append(record)
        generated += 1
    summary = aggregate(records, cfg)
    result = {"config": {**asdict(cfg), "model": model, "lora": lora, "guidance_scale": guidance, "fps": fps,
                         "scorer": SCORER_VERSION,
                         "time_shift_used": pipe.defaults.get("time_shift")},
              "summary": summary, "videos": records, "generated": generated, "skipped": skipped}
    write_outputs(result, cfg)
    return result


__all__ = ["BENCH_MODES", "BenchConfig", "BenchPrompt", "Job", "plan_jobs", "plan_prompts", "run_generate_and_score",
           "score_t2v"]
