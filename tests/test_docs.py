"""The docs render (issue 27): every Markdown table in README.md and docs/*.md is one contiguous block of `|`
rows under a header and a separator row, each row with the header's number of cells. A table cut by a blank
line renders its second half as raw pipes; this finds it without a Markdown dependency."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SEPARATOR = re.compile(r"^\|(\s*:?-{3,}:?\s*\|)+$")


def cells(row: str) -> int:
    """Number of cells in a `| a | b |` row; `\\|` and pipes inside `code spans` are not cell borders."""
    row = re.sub(r"`[^`]*`", "``", row.replace("\\|", ""))
    return row.strip().strip("|").count("|") + 1


def table_problems(text: str) -> list[str]:
    """One line per broken table in a Markdown text: a `|` block (outside code fences) that lacks the
    separator row under its header, or whose rows have other cell counts than the header."""
    problems, block, start, fenced = [], [], 0, False
    for number, line in enumerate([*text.splitlines(), ""], start=1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        is_row = not fenced and line.startswith("|")
        if is_row:
            if not block:
                start = number
            block.append(line.rstrip())
            continue
        if block:
            if len(block) < 2 or not SEPARATOR.match(block[1]):
                problems.append(f"line {start}: a table without a header separator row (cut by a blank line?)")
            else:
                width = cells(block[0])
                for offset, row in enumerate(block):
                    if cells(row) != width:
                        problems.append(f"line {start + offset}: {cells(row)} cells, the header has {width}")
            block = []
    return problems


def test_the_check_finds_a_cut_table() -> None:
    whole = "| a | b |\n|---|---|\n| 1 | 2 |\n| 3 | 4 |\n"
    assert table_problems(whole) == []
    assert table_problems(whole.replace("| 1 | 2 |\n", "| 1 | 2 |\n\n")) == [
        "line 5: a table without a header separator row (cut by a blank line?)"]
    assert table_problems(whole.replace("| 3 | 4 |", "| 3 | 4 | 5 |")) == ["line 4: 3 cells, the header has 2"]
    assert table_problems("```\n| not | a table |\n```\n") == []
    assert table_problems("| a | `x | y` |\n|---|---|\n") == []


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_every_table_renders(path: Path) -> None:
    assert table_problems(path.read_text()) == [], path.name


# README's command examples, run as written (issue 27). Every `chronotope ...` line of a ```bash block is either
# run in-process through chronotope.cli.main, in a scratch folder (so relative paths such as data/world work as
# written), or skipped for a reason named here. Substitutions, the fewest that keep the suite fast:
#   --num N          -> 2       (`chronotope world`: a thousand clips prove nothing two do not)
#   --model DIR      -> the shipped model; --vae runs/vae/vae -> the shipped VAE (no training runs here)
#   --steps 2        added to generate and demo (30 and 20 sampling steps: the same code, 10x the time)
#   docs/...         -> the repo's docs folder; /tmp/X -> X in the scratch folder
#   runs/bench       -> the published results.json (compared with itself: no bench run of a model here)
#   my_videos/       -> data/w (a rendered folder with captions); clip.mp4, a.mp4, b.mp4, start.png are
#                       World clips (and a frame) written before the commands that read them; story.json a
#                       two-shot storyboard of 5-frame shots.
# Skipped: training (train vae/dit/world-model/model/lora: minutes on a CPU, one of them on a GPU; the training tests run
# the same code on debug presets), generate --lora (its adapter comes from train lora), serve (a server: the browser
# test runs it) and the torchrun / python / make lines, which are not `chronotope` commands
# (`make demo` runs `chronotope demo`, which runs here).
SKIP = {
    ("train", "vae"): "trains a VAE (minutes); test_train.py covers the trainer on debug presets",
    ("train", "dit"): "trains a DiT (minutes, and torchrun); test_dit_training.py / test_parallel.py cover it",
    ("train", "world-model"): "trains the whole model (8-10 minutes, one on a GPU); test_world_model.py covers it",
    ("train", "model"): "trains a whole model on a manifest (an hour); test_train_model.py covers it on debug presets",
    ("train", "lora"): "trains LoRA adapters (minutes); test_lora.py runs train lora on a debug model",
    ("generate", "--lora"): "needs the adapter train lora makes; test_lora.py runs generate --lora on a debug model",
    ("serve",): "a web server that runs until stopped; test_serve_browser.py starts it and drives it in chromium",
}
FIXTURES = ("clip.mp4", "a.mp4", "b.mp4", "start.png", "story.json")


def bash_commands(text: str) -> list[list[str]]:
    """The argument lists of every `chronotope ...` line in a Markdown text's ```bash blocks (continuations
    joined, comments dropped)."""
    import shlex

    commands, fenced, pending = [], False, ""
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = line.strip() == "```bash"
            continue
        if not fenced:
            continue
        pending += line.rstrip("\\") + " "
        if line.endswith("\\"):
            continue
        words, pending = shlex.split(pending, comments=True), ""
        if words and words[0] == "chronotope":
            commands.append(words[1:])
    return commands


def readme_commands() -> list[list[str]]:
    return bash_commands((ROOT / "README.md").read_text())


def skip_reason(argv: list[str]) -> str | None:
    for key, reason in SKIP.items():
        if argv[0] == key[0] and all(word in argv[1:] for word in key[1:]):
            return reason
    return None


def as_run_here(argv: list[str]) -> list[str]:
    """`argv` with the substitutions listed above."""
    from chronotope.pipeline import ASSETS

    options = {"--model": str(ASSETS), "--vae": str(ASSETS / "vae"), **({"--num": "2"} if argv[0] == "world" else {})}
    paths = {"runs/bench": str(ROOT / "docs" / "world-bench" / "results.json"), "my_videos/": "data/w/",
             "my_videos/manifest.csv": "data/w/manifest.csv"}
    out = []
    for i, word in enumerate(argv):
        if i and argv[i - 1] in options:
            word = options[argv[i - 1]]
        elif word in paths:
            word = paths[word]
        elif word.startswith("docs/"):
            word = str(ROOT / word)
        elif word.startswith("/tmp/"):
            word = word[len("/tmp/"):]
        out.append(word)
    return out + (["--steps", "2"] if argv[0] in ("generate", "demo") else [])


def write_fixtures(folder: Path) -> None:
    """The input files README's examples name: 17-frame 64x64 World clips and a first frame."""
    from chronotope.video import write_video
    from chronotope.world.render import render
    from chronotope.world.scene import sample_scene

    for seed, name in enumerate(FIXTURES[:3]):
        frames = render(sample_scene(seed), 64, 64, 17, 8.0).frames
        write_video(folder / name, frames, 8.0)
    write_video(folder / "start.png", frames[:1], 8.0)
    (folder / "story.json").write_text('[{"prompt": "a large red circle moves left", "num_frames": 5}, '
                                       '{"prompt": "the red circle on a black background", "num_frames": 5}]')


