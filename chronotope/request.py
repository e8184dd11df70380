"""One validation of every generation request, shared by the Python API (`VideoPipeline.__call__`), the
command line and the web app: every number finite and in range, no value silently replaced, and a cost
estimate (memory and time) checked before anything that takes minutes starts.

Errors name a parameter through `arg()` (spelling.py), so each caller shows the names its user typed: the Python
API says `num_frames=6`, the command line (which wraps its verbs in `spelled(FLAGS)`) says `--num-frames 6`. The
modes and what each takes, and what a storyboard takes, are written here once.

    check_request(num_frames=6, fps=8.0, guidance_scale=5.0, ...)   # ValueError naming the nearest valid value
    cost = estimate_cost(pipe, batch=1, latent=(16, 5, 8, 8), steps=30, guidance_passes=2)
    check_cost(cost)                                                  # ValueError past memory; a note past a minute
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from chronotope.cost import (RATES, Cost, available_memory, format_bytes, format_duration, memory_limit,  # noqa: F401
                             sampling_cost, vae_flops)  # memory_limit: still imported from here by train/world_model
from chronotope.spelling import arg, spelled


@dataclass(frozen=True)
class ModeFacts:
    """What a generation mode is to its user: the inputs a request must give, the ones it may give (`needs`
    included), and one line for --help and the web app. pipeline/modes.py keys each one's conditioning by name."""

    needs: tuple[str, ...]
    uses: tuple[str, ...]
    description: str


# every generation mode, the one list (pipeline/modes.py builds each one's conditioning; VideoPipeline runs it)
MODES: dict[str, ModeFacts] = {
    "t2v": ModeFacts((), (), "text to video"),
    "t2i": ModeFacts((), (), "text to image (one frame)"),
    "i2v": ModeFacts(("image",), ("image",), "image to video (the image first, or last)"),
    "extend": ModeFacts(("video",), ("video",), "a video continued forward (or backward)"),
    "connect": ModeFacts(("video", "video_end"), ("video", "video_end"), "new frames between the end of one video and "
                    "the start of another"),
    "loop": ModeFacts((), (), "a seamless loop (the last frame leads back into the first)"),
    "edit": ModeFacts(("video",), ("video", "strength"), "a video redrawn after the prompt (strength: how much)"),
    "long": ModeFacts((), ("image",), "a long video made window by window, each continuing the last (from an image, if "
                 "given)"),
    "stream": ModeFacts((), (), "a video made a frame at a time (a rolling schedule), written as it is made"),
}
# frames per latent frame after the first: the causal VAE's temporal factor (its config's temporal_factor), for
# checks made where no VAE is at hand. Clips have TEMPORAL_FACTOR k + 1 frames
TEMPORAL_FACTOR = 4

# ranges of the numbers of a request: (low, high), both inclusive unless named in OPEN_LOW. The highs of
# frame counts keep a request's arithmetic sane (100,001 frames is 3.5 hours at 8 fps); below them memory and
# time decide what fits, which the cost check (check_cost) states with the most frames that fit
RANGES: dict[str, tuple[float, float]] = {
    "num_frames": (1, 100_001), "window_frames": (5, 100_001), "cond_latent_frames": (1, 1_000),
    "gap_frames": (3, 100_001), "height": (1, 16_384), "width": (1, 16_384), "fps": (0.0, 240.0),
    "duration": (0.0, 3600.0), "num_inference_steps": (1, 1_000), "guidance_scale": (0.0, 50.0),
    "image_guidance_scale": (0.0, 50.0), "strength": (0.0, 1.0), "shift": (0.0, 100.0), "seed": (0, 2**63 - 1),
    "lora_scale": (-10.0, 10.0),
}
OPEN_LOW = {"fps", "duration", "strength", "shift"}  # these must be > low, not >= low
INTEGERS = {"num_frames", "window_frames", "cond_latent_frames", "gap_frames", "height", "width",
            "num_inference_steps", "seed"}
# sizes whose valid values memory and time decide (with the model): past RANGES' high no value is named as the
# nearest valid one, since the high itself may not fit; height and width below one step of the model (the VAE's
# factor x the DiT's patch) are refused by pipeline.resolve_size, which knows that step and names its multiples
SIZED = {"num_frames", "window_frames", "gap_frames", "height", "width"}
# why a range ends where it does, stated with its error
WHY = {"height": " (the largest frame side H.264 writes)", "width": " (the largest frame side H.264 writes)",
       "num_frames": " (3.5 hours at 8 fps; below that, memory and time decide what fits)",
       "seed": " (a 64-bit seed)"}

