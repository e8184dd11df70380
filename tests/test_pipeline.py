"""VideoPipeline and `chronotope generate`: every mode end to end on a random-weight debug pipeline (CPU, tiny).

Given frames must survive bitwise into the output latents (the sampler keeps t = 0 tokens clean), the same
seed must give the same video, and bad requests must fail before anything is written.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from chronotope.cli import main
from chronotope.pipeline import ASSETS, VideoPipeline, default_model_dir, modes
from chronotope.video import VideoReadError, read_video

KW = dict(height=32, width=32, num_inference_steps=2, guidance_scale=2.0, progress=False)


@pytest.fixture(scope="module")
def pipe() -> VideoPipeline:
    torch.set_num_threads(1)
    return VideoPipeline.from_presets("debug", "debug", defaults=dict(height=32, width=32, num_frames=5))


def _frames(n: int, seed: int, h: int = 32, w: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def test_t2v_seed_text_and_batch(pipe):
    a = pipe("a red circle", num_frames=5, seed=0, **KW)
    assert a.mode == "t2v" and a.frames[0].shape == (5, 32, 32, 3) and a.frames[0].dtype == np.uint8
    assert tuple(a.latents.shape) == (1, 4, 2, 4, 4)
    assert a.prompts[0] != "a red circle"  # a World prompt with open attributes is expanded
    again = pipe("a red circle", num_frames=5, seed=0, **KW)
    assert np.array_equal(a.frames[0], again.frames[0]) and torch.equal(a.latents, again.latents)
    other_seed = pipe("a red circle", num_frames=5, seed=1, **KW)
    assert not torch.equal(a.latents, other_seed.latents)
    other_text = pipe("a blue square falls", num_frames=5, seed=0, expand_prompt=False, **KW)
    assert not torch.equal(a.latents, other_text.latents)  # the text reaches the DiT
    batch = pipe(["a red circle", "a blue square"], num_frames=5, seed=0, **KW)
    assert len(batch.frames) == 2 and tuple(batch.latents.shape) == (2, 4, 2, 4, 4)


def test_t2i_one_frame(pipe):
    out = pipe("a green triangle", num_frames=1, seed=0, **KW)
    assert out.mode == "t2i" and out.frames[0].shape == (1, 32, 32, 3)


@pytest.mark.parametrize("position", ["first", "last"])
def test_i2v_keeps_image_latent_exactly(pipe, position):
    image = _frames(1, 3, 40, 48)[0]  # another size: resized and center-cropped to 32x32
    out = pipe("a red circle", image=image, image_position=position, num_frames=9, seed=0, sampler="heun", **KW)
    assert out.mode == "i2v" and out.frames[0].shape == (9, 32, 32, 3) and out.notes
    from chronotope.pipeline.resolve import fit_frames

    img = fit_frames(pipe, image[None], 32, 32, "image", [])  # the conditioning image is the fitted one
    if position == "first":
        want, where = pipe.encode_video(img), slice(0, 1)
    else:
        want, where = pipe.encode_video(np.repeat(img, 5, axis=0))[:, 1:], slice(2, 3)
    assert torch.equal(out.latents[0][:, where], want)
    assert out.cond_mask[0].tolist() == ([True, False, False] if position == "first" else [False, False, True])
    assert not torch.equal(out.latents[0][:, 1], want[:, 0])  # the free frames were generated


def test_extend_forward_and_backward(pipe):
    video = _frames(9, 4)
    fwd = pipe("a red circle", video=video, num_frames=9, cond_latent_frames=2, seed=0, **KW)
    assert fwd.mode == "extend" and fwd.frames[0].shape == (13, 32, 32, 3)  # 9 given + 4 new
    assert np.array_equal(fwd.frames[0][:9], video)  # the given video is kept as is
    assert torch.equal(fwd.latents[0][:, :2], pipe.encode_video(video[-5:]))  # its last 5 frames, bitwise
    back = pipe("a red circle", video=video, num_frames=13, direction="backward", cond_latent_frames=2, seed=0, **KW)
    assert back.frames[0].shape == (13, 32, 32, 3) and np.array_equal(back.frames[0][-9:], video)
    assert torch.equal(back.latents[0][:, 2:], pipe.encode_video(video[:9])[:, 1:])
    assert back.cond_mask[0].tolist() == [False, False, True, True]


def test_connect_two_videos(pipe):
    a, b = _frames(5, 5), _frames(5, 6)
    out = pipe("a red circle", video=a, video_end=b, num_frames=9, cond_latent_frames=1, seed=0, **KW)
    assert out.mode == "connect" and out.frames[0].shape == (5 + 3 + 5, 32, 32, 3)
    assert np.array_equal(out.frames[0][:5], a) and np.array_equal(out.frames[0][-5:], b)
    assert torch.equal(out.latents[0][:, :1], pipe.encode_video(a[-1:]))
    assert torch.equal(out.latents[0][:, 2:], pipe.encode_video(b)[:, 1:])


def test_loop(pipe):
    out = pipe("a red circle", mode="loop", num_frames=8, seed=0, **KW)
    assert out.frames[0].shape == (8, 32, 32, 3)
    assert out.cond_mask[0].tolist() == [True, False, False, True]
    closure = out.params["loop_closure"][0]
    assert set(closure) == {"wrap_diff", "mean_step_diff", "ratio"} and closure["mean_step_diff"] > 0
    with pytest.raises(ValueError, match="multiple of 4.*8 or 12"):
        pipe("a red circle", mode="loop", num_frames=9, **KW)


def test_loop_closure_metric():
    still = np.zeros((4, 8, 8, 3), np.uint8)
    ramp = np.stack([still[0] + 10 * i for i in range(4)])  # steps of 10, wrap of 30
    assert modes.loop_closure(ramp)["ratio"] == pytest.approx(3.0)
    cycle = np.stack([still[0] + v for v in (0, 10, 20, 10)])  # steps 10, wrap 10
    assert modes.loop_closure(cycle)["ratio"] == pytest.approx(1.0)


def test_edit_strength(pipe):
    video = _frames(5, 7)
    z0 = pipe.encode_video(video)
    light = pipe("a red circle", video=video, strength=0.1, seed=0, **KW)
    heavy = pipe("a red circle", video=video, strength=1.0, seed=0, **KW)
    assert light.mode == "edit" and light.frames[0].shape == (5, 32, 32, 3)
    assert (light.latents[0] - z0).abs().mean() < 0.5 * (heavy.latents[0] - z0).abs().mean()


def test_long_video_streams_and_matches_first_window(pipe, tmp_path):
    one = pipe("a red circle", mode="long", num_frames=5, window_frames=5, seed=0, **KW)
    long = pipe("a red circle", mode="long", num_frames=13, window_frames=5, cond_latent_frames=1, seed=0, **KW)
    assert long.frames[0].shape == (13, 32, 32, 3) and tuple(long.latents.shape) == (1, 4, 4, 4, 4)
    assert np.array_equal(long.frames[0][:5], one.frames[0])  # window 1 is the same generation
    path = str(tmp_path / "long.mp4")
    streamed = pipe("a red circle", mode="long", num_frames=13, window_frames=5, cond_latent_frames=1, seed=0,
                    output_path=path, **KW)
    assert streamed.frames == [] and read_video(path)[0].shape == (13, 32, 32, 3)
    assert [p for p in os.listdir(tmp_path) if p.endswith(".tmp.mp4")] == []


def test_save_load_round_trip(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "model")
    assert json.loads((tmp_path / "model" / "model_index.json").read_text())["text_encoder"] == "debug"
    loaded = VideoPipeline.from_pretrained(tmp_path / "model")
    a = pipe("a red circle", num_frames=5, seed=3, **KW)
    b = loaded("a red circle", num_frames=5, seed=3, **KW)
    assert np.array_equal(a.frames[0], b.frames[0]) and torch.equal(a.latents, b.latents)


def test_bad_requests(pipe, tmp_path):
    with pytest.raises(ValueError, match="4k\\+1.*nearest valid: 5 or 9"):
        pipe("x", num_frames=6, **KW)
    with pytest.raises(ValueError, match="multiple of 16.*32 or 48"):
        pipe("x", num_frames=5, height=40, width=32, progress=False)
    with pytest.raises(ValueError, match="'i2v' needs image.*missing"):
        pipe("x", mode="i2v", **KW)
    with pytest.raises(ValueError, match="does not use image"):
        pipe("x", mode="t2v", image=_frames(1, 0)[0], **KW)
    with pytest.raises(ValueError, match="nearest valid: 5 frames"):
        pipe("x", duration=1.0, fps=8, height=32, width=32, progress=False)
    with pytest.raises(ValueError, match="cond_latent_frames"):
        pipe("x", video=_frames(5, 0), num_frames=5, cond_latent_frames=2, **KW)
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"this is not a video")
    with pytest.raises(VideoReadError):
        pipe("x", image=str(bad), **KW)


def test_with_defaults_shares_the_models_and_leaves_the_pipeline_as_it_was(pipe):
    other = pipe.with_defaults(time_shift=2.5)
    assert other.dit is pipe.dit and other.vae is pipe.vae and other.text_encoder is pipe.text_encoder
    assert other.defaults == {**pipe.defaults, "time_shift": 2.5} and pipe.defaults["time_shift"] != 2.5


def test_default_model_dir_says_pass_model(monkeypatch, tmp_path):
    import chronotope.pipeline as pipeline

    monkeypatch.setattr(pipeline, "ASSETS", tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="--model DIR"):
        default_model_dir()


def test_cli_writes_video_and_sidecar_and_fails_cleanly(pipe, tmp_path, capsys):
    model = tmp_path / "model"
    pipe.save_pretrained(model)
    out = tmp_path / "clip"
    args = ["generate", "a red circle", "--model", str(model), "--steps", "2", "--seed", "5", "--out", str(out),
            "--no-progress", "--height", "32", "--width", "32"]
    assert main(args) == 0
    frames, fps = read_video(tmp_path / "clip.mp4")
    assert frames.shape == (5, 32, 32, 3) and fps == 8.0
    side = json.loads((tmp_path / "clip.json").read_text())
    assert side["seed"] == 5 and side["model"] == str(model) and side["prompt"] == "a red circle"
    assert side["expanded_prompt"] != "a red circle" and side["num_inference_steps"] == 2 and side["mode"] == "t2v"

    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG broken")
    failed = tmp_path / "failed"
    assert main(["generate", "x", "--model", str(model), "--image", str(bad), "--out", str(failed)]) == 2
    assert main(["generate", "x", "--model", str(model), "--num-frames", "6", "--out", str(failed)]) == 2
    assert "nearest valid" in capsys.readouterr().err
    assert not [p for p in os.listdir(tmp_path) if p.startswith("failed") or ".tmp" in p]

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "a blue square", "num_frames": 1, "seed": 2}) + "\n")
    assert main(["generate", "--prompts", str(prompts), "--model", str(model), "--steps", "1",
                 "--out", str(tmp_path / "batch"), "--no-progress"]) == 0
    assert sorted(os.listdir(tmp_path / "batch")) == ["0000.json", "0000.png"]


# --- costs said before they are paid, changes and out-of-domain inputs said as they happen ---------------


def test_cost_estimate_counts_the_work_each_mode_does(pipe, monkeypatch):
    """The estimate sees what runs: an edit's strength x steps, every window of a long video, two model calls per
    heun step, and the frames given images and videos cost to encode."""
    import chronotope.pipeline.prepare as pipeline_module

    seen = []
    real = pipeline_module.estimate_cost
    monkeypatch.setattr(pipeline_module, "estimate_cost", lambda *a, **k: seen.append((a, k)) or real(*a, **k))
    kw = {**KW, "num_inference_steps": 10}
    pipe("a red circle", video=_frames(9, 1), strength=0.3, seed=0, **kw)
    pipe("a red circle", mode="long", num_frames=13, window_frames=5, cond_latent_frames=1, seed=0, **kw)
    pipe("a red circle", num_frames=5, seed=0, sampler="heun", **kw)
    (edit, edit_k), (long, long_k), (heun, heun_k) = seen
    assert edit[3] == 3 and edit_k["encode_frames"] >= 9  # ceil(10 x 0.3) steps; the video is encoded
    assert long[6] == 3 and long[5] == 5  # 3 windows of 5 frames, not 3 x the 13-frame total
    assert heun_k["sampler"] == "heun"
    import chronotope.request as request

    monkeypatch.setattr(request, "cpu_load", lambda: (0.0, 2))  # an idle machine: the same wait for both
    one = real(pipe, 1, (4, 9, 16, 16), 10, 2, 1, threads=1)  # sampling 576 tokens, decoding one frame
    two = real(pipe, 1, (4, 9, 16, 16), 10, 2, 1, sampler="heun", threads=1)
    assert 1.7 < two.seconds / one.seconds <= 1.9  # 19 model calls against 10


@pytest.mark.skipif(not (ASSETS / "model_index.json").is_file(), reason="no model shipped")
def test_long_video_on_the_shipped_model_says_it_takes_minutes(monkeypatch):
    """`generate --mode long --num-frames 97` ran 204 s without the note; its estimate is now calibrated on the
    shipped model's measured costs (0.21 s of CPU per 2 x 320-token DiT call, one thread: README), and a
    busy machine's wait for a core is counted."""
    import chronotope.request as request
    from chronotope.request import LONG_SECONDS, estimate_cost

    pipe = VideoPipeline.from_pretrained(default_model_dir())
    monkeypatch.setattr(request, "cpu_load", lambda: (0.0, 2))  # idle: 56 s of CPU measured for this video
    long = estimate_cost(pipe, 1, (16, 5, 8, 8), 30, 2, 17, 8, encode_frames=7 * 5, threads=1)  # 8 windows
    assert 30 < long.seconds < 2 * 56
    clip = estimate_cost(pipe, 1, (16, 5, 8, 8), 30, 2, 17, threads=1)  # one 17-frame clip: seconds
    assert 3 < clip.seconds < 20
    # beside a `nice -10` training job (load 5.8) a thread of ours got 1/8 of a core: 454 s of wall time measured
    monkeypatch.setattr(request, "cpu_load", lambda: (5.8, 2))
    monkeypatch.setattr(request, "core_wait", lambda: 7.8)  # what its busy loop measured then
    busy = estimate_cost(pipe, 1, (16, 5, 8, 8), 30, 2, 17, 8, encode_frames=7 * 5, threads=1)
    assert LONG_SECONDS < 454 / 2 < busy.seconds < 2 * 454 and busy.seconds == pytest.approx(7.8 * long.seconds)


