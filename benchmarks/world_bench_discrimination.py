"""World-bench discrimination: ground-truth renders must score ~1, each corruption must lose its attribute.

Prints a table (ground truth per attribute; per corruption the broken attribute's mean over the judged
objects and the video-level means of the others) and writes benchmarks/results/world_bench.json.

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=201, help="ground-truth scenes (1:1/16:9/9:16 x 1/17/33 frames)")
    parser.add_argument("--corrupt-scenes", type=int, default=60, help="scenes per corruption")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "world_bench.json"))
    args = parser.parse_args()

    t0 = time.perf_counter()
    gt = ground_truth_scores(args.scenes, durations=(1, 17, 33))
    seconds = time.perf_counter() - t0
    rows = {}
    for name in CORRUPTIONS:
        durations = (1, 17, 33) if name in ("color_swap", "shape_swap") else (17, 33)
        rows[name] = corruption_scores(name, args.corrupt_scenes, durations=durations)

    cols = ("overall",) + ATTRIBUTES
    print(f"ground truth: {args.scenes} scenes, 64px area, 1:1 / 16:9 / 9:16, 1 / 17 / 33 frames at 8 fps "
          f"(render + score {seconds / args.scenes * 1e3:.0f} ms per video); min overall {gt['overall_min']:.3f}")
    print(f"{'video set':<12} {'broken attr':<12} {'broken':>7} | " + " ".join(f"{c[:7]:>7}" for c in cols))
    print(f"{'ground truth':<12} {'':<12} {'':>7} | " + " ".join(f"{_fmt(gt[c]):>7}" for c in cols))
    for name, r in rows.items():
        print(f"{name:<12} {r['attribute']:<12} {_fmt(r['broken']):>7} | "
              + " ".join(f"{_fmt(r['attributes'][c]):>7}" for c in cols))
    atomic_write_json(args.out, {"ground_truth": gt, "corruptions": rows, "scenes": args.scenes,
                                 "corrupt_scenes": args.corrupt_scenes})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
