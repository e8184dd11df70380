"""The World's fixed vocabulary (shared/DESIGN.md): palette, shapes, sizes, motions, and the `spec`.

Prompts, renders and World-bench all speak this vocabulary, so it lives in one place.

A `spec` is the text-level meaning of a scene, as plain JSON:

    {"background": "black",
     "pillar": false,
     "objects": [{"color": "red", "shape": "circle", "size": "small",
                  "motion": "left", "speed": "slow"}, ...]}

Objects have pairwise different colors (1 to 3 per scene); `speed` is None for "still". A camera scene
(world/camera.py, opt-in) adds "camera": {"motion": "pan-left", "speed": "slow"} and "texture": "grid"
and has no pillar; a spec without them is a fixed frame over a plain background.
"""

from __future__ import annotations

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (240, 140, 20),
    "yellow": (235, 215, 30),
    "green": (40, 170, 60),
    "cyan": (30, 190, 210),
    "blue": (40, 70, 220),
    "purple": (140, 60, 190),
    "pink": (240, 110, 170),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (15, 15, 15),
    "white": (240, 240, 240),
    "gray": (128, 128, 128),
}
PILLAR_COLOR: tuple[int, int, int] = (90, 60, 30)

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
# Object size as a fraction of min(H, W): the circle's diameter, the square's side, the triangle's base.
SIZES: dict[str, float] = {"small": 0.15, "large": 0.30}
MOTIONS: tuple[str, ...] = ("still", "left", "right", "up", "down", "fall_bounce", "bounce_around")
SPEEDS: tuple[str, ...] = ("slow", "fast")
MAX_OBJECTS = 3

# Compositions never seen in default training data; World-bench reports them apart.
HELDOUT: frozenset[tuple[str, str]] = frozenset(
    {("purple", "triangle"), ("cyan", "square"), ("orange", "circle")}
)


def is_heldout(spec: dict) -> bool:
    """True when any object of the spec is a held-out (color, shape) composition."""
    return any((o["color"], o["shape"]) in HELDOUT for o in spec["objects"])


def validate_spec(spec: dict) -> dict:
    """Check a spec against the vocabulary; return it unchanged or raise ValueError saying what is wrong."""
    if not isinstance(spec, dict):
        raise ValueError(f"a spec must be a JSON object, got {type(spec).__name__}")
    for key in ("background", "pillar", "objects"):
        if key not in spec:
            raise ValueError(f"spec is missing {key!r}; a spec has keys background, pillar, objects")
    if spec["background"] not in BACKGROUNDS:
        raise ValueError(f"unknown background {spec['background']!r}; valid: {', '.join(BACKGROUNDS)}")
    objects = spec["objects"]
    if not 1 <= len(objects) <= MAX_OBJECTS:
        raise ValueError(f"a spec has 1 to {MAX_OBJECTS} objects, got {len(objects)}")
    valid = {"color": tuple(COLORS), "shape": SHAPES, "size": tuple(SIZES), "motion": MOTIONS}
    for obj in objects:
        for key, options in valid.items():
            if obj.get(key) not in options:
                raise ValueError(f"object {obj}: {key} must be one of {', '.join(options)}")
        if obj["motion"] != "still" and obj.get("speed") not in SPEEDS:
            raise ValueError(f"object {obj}: speed must be one of {', '.join(SPEEDS)}")
    colors = [o["color"] for o in objects]
    if len(set(colors)) != len(colors):
        raise ValueError(f"objects of one scene have different colors, got {colors}")
    if spec.get("camera") is not None or spec.get("texture") is not None:  # a camera scene (world/camera.py)
        from .camera import TEXTURES, camera_of

        camera_of(spec.get("camera"))
        if spec.get("texture") not in TEXTURES:
            raise ValueError(f"a camera scene's texture must be one of {', '.join(TEXTURES)}, "
                             f"got {spec.get('texture')!r}")
        if spec["pillar"]:
            raise ValueError("a camera scene has no pillar yet; drop the pillar or the camera")
    return spec
