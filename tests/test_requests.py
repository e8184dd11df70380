"""Every bad request gets one clear line (issue 24): chronotope.request's one validation shared by the API and
the CLI, the CLI's one error handler, and a table of nonsense arguments over every verb (exit code 2, one
line on stderr, nothing written). In-process (`main([...])`) on debug models and tiny shapes: fast."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import replace

import numpy as np
import pytest
import torch

from chronotope.atomic import atomic_write_json
from chronotope.cli import main
from chronotope.dit.model import DiT
from chronotope.cli.options import echo
from chronotope.pipeline import VideoPipeline
from chronotope.request import MAX_SECONDS, MODES, arg, check_cost, check_request, estimate_cost, spelled
from chronotope.train.lora import add_lora, save_adapter
from chronotope.video import read_video, write_video

KW = dict(height=32, width=32, num_inference_steps=1, guidance_scale=1.0, progress=False)


@pytest.fixture(scope="module")
def pipe() -> VideoPipeline:
    torch.set_num_threads(1)
    return VideoPipeline.from_presets("debug", "debug", defaults=dict(height=32, width=32, num_frames=5))


@pytest.fixture(scope="module")
def files(tmp_path_factory, pipe) -> dict[str, str]:
    """A debug model folder, its VAE, a 5-frame 40x36 clip, a 1-frame png, a file that is not a video, storyboards
    and a LoRA adapter that does not fit the model."""
    root = tmp_path_factory.mktemp("requests")
    pipe.save_pretrained(root / "model")
    rng = np.random.default_rng(0)
    write_video(str(root / "clip.mp4"), rng.integers(0, 256, (6, 36, 40, 3), dtype=np.uint8), fps=8)
    write_video(str(root / "one.png"), rng.integers(0, 256, (1, 32, 32, 3), dtype=np.uint8), fps=1)
    (root / "bad.mp4").write_bytes(b"this is not a video")
    (root / "badonly").mkdir()  # a folder whose every video is unreadable
    for name in ("a.mp4", "b.mp4"):
        (root / "badonly" / name).write_bytes(b"this is not a video")
    (root / "clips.csv").write_text("path,text,num_frames,height,width,aspect_ratio,fps\nclip.mp4,a red circle,6,36,40,"
                                    "10:9,8\n")
    (root / "cache_partial").mkdir()  # an encode that stopped before writing cache.json
    (root / "cache_partial" / "index.jsonl").write_text("")
    stories = {"story_ok": '[{"prompt": "a red circle", "num_frames": 5}]', "story_empty": "[]", "story_zero": '[{"prompt": "a red circle", "num_frames": 0}]',
               "story_keys": '[{"prompt": "a red circle", "frames": 5}]', "story_text": "shot 1: a red circle",
               "story_board_keys": '{"shots": [{"prompt": "a red circle", "num_frames": 5}], "style": "noir"}'}
    for name, text in stories.items():
        (root / f"{name}.json").write_text(text)
    wide = DiT(replace(pipe.dit.config, width=32, heads=2))  # a LoRA adapter for a DiT of another width
    add_lora(wide, rank=2)
    save_adapter(wide, root / "lora_wide")
    return {"root": str(root), "model": str(root / "model"), "vae": str(root / "model" / "vae"),
            "clip": str(root / "clip.mp4"), "one": str(root / "one.png"), "bad": str(root / "bad.mp4"),
            "missing": str(root / "missing.mp4"), "lora_wide": str(root / "lora_wide"),
            "badonly": str(root / "badonly"), "clips": str(root / "clips.csv"),
            "cache_partial": str(root / "cache_partial"), **{name: str(root / f"{name}.json") for name in stories}}


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """main(argv) in this process -> (exit code, stdout, stderr); argparse's exits count as exit codes."""
    try:
        rc = main(argv)
    except SystemExit as exit_:
        rc = exit_.code
    out, err = capsys.readouterr()
    return rc, out, err


# --- nonsense over every verb: exit 2, one line on stderr, nothing written --------------------------------

