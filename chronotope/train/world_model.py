"""A whole model in one command, within a wall-clock budget: data -> VAE -> cache -> DiT -> export -> score.

    chronotope train world-model --minutes 8 --device cuda --out runs/wm [--vae DIR | --train-vae] [--items N]
    chronotope train model --data clips.csv --minutes 60 --out runs/mine [--vae DIR | --train-vae]

One recipe, two data sources: the World, rendered in memory (`train world-model`), or the clips of a manifest
(`train model --data`: any videos and images with captions; unreadable ones are skipped, one line each).

The recipe of docs/training-world.md, time-boxed. Stages, each resumable (all state under OUT, in
OUT/state.json; kill -9 and the same command continues where it stopped):

  vae     the VAE: --vae DIR (default: the shipped one), or --train-vae for --vae-share of the budget
  data    World items rendered in memory by worker processes and encoded batched on the device into the
          latent cache OUT/cache (chronotope/train/world_data.py), until --data-share of the budget is
          spent (at a shard boundary) or 200,000 items; --items N for exactly N
  text    caption embeddings of the cache on the device (TextEmbeddings)
  rebase  only when --init takes other latents than this run's VAE: its DiT moved onto them by transfer
          (chronotope/train/transfer.py: trunk kept, input and output layers mapped by least squares)
  dit     the DiT for the time left (train/build.py; --few-step: --init distilled into a 1-8-step sampler,
          train/few_step.py), bounded by Trainer's time budget: warmup in steps, then a constant lr and
          a cooldown over the last --decay-frac of the time, ending at the budget; checkpoints about every
          --ckpt-minutes (the step interval comes from the speed of the first 20 steps)
  export  OUT/model: fp16 weights, sharded to --max-shard-size when given (chronotope/weights.py)
  bench   a quick World-bench t2v score of OUT/model, in memory (--bench-prompts N, 0 = skip)

The budget covers vae + data + text + dit; export and the quick bench come after it (seconds on a GPU). The
recipe and OUT/state.json are chronotope/train/world_recipe.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from chronotope.atomic import atomic_write_json, swap_in_folder
from chronotope.train.world_recipe import WorldModelRecipe, WorldRun

PROBE_STEPS = 20  # the first segment of a training stage, whose speed sets the checkpoint interval


def _say(recipe: WorldModelRecipe, msg: str) -> None:
    if recipe.progress or msg.startswith("skipped"):  # a skipped clip is said even without progress output
        tqdm.write(f"[{'model' if recipe.data else 'world-model'}] {msg}")


# --- stages ------------------------------------------------------------------------------------


def _fit_within(run: WorldRun, name: str, task: Any, budget_s: float, *, lr: float, bf16: bool,
                config: dict[str, Any]) -> dict[str, Any]:
    """Train `task` under OUT/train-<name> for `budget_s` seconds of the trainer's clock (across resumes):
    PROBE_STEPS steps first, whose speed sets a checkpoint interval of about --ckpt-minutes, then the rest."""
    from chronotope.train.checkpoint import read_state
    from chronotope.train.plots import read_metrics
    from chronotope.train.trainer import Trainer, TrainerConfig

    r, st, run_dir = run.recipe, run.stage(name), run.out / f"train-{name}"
    common = dict(out_dir=run_dir, lr=lr, warmup_steps=r.warmup, schedule="wsd", decay_frac=r.decay_frac,
                  time_budget_s=budget_s, seed=r.seed, resume=True, progress=r.progress, plot=False, bf16=bf16,
                  device=r.device, keep_last=2, log_every=10, record=config)
    if "ckpt_every" not in st:
        result = Trainer(task, TrainerConfig(steps=PROBE_STEPS, ckpt_every=PROBE_STEPS, **common)).fit()
        log = run_dir / "metrics.jsonl"
        rows = [m for m in read_metrics(log) if m.get("elapsed") is not None] if log.exists() else []
        if len(rows) >= 2 and rows[-1]["step"] > rows[-2]["step"]:  # steps 10-20: past the first steps' set-up
            per_step = (rows[-1]["elapsed"] - rows[-2]["elapsed"]) / (rows[-1]["step"] - rows[-2]["step"])
        else:  # the budget ran out first: the checkpoint's clock
            state = read_state(result["checkpoint"])
            per_step = state["elapsed"] / max(1, state["step"])
        st["ckpt_every"] = max(PROBE_STEPS, round(r.ckpt_minutes * 60 / max(per_step, 1e-6)))
        run.save()
        _say(r, f"{name}: {per_step:.3f} s per step; a checkpoint every {st['ckpt_every']} steps")
    steps = max(r.max_steps, PROBE_STEPS)
    return Trainer(task, TrainerConfig(steps=steps, ckpt_every=st["ckpt_every"], **common)).fit()


def stage_vae(run: WorldRun) -> str:
    """The VAE folder: --vae, the shipped one, or one trained here on the mix's items (rendered as needed)."""
    from chronotope.config import VAE_PRESETS
    from chronotope.train.evaluate import shipped_vae_dir

    r = run.recipe
    if not r.train_vae:
        folder = Path(r.vae) if r.vae else shipped_vae_dir()
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"--vae {folder}: not a VAE folder (config.json + model.safetensors)")
        return str(folder.resolve())
    folder = run.out / "train-vae" / "vae"
    if run.stage("vae")["done"]:
        return str(folder.resolve())
    if r.vae_preset not in VAE_PRESETS:
        raise ValueError(f"unknown VAE preset {r.vae_preset!r}; choose one of {sorted(VAE_PRESETS)}")
    from chronotope.train.ranks import seed_everything
    from chronotope.train.vae_task import VAETask
    from chronotope.train.world_data import WorldClips
    from chronotope.vae.model import CausalVAE

    with run.timed("vae"):
        seed_everything(r.seed)
        model = CausalVAE(VAE_PRESETS[r.vae_preset]())
        batch = 4 if r.device == "cpu" else 32
        data = manifest_clips(r) if r.data else WorldClips(r.mix, r.seed, max(r.items or 8000, batch))
        task = VAETask(model, data, batch_size=batch, num_sample_items=0)  # no PNG strips: no PyAV needed
        result = _fit_within(run, "vae", task, r.vae_share * run.budget_s, lr=3e-4, bf16=False,
                             config={"vae": model.config.to_dict(), "preset": r.vae_preset, "batch_size": batch})
    run.finish("vae", steps=result["step"])
    return str(folder.resolve())


