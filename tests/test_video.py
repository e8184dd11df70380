"""Video IO: round trips through mp4/gif/png, frame selection (range, stride, fps), bad inputs."""

from __future__ import annotations

import os
import subprocess
import sys
from fractions import Fraction

import av
import numpy as np
import pytest

from chronotope.video import IMAGE_FPS, VideoReadError, probe_video, read_video, write_frames, write_video


def ffprobe(path: str) -> dict:
    """Frames, width, height of the first video stream, decoded by FFmpeg's own decoders through PyAV (not our
    read_video): what ffprobe -count_frames reports, without needing the ffmpeg binaries on the machine."""
    with av.open(path) as c:
        stream = c.streams.video[0]
        sizes = [(f.height, f.width) for f in c.decode(stream)]
    assert sizes and len(set(sizes)) == 1, f"{path}: frames of several sizes {set(sizes)}"
    return {"frames": len(sizes), "height": sizes[0][0], "width": sizes[0][1]}


def index_clip(t: int, h: int = 32, w: int = 48) -> np.ndarray:
    """[t, h, w, 3] uint8 whose frame i is flat (16 * (i % 16), 16 * (i // 16), 0): i survives lossy coding."""
    i = np.arange(t)
    color = np.stack([16 * (i % 16), 16 * (i // 16), 0 * i], -1).astype(np.uint8)  # [t, 3]
    return np.broadcast_to(color[:, None, None, :], (t, h, w, 3)).copy()


def frame_ids(frames: np.ndarray) -> list[int]:
    mean = frames.reshape(len(frames), -1, 3).mean(1)  # [T, 3]
    return [int(round(r / 16)) + 16 * int(round(g / 16)) for r, g, _ in mean]


def write_with_gop(path: str, frames: np.ndarray, fps: int, codec: str, gop: int) -> None:
    """A video with a keyframe every `gop` frames, so seeking lands mid-stream."""
    with av.open(path, "w") as c:
        st = c.add_stream(codec, rate=fps)
        st.pix_fmt, st.height, st.width = "yuv420p", frames.shape[1], frames.shape[2]
        st.options = {"g": str(gop)}
        for t, arr in enumerate(frames):
            f = av.VideoFrame.from_ndarray(arr, format="rgb24")
            f.pts, f.time_base = t, Fraction(1, fps)
            c.mux(st.encode(f))
        c.mux(st.encode(None))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


# --- round trips -------------------------------------------------------------------------------


def test_mp4_round_trip(tmp_path, rng):
    # smooth content (low-frequency gradients) so H.264 at crf 18 keeps it close
    t, h, w = 9, 48, 64
    yy, xx = np.mgrid[0:h, 0:w]
    frames = np.stack([np.stack([(xx * 4 + 8 * i) % 256, yy * 5, np.full_like(xx, 30 * (i % 5))], -1)
                       for i in range(t)]).astype(np.uint8)
    path = str(tmp_path / "clip.mp4")
    write_video(path, frames, fps=12)
    assert ffprobe(path) == {"frames": t, "height": h, "width": w}
    info = probe_video(path)
    assert (info.num_frames, info.height, info.width, info.fps) == (t, h, w, 12.0)
    assert info.duration == pytest.approx(t / 12)
    back, fps = read_video(path)
    assert back.shape == frames.shape and back.dtype == np.uint8 and fps == 12.0
    err = np.abs(back.astype(int) - frames.astype(int))
    assert err.mean() < 4, err.mean()
    assert not [p for p in os.listdir(tmp_path) if p != "clip.mp4"], "temp files left behind"


@pytest.mark.parametrize("h,w", [(33, 47), (17, 16), (16, 31)])
def test_mp4_odd_size_is_edge_padded(tmp_path, h, w):
    frames = index_clip(5, h, w)
    frames[:, -2:, :] = frames[:, :, -2:] = (250, 40, 40)  # red border: padding repeats it, not black
    path = str(tmp_path / "odd.mp4")
    write_video(path, frames, fps=8)
    eh, ew = h + h % 2, w + w % 2
    assert ffprobe(path) == {"frames": 5, "height": eh, "width": ew}
    back, _ = read_video(path)
    assert back.shape == (5, eh, ew, 3)
    assert back[:, -1, :, 0].mean() > 200 and back[:, :, -1, 0].mean() > 200  # last row/column stay red


def test_gif_round_trip_exact_palette(tmp_path, rng):
    palette = rng.integers(0, 256, (12, 3), dtype=np.uint8)
    frames = palette[rng.integers(0, 12, (6, 20, 30))]  # <= 256 colors: lossless
    path = str(tmp_path / "clip.gif")
    write_video(path, frames, fps=10)
    assert ffprobe(path) == {"frames": 6, "height": 20, "width": 30}
    back, fps = read_video(path)
    np.testing.assert_array_equal(back, frames)
    assert fps == pytest.approx(10, rel=0.05)


def test_gif_many_colors_is_close(tmp_path, rng):
    yy, xx = np.mgrid[0:32, 0:40]
    frames = np.stack([np.stack([xx * 6, yy * 8, np.full_like(xx, 40 * i)], -1) for i in range(4)])
    frames = frames.clip(0, 255).astype(np.uint8)  # ~5000 distinct colors -> median cut
    path = str(tmp_path / "grad.gif")
    write_video(path, frames, fps=5)
    back, _ = read_video(path)
    assert back.shape == frames.shape
    assert np.abs(back.astype(int) - frames.astype(int)).mean() < 8


def test_png_round_trip_and_image_is_one_frame(tmp_path, rng):
    frame = rng.integers(0, 256, (1, 19, 23, 3), dtype=np.uint8)
    path = str(tmp_path / "img.png")
    write_video(path, frame, fps=1)
    assert ffprobe(path) == {"frames": 1, "height": 19, "width": 23}
    info = probe_video(path)
    assert (info.num_frames, info.height, info.width, info.fps) == (1, 19, 23, IMAGE_FPS)
    back, fps = read_video(path, fps=24)  # resampling an image still gives its one frame
    np.testing.assert_array_equal(back, frame)
    assert fps == IMAGE_FPS


def test_png_with_several_frames_points_to_write_frames(tmp_path):
    with pytest.raises(ValueError, match="write_frames"):
        write_video(str(tmp_path / "x.png"), index_clip(3, 16, 16), fps=8)
    assert not os.listdir(tmp_path)


def test_write_frames_folder(tmp_path):
    frames = index_clip(3, 16, 20)
    paths = write_frames(tmp_path / "frames", frames)
    assert [os.path.basename(p) for p in paths] == ["000000.png", "000001.png", "000002.png"]
    for i, p in enumerate(paths):
        np.testing.assert_array_equal(read_video(p)[0][0], frames[i])


def test_write_rejects_bad_frames_and_extensions(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        write_video(str(tmp_path / "a.mp4"), np.zeros((2, 16, 16, 3), np.float32), fps=8)
    with pytest.raises(ValueError, match=r"\[T, H, W, 3\]"):
        write_video(str(tmp_path / "a.mp4"), np.zeros((16, 16, 3), np.uint8), fps=8)
    with pytest.raises(ValueError, match="extension"):
        write_video(str(tmp_path / "a.avi"), index_clip(2, 16, 16), fps=8)
    with pytest.raises(ValueError, match="fps"):
        write_video(str(tmp_path / "a.mp4"), index_clip(2, 16, 16), fps=0)


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    path = str(tmp_path / "keep.mp4")
    write_video(path, index_clip(3, 16, 16), fps=8)
    before = open(path, "rb").read()
    import chronotope.video as video

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(video, "_write_av", boom)
    with pytest.raises(RuntimeError):
        write_video(path, index_clip(5, 16, 16), fps=8)
    assert open(path, "rb").read() == before
    assert os.listdir(tmp_path) == ["keep.mp4"]


# --- frame selection ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def indexed_mp4(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("idx") / "idx.mp4")
    write_video(path, index_clip(40), fps=20)
    return path


def test_range_stride_and_max_frames(indexed_mp4):
    assert frame_ids(read_video(indexed_mp4)[0]) == list(range(40))
    assert frame_ids(read_video(indexed_mp4, start=5, end=12)[0]) == list(range(5, 12))
    frames, fps = read_video(indexed_mp4, start=3, end=20, stride=4)
    assert frame_ids(frames) == [3, 7, 11, 15, 19] and fps == 5.0
    assert frame_ids(read_video(indexed_mp4, start=10, max_frames=3)[0]) == [10, 11, 12]
    assert frame_ids(read_video(indexed_mp4, start=35, end=100)[0]) == list(range(35, 40))


def test_fps_resampling_takes_nearest_frame(indexed_mp4):
    frames, fps = read_video(indexed_mp4, fps=8)  # 20 -> 8 fps: source step 2.5
    assert fps == 8.0
    assert frame_ids(frames) == [int(np.floor(k * 2.5 + 0.5)) for k in range(16)]
    up, _ = read_video(indexed_mp4, start=4, end=7, fps=40)  # upsampling repeats frames
    assert frame_ids(up) == [4, 5, 5, 6, 6]


def test_selection_argument_errors(indexed_mp4):
    with pytest.raises(ValueError, match="either stride or fps"):
        read_video(indexed_mp4, stride=2, fps=10)
    with pytest.raises(ValueError, match="end must be > start"):
        read_video(indexed_mp4, start=5, end=5)
    with pytest.raises(ValueError, match="past the last frame"):
        read_video(indexed_mp4, start=40)


@pytest.mark.parametrize("codec,ext", [("libx264", "mp4"), ("libvpx-vp9", "webm")])
def test_seek_lands_on_the_right_frames(tmp_path, codec, ext):
    path = str(tmp_path / f"long.{ext}")
    write_with_gop(path, index_clip(110, 16, 16), fps=25, codec=codec, gop=8)
    assert probe_video(path).num_frames == 110
    assert frame_ids(read_video(path, start=93, end=98)[0]) == [93, 94, 95, 96, 97]
    assert frame_ids(read_video(path, start=61, end=70, stride=4)[0]) == [61, 65, 69]
    assert frame_ids(read_video(path, start=100)[0]) == list(range(100, 110))


def test_mkv_and_mov_containers(tmp_path):
    for ext in ("mkv", "mov"):
        path = str(tmp_path / f"c.{ext}")
        write_with_gop(path, index_clip(9, 16, 16), fps=10, codec="libx264", gop=4)
        assert probe_video(path).num_frames == 9
        assert frame_ids(read_video(path, start=2, end=6)[0]) == [2, 3, 4, 5]


# --- bad inputs --------------------------------------------------------------------------------


def bad_inputs(tmp: str) -> dict[str, tuple[str, str]]:
    """name -> (path, a word the error must contain)."""
    good = os.path.join(tmp, "good.mp4")
    write_video(good, index_clip(8, 16, 16), fps=8)
    data = open(good, "rb").read()
    cases = {"missing": (os.path.join(tmp, "nope.mp4"), "no such file")}
    open(os.path.join(tmp, "empty.mp4"), "wb").close()
    cases["empty"] = (os.path.join(tmp, "empty.mp4"), "empty")
    with open(os.path.join(tmp, "trunc.mp4"), "wb") as f:
        f.write(data[: len(data) // 2])
    cases["truncated"] = (os.path.join(tmp, "trunc.mp4"), "truncated")
    with open(os.path.join(tmp, "text.mp4"), "w") as f:
        f.write("this is a caption, not a video\n" * 20)
    cases["text"] = (os.path.join(tmp, "text.mp4"), "not a readable video")
    audio = os.path.join(tmp, "audio.m4a")
    with av.open(audio, "w") as c:
        st = c.add_stream("aac", rate=16000)
        for i in range(10):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            c.mux(st.encode(frame))
        c.mux(st.encode(None))
    cases["audio"] = (audio, "no video stream")
    os.makedirs(os.path.join(tmp, "folder.mp4"))
    cases["directory"] = (os.path.join(tmp, "folder.mp4"), "directory")
    return cases


@pytest.mark.parametrize("reader", [probe_video, read_video])
def test_bad_inputs_raise_video_read_error(tmp_path, reader):
    for name, (path, reason) in bad_inputs(str(tmp_path)).items():
        with pytest.raises(VideoReadError) as info:
            reader(path)
        message = str(info.value)
        assert path in message, f"{name}: message does not name the file: {message}"
        assert reason in message, f"{name}: expected {reason!r} in {message!r}"


def test_mp4_writer_streams_atomically(tmp_path):
    from chronotope.video import Mp4Writer

    path = tmp_path / "stream.mp4"
    with Mp4Writer(path, fps=8) as out:
        for i in range(3):
            out.write(np.full((4, 33, 47, 3), 60 * i, np.uint8))  # odd size: padded like write_video
    frames, fps = read_video(path)
    assert frames.shape == (12, 34, 48, 3) and fps == 8
    assert abs(int(frames[-1].mean()) - 120) <= 3
    with pytest.raises(RuntimeError):
        with Mp4Writer(tmp_path / "failed.mp4", fps=8) as out:
            out.write(np.zeros((2, 16, 16, 3), np.uint8))
            raise RuntimeError("generation failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stream.mp4"]  # no output, no temp file
    with pytest.raises(ValueError, match="one size"):
        with Mp4Writer(tmp_path / "sizes.mp4", fps=8) as out:
            out.write(np.zeros((1, 16, 16, 3), np.uint8))
            out.write(np.zeros((1, 32, 32, 3), np.uint8))


def test_video_tests_need_no_ffmpeg_binaries(tmp_path):
    """A fresh machine has no Debian ffmpeg: these tests run with a PATH that holds no ffprobe or ffmpeg."""
    env = {**os.environ, "PATH": str(tmp_path)}  # an empty folder: no binaries at all
    run = subprocess.run([sys.executable, "-m", "pytest", "-o", "addopts=", "-p", "no:cacheprovider", __file__,
                          "-k", "round_trip or odd_size"], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "6 passed" in run.stdout, run.stdout[-2000:]
