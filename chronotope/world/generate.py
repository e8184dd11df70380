"""Write a World data set: rendered clips (mp4, png for 1-frame items), a manifest CSV, track sidecars.

One run mixes frame sizes, aspect ratios and durations (NaViT-style training data): item i takes
the (size, num_frames) combination i modulo their count, and a scene seeded by (seed, i), so any
item can be re-made alone and an interrupted run resumes by skipping files that exist.

    chronotope world --out data/world --num 1000 --resolution 64px --aspect-ratios 1:1,16:9,9:16 \
        --num-frames 1,17,33 --fps 8 --workers 2
"""

from __future__ import annotations

import functools
import json
import multiprocessing
import os
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import product

import numpy as np
from tqdm import tqdm

from chronotope.atomic import atomic_write_text

from ..data.manifest import aspect_ratio_name, write_manifest
from ..sizes import size_for
from ..video import IMAGE_FPS, write_video
from .captions import detailed_caption, short_caption
from ..request import arg
from .render import check_clip_memory, check_frame_size, render
from .camera import camera_conditions
from .scene import Scene, check_constraints, check_starts, sample_scene, with_camera
from .storyboard import check_shots, render_storyboard, sample_storyboard, shot_lengths, storyboard_text


@dataclass(frozen=True)
class WorldItem:
    """What item `index` of a run renders."""

    index: int
    scene_seed: int
    height: int
    width: int
    aspect_ratio: str
    num_frames: int
    fps: float

    @property
    def name(self) -> str:
        return f"{self.index:06d}" + (".png" if self.num_frames == 1 else ".mp4")


