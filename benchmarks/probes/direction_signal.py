"""How much a one-mover latent cache rewards reading direction words, and whether the pieces to read them exist.

On the cache's 1:1, 17-frame one-object clips whose object moves left, right, up or down
(5 x 8 x 8 latent cells each), this prints:

    start side    each direction's mean start and end centroid (latent cells): where a mover starts tells
                  where it goes, so any frame that shows the object gives its path away
    signal        the latents' variance per element left after subtracting the mean of clips with the same
                  background, and with the same background and direction (or object color): what knowing
                  the words is worth where nothing else is known (t = 1)
    text          a linear classifier from the mean-pooled caption embedding to the direction, trained on
                  three quarters of the cache's one-mover captions (any size and length), accuracy on the
                  rest: do the words carry direction at all
    mlp           with --mlp: the plainest learner of the t = 1 target, an MLP from (pooled caption, each token's
                  position features) straight to the clean latent, trained by squared error on three quarters
                  of the clips; its held-out loss and each direction's predicted start and end centroid
    positions     with --model: a linear read-out of each token's (t, h, w) from the DiT's residual stream
                  after every other block, at t = 0.5 and t = 1 (R^2 on held-out tokens): does it know where
                  a token is when its input is noise

    .venv/bin/python benchmarks/direction_signal.py --cache data/dir1-cache [--model chronotope/assets/world-model] [--mlp]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the other probes

DIRECTIONS = ("left", "right", "up", "down")


def load_movers(cache_dir: str) -> tuple[torch.Tensor, list[dict], list[tuple[str, str]]]:
    """Latents [N, C, 5, 8, 8] and specs' single objects (+ background) of the cache's 1:1 17-frame one-mover
    clips, and (caption, direction) of its one-mover clips of every size and length."""
    from chronotope.data.latent_cache import LatentCache

    cache = LatentCache(cache_dir)
    latents, objects, captions = [], [], []
    for i, row in enumerate(cache.rows):
        spec = json.loads(row["spec"])
        if len(spec["objects"]) != 1 or spec["objects"][0]["motion"] not in DIRECTIONS:
            continue
        captions.append((row["text"], spec["objects"][0]["motion"]))
        if list(row["shape"][1:]) == [5, 8, 8]:
            latents.append(cache[i]["latent"])
            objects.append({**spec["objects"][0], "background": spec["background"], "caption_idx": len(captions) - 1})
    if len(latents) < 8:
        raise SystemExit(f"{cache_dir} holds {len(latents)} one-object 1:1 17-frame clips moving left/right/up/down; "
                         "need at least 8 (encode a `chronotope world --objects 1 --motions left,right,up,down` set)")
    return torch.stack(latents), objects, captions


def residual(x: torch.Tensor, keys: list) -> float:
    """Variance per element of x [N, ...] left after subtracting each group's mean (groups by key)."""
    groups = defaultdict(list)
    for i, k in enumerate(keys):
        groups[k].append(i)
    return float(sum(((x[g] - x[g].mean(0)) ** 2).sum() for g in groups.values()) / x.numel())


def text_probe(pooled: torch.Tensor, labels: torch.Tensor, steps: int = 300) -> float:
    """Held-out accuracy of a linear classifier on mean-pooled caption embeddings [N, D] (last quarter held out)."""
    x = (pooled - pooled.mean(0)) / pooled.std(0).clamp_min(1e-6)
    n = len(labels) * 3 // 4
    w = torch.zeros(x.shape[1], len(DIRECTIONS), requires_grad=True)
    b = torch.zeros(len(DIRECTIONS), requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x[:n] @ w + b, labels[:n]) + 1e-3 * w.square().sum()
        loss.backward()
        opt.step()
    return float(((x[n:] @ w + b).argmax(1) == labels[n:]).float().mean())


