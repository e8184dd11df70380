"""What the verbs share: the parser class, argument types (comma-separated lists) and the one table that
spells the library's parameter names as the flags a user typed (chronotope.request.arg uses it)."""

from __future__ import annotations

import argparse
import sys

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
    "num": "--num", "workers": "--workers", "prompts": "--prompts", "out_csv": "--out",
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
