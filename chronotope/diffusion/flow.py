"""Rectified flow: the probability path, its velocity target, the training-time density and the shift.

Follows Liu et al. 2022 ("Flow Straight and Fast", rectified flow) and Esser et al. 2024 (SD3:
logit-normal t, resolution-dependent timestep shift), with the parametrisation kept apart from
the network as in facebookresearch/flow_matching:

    x_t = (1 - t) * x0 + t * eps        t = 0 data, t = 1 noise
    v   = d x_t / d t = eps - x0        the network predicts v; sampling integrates t: 1 -> 0

Per-token timestep (shared/DESIGN.md): every token carries its own t. Clean conditioning tokens
(the given first frame, the video to extend, ...) carry t = 0 and their clean value, and take no
loss. One model trained with randomly sampled conditioning masks serves every Sora mode.

Broadcasting rule used throughout (and by samplers.py): a per-sample or per-token tensor `t` (or
mask) with fewer dimensions than `x` is aligned to the LEADING dimensions of `x` and padded with
trailing singleton axes, so t [B] fits x [B, C, T, H, W] and t [L] fits packed tokens x [L, D].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


def expand_like(t: Tensor, x: Tensor) -> Tensor:
    """View `t` with trailing singleton axes so that it broadcasts against `x` (leading dims aligned).

    t [B] with x [B, C, T, H, W] -> [B, 1, 1, 1, 1]; t [L] with x [L, D] -> [L, 1].
    """
    if t.dim() > x.dim():
        raise ValueError(f"t/mask has {t.dim()} dims {tuple(t.shape)} but x only {x.dim()} {tuple(x.shape)}")
    t = t.reshape(*t.shape, *([1] * (x.dim() - t.dim())))
    for i, (a, b) in enumerate(zip(t.shape, x.shape)):
        if a not in (1, b):
            raise ValueError(
                f"shape {tuple(t.shape)} does not broadcast to x {tuple(x.shape)} at dim {i}; per-sample or "
                "per-token tensors must match the leading dims of x (or be 1 there)"
            )
    return t


# --- the path -----------------------------------------------------------------------------------


def interpolate(x0: Tensor, noise: Tensor, t: Tensor | float) -> Tensor:
    """x_t = (1 - t) * x0 + t * noise. t: scalar, per-sample [B], per-token [L] or any leading-aligned shape."""
    t = torch.as_tensor(t, dtype=x0.dtype, device=x0.device)
    t = expand_like(t, x0)
    return (1 - t) * x0 + t * noise


def velocity_target(x0: Tensor, noise: Tensor) -> Tensor:
    """The rectified-flow regression target v = noise - x0 (constant along each straight path)."""
    return noise - x0


def x0_from_velocity(x_t: Tensor, v: Tensor, t: Tensor | float) -> Tensor:
    """Predicted clean sample: x0 = x_t - t * v."""
    t = expand_like(torch.as_tensor(t, dtype=x_t.dtype, device=x_t.device), x_t)
    return x_t - t * v


def noise_from_velocity(x_t: Tensor, v: Tensor, t: Tensor | float) -> Tensor:
    """Predicted noise: eps = x_t + (1 - t) * v."""
    t = expand_like(torch.as_tensor(t, dtype=x_t.dtype, device=x_t.device), x_t)
    return x_t + (1 - t) * v


def velocity_from_x0(x_t: Tensor, x0: Tensor, t: Tensor | float) -> Tensor:
    """v = (x_t - x0) / t (undefined at t = 0, where x_t = x0)."""
    t = expand_like(torch.as_tensor(t, dtype=x_t.dtype, device=x_t.device), x_t)
    return (x_t - x0) / t


def velocity_from_noise(x_t: Tensor, noise: Tensor, t: Tensor | float) -> Tensor:
    """v = (noise - x_t) / (1 - t) (undefined at t = 1, where x_t = noise)."""
    t = expand_like(torch.as_tensor(t, dtype=x_t.dtype, device=x_t.device), x_t)
    return (noise - x_t) / (1 - t)


# --- t density and shift --------------------------------------------------------------------------


def sample_t(
    n: int,
    generator: torch.Generator | None = None,
    mean: float = 0.0,
    std: float = 1.0,
    shift: Tensor | float = 1.0,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Training timesteps: logit-normal t = sigmoid(mean + std * N(0, 1)) (SD3 §3.1), then shifted.

    Returns t [n] in the open interval (0, 1); the median before the shift is sigmoid(mean).
    `shift` is a float or a per-sample tensor [n], e.g. `shift_for_tokens(tokens_per_sample)`.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if std <= 0:
        raise ValueError(f"std of the logit-normal must be > 0, got {std}")
    z = torch.randn(n, generator=generator, device=device)
    t = torch.sigmoid(mean + std * z)
    t = apply_shift(t, torch.as_tensor(shift, dtype=t.dtype, device=t.device))
    eps = 1e-5  # keep away from exactly 0 / 1 where float32 sigmoid saturates
    return t.clamp(eps, 1 - eps)


def shift_for_tokens(
    num_tokens: int | Tensor,
    base_tokens: int = 256,
    base_shift: float = 1.0,
    max_tokens: int = 4096,
    max_shift: float = 3.0,
    scale: float = 1.0,
) -> float | Tensor:
    """Timestep shift that grows with a sample's token count (SD3 §5.3.2, flux's `time_shift`).

    As in flux, mu = log(shift) is linear in the token count through (base_tokens, log base_shift)
    and (max_tokens, log max_shift), and shift = exp(mu). Unlike flux the count is clamped to
    [base_tokens, max_tokens], so tiny images get `base_shift` and very long videos `max_shift`
    instead of an exponentially growing shift. More tokens hold more redundant signal, so the same
    noise level destroys less of it: the shift moves t towards 1 (more noise) to compensate.
    Training (`sample_t`) and sampling (`timesteps`) must use the same rule.
    `scale` multiplies the whole rule (a model's `time_shift`, stored in its folder): > 1 spends more
    training and sampling on high noise, where a clip's layout and motion are decided.

    num_tokens: int or tensor [B] (per-sample counts of a packed batch) -> float or tensor [B].
    """
    if not (0 < base_tokens < max_tokens):
        raise ValueError(f"need 0 < base_tokens < max_tokens, got {base_tokens} and {max_tokens}")
    if base_shift <= 0 or max_shift <= 0:
        raise ValueError(f"shifts must be > 0, got base_shift={base_shift}, max_shift={max_shift}")
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"the time shift scale must be a finite number > 0 (1 = the default rule), got {scale}")
    slope = (math.log(max_shift) - math.log(base_shift)) / (max_tokens - base_tokens)
    if isinstance(num_tokens, Tensor):
        n = num_tokens.to(torch.float64).clamp(base_tokens, max_tokens)
        return (scale * torch.exp(math.log(base_shift) + slope * (n - base_tokens))).to(torch.float32)
    n = min(max(float(num_tokens), base_tokens), max_tokens)
    return scale * math.exp(math.log(base_shift) + slope * (n - base_tokens))


def apply_shift(t: Tensor, shift: Tensor | float) -> Tensor:
    """t' = shift * t / (1 + (shift - 1) * t): maps 0 -> 0 and 1 -> 1, monotone; shift > 1 adds noise.

    Equivalent to scaling the noise-to-signal ratio t / (1 - t) by `shift`. `shift` may be a tensor
    aligned to t's leading dims (per-sample shifts).
    """
    shift = torch.as_tensor(shift, dtype=t.dtype, device=t.device)
    if shift.dim() > 0:
        shift = shift.reshape(*shift.shape, *([1] * (t.dim() - shift.dim())))
    if shift.device.type == "cpu":
        if (shift.numpy() <= 0).any():
            raise ValueError("shift must be > 0 (1 = no shift)")
    else:  # checked on the device, without waiting for it
        torch._assert_async((shift > 0).all(), "shift must be > 0 (1 = no shift)")
    return shift * t / (1 + (shift - 1) * t)


def timesteps(num_steps: int, shift: float = 1.0, start: float = 1.0) -> Tensor:
    """Sampling schedule: [num_steps + 1] times from `start` to 0, uniform in unshifted time then `apply_shift`ed
    (float32). `start` < 1 (SDEdit's strength) keeps the shape of the shifted 1 -> 0 schedule, rescaled in
    unshifted time to begin exactly at `start`."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if not 0.0 < start <= 1.0:
        raise ValueError(f"strength must be in (0, 1], got {start}")
    u0 = start / (shift - (shift - 1.0) * start)  # inverse of apply_shift at `start` (1 when start = 1)
    u = torch.linspace(u0, 0.0, num_steps + 1, dtype=torch.float64)
    ts = apply_shift(u, float(shift)).to(torch.float32)
    ts[0] = start
    return ts


# --- a training example ------------------------------------------------------------------------------


@dataclass
class FlowExample:
    """What the trainer feeds the network and the loss; per-token tensors are leading-aligned to x0.

    x_t: noised input (clean at conditioning tokens); t: per-token timestep (0 at conditioning
    tokens); target: noise - x0; loss_mask: bool, True where the loss applies.
    """

    x_t: Tensor
    t: Tensor
    target: Tensor
    loss_mask: Tensor


def make_example(
    x0: Tensor, noise: Tensor, t: Tensor, cond_mask: Tensor | None = None, drop_mask: Tensor | None = None
) -> FlowExample:
    """Noise x0 at per-token times t, keeping conditioning tokens clean with t = 0.

    x0, noise: e.g. packed tokens [L, D]; t: [L] (each sample's t repeated over its tokens);
    cond_mask: bool [L], True = given clean; drop_mask: bool [L], True = token dropped (no loss).
    """
    if x0.shape != noise.shape:
        raise ValueError(f"x0 {tuple(x0.shape)} and noise {tuple(noise.shape)} must have the same shape")
    t = t.to(x0.dtype)
    cond = torch.zeros_like(t, dtype=torch.bool) if cond_mask is None else cond_mask.to(torch.bool)
    t = torch.where(cond, torch.zeros_like(t), t)
    x_t = interpolate(x0, noise, t)  # exactly x0 where t == 0
    loss_mask = ~cond if drop_mask is None else ~cond & ~drop_mask.to(torch.bool)
    return FlowExample(x_t=x_t, t=t, target=velocity_target(x0, noise), loss_mask=loss_mask)


def flow_loss(pred_v: Tensor, x0: Tensor, noise: Tensor, loss_mask: Tensor | None = None) -> Tensor:
    """Mean squared error to noise - x0 over the valid tokens' elements -> scalar.

    loss_mask: bool, leading-aligned to pred_v (e.g. [L] for tokens [L, D]); False for conditioning
    and dropped tokens. With no valid token the loss is 0 (still attached to the graph).
    """
    if pred_v.shape != x0.shape or x0.shape != noise.shape:
        raise ValueError(
            f"pred_v {tuple(pred_v.shape)}, x0 {tuple(x0.shape)} and noise {tuple(noise.shape)} must match"
        )
    err = (pred_v.float() - velocity_target(x0, noise).float()).square()
    if loss_mask is None:
        return err.mean()
    m = expand_like(loss_mask.to(torch.bool), err).expand_as(err)
    count = m.sum()
    return (err * m).sum() / count.clamp(min=1)


# --- caption dropout and conditioning masks -------------------------------------------------------------


def drop_captions(prompts: list[str], rate: float, generator: torch.Generator | None = None) -> list[str]:
    """Replace each caption by "" with probability `rate` (classifier-free guidance, Ho & Salimans 2022)."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"caption dropout rate must be in [0, 1], got {rate}")
    u = torch.rand(len(prompts), generator=generator)
    return ["" if float(ui) < rate else p for ui, p in zip(u, prompts)]


COND_MODES: tuple[str, ...] = ("none", "first", "last", "first_last", "head", "tail", "random")
# The one conditioning vocabulary: training draws these masks, and every generation mode's plan
# (chronotope/pipeline/modes.py) asks `span_mask` for one of them by name: t2v none, i2v first or last, extend
# forward head, extend backward tail, connect and loop first_last (k frames at each end), long head.
# Default mode probabilities: half the clips learn plain text-to-video; the rest image-to-video
# (first), backward extension / reaching an end frame (last), connecting/looping (first_last),
# forward extension (head span), backward extension (tail span), frame interpolation (random).
DEFAULT_COND_PROBS: dict[str, float] = {
    "none": 0.5, "first": 0.15, "last": 0.05, "first_last": 0.1, "head": 0.1, "tail": 0.05, "random": 0.05,
}


def span_mask(mode: str, num_latent_frames: int, span: int = 1) -> Tensor:
    """The frames a mode gives, deterministically: bool [T], True = given clean. first / head: the first `span`
    latent frames; last / tail: the last `span`; first_last: `span` at each end; none: nothing. Generation's
    plans (chronotope/pipeline/modes.py) ask for their masks here, with their k given latent frames as the span."""
    if mode not in COND_MODES or mode == "random":
        raise ValueError(f"{mode!r} has no fixed frames; span_mask takes one of {', '.join(COND_MODES[:-1])}")
    m = torch.zeros(num_latent_frames, dtype=torch.bool)
    if mode in ("first", "head", "first_last"):
        m[:span] = True
    if mode in ("last", "tail", "first_last"):
        m[num_latent_frames - span:] = True
    return m


def cond_mask_for_mode(mode: str, num_latent_frames: int, generator: torch.Generator | None = None) -> Tensor:
    """Conditioning mask bool [T] for one mode; True = latent frame given clean. Always leaves >= 1 frame free.

    Images (T = 1) never get conditioning; a mode that would cover every frame falls back to "first".
    head / tail draw a span of 1 .. T-1 frames; first, last and first_last give one frame at their ends.
    """
    T = num_latent_frames
    if T < 1:
        raise ValueError(f"num_latent_frames must be >= 1, got {T}")
    if mode not in COND_MODES:
        raise ValueError(f"unknown conditioning mode {mode!r}; valid: {', '.join(COND_MODES)}")
    if T == 1 or mode == "none":
        return torch.zeros(T, dtype=torch.bool)
    if mode == "first_last" and T < 3:
        mode = "first"
    if mode in ("head", "tail"):
        return span_mask(mode, T, int(torch.randint(1, T, (1,), generator=generator)))  # span of 1 .. T-1 frames
    if mode != "random":
        return span_mask(mode, T)
    m = torch.rand(T, generator=generator) < 0.5  # random frames, each with probability 1/2 ...
    if not m.any():  # ... at least one given
        m[int(torch.randint(0, T, (1,), generator=generator))] = True
    if m.all():  # ... and one free
        m[int(torch.randint(0, T, (1,), generator=generator))] = False
    return m


def sample_cond_mode(generator: torch.Generator | None = None, probs: dict[str, float] | None = None) -> str:
    """Draw a conditioning mode name from `probs` (default DEFAULT_COND_PROBS; normalised)."""
    probs = check_cond_probs(DEFAULT_COND_PROBS if probs is None else probs)
    names = list(probs)
    w = torch.tensor([float(probs[k]) for k in names], dtype=torch.float64)
    return names[int(torch.multinomial(w / w.sum(), 1, generator=generator))]


def check_cond_probs(probs: dict[str, float]) -> dict[str, float]:
    """`probs` unchanged, or a ValueError naming the valid modes / saying what is wrong with the weights."""
    unknown = sorted(set(probs) - set(COND_MODES))
    if unknown:
        raise ValueError(f"unknown conditioning modes {unknown}; valid: {', '.join(COND_MODES)}")
    w = [float(v) for v in probs.values()]
    if any(not x >= 0 for x in w) or sum(w) <= 0:
        raise ValueError(f"conditioning mode probabilities must be >= 0 with a positive sum, got {probs}")
    return probs


def sample_cond_mask(
    num_latent_frames: int, generator: torch.Generator | None = None, probs: dict[str, float] | None = None
) -> Tensor:
    """Training conditioning mask bool [num_latent_frames] (True = given clean) of a randomly drawn mode."""
    if num_latent_frames == 1:  # images never get conditioning; don't consume randomness for them
        return torch.zeros(1, dtype=torch.bool)
    return cond_mask_for_mode(sample_cond_mode(generator, probs), num_latent_frames, generator)


def sample_cond_masks(num_frames: list[int], generator: torch.Generator | None = None,
                      probs: dict[str, float] | None = None) -> Tensor:
    """Training conditioning masks of a whole pack at once (the rules of `cond_mask_for_mode`, one mode drawn
    per sample): num_frames [N] latent frame counts -> bool [sum T] (True = given clean), samples concatenated.

    A fixed number of tensor ops whatever N, so building a pack of hundreds of clips costs no Python loop.
    """
    probs = check_cond_probs(DEFAULT_COND_PROBS if probs is None else probs)
    names = list(probs)
    n = len(num_frames)
    if n == 0 or min(num_frames) < 1:
        raise ValueError(f"every sample needs >= 1 latent frame, got {num_frames}")
    T = torch.tensor(num_frames, dtype=torch.long)  # [N]
    w = torch.tensor([float(probs[k]) for k in names], dtype=torch.float64)
    mode = torch.multinomial(w / w.sum(), n, replacement=True, generator=generator)  # [N] index into names
    u_span, u_pick = torch.rand(n, generator=generator), torch.rand(n, generator=generator)  # [N]
    sample = torch.from_numpy(np.repeat(np.arange(n), num_frames))  # [sum T]
    start = torch.cumsum(T, 0) - T  # [N] first frame of each sample
    f = torch.arange(sum(num_frames)) - start[sample]  # [sum T] frame index within its sample
    u_frame = torch.rand(f.numel(), generator=generator)
    code = {k: names.index(k) if k in names else -1 for k in COND_MODES}
    m_mode = mode[sample]
    Ts = T[sample]
    first_last = (m_mode == code["first_last"]) & (Ts >= 3)
    first = (m_mode == code["first"]) | ((m_mode == code["first_last"]) & (Ts < 3))
    k = (1 + (u_span * (T - 1).clamp_min(1)).long().clamp_max((T - 2).clamp_min(0)))[sample]  # span 1 .. T-1
    mask = (first & (f == 0)) | ((m_mode == code["last"]) & (f == Ts - 1)) | (first_last & ((f == 0) | (f == Ts - 1)))
    mask |= (m_mode == code["head"]) & (f < k)
    mask |= (m_mode == code["tail"]) & (f >= Ts - k)
    rnd = (m_mode == code["random"]) & (u_frame < 0.5)  # each frame given with probability 1/2 ...
    given = torch.zeros(n, dtype=torch.long).index_add_(0, sample, rnd.long())  # [N]
    pick = (u_pick * T).long().clamp_max(T - 1)[sample] == f  # one random frame per sample
    is_random = m_mode == code["random"]
    rnd |= is_random & (given == 0)[sample] & pick  # ... at least one given
    rnd &= ~(is_random & (given == T)[sample] & pick)  # ... and at least one free
    return (mask | rnd) & (Ts > 1)  # images never get conditioning

