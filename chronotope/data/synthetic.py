"""Synthetic general video: photographs and procedural textures under camera motion, and FFmpeg's test sources.

Material for a general-purpose VAE that needs no download: still photographs (e.g. the images scikit-image
ships) and 1/f noise textures are filmed by a synthetic camera that pans, zooms and rotates, with a second
layer moving over them in parallax (an elliptical cut-out of another picture); FFmpeg's lavfi sources
(testsrc2, mandelbrot, life, cellauto, ...) come through PyAV. Every clip is a function of its seed alone.
Real footage is for evaluation only and never enters here.

    frames = synthetic_clip(seed=3, num_frames=25, height=64, width=64, photos=load_photos(folder))  # uint8 [T, H, W, 3]
    python -m chronotope.data.synthetic --out data/synthetic --num 1200 --photos DIR   # mp4s + manifest.csv
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

KINDS = ("photo", "texture", "lavfi")
KIND_WEIGHTS = (0.55, 0.25, 0.20)  # photographs dominate: they are the nearest to camera footage
LAVFI_SOURCES = ("testsrc2", "mandelbrot", "life", "cellauto", "smptehdbars", "gradients", "sierpinski", "rgbtestsrc")
PHOTO_EXTENSIONS = (".png", ".jpg", ".jpeg")
MIN_PHOTO_SIDE = 64  # smaller pictures (icons, tiny test patterns) are skipped


def check_clip_size(num_frames: int, height: int, width: int) -> None:
    """ValueError unless num_frames >= 1 and height, width are even sizes of at least 16 pixels."""
    if not isinstance(num_frames, int) or num_frames < 1:
        raise ValueError(f"num_frames must be a positive integer, got {num_frames!r}")
    for name, size in (("height", height), ("width", width)):
        if not isinstance(size, int) or size < 16 or size % 2:
            raise ValueError(f"{name} must be an even integer of at least 16, got {size!r}")


def default_photo_folder() -> Path | None:
    """scikit-image's bundled data images when it is installed (the optional `general-vae` extra), else None."""
    try:
        import skimage.data
    except ImportError:
        return None
    folder = Path(skimage.data.__file__).parent
    return folder if folder.is_dir() else None


def load_photos(folder: str | os.PathLike, max_side: int = 512) -> list[np.ndarray]:
    """RGB uint8 pictures [H, W, 3] from a folder (sorted by name: a fixed order keeps clips reproducible),
    shrunk to at most max_side pixels a side; grayscale ones become RGB; tiny ones are skipped."""
    from PIL import Image

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"photo folder {folder} not found; give a folder of .png/.jpg pictures")
    photos = []
    for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in PHOTO_EXTENSIONS):
        with Image.open(path) as im:
            im = im.convert("RGB")
            if min(im.size) < MIN_PHOTO_SIDE:
                continue
            im.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
            photos.append(np.asarray(im, dtype=np.uint8).copy())
    return photos


