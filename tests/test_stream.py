"""Streaming (pipeline/stream.py): a rolling schedule through the one rollout. Frames come out as each latent frame
finishes, decoded by one causal decoder across windows (the same frames as decoding the whole video at once);
the window stays the same size however long the video runs; a stopped stream leaves a playable file."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from chronotope.pipeline import VideoPipeline
from chronotope.pipeline.modes import MODES as PLANS
from chronotope.pipeline.prepare import prepare
from chronotope.pipeline.pipeline import CALL_DEFAULTS
from chronotope.pipeline.rollout import roll
from chronotope.pipeline.stream import Rolling
from chronotope.video import read_video

KW = dict(num_inference_steps=8, seed=0, progress=False)


@pytest.fixture(scope="module")
def pipe() -> VideoPipeline:
    torch.set_num_threads(1)
    return VideoPipeline.from_presets("debug", "debug", defaults=dict(height=32, width=32, num_frames=9))


def test_a_stream_emits_frames_as_they_finish_the_same_as_the_whole_video(pipe, tmp_path):
    out = pipe("a red circle moves left", mode="stream", num_frames=21, **KW)
    frames = out.frames[0]
    assert frames.shape == (21, 32, 32, 3) and out.params["output_frames"] == 21
    assert out.latents.shape[2] == 6 and not out.cond_mask.any()  # (21 - 1) / 4 + 1 latent frames, none given
    # one causal decoder across windows: the frames of decoding the video a latent frame at a time, and within a
    # level of decoding it in one call (the same convolutions over other chunk lengths round differently)
    assert np.array_equal(np.concatenate(list(pipe.iter_frames(out.latents, 1)), axis=1)[0], frames)
    assert np.abs(pipe.decode(out.latents)[0].astype(int) - frames.astype(int)).max() <= 1
    chunks = list(pipe.stream("a red circle moves left", num_frames=21, output_path=str(tmp_path / "s.mp4"), **KW))
    assert [len(c) for c in chunks] == [1, 4, 4, 4, 4, 4] and np.array_equal(np.concatenate(chunks), frames)
    assert read_video(str(tmp_path / "s.mp4"))[0].shape == (21, 32, 32, 3)


def test_the_first_frame_leaves_after_one_frames_steps_and_the_window_stays_bounded(pipe):
    rolling = Rolling(8)
    job = prepare(pipe, {**CALL_DEFAULTS, "prompt": "a red circle", "mode": "stream", "num_frames": 61, **KW})
    calls, first, sizes = 0, None, []
    for w, z, parts in roll(pipe, job.planner, job.run):
        calls += 1
        sizes.append(z.shape[2])
        if first is None and parts[0]:
            first = calls
    n = (61 - 1) // 4 + 1
    assert first == rolling.every * rolling.active  # the first latent frame has gone down every level
    assert calls == rolling.calls(n) and max(sizes) == rolling.active + rolling.context()  # flat in the length
    assert PLANS["stream"].streams


def test_a_stopped_stream_keeps_a_playable_file_of_what_was_made(pipe, tmp_path):
    path = tmp_path / "stopped.mp4"
    stream = pipe.stream("a red circle", num_frames=41, output_path=str(path), **KW)
    made = [next(stream) for _ in range(3)]
    stream.close()  # as a consumer that stops, or Ctrl-C
    frames, _ = read_video(str(path))
    assert len(frames) == sum(len(c) for c in made) == 9


def test_stream_refuses_what_it_cannot_do(pipe):
    with pytest.raises(ValueError, match="one schedule for every position"):
        pipe("a red circle", mode="stream", num_frames=9, sampler="dpm++2m", **KW)
    with pytest.raises(ValueError, match="one prompt"):
        next(pipe.stream(["a", "b"]))
    with pytest.raises(ValueError, match="stream takes"):
        next(pipe.stream("a red circle", mode="long"))
    with pytest.raises(ValueError, match="does not use image"):
        next(pipe.stream("a red circle", image=np.zeros((32, 32, 3), np.uint8)))


def test_a_timeline_changes_the_prompt_at_its_frames_and_keeps_the_characters(pipe):
    board = [{"prompt": "a large red circle moves left", "num_frames": 9},
             {"prompt": "the red circle moves right", "num_frames": 13}]
    out = pipe(mode="stream", storyboard=board, **KW)
    assert out.frames[0].shape[0] == 9 + 13 - 1 and [t["start"] for t in out.params["timeline"]] == [0, 8]
    second = out.params["timeline"][1]["expanded_prompt"]
    assert "large red circle" in second and "right" in second  # the character as the first shot gave it
    one = pipe("a large red circle moves left", mode="stream", num_frames=21, **KW)
    assert not np.array_equal(one.frames[0], out.frames[0])  # the later frames follow the second prompt
    with pytest.raises(ValueError, match="a timeline sets the prompts"):
        pipe("a red circle", mode="stream", storyboard=board, **KW)


def test_the_stream_decoder_keeps_no_graph_so_its_memory_stays_flat(pipe):
    """Its causal cache carries each conv's last frames from push to push; built with autograd on, each of them
    would hold the graph of every frame before it (memory growing with the video)."""
    from chronotope.pipeline.rollout import StreamDecoder

    decoder = StreamDecoder(pipe, 4, 4)
    with torch.enable_grad():
        for _ in range(3):
            decoder.push(torch.randn(1, 4, 1, 4, 4))
    caches = decoder.frames.gi_frame.f_locals["caches"]  # decode_iter's caches, per tile
    kept = [v for cache in caches.values() for v in cache.values() if torch.is_tensor(v)]
    assert kept and all(v.grad_fn is None and not v.requires_grad for v in kept)
