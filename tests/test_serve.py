"""The web app's pure parts, without Gradio or a browser (tests/test_serve_browser.py drives the real page):
form values -> request, upload checks with the command line's messages, the output folder no write leaves,
and one model run at a time."""

from __future__ import annotations

import os
import shutil
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from chronotope.cli import main
from chronotope.pipeline import VideoPipeline
from chronotope.request import STORYBOARD_SETTINGS, check_request, spelled
from chronotope.serve import forms
from chronotope.serve.forms import LABELS, build_request, check_upload
from chronotope.serve.studio import OutputFolder, Studio
from chronotope.video import VideoReadError, read_video, write_video

BLANK = {"prompt": "", "mode": "auto", "image": None, "video": None, "video_end": None, "direction": "forward",
         "image_position": "first", "strength": "", "storyboard": "", "resolution": forms.DEFAULT,
         "aspect_ratio": forms.DEFAULT, "height": "", "width": "", "num_frames": "", "gap_frames": "", "fps": "",
         "num_inference_steps": 30, "guidance_scale": 5.0, "seed": "", "sampler": "euler", "negative_prompt": "",
         "expand_prompt": True}


def form(**changes) -> dict:
    return {**BLANK, **changes}


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("uploads")
    rng = np.random.default_rng(0)
    write_video(str(root / "clip.mp4"), rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8), fps=8)
    write_video(str(root / "still.png"), rng.integers(0, 256, (1, 32, 32, 3), dtype=np.uint8), fps=1)
    (root / "bad.mp4").write_bytes(b"this is not a video")
    (root / "notes.txt").write_text("hello")
    return {name: str(root / name) for name in ("clip.mp4", "still.png", "bad.mp4", "notes.txt")}


# --- form values -> request ---------------------------------------------------------------------------


def test_blank_fields_are_the_models_defaults_and_numbers_arrive_as_numbers():
    kind, kw = build_request(form(prompt=" a red circle moves left ", num_frames="17", seed="3", fps=" 8 ",
                                  num_inference_steps=2.0, resolution="64px", aspect_ratio="16:9"))
    assert kind == "generate"
    assert kw["prompt"] == "a red circle moves left" and kw["mode"] is None
    assert (kw["num_frames"], kw["seed"], kw["fps"], kw["num_inference_steps"]) == (17, 3, 8, 2)
    assert all(type(kw[k]) is int for k in ("num_frames", "seed", "num_inference_steps"))
    assert kw["height"] is kw["width"] is kw["strength"] is kw["gap_frames"] is kw["negative_prompt"] is None
    assert (kw["resolution"], kw["aspect_ratio"], kw["sampler"], kw["guidance_scale"]) == ("64px", "16:9", "euler", 5)
    _, kw = build_request(form(prompt="x", num_inference_steps=None, guidance_scale=None, sampler=None))
    assert kw["resolution"] is kw["aspect_ratio"] is kw["seed"] is None
    assert kw["num_inference_steps"] is kw["guidance_scale"] is kw["sampler"] is None  # the model folder's defaults


def test_bad_numbers_are_refused_by_the_one_validation_naming_the_field_as_labelled():
    _, kw = build_request(form(prompt="x", num_frames="6", seed="4.5", fps="abc"))
    with spelled(LABELS), pytest.raises(ValueError, match=r"^Frames 6: .*nearest valid: 5 or 9"):
        check_request(num_frames=kw["num_frames"])
    with spelled(LABELS), pytest.raises(ValueError, match=r"^Seed 4\.5: must be a whole number"):
        check_request(seed=kw["seed"])
    with spelled(LABELS), pytest.raises(ValueError, match=r"^FPS abc: must be a number"):
        check_request(fps=kw["fps"])


