"""`chronotope bench score | run | storyboard | generate-and-score | compare`: World-bench from the command line."""

from __future__ import annotations

import argparse
import sys

from chronotope.cli.options import float_list, int_list, lora_scales, str_list

# --- bench -------------------------------------------------------------------------------------


def composition(text: str) -> tuple[str, str]:
    """`purple:triangle` (or `purple triangle`) -> ("purple", "triangle"); the vocabulary is checked by BenchConfig."""
    parts = text.replace(":", " ").split()
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected COLOR:SHAPE such as purple:triangle, got {text!r}")
    return parts[0].lower(), parts[1].lower()


def add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="World-bench: score videos against their prompts")
    bench_sub = p.add_subparsers(dest="bench_verb", required=True, metavar="SUBVERB")
    for add in (add_bench_score, add_bench_run, add_bench_storyboard, add_bench_generate, add_bench_compare):  # more sub-verbs plug in here
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


def add_bench_storyboard(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("storyboard", help="score multi-shot videos: per-shot adherence, identity, cuts, no bleed",
                       description="chronotope bench storyboard data/boards --out bench_boards: every video of the "
                       "folder with a sidecar NAME.json listing its shots (World storyboards from `chronotope world "
                       "--shots`, films from `chronotope generate --storyboard`); writes OUT/storyboard.json")
    p.add_argument("source", help="folder of storyboard videos with sidecar JSONs")
    p.add_argument("--out", required=True, help="output folder for storyboard.json")
    p.set_defaults(bench_handler=run_bench_storyboard)


def run_bench_storyboard(args: argparse.Namespace) -> int:
    from chronotope.bench.storyboard import METRICS, run_storyboard_bench

    result = run_storyboard_bench(args.source, args.out)
    s = result["summary"]
    print(f"{s['storyboards']} storyboards: " + ", ".join(
        f"{m} {s[m]:.3f}" if s[m] is not None else f"{m} -" for m in (*METRICS, "overall")))
    if result["errors"]:
        print(f"{len(result['errors'])} file(s) could not be scored: see errors in {args.out}/storyboard.json")
    print(f"wrote {args.out}/storyboard.json")
    return 0


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
        camera = ("camera", "camera_detail") if scores.get("camera") is not None else ()  # prompts with a camera
        scores = {k: scores[k] for k in ("overall", *ATTRIBUTES, *camera, "notes")}
    print(json.dumps(scores, indent=1))
    return 0


def run_bench_run(args: argparse.Namespace) -> int:
    import os
    import shutil
    import tempfile

    from chronotope.atomic import publish
    from chronotope.bench import report_markdown
    from chronotope.bench import run_bench as bench
    from chronotope.outputs import writable_folder

    # scored into a folder beside --out and published when a video was scored: a source whose every file is
    # unreadable (or has no prompt) is an error that leaves nothing behind, not a report of 0 videos
    tmp = tempfile.mkdtemp(prefix=".bench-run-", dir=writable_folder(args.out))
    try:
        result = bench(args.source, tmp)
        if not result["videos"]:
            first = result["errors"][0]
            raise ValueError(f"none of the {len(result['errors'])} files of {args.source} could be scored (first: "
                             f"{first['error']}); nothing written")
        os.makedirs(args.out, exist_ok=True)
        for name in ("results.json", "report.md"):
            publish(os.path.join(tmp, name), os.path.join(args.out, name))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
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
    p.add_argument("--aspect-ratios", type=str_list, default=["1:1", "16:9", "9:16"], metavar="LIST",
                   help="aspect ratios the model was trained on (default 1:1,16:9,9:16)")
    p.add_argument("--untrained-aspect-ratios", type=str_list, default=["2:1", "1:2"], metavar="LIST",
                   help="aspect ratios it was not trained on, reported apart (default 2:1,1:2; '' for none)")
    p.add_argument("--num-frames", type=int_list, default=[17, 33], metavar="LIST", help="frame counts (default 17,33)")
    p.add_argument("--resolution", default="64px", help="area preset (default 64px)")
    p.add_argument("--modes", type=str_list, default=["t2v", "t2i", "i2v", "extend", "connect", "loop", "long"],
                   metavar="LIST", help="modes to run (default t2v,t2i,i2v,extend,connect,loop,long)")
    p.add_argument("--steps", type=int, default=None,
                   help="sampling steps (default: the model's, model_index.json, else 20)")
    p.add_argument("--guidance", type=float, default=None, help="CFG scale (default: the model's, else 5)")
    p.add_argument("--sampler", default=None, help="sampler (default: the model's, shortcut for a few-step model, "
                   "else euler)")
    p.add_argument("--time-shift", type=float, default=None, metavar="SCALE",
                   help="scale of the sampler's token-count timestep shift (default: the model's, in its model_index.json)")
    p.add_argument("--steps-table", type=int_list, default=None, metavar="LIST",
                   help="t2v steps compared on the first --steps-table-prompts prompts (default 5,10,20,50; 1,2,4,8 "
                   "for a few-step model; '' for none)")
    p.add_argument("--steps-table-prompts", type=int, default=20, metavar="N", help="prompts in the steps table (default 20)")
    p.add_argument("--include-heldout-fraction", type=float, default=0.15, metavar="F",
                   help="share of prompts with a held-out composition (default 0.15)")
    p.add_argument("--composition", type=composition, default=None, metavar="COLOR:SHAPE",
                   help="every prompt shows this object, e.g. purple:triangle (a held-out one, to measure a LoRA "
                        "that teaches it; --include-heldout-fraction is then unused)")
    p.add_argument("--lora", metavar="DIR", action="append", default=[],
                   help="a LoRA adapter (a `train lora` run folder or its lora/) merged into the model; repeatable")
    p.add_argument("--lora-scale", type=float_list, default=None, metavar="S[,S2]",
                   help="strength of each --lora: one for all or one per adapter (default 1)")
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
                      time_shift=args.time_shift, sampler=args.sampler, steps_table=args.steps_table, steps_table_prompts=args.steps_table_prompts,
                      heldout_fraction=args.include_heldout_fraction, composition=args.composition,
                      long_window=args.long_window, progress=not args.no_progress)
    cfg.check()  # before loading the model: flag mistakes fail fast
    loras = lora_scales(args.lora, args.lora_scale)
    model = args.model or str(default_model_dir())
    pipe = VideoPipeline.from_pretrained(model)
    for path, scale in loras:  # merged before the move: the adapter's delta is added on the host once
        pipe.load_lora(path, scale)
    pipe = pipe.to(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    result = run_generate_and_score(pipe, cfg, model)
    for t in result["summary"]["targets"]:
        value = "n/a" if t["value"] is None else f"{t['value']:.3f}"
        print(f"{t['status']:>4}  {t['label']}: {value} (target {t['op']} {t['target']:g})")
    print(f"{result['generated']} generated, {result['skipped']} reused; wrote {args.out}/report.md, results.json, "
          f"grid.gif, per_attribute.png, steps.png and videos/")
    return 0


def add_bench_compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare", help="two generate-and-score runs on their shared prompts: paired change per mode, targets",
        description="chronotope bench compare docs/world-bench/results.json runs/bench-new  (runs made with "
        "the same --seed share their prompts; each video is paired with its twin: same prompt, mode, steps and size)")
    p.add_argument("base", help="results.json (or its folder) of the run to beat, e.g. the published one")
    p.add_argument("new", help="results.json (or its folder) of the candidate")
    p.add_argument("--any-size", action="store_true",
                   help="also pair twins made at another size (same scene and caption), e.g. against a quick run "
                        "with --untrained-aspect-ratios ''")
    p.add_argument("--any-sampling", action="store_true",
                   help="pair runs made at other steps or samplers, each video with its twin at the other run's "
                        "steps (a few-step model against its 20-step teacher)")
    p.add_argument("--json", metavar="FILE", help="also write the comparison as JSON")
    p.set_defaults(bench_handler=run_bench_compare)


def run_bench_compare(args: argparse.Namespace) -> int:
    import os

    from chronotope.atomic import atomic_write_json
    from chronotope.bench.compare import compare_markdown, compare_runs, load_run
    from chronotope.outputs import check_output

    # a ValueError (not a results file, runs of other prompts) is printed by the CLI's main, exit 2
    if args.json:  # a run given as its folder is read from FOLDER/results.json: --json must not replace it
        check_output(f"--json {args.json}", args.json,
                     [("", os.path.join(run, "results.json") if os.path.isdir(run) else run) for run in (args.base, args.new)])
    result = compare_runs(load_run(args.base), load_run(args.new), any_size=args.any_size,
                          any_sampling=args.any_sampling)
    print(compare_markdown(result, args.base, args.new), end="")
    if args.json:
        atomic_write_json(args.json, result)
    return 0
