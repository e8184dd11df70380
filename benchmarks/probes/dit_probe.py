"""What a trained DiT uses: its flow loss on fresh World clips when one piece of its input is made wrong.

A model that uses an input loses accuracy when that input lies. On fresh World clips (never training
data), encoded by the model's own VAE and noised at a few fixed t (same noise draws for every
variant), this prints the loss with:

    true          the clip's own caption and frames
    motion-swap   the caption with every object's motion direction swapped (left <-> right, up <-> down),
                  same wording otherwise (the caption is redrawn from the changed scene with the same seed)
    color-swap    the caption with every object's color changed (red -> blue -> ...), same wording
    empty         the null caption (what classifier-free guidance contrasts with)
    frames-swap   the true caption, but every latent frame except the scored one taken from another clip
                  (scored per frame, then averaged): how much the model leans on the clip's other frames

Reported as the loss and its relative increase over `true`. Clips are 17 frames at 64x64 whose
objects all move left, right, up or down (so a direction swap is always a real change).

Last, how much each swap changes what the DiT is given: the text encoder's token embeddings of the
swapped caption against the true one's (relative L2 distance over the caption's tokens, and the cosine
of the most changed token; captions whose token counts differ are left out). A swap the encoder barely
registers is one the DiT must learn from a faint signal.

And whether the DiT reads direction at all (the loss barely shows it: direction decides where a small
object goes, a few cells of the latent): on fresh one-object clips it predicts the clean latents from
pure noise (t = 1, so the caption is all it has), and the probe measures how far the predicted object's
centroid moves from the first latent frame to the last along the caption's direction, against the
clips' own motion. A model that ignores direction words predicts about 0 cells. The same again with the
clip's first latent frame given (image-to-video), with the true and with the direction-swapped caption.
Last, the same measure on whole samples (the sampler's 20 steps with guidance, from noise, as text-to-video
runs), with the true and with the direction-swapped caption: a one-step prediction from pure noise is the
mean over every start the data allows, which tells direction only where the start does, so a model trained
on clips that start anywhere shows its reading here.

    .venv/bin/python benchmarks/dit_probe.py --model chronotope/assets/world-model [--num 48]
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

FLIP = {"left": "right", "right": "left", "up": "down", "down": "up"}


def fresh_clips(num: int, seed: int, objects: int | None = None,
                starts: str = "behind") -> list[tuple[np.ndarray, dict[str, str], list[str]]]:
    """`num` fresh 17-frame 64x64 World clips whose objects all move in a straight line (exactly `objects`
    of them when given): (frames, captions of the true scene and of its motion- and color-swapped versions
    (same wording seed), each object's motion)."""
    from chronotope.world.captions import detailed_caption
    from chronotope.world.render import render
    from chronotope.world.scene import sample_scene
    from chronotope.world.vocab import COLORS

    colors = list(COLORS)
    out, s = [], seed
    while len(out) < num:
        scene = sample_scene(s, starts=starts)
        s += 1
        if scene.pillar_u is not None or not all(o.motion in FLIP for o in scene.objects):
            continue
        if objects is not None and len(scene.objects) != objects:
            continue
        used = {o.color for o in scene.objects}
        free = [c for c in colors if c not in used]
        moved = replace(scene, objects=[replace(o, motion=FLIP[o.motion]) for o in scene.objects])
        recolored = replace(scene, objects=[replace(o, color=free[i]) for i, o in enumerate(scene.objects)])
        wording = [scene.seed or s, 2]
        captions = {name: detailed_caption(sc, np.random.default_rng(wording))
                    for name, sc in (("true", scene), ("motion-swap", moved), ("color-swap", recolored))}
        out.append((render(scene, 64, 64, 17, 8.0).frames, captions, [o.motion for o in scene.objects]))
    return out


@torch.no_grad()
def probe(model_dir: str, num: int = 48, seed: int = 20_000_000, ts: tuple[float, ...] = (0.5, 0.8, 0.95),
          threads: int | None = None, objects: int | None = None, sample_steps: int = 20, starts: str = "behind") -> dict:
    from chronotope.dit.patches import Sample, pack, unpack
    from chronotope.pipeline import VideoPipeline

    if threads:
        torch.set_num_threads(threads)
    pipe = VideoPipeline.from_pretrained(model_dir)
    clips = fresh_clips(num, seed, objects)
    x0 = torch.stack([pipe.encode_video(frames) for frames, _, _ in clips])  # [N, C, n, h, w]
    N, n = x0.shape[0], x0.shape[2]
    enc = {name: pipe.text_encoder.encode([c[name] for _, c, _ in clips]) for name in ("true", "motion-swap", "color-swap")}
    enc["empty"] = pipe.text_encoder.encode([""] * N)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    other = torch.roll(torch.arange(N), 1)  # frames-swap donor: the previous clip
    patch = pipe.dit.config.patch

    def loss(x_t: torch.Tensor, target: torch.Tensor, t: float, text: tuple, frame: int | None = None) -> float:
        samples = [Sample(x_t[i], timestep=torch.full((n,), t), text_idx=i) for i in range(N)]
        packed = pack(samples, patch)
        v = torch.stack(unpack(packed, pipe.dit(packed, *text)))  # [N, C, n, h, w]
        err = (v - target).square()
        return float(err.mean() if frame is None else err[:, :, frame].mean())

    text_change = {name: caption_change(enc["true"], enc[name]) for name in ("motion-swap", "color-swap")}
    rows = {}
    for t in ts:
        x_t, target = (1 - t) * x0 + t * noise, noise - x0
        row = {name: loss(x_t, target, t, enc[name]) for name in ("true", "motion-swap", "color-swap", "empty")}
        per_frame = []
        for k in range(n):
            mixed = x_t[other].clone()
            mixed[:, :, k] = x_t[:, :, k]
            per_frame.append(loss(mixed, target, t, enc["true"], frame=k))
        row["frames-swap"] = float(np.mean(per_frame))
        rows[f"{t:g}"] = row
    return {"model": str(model_dir), "clips": N, "seed": seed, "objects": objects, "loss": rows, "text_change": text_change,
            "drift": drift_from_text(pipe, num, seed + 1_000_000, steps=sample_steps, starts=starts), "starts": starts}


AXIS = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}  # image y grows down


