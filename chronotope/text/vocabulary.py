"""The language of a model's training data, as text and generation see it: a `Vocabulary` parses a prompt into a
spec, names what the spec leaves open and writes the detailed caption a training video of that spec had.

Text and generation never import a data source: a model folder names the vocabulary it speaks, the way it names
its classes, and it is imported by name (model_index.json "vocabulary": "chronotope.world.vocabulary:WORLD").
A folder that names none speaks the World's (DEFAULT_VOCABULARY); "vocabulary": null says the model was trained
on other data, and prompt expansion then leaves prompts as written.

    vocabulary = folder_vocabulary("runs/world-model")         # model_vocabulary(its model_index.json)
    spec, reason = vocabulary.parse("a red circle")          # partial spec, or (None, why not)
    text, spec = vocabulary.caption(spec, seed=0)            # every open attribute filled from the seed
"""

from __future__ import annotations

import functools
import importlib
import json
import os
from pathlib import Path
from typing import Protocol, runtime_checkable

DEFAULT_VOCABULARY = "chronotope.world.vocabulary:WORLD"  # what a model folder that names no vocabulary speaks


@runtime_checkable
class Vocabulary(Protocol):
    """What text and generation need of a data source's language. A spec is plain JSON with a list "objects"."""

    name: str  # in notes: "not a World prompt"
    # storyboards keep characters across shots: an object is known by `character` (e.g. its color) and keeps the
    # `traits` (e.g. shape and size) an earlier shot gave it
    character: str
    traits: tuple[str, ...]
    # the words of each attribute, for a chat model's style prompt: {"size": (...), "color": (...), ...}
    words: dict[str, tuple[str, ...]]

    def parse(self, prompt: str) -> tuple[dict | None, str]:
        """(partial spec, "") with None for what the prompt leaves open, or (None, why it is not a prompt of this
        vocabulary)."""
        ...

    def unspecified(self, spec: dict) -> list[str]:
        """The attributes a partial spec leaves open, e.g. ["background", "objects[0].motion"]."""
        ...

    def caption(self, spec: dict, seed: int) -> tuple[str, dict]:
        """(detailed caption, completed spec): the open attributes filled from `seed`, deterministically."""
        ...


@functools.lru_cache(maxsize=None)
def load_vocabulary(name: str) -> Vocabulary:
    """The vocabulary a "module:attribute" name points at; ValueError with what to write instead."""
    module, _, attribute = name.partition(":")
    if not module or not attribute:
        raise ValueError(f"vocabulary {name!r}: name it as \"module:attribute\", e.g. {DEFAULT_VOCABULARY!r}")
    try:
        vocabulary = getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"vocabulary {name!r} cannot be imported ({err}); name an importable \"module:attribute\" "
                         "in model_index.json, or null for a model without one") from None
    if not isinstance(vocabulary, Vocabulary):
        raise ValueError(f"vocabulary {name!r} is a {type(vocabulary).__name__}, not a Vocabulary "
                         "(chronotope/text/vocabulary.py says what one has)")
    return vocabulary


def resolve_vocabulary(vocabulary: Vocabulary | str | None) -> Vocabulary | None:
    """A Vocabulary as given, or the one a "module:attribute" name points at; None stays None (no vocabulary)."""
    return load_vocabulary(vocabulary) if isinstance(vocabulary, str) else vocabulary


def model_vocabulary(index: dict) -> Vocabulary | None:
    """The vocabulary a model folder's model_index.json names ("vocabulary"): the World's when it names none, None
    when it says null."""
    return resolve_vocabulary(index.get("vocabulary", DEFAULT_VOCABULARY))


def folder_vocabulary(folder: str | os.PathLike) -> Vocabulary | None:
    """The vocabulary a model folder names in its model_index.json (model_vocabulary): the World's when it names
    none, or when the folder has no model_index.json to read."""
    index = Path(folder) / "model_index.json"
    return model_vocabulary(json.loads(index.read_text()) if index.is_file() else {})
