"""What the verbs share: the parser class, argument types (comma-separated lists), the one table that spells the
library's parameter names as the flags a user typed (chronotope.request.arg uses it), LoRA adapters with their
scales, and a prompt echoed to a terminal."""

from __future__ import annotations

import argparse
import sys

from chronotope.request import arg, check_number

# library parameter -> the flag that sets it; errors raised with request.arg() show these on the command line
FLAGS = {
    "prompt": "PROMPT", "negative_prompt": "--negative-prompt", "mode": "--mode", "image": "--image",
    "video": "--video", "video_end": "--video-end", "direction": "--direction", "image_position": "--image-position",
    "strength": "--strength", "height": "--height", "width": "--width", "resolution": "--resolution",
    "aspect_ratio": "--aspect-ratio", "num_frames": "--num-frames", "duration": "--duration", "fps": "--fps",
    "window_frames": "--window-frames", "cond_latent_frames": "--cond-latent-frames", "gap_frames": "--gap-frames",
    "num_inference_steps": "--steps", "guidance_scale": "--guidance", "image_guidance_scale": "--image-guidance",
    "sampler": "--sampler", "seed": "--seed", "output_path": "--out", "max_pixels": "--max-pixels",
    "storyboard": "--storyboard", "lora": "--lora", "lora_scale": "--lora-scale", "device": "--device",
    "num": "--num", "workers": "--workers", "prompts": "--prompts", "out_csv": "--out", "conditions": "--condition",
}

# the files of every verb, by argparse dest -> how its errors name it ("" for a positional path): main() refuses,
# before a verb starts, an output that would replace one of its inputs or cannot be written (chronotope.outputs);
# names an output turns into (generate's OUT.mp4 and OUT.json, a folder's files) are checked where they are made
READS = {
    "input": "", "image": "--image", "video": "--video", "video_end": "--video-end", "prompts": "--prompts",
    "storyboard": "--storyboard", "manifest": "", "data": "--data", "dir": "", "source": "", "base": "", "new": "",
    "models": "", "model": "--model", "vae": "--vae", "init": "--init", "teacher": "--teacher", "run_dir": "",
    "lora": "--lora",
}
# dest -> (its name in errors, whether it is a folder: None where it depends on the verb)
WRITES = {"output": ("output", False), "out": ("--out", None), "json": ("--json", False)}


class Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line on stderr and exit code 2, like the library's errors."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 1,17,33, got {text!r}")


def float_list(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers such as 0.8,0.5, got {text!r}")


def name_value(text: str) -> tuple[str, str]:
    """NAME=VALUE (e.g. camera=pan-left) -> (name, value); the pipeline checks both against the model."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip() or not value.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE such as camera=pan-left, got {text!r}")
    return name.strip(), value.strip()


def str_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def cond_probs(text: str) -> dict[str, float]:
    """`none=0.2,first=0.8` -> {"none": 0.2, "first": 0.8}, checked against the conditioning modes."""
    from chronotope.diffusion.flow import check_cond_probs

    out = {}
    for part in str_list(text):
        name, sep, value = part.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise argparse.ArgumentTypeError(f"expected MODE=P pairs such as none=0.2,first=0.8, got {part!r}")
    try:
        return check_cond_probs(out)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e))


PROMPT_ECHO = 200  # characters of a prompt echoed back to a terminal


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
