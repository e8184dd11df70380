"""What `chronotope generate` reads and writes: prompts files (CSV / JSONL rows with per-row overrides), output
names, and one video with its sidecar JSON (every parameter, the expanded prompt, the seed, the model).
"""

from __future__ import annotations

import os

from chronotope.atomic import atomic_write_json
from chronotope.outputs import check_output
from chronotope.pipeline.pipeline import VideoPipeline
from chronotope.pipeline.resolve import infer_mode
from chronotope.request import arg
from chronotope.video import write_video

INPUTS = ("image", "video", "video_end")  # the request's arguments that may name files it reads

OVERRIDES = {"seed": int, "num_frames": int, "height": int, "width": int, "fps": float, "duration": float,
             "num_inference_steps": int, "guidance_scale": float, "strength": float, "mode": str, "image": str,
             "video": str, "video_end": str, "negative_prompt": str, "direction": str, "image_position": str,
             "sampler": str, "resolution": str, "aspect_ratio": str, "cond_latent_frames": int, "window_frames": int,
             "gap_frames": int}


def read_prompts(path: str) -> list[dict]:
    """A prompts file -> rows {"prompt": ..., overrides}. CSV: a `prompt` or `text` column, other columns named
    like generate's arguments (num_frames, seed, mode, image, ...) override per row (blank cells are skipped,
    other columns ignored). JSONL: one object per line with "prompt" and optional overrides (unknown keys fail)."""
    import csv
    import json

    _check_file(path, arg("prompts"), "a CSV or JSONL file of prompts")
    rows: list[dict] = []
    if path.lower().endswith((".jsonl", ".json")):
        with open(path) as f:
            for i, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{i}: not JSON ({err.msg}); write one object per line") from None
                unknown = sorted(set(row) - set(OVERRIDES) - {"prompt"})
                if not isinstance(row.get("prompt"), str) or unknown:
                    raise ValueError(f"{path}:{i}: need a string \"prompt\"" + (f"; unknown keys {unknown}, valid: "
                                     f"{sorted(OVERRIDES)}" if unknown else ""))
                rows.append(row)
    else:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            column = next((c for c in ("prompt", "text") if c in (reader.fieldnames or [])), None)
            if column is None:
                raise ValueError(f"{path}: CSV needs a 'prompt' or 'text' column, has {reader.fieldnames}")
            for i, r in enumerate(reader, 2):
                row = {"prompt": r[column]}
                for key, cast in OVERRIDES.items():
                    if (r.get(key) or "").strip():
                        try:
                            row[key] = cast(r[key])
                        except ValueError:
                            raise ValueError(f"{path}:{i}: column {key}={r[key]!r} is not a {cast.__name__}") from None
                rows.append(row)
    if not rows:
        raise ValueError(f"{path} holds no prompts")
    return rows


def output_path(out: str, one_frame: bool, gif: bool) -> str:
    """OUT as given when it ends in .mp4/.gif/.png (--gif turns it into .gif); else OUT + .png for one frame,
    .gif with gif, .mp4 otherwise. A media extension that is not written (.avi, .mov, .jpg...) is refused,
    not appended to (x.avi never becomes x.avi.mp4)."""
    from chronotope.video import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, WRITE_EXTENSIONS

    stem, ext = os.path.splitext(out)
    if ext.lower() in set(VIDEO_EXTENSIONS + IMAGE_EXTENSIONS) - set(WRITE_EXTENSIONS):
        raise ValueError(f"{arg('output_path', out)}: {ext} is not written; give a name ending in "
                         f"{', '.join(WRITE_EXTENSIONS)} (or none: .mp4, .png for one frame)")
    if ext.lower() not in WRITE_EXTENSIONS:
        stem, ext = out, ""
    if gif:
        return stem + ".gif"
    return stem + (ext or (".png" if one_frame else ".mp4"))


def _check_file(path: str, flag: str, what: str) -> None:
    """FileNotFoundError / ValueError naming `flag` unless `path` is a file (`what` says which kind is expected)."""
    if os.path.isdir(path):
        raise ValueError(f"{flag} {path}: is a folder; expected {what}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{flag} {path}: not found; expected {what}")


