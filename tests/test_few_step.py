"""Few-step sampling (issue 30): the step embedding, the shortcut sampler, the distillation task and the pipeline
choosing the few-step path from the model folder, every mode, on debug presets (CPU, seconds)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from chronotope.config import DIT_PRESETS, VAE_PRESETS
from chronotope.diffusion.flow import timesteps
from chronotope.diffusion.samplers import FEW_STEPS, shortcut
from chronotope.dit.model import DiT
from chronotope.dit.patches import Sample, pack
from chronotope.pipeline import DebugTextEncoder, VideoPipeline
from chronotope.train.dit_task import TextEmbeddings
from chronotope.train.few_step import FewStepTask, few_step_defaults

FEW = dict(sampler="shortcut", num_inference_steps=4, guidance_scale=5.0)


def _randomised(model: DiT, seed: int = 0) -> DiT:
    """Zero-initialised layers given small random weights, so every input (the step too) reaches the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


def _packed(seed: int = 0, cond_first: bool = False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 3, 4, 4, generator=g)  # [C, T, H, W]
    t = torch.full((3,), 0.7)
    if cond_first:
        t[0] = 0.0
    return pack([Sample(x, timestep=t)], patch=(1, 2, 2)), torch.randn(1, 5, 384, generator=g), torch.ones(1, 5, dtype=torch.bool)


def test_step_embedding_starts_as_the_teacher_and_then_reads_the_step():
    teacher = _randomised(DiT(DIT_PRESETS["debug"]()))
    student = teacher.extended(step_embed=True).eval()
    packed, text, mask = _packed()
    with torch.no_grad():
        v = teacher(packed, text, mask)
        assert torch.equal(student(packed, text, mask, step=0.5), v)  # zero-initialised: the teacher at any d
        _randomised(student, seed=1)
        a, b = student(packed, text, mask, step=0.0), student(packed, text, mask, step=0.5)
        per_token = student(packed, text, mask, step=torch.full((packed.tokens.shape[0],), 0.5))
    assert not torch.allclose(a, b) and torch.allclose(per_token, b, atol=1e-6)
    assert torch.equal(student(packed, text, mask), a)  # no step = d = 0
    with pytest.raises(ValueError, match="already has a step"):
        student.extended(step_embed=True)


def test_clean_tokens_take_no_step():
    student = _randomised(DiT(DIT_PRESETS["debug"]()).extended(step_embed=True))
    packed, text, mask = _packed(cond_first=True)
    given = packed.timestep == 0
    step = torch.where(given, 0.0, 0.25)
    with torch.no_grad():  # the same output whatever step the given tokens are handed: the model zeroes it there
        assert torch.equal(student(packed, text, mask, step=step), student(packed, text, mask, step=0.25))


def test_old_configs_load_without_the_field(tmp_path):
    model = DiT(DIT_PRESETS["debug"]())
    model.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg.pop("step_embed")  # a folder written before issue 30
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert DiT.from_pretrained(tmp_path).config.step_embed is False