def test_modes_and_storyboards_from_the_form():
    _, kw = build_request(form(prompt="x", mode="loop"))
    assert kw["mode"] == "loop"
    kind, kw = build_request(form(mode="storyboard", storyboard='[{"prompt": "a red circle", "num_frames": 5}]'))
    assert kind == "storyboard" and kw["storyboard"]["shots"] == [{"prompt": "a red circle", "num_frames": 5}]
    assert "prompt" not in kw and "num_frames" not in kw
    assert set(kw) - {"storyboard"} <= set(STORYBOARD_SETTINGS)  # the settings request.py says a storyboard takes
    with spelled(LABELS):
        with pytest.raises(ValueError, match="^Mode sing: not one of auto, t2v"):
            build_request(form(prompt="x", mode="sing"))
        with pytest.raises(ValueError, match=r"Storyboard is not JSON \(line 1"):
            build_request(form(mode="storyboard", storyboard="shot 1: a red circle"))
        with pytest.raises(ValueError, match="storyboard shot 1: give its length"):
            build_request(form(mode="storyboard", storyboard='[{"prompt": "a red circle"}]'))
        with pytest.raises(ValueError, match="clear Prompt, Frames"):
            build_request(form(mode="storyboard", prompt="x", num_frames="5", storyboard='[{"prompt": "a", "num_frames": 5}]'))
        with pytest.raises(ValueError, match="Storyboard is used in mode storyboard"):
            build_request(form(prompt="x", storyboard='[{"prompt": "a", "num_frames": 5}]'))
        with pytest.raises(ValueError, match="needs the Storyboard field"):
            build_request(form(mode="storyboard"))
    with pytest.raises(ValueError, match="unknown form field"):
        build_request({"prompt": "x", "steps": 3})


def test_choices_the_page_offers_are_checked_for_clients_of_its_api():
    _, kw = build_request(form(prompt="x", direction=None, image_position="last"))
    assert (kw["direction"], kw["image_position"]) == ("forward", "last")
    with spelled(LABELS):
        with pytest.raises(ValueError, match="^Direction sideways: not one of forward, backward$"):
            build_request(form(prompt="x", direction="sideways"))
        with pytest.raises(ValueError, match="^Image position middle: not one of first, last$"):
            build_request(form(prompt="x", image_position="middle"))


# --- uploads ------------------------------------------------------------------------------------------


def test_uploads_are_checked_with_the_command_lines_message_naming_the_file_not_the_server_path(media, capsys):
    assert check_upload(media["clip.mp4"], "video") == media["clip.mp4"]
    assert check_upload(media["still.png"], "image") == media["still.png"]
    with spelled(LABELS), pytest.raises(VideoReadError) as err:
        check_upload(media["bad.mp4"], "video")
    message = str(err.value)
    assert message.startswith("Video: bad.mp4: not a readable video or image") and os.sep not in message
    assert main(["generate", "x", "--video", media["bad.mp4"]]) == 2  # the command line says the same
    cli = capsys.readouterr().err
    assert message.split("bad.mp4: ", 1)[1] in cli
    with spelled(LABELS):
        with pytest.raises(ValueError, match="Image: clip.mp4 is not a file this field takes; give one of .png"):
            check_upload(media["clip.mp4"], "image")
        with pytest.raises(ValueError, match="Video: notes.txt is not a file this field takes"):
            check_upload(media["notes.txt"], "video")
        with pytest.raises(ValueError, match=r"End video: clip.mp4 is 0.0 MB; uploads are limited to 0 MB"):
            check_upload(media["clip.mp4"], "video_end", max_bytes=10)
        with pytest.raises(ValueError, match="gone.mp4 was not received"):
            check_upload(os.path.join(os.path.dirname(media["clip.mp4"]), "gone.mp4"), "video")


def test_an_upload_too_large_decoded_is_refused_before_it_is_read(media, monkeypatch):
    monkeypatch.setattr(forms, "MAX_UPLOAD_DECODED", 5 * 32 * 32 * 3 - 1)
    with pytest.raises(ValueError, match=r"holds 5 frames of 32x32, .* give a shorter or smaller clip"):
        check_upload(media["clip.mp4"], "video")


# --- the output folder ------------------------------------------------------------------------------------


def test_the_output_folder_refuses_every_path_outside_it(tmp_path):
    out = OutputFolder(tmp_path / "out")
    assert out.inside(tmp_path / "out" / "a.mp4") == (tmp_path / "out" / "a.mp4").resolve()
    for outside in (tmp_path / "a.mp4", tmp_path / "out" / ".." / "a.mp4", tmp_path / "outside" / "a.mp4", "/etc/passwd"):
        with pytest.raises(ValueError, match="outside the output folder"):
            out.inside(outside)
    os.symlink(tmp_path, tmp_path / "out" / "link")  # a link inside that leads out
    with pytest.raises(ValueError, match="outside the output folder"):
        out.inside(tmp_path / "out" / "link" / "a.mp4")
    with pytest.raises(ValueError, match="cannot name a file"):
        out.next_stem("../t2v")


