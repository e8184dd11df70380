"""`chronotope generate` and `expand`: every generation mode, and prompt expansion."""

from __future__ import annotations

import argparse
import sys

from chronotope.cli.options import echo, float_list, lora_scales, name_value
from chronotope.request import MODES

# --- generate ----------------------------------------------------------------------------------


def add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help=f"generate a video in any mode: {', '.join(MODES)}",
        description="Generate a video from a prompt (plus an image or videos, depending on --mode) and write it "
        "(mp4; png for one frame; gif with --gif) with a sidecar OUT.json holding every parameter, the expanded "
        "prompt, the seed and the model. With --prompts FILE, one output per row into the --out folder.",
    )
    p.add_argument("prompt", nargs="?", default=None, help='the prompt, e.g. "a red circle moves left"')
    p.add_argument("--prompts", metavar="FILE", default=None,
                   help="CSV (prompt or text column; columns such as seed, num_frames, mode, image override per row) "
                   "or JSONL ({\"prompt\": ..., overrides}); outputs go to the --out folder")
    p.add_argument("--storyboard", metavar="FILE", default=None,
                   help="several shots in one video: a JSON list of shots such as [{\"prompt\": \"a red circle moves "
                   "left\", \"num_frames\": 17}, ...] (or {\"shots\": [...], \"carry\": \"characters\", \"context\": "
                   "\"auto\"}); writes OUT.mp4 with cuts where the shots meet and OUT.json with each shot's settings; with "
                   "--mode stream, the stream's timeline: one shot, its prompt changing where the shots meet")
    p.add_argument("--mode", choices=MODES, default=None,
                   help="; ".join(f"{name}: {mode.description}" for name, mode in MODES.items()) + ". Default: from "
                   "the inputs (image: i2v, video: extend, + --video-end: connect, + --strength: edit; else t2v, or "
                   "t2i for one frame)")
    p.add_argument("--image", metavar="PATH", default=None, help="image for i2v (and the first window of long)")
    p.add_argument("--video", metavar="PATH", default=None, help="video to extend, connect from, or edit")
    p.add_argument("--video-end", metavar="PATH", default=None, help="video to connect to (mode connect)")
    p.add_argument("--direction", choices=("forward", "backward"), default="forward", help="extend direction")
    p.add_argument("--image-position", choices=("first", "last"), default="first", help="i2v: image first or last")
    p.add_argument("--strength", type=float, default=None, help="edit: 0 keeps the video, 1 ignores it (default 0.7)")
    p.add_argument("--height", type=int, default=None,
                   help="frame height (with --width): a multiple of 8 (the VAE) x the DiT's spatial patch, so 8 for "
                   "the shipped model and 16 for the patch-2 presets; the error names the nearest valid size")
    p.add_argument("--width", type=int, default=None, help="frame width (with --height), the same multiple")
    p.add_argument("--resolution", default=None,
                   help="area preset such as 64px, 256px, 480p (default: the model's size, 64px); with --aspect-ratio")
    p.add_argument("--aspect-ratio", default=None, help="W:H such as 16:9, 1:1, 9:16 (default 1:1)")
    p.add_argument("--num-frames", type=int, default=None,
                   help="frames, 4k+1 (loop: the loop length, a multiple of 4; long: the total; extend/connect: "
                   "the window, given frames included; default: extend adds 12 frames either way)")
    p.add_argument("--gap-frames", type=int, default=None,
                   help="connect: frames generated between the two videos, 4m-1 (default 11), instead of --num-frames")
    p.add_argument("--duration", type=float, default=None, help="seconds; duration x fps must be 4k+1 frames")
    p.add_argument("--fps", type=float, default=None, help="frames per second (default: the input's, else the model's)")
    p.add_argument("--window-frames", type=int, default=None, help="long: frames per window (default: the model's)")
    p.add_argument("--cond-latent-frames", type=int, default=None,
                   help="latent frames taken from a given video (1 = its last frame, 2 = its last 5, ...)")
    p.add_argument("--steps", type=int, default=None,
                   help="sampling steps (default: the model's, else 30; a few-step model takes 1, 2, 4 or 8)")
    p.add_argument("--guidance", type=float, default=None,
                   help="classifier-free guidance scale, 1 = off (default: the model's, else 5; folded into a "
                   "few-step model, which takes no other)")
    p.add_argument("--image-guidance", type=float, default=None, help="separate guidance for given frames")
    p.add_argument("--sampler", default=None,
                   help="euler, heun, midpoint, dpm++2m, or shortcut for a few-step model (default: the one the "
                   "model folder declares, else euler)")
    p.add_argument("--seed", type=int, default=None, help="seed (default: random, recorded in the sidecar)")
    p.add_argument("--model", metavar="DIR", default=None, help="model folder (default: the shipped model)")
    p.add_argument("--lora", metavar="DIR", action="append", default=[],
                   help="a LoRA adapter (a `train lora` run folder or its lora/) merged into the model; repeat to "
                   "combine several")
    p.add_argument("--lora-scale", type=float_list, default=None, metavar="S[,S2]",
                   help="strength of each --lora: one for all or one per adapter, 0 = off (default 1)")
    p.add_argument("--out", default=None,
                   help="output file: .mp4, .gif or .png (default generated.mp4, .png for one frame), or folder with --prompts")
    p.add_argument("--gif", action="store_true", help="write a gif instead of an mp4")
    p.add_argument("--no-expand", action="store_true", help="encode the prompt as written (no prompt expansion)")
    p.add_argument("--negative-prompt", default=None, help="what to steer away from (default: the empty caption)")
    p.add_argument("--camera", default=None, metavar="MOTION[:SPEED]",
                   help="the camera (a model trained with camera conditioning): static, pan-left, pan-right, pan-up, "
                        "pan-down, zoom-in, zoom-out, each :slow or :fast (same as --condition camera=...)")
    p.add_argument("--condition", metavar="NAME=VALUE", type=name_value, action="append", default=[],
                   help="a per-frame condition the model was trained with (chronotope/dit/conditioning.py); repeatable")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice, every core; on a busy machine 1 is often faster: "
                   "a note says when the load is high)")
    p.set_defaults(handler=run_generate)


