"""World scenes: sampling a scene from a seed, and its 2-D physics (positions over time).

Units are fractions of s = min(H, W) and seconds, with the origin at the frame centre, u to the
right and v downwards. Start positions lie in the central s x s square, which every aspect ratio
shows, so the width, height, fps and duration of a render never change what a motion looks like;
only the walls (at u = +-W/2s, v = +-H/2s) depend on the frame, as they would for a camera.

Speeds (min(H, W) per second), chosen so that a mover stays in view for most of a 33-frame clip
at 8 fps while a slow one still moves ~15 px over 17 frames at 64 px:

    left / right / up / down   slow 0.12, fast 0.25         (constant velocity; may leave the frame)
    bounces around             slow 0.24, fast 0.50 per axis (diagonal, reflects off all four edges)
    falls and bounces          gravity slow 1.5, fast 4.0 /s^2, restitution 0.7, floor = bottom edge

A pillar scene makes one left/right mover pass behind the pillar (width 0.16) soon after the start.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .camera import TEXTURES, Camera, camera_of, sample_camera
from .vocab import BACKGROUNDS, COLORS, HELDOUT, MAX_OBJECTS, MOTIONS, SHAPES, SIZES, SPEEDS, validate_spec

LINEAR_SPEED = {"slow": 0.12, "fast": 0.25}
BOUNCE_AROUND_SPEED = {"slow": 0.24, "fast": 0.50}
GRAVITY = {"slow": 1.5, "fast": 4.0}
RESTITUTION = 0.7
PILLAR_WIDTH = 0.16
PILLAR_PROBABILITY = 0.25
DIRECTIONS = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}
STARTS = ("behind", "anywhere")  # where a left/right/up/down mover starts: on the side it comes from, or anywhere
_MIN_GAP = 0.85  # start centres at least this fraction of (r_i + r_j) apart: no heavy overlap


@dataclass
class SceneObject:
    """One object: its vocabulary attributes and its sampled start (bbox centre) and direction."""

    color: str
    shape: str
    size: str
    motion: str
    speed: str | None  # None for "still"
    u0: float = 0.0
    v0: float = 0.0
    du: float = 0.0  # direction signs for "bounces around" (+-1 each)
    dv: float = 0.0

    @property
    def diameter(self) -> float:
        """Bounding-box side in units of min(H, W) (circle diameter, square side, triangle base)."""
        return SIZES[self.size]

    def spec(self) -> dict:
        return {"color": self.color, "shape": self.shape, "size": self.size,
                "motion": self.motion, "speed": None if self.motion == "still" else self.speed}

    def trajectory(self, times: np.ndarray, half_w: float, half_h: float) -> tuple[np.ndarray, np.ndarray]:
        """Bounding-box centre (u, v) at `times` [T] seconds in a frame spanning +-half_w, +-half_h."""
        t = np.asarray(times, dtype=np.float64)
        r = self.diameter / 2
        u = np.full_like(t, self.u0)
        v = np.full_like(t, self.v0)
        if self.motion in DIRECTIONS:
            su, sv = DIRECTIONS[self.motion]
            speed = LINEAR_SPEED[self.speed]
            u, v = self.u0 + su * speed * t, self.v0 + sv * speed * t
        elif self.motion == "bounce_around":
            speed = BOUNCE_AROUND_SPEED[self.speed]
            u = _fold(self.u0 + self.du * speed * t, -half_w + r, half_w - r)
            v = _fold(self.v0 + self.dv * speed * t, -half_h + r, half_h - r)
        elif self.motion == "fall_bounce":
            v = _fall_bounce(t, self.v0, half_h - r, GRAVITY[self.speed])
        return u, v


def _fold(p: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Reflect free motion p(t) between walls lo and hi (a triangle wave of period 2 * (hi - lo))."""
    length = hi - lo
    if length <= 0:
        return np.full_like(p, (lo + hi) / 2)
    q = np.mod(p - lo, 2 * length)
    return lo + np.where(q <= length, q, 2 * length - q)


