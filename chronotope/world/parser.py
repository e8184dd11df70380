"""Parse World-vocabulary text into a `spec`: "a big green triangle that stays still, gray backdrop" -> dict.

A small rule-based reader, no model: the text is cut into words, known phrases are matched
longest first (colors, sizes, shapes, motions, speeds, background, pillar), and attributes are
attached to objects the way English orders them: adjectives (size, color, "fast") gather until a
shape noun closes the noun phrase; motions and adverbs ("slowly") that follow belong to that
object. A new adjective or noun after a closed noun phrase starts the next object.

Unspecified fields are None (a later prompt-expansion step, or `scene_from_spec`, fills them):
    parse_prompt("a red circle") -> {"background": None, "pillar": False, "objects": [
        {"color": "red", "shape": "circle", "size": None, "motion": None, "speed": None}]}
`pillar` is False unless the text mentions one. `vocab.validate_spec` is for complete specs only.
A camera clause ("the camera pans slowly to the left", "the camera zooms in") is read apart, before the objects,
and gives the spec a "camera" entry ({"motion": "pan-left", "speed": "slow"}; speed None when unsaid); a texture
word (grid, dots, stars) gives it a "texture". Neither key appears when the text names no camera or texture.
Every detailed caption the World writes parses back to exactly its spec (tests/test_world.py).
"""

from __future__ import annotations

import re

from .camera import TEXTURES
from .vocab import BACKGROUNDS, COLORS, MAX_OBJECTS

_WORDS: dict[str, tuple[str, object]] = {}  # single word -> (kind, value)
_PHRASES: dict[tuple[str, ...], tuple[str, object]] = {}  # multi-word phrase -> (kind, value)


def _add(kind: str, value: object, *phrases: str) -> None:
    for phrase in phrases:
        words = tuple(phrase.split())
        (_WORDS if len(words) == 1 else _PHRASES)[words[0] if len(words) == 1 else words] = (kind, value)


for _c in COLORS:
    _add("color", _c, _c)
for _b in BACKGROUNDS:
    _add("bg", _b, _b)
_add("bg", "gray", "grey")
_add("size", "small", "small", "little", "tiny", "smaller", "mini")
_add("size", "large", "large", "big", "huge", "larger", "bigger", "giant")
_add("shape", "circle", "circle", "disc", "disk", "ball", "dot", "round")
_add("shape", "square", "square", "block", "box", "cube")
_add("shape", "triangle", "triangle", "triangular")
# nouns that close a noun phrase without naming a shape ("a red one"), only right after an adjective
_GENERIC_NOUNS = {"object", "shape", "thing", "item", "one"}
_add("speed", "slow", "slow", "slowly", "gently", "leisurely", "unhurriedly", "lazily", "calmly",
     "low speed", "slow pace")
_add("speed", "fast", "fast", "quickly", "quick", "rapidly", "rapid", "swiftly", "swift", "speedily",
     "briskly", "high speed", "fast pace", "brisk pace")
_add("motion", "still", "still", "motionless", "stationary", "static", "immobile", "unmoving", "in place",
     "not moving", "does not move", "doesnt move", "not move", "at rest", "stays put")
_add("motion", "left", "left", "leftward", "leftwards", "westward")
_add("motion", "right", "right", "rightward", "rightwards", "eastward")
_add("motion", "up", "up", "upward", "upwards", "rises", "rising", "rise", "climbs", "climbing", "climb",
     "ascends", "ascending", "ascend")
_add("motion", "down", "down", "downward", "downwards", "sinks", "sinking", "sink", "descends",
     "descending", "descend")
_FALL_VERBS = ("falls", "falling", "fall", "drops", "dropping", "drop", "bounces", "bouncing", "bounce")
_add("motion", "fall_bounce", *_FALL_VERBS, *(f"{v} down" for v in _FALL_VERBS),
     *(f"{v} straight down" for v in _FALL_VERBS))
# words that make a bounce "around" the frame; alone they mean bounce_around too ("ricochets")
_add("motion", "_around", "around", "walls", "wall", "edges", "sides", "ricochets", "ricochet", "ricocheting",
     "zigzags", "zigzagging", "all over")
_ALL = ("all", "both", "each")  # "..., all still" gives the motion to every object named so far
_PILLAR_NOUNS = ("pillar", "column", "post", "pole", "occluder")
_add("pillar", True, *_PILLAR_NOUNS)
_add("texture", "grid", "grid", "grids", "gridded")
_add("texture", "dots", "dots", "dotted", "polka dots")
_add("texture", "stars", "stars", "starry", "starfield")
_CAMERA_CLAUSE = re.compile(r"\bcamera\b[^.;!?,]*")  # from "camera" to the end of its clause
_CLAUSE_END = re.compile(r"\b(and|while|as|whereas)\b")
_CAMERA_STILL = {"still", "static", "fixed", "stationary", "steady", "locked", "motionless", "not", "doesnt"}
_CAMERA_DIRECTIONS = {"left": "left", "leftward": "left", "right": "right", "rightward": "right", "up": "up",
                      "upward": "up", "upwards": "up", "down": "down", "downward": "down", "downwards": "down"}
