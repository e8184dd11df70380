"""Storyboards: several shots in one video, hard cuts at the requested frames, characters kept across cuts.

A storyboard is a list of shots, each a prompt and a length (request.check_storyboard). Every shot is its own
clip for the causal VAE (its first frame coded alone), so a cut falls exactly where the shots meet. Two things
carry over from shot to shot:

  characters  (carry="characters", the default) an object named again keeps the attributes an earlier shot
              gave it: "a red circle" after "a large red circle moves left" is expanded as a large red circle
              (prompt expansion fills only what no shot said). Works with any model.
  context     (context="auto") a model built with DiTConfig.shot_embed > 0 sees the last CONTEXT_LATENT_FRAMES
              latent frames of up to CONTEXT_SHOTS earlier shots as clean tokens (t = 0, as i2v and extend give
              frames) placed before the new shot, each token tagged with its shot index; the window is bounded,
              so memory stays flat however many shots there are. Other models make each shot independently.

Each shot is a window of the one rollout (rollout.py): decoded shot by shot and streamed to the output; memory
holds one shot and the bounded context.

    out = pipe(storyboard=[{"prompt": "a large red circle moves left", "num_frames": 17},
                           {"prompt": "the red circle on a white background", "num_frames": 9}])
    out.params["cuts"]   # [17]
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator

import torch

from chronotope.diffusion.flow import timesteps
from chronotope.dit.shots import CONTEXT_LATENT_FRAMES, CONTEXT_SHOTS, context_frames, frame_shots
from chronotope.pipeline.plan import plan_context
from chronotope.pipeline.prepare import Job, settle, shift_for
from chronotope.pipeline.resolve import frames_from, note
from chronotope.pipeline.rollout import FrameSink, Memory, Window
from chronotope.request import STORYBOARD_SETTINGS, arg, check_cost, check_request, check_storyboard, estimate_cost
from chronotope.text.characters import carry_characters


def uses_context(pipe, context: str) -> bool:
    """Whether shots see earlier shots: only a model with a shot embedding can tell them from frames to continue."""
    return context == "auto" and pipe.dit.config.shot_embed > 0


def describe_conditioning(pipe, context: str) -> str:
    """One sentence for the sidecar: how the shots were conditioned on each other."""
    if uses_context(pipe, context):
        return (f"context: each shot saw the last {CONTEXT_LATENT_FRAMES} latent frame(s) of up to {CONTEXT_SHOTS} "
                "earlier shots as clean tokens tagged with their shot index")
    why = "context none was asked" if context == "none" else "the model has no shot embedding (DiTConfig.shot_embed = 0)"
    return f"independent: each shot is text-to-video from its own prompt ({why})"


def resolve_shots(pipe, board: dict, fps: float, seed: int, expand: bool) -> list[dict]:
    """Each shot's frames, start, seed, prompt and the text the model sees, in order."""
    shots, start = [], 0
    for i, shot in enumerate(board["shots"], 1):
        try:
            T = frames_from(shot.get("num_frames"), shot.get("duration"), fps)
        except ValueError as err:
            raise ValueError(f"storyboard shot {i}: {err}") from None
        shots.append({"prompt": shot["prompt"], "num_frames": T, "start": start,
                      "seed": int(shot.get("seed", seed + i - 1)), "negative_prompt": shot.get("negative_prompt")})
        start += T
    texts = carry_characters([s["prompt"] for s in shots], [s["seed"] for s in shots], expand, board["carry"],
                             pipe.vocabulary)
    for s, (text, spec) in zip(shots, texts):
        s["expanded_prompt"], s["spec"] = text, spec
    return shots


TAKES = (*STORYBOARD_SETTINGS, "generator")  # a call's settings that a storyboard takes (request.py)