def run_generate(args: argparse.Namespace) -> int:
    import os

    from chronotope.pipeline.files import check_files, generate_to_file, read_prompts
    from chronotope.pipeline import VideoPipeline, default_model_dir
    from chronotope.request import set_threads, user_errors

    set_threads(args.threads)  # --threads, or a note when a busy CPU makes torch's default slow
    if (args.prompt is not None) + (args.prompts is not None) + (args.storyboard is not None) != 1:
        raise ValueError('give a prompt, or --prompts FILE for a batch, or --storyboard FILE for several shots (one of them)')
    args.lora = lora_scales(args.lora, args.lora_scale)  # [(folder, scale)], checked before the model loads
    if args.storyboard is not None and args.mode != "stream":  # with --mode stream: the stream's timeline
        return _run_storyboard(args)
    base = dict(mode=args.mode, image=args.image, video=args.video, video_end=args.video_end, direction=args.direction,
                image_position=args.image_position, strength=args.strength, height=args.height, width=args.width,
                resolution=args.resolution, aspect_ratio=args.aspect_ratio, num_frames=args.num_frames,
                duration=args.duration, fps=args.fps, window_frames=args.window_frames, gap_frames=args.gap_frames,
                cond_latent_frames=args.cond_latent_frames, num_inference_steps=args.steps,
                guidance_scale=args.guidance, image_guidance_scale=args.image_guidance, sampler=args.sampler,
                seed=args.seed, expand_prompt=not args.no_expand, negative_prompt=args.negative_prompt,
                progress=not args.no_progress,
                conditions={**dict(args.condition), **({"camera": args.camera} if args.camera else {})} or None)
    _check_request(base)  # before the model loads: what needs no model fails in a moment
    if args.storyboard is not None:  # a stream whose prompt follows the storyboard's shots, without cuts
        from chronotope.pipeline.files import read_storyboard

        base["storyboard"] = read_storyboard(args.storyboard)
    if args.prompt is not None or args.storyboard is not None:
        check_files(args.out or "generated", args.gif, **base)
        model = args.model or str(default_model_dir())
        pipe = _with_loras(VideoPipeline.from_pretrained(model), args)
        path, side = generate_to_file(pipe, args.out or "generated", model, args.gif, prompt=args.prompt, **base)
        print(f"prompt: {echo(_expanded(side))}")
        print(f"wrote {path} and {side}")
        return 0
    rows, folder = read_prompts(args.prompts), args.out or "generated"
    model = args.model or str(default_model_dir())
    pipe = _with_loras(VideoPipeline.from_pretrained(model), args)
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
        except user_errors() as err:  # a bad row (a missing image, 0 frames) is reported; the others run
            failed += 1
            print(f"chronotope generate: row {i}: error: {' '.join(str(err).split())}", file=sys.stderr)
    print(f"{len(rows) - failed} of {len(rows)} prompts in {folder}")
    return 1 if failed else 0



