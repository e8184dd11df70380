"""`VideoPipeline.__call__`: resolve the request (mode, size, frames, seed, prompts), build the mode's
conditioning (chronotope/modes.py), run the one denoising loop, decode and stitch.

Modes: t2v, t2i (num_frames = 1), i2v (image first or last), extend (forward / backward), connect
(video -> video_end), loop (two passes: a clip, then the same window with its head kept and its tail
replaying the head, see modes.plan_loop), edit (SDEdit, Meng et al. 2022: noise the video's latents to
t = strength and integrate back), long (autoregressive windows, each conditioned on the last frames
of the one before, decoded and written chunk by chunk so memory does not grow with length).
"""

from __future__ import annotations

import math
import os
import secrets

import numpy as np
import torch

from chronotope import modes
from chronotope.diffusion.flow import interpolate, shift_for_tokens, timesteps
from chronotope.long_video import generate_long
from chronotope.pipeline import (
    MODES,
    PipelineOutput,
    VideoPipeline,
    _note,
    initial_noise,
    resolve_size,
    tokens_per_sample,
)
from chronotope.request import arg, check_cost, check_request, estimate_cost
from chronotope.text.expand import expand_prompt as _expand
from chronotope.video import read_video, write_video

NEEDS = {"i2v": ("image",), "extend": ("video",), "connect": ("video", "video_end"), "edit": ("video",)}
USES = {"t2v": (), "t2i": (), "i2v": ("image",), "extend": ("video",), "connect": ("video", "video_end"),
        "loop": (), "edit": ("video", "strength"), "long": ("image",)}
# default length of what extend and connect add: extend adds 12 frames in either direction (a 17-frame
# window forward, 21 backward: the free latent before the given tail costs one), connect fills an 11-frame
# gap (4m-1 frames: the nearest to 12). Both keep 2 given latent frames (5 frames) from each video.
NEW_FRAMES = 12
CONNECT_GAP = 11


def infer_mode(mode: str | None, num_frames: int | None, given: dict[str, bool]) -> str:
    """The mode asked for, or the one the inputs imply; ValueError for a missing or an unused input."""
    if mode is None:
        mode = ("connect" if given["video_end"] else "edit" if given["strength"] else "extend" if given["video"]
                else "i2v" if given["image"] else "t2i" if num_frames == 1 else "t2v")
    if mode not in MODES:
        raise ValueError(f"{arg('mode', mode)}: unknown mode; valid: {', '.join(MODES)}")
    missing = [k for k in NEEDS.get(mode, ()) if not given[k]]
    if missing:
        what = " and ".join(arg(k) for k in missing)
        raise ValueError(f"{arg('mode', mode)} needs {what}: {'they are' if len(missing) > 1 else 'it is'} missing")
    unused = [k for k, v in given.items() if v and k not in USES[mode]]
    if unused:
        raise ValueError(f"{arg('mode', mode)} does not use {', '.join(arg(k) for k in unused)}; drop it or choose "
                         f"a mode that does (image: i2v/long, video: extend/edit, video + video_end: connect)")
    return mode


