"""One validation of every generation request, shared by the Python API (`VideoPipeline.__call__`), the
command line and the web app: every number finite and in range, no value silently replaced, and a cost
estimate (memory and time) checked before anything that takes minutes starts.

Errors name a parameter through `arg()`, so each caller shows the names its user typed: the Python API
says `num_frames=6`, the command line (which wraps its verbs in `spelled(FLAGS)`) says `--num-frames 6`.

    check_request(num_frames=6, fps=8.0, guidance_scale=5.0, ...)   # ValueError naming the nearest valid value
    cost = estimate_cost(pipe, batch=1, latent=(16, 5, 8, 8), steps=30, guidance_passes=2)
    check_cost(cost)                                                  # ValueError past memory; a note past a minute
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

# every generation mode (chronotope/pipeline/modes.py builds each one's conditioning; VideoPipeline runs it)
MODES: tuple[str, ...] = ("t2v", "t2i", "i2v", "extend", "connect", "loop", "edit", "long")

# how callers spell parameters: None = as Python keywords; the CLI installs its flag table with spelled()
_SPELLING: ContextVar[dict[str, str] | None] = ContextVar("chronotope_request_spelling", default=None)

# ranges of the numbers of a request: (low, high), both inclusive unless named in OPEN_LOW
RANGES: dict[str, tuple[float, float]] = {
    "num_frames": (1, 100_001),
    "window_frames": (5, 100_001),
    "cond_latent_frames": (1, 1_000),
    "gap_frames": (3, 100_001),
    "height": (1, 1 << 20),
    "width": (1, 1 << 20),
    "fps": (0.0, 240.0),
    "duration": (0.0, 3600.0),
    "num_inference_steps": (1, 1_000),
    "guidance_scale": (0.0, 50.0),
    "image_guidance_scale": (0.0, 50.0),
    "strength": (0.0, 1.0),
    "shift": (0.0, 100.0),
    "seed": (0, 2**63 - 1),
    "lora_scale": (-10.0, 10.0),
}
OPEN_LOW = {"fps", "duration", "strength", "shift"}  # these must be > low, not >= low
INTEGERS = {"num_frames", "window_frames", "cond_latent_frames", "gap_frames", "height", "width",
            "num_inference_steps", "seed"}

LONG_SECONDS = 60.0  # estimated runs longer than this get a note with the estimate before they start
MAX_SECONDS = 86_400.0  # and runs estimated past a day are refused: nobody waits that long for a clip by mistake
PROMPT_ECHO = 200  # characters of a prompt echoed back to a terminal


@contextlib.contextmanager
def spelled(names: dict[str, str]) -> Iterator[None]:
    """Within the block, arg() spells parameters as `names` maps them (e.g. num_frames -> --num-frames)."""
    token = _SPELLING.set(names)
    try:
        yield
    finally:
        _SPELLING.reset(token)


_MISSING = object()


def arg(param: str, value: Any = _MISSING) -> str:
    """A parameter as the caller wrote it: `num_frames` / `num_frames=6`, or `--num-frames` / `--num-frames 6`."""
    names = _SPELLING.get()
    if names is None or param not in names:
        return param if value is _MISSING else f"{param}={value!r}"
    flag = names[param]
    return flag if value is _MISSING else f"{flag} {value}"


def check_number(param: str, value: Any, *, valid: str = "") -> None:
    """ValueError unless `value` is a finite number (an int where an int is needed) within RANGES[param]."""
    lo, hi = RANGES[param]
    integer = param in INTEGERS
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not float(value).is_integer()):
        kind = "a whole number" if integer else "a number"
        raise ValueError(f"{arg(param, value)}: must be {kind} from {lo:g} to {hi:g}{valid}")
    if not math.isfinite(value):
        raise ValueError(f"{arg(param, value)}: must be a finite number from {lo:g} to {hi:g}{valid}")
    low_ok = value > lo if param in OPEN_LOW else value >= lo
    if not (low_ok and value <= hi):
        bound = f"greater than {lo:g}" if param in OPEN_LOW else f"at least {lo:g}"
        nearest = hi if value > hi else (lo if param not in OPEN_LOW else None)
        near = f"; nearest valid: {nearest:g}" if nearest is not None else ""
        raise ValueError(f"{arg(param, value)}: must be {bound} and at most {hi:g}{valid}{near}")


def check_clip_frames(param: str, value: int) -> None:
    """num_frames-like counts: 4k+1 (the causal VAE codes the first frame alone, then 4 frames per latent)."""
    check_number(param, value)
    if (value - 1) % 4:
        lo = (value - 1) // 4 * 4 + 1
        raise ValueError(f"{arg(param, value)}: clips have 4k+1 frames (the causal VAE codes the first frame "
                         f"alone, then 4 at a time); nearest valid: {lo} or {lo + 4}")


def check_request(**params: Any) -> list[str]:
    """Check the numbers of a generation request that are given (None = the default, resolved later).

    Refuses, never replaces: 0 frames, 0 fps or a NaN guidance is an error, not a default. Returns
    warnings for requests that run but are likely mistakes (an empty prompt).
    """
    warnings = []
    for param, value in params.items():
        if value is None or param not in RANGES:
            continue
        if param in ("num_frames", "window_frames") and params.get("mode") not in ("loop",):
            check_clip_frames(param, value)
        elif param == "gap_frames":
            check_number(param, value)
            if (value + 1) % 4:
                lo = max(3, (value + 1) // 4 * 4 - 1)
                raise ValueError(f"{arg(param, value)}: a connecting gap has 4m-1 frames (3, 7, 11, ...); "
                                 f"nearest valid: {lo} or {lo + 4}")
        else:
            check_number(param, value)
    prompt = params.get("prompt")
    prompts = [prompt] if isinstance(prompt, str) else list(prompt or [])
    if any(isinstance(p, str) and not p.strip() for p in prompts):
        warnings.append("the prompt is empty: the model draws from its unconditional distribution "
                        "(any scene); give a prompt such as \"a red circle moves left\"")
    return warnings


def lora_scales(paths: list[str], scales: list[float] | None) -> list[tuple[str, float]]:
    """LoRA adapters with their scales: one scale for all, one per adapter, or none (1 = as trained)."""
    if not paths:
        if scales is not None:
            raise ValueError(f"{arg('lora_scale')} scales LoRA adapters: name them with {arg('lora')} DIR")
        return []
    scales = [1.0] if scales is None else list(scales)
    if len(scales) not in (1, len(paths)):
        raise ValueError(f"{arg('lora_scale', ','.join(f'{s:g}' for s in scales))}: {len(scales)} scales for "
                         f"{len(paths)} adapters; give one scale for all or one per {arg('lora')}")
    for s in scales:
        check_number("lora_scale", s)
    return list(zip(paths, scales * len(paths) if len(scales) == 1 else scales))


def echo(text: str, limit: int = PROMPT_ECHO) -> str:
    """`text` for a terminal line: whole when short, else its start and how much was left out."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters in all; the whole text is in the sidecar)"