def pooled_captions(captions: list[str]) -> torch.Tensor:
    """Mean-pooled MiniLM embeddings [N, 384] of `captions`: each caption's valid tokens averaged (MiniLM's own
    sentence embedding)."""
    from chronotope.text.encoder import TextEncoder

    def pooled(text: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # [n, Lt, D], [n, Lt] -> [n, D]
        m = mask.to(text.dtype)[..., None]
        return (text * m).sum(1) / m.sum(1).clamp_min(1.0)

    encoder = TextEncoder()
    with torch.no_grad():
        return torch.cat([pooled(*encoder.encode(captions[i:i + 256])) for i in range(0, len(captions), 256)])


def mlp_regression(x: torch.Tensor, pooled: torch.Tensor, steps: int = 3000, batch: int = 8) -> tuple[dict, torch.Tensor]:
    """Fit an MLP (pooled caption, position features) -> clean latent on the first three quarters of x [N, C, 5, 8, 8];
    returns held-out losses (every 1,000 steps, and of the plain training mean) and its held-out predictions."""
    from chronotope.dit.embeddings import position_features

    torch.manual_seed(0)
    N, C, T, H, W = x.shape
    step = 4.0 / min(H, W)  # the shipped DiT's positions: spatial ids x pos_ref (4) / min side ("min_side")
    axes = [torch.arange(n, dtype=torch.float32) * d for n, d in ((T, 1.0), (H, step), (W, step))]
    grid = torch.meshgrid(*axes, indexing="ij")
    feats = position_features(torch.stack(grid, -1).reshape(-1, 3), 32)  # [T*H*W, 96]
    net = torch.nn.Sequential(torch.nn.Linear(pooled.shape[1] + feats.shape[1], 256), torch.nn.GELU(),
                              torch.nn.Linear(256, 256), torch.nn.GELU(), torch.nn.Linear(256, C))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)

    def run(idx: torch.Tensor) -> torch.Tensor:
        inp = torch.cat([pooled[idx, None].expand(-1, len(feats), -1), feats.expand(len(idx), -1, -1)], -1)
        return net(inp).reshape(len(idx), T, H, W, C).permute(0, 4, 1, 2, 3)  # [n, C, T, H, W]

    train, held = torch.arange(N * 3 // 4), torch.arange(N * 3 // 4, N)
    losses = {"plain mean": float((x[train].mean(0) - x[held]).square().mean())}
    for step in range(1, steps + 1):
        b = train[torch.randint(len(train), (batch,))]
        loss = (run(b) - x[b]).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 1000 == 0:
            with torch.no_grad():
                losses[f"step {step}"] = float((run(held) - x[held]).square().mean())
    with torch.no_grad():
        return losses, run(held)


@torch.no_grad()
def position_readout(model_dir: str, latents: torch.Tensor, ts: tuple[float, ...] = (0.5, 1.0)) -> dict:
    """R^2 of a least-squares read-out of each token's (t, h, w) id from the DiT's residual stream after
    blocks 1, 3, 5, ... (fit on even tokens, scored on odd ones), with every clip noised to t."""
    from chronotope.dit.patches import Sample, pack
    from chronotope.pipeline import VideoPipeline

    dit = VideoPipeline.from_pretrained(model_dir).dit
    x0 = latents[:24]
    N, n = x0.shape[0], x0.shape[2]
    text = (torch.zeros(N, 1, dit.config.text_dim), torch.zeros(N, 1, dtype=torch.bool))  # the null caption
    feats: dict[int, torch.Tensor] = {}
    hooks = [b.register_forward_hook(lambda m, i, o, k=k: feats.__setitem__(k, o)) for k, b in enumerate(dit.blocks)]
    out = {}
    for t in ts:
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
        packed = pack([Sample((1 - t) * x0[i] + t * noise[i], timestep=torch.full((n,), t), text_idx=i)
                       for i in range(N)], dit.config.patch)
        dit(packed, *text)
        ids = packed.ids.float()  # [L, 3]
        fit = torch.arange(ids.shape[0]) % 2 == 0
        rows = {}
        for k in range(1, len(dit.blocks), 2):
            h = torch.cat([feats[k], torch.ones(ids.shape[0], 1)], 1)  # [L, D + 1]
            w = torch.linalg.lstsq(h[fit], ids[fit]).solution  # [D + 1, 3]
            err = ((h[~fit] @ w - ids[~fit]) ** 2).mean(0) / ids[~fit].var(0)
            rows[f"block {k}"] = [float(1 - e) for e in err]
        out[f"{t:g}"] = rows
    for hook in hooks:
        hook.remove()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", required=True, help="latent cache folder holding one-mover clips")
    parser.add_argument("--model", default=None, help="also read token positions out of this model folder's DiT")
    parser.add_argument("--mlp", action="store_true", help="also fit the plain MLP of the t = 1 target (about 75 s)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from dit_probe import centroids

    x, objects, captions = load_movers(args.cache)
    motion = [o["motion"] for o in objects]
    print(f"{len(x)} one-mover clips (1:1, 17 frames) from {args.cache}")
    c = centroids(x)  # [N, 5, 2]
    for d in DIRECTIONS:
        rows = [i for i, m in enumerate(motion) if m == d]
        (sx, sy), (dx, dy), (ex, ey) = c[rows, 0].mean(0).tolist(), c[rows, 0].std(0).tolist(), c[rows, -1].mean(0).tolist()
        print(f"start side  {d:5s} n={len(rows):4d}  start (x, y) {sx:.2f}, {sy:.2f} (sd {dx:.2f}, {dy:.2f})  end {ex:.2f}, {ey:.2f}")
    bg = [o["background"] for o in objects]
    base = residual(x, bg)
    for name, keys in (("direction", [(b, m) for b, m in zip(bg, motion)]),
                       ("object color", [(b, o["color"]) for b, o in zip(bg, objects)])):
        print(f"signal      variance per element left: background {base:.3f} -> + {name} {residual(x, keys):.3f} "
              f"(total {float(x.var()):.3f})")
    pooled = pooled_captions([text for text, _ in captions])  # [all one-movers, 384], encoded once
    labels = torch.tensor([DIRECTIONS.index(m) for _, m in captions])
    accuracy = text_probe(pooled, labels)
    print(f"text        pooled caption -> direction, linear, held-out accuracy {accuracy:.3f} "
          f"({len(captions) - len(captions) * 3 // 4} of {len(captions)} one-mover captions held out)")
    if args.mlp:
        losses, pred = mlp_regression(x, pooled[[o["caption_idx"] for o in objects]])
        print("mlp         held-out loss " + ", ".join(f"{k} {v:.3f}" for k, v in losses.items()))
        held = motion[len(x) * 3 // 4:]
        c_pred = centroids(pred)
        for d in DIRECTIONS:
            rows = [i for i, m in enumerate(held) if m == d]
            s, e = c_pred[rows, 0].mean(0).tolist(), c_pred[rows, -1].mean(0).tolist()
            print(f"mlp         {d:5s} predicted start (x, y) {s[0]:.2f}, {s[1]:.2f}  end {e[0]:.2f}, {e[1]:.2f}")
    if args.model:
        for t, rows in position_readout(args.model, x).items():
            print(f"positions   t = {t}: R^2 of (t, h, w) " + " | ".join(f"{k} {a:.2f} {b:.2f} {c_:.2f}" for k, (a, b, c_) in rows.items()))


if __name__ == "__main__":
    main()
