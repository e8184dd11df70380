"""LoRA on the World (issue 29): teach the shipped model a held-out composition from 200 World clips on the CPU,
then score it on that composition and on seen ones, paired against the model without the adapter.

    python benchmarks/lora.py                          # rank 4, 18 minutes, 200 clips of it + 200 replayed others
    python benchmarks/lora.py --replay 0 --lr 1e-3 --warmup 0 --steps 400 --name r4-400   # the 200 clips alone, 400 steps

Steps, each one skipped or resumed when its output is there (run the same command again after a stop):
  1. `chronotope world --num 3000 --include-heldout` (seed 0, 1:1 / 16:9 / 9:16, 17 frames) into --data;
  2. the first --clips clips that show the composition and --replay others (drawn with seed 0) as a manifest;
  3. `chronotope train lora` for --minutes (the VAE encoding of the clips comes first and is timed with it);
  4. `chronotope bench generate-and-score` t2v, base and adapted: --num-composition prompts that all show the
     composition (`--composition`), --num-seen prompts of seen compositions only;
  5. `bench compare`'s paired change on each set; the adapter's size against the DiT's.
Writes benchmarks/results/lora-NAME.json and prints one markdown row per set.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from chronotope.bench.generate import shows_composition  # noqa: E402

CLI = [sys.executable, "-m", "chronotope.cli"]


def run(args: list[str], log: str) -> float:
    """Run a chronotope command, its output into `log`; seconds it took. A failure stops the benchmark."""
    t0 = time.perf_counter()
    with open(log, "a", encoding="utf-8") as f:
        done = subprocess.run(CLI + args, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"`chronotope {' '.join(args)}` failed (exit {done.returncode}); see {log}")
    return time.perf_counter() - t0


def select(data: str, color: str, shape: str, clips: int, replay: int) -> str:
    """A manifest of the first `clips` clips showing color:shape and `replay` that do not (drawn with seed 0)."""
    with open(os.path.join(data, "manifest.csv"), newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    shows = [shows_composition(json.loads(r["spec"]), (color, shape)) for r in rows]
    taught = [r for r, s in zip(rows, shows) if s][:clips]
    others = [r for r, s in zip(rows, shows) if not s]
    random.Random(0).shuffle(others)
    others = others[:replay]
    if len(taught) < clips:
        raise SystemExit(f"only {len(taught)} of {len(rows)} clips show a {color} {shape}; render more (--world-num)")
    path = os.path.join(data, f"{color}-{shape}-{clips}" + (f"+{replay}" if replay else "") + ".csv")
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(taught + others)
    return path


def bench(out: str, model: str, lora: str | None, composition: str | None, num: int, log: str) -> dict:
    args = ["bench", "generate-and-score", "--model", model, "--out", out, "--num", str(num), "--modes", "t2v",
            "--steps-table", "", "--untrained-aspect-ratios", "", "--no-progress"]
    args += ["--composition", composition] if composition else ["--include-heldout-fraction", "0"]
    args += ["--lora", lora] if lora else []
    run(args, log)
    with open(os.path.join(out, "results.json"), encoding="utf-8") as f:
        return json.load(f)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=os.path.join(ROOT, "chronotope", "assets", "world-model"))
    p.add_argument("--composition", default="purple:triangle", help="a held-out COLOR:SHAPE (default purple:triangle)")
    p.add_argument("--data", default=os.path.join(ROOT, "data", "lora29-world"), help="World render folder")
    p.add_argument("--world-num", type=int, default=3000, help="clips rendered (default 3000)")
    p.add_argument("--clips", type=int, default=200, help="clips of the composition to learn from (default 200)")
    p.add_argument("--replay", type=int, default=200, help="clips without it added to the data (default 200)")
    p.add_argument("--rank", type=int, default=4, help="adapter rank (default 4: 1.6%% of the shipped DiT)")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup", type=int, default=50, help="warmup steps (default 50)")
    p.add_argument("--steps", type=int, default=100_000, help="step limit (default: the clock, --minutes, ends it)")
    p.add_argument("--minutes", type=float, default=18.0, help="training budget; encoding comes on top (default 18)")
    p.add_argument("--num-composition", type=int, default=60, help="bench prompts showing it (default 60)")
    p.add_argument("--num-seen", type=int, default=100, help="bench prompts of seen compositions (default 100)")
    p.add_argument("--name", default="r4mix", help="run name: runs/lora29/NAME, benchmarks/results/lora-NAME.json")
    p.add_argument("--runs", default=os.path.join(ROOT, "runs", "lora29"))
    args = p.parse_args()

    from chronotope.bench.compare import compare_runs

    color, shape = args.composition.split(":")
    os.makedirs(args.runs, exist_ok=True)
    log = os.path.join(args.runs, f"{args.name}.log")
    if not os.path.isfile(os.path.join(args.data, "manifest.csv")):
        run(["world", "--out", args.data, "--num", str(args.world_num), "--include-heldout", "--aspect-ratios",
             "1:1,16:9,9:16", "--num-frames", "17", "--no-progress"], log)
    manifest = select(args.data, color, shape, args.clips, args.replay)

    lora = os.path.join(args.runs, args.name)
    train = ["train", "lora", "--model", args.model, "--data", manifest, "--out", lora, "--rank", str(args.rank),
             "--lr", str(args.lr), "--warmup", str(args.warmup), "--steps", str(args.steps), "--minutes", str(args.minutes),
             "--ckpt-every", "100", "--threads", "2", "--no-progress"]
    done, finished = os.path.join(lora, "lora", "adapter.safetensors"), os.path.join(lora, "benchmark-train.json")
    if not os.path.isfile(finished):  # checkpoints export the adapter too: only this file says training ended
        seconds = run(train + (["--resume"] if os.path.isdir(lora) else []), log)
        with open(finished, "w", encoding="utf-8") as f:
            json.dump({"train_and_encode_s": seconds, "command": "chronotope " + " ".join(train)}, f, indent=1)
    with open(finished, encoding="utf-8") as f:
        train_s = json.load(f)["train_and_encode_s"]
    with open(os.path.join(lora, "metrics.jsonl"), encoding="utf-8") as f:
        steps = [json.loads(line)["step"] for line in f if line.strip()][-1]

    rows = {}
    for group, comp, num in (("composition", args.composition, args.num_composition), ("seen", None, args.num_seen)):
        base = bench(os.path.join(args.runs, f"bench-{group}-base"), args.model, None, comp, num, log)
        new = bench(os.path.join(args.runs, f"bench-{group}-{args.name}"), args.model, lora, comp, num, log)
        rows[group] = compare_runs(base, new)["modes"]["t2v"]

    dit = os.path.getsize(os.path.join(args.model, "dit", "model.safetensors"))
    result = {"composition": args.composition, "clips": args.clips, "replay": args.replay, "rank": args.rank,
              "lr": args.lr, "minutes": args.minutes, "max_steps": args.steps, "steps": steps, "train_and_encode_s": train_s,
              "adapter_bytes": os.path.getsize(done), "dit_bytes": dit, "adapter_share": os.path.getsize(done) / dit,
              **rows}
    print(f"| {args.name} | {args.clips}" + (f" + {args.replay}" if args.replay else "") + f" | {args.rank} | "
          f"{args.lr:g} | {steps} | {result['adapter_share']:.1%} | "
          + " | ".join(f"{r['base']:.3f} → {r['new']:.3f} ({r['change']:+.3f} ± {r['stderr']:.3f})"
                       for r in rows.values()) + " |")
    out = os.path.join(HERE, "results", f"lora-{args.name}.json")
    with open(out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
