"""Tests for the World: scenes, physics, rendering, captions <-> parser, sizes, the `world` / `demo` verbs."""

from __future__ import annotations

import copy
import csv
import json
import math
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chronotope.sizes import size_for
from chronotope.world import (
    detailed_caption,
    is_heldout,
    parse_prompt,
    render,
    sample_scene,
    scene_from_spec,
    short_caption,
    validate_spec,
)
from chronotope.world.scene import Scene, SceneObject
from chronotope.world.vocab import BACKGROUNDS, COLORS, HELDOUT, SIZES


def one_object(shape="circle", motion="still", speed=None, size="large", u0=0.0, v0=0.0, pillar_u=None,
               color="red", background="black", du=1.0, dv=1.0) -> Scene:
    obj = SceneObject(color, shape, size, motion, speed, u0=u0, v0=v0, du=du, dv=dv)
    return Scene(background=background, objects=[obj], pillar_u=pillar_u)


def alpha_of(frames: np.ndarray, color: str, background: str) -> np.ndarray:
    """Per-pixel coverage [T, H, W] of one object over a plain background, recovered from the colors."""
    c = np.asarray(COLORS[color], dtype=np.float64)
    b = np.asarray(BACKGROUNDS[background], dtype=np.float64)
    return np.clip(((frames.astype(np.float64) - b) @ (c - b)) / ((c - b) @ (c - b)), 0, 1)