def centroids(z: torch.Tensor) -> torch.Tensor:
    """Latents z [N, C, n, h, w] of one-object scenes -> the object's (x, y) per latent frame [N, n, 2], in
    latent cells: the centroid of each cell's squared distance from the frame's median (the background)."""
    bg = z.flatten(3).median(-1).values[..., None, None]  # [N, C, n, 1, 1]
    e = (z - bg).square().sum(1)  # [N, n, h, w]
    xs, ys = torch.arange(e.shape[-1], dtype=e.dtype), torch.arange(e.shape[-2], dtype=e.dtype)
    total = e.sum((-2, -1)).clamp_min(1e-12)
    return torch.stack([(e.sum(-2) * xs).sum(-1) / total, (e.sum(-1) * ys).sum(-1) / total], -1)


@torch.no_grad()
def drift_from_text(pipe, num: int, seed: int, draws: int = 4, steps: int = 20, guidance: float = 5.0,
                    starts: str = "behind") -> dict:
    """Does the DiT read direction words? On `num` fresh one-object clips, the clean latents it predicts from
    pure noise (t = 1, so the caption is all it knows; mean over `draws` noise draws) and the clip's own
    latents: how far the object's centroid moves from the first latent frame to the last along the
    caption's direction, in latent cells. A model that ignores direction predicts about 0. Then the same with the
    clip's first latent frame given clean (image-to-video: the object's start is known, only its path is not),
    once with the true caption and once with every direction swapped: a model that reads direction moves the
    object the caption's way with the first and the other way with the second. Last, whole text-to-video
    samples (`steps` Euler steps, CFG `guidance`; 0 steps: skipped) with the true and the swapped caption."""
    from chronotope.dit.patches import Sample, pack, unpack

    clips = fresh_clips(num, seed, objects=1, starts=starts)
    x0 = torch.stack([pipe.encode_video(frames) for frames, _, _ in clips])  # [N, C, n, h, w]
    N, n = x0.shape[0], x0.shape[2]
    text = {name: pipe.text_encoder.encode([c[name] for _, c, _ in clips]) for name in ("true", "motion-swap")}
    axis = torch.tensor([AXIS[m[0]] for _, _, m in clips])  # [N, 2]
    first = torch.zeros(n, dtype=torch.bool)
    first[0] = True

    def predict(caption: str, given_first: bool) -> torch.Tensor:
        """Centroids [N, n, 2] of the clean latents predicted at t = 1 (mean over the noise draws); with
        `given_first` the first latent frame is the clip's own, clean (t = 0: the image-to-video setting)."""
        gen, out = torch.Generator().manual_seed(seed), torch.zeros(N, n, 2)
        for _ in range(draws):
            noise = torch.randn(x0.shape, generator=gen)
            if given_first:
                noise[:, :, 0] = x0[:, :, 0]
            samples = [Sample(noise[i], timestep=torch.where(first, 0.0, 1.0) if given_first else torch.ones(n),
                              is_cond=first if given_first else None, text_idx=i) for i in range(N)]
            packed = pack(samples, pipe.dit.config.patch)
            v = torch.stack(unpack(packed, pipe.dit(packed, *text[caption])))  # x_1 = noise, so x0_hat = noise - v
            x0_hat = noise - v
            if given_first:
                x0_hat[:, :, 0] = x0[:, :, 0]
            out += centroids(x0_hat) / draws
        return out

    def along(c: torch.Tensor, rows: torch.Tensor) -> float:
        return float(((c[:, -1] - c[:, 0]) * axis).sum(-1)[rows].mean()) if rows.any() else float("nan")

    def sampled(caption: str) -> torch.Tensor:
        """Centroids [N, n, 2] of text-to-video samples: `steps` Euler steps from noise with guidance."""
        prompts = [c[caption] for _, c, _ in clips]
        out = pipe(prompts, height=64, width=64, num_frames=17, num_inference_steps=steps, guidance_scale=guidance,
                   seed=seed, expand_prompt=False, progress=False)
        return centroids(out.latents.float())

    horizontal = axis[:, 0] != 0
    rows = {"all": torch.ones(N, dtype=torch.bool), "horizontal": horizontal, "vertical": ~horizontal}
    truth, pred = centroids(x0), predict("true", False)
    given = {name: predict(name, True) for name in ("true", "motion-swap")}
    samples = {name: sampled(name) for name in ("true", "motion-swap")} if steps else {}
    return {"clips": N, "draws": draws, "predicted": {k: along(pred, r) for k, r in rows.items()},
            "truth": {k: along(truth, r) for k, r in rows.items()},
            "given_first": {name: {k: along(c, r) for k, r in rows.items()} for name, c in given.items()},
            "sampled": {name: {k: along(c, r) for k, r in rows.items()} for name, c in samples.items()},
            "sample_steps": steps, "guidance": guidance}