def fractal_texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A colored 1/f^beta noise field [height, width, 3] uint8 (beta 1-3: from grainy to cloudy), built as a sum
    of octaves of upsampled white noise mixed by a random color matrix."""
    beta = rng.uniform(1.0, 3.0)
    field = torch.zeros(3, height, width)
    size = 4
    while size <= 2 * max(height, width):
        noise = torch.from_numpy(rng.standard_normal((1, 3, size, size)).astype(np.float32))
        field += F.interpolate(noise, size=(height, width), mode="bicubic", align_corners=False)[0] * size ** (-beta / 2)
        size *= 2
    field = (field - field.mean()) / field.std().clamp_min(1e-6)  # [3, H, W], unit variance
    mix = torch.from_numpy(rng.normal(0, 0.5, (3, 3)).astype(np.float32)) + torch.eye(3) * rng.uniform(0.3, 1.0)
    color = torch.einsum("ij,jhw->ihw", mix, field)  # [3, H, W]
    color = color * rng.uniform(30, 70) + torch.from_numpy(rng.uniform(40, 215, (3, 1, 1)).astype(np.float32))
    return color.clamp(0, 255).round().byte().permute(1, 2, 0).numpy()


def _canvas(rng: np.random.Generator, photos: Sequence[np.ndarray], kind: str, height: int, width: int) -> torch.Tensor:
    """A still picture [3, h, w] float in [0, 255], at least 1.5x the frame size, to film: a photograph shrunk
    by a random factor (from its full detail to the whole picture in view) or a procedural texture."""
    need = 1.5 * max(height, width)
    if kind == "photo" and photos:
        photo = torch.from_numpy(photos[int(rng.integers(len(photos)))]).permute(2, 0, 1).float()  # [3, H, W]
        max_shrink = max(1.0, min(photo.shape[1:]) / need)
        shrink = math.exp(rng.uniform(0.0, math.log(max_shrink)))
        if shrink > 1.0:
            size = (max(1, round(photo.shape[1] / shrink)), max(1, round(photo.shape[2] / shrink)))
            photo = F.interpolate(photo[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]
        if rng.random() < 0.5:
            photo = photo.flip(-1)
        return photo
    side = int(math.ceil(need / 8) * 8)
    return torch.from_numpy(fractal_texture(rng, side, side)).permute(2, 0, 1).float()


def _camera(rng: np.random.Generator, num_frames: int, speed: float) -> dict[str, np.ndarray]:
    """Per-frame camera path: center offset (pixels of the canvas), zoom (canvas pixels per frame pixel) and
    rotation (radians), each a linear drift plus a little shake; speed scales the motion."""
    t = np.arange(num_frames, dtype=np.float64)
    shake = lambda s: rng.normal(0, s, num_frames) * (rng.random() < 0.3)
    velocity = rng.normal(0, 1.5 * speed, 2)
    zoom0 = rng.uniform(0.8, 1.25)
    zoom1 = zoom0 * math.exp(rng.normal(0, 0.015 * speed) * num_frames) if rng.random() < 0.5 else zoom0
    spin = rng.normal(0, 0.004 * speed) if rng.random() < 0.35 else 0.0
    return {"dx": velocity[0] * t + shake(0.5), "dy": velocity[1] * t + shake(0.5),
            "zoom": np.linspace(zoom0, zoom1, num_frames), "angle": rng.uniform(-0.2, 0.2) * (rng.random() < 0.3)
            + spin * t}


def _film(canvas: torch.Tensor, cam: dict[str, np.ndarray], height: int, width: int,
          center: tuple[float, float]) -> torch.Tensor:
    """Sample the canvas [3, h, w] along the camera path: frames [T, 3, height, width] (bilinear, the canvas
    mirrored past its edges)."""
    _, h, w = canvas.shape
    T = len(cam["zoom"])
    ys = torch.arange(height, dtype=torch.float64) - (height - 1) / 2
    xs = torch.arange(width, dtype=torch.float64) - (width - 1) / 2
    v, u = torch.meshgrid(ys, xs, indexing="ij")  # frame pixel offsets from its center, [height, width]
    grids = []
    for i in range(T):
        c, s, z = math.cos(cam["angle"][i]), math.sin(cam["angle"][i]), cam["zoom"][i]
        px = center[1] + cam["dx"][i] + z * (c * u - s * v)  # canvas pixel coordinates
        py = center[0] + cam["dy"][i] + z * (s * u + c * v)
        grids.append(torch.stack([(2 * px + 1) / w - 1, (2 * py + 1) / h - 1], dim=-1))  # align_corners=False
    grid = torch.stack(grids).float()  # [T, height, width, 2]
    return F.grid_sample(canvas[None].expand(T, -1, -1, -1), grid, mode="bilinear", padding_mode="reflection",
                         align_corners=False)  # [T, 3, height, width]


def _filmed_clip(rng: np.random.Generator, photos: Sequence[np.ndarray], kind: str, num_frames: int,
                 height: int, width: int) -> torch.Tensor:
    """A background filmed by a moving camera, often with a second layer (a soft-edged ellipse cut from another
    picture) moving over it faster (parallax), a light fade and sensor noise: [T, 3, H, W] float in [0, 255]."""
    speed = rng.choice([0.3, 1.0, 2.0])
    back = _canvas(rng, photos, kind, height, width)
    center = ((back.shape[1] - 1) / 2 + rng.uniform(-0.2, 0.2) * back.shape[1],
              (back.shape[2] - 1) / 2 + rng.uniform(-0.2, 0.2) * back.shape[2])
    frames = _film(back, _camera(rng, num_frames, speed), height, width, center)
    if rng.random() < 0.6:  # a foreground object in parallax
        layer_kind = "photo" if rng.random() < 0.7 else "texture"
        front = _canvas(rng, photos, layer_kind, height, width)
        fcam = _camera(rng, num_frames, 2.0 * speed)
        fcenter = ((front.shape[1] - 1) / 2, (front.shape[2] - 1) / 2)
        obj = _film(front, fcam, height, width, fcenter)  # [T, 3, H, W]
        ys = torch.arange(height, dtype=torch.float32)[:, None]
        xs = torch.arange(width, dtype=torch.float32)[None, :]
        cy, cx = rng.uniform(0.2, 0.8) * height, rng.uniform(0.2, 0.8) * width
        ry, rx = rng.uniform(0.15, 0.4) * height, rng.uniform(0.15, 0.4) * width
        masks = []
        for i in range(num_frames):  # the ellipse rides along with its own content
            d = ((ys - cy + fcam["dy"][i]) / ry) ** 2 + ((xs - cx + fcam["dx"][i]) / rx) ** 2
            masks.append(((1.0 - d) * min(ry, rx) / 2).clamp(0, 1))  # ~1-pixel soft edge
        mask = torch.stack(masks)[:, None]  # [T, 1, H, W]
        frames = frames * (1 - mask) + obj * mask
    if rng.random() < 0.3:  # exposure drift
        frames = frames * torch.linspace(1.0, rng.uniform(0.75, 1.25), num_frames).view(-1, 1, 1, 1)
    if rng.random() < 0.4:  # sensor noise
        gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
        frames = frames + torch.randn(frames.shape, generator=gen) * rng.uniform(0.5, 4.0)
    return frames


def lavfi_clip(source: str, num_frames: int, height: int, width: int, options: str = "") -> np.ndarray:
    """Frames [T, H, W, 3] uint8 from one of FFmpeg's lavfi video sources (through PyAV), e.g. "mandelbrot"."""
    import av

    graph = av.filter.Graph()
    src = graph.add(source, f"s={width}x{height}:r=25" + (f":{options}" if options else ""))
    fmt = graph.add("format", "rgb24")
    sink = graph.add("buffersink")
    src.link_to(fmt)
    fmt.link_to(sink)
    graph.configure()
    return np.stack([sink.pull().to_ndarray() for _ in range(num_frames)])


