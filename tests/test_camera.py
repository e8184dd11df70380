"""The World's camera (issue 39): renders that move as the camera's track says, captions and prompts that name
it, the per-frame class table, and World-bench reading it back from the background."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from chronotope.bench.camera import estimate_camera
from chronotope.bench.corrupt import camera_scene, corruption_scores
from chronotope.bench.score import score_video
from chronotope.world import detailed_caption, parse_prompt, render, sample_scene, scene_from_spec
from chronotope.world.camera import CAMERA_CLASSES, Camera, parse_camera
from chronotope.world.generate import write_world
from chronotope.world.mix import WorldMix, render_item
from chronotope.world.scene import with_camera


def _still_scene(motion: str, speed: str = "fast", texture: str = "stars"):
    return scene_from_spec({"background": "black", "pillar": False, "texture": texture,
                            "camera": {"motion": motion, "speed": speed},
                            "objects": [{"color": "red", "shape": "square", "size": "small", "motion": "still"}]},
                           seed=0)


def test_class_table_and_parse():
    assert len(CAMERA_CLASSES) == 13 and CAMERA_CLASSES[0] == "static"
    assert parse_camera("static") == 0
    assert parse_camera("pan-left:slow") == 1 and parse_camera("pan-left:fast") == 2
    assert parse_camera("zoom-out:fast") == 12 and parse_camera("Pan left") == 1  # a motion alone: slow
    assert all(parse_camera(c) == i for i, c in enumerate(CAMERA_CLASSES))
    assert Camera("zoom-in", "slow").index == CAMERA_CLASSES.index("zoom-in:slow")
    with pytest.raises(ValueError, match="pan-left:slow"):
        parse_camera("dolly-in")
    with pytest.raises(ValueError, match="speed"):
        Camera("pan-up", None)


def test_background_moves_as_the_track_says():
    """Pan right at 0.25 min(H, W)/s, 64 px, 8 fps: 2 px per frame, the background (and a still object) moving
    left on screen; frame 4 is frame 0 moved 8 px left, where both show it."""
    out = render(_still_scene("pan-right"), 64, 64, 9, 8)
    shift = -np.diff(out.camera["u"][[0, 4]])[0] * 64  # background motion on screen, pixels
    assert shift == pytest.approx(-8.0)
    a, b = out.frames[0].astype(int), out.frames[4].astype(int)
    assert np.abs(b[:, :-8] - a[:, 8:]).max() <= 1  # moved exactly as the track says
    assert np.abs(b - a).max() > 20  # and the texture shows it
    assert out.tracks[0]["x"][4] - out.tracks[0]["x"][0] == pytest.approx(-8.0)
    assert out.camera["class"] == [CAMERA_CLASSES.index("pan-right:fast")] * 9
    zoom = render(_still_scene("zoom-in"), 64, 64, 9, 8)
    assert zoom.tracks[0]["size"][-1] / zoom.tracks[0]["size"][0] == pytest.approx(np.exp(0.2 * 1.0))


def test_scenes_without_a_camera_render_as_before():
    """Pixels as the World rendered them before the camera existed (hashes taken from that code)."""
    expected = ["6d934a49bf6d96ce", "59b9b7ebed276368", "504356256c2ae98c"]
    for seed, digest in enumerate(expected):
        scene = sample_scene(seed)
        assert "camera" not in scene.spec and "texture" not in scene.spec
        frames = render(scene, 48, 80, 9, 8).frames
        assert hashlib.sha256(frames.tobytes()).hexdigest()[:16] == digest
        assert render(scene, 48, 80, 9, 8).camera is None
    frames, row = render_item(WorldMix(), 0, 3)
    assert "conditions" not in row and "camera" not in WorldMix().to_dict()


@pytest.mark.parametrize("seed", range(0, 60, 3))
def test_camera_captions_parse_back_to_their_spec(seed):
    scene = camera_scene(seed)
    assert parse_prompt(detailed_caption(scene, seed), strict=True) == scene.spec


def test_prompts_name_the_camera():
    spec = parse_prompt("a red circle moves left while the camera pans slowly to the right")
    assert spec["camera"] == {"motion": "pan-right", "speed": "slow"}
    assert spec["objects"][0]["motion"] == "left" and spec["objects"][0]["speed"] is None
    assert parse_prompt("The camera zooms in. A blue square on a grid")["camera"]["motion"] == "zoom-in"
    assert "camera" not in parse_prompt("a red circle moves left")
    scene = scene_from_spec(parse_prompt("a red ball, the camera pans left"), seed=1)
    assert scene.camera.motion == "pan-left" and scene.camera.speed in ("slow", "fast") and scene.texture
    with pytest.raises(ValueError, match="camera"):
        parse_prompt("a red ball, the camera wobbles")


def test_world_run_writes_camera_rows_and_tracks(tmp_path):
    manifest = write_world(tmp_path, 4, sizes=[(32, 32, "1:1")], num_frames=[9], progress=False, camera_share=1.0)
    sidecars = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("*.json"))]
    assert len(sidecars) == 4 and all("camera" in s["spec"] and len(s["camera"]["class"]) == 9 for s in sidecars)
    _, row = render_item(WorldMix(camera=1.0), 0, 2)
    assert len(row["conditions"]["camera"]) == row["num_frames"]
    assert manifest.endswith("manifest.csv")
    with pytest.raises(ValueError, match="camera_share"):
        write_world(tmp_path, 1, camera_share=1.5, progress=False)


def test_bench_reads_the_camera_from_the_background():
    for i in range(len(CAMERA_CLASSES)):  # every class once, 1:1 and 16:9
        scene = camera_scene(i)
        height, width = (64, 64) if i % 2 else (48, 80)
        est = estimate_camera(render(scene, height, width, 17, 8).frames, 8)
        assert (est.motion, est.speed) == (scene.camera.motion, scene.camera.speed), (i, est)
    plain = sample_scene(0)
    assert score_video(render(plain, 64, 64, 17, 8).frames, plain.spec, 8)["camera"] is None


@pytest.mark.parametrize("name", ["camera_reversed", "camera_frozen"])
def test_camera_corruptions_lose_the_camera(name):
    res = corruption_scores(name, num_scenes=14, durations=(17,), scene_set="camera")
    assert res["judged"] >= 12 and res["broken"] <= 0.2, res
    for attribute in ("color", "shape", "background", "count"):
        assert res["attributes"][attribute] >= 0.9, (attribute, res)


def test_objects_own_motion_under_a_moving_camera():
    """A still object under a pan, and a mover whose screen motion is the camera's, both read as their own motion."""
    scene = with_camera(scene_from_spec({"background": "gray", "pillar": False, "objects": [
        {"color": "blue", "shape": "circle", "size": "small", "motion": "still"},
        {"color": "red", "shape": "square", "size": "large", "motion": "left", "speed": "fast"}]}, seed=2),
        Camera("pan-left", "fast"), "grid")
    s = score_video(render(scene, 64, 64, 17, 8).frames, scene.spec, 8)
    assert s["camera"] == 1.0 and s["motion"] == 1.0, s["objects"]
