"""Prompt expansion: a short user prompt -> a detailed caption in the style the model was trained on.

DALL-E 3 and Sora train on long, descriptive re-captions and, at inference, have a language model
rewrite the user's short prompt into that style, so the text the model sees matches its training
distribution. Here the training captions come from the data source's caption writer, reached through the
model's Vocabulary (text/vocabulary.py; the World's by default), so the default expander is exact and needs no
language model:

    vocabulary.parse(prompt) -> partial spec (None = unspecified) -> vocabulary.caption(spec, seed): the gaps
    filled from the seed, the caption written as the training captions were

    expand_prompt("a red circle", seed=0)
    -> "A small red circle quickly bounces off the walls. The background is gray."

Prompts outside the vocabulary (no object the parser recognises) are returned unchanged, with `Expansion.note`
saying why: inventing attributes for them would only add noise; so are all prompts of a model without a
vocabulary (vocabulary=None). A language model can be plugged in instead: `ChatExpander(url, model)` posts to any
OpenAI-compatible `{url}/chat/completions` endpoint (a local llama.cpp / vLLM / Ollama server); it is off by default.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Callable

from chronotope.text.vocabulary import DEFAULT_VOCABULARY, Vocabulary, resolve_vocabulary


@dataclass
class Expansion:
    """Result of expanding one prompt: the text to encode, whether it changed, the spec, and why not."""

    text: str
    expanded: bool
    spec: dict | None = None  # the completed spec when the vocabulary's expander ran
    note: str = ""
    missing: list[str] = field(default_factory=list)  # the attributes filled from the seed


QUOTE = 60  # characters of a prompt a note may quote; a long prompt is named, not echoed


def _parse(prompt: str, vocabulary: Vocabulary) -> tuple[dict | None, str]:
    """(the vocabulary's partial spec, "") or (None, its reason) for a prompt outside it. The reason quotes at most
    QUOTE characters of the prompt (a parser's message may quote all of it)."""
    spec, reason = vocabulary.parse(prompt)
    if spec is not None:
        return spec, ""
    if len(prompt) > QUOTE:
        reason = reason.replace(repr(prompt), f"the prompt ({len(prompt):,} characters)")
    return None, reason if len(reason) <= 4 * QUOTE else reason[: 4 * QUOTE] + "..."


def unspecified(spec: dict, vocabulary: Vocabulary | str = DEFAULT_VOCABULARY) -> list[str]:
    """Names of the attributes a partial spec leaves open, e.g. ["background", "objects[0].motion"]."""
    return resolve_vocabulary(vocabulary).unspecified(spec)


def expand_in_vocabulary(prompt: str, seed: int, enabled: bool | None = None,
                 vocabulary: Vocabulary | str | None = DEFAULT_VOCABULARY) -> Expansion:
    """Expand a prompt of the vocabulary with its own caption writer (deterministic per seed).

    enabled=None expands only prompts that leave some attribute open (short prompts); True also
    rewrites complete ones into the training caption style; False returns the prompt unchanged.
    """
    if enabled is False:
        return Expansion(prompt, False, note="expansion disabled")
    vocabulary = resolve_vocabulary(vocabulary)
    if vocabulary is None:
        return Expansion(prompt, False, note="the model names no vocabulary to expand prompts with, left unchanged")
    spec, reason = _parse(prompt, vocabulary)
    if spec is None:
        return Expansion(prompt, False, note=f"not a {vocabulary.name} prompt, left unchanged: {reason}")
    missing = vocabulary.unspecified(spec)
    if enabled is None and not missing:
        return Expansion(prompt, False, spec=spec, note="prompt already specifies every attribute")
    text, spec = vocabulary.caption(spec, seed)
    return Expansion(text, True, spec=spec, missing=missing)


# --- a language model behind an OpenAI-compatible endpoint ---------------------------------------------


def caption_style_prompt(vocabulary: Vocabulary | str = DEFAULT_VOCABULARY) -> str:
    """System prompt describing the training caption style and vocabulary to a chat model."""
    words = {k: ", ".join(v) for k, v in resolve_vocabulary(vocabulary).words.items()}
    return (
        "You rewrite a short video prompt into one detailed caption of 1 to 5 plain sentences, in the "
        "style of the training captions of a text-to-video model. The videos show 1 to 3 flat objects of "
        "different colors on a plain background. Name, for every object, its size "
        f"({words['size']}), color ({words['color']}), shape ({words['shape']}), motion "
        f"({words['motion']}) and speed ({words['speed']}); then the "
        f"background ({words['background']}) and whether a dark brown pillar stands in the foreground. "
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


def expand(prompt: str, seed: int, enabled: bool | None = None, expander: Callable[[str, int], str] | None = None,
           vocabulary: Vocabulary | str | None = DEFAULT_VOCABULARY) -> Expansion:
    """Expand `prompt` with the vocabulary's expander (default: the World's) or a pluggable
    `expander(prompt, seed) -> str`.

    enabled=None: the vocabulary's expander runs on its prompts with open attributes; a custom expander
    runs on prompts of fewer than 25 words. enabled=True: always; enabled=False: never.
    """
    if expander is None:
        return expand_in_vocabulary(prompt, seed, enabled, vocabulary)
    if enabled is False or (enabled is None and len(prompt.split()) >= 25):
        return Expansion(prompt, False, note="expansion disabled" if enabled is False else "prompt already long")
    return Expansion(expander(prompt, seed), True)


def expand_prompt(prompt: str, seed: int, enabled: bool | None = None,
                  expander: Callable[[str, int], str] | None = None,
                  vocabulary: Vocabulary | str | None = DEFAULT_VOCABULARY) -> str:
    """The expanded caption as a string (see `expand` for the rules); unchanged for prompts outside the vocabulary."""
    return expand(prompt, seed, enabled, expander, vocabulary).text
