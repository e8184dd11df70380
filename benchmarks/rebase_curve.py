"""What transfer buys: World-bench t2v of a re-based DiT at step 0 and every ~N minutes of its fine-tuning.

Follows a `chronotope train world-model --init MODEL --vae OTHER_VAE` run while it trains (or after): scores
OUT/rebase/dit (step 0: the --init DiT with its ends mapped onto the new latent, train/transfer.py), then the
run's newest export (OUT/train-dit/dit, EMA weights) each time its clock passes the next --every-minutes, and
OUT/model when the run is done; also the --init model itself, as the reference. Every point is score_t2v on the
same first --prompts World-bench prompts (published sizes and seeds, 20 steps, CFG 5), in memory.

    python benchmarks/rebase_curve.py runs/rebase --every-minutes 30 --prompts 40 --threads 1

Writes OUT/curve.jsonl (one line a point, appended; a rerun skips points already there) and, at the end,
benchmarks/results/rebase_curve.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _score(model_dir: Path, dit_dir: Path | None, vae_dir: str | None, prompts: int) -> dict:
    from chronotope.bench.generate import score_t2v
    from chronotope.dit.model import DiT
    from chronotope.pipeline import VideoPipeline
    from chronotope.vae.model import CausalVAE

    pipe = VideoPipeline.from_pretrained(model_dir)
    if vae_dir is not None:
        pipe.vae = CausalVAE.from_pretrained(vae_dir).eval()
    if dit_dir is not None:
        with tempfile.TemporaryDirectory() as tmp:  # a copy: the trainer swaps its export in as it goes
            shutil.copytree(dit_dir, Path(tmp) / "dit")
            pipe.dit = DiT.from_pretrained(Path(tmp) / "dit").eval()
    return score_t2v(pipe, prompts, progress=False)


def _trainer_clock(run: Path) -> tuple[int, float] | None:
    """(step, training seconds) of the newest complete checkpoint of OUT/train-dit, or None."""
    from chronotope.train.checkpoint import latest_checkpoint

    last = latest_checkpoint(run / "train-dit")
    if last is None:
        return None
    state = json.loads((last / "trainer_state.json").read_text())
    return int(state["step"]), float(state["elapsed"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="the world-model run folder (OUT)")
    p.add_argument("--every-minutes", type=float, default=30.0)
    p.add_argument("--prompts", type=int, default=40)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--poll-seconds", type=float, default=60.0)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    run, log = args.run, args.run / "curve.jsonl"
    state = json.loads((run / "state.json").read_text())
    init, vae = state["recipe"]["init"], state["recipe"]["vae"]
    done = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    names = {d["point"] for d in done}

    def record(point: str, step: int, minutes: float, model_dir: Path, dit_dir: Path | None, vae_dir: str | None):
        t0 = time.perf_counter()
        res = _score(model_dir, dit_dir, vae_dir, args.prompts)
        row = {"point": point, "step": step, "train_minutes": round(minutes, 1), "t2v_overall": res["t2v_overall"],
               "attributes": res["attributes"], "score_seconds": round(time.perf_counter() - t0, 1)}
        done.append(row)
        names.add(point)
        with open(log, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        print(f"{point}: step {step}, {minutes:.0f} min, t2v {row['t2v_overall']:.3f}", flush=True)

    if "init" not in names:
        record("init", 0, 0.0, Path(init), None, None)
    while not (run / "rebase" / "dit" / "config.json").is_file():
        time.sleep(args.poll_seconds)
    if "step0" not in names:
        record("step0", 0, 0.0, Path(init), run / "rebase" / "dit", vae)
    k = 1
    while True:
        state = json.loads((run / "state.json").read_text())
        finished = state["stages"].get("export", {}).get("done", False)
        clock = _trainer_clock(run)
        if clock is not None and clock[1] >= k * args.every_minutes * 60 and not finished:
            point = f"{k * args.every_minutes:g}min"
            if point not in names:
                record(point, clock[0], clock[1] / 60, Path(init), run / "train-dit" / "dit", vae)
            k += 1
            continue
        if finished:
            if "final" not in names:
                step = state["stages"]["dit"].get("steps", 0)
                record("final", step, state["stages"]["dit"]["seconds"] / 60, run / "model", None, None)
            break
        time.sleep(args.poll_seconds)
    out = ROOT / "benchmarks" / "results" / "rebase_curve.json"
    out.write_text(json.dumps({"run": str(run), "prompts": args.prompts, "init": init, "vae": vae,
                               "rebase": state["stages"].get("rebase"), "points": done}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
