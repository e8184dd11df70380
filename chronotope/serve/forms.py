"""The web app's form -> one generation request, and its uploads checked before the model sees them.

Pure functions (no Gradio): the page hands over its field values by name, and what comes back is the
keyword arguments of `generate_to_file` / `storyboard_to_file`, the same ones `chronotope generate`
passes. Errors are one ValueError line naming the field as the page labels it (request.spelled(LABELS)).

    kind, kwargs = build_request({"prompt": "a red circle moves left", "mode": "auto", "num_frames": 17, ...})
    check_upload("/tmp/upload/clip.mp4", "video")   # ValueError / VideoReadError naming clip.mp4, not the path
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

from chronotope.request import MODES, arg, check_storyboard

# library parameter -> the label of its field in the page; errors raised with request.arg() show these
LABELS = {
    "prompt": "Prompt", "negative_prompt": "Negative prompt", "mode": "Mode", "image": "Image", "video": "Video",
    "video_end": "End video", "direction": "Direction", "image_position": "Image position", "strength": "Strength",
    "height": "Height", "width": "Width", "resolution": "Resolution", "aspect_ratio": "Aspect ratio",
    "num_frames": "Frames", "fps": "FPS", "gap_frames": "Gap frames", "num_inference_steps": "Steps",
    "guidance_scale": "Guidance", "sampler": "Sampler", "seed": "Seed", "storyboard": "Storyboard",
}

AUTO = "auto"  # mode: inferred from the inputs, as `generate` does without --mode
STORYBOARD = "storyboard"  # mode: several shots from the Storyboard field
FORM_MODES = (AUTO, *MODES, STORYBOARD)
DEFAULT = "model default"  # resolution / aspect ratio left to the model
RESOLUTIONS = (DEFAULT, "32px", "64px", "128px", "256px", "480p")
ASPECT_RATIOS = (DEFAULT, "1:1", "16:9", "9:16", "4:3", "3:4")

# fields, in the order the page passes them; numbers may be None (blank: the default)
FIELDS = ("prompt", "mode", "image", "video", "video_end", "direction", "image_position", "strength", "storyboard",
          "resolution", "aspect_ratio", "height", "width", "num_frames", "gap_frames", "fps",
          "num_inference_steps", "guidance_scale", "seed", "sampler", "negative_prompt", "expand_prompt")
UPLOADS = ("image", "video", "video_end")
CHOICES = {"direction": ("forward", "backward"), "image_position": ("first", "last")}  # the first is the default
PER_VIDEO = ("image", "video", "video_end", "strength", "num_frames", "gap_frames")  # refused with a storyboard

MAX_UPLOAD_BYTES = 50 * 2**20  # a file larger than this is refused before it is read
MAX_UPLOAD_DECODED = 2**30  # ... and so is one whose frames would take more than this decoded (T x H x W x 3)
UPLOAD_EXTENSIONS = {"image": (".png", ".jpg", ".jpeg", ".bmp", ".webp"),
                     "video": (".mp4", ".m4v", ".webm", ".mov", ".mkv", ".avi", ".gif", ".png", ".jpg", ".jpeg")}
UPLOAD_EXTENSIONS["video_end"] = UPLOAD_EXTENSIONS["video"]


def number(value: Any) -> int | float | None:
    """A form number: blank -> None; 17.0 -> 17 (Gradio sends floats); 4.5 stays, for check_request to refuse."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return value  # type: ignore[return-value]  # check_request names it
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return value


def _choice(value: Any) -> str | None:
    text = (value or "").strip() if isinstance(value, str) else value
    return None if text in (None, "", DEFAULT) else text


