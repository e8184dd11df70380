"""Dataset manifests: one CSV row per clip, Open-Sora's columns (`path,text,num_frames,height,
width,aspect_ratio,fps`) plus optional `short_text` and `spec` (JSON) for World clips.

Relative paths are resolved against the manifest's folder, so a folder of clips and its CSV
move together. `build_manifest` makes one for a user's folder of videos and images:

    chronotope manifest my_videos/ --out my_videos/manifest.csv
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, field

from tqdm import tqdm

from chronotope.atomic import atomic_write
from chronotope.outputs import check_output
from chronotope.request import arg
from chronotope.video import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, VideoReadError, probe_video

MANIFEST_COLUMNS = ("path", "text", "num_frames", "height", "width", "aspect_ratio", "fps")
OPTIONAL_COLUMNS = ("short_text", "spec", "shots", "conditions")  # shots: a World storyboard's per-shot JSON list
_INT_COLUMNS = ("num_frames", "height", "width")

# name -> width / height; a size within _RATIO_TOLERANCE (relative) of one of these takes its name
COMMON_RATIOS = {"1:1": 1.0, "4:3": 4 / 3, "3:4": 3 / 4, "16:9": 16 / 9, "9:16": 9 / 16, "2:1": 2.0, "1:2": 0.5}
_RATIO_TOLERANCE = 0.04  # |log(w/h) - log(ratio)|: 854x480 is 16:9, 720x480 (3:2) is not 4:3


def aspect_ratio_name(height: int, width: int) -> str:
    """'W:H' name of a frame size: the nearest common ratio when within 4%, else W:H reduced by gcd.

    aspect_ratio_name(1080, 1920) == "16:9"; aspect_ratio_name(480, 854) == "16:9";
    aspect_ratio_name(480, 720) == "3:2".
    """
    if int(height) != height or int(width) != width or height < 1 or width < 1:
        raise ValueError(f"height and width must be positive integers, got height={height}, width={width}")
    height, width = int(height), int(width)
    log_ratio = math.log(width / height)
    name, ratio = min(COMMON_RATIOS.items(), key=lambda kv: abs(math.log(kv[1]) - log_ratio))
    if abs(math.log(ratio) - log_ratio) <= _RATIO_TOLERANCE:
        return name
    g = math.gcd(width, height)
    return f"{width // g}:{height // g}"


def _resolve(path: str, folder: str) -> str:
    path = os.path.expanduser(path)
    return os.path.normpath(path if os.path.isabs(path) else os.path.join(folder, path))


def read_manifest(path: str | os.PathLike) -> list[dict]:
    """Rows of a manifest CSV as dicts with typed values.

    path: absolute (resolved against the CSV's folder); num_frames/height/width: int; fps: float;
    text/aspect_ratio: str; short_text and spec (a JSON string, validated) when the columns exist.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"manifest {path} not found; build one with `chronotope manifest DIR --out {path}`")
    folder = os.path.dirname(os.path.abspath(path))
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in MANIFEST_COLUMNS if c not in header]
        if missing:
            raise ValueError(f"manifest {path} lacks column(s) {', '.join(missing)}; "
                             f"a manifest needs {','.join(MANIFEST_COLUMNS)} (optional: {','.join(OPTIONAL_COLUMNS)})")
        optional = [c for c in OPTIONAL_COLUMNS if c in header]
        rows = []
        for line, raw in enumerate(reader, start=2):  # line 1 is the header
            where = f"manifest {path}, line {line}"
            if not raw.get("path"):
                raise ValueError(f"{where}: empty path")
            row: dict = {"path": _resolve(raw["path"], folder), "text": raw["text"] or ""}
            for col in _INT_COLUMNS:
                try:
                    row[col] = int(float(raw[col]))
                except (TypeError, ValueError):
                    raise ValueError(f"{where}: column {col} must be an integer, got {raw[col]!r}") from None
            try:
                row["fps"] = float(raw["fps"])
            except (TypeError, ValueError):
                raise ValueError(f"{where}: column fps must be a number, got {raw['fps']!r}") from None
            row["aspect_ratio"] = raw["aspect_ratio"] or aspect_ratio_name(row["height"], row["width"])
            for col in optional:
                row[col] = raw[col] or ""
            for col in ("spec", "shots", "conditions"):
                if row.get(col):
                    try:
                        json.loads(row[col])
                    except json.JSONDecodeError as err:
                        raise ValueError(f"{where}: column {col} is not valid JSON ({err})") from None
            rows.append(row)
    return rows


def _portable(path: str, folder: str) -> str:
    """Path relative to `folder` when the file lies inside it, else absolute."""
    path = os.path.abspath(path)
    rel = os.path.relpath(path, folder) if os.path.splitdrive(path)[0] == os.path.splitdrive(folder)[0] else path
    return path if rel.startswith(os.pardir) else rel.replace(os.sep, "/")