def measured_centroid(alpha: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    T, H, W = alpha.shape
    ys, xs = np.arange(H) + 0.5, np.arange(W) + 0.5
    mass = alpha.sum(axis=(1, 2))
    return (alpha.sum(1) @ xs) / mass, (alpha.sum(2) @ ys) / mass


# --- rendering ---------------------------------------------------------------------------------


def test_same_seed_same_frames_and_different_seeds_differ():
    a = render(sample_scene(7), 64, 112, 9, 8)
    b = render(sample_scene(7), 64, 112, 9, 8)
    c = render(sample_scene(8), 64, 112, 9, 8)
    assert np.array_equal(a.frames, b.frames)
    assert all(np.array_equal(x["x"], y["x"]) for x, y in zip(a.tracks, b.tracks))
    assert not np.array_equal(a.frames, c.frames)


@pytest.mark.parametrize("height,width,num_frames,fps", [(16, 16, 1, 8), (64, 112, 17, 8), (112, 64, 5, 24.5),
                                                          (18, 30, 2, 1), (130, 66, 33, 16)])
def test_any_size_frame_count_and_fps(height, width, num_frames, fps):
    out = render(sample_scene(3), height, width, num_frames, fps)
    assert out.frames.shape == (num_frames, height, width, 3) and out.frames.dtype == np.uint8
    for tr in out.tracks:
        assert all(tr[k].shape == (num_frames,) for k in ("x", "y", "size", "visible"))
        assert tr["color"] in COLORS and np.all((tr["visible"] >= 0) & (tr["visible"] <= 1))
    np.testing.assert_allclose(out.times, np.arange(num_frames) / fps)


@pytest.mark.parametrize("height,width,message", [(65, 64, "64 or 66"), (64, 15, "16"), (8, 64, "16"),
                                                  (64.0, 64, "even integer")])
def test_bad_size_raises_naming_valid_values(height, width, message):
    with pytest.raises(ValueError, match=message):
        render(sample_scene(0), height, width, 5, 8)


def test_bad_frame_count_or_fps_raises():
    with pytest.raises(ValueError, match="num_frames"):
        render(sample_scene(0), 32, 32, 0, 8)
    with pytest.raises(ValueError, match="fps"):
        render(sample_scene(0), 32, 32, 5, 0)


@pytest.mark.parametrize("shape", ["circle", "square", "triangle"])
def test_pixels_agree_with_tracks_area_and_centroid(shape):
    """The drawn object sits where its track says (shape centroid) and covers its analytic area."""
    scene = one_object(shape, "right", "fast", u0=-0.3, v0=0.1)
    out = render(scene, 96, 96, 9, 8)
    alpha = alpha_of(out.frames, "red", "black")
    mx, my = measured_centroid(alpha)
    tr = out.tracks[0]
    np.testing.assert_allclose(mx, tr["x"], atol=0.3)
    np.testing.assert_allclose(my, tr["y"], atol=0.3)
    area = {"circle": math.pi / 4, "square": 1.0, "triangle": 0.5}[shape] * tr["size"][0] ** 2
    np.testing.assert_allclose(alpha.sum(axis=(1, 2)), area, rtol=0.03)
    np.testing.assert_allclose(tr["size"], SIZES["large"] * 96)
    np.testing.assert_allclose(tr["visible"], 1.0, atol=0.02)  # in view all along: visible area = drawn area


def test_edges_are_anti_aliased():
    out = render(one_object("circle", u0=0.013, v0=0.021), 64, 64, 1, 8)
    alpha = alpha_of(out.frames, "red", "black")[0]
    partial = (alpha > 0.05) & (alpha < 0.95)
    assert partial.sum() >= 20  # a hard-edged circle would have (almost) none


def test_physics_is_invariant_to_size_aspect_and_fps():
    """Tracks in units of min(H, W) from the frame centre agree across sizes and frame rates, at equal times."""
    checked = 0
    for seed in range(40):
        scene = sample_scene(seed)
        ref = render(scene, 64, 64, 17, 8)
        for (h, w, t, fps) in [(128, 128, 33, 16), (64, 112, 17, 8), (96, 96, 9, 4)]:
            out = render(scene, h, w, t, fps)
            common, ia, ib = np.intersect1d(np.round(ref.times, 9), np.round(out.times, 9), return_indices=True)
            assert len(common) >= 9
            s = min(h, w)
            for o, a, b in zip(scene.objects, ref.tracks, out.tracks):
                if (h, w) == (64, 112) and o.motion == "bounce_around":
                    continue  # side walls are farther in a wider frame: same physics, different walls
                np.testing.assert_allclose((b["x"][ib] - w / 2) / s, (a["x"][ia] - 32) / 64, atol=1e-6)
                np.testing.assert_allclose((b["y"][ib] - h / 2) / s, (a["y"][ia] - 32) / 64, atol=1e-6)
                checked += 1
    assert checked > 100


def test_measured_motion_is_invariant_to_resolution():
    """Measured from pixels (not the analytic tracks): 64 px and 128 px show the same normalised motion."""
    scene = one_object("square", "bounce_around", "fast", u0=0.1, v0=-0.2)
    tracks = []
    for size in (64, 128):
        out = render(scene, size, size, 17, 8)
        mx, my = measured_centroid(alpha_of(out.frames, "red", "black"))
        tracks.append(((mx - size / 2) / size, (my - size / 2) / size))
    np.testing.assert_allclose(tracks[0][0], tracks[1][0], atol=0.01)
    np.testing.assert_allclose(tracks[0][1], tracks[1][1], atol=0.01)
    assert np.ptp(tracks[0][0]) > 0.2  # it really moved


def test_fall_bounce_rests_on_floor_with_decaying_bounces():
    out = render(one_object("circle", "fall_bounce", "fast", size="small", v0=-0.35), 64, 64, 81, 16)
    y = out.tracks[0]["y"]
    floor = 64 - SIZES["small"] * 64 / 2
    assert y.max() <= floor + 1e-6 and abs(y.max() - floor) < 1e-6
    assert y[0] < 20
    # local minima of y after the first fall are bounce peaks; each is lower than the one before
    peaks = [y[i] for i in range(1, len(y) - 1) if y[i] < y[i - 1] and y[i] <= y[i + 1] and y[i] < floor - 0.5]
    assert len(peaks) >= 2 and all(b > a for a, b in zip(peaks, peaks[1:]))


def test_bounce_around_stays_inside_and_reflects():
    out = render(one_object("square", "bounce_around", "fast", u0=0.2, v0=0.2), 64, 112, 65, 8)
    tr = out.tracks[0]
    half = tr["size"][0] / 2
    assert tr["x"].min() >= half - 1e-6 and tr["x"].max() <= 112 - half + 1e-6
    assert tr["y"].min() >= half - 1e-6 and tr["y"].max() <= 64 - half + 1e-6
    assert np.any(np.diff(np.sign(np.diff(tr["x"]))) != 0)  # changed direction
    assert np.all(tr["visible"] > 0.999)


def test_linear_motions_move_the_right_way_and_stay_visible_for_most_of_a_33_frame_clip():
    seen = set()
    for seed in range(300):
        scene = sample_scene(seed)
        scene.pillar_u = None  # visibility against the frame border only
        out = render(scene, 64, 64, 33, 8)
        for o, tr in zip(scene.objects, out.tracks):
            if o.motion in ("left", "right", "up", "down"):
                d = {"left": -tr["x"], "right": tr["x"], "up": -tr["y"], "down": tr["y"]}[o.motion]
                assert d[-1] - d[0] > 0.4 * 64  # >= 0.12 min(H, W)/s for 4 s
                assert (tr["visible"] > 0.5).mean() >= 0.6, (seed, o)
                seen.add(o.motion)
    assert seen == {"left", "right", "up", "down"}


# --- scenes ------------------------------------------------------------------------------------


def test_scenes_follow_the_vocabulary_and_do_not_start_overlapped():
    counts = set()
    for seed in range(300):
        scene = sample_scene(seed)
        validate_spec(scene.spec)
        counts.add(len(scene.objects))
        objs = scene.objects
        for i in range(len(objs)):
            for j in range(i + 1, len(objs)):
                dist = math.hypot(objs[i].u0 - objs[j].u0, objs[i].v0 - objs[j].v0)
                assert dist >= 0.85 * (objs[i].diameter + objs[j].diameter) / 2 - 1e-9
    assert counts == {1, 2, 3}


def test_heldout_excluded_by_default_and_present_with_flag():
    default = [sample_scene(s).spec for s in range(500)]
    assert not any(is_heldout(s) for s in default)
    flagged = [sample_scene(s, include_heldout=True).spec for s in range(500)]
    pairs = {(o["color"], o["shape"]) for s in flagged for o in s["objects"]}
    assert HELDOUT <= pairs


def test_pillar_scenes_have_a_mover_passing_behind_and_visibility_sees_the_pillar():
    pillar_seeds = [s for s in range(200) if sample_scene(s).pillar][:30]
    assert len(pillar_seeds) >= 20
    for seed in pillar_seeds:
        scene = sample_scene(seed)
        out = render(scene, 64, 64, 17, 8)
        bare = copy.deepcopy(scene)
        bare.pillar_u = None
        free = render(bare, 64, 64, 17, 8)
        dips = [tr["visible"].min() < ft["visible"].min() - 0.2
                for o, tr, ft in zip(scene.objects, out.tracks, free.tracks) if o.motion in ("left", "right")]
        assert any(dips), seed
        assert all(np.all(tr["visible"] <= ft["visible"] + 1e-9) for tr, ft in zip(out.tracks, free.tracks))


def test_small_object_fully_hidden_by_pillar_then_reappears():
    scene = one_object("circle", "left", "fast", size="small", u0=0.25, pillar_u=0.0)  # behind it at t = 1 s
    out = render(scene, 64, 64, 25, 8)
    vis = out.tracks[0]["visible"]
    hidden = int(np.argmin(vis))
    assert hidden == 8
    assert vis[0] > 0.999 and vis[hidden] < 0.02 and vis[hidden:].max() > 0.999
    red = np.linalg.norm(out.frames.astype(float) - COLORS["red"], axis=-1) < 60  # [T, H, W]
    assert red[0].sum() > 50 and red[hidden].sum() == 0  # the pillar hides it: no red pixel
    # leaving through the frame border also counts
    gone = render(one_object("square", "left", "fast", u0=0.0), 32, 32, 41, 4).tracks[0]["visible"]
    assert gone[0] > 0.999 and gone[-1] == 0.0


def test_scene_from_spec_keeps_the_spec_and_fills_partial_ones():
    spec = {"background": "gray", "pillar": True, "objects": [
        {"color": "blue", "shape": "triangle", "size": "small", "motion": "right", "speed": "slow"},
        {"color": "yellow", "shape": "circle", "size": "large", "motion": "still", "speed": None}]}
    scene = scene_from_spec(spec, seed=3)
    assert scene.spec == spec and scene.pillar_u is not None
    assert render(scene, 32, 48, 5, 8).frames.shape == (5, 32, 48, 3)
    assert scene_from_spec(spec, 3) == scene and scene_from_spec(spec, 4) != scene
    filled = scene_from_spec(parse_prompt("a red circle"), seed=0).spec
    validate_spec(filled)
    assert filled["objects"][0]["color"] == "red" and filled["objects"][0]["shape"] == "circle"


# --- captions and the parser -------------------------------------------------------------------


@settings(max_examples=2000, deadline=None)
@given(st.integers(min_value=0, max_value=2**32 - 1), st.integers(min_value=0, max_value=2**32 - 1))
def test_every_detailed_caption_parses_back_to_its_spec(scene_seed, caption_seed):
    scene = sample_scene(scene_seed, include_heldout=True)
    text = detailed_caption(scene, caption_seed)
    assert parse_prompt(text, strict=True) == scene.spec, text


def test_captions_vary_and_short_captions_parse():
    scene = sample_scene(11)
    assert len({detailed_caption(scene, k) for k in range(20)}) >= 10
    assert detailed_caption(scene, 5) == detailed_caption(scene, 5)
    for seed in range(100):
        scene = sample_scene(seed)
        got = parse_prompt(short_caption(scene), strict=True)["objects"]
        assert [(o["color"], o["shape"]) for o in got] == [(o.color, o.shape) for o in scene.objects]
    assert short_caption(one_object()) == "a red circle"


def _obj(color=None, shape=None, size=None, motion=None, speed=None) -> dict:
    return {"color": color, "shape": shape, "size": size, "motion": motion, "speed": speed}


PARAPHRASES = [
    ("A large blue square bounces around on a white background.",
     "white", False, [_obj("blue", "square", "large", "bounce_around")]),
    ("two objects: a small red circle sliding right and a big green triangle that stays still, gray backdrop",
     "gray", False, [_obj("red", "circle", "small", "right"), _obj("green", "triangle", "large", "still")]),
    ("a red circle", None, False, [_obj("red", "circle")]),
    ("A tiny yellow ball falls and bounces quickly on a black background.",
     "black", False, [_obj("yellow", "circle", "small", "fall_bounce", "fast")]),
    ("a fast pink triangle moving left behind a pillar", None, True, [_obj("pink", "triangle", None, "left", "fast")]),
    ("Slowly, a big orange square rises.", None, False, [_obj("orange", "square", "large", "up", "slow")]),
    ("a red one moving up and a blue one moving down", None, False, [_obj("red", motion="up"),
                                                                    _obj("blue", motion="down")]),
    ("A small cyan disc bounces off the walls rapidly, white backdrop, no pillar.",
     "white", False, [_obj("cyan", "circle", "small", "bounce_around", "fast")]),
    ("a green block drifting to the right at a slow pace passes behind a dark-brown pillar",
     None, True, [_obj("green", "square", None, "right", "slow")]),
    ("A purple triangle sinks slowly on grey.", "gray", False, [_obj("purple", "triangle", None, "down", "slow")]),
    ("a huge red circle that doesn't move", None, False, [_obj("red", "circle", "large", "still")]),
    ("A little blue triangle ricochets around quickly and a large yellow circle is stationary.", None, False,
     [_obj("blue", "triangle", "small", "bounce_around", "fast"), _obj("yellow", "circle", "large", "still")]),
    ("a small pink square moves leftward fast, a big green circle falls down, and a tiny blue triangle rises "
     "slowly on a black background", "black", False,
     [_obj("pink", "square", "small", "left", "fast"), _obj("green", "circle", "large", "fall_bounce"),
      _obj("blue", "triangle", "small", "up", "slow")]),
    ("Yellow square, large, gray background", "gray", False, [_obj("yellow", "square", "large")]),
    ("an orange ball dropping and bouncing", None, False, [_obj("orange", "circle", None, "fall_bounce")]),
    ("a red square heading left, passing behind a column", None, True, [_obj("red", "square", None, "left")]),
    ("A big cyan circle climbs upward at high speed against a white backdrop.",
     "white", False, [_obj("cyan", "circle", "large", "up", "fast")]),
    ("a slow green triangle moving right", None, False, [_obj("green", "triangle", None, "right", "slow")]),
    ("A blue object bouncing around", None, False, [_obj("blue", None, None, "bounce_around")]),
    ("three shapes: a red circle, a green square and a blue triangle, all still, on white", "white", False,
     [_obj("red", "circle", motion="still"), _obj("green", "square", motion="still"),
      _obj("blue", "triangle", motion="still")]),
    ("A small purple disc stays in place on a black background.",
     "black", False, [_obj("purple", "circle", "small", "still")]),
    ("a large pink block glides right swiftly", None, False, [_obj("pink", "square", "large", "right", "fast")]),
    ("On a gray background, a quick little red triangle travels rightwards.",
     "gray", False, [_obj("red", "triangle", "small", "right", "fast")]),
    ("On white, a yellow circle moving downward slowly.",
     "white", False, [_obj("yellow", "circle", None, "down", "slow")]),
]


@pytest.mark.parametrize("text,background,pillar,objects", PARAPHRASES, ids=[p[0][:40] for p in PARAPHRASES])
def test_paraphrases(text, background, pillar, objects):
    assert parse_prompt(text) == {"background": background, "pillar": pillar, "objects": objects}


@pytest.mark.parametrize("text,strict,words", [
    ("a magenta hexagon", False, "magenta"),
    ("hello world", False, "hello"),
    ("a red circle dancing wildly", True, "dancing"),
    ("a purple octagon spinning", True, "octagon"),
])
def test_unknown_words_raise_naming_them(text, strict, words):
    with pytest.raises(ValueError, match=words):
        parse_prompt(text, strict=strict)


def test_lenient_parse_ignores_unknown_words_and_rejects_invalid_scenes():
    assert parse_prompt("a red circle dancing wildly")["objects"] == [_obj("red", "circle")]
    with pytest.raises(ValueError, match="different colors"):
        parse_prompt("a red circle and a red square")
    with pytest.raises(ValueError, match="1 to 3"):
        parse_prompt("a red circle, a blue square, a green triangle and a pink circle")
    with pytest.raises(ValueError, match="conflicting motions"):
        parse_prompt("a red circle moves left and right")
    with pytest.raises(ValueError, match="two backgrounds"):
        parse_prompt("a red circle on a black background, white backdrop")


# --- sizes -------------------------------------------------------------------------------------


@pytest.mark.parametrize("resolution,ratio,expected", [("64px", "1:1", (64, 64)), ("64px", "16:9", (48, 80)),
                                                       ("64px", "9:16", (80, 48)), ("256px", "16:9", (192, 336)),
                                                       (64, 1.0, (64, 64)), ("480p", "16:9", (480, 848)),
                                                       ("32px", "16:9", (32, 48)), ("64px", "4:3", (48, 64))])
def test_size_for(resolution, ratio, expected):
    h, w = size_for(resolution, ratio)
    assert (h, w) == expected and h % 16 == 0 and w % 16 == 0


@pytest.mark.parametrize("resolution,ratio", [("64pixels", "1:1"), ("8px", "1:1"), ("64px", "16/9"), ("64px", "0:1")])
def test_size_for_rejects_bad_input(resolution, ratio):
    with pytest.raises(ValueError):
        size_for(resolution, ratio)


# --- command line ------------------------------------------------------------------------------


def test_world_cli_writes_clips_manifest_and_resumes(tmp_path):
    from chronotope.cli import main

    out = tmp_path / "w"
    argv = ["world", "--out", str(out), "--num", "6", "--resolution", "32px", "--aspect-ratios", "1:1,16:9",
            "--num-frames", "1,5", "--fps", "8", "--no-progress"]
    assert main(argv) == 0
    with open(out / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6
    assert list(rows[0])[:9] == ["path", "text", "num_frames", "height", "width", "aspect_ratio", "fps",
                                 "short_text", "spec"]
    assert {(r["height"], r["width"], r["num_frames"]) for r in rows} == {
        ("32", "32", "1"), ("32", "32", "5"), ("32", "48", "1"), ("32", "48", "5")}
    for r in rows:
        assert os.path.exists(out / r["path"]) and r["path"].endswith(".png" if r["num_frames"] == "1" else ".mp4")
        spec = json.loads(r["spec"])
        assert parse_prompt(r["text"], strict=True) == spec and not is_heldout(spec)
        side = json.loads((out / (os.path.splitext(r["path"])[0] + ".json")).read_text())
        assert side["spec"] == spec and len(side["tracks"][0]["x"]) == int(r["num_frames"])
    mtime = os.path.getmtime(out / rows[1]["path"])
    os.remove(out / rows[0]["path"])
    assert main(argv) == 0  # resume: re-makes the missing file, leaves the others
    assert os.path.exists(out / rows[0]["path"]) and os.path.getmtime(out / rows[1]["path"]) == mtime


def test_constrained_scenes_keep_their_constraints_and_leave_the_default_stream_alone():
    before = [sample_scene(s).spec for s in range(50)]
    scenes = [sample_scene(s, objects=1, motions=["left", "right", "up", "down"]) for s in range(300)]
    assert all(len(sc.objects) == 1 and not sc.pillar and sc.objects[0].motion in ("left", "right", "up", "down")
               for sc in scenes)
    assert {sc.objects[0].motion for sc in scenes} == {"left", "right", "up", "down"}
    assert not any(is_heldout(sc.spec) for sc in scenes)
    assert {sc.background for sc in scenes} == set(BACKGROUNDS)  # the rest is still drawn
    three = [sample_scene(s, objects=3, motions=["still"]) for s in range(50)]
    assert all(len(sc.objects) == 3 and len({o.color for o in sc.objects}) == 3 for sc in three)
    assert sample_scene(7, objects=2, motions=["up"]).spec == sample_scene(7, objects=2, motions=["up"]).spec
    assert [sample_scene(s).spec for s in range(50)] == before


def test_anywhere_starts_do_not_tell_the_direction():
    def start_u(starts, motion):
        return np.array([sample_scene(s, objects=1, motions=[motion], starts=starts).objects[0].u0 for s in range(200)])

    behind, anywhere = start_u("behind", "left"), start_u("anywhere", "left")
    assert behind.min() >= 0.2  # a left-mover comes from the right
    assert (anywhere < -0.1).mean() > 0.2 and (anywhere > 0.1).mean() > 0.2  # either side
    assert abs(anywhere.mean() - start_u("anywhere", "right").mean()) < 0.05  # same start law for both
    v = np.array([sample_scene(s, objects=1, motions=["down"], starts="anywhere").objects[0].v0 for s in range(200)])
    assert (v > 0.1).mean() > 0.2  # a down-mover may start in the lower half
    assert [sample_scene(s, starts="anywhere").spec for s in range(20)] == [sample_scene(s).spec for s in range(20)]
    with pytest.raises(ValueError, match="behind, anywhere"):
        sample_scene(0, starts="middle")


@pytest.mark.parametrize("kwargs", [dict(objects=0), dict(objects=4), dict(motions=["sideways"]), dict(motions=[])])
def test_bad_constraints_raise_value_error(kwargs):
    with pytest.raises(ValueError):
        sample_scene(0, **kwargs)


def test_world_cli_constrained_scenes(tmp_path):
    from chronotope.cli import main

    out = tmp_path / "w"
    assert main(["world", "--out", str(out), "--num", "4", "--resolution", "32px", "--num-frames", "5",
                 "--objects", "1", "--motions", "left,right", "--starts", "anywhere", "--no-tracks",
                 "--no-progress"]) == 0
    with open(out / "manifest.csv", newline="") as f:
        specs = [json.loads(r["spec"]) for r in csv.DictReader(f)]
    assert len(specs) == 4 and all(len(s["objects"]) == 1 and s["objects"][0]["motion"] in ("left", "right")
                                   and not s["pillar"] for s in specs)
    assert main(["world", "--out", str(out), "--num", "1", "--motions", "left,sideways", "--no-progress"]) == 2


def test_world_cli_rejects_bad_sizes(tmp_path, capsys):
    from chronotope.cli import main

    assert main(["world", "--out", str(tmp_path), "--num", "2", "--height", "33", "--width", "32"]) == 2
    assert "32 or 34" in capsys.readouterr().err


def test_demo_cli_without_a_shipped_model_renders_world_clips(tmp_path, capsys, monkeypatch):
    import chronotope.pipeline as pipeline
    from chronotope.cli import main

    monkeypatch.setattr(pipeline, "ASSETS", tmp_path / "no-model")
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 0
    printed = capsys.readouterr().out
    assert "no model is shipped" in printed and printed.count(".mp4") == 4 and "manifest" in printed
    assert len(list((tmp_path / "demo" / "world").glob("*.mp4"))) == 4


def test_demo_cli_generates_with_the_shipped_model(tmp_path, capsys, monkeypatch):
    import chronotope.pipeline as pipeline
    from chronotope.cli import main
    from chronotope.video import read_video

    model = tmp_path / "model"  # a random-weight debug pipeline stands in for the shipped one
    pipeline.VideoPipeline.from_presets("debug", "debug").save_pretrained(model)
    monkeypatch.setattr(pipeline, "ASSETS", model)
    assert main(["demo", "--out", str(tmp_path / "demo"), "--steps", "2"]) == 0
    assert "wrote" in capsys.readouterr().out
    frames, _ = read_video(tmp_path / "demo" / "generated.mp4")
    assert frames.shape == (17, 64, 64, 3)
