"""Samplers on analytic velocity fields: exact end points, order of accuracy, clean conditioning, CFG."""

from __future__ import annotations

import pytest
import torch

from chronotope.diffusion.flow import timesteps
from chronotope.diffusion.samplers import SAMPLERS, cfg_velocity, get_sampler

MU, S = 2.0, 0.3


def gaussian_field(x: torch.Tensor, t: torch.Tensor, **_) -> torch.Tensor:
    """Exact marginal rectified-flow velocity from N(0, 1) noise to N(MU, S^2) data (1-D, linear in x).

    x_t keeps its z-score along the flow: x_t = (1 - t) MU + sd(t) z, sd^2 = (1 - t)^2 S^2 + t^2,
    so the ODE maps x(1) = z to x(0) = MU + S z.
    """
    sd2 = (1 - t) ** 2 * S**2 + t**2
    return -MU + (t - (1 - t) * S**2) / sd2 * (x - (1 - t) * MU)


def max_error(name: str, steps: int, shift: float = 1.0) -> float:
    x1 = torch.linspace(-2, 2, 9, dtype=torch.float64)[:, None]
    out = SAMPLERS[name](gaussian_field, x1, timesteps(steps, shift).double(), progress=False)
    return float((out - (MU + S * x1)).abs().max())


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_point_target_reached_exactly(name):
    # single data point x0: the field v = (x - x0) / t has straight trajectories, so every sampler is exact
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 4, 3, generator=g, dtype=torch.float64)
    x1 = torch.randn(2, 4, 3, generator=g, dtype=torch.float64)
    out = SAMPLERS[name](lambda x, t, **_: (x - x0) / t, x1, timesteps(7, 3.0).double(), progress=False)
    torch.testing.assert_close(out, x0, atol=1e-9, rtol=0)


def test_order_of_accuracy_euler_first_heun_second():
    euler = [max_error("euler", n) for n in (16, 32, 64)]
    heun = [max_error("heun", n) for n in (16, 32, 64)]
    for a, b in zip(euler, euler[1:]):
        assert 1.7 < a / b < 2.3, euler  # halving the step halves the error
    for a, b in zip(heun, heun[1:]):
        assert 3.5 < a / b < 4.6, heun  # ... and quarters it
    assert heun[-1] < euler[-1] / 10


def test_second_order_samplers_beat_euler():
    for name in ("midpoint", "dpm++2m"):
        a, b = max_error(name, 32, shift=3.0), max_error(name, 64, shift=3.0)
        assert b < a and a / b > 3.0, (name, a, b)
        assert b < max_error("euler", 64, shift=3.0) / 5


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_conditioning_positions_stay_exactly_clean(name):
    g = torch.Generator().manual_seed(1)
    B, C, T = 2, 3, 5
    x1 = torch.randn(B, C, T, generator=g)
    x_cond = torch.randn(B, C, T, generator=g)
    cond_mask = torch.tensor([True, False, False, False, True]).view(1, 1, T)  # first and last frame
    seen_t = []

    def field(x, t, **_):
        seen_t.append(t.clone())
        assert t.shape == (B, 1, T)  # per sample and per frame, broadcastable to x
        return torch.tanh(x) + t  # elementwise, so free positions do not depend on cond ones

    ts = timesteps(6, 2.0)
    out = SAMPLERS[name](field, x1, ts, x_cond=x_cond, cond_mask=cond_mask, progress=False)
    assert torch.equal(out[..., 0], x_cond[..., 0]) and torch.equal(out[..., -1], x_cond[..., -1])
    assert all(bool((t[..., 0] == 0).all() and (t[..., -1] == 0).all()) for t in seen_t)
    assert all(bool((t[..., 1:4] > 0).all()) for t in seen_t)
    free = SAMPLERS[name](lambda x, t, **_: torch.tanh(x) + t, x1, ts, progress=False)
    torch.testing.assert_close(out[..., 1:4], free[..., 1:4])
    assert not torch.allclose(out[..., 0], free[..., 0])