def write_manifest(path: str | os.PathLike, rows: list[dict]) -> None:
    """Write rows (dicts with MANIFEST_COLUMNS, optional short_text/spec) to a CSV, atomically.

    Paths inside the CSV's folder are written relative to it; `spec` may be a dict (dumped as JSON).
    Optional columns are written when any row has them.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    columns = list(MANIFEST_COLUMNS) + [c for c in OPTIONAL_COLUMNS if any(c in r for r in rows)]
    out = []
    for i, row in enumerate(rows):
        missing = [c for c in MANIFEST_COLUMNS if c not in row and c != "aspect_ratio"]
        if missing:
            raise ValueError(f"row {i} ({row.get('path', '?')}) lacks {', '.join(missing)}")
        r = {c: row.get(c, "") for c in columns}
        r["path"] = _portable(os.fspath(row["path"]), folder)
        r["aspect_ratio"] = row.get("aspect_ratio") or aspect_ratio_name(row["height"], row["width"])
        for col in ("spec", "conditions"):  # JSON columns: a dict (conditions: name -> one value per frame)
            if isinstance(r.get(col), (dict, list)):
                r[col] = json.dumps(r[col], separators=(",", ":"))
        out.append(r)
    def write(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(out)

    atomic_write(path, write)


@dataclass
class ManifestReport:
    out_csv: str
    num_rows: int
    num_videos: int
    num_images: int
    errors: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) of unreadable files
    errors_csv: str | None = None

    def summary(self) -> str:
        lines = [f"wrote {self.num_rows} rows ({self.num_videos} videos, {self.num_images} images) to {self.out_csv}"]
        if self.errors:
            lines.append(f"{len(self.errors)} unreadable file(s) skipped, listed in {self.errors_csv}:")
            lines += [f"  {reason}" for _, reason in self.errors[:10]]
            if len(self.errors) > 10:
                lines.append(f"  ... and {len(self.errors) - 10} more")
        return "\n".join(lines)


def errors_csv_path(out_csv: str) -> str:
    """clips.csv -> clips.errors.csv"""
    root, ext = os.path.splitext(out_csv)
    return f"{root}.errors{ext or '.csv'}"


def find_media(folder: str) -> list[str]:
    """Video and image files under `folder`, recursively, sorted; hidden files and folders skipped."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in VIDEO_EXTENSIONS + IMAGE_EXTENSIONS:
                found.append(os.path.join(root, name))
    return found


def _sidecar_caption(media: str) -> str:
    """Caption from NAME.txt (or NAME.mp4.txt) next to the file; '' when there is none."""
    for candidate in (os.path.splitext(media)[0] + ".txt", media + ".txt"):
        if os.path.isfile(candidate):
            with open(candidate, encoding="utf-8", errors="replace") as f:
                return " ".join(f.read().split())
    return ""


def build_manifest(folder: str | os.PathLike, out_csv: str | os.PathLike, progress: bool = True) -> ManifestReport:
    """Probe every video and image under `folder` and write a manifest to `out_csv`.

    Captions come from sidecar NAME.txt files (empty text otherwise). Unreadable files do not
    stop the run: they are reported and written to <out>.errors.csv (path,error).
    """
    folder, out_csv = os.fspath(folder), os.fspath(out_csv)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{folder} is not a folder; give the folder that holds your videos and images")
    media = find_media(folder)
    if not media:
        raise ValueError(f"no videos or images under {folder} (looked for "
                         f"{' '.join(VIDEO_EXTENSIONS + IMAGE_EXTENSIONS)})")
    check_output(arg("out_csv", out_csv), [out_csv, errors_csv_path(out_csv)], [("", media)])
    rows, errors = [], []
    for path in tqdm(media, desc="probing", unit="file", disable=not progress):
        try:
            info = probe_video(path)
        except VideoReadError as err:
            errors.append((path, str(err)))
            continue
        rows.append({"path": path, "text": _sidecar_caption(path), "num_frames": info.num_frames,
                     "height": info.height, "width": info.width,
                     "aspect_ratio": aspect_ratio_name(info.height, info.width), "fps": round(info.fps, 6)})
    if not rows:  # nothing to train on: an error, and no empty manifest that a later step would take for data
        raise ValueError(f"none of the {len(media)} videos and images under {folder} could be read (first: "
                         f"{errors[0][1]}); nothing written")
    write_manifest(out_csv, rows)
    errors_csv = errors_csv_path(out_csv)
    if errors:
        def write_errors(tmp: str) -> None:
            with open(tmp, "w", newline="", encoding="utf-8") as f:
                writer = csv.writer(f)
                writer.writerow(["path", "error"])
                writer.writerows(errors)

        atomic_write(errors_csv, write_errors)
    elif os.path.exists(errors_csv):
        os.remove(errors_csv)  # a stale list from an earlier run would mislead
    num_images = sum(1 for r in rows if r["num_frames"] == 1 and os.path.splitext(r["path"])[1].lower() in IMAGE_EXTENSIONS)
    return ManifestReport(out_csv, len(rows), len(rows) - num_images, num_images, errors,
                          errors_csv if errors else None)