LONG_SECONDS = 60.0  # estimated runs longer than this get a note with the estimate before they start
MAX_SECONDS = 86_400.0  # and runs estimated past a day are refused: nobody waits that long for a clip by mistake


def _number(x: float, integer: bool) -> str:
    """A bound or a hint as a user types it back: 9223372036854775807, not 9.22337e+18."""
    return str(int(x)) if integer and math.isfinite(x) else f"{x:g}"


def check_range(param: str, value: Any, lo: float, hi: float, *, integer: bool = False, open_low: bool = False,
                why: str = "", hint: bool = True) -> None:
    """ValueError unless `value` is a finite number (a whole one when `integer`) with lo <= value <= hi (lo < value
    when `open_low`). The message states the range, `why` it ends there, and the nearest valid value (not when
    `hint` is off: for a size whose high may not fit, and never a low that open_low excludes)."""
    span = (f"greater than {_number(lo, integer)} and at most {_number(hi, integer)}" if open_low
            else f"from {_number(lo, integer)} to {_number(hi, integer)}")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            integer and not (isinstance(value, int) or (math.isfinite(value) and float(value).is_integer()))):
        raise ValueError(f"{arg(param, value)}: must be {'a whole number' if integer else 'a number'} {span}{why}")
    if not math.isfinite(value):
        raise ValueError(f"{arg(param, value)}: must be a finite number {span}{why}")
    if (value > lo if open_low else value >= lo) and value <= hi:
        return
    nearest = hi if value > hi else (None if open_low else lo)
    near = f"; nearest valid: {_number(nearest, integer)}" if nearest is not None and (hint or value < lo) else ""
    raise ValueError(f"{arg(param, value)}: must be {span}{why}{near}")


def check_number(param: str, value: Any, *, valid: str = "") -> None:
    """ValueError unless `value` is a finite number (an int where an int is needed) within RANGES[param]."""
    lo, hi = RANGES[param]
    check_range(param, value, lo, hi, integer=param in INTEGERS, open_low=param in OPEN_LOW,
                why=valid or WHY.get(param, ""), hint=param not in SIZED)


def check_clip_frames(param: str, value: int) -> None:
    """num_frames-like counts: 4k+1 (the causal VAE codes the first frame alone, then 4 frames per latent)."""
    check_number(param, value)
    tf = TEMPORAL_FACTOR
    if (value - 1) % tf:
        lo = (value - 1) // tf * tf + 1
        raise ValueError(f"{arg(param, value)}: clips have {tf}k+1 frames (the causal VAE codes the first frame "
                         f"alone, then {tf} at a time); nearest valid: {lo} or {lo + tf}")


