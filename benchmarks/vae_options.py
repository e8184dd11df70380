"""Which latent space serves the DiT? Compare VAE runs (one per option) on the same held-out World sets.

Each option is a `chronotope train vae` run folder whose checkpoints are kept (`--keep-last` large). For every
checkpoint the EMA weights' PSNR on held-out World clips gives the learning curve; the newest one gets the
full measures of `benchmarks/vae.py` (psnr_world, World-bench of ground truth through the VAE). Beside them,
measured side by side in this run on random weights (speed depends on the architecture only): encode+decode
seconds of a 17-frame clip and seconds per training step (batch 4 x 17 frames, 2 threads), each against the
`world` preset at 64px; and the DiT tokens of a 33-frame 1:1 clip at the option's patch.

    .venv/bin/python benchmarks/vae_options.py \\
        world-4x=runs/vae26/world-4x:64px:2 world-c64=runs/vae26/world-c64:64px:1 world-128=runs/vae26/world-128:128px:2 \\
        --baseline chronotope/assets/world-model/vae

An option is NAME=RUN_DIR:RESOLUTION:PATCH, PATCH the DiT's spatial patch on that latent (the shipped DiT has
patch 1 on `world`). Writes benchmarks/results/vae_options.json and prints the table of docs/training-world.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

RESULT = ROOT / "benchmarks" / "results" / "vae_options.json"
CLIP = (33, 64)  # frames and 1:1 side at 64px whose DiT tokens the table counts (doubled side at 128px)


def load_checkpoint_vae(ckpt: Path):
    """A CausalVAE with a training checkpoint's EMA weights (its model weights when the run kept no EMA)."""
    from safetensors.torch import load_file

    from chronotope.config import VAEConfig, config_from_dict
    from chronotope.vae.model import CausalVAE

    state = json.loads((ckpt / "trainer_state.json").read_text())
    vae = CausalVAE(config_from_dict(VAEConfig, state["config"]["task"]["vae"]))
    weights = ckpt / "ema.safetensors" if (ckpt / "ema.safetensors").is_file() else ckpt / "model.safetensors"
    vae.load_state_dict(load_file(str(weights)))
    return vae.eval(), state


def curve(run: Path, resolution: str, per_shape: int) -> list[dict]:
    """(step, psnr_world on per_shape clips per shape) for every complete checkpoint of a run."""
    from vae import psnr_world

    from chronotope.train.checkpoint import list_checkpoints

    points = []
    for ckpt in list_checkpoints(run):
        vae, state = load_checkpoint_vae(ckpt)
        q = psnr_world(str(ckpt), per_shape=per_shape, resolution=resolution, vae=vae)
        points.append({"step": state["step"], "psnr_world": q["psnr_world"]})
        print(f"  {run.name} step {state['step']}: {q['psnr_world']:.2f} dB", flush=True)
    return points


def timings(configs: dict, threads: int, repeats: int = 5) -> dict:
    """Per option (name -> (VAEConfig, frame side)): median encode+decode seconds of one 17-frame clip and
    training-step seconds (batch 4 x 17 frames), the options interleaved round by round so that whatever
    else runs on the machine slows them alike."""
    import torch

    from chronotope.vae.losses import vae_loss
    from chronotope.vae.model import CausalVAE

    torch.set_num_threads(threads)
    jobs = {}
    for name, (config, side) in configs.items():
        torch.manual_seed(0)
        vae = CausalVAE(config)
        jobs[name] = (vae, torch.optim.AdamW(vae.parameters(), lr=1e-4), torch.rand(4, 3, 17, side, side) * 2 - 1)

    def step(vae, opt, x) -> None:
        recon, posterior = vae(x, sample=True)
        vae_loss(x, recon, posterior)[0].backward()
        opt.step()
        opt.zero_grad()

    def coding(vae, opt, x) -> None:
        with torch.inference_mode():
            vae.decode(vae.encode(x[:1]).mode())

    times = {name: {"train_step_s": [], "encode_decode_s": []} for name in jobs}
    for round_ in range(repeats + 1):  # round 0 warms up
        for name, job in jobs.items():
            for key, fn in (("train_step_s", step), ("encode_decode_s", coding)):
                t0 = time.perf_counter()
                fn(*job)
                if round_:
                    times[name][key].append(time.perf_counter() - t0)
    return {name: {k: statistics.median(v) for k, v in t.items()} for name, t in times.items()}


