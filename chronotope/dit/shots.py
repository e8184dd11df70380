"""What a shot-aware DiT sees of earlier shots (storyboards): one layout for sampling and training.

A model with DiTConfig.shot_embed > 0 makes shot s of a storyboard as one sequence: the last
CONTEXT_LATENT_FRAMES latent frames of each of up to CONTEXT_SHOTS earlier shots (oldest first, clean, t = 0,
never in the loss), then the n latent frames of shot s. Positions run over the whole window (context frames
0..m-1, the new shot m..m+n-1, as for frames given in i2v or extend) and every latent frame carries its shot
index counted back from the one being made (0 = the new shot, j = j shots before it), so context reads as
"another shot", not as frames to continue. pipeline/storyboard.py samples with it; train/dit_task.py builds
training packs with it.

    window = context_window(4, present={0, 1, 2, 3})   # [2, 3]: shots 2 and 3 are context for shot 4
    frame_shots([1, 1], n=5)                             # [2, 1, 0, 0, 0, 0, 0]
"""

from __future__ import annotations

from collections.abc import Container

import numpy as np

CONTEXT_SHOTS = 2  # earlier shots a shot-aware model sees (a window, as long video keeps one: memory stays flat)
CONTEXT_LATENT_FRAMES = 1  # latent frames of each earlier shot given as context: its last


def context_window(shot: int, present: Container[int]) -> list[int]:
    """The earlier shots that shot `shot` sees, oldest first: up to CONTEXT_SHOTS shots right before it, stopping
    at the first one not `present` (a shot missing from a cache breaks the chain, as no sampler could skip it)."""
    window = []
    for k in range(1, CONTEXT_SHOTS + 1):
        if shot - k < 0 or shot - k not in present:
            break
        window.insert(0, shot - k)
    return window


def context_frames(num_latent_frames: int) -> slice:
    """The latent frames of an earlier shot of `num_latent_frames` frames given as context: its last ones."""
    return slice(max(0, num_latent_frames - CONTEXT_LATENT_FRAMES), num_latent_frames)


def frame_shots(context: list[int], n: int) -> np.ndarray:
    """Shot index of every latent frame of a window: `context` = latent frames taken from each earlier shot
    (oldest first), then the new shot's n frames -> int64 [sum(context) + n] (j for the j-th shot back, 0 new)."""
    back = len(context) - np.arange(len(context))  # oldest first: len(context), ..., 1
    return np.concatenate([np.repeat(back, context), np.zeros(n, dtype=np.int64)]).astype(np.int64)