def item_seed(seed: int, index: int) -> int:
    """Scene seed of item `index` of a run seeded `seed` (independent streams per item)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def _check_plan(num: int, sizes: list[tuple[int, int, str]], counts: list[int], what: str) -> None:
    """ValueError unless a run plans at least one item, one size and one `what`, every size renderable."""
    if num < 1:
        raise ValueError(f"{arg('num', num)}: must be at least 1")
    if not sizes or not counts:
        raise ValueError(f"give at least one size (or aspect ratio) and one {what}")
    for h, w, _ in sizes:
        check_frame_size(h, w)


def plan_items(num: int, seed: int, sizes: list[tuple[int, int, str]], num_frames: list[int],
               fps: float) -> list[WorldItem]:
    """Items 0..num-1 cycling through every (size, num_frames) pair; sizes are (height, width, ratio name)."""
    _check_plan(num, sizes, num_frames, "frame count")
    for t in num_frames:
        if t < 1:
            raise ValueError(f"frame counts must be >= 1, got {t}; clips for the VAE have 4k+1 frames (1, 17, 33)")
    combos = list(product(sizes, num_frames))
    items = []
    for i in range(num):
        (h, w, ratio), t = combos[i % len(combos)]
        items.append(WorldItem(i, item_seed(seed, i), h, w, ratio, t, float(fps)))
    return items


def _track_json(tracks: list[dict]) -> list[dict]:
    out = []
    for tr in tracks:
        d = {k: v for k, v in tr.items() if not isinstance(v, np.ndarray)}
        d.update({k: np.round(v, 3).tolist() for k, v in tr.items() if isinstance(v, np.ndarray)})
        out.append(d)
    return out


def _write_json(path: str, obj: dict) -> None:
    atomic_write_text(path, json.dumps(obj, separators=(",", ":")))


def check_camera_share(share: float) -> float:
    """ValueError unless 0 <= share <= 1 (the share of a run's clips filmed by a camera)."""
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share <= 1:
        raise ValueError(f"{arg('camera_share', share)}: the share of clips with a camera is a number in [0, 1]")
    return float(share)


def filmed(scene: Scene, scene_seed: int, camera_share: float, num_frames: int) -> Scene:
    """`scene`, or with probability `camera_share` (drawn from its seed; clips only) the scene filmed by a camera
    over a textured background (world/camera.py: static 1 in 7, else a pan or zoom at a speed)."""
    if camera_share <= 0 or num_frames < 2:
        return scene
    if np.random.default_rng([int(scene_seed), 37]).random() >= camera_share:
        return scene
    return with_camera(scene, seed=scene_seed)


def frame_conditions(scene: Scene, num_frames: int) -> dict:
    """A row's per-frame conditions (dit/conditioning.py): the camera class of every pixel frame (0: static)."""
    from .camera import Camera

    return {"camera": camera_conditions(scene.camera or Camera(), num_frames)}


def make_item(item: WorldItem, out_dir: str, include_heldout: bool = False, tracks: bool = True,
              objects: int | None = None, motions: tuple[str, ...] | None = None, starts: str = "behind",
              camera_share: float = 0.0) -> dict:
    """Render and write one item (unless its files exist) and return its manifest row; objects / motions /
    starts constrain its scene (`sample_scene`). camera_share > 0: that share of clips is filmed by a camera
    (`filmed`), and every row gets `conditions: {"camera": [class per pixel frame]}`."""
    scene = sample_scene(item.scene_seed, include_heldout=include_heldout, objects=objects, motions=motions,
                         starts=starts)
    scene = filmed(scene, item.scene_seed, camera_share, item.num_frames)
    text = detailed_caption(scene, np.random.default_rng([item.scene_seed, 2]))
    path = os.path.join(out_dir, item.name)
    sidecar = os.path.splitext(path)[0] + ".json"
    if not (os.path.exists(path) and (not tracks or os.path.exists(sidecar))):
        out = render(scene, item.height, item.width, item.num_frames, item.fps)
        write_video(path, out.frames, item.fps)
        if tracks:
            side = {"spec": scene.spec, "fps": item.fps, "times": out.times.round(6).tolist(),
                    "tracks": _track_json(out.tracks)}
            if out.camera is not None:  # the camera's track per frame: centre u, v, zoom and class
                side["camera"] = _track_json([out.camera])[0]
            _write_json(sidecar, side)
    row = {"path": path, "text": text, "num_frames": item.num_frames, "height": item.height, "width": item.width,
           "aspect_ratio": item.aspect_ratio, "fps": IMAGE_FPS if item.num_frames == 1 else item.fps,
           "short_text": short_caption(scene), "spec": json.dumps(scene.spec, separators=(",", ":"))}
    if camera_share > 0:
        row["conditions"] = frame_conditions(scene, item.num_frames)
    return row


# --- storyboards (`chronotope world --shots 2,3`; world/storyboard.py) ---------------------------------


@dataclass(frozen=True)
class StoryboardItem:
    """What storyboard `index` of a run renders: its seed, frame size, and each shot's length."""

    index: int
    seed: int
    height: int
    width: int
    aspect_ratio: str
    lengths: tuple[int, ...]
    fps: float

    @property
    def name(self) -> str:
        return f"{self.index:06d}.mp4"


def plan_storyboards(num: int, seed: int, sizes: list[tuple[int, int, str]], shots: list[int],
                     num_frames: list[int], fps: float) -> list[StoryboardItem]:
    """Items 0..num-1 cycling through every (size, shot count) pair; shot lengths drawn from `num_frames`."""
    _check_plan(num, sizes, shots, "shot count, e.g. --shots 2,3")
    for n in shots:
        check_shots(n)
    combos = [(s, n) for s in sizes for n in shots]
    items = []
    for i in range(num):
        (h, w, ratio), n = combos[i % len(combos)]
        s = item_seed(seed, i)
        items.append(StoryboardItem(i, s, h, w, ratio, tuple(shot_lengths(s, n, list(num_frames))), float(fps)))
    return items


def make_storyboard_item(item: StoryboardItem, out_dir: str, include_heldout: bool = False,
                         tracks: bool = True) -> dict:
    """Render and write one storyboard (unless its files exist); return its manifest row. The row's `shots`
    column and the sidecar NAME.json hold each shot's start, length, caption and spec, and the cut frames."""
    scenes = sample_storyboard(item.seed, len(item.lengths), include_heldout)
    path = os.path.join(out_dir, item.name)
    sidecar = os.path.splitext(path)[0] + ".json"
    if not (os.path.exists(path) and os.path.exists(sidecar)):
        out = render_storyboard(scenes, item.height, item.width, list(item.lengths), item.fps, item.seed)
        write_video(path, out.frames, item.fps)
        side = {"storyboard": True, "fps": item.fps, "cuts": out.cuts, "shots": out.shots}
        if tracks:
            side["tracks"] = [_track_json(t) for t in out.tracks]
        _write_json(sidecar, side)  # always written: it is where the cuts and per-shot specs live
        shots = out.shots
    else:
        with open(sidecar, encoding="utf-8") as f:
            shots = json.load(f)["shots"]
    return {"path": path, "text": storyboard_text(shots), "num_frames": int(sum(item.lengths)),
            "height": item.height, "width": item.width, "aspect_ratio": item.aspect_ratio, "fps": item.fps,
            "short_text": storyboard_text(shots, "short_text"), "spec": "",
            "shots": json.dumps(shots, separators=(",", ":"))}


def resolve_sizes(height: int | None = None, width: int | None = None, resolution: str | None = None,
                  aspect_ratios: list[str] | None = None) -> list[tuple[int, int, str]]:
    """(height, width, ratio name) list from either an explicit size or a resolution and aspect ratios."""
    if (height is None) != (width is None):
        raise ValueError("give both --height and --width, or neither (then --resolution and --aspect-ratios)")
    if height is not None:
        if resolution is not None:
            raise ValueError("give either --height/--width or --resolution, not both")
        check_frame_size(height, width)
        return [(int(height), int(width), aspect_ratio_name(height, width))]
    return [(*size_for(resolution or "64px", r), r) for r in (aspect_ratios or ["1:1"])]


# bytes of memory per item of a run until its manifest is written: the row (caption, spec JSON, short caption)
# and the planned item, about 1.5 kB measured on 64px clips of 1-3 objects, with a margin
ROW_BYTES = 2048
WORKERS_PER_CORE = 4  # render processes past this many per core only wait for a core


def check_run(num: int, sizes: list[tuple[int, int, str]], num_frames: list[int], fps: float, workers: int = 1,
              shots: list[int] | None = None, seed: int = 0) -> None:
    """Before anything is planned or written: every count of a run within what memory and the machine allow
    (the error states the limit), every clip renderable within memory, fps finite and positive."""
    from chronotope.cost import available_memory, format_bytes, memory_limit
    from chronotope.request import check_number, check_range

    check_range("num", num, 1, memory_limit(ROW_BYTES), integer=True,
                why=f" (the manifest's rows, about {ROW_BYTES // 1000} kB each, are held in memory until it is "
                    f"written: half of the {format_bytes(available_memory())} available)")
    cores = os.cpu_count() or 1
    check_range("workers", workers, 1, WORKERS_PER_CORE * cores, integer=True,
                why=f" ({WORKERS_PER_CORE} render processes per CPU core, {cores} cores here)")
    check_number("fps", fps)
    check_number("seed", seed)
    for t in num_frames:
        if isinstance(t, bool) or not isinstance(t, int) or t < 1:
            raise ValueError(f"{arg('num_frames', t)}: frame counts must be whole numbers >= 1; clips for the VAE "
                             f"have 4k+1 frames (1, 17, 33)")
    longest = max(num_frames) * (max(check_shots(n) for n in shots) if shots else 1)
    for h, w, _ in sizes:
        check_frame_size(h, w)
        check_clip_memory(h, w, longest, min(workers, num))


def write_world(out_dir: str | os.PathLike, num: int, seed: int = 0, sizes: list[tuple[int, int, str]] | None = None,
                num_frames: list[int] | None = None, fps: float = 8.0, include_heldout: bool = False,
                workers: int = 1, tracks: bool = True, progress: bool = True, objects: int | None = None,
                motions: list[str] | None = None, starts: str = "behind", shots: list[int] | None = None,
                camera_share: float = 0.0) -> str:
    """Render `num` World items into `out_dir` and write `out_dir/manifest.csv`; returns the manifest path.
    objects / motions: constrained scenes (exactly that many objects, motions drawn from the list, no pillar);
    starts="anywhere": movers start anywhere in view, not on the side they come from (`sample_scene`).
    shots: render storyboards instead, item i with shots[i % len] shots of the same characters and hard cuts
    (world/storyboard.py; each shot's length drawn from num_frames); not with objects / motions.
    camera_share: that share of the clips is filmed by a moving or static camera over a textured background
    (world/camera.py; `filmed`), their rows carrying the camera class per frame; 0 (default) renders as before."""
    out_dir = os.fspath(out_dir)
    check_camera_share(camera_share)
    if camera_share and shots is not None:
        raise ValueError("--camera-share films single clips; storyboards have no camera yet: drop one of them")
    check_run(num, sizes or [(64, 64, "1:1")], num_frames or [17], fps, workers, shots, seed)
    if shots is not None:
        if objects is not None or motions is not None:
            raise ValueError("--shots renders storyboards of sampled characters; drop --objects / --motions")
        items = plan_storyboards(num, seed, sizes or [(64, 64, "1:1")], shots, num_frames or [17], fps)
        job = functools.partial(make_storyboard_item, out_dir=out_dir, include_heldout=include_heldout,
                                tracks=tracks)
    else:
        items = plan_items(num, seed, sizes or [(64, 64, "1:1")], num_frames or [17], fps)
        if objects is not None or motions is not None:
            check_constraints(objects, motions)  # before any work
        job = functools.partial(make_item, out_dir=out_dir, include_heldout=include_heldout, tracks=tracks,
                                objects=objects, motions=None if motions is None else tuple(motions), starts=starts,
                                camera_share=camera_share)
    check_starts(starts)
    os.makedirs(out_dir, exist_ok=True)
    bar = tqdm(total=len(items), desc="world", unit="clip", disable=not progress)
    rows: list[dict] = []
    if workers <= 1:
        for item in items:
            rows.append(job(item))
            bar.update()
    else:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            for row in pool.imap(job, items, chunksize=4):
                rows.append(row)
                bar.update()
    bar.close()
    manifest = os.path.join(out_dir, "manifest.csv")
    write_manifest(manifest, rows)
    return manifest


def iter_world(num: int, seed: int = 0, height: int = 64, width: int = 64, num_frames: int = 17,
               fps: float = 8.0, include_heldout: bool = False) -> Iterator[tuple[dict, np.ndarray]]:
    """In-memory stream of (row without path, frames [T, H, W, 3]) for `num` items, for benchmarks and tests."""
    for item in plan_items(num, seed, [(height, width, aspect_ratio_name(height, width))], [num_frames], fps):
        scene = sample_scene(item.scene_seed, include_heldout=include_heldout)
        out = render(scene, height, width, num_frames, fps)
        yield {"text": detailed_caption(scene, np.random.default_rng([item.scene_seed, 2])),
               "short_text": short_caption(scene), "spec": scene.spec}, out.frames