G = ["generate", "a red circle", "--no-progress", "--steps", "1"]
NONSENSE = {
    "world --num -3": ["world", "--out", "{out}", "--num", "-3"],
    "world --fps 0": ["world", "--out", "{out}", "--num", "1", "--fps", "0"],
    "world --num-frames x": ["world", "--out", "{out}", "--num", "1", "--num-frames", "x"],
    "manifest missing dir": ["manifest", "{root}/nowhere", "--out", "{out}"],
    "demo --steps 0": ["demo", "--steps", "0", "--out", "{out}"],
    "bench score missing": ["bench", "score", "{missing}", "--prompt", "a red circle"],
    "bench score not a video": ["bench", "score", "{bad}", "--prompt", "a red circle"],
    "bench score bad spec": ["bench", "score", "{clip}", "--spec", "{{not json"],
    "bench run missing": ["bench", "run", "{root}/nowhere.csv", "--out", "{out}"],
    "bench generate-and-score --num 0": ["bench", "generate-and-score", "--model", "{model}", "--out", "{out}",
                                         "--num", "0"],
    "bench compare missing": ["bench", "compare", "{root}/a.json", "{root}/b.json", "--json", "{out}"],
    "train vae bad preset": ["train", "vae", "--preset", "nope", "--data", "{root}/m.csv", "--out", "{out}"],
    "train vae missing data": ["train", "vae", "--preset", "debug", "--data", "{root}/m.csv", "--out", "{out}"],
    "train dit missing cache": ["train", "dit", "--preset", "debug", "--data", "{root}/cache", "--out", "{out}"],
    "train dit --steps x": ["train", "dit", "--data", "{root}/cache", "--out", "{out}", "--steps", "x"],
    "encode missing manifest": ["encode", "{root}/m.csv", "--vae", "{vae}", "--out", "{out}"],
    "reconstruct missing input": ["reconstruct", "--vae", "{vae}", "{missing}", "{out}.mp4"],
    "reconstruct not a video": ["reconstruct", "--vae", "{vae}", "{bad}", "{out}.mp4"],
    "reconstruct folder input": ["reconstruct", "--vae", "{vae}", "{root}", "{out}.mp4"],
    "reconstruct missing vae": ["reconstruct", "--vae", "{root}/novae", "{clip}", "{out}.mp4"],
    "reconstruct --num-frames 6": ["reconstruct", "--vae", "{vae}", "{clip}", "{out}.mp4", "--num-frames", "6"],
    "reconstruct .avi": ["reconstruct", "--vae", "{vae}", "{clip}", "{out}.avi"],
    "flops bad preset": ["flops", "--preset", "nope"],
    "flops --latent 1,2": ["flops", "--preset", "debug", "--latent", "1,2"],
    "generate --height 100000 --width 64": G + ["--model", "{model}", "--out", "{out}", "--height", "100000",
                                                "--width", "64"],
    "generate --height 100000 --width 100000": G + ["--model", "{model}", "--out", "{out}", "--height", "100000",
                                                    "--width", "100000"],
    "generate --resolution 99999px": G + ["--model", "{model}", "--out", "{out}", "--resolution", "99999px"],
    "generate --guidance nan": G + ["--model", "{model}", "--out", "{out}", "--guidance", "nan"],
    "generate --guidance inf": G + ["--model", "{model}", "--out", "{out}", "--guidance", "inf"],
    "generate --num-frames 0": G + ["--model", "{model}", "--out", "{out}", "--num-frames", "0"],
    "generate --num-frames 6": G + ["--model", "{model}", "--out", "{out}", "--num-frames", "6"],
    "generate --fps 0": G + ["--model", "{model}", "--out", "{out}", "--fps", "0"],
    "generate --fps nan": G + ["--model", "{model}", "--out", "{out}", "--fps", "nan"],
    "generate --duration -1": G + ["--model", "{model}", "--out", "{out}", "--duration", "-1"],
    "generate --steps 0": G + ["--model", "{model}", "--out", "{out}", "--steps", "0"],
    "generate --strength 2": G + ["--model", "{model}", "--out", "{out}", "--video", "{clip}", "--strength", "2"],
    "generate --cond-latent-frames 0": G + ["--model", "{model}", "--out", "{out}", "--video", "{clip}",
                                            "--cond-latent-frames", "0"],
    "generate --window-frames 0": G + ["--model", "{model}", "--out", "{out}", "--mode", "long",
                                       "--window-frames", "0"],
    "generate --gap-frames 4": G + ["--model", "{model}", "--out", "{out}", "--video", "{clip}", "--video-end",
                                    "{clip}", "--gap-frames", "4"],
    "generate --seed -1": G + ["--model", "{model}", "--out", "{out}", "--seed", "-1"],
    "generate --sampler nope": G + ["--model", "{model}", "--out", "{out}", "--sampler", "nope"],
    "generate --height 40 --width 32": G + ["--model", "{model}", "--out", "{out}", "--height", "40",
                                            "--width", "32"],
    "generate --height only": G + ["--model", "{model}", "--out", "{out}", "--height", "32"],
    "generate --aspect-ratio 0:1": G + ["--model", "{model}", "--out", "{out}", "--aspect-ratio", "0:1"],
    "generate --resolution tiny": G + ["--model", "{model}", "--out", "{out}", "--resolution", "tiny"],
    "generate --out x.avi": G + ["--model", "{model}", "--out", "{out}.avi"],
    "generate --out x.png for a video": G + ["--model", "{model}", "--out", "{out}.png", "--num-frames", "5"],
    "generate missing image": G + ["--model", "{model}", "--out", "{out}", "--image", "{missing}"],
    "generate unreadable video": G + ["--model", "{model}", "--out", "{out}", "--video", "{bad}"],
    "generate missing model": G + ["--model", "{root}/nomodel", "--out", "{out}"],
    "generate --mode connect alone": G + ["--model", "{model}", "--out", "{out}", "--mode", "connect"],
    "generate --num-frames abc": G + ["--model", "{model}", "--out", "{out}", "--num-frames", "abc"],
    "generate --storyboard []": ["generate", "--storyboard", "{story_empty}", "--model", "{model}", "--out", "{out}"],
    "generate --storyboard 0 frames": ["generate", "--storyboard", "{story_zero}", "--model", "{model}", "--out",
                                       "{out}"],
    "generate --storyboard unknown shot key": ["generate", "--storyboard", "{story_keys}", "--model", "{model}",
                                               "--out", "{out}"],
    "generate --storyboard unknown key": ["generate", "--storyboard", "{story_board_keys}", "--model", "{model}",
                                          "--out", "{out}"],
    "generate --storyboard not JSON": ["generate", "--storyboard", "{story_text}", "--model", "{model}", "--out",
                                       "{out}"],
    "generate --storyboard missing": ["generate", "--storyboard", "{root}/nostory.json", "--model", "{model}",
                                      "--out", "{out}"],
    "generate --storyboard and a prompt": G + ["--storyboard", "{story_keys}", "--model", "{model}", "--out", "{out}"],
    "generate --storyboard --num-frames": ["generate", "--storyboard", "{story_ok}", "--model", "{model}",
                                           "--out", "{out}", "--num-frames", "5"],
    "generate --lora missing": G + ["--model", "{model}", "--out", "{out}", "--lora", "{root}/nolora"],
    "generate --lora for another DiT": G + ["--model", "{model}", "--out", "{out}", "--lora", "{lora_wide}"],
    "generate --lora-scale nan": G + ["--model", "{model}", "--out", "{out}", "--lora", "{lora_wide}",
                                      "--lora-scale", "nan"],
    "generate --lora-scale x": G + ["--model", "{model}", "--out", "{out}", "--lora", "{lora_wide}",
                                    "--lora-scale", "x"],
    "generate --lora-scale without --lora": G + ["--model", "{model}", "--out", "{out}", "--lora-scale", "0.5"],
    "generate --lora-scale 3 for 1": G + ["--model", "{model}", "--out", "{out}", "--lora", "{lora_wide}",
                                          "--lora-scale", "0.5,0.5,0.5"],
    "train lora missing model": ["train", "lora", "--model", "{root}/nomodel", "--data", "{root}/m.csv", "--out",
                                 "{out}"],
    "train lora missing data": ["train", "lora", "--model", "{model}", "--data", "{root}/m.csv", "--out", "{out}"],
    "train lora --rank 0": ["train", "lora", "--model", "{model}", "--data", "{root}/m.csv", "--out", "{out}",
                            "--rank", "0"],
    "train lora --targets ffn": ["train", "lora", "--model", "{model}", "--data", "{root}/m.csv", "--out", "{out}",
                                 "--targets", "ffn"],
    "expand unreachable chat": ["expand", "a red circle", "--chat-url", "http://127.0.0.1:9/v1"],
    "plot missing run": ["plot", "{root}/norun", "--out", "{out}.png"],
    "train world-model --minutes 0": ["train", "world-model", "--out", "{out}", "--minutes", "0", "--device", "cpu"],
    "train world-model --data-share 2": ["train", "world-model", "--out", "{out}", "--data-share", "2",
                                         "--device", "cpu"],
    "train world-model missing vae": ["train", "world-model", "--out", "{out}", "--vae", "{root}/novae",
                                      "--device", "cpu"],
    "average missing model": ["average", "{root}/nomodel", "--out", "{out}"],
    "average bad shard size": ["average", "{model}", "--out", "{out}", "--max-shard-size", "lots"],
    # runaways (issue 24): every count, size and duration has a limit from memory and time, stated in the error
    "world --num 10^12": ["world", "--out", "{out}", "--num", "1000000000000"],
    "world --resolution 9999999px": ["world", "--out", "{out}", "--num", "1", "--resolution", "9999999px"],
    "world --num-frames 10^8": ["world", "--out", "{out}", "--num", "1", "--num-frames", "100000000"],
    "world --fps inf": ["world", "--out", "{out}", "--num", "1", "--fps", "inf"],
    "world --workers 10^6": ["world", "--out", "{out}", "--num", "2", "--workers", "1000000"],
    "world --seed -1": ["world", "--out", "{out}", "--num", "1", "--seed", "-1"],
    "flops --latent 0,0,0": ["flops", "--preset", "debug", "--latent", "0,0,0"],
    "flops --batch 10^11": ["flops", "--preset", "debug", "--batch", "100000000000"],
    "train world-model --minutes inf": ["train", "world-model", "--out", "{out}", "--minutes", "inf",
                                        "--device", "cpu"],
    "train world-model --items 10^12": ["train", "world-model", "--out", "{out}", "--items", "1000000000000",
                                        "--device", "cpu"],
    "train lora --minutes inf": ["train", "lora", "--model", "{model}", "--data", "{root}/m.csv", "--out", "{out}",
                                 "--minutes", "inf"],
    "train vae --lr nan": ["train", "vae", "--preset", "debug", "--data", "{clips}", "--out", "{out}", "--lr", "nan",
                           "--steps", "1"],
    "train vae --lr inf": ["train", "vae", "--preset", "debug", "--data", "{clips}", "--out", "{out}", "--lr", "inf",
                           "--steps", "1"],
    "bench generate-and-score --device tpu": ["bench", "generate-and-score", "--model", "{model}", "--out", "{out}",
                                              "--device", "tpu"],
    "generate --fps inf": G + ["--model", "{model}", "--out", "{out}", "--fps", "inf"],
    "generate --num-frames 10^6": G + ["--model", "{model}", "--out", "{out}", "--num-frames", "1000000"],
    # exit codes: nothing usable is an error, not a 0-row manifest or a report of 0 videos
    "manifest of unreadable files": ["manifest", "{badonly}", "--out", "{out}.csv", "--no-progress"],
    "bench run of unreadable files": ["bench", "run", "{badonly}", "--out", "{out}"],
    # hints that misled
    "generate --storyboard a folder": ["generate", "--storyboard", "{root}", "--model", "{model}", "--out", "{out}"],
    "train dit incomplete cache": ["train", "dit", "--preset", "debug", "--data", "{cache_partial}", "--out", "{out}"],
    "expand --seed -1": ["expand", "a red circle", "--seed", "-1"],
}