def _fall_bounce(t: np.ndarray, v0: float, floor: float, g: float) -> np.ndarray:
    """Height (v, downwards) of a ball dropped from rest at v0 onto `floor`, closed form per bounce."""
    drop = max(floor - v0, 0.0)
    t_hit = math.sqrt(2 * drop / g)
    v_hit = g * t_hit
    starts, launches = [0.0], [None]  # segment 0 is the first fall
    start, w = t_hit, RESTITUTION * v_hit
    while w > 1e-3 and start < 1e4:
        starts.append(start)
        launches.append(w)
        start += 2 * w / g
        w *= RESTITUTION
    starts.append(start)  # after the last bounce: at rest on the floor
    launches.append(0.0)
    seg = np.searchsorted(np.asarray(starts), t, side="right") - 1  # [T] segment of each time
    out = np.empty_like(t)
    first = seg == 0
    out[first] = v0 + 0.5 * g * t[first] ** 2
    for k in np.unique(seg[~first]):
        m = seg == k
        dt = t[m] - starts[k]
        out[m] = floor - (launches[k] * dt - 0.5 * g * dt**2)
    return np.minimum(out, floor)


@dataclass
class Scene:
    """A sampled World scene: background, objects with start states, optional pillar position."""

    background: str
    objects: list[SceneObject]
    pillar_u: float | None = None  # pillar centre (units of min(H, W) from the frame centre), None: no pillar
    seed: int | None = field(default=None, compare=False)
    camera: Camera | None = None  # None: no camera (the fixed frame of a plain background)
    texture: str | None = None  # camera scenes: the background's texture (camera.TEXTURES)

    @property
    def pillar(self) -> bool:
        return self.pillar_u is not None

    @property
    def spec(self) -> dict:
        """The text-level meaning of the scene (format in vocab.py); "camera" and "texture" only in camera scenes."""
        spec = {"background": self.background, "pillar": self.pillar, "objects": [o.spec() for o in self.objects]}
        if self.camera is not None:
            spec.update(camera=self.camera.spec(), texture=self.texture)
        return spec


# --- sampling ----------------------------------------------------------------------------------


def _sample_spec(rng: np.random.Generator, include_heldout: bool) -> dict:
    n = int(rng.integers(1, MAX_OBJECTS + 1))
    colors = [str(c) for c in rng.permutation(list(COLORS))[:n]]
    objects = []
    for color in colors:
        shapes = [s for s in SHAPES if include_heldout or (color, s) not in HELDOUT]
        motion = str(rng.choice(MOTIONS))
        objects.append({"color": color, "shape": str(rng.choice(shapes)), "size": str(rng.choice(list(SIZES))),
                        "motion": motion, "speed": None if motion == "still" else str(rng.choice(SPEEDS))})
    spec = {"background": str(rng.choice(list(BACKGROUNDS))), "pillar": bool(rng.random() < PILLAR_PROBABILITY),
            "objects": objects}
    if spec["pillar"] and not any(o["motion"] in ("left", "right") for o in objects):
        mover = objects[int(rng.integers(n))]  # a pillar scene has something passing behind it
        mover["motion"] = str(rng.choice(["left", "right"]))
        mover["speed"] = mover["speed"] or str(rng.choice(SPEEDS))
    return spec


def _fill_spec(spec: dict, rng: np.random.Generator) -> dict:
    """Copy of a (possibly partial) spec with every None / missing field sampled."""
    objects = [dict(o) for o in spec.get("objects") or [{}]]
    used = {o.get("color") for o in objects if o.get("color")}
    for o in objects:
        if not o.get("color"):
            free = [c for c in COLORS if c not in used]
            if not free:
                raise ValueError("a spec has at most one object per color; remove an object")
            o["color"] = str(rng.choice(free))
            used.add(o["color"])
        o["shape"] = o.get("shape") or str(rng.choice(SHAPES))
        o["size"] = o.get("size") or str(rng.choice(list(SIZES)))
        o["motion"] = o.get("motion") or str(rng.choice(MOTIONS))
        o["speed"] = None if o["motion"] == "still" else (o.get("speed") or str(rng.choice(SPEEDS)))
    background = spec.get("background") or str(rng.choice(list(BACKGROUNDS)))
    pillar = bool(spec.get("pillar") or False)
    return validate_spec({"background": background, "pillar": pillar, "objects": objects})


