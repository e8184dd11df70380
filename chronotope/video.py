"""Video IO on PyAV (FFmpeg): any container in, H.264 mp4 / gif / png out.

At this boundary pixels are uint8 numpy arrays [T, H, W, 3] in RGB order; models convert to
float [-1, 1] [B, C, T, H, W] themselves. An image is a 1-frame video. Every unreadable input
raises `VideoReadError` naming the file and the reason, and every write is atomic (a temp
file in the same folder, then `os.replace`), so a crash never leaves a half-written output.

    frames, fps = read_video("clip.mp4", start=10, end=43, stride=2)   # [17, H, W, 3], fps / 2
    write_video("out.mp4", frames, fps)
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from chronotope.atomic import atomic_write
from chronotope.mp4 import Mp4Writer, av, check_frames  # noqa: F401 (Mp4Writer: streamed writes, read from here too)


VIDEO_EXTENSIONS = (".mp4", ".m4v", ".webm", ".mov", ".mkv", ".avi", ".gif")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
WRITE_EXTENSIONS = (".mp4", ".gif", ".png")
IMAGE_FPS = 0.0  # the fps we report for a still image (a 1-frame video has no frame rate)
_SEEK_AFTER = 32  # seek to the keyframe before `start` when start is at least this many frames in


class VideoReadError(Exception):
    """A file could not be read as a video or image; the message names the file and why."""


@dataclass
class VideoInfo:
    path: str
    num_frames: int
    height: int
    width: int
    fps: float  # IMAGE_FPS (0.0) for a still image
    duration: float  # seconds; 0.0 for a still image


def is_image_path(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS


# --- reading -----------------------------------------------------------------------------------


def _open(path: str | os.PathLike) -> tuple[av.container.InputContainer, av.video.stream.VideoStream]:
    """Open `path` and return (container, first video stream), or raise VideoReadError."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise VideoReadError(f"{path}: no such file")
    if os.path.isdir(path):
        raise VideoReadError(f"{path}: is a directory, not a video file (give a file inside it)")
    if not os.path.isfile(path):
        raise VideoReadError(f"{path}: not a regular file (pipes and devices are not read)")
    if os.path.getsize(path) == 0:
        raise VideoReadError(f"{path}: file is empty (0 bytes)")
    try:
        container = av.open(path, mode="r")
    except av.FFmpegError as err:
        raise VideoReadError(
            f"{path}: not a readable video or image: corrupt, truncated or not media ({err.strerror or err})"
        ) from err
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise VideoReadError(f"{path}: could not be opened ({err})") from err
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["none"]
        container.close()
        raise VideoReadError(f"{path}: has no video stream (streams: {', '.join(kinds)})")
    stream = container.streams.video[0]
    if not stream.codec_context or stream.codec_context.width <= 0:
        container.close()
        raise VideoReadError(f"{path}: video stream has no decodable frame size")
    return container, stream


