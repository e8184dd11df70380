"""World render speed: clips per second for 64x64x17 clips, in memory and written as mp4 (+ manifest).

    .venv/bin/python benchmarks/world.py                 # 1,000 clips each way, one process
    .venv/bin/python benchmarks/world.py --num 200 --workers 2

Prints a small table and writes benchmarks/results/world.json. Target: 1,000 clips well under a
minute on 2 cores. Timings on shared machines are noisy; compare runs made side by side.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from chronotope.atomic import atomic_write_json  # noqa: E402
from chronotope.world import detailed_caption, render, sample_scene  # noqa: E402
from chronotope.world.generate import write_world  # noqa: E402


def bench_memory(num: int, height: int, width: int, frames: int, fps: float) -> dict:
    """Sample, render and caption `num` clips without touching the disk."""
    t0 = time.perf_counter()
    for seed in range(num):
        scene = sample_scene(seed)
        render(scene, height, width, frames, fps)
        detailed_caption(scene, seed)
    t_total = time.perf_counter() - t0
    t0 = time.perf_counter()
    scenes = [sample_scene(seed) for seed in range(num)]
    t_sample = time.perf_counter() - t0
    t0 = time.perf_counter()
    for scene in scenes:
        render(scene, height, width, frames, fps)
    t_render = time.perf_counter() - t0
    return {"seconds": t_total, "clips_per_s": num / t_total, "render_only_clips_per_s": num / t_render,
            "sample_scene_per_s": num / t_sample}


def bench_files(num: int, height: int, width: int, frames: int, fps: float, workers: int) -> dict:
    """Full `chronotope world` path: render, encode mp4, write track sidecars and the manifest."""
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        write_world(tmp, num, seed=0, sizes=[(height, width, "1:1")], num_frames=[frames], fps=fps,
                    workers=workers, progress=False)
        seconds = time.perf_counter() - t0
        size = sum(os.path.getsize(os.path.join(tmp, f)) for f in os.listdir(tmp) if f.endswith(".mp4"))
    return {"seconds": seconds, "clips_per_s": num / seconds, "workers": workers, "mp4_bytes_per_clip": size / num}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num", type=int, default=1000)
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--num-frames", type=int, default=17)
    p.add_argument("--fps", type=float, default=8.0)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "world.json"))
    args = p.parse_args()

    shape = (args.num_frames, args.height, args.width)
    memory = bench_memory(args.num, args.height, args.width, args.num_frames, args.fps)
    files = bench_files(args.num, args.height, args.width, args.num_frames, args.fps, args.workers)
    print(f"World, {args.num} clips of {args.num_frames}x{args.height}x{args.width} (T x H x W), "
          f"{os.cpu_count()} CPUs visible")
    print(f"{'mode':<34}{'seconds':>10}{'clips/s':>10}")
    print(f"{'in memory (sample+render+caption)':<34}{memory['seconds']:>10.2f}{memory['clips_per_s']:>10.1f}")
    print(f"{'  render only':<34}{args.num / memory['render_only_clips_per_s']:>10.2f}"
          f"{memory['render_only_clips_per_s']:>10.1f}")
    print(f"{'mp4 + sidecar + manifest':<34}{files['seconds']:>10.2f}{files['clips_per_s']:>10.1f}"
          f"   ({files['workers']} worker(s), {files['mp4_bytes_per_clip']:.0f} B/clip)")
    result = {"num_clips": args.num, "clip_shape_THW": shape, "fps": args.fps, "memory": memory, "files": files,
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "processor": platform.processor() or platform.machine()}}
    atomic_write_json(args.out, result, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