def test_bash_commands_joins_continuations_and_drops_comments() -> None:
    text = ("```bash\n# a comment\nchronotope world --out data/w \\\n    --num 3   # three\n"
            "    # an indented comment\nmake demo\nchronotope expand \"a # not a comment\"\n```\n"
            "```\nchronotope not-bash\n```\n")
    assert bash_commands(text) == [["world", "--out", "data/w", "--num", "3"], ["expand", "a # not a comment"]]


@pytest.mark.skipif(not (ROOT / "chronotope/assets/world-model/model_index.json").is_file(), reason="no model shipped")
def test_readme_examples_run_as_written(tmp_path, monkeypatch, capsys) -> None:
    from chronotope.cli import build_parser, main

    monkeypatch.chdir(tmp_path)
    write_fixtures(tmp_path)
    ran, skipped = [], []
    for argv in readme_commands():
        reason = skip_reason(argv)
        if reason:
            skipped.append(argv)
            continue
        here = as_run_here(argv)
        assert main(here) == 0, f"chronotope {' '.join(argv)} (run as: {' '.join(here)}): {capsys.readouterr().err}"
        ran.append(argv[0])
    assert {"world", "demo", "manifest", "bench", "reconstruct", "encode", "flops", "expand", "generate"} <= set(ran)
    assert {skip_reason(argv) for argv in skipped} == set(SKIP.values())  # no stale reason
    # every verb the README names answers --help (argparse exits 0 after printing it)
    names = {tuple(argv[:2]) if argv[0] in ("bench", "train") else (argv[0],) for argv in readme_commands()}
    for name in sorted(names):
        with pytest.raises(SystemExit) as exit_:
            build_parser().parse_args([*name, "--help"])
        assert exit_.value.code == 0, name
    assert "usage: chronotope generate" in capsys.readouterr().out
