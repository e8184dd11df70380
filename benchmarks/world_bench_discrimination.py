"""World-bench discrimination: ground-truth renders must score ~1, each corruption must lose its attribute.

Two scene sets (bench.corrupt): "world", crisp renders of sample_scene, and "small", one or two small fast
objects that mostly leave the frame, blurred, faded and desaturated the way a generator draws them (its
first scene is the small yellow triangle rising out of the top on black). Prints a table per set (ground
truth per attribute; per corruption the broken attribute's mean over the judged objects and the
video-level means of the others) and writes benchmarks/results/world_bench.json. A third set, "camera"
(issue 39), films sample_scene with every camera class in turn over a textured background; its extra
corruptions reverse the camera (the clip played backwards) or freeze the background under moving objects.
`--sets camera` runs that set alone and updates its entry of the JSON, leaving the others as they were.

    .venv/bin/python benchmarks/world_bench_discrimination.py --scenes 201 --corrupt-scenes 60
    .venv/bin/python benchmarks/world_bench_discrimination.py --sets camera --camera-scenes 130
"""

from __future__ import annotations

import argparse
import json
import os
import time

from chronotope.atomic import atomic_write_json
from chronotope.bench.corrupt import CAMERA_CORRUPTIONS, CORRUPTIONS, corruption_scores, ground_truth_scores
from chronotope.bench.score import ATTRIBUTES


def _fmt(x: float | None) -> str:
    return f"{x:.3f}" if x is not None else "  –  "


def run_set(scene_set: str, scenes: int, corrupt_scenes: int, durations: tuple[int, ...]) -> dict:
    """Ground truth and every corruption on one scene set; prints its table and returns its results."""
    t0 = time.perf_counter()
    gt = ground_truth_scores(scenes, durations=durations, scene_set=scene_set)
    seconds = time.perf_counter() - t0
    rows = {}
    names = list(CORRUPTIONS) + (list(CAMERA_CORRUPTIONS) if scene_set == "camera" else [])
    for name in names:
        d = durations if name in ("color_swap", "shape_swap") else tuple(t for t in durations if t > 1)
        rows[name] = corruption_scores(name, corrupt_scenes, durations=d, scene_set=scene_set)

    cols = ("overall",) + ATTRIBUTES + (("camera",) if scene_set == "camera" else ())
    print(f"\n{scene_set} scenes: {scenes}, 64px area, 1:1 / 16:9 / 9:16, {' / '.join(map(str, durations))} frames "
          f"at 8 fps (render + score {seconds / scenes * 1e3:.0f} ms per video); min overall {gt['overall_min']:.3f}"
          + (f"; camera speed right on {_fmt(gt.get('camera_speed'))} of moving cameras"
             if scene_set == "camera" else ""))
    print(f"{'video set':<12} {'broken attr':<12} {'broken':>7} | " + " ".join(f"{c[:7]:>7}" for c in cols))
    print(f"{'ground truth':<12} {'':<12} {'':>7} | " + " ".join(f"{_fmt(gt[c]):>7}" for c in cols))
    for name, r in rows.items():
        print(f"{name:<12} {r['attribute']:<12} {_fmt(r['broken']):>7} | "
              + " ".join(f"{_fmt(r['attributes'][c]):>7}" for c in cols))
    return {"ground_truth": gt, "corruptions": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=201, help="ground-truth scenes (1:1/16:9/9:16 x 1/17/33 frames)")
    parser.add_argument("--corrupt-scenes", type=int, default=60, help="scenes per corruption")
    parser.add_argument("--small-scenes", type=int, default=60, help="small-object scenes (17/33 frames)")
    parser.add_argument("--small-corrupt-scenes", type=int, default=45, help="small-object scenes per corruption")
    parser.add_argument("--camera-scenes", type=int, default=130, help="camera scenes (each of 13 classes in turn)")
    parser.add_argument("--camera-corrupt-scenes", type=int, default=52, help="camera scenes per corruption")
    parser.add_argument("--sets", default="world,small,camera", help="scene sets to run (default all three)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "world_bench.json"))
    args = parser.parse_args()
    sets = args.sets.split(",")

    out: dict = {}
    if os.path.exists(args.out):  # sets not run keep their recorded results
        with open(args.out, encoding="utf-8") as f:
            out = json.load(f)
    if "world" in sets:
        world = run_set("world", args.scenes, args.corrupt_scenes, (1, 17, 33))
        out.update({**world, "scenes": args.scenes, "corrupt_scenes": args.corrupt_scenes})
    if "small" in sets:
        small = run_set("small", args.small_scenes, args.small_corrupt_scenes, (17, 33))
        out["small_objects"] = {**small, "scenes": args.small_scenes, "corrupt_scenes": args.small_corrupt_scenes}
    if "camera" in sets:
        camera = run_set("camera", args.camera_scenes, args.camera_corrupt_scenes, (17, 33))
        out["camera"] = {**camera, "scenes": args.camera_scenes, "corrupt_scenes": args.camera_corrupt_scenes}
    atomic_write_json(args.out, out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
