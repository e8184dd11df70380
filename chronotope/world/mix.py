"""A training mix of World scenes, item by item: what item i of a mix is, and its frames, in memory.

The World-model recipe (chronotope/train/world_model.py) renders its data here instead of writing mp4 files:
item i of a mix seeded `seed` is always the same scene, size and length (all drawn from (seed, i)), so a run
stopped anywhere re-makes exactly the items it had. The default mix is the one of docs/training-world.md:
64px at five aspect ratios, images and 17- and 33-frame clips; about 70% general scenes (1-3 objects), 15%
one-movers (one object moving left, right, up or down, starting on the side it comes from, section 4d) and
15% one-movers starting anywhere in view (section 4f). Held-out compositions are left out. `storyboards` > 0
mixes in World storyboards (world/storyboard.py: 2 or 3 shots of one cast, hard cuts), whose shots the latent
cache stores as clips of their own, linked to their storyboard, for a shot-aware DiT.

`camera` > 0 films that share of the clips with a camera over a textured background (world/camera.py), drawn
apart from everything else, and gives every clip's row `conditions: {"camera": [class per pixel frame]}`.

    mix = WorldMix()
    frames, row = render_item(mix, seed=0, index=7)     # uint8 [T, H, W, 3], caption, short caption, spec
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np

from chronotope.sizes import size_for
from chronotope.world.captions import detailed_caption, short_caption
from chronotope.world.generate import WorldItem, check_camera_share, filmed, frame_conditions
from chronotope.world.render import check_clip_memory, render
from chronotope.world.scene import Scene, sample_scene
from chronotope.world.storyboard import (MIN_SHOT_FRAMES, render_storyboard, sample_storyboard, shot_lengths,
                                         storyboard_text)

MOVER_MOTIONS = ("left", "right", "up", "down")
KINDS = ("general", "mover", "mover-anywhere", "storyboard")
STORYBOARD_SHOTS = (2, 3)  # shots per storyboard of a mix


@dataclass(frozen=True)
class WorldMix:
    """Sizes, lengths and scene kinds of a training mix (shares of one-movers; the rest general scenes)."""

    resolution: str = "64px"
    aspect_ratios: tuple[str, ...] = ("1:1", "4:3", "3:4", "16:9", "9:16")
    num_frames: tuple[int, ...] = (1, 17, 33)
    fps: float = 8.0
    movers: float = 0.15  # one object moving left/right/up/down, starting on the side it comes from
    movers_anywhere: float = 0.15  # the same, starting anywhere in view: the first frame does not tell the way
    storyboards: float = 0.0  # storyboards of STORYBOARD_SHOTS shots, each shot a clip of the mix's lengths
    camera: float = 0.0  # share of clips filmed by a camera (world/camera.py); 0: the plain World as before

    def __post_init__(self) -> None:
        if not self.aspect_ratios or not self.num_frames:
            raise ValueError("a World mix needs at least one aspect ratio and one frame count")
        for t in self.num_frames:
            if t < 1 or (t - 1) % 4:
                raise ValueError(f"frame counts must be 4k+1 (1, 17, 33, ...) for the causal VAE, got {t}")
        if not (0 <= self.movers and 0 <= self.movers_anywhere and self.movers + self.movers_anywhere <= 1):
            raise ValueError(f"mover shares must be >= 0 and sum to at most 1, got {self.movers} and "
                             f"{self.movers_anywhere}")
        if self.movers + self.movers_anywhere > 0 and max(self.num_frames) == 1:
            raise ValueError("one-mover clips need a frame count above 1 (e.g. 17)")
        if not 0 <= self.storyboards <= 1 - self.movers - self.movers_anywhere:
            raise ValueError(f"--storyboards is a share of the items in [0, {1 - self.movers - self.movers_anywhere:g}] "
                             f"(what the mover shares leave), got {self.storyboards}")
        if self.storyboards > 0 and max(self.num_frames) < MIN_SHOT_FRAMES:
            raise ValueError(f"storyboard shots need a frame count of at least {MIN_SHOT_FRAMES} (e.g. 17)")
        check_camera_share(self.camera)
        longest = max(self.num_frames) * (max(STORYBOARD_SHOTS) if self.storyboards else 1)
        for ar in self.aspect_ratios:
            height, width = size_for(self.resolution, ar)  # ValueError for a bad ratio or resolution, now
            check_clip_memory(height, width, longest)  # and for clips too large to render, not after OUT is made

    def to_dict(self) -> dict:
        """The mix as JSON; `storyboards` and `camera` only when > 0, so caches and runs recorded before them still
        resume."""
        d = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
        return {k: v for k, v in d.items() if k not in ("storyboards", "camera") or v}


@dataclass(frozen=True)
class MixItem(WorldItem):
    """What item `index` of a mix renders: a World item (size, length, scene seed) of one `kind`."""

    kind: str = "general"
    shots: tuple[int, ...] = ()  # a storyboard's shot lengths (num_frames is their sum)

    def scene(self) -> Scene:
        if self.kind == "storyboard":
            raise ValueError("a storyboard item has one scene per shot; render it with render_item")
        if self.kind == "general":
            return sample_scene(self.scene_seed)
        starts = "anywhere" if self.kind == "mover-anywhere" else "behind"
        return sample_scene(self.scene_seed, objects=1, motions=MOVER_MOTIONS, starts=starts)


def plan_item(mix: WorldMix, seed: int, index: int) -> MixItem:
    """Item `index` of the mix seeded `seed`: kind, size and length from one generator seeded (seed, index);
    one-movers are clips (they draw from the frame counts above 1)."""
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be >= 0, got seed={seed}, index={index}")
    rng = np.random.default_rng([int(seed), int(index), 11])
    u = rng.random()
    edges = np.cumsum([mix.movers, mix.movers_anywhere, mix.storyboards])
    kind = KINDS[1 + int(np.searchsorted(edges, u, side="right"))] if u < edges[-1] else "general"
    ratio = mix.aspect_ratios[int(rng.integers(len(mix.aspect_ratios)))]
    lengths = mix.num_frames if kind == "general" else tuple(t for t in mix.num_frames if t > 1)
    num_frames = int(lengths[int(rng.integers(len(lengths)))])
    height, width = size_for(mix.resolution, ratio)
    scene_seed = int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])
    shots: tuple[int, ...] = ()
    if kind == "storyboard":
        n = int(STORYBOARD_SHOTS[int(rng.integers(len(STORYBOARD_SHOTS)))])
        shots = tuple(shot_lengths(scene_seed, n, [t for t in mix.num_frames if t >= MIN_SHOT_FRAMES]))
        num_frames = sum(shots)
    return MixItem(index, scene_seed, height, width, ratio, num_frames, float(mix.fps), kind, shots)


def render_item(mix: WorldMix, seed: int, index: int) -> tuple[np.ndarray, dict]:
    """Frames uint8 [T, H, W, 3] of item `index` and its row: text (detailed caption), short_text, spec (JSON),
    fps (0 for images, as manifests have it), num_frames, height, width, aspect_ratio, kind."""
    item = plan_item(mix, seed, index)
    if item.kind == "storyboard":
        return _render_storyboard(item)
    scene = filmed(item.scene(), item.scene_seed, mix.camera, item.num_frames)
    frames = render(scene, item.height, item.width, item.num_frames, item.fps).frames
    row = {"text": detailed_caption(scene, np.random.default_rng([item.scene_seed, 2])),
           "short_text": short_caption(scene), "spec": json.dumps(scene.spec, separators=(",", ":")),
           "fps": 0.0 if item.num_frames == 1 else item.fps, "num_frames": item.num_frames, "height": item.height,
           "width": item.width, "aspect_ratio": item.aspect_ratio, "kind": item.kind}
    if mix.camera > 0:
        row["conditions"] = frame_conditions(scene, item.num_frames)
    return frames, row


def _render_storyboard(item: MixItem) -> tuple[np.ndarray, dict]:
    """A storyboard item: all its shots' frames [T, H, W, 3] and a row whose `shots` list gives each shot's start,
    length, caption and spec (the latent cache encodes each shot as a clip of its own)."""
    scenes = sample_storyboard(item.scene_seed, len(item.shots))
    out = render_storyboard(scenes, item.height, item.width, list(item.shots), item.fps, item.scene_seed)
    row = {"text": storyboard_text(out.shots), "short_text": storyboard_text(out.shots, "short_text"), "spec": "",
           "fps": item.fps, "num_frames": item.num_frames, "height": item.height, "width": item.width,
           "aspect_ratio": item.aspect_ratio, "kind": item.kind, "shots": out.shots}
    return out.frames, row


__all__ = ["KINDS", "MOVER_MOTIONS", "STORYBOARD_SHOTS", "MixItem", "WorldMix", "plan_item", "render_item"]
