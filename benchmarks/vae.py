"""VAE benchmark: our `wan-match` CausalVAE against diffusers' AutoencoderKLWan(base_dim=32, z_dim=16).

Speed is encode+decode throughput measured side by side in this one run (same threads, fp32, random
weights, warm-up then median). Peak memory is the RSS growth of a fresh subprocess over its state
after building the model (torch's CPU allocations are invisible to tracemalloc). mem_long_vs_short
is that growth when decoding an 8x longer latent over a short one, frames written out as uint8.

    .venv/bin/python benchmarks/vae.py --quick            # ~minutes on 2 cores
    .venv/bin/python benchmarks/vae.py --vae runs/vae/vae # + PSNR of a trained VAE on World clips
    .venv/bin/python benchmarks/vae.py --vae runs/vae/vae --psnr-only   # the PSNR table alone
    .venv/bin/python benchmarks/vae.py --general chronotope/assets/vae-general --footage CLIPS --clip-720p CLIP
"""

from __future__ import annotations

import argparse
import json
import os
import resource  # fallback for peak RSS
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHUNK_FRAMES, CHUNK_LATENT = 4, 1  # ours codes in the same chunks as Wan (4 frames in, 1 latent frame out)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mb() -> float:
    """Peak RSS of this process image. Not ru_maxrss: Linux carries that over fork+exec from the parent."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _reset_peak() -> None:
    """Restart the peak-RSS count from the current RSS (Linux >= 4.0), so the peak is the measured step's."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def build(name: str):
    import torch

    torch.manual_seed(0)
    if name == "wan":
        from diffusers import AutoencoderKLWan

        return AutoencoderKLWan(base_dim=32, z_dim=16).eval()
    from chronotope.config import VAE_PRESETS
    from chronotope.vae.model import CausalVAE

    return CausalVAE(VAE_PRESETS["wan-match"]()).eval()


def roundtrip(name: str, model, x):
    """encode + decode one clip [1, 3, T, H, W]."""
    if name == "wan":
        return model.decode(model.encode(x).latent_dist.mode()).sample
    return model.decode(model.encode(x, chunk_frames=CHUNK_FRAMES).mode(), chunk_latent_frames=CHUNK_LATENT)


def stream_decode(name: str, model, z, out) -> None:
    """Decode latents [1, 16, t, h, w], writing uint8 frames to the file `out` as they come."""
    if name == "wan":
        chunks = [model.decode(z).sample]  # diffusers decodes the whole latent, then returns it
    else:
        chunks = model.decode_iter(z, chunk_latent_frames=1)
    for x in chunks:
        out.write(((x[0].permute(1, 2, 3, 0) + 1) * 127.5).round().clamp(0, 255).byte().numpy().tobytes())


def worker(spec: dict) -> dict:
    """One measurement in this (fresh) process: peak RSS growth of a round trip or a streamed decode."""
    import torch

    torch.set_num_threads(spec["threads"])
    model = build(spec["model"])
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        if spec["kind"] == "roundtrip":
            T, H, W = spec["shape"]
            x = torch.rand(1, 3, T, H, W, generator=g) * 2 - 1
            _reset_peak()
            base = _rss_mb()
            roundtrip(spec["model"], model, x)
        else:
            t, h, w = spec["shape"]
            z = torch.randn(1, 16, t, h, w, generator=g)
            _reset_peak()
            base = _rss_mb()
            with open(os.devnull, "wb") as out:
                stream_decode(spec["model"], model, z, out)
    return {"base_mb": base, "peak_mb": _peak_mb(), "delta_mb": _peak_mb() - base}