_add("pillar", False, *(f"{p} {n}" for n in _PILLAR_NOUNS for p in ("no", "without", "without a", "without any")))

# Words that carry no attribute: articles, verbs of motion, filler of the World's own captions.
_STOP = set("""
a an the and or but with that which who whose is are was were be being it its itself it's they them
their there here this these those on in into onto of to at from by for while as then also meanwhile
so very just only both each one two three four 1 2 3 single another other second third first next
video clip scene frame frames view picture image shows show showing shown displays display features
featuring containing contains we see can you object objects shape shapes thing things item items
background backdrop color colored coloured plain solid pace speed dark brown vertical tall stands standing stand foreground front
behind passes passing pass hides hiding hide occludes occluding occlude part whatever everything happens
set against moves moving move slides sliding slide travels traveling travelling travel drifts drifting
drift glides gliding glide heads heading head goes going go toward towards across screen canvas floats
floating float off floor ground bottom top stays stay staying remains remain remaining sits sitting sit
does do not steadily steady constant constantly short long some keeps keep keeping bottom four all
over again repeatedly reflecting reflects bouncy spot along way direction side hits hitting hit lands
landing land onto before after partially partly briefly hidden visible view ahead forward
has have pattern patterned covers covered covering scattered field
""".split())


def _camera(text: str) -> tuple[dict | None, str]:
    """The camera a text names ({"motion", "speed"}) and the text without its camera clause."""
    match = _CAMERA_CLAUSE.search(text.lower())
    if match is None:
        return None, text
    clause = match.group(0)
    end = _CLAUSE_END.search(clause)
    clause = clause[:end.start()] if end else clause
    words = _tokens(clause)
    speeds = [_WORDS[w][1] for w in words if _WORDS.get(w, ("",))[0] == "speed"]
    if any(w.startswith("zoom") for w in words):
        if "in" in words or "closer" in words:
            motion = "zoom-in"
        elif "out" in words or "away" in words:
            motion = "zoom-out"
        else:
            raise ValueError(f"the camera zooms which way in {text!r}? say zooms in or zooms out")
    elif any(w in _CAMERA_DIRECTIONS for w in words):
        motion = "pan-" + next(_CAMERA_DIRECTIONS[w] for w in words if w in _CAMERA_DIRECTIONS)
    elif any(w in _CAMERA_STILL for w in words):
        motion = "static"
    else:
        raise ValueError(f"what does the camera do in {text!r}? say it pans left / right / up / down, zooms in / "
                         f"out, or stays still")
    speed = None if motion == "static" or not speeds else speeds[0]
    start = match.start()
    return {"motion": motion, "speed": speed}, text[:start] + text[start + len(clause):]


def _tokens(text: str) -> list[str]:
    text = text.lower().replace("'", "").replace("\u2019", "").replace("-", " ")
    return re.findall(r"[a-z0-9]+", text)


def _match(words: list[str]) -> list[tuple[str, object, int, str]]:
    """Longest-first phrase matching: [(kind, value, index of the word after it, matched text)]."""
    items, i, longest = [], 0, max(len(p) for p in _PHRASES)
    while i < len(words):
        for n in range(min(longest, len(words) - i), 1, -1):
            hit = _PHRASES.get(tuple(words[i:i + n]))
            if hit:
                items.append((*hit, i + n, " ".join(words[i:i + n])))
                i += n
                break
        else:
            w = words[i]
            if w in _WORDS:
                kind, value = _WORDS[w]
                items.append((kind, value, i + 1, w))
            elif w in _GENERIC_NOUNS and items and items[-1][0] in ("size", "color", "speed") and items[-1][2] == i:
                items.append(("noun", None, i + 1, w))  # "a red one", "a small object"
            elif w in _STOP:
                pass
            else:
                items.append(("unknown", w, i + 1, w))
            i += 1
    return items


def _merge_motion(old: str | None, new: str, where: str) -> str:
    if old is None or old == new:
        return new
    pair = {old, new}
    if pair <= {"fall_bounce", "_around", "bounce_around"}:
        return "bounce_around"  # "bounces" + "around" / "off the walls"
    raise ValueError(f"conflicting motions {old!r} and {new!r} for {where}; give one motion per object")


def _name(obj: dict | None) -> str:
    if obj is None:
        return "the first object"
    return " ".join(["the"] + [w for w in (obj["color"], obj["shape"] or "object") if w])


