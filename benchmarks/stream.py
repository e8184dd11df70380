"""Streaming on the CPU: what a rolling schedule costs against the windowed long mode, measured side by side.

    python benchmarks/stream.py                      # the shipped model, 64x64, 8 fps, --threads 1
    python benchmarks/stream.py --frames 97,481      # the lengths compared (peak memory of the longest vs the shortest)

Every case runs in its own process (peak memory is that process's peak RSS, model loaded, minus its RSS before the
first call): `pipe.stream` timing each chunk as it comes (first frame after the start, frames per second over the
first and last 100 frames), and `pipe(mode="long")` on the same prompt, steps and seed for the throughput beside
it. Writes benchmarks/results/stream.json. What it does not measure: whether the streamed video obeys its prompt
(World-bench on long videos) — the shipped model was never trained with per-frame noise levels.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
PROMPT = "a red circle moves left on a white background"

CASE = r"""
import json, resource, sys, time
import torch
torch.set_num_threads(1)
from chronotope.pipeline import VideoPipeline, default_model_dir
mode, frames, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
pipe = VideoPipeline.from_pretrained(default_model_dir())
kw = dict(num_frames=frames, num_inference_steps=steps, seed=0, progress=False, expand_prompt=False)
pipe.text_encoder.encode(["warm up"])
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0, times = time.perf_counter(), []
if mode == "stream":
    for chunk in pipe.stream(sys.argv[4], **kw):
        times += [time.perf_counter() - t0] * len(chunk)
else:
    out = pipe(sys.argv[4], mode="long", **kw)
    times = [time.perf_counter() - t0] * frames
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"times": times, "peak_mb": peak / 1024, "base_mb": base / 1024}))
"""


def run_case(mode: str, frames: int, steps: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.path.dirname(HERE)}
    proc = subprocess.run([sys.executable, "-c", CASE, mode, str(frames), str(steps), PROMPT], env=env,
                          capture_output=True, text=True, check=True)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    t = out["times"]
    fps = lambda a, b: (b - a + 1) / (t[b] - t[a - 1] if a > 0 else t[b])  # noqa: E731
    row = {"mode": mode, "frames": frames, "seconds": round(t[-1], 2), "fps": round(frames / t[-1], 2),
           "extra_memory_mb": round(out["peak_mb"] - out["base_mb"], 1)}
    if mode == "stream":
        row.update(first_frame_s=round(t[0], 3), fps_first_100=round(fps(0, min(99, frames - 1)), 2),
                   fps_last_100=round(fps(max(1, frames - 100), frames - 1), 2))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", default="97,481", help="video lengths (4k+1), shortest first")
    parser.add_argument("--steps", type=int, default=16, help="sampler steps (a frame's levels when streamed)")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "stream.json"))
    args = parser.parse_args()
    lengths = [int(f) for f in args.frames.split(",")]
    rows = [run_case(mode, n, args.steps) for n in lengths for mode in ("stream", "long")]
    for r in rows:
        print(r)
    short, long_ = (next(r for r in rows if r["mode"] == "stream" and r["frames"] == n) for n in (lengths[0], lengths[-1]))
    stream_long = next(r for r in rows if r["mode"] == "long" and r["frames"] == lengths[-1])
    summary = {"memory_ratio_longest_vs_shortest": round(long_["extra_memory_mb"] / max(short["extra_memory_mb"], 1e-6), 3),
               "fps_last_over_first_100": round(long_["fps_last_100"] / long_["fps_first_100"], 3),
               "first_frame_s": long_["first_frame_s"],
               "fps_stream_over_long": round(long_["fps"] / stream_long["fps"], 3)}
    print("stream:", " ".join(f"{k}={v}" for k, v in summary.items()))
    with open(args.out, "w") as f:
        json.dump({"steps": args.steps, "threads": 1, "rows": rows, "summary": summary}, f, indent=2)


if __name__ == "__main__":
    main()