def _start_range(motion: str, r: float, starts: str = "behind") -> tuple[tuple[float, float], tuple[float, float]]:
    """(u range, v range) of start centres inside the central square for a motion.

    starts="behind" puts a left/right/up/down mover on the side it comes from, so that it crosses the view;
    "anywhere" draws its start from the whole square, so that the start position does not tell the path.
    """
    full = (-0.5 + r, 0.5 - r)
    if starts == "anywhere" and motion in DIRECTIONS:
        return full, full
    far = (0.2, max(0.2, 0.5 - r))  # start on the side a mover comes from
    if motion == "left":
        return far, full
    if motion == "right":
        return (-far[1], -far[0]), full
    if motion == "up":
        return full, far
    if motion == "down":
        return full, (-far[1], -far[0])
    if motion == "fall_bounce":
        return full, (-0.5 + r, -0.1)
    return full, full


def _place(spec: dict, rng: np.random.Generator, tries: int = 200,
           starts: str = "behind") -> tuple[list[SceneObject], float | None]:
    """Rejection-sample start positions (and the pillar) so that nothing starts heavily overlapped."""
    best, best_cost = None, math.inf
    for _ in range(tries):
        objects = []
        for o in spec["objects"]:
            (ulo, uhi), (vlo, vhi) = _start_range(o["motion"], SIZES[o["size"]] / 2, starts)
            objects.append(SceneObject(o["color"], o["shape"], o["size"], o["motion"], o["speed"],
                                       u0=float(rng.uniform(ulo, uhi)), v0=float(rng.uniform(vlo, vhi)),
                                       du=float(rng.choice([-1.0, 1.0])), dv=float(rng.choice([-1.0, 1.0]))))
        cost = 0.0
        for i in range(len(objects)):
            for j in range(i + 1, len(objects)):
                a, b = objects[i], objects[j]
                dist = math.hypot(a.u0 - b.u0, a.v0 - b.v0)
                cost += max(0.0, _MIN_GAP * (a.diameter + b.diameter) / 2 - dist)
        pillar_u = None
        if spec["pillar"]:
            pillar_u, pillar_cost = _place_pillar(objects, rng)
            cost += pillar_cost
        if cost < best_cost:
            best, best_cost = (objects, pillar_u), cost
        if cost == 0.0:
            break
    assert best is not None  # tries >= 1
    return best


def _place_pillar(objects: list[SceneObject], rng: np.random.Generator) -> tuple[float, float]:
    """Pillar centre ahead of a left/right mover, so that it starts passing behind within 0.25-0.75 s."""
    movers = [o for o in objects if o.motion in ("left", "right")]
    if movers:
        o = movers[int(rng.integers(len(movers)))]
        ahead = o.diameter / 2 + PILLAR_WIDTH / 2 + LINEAR_SPEED[o.speed] * float(rng.uniform(0.25, 0.75))
        pillar_u = o.u0 + DIRECTIONS[o.motion][0] * ahead
    else:  # a user's spec without a horizontal mover: anywhere in view
        pillar_u = float(rng.uniform(-0.4, 0.4))
    pillar_u = float(np.clip(pillar_u, -0.5 + PILLAR_WIDTH / 2, 0.5 - PILLAR_WIDTH / 2))
    cost = 0.0  # no object may start behind the pillar
    for o in objects:
        gap = abs(o.u0 - pillar_u) - (o.diameter / 2 + PILLAR_WIDTH / 2)
        cost += max(0.0, -gap)
    return pillar_u, cost


def check_starts(starts: str) -> str:
    """ValueError naming the valid values for a bad `starts`."""
    if starts not in STARTS:
        raise ValueError(f"starts must be one of {', '.join(STARTS)}, got {starts!r}")
    return starts


def with_camera(scene: Scene, camera: Camera | None = None, texture: str | None = None,
                seed: int | None = None) -> Scene:
    """`scene` filmed by `camera` over a textured background (camera.py); camera / texture None: drawn from
    `seed` (default: the scene's). Camera scenes have no pillar (a moving pillar is left for later)."""
    rng = np.random.default_rng([int(seed if seed is not None else scene.seed or 0), 39])
    camera = camera if camera is not None else sample_camera(rng)
    texture = texture or str(rng.choice(TEXTURES))
    if texture not in TEXTURES:
        raise ValueError(f"unknown texture {texture!r}; valid: {', '.join(TEXTURES)}")
    return Scene(background=scene.background, objects=scene.objects, pillar_u=None, seed=scene.seed, camera=camera,
                 texture=texture)


