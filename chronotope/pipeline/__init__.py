"""Generation: text (and images, videos) -> video with one VideoPipeline, every Sora mode as windows of one rollout.

    pipeline.py    VideoPipeline: from_pretrained / save_pretrained / __call__ (resolve -> plan -> rollout), denoise
    prepare.py     a call resolved before any work: settings, inputs, window, prompts, cost, notes, params
    resolve.py     what a request means: mode, size, frames, inputs fitted to the size, notes
    plan.py        a window's conditioning: which latent frames are given clean, and how its output is stitched
    modes.py       every mode as a planner of windows (one window; a loop's two; a long video's many)
    storyboard.py  several shots, each a window seeing the last latents of the shots before
    stream.py      a video a frame at a time: a rolling schedule, one window per model call
    rollout.py     the one loop: windows sampled, decoded and streamed, with a bounded memory
    files.py       what `chronotope generate` reads and writes: prompts files, outputs with a sidecar JSON
    lora.py        LoRA adapters (from `chronotope train lora`): read, checked against the DiT, merged into it

Validation of a request's numbers is chronotope/request.py, shared with the command line.
"""

from __future__ import annotations

from pathlib import Path

from chronotope.pipeline.pipeline import DEFAULTS, PipelineOutput, VideoPipeline, to_uint8
from chronotope.pipeline.resolve import resolve_size
from chronotope.request import MODES
from chronotope.text.encoder import DEFAULT_TEXT_ENCODER, DebugTextEncoder, load_text_encoder

ASSETS = Path(__file__).parent.parent / "assets" / "world-model"


def default_model_dir() -> Path:
    """The shipped model folder; FileNotFoundError until one is shipped (pass --model DIR meanwhile)."""
    if not (ASSETS / "model_index.json").is_file():
        raise FileNotFoundError(
            f"no model is shipped yet at {ASSETS}; pass --model DIR (a folder written by "
            "VideoPipeline.save_pretrained or by `chronotope train dit`)"
        )
    return ASSETS


__all__ = ["ASSETS", "DEFAULTS", "DEFAULT_TEXT_ENCODER", "MODES", "DebugTextEncoder", "PipelineOutput",
           "VideoPipeline", "default_model_dir", "load_text_encoder", "resolve_size", "to_uint8"]
