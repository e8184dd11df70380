"""`chronotope reconstruct` and `encode`: the VAE as a tool (PSNR / SSIM, latent caches)."""

from __future__ import annotations

import argparse


def add_reconstruct(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reconstruct", help="encode and decode a video/image with a VAE, print PSNR / SSIM")
    p.add_argument("--vae", required=True, help="VAE folder (config.json + model.safetensors), e.g. RUN/vae")
    p.add_argument("input", help="video or image to reconstruct")
    p.add_argument("output", help="where to write the reconstruction (.mp4, .gif or .png)")
    p.add_argument("--num-frames", type=int, default=None, help="use the first N (4k+1) frames (default: all)")
    p.add_argument("--max-pixels", type=int, default=None, help="resize to this pixel budget (default: keep size)")
    p.add_argument("--chunk-frames", type=int, default=16, help="frames encoded per causal chunk (default 16)")
    p.add_argument("--chunk-latent-frames", type=int, default=1, help="latent frames decoded per chunk (default 1)")
    p.add_argument("--tile-size", type=int, default=None, help="spatial tile in pixels for large frames (default off)")
    p.set_defaults(handler=run_reconstruct)


def run_reconstruct(args: argparse.Namespace) -> int:
    import os
    import sys

    import numpy as np
    import torch

    from chronotope.data.dataset import budget_size, resize_crop
    from chronotope.request import arg, check_clip_frames
    from chronotope.vae.losses import psnr_from_mse, ssim
    from chronotope.vae.model import CausalVAE
    from chronotope.video import WRITE_EXTENSIONS, read_video, write_video

    if args.num_frames is not None:
        check_clip_frames("num_frames", args.num_frames)  # used as given or refused, never rounded down
    if args.max_pixels is not None and args.max_pixels < 256:
        raise ValueError(f"{arg('max_pixels', args.max_pixels)}: must be at least 256 (a 16x16 frame)")
    for flag, value in (("--chunk-frames", args.chunk_frames), ("--chunk-latent-frames", args.chunk_latent_frames)):
        if value < 1:
            raise ValueError(f"{flag} {value}: must be at least 1")
    if os.path.splitext(args.output)[1].lower() not in WRITE_EXTENSIONS:
        raise ValueError(f"output {args.output}: give a name ending in {', '.join(WRITE_EXTENSIONS)}")
    vae = CausalVAE.from_pretrained(args.vae)
    frames, fps = read_video(args.input, max_frames=args.num_frames)  # [T, H, W, 3] uint8
    if args.num_frames is not None and len(frames) < args.num_frames:
        raise ValueError(f"{args.input} has {len(frames)} frames, fewer than {arg('num_frames', args.num_frames)}")
    T4 = (len(frames) - 1) // 4 * 4 + 1  # a causal VAE codes 4k+1 frames
    if T4 < len(frames):
        print(f"note: using the first {T4} of the input's {len(frames)} frames (the causal VAE codes 4k+1 frames)",
              file=sys.stderr)
    frames = frames[:T4]
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()  # [T, 3, H, W]
    _, _, H, W = x.shape
    sf = vae.config.spatial_factor  # the VAE alone needs multiples of its spatial factor (no DiT patch here)
    h, w = budget_size(H, W, args.max_pixels) if args.max_pixels else (max(sf, H // sf * sf), max(sf, W // sf * sf))
    if (h, w) != (H, W):
        print(f"note: resized and center-cropped {W}x{H} -> {w}x{h} (the VAE codes multiples of {sf} pixels)",
              file=sys.stderr)
    x = (resize_crop(x, h, w).clamp(0, 255) / 127.5 - 1.0).permute(1, 0, 2, 3)[None]  # [1, 3, T, h, w]
    chunk = args.chunk_frames if x.shape[2] > 1 else None
    with torch.no_grad():
        z = vae.encode(x, chunk_frames=chunk, tile_size=args.tile_size).mode()  # [1, C, t, h/8, w/8]
        out, t0, mse_sum, ssim_sum = [], 0, 0.0, 0.0
        for piece in vae.decode_iter(z, args.chunk_latent_frames, tile_size=args.tile_size):  # [1, 3, n, h, w]
            ref = x[:, :, t0:t0 + piece.shape[2]]
            n = piece.shape[2]
            mse_sum += float((piece - ref).square().mean()) * n
            ssim_sum += float(ssim(ref, piece)) * n
            out.append(((piece[0].permute(1, 2, 3, 0) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy())
            t0 += n
    recon = np.concatenate(out)  # [T, h, w, 3]
    write_video(args.output, recon, fps=fps if fps > 0 else 8.0)
    T = recon.shape[0]
    value = psnr_from_mse(mse_sum / T)
    print(f"{args.input}: {T} frames {w}x{h} -> latent {tuple(z.shape[1:])} -> {args.output}")
    print(f"PSNR {value:.2f} dB  SSIM {ssim_sum / T:.4f}")
    return 0


def add_encode(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("encode", help="cache VAE latents of a manifest for DiT training (resumable)")
    p.add_argument("manifest", nargs="+", help="manifest CSV; several are cached as one set, in the order given")
    p.add_argument("--vae", required=True, help="VAE folder (config.json + model.safetensors), e.g. RUN/vae")
    p.add_argument("--out", required=True, help="cache folder (shards + index.jsonl + cache.json)")
    p.add_argument("--num-frames", type=int, default=17, help="frames per clip, 4k+1 (default 17)")
    p.add_argument("--max-pixels", type=int, default=4096, help="pixel budget H*W per frame (default 4096)")
    p.add_argument("--shard-size", type=int, default=256, help="items per safetensors shard (default 256)")
    p.add_argument("--dtype", choices=("float16", "bfloat16", "float32"), default="float16", help="stored dtype")
    p.add_argument("--chunk-frames", type=int, default=16,
                   help="frames encoded per causal chunk, 0 = whole clip (faster for short clips; default 16)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=run_encode)


def run_encode(args: argparse.Namespace) -> int:
    import os

    from chronotope.data.dataset import VideoDataset
    from chronotope.data.latent_cache import encode_to_cache
    from chronotope.data.manifest import read_manifest
    from chronotope.vae.model import CausalVAE

    if args.chunk_frames < 0:
        raise ValueError(f"--chunk-frames must be >= 0 (0 = whole clip), got {args.chunk_frames}")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    rows = [row for path in args.manifest for row in read_manifest(path)]  # paths resolved per manifest
    vae = CausalVAE.from_pretrained(args.vae)
    dataset = VideoDataset(rows, num_frames=args.num_frames, max_pixels=args.max_pixels, random_start=False)
    manifests = [os.path.abspath(m) for m in args.manifest]
    settings = {"manifest": manifests[0] if len(manifests) == 1 else manifests, "num_frames": args.num_frames,
                "max_pixels": args.max_pixels}
    counts = encode_to_cache(vae, dataset, args.out, vae_dir=os.path.abspath(args.vae), shard_size=args.shard_size,
                             dtype=args.dtype, settings=settings, progress=not args.no_progress,
                             encode_kwargs={"chunk_frames": args.chunk_frames or None})
    print(f"{args.out}: {counts['items']} items in {counts['shards']} shards ({counts['encoded_now']} encoded now), "
          f"{counts['failures']} unreadable (listed in cache.json)")
    return 0