@pytest.mark.parametrize("case", list(NONSENSE))
def test_nonsense_gets_one_line_and_exit_2(case, files, tmp_path, capsys):
    out = str(tmp_path / "out")
    argv = [a.format(out=out, **files) for a in NONSENSE[case]]
    rc, _, err = run_cli(argv, capsys)
    lines = [line for line in err.strip().splitlines() if not re.match(r"[\w -]+: +\d+%\|", line)]  # not bars
    assert rc == 2, (case, rc, err)
    assert len(lines) == 1 and "error" in lines[0] and "Traceback" not in err, (case, err)
    assert not [p for p in os.listdir(tmp_path) if p.startswith("out")], (case, os.listdir(tmp_path))


def _digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


# an output that is an input under another name: the video OUT turns into, its sidecar, a link, a folder's file
OVERWRITES = {
    "reconstruct onto its input": ["reconstruct", "--vae", "{vae}", "{a}", "{a}"],
    "reconstruct onto a link to its input": ["reconstruct", "--vae", "{vae}", "{a}", "{link}"],
    "generate --video a --out a (stem)": G + ["--model", "{model}", "--video", "{a}", "--out", "{stem}"],
    "generate --video a --out a.mp4": G + ["--model", "{model}", "--video", "{a}", "--out", "{a}"],
    "generate --image a --mode i2v --out a": G + ["--model", "{model}", "--image", "{a}", "--out", "{stem}"],
    "generate --video-end a (connect)": G + ["--model", "{model}", "--video", "{clip}", "--video-end", "{a}", "--out",
                                             "{stem}"],
    "generate --video a --strength (edit)": G + ["--model", "{model}", "--video", "{a}", "--strength", "0.5",
                                                 "--out", "{stem}"],
    "generate --storyboard s.json --out s (its sidecar)": ["generate", "--storyboard", "{story}", "--model",
                                                          "{model}", "--out", "{story_stem}"],
    "manifest --out onto a video it probes": ["manifest", "{folder}", "--out", "{a}", "--no-progress"],
    "encode --out onto its manifest": ["encode", "{csv}", "--vae", "{vae}", "--out", "{csv}"],
    "bench compare --json onto a run": ["bench", "compare", "{json}", "{json}", "--json", "{json}"],
    "plot --out onto its log": ["plot", "{folder}", "--out", "{folder}/metrics.jsonl"],
    "average --out onto its model": ["average", "{model_copy}", "--out", "{model_copy}"],
}