def test_busy_cpu_note_only_when_threads_are_left_to_torch(monkeypatch):
    import chronotope.request as request

    monkeypatch.setattr(request, "cpu_load", lambda: (3.0, 2))  # another job holds the cores
    monkeypatch.setattr(request, "core_wait", lambda: 2.0)  # a thread of ours waits as long as it runs
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert "--threads 1" in request.busy_cpu_note(threads_given=False)
    assert request.busy_cpu_note(threads_given=True) is None
    assert request.thread_slowdown(1) == 2.0
    assert request.thread_slowdown() == request.OVERSUBSCRIBED * 2.0  # two stall each other on top
    monkeypatch.setattr(request, "cpu_load", lambda: (0.1, 2))  # idle: torch's default is right
    monkeypatch.undo()
    monkeypatch.setattr(request, "cpu_load", lambda: (0.1, 2))
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert request.busy_cpu_note(threads_given=False) is None and request.core_wait() == 1.0
    assert request.thread_slowdown() < 1.0


def test_core_wait_measures_the_share_of_a_core_this_process_gets(monkeypatch):
    import time

    import chronotope.request as request

    monkeypatch.setattr(request, "_WAIT", {})
    monkeypatch.setattr(request, "cpu_load", lambda: (5.0, 2))
    clock = iter([0.0, 0.05, 0.25, 0.25])  # wall: the loop ran 0.25 s ...
    monkeypatch.setattr(time, "perf_counter", lambda: next(clock))
    cpu = iter([1.0, 1.05])  # ... while this process ran 0.05 s of it
    monkeypatch.setattr(time, "process_time", lambda: next(cpu))
    assert request.core_wait() == pytest.approx(5.0)
    assert request.core_wait() == pytest.approx(5.0)  # kept for a minute: no second loop (the clocks would run out)


