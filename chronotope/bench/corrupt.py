"""Controlled corruptions of World renders, to check that World-bench discriminates.

An evaluator is honest only if ground truth scores ~1 and a video broken on one attribute loses
that attribute (shared/DESIGN.md). Each corruption names the attribute it breaks and the objects on
which that attribute is judged (e.g. reversing time does not change a still or bouncing-around
object's motion class, so "reversed" is judged on directed motions only).

Three scene sets: "world" (sample_scene, crisp renders), "small" (small_scene: one or two small, fast
objects that mostly leave the frame, drawn the way a generator draws them: blurred, slightly faded and
desaturated by `soften`; its seed 0 is the small yellow triangle rising out of the top on black) and
"camera" (camera_scene: sample_scene filmed by each camera class in turn over a textured background).
CAMERA_CORRUPTIONS break the camera: the clip played backwards, or the background frozen while the objects
still move as the camera sees them.

    frames, objects = corrupt("shuffled", scene, height=64, width=64, num_frames=17, fps=8, seed=0)
"""

from __future__ import annotations

import dataclasses

import numpy as np

from chronotope.world.camera import CAMERA_CLASSES, Camera
from chronotope.world.render import render
from chronotope.world.scene import Scene, sample_scene, scene_from_spec, with_camera
from chronotope.world.vocab import BACKGROUNDS, COLORS, SHAPES

# corruption -> (attribute it breaks, motions of the objects it is judged on; None = all objects)
CORRUPTIONS: dict[str, tuple[str, tuple[str, ...] | None]] = {
    "color_swap": ("color", None),
    "shape_swap": ("shape", None),
    "reversed": ("motion", ("left", "right", "up", "down", "fall_bounce")),
    "frozen": ("motion", ("left", "right", "up", "down", "fall_bounce", "bounce_around")),
    "shuffled": ("motion", ("left", "right", "up", "down", "fall_bounce", "bounce_around")),
    "noise": ("flicker", None),
}
# the camera's corruptions, judged on scenes whose camera moves (a static one is unchanged by either)
CAMERA_CORRUPTIONS: dict[str, tuple[str, tuple[str, ...] | None]] = {
    "camera_reversed": ("camera", None),
    "camera_frozen": ("camera", None),
}
NOISE_STD = 64.0  # "heavy": per-pixel, per-frame Gaussian noise on 0-255 levels
SCENE_SETS = ("world", "small", "camera")
# how the shipped model draws a small object (a small yellow triangle on black, measured): edges spread over
# 2-3 px, the inside at 0.77-0.99 of yellow's contrast with the background, blue raised by ~25 levels
SOFT_SIGMA, SOFT_CONTRAST, SOFT_DESATURATE = 1.0, 0.85, 0.15
_SMALL_MOTIONS = ("up", "down", "left", "right") * 2 + ("still", "fall_bounce", "bounce_around")