@pytest.mark.parametrize("case", list(OVERWRITES))
def test_an_output_never_replaces_an_input(case, files, tmp_path, capsys):
    """Before: reconstruct a.mp4 a.mp4 and generate --video a.mp4 --out a wrote over the input (exit 0)."""
    import shutil

    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(files["clip"], folder / "a.mp4")
    os.symlink(folder / "a.mp4", tmp_path / "link.mp4")
    shutil.copy(files["story_ok"], folder / "s.json")
    (folder / "m.csv").write_text("path,text,num_frames,height,width,aspect_ratio,fps\na.mp4,x,5,36,40,10:9,8\n")
    (folder / "r.json").write_text("{}")
    (folder / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    shutil.copytree(files["model"], tmp_path / "model")
    names = {"a": folder / "a.mp4", "link": tmp_path / "link.mp4", "stem": folder / "a", "story": folder / "s.json",
             "story_stem": folder / "s", "folder": folder, "csv": folder / "m.csv", "json": folder / "r.json",
             "model_copy": tmp_path / "model"}
    argv = [a.format(**{**files, **{k: str(v) for k, v in names.items()}}) for a in OVERWRITES[case]]
    before = {p: _digest(p) for p in tmp_path.rglob("*") if p.is_file()}
    rc, _, err = run_cli(argv, capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "would replace the input" in err, (case, rc, err)
    assert {p: _digest(p) for p in tmp_path.rglob("*") if p.is_file()} == before, case  # nothing written


def test_an_unwritable_output_is_refused_before_the_model_loads(files, tmp_path, capsys, monkeypatch):
    """Before: a read-only folder failed after sampling with a raw [Errno 30] naming a temporary file."""
    import errno
    import tempfile

    import chronotope.outputs

    ro = tmp_path / "ro"
    ro.mkdir()
    make = tempfile.TemporaryFile

    def read_only(*args, dir=None, **kwargs):  # what a read-only file system answers, even to root
        if dir is not None and os.path.realpath(dir) == os.path.realpath(ro):
            raise OSError(errno.EROFS, "Read-only file system")
        return make(*args, dir=dir, **kwargs)

    monkeypatch.setattr(chronotope.outputs.tempfile, "TemporaryFile", read_only)
    monkeypatch.setattr(VideoPipeline, "from_pretrained", lambda *a, **k: pytest.fail("the model was loaded"))
    for argv in (G + ["--model", files["model"], "--out", str(ro / "x")],
                 ["world", "--out", str(ro / "w"), "--num", "1"],
                 ["reconstruct", "--vae", files["vae"], files["clip"], str(ro / "r.mp4")]):
        rc, _, err = run_cli(argv, capsys)
        assert rc == 2 and len(err.strip().splitlines()) == 1, (argv, err)
        assert str(ro) in err and "Read-only file system" in err and ".tmp" not in err, err
    assert os.listdir(ro) == []


# each refused by the one validation without the model (before: each waited for the model to load)
WITHOUT_MODEL = [["--guidance", "nan"], ["--fps", "0"], ["--num-frames", "6"], ["--seed", "-1"],
                 ["--sampler", "nope"], ["--mode", "connect"], ["--image", "{missing}"], ["--out", "{root}/x.avi"],
                 ["--out", "{root}/x.png", "--num-frames", "5"], ["--lora-scale", "0.5"], ["--strength", "2"]]


@pytest.mark.parametrize("extra", WITHOUT_MODEL, ids=" ".join)
def test_generate_refuses_before_the_model_loads(extra, files, capsys, monkeypatch):
    monkeypatch.setattr(VideoPipeline, "from_pretrained", lambda *a, **k: pytest.fail("the model was loaded"))
    argv = G + ["--model", files["model"], "--out", os.path.join(files["root"], "never")] + [
        a.format(**files) for a in extra]
    rc, _, err = run_cli(argv, capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1, err


@pytest.mark.skipif(torch.cuda.is_available(), reason="asks for cuda where PyTorch has none")
@pytest.mark.parametrize("verb", [["train", "world-model"], ["train", "vae", "--preset", "debug", "--data", "{clip}"],
                                  ["bench", "generate-and-score", "--model", "{model}"]], ids=" ".join)
def test_an_unusable_device_is_refused_before_anything_is_written(verb, files, tmp_path, capsys):
    """Before: train world-model --device cuda on a CPU-only torch raised after writing state.json and the cache."""
    rc, _, err = run_cli([a.format(**files) for a in verb] + ["--out", str(tmp_path / "run"), "--device", "cuda"],
                         capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "--device cuda" in err and "CUDA" in err, err
    assert os.listdir(tmp_path) == []


def test_hints_name_values_that_pass(files, pipe, capsys):
    """Each hint is itself valid: a multiple of the model's size step, an integer seed, the real fps range."""
    m = ["--model", files["model"], "--out", os.path.join(files["root"], "never")]
    _, _, err = run_cli(G + m + ["--height", "0", "--width", "32"], capsys)
    assert "--height 0" in err and "nearest valid: 16" in err, err  # the debug model's step: VAE x8 x patch 2
    pipe("x", **{**KW, "height": 16, "width": 32}, num_frames=1, seed=0)
    _, _, err = run_cli(G + m + ["--seed", "99999999999999999999"], capsys)
    assert "nearest valid: 9223372036854775807" in err and "e+" not in err, err
    pipe("x", num_frames=1, seed=2**63 - 1, **KW)
    _, _, err = run_cli(G + m + ["--fps", "inf"], capsys)
    assert "greater than 0 and at most 240" in err and "from 0" not in err, err
    _, _, err = run_cli(G + m + ["--num-frames", "1000000"], capsys)
    assert "100001" in err and "nearest valid" not in err, err  # what fits below is the cost check's to say
    _, _, err = run_cli(["generate", "--storyboard", files["root"]] + m, capsys)
    assert "is a folder" in err and "JSON" in err and "not found" not in err, err
    _, _, err = run_cli(["train", "dit", "--preset", "debug", "--data", files["cache_partial"], "--out",
                         os.path.join(files["root"], "never")], capsys)
    assert f"chronotope encode MANIFEST.csv --vae VAE_DIR --out {files['cache_partial']}" in err, err
    _, _, err = run_cli(["expand", "a red circle", "--seed", "-1"], capsys)
    assert "--seed -1" in err, err


def test_a_cost_refusal_names_the_most_frames_that_fit(pipe):
    """Before: --num-frames 1000000 was told "nearest valid: 100001", which the memory check then refused."""
    with spelled({"num_frames": "--num-frames"}):
        cost = estimate_cost(pipe, 1, (4, 2501, 4, 4), 2, 2, 10_001)  # 10,001 frames of 32x32
        available = estimate_cost(pipe, 1, (4, 801, 4, 4), 2, 2, 3_201).memory / 0.8  # ~3,201 frames fit
        with pytest.raises(ValueError, match=r"at most (\d+) frames fit \(--num-frames \1\)") as info:
            check_cost(cost, available=available)
    most = int(re.search(r"at most (\d+) frames", str(info.value)).group(1))
    assert (most - 1) % 4 == 0 and 3_000 < most <= 3_201
    check_cost(cost.at_frames(most), available=available)  # the hint passes the same check
    with pytest.raises(ValueError):
        check_cost(cost.at_frames(most + 4), available=available)


def test_errors_name_the_flag_typed_and_the_nearest_value(files, capsys):
    m = ["--model", files["model"], "--out", os.path.join(files["root"], "never")]
    _, _, err = run_cli(G + m + ["--num-frames", "6"], capsys)
    assert "--num-frames 6" in err and "nearest valid: 5 or 9" in err and "num_frames" not in err
    _, _, err = run_cli(G + m + ["--height", "40", "--width", "32"], capsys)
    assert "--height 40" in err and "multiple of 16" in err and "32 or 48" in err
    _, _, err = run_cli(G + m + ["--video", files["clip"], "--cond-latent-frames", "3"], capsys)
    assert "--cond-latent-frames" in err and "cond_latent_frames" not in err
    _, _, err = run_cli(G + m + ["--resolution", "8px"], capsys)
    assert "--resolution 8px" in err and "resolution=" not in err


def test_api_errors_keep_python_names(pipe):
    with pytest.raises(ValueError, match=r"num_frames=6: clips have 4k\+1 frames.*nearest valid: 5 or 9"):
        pipe("x", num_frames=6, **KW)
    with spelled({"num_frames": "--num-frames"}):
        assert arg("num_frames", 6) == "--num-frames 6"
    assert arg("num_frames", 6) == "num_frames=6"


@pytest.mark.parametrize("name,value", [("num_frames", 0), ("fps", 0.0), ("cond_latent_frames", 0),
                                        ("guidance_scale", math.nan), ("guidance_scale", math.inf),
                                        ("image_guidance_scale", math.nan), ("strength", 0.0), ("seed", -1),
                                        ("num_inference_steps", 0), ("window_frames", 0), ("duration", 0.0),
                                        ("height", 0), ("shift", math.nan)])
def test_zero_and_non_finite_are_refused_not_replaced(pipe, name, value):
    """Before: num_frames=0 gave 17 frames, fps=0 gave 8, cond_latent_frames=0 gave 2, guidance nan ran."""
    kw = {**KW, name: value}
    if name in ("cond_latent_frames", "strength"):
        kw["video"] = np.zeros((9, 32, 32, 3), np.uint8)
    if name == "window_frames":
        kw["mode"] = "long"
    if name == "height":
        kw["width"] = 32
    with pytest.raises(ValueError, match=name):
        pipe("a red circle", **kw)


def test_one_table_of_modes():
    """request.MODES says what each mode takes; pipeline/modes.py keys each one's conditioning by the same names."""
    from chronotope.pipeline.modes import MODES as BEHAVIOUR
    from chronotope.pipeline.resolve import infer_mode

    assert list(BEHAVIOUR) == list(MODES)
    for name, mode in MODES.items():
        assert set(mode.needs) <= set(mode.uses) and mode.description
        given = {k: k in mode.needs for k in ("image", "video", "video_end", "strength")}
        assert infer_mode(name, 5, given) == name  # what a mode needs is enough
        for missing in mode.needs:
            with pytest.raises(ValueError, match=f"needs {missing}"):
                infer_mode(name, 5, {**given, missing: False})
        for unused in {"image", "video", "video_end", "strength"} - set(mode.uses):
            with pytest.raises(ValueError, match=f"does not use {unused}"):
                infer_mode(name, 5, {**given, unused: True})


def test_check_request_in_range_passes_and_warns_on_empty_prompt():
    assert check_request(prompt="a red circle", num_frames=17, fps=8.0, guidance_scale=5.0, seed=0) == []
    assert any("empty" in w for w in check_request(prompt="  ", num_frames=5))
    with pytest.raises(ValueError, match="whole number"):
        check_request(num_frames=5.5)


def test_empty_prompt_warns(pipe, capsys):
    out = pipe("", num_frames=5, seed=0, **KW)
    assert any("prompt is empty" in n for n in out.notes) and "prompt is empty" in capsys.readouterr().err


def test_cost_refuses_what_cannot_fit_and_notes_what_takes_minutes(pipe):
    big = estimate_cost(pipe, 1, (4, 5, 12500, 12500), 30, 2, 17)
    with pytest.raises(ValueError, match="memory"):
        check_cost(big, available=20e9)
    tall = estimate_cost(pipe, 1, (4, 5, 50000, 8), 30, 2, 17)  # 500,000 tokens, as --height 100000 --width 64
    # on the shipped model (patch 1): days of attention
    assert tall.seconds > MAX_SECONDS
    with pytest.raises(ValueError, match="limit"):
        check_cost(tall, available=1e15)
    mid = estimate_cost(pipe, 1, (4, 5, 128, 128), 30, 2, 17)  # 1024 x 1024: runs, but says so first
    note = check_cost(mid, available=1e12)
    assert note is not None and "memory" in note and mid.seconds > 60
    assert check_cost(estimate_cost(pipe, 1, (4, 5, 4, 4), 2, 2, 17), available=1e12) is None


def test_large_request_notes_its_cost_before_starting(pipe, monkeypatch):
    import chronotope.request as request

    monkeypatch.setattr(request, "LONG_SECONDS", 0.0)  # every request "takes minutes"
    out = pipe("a red circle", num_frames=5, seed=0, **KW)
    assert any("will take about" in n and "memory" in n for n in out.notes)


def test_aspect_ratio_alone_uses_the_default_resolution(pipe):
    out = pipe("a red circle", aspect_ratio="16:9", num_frames=1, seed=0, num_inference_steps=1, progress=False)
    h, w = out.frames[0].shape[1:3]
    assert w > h and (h, w) == (32, 48)


def test_sidecar_json_is_valid_json_always(tmp_path):
    atomic_write_json(tmp_path / "x.json", {"a": math.nan, "b": [math.inf, 1.5], "c": np.float64("nan")})
    assert json.loads((tmp_path / "x.json").read_text(), parse_constant=lambda c: pytest.fail(c)) == {
        "a": None, "b": [None, 1.5], "c": None}


def test_long_prompt_echo_is_truncated(files, tmp_path, capsys):
    prompt = "a red circle moves left " * 210  # ~5,000 characters
    assert len(echo(prompt)) < 300 and "characters in all" in echo(prompt)
    rc, out, _ = run_cli(["generate", prompt, "--model", files["model"], "--steps", "1", "--no-progress",
                          "--no-expand", "--num-frames", "1", "--out", str(tmp_path / "p")], capsys)
    assert rc == 0 and max(len(line) for line in out.splitlines()) < 400
    assert json.loads((tmp_path / "p.json").read_text())["prompt"] == prompt  # the whole text is kept there


def test_edit_of_one_frame_writes_a_png(files, tmp_path, capsys):
    rc, out, err = run_cli(["generate", "a red circle", "--model", files["model"], "--video", files["one"],
                            "--strength", "0.5", "--steps", "1", "--no-progress", "--out", str(tmp_path / "e")],
                           capsys)
    assert rc == 0, err
    assert os.path.exists(tmp_path / "e.png") and not os.path.exists(tmp_path / "e.mp4")


def test_extend_and_connect_defaults_agree(pipe):
    """Extend adds 12 frames either way; connect fills an 11-frame gap (4m-1 nearest 12), or --gap-frames."""
    v = np.random.default_rng(0).integers(0, 256, (9, 32, 32, 3), dtype=np.uint8)
    fwd = pipe("x", video=v, seed=0, **KW)
    back = pipe("x", video=v, direction="backward", seed=0, **KW)
    assert len(fwd.frames[0]) - 9 == len(back.frames[0]) - 9 == 12
    con = pipe("x", video=v, video_end=v, seed=0, **KW)
    assert len(con.frames[0]) - 18 == 11 == con.params["gap_frames"]
    short = pipe("x", video=v, video_end=v, gap_frames=3, seed=0, **KW)
    assert len(short.frames[0]) - 18 == 3


def test_reconstruct_notes_the_crop_and_keeps_multiples_of_8(files, tmp_path, capsys):
    """128x72 is a valid VAE size (8x): kept; 40x36 is cropped to 40x32, with a note; 6 frames use 5, noted."""
    rc, out, err = run_cli(["reconstruct", "--vae", files["vae"], files["clip"], str(tmp_path / "r.mp4")], capsys)
    assert rc == 0, err
    assert "40x36 -> 40x32" in err and "first 5 of the input's 6 frames" in err
    frames, _ = read_video(str(tmp_path / "r.mp4"))
    assert frames.shape[:3] == (5, 32, 40)
    clip72 = tmp_path / "c72.mp4"
    write_video(str(clip72), np.zeros((5, 72, 128, 3), np.uint8), fps=8)
    rc, _, err = run_cli(["reconstruct", "--vae", files["vae"], str(clip72), str(tmp_path / "r72.mp4")], capsys)
    assert rc == 0 and "cropped" not in err
    assert read_video(str(tmp_path / "r72.mp4"))[0].shape[1:3] == (72, 128)


def test_pillar_prompt_says_why_permanence_is_not_scored():
    from chronotope.bench.score import score_video
    from chronotope.world.parser import parse_prompt

    spec = parse_prompt("a red circle moves left behind a pillar on a black background")
    assert spec["pillar"] is True
    frames = np.full((9, 32, 32, 3), 15, np.uint8)
    frames[:, 10:18, 12:20] = (220, 40, 40)  # a still red square-ish blob, no pillar drawn
    scores = score_video(frames, spec)
    assert scores["permanence"] is None
    assert any("no pillar was detected" in n or "none was detected" in n for n in scores["notes"])
