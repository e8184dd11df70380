"""Can the DiT read a direction word at all, when nothing else tells the path?

Four 17-frame 64x64 World clips of one object starting at the centre of a white frame, moving left, right,
up and down; their captions are drawn with the same wording seed, so they differ only in the motion
word. A DiT (the shipped one, or a fresh one of its config) trains on these four alone with the first
latent frame given clean and t ~ U(0.5, 1), and every `--every` steps the probe measures what it predicts
from the first frame (the rest at t = 1): how far the object's centroid moves along each caption's
direction, in latent cells (`dit_probe.centroids`; the clips themselves move about +2.7). A DiT that
cannot tie a motion word to a path stays near 0 for at least two of the four.

    .venv/bin/python benchmarks/direction_overfit.py [--fresh] [--steps 400] [--lr 3e-4]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the other probes

from dit_probe import AXIS, centroids  # noqa: E402

MOTIONS = ("left", "right", "up", "down")


def main() -> None:
    from chronotope.dit.model import DiT
    from chronotope.dit.patches import Sample, pack, unpack
    from chronotope.pipeline import VideoPipeline
    from chronotope.world.captions import detailed_caption
    from chronotope.world.render import render
    from chronotope.world.scene import Scene, SceneObject

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(ROOT / "chronotope" / "assets" / "world-model"),
                        help="model folder whose VAE, text encoder and DiT are used (default: the shipped one)")
    parser.add_argument("--fresh", action="store_true", help="train a freshly initialised DiT of the same config")
    parser.add_argument("--steps", type=int, default=400, help="optimizer steps (default 400)")
    parser.add_argument("--every", type=int, default=50, help="measure every N steps (default 50)")
    parser.add_argument("--lr", type=float, default=3e-4, help="AdamW learning rate (default 3e-4)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    pipe = VideoPipeline.from_pretrained(args.model)
    dit = DiT(pipe.dit.config) if args.fresh else pipe.dit
    scenes = [Scene("white", [SceneObject("red", "circle", "large", m, "fast", u0=0.0, v0=0.0)]) for m in MOTIONS]
    captions = [detailed_caption(s, np.random.default_rng([5, 2])) for s in scenes]
    with torch.no_grad():
        x0 = torch.stack([pipe.encode_video(render(s, 64, 64, 17, 8.0).frames) for s in scenes])  # [4, C, n, h, w]
    text = pipe.text_encoder.encode(captions)
    N, n = x0.shape[0], x0.shape[2]
    first = torch.zeros(n, dtype=torch.bool)
    first[0] = True
    axis = torch.tensor([AXIS[m] for m in MOTIONS])  # [4, 2]

    def along(z: torch.Tensor) -> np.ndarray:
        c = centroids(z)
        return ((c[:, -1] - c[:, 0]) * axis).sum(-1).numpy()

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x [N, C, n, h, w] with the first frame clean, per-clip t [N] -> velocity [N, C, n, h, w]."""
        samples = [Sample(x[i], timestep=torch.where(first, 0.0, float(t[i])), is_cond=first, text_idx=i)
                   for i in range(N)]
        packed = pack(samples, dit.config.patch)
        return torch.stack(unpack(packed, dit(packed, *text)))

    @torch.no_grad()
    def measure() -> np.ndarray:
        dit.eval()
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
        noise[:, :, 0] = x0[:, :, 0]
        x0_hat = noise - velocity(noise, torch.ones(N))
        x0_hat[:, :, 0] = x0[:, :, 0]
        dit.train()
        return along(x0_hat)

    for m, c in zip(MOTIONS, captions):
        print(f"{m:>5}: {c}")
    print("the clips move " + " ".join(f"{v:+.2f}" for v in along(x0)) + " latent cells along their captions' directions")
    print(f"{'step':>5} {'loss':>8}  given the first frame, along left / right / up / down")
    print(f"{0:>5} {'':>8}  " + " ".join(f"{v:+.2f}" for v in measure()))
    opt = torch.optim.AdamW(dit.parameters(), lr=args.lr, weight_decay=0.0)
    gen, start = torch.Generator().manual_seed(1), time.time()
    for step in range(1, args.steps + 1):
        t = 0.5 + 0.5 * torch.rand(N, generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        x_t = (1 - t)[:, None, None, None, None] * x0 + t[:, None, None, None, None] * noise
        x_t[:, :, 0] = x0[:, :, 0]
        loss = (velocity(x_t, t) - (noise - x0))[:, :, 1:].square().mean()  # the given frame is not scored
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % args.every == 0:
            print(f"{step:>5} {loss.item():>8.4f}  " + " ".join(f"{v:+.2f}" for v in measure())
                  + f"   ({time.time() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