def measure(spec: dict) -> dict:
    cmd = [sys.executable, __file__, "--worker", json.dumps(spec)]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if res.returncode:
        raise RuntimeError(f"worker {spec} failed:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def speed(shape: tuple[int, int, int], repeats: int, threads: int) -> dict:
    """Median seconds per encode+decode, ours and Wan's, interleaved in this process."""
    import torch

    torch.set_num_threads(threads)
    models = {name: build(name) for name in ("ours", "wan")}
    x = torch.rand(1, 3, *shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for name, model in models.items():  # warm-up
            roundtrip(name, model, x)
        for _ in range(repeats):
            for name, model in models.items():
                t0 = time.perf_counter()
                roundtrip(name, model, x)
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(v) for name, v in times.items()} | {"all": times}


# held-out World shapes: (aspect ratio, frames); fresh seeds, never training data (that starts at seed 1000)
WORLD_EVAL = [("1:1", 17), ("16:9", 17), ("9:16", 17), ("4:3", 33), ("1:1", 1)]
TEST_SOURCES = ["testsrc2", "mandelbrot", "smptebars"]  # ffmpeg lavfi sources: generalisation, no target
CEILING_KEYS = ("overall", "shape", "color", "motion")  # the targets; every attribute is recorded


def _roundtrip_uint8(vae, frames):
    """uint8 [T, H, W, 3] through the VAE (posterior mode) -> (input [1, 3, T, H, W], output clamped), in [-1, 1]."""
    import torch

    x = torch.from_numpy(frames).permute(3, 0, 1, 2)[None].float() / 127.5 - 1  # [1, 3, T, H, W]
    return x, vae.decode(vae.encode(x).mode()).clamp(-1, 1)


def psnr_world(vae_dir: str, per_shape: int = 8, resolution: str = "64px", vae=None) -> dict:
    """Reconstruction PSNR (dB, posterior mode, clamped) of a trained VAE on held-out World clips of several
    aspect ratios and lengths at `resolution`, and on ffmpeg test sources at 64x64 if ffmpeg is installed.
    `vae`: an already loaded CausalVAE (e.g. a checkpoint's weights) instead of the folder."""
    import shutil

    import numpy as np
    import torch

    from chronotope.sizes import size_for
    from chronotope.vae.losses import psnr
    from chronotope.vae.model import CausalVAE
    from chronotope.world.generate import iter_world

    vae = (vae or CausalVAE.from_pretrained(vae_dir)).eval()

    def score(frames: np.ndarray) -> float:  # [T, H, W, 3] uint8
        return psnr(*_roundtrip_uint8(vae, frames)[::-1]).item()

    world: dict[str, float] = {}
    with torch.inference_mode():
        for k, (ratio, frames) in enumerate(WORLD_EVAL):
            h, w = size_for(resolution, ratio)
            clips = iter_world(per_shape, seed=987_654 + 1000 * k, height=h, width=w, num_frames=frames)
            world[f"{ratio} {frames}f {h}x{w}"] = statistics.mean(score(f) for _, f in clips)
        other: dict[str, float] = {}
        if shutil.which("ffmpeg") and resolution == "64px":
            for src in TEST_SOURCES:
                raw = subprocess.run(
                    ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", f"{src}=size=64x64:rate=8", "-frames:v", "17",
                     "-f", "rawvideo", "-pix_fmt", "rgb24", "-"], capture_output=True, check=True).stdout
                other[src] = score(np.frombuffer(raw, np.uint8).reshape(17, 64, 64, 3).copy())
    cfg = vae.config
    return {"psnr_world": statistics.mean(world.values()), "world": world, "ffmpeg_sources": other,
            "compression": cfg.compression, "vae": str(vae_dir), "resolution": resolution}