def test_cli_threads_sets_torch_threads_and_notes_a_busy_cpu(pipe, tmp_path, monkeypatch, capsys):
    import chronotope.request as request

    model = tmp_path / "model"
    pipe.save_pretrained(model)
    monkeypatch.setattr(request, "cpu_load", lambda: (3.0, 2))
    base = ["generate", "a red circle", "--model", str(model), "--steps", "1", "--no-progress", "--num-frames", "1"]
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert main(base + ["--out", str(tmp_path / "a")]) == 0
    assert "CPU is busy" in capsys.readouterr().err
    threads = []
    monkeypatch.setattr(torch, "set_num_threads", threads.append)
    assert main(base + ["--out", str(tmp_path / "b"), "--threads", "1"]) == 0
    assert threads == [1] and "CPU is busy" not in capsys.readouterr().err
    assert main(base + ["--out", str(tmp_path / "c"), "--threads", "0"]) == 2


def test_long_prompt_truncation_is_noted_without_echoing_it(pipe, capsys):
    from chronotope.text.encoder import TextEncoder

    real = VideoPipeline(pipe.vae, pipe.dit, TextEncoder(), defaults=pipe.defaults)  # MiniLM: 64 tokens
    prompt = "a red circle moves slowly to the left past a tall pillar " * 180  # ~10,000 characters
    out = real(prompt, num_frames=1, seed=0, **KW)
    cut = [n for n in out.notes if "tokens long" in n]
    assert len(cut) == 1 and "reads 64" in cut[0] and "dropped" in cut[0] and len(cut[0]) < 300
    assert all(len(line) < 600 for line in capsys.readouterr().err.splitlines())  # the prompt is never echoed whole
    assert not [n for n in real("a red circle", num_frames=1, seed=0, **KW).notes if "tokens long" in n]


