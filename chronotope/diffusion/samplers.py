"""ODE samplers for rectified flow, k-diffusion style: one function per sampler, one signature, one dict.

    x = SAMPLERS["heun"](velocity_fn, noise, timesteps(30, shift), x_cond=x_cond, cond_mask=mask)

`velocity_fn(x, t) -> v` receives `t` with x.dim() dims, broadcastable to x: the current time at
every position and 0 at conditioning positions (per-token timestep, shared/DESIGN.md). After every
step the conditioning positions are reset to `x_cond`, so they stay exactly clean: that is all
image-to-video, extension, looping and connecting need. Noise levels are per position too: `timesteps`
is one schedule [S] or one per position [S, *lead] (e.g. [S, 1, 1, n]: each latent frame its own, later
frames noisier than earlier ones), so a rolling schedule is a schedule, not another loop. Classifier-free
guidance wraps the model function (`cfg_velocity`) instead of being copied into every sampler. A few-step
sampler (STEP_SAMPLERS) also passes the step size: velocity_fn(x, t, step=d).

Masks and per-sample tensors align to the LEADING dims of x (see flow.py): cond_mask [B, 1, T] fits
latents [B, C, T, H, W]; cond_mask [L] fits packed tokens [L, D].
"""

from __future__ import annotations

import math
from typing import Callable, Protocol

import torch
from torch import Tensor
from tqdm.auto import tqdm

from chronotope.diffusion.flow import expand_like, interpolate

VelocityFn = Callable[..., Tensor]  # (x, t) -> v; few-step samplers add step=d


class Sampler(Protocol):
    def __call__(
        self,
        velocity_fn: VelocityFn,
        x: Tensor,
        timesteps: Tensor,
        *,
        x_cond: Tensor | None = None,
        cond_mask: Tensor | None = None,
        progress: bool = True,
    ) -> Tensor: ...


class _Schedule:
    """The per-position times of a sampler call, and the conditioning positions it keeps clean.

    timesteps: [S] one schedule for every position, or [S, *lead] a schedule per position (aligned to the leading
    dims of x, like cond_mask: [S, 1, 1, n] gives each of n latent frames its own, e.g. a rolling schedule where
    later frames are noisier). Each position's times never rise; a position may hold still (dt = 0)."""

    def __init__(self, x: Tensor, timesteps: Tensor, x_cond: Tensor | None, cond_mask: Tensor | None):
        if (x_cond is None) != (cond_mask is None):
            raise ValueError("pass x_cond and cond_mask together (cond_mask says where x_cond is given)")
        self.mask = None
        if cond_mask is not None:
            self.mask = expand_like(cond_mask.to(device=x.device, dtype=torch.bool), x)
            try:
                self.x_cond = torch.broadcast_to(x_cond.to(x), x.shape)
            except RuntimeError:
                raise ValueError(f"x_cond {tuple(x_cond.shape)} must broadcast to x {tuple(x.shape)}") from None
        ts = torch.as_tensor(timesteps).detach().to(torch.float64)
        self.per_position = ts.dim() > 1
        self.ts = _check_timesteps(ts) if not self.per_position else _check_schedules(ts, x)
        self.steps = len(self.ts) - 1
        # t varies per sample (dim 0) and, with a mask or per-position schedules, per position; size 1 elsewhere
        shape = (x.shape[0],) + (1,) * (x.dim() - 1)
        for extra in ([self.mask.shape] if self.mask is not None else []) + ([self.ts[0].shape] if self.per_position else []):
            shape = torch.broadcast_shapes(shape, extra)
        self.t_shape = shape

    def reset(self, x: Tensor) -> Tensor:
        return x if self.mask is None else torch.where(self.mask, self.x_cond, x)

    def t(self, t: Tensor | float, x: Tensor) -> Tensor:
        """t (a float, or per position) at every position of x, 0 at conditioning positions."""
        tt = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(self.t_shape).clone()
        return tt if self.mask is None else tt.masked_fill(self.mask.expand(self.t_shape), 0.0)

    def at(self, i: int, x: Tensor) -> Tensor | float:
        """The schedule's time at step i: a float, or per position [*lead, 1, ...] broadcastable to x."""
        return self.ts[i] if not self.per_position else self.ts[i].to(device=x.device, dtype=x.dtype)

    def dt(self, i: int, x: Tensor) -> Tensor | float:
        """t_{i+1} - t_i: a float, or per position (computed in float64, then in x's dtype)."""
        return self.ts[i + 1] - self.ts[i] if not self.per_position else (self.ts[i + 1] - self.ts[i]).to(x)

    def lands(self, i: int) -> bool | None:
        """Whether step i ends at t = 0 everywhere (True), nowhere (False) or at some positions (None)."""
        end = self.ts[i + 1]
        if not self.per_position:
            return end == 0
        zero = end == 0
        return True if bool(zero.all()) else False if not bool(zero.any()) else None


