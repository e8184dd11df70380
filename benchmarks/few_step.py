"""Few-step sampling on the CPU (issue 30): end-to-end time of one 33-frame 64x64 clip, split text / DiT / VAE decode,
20 Euler steps with CFG (the shipped model) against the few-step model at 1, 2, 4 and 8 steps, side by side.

    python benchmarks/few_step.py --student runs/fewstep/sc/model        # a distilled model folder
    python benchmarks/few_step.py                                        # timing only: a random step embedding

Each case is timed `--repeats` times after a warm-up on one prompt and seed; the median of each part is reported,
and the ratio of every case's end-to-end time to the 20-step CFG one. DiT time is the sampler call, VAE time the
decode of the latents to uint8 frames, text the encoder call (its prompt cache off, so every call encodes the prompt
as a new one); end to end is `pipe(...)` as a user calls it (prompt expansion off). Writes benchmarks/results/few_step.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PROMPT = "a red circle moves left on a white background, then a blue square falls and bounces"


def _time(fn, repeats: int) -> tuple[float, object]:
    out, times = None, []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def measure(pipe, steps: int, sampler: str, guidance: float, frames: int, repeats: int) -> dict:
    """Median seconds of text, DiT, VAE decode and end to end for one setting (the same prompt and seed)."""
    import torch

    from chronotope.diffusion.flow import shift_for_tokens, timesteps
    from chronotope.pipeline import modes
    from chronotope.pipeline.resolve import tokens_per_sample

    C, n, h, w = pipe.vae.latent_shape(frames, 64, 64)
    shift = shift_for_tokens(tokens_per_sample(pipe, n, h, w), scale=float(pipe.defaults["time_shift"]))
    plan = modes.plan_none((C, n, h, w))
    kw = dict(num_frames=frames, height=64, width=64, num_inference_steps=steps, sampler=sampler, seed=0,
              expand_prompt=False, progress=False)
    if sampler != "shortcut":
        kw["guidance_scale"] = guidance
    text_s, (cond, uncond) = _time(lambda: pipe.encode_prompts([PROMPT], [""]), repeats)
    noise = pipe.initial_noise((1, C, n, h, w), torch.Generator().manual_seed(0))
    dit_s, z = _time(lambda: pipe.denoise(noise, timesteps(steps, shift), cond, uncond, plan, sampler=sampler,
                                          guidance_scale=guidance, progress=False), repeats)
    vae_s, _ = _time(lambda: pipe.decode(z), repeats)
    total_s, _ = _time(lambda: pipe(PROMPT, **kw), repeats)
    evals = steps * (2 if sampler != "shortcut" and guidance > 1 else 1)
    return {"steps": steps, "sampler": sampler, "dit_evaluations": evals, "text_s": text_s, "dit_s": dit_s,
            "vae_decode_s": vae_s, "end_to_end_s": total_s}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--teacher", default=None, help="the multi-step model folder (default: the shipped model)")
    p.add_argument("--student", default=None,
                   help="a few-step model folder (default: the teacher plus a random step embedding: timing only)")
    p.add_argument("--frames", type=int, default=33)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=os.path.join(HERE, "results", "few_step.json"))
    args = p.parse_args()

    import torch

    from chronotope.pipeline import VideoPipeline, default_model_dir

    torch.set_num_threads(args.threads)
    teacher = VideoPipeline.from_pretrained(args.teacher or default_model_dir())
    if args.student:
        student = VideoPipeline.from_pretrained(args.student, text_encoder=teacher.text_encoder)
    else:
        student = VideoPipeline(teacher.vae, teacher.dit.extended(step_embed=True).eval(), teacher.text_encoder,
                                teacher.text_encoder_name, {**teacher.defaults, "sampler": "shortcut",
                                                            "num_inference_steps": 4, "guidance_scale": 5.0})
    teacher.text_encoder.cache_size = 0  # no prompt cache (the student shares the encoder): text is timed as new
    for pipe in (teacher, student):  # warm-up: encoder, kernels and allocator, out of every timing
        pipe(PROMPT, num_frames=args.frames, height=64, width=64, num_inference_steps=1, seed=0, expand_prompt=False,
             progress=False)
    rows = [{"model": "teacher", **measure(teacher, 20, "euler", 5.0, args.frames, args.repeats)}]
    for steps in (1, 2, 4, 8):
        rows.append({"model": "few-step", **measure(student, steps, "shortcut", 5.0, args.frames, args.repeats)})
    base = rows[0]["end_to_end_s"]
    for r in rows:
        r["speedup_vs_20_step_cfg"] = base / r["end_to_end_s"]
    print(f"{args.frames}-frame 64x64 clip, {args.threads} threads, median of {args.repeats}")
    print("| model | steps | DiT evals | text s | DiT s | VAE decode s | end to end s | speed-up |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['steps']} | {r['dit_evaluations']} | {r['text_s']:.3f} | {r['dit_s']:.3f} | "
              f"{r['vae_decode_s']:.3f} | {r['end_to_end_s']:.3f} | {r['speedup_vs_20_step_cfg']:.1f}x |")
    result = {"frames": args.frames, "height": 64, "width": 64, "threads": args.threads, "repeats": args.repeats,
              "teacher": args.teacher or str(default_model_dir()), "student": args.student or "random step embedding",
              "torch": torch.__version__, "rows": rows}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
