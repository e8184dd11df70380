"""H.264 mp4 written chunk by chunk (Mp4Writer: memory flat in the video's length, the file atomic), the check of
the uint8 frames [T, H, W, 3] every writer of chronotope.video takes, and PyAV imported on first use.
"""

from __future__ import annotations

import math
import os
from fractions import Fraction
from pathlib import Path

import numpy as np

from chronotope.atomic import publish, temp_beside


class _LazyAV:
    """PyAV, imported on first use: importing this module (as the World, the latent cache and the pipeline
    do) must work on machines without PyAV, where only reading and writing media files needs it."""

    def __getattr__(self, name: str):
        try:
            import av as module
        except ImportError as err:
            raise ImportError("reading or writing video and image files needs PyAV: pip install av") from err
        return getattr(module, name)


av = _LazyAV()

def check_frames(frames: np.ndarray) -> np.ndarray:
    """frames as every writer (and World-bench's scorer) takes them: uint8 RGB [T, H, W, 3], T, H, W >= 1, made
    contiguous; ValueError saying how to fix anything else."""
    if not isinstance(frames, np.ndarray):
        raise ValueError(f"frames must be a numpy array uint8 [T, H, W, 3], got {type(frames).__name__}")
    if frames.ndim == 3 and frames.shape[-1] == 3:
        raise ValueError(f"frames must be [T, H, W, 3], got {frames.shape}; an image is frames[None]")
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be RGB [T, H, W, 3], got shape {frames.shape}")
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (0..255), got {frames.dtype}; convert float [-1, 1] "
                         "with ((x + 1) * 127.5).round().clip(0, 255).astype(np.uint8)")
    if min(frames.shape[:3]) < 1:
        raise ValueError(f"frames must hold at least one 1x1 frame, got shape {frames.shape}")
    return np.ascontiguousarray(frames)


class Mp4Writer:
    """Stream frames into an H.264 mp4 as they come (long videos never sit in memory), atomically:
    frames go to a temp file beside `path`, renamed onto it by close(); close(ok=False), or leaving a
    `with` block by an exception, removes it. Odd sizes are padded as in write_video.

        with Mp4Writer("long.mp4", fps=8) as out:
            for chunk in chunks:        # uint8 [n, H, W, 3], same H, W every time
                out.write(chunk)

    live=True writes at `path` itself, fragmented (a fragment per frame, no encoder look-ahead), so a player opens
    the file while it grows; stopped early (close(ok=False), Ctrl-C), it keeps the frames written so far.
    """

    def __init__(self, path: str | os.PathLike, fps: float, *, crf: int = 18, live: bool = False):
        if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
            raise ValueError(f"fps must be a positive number, got {fps!r}")
        self.path, self.fps, self.crf, self.live = Path(path), float(fps), crf, live
        self.container = self.stream = self.tmp = None
        self.size: tuple[int, int] | None = None
        self.count = 0

    def _open(self, height: int, width: int) -> None:
        rate = Fraction(self.fps).limit_denominator(1001)
        if self.live:  # at its own path, a fragment per frame, no encoder look-ahead: playable while it grows
            self.tmp = self.path
            self.container = av.open(str(self.path), mode="w", format="mp4",
                                     container_options={"movflags": "frag_every_frame+empty_moov+default_base_moof",
                                                        "flush_packets": "1"})
            options = {"crf": str(self.crf), "preset": "veryfast", "tune": "zerolatency"}
        else:
            self.tmp = temp_beside(self.path.with_suffix(".mp4"))
            self.container = av.open(self.tmp, mode="w", format="mp4")
            options = {"crf": str(self.crf), "preset": "medium"}
        self.stream = self.container.add_stream("libx264", rate=rate)
        self.stream.pix_fmt, self.stream.options = "yuv420p", options
        self.stream.height, self.stream.width = height + height % 2, width + width % 2
        self.size = (height, width)

    def write(self, frames: np.ndarray) -> None:
        frames = check_frames(frames)
        if self.container is None:
            self._open(*frames.shape[1:3])
        if frames.shape[1:3] != self.size:
            raise ValueError(f"{self.path}: frames of {frames.shape[1:3]} after frames of {self.size}; "
                             "one video has one size")
        pad_h, pad_w = self.size[0] % 2, self.size[1] % 2
        if pad_h or pad_w:
            frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
        for f in frames:
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")
            vf.pts = self.count
            self.count += 1
            self.container.mux(self.stream.encode(vf))

    def close(self, ok: bool = True) -> None:
        if self.container is None:
            if ok:
                raise ValueError(f"{self.path}: no frames were written")
            return
        try:
            if ok or self.live:  # a live file keeps what was made: flushed, it plays to its last frame
                self.container.mux(self.stream.encode(None))
        finally:
            self.container.close()
            self.container = None
        if self.live:
            return
        if ok:
            publish(self.tmp, self.path)
        elif os.path.exists(self.tmp):
            os.remove(self.tmp)

    def __enter__(self) -> "Mp4Writer":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(ok=exc_type is None)
