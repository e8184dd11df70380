"""Captions for World scenes: a detailed caption (every attribute, several phrasings each) and a short one.

Re-captioning in the spirit of DALL-E 3 / Sora: training text describes everything in the video,
with varied wording so a model learns meanings rather than templates. Every phrasing here is
understood by `parse_prompt`, which maps any detailed caption back to exactly its scene's spec
(a property tested over thousands of seeds).

    detailed_caption(scene, 0) -> "A small red circle slowly slides to the left. A large blue
                                   square falls and bounces. The background is gray."
    short_caption(scene)       -> "a red circle and a blue square"

A camera scene (world/camera.py) adds a sentence on the camera ("The camera pans slowly to the left.") and
one on the background's texture, drawn after everything else, so scenes without a camera read as before.
"""

from __future__ import annotations

import numpy as np

from .scene import Scene

SIZE_WORDS = {"small": ["small", "little", "tiny"], "large": ["large", "big", "huge"]}
SHAPE_WORDS = {"circle": ["circle", "circle", "disc", "ball"], "square": ["square", "square", "block"],
               "triangle": ["triangle"]}
BACKGROUND_WORDS = {"black": ["black"], "white": ["white"], "gray": ["gray", "grey"]}
MOTION_PHRASES = {
    "still": ["stays still", "remains motionless", "does not move", "sits still", "stays in place",
              "is stationary"],
    "left": ["moves left", "slides to the left", "travels leftward", "drifts toward the left", "glides left"],
    "right": ["moves right", "slides to the right", "travels rightward", "drifts toward the right",
              "glides right"],
    "up": ["moves up", "rises", "travels upward", "floats up", "climbs upward"],
    "down": ["moves down", "sinks", "travels downward", "slides down", "descends"],
    "fall_bounce": ["falls and bounces", "drops to the floor and bounces", "falls to the bottom and bounces",
                    "falls down and bounces on the floor"],
    "bounce_around": ["bounces around", "bounces off the walls", "ricochets around the frame",
                      "bounces around the frame", "bounces off all four edges"],
}
# (adverb placed before the verb, phrase placed after it)
SPEED_WORDS = {"slow": (["slowly", "gently", "leisurely"], ["slowly", "at a slow pace", "gently"]),
               "fast": (["quickly", "rapidly", "swiftly"], ["quickly", "fast", "at high speed", "rapidly"])}
OPENERS = ["A {noun}", "A {noun}", "There is a {noun} that", "We see a {noun} that", "One {noun}"]
LATER_OPENERS = ["A {noun}", "Another object, a {noun},", "Meanwhile, a {noun}", "There is also a {noun} that",
                 "Next to it, a {noun}"]
BACKGROUND_SENTENCES = ["The background is {bg}.", "The background is a plain {bg}.",
                        "Everything happens on a {bg} background.", "The scene is set against a {bg} backdrop."]
BACKGROUND_PREFIXES = ["On a {bg} background, ", "Against a {bg} backdrop, "]
PILLAR_SENTENCES = ["A dark brown pillar stands in the foreground.",
                    "A dark-brown vertical pillar stands in front of the objects.",
                    "A brown pillar in the foreground hides whatever passes behind it.",
                    "In front, a tall dark brown column occludes part of the view."]
