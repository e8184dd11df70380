"""World-bench discrimination: ground-truth renders must score ~1, each corruption must lose its attribute.

Two scene sets (bench.corrupt): "world", crisp renders of sample_scene, and "small", one or two small fast
objects that mostly leave the frame, blurred, faded and desaturated the way a generator draws them (its
first scene is the small yellow triangle rising out of the top on black). Prints a table per set (ground
truth per attribute; per corruption the broken attribute's mean over the judged objects and the
video-level means of the others) and writes benchmarks/results/world_bench.json.

    .venv/bin/python benchmarks/world_bench_discrimination.py --scenes 201 --corrupt-scenes 60
"""

from __future__ import annotations

import argparse
import os
import time

from chronotope.atomic import atomic_write_json
from chronotope.bench.corrupt import CORRUPTIONS, corruption_scores, ground_truth_scores
from chronotope.bench.score import ATTRIBUTES


def _fmt(x: float | None) -> str:
    return f"{x:.3f}" if x is not None else "  –  "


def run_set(scene_set: str, scenes: int, corrupt_scenes: int, durations: tuple[int, ...]) -> dict:
    """Ground truth and every corruption on one scene set; prints its table and returns its results."""
    t0 = time.perf_counter()
    gt = ground_truth_scores(scenes, durations=durations, scene_set=scene_set)
    seconds = time.perf_counter() - t0
    rows = {}
    for name in CORRUPTIONS:
        d = durations if name in ("color_swap", "shape_swap") else tuple(t for t in durations if t > 1)
        rows[name] = corruption_scores(name, corrupt_scenes, durations=d, scene_set=scene_set)

    cols = ("overall",) + ATTRIBUTES
    print(f"\n{scene_set} scenes: {scenes}, 64px area, 1:1 / 16:9 / 9:16, {' / '.join(map(str, durations))} frames "
          f"at 8 fps (render + score {seconds / scenes * 1e3:.0f} ms per video); min overall {gt['overall_min']:.3f}")
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
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "world_bench.json"))
    args = parser.parse_args()

    world = run_set("world", args.scenes, args.corrupt_scenes, (1, 17, 33))
    small = run_set("small", args.small_scenes, args.small_corrupt_scenes, (17, 33))
    atomic_write_json(args.out, {**world, "scenes": args.scenes, "corrupt_scenes": args.corrupt_scenes,
                                 "small_objects": {**small, "scenes": args.small_scenes,
                                                   "corrupt_scenes": args.small_corrupt_scenes}})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
