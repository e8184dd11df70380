"""The Trainer's options, shared by every `chronotope train MODEL` verb: declared (`add_trainer_args`), checked
before a run reads or writes anything (`check_trainer_args`), turned into TrainerConfig fields (`trainer_options`)."""

from __future__ import annotations

import argparse
import os


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


def trainer_options(args: argparse.Namespace) -> dict:
    """TrainerConfig fields from the options of add_trainer_args (and torch's CPU threads set from --threads)."""
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


def fit(trainer) -> dict:
    """trainer.fit(), then leave torchrun's process group (a no-op for one process)."""
    from chronotope.train.parallel import destroy_distributed

    try:
        result = trainer.fit()
    except BaseException:
        destroy_distributed(barrier=False)  # the other ranks may never reach a barrier
        raise
    destroy_distributed()
    return result


def print_rank0(msg: str) -> None:
    from chronotope.train.trainer import is_main_process

    if is_main_process():
        print(msg)