def _check_timesteps(ts: Tensor) -> list[float]:
    ts = ts.flatten()
    if ts.numel() < 2:
        raise ValueError("timesteps need at least 2 entries (from t_start to 0); use flow.timesteps(num_steps, shift)")
    if not bool((ts[1:] < ts[:-1]).all()) or ts[0] > 1 or ts[-1] < 0:
        raise ValueError(f"timesteps must decrease strictly within [0, 1] (e.g. 1 -> 0), got {ts.tolist()[:6]}...")
    return ts.tolist()


def _check_schedules(ts: Tensor, x: Tensor) -> list[Tensor]:
    """Per-position schedules [S, *lead] -> S tensors [*lead, 1, ...] aligned to x; ValueError when one rises."""
    if ts.shape[0] < 2:
        raise ValueError("timesteps need at least 2 steps (from t_start to 0); use flow.timesteps(num_steps, shift)")
    if ts.dim() - 1 > x.dim():
        raise ValueError(f"per-position timesteps {tuple(ts.shape)} have more dims than x {tuple(x.shape)} after S")
    if bool((ts[1:] > ts[:-1]).any()) or bool((ts < 0).any()) or bool((ts > 1).any()):
        raise ValueError("per-position timesteps must lie in [0, 1] and never rise from one step to the next")
    if bool((ts[0] == ts[-1]).all()):
        raise ValueError("per-position timesteps leave every position where it is: no position moves")
    return [expand_like(ts[i], x) for i in range(ts.shape[0])]


def _start(x: Tensor, timesteps: Tensor, name: str, x_cond: Tensor | None = None, cond_mask: Tensor | None = None,
           progress: bool = True) -> tuple[_Schedule, Tensor, tqdm]:
    """A sampler's schedule, its start (conditioning positions reset to x_cond) and its steps (a progress bar)."""
    s = _Schedule(x, timesteps, x_cond, cond_mask)
    return s, s.reset(x), tqdm(range(s.steps), desc=name, disable=not progress, leave=False)


@torch.no_grad()
def euler(velocity_fn: VelocityFn, x: Tensor, timesteps: Tensor, **conditioning) -> Tensor:
    """Euler's method (1st order) on dx/dt = v(x, t); for rectified flow this equals DDIM (Song et al. 2021)."""
    s, x, steps = _start(x, timesteps, "euler", **conditioning)
    for i in steps:
        v = velocity_fn(x, s.t(s.at(i, x), x))
        x = s.reset(x + s.dt(i, x) * v)
    return x


@torch.no_grad()
def heun(velocity_fn: VelocityFn, x: Tensor, timesteps: Tensor, **conditioning) -> Tensor:
    """Heun's method (2nd order, Karras et al. 2022 Algorithm 1); Euler on the last step into t = 0."""
    s, x, steps = _start(x, timesteps, "heun", **conditioning)
    for i in steps:
        dt = s.dt(i, x)
        v = velocity_fn(x, s.t(s.at(i, x), x))
        x_euler = s.reset(x + dt * v)
        lands = s.lands(i)
        if lands:  # v may be singular at t = 0 (x0 - prediction fields): no correction
            x = x_euler
            continue
        v2 = velocity_fn(x_euler, s.t(s.at(i + 1, x), x))
        x_heun = s.reset(x + dt * 0.5 * (v + v2))
        x = x_heun if lands is False else torch.where(s.at(i + 1, x) == 0, x_euler, x_heun)
    return x