# --- cost: memory and time, before starting ------------------------------------------------------


@dataclass
class Cost:
    """Rough peak memory (bytes) and run time (seconds) of a request, and what they were derived from."""

    memory: float
    seconds: float
    tokens: int  # DiT tokens per sample
    pixels: int  # output pixels (frames x height x width) per sample
    device: str

    def describe(self) -> str:
        return (f"about {_bytes(self.memory)} of memory and {_duration(self.seconds)} on {self.device} "
                f"({self.tokens:,} tokens per video, {self.pixels:,} output pixels)")


# effective (not peak) float32 throughput of a forward pass at these shapes, FLOP/s. CPU: measured on the
# project's 2-core machines (matmul peak ~180 GFLOP/s, convolutions and attention well below); GPU: a
# conservative fraction of an H100/H200-class card.
THROUGHPUT = {"cpu": 40e9, "cuda": 40e12}


def available_memory(device: str = "cpu") -> float:
    """Bytes this process may still allocate on `device` (CPU: MemAvailable; GPU: free device memory)."""
    if device == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info()
        return float(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return float("inf")


def estimate_cost(pipe, batch: int, latent: tuple[int, int, int, int], steps: int, guidance_passes: int,
                  frames: int, windows: int = 1) -> Cost:
    """Peak memory and time of sampling `batch` videos of latent (C, n, h, w) for `steps` steps with
    `guidance_passes` model passes per step (1, 2 with CFG, 3 with image guidance), then decoding `frames`
    frames. A model of the costs, not a measurement: within a factor of a few, which is what a refusal
    of a 50 GB request or a warning before a 14-hour one needs."""
    C, n, h, w = latent
    dit, vae = pipe.dit.config, pipe.vae.config
    pt, ph, pw = dit.patch
    tokens = max(1, n // pt) * max(1, h // ph) * max(1, w // pw)
    L = batch * guidance_passes * tokens
    D, depth = dit.width, dit.depth
    # DiT: ~12 D^2 weights per block (attention 4 D^2, MLP 8 D^2) at 2 FLOP per weight per token, plus
    # attention scores and values, 4 L_i^2 D per block per sample (block-diagonal: each sample alone)
    dit_flops = depth * (24 * D * D * L + 4 * batch * guidance_passes * tokens * tokens * D)
    # activations of one block held at once: x, qkv, attention out, MLP hidden (~12 D floats per token)
    dit_memory = 4.0 * 12 * D * L
    # VAE decoder: ~2 x 9 x (num_res_blocks + 1) x 2 x width^2 FLOP per pixel at each level (1/4 the pixels
    # per level down), plus single-head spatial attention over each latent frame's h x w positions
    H, W = h * vae.spatial_factor, w * vae.spatial_factor
    pixels = frames * H * W
    per_pixel = sum(36 * (vae.num_res_blocks + 1) * c * c / 4**i for i, c in enumerate(vae.widths))
    top = vae.widths[-1]
    vae_flops = batch * (pixels * per_pixel + (frames / 4 + 1) * 4 * (h * w) ** 2 * top)
    # decoding holds one latent frame's 4 output frames at every level (a few buffers each) plus the causal cache
    chunk = 4 * H * W
    vae_memory = 4.0 * batch * chunk * sum(3 * c / 4**i for i, c in enumerate(vae.widths))
    if vae.mid_attention:  # its [B*T, h*w, C] SDPA takes PyTorch's math path on CPU: (h*w)^2 scores, ~2 copies
        vae_memory += 2 * 4.0 * batch * (h * w) ** 2
    latents_memory = 4.0 * batch * C * n * h * w * 4
    device = str(getattr(pipe, "device", "cpu"))
    kind = "cuda" if device.startswith("cuda") else "cpu"
    seconds = (steps * windows * dit_flops + windows * vae_flops) / THROUGHPUT[kind]
    model_memory = 4.0 * sum(p.numel() for p in pipe.dit.parameters()) + 4.0 * sum(
        p.numel() for p in pipe.vae.parameters())
    memory = model_memory + latents_memory + max(dit_memory, vae_memory)
    return Cost(memory, seconds, tokens, pixels, kind)


def check_cost(cost: Cost, available: float | None = None) -> str | None:
    """ValueError when the request cannot fit in memory or would run past MAX_SECONDS; a note (returned)
    when it will take minutes."""
    available = available_memory(cost.device) if available is None else available
    if cost.memory > 0.8 * available:
        raise ValueError(f"this request needs {cost.describe()}, more than the {_bytes(available)} available; "
                         f"ask for a smaller size (height x width) or fewer frames")
    if cost.seconds > MAX_SECONDS:
        raise ValueError(f"this request would take {cost.describe()}, past the {_duration(MAX_SECONDS)} limit; "
                         f"ask for a smaller size (height x width) or fewer frames or steps")
    if cost.seconds > LONG_SECONDS:
        return f"this request will take {cost.describe()}; a smaller size or fewer frames or steps is faster"
    return None


def _bytes(n: float) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n / 1e3:.0f} kB"


def _duration(s: float) -> str:
    if s >= 365 * 86400:
        return "more than a year"
    if s >= 2 * 86400:
        return f"{s / 86400:.0f} days"
    if s >= 2 * 3600:
        return f"{s / 3600:.0f} hours"
    if s >= 120:
        return f"{s / 60:.0f} minutes"
    return f"{max(s, 1):.0f} s"


# --- storyboards: several shots in one video (issue 28) ------------------------------------------

SHOT_KEYS = ("prompt", "num_frames", "duration", "negative_prompt", "seed")
STORYBOARD_KEYS = ("shots", "carry", "context")
CARRY = ("characters", "none")  # characters: objects named again keep the attributes an earlier shot gave them
CONTEXT = ("auto", "none")  # auto: earlier shots as clean context when the model can use them; none: independent
MAX_STORYBOARD_SHOTS = 256


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