def dit_tokens(config, resolution: str, patch: int) -> int:
    """DiT tokens of a 33-frame 1:1 clip at `resolution` with spatial patch `patch` (time patch 1)."""
    from chronotope.sizes import size_for

    h, w = size_for(resolution, "1:1")
    t = 1 + (CLIP[0] - 1) // config.temporal_factor
    return t * (h // config.spatial_factor // patch) * (w // config.spatial_factor // patch)


def first_step_reaching(points: list[dict], db: float) -> int | None:
    return next((p["step"] for p in points if p["psnr_world"] >= db), None)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("options", nargs="+", metavar="NAME=RUN_DIR:RESOLUTION:PATCH")
    p.add_argument("--baseline", default=str(ROOT / "chronotope/assets/world-model/vae"),
                   help="the VAE folder of today's latent space (default: the shipped one)")
    p.add_argument("--ceiling-prompts", type=int, default=200, help="World-bench t2v prompts (default 200)")
    p.add_argument("--curve-clips", type=int, default=4, help="clips per shape for each checkpoint (default 4)")
    p.add_argument("--threads", type=int, default=2, help="torch threads of the timings (default 2)")
    p.add_argument("--reach", type=float, nargs="+", default=[27.87, 30.93],
                   help="PSNR levels whose first checkpoint the table reports (default: today's VAE after its "
                        "first run and as shipped)")
    p.add_argument("--reuse", action="store_true",
                   help="keep the rows of the last vae_options.json whose run has no newer checkpoint (speeds are "
                        "always measured again)")
    args = p.parse_args()
    options = []
    for text in args.options:
        try:
            name, rest = text.split("=", 1)
            run, resolution, patch = rest.rsplit(":", 2)
            options.append((name, Path(run), resolution, int(patch)))
        except ValueError:
            p.error(f"option {text!r}: expected NAME=RUN_DIR:RESOLUTION:PATCH, e.g. world-4x=runs/vae/w4:64px:4")

    import torch

    from vae import vae_quality

    from chronotope.config import VAE_PRESETS
    from chronotope.train.checkpoint import list_checkpoints

    torch.set_num_threads(args.threads)
    base_cfg = VAE_PRESETS["world"]()
    last = json.loads(RESULT.read_text())["options"] if args.reuse and RESULT.is_file() else {}
    rows = {"world (today)": last.get("world (today)") or {
        "resolution": "64px", "patch": 1, "compression": base_cfg.compression, "latent": "16 x 8 x 8",
        "dit_tokens_33f": dit_tokens(base_cfg, "64px", 1),
        "quality": vae_quality(args.baseline, "64px", args.ceiling_prompts), "curve": None}}
    configs = {"world (today)": (base_cfg, CLIP[1])}
    for name, run, resolution, patch in options:
        ckpts = list_checkpoints(run)
        if not ckpts:
            raise SystemExit(f"{run}: no complete checkpoint (train it with --keep-last large enough)")
        vae, state = load_checkpoint_vae(ckpts[-1])
        cfg = vae.config
        side = 2 * CLIP[1] if resolution == "128px" else CLIP[1]
        configs[name] = (cfg, side)
        if name in last and last[name]["steps"] == state["step"]:
            rows[name] = last[name]
            continue
        print(f"{name}: {run}", flush=True)
        points = curve(run, resolution, args.curve_clips)
        rows[name] = {"resolution": resolution, "patch": patch, "compression": cfg.compression,
                      "latent": f"{cfg.latent_channels} x {side // cfg.spatial_factor} x {side // cfg.spatial_factor}",
                      "dit_tokens_33f": dit_tokens(cfg, resolution, patch),
                      "quality": vae_quality(str(run), resolution, args.ceiling_prompts, vae=vae),
                      "curve": points, "steps": points[-1]["step"],
                      "reach": {f"{db:.2f}": first_step_reaching(points, db) for db in args.reach}}
    return finish(rows, configs, args)


def finish(rows: dict, configs: dict, args: argparse.Namespace) -> int:
    """Time every option side by side, write vae_options.json and print the table."""
    from chronotope.atomic import atomic_write_json

    speed = timings(configs, args.threads)
    today = speed["world (today)"]
    for name, row in rows.items():
        row.update(speed[name], speed_vs_today=today["encode_decode_s"] / speed[name]["encode_decode_s"],
                   train_step_vs_today=speed[name]["train_step_s"] / today["train_step_s"])
    atomic_write_json(RESULT, {"threads": args.threads, "ceiling_prompts": args.ceiling_prompts, "options": rows},
                      indent=2)
    print(table(rows, args.reach))
    return 0


def table(rows: dict, reach: list[float]) -> str:
    """The markdown table of docs/training-world.md."""
    head = ["option", "latent of a 1:1 frame", "psnr_world", "GT→VAE overall", "shape", "color", "motion",
            "DiT tokens / 33f", "enc+dec speed vs today", "train step time vs today"] + [f"steps to {db:.1f} dB" for db in reach]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in rows.items():
        c = r["quality"]["ceiling"]["vae"]
        steps = [str(r["reach"].get(f"{db:.2f}") or "—") if r.get("reach") else "—" for db in reach]
        cells = [name, r["latent"], f"{r['quality']['psnr_world']:.2f}", f"{c['overall']:.3f}", f"{c['shape']:.3f}",
                 f"{c['color']:.3f}", f"{c['motion']:.3f}", str(r["dit_tokens_33f"]), f"{r['speed_vs_today']:.2f}x",
                 f"{r['train_step_vs_today']:.2f}x"] + steps
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