def storyboard_call(call: dict) -> dict:
    """A call's arguments (VideoPipeline.__call__'s, by name) -> the settings a storyboard takes; ValueError for a
    prompt or a per-video input (image, video, mode, num_frames, ...): each shot names its own."""
    signature = {"direction": "forward", "image_position": "first", "expand_prompt": True, "progress": True}
    extra = [k for k, v in call.items() if k not in TAKES + ("storyboard",) and v is not None and v != signature.get(k)]
    if extra:
        what = ", ".join(arg(k) for k in sorted(extra, key=lambda k: k != "prompt"))
        raise ValueError(f"a storyboard sets each shot's prompt and length itself; drop {what} (or the storyboard)")
    return {k: call[k] for k in TAKES}


def prepare_storyboard(pipe, storyboard, c: dict) -> Job:
    """The Job of a storyboard call (c: VideoPipeline.__call__'s arguments by name; the settings a storyboard
    takes, the rest refused by the caller): every shot a window, seeing the last latent frames of up to
    CONTEXT_SHOTS earlier shots when the model has a shot embedding."""
    board = check_storyboard(storyboard)
    warnings = check_request(**{k: c[k] for k in ("fps", "num_inference_steps", "guidance_scale", "seed", "shift",
                                                  "height", "width")})
    s = settle(pipe, c)
    shots = resolve_shots(pipe, board, s.fps, s.seed, c["expand_prompt"])
    context = uses_context(pipe, board["context"])
    m = CONTEXT_SHOTS * CONTEXT_LATENT_FRAMES if context else 0
    longest = max(shots, key=lambda shot: shot["num_frames"])
    C, n, h, w = pipe.vae.latent_shape(longest["num_frames"], s.height, s.width)
    cost = estimate_cost(pipe, 1, (C, n + m, h, w), s.steps, s.guidance_passes(), longest["num_frames"],
                         windows=len(shots), sampler=s.sampler)
    for text in warnings + [t for t in [check_cost(cost)] if t]:
        note(s.notes, text)
    if not c["expand_prompt"] and board["carry"] == "characters":
        note(s.notes, "storyboard: characters carry over through prompt expansion, which is off: prompts as written")
    negative = c["negative_prompt"]
    params = dict(mode="storyboard", height=s.height, width=s.width, fps=s.fps,
                  num_frames=sum(shot["num_frames"] for shot in shots), num_inference_steps=s.steps,
                  guidance_scale=s.guidance, sampler=s.sampler, seed=s.seed, negative_prompt=negative or "",
                  expand_prompt=c["expand_prompt"], carry=board["carry"], context=board["context"],
                  conditioning=describe_conditioning(pipe, board["context"]),
                  cuts=[shot["start"] for shot in shots[1:]], shots=shots)

    def planner(memory: Memory) -> Iterator[Window]:
        recent: deque = deque(maxlen=CONTEXT_SHOTS)  # the bounded window of earlier shots' context latents
        for shot in shots:
            shape = pipe.vae.latent_shape(shot["num_frames"], s.height, s.width)
            given = list(recent) if context else []
            plan = plan_context(given, shape, {"shot": torch.from_numpy(frame_shots([z.shape[1] for z in given],
                                                                                     shape[1]))})
            shot["context_shots"] = len(given)
            cond, uncond = pipe.encode_prompts([shot["expanded_prompt"]], [shot["negative_prompt"] or negative or ""])
            shot["shift"] = shift_for(pipe, shape, c["shift"])
            new = slice(plan.mask.numel() - shape[1], None)  # the shot's own frames, decoded as their own clip
            yield Window(plan, timesteps(s.steps, shot["shift"]), cond, uncond,
                         torch.Generator().manual_seed(shot["seed"]), decode=new, record=new)
            z = memory.z[0, :, new]  # [C, n, h, w]
            recent.append(z[:, context_frames(z.shape[1])])

    run = dict(sampler=s.sampler, guidance_scale=s.guidance, image_guidance_scale=None, progress=c["progress"])
    sink = FrameSink(c["output_path"], s.fps)
    return Job("storyboard", planner, [sink], run, ("storyboard", "shot", len(shots)),
               [shot["expanded_prompt"] for shot in shots], s, params)