def test_a_refused_upload_is_deleted_and_nothing_outside_uploads_is(tmp_path):
    out = OutputFolder(tmp_path / "out")
    for name in ("a1b2/bad.mp4", "c3d4/bad.mp4", "c3d4/other.mp4"):  # Gradio's uploads/<hash>/<name>
        (out.uploads / name).parent.mkdir(parents=True, exist_ok=True)
        (out.uploads / name).write_bytes(b"x")
    (tmp_path / "elsewhere.mp4").write_bytes(b"x")
    (tmp_path / "out" / "0001-t2v.mp4").write_bytes(b"x")
    assert out.discard_upload(out.uploads / "a1b2" / "bad.mp4") and not (out.uploads / "a1b2").exists()
    assert out.discard_upload(out.uploads / "c3d4" / "bad.mp4") and os.listdir(out.uploads / "c3d4") == ["other.mp4"]
    for kept in (tmp_path / "elsewhere.mp4", tmp_path / "out" / "0001-t2v.mp4", out.uploads / "gone.mp4",
                 out.uploads / ".." / "0001-t2v.mp4"):
        assert not out.discard_upload(kept)
    assert (tmp_path / "elsewhere.mp4").exists() and (tmp_path / "out" / "0001-t2v.mp4").exists()


def test_the_studio_keeps_a_refused_upload_that_another_field_takes(tmp_path, media):
    studio = Studio(SlowPipe(), "fake-model", tmp_path / "out")
    for name in ("clip.mp4", "bad.mp4"):
        (studio.out.uploads / name[:4]).mkdir(parents=True)
        shutil.copy(media[name], studio.out.uploads / name[:4] / name)
    clip, bad = studio.out.uploads / "clip" / "clip.mp4", studio.out.uploads / "bad." / "bad.mp4"
    with pytest.raises(ValueError, match="not a file this field takes"):
        studio.check_upload(str(clip), "image")
    assert not studio.discard_upload(str(clip)) and clip.exists()  # refused as an Image, held as a Video
    assert studio.discard_upload(str(bad)) and not bad.exists() and not studio.discard_upload(None)


def test_a_poster_is_the_middle_frame_shrunk_to_a_thumbnail(tmp_path):
    out = OutputFolder(tmp_path / "out")
    frames = np.stack([np.full((96, 640, 3), 40 * i, np.uint8) for i in range(5)])  # frame i: gray 40 i
    write_video(tmp_path / "out" / "0001-t2v.mp4", frames, fps=8)
    poster = out.poster(tmp_path / "out" / "0001-t2v.mp4")
    assert poster == str((tmp_path / "out" / "posters" / "0001-t2v.png").resolve())
    still = read_video(poster)[0]
    assert still.shape == (1, 38, 256, 3) and abs(int(still.mean()) - 80) <= 3  # the middle frame, 256 px wide
    write_video(tmp_path / "out" / "0002-t2i.png", frames[3:4, :32, :32], fps=1)  # small: kept as it is
    assert read_video(out.poster(tmp_path / "out" / "0002-t2i.png"))[0].shape == (1, 32, 32, 3)


def test_results_are_numbered_after_those_already_there(tmp_path):
    out = OutputFolder(tmp_path)
    assert out.next_stem("t2v") == str(tmp_path.resolve() / "0001-t2v")
    (tmp_path / "0007-loop.mp4").write_bytes(b"")
    (tmp_path / "notes-1.txt").write_bytes(b"")
    assert out.next_stem("i2v") == str(tmp_path.resolve() / "0008-i2v")


# --- the studio: one pipeline, one request at a time --------------------------------------------------------


class SlowPipe:
    """Stands in for VideoPipeline: counts how many calls overlap, returns 5 black frames."""

    def __init__(self):
        self.running = self.most = self.calls = 0
        self.guard = threading.Lock()

    def __call__(self, prompt, **kw):
        with self.guard:
            self.running += 1
            self.calls += 1
            self.most = max(self.most, self.running)
        time.sleep(0.2)
        with self.guard:
            self.running -= 1
        return SimpleNamespace(frames=[np.zeros((5, 16, 16, 3), np.uint8)], fps=8.0, prompts=[prompt.upper()],
                               notes=[], params={"prompt": prompt, "mode": kw["mode"] or "t2v", "seed": 0})


