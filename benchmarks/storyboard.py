"""Storyboards on the CPU (issue 28): peak memory of a 6-shot ~200-frame storyboard against one 33-frame shot, and
the storyboard World-bench (bench/storyboard.py) of a model on World storyboards' per-shot captions.

    python benchmarks/storyboard.py                        # shipped model: memory, then 20 storyboards
    python benchmarks/storyboard.py --num 4 --steps 4      # quicker

Memory is each case's peak resident set (ru_maxrss) in its own fresh process, after the same warm-up (model and
text encoder loaded, one prompt encoded), so the two numbers differ only by what generation holds. Writes
benchmarks/results/storyboard.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
STORY_LENGTHS = [33, 33, 33, 33, 33, 37]  # six shots of 4k+1 frames: 202 frames, cuts every 33
SINGLE = 33


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def memory_case(case: str, model: str, steps: int, out: str) -> dict:
    """One case in this process: 'single' (one 33-frame t2v shot) or 'story' (the 6-shot storyboard)."""
    import torch

    from chronotope.pipeline import VideoPipeline

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    pipe = VideoPipeline.from_pretrained(model)
    pipe.encode_prompts(["warm up"], [""])
    base = _peak_mb()
    t0 = time.time()
    kw = dict(num_inference_steps=steps, seed=0, progress=False)
    if case == "single":
        pipe("a large red circle moves left on a white background", num_frames=SINGLE, output_path=out, **kw)
        frames = SINGLE
    else:
        prompts = ["a large red circle moves left on a white background", "the red circle on a black background",
                   "a red circle and a small blue square", "a blue square falls and bounces on a gray background",
                   "a red circle bounces around", "a large red circle stays still on a white background"]
        board = [{"prompt": p, "num_frames": n} for p, n in zip(prompts, STORY_LENGTHS)]
        pipe(storyboard=board, output_path=out, **kw)
        frames = sum(STORY_LENGTHS)
    return {"case": case, "frames": frames, "peak_mb": _peak_mb(), "after_load_mb": base,
            "seconds": time.time() - t0, "steps": steps}


def measure_memory(model: str, steps: int, tmp: str) -> dict:
    """Both cases, each in a fresh process (ru_maxrss never goes down within one)."""
    cases = {}
    for case in ("single", "story"):
        cmd = [sys.executable, __file__, "--memory-case", case, "--model", model, "--steps", str(steps),
               "--video", os.path.join(tmp, f"{case}.mp4")]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        cases[case] = json.loads(res.stdout.strip().splitlines()[-1])
    s, b = cases["single"], cases["story"]
    return {"single": s, "story": b, "peak_ratio": b["peak_mb"] / s["peak_mb"],
            "generation_ratio": (b["peak_mb"] - b["after_load_mb"]) / max(s["peak_mb"] - s["after_load_mb"], 1e-9)}


def bench(model: str, num: int, steps: int, tmp: str) -> dict:
    """`num` World storyboards (2-3 shots of 17 frames): each shot's World caption as its prompt, generated with
    pipe(storyboard=...), scored in memory; the ground-truth renders of the same storyboards scored beside."""
    import torch

    from chronotope.bench.score import score_video
    from chronotope.bench.storyboard import METRICS, score_storyboard
    from chronotope.pipeline import VideoPipeline
    from chronotope.world.storyboard import render_storyboard, sample_storyboard

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    pipe = VideoPipeline.from_pretrained(model)
    gen, truth, per_shot, per_t2v, rows = {m: [] for m in METRICS}, {m: [] for m in METRICS}, [], [], []
    t0 = time.time()
    for i in range(num):
        n_shots = 2 + i % 2
        scenes = sample_storyboard(1000 + i, n_shots)
        lengths = [17] * n_shots
        gt = render_storyboard(scenes, 64, 64, lengths, 8.0, caption_seed=i)
        shots = [{"spec": s["spec"], "num_frames": s["num_frames"]} for s in gt.shots]
        out = pipe(storyboard=[{"prompt": s["text"], "num_frames": s["num_frames"]} for s in gt.shots],
                   num_inference_steps=steps, seed=i, progress=False)
        g, t = score_storyboard(out.frames[0], shots), score_storyboard(gt.frames, shots)
        for m in METRICS:
            for acc, s in ((gen, g), (truth, t)):
                if s[m] is not None:
                    acc[m].append(s[m])
        per_shot += [p["overall"] for p in g["shots"]]
        per_t2v += [score_video(out.frames[0][s["start"]:s["start"] + s["num_frames"]], s["spec"])["overall"]
                    for s in gt.shots]  # each shot's whole frames, as t2v of its prompt would be scored
        if i == 0:  # independent shots are t2v of their prompts at seed + shot index: check it once
            one = pipe(gt.shots[1]["text"], num_frames=17, num_inference_steps=steps, seed=i + 1, progress=False)
            same_as_t2v = bool(np.array_equal(one.frames[0], out.frames[0][17:34]))
        rows.append({m: g[m] for m in (*METRICS, "overall")} | {"cut_frames": g["cut_frames"]})
        print(f"[{i + 1}/{num}] " + " ".join(f"{m} {g[m]:.2f}" for m in METRICS if g[m] is not None), flush=True)
    mean = lambda d: {m: (float(np.mean(v)) if v else None) for m, v in d.items()}  # noqa: E731
    return {"storyboards": num, "steps": steps, "conditioning": out.params["conditioning"], "model": mean(gen),
            "ground_truth": mean(truth), "per_shot_overall": float(np.mean(per_shot)), "per_shot_as_t2v": float(np.mean(per_t2v)),
            "shot_equals_t2v": same_as_t2v, "seconds": time.time() - t0,
            "videos": rows}


def main() -> None:
    from chronotope.pipeline import default_model_dir

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="model folder (default: the shipped model)")
    p.add_argument("--num", type=int, default=20, help="storyboards for the World-bench part (default 20)")
    p.add_argument("--steps", type=int, default=10, help="sampling steps for the bench part (default 10)")
    p.add_argument("--memory-steps", type=int, default=2, help="sampling steps for the memory part (default 2)")
    p.add_argument("--skip-bench", action="store_true", help="measure memory only")
    p.add_argument("--memory-case", choices=("single", "story"), help=argparse.SUPPRESS)
    p.add_argument("--video", help=argparse.SUPPRESS)
    args = p.parse_args()
    model = args.model or str(default_model_dir())
    if args.memory_case:
        print(json.dumps(memory_case(args.memory_case, model, args.steps, args.video)))
        return
    import tempfile

    from chronotope.atomic import atomic_write_json

    with tempfile.TemporaryDirectory() as tmp:
        result = {"model": model, "memory": measure_memory(model, args.memory_steps, tmp)}
        mem = result["memory"]
        print(f"peak RSS: one {SINGLE}-frame shot {mem['single']['peak_mb']:.0f} MB, 6-shot {sum(STORY_LENGTHS)}-frame "
              f"storyboard {mem['story']['peak_mb']:.0f} MB: ratio {mem['peak_ratio']:.3f} (above the loaded model: "
              f"{mem['generation_ratio']:.3f})")
        if not args.skip_bench:
            result["bench"] = bench(model, args.num, args.steps, tmp)
            b = result["bench"]
            print("| storyboards | " + " | ".join(b["model"]) + " |\n|---|" + "---:|" * len(b["model"]))
            for name in ("model", "ground_truth"):
                print(f"| {name} | " + " | ".join("–" if v is None else f"{v:.3f}" for v in b[name].values()) + " |")
            print(f"per-shot overall {b['per_shot_overall']:.3f} (a frame either side of each cut left out); the same "
                  f"shots scored whole, as t2v: {b['per_shot_as_t2v']:.3f}; a shot equals t2v of its prompt: "
                  f"{b['shot_equals_t2v']}; {b['conditioning']}")
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    atomic_write_json(os.path.join(HERE, "results", "storyboard.json"), result, indent=1)
    print(f"wrote {os.path.join(HERE, 'results', 'storyboard.json')}")


if __name__ == "__main__":
    main()