def _stream_fps(stream: av.video.stream.VideoStream) -> float:
    if stream.codec_context.name == "gif" and stream.frames > 0 and stream.duration:
        # GIF delays are whole 1/100 s, so FFmpeg's average rate rounds (24 fps reads as 25)
        return stream.frames / float(stream.duration * stream.time_base)
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(rate) if rate else 0.0


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Container metadata of `path`, without decoding: frame count, size, fps, duration.

    The frame count comes from the container when it stores one (mp4, mov), else from counting
    the video stream's packets (webm, mkv, gif; demuxing only). A png/jpg is 1 frame at fps 0.
    """
    path = os.fspath(path)
    container, stream = _open(path)
    try:
        height, width = stream.codec_context.height, stream.codec_context.width
        if is_image_path(path):
            return VideoInfo(path, 1, height, width, IMAGE_FPS, 0.0)
        fps = _stream_fps(stream)
        num_frames = stream.frames
        if num_frames <= 0:
            num_frames = sum(1 for packet in container.demux(stream) if packet.size > 0)
    except av.FFmpegError as err:
        raise VideoReadError(f"{path}: corrupt container ({err.strerror or err})") from err
    finally:
        container.close()
    if num_frames <= 0:
        raise VideoReadError(f"{path}: video stream holds no frames")
    duration = num_frames / fps if fps > 0 else 0.0
    return VideoInfo(path, num_frames, height, width, fps, duration)


def _source_indices(start: int, end: int | None, stride: int, ratio: float | None) -> Iterator[int]:
    """Source frame indices to return, increasing (repeats allowed when upsampling fps).

    ratio = source fps / target fps: output frame k (at time k / fps) takes the source frame
    nearest in time, start + floor(k * ratio + 0.5).
    """
    k = 0
    while True:
        i = start + (math.floor(k * ratio + 0.5) if ratio is not None else k * stride)
        if end is not None and i >= end:
            return
        yield i
        k += 1


def _decode_indexed(container, stream, start: int, fps: float) -> Iterator[tuple[int, av.VideoFrame]]:
    """Yield (frame index, frame) from about `start` on, seeking to the keyframe before it.

    Without a seek the index is the decode count (exact for any stream). After a seek it is
    derived from the timestamp, pts * time_base * fps, which assumes a constant frame rate; if
    the seek overshoots `start` or timestamps are missing we rewind and count from frame 0.
    """
    if start >= _SEEK_AFTER and fps > 0 and stream.time_base:
        origin = stream.start_time or 0
        target = origin + int((start - 0.5) / fps / stream.time_base)
        try:
            container.seek(max(target, origin), backward=True, any_frame=False, stream=stream)
            first = True
            for frame in container.decode(stream):
                if frame.pts is None:
                    break
                index = round(float((frame.pts - origin) * stream.time_base) * fps)
                if first and index > start:
                    break  # overshot: fall back to counting from the beginning
                first = False
                yield index, frame
            else:
                return
            if not first:
                return  # pts vanished mid-stream after frames were returned; stop there
        except av.FFmpegError:
            pass  # unseekable stream: count from the beginning instead
        container.seek(stream.start_time or 0, backward=True, any_frame=False, stream=stream)
    for index, frame in enumerate(container.decode(stream)):
        yield index, frame


def check_sampling(stride: int, fps: float | None, fps_name: str = "fps") -> None:
    """How frames are taken in time, as read_video and the datasets take it: every `stride`-th frame (>= 1), or
    resampled to a finite `fps` > 0, not both; ValueError naming `fps_name` as the caller calls it."""
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if fps is not None and stride != 1:
        raise ValueError(f"give either stride or {fps_name}, not both ({fps_name} resamples in time, stride skips "
                         "frames)")
    if fps is not None and not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"{fps_name} must be a finite number > 0, got {fps}")


def read_video(
    path: str | os.PathLike,
    start: int = 0,
    end: int | None = None,
    stride: int = 1,
    fps: float | None = None,
    max_frames: int | None = None,
) -> tuple[np.ndarray, float]:
    """Decode frames [start, end) of `path` as uint8 RGB [T, H, W, 3] and their fps.

    stride: keep every stride-th frame (returned fps = source fps / stride).
    fps: resample to this frame rate instead, taking the source frame nearest in time to each
    output time (frames repeat when fps exceeds the source's); exclusive with stride.
    max_frames: stop after this many output frames. Decoding stops as soon as the range is
    done, and a large `start` seeks to the keyframe before it instead of decoding from 0.
    Images (png/jpg/...) are 1-frame videos; their fps is reported as IMAGE_FPS (0.0).
    """
    path = os.fspath(path)
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}")
    if end is not None and end <= start:
        raise ValueError(f"end must be > start (got start={start}, end={end}); use end=None for the rest")
    check_sampling(stride, fps)
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")

    container, stream = _open(path)
    out: list[np.ndarray] = []
    try:
        image = is_image_path(path)
        src_fps = IMAGE_FPS if image else _stream_fps(stream)
        if fps is not None and src_fps <= 0 and not image:
            raise VideoReadError(f"{path}: stream has no frame rate, cannot resample to fps={fps}")
        ratio = src_fps / fps if (fps is not None and not image) else None
        wanted = _source_indices(start, end, stride, ratio)
        target = next(wanted)
        stream.thread_type = "AUTO"
        last = -1
        for index, frame in _decode_indexed(container, stream, start, src_fps):
            last = index
            while index == target:
                out.append(frame.to_ndarray(format="rgb24"))
                if max_frames is not None and len(out) >= max_frames:
                    break
                target = next(wanted, None)
            if target is None or (max_frames is not None and len(out) >= max_frames):
                break
            if index > target:  # a frame we wanted was dropped by the decoder: take this one
                out.append(frame.to_ndarray(format="rgb24"))
                target = next(wanted, None)
                while target is not None and target <= index:
                    target = next(wanted, None)
                if target is None:
                    break
    except av.FFmpegError as err:
        raise VideoReadError(f"{path}: decoding failed ({err.strerror or err})") from err
    finally:
        container.close()
    if not out:
        if last < 0:
            raise VideoReadError(f"{path}: no decodable video frames")
        raise ValueError(f"{path}: start={start} is past the last frame (the video has {last + 1} frames)")
    if image:
        out_fps = IMAGE_FPS
    else:
        out_fps = float(fps) if fps is not None else src_fps / stride
    return np.stack(out), out_fps


# --- writing -----------------------------------------------------------------------------------


def _encode_png(frame: np.ndarray) -> bytes:
    """One RGB frame [H, W, 3] -> PNG bytes."""
    ctx = av.CodecContext.create("png", "w")
    ctx.width, ctx.height, ctx.pix_fmt, ctx.time_base = frame.shape[1], frame.shape[0], "rgb24", Fraction(1)
    packets = list(ctx.encode(av.VideoFrame.from_ndarray(frame, format="rgb24"))) + list(ctx.encode(None))
    return b"".join(bytes(p) for p in packets)


def _gif_palette(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One global 256-color palette for [T, H, W, 3] -> (palette [256, 3], indices [T, H, W]).

    Exact when the clip holds at most 256 colors (World clips nearly do); otherwise median
    cut (Heckbert 1982) on a pixel sample and a nearest-color lookup over 5-bit RGB cells.
    """
    flat = frames.reshape(-1, 3)
    key = (flat[:, 0].astype(np.int64) << 16) | (flat[:, 1].astype(np.int64) << 8) | flat[:, 2]
    colors, inverse = np.unique(key, return_inverse=True)
    palette = np.zeros((256, 3), np.uint8)
    if len(colors) <= 256:
        palette[: len(colors)] = np.stack([colors >> 16, (colors >> 8) & 255, colors & 255], 1)
        return palette, inverse.reshape(frames.shape[:3]).astype(np.uint8)
    sample = flat[:: max(1, len(flat) // 200_000)].astype(np.int32)
    span = lambda b: b.max(0) - b.min(0)  # [3] per-channel range of a box
    boxes, spans = [sample], [span(sample)]
    while len(boxes) < 256:
        i = int(np.argmax([r.max() for r in spans]))
        if spans[i].max() <= 0:
            break
        box, axis = boxes.pop(i), int(np.argmax(spans.pop(i)))
        box = box[np.argsort(box[:, axis], kind="stable")]
        for half in (box[: len(box) // 2], box[len(box) // 2 :]):
            boxes.append(half)
            spans.append(span(half))
    means = np.stack([b.mean(0) for b in boxes])  # [K, 3]
    palette[: len(means)] = np.round(means).astype(np.uint8)
    cells = np.stack(np.meshgrid(*[np.arange(32)] * 3, indexing="ij"), -1).reshape(-1, 3) * 8 + 4
    lut = np.empty(len(cells), np.uint8)
    for s in range(0, len(cells), 4096):  # [4096, K] squared distances per chunk
        d = ((cells[s : s + 4096, None, :] - means[None]) ** 2).sum(-1)
        lut[s : s + 4096] = d.argmin(1)
    q = frames >> 3
    cell = (q[..., 0].astype(np.int32) << 10) | (q[..., 1].astype(np.int32) << 5) | q[..., 2]
    return palette, lut[cell]


def _write_av(tmp: str, frames: np.ndarray, fps: float, kind: str, crf: int) -> None:
    rate = Fraction(fps).limit_denominator(1001)
    container = av.open(tmp, mode="w", format=kind)
    try:
        if kind == "mp4":
            stream = container.add_stream("libx264", rate=rate)
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": str(crf), "preset": "medium"}
        else:
            stream = container.add_stream("gif", rate=rate)
            stream.pix_fmt = "pal8"
            palette, indices = _gif_palette(frames)
            argb = np.concatenate([np.full((256, 1), 255, np.uint8), palette], 1)  # [256, 4] ARGB
        stream.height, stream.width = frames.shape[1:3]
        for t in range(len(frames)):
            if kind == "mp4":
                frame = av.VideoFrame.from_ndarray(frames[t], format="rgb24")
            else:
                frame = av.VideoFrame.from_ndarray((indices[t], argb), format="pal8")
            frame.pts, frame.time_base = t, 1 / rate
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    finally:
        container.close()


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: float, *, crf: int = 18) -> None:
    """Write uint8 RGB frames [T, H, W, 3] to `path`, atomically; the format follows the extension.

    .mp4: H.264 (libx264, yuv420p, constant quality `crf`, lower = better). yuv420p needs an
          even size, so an odd height/width gains one row/column repeating the edge pixels.
    .gif: one global 256-color palette (exact for clips of <= 256 colors); delays in 1/100 s.
    .png: a single frame; for several frames use write_frames(folder, frames) or .mp4/.gif.
    """
    path = os.fspath(path)
    frames = check_frames(frames)
    ext = os.path.splitext(path)[1].lower()
    if ext not in WRITE_EXTENSIONS:
        raise ValueError(f"cannot write {path!r}: extension must be one of {', '.join(WRITE_EXTENSIONS)}")
    if ext == ".png":
        if len(frames) != 1:
            raise ValueError(f"{path}: a .png holds one frame but got {len(frames)}; use "
                             "write_frames(folder, frames) for a folder of PNGs, or a .mp4/.gif path")
        data = _encode_png(frames[0])
        atomic_write(path, lambda tmp: Path(tmp).write_bytes(data), fsync=False)
        return
    if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    if ext == ".mp4":
        pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
        if pad_h or pad_w:
            frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    atomic_write(path, lambda tmp: _write_av(tmp, frames, float(fps), ext[1:], crf), fsync=False)


def grid(videos: list[np.ndarray], columns: int = 4, pad: int = 2) -> np.ndarray:
    """Videos uint8 [T, H, W, 3] of any sizes -> one uint8 [T_max, rows*cell_h, columns*cell_w, 3] video
    (shorter clips hold their last frame; each video sits top-left in its cell)."""
    if not videos:
        raise ValueError("grid needs at least one video")
    T = max(v.shape[0] for v in videos)
    ch = max(v.shape[1] for v in videos) + pad
    cw = max(v.shape[2] for v in videos) + pad
    columns = min(columns, len(videos))
    rows = (len(videos) + columns - 1) // columns
    out = np.zeros((T, rows * ch, columns * cw, 3), np.uint8)
    for k, v in enumerate(videos):
        r, c = divmod(k, columns)
        idx = np.minimum(np.arange(T), v.shape[0] - 1)
        out[:, r * ch:r * ch + v.shape[1], c * cw:c * cw + v.shape[2]] = v[idx]
    return out


def write_frames(folder: str | os.PathLike, frames: np.ndarray) -> list[str]:
    """Write uint8 RGB frames [T, H, W, 3] as folder/000000.png, 000001.png, ...; returns the paths."""
    frames = check_frames(frames)
    folder = os.fspath(folder)
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise ValueError(f"{folder}: exists and is not a folder; give a folder path for write_frames")
    paths = []
    for t in range(len(frames)):
        path = os.path.join(folder, f"{t:06d}.png")
        data = _encode_png(frames[t])
        atomic_write(path, lambda tmp, data=data: Path(tmp).write_bytes(data), fsync=False)
        paths.append(path)
    return paths