def test_conditioning_on_packed_tokens():
    g = torch.Generator().manual_seed(2)
    L, D = 10, 4
    x1, x_cond = torch.randn(L, D, generator=g), torch.randn(L, D, generator=g)
    cond = torch.zeros(L, dtype=torch.bool)
    cond[:3] = True  # the first latent frame's tokens

    def field(x, t, **_):
        assert t.shape == (L, 1)  # per token
        return x * t

    out = SAMPLERS["heun"](field, x1, timesteps(4), x_cond=x_cond, cond_mask=cond, progress=False)
    assert torch.equal(out[:3], x_cond[:3])
    with pytest.raises(ValueError, match="together"):
        SAMPLERS["euler"](field, x1, timesteps(4), cond_mask=cond, progress=False)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_deterministic_for_a_seed(name):
    def run(seed):
        x = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(seed))
        return SAMPLERS[name](lambda x, t, **_: torch.sin(3 * x) * t - x, x, timesteps(5, 3.0), progress=False)

    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))


def test_timesteps_validation_and_lookup(capsys):
    x = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="decrease"):
        SAMPLERS["euler"](lambda x, t, **_: x, x, torch.tensor([0.0, 1.0]), progress=False)
    with pytest.raises(ValueError, match="at least 2"):
        SAMPLERS["euler"](lambda x, t, **_: x, x, torch.tensor([1.0]), progress=False)
    with pytest.raises(ValueError, match="unknown sampler"):
        get_sampler("rk45")
    # SDEdit-style partial schedules (start below 1) are allowed
    SAMPLERS["heun"](lambda x, t, **_: x, x, torch.tensor([0.6, 0.3, 0.0]), progress=False)
    SAMPLERS["euler"](lambda x, t, **_: x, x, timesteps(3), progress=True)
    assert "euler" in capsys.readouterr().err  # tqdm progress bar


def _model(x, t, ctx):
    """A toy 'network': the context scales the velocity, t shifts it, the last axis mixes (like attention)."""
    scale = ctx[0] if isinstance(ctx, tuple) else ctx
    return x * scale.view(-1, *([1] * (x.dim() - 1))) + t + x.mean(dim=-1, keepdim=True)


def test_cfg_combines_branches_batched_and_unbatched():
    g = torch.Generator().manual_seed(3)
    x, t = torch.randn(2, 3, 4, generator=g), torch.full((2, 1, 1), 0.5)
    cond, uncond = (torch.tensor([2.0, 3.0]),), (torch.tensor([1.0, 1.0]),)
    calls = []

    def model(x, t, ctx):
        calls.append(x.shape[0])
        return _model(x, t, ctx)

    v = cfg_velocity(model, 4.0, cond, uncond)(x, t)
    assert calls == [4]  # one batched call for both branches
    v_c, v_u = _model(x, t, cond), _model(x, t, uncond)
    torch.testing.assert_close(v, v_u + 4.0 * (v_c - v_u))
    v2 = cfg_velocity(model, 4.0, cond, uncond, batched=False)(x, t)
    assert calls[1:] == [2, 2]
    torch.testing.assert_close(v, v2)
    torch.testing.assert_close(cfg_velocity(model, 1.0, cond, uncond)(x, t), v_c)  # scale 1 = no guidance


