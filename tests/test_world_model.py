"""`chronotope train world-model` on debug presets: the World mix, batched encoding, sharded weights, the whole
command end to end without PyAV, and a resume after kill -9."""

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
from chronotope.dit.model import DiT
from chronotope.pipeline import DebugTextEncoder, VideoPipeline
from chronotope.vae.model import CausalVAE
from chronotope.weights import INDEX_NAME, WEIGHTS_NAME, load_weights, parse_size, save_weights
from chronotope.world.mix import WorldMix, plan_item, render_item
from chronotope.world.vocab import is_heldout

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--resolution", "32px", "--aspect-ratios", "1:1,16:9", "--num-frames", "1,5", "--text-encoder", "debug",
        "--dit-preset", "debug", "--token-budget", "256", "--warmup", "5", "--device", "cpu", "--threads", "1"]


# --- the mix -------------------------------------------------------------------------------------


def test_mix_item_is_fixed_by_seed_and_index_and_the_shares_hold():
    mix = WorldMix()
    assert plan_item(mix, 3, 41) == plan_item(mix, 3, 41) and plan_item(mix, 3, 41) != plan_item(mix, 4, 41)
    a, row = render_item(mix, 3, 41)
    b, row2 = render_item(mix, 3, 41)
    assert np.array_equal(a, b) and row == row2 and a.shape == (row["num_frames"], row["height"], row["width"], 3)
    items = [plan_item(mix, 0, i) for i in range(3000)]
    share = {k: sum(it.kind == k for it in items) / len(items) for k in ("general", "mover", "mover-anywhere")}
    assert abs(share["general"] - 0.70) < 0.03 and abs(share["mover"] - 0.15) < 0.02
    assert abs(share["mover-anywhere"] - 0.15) < 0.02
    assert all(it.num_frames > 1 for it in items if it.kind != "general")  # a one-mover is a clip, never an image
    assert {(it.height, it.width) for it in items} == {(64, 64), (48, 64), (64, 48), (48, 80), (80, 48)}
    movers = [it.scene() for it in items[:400] if it.kind != "general"]
    assert all(len(s.objects) == 1 and s.objects[0].motion in ("left", "right", "up", "down") for s in movers)
    assert not any(is_heldout(it.scene().spec) for it in items[:300])
    with pytest.raises(ValueError, match="4k\\+1"):
        WorldMix(num_frames=(1, 6))


def test_batched_encoding_equals_one_clip_at_a_time():
    from chronotope.train.world_data import encode_batched

    torch.manual_seed(0)
    vae = CausalVAE(VAE_PRESETS["debug"]()).eval()
    mix = WorldMix(resolution="32px", aspect_ratios=("1:1", "16:9"), num_frames=(1, 5))
    clips = [render_item(mix, 0, i)[0] for i in range(7)]
    batched = encode_batched(vae, clips, "cpu", batch_size=2)
    for clip, z in zip(clips, batched):
        x = torch.from_numpy(clip).permute(3, 0, 1, 2)[None].float() / 127.5 - 1.0
        with torch.no_grad():
            assert torch.allclose(vae.encode_latents(x)[0], z, atol=2e-4)  # batched convs round differently


# --- weights: one file or shards + index ---------------------------------------------------------


def test_sharded_save_round_trips_exactly_and_no_file_exceeds_the_limit(tmp_path):
    assert parse_size("10MB") == 10_000_000 and parse_size("1MiB") == 2**20 and parse_size(500) == 500
    with pytest.raises(ValueError, match="not understood"):
        parse_size("ten megabytes")
    pipe = VideoPipeline.from_presets("debug", "debug")
    limit = 60_000
    pipe.save_pretrained(tmp_path / "m", dtype=torch.float16, max_shard_size="60KB")
    for sub, model in (("dit", pipe.dit), ("vae", pipe.vae)):
        folder = tmp_path / "m" / sub
        index = json.loads((folder / INDEX_NAME).read_text())
        shards = sorted(p.name for p in folder.glob("model-*.safetensors"))
        assert len(shards) > 1 and not (folder / WEIGHTS_NAME).exists()
        assert set(index["weight_map"].values()) == set(shards) and set(index["weight_map"]) == set(model.state_dict())
        assert index["metadata"]["total_size"] == sum(v.numel() * 2 for v in model.state_dict().values()
                                                      if v.is_floating_point())
        assert max(p.stat().st_size for p in folder.iterdir()) <= limit
    loaded = VideoPipeline.from_pretrained(tmp_path / "m", text_encoder=DebugTextEncoder())
    for a, b in ((pipe.dit, loaded.dit), (pipe.vae, loaded.vae)):
        for k, v in a.state_dict().items():  # fp16 on disk: exactly the rounded weights, cast back to fp32
            assert torch.equal(v.half().float() if v.is_floating_point() else v, b.state_dict()[k]), k
    assert torch.equal(DiT.from_pretrained(tmp_path / "m" / "dit").x_embedder.weight, loaded.dit.x_embedder.weight)
    assert CausalVAE.from_pretrained(tmp_path / "m" / "vae").config == loaded.vae.config
    # fp32, one file: the shards and the index of the other layout are gone, the weights exact
    save_weights(pipe.dit.state_dict(), tmp_path / "m" / "dit")
    assert sorted(p.name for p in (tmp_path / "m" / "dit").iterdir()) == ["config.json", WEIGHTS_NAME]
    assert all(torch.equal(v, pipe.dit.state_dict()[k]) for k, v in load_weights(tmp_path / "m" / "dit").items())
    with pytest.raises(ValueError, match="max-shard-size"):
        save_weights(pipe.dit.state_dict(), tmp_path / "small", max_shard_size="1KB")