def scene_from_spec(spec: dict, seed: int, starts: str = "behind") -> Scene:
    """A scene for `spec` with start positions (and any None / missing field) sampled from `seed`.

    A complete spec is rendered as given; a partial one (e.g. from `parse_prompt("a red circle")`)
    gets its unspecified fields sampled uniformly from the vocabulary (held-out pairs allowed).
    `starts` as in `_start_range`.
    """
    rng = np.random.default_rng([int(seed), 1])
    full = _fill_spec(spec, rng)
    objects, pillar_u = _place(full, rng, starts=check_starts(starts))
    scene = Scene(background=full["background"], objects=objects, pillar_u=pillar_u, seed=int(seed))
    if spec.get("camera") or spec.get("texture"):  # a camera scene (a texture alone: a static camera)
        if full["pillar"]:
            raise ValueError("a camera scene has no pillar yet; drop the pillar or the camera")
        given = dict(spec.get("camera") or {})
        if given.get("motion") not in (None, "static") and given.get("speed") is None:  # partial: "pans left"
            given["speed"] = str(np.random.default_rng([int(seed), 38]).choice(SPEEDS))
        camera = camera_of(given)
        scene = with_camera(scene, camera, spec.get("texture"), seed)
    return scene


def _constrained_spec(rng: np.random.Generator, include_heldout: bool, objects: int | None,
                      motions: tuple[str, ...]) -> dict:
    """A spec with `objects` objects (1 to MAX_OBJECTS drawn when None), each of a different color and a
    motion from `motions`, and no pillar; background, size and speed are left for `_fill_spec`."""
    n = int(rng.integers(1, MAX_OBJECTS + 1)) if objects is None else objects
    specs, used = [], set()
    for _ in range(n):
        free = [c for c in COLORS if c not in used]
        while True:
            color, shape = str(rng.choice(free)), str(rng.choice(SHAPES))
            if include_heldout or (color, shape) not in HELDOUT:
                break
        used.add(color)
        specs.append({"color": color, "shape": shape, "motion": str(rng.choice(list(motions)))})
    return {"pillar": False, "objects": specs}


def check_constraints(objects: int | None, motions: tuple[str, ...] | list[str] | None) -> tuple[str, ...]:
    """ValueError naming the valid values for a bad constraint of `sample_scene`; returns the motions to
    draw from (every motion when None)."""
    if objects is not None and not 1 <= objects <= MAX_OBJECTS:
        raise ValueError(f"objects must be 1 to {MAX_OBJECTS}, got {objects}")
    motions = tuple(MOTIONS if motions is None else motions)
    unknown = [m for m in motions if m not in MOTIONS]
    if unknown or not motions:
        what = f"unknown motion(s) {', '.join(unknown)}" if unknown else "no motion given"
        raise ValueError(f"{what}; choose from {', '.join(MOTIONS)}")
    return motions


def sample_scene(seed: int, include_heldout: bool = False, objects: int | None = None,
                 motions: tuple[str, ...] | list[str] | None = None, starts: str = "behind") -> Scene:
    """A random scene from `seed`: 1-3 objects of different colors, background, optional pillar.

    Held-out compositions (purple triangle, cyan square, orange circle) appear only with
    `include_heldout=True`. The same seed always gives the same scene. `objects` (exactly that many)
    and `motions` (each object's motion drawn from these) make a constrained scene for a focused
    training mix, e.g. one object moving left, right, up or down; constrained scenes have no pillar.
    `starts="anywhere"` starts left/right/up/down movers anywhere in view instead of on the side they
    come from (`_start_range`), so that a clip's first frame does not tell its direction.
    """
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if objects is not None or motions is not None:
        motions = check_constraints(objects, motions)
        spec = _constrained_spec(np.random.default_rng([int(seed), 5]), include_heldout, objects, motions)
        return scene_from_spec(spec, int(seed), starts=starts)
    rng = np.random.default_rng([int(seed), 0])
    spec = _sample_spec(rng, include_heldout)
    placed, pillar_u = _place(spec, rng, starts=check_starts(starts))
    return Scene(background=spec["background"], objects=placed, pillar_u=pillar_u, seed=int(seed))
