"""`chronotope reconstruct` and `encode`: the VAE as a tool (PSNR / SSIM, latent caches)."""

from __future__ import annotations

import argparse


def add_reconstruct(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "reconstruct", help="encode and decode a video/image with a VAE, print PSNR / SSIM",
        description="Encode and decode a video or image with a VAE, write the reconstruction and a sidecar OUT.json "
        "(PSNR, SSIM, notes), and print PSNR / SSIM. The clip streams through the VAE chunk by chunk (causal caches) "
        "and large frames are coded in spatial tiles, so memory does not grow with length or frame size; the time "
        "it will take is printed first when it is over a minute. An input the VAE reconstructs far below its usual "
        "PSNR is out of the model's domain, and a note says so.")
    p.add_argument("--vae", required=True, help="VAE folder (config.json + model.safetensors), e.g. RUN/vae")
    p.add_argument("input", help="video or image to reconstruct")
    p.add_argument("output", help="where to write the reconstruction (.mp4, .gif or .png)")
    p.add_argument("--num-frames", type=int, default=None, help="use the first N (4k+1) frames (default: all)")
    p.add_argument("--max-pixels", type=int, default=None, help="resize to this pixel budget (default: keep size)")
    p.add_argument("--chunk-frames", type=int, default=None,
                   help="frames encoded per causal chunk (default 16; fewer for frames larger than 384x384)")
    p.add_argument("--chunk-latent-frames", type=int, default=1, help="latent frames decoded per chunk (default 1)")
    p.add_argument("--tile-size", type=int, default=None,
                   help="spatial tile in pixels (default: automatic, tiles of at most 384 pixels a side for "
                   "larger frames; 0 = whole frames, whose memory grows with the frame size)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice, every core; on a busy machine 1 is often faster)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=run_reconstruct)


def run_reconstruct(args: argparse.Namespace) -> int:
    import os

    import numpy as np
    from tqdm.auto import tqdm

    from chronotope.atomic import atomic_write_json
    from chronotope.data.dataset import budget_size
    from chronotope.request import LONG_SECONDS, arg, check_clip_frames, format_duration, set_threads, vae_seconds
    from chronotope.vae.domain import domain_note
    from chronotope.vae.model import CausalVAE
    from chronotope.vae.reconstruct import chunk_frames_for, reconstruct, tile_for
    from chronotope.video import WRITE_EXTENSIONS, Mp4Writer, read_video, write_video

    if args.num_frames is not None:
        check_clip_frames("num_frames", args.num_frames)  # used as given or refused, never rounded down
    if args.max_pixels is not None and args.max_pixels < 256:
        raise ValueError(f"{arg('max_pixels', args.max_pixels)}: must be at least 256 (a 16x16 frame)")
    for flag, value, low in (("--chunk-frames", args.chunk_frames, 1), ("--tile-size", args.tile_size, 0),
                             ("--chunk-latent-frames", args.chunk_latent_frames, 1)):
        if value is not None and value < low:
            raise ValueError(f"{flag} {value}: must be at least {low}" + (" (0 = whole frames)" if low == 0 else ""))
    if os.path.splitext(args.output)[1].lower() not in WRITE_EXTENSIONS:
        raise ValueError(f"output {args.output}: give a name ending in {', '.join(WRITE_EXTENSIONS)}")
    set_threads(args.threads)
    vae = CausalVAE.from_pretrained(args.vae)
    tf, sf = vae.config.temporal_factor, vae.config.spatial_factor
    if args.chunk_frames is not None and args.chunk_frames % tf:
        raise ValueError(f"--chunk-frames {args.chunk_frames}: must be a multiple of the VAE's temporal factor {tf}")
    frames, fps = read_video(args.input, max_frames=args.num_frames)  # [T, H, W, 3] uint8, the source's size
    if args.num_frames is not None and len(frames) < args.num_frames:
        raise ValueError(f"{args.input} has {len(frames)} frames, fewer than {arg('num_frames', args.num_frames)}")
    notes: list[str] = []
    T = (len(frames) - 1) // tf * tf + 1  # a causal VAE codes 4k+1 frames
    if T < len(frames):
        _note(notes, f"using the first {T} of the input's {len(frames)} frames (the causal VAE codes 4k+1 frames)")
    frames = frames[:T]
    H, W = frames.shape[1:3]
    h, w = budget_size(H, W, args.max_pixels) if args.max_pixels else (max(sf, H // sf * sf), max(sf, W // sf * sf))
    if (h, w) != (H, W):
        _note(notes, f"resized and center-cropped {W}x{H} -> {w}x{h} (the VAE codes multiples of {sf} pixels)")
    tile, overlap = tile_for(h, w, sf, args.tile_size)
    seconds = vae_seconds(vae.config, T, h, w, tile, args.threads)
    if seconds > LONG_SECONDS:
        faster = f" ({arg('num_frames')} or {arg('max_pixels')} make it faster)" if T > 17 or h * w > 65536 else ""
        _note(notes, f"reconstructing {T} frames of {w}x{h} will take about {format_duration(seconds)} on this "
                     f"CPU{faster}")
    fps = fps if fps > 0 else 8.0
    mp4 = Mp4Writer(args.output, fps) if args.output.lower().endswith(".mp4") else None
    out: list[np.ndarray] = []
    bar = tqdm(total=T, desc="reconstruct", unit="frame", disable=args.no_progress)
    try:  # streamed: an mp4 is written chunk by chunk, and removed if anything fails
        psnr, ssim = reconstruct(vae, frames, h, w, tile=tile, overlap=overlap, chunk_frames=args.chunk_frames,
                                 chunk_latent_frames=args.chunk_latent_frames,
                                 write=mp4.write if mp4 is not None else out.append, progress=bar.update)
        mp4.close() if mp4 is not None else write_video(args.output, np.concatenate(out), fps=fps)
    except BaseException:
        if mp4 is not None:
            mp4.close(ok=False)
        raise
    finally:
        bar.close()
    text = domain_note(psnr, "the input")
    if text is not None:
        _note(notes, text)
    side = os.path.splitext(args.output)[0] + ".json"
    atomic_write_json(side, {"input": args.input, "output": args.output, "vae": args.vae, "num_frames": T,
                             "height": h, "width": w, "tile_size": list(tile) if isinstance(tile, tuple) else tile,
                             "chunk_frames": args.chunk_frames or chunk_frames_for(h, w, tf),
                             "psnr": round(psnr, 3), "ssim": round(ssim, 5), "notes": notes}, indent=2)
    print(f"{args.input}: {T} frames {w}x{h} -> latent {vae.latent_shape(T, h, w)} -> {args.output}")
    print(f"PSNR {psnr:.2f} dB  SSIM {ssim:.4f}")
    return 0


def _note(notes: list[str], text: str) -> None:
    import sys

    notes.append(text)
    print(f"note: {text}", file=sys.stderr)


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
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice, every core; on a busy machine 1 is often faster)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=run_encode)


def run_encode(args: argparse.Namespace) -> int:
    import os

    from chronotope.data.dataset import VideoDataset
    from chronotope.data.latent_cache import encode_to_cache
    from chronotope.data.manifest import read_manifest
    from chronotope.request import set_threads
    from chronotope.vae.model import CausalVAE

    if args.chunk_frames < 0:
        raise ValueError(f"--chunk-frames must be >= 0 (0 = whole clip), got {args.chunk_frames}")
    set_threads(args.threads)
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
