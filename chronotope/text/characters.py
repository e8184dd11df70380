"""Characters kept across the shots of a storyboard: an object named again keeps the attributes an earlier shot
gave it ("a red circle" after "a large red circle moves left" is a large red circle), and prompt expansion fills
only what no shot said. Objects are known by the vocabulary's `character` attribute (the World's: color).
"""

from __future__ import annotations

from chronotope.text.vocabulary import DEFAULT_VOCABULARY, Vocabulary, resolve_vocabulary


def carry_characters(prompts: list[str], seeds: list[int], expand: bool, carry: str,
                     vocabulary: Vocabulary | str | None = DEFAULT_VOCABULARY) -> list[tuple[str, dict | None]]:
    """(text to encode, spec or None) per shot. With expansion on, a prompt of the vocabulary that leaves attributes
    open is expanded (vocabulary.caption) after taking, with carry="characters", the traits (the World's: shape and
    size) that an earlier shot gave each object of the same character (color); complete prompts, prompts outside the
    vocabulary and every prompt of a model without one (vocabulary=None) are kept."""
    vocabulary = resolve_vocabulary(vocabulary)
    if vocabulary is None:
        return [(prompt, None) for prompt in prompts]
    key = vocabulary.character
    cast: dict[str, dict] = {}
    out = []
    for prompt, seed in zip(prompts, seeds):
        spec, _ = vocabulary.parse(prompt)
        if spec is None:
            out.append((prompt, None))
            continue
        if carry == "characters":
            for o in spec["objects"]:
                for trait in vocabulary.traits:
                    if o.get(key) in cast and o.get(trait) is None:
                        o[trait] = cast[o[key]][trait]
        if expand and vocabulary.unspecified(spec):
            text, spec = vocabulary.caption(spec, seed)
        else:
            text = prompt
        for o in spec["objects"]:
            if o.get(key) and all(o.get(trait) for trait in vocabulary.traits):
                cast.setdefault(o[key], o)
        out.append((text, spec))
    return out