def test_prompt_that_cannot_be_expanded_says_why(pipe):
    prompt = "一只红色的圆圈向左移动 🔴➡️"
    out = pipe(prompt, num_frames=1, seed=0, **KW)
    skipped = [n for n in out.notes if "expansion skipped" in n]
    assert len(skipped) == 1 and "out of its domain" in skipped[0] and out.prompts[0] == prompt
    assert not [n for n in pipe("a red circle", num_frames=1, seed=0, **KW).notes if "expansion" in n]
    assert not [n for n in pipe("一只", num_frames=1, seed=0, expand_prompt=False, **KW).notes if "expansion" in n]


def test_loop_sidecar_tells_the_frames_it_holds(pipe, tmp_path):
    model = tmp_path / "model"
    pipe.save_pretrained(model)
    assert main(["generate", "a red circle", "--model", str(model), "--mode", "loop", "--num-frames", "16", "--gif",
                 "--steps", "1", "--no-progress", "--out", str(tmp_path / "loop")]) == 0
    side = json.loads((tmp_path / "loop.json").read_text())
    assert len(read_video(tmp_path / "loop.gif")[0]) == 16
    assert side["num_frames"] == 16 and side["output_frames"] == 16 and side["window_frames"] == 21


@pytest.mark.skipif(not (ASSETS / "model_index.json").is_file(), reason="no model shipped")
def test_input_out_of_the_models_domain_is_noted(capsys):
    """The shipped World model gives black frames or noise on inputs its VAE cannot code (real footage ~20 dB,
    noise ~10 dB against ~31 dB on World clips): the input's reconstruction PSNR says so before anything runs."""
    from chronotope.vae.domain import domain_note
    from chronotope.world.render import render
    from chronotope.world.scene import sample_scene

    pipe = VideoPipeline.from_pretrained(default_model_dir())
    world = render(sample_scene(3), 64, 64, 5, 8.0).frames  # uint8 [5, 64, 64, 3]
    kw = dict(num_frames=9, num_inference_steps=1, seed=0, progress=False)
    inside = pipe("a red circle", video=world, **kw)
    assert inside.params["input_psnr"]["video"] > 25 and not [n for n in inside.notes if "domain" in n]
    noise = pipe("a red circle", image=_frames(1, 0, 64, 64)[0], **kw)
    outside = [n for n in noise.notes if "out of the model's domain" in n]
    assert noise.params["input_psnr"]["image"] < 15 and len(outside) == 1 and "image" in outside[0]
    assert "out of the model's domain" in capsys.readouterr().err
    assert domain_note(31.0, "x") is None and domain_note(19.8, "the video") is not None
