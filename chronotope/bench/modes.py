"""Each generation mode as World-bench runs it: what it is given from the ground-truth render of the prompt's scene
(an image, a video, two ends) and what is measured of its output beyond the prompt's scores (the PSNR of given
frames, the seams where given and generated frames meet, a loop's closure, a long video's drift). One entry of
BENCH per mode of request.MODES that the bench runs.

    frames, record = run_job(pipe, job, cfg, fps=8.0, guidance=5.0)   # a bench.generate.Job
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from chronotope.bench.score import ATTRIBUTES, score_video
from chronotope.pipeline.modes import head_frames, loop_closure
from chronotope.request import TEMPORAL_FACTOR as TF
from chronotope.world import Scene, render, sample_scene

PSNR_CAP = 100.0  # dB reported for identical frames (an infinite PSNR is not JSON)


# --- measures ---------------------------------------------------------------------------------------


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of uint8 arrays of one shape (capped at PSNR_CAP for identical inputs)."""
    if a.shape != b.shape:
        raise ValueError(f"psnr needs arrays of one shape, got {a.shape} and {b.shape}")
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return PSNR_CAP if mse == 0 else min(PSNR_CAP, 10.0 * math.log10(255.0**2 / mse))


def seam_ratio(frames: np.ndarray, seams: list[int]) -> float:
    """Mean |frame[s] - frame[s-1]| over the seams s (where given and generated frames meet) against the
    mean frame-to-frame change elsewhere, in uint8 levels: ~1 means a seam looks like any other step."""
    steps = np.abs(np.diff(frames.astype(np.float32), axis=0)).mean(axis=(1, 2, 3))  # [T-1]
    at = [s - 1 for s in seams if 1 <= s < len(frames)]
    rest = np.delete(steps, at) if len(at) < len(steps) else steps
    return float(steps[at].mean() / max(float(rest.mean()), 1e-6)) if at else float("nan")


def _attrs(scores: dict) -> dict:
    return {k: scores.get(k) for k in ("overall",) + ATTRIBUTES}