@torch.no_grad()
def midpoint(velocity_fn: VelocityFn, x: Tensor, timesteps: Tensor, **conditioning) -> Tensor:
    """Explicit midpoint method (2nd-order Runge-Kutta); never evaluates v at t = 0."""
    s, x, steps = _start(x, timesteps, "midpoint", **conditioning)
    for i in steps:
        v = velocity_fn(x, s.t(s.at(i, x), x))
        dt = s.dt(i, x)
        x_mid = s.reset(x + 0.5 * dt * v)
        v_mid = velocity_fn(x_mid, s.t(s.at(i, x) + 0.5 * dt, x))
        x = s.reset(x + dt * v_mid)
    return x


@torch.no_grad()
def dpmpp_2m(velocity_fn: VelocityFn, x: Tensor, timesteps: Tensor, **conditioning) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, multistep, data prediction) with alpha = 1 - t, sigma = t.

    One model call per step. The first step (and any step leaving t = 1) is the 1st-order update
    x' = (t'/t) x + (1 - t'/t) x0_hat, i.e. Euler; later steps extrapolate x0_hat linearly in
    lambda = log((1 - t) / t) from the previous step. One schedule for every position (its multistep
    extrapolation assumes all positions share the step sizes).
    """
    s, x, steps = _start(x, timesteps, "dpm++2m", **conditioning)
    if s.per_position:
        raise ValueError("dpm++2m takes one schedule for every position (timesteps [S]); use euler, heun or midpoint "
                         "for per-frame noise levels")
    ts = s.ts

    def lam(t: float) -> float:
        return math.log((1 - t) / t)

    old_x0 = None
    for i in steps:
        t, t_next = ts[i], ts[i + 1]
        x0_hat = x - t * velocity_fn(x, s.t(t, x))
        if t_next == 0:
            x = s.reset(x0_hat)
            break
        ratio = t_next / t
        if old_x0 is None or ts[i - 1] >= 1 or t >= 1:
            d = x0_hat
        else:
            h, h_last = lam(t_next) - lam(t), lam(t) - lam(ts[i - 1])
            r = h_last / h
            d = (1 + 1 / (2 * r)) * x0_hat - (1 / (2 * r)) * old_x0
        # alpha' * (1 - e^{-h}) = 1 - t'/t for this path (see docstring)
        x = s.reset(ratio * x + (1 - ratio) * d)
        old_x0 = x0_hat
    return x


@torch.no_grad()
def shortcut(velocity_fn: VelocityFn, x: Tensor, timesteps: Tensor, **conditioning) -> Tensor:
    """Shortcut models (Frans et al. 2024, arXiv 2410.12557): Euler steps whose velocity is the model's average
    velocity over the whole step, velocity_fn(x, t, step=d) with d = t_i - t_{i+1}, so a few steps land where
    many small ones would. With guidance folded in (train/few_step.py) one step is one model evaluation."""
    s, x, steps = _start(x, timesteps, "shortcut", **conditioning)
    for i in steps:
        dt = s.dt(i, x)
        v = velocity_fn(x, s.t(s.at(i, x), x), step=-dt)
        x = s.reset(x + dt * v)
    return x


SAMPLERS: dict[str, Sampler] = {"euler": euler, "heun": heun, "midpoint": midpoint, "dpm++2m": dpmpp_2m,
                                "shortcut": shortcut}
# samplers of a few-step model: their velocity_fn takes the step size (step=d), guidance is folded into the weights
STEP_SAMPLERS: tuple[str, ...] = ("shortcut",)
FEW_STEPS: tuple[int, ...] = (1, 2, 4, 8)  # the step counts a shortcut model is trained for (train/few_step.py)


def get_sampler(name: str) -> Sampler:
    """Look up a sampler by name with an actionable error."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; valid: {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


# --- classifier-free guidance ----------------------------------------------------------------------


def _cat(items: list, dim: int = 0):
    """Concatenate a list of tensors, or of tuples/dicts of tensors (elementwise), along the batch dim."""
    first = items[0]
    if isinstance(first, Tensor):
        return torch.cat(items, dim)
    if isinstance(first, (tuple, list)):
        return type(first)(_cat([it[k] for it in items], dim) for k in range(len(first)))
    if isinstance(first, dict):
        return {k: _cat([it[k] for it in items], dim) for k in first}
    raise ValueError(f"batched CFG needs tensors, tuples or dicts of tensors as context, got {type(first).__name__}")


def cfg_velocity(
    model_fn: Callable,
    guidance_scale: float,
    cond,
    uncond,
    *,
    image_guidance_scale: float | None = None,
    x_cond: Tensor | None = None,
    cond_mask: Tensor | None = None,
    generator: torch.Generator | None = None,
    batched: bool = True,
) -> VelocityFn:
    """Classifier-free guidance (Ho & Salimans 2022) as a velocity_fn for any sampler.

    model_fn(x, t, context) -> v, with `cond` / `uncond` the text contexts (e.g. a tuple
    (text_emb [B, Lt, D], text_mask [B, Lt]) and the same for the empty caption):

        v = v(uncond) + s * (v(cond) - v(uncond))                                     (text only)

    With `image_guidance_scale` s_i (and the sampler's x_cond / cond_mask given here too), the
    conditioning frames are guided separately, as in InstructPix2Pix (Brooks et al. 2023):

        v = v(uncond, no frames) + s_i * (v(uncond, frames) - v(uncond, no frames))
                                 + s   * (v(cond, frames)   - v(uncond, frames))

    "No frames" means the conditioning positions are noised like the rest: t set to the step's t
    and x to interpolate(x_cond, eps, t) with one fixed eps drawn from `generator`, the
    "none" conditioning mode the model saw in training. batched=True evaluates all branches in one
    call, concatenated along dim 0 (x, t and every tensor of the context); use batched=False for
    packed sequences that have no batch dim.
    """
    if image_guidance_scale is not None and (x_cond is None or cond_mask is None):
        raise ValueError("image_guidance_scale needs x_cond and cond_mask (the same ones given to the sampler)")
    state: dict[str, Tensor] = {}

    def drop_frames(x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        mask = expand_like(cond_mask.to(device=x.device, dtype=torch.bool), x)
        if "eps" not in state:
            state["eps"] = torch.randn(x.shape, generator=generator, dtype=x.dtype, device="cpu").to(x.device)
        t_step = t.amax()  # the current time: conditioning positions hold 0, the rest t_i
        t_free = torch.where(mask, t_step, t)  # same shape as t: the mask broadcasts to it
        x_noised = interpolate(torch.broadcast_to(x_cond.to(x), x.shape), state["eps"], t_step)
        return torch.where(mask, x_noised, x), t_free

    def velocity_fn(x: Tensor, t: Tensor, **step) -> Tensor:
        if image_guidance_scale is None:
            branches = [(x, t, cond), (x, t, uncond)]
        else:
            x_u, t_u = drop_frames(x, t)
            branches = [(x, t, cond), (x, t, uncond), (x_u, t_u, uncond)]
        if batched:
            v = model_fn(_cat([b[0] for b in branches]), _cat([b[1] for b in branches]), _cat([b[2] for b in branches]),
                         **step)
            vs = v.chunk(len(branches), dim=0)
        else:
            vs = [model_fn(*b, **step) for b in branches]
        v_text = vs[1] + guidance_scale * (vs[0] - vs[1])
        if image_guidance_scale is None:
            return v_text
        return v_text + (image_guidance_scale - 1) * (vs[1] - vs[2])  # s_i = 1: text-only CFG

    return velocity_fn
