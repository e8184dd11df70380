"""Where a command may write, checked before any work: an output that would replace one of its inputs (the same
file once links and relative paths are resolved) is refused, and so is one that cannot be written (a read-only
folder, a file where a folder is needed). Errors name the path the user gave, not a temporary file.

    check_output("--out a", ["a.mp4", "a.json"], {"--video": "a.mp4"})  # ValueError: would replace --video a.mp4
    check_output("--out runs/x", ["runs/x"], folder=True)               # a folder, made later if missing
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence

PathLike = str | os.PathLike
Inputs = Mapping[str, PathLike | Sequence[PathLike] | None] | Iterable[tuple[str, PathLike | Sequence[PathLike] | None]]


def _paths(value: PathLike | Sequence[PathLike] | None) -> list[str]:
    if value is None:
        return []
    return [os.fspath(value)] if isinstance(value, (str, os.PathLike)) else [os.fspath(v) for v in value]


def same_file(a: PathLike, b: PathLike) -> bool:
    """Whether `a` and `b` are one existing file (links, relative paths and `..` resolved)."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist: nothing to replace
        return False


def _inside(path: str, folder: str) -> bool:
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def writable_folder(path: PathLike) -> str:
    """The folder that writing `path` (a file or a folder, made with its parents if missing) needs to create
    entries in; OSError naming it when it cannot: a file on the way, or a folder that takes no new file."""
    path = os.path.abspath(os.fspath(path))
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    while not os.path.exists(folder):
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        raise NotADirectoryError(f"{folder} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=folder):  # an unnamed file where the OS allows: nothing is left behind
            pass
    except OSError as err:
        raise OSError(err.errno, f"cannot write in {folder} ({err.strerror or err})") from None
    return folder


def check_output(name: str, paths: PathLike | Iterable[PathLike],
                 inputs: Inputs | None = None, *, folder: bool | None = False, replaces_folder: bool = False) -> None:
    """ValueError, before any work, when writing `paths` (what the output `name` - as the user typed it, e.g.
    "--out a" - turns into: files such as a video and its sidecar, or a folder with `folder`; None: either) would
    replace an input or cannot be done. `inputs` pairs each input's flag (e.g. "--video"; "" for a positional
    one) with its path(s), as a mapping or (flag, paths) pairs. With `replaces_folder` the folder is replaced
    whole, so an input inside it is refused too."""
    paths = _paths(paths) if isinstance(paths, (str, os.PathLike)) else [os.fspath(p) for p in paths]
    pairs = inputs.items() if isinstance(inputs, Mapping) else (inputs or [])
    given = [(label, p) for label, value in pairs for p in _paths(value)]
    for path in paths:
        if folder and os.path.exists(path) and not os.path.isdir(path):
            raise ValueError(f"{name}: {path} is a file; give a folder")
        if folder is False and os.path.isdir(path):
            raise ValueError(f"{name}: {path} is a folder; give a file name")
        for label, src in given:
            if (same_file(path, src) and not os.path.isdir(src)) or (replaces_folder and _inside(src, path)):
                raise ValueError(f"{name}: writing {path} would replace the input {f'{label} {src}'.strip()}; "
                                 "give another name, so that the input is kept")
        try:
            writable_folder(path)
        except OSError as err:
            raise ValueError(f"{name}: {err.strerror or err}; give a folder you can write to") from None
