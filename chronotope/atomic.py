"""Atomic writes: a reader (or a crash) sees the old file or the new one, never half of one.

Every output of the project goes through here: write to a temp file in the same folder, fsync,
rename onto the target. Folders (model folders) are written beside the old one and swapped in.

    atomic_write(path, lambda tmp: fig.savefig(tmp))      # any writer that takes a path
    atomic_write_text(path, text); atomic_write_json(path, obj)
    tmp = temp_beside(path); ...stream into tmp...; publish(tmp, path)
    swap_in_folder(folder, lambda tmp: model.save_pretrained(tmp))
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make a rename inside `folder` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def publish(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Rename a finished temp file onto `path`, with the usual permissions (mkstemp makes 0600 files)."""
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)


def temp_beside(path: str | os.PathLike) -> str:
    """A new empty temp file in `path`'s folder (made if missing), same extension, for `publish` to rename onto
    `path` later; a writer that streams (chronotope.video.Mp4Writer) opens it itself."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    return tmp


def atomic_write(path: str | os.PathLike, write: Callable[[str], Any], fsync: bool = True) -> Path:
    """Call write(tmp_path) on a temp file beside `path` (same extension), then rename it onto `path`.

    On any failure the temp file is removed and `path` is left as it was.
    """
    path = Path(path)
    tmp = temp_beside(path)
    try:
        write(tmp)
        if fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        publish(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    return atomic_write(path, write)


def finite_json(obj: Any) -> Any:
    """`obj` with every NaN or infinite float replaced by None, so that it is valid JSON (which has no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    return obj


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 1) -> Path:
    """Valid JSON always: non-finite floats are written as null (json.dumps would write a bare NaN)."""
    return atomic_write_text(path, json.dumps(finite_json(obj), indent=indent, default=str, allow_nan=False))


def swap_in_folder(final: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """write(tmp_folder), then replace folder `final` by it: readers see the old or the new folder, whole."""
    final = Path(final)
    tmp, old = final.with_name(final.name + ".tmp"), final.with_name(final.name + ".old")
    for p in (tmp, old):
        if p.exists():
            shutil.rmtree(p)
    write(tmp)
    if final.exists():
        os.rename(final, old)
    os.rename(tmp, final)
    fsync_dir(final.parent)
    if old.exists():
        shutil.rmtree(old)
    return final