def stage_data(run: WorldRun, vae_dir: str):
    """OUT/cache: the mix rendered and encoded (or what a stopped run left of it, continued)."""
    from chronotope.data.latent_cache import LatentCache
    from chronotope.train.world_data import build_world_cache
    from chronotope.vae.model import CausalVAE

    r, st = run.recipe, run.stage("data")
    if not st["done"] and r.data:
        with run.timed("data"):
            counts = _encode_manifest(run, vae_dir)
        run.finish("data", items=counts["items"], skipped=counts["failures"])
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


def manifest_clips(r: WorldModelRecipe):
    """The manifest's clips as a dataset (chronotope/data/dataset.py): its first clip_frames frames each, at about
    max_pixels per frame, aspect ratio kept."""
    from chronotope.data.dataset import VideoDataset
    from chronotope.data.manifest import read_manifest

    return VideoDataset(read_manifest(r.data), num_frames=r.clip_frames, max_pixels=r.max_pixels, random_start=False)


def _encode_manifest(run: WorldRun, vae_dir: str) -> dict[str, Any]:
    """OUT/cache from the manifest's clips (resumable shard by shard); one line per clip skipped, and why."""
    from chronotope.data.latent_cache import encode_to_cache
    from chronotope.vae.model import CausalVAE

    r = run.recipe
    settings = {"manifest": r.data, "num_frames": r.clip_frames, "max_pixels": r.max_pixels}
    counts = encode_to_cache(CausalVAE.from_pretrained(vae_dir).to(r.device), manifest_clips(r), run.out / "cache",
                             vae_dir=vae_dir, shard_size=r.shard_size, settings=settings, progress=r.progress)
    meta = json.loads((run.out / "cache" / "cache.json").read_text(encoding="utf-8"))
    for bad in meta["failed"]:
        _say(r, f"skipped {bad['path']}: {' '.join(str(bad['error']).split())}")
    if counts["items"] == 0:
        raise ValueError(f"--data {r.data}: no clip could be read ({counts['failures']} skipped, listed in "
                         f"{run.out / 'cache' / 'cache.json'}); check the manifest's paths")
    return counts


def stage_text(run: WorldRun, cache, text_dim: int):
    """(TextEmbeddings of every cached caption, the text encoder on the device, the name the model records)."""
    from chronotope.text.encoder import load_text_encoder
    from chronotope.train.dit_task import TextEmbeddings

    r = run.recipe
    encoder = load_text_encoder(r.text_encoder, text_dim, device=r.device)
    if run.stage("text")["done"]:  # rebuilt in memory on a resume; its time was counted the first time
        text = TextEmbeddings.build(cache, encoder, batch_size=r.text_batch, progress=r.progress)
        return text, encoder, r.encoder_name()
    with run.timed("text"):
        text = TextEmbeddings.build(cache, encoder, batch_size=r.text_batch, progress=r.progress)
    run.finish("text", captions=len(cache))
    return text, encoder, r.encoder_name()


def _dit_model(run: WorldRun, channels: int) -> Any:
    """The DiT to train (train/build.py): the checkpoint's architecture when resuming, else --init's (re-based
    when it takes other latents) or the preset's; with --few-step, the teacher beside it."""
    from chronotope.train.build import build_dit

    return build_dit(run.recipe.dit_plan(), channels, run.out / "train-dit",
                     rebase=lambda model: _rebased(run, model, channels))


REBASE_CLIPS = 384  # clips whose tokens in both latent spaces fit the maps of a re-based DiT (~150k tokens)


