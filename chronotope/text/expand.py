"""Prompt expansion: a short user prompt -> a detailed caption in the style the model was trained on.

DALL-E 3 and Sora train on long, descriptive re-captions and, at inference, have a language model
rewrite the user's short prompt into that style, so the text the model sees matches its training
distribution. Here the training captions come from the World's caption writer, so the default
expander is exact and needs no language model:

    parse_prompt(prompt) -> partial spec (None = unspecified) -> fill the gaps from the seed
    (scene_from_spec) -> detailed_caption(scene, seed)

    expand_prompt("a red circle", seed=0)
    -> "A small red circle quickly bounces off the walls. The background is gray."

Prompts outside the World vocabulary (no object the parser recognises) are returned unchanged,
with `Expansion.note` saying why: inventing attributes for them would only add noise. A language
model can be plugged in instead: `ChatExpander(url, model)` posts to any OpenAI-compatible
`{url}/chat/completions` endpoint (a local llama.cpp / vLLM / Ollama server); it is off by default.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from chronotope.world.vocab import BACKGROUNDS, COLORS, MOTIONS, SHAPES, SIZES, SPEEDS


@dataclass
class Expansion:
    """Result of expanding one prompt: the text to encode, whether it changed, the spec, and why not."""

    text: str
    expanded: bool
    spec: dict | None = None  # the completed World spec when the World expander ran
    note: str = ""
    missing: list[str] = field(default_factory=list)  # the attributes filled from the seed


QUOTE = 60  # characters of a prompt a note may quote; a long prompt is named, not echoed


def _parse(prompt: str) -> tuple[dict | None, str]:
    """(the World parser's partial spec, "") or (None, the parser's reason) for a non-World prompt. The reason
    quotes at most QUOTE characters of the prompt (the parser's message quotes all of it)."""
    from chronotope.world.parser import parse_prompt  # the World's text -> spec parser

    try:
        spec = parse_prompt(prompt)
    except ValueError as err:
        reason = str(err)
        if len(prompt) > QUOTE:
            reason = reason.replace(repr(prompt), f"the prompt ({len(prompt):,} characters)")
        return None, reason if len(reason) <= 4 * QUOTE else reason[: 4 * QUOTE] + "..."
    if not spec or not spec.get("objects"):
        return None, "no World object found"
    return spec, ""


def unspecified(spec: dict) -> list[str]:
    """Names of the attributes a partial spec leaves open, e.g. ["background", "objects[0].motion"]."""
    missing = [k for k in ("background",) if spec.get(k) is None]
    for i, obj in enumerate(spec.get("objects") or []):
        for key in ("color", "shape", "size", "motion"):
            if obj.get(key) is None:
                missing.append(f"objects[{i}].{key}")
        if obj.get("motion") != "still" and obj.get("speed") is None:
            missing.append(f"objects[{i}].speed")
    return missing


def expand_world(prompt: str, seed: int, enabled: bool | None = None) -> Expansion:
    """Expand a World-vocabulary prompt with the World's own caption writer (deterministic per seed).

    enabled=None expands only prompts that leave some attribute open (short prompts); True also
    rewrites complete ones into the training caption style; False returns the prompt unchanged.
    """
    if enabled is False:
        return Expansion(prompt, False, note="expansion disabled")
    spec, reason = _parse(prompt)
    if spec is None:
        return Expansion(prompt, False, note=f"not a World prompt, left unchanged: {reason}")
    missing = unspecified(spec)
    if enabled is None and not missing:
        return Expansion(prompt, False, spec=spec, note="prompt already specifies every attribute")
    from chronotope.world.captions import detailed_caption
    from chronotope.world.scene import scene_from_spec

    scene = scene_from_spec(spec, seed)  # fills every None from the seed
    text = detailed_caption(scene, np.random.default_rng([int(seed), 2]))
    return Expansion(text, True, spec=scene.spec, missing=missing)


# --- a language model behind an OpenAI-compatible endpoint ---------------------------------------------


def caption_style_prompt() -> str:
    """System prompt describing the training caption style and vocabulary to a chat model."""
    return (
        "You rewrite a short video prompt into one detailed caption of 1 to 5 plain sentences, in the "
        "style of the training captions of a text-to-video model. The videos show 1 to 3 flat objects of "
        "different colors on a plain background. Name, for every object, its size "
        f"({', '.join(SIZES)}), color ({', '.join(COLORS)}), shape ({', '.join(SHAPES)}), motion "
        f"({', '.join(m.replace('_', ' ') for m in MOTIONS)}) and speed ({', '.join(SPEEDS)}); then the "
        f"background ({', '.join(BACKGROUNDS)}) and whether a dark brown pillar stands in the foreground. "
        "Keep everything the user specified; choose plausible values for the rest. Example: "
        "\"A small red circle slowly slides to the left. A large blue square falls and bounces. "
        "The background is gray.\" Reply with the caption only."
    )


class ChatExpander:
    """Prompt expansion by a chat model at an OpenAI-compatible endpoint (POST {url}/chat/completions).

    Uses only the standard library. `seed` is forwarded (servers that honour it are deterministic)
    and temperature is 0 by default.
    """

    def __init__(self, url: str, model: str, api_key: str | None = None, timeout: float = 60.0,
                 temperature: float = 0.0, system_prompt: str | None = None):
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"expander url must start with http:// or https://, got {url!r}")
        self.url = url.rstrip("/")
        self.model, self.api_key, self.timeout, self.temperature = model, api_key, timeout, temperature
        self.system_prompt = system_prompt or caption_style_prompt()

    def __call__(self, prompt: str, seed: int = 0) -> str:
        body = {
            "model": self.model,
            "messages": [{"role": "system", "content": self.system_prompt}, {"role": "user", "content": prompt}],
            "temperature": self.temperature,
            "seed": int(seed),
        }
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        endpoint = f"{self.url}/chat/completions"
        request = urllib.request.Request(endpoint, json.dumps(body).encode(), headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                reply = json.loads(response.read().decode("utf-8"))
        except urllib.error.HTTPError as err:
            detail = err.read().decode("utf-8", "replace")[:200]
            raise RuntimeError(f"prompt expander {endpoint} answered HTTP {err.code}: {detail}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
            reason = getattr(err, "reason", err)
            raise ConnectionError(
                f"prompt expander {endpoint} is unreachable ({reason}); start the server, fix the url, "
                "or run without the chat expander"
            ) from None
        except json.JSONDecodeError:
            raise RuntimeError(f"prompt expander {endpoint} did not answer JSON") from None
        try:
            text = reply["choices"][0]["message"]["content"].strip()
        except (KeyError, IndexError, TypeError, AttributeError):
            raise RuntimeError(f"prompt expander {endpoint} answered without choices[0].message.content") from None
        if not text:
            raise RuntimeError(f"prompt expander {endpoint} returned an empty caption")
        return text


def expand(
    prompt: str, seed: int, enabled: bool | None = None, expander: Callable[[str, int], str] | None = None
) -> Expansion:
    """Expand `prompt` with the World expander (default) or a pluggable `expander(prompt, seed) -> str`.

    enabled=None: the World expander runs on World prompts with open attributes; a custom expander
    runs on prompts of fewer than 25 words. enabled=True: always; enabled=False: never.
    """
    if expander is None:
        return expand_world(prompt, seed, enabled)
    if enabled is False or (enabled is None and len(prompt.split()) >= 25):
        return Expansion(prompt, False, note="expansion disabled" if enabled is False else "prompt already long")
    return Expansion(expander(prompt, seed), True)


def expand_prompt(
    prompt: str, seed: int, enabled: bool | None = None, expander: Callable[[str, int], str] | None = None
) -> str:
    """The expanded caption as a string (see `expand` for the rules); unchanged for non-World prompts."""
    return expand(prompt, seed, enabled, expander).text