def check_files(out: str, gif: bool = False, **kwargs) -> tuple[str, bool]:
    """Before any work (the model need not be loaded): the request's inputs (`kwargs`' image, video and video_end
    when they are paths) are files, a .png OUT is not asked of a video, and no file `out` may turn into (the
    video as .mp4, .png or .gif, and its sidecar .json) would replace one or land where nothing can be written.
    Returns the video's path as far as the request tells it, and whether OUT named its extension."""
    n = kwargs.get("num_frames")
    given = {k: kwargs.get(k) is not None for k in ("image", "video", "video_end", "strength")}
    mode = infer_mode(kwargs.get("mode"), n, given)
    one = mode == "t2i" or (n == 1 and mode == "t2v")
    path = output_path(out, one, gif)
    explicit = os.path.splitext(out)[1].lower() in (".mp4", ".gif", ".png")
    video = mode not in ("t2v", "t2i", "edit") or (mode == "t2v" and n is not None and n > 1)  # surely frames
    if path.endswith(".png") and explicit and video:
        raise ValueError(f"{arg('output_path', out)}: a .png holds one frame but mode {mode} makes a video; "
                         f"give a .mp4 or .gif name")
    inputs = {arg(k): kwargs[k] for k in INPUTS if isinstance(kwargs.get(k), (str, os.PathLike))}
    for flag, source in inputs.items():
        _check_file(os.fspath(source), flag, "a video or image file")
    names = {output_path(out, True, gif), output_path(out, False, gif)} if not explicit and not gif else {path}
    check_output(arg("output_path", out), sorted(names | {os.path.splitext(p)[0] + ".json" for p in names}), inputs)
    return path, explicit


def generate_to_file(pipe: VideoPipeline, out: str, model: str, gif: bool = False, **kwargs) -> tuple[str, str]:
    """Generate one video and write it (mp4 / png / gif) with a sidecar OUT.json holding every parameter, the
    prompt, the expanded prompt, the seed and the model. Both writes are atomic; if the sidecar fails the video
    is removed, so a failed run leaves no output file. A one-frame result (t2i, or an edit of an image) is a
    .png unless OUT names .mp4/.gif; a .png OUT for a several-frame result is refused. Returns (video path,
    sidecar path)."""
    path, explicit = check_files(out, gif, **kwargs)
    long_mode = kwargs.get("mode") in ("long", "stream")  # as given (the pipeline infers the same mode): written
    # frame by frame into the file, not returned
    result = pipe(kwargs.pop("prompt"), output_path=path if long_mode else None, **kwargs)
    if not long_mode:
        frames = result.frames[0]
        if len(frames) == 1 and not explicit and not gif:
            path = output_path(out, True, gif)  # one frame is an image
        if path.endswith(".png") and len(frames) > 1:
            raise ValueError(f"{arg('output_path', out)}: a .png holds one frame but this request made "
                             f"{len(frames)}; give a .mp4 or .gif name")
        write_video(path, frames, result.fps)
    side = os.path.splitext(path)[0] + ".json"
    _write_sidecar(path, side, {"output": path, "model": model, **result.params, "expanded_prompt": result.prompts[0],
                                "notes": result.notes})
    return path, side


def _write_sidecar(path: str, side: str, record: dict) -> None:
    """The sidecar of the video at `path`, atomically; on failure the video goes too (never one without the other)."""
    try:
        atomic_write_json(side, record, indent=2)
    except BaseException:
        if os.path.exists(path):
            os.remove(path)
        raise


def read_storyboard(path: str) -> dict:
    """A storyboard file (JSON: a list of shots, or {"shots": [...], "carry": ..., "context": ...}) -> the
    checked storyboard (request.check_storyboard); ValueError in one line for a file that is not one."""
    import json

    from chronotope.request import check_storyboard

    _check_file(path, arg("storyboard"), "a JSON file of shots")
    try:
        with open(path, encoding="utf-8") as f:
            board = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        where = f" (line {err.lineno}: {err.msg})" if isinstance(err, json.JSONDecodeError) else ""
        raise ValueError(f"{path} is not JSON{where}; a storyboard is a JSON list of shots such as "
                         "[{\"prompt\": \"a red circle moves left\", \"num_frames\": 17}, ...]") from None
    try:
        return check_storyboard(board)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def check_storyboard_files(out: str, gif: bool = False, read: dict[str, str | None] | None = None) -> str:
    """Before any work: the path of a storyboard's video (OUT.mp4, or .gif), refused when it is a .png or when it
    or its sidecar would replace an input in `read` (e.g. {"--storyboard": path}) or cannot be written."""
    path = output_path(out, False, gif)
    if path.endswith(".png"):
        raise ValueError(f"{arg('output_path', out)}: a storyboard is a video; give a .mp4 or .gif name")
    check_output(arg("output_path", out), [path, os.path.splitext(path)[0] + ".json"],
                 {flag: p for flag, p in (read or {}).items() if p is not None})
    return path


def storyboard_to_file(pipe: VideoPipeline, out: str, model: str, storyboard: dict, gif: bool = False,
                       **kwargs) -> tuple[str, str]:
    """Generate a storyboard into one video (OUT.mp4, or .gif; frames streamed as each shot is decoded) and a
    sidecar OUT.json with every setting, each shot's resolved settings and the cut frames. A failure leaves
    neither file. Returns (video path, sidecar path)."""
    path = check_storyboard_files(out, gif)
    result = pipe(storyboard=storyboard, output_path=path, **kwargs)
    side = os.path.splitext(path)[0] + ".json"
    _write_sidecar(path, side, {"output": path, "model": model, "storyboard": True, **result.params,
                                "notes": result.notes})
    return path, side
