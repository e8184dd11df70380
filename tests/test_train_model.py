"""`chronotope train model --data MANIFEST`: the World-model recipe on a manifest of one's own clips (mixed sizes and
lengths), end to end on debug presets: unreadable clips skipped with one line each, kill -9 then the same command
resumes, and the exported folder loads, names no vocabulary (its captions are not the World's) and generates."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import kill_after_first_shard

from chronotope.config import VAE_PRESETS
from chronotope.data.manifest import write_manifest
from chronotope.pipeline import VideoPipeline
from chronotope.vae.model import CausalVAE
from chronotope.video import write_video

ROOT = Path(__file__).resolve().parents[1]
SIZES = [(32, 32, 9), (32, 48, 13), (48, 32, 5), (48, 64, 17)]  # (height, width, frames): mixed sizes and lengths


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    """20 readable clips of mixed sizes, a missing file and a file that is not a video."""
    folder = tmp_path_factory.mktemp("clips")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(20):
        h, w, t = SIZES[i % len(SIZES)]
        base = rng.integers(0, 255, (1, h, w, 3))
        frames = np.clip(base + np.arange(t)[:, None, None, None] * 6, 0, 255).astype(np.uint8)  # a slow fade
        path = folder / f"clip{i:02d}.mp4"
        write_video(str(path), frames, 8.0)
        rows.append({"path": str(path), "text": f"a clip number {i}", "num_frames": t, "height": h, "width": w,
                     "fps": 8.0})
    (folder / "broken.mp4").write_bytes(b"not a video at all")
    rows.append({"path": str(folder / "broken.mp4"), "text": "broken", "num_frames": 9, "height": 32, "width": 32,
                 "fps": 8.0})
    rows.append({"path": str(folder / "missing.mp4"), "text": "missing", "num_frames": 9, "height": 32, "width": 32,
                 "fps": 8.0})
    write_manifest(folder / "clips.csv", rows)
    return folder / "clips.csv"


def _command(out: Path, manifest: Path, vae: Path) -> list[str]:
    return [sys.executable, "-m", "chronotope.cli", "train", "model", "--data", str(manifest), "--out", str(out),
            "--vae", str(vae), "--num-frames", "9", "--max-pixels", "1024", "--shard-size", "4", "--minutes", "0.05",
            "--text-encoder", "debug", "--dit-preset", "debug", "--token-budget", "256", "--warmup", "5",
            "--device", "cpu", "--threads", "1", "--no-progress"]


def test_train_model_on_a_manifest_resumes_after_kill_9_and_exports_a_model(manifest, tmp_path):
    vae = tmp_path / "vae"
    torch.manual_seed(0)
    CausalVAE(VAE_PRESETS["debug"]()).save_pretrained(vae)
    out, env = tmp_path / "mine", {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = _command(out, manifest, vae)
    left = kill_after_first_shard(cmd, env, out / "cache")
    assert len(left["shards"]) < 6, "the data stage ended before the kill"
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    said = rerun.stdout + rerun.stderr
    skipped = [line for line in said.splitlines() if line.startswith("[model] skipped")]
    assert len(skipped) == 2 and any("broken.mp4" in s for s in skipped) and any("missing.mp4" in s for s in skipped)
    assert "Traceback" not in said
    last = rerun.stdout.strip().splitlines()[-1]
    assert last.startswith("model: items=20 dit_steps=") and " skipped=2 " in last, last
    model = out / "model"
    index = json.loads((model / "model_index.json").read_text())
    assert index["vocabulary"] is None  # the clips' captions are not World prompts: nothing to expand them with
    from chronotope.data.latent_cache import LatentCache

    shapes = {tuple(r["shape"][1:]) for r in LatentCache(out / "cache").rows}
    assert len(shapes) >= 3  # mixed sizes and lengths, kept as they are (NaViT), not resized to one
    pipe = VideoPipeline.from_pretrained(model)
    frames = pipe("a clip number 3", num_frames=5, height=32, width=32, num_inference_steps=2, seed=0,
                  progress=False).frames[0]
    assert frames.shape == (5, 32, 32, 3)


def test_train_model_refuses_a_missing_manifest_in_one_line(tmp_path):
    proc = subprocess.run(_command(tmp_path / "out", tmp_path / "nope.csv", tmp_path / "vae"),
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "no such manifest" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()
