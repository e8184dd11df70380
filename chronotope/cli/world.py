"""`chronotope world`, `manifest` and `demo`: data in, from the World or from a folder of videos."""

from __future__ import annotations

import argparse

from chronotope.cli.options import int_list, str_list

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
    p.add_argument("--aspect-ratios", type=str_list, default=["1:1"], metavar="LIST",
                   help="comma-separated W:H ratios for --resolution, e.g. 1:1,16:9,9:16 (default 1:1)")
    p.add_argument("--num-frames", type=int_list, default=[17], metavar="LIST",
                   help="comma-separated frame counts, e.g. 1,17,33 (default 17)")
    p.add_argument("--fps", type=float, default=8.0, help="frames per second (default 8)")
    p.add_argument("--include-heldout", action="store_true",
                   help="allow the held-out compositions (purple triangle, cyan square, orange circle)")
    p.add_argument("--objects", type=int, default=None, metavar="N",
                   help="exactly N objects per scene (1 to 3; default: 1 to 3 at random); constrained scenes have no pillar")
    p.add_argument("--motions", type=str_list, default=None, metavar="LIST",
                   help="draw each object's motion from these, e.g. left,right,up,down (default: every motion); "
                   "constrained scenes have no pillar")
    p.add_argument("--starts", choices=["behind", "anywhere"], default="behind",
                   help="where left/right/up/down movers start: on the side they come from, crossing the view "
                   "(default), or anywhere in view, so that the first frame does not tell the direction")
    p.add_argument("--shots", type=int_list, default=None, metavar="LIST",
                   help="render storyboards instead: item i has the i-th count of LIST shots (e.g. 2,3), the same "
                   "characters in every shot, a new background, positions and motions per shot and hard cuts; "
                   "each shot's length is drawn from --num-frames; captions, specs and cut frames per shot go to "
                   "the manifest's shots column and NAME.json")
    p.add_argument("--camera-share", type=float, default=0.0, metavar="F",
                   help="film this share of the clips (0 to 1) with a camera over a textured background: static, "
                   "pans left/right/up/down or zooms in/out, slow or fast; captions describe it, NAME.json holds its "
                   "track and each row its class per frame (default 0: no camera, clips as before)")
    p.add_argument("--workers", type=int, default=1, help="render processes (default 1)")
    p.add_argument("--no-tracks", action="store_true", help="skip the per-clip NAME.json track sidecars")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(handler=run_world)


def run_world(args: argparse.Namespace) -> int:
    from chronotope.world.generate import resolve_sizes, write_world

    sizes = resolve_sizes(args.height, args.width, args.resolution, args.aspect_ratios)
    manifest = write_world(args.out, args.num, seed=args.seed, sizes=sizes, num_frames=args.num_frames,
                           fps=args.fps, include_heldout=args.include_heldout, workers=args.workers,
                           tracks=not args.no_tracks, progress=not args.no_progress, objects=args.objects,
                           motions=args.motions, starts=args.starts, shots=args.shots,
                           camera_share=args.camera_share)
    print(f"wrote {args.num} World {'storyboards' if args.shots else 'clips'} and {manifest}")
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
    return 0



# --- demo --------------------------------------------------------------------------------------


DEMO_PROMPT = "a red circle moves right on a white background"
DEMO_CLIPS = 4  # World clips rendered instead when no model is shipped


def add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the README's demo: generate a video with the shipped World model")
    p.add_argument("--out", default="demo", help="output folder (default: demo)")
    p.add_argument("--prompt", default=DEMO_PROMPT, help=f'prompt (default "{DEMO_PROMPT}")')
    p.add_argument("--steps", type=int, default=20, help="sampling steps (default 20)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.set_defaults(handler=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    """Generate a video at the shipped World model's defaults (17 frames, 64x64); without one, render World clips."""
    import os

    from chronotope.pipeline import default_model_dir

    try:
        model = default_model_dir()
    except FileNotFoundError as err:
        print(f"{err}\nrendering World clips instead")
        return _render_world_clips(args)
    from chronotope.pipeline.files import generate_to_file
    from chronotope.pipeline import VideoPipeline

    pipe = VideoPipeline.from_pretrained(str(model))  # the folder is made by the first write, after validation
    path, side = generate_to_file(pipe, os.path.join(args.out, "generated"), str(model), prompt=args.prompt,
                                  num_inference_steps=args.steps, seed=args.seed)
    print(f"prompt: {args.prompt}\nwrote {path} (parameters in {side})")
    return 0


def _render_world_clips(args: argparse.Namespace) -> int:
    import os

    from chronotope.data.manifest import read_manifest
    from chronotope.world.generate import resolve_sizes, write_world

    sizes = resolve_sizes(resolution="64px", aspect_ratios=["1:1", "16:9", "9:16"])
    manifest = write_world(os.path.join(args.out, "world"), DEMO_CLIPS, seed=args.seed, sizes=sizes,
                           num_frames=[17], fps=8.0, progress=False)
    for row in read_manifest(manifest):
        print(f"{row['path']}  ({row['width']}x{row['height']}, {row['num_frames']} frames)\n    {row['text']}")
    print(f"manifest: {manifest}")
    return 0
