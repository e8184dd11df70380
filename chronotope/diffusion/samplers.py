"""ODE samplers for rectified flow, k-diffusion style: one function per sampler, one signature, one dict.

    x = SAMPLERS["heun"](velocity_fn, noise, timesteps(30, shift), x_cond=x_cond, cond_mask=mask)

`velocity_fn(x, t) -> v` receives `t` with x.dim() dims, broadcastable to x: the current time at
every position and 0 at conditioning positions (per-token timestep, shared/DESIGN.md). After every
step the conditioning positions are reset to `x_cond`, so they stay exactly clean: that is all
image-to-video, extension, looping and connecting need. Classifier-free guidance wraps the model
function (`cfg_velocity`) instead of being copied into every sampler.

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

VelocityFn = Callable[[Tensor, Tensor], Tensor]


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


class _Conditioning:
    """Keeps conditioning positions clean and builds the per-position t handed to velocity_fn."""

    def __init__(self, x: Tensor, x_cond: Tensor | None, cond_mask: Tensor | None):
        if (x_cond is None) != (cond_mask is None):
            raise ValueError("pass x_cond and cond_mask together (cond_mask says where x_cond is given)")
        self.mask = None
        if cond_mask is not None:
            self.mask = expand_like(cond_mask.to(device=x.device, dtype=torch.bool), x)
            try:
                self.x_cond = torch.broadcast_to(x_cond.to(x), x.shape)
            except RuntimeError:
                raise ValueError(f"x_cond {tuple(x_cond.shape)} must broadcast to x {tuple(x.shape)}") from None
        # t varies per sample (dim 0) and, with a mask, per masked position; size 1 elsewhere.
        base = [x.shape[0]] + [1] * (x.dim() - 1)
        self.t_shape = base if self.mask is None else torch.broadcast_shapes(tuple(base), self.mask.shape)

    def reset(self, x: Tensor) -> Tensor:
        return x if self.mask is None else torch.where(self.mask, self.x_cond, x)

    def t(self, t: Tensor | float, x: Tensor) -> Tensor:
        tt = torch.full(self.t_shape, float(t), dtype=x.dtype, device=x.device)
        return tt if self.mask is None else tt.masked_fill(self.mask.expand(self.t_shape), 0.0)


def _check_timesteps(timesteps: Tensor) -> list[float]:
    ts = torch.as_tensor(timesteps).detach().to(torch.float64).flatten()
    if ts.numel() < 2:
        raise ValueError("timesteps need at least 2 entries (from t_start to 0); use flow.timesteps(num_steps, shift)")
    if not bool((ts[1:] < ts[:-1]).all()) or ts[0] > 1 or ts[-1] < 0:
        raise ValueError(f"timesteps must decrease strictly within [0, 1] (e.g. 1 -> 0), got {ts.tolist()[:6]}...")
    return ts.tolist()


def _steps(n: int, progress: bool, name: str):
    return tqdm(range(n), desc=name, disable=not progress, leave=False)


@torch.no_grad()
def euler(
    velocity_fn: VelocityFn, x: Tensor, timesteps: Tensor, *,
    x_cond: Tensor | None = None, cond_mask: Tensor | None = None, progress: bool = True,
) -> Tensor:
    """Euler's method (1st order) on dx/dt = v(x, t); for rectified flow this equals DDIM (Song et al. 2021)."""
    ts, c = _check_timesteps(timesteps), _Conditioning(x, x_cond, cond_mask)
    x = c.reset(x)
    for i in _steps(len(ts) - 1, progress, "euler"):
        v = velocity_fn(x, c.t(ts[i], x))
        x = c.reset(x + (ts[i + 1] - ts[i]) * v)
    return x


@torch.no_grad()
def heun(
    velocity_fn: VelocityFn, x: Tensor, timesteps: Tensor, *,
    x_cond: Tensor | None = None, cond_mask: Tensor | None = None, progress: bool = True,
) -> Tensor:
    """Heun's method (2nd order, Karras et al. 2022 Algorithm 1); Euler on the last step into t = 0."""
    ts, c = _check_timesteps(timesteps), _Conditioning(x, x_cond, cond_mask)
    x = c.reset(x)
    for i in _steps(len(ts) - 1, progress, "heun"):
        dt = ts[i + 1] - ts[i]
        v = velocity_fn(x, c.t(ts[i], x))
        x_euler = c.reset(x + dt * v)
        if ts[i + 1] == 0:  # v may be singular at t = 0 (x0 - prediction fields): no correction
            x = x_euler
            continue
        v2 = velocity_fn(x_euler, c.t(ts[i + 1], x))
        x = c.reset(x + dt * 0.5 * (v + v2))
    return x


