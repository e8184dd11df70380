"""Storyboards (issue 28): World storyboards, World-bench's storyboard mode, the storyboard file format and the
pipeline's multi-shot path. Debug models and tiny shapes: seconds."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from chronotope.bench.corrupt import STORYBOARD_CORRUPTIONS, corrupt_storyboard
from chronotope.bench.storyboard import METRICS, detect_cut, frame_changes, score_storyboard
from chronotope.world import parse_prompt
from chronotope.world.storyboard import (characters, cut_frames, render_storyboard, sample_storyboard,
                                         shot_lengths)

# --- World storyboards --------------------------------------------------------------------------------


def test_storyboard_keeps_its_characters_and_changes_the_background_at_every_cut():
    for seed in range(30):
        scenes = sample_storyboard(seed, 3)
        looks = {}
        for sc in scenes:
            for o in sc.objects:
                assert looks.setdefault(o.color, (o.shape, o.size)) == (o.shape, o.size)  # same character
        lead = scenes[0].objects[0].color
        assert all(lead in {o.color for o in sc.objects} for sc in scenes)  # the lead is in every shot
        assert all(a.background != b.background for a, b in zip(scenes, scenes[1:]))
        assert lead in characters([sc.spec for sc in scenes])
    assert sample_storyboard(4, 2)[1].spec == sample_storyboard(4, 2)[1].spec
    with pytest.raises(ValueError, match="2 to 16 shots"):
        sample_storyboard(0, 1)


def test_render_storyboard_cuts_and_captions():
    scenes = sample_storyboard(1, 3)
    out = render_storyboard(scenes, 32, 48, [5, 9, 5], 8.0)
    assert out.frames.shape == (19, 32, 48, 3) and out.cuts == [5, 14] == cut_frames([5, 9, 5])
    for shot, scene in zip(out.shots, scenes):
        assert shot["spec"] == scene.spec and parse_prompt(shot["text"], strict=True) == scene.spec
    with pytest.raises(ValueError, match="at least 5 frames"):
        shot_lengths(0, 2, [1, 17])


def test_world_cli_shots_writes_storyboards_and_their_shots(tmp_path):
    from chronotope.cli import main
    from chronotope.data.manifest import read_manifest

    out = tmp_path / "boards"
    argv = ["world", "--out", str(out), "--num", "3", "--resolution", "32px", "--shots", "2,3", "--num-frames",
            "5,9", "--no-progress"]
    assert main(argv) == 0
    rows = read_manifest(out / "manifest.csv")
    with open(out / "manifest.csv", newline="") as f:
        assert list(csv.DictReader(f).fieldnames)[-1] == "shots"
    assert [len(json.loads(r["shots"])) for r in rows] == [2, 3, 2]
    for r in rows:
        shots = json.loads(r["shots"])
        side = json.loads((out / (r["path"].rsplit("/", 1)[-1].replace(".mp4", ".json"))).read_text())
        assert side["shots"] == shots and side["cuts"] == cut_frames([s["num_frames"] for s in shots])
        assert r["num_frames"] == sum(s["num_frames"] for s in shots) and r["text"].startswith("Shot 1: ")
    assert main(argv) == 0  # resume: the rows come back from the sidecars
    assert read_manifest(out / "manifest.csv") == rows


# --- World-bench storyboard mode ------------------------------------------------------------------------


def _boards(num: int):
    for seed in range(num):
        n = 2 + seed % 3
        scenes, lengths = sample_storyboard(seed, n), shot_lengths(seed, n, [9, 17])
        out = render_storyboard(scenes, 48, 48, lengths, 8.0)
        yield seed, scenes, lengths, out.frames, [{"spec": s["spec"], "num_frames": s["num_frames"]} for s in out.shots]


def test_ground_truth_scores_high_and_each_corruption_drops_its_metric():
    truth = {m: [] for m in METRICS}
    drops = {c: [] for c in STORYBOARD_CORRUPTIONS}
    for seed, scenes, lengths, frames, shots in _boards(24):
        s = score_storyboard(frames, shots)
        for m in METRICS:
            if s[m] is not None:
                truth[m].append(s[m])
        for name, metric in STORYBOARD_CORRUPTIONS.items():
            broken = corrupt_storyboard(name, scenes, 48, 48, lengths, 8.0, seed=seed)
            if broken is not None:
                drops[name].append(s[metric] - score_storyboard(broken, shots)[metric])
    for m, values in truth.items():
        assert len(values) >= 20 and np.mean(values) >= 0.98, (m, np.mean(values))
    for name, d in drops.items():
        assert len(d) >= 12 and np.mean(d) >= 0.1 and np.mean(np.array(d) > 0) >= 0.9, (name, np.mean(d), d)


def test_cut_detection_reads_the_frames():
    _, _, lengths, frames, shots = next(_boards(1))
    c = cut_frames(lengths)[0]
    changes = frame_changes(frames)
    assert detect_cut(changes, c, 4) == c and detect_cut(changes, c + 2, 4) == c
    still = np.repeat(frames[:1], len(frames), axis=0)  # no cut at all
    assert score_storyboard(still, shots)["cuts"] == 0.0
    with pytest.raises(ValueError, match="cover"):
        score_storyboard(frames[:-1], shots)


# --- the storyboard format and the pipeline's multi-shot path ------------------------------------------

import torch  # noqa: E402

from chronotope.config import DIT_PRESETS  # noqa: E402
from chronotope.dit.model import DiT  # noqa: E402
from chronotope.pipeline import VideoPipeline  # noqa: E402
from chronotope.request import check_storyboard  # noqa: E402

KW = dict(height=32, width=32, num_inference_steps=2, guidance_scale=1.0, progress=False, seed=3)
BOARD = [{"prompt": "a large red circle moves left", "num_frames": 5},
         {"prompt": "a red circle on a white background", "num_frames": 9},
         {"prompt": "a blue square", "duration": 0.625}]


@pytest.fixture(scope="module")
def pipe() -> VideoPipeline:
    torch.set_num_threads(1)
    return VideoPipeline.from_presets("debug", "debug", defaults=dict(height=32, width=32, num_frames=5))


def _shot_aware(pipe: VideoPipeline, shot_weights: float = 0.0) -> VideoPipeline:
    cfg = DIT_PRESETS["debug"]()
    cfg.in_channels, cfg.shot_embed = pipe.dit.config.in_channels, 4
    dit = DiT(cfg)
    missing, unexpected = dit.load_state_dict(pipe.dit.state_dict(), strict=False)
    assert missing == ["shot_embedder.weight"] and not unexpected
    with torch.no_grad():
        dit.shot_embedder.weight.normal_(0.0, shot_weights) if shot_weights else None
    return VideoPipeline(pipe.vae, dit.eval(), pipe._text_encoder, pipe.text_encoder_name, pipe.defaults)


@pytest.mark.parametrize("board, match", [
    ([], "non-empty list of shots"),
    ({"shots": [{"prompt": "a", "num_frames": 0}]}, "shot 1: num_frames=0"),
    ([{"prompt": "a", "num_frames": 5}, {"prompt": "b", "frames": 5}], "shot 2: unknown key"),
    ({"shots": [{"prompt": "a", "num_frames": 5}], "style": "noir"}, "unknown key"),
    ([{"prompt": "a", "num_frames": 6}], "4k\\+1"),
    ([{"prompt": "a", "num_frames": 5, "duration": 1.0}], "one of them"),
    ([{"prompt": " ", "num_frames": 5}], "prompt"),
    ({"shots": [{"prompt": "a", "num_frames": 5}], "context": "all"}, "context must be one of auto, none"),
    ("a red circle", "list of shots"),
])
def test_bad_storyboards_get_one_clear_error(board, match):
    with pytest.raises(ValueError, match=match):
        check_storyboard(board)


def test_storyboard_cuts_where_the_shots_meet_and_carries_characters(pipe):
    out = pipe(storyboard=BOARD, **KW)
    p = out.params
    assert out.frames[0].shape == (19, 32, 32, 3) and p["cuts"] == [5, 14] and p["num_frames"] == 19
    assert [s["start"] for s in p["shots"]] == [0, 5, 14] and [s["seed"] for s in p["shots"]] == [3, 4, 5]
    assert p["shots"][1]["spec"]["objects"][0]["size"] == "large"  # the red circle stays large
    assert p["conditioning"].startswith("independent") and all(s["context_shots"] == 0 for s in p["shots"])
    again = pipe(storyboard={"shots": BOARD, "carry": "none"}, **KW)
    assert np.array_equal(again.frames[0][:5], out.frames[0][:5])  # shot 1 does not depend on carry
    with pytest.raises(ValueError, match="drop num_frames"):
        pipe(storyboard=BOARD, num_frames=5, **KW)
    with pytest.raises(ValueError, match="drop prompt"):
        pipe("a red circle", storyboard=BOARD, **KW)


def test_a_shot_aware_model_sees_earlier_shots_through_a_bounded_window(pipe):
    aware = _shot_aware(pipe)
    board = BOARD + [{"prompt": "a red circle", "num_frames": 5}]
    out = aware(storyboard=board, **KW)
    assert out.params["conditioning"].startswith("context")
    assert [s["context_shots"] for s in out.params["shots"]] == [0, 1, 2, 2]  # at most CONTEXT_SHOTS earlier shots
    alone = aware(storyboard={"shots": board, "context": "none"}, **KW)
    assert np.array_equal(alone.frames[0][:5], out.frames[0][:5])  # the first shot has no context either way
    assert not np.array_equal(alone.frames[0][5:], out.frames[0][5:])  # later shots read the earlier ones
    tagged = _shot_aware(pipe, shot_weights=0.5)(storyboard=board, **KW)
    assert not np.array_equal(tagged.frames[0][5:], out.frames[0][5:])  # the shot index reaches the tokens


def test_generate_storyboard_cli_writes_one_video_and_its_sidecar(pipe, tmp_path):
    from chronotope.cli import main
    from chronotope.video import read_video

    pipe.save_pretrained(tmp_path / "model")
    (tmp_path / "story.json").write_text(json.dumps(BOARD))
    out = tmp_path / "film"
    assert main(["generate", "--storyboard", str(tmp_path / "story.json"), "--model", str(tmp_path / "model"),
                 "--out", str(out), "--steps", "1", "--seed", "0", "--no-progress"]) == 0
    frames, _ = read_video(str(out) + ".mp4")
    side = json.loads((tmp_path / "film.json").read_text())
    assert len(frames) == 19 and side["cuts"] == [5, 14] and len(side["shots"]) == 3 and side["storyboard"]