def _attach_orphans(objects: list[dict]) -> list[dict]:
    """Fold a phrase without color or shape into the object before it ("a yellow square, large")."""
    out: list[dict] = []
    for obj in objects:
        prev = out[-1] if out else None
        if prev is not None and not obj["color"] and not obj["shape"] and all(
                prev[k] is None or obj[k] is None or prev[k] == obj[k] for k in ("size", "motion", "speed")):
            for k in ("size", "motion", "speed"):
                prev[k] = prev[k] if prev[k] is not None else obj[k]
        else:
            out.append(obj)
    return out


def parse_prompt(text: str, strict: bool = False) -> dict:
    """Spec of a World-vocabulary prompt; fields the text leaves out are None (see module docstring).

    Raises ValueError naming the unknown words when no object (color or shape) is found, or, with
    `strict=True`, whenever any word is outside the World's vocabulary.
    """
    if not isinstance(text, str):
        raise ValueError(f"a prompt must be a string, got {type(text).__name__}")
    camera, text_rest = _camera(text)
    words = _tokens(text_rest)
    items = _match(words)
    unknown = [v for k, v, _, _ in items if k == "unknown"]
    if strict and unknown:
        raise ValueError(f"unknown words {unknown} in {text!r}; the World knows colors "
                         f"({', '.join(COLORS)}), shapes, sizes, motions, speeds, backgrounds and a pillar")
    objects: list[dict] = []
    current: dict | None = None
    pending: dict = {}  # motion / speed seen before any object: goes to the first one
    background, pillar, texture = None, False, None

    def new_object() -> dict:
        obj = {"color": None, "shape": None, "size": None, "motion": None, "speed": None, "_noun": False}
        for key, value in pending.items():
            obj[key] = value
        pending.clear()
        objects.append(obj)
        return obj

    for kind, value, end, matched in items:
        start = end - len(matched.split())  # index of the phrase's first word
        if kind == "speed":  # an adjective ("a fast red circle") when the next word opens a noun phrase
            nxt = words[end] if end < len(words) else None
            adjective = nxt in _GENERIC_NOUNS or _WORDS.get(nxt, ("",))[0] in ("size", "color", "shape")
            if adjective and (current is None or current["_noun"]):
                current = new_object()
            target = current if current is not None else pending
            target["speed"] = value
        elif kind in ("size", "color"):
            if current is None or current["_noun"] or current[kind] is not None:
                current = new_object()
            current[kind] = value
        elif kind in ("shape", "noun"):
            if current is None or current["_noun"]:
                current = new_object()
            current["shape"] = value if kind == "shape" else current["shape"]
            current["_noun"] = True
        elif kind == "motion" and start > 0 and words[start - 1] in _ALL:
            for obj in objects:  # "..., all still": every object so far
                obj["motion"] = _merge_motion(obj["motion"], value, _name(obj))
        elif kind == "motion":
            target = current if current is not None else pending
            target["motion"] = _merge_motion(target.get("motion"), value, _name(current))
        elif kind == "bg":
            if background is not None and background != value:
                raise ValueError(f"two backgrounds ({background}, {value}) in {text!r}; give one")
            background = value
        elif kind == "pillar":
            pillar = bool(value)
        elif kind == "texture":
            texture = value

    return _spec(_attach_orphans(objects), background, pillar, camera, texture, text, unknown)


def _spec(objects: list[dict], background, pillar: bool, camera, texture, text: str, unknown: list[str]) -> dict:
    """The parsed phrases as a spec, checked: at least one object, at most MAX_OBJECTS, one color each."""
    found = [o for o in objects if o["color"] or o["shape"]]
    if not found:
        hint = f"; unknown words: {unknown}" if unknown else ""
        raise ValueError(f"no object found in {text!r}: name a color ({', '.join(COLORS)}) or a shape "
                         f"(circle, square, triangle){hint}")
    if len(objects) > MAX_OBJECTS:
        raise ValueError(f"{len(objects)} objects in {text!r}; the World has 1 to {MAX_OBJECTS} per scene")
    colors = [o["color"] for o in objects if o["color"]]
    if len(set(colors)) != len(colors):
        raise ValueError(f"objects of one scene have different colors, got {colors} in {text!r}")
    for o in objects:
        del o["_noun"]
        if o["motion"] == "_around":
            o["motion"] = "bounce_around"
        if o["motion"] == "still":
            o["speed"] = None
    spec = {"background": background, "pillar": pillar, "objects": objects}
    if camera is not None or texture is not None:
        spec.update(camera=camera, texture=texture)
    assert texture is None or texture in TEXTURES  # the words above name TEXTURES only
    return spec