def soften(frames: np.ndarray, background: str, sigma: float = SOFT_SIGMA, contrast: float = SOFT_CONTRAST,
           desaturate: float = SOFT_DESATURATE) -> np.ndarray:
    """A render as a generator draws it, uint8 [T, H, W, 3] -> same: Gaussian blur of `sigma` px, colors at
    `contrast` of their distance from the background and `desaturate` of the way to their own gray."""
    x = frames.astype(np.float32)
    r = int(np.ceil(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()  # [2r + 1]
    for axis in (1, 2):  # separable blur over H, then W; edges replicated
        pad = [(0, 0)] * 4
        pad[axis] = (r, r)
        p = np.pad(x, pad, mode="edge")
        n = x.shape[axis]
        x = sum(w * np.take(p, np.arange(i, i + n), axis=axis) for i, w in enumerate(k))
    bg = np.array(BACKGROUNDS[background], np.float32)
    x = bg + contrast * (x - bg)
    x = x + desaturate * (x.mean(-1, keepdims=True) - x)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def small_scene(seed: int) -> Scene:
    """One or two small objects moving fast from anywhere (most leave the frame within 17-33 frames at 8 fps);
    seed 0 is the issue's "a small yellow triangle moves up on a black background"."""
    if seed == 0:  # as the shipped model drew it (seed 0): from left of centre, out of the top by frame ~12
        spec = {"background": "black", "pillar": False, "objects": [
            {"color": "yellow", "shape": "triangle", "size": "small", "motion": "up", "speed": "fast"}]}
        scene = scene_from_spec(spec, seed=0)
        return dataclasses.replace(scene, objects=[dataclasses.replace(scene.objects[0], u0=-0.25, v0=-0.2)])
    rng = np.random.default_rng([int(seed), 40])
    colors = rng.choice(list(COLORS), size=int(rng.integers(1, 3)), replace=False)
    spec = {"background": str(rng.choice(list(BACKGROUNDS))), "pillar": False, "objects": [
        {"color": str(c), "shape": str(rng.choice(SHAPES)), "size": "small",
         "motion": str(rng.choice(_SMALL_MOTIONS)), "speed": "fast"} for c in colors]}
    for o in spec["objects"]:
        if o["motion"] == "still":
            o["speed"] = None
    return scene_from_spec(spec, seed=seed, starts="anywhere")


def camera_scene(seed: int) -> Scene:
    """sample_scene(seed) (held-out pairs included, no pillar) filmed by camera class seed % 13 (CAMERA_CLASSES:
    every class in turn, static included) over a texture drawn from the seed."""
    label = CAMERA_CLASSES[seed % len(CAMERA_CLASSES)]
    camera = Camera(*label.split(":")) if label != "static" else Camera()
    return with_camera(sample_scene(seed, include_heldout=True), camera)


def scene_of(scene_set: str, seed: int) -> Scene:
    """The seed-th scene of a scene set ("world": sample_scene with held-out compositions; "small": small_scene;
    "camera": camera_scene)."""
    if scene_set not in SCENE_SETS:
        raise ValueError(f"unknown scene set {scene_set!r}; choose from {', '.join(SCENE_SETS)}")
    if scene_set == "camera":
        return camera_scene(seed)
    return sample_scene(seed, include_heldout=True) if scene_set == "world" else small_scene(seed)


def corrupt(
    name: str, scene: Scene, height: int, width: int, num_frames: int, fps: float, seed: int = 0,
    soft: bool = False,
) -> tuple[np.ndarray, list[int]]:
    """Render `scene` broken by corruption `name`; returns (frames uint8 [T, H, W, 3], indices of judged objects).

    The spec to score against stays `scene.spec`. color_swap / shape_swap re-render every object with
    another color not in the scene / another shape; the others edit the ground-truth frames. soft: the
    render is `soften`ed first (as a generator would draw it), then broken.
    """
    if name in CAMERA_CORRUPTIONS:
        moving = scene.camera is not None and scene.camera.motion != "static"
        judged = list(range(len(scene.objects))) if moving else []
        if name == "camera_frozen":
            return render(scene, height, width, num_frames, fps, frozen_background=True).frames, judged
        return render(scene, height, width, num_frames, fps).frames[::-1].copy(), judged
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; choose from {', '.join({**CORRUPTIONS, **CAMERA_CORRUPTIONS})}")
    rng = np.random.default_rng(seed)
    _, motions = CORRUPTIONS[name]
    judged = [i for i, o in enumerate(scene.objects) if motions is None or o.motion in motions]
    if name in ("color_swap", "shape_swap"):
        used = {o.color for o in scene.objects}
        free = [c for c in COLORS if c not in used]
        rng.shuffle(free)
        objects = []
        for i, o in enumerate(scene.objects):
            if name == "color_swap":
                objects.append(dataclasses.replace(o, color=free[i]))
            else:
                others = [s for s in SHAPES if s != o.shape]
                objects.append(dataclasses.replace(o, shape=others[int(rng.integers(len(others)))]))
        broken = render(dataclasses.replace(scene, objects=objects), height, width, num_frames, fps).frames
        return (soften(broken, scene.background) if soft else broken), judged
    frames = render(scene, height, width, num_frames, fps).frames
    if soft:
        frames = soften(frames, scene.background)
    if name == "reversed":
        return frames[::-1].copy(), judged
    if name == "frozen":
        return np.repeat(frames[:1], num_frames, axis=0), judged
    if name == "shuffled":
        return frames[rng.permutation(num_frames)], judged
    noisy = frames.astype(np.float32) + rng.normal(0.0, NOISE_STD, frames.shape).astype(np.float32)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8), judged


def _setting(i: int, durations: tuple[int, ...]) -> tuple[int, int, int]:
    """(height, width, num_frames) of the i-th scene: 64px area at 1:1 / 16:9 / 9:16, cycling durations."""
    from chronotope.sizes import size_for

    aspect = ("1:1", "16:9", "9:16")[i % 3]
    height, width = size_for("64px", aspect)
    return height, width, durations[(i // 3) % len(durations)]


def ground_truth_scores(num_scenes: int = 200, durations: tuple[int, ...] = (1, 17, 33), fps: float = 8.0,
                        first_seed: int = 0, scene_set: str = "world") -> dict:
    """Mean of every attribute and of overall over ground-truth renders (held-out compositions included);
    scene_set "small": small_scene renders, softened."""
    from chronotope.bench.score import ATTRIBUTES, score_video

    sums: dict[str, list[float]] = {a: [] for a in ATTRIBUTES + ("camera", "overall")}
    speed: list[float] = []
    for i in range(num_scenes):
        scene = scene_of(scene_set, first_seed + i)
        height, width, frames = _setting(i, durations)
        video = render(scene, height, width, frames, fps).frames
        if scene_set == "small":
            video = soften(video, scene.background)
        scores = score_video(video, scene.spec, fps)
        for a in sums:
            if scores[a] is not None:
                sums[a].append(scores[a])
        if scores.get("camera_detail", {}).get("speed_ok") is not None:
            speed.append(float(scores["camera_detail"]["speed_ok"]))
    out = {a: (float(np.mean(v)) if v else None) for a, v in sums.items()}
    if speed:
        out["camera_speed"] = float(np.mean(speed))
    out["overall_min"] = float(np.min(sums["overall"]))
    out["num_videos"] = num_scenes
    return out


def corruption_scores(name: str, num_scenes: int = 60, durations: tuple[int, ...] = (17, 33), fps: float = 8.0,
                      first_seed: int = 0, scene_set: str = "world") -> dict:
    """For one corruption: mean of the broken attribute over the judged objects ("broken"), the video-level
    mean of every attribute ("attributes"), and how many objects / videos were judged."""
    from chronotope.bench.score import ATTRIBUTES, score_video

    attribute, _ = {**CORRUPTIONS, **CAMERA_CORRUPTIONS}[name]
    broken: list[float] = []
    video: dict[str, list[float]] = {a: [] for a in ATTRIBUTES + ("camera", "overall")}
    for i in range(num_scenes):
        scene = scene_of(scene_set, first_seed + i)
        height, width, num_frames = _setting(i, durations)
        frames, judged = corrupt(name, scene, height, width, num_frames, fps, seed=first_seed + i,
                                 soft=scene_set == "small")
        if not judged:
            continue
        scores = score_video(frames, scene.spec, fps)
        if attribute in scores["objects"][0]:  # per-object attribute
            broken += [scores["objects"][j][attribute] for j in judged if scores["objects"][j][attribute] is not None]
        elif scores[attribute] is not None:
            broken.append(scores[attribute])
        for a in video:
            if scores[a] is not None:
                video[a].append(scores[a])
    return {
        "attribute": attribute,
        "broken": float(np.mean(broken)) if broken else None,
        "judged": len(broken),
        "attributes": {a: (float(np.mean(v)) if v else None) for a, v in video.items()},
    }


# --- storyboards: each corruption breaks one storyboard metric (bench/storyboard.py) -----------------------

# corruption -> the storyboard metric it breaks
STORYBOARD_CORRUPTIONS: dict[str, str] = {
    "identity_swap": "identity",  # a character changes shape or size class in one later shot
    "cut_shift": "cuts",  # the first cut comes CUT_SHIFT frames late
    "shot_swap": "adherence",  # two shots' contents trade places (each keeps its length)
    "bleed": "no_bleed",  # a shot also shows an object of a color it does not name
}
CUT_SHIFT = 3


def corrupt_storyboard(name: str, scenes: list[Scene], height: int, width: int, lengths: list[int], fps: float,
                       seed: int = 0) -> np.ndarray | None:
    """Render a World storyboard (world.storyboard) broken by `name`; the shots to score against stay those of
    `scenes` and `lengths`. Returns frames uint8 [T, H, W, 3], or None when the storyboard cannot show this
    corruption (no character for identity_swap, a second shot of CUT_SHIFT + 5 frames or fewer for cut_shift)."""
    from chronotope.world.storyboard import characters

    if name not in STORYBOARD_CORRUPTIONS:
        raise ValueError(f"unknown storyboard corruption {name!r}; choose from {', '.join(STORYBOARD_CORRUPTIONS)}")
    rng = np.random.default_rng(seed)
    scenes, lengths = list(scenes), list(lengths)
    if name == "identity_swap":
        cast = characters([s.spec for s in scenes])
        if not cast:
            return None
        color = sorted(cast)[int(rng.integers(len(cast)))]
        shot = cast[color][-1]  # a later shot of the character
        objects = []
        for o in scenes[shot].objects:
            if o.color == color and seed % 2 == 0:
                o = dataclasses.replace(o, shape=[s for s in SHAPES if s != o.shape][int(rng.integers(2))])
            elif o.color == color:
                o = dataclasses.replace(o, size="large" if o.size == "small" else "small")
            objects.append(o)
        scenes[shot] = dataclasses.replace(scenes[shot], objects=objects)
    elif name == "cut_shift":
        if lengths[1] <= CUT_SHIFT + 5:
            return None
        lengths[0], lengths[1] = lengths[0] + CUT_SHIFT, lengths[1] - CUT_SHIFT
    elif name == "shot_swap":
        i = int(rng.integers(len(scenes) - 1))
        scenes[i], scenes[i + 1] = scenes[i + 1], scenes[i]
    else:  # bleed: a shot gains an object of a color it does not name
        shot = int(rng.integers(len(scenes)))
        used = {o.color for s in scenes for o in s.objects}
        free = [c for c in COLORS if c not in used]
        extra = dataclasses.replace(scenes[shot].objects[0], color=free[int(rng.integers(len(free)))],
                                    u0=-scenes[shot].objects[0].u0, v0=-scenes[shot].objects[0].v0)
        scenes[shot] = dataclasses.replace(scenes[shot], objects=scenes[shot].objects + [extra])
    return np.concatenate([render(s, height, width, t, fps).frames for s, t in zip(scenes, lengths)])
