"""How a caller spells a request's parameters in its errors: as Python keywords (`num_frames=6`), or as the flags
or labels its user typed (`--num-frames 6`, `Frames 6`). The command line and the web app install their table with
spelled(); every check names a parameter through arg().

    with spelled({"num_frames": "--num-frames"}):
        arg("num_frames", 6)   # "--num-frames 6"
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

# how callers spell parameters: None = as Python keywords; the CLI installs its flag table with spelled()
_SPELLING: ContextVar[dict[str, str] | None] = ContextVar("chronotope_request_spelling", default=None)


@contextlib.contextmanager
def spelled(names: dict[str, str]) -> Iterator[None]:
    """Within the block, arg() spells parameters as `names` maps them (e.g. num_frames -> --num-frames)."""
    token = _SPELLING.set(names)
    try:
        yield
    finally:
        _SPELLING.reset(token)


_MISSING = object()


def arg(param: str, value: Any = _MISSING) -> str:
    """A parameter as the caller wrote it: `num_frames` / `num_frames=6`, or `--num-frames` / `--num-frames 6`."""
    names = _SPELLING.get()
    if param.startswith("-"):  # already a flag (a command's own option, e.g. train world-model's --minutes)
        flag = param
    elif names is None or param not in names:
        return param if value is _MISSING else f"{param}={value!r}"
    else:
        flag = names[param]
    return flag if value is _MISSING else f"{flag} {value}"
