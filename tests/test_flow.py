"""Rectified-flow objective: path, conversions, t density, shift, conditioning masks, loss, caption dropout."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from chronotope.diffusion import flow


def test_interpolate_endpoints_and_per_token_t():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 3, 5, 4, 4, generator=g), torch.randn(2, 3, 5, 4, 4, generator=g)
    assert torch.equal(flow.interpolate(x0, eps, 0.0), x0)
    assert torch.equal(flow.interpolate(x0, eps, 1.0), eps)
    t = torch.tensor([0.25, 0.75])  # per sample, leading-aligned
    xt = flow.interpolate(x0, eps, t)
    torch.testing.assert_close(xt[1], 0.25 * x0[1] + 0.75 * eps[1])
    tok = torch.randn(7, 8, generator=g)  # packed tokens [L, D] with per-token t [L]
    tt = torch.rand(7, generator=g)
    torch.testing.assert_close(flow.interpolate(tok, tok * 0, tt), tok * (1 - tt)[:, None])
    with pytest.raises(ValueError, match="leading dims"):
        flow.interpolate(x0, eps, torch.rand(3))


def test_conversions_round_trip():
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(3, 16, generator=g, dtype=torch.float64), torch.randn(3, 16, generator=g, dtype=torch.float64)
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    xt, v = flow.interpolate(x0, eps, t), flow.velocity_target(x0, eps)
    torch.testing.assert_close(flow.x0_from_velocity(xt, v, t), x0)
    torch.testing.assert_close(flow.noise_from_velocity(xt, v, t), eps)
    torch.testing.assert_close(flow.velocity_from_x0(xt, x0, t), v)
    torch.testing.assert_close(flow.velocity_from_noise(xt, eps, t), v)
    # v is the time derivative of the path
    h = 1e-6
    dxdt = (flow.interpolate(x0, eps, t + h) - flow.interpolate(x0, eps, t - h)) / (2 * h)
    torch.testing.assert_close(dxdt, v)


@settings(max_examples=50, deadline=None)
@given(shift=st.floats(0.2, 8.0), a=st.floats(0.0, 1.0), b=st.floats(0.0, 1.0))
def test_apply_shift_monotone_fixes_endpoints(shift, a, b):
    t = torch.tensor([0.0, min(a, b), max(a, b), 1.0], dtype=torch.float64)
    s = flow.apply_shift(t, shift)
    assert s[0] == 0 and abs(float(s[3]) - 1) < 1e-12
    assert s[1] <= s[2] + 1e-12
    if shift > 1:  # more noise: t moves up
        assert bool((s >= t - 1e-12).all())


def test_apply_shift_identity_and_snr_scaling():
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    torch.testing.assert_close(flow.apply_shift(t, 1.0), t)
    s = flow.apply_shift(t, 3.0)
    torch.testing.assert_close(s / (1 - s), 3.0 * t / (1 - t))  # noise-to-signal ratio scaled by shift
    per_sample = flow.apply_shift(torch.full((2, 4), 0.5), torch.tensor([1.0, 3.0]))
    assert per_sample[0, 0] == 0.5 and abs(float(per_sample[1, 0]) - 0.75) < 1e-6
    with pytest.raises(ValueError):
        flow.apply_shift(t, 0.0)


def test_shift_for_tokens_grows_and_clamps():
    counts = [1, 256, 512, 1024, 2048, 4096, 100_000]
    shifts = [flow.shift_for_tokens(n) for n in counts]
    assert shifts[0] == pytest.approx(1.0) and shifts[1] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(shifts[1:6], shifts[2:6]))
    assert shifts[5] == pytest.approx(3.0) and shifts[6] == pytest.approx(3.0)
    as_tensor = flow.shift_for_tokens(torch.tensor(counts))
    torch.testing.assert_close(as_tensor, torch.tensor(shifts, dtype=torch.float32))
    with pytest.raises(ValueError):
        flow.shift_for_tokens(10, base_tokens=100, max_tokens=50)
    # a model's time_shift scales the whole rule, in training and sampling alike
    assert flow.shift_for_tokens(1024, scale=3.0) == pytest.approx(3.0 * shifts[3])
    torch.testing.assert_close(flow.shift_for_tokens(torch.tensor(counts), scale=2.0), 2.0 * as_tensor)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="scale"):
            flow.shift_for_tokens(10, scale=bad)


def test_sample_t_logit_normal_median_and_range():
    g = torch.Generator().manual_seed(0)
    t = flow.sample_t(20_000, g, mean=0.0, std=1.0)
    assert t.shape == (20_000,) and bool(((t > 0) & (t < 1)).all())
    assert abs(float(t.median()) - 0.5) < 0.02
    t2 = flow.sample_t(20_000, torch.Generator().manual_seed(0), mean=1.0, std=0.5)
    assert abs(float(t2.median()) - 1 / (1 + math.exp(-1.0))) < 0.02
    # shift moves the median like apply_shift moves a point
    t3 = flow.sample_t(20_000, torch.Generator().manual_seed(0), shift=3.0)
    assert abs(float(t3.median()) - 0.75) < 0.02
    # same seed, same draws
    assert torch.equal(flow.sample_t(8, torch.Generator().manual_seed(5)), flow.sample_t(8, torch.Generator().manual_seed(5)))
    with pytest.raises(ValueError):
        flow.sample_t(4, std=0.0)


def test_timesteps_schedule():
    ts = flow.timesteps(10)
    assert ts.shape == (11,) and ts[0] == 1 and ts[-1] == 0
    torch.testing.assert_close(ts, torch.linspace(1, 0, 11))
    shifted = flow.timesteps(10, shift=3.0)
    assert shifted[0] == 1 and shifted[-1] == 0 and bool((shifted[1:] < shifted[:-1]).all())
    assert bool((shifted[1:-1] > ts[1:-1]).all())  # shifted schedule spends more steps at high noise
    with pytest.raises(ValueError):
        flow.timesteps(0)
    # SDEdit: a schedule that starts at `start` with the shifted schedule's shape; start = 1 is the full one
    for shift in (1.0, 3.0):
        part = flow.timesteps(4, shift=shift, start=0.6)
        assert part[0] == 0.6 and part[-1] == 0 and bool((part[1:] < part[:-1]).all())
        assert torch.equal(flow.timesteps(10, shift=shift, start=1.0), flow.timesteps(10, shift=shift))
    u = torch.linspace(0.6 / (3.0 - 2.0 * 0.6), 0.0, 5, dtype=torch.float64)  # unshifted times, uniform
    torch.testing.assert_close(flow.timesteps(4, shift=3.0, start=0.6)[1:], flow.apply_shift(u, 3.0)[1:].float())
    with pytest.raises(ValueError, match="strength"):
        flow.timesteps(4, start=0.0)


def test_make_example_keeps_cond_clean_and_flow_loss_ignores_masked_tokens():
    g = torch.Generator().manual_seed(2)
    x0, eps = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    t = torch.full((6,), 0.7)
    cond = torch.tensor([True, False, False, False, False, True])
    drop = torch.tensor([False, False, True, False, False, False])
    ex = flow.make_example(x0, eps, t, cond, drop)
    assert torch.equal(ex.x_t[cond], x0[cond]) and bool((ex.t[cond] == 0).all())
    torch.testing.assert_close(ex.x_t[1], 0.3 * x0[1] + 0.7 * eps[1])
    assert ex.loss_mask.tolist() == [False, True, False, True, True, False]

    pred = torch.randn(6, 4, generator=g)
    loss = flow.flow_loss(pred, x0, eps, ex.loss_mask)
    manual = (pred - (eps - x0))[ex.loss_mask].square().mean()
    torch.testing.assert_close(loss, manual)
    garbage = pred.clone()
    garbage[~ex.loss_mask] = 1e6  # masked tokens may hold anything
    torch.testing.assert_close(flow.flow_loss(garbage, x0, eps, ex.loss_mask), loss)
    garbage[1] += 1.0
    assert flow.flow_loss(garbage, x0, eps, ex.loss_mask) > loss
    # no valid token: zero, finite, differentiable
    p = pred.clone().requires_grad_(True)
    zero = flow.flow_loss(p, x0, eps, torch.zeros(6, dtype=torch.bool))
    zero.backward()
    assert float(zero.detach()) == 0.0 and torch.isfinite(p.grad).all()
    # a perfect prediction has zero loss
    assert float(flow.flow_loss(eps - x0, x0, eps)) == 0.0


def test_drop_captions():
    prompts = [f"prompt {i}" for i in range(2000)]
    assert flow.drop_captions(prompts, 0.0) == prompts
    assert flow.drop_captions(prompts, 1.0) == [""] * 2000
    out = flow.drop_captions(prompts, 0.1, torch.Generator().manual_seed(0))
    frac = sum(p == "" for p in out) / len(out)
    assert 0.07 < frac < 0.13
    assert all(o in ("", p) for o, p in zip(out, prompts))
    assert out == flow.drop_captions(prompts, 0.1, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError):
        flow.drop_captions(prompts, 1.5)


def test_cond_masks_never_on_images_and_cover_every_mode():
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        assert not flow.sample_cond_mask(1, g).any()
    for mode in flow.COND_MODES:
        assert not flow.cond_mask_for_mode(mode, 1, g).any()
    T = 6
    seen: set[tuple[bool, ...]] = set()
    for _ in range(1500):
        m = flow.sample_cond_mask(T, g)
        assert m.shape == (T,) and m.dtype == torch.bool
        assert not m.all(), "at least one frame must remain free to learn from"
        seen.add(tuple(m.tolist()))
    F, Tr = False, True
    assert (F,) * T in seen  # none
    assert (Tr,) + (F,) * (T - 1) in seen  # first
    assert (F,) * (T - 1) + (Tr,) in seen  # last
    assert (Tr,) + (F,) * (T - 2) + (Tr,) in seen  # first and last
    assert (Tr, Tr, Tr) + (F,) * (T - 3) in seen  # head span
    assert (F,) * (T - 2) + (Tr, Tr) in seen  # tail span
    assert (Tr, F, Tr, F, F, F) in seen  # random frames (not a span, not first/last)
    # every mode is drawn with about its default probability
    counts = {m: 0 for m in flow.COND_MODES}
    for _ in range(4000):
        counts[flow.sample_cond_mode(g)] += 1
    for mode, p in flow.DEFAULT_COND_PROBS.items():
        assert abs(counts[mode] / 4000 - p) < 0.03, (mode, counts[mode])


def test_span_mask_is_the_vocabulary_generation_plans_use():
    F, Tr = False, True
    assert flow.span_mask("none", 4).tolist() == [F, F, F, F]
    assert flow.span_mask("first", 1).tolist() == [Tr]  # i2v of one frame: the image itself
    assert flow.span_mask("last", 3).tolist() == [F, F, Tr]
    assert flow.span_mask("head", 5, 2).tolist() == [Tr, Tr, F, F, F]
    assert flow.span_mask("tail", 5, 2).tolist() == [F, F, F, Tr, Tr]
    assert flow.span_mask("first_last", 6, 2).tolist() == [Tr, Tr, F, F, Tr, Tr]
    with pytest.raises(ValueError, match="no fixed frames"):
        flow.span_mask("random", 4)
    # training's fixed modes are the same masks
    for mode in ("none", "first", "last", "first_last"):
        assert torch.equal(flow.cond_mask_for_mode(mode, 5), flow.span_mask(mode, 5))


def test_cond_mask_modes_exact_and_validation():
    g = torch.Generator().manual_seed(3)
    assert flow.cond_mask_for_mode("first_last", 4).tolist() == [True, False, False, True]
    assert flow.cond_mask_for_mode("first_last", 2).tolist() == [True, False]  # would cover all: falls back
    head = flow.cond_mask_for_mode("head", 5, g)
    k = int(head.sum())
    assert 1 <= k <= 4 and head[:k].all() and not head[k:].any()
    only_first = flow.sample_cond_mask(5, g, probs={"first": 1.0})
    assert only_first.tolist() == [True, False, False, False, False]
    with pytest.raises(ValueError, match="unknown conditioning mode"):
        flow.sample_cond_mask(5, g, probs={"sideways": 1.0})
    with pytest.raises(ValueError):
        flow.sample_cond_mask(5, g, probs={"first": 0.0})
    with pytest.raises(ValueError):
        flow.cond_mask_for_mode("first", 0)


def test_cond_probs_option_parses_and_names_the_valid_modes():
    import argparse

    from chronotope.cli.options import cond_probs

    assert cond_probs("none=0.2, first=0.8") == {"none": 0.2, "first": 0.8}
    for bad, why in (("first", "MODE=P"), ("first=x", "MODE=P"), ("fist=1", "valid: none, first"),
                     ("first=-1", ">= 0"), ("first=0", "positive sum")):
        with pytest.raises(argparse.ArgumentTypeError, match=why):
            cond_probs(bad)