def vae_ceiling(vae_dir: str, num: int = 200, resolution: str = "64px", vae=None) -> dict:
    """World-bench's t2v prompts (the same fresh seeds and sizes as `bench generate-and-score --num num`):
    each scene's ground-truth render scored as it is and after the VAE (encode, decode). The VAE's scores
    are the most any DiT on its latents can reach. Means per attribute over the prompts that score it."""
    import numpy as np
    import torch

    from chronotope.bench.generate import BenchConfig, plan_prompts
    from chronotope.bench.score import ATTRIBUTES, score_video
    from chronotope.vae.model import CausalVAE
    from chronotope.world import render, sample_scene

    vae = (vae or CausalVAE.from_pretrained(vae_dir)).eval()
    fps = 8.0
    sums = {side: {k: [] for k in ("overall",) + ATTRIBUTES} for side in ("ground_truth", "vae")}
    with torch.inference_mode():
        for p in plan_prompts(BenchConfig(out="", num=num, resolution=resolution)):
            gt = render(sample_scene(p.scene_seed, include_heldout=p.heldout), p.height, p.width, p.num_frames,
                        fps).frames  # [T, H, W, 3] uint8
            y = _roundtrip_uint8(vae, gt)[1]
            recon = ((y[0].permute(1, 2, 3, 0) + 1) * 127.5).round().to(torch.uint8).numpy()
            for side, frames in (("ground_truth", gt), ("vae", np.ascontiguousarray(recon))):
                scores = score_video(frames, p.spec, fps=fps)
                for k, values in sums[side].items():
                    if scores.get(k) is not None:
                        values.append(float(scores[k]))
    mean = {side: {k: statistics.mean(v) if v else None for k, v in d.items()} for side, d in sums.items()}
    return {"prompts": num, "resolution": resolution, "ground_truth": mean["ground_truth"], "vae": mean["vae"],
            "vae_dir": str(vae_dir)}


def vae_quality(vae_dir: str, resolution: str = "64px", ceiling_prompts: int = 200, vae=None) -> dict:
    """psnr_world and the World-bench ceiling of one VAE folder (or of `vae`, loaded already), each printed as
    it is measured."""
    quality = psnr_world(vae_dir, resolution=resolution, vae=vae)
    for name, value in {**quality["world"], **quality["ffmpeg_sources"]}.items():
        print(f"PSNR {name:<28} {value:6.2f} dB", flush=True)
    quality["ceiling"] = vae_ceiling(vae_dir, ceiling_prompts, resolution, vae=vae)
    for side in ("ground_truth", "vae"):
        row = "  ".join(f"{k} {quality['ceiling'][side][k]:.3f}" for k in CEILING_KEYS)
        print(f"World-bench {side:<13} {row}  ({ceiling_prompts} t2v prompts)", flush=True)
    return quality


def quality_keys(quality: dict | None) -> dict:
    """The top-level keys of vae.json that vae_quality decides ("not measured" without a VAE)."""
    if quality is None:
        return {"psnr_world": "not measured", "vae_ceiling_shape": "not measured", "quality": None}
    return {"psnr_world": f"{quality['psnr_world']:.2f}",
            "vae_ceiling_shape": f"{quality['ceiling']['vae']['shape']:.3f}",
            "vae_ceiling": {k: quality["ceiling"]["vae"][k] for k in CEILING_KEYS}, "quality": quality}


# --- the general-purpose VAE: PSNR / SSIM on the World, FFmpeg test sources and real footage --------------------

GENERAL_RESULT = ROOT / "benchmarks" / "results" / "vae-general.json"
FOOTAGE_FRAMES, FOOTAGE_PIXELS = 33, 128 * 128  # what `chronotope reconstruct --num-frames 33 --max-pixels 16384` codes
GENERAL_SPEED_SHAPES = [(17, 64, 64), (33, 128, 128)]


def _scores(vae, frames, height: int | None = None, width: int | None = None) -> tuple[float, float]:
    """(PSNR dB, SSIM) of uint8 frames [T, H, W, 3] through the VAE as `chronotope reconstruct` codes them
    (streamed, causal chunks, tiles past 384 px), at height x width (default: the frames' size)."""
    from chronotope.vae.reconstruct import reconstruct, tile_for

    h, w = height or frames.shape[1], width or frames.shape[2]
    tile, overlap = tile_for(h, w, vae.config.spatial_factor)
    return reconstruct(vae, frames, h, w, tile=tile, overlap=overlap)


