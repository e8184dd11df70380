"""Where a generated loop's wrap-around step comes from, and what World-bench's loop target asks of a World scene.

Loop mode (chronotope/pipeline/modes.py, `plan_loop`) makes a clip, then the same window again with its head given
and its tail replaying the clip's frames 1..4k: decoded, the frame just before the tail ("the stand-in")
should be frame 0 again, so the kept frames [0, L) play in a cycle. For World-bench's loop prompts (the
bench's own prompt list, loop length T - 1) this prints, in mean |difference| of uint8 levels:

    wrap            |last kept frame - frame 0|, the step World-bench's closure ratio divides by
    step            the mean frame-to-frame step inside the loop
    last->stand-in  how the generated frames run into the stand-in (a normal step if ~ step)
    stand-in->f0    how far the stand-in is from frame 0 (0 for a perfect loop)
    tail->f1        the decoded tail's first frame against frame 1 (the tail replays it)

and the mean closure ratio (wrap / step). Last, the same ratio for the bench's ground-truth scenes rendered
as plain clips of the loop's length (what a video that does what the prompt says scores when it is not
looped), over `--gt-num` prompts: a yardstick for the <= 1.5 target.

    .venv/bin/python benchmarks/loop_seam.py [--model DIR] [--num 12] [--image-guidance S] [--cond-latent-frames K]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


PARTS = ("wrap", "step", "last->stand-in", "stand-in->f0", "tail->f1")  # the columns, as the docstring says


def mean_abs(a: np.ndarray, b: np.ndarray) -> float:
    """Mean |a - b| of two uint8 frames (or stacks), in levels."""
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean())


def seam_parts(frames: np.ndarray, window: np.ndarray) -> dict[str, float]:
    """A loop's output frames [L, H, W, 3] and its whole decoded window [T_w, H, W, 3] (T_w > L + 1) -> the
    wrap, the mean step and where the wrap comes from (module docstring)."""
    L = len(frames)
    steps = np.abs(np.diff(frames.astype(np.float32), axis=0)).mean(axis=(1, 2, 3))  # [L - 1]
    return dict(zip(PARTS, (mean_abs(frames[-1], frames[0]), float(steps.mean()), mean_abs(frames[-1], window[L]),
                            mean_abs(window[L], frames[0]), mean_abs(window[L + 1], frames[1]))))


def main() -> None:
    import torch

    from chronotope.bench.generate import BenchConfig, plan_prompts
    from chronotope.pipeline.modes import loop_closure
    from chronotope.pipeline import VideoPipeline, default_model_dir
    from chronotope.world.render import render
    from chronotope.world.scene import sample_scene

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(default_model_dir()), help="pipeline folder (default: the shipped one)")
    parser.add_argument("--num", type=int, default=12, help="loops to generate: World-bench's first N prompts (default 12)")
    parser.add_argument("--gt-num", type=int, default=200, help="prompts for the ground-truth yardstick (default 200)")
    parser.add_argument("--steps", type=int, default=20, help="sampling steps (default 20, as World-bench)")
    parser.add_argument("--image-guidance", type=float, default=None, help="image guidance scale (default: none)")
    parser.add_argument("--cond-latent-frames", type=int, default=1, help="k: latent frames given at each end (default 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.num < 1 or args.gt_num < 1:
        parser.error("--num and --gt-num must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)

    pipe = VideoPipeline.from_pretrained(args.model)
    prompts = plan_prompts(BenchConfig(out="", num=max(args.num, args.gt_num)))
    rows = []
    print(f"{'prompt':>6} {'frames':>6} " + " ".join(f"{k:>14}" for k in PARTS))
    for p in prompts[:args.num]:
        out = pipe(p.caption, mode="loop", num_frames=p.num_frames - 1, height=p.height, width=p.width,
                   num_inference_steps=args.steps, seed=p.scene_seed, expand_prompt=False, progress=False,
                   image_guidance_scale=args.image_guidance, cond_latent_frames=args.cond_latent_frames)
        r = seam_parts(out.frames[0], pipe.decode(out.latents[:1])[0])
        rows.append(r)
        print(f"{p.index:>6} {p.num_frames - 1:>6} " + " ".join(f"{v:>14.2f}" for v in r.values()), flush=True)
    print(f"{'mean':>13} " + " ".join(f"{np.mean([r[k] for r in rows]):>14.2f}" for k in PARTS))
    print(f"generated loops: mean closure ratio {np.mean([r['wrap'] / max(r['step'], 1e-6) for r in rows]):.2f} "
          f"over {len(rows)} (World-bench target <= 1.5)")

    fps = float(pipe.defaults.get("fps", 8.0))  # as World-bench renders its ground truth
    gt = np.array([loop_closure(render(sample_scene(p.scene_seed, include_heldout=p.heldout), p.height, p.width,
                                       p.num_frames - 1, fps).frames)["ratio"] for p in prompts[:args.gt_num]])
    print(f"ground truth, not looped ({len(gt)} prompts): mean closure ratio {gt.mean():.2f}, median "
          f"{np.median(gt):.2f}, share <= 1.5 {np.mean(gt <= 1.5):.3f}")


if __name__ == "__main__":
    main()