def _lavfi(rng: np.random.Generator, num_frames: int, height: int, width: int) -> np.ndarray:
    source = LAVFI_SOURCES[int(rng.integers(len(LAVFI_SOURCES)))]
    seed = int(rng.integers(2**31))
    options = {"life": f"seed={seed}:ratio={rng.uniform(0.1, 0.5):.2f}:mold={int(rng.integers(0, 30))}",
               "cellauto": f"seed={seed}:rule={int(rng.integers(0, 256))}:random_fill_ratio={rng.uniform(0.2, 0.8):.2f}",
               "sierpinski": f"seed={seed}", "gradients": f"seed={seed}:speed={rng.uniform(0.005, 0.05):.3f}",
               "mandelbrot": f"start_scale={rng.uniform(0.5, 3.0):.2f}:end_scale={rng.uniform(0.01, 0.3):.3f}"}
    scale = int(rng.integers(1, 3))  # some sources at half size, enlarged: softer edges
    frames = lavfi_clip(source, num_frames, height // scale // 2 * 2, width // scale // 2 * 2, options.get(source, ""))
    if scale > 1:
        x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
        x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)
        frames = x.clamp(0, 255).round().byte().permute(0, 2, 3, 1).numpy()
    return frames


def synthetic_clip(seed: int, num_frames: int = 25, height: int = 64, width: int = 64,
                   photos: Sequence[np.ndarray] = (), kind: str | None = None) -> np.ndarray:
    """One clip [num_frames, height, width, 3] uint8, a function of (seed, sizes, photos) alone.

    kind: "photo", "texture" or "lavfi" (None: drawn by the seed with KIND_WEIGHTS; "photo" without photos
    films a texture instead)."""
    check_clip_size(num_frames, height, width)
    if kind is not None and kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; choose one of {', '.join(KINDS)}")
    rng = np.random.default_rng([seed, 0x5EED])
    kind = kind or KINDS[int(rng.choice(len(KINDS), p=KIND_WEIGHTS))]
    if kind == "lavfi":
        return _lavfi(rng, num_frames, height, width)
    frames = _filmed_clip(rng, photos, kind, num_frames, height, width)  # [T, 3, H, W]
    return frames.clamp(0, 255).round().byte().permute(0, 2, 3, 1).contiguous().numpy()


def write_synthetic_set(out: str | os.PathLike, num: int, seed: int = 0, num_frames: int = 25, height: int = 64,
                        width: int = 64, photos_dir: str | os.PathLike | None = None, crf: int = 12) -> Path:
    """Write `num` clips as OUT/clip-NNNNN.mp4 (H.264 at quality crf) and OUT/manifest.csv for
    `chronotope train vae --data`; clip i has seed (seed, i). Existing clips are kept (a run resumes)."""
    from chronotope.data.manifest import write_manifest
    from chronotope.video import write_video

    if num < 1:
        raise ValueError(f"num must be at least 1, got {num}")
    check_clip_size(num_frames, height, width)
    folder = Path(photos_dir) if photos_dir is not None else default_photo_folder()
    photos = load_photos(folder) if folder is not None else []
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(num):
        path = out / f"clip-{i:05d}.mp4"
        if not path.exists():
            write_video(path, synthetic_clip(seed * 1_000_003 + i, num_frames, height, width, photos), fps=25, crf=crf)
        rows.append({"path": str(path), "text": "", "num_frames": num_frames, "height": height, "width": width,
                     "fps": 25.0})
    write_manifest(out / "manifest.csv", rows)
    return out / "manifest.csv"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="output folder (clips + manifest.csv)")
    p.add_argument("--num", type=int, required=True, help="number of clips")
    p.add_argument("--seed", type=int, default=0, help="set seed (default 0)")
    p.add_argument("--num-frames", type=int, default=25, help="frames per clip (default 25)")
    p.add_argument("--height", type=int, default=64, help="frame height (default 64)")
    p.add_argument("--width", type=int, default=64, help="frame width (default 64)")
    p.add_argument("--photos", default=None, help="folder of .png/.jpg photographs (default: scikit-image's data)")
    args = p.parse_args(argv)
    try:
        manifest = write_synthetic_set(args.out, args.num, args.seed, args.num_frames, args.height, args.width,
                                       args.photos)
    except (ValueError, FileNotFoundError) as err:
        p.exit(2, f"error: {err}\n")
    print(f"{manifest}: {args.num} clips")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
