"""World storyboards: several shots of one cast of characters, joined by hard cuts.

A storyboard keeps its *characters* (objects by color, with a fixed shape and size) from shot to shot and
changes the rest at every cut: a new background (always different from the shot before, so a cut is a
visible event), new start positions, new motions, and which characters are in view. Every shot has its own
detailed caption and spec, so a model learns "same red circle, new shot" from the captions, and World-bench
(chronotope/bench/storyboard.py) scores each shot against its own spec, identity across shots, the cut
frames and bleed (no unnamed character in a shot).

    board = sample_storyboard(seed=3, num_shots=3)           # [Scene] sharing the characters
    out = render_storyboard(board, 64, 64, [17, 9, 17], 8.0)  # frames [43, 64, 64, 3], cuts [17, 26]
    out.shots[1]   # {"start": 17, "num_frames": 9, "spec": ..., "text": ..., "short_text": ...}
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .captions import detailed_caption, short_caption
from .render import render
from .scene import Scene, scene_from_spec
from .vocab import BACKGROUNDS, COLORS, HELDOUT, MAX_OBJECTS, MOTIONS, SHAPES, SIZES, SPEEDS

MIN_SHOT_FRAMES = 5  # a shot shorter than this has no motion to score and no room around its cut
MAX_SHOTS = 16
EXTRA_PROBABILITY = 0.6  # each non-lead character appears in a shot with this probability


@dataclass
class StoryboardRender:
    """frames uint8 [T, H, W, 3] of all shots back to back; cuts: the first frame of shots 2..n;
    shots: one dict per shot (start, num_frames, spec, text, short_text); tracks: per shot, render's tracks."""

    frames: np.ndarray
    cuts: list[int]
    shots: list[dict]
    tracks: list[list[dict]]
    fps: float


def check_shots(num_shots: int) -> int:
    """ValueError naming the valid range for a bad shot count."""
    if isinstance(num_shots, bool) or not isinstance(num_shots, (int, np.integer)) or not 2 <= num_shots <= MAX_SHOTS:
        raise ValueError(f"a storyboard has 2 to {MAX_SHOTS} shots, got {num_shots!r} (one shot is a plain clip)")
    return int(num_shots)


def sample_cast(rng: np.random.Generator, include_heldout: bool = False) -> list[dict]:
    """1 to MAX_OBJECTS characters of different colors, each with a shape and a size: [{color, shape, size}]."""
    n = int(rng.integers(1, MAX_OBJECTS + 1))
    cast = []
    for color in [str(c) for c in rng.permutation(list(COLORS))[:n]]:
        shapes = [s for s in SHAPES if include_heldout or (color, s) not in HELDOUT]
        cast.append({"color": color, "shape": str(rng.choice(shapes)), "size": str(rng.choice(list(SIZES)))})
    return cast


def sample_storyboard(seed: int, num_shots: int, include_heldout: bool = False) -> list[Scene]:
    """`num_shots` scenes sharing one cast: character 0 (the lead) is in every shot, each other character in a
    shot with probability EXTRA_PROBABILITY; every shot draws a background unlike the shot before, new
    motions and new start positions. The same (seed, num_shots) always gives the same storyboard."""
    num_shots = check_shots(num_shots)
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    rng = np.random.default_rng([int(seed), 28])
    cast = sample_cast(rng, include_heldout)
    scenes, background = [], None
    for i in range(num_shots):
        names = [cast[0]] + [c for c in cast[1:] if rng.random() < EXTRA_PROBABILITY]
        objects = []
        for c in names:
            motion = str(rng.choice(MOTIONS))
            objects.append({**c, "motion": motion, "speed": None if motion == "still" else str(rng.choice(SPEEDS))})
        background = str(rng.choice([b for b in BACKGROUNDS if b != background]))
        spec = {"background": background, "pillar": False, "objects": objects}
        shot_seed = int(np.random.SeedSequence([int(seed), 28, i]).generate_state(1)[0])
        scenes.append(scene_from_spec(spec, shot_seed))
    return scenes


def shot_lengths(seed: int, num_shots: int, choices: list[int]) -> list[int]:
    """Frames of each shot, drawn from `choices` (each 4k+1 >= MIN_SHOT_FRAMES: every shot is its own causal-VAE
    clip, encoded alone for training and decoded alone when generated) by (seed, num_shots)."""
    bad = [t for t in choices if t < MIN_SHOT_FRAMES]
    if not choices or bad:
        raise ValueError(f"storyboard shots need at least {MIN_SHOT_FRAMES} frames each, got {choices}; "
                         "give --num-frames such as 17,33")
    odd = [t for t in choices if (t - 1) % 4]
    if odd:
        raise ValueError(f"storyboard shots have 4k+1 frames (5, 9, 17, 33, ...: each is its own causal-VAE clip), "
                         f"got {odd}; give --num-frames such as 17,33")
    rng = np.random.default_rng([int(seed), 29, int(num_shots)])
    return [int(rng.choice(choices)) for _ in range(num_shots)]


def cut_frames(lengths: list[int]) -> list[int]:
    """Frame index where each shot after the first starts: lengths [17, 9, 17] -> [17, 26]."""
    return [int(c) for c in np.cumsum(lengths)[:-1]]


def render_storyboard(scenes: list[Scene], height: int, width: int, lengths: list[int], fps: float,
                      caption_seed: int = 0) -> StoryboardRender:
    """Render each scene for its number of frames and join them with hard cuts."""
    if len(scenes) != len(lengths):
        raise ValueError(f"{len(scenes)} scenes but {len(lengths)} shot lengths; give one length per shot")
    frames, shots, tracks, start = [], [], [], 0
    for i, (scene, t) in enumerate(zip(scenes, lengths)):
        out = render(scene, height, width, t, fps)
        frames.append(out.frames)
        tracks.append(out.tracks)
        text = detailed_caption(scene, np.random.default_rng([int(caption_seed), 2, i]))
        shots.append({"start": start, "num_frames": int(t), "spec": scene.spec, "text": text,
                      "short_text": short_caption(scene)})
        start += int(t)
    return StoryboardRender(np.concatenate(frames), cut_frames(lengths), shots, tracks, float(fps))


def storyboard_text(shots: list[dict], key: str = "text") -> str:
    """One caption for the whole storyboard: "Shot 1: ... Shot 2: ..." (the manifest's text column)."""
    return " ".join(f"Shot {i + 1}: {s[key]}" for i, s in enumerate(shots))


def characters(specs: list[dict]) -> dict[str, list[int]]:
    """Colors named in two or more shots -> the shots that name them (the storyboard's characters)."""
    seen: dict[str, list[int]] = {}
    for i, spec in enumerate(specs):
        for o in spec.get("objects") or []:
            if o.get("color"):
                seen.setdefault(o["color"], []).append(i)
    return {c: shots for c, shots in seen.items() if len(shots) >= 2}

