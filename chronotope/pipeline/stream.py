"""Streaming: a video made a latent frame at a time by a rolling schedule, each frame written as it finishes.

Diffusion forcing (Chen et al. 2024) and rolling schedules (Rolling Forcing, Self-Forcing, CausVid): a window of
`active` latent frames whose noise levels rise with time. Every model call moves each frame one level down the
sampler's schedule (`steps` levels, from 1 to 0); every steps / active calls the cleanest frame leaves the window
finished and a fresh noise frame enters. Each call also sees a bounded context, clean (t = 0): the first `sink`
finished frames (the video's image latent, an anchor) and the last `recent` ones. Positions are the window's own
(context first, then the active frames), so they slide with it and never exceed what one window spans, however
long the video runs. Memory holds one window and the decoder's causal cache: flat in the video's length.

Every call is a Window of the one rollout (rollout.py) with per-frame noise levels (`ts` [2, 1, 1, n]); finished
frames are decoded by one causal decoder across windows (rollout.StreamDecoder) and go out as they come.

    for chunk in pipe.stream("a red circle moves left", num_frames=481):   # uint8 [k, H, W, 3] as they finish
        ...
    pipe(mode="stream", storyboard=[{"prompt": "a red circle moves left", "num_frames": 49},
                                    {"prompt": "the red circle moves right", "num_frames": 49}])   # a timeline
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from chronotope.diffusion.flow import timesteps
from chronotope.pipeline.plan import TF, Plan
from chronotope.pipeline.rollout import Memory, Window


@dataclass(frozen=True)
class Rolling:
    """A rolling schedule: `steps` model calls take a frame from noise to clean; `active` frames are in flight at
    once (steps is rounded up to a multiple of it); each call sees `sink` first and `recent` last finished frames."""

    steps: int
    active: int = 4
    sink: int = 1
    recent: int = 2

    @property
    def every(self) -> int:
        """Calls between two frames entering (and two leaving) the window."""
        return math.ceil(self.steps / self.active)

    def calls(self, num_latent_frames: int) -> int:
        """Model calls a video of `num_latent_frames` latent frames takes."""
        return (num_latent_frames - 1) * self.every + self.every * self.active

    def context(self) -> int:
        return self.sink + self.recent


def rolling_windows(pipe, r, memory: Memory, rolling: Rolling) -> Iterator[Window]:
    """The windows of a streamed video of r.total frames (r: modes.Request), one per model call."""
    C, _, h, w = r.shape
    B = r.cond[0].shape[0]
    n_total = (r.total - 1) // TF + 1
    S = rolling.every * rolling.active  # levels of the schedule a frame goes down, one per call
    levels = timesteps(S, r.shift).tolist()  # [S + 1], 1 -> 0
    active: list[list] = []  # [level index, state [B, C, 1, h, w]] per frame in flight, oldest first
    sink: list[torch.Tensor] = []
    recent: deque = deque(maxlen=rolling.recent)
    entered = finished = call = 0
    while finished < n_total:
        if entered < n_total and call % rolling.every == 0:
            active.append([0, pipe.initial_noise((B, C, 1, h, w), r.generator)])
            entered += 1
        given = sink + list(recent)  # [B, C, 1, h, w] each
        m, a = len(given), len(active)
        latents = torch.cat(given + [given[0].new_zeros(B, C, a, h, w)] if given else
                            [torch.zeros(B, C, a, h, w)], dim=2)  # [B, C, m + a, h, w]
        mask = torch.cat([torch.ones(m, dtype=torch.bool), torch.zeros(a, dtype=torch.bool)])
        x = torch.cat([latents[:, :, :m].to(active[0][1])] + [s for _, s in active], dim=2)
        ts = torch.tensor([[0.0] * m + [levels[k] for k, _ in active],
                           [0.0] * m + [levels[k + 1] for k, _ in active]])[:, None, None, :]  # [2, 1, 1, m + a]
        done = active[0][0] + 1 == S  # the oldest frame reaches t = 0 in this call
        out = slice(m, m + 1) if done else None
        cond, uncond = r.timeline.context(entered - 1) if r.timeline else (r.cond, r.uncond)  # the newest frame's
        yield Window(Plan(latents, mask, conditions=dict(r.conditions)), ts, cond, uncond, r.generator, x=x,
                     decode=out, record=out or slice(0, 0), stream=True)
        z = memory.z  # [B, C, m + a, h, w]
        for j, frame in enumerate(active):
            frame[0], frame[1] = frame[0] + 1, z[:, :, m + j:m + j + 1]
        if done:
            _, clean = active.pop(0)
            (sink if len(sink) < rolling.sink else recent).append(clean)
            finished += 1
        call += 1


@dataclass
class Timeline:
    """A stream whose prompt changes at given frames (a storyboard's shots, without cuts): shot i from frame
    starts[i] on; consecutive shots share their boundary frame, so shots of 4k+1 frames make a 4k+1-frame video.
    Each model call reads the prompt of the newest frame in flight; characters carry over as storyboards carry
    them (text/characters.py)."""

    prompts: list[str]
    starts: list[int]
    carry: str
    lengths: list[int] | None = None
    texts: list[str] | None = None
    cond: tuple | None = None
    uncond: tuple | None = None

    def encode(self, pipe, seed: int, expand: bool, negative: str) -> None:
        from chronotope.text.characters import carry_characters

        self.texts = [text for text, _ in carry_characters(self.prompts, [seed] * len(self.prompts), expand,
                                                           self.carry, pipe.vocabulary)]
        self.cond, self.uncond = pipe.encode_prompts(self.texts, [negative] * len(self.texts))

    def context(self, latent_frame: int) -> tuple[tuple, tuple]:
        """(cond, uncond) of latent frame j: the shot holding pixel frame TF * j, the last frame it codes."""
        i = max(k for k, start in enumerate(self.starts) if start <= TF * latent_frame)
        pick = lambda ctx: tuple(t[i:i + 1] for t in ctx)  # noqa: E731
        return pick(self.cond), pick(self.uncond)

    def params(self) -> list[dict]:
        return [{"start": s, "prompt": p, "expanded_prompt": t} for s, p, t in zip(self.starts, self.prompts, self.texts)]


def stream_timeline(c: dict, fps: float) -> tuple[dict, Timeline]:
    """A stream call whose `storyboard` is its timeline -> (the call as one video of the timeline's length and its
    first prompt, the Timeline). ValueError for a prompt or length given beside it."""
    from chronotope.pipeline.resolve import frames_from
    from chronotope.request import arg, check_storyboard

    board = check_storyboard(c["storyboard"])
    clash = [k for k in ("prompt", "num_frames", "duration") if c.get(k) is not None]
    if clash:
        raise ValueError(f"a timeline sets the prompts and the length (its shots); drop {', '.join(map(arg, clash))}")
    lengths = [frames_from(s.get("num_frames"), s.get("duration"), fps) for s in board["shots"]]
    starts = [0]
    for n in lengths[:-1]:
        starts.append(starts[-1] + n - 1)  # consecutive shots share their boundary frame
    timeline = Timeline([s["prompt"] for s in board["shots"]], starts, board["carry"], lengths)
    return {**c, "prompt": timeline.prompts[0], "num_frames": starts[-1] + lengths[-1], "storyboard": None}, timeline