def general_quality(vae_dir: str, footage: list[str], per_shape: int = 4) -> dict:
    """PSNR / SSIM of one VAE folder on held-out World clips (psnr_world's seeds and shapes), FFmpeg's lavfi
    test sources (through PyAV, 17 frames of 64x64) and each real footage file (its first 33 frames at a
    16,384-pixel budget, as `chronotope reconstruct --num-frames 33 --max-pixels 16384`)."""
    import torch

    from chronotope.data.dataset import budget_size
    from chronotope.data.synthetic import lavfi_clip
    from chronotope.sizes import size_for
    from chronotope.vae.model import CausalVAE
    from chronotope.video import read_video
    from chronotope.world.generate import iter_world

    vae = CausalVAE.from_pretrained(vae_dir).eval()
    out: dict = {"vae": _repo_path(vae_dir), "compression": vae.config.compression, "world": {}, "sources": {},
                 "footage": {}}
    with torch.inference_mode():
        for k, (ratio, frames) in enumerate(WORLD_EVAL):
            h, w = size_for("64px", ratio)
            s = [_scores(vae, f) for _, f in iter_world(per_shape, seed=987_654 + 1000 * k, height=h, width=w,
                                                        num_frames=frames)]
            out["world"][f"{ratio} {frames}f {h}x{w}"] = [statistics.mean(v) for v in zip(*s)]
        for src in TEST_SOURCES:
            out["sources"][src] = list(_scores(vae, lavfi_clip(src, 17, 64, 64)))
        for path in footage:
            frames, _ = read_video(path, max_frames=FOOTAGE_FRAMES)
            h, w = budget_size(frames.shape[1], frames.shape[2], FOOTAGE_PIXELS)
            out["footage"][Path(path).name] = list(_scores(vae, frames, h, w)) + [f"{w}x{h}"]
    for group in ("world", "sources", "footage"):
        values = list(out[group].values())
        out[f"{group}_mean"] = [statistics.mean(v[0] for v in values), statistics.mean(v[1] for v in values)] \
            if values else None
    return out


def _repo_path(path: str) -> str:
    p = Path(path).resolve()
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(path)


