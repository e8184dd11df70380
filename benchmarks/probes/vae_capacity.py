"""Is the VAE's reconstruction bounded by training steps or by the model? Fit the decoder to a few clips.

The encoder stays frozen (its latents are computed once); the decoder trains on the same N World clips it
is scored on (L1, AdamW, batch 4, constant lr). If it cannot reach a PSNR on clips it sees at every step,
more steps on more data will not reach it either: the decoder (or what the latents keep) is the limit.

    .venv/bin/python benchmarks/vae_capacity.py --vae chronotope/assets/world-model/vae --steps 600
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vae", default=str(ROOT / "chronotope/assets/world-model/vae"), help="VAE folder")
    p.add_argument("--clips", type=int, default=8, help="World clips, 17 frames at 64x64 (default 8)")
    p.add_argument("--steps", type=int, default=600, help="decoder steps (default 600)")
    p.add_argument("--lr", type=float, default=3e-4, help="AdamW learning rate (default 3e-4)")
    p.add_argument("--every", type=int, default=50, help="print PSNR every N steps (default 50)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = p.parse_args()
    if args.clips < 4 or args.steps < 1 or args.every < 1:
        p.error("--clips must be >= 4 (the batch) and --steps, --every >= 1")

    import torch

    from chronotope.vae.losses import psnr
    from chronotope.vae.model import CausalVAE
    from chronotope.world.generate import iter_world

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    vae = CausalVAE.from_pretrained(args.vae).float()
    clips = iter_world(args.clips, seed=555_000, height=64, width=64, num_frames=17)
    x = torch.stack([torch.from_numpy(f).permute(3, 0, 1, 2).float() / 127.5 - 1 for _, f in clips])  # [N, 3, 17, 64, 64]
    with torch.no_grad():
        z = vae.encode(x).mode()  # [N, latent, 5, 8, 8], fixed: only the decoder learns
    for param in vae.encoder.parameters():
        param.requires_grad_(False)
    vae.decoder.train()
    opt = torch.optim.AdamW(vae.decoder.parameters(), lr=args.lr)

    def mean_psnr() -> float:  # per clip, as benchmarks/vae.py scores, then the mean; outputs clamped to [-1, 1]
        with torch.no_grad():
            y = vae.decode(z).clamp(-1, 1)
        return sum(psnr(y[k], x[k]).item() for k in range(len(x))) / len(x)

    print(f"step 0: {mean_psnr():.2f} dB on the {args.clips} clips it trains on", flush=True)
    t0 = time.time()
    for step in range(1, args.steps + 1):
        i = torch.randperm(args.clips)[:4]
        loss = (vae.decode(z[i]) - x[i]).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % args.every == 0 or step == args.steps:
            print(f"step {step}: {mean_psnr():.2f} dB ({time.time() - t0:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
