"""The World's language as a text Vocabulary (chronotope/text/vocabulary.py): its parser, its caption writer and
its words, for prompt expansion and storyboards. A model folder names it as "chronotope.world.vocabulary:WORLD"
(the default of a folder that names none).
"""

from __future__ import annotations

import numpy as np

from .captions import detailed_caption
from .parser import parse_prompt
from .scene import scene_from_spec
from .vocab import BACKGROUNDS, COLORS, MOTIONS, SHAPES, SIZES, SPEEDS


class WorldVocabulary:
    """The World's prompts: 1 to 3 objects (color, shape, size, motion, speed) on a background, maybe a pillar."""

    name = "World"
    character, traits = "color", ("shape", "size")  # objects of one scene have different colors
    words = {"size": tuple(SIZES), "color": tuple(COLORS), "shape": SHAPES,
             "motion": tuple(m.replace("_", " ") for m in MOTIONS), "speed": SPEEDS, "background": tuple(BACKGROUNDS)}

    def parse(self, prompt: str) -> tuple[dict | None, str]:
        try:
            spec = parse_prompt(prompt)
        except ValueError as err:
            return None, str(err)
        if not spec or not spec.get("objects"):
            return None, "no World object found"
        return spec, ""

    def unspecified(self, spec: dict) -> list[str]:
        missing = [k for k in ("background",) if spec.get(k) is None]
        for i, obj in enumerate(spec.get("objects") or []):
            for key in ("color", "shape", "size", "motion"):
                if obj.get(key) is None:
                    missing.append(f"objects[{i}].{key}")
            if obj.get("motion") != "still" and obj.get("speed") is None:
                missing.append(f"objects[{i}].speed")
        return missing

    def caption(self, spec: dict, seed: int) -> tuple[str, dict]:
        scene = scene_from_spec(spec, seed)  # fills every None from the seed
        return detailed_caption(scene, np.random.default_rng([int(seed), 2])), scene.spec


WORLD = WorldVocabulary()