def _plain(x):
    """numpy scalars / arrays -> JSON-ready Python values (NaN -> None)."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, np.ndarray):
        return _plain(x.tolist())
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def ceilings(pipe, gt: np.ndarray, spec: dict, fps: float) -> dict:
    """What a perfect generator would score on a prompt: its scene's ground-truth render, and that render
    through the model's VAE (encode, decode; when the model has one), the most a DiT can reach with it.
    gt: uint8 [T, H, W, 3]. Separates what the VAE loses from what the DiT gets wrong."""
    out = {"ground_truth": _attrs(score_video(gt, spec, fps=fps))}
    if hasattr(pipe, "encode_video"):
        recon = pipe.decode(pipe.encode_video(gt)[None])[0]  # [T, H, W, 3]
        out["vae_reconstruction"] = _attrs(score_video(recon, spec, fps=fps))
        out["vae_psnr"] = psnr(recon, gt)
    return out


# --- each mode: its inputs from the ground truth, its measures ---------------------------------------


@dataclass
class Take:
    """One job as its mode sees it: the pipeline, the job and its config, the prompt's scene with its ground-truth
    render (made once, when a mode first needs it), and, once generated, the output."""

    pipe: Any
    job: Any  # bench.generate.Job
    cfg: Any  # bench.generate.BenchConfig
    scene: Scene
    fps: float
    out: Any = None  # the PipelineOutput
    frames: np.ndarray | None = None  # its video, uint8 [T, H, W, 3]

    @functools.cached_property
    def gt(self) -> np.ndarray:
        p = self.job.prompt
        return render(self.scene, p.height, p.width, p.num_frames, self.fps).frames  # [T, H, W, 3]


def connect_ends(T: int) -> tuple[int, int]:
    """(head, tail) frames a T-frame connect job is given from the start and the end of one render: 2 latent frames
    of each (1 for short clips), the model fills the middle."""
    k = max(1, min(2, ((T - 1) // TF) // 2))
    return head_frames(k), TF * k + 1


def _t2v_measures(t: Take) -> dict:
    if t.job.steps != t.cfg.steps:  # steps-table runs repeat the same prompts
        return {}
    return {"ceilings": ceilings(t.pipe, t.gt, t.job.prompt.spec, t.fps)}


def _extend_measures(t: Take) -> dict:
    # the output keeps the given frames verbatim (exact); the window's own decode of them (what the model was
    # conditioned on, through the VAE) is the honest measure, and the seam the continuity
    T = t.job.prompt.num_frames
    K = head_frames(int(t.out.params["cond_latent_frames"]))
    window = t.pipe.decode(t.out.latents[:1])[0]  # [T_w, H, W, 3]
    return {"psnr_given": psnr(window[:K], t.gt[-K:]), "psnr_kept": psnr(t.frames[:T], t.gt),
            "seam_ratio": seam_ratio(t.frames, [T])}


def _connect_inputs(t: Take) -> dict:
    T = t.job.prompt.num_frames
    head, tail = connect_ends(T)
    return {"num_frames": T, "video": t.gt[:head], "video_end": t.gt[T - tail:]}


def _connect_measures(t: Take) -> dict:
    T = t.job.prompt.num_frames
    head, tail = connect_ends(T)
    gap = slice(head, T - tail)
    return {"seam_ratio": seam_ratio(t.frames, [head, T - tail]),
            "psnr_middle_vs_gt": psnr(t.frames[gap], t.gt[gap]) if gap.stop > gap.start else None}


def _long_inputs(t: Take) -> dict:
    window = t.cfg.long_window or int(t.pipe.defaults["num_frames"])
    return {"num_frames": TF * (window - 1) + 1, "window_frames": window}


def _long_measures(t: Take) -> dict:
    """The prompt's scores on the first and the last quarter, and the ground truth's on the same frames: drift."""
    p, frames = t.job.prompt, t.frames
    q = (len(frames) - 1) // TF + 1  # a quarter, as a 4k+1 clip
    ref = render(t.scene, p.height, p.width, len(frames), t.fps).frames
    first, last = _attrs(score_video(frames[:q], p.spec)), _attrs(score_video(frames[-q:], p.spec))
    gt_first, gt_last = _attrs(score_video(ref[:q], p.spec)), _attrs(score_video(ref[-q:], p.spec))
    return dict(first=first, last=last, gt_first=gt_first, gt_last=gt_last, quarter_frames=q)


Inputs = Callable[[Take], dict]  # the pipeline's keyword arguments that make the mode's video
Measures = Callable[[Take], dict]  # what is measured of it beyond the prompt's scores

# edit is not benched: it needs a user's video to edit
BENCH: dict[str, tuple[Inputs, Measures]] = {
    "t2v": (lambda t: {"num_frames": t.job.prompt.num_frames}, _t2v_measures),
    "t2i": (lambda t: {"num_frames": 1}, lambda t: {}),
    "i2v": (lambda t: {"num_frames": t.job.prompt.num_frames, "image": t.gt[:1]},
            lambda t: {"psnr_first": psnr(t.frames[0], t.gt[0])}),
    "extend": (lambda t: {"num_frames": t.job.prompt.num_frames, "video": t.gt}, _extend_measures),  # forward
    "connect": (_connect_inputs, _connect_measures),
    # a loop of T - 1 frames: frame T would be frame 0
    "loop": (lambda t: {"num_frames": t.job.prompt.num_frames - 1}, lambda t: loop_closure(t.frames)),
    "long": (_long_inputs, _long_measures),
    # the same length made a frame at a time (pipeline/stream.py), measured for drift as long is
    "stream": (lambda t: {"num_frames": _long_inputs(t)["num_frames"]}, _long_measures),
}


def run_job(pipe, job, cfg, fps: float, guidance: float) -> tuple[np.ndarray, dict]:
    """Generate one job's video, score it and measure its mode; returns (frames uint8 [T, H, W, 3], record)."""
    p, mode = job.prompt, job.mode
    if mode not in BENCH:
        raise ValueError(f"unknown mode {mode!r}; choose from {', '.join(BENCH)}")
    inputs, measures = BENCH[mode]
    take = Take(pipe, job, cfg, sample_scene(p.scene_seed, include_heldout=p.heldout), fps)
    kw = dict(mode=mode, height=p.height, width=p.width, num_inference_steps=job.steps, guidance_scale=guidance,
              sampler=cfg.sampler, seed=p.scene_seed, fps=fps, expand_prompt=False, progress=False)
    given = inputs(take)
    t0 = time.perf_counter()
    take.out = pipe(p.caption, **given, **kw)
    seconds = time.perf_counter() - t0
    take.frames = take.out.frames[0]
    scores = score_video(take.frames, p.spec, fps=fps)
    metrics = measures(take)
    record = {"name": job.name, "mode": mode, "index": p.index, "scene_seed": p.scene_seed, "prompt": p.caption,
              "spec": p.spec, "heldout": p.heldout, "aspect_ratio": p.aspect_ratio, "trained_ar": p.trained_ar,
              "height": p.height, "width": p.width, "num_frames": int(len(take.frames)), "steps": job.steps,
              "guidance_scale": guidance, "sampler": cfg.sampler, "seed": p.scene_seed, "seconds": seconds,
              "scores": scores, "metrics": metrics}
    return take.frames, _plain(record)
