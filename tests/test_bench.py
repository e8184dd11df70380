"""World-bench: detector, motion classes, scoring, discrimination on corrupted renders, files, CLI."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from chronotope.bench import check_spec, classify_motion, detect, run_bench, score_file, score_video
from pathlib import Path

from chronotope.bench.corrupt import CORRUPTIONS, corruption_scores, ground_truth_scores, small_scene, soften
from chronotope.bench.detect import label_components
from chronotope.bench.palette import BACKGROUND_NAMES, COLOR_NAMES, classify_pixels
from chronotope.world import render, sample_scene, scene_from_spec
from chronotope.world.vocab import BACKGROUNDS, COLORS

# --- synthetic frames drawn with numpy (4x supersampled, so edges are anti-aliased) ---------------


def _draw(shape: str, cx: float, cy: float, d: float, color: str, bg: str = "black", H: int = 64, W: int = 64,
          T: int = 1) -> np.ndarray:
    s = 4
    ys, xs = np.mgrid[0:H * s, 0:W * s]
    y, x = (ys + 0.5) / s, (xs + 0.5) / s
    r = d / 2
    if shape == "circle":
        inside = (x - cx) ** 2 + (y - cy) ** 2 <= r * r
    elif shape == "square":
        inside = (np.abs(x - cx) <= r) & (np.abs(y - cy) <= r)
    else:  # apex up, base = height = d
        inside = (y <= cy + r) & (np.abs(x - cx) <= (y - (cy - r)) / 2)
    cov = inside.reshape(H, s, W, s).mean(axis=(1, 3))[..., None]
    img = cov * np.array(COLORS[color]) + (1 - cov) * np.array(BACKGROUNDS[bg])
    return np.repeat(np.rint(img).astype(np.uint8)[None], T, axis=0)


def _bfs_partition(cls: np.ndarray) -> np.ndarray:
    T, H, W = cls.shape
    lab = -np.ones(cls.shape, int)
    n = 0
    for t in range(T):
        for i in range(H):
            for j in range(W):
                if cls[t, i, j] < 0 or lab[t, i, j] >= 0:
                    continue
                stack, lab[t, i, j] = [(i, j)], n
                while stack:
                    a, b = stack.pop()
                    for u, v in ((a + 1, b), (a - 1, b), (a, b + 1), (a, b - 1)):
                        if 0 <= u < H and 0 <= v < W and lab[t, u, v] < 0 and cls[t, u, v] == cls[t, i, j]:
                            lab[t, u, v] = n
                            stack.append((u, v))
                n += 1
    return lab


def test_connected_components_match_breadth_first_search():
    rng = np.random.default_rng(0)
    for _ in range(10):
        cls = rng.integers(-1, 3, size=(2, 11, 13)).astype(np.int8)
        lab = label_components(cls).reshape(cls.shape)
        ref = _bfs_partition(cls)
        m = cls >= 0
        pairs = set(zip(lab[m].tolist(), ref[m].tolist()))
        # same partition: the pairing of our labels with BFS labels is one-to-one
        assert len(pairs) == len(set(lab[m].tolist())) == len(set(ref[m].tolist()))


@pytest.mark.parametrize("shape", ["circle", "square", "triangle"])
@pytest.mark.parametrize("d", [9.6, 19.2])
def test_detector_measures_drawn_shapes(shape, d):
    frames = _draw(shape, cx=30.3, cy=27.7, d=d, color="blue", bg="white")
    det = detect(frames)
    k = COLOR_NAMES.index("blue")
    assert det.significant[0].tolist() == [c == k for c in range(len(COLOR_NAMES))]
    assert det.shape[0, k] == ("circle", "square", "triangle").index(shape)
    assert abs(det.extent[0, k] * 64 - d) < 1.0
    assert abs(det.cx[0, k] + 0.5 - 30.3) < 1.0  # pixel centres sit at i + 0.5
    assert det.pillar is None


def test_detector_ignores_antialiased_fringe_and_finds_pillar():
    # a red disc on white leaves a pink-looking rim: it must not count as a pink object
    frames = _draw("circle", 32, 32, 20, "red", bg="white")
    frames[:, :, 50:58] = (90, 60, 30)
    det = detect(frames)
    assert det.significant[0].sum() == 1 and det.significant[0, COLOR_NAMES.index("red")]
    assert det.pillar == (50, 57)


def test_motion_classifier_on_analytic_tracks():
    t = np.arange(33)
    eps, jit = 0.03, 0.005
    still = np.full(33, 0.5)
    line = 0.2 + 0.02 * t
    assert classify_motion(t, still, still, eps, jit) == "still"
    assert classify_motion(t, line, still, eps, jit) == "right"
    assert classify_motion(t, line[::-1], still, eps, jit) == "left"
    assert classify_motion(t, still, line, eps, jit) == "down"
    assert classify_motion(t, still, line[::-1], eps, jit) == "up"
    from chronotope.world.scene import _fall_bounce, _fold

    fall = _fall_bounce(t / 8.0, -0.3, 0.4, 1.5) + 0.5
    assert classify_motion(t, still, fall, eps, jit) == "fall_bounce"
    assert classify_motion(t, still, fall[::-1], eps, jit) != "fall_bounce"
    diag_x, diag_y = _fold(0.3 + 0.06 * t, 0.1, 0.9), _fold(0.5 + 0.06 * t, 0.1, 0.9)
    assert classify_motion(t, diag_x, diag_y, eps, jit) == "bounce_around"
    perm = np.random.default_rng(1).permutation(33)
    assert classify_motion(t, diag_x[perm], diag_y[perm], eps, jit) == "erratic"
    assert classify_motion(t, line[perm], still, eps, jit) != "right"
    assert classify_motion(t[:1], still[:1], still[:1], eps, jit) is None


def test_score_video_on_a_drawn_image_and_its_errors():
    frames = _draw("square", 30, 30, 19.2, "green", bg="gray")
    spec = {"background": "gray", "pillar": False,
            "objects": [{"color": "green", "shape": "square", "size": "large", "motion": "still", "speed": None}]}
    s = score_video(frames, spec)
    assert s["overall"] == pytest.approx(1.0)
    assert s["motion"] is None and s["flicker"] is None  # a 1-frame video has no motion
    wrong = dict(spec, background="white", objects=[dict(spec["objects"][0], shape="circle", size="small")])
    s = score_video(frames, wrong)
    assert s["shape"] == 0.0 and s["size"] == 0.0 and s["background"] == 0.0 and s["color"] == 1.0
    for bad in (frames[0], frames.astype(np.float32), frames[:0], frames[..., :2]):
        with pytest.raises(ValueError):
            score_video(bad, spec)
    with pytest.raises(ValueError, match="background"):
        score_video(frames, dict(spec, background="beige"))


def test_partial_spec_scores_only_what_it_names():
    spec = {"background": None, "pillar": False,
            "objects": [{"color": "red", "shape": "circle", "size": None, "motion": None, "speed": None}]}
    scene = scene_from_spec({"background": "black", "pillar": False, "objects": [
        {"color": "red", "shape": "circle", "size": "large", "motion": "left", "speed": "slow"}]}, seed=3)
    s = score_video(render(scene, 64, 64, 9, 8.0).frames, spec)
    assert s["color"] == 1.0 and s["shape"] == 1.0
    assert s["size"] is None and s["motion"] is None and s["background"] is None
    assert check_spec({"objects": [{"shape": "square"}]})["objects"][0]["color"] is None


@pytest.mark.parametrize("frames", [
    np.zeros((1, 16, 16, 3), np.uint8),  # all black image
    np.zeros((5, 17, 23, 3), np.uint8) + 240,  # odd size, white
    np.random.default_rng(0).integers(0, 256, (9, 17, 23, 3), dtype=np.uint8),  # noise
    np.random.default_rng(1).integers(0, 256, (2, 1, 1, 3), dtype=np.uint8),  # 1x1 pixel
    np.random.default_rng(2).integers(0, 256, (3, 200, 3, 3), dtype=np.uint8),  # tall sliver
    np.repeat(_draw("circle", 10, 10, 4, "red", H=20, W=30), 70, axis=0),  # long, tiny object
])
def test_odd_inputs_get_scores_in_range(frames):
    spec = {"background": "black", "pillar": True,
            "objects": [{"color": "red", "shape": "circle", "size": "small", "motion": "left", "speed": "slow"},
                        {"color": "blue", "shape": "square", "size": "large", "motion": "still", "speed": None}]}
    s = score_video(frames, spec)
    for key in ("color", "shape", "size", "motion", "permanence", "count", "background", "consistency",
                "flicker", "overall"):
        assert s[key] is None or 0.0 <= s[key] <= 1.0
    assert s["overall"] is not None
    json.dumps(s)  # plain JSON types only


def test_ground_truth_renders_score_near_one():
    """>= 200 random scenes, 1:1 / 16:9 / 9:16 at 64px area, 1 / 17 / 33 frames, held-out pairs included."""
    gt = ground_truth_scores(num_scenes=201, durations=(1, 17, 33))
    assert gt["overall"] >= 0.98, gt
    for attribute in ("color", "shape", "size", "motion", "count", "background", "consistency", "flicker"):
        assert gt[attribute] >= 0.97, (attribute, gt)


# the attributes that each corruption must leave high
UNRELATED = {
    "color_swap": ("shape", "size", "motion", "background", "count", "flicker"),
    "shape_swap": ("color", "size", "motion", "background", "count", "flicker"),
    "reversed": ("color", "shape", "size", "background", "count", "consistency", "flicker"),
    "frozen": ("color", "shape", "size", "background", "count", "consistency", "flicker"),
    "shuffled": ("color", "shape", "size", "background", "count", "consistency", "flicker"),
    "noise": ("background", "count"),
}
# heavy noise is cleaned before detection: color, shape, size, motion survive it (flicker, on the raw frames, does not)
DENOISED = ("color", "shape", "size", "motion", "background", "count", "consistency")


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_corruption_breaks_its_attribute_only(name):
    durations = (1, 17, 33) if name in ("color_swap", "shape_swap") else (17, 33)
    res = corruption_scores(name, num_scenes=45, durations=durations)
    assert res["judged"] >= 20
    assert res["broken"] <= 0.3, res
    for attribute in UNRELATED[name]:
        assert res["attributes"][attribute] >= 0.9, (attribute, res)
    if name == "noise":
        assert res["attributes"]["flicker"] <= 0.3, res
        for attribute in DENOISED:
            assert res["attributes"][attribute] >= 0.8, (attribute, res)


def test_noise_estimate_and_median_filter():
    from chronotope.bench.templates import estimate_noise, median3

    rng = np.random.default_rng(0)
    clean = _draw("square", 30, 30, 19.2, "green", bg="gray", T=3)
    assert estimate_noise(clean) == 0.0
    noisy = np.clip(clean + rng.normal(0, 16, clean.shape), 0, 255).round().astype(np.uint8)
    assert 12 < estimate_noise(noisy) < 20
    f = rng.integers(0, 256, (2, 9, 11, 3), dtype=np.uint8)
    p = np.pad(f, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    ref = np.median(np.stack([p[:, i:i + 9, j:j + 11] for i in range(3) for j in range(3)]), axis=0)
    assert np.array_equal(median3(f), ref)
    det = detect(np.clip(_draw("triangle", 30, 30, 19.2, "blue", bg="white", T=5).astype(np.float32)
                         + rng.normal(0, 64, (5, 64, 64, 3)), 0, 255).round().astype(np.uint8))
    k = COLOR_NAMES.index("blue")
    assert det.denoised and (det.shape[:, k] == 2).mean() >= 0.8
    assert np.all(np.abs(det.extent[:, k] * 64 - 19.2) < 3.0)


# --- small objects as a generator draws them: faded, desaturated, blurred, leaving the frame ---------


def test_faded_shades_keep_their_color():
    """A palette color mixed with the background (down to 55%) and desaturated by 15% classifies as itself."""
    for b, bg in enumerate(BACKGROUND_NAMES):
        for k, color in enumerate(COLOR_NAMES):
            c, g = np.array(COLORS[color], float), np.array(BACKGROUNDS[bg], float)
            for a in (0.55, 0.7, 0.85, 1.0):
                px = g + a * (c - g)
                px = px + 0.15 * (px.mean() - px)
                frame = np.rint(px).astype(np.uint8)[None, None, None]  # [1, 1, 1, 3]
                assert classify_pixels(frame, background=np.array([b]))[0, 0, 0] == k, (color, bg, a)
    black = np.array([BACKGROUND_NAMES.index("black")])
    # measured inside the shipped model's small yellow triangle: nearest to orange by plain RGB distance
    px = np.array([[[[182, 159, 49]]]], np.uint8)
    assert classify_pixels(px)[0, 0, 0] == COLOR_NAMES.index("orange")
    assert classify_pixels(px, background=black)[0, 0, 0] == COLOR_NAMES.index("yellow")
    # the anti-aliased edge of the pillar is a mix of two references, not a shade: shades change none of it
    from chronotope.world.vocab import PILLAR_COLOR

    for b, bg in enumerate(BACKGROUND_NAMES):
        f = np.linspace(0, 1, 21)[:, None]
        edge = np.rint(f * np.array(PILLAR_COLOR) + (1 - f) * np.array(BACKGROUNDS[bg])).astype(np.uint8)[None, None]
        assert np.array_equal(classify_pixels(edge, background=np.array([b])), classify_pixels(edge)), bg


@pytest.mark.parametrize("bg", ["black", "white", "gray"])
@pytest.mark.parametrize("shape", ["circle", "square", "triangle"])
def test_soft_small_shapes_keep_their_shape(shape, bg):
    """Small shapes (9.6 px at 64 px) blurred by 1 px, at 85% contrast and desaturated: color, shape and size hold."""
    from chronotope.bench.score import SIZE_SPLIT

    color = {"black": "yellow", "white": "blue", "gray": "red"}[bg]
    frames = soften(_draw(shape, cx=30.3, cy=27.7, d=9.6, color=color, bg=bg, T=3), bg)
    det = detect(frames)
    k = COLOR_NAMES.index(color)
    assert det.significant[:, k].all() and det.significant.sum(1).tolist() == [1, 1, 1]
    assert (det.shape[:, k] == ("circle", "square", "triangle").index(shape)).all(), (det.fill[:, k], det.skew[:, k])
    assert np.all((det.extent[:, k] > 0.1) & (det.extent[:, k] < SIZE_SPLIT))  # 0.15 drawn; 85% contrast reads ~0.12
    crisp = detect(_draw(shape, cx=30.3, cy=27.7, d=9.6, color=color, bg=bg))
    assert abs(crisp.skew[0, k] - (-0.566 if shape == "triangle" else 0.0)) < 0.08  # the apex-up triangle's skew


def _rising(T: int = 17, vanish_at: int | None = None, fade_rows: float = 0.0) -> np.ndarray:
    """A small yellow triangle rising 3 px per frame on black from y = 32, softened; gone from frame vanish_at on
    and as soon as its top is within fade_rows px of the top edge (a generator's object often fades as it leaves)."""
    frames = []
    for t in range(T):
        cy = 32.0 - 3.0 * t
        gone = (vanish_at is not None and t >= vanish_at) or (cy - 4.8 < fade_rows)
        frames.append(_draw("triangle", 20.0, cy, 9.6, "yellow") if not gone else np.full((1, 64, 64, 3), 15, np.uint8))
    return soften(np.concatenate(frames), "black")


def test_an_object_that_fades_as_it_leaves_keeps_its_color():
    spec = {"background": "black", "pillar": False,
            "objects": [{"color": "yellow", "shape": "triangle", "size": "small", "motion": "up", "speed": "fast"}]}
    # last seen (frame 7) with its top 6 px below the edge, never touching it, then gone for 9 frames: moving on
    # at 3 px per frame it reaches the edge by frame 9, so only frame 8 counts as missing
    s = score_video(_rising(fade_rows=6.0), spec)
    assert s["color"] == 1.0 and s["motion"] == 1.0 and s["shape"] >= 0.8
    # the same object vanishing at frame 4, 15 px from the edge, is missing until it would have reached it
    s = score_video(_rising(vanish_at=4), spec)
    assert s["color"] < 0.5


def test_a_faint_color_bleed_is_not_an_extra_object():
    spec = {"background": "white", "pillar": False,
            "objects": [{"color": "orange", "shape": "square", "size": "large", "motion": "still", "speed": None}]}
    host = _draw("square", 32, 36, 19.2, "orange", bg="white", T=3)
    bleed = host.copy()  # a faint red patch on the orange square's top edge, as where a generator blends in pink
    white = np.array(BACKGROUNDS["white"], float)
    bleed[:, 22:29, 28:37] = np.rint(white + 0.8 * (np.array(COLORS["red"], float) - white)).astype(np.uint8)
    s = score_video(bleed, spec)
    assert s["count"] == 1.0 and s["color"] == 1.0
    extra = host.copy()  # a full red square of its own, apart from the orange one, is an extra object
    extra[:, 4:12, 4:12] = COLORS["red"]
    assert score_video(extra, spec)["count"] == 0.0


def test_shipped_model_small_yellow_triangle():
    """The issue's video (tests/data, made by the shipped model at seed 0): a small, slightly dark yellow triangle
    that rises and leaves the top. The bench read it as color 0.18 and shape 0 (pieces of it classified orange)."""
    s = score_file(Path(__file__).parent / "data" / "small_yellow_triangle_up_seed0.mp4")
    assert s["color"] == 1.0 and s["size"] == 1.0 and s["motion"] == 1.0 and s["count"] == 1.0
    # its 7 clear frames (of 14 in view) read as a triangle; those where the model smears it into a blob do not
    assert s["shape"] >= 0.4


def test_small_object_scenes_score_near_one():
    """The "small" scene set (bench.corrupt): softened small fast objects, most leaving the frame."""
    gt = ground_truth_scores(num_scenes=40, durations=(17, 33), scene_set="small")
    assert gt["overall"] >= 0.98 and gt["overall_min"] >= 0.8, gt
    for attribute in ("color", "shape", "size", "motion", "count", "background", "consistency", "flicker"):
        assert gt[attribute] >= 0.97, (attribute, gt)
    assert small_scene(0).spec["objects"][0] == {"color": "yellow", "shape": "triangle", "size": "small",
                                                  "motion": "up", "speed": "fast"}


@pytest.mark.parametrize("name", ["color_swap", "shape_swap", "reversed", "frozen", "shuffled"])
def test_small_object_corruptions_break_their_attribute(name):
    durations = (17, 33)
    res = corruption_scores(name, num_scenes=30, durations=durations, scene_set="small")
    assert res["judged"] >= 20
    assert res["broken"] <= 0.3, res
    for attribute in ("background", "count", "flicker"):
        assert res["attributes"][attribute] >= 0.9, (attribute, res)


# --- files, folders, manifests, CLI ------------------------------------------------------------


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    from chronotope.video import write_video

    folder = tmp_path_factory.mktemp("bench_clips")
    specs = []
    for i, seed in enumerate((0, 1, 2)):
        scene = sample_scene(seed, include_heldout=True)
        write_video(str(folder / f"clip{i}.mp4"), render(scene, 64, 64, 17, 8.0).frames, 8.0)
        (folder / f"clip{i}.json").write_text(json.dumps({"spec": scene.spec}))
        specs.append(scene.spec)
    heldout = scene_from_spec({"background": "white", "pillar": False, "objects": [
        {"color": "purple", "shape": "triangle", "size": "large", "motion": "still", "speed": None}]}, seed=0)
    write_video(str(folder / "image.png"), render(heldout, 32, 48, 1, 8.0).frames, 8.0)
    (folder / "image.json").write_text(json.dumps({"prompt": "a large purple triangle on a white background"}))
    (folder / "broken.mp4").write_bytes(b"not a video")
    return folder, specs


def test_score_file_reads_sidecar_prompt_and_rejects_garbage(clips):
    from chronotope.video import VideoReadError

    folder, specs = clips
    s = score_file(folder / "clip0.mp4")
    assert s["overall"] >= 0.95 and s["spec"] == specs[0]
    s = score_file(folder / "image.png")
    assert s["shape"] == 1.0 and s["color"] == 1.0 and s["motion"] is None
    with pytest.raises(VideoReadError):
        score_file(folder / "broken.mp4", prompt="a red circle")
    with pytest.raises(FileNotFoundError):
        score_file(folder / "missing.mp4", prompt="a red circle")
    with pytest.raises(ValueError):
        score_file(folder / "clip0.mp4", spec="{not json")


def test_run_bench_folder_and_manifest(clips, tmp_path):
    folder, specs = clips
    res = run_bench(folder, tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["summary"] == res["summary"]
    assert res["summary"]["all"]["videos"] == 4 and res["summary"]["heldout"]["videos"] >= 1
    assert [e["path"].endswith("broken.mp4") for e in res["errors"]] == [True]
    assert res["summary"]["all"]["overall"] >= 0.95
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| heldout |" in report and "| seen |" in report and "| overall | color |" in report

    manifest = tmp_path / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "text", "num_frames", "spec"])
        w.writerow([str(folder / "clip1.mp4"), "", 17, json.dumps(specs[1])])
        w.writerow([str(folder / "clip2.mp4"), "a tiny unicorn", 17, json.dumps(specs[0])])  # wrong spec
    res = run_bench(manifest, tmp_path / "out2")
    right, wrong = (v["scores"]["overall"] for v in res["videos"])
    assert right >= 0.95 and wrong < right


def test_cli_bench_score_and_run(clips, tmp_path, capsys):
    from chronotope.cli import main

    folder, specs = clips
    assert main(["bench", "score", str(folder / "clip0.mp4"), "--spec", json.dumps(specs[0])]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) >= {"overall", "color", "motion", "flicker"} and out["overall"] >= 0.95
    assert main(["bench", "score", str(folder / "broken.mp4"), "--prompt", "a red circle"]) == 2
    assert main(["bench", "run", str(folder), "--out", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "report.md").exists()
    with pytest.raises(SystemExit):
        main(["bench"])  # a sub-verb is required