def test_two_requests_never_run_the_model_at_once(tmp_path):
    pipe = SlowPipe()
    studio = Studio(pipe, "fake-model", tmp_path / "out")
    threads = [threading.Thread(target=studio.generate, args=(form(prompt=f"p{i}"),)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (pipe.calls, pipe.most) == (3, 1)
    names = sorted(os.listdir(tmp_path / "out"))
    assert names == ["0001-t2v.json", "0001-t2v.mp4", "0002-t2v.json", "0002-t2v.mp4", "0003-t2v.json", "0003-t2v.mp4",
                     "posters"]
    gallery = studio.gallery()  # posters (thumbnails), newest first, captions naming the result a click shows
    assert [caption.split(": ")[0] for _, caption in gallery] == ["0003-t2v.mp4", "0002-t2v.mp4", "0001-t2v.mp4"]
    assert [os.path.basename(poster) for poster, _ in gallery] == ["0003-t2v.png", "0002-t2v.png", "0001-t2v.png"]
    assert read_video(gallery[0][0])[0].shape == (1, 16, 16, 3)
    assert studio.find(gallery[2][1]) is studio.results[0]
    with pytest.raises(KeyError):
        studio.find("0009-t2v.mp4: a result that was never made")


def test_a_bad_request_is_refused_before_the_model_runs_and_writes_nothing(tmp_path, media):
    pipe = SlowPipe()
    studio = Studio(pipe, "fake-model", tmp_path / "out")
    for values in (form(prompt="x", video=media["bad.mp4"]), form(prompt="x", mode="i2v"),
                   form(prompt="x", mode="storyboard")):
        with pytest.raises((ValueError, VideoReadError)):
            studio.generate(values)
    assert pipe.calls == 0 and os.listdir(tmp_path / "out") == [] and studio.gallery() == []


def test_the_studio_runs_a_debug_model_end_to_end(tmp_path, media):
    torch.set_num_threads(1)
    pipe = VideoPipeline.from_presets("debug", "debug", defaults=dict(height=32, width=32, num_frames=5))
    studio = Studio(pipe, "debug", tmp_path / "out")
    result = studio.generate(form(prompt="a red circle moves left", num_inference_steps=2, guidance_scale=1, seed="0"),
                             progress=False)
    assert os.path.basename(result.path) == "0001-t2v.mp4" and result.record["seed"] == 0
    assert read_video(result.path)[0].shape == (5, 32, 32, 3)
    assert "red circle" in result.expanded_prompt and result.record["num_inference_steps"] == 2
    image = studio.generate(form(prompt="a red circle", mode="t2i", num_inference_steps=1, guidance_scale=1), progress=False)
    assert os.path.basename(image.path) == "0002-t2i.png"
    board = studio.generate(form(mode="storyboard", num_inference_steps=1, guidance_scale=1,
                                 storyboard='[{"prompt": "a red circle", "num_frames": 5}, {"prompt": "a blue square", '
                                            '"num_frames": 5}]'), progress=False)
    assert os.path.basename(board.path) == "0003-storyboard.mp4" and board.expanded_prompt.count("shot ") == 2
    fast = dict(prompt="a red circle", num_inference_steps=1, guidance_scale=1)
    for values, name in ((form(**fast, image=media["still.png"]), "0004-i2v.mp4"),
                         (form(**fast, video=media["clip.mp4"]), "0005-extend.mp4"),
                         (form(**fast, mode="loop", num_frames="8"), "0006-loop.mp4")):
        result = studio.generate(values, progress=False)
        assert os.path.basename(result.path) == name and result.record["mode"] == name[5:-4]
    assert len(studio.gallery()) == 6
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_serve_refuses_bad_options_in_one_line(capsys):
    assert main(["serve", "--port", "0"]) == 2
    assert capsys.readouterr().err.strip() == "chronotope serve: error: --port 0: must be from 1 to 65535"
    assert main(["serve", "--max-upload-mb", "-1"]) == 2
    assert "--max-upload-mb -1.0: must be a number of MB greater than 0" in capsys.readouterr().err
    assert main(["serve", "--max-queue", "0"]) == 2
    assert "--max-queue 0: must be at least 1" in capsys.readouterr().err


def test_serve_refuses_a_bad_host_or_a_busy_port_at_once_writing_nothing(tmp_path, monkeypatch, capsys):
    import socket

    monkeypatch.chdir(tmp_path)  # --out defaults to ./chronotope-serve
    # 192.0.2.1: reserved for documentation (RFC 5737), no machine's address; neither needs a DNS lookup
    for host, why in (("999.1.1.1", "not an IP address"), ("192.0.2.1", "not an address of this machine")):
        t0 = time.monotonic()
        assert main(["serve", "--host", host, "--model", str(tmp_path / "never-read")]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"chronotope serve: error: --host {host}: {why}") and err.count("\n") == 1, err
        assert time.monotonic() - t0 < 5  # Gradio took 23 s to say "Cannot find empty port"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", "--port", str(port), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"chronotope serve: error: --port {port}: already in use on 127.0.0.1")
    assert err.count("\n") == 1
    assert os.listdir(tmp_path) == []