@torch.no_grad()
def midpoint(
    velocity_fn: VelocityFn, x: Tensor, timesteps: Tensor, *,
    x_cond: Tensor | None = None, cond_mask: Tensor | None = None, progress: bool = True,
) -> Tensor:
    """Explicit midpoint method (2nd-order Runge-Kutta); never evaluates v at t = 0."""
    ts, c = _check_timesteps(timesteps), _Conditioning(x, x_cond, cond_mask)
    x = c.reset(x)
    for i in _steps(len(ts) - 1, progress, "midpoint"):
        dt = ts[i + 1] - ts[i]
        v = velocity_fn(x, c.t(ts[i], x))
        x_mid = c.reset(x + 0.5 * dt * v)
        v_mid = velocity_fn(x_mid, c.t(ts[i] + 0.5 * dt, x))
        x = c.reset(x + dt * v_mid)
    return x


@torch.no_grad()
def dpmpp_2m(
    velocity_fn: VelocityFn, x: Tensor, timesteps: Tensor, *,
    x_cond: Tensor | None = None, cond_mask: Tensor | None = None, progress: bool = True,
) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, multistep, data prediction) with alpha = 1 - t, sigma = t.

    One model call per step. The first step (and any step leaving t = 1) is the 1st-order update
    x' = (t'/t) x + (1 - t'/t) x0_hat, i.e. Euler; later steps extrapolate x0_hat linearly in
    lambda = log((1 - t) / t) from the previous step.
    """
    ts, c = _check_timesteps(timesteps), _Conditioning(x, x_cond, cond_mask)
    x = c.reset(x)

    def lam(t: float) -> float:
        return math.log((1 - t) / t)

    old_x0 = None
    for i in _steps(len(ts) - 1, progress, "dpm++2m"):
        t, t_next = ts[i], ts[i + 1]
        x0_hat = x - t * velocity_fn(x, c.t(t, x))
        if t_next == 0:
            x = c.reset(x0_hat)
            break
        ratio = t_next / t
        if old_x0 is None or ts[i - 1] >= 1 or t >= 1:
            d = x0_hat
        else:
            h, h_last = lam(t_next) - lam(t), lam(t) - lam(ts[i - 1])
            r = h_last / h
            d = (1 + 1 / (2 * r)) * x0_hat - (1 / (2 * r)) * old_x0
        # alpha' * (1 - e^{-h}) = 1 - t'/t for this path (see docstring)
        x = c.reset(ratio * x + (1 - ratio) * d)
        old_x0 = x0_hat
    return x


SAMPLERS: dict[str, Sampler] = {"euler": euler, "heun": heun, "midpoint": midpoint, "dpm++2m": dpmpp_2m}


# --- few-step sampling --------------------------------------------------------------------------------

StepVelocityFn = Callable[[Tensor, Tensor, float], Tensor]
FEW_STEPS: tuple[int, ...] = (1, 2, 4, 8)  # the step counts a shortcut model is trained for (train/few_step.py)


@torch.no_grad()
def shortcut(
    step_velocity_fn: StepVelocityFn, x: Tensor, timesteps: Tensor, *,
    x_cond: Tensor | None = None, cond_mask: Tensor | None = None, progress: bool = True,
) -> Tensor:
    """Shortcut models (Frans et al. 2024, arXiv 2410.12557): Euler steps whose velocity is the model's average
    velocity over the whole step, step_velocity_fn(x, t, d) with d = t_i - t_{i+1}, so a few steps land where
    many small ones would. With guidance folded in (train/few_step.py) one step is one model evaluation.
    Not in SAMPLERS: its model function takes the step size as a third argument."""
    ts, c = _check_timesteps(timesteps), _Conditioning(x, x_cond, cond_mask)
    x = c.reset(x)
    for i in _steps(len(ts) - 1, progress, "shortcut"):
        v = step_velocity_fn(x, c.t(ts[i], x), ts[i] - ts[i + 1])
        x = c.reset(x + (ts[i + 1] - ts[i]) * v)
    return x


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

    def velocity_fn(x: Tensor, t: Tensor) -> Tensor:
        if image_guidance_scale is None:
            branches = [(x, t, cond), (x, t, uncond)]
        else:
            x_u, t_u = drop_frames(x, t)
            branches = [(x, t, cond), (x, t, uncond), (x_u, t_u, uncond)]
        if batched:
            v = model_fn(_cat([b[0] for b in branches]), _cat([b[1] for b in branches]), _cat([b[2] for b in branches]))
            vs = v.chunk(len(branches), dim=0)
        else:
            vs = [model_fn(*b) for b in branches]
        v_text = vs[1] + guidance_scale * (vs[0] - vs[1])
        if image_guidance_scale is None:
            return v_text
        return v_text + (image_guidance_scale - 1) * (vs[1] - vs[2])  # s_i = 1: text-only CFG

    return velocity_fn
