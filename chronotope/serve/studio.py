"""The web app's session: one VideoPipeline, one lock so that two requests never run the model at once, one
output folder that every written file stays inside, and the results made since the app started.

No Gradio here: app.py draws the page and calls Studio.generate with the form's values.

    studio = Studio(VideoPipeline.from_pretrained(model), model, "chronotope-serve")
    result = studio.generate({"prompt": "a red circle moves left", "num_inference_steps": 30, ...})
    result.path, result.sidecar, result.record["expanded_prompt"]
"""

from __future__ import annotations

import json
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chronotope.pipeline.files import generate_to_file, storyboard_to_file
from chronotope.pipeline.resolve import infer_mode
from chronotope.serve.forms import UPLOADS, build_request, check_upload


@dataclass
class Result:
    """One finished request: the video (mp4, or png for one frame), its sidecar JSON and what it records."""

    path: str
    sidecar: str
    record: dict = field(default_factory=dict)

    @property
    def expanded_prompt(self) -> str:
        """The caption(s) the model saw: the expanded prompt, or each shot's for a storyboard."""
        if self.record.get("storyboard"):
            return "\n".join(f"shot {i}: {s.get('expanded_prompt', '')}" for i, s in enumerate(self.record["shots"], 1))
        return self.record.get("expanded_prompt") or ""


class OutputFolder:
    """The one folder the app writes to: results are numbered NNNN-MODE.mp4 (+ .json) and never named by a user;
    uploads go to its uploads/ (app.py points Gradio's temporary folder there)."""

    def __init__(self, folder: str | os.PathLike):
        self.root = Path(folder).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.uploads = self.root / "uploads"

    def inside(self, path: str | os.PathLike) -> Path:
        """`path` resolved (links followed); ValueError when it lies outside the output folder."""
        resolved = Path(path).resolve()
        if resolved != self.root and self.root not in resolved.parents:
            raise ValueError(f"{path} is outside the output folder {self.root}; the web app writes nowhere else")
        return resolved

    def next_stem(self, mode: str) -> str:
        """A fresh output name (no extension) numbered after every result already in the folder, so a restarted
        app never overwrites an earlier one."""
        if not re.fullmatch(r"[a-z0-9]+", mode):
            raise ValueError(f"mode {mode!r} cannot name a file")
        taken = [int(m.group(1)) for p in self.root.iterdir() if (m := re.match(r"(\d{4,})-", p.name))]
        return str(self.inside(self.root / f"{max(taken, default=0) + 1:04d}-{mode}"))


class Studio:
    """Runs requests from the page on one pipeline, one at a time, into one output folder."""

    def __init__(self, pipe, model: str, folder: str | os.PathLike, max_upload_bytes: int | None = None):
        from chronotope.serve.forms import MAX_UPLOAD_BYTES

        self.pipe, self.model = pipe, model
        self.out = OutputFolder(folder)
        self.max_upload_bytes = max_upload_bytes or MAX_UPLOAD_BYTES
        self.results: list[Result] = []  # made since the app started, oldest first
        self._lock = threading.Lock()  # the Gradio queue runs one request at a time; this holds for any caller

    def check_upload(self, path: str | None, what: str) -> str | None:
        return None if path is None else check_upload(path, what, self.max_upload_bytes)

    def generate(self, values: dict[str, Any], progress: bool = True) -> Result:
        """Form values (forms.FIELDS by name) -> one result written to the output folder. Every check (fields,
        uploads, storyboard) runs before the model is touched; ValueError / VideoReadError for a bad request."""
        kind, kw = build_request(values)
        for what in UPLOADS:
            if kw.get(what) is not None:
                kw[what] = self.check_upload(kw[what], what)
        mode = "storyboard" if kind == "storyboard" else infer_mode(
            kw["mode"], kw["num_frames"], {k: kw[k] is not None for k in ("image", "video", "video_end", "strength")})
        with self._lock:
            stem = self.out.next_stem(mode)
            if kind == "storyboard":
                path, side = storyboard_to_file(self.pipe, stem, self.model, kw.pop("storyboard"), progress=progress, **kw)
            else:
                path, side = generate_to_file(self.pipe, stem, self.model, progress=progress, **kw)
            for written in (path, side):
                self.out.inside(written)
            with open(side, encoding="utf-8") as f:
                result = Result(path, side, json.load(f))
            self.results.append(result)
        return result

    def gallery(self) -> list[tuple[str, str]]:
        """(file, caption) of every result since the app started, newest first."""
        return [(r.path, f"{Path(r.path).name}: {r.record.get('prompt') or 'storyboard'}") for r in reversed(self.results)]