def peak_720p(vae_dir: str, clip: str, threads: int) -> dict:
    """Peak RSS (MB) of a fresh `chronotope reconstruct` of the first 33 frames of a 720p clip (the whole
    process: interpreter, torch, model, video decoding and writing), and its wall time."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "chronotope.cli", "reconstruct", "--vae", vae_dir, clip, f"{tmp}/out.mp4",
               "--num-frames", "33", "--threads", str(threads), "--no-progress"]
        t0 = time.perf_counter()
        res = subprocess.run([sys.executable, "-c", _PEAK_WRAPPER, *cmd], capture_output=True, text=True,
                             cwd=ROOT)
        seconds = time.perf_counter() - t0
    if res.returncode:
        raise RuntimeError(f"720p reconstruct failed:\n{res.stderr[-2000:]}")
    peak_kb, psnr_line = res.stdout.strip().splitlines()[-1], [ln for ln in res.stdout.splitlines() if "PSNR" in ln]
    return {"clip": Path(clip).name, "peak_mb": int(peak_kb) / 1024, "seconds": seconds, "threads": threads,
            "result": psnr_line[-1] if psnr_line else ""}


# runs a command and prints its peak RSS in KiB (ru_maxrss of the waited child) as the last line
_PEAK_WRAPPER = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
                 "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) if r.returncode == 0 "
                 "else sys.exit(r.returncode)")


def general_speed(vae_dir: str, threads: int, repeats: int = 2) -> dict:
    """Median seconds per encode+decode of random clips: the trained VAE against diffusers' AutoencoderKLWan
    (random weights) at base_dim = the VAE's first width, z_dim 16, interleaved in this process."""
    import torch
    from diffusers import AutoencoderKLWan

    from chronotope.vae.model import CausalVAE

    torch.set_num_threads(threads)
    ours = CausalVAE.from_pretrained(vae_dir).eval()
    torch.manual_seed(0)
    wan = AutoencoderKLWan(base_dim=ours.config.widths[0], z_dim=16).eval()
    result = {"wan_base_dim": ours.config.widths[0], "threads": threads}
    with torch.inference_mode():
        for shape in GENERAL_SPEED_SHAPES:
            x = torch.rand(1, 3, *shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
            times: dict[str, list[float]] = {"ours": [], "wan": []}
            for name, model in (("ours", ours), ("wan", wan)):
                roundtrip(name, model, x)  # warm-up
            for _ in range(repeats):
                for name, model in (("ours", ours), ("wan", wan)):
                    t0 = time.perf_counter()
                    roundtrip(name, model, x)
                    times[name].append(time.perf_counter() - t0)
            result["x".join(map(str, shape))] = {k: statistics.median(v) for k, v in times.items()}
    return result


def general_table(vaes: dict[str, str], footage: list[str], clip_720p: str | None, threads: int) -> dict:
    """The general VAE's report (vaes: column name -> folder, the general VAE last): quality of each, speed and
    720p peak memory of the last; printed as a table and written to benchmarks/results/vae-general.json."""
    from chronotope.atomic import atomic_write_json

    quality = {name: general_quality(d, footage) for name, d in vaes.items()}
    last = list(vaes)[-1]
    result: dict = {"quality": quality, "footage_frames": FOOTAGE_FRAMES, "footage_pixels": FOOTAGE_PIXELS}
    result["speed"] = general_speed(vaes[last], threads)
    result["peak_720p"] = peak_720p(vaes[last], clip_720p, threads) if clip_720p else None
    names = list(vaes)
    print(f"{'PSNR dB / SSIM':<34}" + "".join(f"{n:>22}" for n in names))
    for group in ("world", "sources", "footage"):
        for key in quality[names[0]][group]:
            cells = "".join(f"{quality[n][group][key][0]:>13.2f} / {quality[n][group][key][1]:.3f}" for n in names)
            print(f"{group + ' ' + key:<34}{cells}")
    for speed_key in (k for k in result["speed"] if "x" in k and k[0].isdigit()):
        s = result["speed"][speed_key]
        print(f"enc+dec {speed_key}: {last} {s['ours']:.2f} s, AutoencoderKLWan(base_dim="
              f"{result['speed']['wan_base_dim']}) {s['wan']:.2f} s ({threads} thread(s))")
    if result["peak_720p"]:
        p = result["peak_720p"]
        print(f"33 frames of 720p ({p['clip']}): peak RSS {p['peak_mb']:.0f} MB, {p['seconds']:.0f} s; {p['result']}")
    atomic_write_json(GENERAL_RESULT, result, indent=2)
    return result


RESULT = ROOT / "benchmarks" / "results" / "vae.json"


def write_result(result: dict) -> None:
    """benchmarks/results/vae.json, written atomically."""
    from chronotope.atomic import atomic_write_json

    atomic_write_json(RESULT, result, indent=2)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="17x64x64 only, fewer repeats, 64x64 memory test")
    p.add_argument("--vae", help="trained VAE folder: psnr_world and the World-bench ceiling")
    p.add_argument("--psnr-only", action="store_true",
                   help="with --vae: only its quality (PSNR table and ceiling; no speed/memory)")
    p.add_argument("--resolution", default="64px", help="World resolution of the quality measures (default 64px)")
    p.add_argument("--ceiling-prompts", type=int, default=200,
                   help="World-bench t2v prompts for the ceiling (default 200, as the published bench)")
    p.add_argument("--threads", type=int, default=torch_threads())
    p.add_argument("--general", metavar="VAE_DIR", help="the general VAE's table (vae-general.json) against the "
                   "shipped World VAE: World, FFmpeg test sources, --footage, speed, --clip-720p memory")
    p.add_argument("--footage", nargs="*", default=[], help="with --general: real videos to score (evaluation only)")
    p.add_argument("--clip-720p", default=None, help="with --general: a 1280x720 video for the peak-memory row")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    if args.general:
        world_vae = str(ROOT / "chronotope" / "assets" / "world-model" / "vae")
        general_table({"world VAE": world_vae, "general VAE": args.general}, args.footage, args.clip_720p,
                      args.threads)
        return 0
    if args.psnr_only and not args.vae:
        raise SystemExit("--psnr-only needs --vae DIR (a trained VAE folder)")
    if args.ceiling_prompts < 1:
        raise SystemExit(f"--ceiling-prompts must be >= 1, got {args.ceiling_prompts}")
    quality = vae_quality(args.vae, args.resolution, args.ceiling_prompts) if args.vae else None
    if args.psnr_only:
        old = json.loads(RESULT.read_text()) if RESULT.is_file() else {}  # keep the speed/memory keys
        write_result({**old, **quality_keys(quality)})
        print(f"vae: psnr_world={quality['psnr_world']:.2f} vae_ceiling_shape={quality['ceiling']['vae']['shape']:.3f} "
              f"at {quality['compression']:.0f}x compression")
        return 0

    shapes = [(17, 64, 64)] if args.quick else [(17, 64, 64), (65, 128, 128)]
    result: dict = {"threads": args.threads, "speed": {}, "memory": {}}
    rows = []
    ratios = []
    for shape in shapes:
        repeats = 3 if shape[0] * shape[1] * shape[2] <= 17 * 64 * 64 else 2
        s = speed(shape, repeats, args.threads)
        mem = {name: measure({"model": name, "kind": "roundtrip", "shape": shape, "threads": args.threads})
               for name in ("ours", "wan")}
        key = "x".join(map(str, shape))
        ratio = s["wan"] / s["ours"]
        ratios.append(ratio)
        result["speed"][key] = {"ours_s": s["ours"], "wan_s": s["wan"], "ours_clips_per_s": 1 / s["ours"],
                                "wan_clips_per_s": 1 / s["wan"], "speed_vs_wan": ratio, "times": s["all"],
                                "ours_peak_mb": mem["ours"]["delta_mb"], "wan_peak_mb": mem["wan"]["delta_mb"]}
        rows.append((f"enc+dec {key}", f"{1 / s['ours']:.3f} clips/s", f"{1 / s['wan']:.3f} clips/s", f"{ratio:.2f}x"))
        rows.append((f"peak RSS growth {key}", f"{mem['ours']['delta_mb']:.0f} MB", f"{mem['wan']['delta_mb']:.0f} MB",
                     f"{mem['ours']['delta_mb'] / max(mem['wan']['delta_mb'], 1e-9):.2f}x"))

    h = 8 if args.quick else 16  # latent side: 64x64 or 128x128 frames
    short, long = 4, 32  # latent frames: 13 and 125 frames (past the allocator warm-up of the first chunks)
    mem = {(name, t): measure({"model": name, "kind": "decode", "shape": (t, h, h), "threads": args.threads})
           for name in ("ours", "wan") for t in (short, long)}
    mem_ratio = {n: mem[(n, long)]["delta_mb"] / max(mem[(n, short)]["delta_mb"], 1e-9) for n in ("ours", "wan")}
    result["memory"] = {"frame_size": h * 8, "short_latent_frames": short, "long_latent_frames": long,
                        **{f"{n}_{'long' if t == long else 'short'}_mb": m["delta_mb"] for (n, t), m in mem.items()},
                        "ours_long_vs_short": mem_ratio["ours"], "wan_long_vs_short": mem_ratio["wan"]}
    rows.append((f"decode {long}/{short} latent frames, mem ratio",
                 f"{mem_ratio['ours']:.2f}x", f"{mem_ratio['wan']:.2f}x", ""))

    speed_vs_wan = min(ratios)
    result.update({"speed_vs_wan": speed_vs_wan, "mem_long_vs_short": mem_ratio["ours"], **quality_keys(quality),
                   "quick": args.quick,
                   "chunking": {"encode_chunk_frames": CHUNK_FRAMES, "decode_chunk_latent_frames": CHUNK_LATENT}})

    print(f"{'measure':<40} {'ours':>14} {'wan':>14} {'ratio':>8}")
    for r in rows:
        print(f"{r[0]:<40} {r[1]:>14} {r[2]:>14} {r[3]:>8}")
    write_result(result)
    print(f"vae: speed_vs_wan={speed_vs_wan:.2f} mem_long_vs_short={mem_ratio['ours']:.2f} "
          f"psnr_world={result['psnr_world']} vae_ceiling_shape={result['vae_ceiling_shape']}")
    return 0


def torch_threads() -> int:
    return int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1))


if __name__ == "__main__":
    sys.exit(main())