def caption_change(true: tuple[torch.Tensor, torch.Tensor], other: tuple[torch.Tensor, torch.Tensor]) -> dict:
    """How far apart two batches of caption embeddings are, (emb [N, L, D], mask [N, L]) each: mean over the
    captions of equal token count of the relative L2 distance and of the most changed token's cosine."""
    dist, cos_min = [], []
    for e, m, f, k in zip(*true, *other):
        if int(m.sum()) != int(k.sum()):
            continue
        a, b = e[m], f[k]  # [L_i, D]
        dist.append(float((a - b).norm() / a.norm()))
        cos_min.append(float(torch.nn.functional.cosine_similarity(a, b, dim=-1).min()))
    return {"captions": len(dist), "rel_l2": float(np.mean(dist)) if dist else float("nan"),
            "min_token_cos": float(np.mean(cos_min)) if cos_min else float("nan")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(ROOT / "chronotope" / "assets" / "world-model"),
                        help="model folder (model_index.json, vae/, dit/); default: the shipped one")
    parser.add_argument("--num", type=int, default=48, help="fresh clips (default 48)")
    parser.add_argument("--seed", type=int, default=20_000_000, help="first World scene seed (default 20,000,000)")
    parser.add_argument("--objects", type=int, choices=(1, 2, 3), default=None,
                        help="only scenes with this many objects (default: any, 1 to 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--sample-steps", type=int, default=20,
                        help="sampler steps of the text-to-video direction measure (default 20; 0 skips it)")
    parser.add_argument("--starts", choices=("behind", "anywhere"), default="behind",
                        help="where the direction measures' one-object clips start: on the side they come from, as "
                        "World clips do (default), or anywhere in view (`chronotope world --starts`)")
    parser.add_argument("--out", default=None, help="also write the numbers to this JSON file")
    args = parser.parse_args()
    if args.num < 2:
        raise SystemExit("--num must be >= 2 (frames-swap borrows frames from another clip)")
    res = probe(args.model, args.num, args.seed, threads=args.threads, objects=args.objects,
                sample_steps=args.sample_steps, starts=args.starts)
    names = ("true", "motion-swap", "color-swap", "empty", "frames-swap")
    print(f"{res['clips']} fresh clips ({args.objects or '1 to 3'} objects), model {res['model']}")
    print("t     " + "".join(f"{n:>20}" for n in names))
    for t, row in res["loss"].items():
        cells = [f"{row['true']:.4f}".rjust(20)]
        cells += [f"{row[n]:.4f} ({100 * (row[n] / row['true'] - 1):+.1f}%)".rjust(20) for n in names[1:]]
        print(f"{t:<6}" + "".join(cells))
    for name, c in res["text_change"].items():
        print(f"text encoder, {name}: caption embeddings {100 * c['rel_l2']:.1f}% apart (relative L2), most changed "
              f"token's cosine {c['min_token_cos']:.2f} ({c['captions']} captions of equal token count)")
    d = res["drift"]
    print(f"direction read from the caption alone (t = 1, {d['clips']} one-object clips starting {res['starts']}): the predicted object moves "
          f"{d['predicted']['all']:+.2f} latent cells along the caption's direction (horizontal {d['predicted']['horizontal']:+.2f}, "
          f"vertical {d['predicted']['vertical']:+.2f}); the clips themselves {d['truth']['all']:+.2f}")
    g = d["given_first"]
    print(f"given the clip's first latent frame (image-to-video, the rest at t = 1): {g['true']['all']:+.2f} cells along "
          f"the caption's direction (horizontal {g['true']['horizontal']:+.2f}, vertical {g['true']['vertical']:+.2f}); "
          f"with every direction swapped in the caption {g['motion-swap']['all']:+.2f} (a model that reads direction "
          f"moves the object the other way: negative)")
    if d["sampled"]:
        s = d["sampled"]
        print(f"text-to-video samples ({d['sample_steps']} steps, guidance {d['guidance']:g}): {s['true']['all']:+.2f} cells "
              f"along the caption's direction (horizontal {s['true']['horizontal']:+.2f}, vertical {s['true']['vertical']:+.2f}); "
              f"with every direction swapped {s['motion-swap']['all']:+.2f} (reading direction: negative)")
    if args.out:
        from chronotope.atomic import atomic_write_json

        atomic_write_json(Path(args.out), res)


if __name__ == "__main__":
    main()
