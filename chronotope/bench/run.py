"""World-bench over files: score one video file, or a folder / manifest of them, into results.json and report.md.

Prompts come from a manifest's `spec` (JSON) or `text` column, or for a folder from a sidecar JSON
next to each video (`clip.json` or `clip.mp4.json`) holding "spec" or "prompt". A set is summarised
as the mean of every attribute and of overall, with held-out compositions (vocab.HELDOUT) apart.

    chronotope bench run generated/ --out bench_out     # -> bench_out/results.json, bench_out/report.md
"""

from __future__ import annotations

import csv
import json
import os

import numpy as np
from tqdm import tqdm

from chronotope.atomic import atomic_write_text
from chronotope.bench.score import ATTRIBUTES, check_spec, score_video
from chronotope.world.vocab import HELDOUT


def _spec_from(prompt: str | None, spec: dict | str | None) -> dict:
    """The spec to score against: `spec` (dict or JSON text) wins over `prompt` (parsed with world.parse_prompt)."""
    if spec is not None:
        if isinstance(spec, str):
            try:
                spec = json.loads(spec)
            except json.JSONDecodeError as err:
                raise ValueError(f"spec is not valid JSON ({err}); give e.g. "
                                 '\'{"background": "black", "pillar": false, "objects": [{"color": "red", ...}]}\'')
        if isinstance(spec, dict) and "objects" not in spec and isinstance(spec.get("spec"), dict):
            spec = spec["spec"]  # a sidecar file given as the spec
        return check_spec(spec)
    if prompt is not None and prompt.strip():
        from chronotope.world import parse_prompt

        return check_spec(parse_prompt(prompt))
    raise ValueError("no prompt: give a prompt text or a spec (or a sidecar VIDEO.json with 'prompt' or 'spec')")


def sidecar(path: str) -> dict | None:
    """The sidecar JSON of a video (`clip.json` or `clip.mp4.json`), or None if there is none."""
    for candidate in (os.path.splitext(path)[0] + ".json", path + ".json"):
        if os.path.isfile(candidate):
            with open(candidate, encoding="utf-8") as f:
                try:
                    data = json.load(f)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{candidate}: not valid JSON ({err})")
            if not isinstance(data, dict):
                raise ValueError(f"{candidate}: expected a JSON object with 'spec' or 'prompt'")
            return data
    return None


def score_file(path: str | os.PathLike, prompt: str | None = None, spec: dict | str | None = None) -> dict:
    """Read a video or image file and score it (score_video) against `spec`, `prompt` or its sidecar JSON.

    Raises FileNotFoundError, chronotope.video.VideoReadError (unreadable file) or ValueError (bad spec).
    """
    from chronotope.video import read_video

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such video: {path}")
    if prompt is None and spec is None:
        side = sidecar(path) or {}
        prompt, spec = side.get("prompt") or side.get("text"), side.get("spec")
    spec = _spec_from(prompt, spec)
    frames, fps = read_video(path)
    scores = score_video(frames, spec, fps=fps or None)
    scores["path"] = path
    scores["spec"] = spec
    return scores


def _items(dir_or_manifest: str) -> list[dict]:
    """[{"path", "prompt", "spec"}] from a folder (sidecars) or a CSV manifest (spec / text columns)."""
    from chronotope.video import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS

    if os.path.isdir(dir_or_manifest):
        exts = VIDEO_EXTENSIONS + IMAGE_EXTENSIONS
        names = sorted(n for n in os.listdir(dir_or_manifest) if n.lower().endswith(exts))
        return [{"path": os.path.join(dir_or_manifest, n), "prompt": None, "spec": None} for n in names]
    if not os.path.isfile(dir_or_manifest):
        raise FileNotFoundError(f"no such folder or manifest: {dir_or_manifest}")
    root = os.path.dirname(os.path.abspath(dir_or_manifest))
    with open(dir_or_manifest, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if rows and "path" not in rows[0]:
        raise ValueError(f"{dir_or_manifest}: a manifest needs a 'path' column (and 'spec' or 'text'), "
                         f"found columns {list(rows[0])}")
    return [{"path": r["path"] if os.path.isabs(r["path"]) else os.path.join(root, r["path"]),
             "prompt": r.get("text") or None, "spec": r.get("spec") or None} for r in rows]


def _is_heldout(spec: dict) -> bool:
    return any((o.get("color"), o.get("shape")) in HELDOUT for o in spec["objects"])


def summarise(results: list[dict]) -> dict:
    """Mean of each attribute and of overall over scored videos: all / seen compositions / held-out."""
    groups = {"all": results, "seen": [r for r in results if not r["heldout"]],
              "heldout": [r for r in results if r["heldout"]]}
    out = {}
    for name, rows in groups.items():
        summary: dict = {"videos": len(rows)}
        for a in ATTRIBUTES + ("overall",):
            vals = [r["scores"][a] for r in rows if r["scores"].get(a) is not None]
            summary[a] = float(np.mean(vals)) if vals else None
        out[name] = summary
    return out



def report_markdown(summary: dict, failed: int) -> str:
    """A markdown table: one row per group (all / seen / held-out), one column per attribute."""
    cols = ("overall",) + ATTRIBUTES
    lines = ["# World-bench report", "",
             "| set | videos | " + " | ".join(cols) + " |",
             "|---|---:|" + "---:|" * len(cols)]
    for name, row in summary.items():
        cells = [f"{row[c]:.3f}" if row[c] is not None else "–" for c in cols]
        lines.append(f"| {name} | {row['videos']} | " + " | ".join(cells) + " |")
    lines += ["", "Scores in [0, 1]; overall is the mean of the attributes scorable for each video "
              "(motion, consistency, flicker, permanence are not scorable on 1-frame videos; permanence "
              "only in pillar scenes). held-out: scenes with a purple triangle, cyan square or orange circle."]
    if failed:
        lines += ["", f"{failed} file(s) could not be scored: see `errors` in results.json."]
    return "\n".join(lines) + "\n"


def run_bench(dir_or_manifest: str | os.PathLike, out_dir: str | os.PathLike) -> dict:
    """Score every video of a folder or manifest; write out_dir/results.json and out_dir/report.md.

    Returns {"summary": {all, seen, heldout}, "videos": [...], "errors": [...]}; a file that cannot be
    read or has no usable prompt is listed under "errors" instead of stopping the run.
    """
    from chronotope.video import VideoReadError

    items = _items(os.fspath(dir_or_manifest))
    if not items:
        raise ValueError(f"no videos found in {dir_or_manifest}")
    os.makedirs(out_dir, exist_ok=True)
    videos, errors = [], []
    for item in tqdm(items, desc="World-bench", unit="video"):
        try:
            scores = score_file(item["path"], prompt=item["prompt"], spec=item["spec"])
        except (ValueError, VideoReadError, FileNotFoundError) as err:
            errors.append({"path": item["path"], "error": str(err)})
            continue
        spec = scores.pop("spec")
        scores.pop("path")
        videos.append({"path": item["path"], "spec": spec, "heldout": _is_heldout(spec), "scores": scores})
    result = {"summary": summarise(videos), "videos": videos, "errors": errors}
    atomic_write_text(os.path.join(out_dir, "results.json"), json.dumps(result, indent=1))
    atomic_write_text(os.path.join(out_dir, "report.md"), report_markdown(result["summary"], len(errors)))
    return result
