"""The web app's session: one VideoPipeline, one lock so that two requests never run the model at once, one
output folder that every written file stays inside, and the results made since the app started.

No Gradio here: app.py draws the page and calls Studio.generate with the form's values.

    studio = Studio(VideoPipeline.from_pretrained(model), model, "chronotope-serve")
    result = studio.generate({"prompt": "a red circle moves left", "num_inference_steps": 30, ...})
    result.path, result.sidecar, result.record["expanded_prompt"]
"""

from __future__ import annotations

import contextlib
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
    """One finished request: the video (mp4, or png for one frame), its sidecar JSON, what it records, and its
    poster (a small still for the gallery)."""

    path: str
    sidecar: str
    record: dict = field(default_factory=dict)
    poster: str = ""

    @property
    def expanded_prompt(self) -> str:
        """The caption(s) the model saw: the expanded prompt, or each shot's for a storyboard."""
        if self.record.get("storyboard"):
            return "\n".join(f"shot {i}: {s.get('expanded_prompt', '')}" for i, s in enumerate(self.record["shots"], 1))
        return self.record.get("expanded_prompt") or ""


class OutputFolder:
    """The one folder the app writes to: results are numbered NNNN-MODE.mp4 (+ .json) and never named by a user,
    each with a small still in posters/NNNN-MODE.png (the gallery's thumbnail); uploads go to its uploads/ (app.py
    points Gradio's temporary folder there)."""

    POSTER_SIZE = 256  # longest side of a gallery thumbnail, in pixels (a 480p frame is shrunk, a 32 px one kept)

    def __init__(self, folder: str | os.PathLike):
        self.root = Path(folder).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.uploads = self.root / "uploads"
        self.posters = self.root / "posters"

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

    def poster(self, path: str | os.PathLike) -> str:
        """posters/NAME.png for the result `path`: its middle frame, shrunk (area average) to at most POSTER_SIZE
        pixels on its longest side. A gallery of these stays a row of thumbnails; one of videos does not."""
        import torch
        import torch.nn.functional as F

        from chronotope.video import probe_video, read_video, write_video

        n = probe_video(path).num_frames
        frame = read_video(path, start=n // 2, max_frames=1)[0]  # [1, H, W, 3]
        h, w = frame.shape[1:3]
        scale = min(1.0, self.POSTER_SIZE / max(h, w))
        if scale < 1:
            x = torch.from_numpy(frame).permute(0, 3, 1, 2).float()  # [1, 3, H, W]
            x = F.interpolate(x, size=(max(1, round(h * scale)), max(1, round(w * scale))), mode="area")
            frame = x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()  # [1, h, w, 3]
        self.posters.mkdir(exist_ok=True)
        out = self.inside(self.posters / (Path(path).stem + ".png"))
        write_video(out, frame, fps=1)
        return str(out)

    def discard_upload(self, path: str | os.PathLike) -> bool:
        """Delete a refused upload, and its folder when that is left empty; only inside uploads/ (a path given by
        a caller other than the page is left alone). True when something was deleted."""
        file = Path(path).resolve()
        if self.uploads.resolve() not in file.parents or not file.is_file():
            return False
        file.unlink()
        with contextlib.suppress(OSError):  # not empty: it holds another name for the same content
            if file.parent != self.uploads.resolve():
                file.parent.rmdir()
        return True


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

    def discard_upload(self, path: str | None) -> bool:
        """Delete a refused upload unless another field would take it: Gradio keeps one copy per content, so the
        clip.mp4 refused as an Image may be the one a Video field holds. True when it was deleted."""
        from chronotope.request import user_errors

        for what in UPLOADS:
            try:
                self.check_upload(path, what)
                return False
            except user_errors():
                pass
        return path is not None and self.out.discard_upload(path)

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
                result = Result(path, side, json.load(f), self.out.poster(path))
            self.results.append(result)
        return result

    def gallery(self) -> list[tuple[str, str]]:
        """(poster, caption) of every result since the app started, newest first; the caption starts with the
        result's file name (find() takes it back)."""
        return [(r.poster, f"{Path(r.path).name}: {r.record.get('prompt') or 'storyboard'}")
                for r in reversed(self.results)]

    def find(self, caption: str) -> Result:
        """The result a gallery caption names ("0003-t2v.mp4: a red circle"); KeyError when there is none."""
        name = caption.split(": ", 1)[0]
        for r in self.results:
            if Path(r.path).name == name:
                return r
        raise KeyError(name)