def _rebased(run: WorldRun, model, channels: int):
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
        if r.data:  # the manifest's first clips, as uint8 [T, H, W, 3]
            data = manifest_clips(r)
            for i in range(min(REBASE_CLIPS, len(data))):
                video = data[i]["video"]  # [3, T, H, W] in [-1, 1]
                clips.append(((video.permute(1, 2, 3, 0) + 1) * 127.5).round().clamp(0, 255).byte().numpy())
        for i in range(0 if r.data else REBASE_CLIPS):
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


def stage_dit(run: WorldRun, cache, text, encoder_name: str) -> dict[str, Any]:
    """Train the DiT for the budget left by the stages before (fixed when it first starts)."""
    from chronotope.train.build import dit_task

    r, st = run.recipe, run.stage("dit")
    if st["done"]:
        return st
    built = _dit_model(run, cache.rows[0]["shape"][0])  # a re-based --init is timed as its own stage
    model, before = built.model, ("vae", "data", "text", "rebase")
    if "budget_s" not in st:
        left = run.budget_s - run.spent(*before)
        st["budget_s"] = max(left, 0.05 * run.budget_s)
        if left < 0.05 * run.budget_s:
            _say(r, f"the stages before the DiT took {run.spent(*before):.0f} s of the "
                    f"{run.budget_s:.0f} s budget; the DiT still gets {st['budget_s']:.0f} s")
        run.save()
    with run.timed("dit"):
        task = dit_task(built, cache, text, guidance=r.guidance_scale() if r.few_step else 5.0,
                        shortcut_share=r.shortcut_share, token_budget=r.token_budget, time_shift=r.time_shift,
                        text_encoder_name=encoder_name)
        config = {"dit": model.config.to_dict(), "token_budget": r.token_budget, "time_shift": r.time_shift,
                  "text_encoder": encoder_name, "init": r.init, "cond_probs": None}
        _say(r, f"DiT: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, {len(cache)} items, "
                f"{r.token_budget} tokens per pack, {st['budget_s']:.0f} s")
        result = _fit_within(run, "dit", task, st["budget_s"], lr=r.lr, bf16=r.bf16, config=config)
    run.finish("dit", steps=result["step"])
    return st


def stage_export(run: WorldRun, vae_dir: str, encoder_name: str) -> Path:
    """OUT/model from the DiT's last export (EMA weights) and the VAE, stored in fp16, swapped in whole."""
    from chronotope.dit.model import DiT
    from chronotope.train.evaluate import export_pipeline

    r, folder = run.recipe, run.out / "model"
    if run.stage("export")["done"] and (folder / "model_index.json").is_file():
        return folder
    with run.timed("export"):
        dit = DiT.from_pretrained(run.out / "train-dit" / "dit")

        def write(tmp: Path) -> None:
            export_pipeline(tmp, vae_dir, dit, encoder_name, r.pipeline_defaults(), dtype=torch.float16,
                            max_shard_size=r.max_shard_size, world=not r.data)
            atomic_write_json(tmp / "training.json", {"recipe": r.fixed(), "vae": vae_dir,
                                                      "dit_steps": run.stage("dit").get("steps")})

        swap_in_folder(folder, write)
    run.finish("export")
    return folder


def stage_bench(run: WorldRun, model_dir: Path, encoder: Any) -> dict[str, Any] | None:
    """World-bench t2v of OUT/model on its first --bench-prompts prompts, in memory, on the training device."""
    from chronotope.train.evaluate import score_t2v

    r, st = run.recipe, run.stage("bench")
    if r.bench_prompts == 0:
        return None
    if r.data:
        _say(r, "no World-bench score: it measures World prompts, and this model learned the manifest's clips")
        return None
    if st["done"] and st.get("prompts") == r.bench_prompts:
        return st
    with run.timed("bench"):
        result = score_t2v(model_dir, encoder, r.device, r.bench_prompts, progress=r.progress)
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
    run = WorldRun(r)
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
        "recipe": "model" if r.data else "world-model", "model": str(model_dir), "device": r.device,
        "items": stages["data"].get("items"), "skipped": stages["data"].get("skipped", 0),
        "dit_steps": stages["dit"].get("steps"),
        "tokens": _tokens_trained(run.out / "train-dit", r.token_budget, stages["dit"].get("steps") or 0),
        "minutes": sum(s["seconds"] for s in stages.values()) / 60, "budget_minutes": run.budget_s / 60,
        "t2v_overall": bench["t2v_overall"] if bench else None,
        "bench": {k: bench[k] for k in ("prompts", "attributes", "seconds_per_video")} if bench else None,
        "seconds": {k: round(s["seconds"], 1) for k, s in stages.items()}, "text_encoder": name, "vae": vae_dir,
    }
    atomic_write_json(run.out / "summary.json", summary)
    return summary


def summary_line(summary: dict[str, Any]) -> str:
    head = f"items={summary['items']} dit_steps={summary['dit_steps']} tokens={summary['tokens']}"
    if summary.get("recipe") == "model":
        return f"model: {head} skipped={summary['skipped']} minutes={summary['minutes']:.2f}"
    score = summary["t2v_overall"]
    return f"world-model: {head} minutes={summary['minutes']:.2f} t2v_overall={'skipped' if score is None else f'{score:.3f}'}"


__all__ = ["WorldModelRecipe", "summary_line", "train_world_model"]
