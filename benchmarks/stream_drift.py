"""Drift of long videos, streamed against windowed, on the same prompts: World-bench of the first and the last 33
frames of each video (benchmarks/stream.py measures speed and memory; this, whether the video keeps its prompt).

    python benchmarks/stream_drift.py                 # the shipped model, 5 prompts, 97 frames, 16 steps, --threads 1

Each prompt is made twice with one seed, `mode="stream"` and `mode="long"`, prompt expansion off, and both ends are
scored against the prompt's spec (chronotope/bench/score.py). Writes benchmarks/results/stream_drift.json.
"""

from __future__ import annotations

import argparse
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
PROMPTS = ["a small red circle moves left on a black background", "a large blue square moves right on a white background",
           "a green triangle falls on a gray background", "a yellow circle moves up on a black background",
           "a purple square moves down on a white background"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=97)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--segment", type=int, default=33, help="frames scored at each end")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "stream_drift.json"))
    args = parser.parse_args()
    import numpy as np
    import torch

    from chronotope.bench.score import score_video
    from chronotope.pipeline import VideoPipeline, default_model_dir
    from chronotope.text.vocabulary import DEFAULT_VOCABULARY, load_vocabulary

    torch.set_num_threads(1)
    pipe, vocabulary = VideoPipeline.from_pretrained(default_model_dir()), load_vocabulary(DEFAULT_VOCABULARY)
    rows = []
    for i, prompt in enumerate(PROMPTS):
        spec, _ = vocabulary.parse(prompt)
        for mode in ("stream", "long"):
            frames = pipe(prompt, mode=mode, num_frames=args.frames, num_inference_steps=args.steps, seed=i,
                          progress=False, expand_prompt=False).frames[0]
            first, last = (score_video(f, spec)["overall"] for f in (frames[:args.segment], frames[-args.segment:]))
            rows.append({"prompt": prompt, "mode": mode, "first": round(first, 4), "last": round(last, 4)})
            print(rows[-1], flush=True)
    summary = {}
    for mode in ("stream", "long"):
        first = float(np.mean([r["first"] for r in rows if r["mode"] == mode]))
        last = float(np.mean([r["last"] for r in rows if r["mode"] == mode]))
        summary[mode] = {"first": round(first, 3), "last": round(last, 3), "last_over_first": round(last / first, 3)}
    print("stream_drift:", json.dumps(summary))
    with open(args.out, "w") as f:
        json.dump({"frames": args.frames, "steps": args.steps, "segment": args.segment, "rows": rows,
                   "summary": summary}, f, indent=2)


if __name__ == "__main__":
    main()