PASS_BEHIND = [", passing behind the pillar", " and passes behind the pillar"]
INTROS = ["", "", "A short clip. ", "In this video, ", "The video shows {count} on a {bg} background. "]
COUNT_WORDS = {1: "one object", 2: "two objects", 3: "three objects"}
CAMERA_PHRASES = {
    "static": ["The camera stays still.", "The camera does not move.", "The camera is static."],
    "pan-left": ["The camera pans {adv} to the left.", "The camera {adv} pans left.", "The camera pans left {adv}."],
    "pan-right": ["The camera pans {adv} to the right.", "The camera {adv} pans right.",
                  "The camera pans right {adv}."],
    "pan-up": ["The camera pans {adv} upward.", "The camera {adv} pans up.", "The camera tilts up {adv}."],
    "pan-down": ["The camera pans {adv} downward.", "The camera {adv} pans down.", "The camera tilts down {adv}."],
    "zoom-in": ["The camera zooms in {adv}.", "The camera {adv} zooms in."],
    "zoom-out": ["The camera zooms out {adv}.", "The camera {adv} zooms out."],
}
CAMERA_ADVERBS = {"slow": ["slowly", "gently"], "fast": ["quickly", "rapidly", "fast"]}
TEXTURE_SENTENCES = {"grid": ["The background has a grid pattern.", "A grid covers the background."],
                     "dots": ["The background is covered in dots.", "The background has a pattern of dots."],
                     "stars": ["The background is a field of stars.", "Stars are scattered across the background."]}


def _rng(seed_or_rng: int | np.random.Generator | None) -> np.random.Generator:
    if isinstance(seed_or_rng, np.random.Generator):
        return seed_or_rng
    return np.random.default_rng(seed_or_rng)


def _pick(rng: np.random.Generator, options: list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _object_sentence(obj, rng: np.random.Generator, first: bool, pass_behind: bool) -> str:
    noun = f"{_pick(rng, SIZE_WORDS[obj.size])} {obj.color} {_pick(rng, SHAPE_WORDS[obj.shape])}"
    opener = _pick(rng, OPENERS if first else LATER_OPENERS).format(noun=noun)
    verb = _pick(rng, MOTION_PHRASES[obj.motion])
    if obj.motion != "still":
        before, after = SPEED_WORDS[obj.speed]
        if rng.random() < 0.4:
            verb = f"{_pick(rng, before)} {verb}"
        else:
            verb = f"{verb} {_pick(rng, after)}"
    if pass_behind:
        verb += _pick(rng, PASS_BEHIND)
    return f"{opener} {verb}."


def detailed_caption(scene: Scene, seed_or_rng: int | np.random.Generator | None = None) -> str:
    """A caption naming every object's size, color, shape, motion and speed, the background and the pillar.

    The wording is drawn from `seed_or_rng` (an int seed or a numpy Generator); meaning never varies.
    """
    rng = _rng(seed_or_rng)
    bg = _pick(rng, BACKGROUND_WORDS[scene.background])
    movers = [i for i, o in enumerate(scene.objects) if o.motion in ("left", "right")]
    behind = movers[0] if scene.pillar and movers and rng.random() < 0.5 else None
    sentences = [_object_sentence(o, rng, i == 0, i == behind) for i, o in enumerate(scene.objects)]
    if scene.pillar and (behind is None or rng.random() < 0.5):
        sentences.insert(int(rng.integers(1, len(sentences) + 1)), _pick(rng, PILLAR_SENTENCES))
    template = _pick(rng, INTROS)
    intro = template.format(count=COUNT_WORDS[len(scene.objects)], bg=bg)
    if "{bg}" in template:  # the intro already names the background
        text = intro + " ".join(sentences)
    elif rng.random() < 0.3:
        first = sentences[0]
        sentences[0] = _pick(rng, BACKGROUND_PREFIXES).format(bg=bg) + first[0].lower() + first[1:]
        text = intro + " ".join(sentences)
    else:
        text = intro + " ".join(sentences + [_pick(rng, BACKGROUND_SENTENCES).format(bg=bg)])
    if scene.camera is not None:
        camera = scene.camera
        adverb = _pick(rng, CAMERA_ADVERBS[camera.speed]) if camera.speed else ""
        text += " " + _pick(rng, TEXTURE_SENTENCES[scene.texture]) + " " + \
            _pick(rng, CAMERA_PHRASES[camera.motion]).format(adv=adverb)
    return text


def short_caption(scene: Scene) -> str:
    """The objects alone, by color and shape: "a red circle", "a red circle and a blue square", ..."""
    names = [f"a {o.color} {o.shape}" for o in scene.objects]
    if len(names) == 1:
        return names[0]
    return ", ".join(names[:-1]) + " and " + names[-1]