def check_request(**params: Any) -> list[str]:
    """Check the numbers of a generation request that are given (None = the default, resolved later).

    Refuses, never replaces: 0 frames, 0 fps or a NaN guidance is an error, not a default. Returns
    warnings for requests that run but are likely mistakes (an empty prompt).
    """
    warnings = []
    for param, value in params.items():
        if value is None or param not in RANGES:
            continue
        if param == "num_frames" and params.get("mode") == "loop":  # a loop's length: a multiple of 4 (modes.py)
            check_range(param, value, TEMPORAL_FACTOR, RANGES[param][1], integer=True, hint=False)
        elif param in ("num_frames", "window_frames"):
            check_clip_frames(param, value)
        elif param in ("height", "width") and isinstance(value, int) and not isinstance(value, bool) and value < 1:
            continue  # below the model's step: pipeline.resolve_size refuses it, naming the nearest multiple
        elif param == "gap_frames":
            check_number(param, value)
            tf = TEMPORAL_FACTOR
            if (value + 1) % tf:
                lo = max(tf - 1, (value + 1) // tf * tf - 1)
                raise ValueError(f"{arg(param, value)}: a connecting gap has {tf}m-1 frames ({tf - 1}, {2 * tf - 1}, "
                                 f"{3 * tf - 1}, ...); nearest valid: {lo} or {lo + tf}")
        else:
            check_number(param, value)
    prompt = params.get("prompt")
    prompts = [prompt] if isinstance(prompt, str) else list(prompt or [])
    if any(isinstance(p, str) and not p.strip() for p in prompts):
        warnings.append("the prompt is empty: the model draws from its unconditional distribution "
                        "(any scene); give a prompt such as \"a red circle moves left\"")
    return warnings


# --- cost: this machine's load, and the cost model's estimate checked before starting (the model: cost.py) ----

# More torch threads than idle cores (another job runs; torch's default takes every core) made the same DiT call
# 3-4x slower than one thread on that busy machine (1.0-1.5 s against 0.31-0.40 s): the estimate's factor then.
OVERSUBSCRIBED = 3.5
# each further thread on an idle core: assumed, not measured here (the 2-core machines were never idle)
THREAD_GAIN = 0.6


def cpu_load() -> tuple[float, int]:
    """(1-minute load average, CPU cores); load 0 where the system does not report one."""
    try:
        load = os.getloadavg()[0]
    except (OSError, AttributeError):
        load = 0.0
    return load, os.cpu_count() or 1


_WAIT: dict[str, float] = {}  # core_wait's last measurement: {"at": time.monotonic(), "wait": factor}


def core_wait(seconds: float = 0.2, keep: float = 60.0) -> float:
    """How many times longer than its CPU time one thread of this process takes now: the wall time over the CPU
    time of a `seconds` busy loop (1 when the load says a core is idle; remeasured after `keep` seconds). It sees
    what the load average cannot: jobs of higher priority (a `nice -10` training run gave a thread of ours
    1/8 of a core at load 5.8, where a fair share would be 1/3.4)."""
    import time

    load, cores = cpu_load()
    if load + 1.0 <= cores:
        return 1.0
    now = time.monotonic()
    if now - _WAIT.get("at", -keep) < keep:
        return _WAIT["wait"]
    t0, c0 = time.perf_counter(), time.process_time()
    while time.perf_counter() - t0 < seconds:
        pass
    wait = max(1.0, (time.perf_counter() - t0) / max(time.process_time() - c0, 1e-6))
    _WAIT.update(at=now, wait=wait)
    return wait


def thread_slowdown(threads: int | None = None) -> float:
    """Wall time of CPU work with `threads` torch threads (None: torch's current setting) relative to one thread
    on an idle core: other jobs make a thread wait for a core (core_wait: measured, not guessed from the load);
    more threads than idle cores stall each other on top (OVERSUBSCRIBED); further threads on idle cores gain
    THREAD_GAIN each."""
    if threads is None:
        import torch

        threads = torch.get_num_threads()
    load, cores = cpu_load()
    wait = core_wait()
    if threads > 1 and threads > cores - load + 0.5:
        return OVERSUBSCRIBED * wait
    return wait / (1.0 + THREAD_GAIN * (max(1, threads) - 1))


def busy_cpu_note(threads_given: bool) -> str | None:
    """A note when the CPU is busy and torch would use several threads because --threads was not given:
    on the 2-core machines a DiT step then took 7-15 s against under 2 s with --threads 1."""
    import torch

    load, cores = cpu_load()
    threads = torch.get_num_threads()
    if threads_given or threads <= 1 or load < cores - 0.5:
        return None
    return (f"the CPU is busy (load {load:.1f} on {cores} cores) and torch uses {threads} threads, which compete "
            f"with the other jobs and can run several times slower; pass --threads 1 (or the number of idle cores)")


def set_threads(threads: int | None) -> None:
    """A verb's --threads: torch's CPU threads when given (ValueError below 1); when not, a note on stderr if the
    CPU is busy (busy_cpu_note), since torch's default of every core then runs several times slower."""
    import torch

    if threads is not None:
        if threads < 1:
            raise ValueError(f"--threads {threads}: must be at least 1 (1 is often fastest on a busy machine)")
        torch.set_num_threads(threads)
    text = busy_cpu_note(threads is not None)
    if text is not None:
        print(f"note: {text}", file=sys.stderr)


def vae_seconds(vae, frames: int, height: int, width: int, tile: tuple[int, int] | int | None = None,
                threads: int | None = None) -> float:
    """Time on this CPU of encoding and decoding `frames` frames of height x width (chronotope reconstruct) with a
    VAE of config `vae`, in spatial tiles of `tile` pixels or whole frames."""
    tile = (tile, tile) if isinstance(tile, int) else tile
    flops = vae_flops(vae, frames, height, width, True, tile) + vae_flops(vae, frames, height, width, False, tile)
    return flops / RATES["cpu"]["conv"] * thread_slowdown(threads)


def check_device(device: str | None) -> str:
    """The device a run asks for ("cpu", "cuda" or "cuda:N"; None = cuda when PyTorch sees a GPU, else cpu), checked
    before any work: ValueError for one this PyTorch cannot use (a CPU-only build asked for cuda)."""
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    kind, _, index = str(device).partition(":")
    if kind not in ("cpu", "cuda") or (index and (kind == "cpu" or not index.isdigit())):
        raise ValueError(f"{arg('device', device)}: not a device; use cpu or cuda (cuda:N for the N-th GPU)")
    if kind == "cuda" and not torch.cuda.is_available():
        why = "this PyTorch is built without CUDA" if not torch.backends.cuda.is_built() else "PyTorch sees no GPU"
        raise ValueError(f"{arg('device', device)}: {why}; use {arg('device', 'cpu')}")
    if index and int(index) >= torch.cuda.device_count():
        raise ValueError(f"{arg('device', device)}: PyTorch sees {torch.cuda.device_count()} GPU(s), numbered from 0")
    return str(device)


def estimate_cost(pipe, batch: int, latent: tuple[int, int, int, int], steps: int, guidance_passes: int,
                  frames: int, windows: int = 1, *, sampler: str = "euler", encode_frames: int = 0,
                  decode_frames: int | None = None, threads: int | None = None) -> Cost:
    """Peak memory and time of a request to `pipe` (cost.sampling_cost says what of), its VAE coding in the tiles
    the pipeline codes in (pipe._tile), scaled by the threads and the machine's load (thread_slowdown): within 2x
    of the measured time on the 2-core machines, which is what a refusal of a 50 GB request or a note before a
    14-minute one needs."""
    C, n, h, w = latent
    vae = pipe.vae.config
    kind = "cuda" if str(getattr(pipe, "device", "cpu")).startswith("cuda") else "cpu"
    parameters = sum(p.numel() for p in pipe.dit.parameters()) + sum(p.numel() for p in pipe.vae.parameters())
    cost = sampling_cost(pipe.dit.config, vae, parameters, kind, batch, latent, steps, guidance_passes, frames,
                         windows, sampler=sampler, encode_frames=encode_frames, decode_frames=decode_frames,
                         tile=pipe.tile(h * vae.spatial_factor, w * vae.spatial_factor))
    if kind == "cpu":
        cost.seconds *= thread_slowdown(threads)
    tf = vae.temporal_factor
    if windows == 1 and frames == tf * (n - 1) + 1 and decode_frames is None:  # t2v, i2v, edit: frames are n's
        cost.at_frames = lambda f: estimate_cost(pipe, batch, (C, (f - 1) // tf + 1, h, w), steps,  # noqa: E731
                                                 guidance_passes, f, sampler=sampler,
                                                 encode_frames=min(encode_frames, f), threads=threads)
    return cost


def check_cost(cost: Cost, available: float | None = None) -> str | None:
    """ValueError when the request cannot fit in memory or would run past MAX_SECONDS; a note (returned)
    when it will take minutes."""
    available = available_memory(cost.device) if available is None else available
    fits = lambda c: c.memory <= 0.8 * available and c.seconds <= MAX_SECONDS  # noqa: E731
    if cost.memory > 0.8 * available:
        raise ValueError(f"this request needs {cost.describe()}, more than the {format_bytes(available)} available; "
                         f"ask for a smaller size (height x width) or fewer frames{_most_frames(cost, fits)}")
    if cost.seconds > MAX_SECONDS:
        raise ValueError(f"this request would take {cost.describe()}, past the {format_duration(MAX_SECONDS)} limit; "
                         f"ask for a smaller size (height x width) or fewer frames or steps{_most_frames(cost, fits)}")
    if cost.seconds > LONG_SECONDS:
        return f"this request will take {cost.describe()}; a smaller size or fewer frames or steps is faster"
    return None


def _most_frames(cost: Cost, fits: Callable[[Cost], bool]) -> str:
    """"; at this size at most N frames fit (--num-frames N)" with the largest 4k+1 frame count below the request's
    that `fits` (memory and time grow with frames), or "" when the frames are not the request's to change or not
    even one frame fits."""
    if cost.at_frames is None or cost.frames <= 1 or not fits(cost.at_frames(1)):
        return ""
    step = cost.frame_step
    lo, hi = 0, (cost.frames - 1) // step  # step lo + 1 frames fit, step hi + 1 do not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(cost.at_frames(step * mid + 1)) else (lo, mid)
    return f"; at this size at most {step * lo + 1} frames fit ({arg('num_frames', step * lo + 1)})"


# --- storyboards: several shots in one video ------------------------------------------

SHOT_KEYS = ("prompt", "num_frames", "duration", "negative_prompt", "seed")
STORYBOARD_KEYS = ("shots", "carry", "context")
CARRY = ("characters", "none")  # characters: objects named again keep the attributes an earlier shot gave them
CONTEXT = ("auto", "none")  # auto: earlier shots as clean context when the model can use them; none: independent
MAX_STORYBOARD_SHOTS = 256
# what a storyboard request takes besides its shots: the settings all its shots share (each shot names its own prompt,
# length, seed and negative prompt; a per-video input such as an image or a mode is refused)
STORYBOARD_SETTINGS = ("negative_prompt", "height", "width", "resolution", "aspect_ratio", "fps", "num_inference_steps",
                       "guidance_scale", "seed", "sampler", "shift", "expand_prompt", "output_path", "progress")


def check_storyboard(board: Any) -> dict:
    """A storyboard, a list of shots or {"shots": [...], "carry": ..., "context": ...}, checked shot by shot ->
    {"shots": [{prompt, num_frames | duration, ...}], "carry", "context"}. Each shot has a prompt and a length:
    num_frames (4k+1) or duration (seconds, with the request's fps). ValueError names the shot and the key."""
    if isinstance(board, list):
        board = {"shots": board}
    if not isinstance(board, dict):
        raise ValueError(f"a storyboard is a list of shots or an object {{\"shots\": [...]}}, got {type(board).__name__}")
    unknown = sorted(set(board) - set(STORYBOARD_KEYS))
    if unknown:
        raise ValueError(f"storyboard: unknown key(s) {', '.join(unknown)}; valid: {', '.join(STORYBOARD_KEYS)}")
    shots = board.get("shots")
    if not isinstance(shots, list) or not shots:
        raise ValueError("storyboard: needs a non-empty list of shots, e.g. [{\"prompt\": \"a red circle moves "
                         "left\", \"num_frames\": 17}, ...]")
    if len(shots) > MAX_STORYBOARD_SHOTS:
        raise ValueError(f"storyboard: {len(shots)} shots; at most {MAX_STORYBOARD_SHOTS}")
    for key, valid in (("carry", CARRY), ("context", CONTEXT)):
        if board.get(key, valid[0]) not in valid:
            raise ValueError(f"storyboard: {key} must be one of {', '.join(valid)}, got {board[key]!r}")
    out = []
    for i, shot in enumerate(shots, 1):
        if not isinstance(shot, dict):
            raise ValueError(f"storyboard shot {i}: must be an object with a prompt and num_frames, got {shot!r:.80}")
        bad = sorted(set(shot) - set(SHOT_KEYS))
        if bad:
            raise ValueError(f"storyboard shot {i}: unknown key(s) {', '.join(bad)}; valid: {', '.join(SHOT_KEYS)}")
        if not isinstance(shot.get("prompt"), str) or not shot["prompt"].strip():
            raise ValueError(f"storyboard shot {i}: needs a non-empty \"prompt\" string")
        if (shot.get("num_frames") is None) == (shot.get("duration") is None):
            raise ValueError(f"storyboard shot {i}: give its length as num_frames (4k+1) or duration (seconds), one of them")
        try:
            with spelled({}):  # keys of the file, as the file spells them, not command-line flags
                check_request(num_frames=shot.get("num_frames"), duration=shot.get("duration"), seed=shot.get("seed"))
        except ValueError as err:
            raise ValueError(f"storyboard shot {i}: {err}") from None
        if shot.get("negative_prompt") is not None and not isinstance(shot["negative_prompt"], str):
            raise ValueError(f"storyboard shot {i}: negative_prompt must be a string")
        out.append(dict(shot))
    return {"shots": out, "carry": board.get("carry", CARRY[0]), "context": board.get("context", CONTEXT[0])}


def user_errors() -> tuple[type[BaseException], ...]:
    """What a user's request can cause: a bad value (ValueError), a missing or unreadable file (OSError,
    chronotope.video.VideoReadError). Everything else is a bug and keeps its traceback."""
    video = sys.modules.get("chronotope.video")  # imported by whichever verb read a video; never imported here
    return (ValueError, OSError) + ((video.VideoReadError,) if video is not None else ())
