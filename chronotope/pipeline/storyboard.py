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

Frames are decoded shot by shot and streamed to the output (long_video.FrameSink); memory holds one shot.

    out = pipe(storyboard=[{"prompt": "a large red circle moves left", "num_frames": 17},
                           {"prompt": "the red circle on a white background", "num_frames": 9}])
    out.params["cuts"]   # [17]
"""

from __future__ import annotations

import secrets
from collections import deque

import numpy as np
import torch
from tqdm.auto import tqdm

from chronotope.diffusion.flow import shift_for_tokens, timesteps
from chronotope.dit.shots import CONTEXT_LATENT_FRAMES, CONTEXT_SHOTS, context_frames, frame_shots
from chronotope.pipeline import modes
from chronotope.pipeline.long_video import FrameSink
from chronotope.pipeline.resolve import check_choices, frames_from, note, resolve_size, tokens_per_sample
from chronotope.request import check_cost, check_request, check_storyboard, estimate_cost


def carry_characters(prompts: list[str], seeds: list[int], expand: bool, carry: str) -> list[tuple[str, dict | None]]:
    """(text to encode, World spec or None) per shot. With expansion on, a World prompt that leaves attributes
    open is expanded (text.expand's World expander) after taking, with carry="characters", the shape and size
    that an earlier shot gave each object of the same color; complete and non-World prompts are kept."""
    from chronotope.text.expand import unspecified
    from chronotope.world.captions import detailed_caption
    from chronotope.world.parser import parse_prompt
    from chronotope.world.scene import scene_from_spec

    cast: dict[str, dict] = {}
    out = []
    for prompt, seed in zip(prompts, seeds):
        try:
            spec = parse_prompt(prompt)
        except ValueError:
            spec = None
        if not spec or not spec.get("objects"):
            out.append((prompt, None))
            continue
        if carry == "characters":
            for o in spec["objects"]:
                for key in ("shape", "size"):
                    if o.get("color") in cast and o.get(key) is None:
                        o[key] = cast[o["color"]][key]
        if expand and unspecified(spec):
            scene = scene_from_spec(spec, seed)
            text, spec = detailed_caption(scene, np.random.default_rng([int(seed), 2])), scene.spec
        else:
            text = prompt
        for o in spec["objects"]:
            if o.get("color") and o.get("shape") and o.get("size"):
                cast.setdefault(o["color"], o)
        out.append((text, spec))
    return out


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


def shot_plan(context: list[torch.Tensor], shape: tuple[int, int, int, int]) -> modes.Plan:
    """A window of the earlier shots' context latents ([C, k, h, w] each, oldest first) then the n latent frames
    of the new shot: latents [C, m + n, h, w], mask [m + n] (True = given), shot [m + n] (j = j shots back).
    The layout is dit/shots.py's, which training packs use too."""
    C, n, h, w = shape
    shot = torch.from_numpy(frame_shots([z.shape[1] for z in context], n))  # [m + n]
    given = torch.cat(context, dim=1) if context else torch.zeros(C, 0, h, w)
    m = given.shape[1]
    latents = torch.cat([given, given.new_zeros(C, n, h, w)], dim=1)
    mask = torch.cat([torch.ones(m, dtype=torch.bool), torch.zeros(n, dtype=torch.bool)])
    return modes.Plan(latents, mask, shot=shot)


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
    texts = carry_characters([s["prompt"] for s in shots], [s["seed"] for s in shots], expand, board["carry"])
    for s, (text, spec) in zip(shots, texts):
        s["expanded_prompt"], s["spec"] = text, spec
    return shots


def generate_storyboard(pipe, storyboard, negative_prompt: str | None = None, height: int | None = None,
                        width: int | None = None, resolution: str | None = None, aspect_ratio: str | None = None,
                        fps: float | None = None, num_inference_steps: int | None = None,
                        guidance_scale: float | None = None, seed: int | None = None, sampler: str | None = None, shift: float | None = None,
                        expand_prompt: bool = True, output_path: str | None = None, progress: bool = True):
    """All shots of `storyboard` into one video (VideoPipeline.__call__(storyboard=...) comes here); returns
    (frames uint8 [T, H, W, 3], or None when streamed to an mp4; the last shot's latents [1, C, n, h, w]; params
    with each shot's resolved settings, the cut frames and the conditioning used; notes)."""
    board = check_storyboard(storyboard)
    notes: list[str] = []
    num_inference_steps, guidance_scale, sampler = pipe.sampling(num_inference_steps, guidance_scale, sampler,
                                                                 negative_prompt)  # None: the model's defaults
    warnings = check_request(fps=fps, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                          seed=seed, shift=shift, height=height, width=width)
    check_choices(sampler=sampler)
    seed = int(seed) if seed is not None else secrets.randbelow(2**31)
    H, W = resolve_size(pipe, height, width, resolution, aspect_ratio)
    fps = float(fps if fps is not None else pipe.defaults["fps"])
    shots = resolve_shots(pipe, board, fps, seed, expand_prompt)
    context = uses_context(pipe, board["context"])
    m = CONTEXT_SHOTS * CONTEXT_LATENT_FRAMES if context else 0
    longest = max(shots, key=lambda s: s["num_frames"])
    C, n, h, w = pipe.vae.latent_shape(longest["num_frames"], H, W)
    cost = estimate_cost(pipe, 1, (C, n + m, h, w), num_inference_steps,
                         1 if guidance_scale <= 1 or sampler == "shortcut" else 2,
                         longest["num_frames"], windows=len(shots), sampler=sampler)
    for text in warnings + [t for t in [check_cost(cost)] if t]:
        note(notes, text)
    if not expand_prompt and board["carry"] == "characters":
        note(notes, "storyboard: characters carry over through prompt expansion, which is off: prompts as written")

    sink = FrameSink(output_path, fps)
    recent: deque = deque(maxlen=CONTEXT_SHOTS)  # the bounded window of earlier shots' context latents
    bar = tqdm(total=len(shots), desc="storyboard", unit="shot", disable=not progress)
    try:
        for s in shots:
            shape = pipe.vae.latent_shape(s["num_frames"], H, W)
            plan = shot_plan(list(recent) if context else [], shape)
            s["context_shots"] = len(recent) if context else 0
            generator = torch.Generator().manual_seed(s["seed"])
            cond, uncond = pipe.encode_prompts([s["expanded_prompt"]], [s["negative_prompt"] or negative_prompt or ""])
            s["shift"] = float(shift if shift is not None else shift_for_tokens(
                tokens_per_sample(pipe, shape[1], shape[2], shape[3]), scale=float(pipe.defaults["time_shift"])))
            noise = pipe.initial_noise((1, shape[0], plan.mask.numel(), shape[2], shape[3]), generator)
            z = pipe.denoise(noise, timesteps(num_inference_steps, s["shift"]), cond, uncond, plan, sampler=sampler,
                             guidance_scale=guidance_scale, generator=generator, progress=progress)
            z = z[:, :, plan.mask.numel() - shape[1]:]  # [1, C, n, h, w]: the new shot, decoded as its own clip
            for chunk in pipe.iter_frames(z):  # [1, c, H, W, 3]
                sink.write(chunk[0])
            recent.append(z[0, :, context_frames(z.shape[2])])
            bar.update()
        frames = sink.close(ok=True)
    except BaseException:
        sink.close(ok=False)
        raise
    finally:
        bar.close()
    params = dict(mode="storyboard", height=H, width=W, fps=fps, num_frames=sum(s["num_frames"] for s in shots),
                  num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, sampler=sampler, seed=seed,
                  negative_prompt=negative_prompt or "", expand_prompt=expand_prompt, carry=board["carry"],
                  context=board["context"], conditioning=describe_conditioning(pipe, board["context"]),
                  cuts=[s["start"] for s in shots[1:]], shots=shots)
    return frames, z, params, notes
