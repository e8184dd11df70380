"""World-bench's motion score on prompts where the words alone decide the motion: one object moving left,
right, up or down.

Fresh one-mover World scenes (seeds far from training data; objects start on the side they come from, as
World-bench's own prompts do) give detailed captions; each model generates them text-to-video (64x64,
17 frames, 20 Euler steps, guidance 5, one seed) and World-bench scores every video against its scene.
Printed per model: the mean motion score (1 = the object moves the caption's way), the share of videos
whose object moves the caption's way, and the mean overall score. With `--swap`, the same again for
captions whose direction word is swapped, scored against the swapped scene: a model that follows the
words scores alike on both; one that follows only habit (where an object starts) fails the swapped ones.

    .venv/bin/python benchmarks/motion_words.py --model chronotope/assets/world-model [--model DIR2] [--num 48] [--swap]
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the other probes

from dit_probe import FLIP  # noqa: E402


def one_mover_prompts(num: int, seed: int, swap: bool) -> list[tuple[str, dict]]:
    """`num` (caption, spec) pairs of fresh one-object scenes moving left/right/up/down; with `swap` the
    direction is flipped in both (the caption redrawn from the flipped scene with the same wording seed)."""
    from chronotope.world.captions import detailed_caption
    from chronotope.world.scene import sample_scene

    out = []
    for s in range(seed, seed + num):
        scene = sample_scene(s, objects=1, motions=["left", "right", "up", "down"])
        if swap:
            scene = replace(scene, objects=[replace(o, motion=FLIP[o.motion]) for o in scene.objects])
        out.append((detailed_caption(scene, np.random.default_rng([s, 2])), scene.spec))
    return out


def evaluate(model: str, prompts: list[tuple[str, dict]], steps: int, guidance: float, batch: int) -> dict:
    from chronotope.bench.score import score_video
    from chronotope.pipeline import VideoPipeline

    pipe = VideoPipeline.from_pretrained(model)
    motion, overall = [], []
    for i in range(0, len(prompts), batch):
        chunk = prompts[i:i + batch]
        out = pipe([c for c, _ in chunk], height=64, width=64, num_frames=17, num_inference_steps=steps,
                   guidance_scale=guidance, seed=i, expand_prompt=False, progress=False)
        for frames, (_, spec) in zip(out.frames, chunk):
            scores = score_video(frames, spec)
            motion.append(scores["motion"] if scores["motion"] is not None else 0.0)  # no object: no motion
            overall.append(scores["overall"])
    m = np.asarray(motion)
    return {"motion": float(m.mean()), "right_way": float((m >= 0.5).mean()), "overall": float(np.mean(overall)),
            "videos": len(m)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", default=None,
                        help="model folder (repeat to compare; default: the shipped one)")
    parser.add_argument("--num", type=int, default=48, help="prompts (default 48)")
    parser.add_argument("--seed", type=int, default=30_000_000, help="first scene seed (default 30,000,000)")
    parser.add_argument("--steps", type=int, default=20, help="sampling steps (default 20)")
    parser.add_argument("--guidance", type=float, default=5.0, help="CFG scale (default 5)")
    parser.add_argument("--batch", type=int, default=16, help="videos per sampler call (default 16)")
    parser.add_argument("--swap", action="store_true", help="also score captions with the direction swapped")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.num < 1:
        parser.error("--num must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    from chronotope.pipeline import default_model_dir

    models = args.model or [str(default_model_dir())]
    sets = {"true": one_mover_prompts(args.num, args.seed, False)}
    if args.swap:
        sets["swapped"] = one_mover_prompts(args.num, args.seed, True)
    print(f"{args.num} one-mover prompts, 64x64, 17 frames, {args.steps} steps, guidance {args.guidance:g}")
    print(f"{'model':<48} {'captions':<9} {'motion':>7} {'right way':>10} {'overall':>8}")
    for model in models:
        for name, prompts in sets.items():
            r = evaluate(model, prompts, args.steps, args.guidance, args.batch)
            print(f"{model:<48} {name:<9} {r['motion']:>7.3f} {r['right_way']:>10.3f} {r['overall']:>8.3f}", flush=True)


if __name__ == "__main__":
    main()