# --- the command ---------------------------------------------------------------------------------


def _env(tmp_path: Path) -> dict:
    """Every process of the run (the render workers too) finds an `av` that cannot be imported."""
    block = tmp_path / "no-av"
    block.mkdir(exist_ok=True)
    (block / "av.py").write_text("raise ImportError('PyAV is blocked in this test')\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(block), str(ROOT)]), "OMP_NUM_THREADS": "1"}


def _command(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "chronotope.cli", "train", "world-model", "--out", str(out), "--no-progress",
            *TINY, *extra]


def test_world_model_end_to_end_without_pyav(tmp_path):
    out = tmp_path / "wm"
    proc = subprocess.run(_command(out, "--minutes", "0.1", "--train-vae", "--vae-preset", "debug", "--items", "12",
                                   "--shard-size", "5", "--workers", "2", "--max-shard-size", "60KB",
                                   "--bench-prompts", "2"),
                          env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("world-model: items=12 dit_steps=") and " t2v_overall=0." in last, last
    summary = json.loads((out / "summary.json").read_text())
    assert summary["items"] == 12 and summary["dit_steps"] >= 1 and summary["tokens"] > 0
    assert 0 <= summary["t2v_overall"] <= 1 and summary["bench"]["prompts"] == 2
    model = out / "model"
    files = [p for p in model.rglob("*") if p.is_file()]
    assert max(p.stat().st_size for p in files) <= 60_000 and (model / "dit" / INDEX_NAME).is_file()
    assert all(t.dtype == torch.float16 for t in load_weights(model / "dit").values() if t.is_floating_point())
    index = json.loads((model / "model_index.json").read_text())
    assert index["text_encoder"] == "debug" and index["defaults"]["time_shift"] == 3.0
    pipe = VideoPipeline.from_pretrained(model)
    frames = pipe("a red circle moves left on a black background", num_frames=5, height=32, width=32,
                  num_inference_steps=2, seed=0, progress=False).frames[0]
    assert frames.shape == (5, 32, 32, 3) and frames.dtype == np.uint8
    # a finished run run again does nothing and says the same
    again = subprocess.run(_command(out, "--minutes", "0.1", "--train-vae", "--vae-preset", "debug", "--items", "12",
                                    "--shard-size", "5", "--workers", "2", "--bench-prompts", "2"),
                           env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and again.stdout.strip().splitlines()[-1] == last
    changed = subprocess.run(_command(out, "--minutes", "0.1", "--items", "13"), env=_env(tmp_path),
                             capture_output=True, text=True, timeout=300)
    assert changed.returncode == 2 and "other options" in changed.stderr


def test_world_model_resumes_after_kill_9(tmp_path):
    vae = tmp_path / "vae"
    torch.manual_seed(0)
    CausalVAE(VAE_PRESETS["debug"]()).save_pretrained(vae)
    out = tmp_path / "wm"
    cmd = _command(out, "--minutes", "0.05", "--vae", str(vae), "--items", "60", "--shard-size", "4",
                   "--workers", "1", "--bench-prompts", "0")
    done_before = len(kill_after_first_shard(cmd, _env(tmp_path), out / "cache")["shards"])
    first = out / "cache" / "shard-00000.safetensors"
    stat = first.stat()
    assert done_before < 15, "the run finished its data before the kill; nothing was resumed"
    rerun = subprocess.run(cmd, env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert rerun.stdout.strip().splitlines()[-1].startswith("world-model: items=60 dit_steps=")
    assert first.stat().st_ino == stat.st_ino and first.stat().st_mtime_ns == stat.st_mtime_ns  # reused, not redone
    state = json.loads((out / "state.json").read_text())
    assert all(state["stages"][s]["done"] for s in ("data", "text", "dit", "export"))
    from chronotope.data.latent_cache import LatentCache

    cache = LatentCache(out / "cache")
    assert [int(r["key"]) for r in cache.rows] == list(range(60))  # every item once, in order
    assert VideoPipeline.from_pretrained(out / "model").dit.config.abs_pos