def build_request(values: dict[str, Any]) -> tuple[str, dict]:
    """Form values (FIELDS, by name) -> ("generate", kwargs of generate_to_file) or ("storyboard", kwargs of
    storyboard_to_file, the checked storyboard under "storyboard"). Blank fields are None (the model's default,
    steps, guidance and sampler included: VideoPipeline.sampling); numbers are passed as given, so check_request
    refuses 6 frames with the nearest valid count."""
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise ValueError(f"unknown form field(s) {', '.join(unknown)}")
    v = {k: values.get(k) for k in FIELDS}
    kw: dict[str, Any] = {
        "negative_prompt": (v["negative_prompt"] or "").strip() or None,
        "resolution": _choice(v["resolution"]), "aspect_ratio": _choice(v["aspect_ratio"]),
        "sampler": _choice(v["sampler"]), "expand_prompt": bool(v["expand_prompt"]),
        **{k: number(v[k]) for k in ("height", "width", "fps", "num_inference_steps", "guidance_scale", "seed")},
    }
    mode = _choice(v["mode"]) or AUTO
    if mode not in FORM_MODES:
        raise ValueError(f"{arg('mode', mode)}: not one of {', '.join(FORM_MODES)}")
    per_video = {"image": v["image"], "video": v["video"], "video_end": v["video_end"], "strength": number(v["strength"]),
                 "num_frames": number(v["num_frames"]), "gap_frames": number(v["gap_frames"])}
    if mode == STORYBOARD:
        given = [arg(k) for k in PER_VIDEO if per_video[k] is not None]
        if (v["prompt"] or "").strip():
            given.insert(0, arg("prompt"))
        if given:
            raise ValueError(f"a storyboard sets each shot's prompt and length itself; clear {', '.join(given)}")
        return STORYBOARD, {"storyboard": parse_storyboard(v["storyboard"]), **kw}  # kw: STORYBOARD_SETTINGS
    if (v["storyboard"] or "").strip():
        raise ValueError(f"{arg('storyboard')} is used in mode {STORYBOARD}; choose that mode or clear the field")
    if not isinstance(v["prompt"], str):
        raise ValueError(f"give a {arg('prompt')}, e.g. \"a red circle moves left\"")
    for name, choices in CHOICES.items():  # the page's radio buttons; a client of its API may send anything
        if (v[name] or choices[0]) not in choices:
            raise ValueError(f"{arg(name, v[name])}: not one of {', '.join(choices)}")
    return "generate", {"prompt": v["prompt"].strip(), "mode": None if mode == AUTO else mode,
                        **{name: v[name] or choices[0] for name, choices in CHOICES.items()},
                        **per_video, **kw}


def parse_storyboard(text: Any) -> dict:
    """The Storyboard field (JSON: a list of shots or {"shots": [...], ...}) -> the checked storyboard."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"mode {STORYBOARD} needs the {arg('storyboard')} field: a JSON list of shots such as "
                         "[{\"prompt\": \"a red circle moves left\", \"num_frames\": 17}, ...]")
    try:
        board = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{arg('storyboard')} is not JSON (line {err.lineno}: {err.msg}); write a list of shots "
                         "such as [{\"prompt\": \"a red circle moves left\", \"num_frames\": 17}, ...]") from None
    return check_storyboard(board)


def check_upload(path: str, what: str, max_bytes: int = MAX_UPLOAD_BYTES) -> str:
    """An uploaded file for field `what` (image, video, video_end), checked as the command line reads it: a
    known extension, at most `max_bytes`, readable by PyAV, and not too large decoded. Returns `path`; errors
    (ValueError, VideoReadError) name the file as the user called it (its base name), never the server's path."""
    from chronotope.video import VideoReadError, probe_video

    name = os.path.basename(path)
    label = arg(what)
    if not os.path.isfile(path):
        raise ValueError(f"{label}: {name} was not received; upload it again")
    ext = os.path.splitext(name)[1].lower()
    if ext not in UPLOAD_EXTENSIONS[what]:
        raise ValueError(f"{label}: {name} is not a file this field takes; give one of "
                         f"{', '.join(UPLOAD_EXTENSIONS[what])}")
    size = os.path.getsize(path)
    if size > max_bytes:
        raise ValueError(f"{label}: {name} is {size / 2**20:.1f} MB; uploads are limited to {max_bytes / 2**20:.0f} MB")
    try:
        info = probe_video(path)
    except VideoReadError as err:
        raise VideoReadError(f"{label}: {str(err).replace(path, name)}") from None
    decoded = info.num_frames * info.height * info.width * 3
    if decoded > MAX_UPLOAD_DECODED:
        raise ValueError(f"{label}: {name} holds {info.num_frames} frames of {info.width}x{info.height}, "
                         f"{decoded / 2**30:.1f} GB decoded; give a shorter or smaller clip "
                         f"(at most {MAX_UPLOAD_DECODED / 2**30:.0f} GB)")
    return path
