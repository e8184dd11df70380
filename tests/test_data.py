"""Manifests (read/write/build, `chronotope manifest`) and VideoDataset (shapes, aspect, failures)."""

from __future__ import annotations

import csv
import json
import logging
import os

import numpy as np
import pytest
import torch

from chronotope.cli import main as cli_main
from chronotope.data.dataset import VideoDataset, budget_size, check_num_frames
from chronotope.data.manifest import (
    MANIFEST_COLUMNS,
    aspect_ratio_name,
    build_manifest,
    errors_csv_path,
    read_manifest,
    write_manifest,
)
from chronotope.video import write_video


def clip(t: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth [t, h, w, 3] uint8 content whose frame i is offset by 8*i (frames tell apart)."""
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([np.stack([(xx * 200 // w + 8 * i) % 256, yy * 200 // h, np.full_like(xx, 60 + seed)], -1)
                     for i in range(t)]).astype(np.uint8)


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> str:
    """A folder: two videos of different aspect ratios, an image, a sidecar caption, a bad file."""
    root = tmp_path_factory.mktemp("media")
    os.makedirs(root / "sub")
    write_video(str(root / "wide.mp4"), clip(21, 36, 64), fps=12)  # 16:9
    write_video(str(root / "sub" / "tall.mp4"), clip(11, 64, 48), fps=10)  # 3:4, shorter than 17
    write_video(str(root / "still.png"), clip(1, 48, 48), fps=1)
    (root / "wide.txt").write_text("a red circle\nmoves left\n")
    (root / "broken.mp4").write_text("not a video")
    (root / "notes.md").write_text("ignored: not media")
    return str(root)


# --- manifest ----------------------------------------------------------------------------------


@pytest.mark.parametrize("h,w,name", [(1080, 1920, "16:9"), (480, 854, "16:9"), (64, 64, "1:1"), (480, 640, "4:3"),
                                      (640, 480, "3:4"), (1920, 1080, "9:16"), (32, 64, "2:1"), (64, 32, "1:2"),
                                      (480, 720, "3:2"), (80, 48, "3:5")])
def test_aspect_ratio_name(h, w, name):
    assert aspect_ratio_name(h, w) == name


def test_aspect_ratio_name_rejects_bad_sizes():
    with pytest.raises(ValueError, match="positive"):
        aspect_ratio_name(0, 16)


def test_write_read_round_trip_with_relative_paths_and_spec(tmp_path):
    (tmp_path / "clips").mkdir()
    rows = [
        {"path": str(tmp_path / "clips" / "a.mp4"), "text": 'a "quoted", caption', "num_frames": 17, "height": 64,
         "width": 112, "fps": 8.0, "short_text": "a red circle", "spec": {"objects": [{"color": "red"}]}},
        {"path": "/elsewhere/b.png", "text": "", "num_frames": 1, "height": 32, "width": 32, "fps": 0.0,
         "short_text": "", "spec": ""},
    ]
    out = tmp_path / "m.csv"
    write_manifest(str(out), rows)
    with open(out, newline="") as f:
        raw = list(csv.DictReader(f))
    assert raw[0]["path"] == "clips/a.mp4"  # inside the folder: relative, so it moves with it
    assert raw[1]["path"] == "/elsewhere/b.png"
    back = read_manifest(str(out))
    assert back[0]["path"] == str(tmp_path / "clips" / "a.mp4")
    assert back[0]["num_frames"] == 17 and isinstance(back[0]["num_frames"], int)
    assert back[0]["fps"] == 8.0 and back[0]["aspect_ratio"] == "16:9" and back[1]["aspect_ratio"] == "1:1"
    assert back[0]["text"] == 'a "quoted", caption'
    assert json.loads(back[0]["spec"]) == {"objects": [{"color": "red"}]}
    assert back[1]["spec"] == "" and back[1]["short_text"] == ""
    assert [f for f in os.listdir(tmp_path) if f.endswith(".tmp")] == []


def test_read_manifest_errors_name_the_problem(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("path,text,num_frames,height,width,fps\nx.mp4,hi,5,16,16,8\n")
    with pytest.raises(ValueError, match="aspect_ratio"):
        read_manifest(str(bad))
    bad.write_text(",".join(MANIFEST_COLUMNS) + "\nx.mp4,hi,five,16,16,1:1,8\n")
    with pytest.raises(ValueError, match="line 2.*num_frames"):
        read_manifest(str(bad))
    bad.write_text(",".join(MANIFEST_COLUMNS) + ",spec\nx.mp4,hi,5,16,16,1:1,8,{oops\n")
    with pytest.raises(ValueError, match="spec"):
        read_manifest(str(bad))
    with pytest.raises(FileNotFoundError, match="chronotope manifest"):
        read_manifest(str(tmp_path / "missing.csv"))


def test_build_manifest_probes_captions_and_reports_errors(media, tmp_path):
    out = str(tmp_path / "out" / "m.csv")
    report = build_manifest(media, out, progress=False)
    assert (report.num_rows, report.num_videos, report.num_images) == (3, 2, 1)
    assert [os.path.basename(p) for p, _ in report.errors] == ["broken.mp4"]
    assert "broken.mp4" in report.summary()
    rows = {os.path.basename(r["path"]): r for r in read_manifest(out)}
    assert set(rows) == {"wide.mp4", "tall.mp4", "still.png"}
    assert rows["wide.mp4"]["text"] == "a red circle moves left"
    assert rows["tall.mp4"]["text"] == ""
    assert (rows["wide.mp4"]["num_frames"], rows["wide.mp4"]["height"], rows["wide.mp4"]["width"]) == (21, 36, 64)
    assert rows["wide.mp4"]["fps"] == 12.0 and rows["wide.mp4"]["aspect_ratio"] == "16:9"
    assert rows["tall.mp4"]["aspect_ratio"] == "3:4" and rows["still.png"]["num_frames"] == 1
    with open(errors_csv_path(out), newline="") as f:
        errors = list(csv.DictReader(f))
    assert len(errors) == 1 and errors[0]["path"].endswith("broken.mp4") and "broken.mp4" in errors[0]["error"]


def test_build_manifest_empty_folder_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no videos or images"):
        build_manifest(str(tmp_path), str(tmp_path / "m.csv"), progress=False)


def test_cli_manifest(media, tmp_path, capsys):
    out = str(tmp_path / "cli.csv")
    assert cli_main(["manifest", media, "--out", out, "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "3 rows" in printed and "broken.mp4" in printed and errors_csv_path(out) in printed
    assert len(read_manifest(out)) == 3
    assert cli_main(["manifest", str(tmp_path / "nowhere"), "--out", out]) == 2  # clear error, no traceback


# --- dataset -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def manifest(media, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("man") / "m.csv")
    build_manifest(media, out, progress=False)
    return out


def test_budget_size_keeps_aspect_and_multiples_of_16():
    assert budget_size(1080, 1920, 64 * 64) == (48, 80)
    assert budget_size(64, 64, 64 * 64) == (64, 64)
    assert budget_size(36, 64, 32 * 32) == (16, 32)  # 16x48 would crop 40% of the height
    assert budget_size(64, 48, 32 * 32) == (32, 32)  # rounding up a side beats 32x16
    assert budget_size(20, 1000, 64 * 64) == (16, 448)  # never below 16
    for h, w in [(36, 64), (64, 48), (480, 720), (100, 37)]:
        bh, bw = budget_size(h, w, 96 * 96)
        assert bh % 16 == 0 and bw % 16 == 0 and bh * bw <= 96 * 96
        assert abs(np.log((bw / bh) / (w / h))) < 0.35
    with pytest.raises(ValueError, match="256"):
        budget_size(64, 64, 100)


def test_check_num_frames_names_neighbours():
    check_num_frames(17)
    with pytest.raises(ValueError, match="try 13 or 17"):
        check_num_frames(16)


def test_dataset_items(manifest):
    ds = VideoDataset(manifest, num_frames=9, max_pixels=48 * 48, random_start=False)
    items = {os.path.basename(ds[i]["path"]): ds[i] for i in range(len(ds))}
    wide, tall, still = items["wide.mp4"], items["tall.mp4"], items["still.png"]
    assert wide["video"].shape == (3, 9, 32, 64)  # 16:9 -> wide, not squashed to a square
    assert tall["video"].shape == (3, 9, 48, 32)  # 3:4 -> tall
    assert still["video"].shape == (3, 1, 48, 48)
    assert wide["text"] == "a red circle moves left" and wide["fps"] == 12.0
    for item in items.values():
        v = item["video"]
        assert v.dtype == torch.float32 and v.min() >= -1 and v.max() <= 1 and v.std() > 0.05
        assert v.shape[1] % 4 == 1 and v.shape[2] % 16 == 0 and v.shape[3] % 16 == 0
    # frames advance in time: mean red of the wide clip grows by 8/127.5 per frame; write_video
    # codes it lossily, so one step may come out short (it failed once as a strict check), never reversed
    steps = wide["video"][0].mean((1, 2)).diff()
    assert steps.min() > -0.02 and abs(steps.mean().item() - 8 / 127.5) < 0.02, steps


def test_short_video_gives_longest_4k_plus_1_prefix_and_stride(manifest):
    ds = VideoDataset(manifest, num_frames=17, max_pixels=32 * 32)
    lengths = {os.path.basename(ds[i]["path"]): ds[i]["video"].shape[1] for i in range(len(ds))}
    assert lengths == {"wide.mp4": 17, "tall.mp4": 9, "still.png": 1}  # tall has 11 frames -> 9
    strided = VideoDataset(manifest, num_frames=5, stride=4, max_pixels=32 * 32, random_start=False)
    item = next(strided[i] for i in range(3) if strided[i]["path"].endswith("wide.mp4"))
    assert item["video"].shape[1] == 5 and item["fps"] == 3.0
    resampled = VideoDataset(manifest, num_frames=5, target_fps=6, max_pixels=32 * 32, random_start=False)
    item = next(resampled[i] for i in range(3) if resampled[i]["path"].endswith("wide.mp4"))
    assert item["video"].shape[1] == 5 and item["fps"] == 6.0
    with pytest.raises(ValueError, match="4k\\+1"):
        VideoDataset(manifest, num_frames=8)


def test_random_start_is_deterministic_per_index_and_epoch(manifest):
    rows = [r for r in read_manifest(manifest) if r["path"].endswith("wide.mp4")]
    starts = []
    for seed, epoch in [(0, 0), (0, 0), (0, 1), (0, 2), (0, 3), (1, 0)]:
        ds = VideoDataset(rows, num_frames=5, max_pixels=16 * 16, seed=seed)
        ds.set_epoch(epoch)
        starts.append(ds[0]["video"][0].mean().item())
    assert starts[0] == starts[1]  # same index, seed, epoch -> same clip
    assert len(set(starts)) > 2  # other epochs / seeds move the window


def test_corrupt_row_is_skipped_counted_and_logged_once(manifest, media, caplog):
    rows = read_manifest(manifest)
    bad = dict(rows[0], path=os.path.join(media, "broken.mp4"))
    ds = VideoDataset([bad] + rows * 4, num_frames=5, max_pixels=16 * 16, max_failure_fraction=0.5)
    with caplog.at_level(logging.WARNING, logger="chronotope.data.dataset"):
        first = ds[0]
        ds[0]
    assert first["path"] == rows[0]["path"]  # the next good row stands in
    assert ds.failures == 2
    assert sum("broken.mp4" in r.message for r in caplog.records) == 1
    for i in range(1, len(ds)):
        ds[i]
    assert ds.failures == 2


def test_failure_fraction_exceeded_raises(manifest, media):
    rows = read_manifest(manifest)
    bad = [dict(rows[0], path=os.path.join(media, f"missing{i}.mp4")) for i in range(6)]
    ds = VideoDataset(bad + rows, num_frames=5, max_pixels=16 * 16, max_failure_fraction=0.1)
    with pytest.raises(RuntimeError, match="max_failure_fraction"):
        for i in range(len(ds)):
            ds[i]
    lenient = VideoDataset(bad + rows, num_frames=5, max_pixels=16 * 16, max_failure_fraction=0.99)
    for i in range(len(lenient)):
        assert lenient[i]["video"].shape[1] in (1, 5)
    assert lenient.failures > 0