def test_shortcut_sampler_with_the_exact_average_velocity_is_exact_in_one_step():
    # data N(mu, s^2) per element: the flow map x_t -> x_r is affine, so its average velocity is known exactly
    mu, s = 0.7, 0.3

    def std(t):
        return torch.sqrt((1 - t) ** 2 * s**2 + t**2)

    def avg(x, t, step):  # (x_t - x_{t-d}) / d along the straight-line coupling's ODE: x_r = mu (1-r) + std(r) z
        z = (x - mu * (1 - t)) / std(t)
        r = t - step
        return (x - (mu * (1 - r) + std(r) * z)) / step

    x1 = torch.randn(1000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for n in FEW_STEPS:
        out = shortcut(avg, x1, timesteps(n, 3.0).double(), progress=False)
        assert torch.allclose(out, mu + s * x1, atol=1e-9), n
    cond = torch.zeros(1000, dtype=torch.bool)
    cond[:10] = True
    out = shortcut(avg, x1, timesteps(2).double(), x_cond=torch.full_like(x1, 9.0), cond_mask=cond, progress=False)
    assert (out[:10] == 9.0).all()  # given positions stay exactly what was given


# --- the pipeline ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def few() -> VideoPipeline:
    torch.set_num_threads(1)
    pipe = VideoPipeline.from_presets("debug", "debug", defaults=dict(height=32, width=32, num_frames=5, **FEW))
    pipe.dit = _randomised(pipe.dit.extended(step_embed=True), seed=2)
    return pipe


def _frames(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


@pytest.mark.parametrize("steps", FEW_STEPS)
def test_every_mode_in_every_step_count(few, steps):
    calls = []
    forward = few.dit.forward
    few.dit.forward = lambda *a, **k: calls.append(k.get("step")) or forward(*a, **k)
    try:
        kw = dict(num_inference_steps=steps, seed=0, progress=False, expand_prompt=False)
        t2v = few("a red circle", num_frames=5, **kw)
        assert t2v.frames[0].shape == (5, 32, 32, 3) and t2v.params["sampler"] == "shortcut"
        assert len(calls) == steps and all(c > 0 for c in calls)  # one DiT evaluation per step, never a CFG pair
        assert few("a red circle", num_frames=1, **kw).frames[0].shape == (1, 32, 32, 3)
        image = _frames(1, 0)
        i2v = few("a red circle", image=image, num_frames=9, **kw)
        z = few.encode_video(image)
        assert torch.equal(i2v.latents[0, :, :1], z)  # the given frame's latent kept bitwise
        video = _frames(9, 1)
        ext = few("a red circle", video=video, **kw)
        assert np.array_equal(ext.frames[0][:9], video)
        con = few("a red circle", video=video, video_end=_frames(9, 2), **kw)
        assert np.array_equal(con.frames[0][:9], video)
        assert few("a red circle", mode="loop", num_frames=8, **kw).frames[0].shape[0] == 8
        assert few("a red circle", mode="long", num_frames=13, window_frames=9, **kw).frames[0].shape[0] == 13
        assert few("a red circle", video=video, strength=0.5, **kw).frames[0].shape == (9, 32, 32, 3)
    finally:
        few.dit.forward = forward


def test_few_step_requests_are_checked(few):
    kw = dict(num_frames=5, seed=0, progress=False)
    with pytest.raises(ValueError, match="1, 2, 4, 8"):
        few("a red circle", num_inference_steps=3, **kw)
    with pytest.raises(ValueError, match="folded"):
        few("a red circle", guidance_scale=7.0, **kw)
    with pytest.raises(ValueError, match="folded"):
        few("a red circle", negative_prompt="a blue square", **kw)
    assert few("a red circle", guidance_scale=5.0, **kw).params["guidance_scale"] == 5.0  # the folded one is fine
    plain = VideoPipeline.from_presets("debug", "debug", defaults=dict(height=32, width=32, num_frames=5))
    with pytest.raises(ValueError, match="few-step DiT"):
        plain("a red circle", sampler="shortcut", num_inference_steps=4, **kw)
    assert plain("a red circle", num_inference_steps=2, **kw).params["sampler"] == "euler"  # the old path


def test_storyboard_takes_the_few_step_path(few):
    board = {"shots": [{"prompt": "a red circle", "num_frames": 5}, {"prompt": "a blue square", "num_frames": 5}]}
    out = few(storyboard=board, seed=0, progress=False, expand_prompt=False)
    assert out.params["sampler"] == "shortcut" and out.params["num_inference_steps"] == 4


def test_generate_cli_reads_the_folder(few, tmp_path):
    from chronotope.cli import main

    folder = tmp_path / "model"
    few.save_pretrained(folder)
    index = json.loads((folder / "model_index.json").read_text())
    assert index["defaults"]["sampler"] == "shortcut"
    out = tmp_path / "a.mp4"
    assert main(["generate", "a red circle", "--model", str(folder), "--steps", "2", "--out", str(out),
                 "--seed", "0", "--no-progress", "--num-frames", "5"]) == 0
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["sampler"] == "shortcut" and side["num_inference_steps"] == 2


# --- the distillation task ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    from chronotope.data.latent_cache import LatentCache, encode_to_cache
    from chronotope.vae.model import CausalVAE
    from chronotope.world.generate import iter_world

    torch.manual_seed(0)
    items = []
    for row, frames in iter_world(4, seed=0, height=32, width=32, num_frames=9):
        items.append({"video": torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 127.5 - 1, "text": row["text"]})
    out = tmp_path_factory.mktemp("cache")
    encode_to_cache(CausalVAE(VAE_PRESETS["debug"]()), items, out, progress=False)
    return LatentCache(out)


def _task(cache, share: float, probs=None) -> tuple[FewStepTask, DiT, DiT]:
    teacher = _randomised(DiT(DIT_PRESETS["debug"]()))
    student = teacher.extended(step_embed=True).train()
    text = TextEmbeddings.build(cache, DebugTextEncoder(), progress=False)
    return FewStepTask(student, cache, text, teacher, shortcut_share=share, token_budget=4096, cond_probs=probs), student, teacher


def test_guidance_target_is_the_teachers_cfg_velocity(cache):
    task, student, teacher = _task(cache, share=0.0, probs={"first": 1.0})
    g = torch.Generator().manual_seed(0)
    packed, _, text, mask = task.make_pack([0, 1, 2, 3], torch.Generator().manual_seed(0))
    goal = task._guided(packed, text, mask)
    with torch.no_grad():
        v_c = teacher(packed, text, mask)
        v_u = teacher(packed, torch.zeros_like(text), torch.zeros_like(mask))
    assert torch.allclose(goal, v_u + 5.0 * (v_c - v_u), atol=1e-5)
    loss, metrics = task.loss(student, [0, 1, 2, 3], g)
    assert metrics["shortcut_packs"] == 0.0 and loss.requires_grad and torch.isfinite(loss)


def test_shortcut_pairs_sit_on_the_samplers_grids(cache):
    task, student, _ = _task(cache, share=1.0, probs={"first": 1.0})
    g = torch.Generator().manual_seed(0)
    t0, t1, t2, finest = task._pairs([0, 1, 2, 3] * 50, g)
    assert (t0 > t1).all() and (t1 > t2).all() and (t2 >= 0).all() and (t0 <= 1).all()
    schedules = [timesteps(n, 1.0) for n in (1, 2, 4, 8, 16)]  # debug clips are below the shift rule's base: 1
    on = lambda x, ts: bool(((ts - x).abs() < 1e-6).any())  # noqa: E731
    for a, b, c in zip(t0.tolist(), t1.tolist(), t2.tolist()):  # a big step of one schedule, halved by the next
        assert any(on(a, ts) and on(c, ts) and on(b, fine) for ts, fine in zip(schedules, schedules[1:] + [timesteps(32, 1.0)]))
    packed, _, text, mask = task.make_pack([0, 1, 2, 3], torch.Generator().manual_seed(1))
    at, step, goal = task._shortcut(student, [0, 1, 2, 3], packed, torch.randn_like(packed.tokens), text, mask, g)
    given = packed.is_cond
    assert given.any() and torch.equal(at.tokens[given], packed.tokens[given])  # given frames stay exactly clean
    assert (at.timestep[given] == 0).all() and (step[given] == 0).all() and (goal[given] == 0).all()
    assert (step[~given] > 0).all() and torch.isfinite(goal).all()
    loss, metrics = task.loss(student, [0, 1, 2, 3], g)
    assert metrics["shortcut_packs"] == 1.0 and torch.isfinite(loss)


def test_self_consistency_of_an_exact_average_velocity_is_zero_loss(cache):
    """A model whose output is the exact average velocity of a straight flow satisfies the target exactly."""
    task, _, _ = _task(cache, share=1.0)

    class Straight(torch.nn.Module):  # a single data point x0 = 0: every velocity, average or not, is x / t
        def forward(self, packed, text, mask, step=None):
            t = packed.timestep.clamp_min(1e-12)[:, None]
            return torch.where(packed.timestep[:, None] > 0, packed.tokens / t, 0.0)

    g = torch.Generator().manual_seed(0)
    packed, target, text, mask = task.make_pack([0, 1, 2, 3], torch.Generator().manual_seed(0))
    at, step, goal = task._shortcut(Straight(), [0, 1, 2, 3], packed, target, text, mask, g)
    assert torch.allclose(Straight()(at, text, mask), goal, atol=1e-4)


def test_defaults_declare_the_sampler():
    assert few_step_defaults(5.0, 0.5) == {"sampler": "shortcut", "num_inference_steps": 4, "guidance_scale": 5.0}
    assert few_step_defaults(5.0, 0.0)["sampler"] == "euler"  # guidance distillation alone: Euler, no CFG


def test_train_dit_few_step_cli_resumes_and_exports_a_few_step_folder(cache, tmp_path):
    from chronotope.cli import main
    from chronotope.vae.model import CausalVAE

    vae_dir = tmp_path / "vae"
    CausalVAE(VAE_PRESETS["debug"]()).save_pretrained(vae_dir)
    meta = json.loads((cache.dir / "cache.json").read_text())
    meta["vae"] = str(vae_dir)
    (cache.dir / "cache.json").write_text(json.dumps(meta))
    teacher = VideoPipeline.from_presets("debug", "debug", defaults={"time_shift": 2.0, "guidance_scale": 3.0})
    teacher.save_pretrained(tmp_path / "teacher")
    run = tmp_path / "run"
    common = ["train", "dit", "--data", str(cache.dir), "--out", str(run), "--text-encoder", "debug", "--few-step",
              "--teacher", str(tmp_path / "teacher"), "--token-budget", "256", "--ckpt-every", "2", "--no-progress",
              "--threads", "1", "--shortcut-share", "0.5"]
    assert main(common + ["--steps", "2"]) == 0
    assert main(common + ["--steps", "4", "--resume"]) == 0
    state = json.loads(next(run.glob("ckpt-*4/trainer_state.json")).read_text())
    assert state["config"]["task"]["few_step"]["guidance"] == 3.0  # the teacher folder's scale, folded in
    assert state["config"]["task"]["time_shift"] == 2.0  # and its shift rule
    index = json.loads((run / "model" / "model_index.json").read_text())["defaults"]
    assert index["sampler"] == "shortcut" and index["guidance_scale"] == 3.0 and index["time_shift"] == 2.0
    pipe = VideoPipeline.from_pretrained(run / "model")
    assert pipe.dit.config.step_embed
    out = pipe("a red circle", num_frames=5, height=32, width=32, seed=0, progress=False, expand_prompt=False)
    assert out.params["sampler"] == "shortcut" and out.params["num_inference_steps"] == 4


def test_world_model_few_step_needs_a_teacher(tmp_path):
    from chronotope.train.world_model import WorldModelRecipe

    with pytest.raises(ValueError, match="--init"):
        WorldModelRecipe(out=str(tmp_path), few_step=True).resolved()
    r = WorldModelRecipe(out=str(tmp_path), few_step=True, init="chronotope/assets/world-model").resolved()
    assert r.pipeline_defaults() == {"time_shift": 3.0, "sampler": "shortcut", "num_inference_steps": 4, "guidance_scale": 5.0}
    assert "few_step" not in WorldModelRecipe(out=str(tmp_path)).fixed()  # runs from before it resume
