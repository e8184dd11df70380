"""`chronotope train vae | dit | world-model | lora`, `plot` and `flops`: the trainer's options, one loop for every model.

The verbs live by model: `train vae`, `plot` and `flops` here, `train dit` and `train lora` in cli/train_dit.py,
`train world-model` in cli/train_world.py; every one of them reads the trainer's options of `add_trainer_args`."""

from __future__ import annotations

import argparse
import os

from chronotope.cli.options import int_list
from chronotope.cli.trainer_options import add_trainer_args, check_trainer_args, fit, print_rank0, trainer_options

# --- plot -------------------------------------------------------------------------------------


def add_plot(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plot", help="redraw RUN_DIR/metrics.png from RUN_DIR/metrics.jsonl",
                       description="chronotope plot RUN_DIR  (e.g. while a run trains, or after copying its log)")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a training run folder holding metrics.jsonl")
    p.add_argument("--out", default=None, help="PNG to write (default RUN_DIR/metrics.png)")
    p.set_defaults(handler=run_plot)


def run_plot(args: argparse.Namespace) -> int:
    from chronotope.outputs import check_output
    from chronotope.train.plots import redraw

    if args.out:  # the log it reads is no place for the picture
        check_output(f"--out {args.out}", args.out, [("", os.path.join(args.run_dir, "metrics.jsonl"))])
    print(redraw(args.run_dir, args.out))
    return 0


def add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train the VAE, the DiT or LoRA adapters (the same command runs under torchrun)")
    from chronotope.cli.train_dit import add_train_dit, add_train_lora
    from chronotope.cli.train_world import add_train_model, add_train_world_model

    models = p.add_subparsers(dest="model", required=True, metavar="MODEL")
    for add in (add_train_vae, add_train_dit, add_train_world_model, add_train_model, add_train_lora):
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
    from chronotope.config import VAE_PRESETS, VAEConfig, config_from_dict
    from chronotope.data.dataset import VideoDataset
    from chronotope.train.checkpoint import latest_checkpoint, read_state
    from chronotope.train.trainer import Trainer, TrainerConfig, seed_everything
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
        saved = read_state(last)["config"]["task"]
        config = config_from_dict(VAEConfig, saved["vae"])
        if saved.get("preset", args.preset) != args.preset:
            print(f"resuming a {saved['preset']!r} VAE from {last} (--preset {args.preset!r} ignored)")
        args.preset = saved.get("preset", args.preset)
        args.decoder_only = saved.get("decoder_only", args.decoder_only)
    options = trainer_options(args)
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
    print_rank0(f"VAE {args.preset}: {n_params / 1e6:.2f}M parameters, {len(task.dataset)} items "
          f"({len(datasets[0])} rows x lengths {args.num_frames}), batch {args.batch_size}")
    result = fit(Trainer(task, TrainerConfig(**options, record=run_config)))
    print_rank0(f"step {result['step']}: checkpoint {result['checkpoint']}, VAE folder {args.out}/vae, "
                 f"skipped steps {result['skipped_total']}, bad items on rank 0 {task.bad_items}")
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