def _run_storyboard(args: argparse.Namespace) -> int:
    """generate --storyboard FILE: the file is checked before the model loads; one video and its sidecar."""
    from chronotope.pipeline import VideoPipeline, default_model_dir
    from chronotope.pipeline.files import check_storyboard_files, read_storyboard, storyboard_to_file

    board = read_storyboard(args.storyboard)
    check_storyboard_files(args.out or "film", args.gif, {"--storyboard": args.storyboard})
    _check_request(dict(height=args.height, width=args.width, fps=args.fps, num_inference_steps=args.steps,
                        guidance_scale=args.guidance, seed=args.seed, direction=args.direction,
                        image_position=args.image_position))
    per_video = {"--mode": args.mode, "--image": args.image, "--video": args.video, "--video-end": args.video_end,
                 "--strength": args.strength, "--num-frames": args.num_frames, "--duration": args.duration,
                 "--window-frames": args.window_frames, "--gap-frames": args.gap_frames,
                 "--cond-latent-frames": args.cond_latent_frames, "--image-guidance": args.image_guidance}
    given = [flag for flag, v in per_video.items() if v is not None]
    if given:
        raise ValueError(f"--storyboard sets each shot's prompt and length itself; drop {', '.join(given)}")
    model = args.model or str(default_model_dir())
    pipe = _with_loras(VideoPipeline.from_pretrained(model), args)
    path, side = storyboard_to_file(
        pipe, args.out or "film", model, board, args.gif, negative_prompt=args.negative_prompt, height=args.height,
        width=args.width, resolution=args.resolution, aspect_ratio=args.aspect_ratio, fps=args.fps,
        num_inference_steps=args.steps, guidance_scale=args.guidance, sampler=args.sampler, seed=args.seed,
        expand_prompt=not args.no_expand, progress=not args.no_progress)
    print(f"{len(board['shots'])} shots; wrote {path} and {side}")
    return 0


def _check_request(request: dict) -> None:
    """The checks of a request that need no model (its numbers, its mode against its inputs, its choices), as
    the pipeline makes them once the model is loaded; sizes and costs, which need the model, come then."""
    from chronotope.pipeline.resolve import check_choices, infer_mode
    from chronotope.request import check_request

    given = {k: request.get(k) is not None for k in ("image", "video", "video_end", "strength")}
    mode = infer_mode(request.get("mode"), request.get("num_frames"), given) if "mode" in request else None
    numbers = {k: v for k, v in request.items() if k not in ("mode", "sampler", "direction", "image_position",
                                                             "conditions")}
    check_request(mode=mode, **numbers)
    check_choices(**{k: request[k] for k in ("sampler", "direction", "image_position") if request.get(k) is not None})


def _with_loras(pipe, args: argparse.Namespace):
    """Each --lora adapter merged into the pipeline's DiT at its --lora-scale."""
    for path, scale in args.lora:
        pipe.load_lora(path, scale)
    return pipe


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

    from chronotope.request import check_number
    from chronotope.text.expand import ChatExpander, expand

    check_number("seed", args.seed)
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


def _expanded(sidecar: str) -> str:
    """The prompt the model saw (expanded when expansion was on), as recorded in the sidecar."""
    import json

    with open(sidecar, encoding="utf-8") as f:
        return json.load(f).get("expanded_prompt") or ""