def test_cfg_image_guidance_drops_conditioning_frames():
    g = torch.Generator().manual_seed(4)
    B, C, T = 2, 3, 4
    x1, x_cond = torch.randn(B, C, T, generator=g), torch.randn(B, C, T, generator=g)
    mask = torch.tensor([True, False, False, False]).view(1, 1, T)
    cond, uncond = torch.tensor([2.0, 3.0]), torch.tensor([1.0, 1.0])
    seen = []

    def model(x, t, ctx):
        seen.append((x.clone(), t.clone()))
        return _model(x, t, ctx)

    ts = timesteps(3)
    text_only = SAMPLERS["euler"](cfg_velocity(_model, 3.0, cond, uncond), x1, ts, x_cond=x_cond, cond_mask=mask,
                                  progress=False)
    fn = cfg_velocity(model, 3.0, cond, uncond, image_guidance_scale=1.0, x_cond=x_cond, cond_mask=mask,
                      generator=torch.Generator().manual_seed(0))
    same = SAMPLERS["euler"](fn, x1, ts, x_cond=x_cond, cond_mask=mask, progress=False)
    torch.testing.assert_close(same, text_only)  # image scale 1 = plain text CFG
    x_all, t_all = seen[0]
    assert x_all.shape[0] == 3 * B
    dropped_x, dropped_t = x_all[2 * B:], t_all[2 * B:]
    assert bool((dropped_t == 1.0).all())  # first step: dropped frames are noised at t = 1, not 0
    assert bool((t_all[:2 * B, :, 0] == 0).all())
    assert not torch.allclose(dropped_x[..., 0], x_cond[..., 0])
    fn2 = cfg_velocity(_model, 3.0, cond, uncond, image_guidance_scale=2.0, x_cond=x_cond, cond_mask=mask)
    more = SAMPLERS["euler"](fn2, x1, ts, x_cond=x_cond, cond_mask=mask, progress=False)
    assert not torch.allclose(more, text_only)
    with pytest.raises(ValueError, match="needs x_cond"):
        cfg_velocity(_model, 3.0, cond, uncond, image_guidance_scale=2.0)


@pytest.mark.parametrize("name", ["euler", "heun", "midpoint", "shortcut"])
def test_per_frame_noise_levels_are_a_schedule_not_a_loop(name):
    """A rolling schedule ([S, 1, 1, n]: later frames noisier, a finished frame held at 0) through the same
    sampler: on the straight-line field v = (x - x0) / t every frame lands on x0 when its own schedule reaches 0,
    a frame whose schedule stays at 0 never moves, and one schedule for all frames gives what [S] gives."""
    torch.manual_seed(0)
    x0 = torch.randn(2, 3, 4, 5, 5, dtype=torch.float64)  # [B, C, n, h, w]
    x1 = torch.randn_like(x0)
    field = lambda x, t, **_: (x - x0) / t.clamp_min(1e-12)  # noqa: E731
    # frame 0 finished (0 throughout), frames 1..3 start at rising levels and all reach 0 at the last step
    ts = torch.tensor([[0.0, 0.4, 0.7, 1.0], [0.0, 0.2, 0.45, 0.7], [0.0, 0.0, 0.2, 0.4], [0.0, 0.0, 0.0, 0.0]],
                      dtype=torch.float64)[:, None, None, :]  # [S=4, 1, 1, n=4]
    start = x1.clone()
    start[:, :, 0] = x0[:, :, 0]  # a finished frame holds its clean value
    out = SAMPLERS[name](field, start, ts, progress=False)
    assert torch.allclose(out, x0, atol=1e-9)
    assert torch.equal(out[:, :, 0], x0[:, :, 0])
    shared = timesteps(5, 2.0).double()
    same = SAMPLERS[name](field, x1, shared[:, None, None, None].expand(-1, 1, 1, 4), progress=False)
    assert torch.allclose(same, SAMPLERS[name](field, x1, shared, progress=False), atol=1e-12)


def test_per_frame_schedules_are_checked():
    x = torch.zeros(1, 2, 3, 4, 4)
    with pytest.raises(ValueError, match="never rise"):
        SAMPLERS["euler"](lambda x, t, **_: x, x, torch.tensor([[0.5, 0.5, 0.5], [0.6, 0.2, 0.0]])[:, None, None], progress=False)
    with pytest.raises(ValueError, match="one schedule for every position"):
        SAMPLERS["dpm++2m"](lambda x, t, **_: x, x, torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])[:, None, None], progress=False)