def frames_from(num_frames: int | None, duration: float | None, fps: float) -> int | None:
    """num_frames, or duration x fps when that is a whole 4k+1; ValueError names the nearest valid durations."""
    if duration is None:
        return num_frames
    if num_frames is not None:
        raise ValueError(f"give {arg('num_frames')} or {arg('duration')}, not both")
    n = duration * fps
    if abs(n - round(n)) < 1e-6 and round(n) >= 1 and (round(n) - 1) % 4 == 0:
        return int(round(n))
    lo = max(1, int((n - 1) // 4) * 4 + 1)
    near = ", ".join(f"{k} frames ({k / fps:g} s)" for k in (lo, lo + 4))
    raise ValueError(f"{arg('duration', duration)}: {duration:g} s at {fps:g} fps is {n:g} frames; clips have "
                     f"4k+1 frames, nearest valid: {near}")


def _load(source, what: str) -> tuple[np.ndarray, float]:
    """Path or uint8 array -> uint8 [T, H, W, 3], fps (0 for arrays and images). VideoReadError if unreadable."""
    if isinstance(source, (str, os.PathLike)):
        return read_video(source)
    frames = np.asarray(source)
    frames = frames[None] if frames.ndim == 3 else frames
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"{what} must be a file path or uint8 frames [T, H, W, 3] / [H, W, 3], got "
                         f"{frames.dtype} {tuple(frames.shape)}")
    return frames, 0.0


def _per_prompt(value, n: int, name: str) -> list[str]:
    if value is None or isinstance(value, str):
        return [value or ""] * n
    if len(value) != n:
        raise ValueError(f"{name} has {len(value)} entries for {n} prompts; give one or a string")
    return list(value)


def generate(
    pipe: VideoPipeline,
    prompt: str | list[str],
    negative_prompt: str | list[str] | None = None,
    height: int | None = None,
    width: int | None = None,
    num_frames: int | None = None,
    fps: float | None = None,
    resolution: str | None = None,
    aspect_ratio: str | None = None,
    duration: float | None = None,
    num_inference_steps: int = 30,
    guidance_scale: float = 5.0,
    image_guidance_scale: float | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    sampler: str = "euler",
    image=None,
    video=None,
    video_end=None,
    strength: float | None = None,
    mode: str | None = None,
    direction: str = "forward",
    image_position: str = "first",
    cond_latent_frames: int | None = None,
    window_frames: int | None = None,
    gap_frames: int | None = None,
    shift: float | None = None,
    expand_prompt: bool = True,
    output_path: str | list[str] | None = None,
    progress: bool = True,
) -> PipelineOutput:
    """Generate one video per prompt in any mode; every mode is one sampler call with different clean frames.

    num_frames: frames of the output clip (4k+1) for t2v/i2v/edit/long (long: the total); for extend and
    connect the generated window, given frames included (the output holds the whole given videos plus
    the new frames); for loop the loop length (a multiple of 4; the frame after the last is the first).
    By default extend adds NEW_FRAMES (12) frames either way and connect fills a CONNECT_GAP (11) frame gap.
    gap_frames (connect): frames generated between the two videos (4m-1: 3, 7, 11, ...), instead of num_frames.
    cond_latent_frames: latent frames taken from a given video (1 = its last frame, 2 = last 5, ...).
    Every value is used as given or refused (ValueError naming the nearest valid one; request.check_request),
    and a request that cannot fit in memory, or would run past a day, is refused before it starts
    (request.check_cost); one that takes minutes gets a note with the estimate.
    image/video/video_end: a path or uint8 frames; other sizes are resized and center-cropped.
    strength (edit): 0 keeps the video, 1 ignores it. output_path: also write the video(s) there
    (atomically; long mode streams frames as they are decoded and then returns no frames).
    """
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts:
        raise ValueError("give at least one prompt")
    B, notes = len(prompts), []
    negatives = _per_prompt(negative_prompt, B, "negative_prompt")
    given = {"image": image is not None, "video": video is not None, "video_end": video_end is not None,
             "strength": strength is not None}
    mode = infer_mode(mode, num_frames, given)
    warnings = check_request(prompt=prompts, mode=mode, height=height, width=width, num_frames=num_frames, fps=fps,
                             duration=duration, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                             image_guidance_scale=image_guidance_scale, strength=strength, shift=shift, seed=seed,
                             cond_latent_frames=cond_latent_frames, window_frames=window_frames, gap_frames=gap_frames)
    _check_choices(sampler=sampler, direction=direction, image_position=image_position)
    if gap_frames is not None and (mode != "connect" or num_frames is not None or duration is not None):
        raise ValueError(f"{arg('gap_frames')} sets the length of a connect (mode connect), instead of "
                         f"{arg('num_frames')}: give one of them")
    if seed is None:
        seed = generator.initial_seed() if generator is not None else secrets.randbelow(2**31)
    generator = generator or torch.Generator().manual_seed(int(seed))

    inputs = {k: _load(v, k) for k, v in (("image", image), ("video", video), ("video_end", video_end)) if v is not None}
    first = next(iter(inputs.values()), None)
    fallback = None
    if first is not None:
        step = pipe.vae.config.spatial_factor * pipe.dit.config.patch[1]
        fallback = (max(step, first[0].shape[1] // step * step), max(step, first[0].shape[2] // step * step))
    H, W = resolve_size(pipe, height, width, resolution, aspect_ratio, fallback)
    in_fps = next((f for _, f in inputs.values() if f > 0), 0.0)
    fps = float(fps if fps is not None else (in_fps or pipe.defaults["fps"]))
    num_frames = frames_from(num_frames, duration, fps)
    frames_in = {k: _fit(pipe, f, H, W, k, notes) for k, (f, _) in inputs.items()}
    encode = pipe.encode_video

    # the window's length in frames
    if mode == "t2i":
        if num_frames not in (None, 1):
            raise ValueError(f"{arg('mode', 't2i')} makes one frame; got {arg('num_frames', num_frames)} "
                             f"(use t2v for videos)")
        T = 1
    elif mode == "loop":
        loop_len = 16 if num_frames is None else num_frames
        k = 1 if cond_latent_frames is None else cond_latent_frames
        T = modes.window_frames(modes.loop_window(loop_len, k))
    elif mode == "edit":
        v = frames_in["video"]
        T = num_frames if num_frames is not None else (len(v) - 1) // 4 * 4 + 1
        if T > len(v):
            raise ValueError(f"edit: the video has {len(v)} frames, fewer than {arg('num_frames', T)}")
        if T < len(v):
            _note(notes, f"edit: using the first {T} of the video's {len(v)} frames (clips have 4k+1 frames)")
        frames_in["video"] = v[:T]
    elif mode == "long":
        T = window_frames if window_frames is not None else pipe.defaults["num_frames"]
        total = num_frames if num_frames is not None else T
    elif num_frames is not None:
        T = num_frames
    elif mode == "extend":  # NEW_FRAMES new frames after (forward) or before (backward) 2 given latent frames
        k0 = 2 if cond_latent_frames is None else cond_latent_frames
        T = modes.window_frames(k0 + NEW_FRAMES // modes.TF + (direction == "backward"))
    elif mode == "connect":  # a CONNECT_GAP-frame gap between 2 given latent frames of each video
        k0 = 2 if cond_latent_frames is None else cond_latent_frames
        T = modes.window_frames(2 * k0 + ((CONNECT_GAP if gap_frames is None else gap_frames) + 1) // modes.TF)
    else:
        T = pipe.defaults["num_frames"]
    C, n, h, w = pipe.vae.latent_shape(T, H, W)
    if mode not in ("loop",):
        k = (cond_latent_frames if cond_latent_frames is not None
             else max(1, min(2, (n - 1) // (2 if mode == "connect" else 1))))
    if shift is None:
        shift = shift_for_tokens(tokens_per_sample(pipe, n, h, w), scale=float(pipe.defaults["time_shift"]))
    passes = 1 if guidance_scale <= 1.0 else (3 if image_guidance_scale is not None and mode != "t2v" else 2)
    if mode == "long":
        windows = 1 + max(0, math.ceil(((total - 1) // 4 + 1 - n) / max(1, n - k)))
        cost = estimate_cost(pipe, B, (C, n, h, w), num_inference_steps, passes, total, windows)
    else:
        cost = estimate_cost(pipe, B, (C, n, h, w), num_inference_steps, passes, T, 2 if mode == "loop" else 1)
    long_note = check_cost(cost)
    for text in warnings + ([long_note] if long_note else []):
        _note(notes, text)

    texts = [_expand(p, int(seed), None if expand_prompt else False) for p in prompts]
    cond, uncond = pipe.encode_prompts(texts, negatives)
    run = dict(sampler=sampler, guidance_scale=guidance_scale, image_guidance_scale=image_guidance_scale,
               generator=generator, progress=progress)
    ts = timesteps(num_inference_steps, shift)
    paths = None if output_path is None else ([output_path] if isinstance(output_path, (str, os.PathLike)) else list(output_path))
    if paths is not None and len(paths) != B:
        raise ValueError(f"output_path needs one path per prompt ({B}), got {len(paths)}")

    params = dict(prompt=prompts[0] if B == 1 else prompts, mode=mode, height=H, width=W, num_frames=T, fps=fps, num_inference_steps=num_inference_steps,
                  guidance_scale=guidance_scale, image_guidance_scale=image_guidance_scale, sampler=sampler,
                  shift=float(shift), seed=int(seed), negative_prompt=negatives[0] if B == 1 else negatives, direction=direction,
                  image_position=image_position, strength=strength, expand_prompt=expand_prompt,
                  **{k: os.fspath(v) for k, v in (("image", image), ("video", video), ("video_end", video_end))
                     if isinstance(v, (str, os.PathLike))})
    if mode != "t2i" and mode not in ("t2v", "i2v", "edit"):
        params["cond_latent_frames"] = k
    if mode == "connect":
        params["gap_frames"] = modes.TF * (n - 2 * k) - 1

    if mode == "long":
        params.update(num_frames=total, window_frames=T)
        frames, latents, mask = generate_long(pipe, frames_in.get("image"), total, n, k, (C, h, w), cond, uncond, ts, run,
                                      paths, fps, image_position)
        return PipelineOutput(frames, latents, texts, int(seed), fps, mode, mask, params, notes)

    noise = initial_noise((B, C, n, h, w), generator, pipe.device)  # [B, C, n, h, w]
    x = noise
    if mode in ("t2v", "t2i", "edit"):
        plan = modes.plan_none((C, n, h, w))
        if mode == "edit":
            strength = 0.7 if strength is None else strength
            params["strength"] = strength
            z0 = encode(frames_in["video"]).to(noise)[None]  # [1, C, n, h, w]
            steps = max(1, math.ceil(num_inference_steps * strength))
            ts = timesteps(steps, shift, start=strength)
            x = interpolate(z0.expand_as(noise), noise, strength)  # x_t at t = strength
    elif mode == "i2v":
        plan = modes.plan_i2v(encode, frames_in["image"], n, image_position)
    elif mode == "extend":
        plan = modes.plan_extend(encode, frames_in["video"], n, k, direction)
    elif mode == "connect":
        plan = modes.plan_connect(encode, frames_in["video"], frames_in["video_end"], n, k)
    else:  # loop: pass 1 is plain t2v; pass 2 reuses the same noise with the head and tail given
        z1 = pipe.denoise(noise, ts, cond, uncond, modes.plan_none((C, n, h, w)), **run)
        heads = pipe.decode(z1[:, :, : k + 1])  # [B, 4k+1, H, W, 3]: exact, the VAE is causal
        plans = [modes.plan_loop(encode, z1[b], heads[b], k) for b in range(B)]
        plan = modes.Plan(torch.stack([p.latents for p in plans]), plans[0].mask, plans[0].keep)
    z = pipe.denoise(x, ts, cond, uncond, plan, **run)
    decoded = pipe.decode(z)  # [B, T, H, W, 3]
    frames = [plan.assemble(decoded[b]) for b in range(B)]
    if mode == "loop":
        params["loop_closure"] = [modes.loop_closure(f) for f in frames]
    for path, f in zip(paths or [], frames):
        write_video(path, f, fps)
    return PipelineOutput(frames, z, texts, int(seed), fps, mode, plan.mask[None].expand(B, -1).clone(), params, notes)


def _check_choices(**given: str) -> None:
    """sampler / direction / image_position: one of their valid values, checked before any work."""
    from chronotope.diffusion.samplers import SAMPLERS

    valid = {"sampler": tuple(SAMPLERS), "direction": ("forward", "backward"), "image_position": ("first", "last")}
    for name, value in given.items():
        if value not in valid[name]:
            raise ValueError(f"{arg(name, value)}: not one of {', '.join(valid[name])}")


def _fit(pipe: VideoPipeline, frames: np.ndarray, H: int, W: int, what: str, notes: list[str]) -> np.ndarray:
    """uint8 [T, h0, w0, 3] -> [T, H, W, 3]: resize to cover, center-crop, with a note when the size changes."""
    from chronotope.data.dataset import resize_crop

    if frames.shape[1:3] == (H, W):
        return np.ascontiguousarray(frames)
    _note(notes, f"{what}: resized and center-cropped {frames.shape[2]}x{frames.shape[1]} -> {W}x{H}")
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()  # [T, 3, h0, w0]
    return resize_crop(x, H, W).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


# --- files: what `chronotope generate` writes ----------------------------------------------------------

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

    if not os.path.isfile(path):
        raise FileNotFoundError(f"prompts file {path} not found")
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


def generate_to_file(pipe: VideoPipeline, out: str, model: str, gif: bool = False, **kwargs) -> tuple[str, str]:
    """Generate one video and write it (mp4 / png / gif) with a sidecar OUT.json holding every parameter, the
    prompt, the expanded prompt, the seed and the model. Both writes are atomic; if the sidecar fails the video
    is removed, so a failed run leaves no output file. A one-frame result (t2i, or an edit of an image) is a
    .png unless OUT names .mp4/.gif; a .png OUT for a several-frame result is refused. Returns (video path,
    sidecar path)."""
    from chronotope.atomic import atomic_write_json

    mode, n = kwargs.get("mode"), kwargs.get("num_frames")
    one = mode == "t2i" or (n == 1 and mode in (None, "t2v", "t2i") and not kwargs.get("video"))
    path = output_path(out, one, gif)
    explicit = os.path.splitext(out)[1].lower() in (".mp4", ".gif", ".png")
    if os.path.isdir(path):
        raise ValueError(f"output {path} is a folder; give a file path (or use --prompts for a folder of outputs)")
    long_mode = mode == "long"
    if path.endswith(".png") and explicit and not one and mode not in (None, "edit"):
        raise ValueError(f"{arg('output_path', out)}: a .png holds one frame but mode {mode} makes a video; "
                         f"give a .mp4 or .gif name")
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
    record = {"output": path, "model": model, **result.params, "expanded_prompt": result.prompts[0],
              "notes": result.notes}
    try:
        atomic_write_json(side, record, indent=2)
    except BaseException:
        if os.path.exists(path):
            os.remove(path)
        raise
    return path, side
