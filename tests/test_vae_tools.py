"""`chronotope train vae` / `reconstruct` / `encode` and the latent cache, on a tiny World-like manifest."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from chronotope.cli import main
from chronotope.config import VAE_PRESETS
from chronotope.data.dataset import VideoDataset
from chronotope.data.latent_cache import LatentCache, shard_name
from chronotope.data.manifest import write_manifest
from chronotope.train.plots import read_metrics
from chronotope.train.vae_task import MixedLengths, VAETask, strip
from chronotope.vae.losses import psnr
from chronotope.vae.model import CausalVAE
from chronotope.video import read_video, write_video

COLORS = [(220, 40, 40), (40, 70, 220), (40, 170, 60), (235, 215, 30)]


def _clip(t: int, h: int, w: int, color: tuple[int, int, int], bg: int) -> np.ndarray:
    """A square of `color` moving right over a flat background: uint8 [t, h, w, 3]."""
    frames = np.full((t, h, w, 3), bg, dtype=np.uint8)
    s = min(h, w) // 3
    for i in range(t):
        x = (i * 2) % (w - s)
        frames[i, h // 3:h // 3 + s, x:x + s] = color
    return frames


def _manifest(folder: Path, corrupt: bool = False) -> Path:
    rows = []
    for i, (t, h, w) in enumerate([(9, 32, 32), (9, 32, 48), (9, 48, 32), (1, 32, 32)]):
        name = f"clip{i}.png" if t == 1 else f"clip{i}.mp4"
        write_video(folder / name, _clip(t, h, w, COLORS[i], bg=15 if i % 2 else 240), fps=8)
        rows.append({"path": str(folder / name), "text": f"a {i} square moves right", "num_frames": t, "height": h, "width": w,
                     "fps": 8.0 if t > 1 else 0.0, "short_text": f"square {i}", "spec": {"objects": i}})
    if corrupt:
        (folder / "broken.mp4").write_bytes(b"not a video at all")
        rows.insert(2, {"path": str(folder / "broken.mp4"), "text": "broken", "num_frames": 9, "height": 32, "width": 32,
                        "fps": 8.0, "short_text": "", "spec": {}})
    path = folder / "manifest.csv"
    write_manifest(path, rows)
    return path


@pytest.fixture()
def data(tmp_path):
    torch.set_num_threads(1)
    folder = tmp_path / "data"
    folder.mkdir()
    return folder


@pytest.fixture()
def vae_dir(tmp_path) -> Path:
    torch.manual_seed(0)
    d = tmp_path / "vae"
    CausalVAE(VAE_PRESETS["debug"]()).save_pretrained(d)
    return d


def test_vae_task_groups_shapes_and_strip(data):
    ds = MixedLengths([VideoDataset(_manifest(data), num_frames=n, max_pixels=1024, random_start=False)
                       for n in (1, 5)])
    assert len(ds) == 8 and ds[4]["video"].shape[1] == 5 and ds[0]["video"].shape[1] == 1
    torch.manual_seed(0)
    task = VAETask(CausalVAE(VAE_PRESETS["debug"]()), ds, batch_size=4)
    batches = list(task.batches(epoch_seed=3, position=0))
    assert len(batches) == 2 and [len(b) for b in batches] == [4, 4]
    assert [v.shape for v in list(task.batches(3, 1))[0]] == [v.shape for v in batches[1]]  # resume position
    loss, metrics = task.loss(task.model, batches[0], torch.Generator().manual_seed(0))
    assert torch.isfinite(loss) and metrics["items"] == 4 and metrics["shapes"] >= 2 and "psnr" in metrics
    loss.backward()
    img = strip(ds[4]["video"], ds[4]["video"])
    assert img.shape == (64, 5 * 32, 3) and img.dtype == np.uint8
    assert strip(ds[4]["video"], ds[4]["video"], min_height=100).shape == (256, 5 * 128, 3)  # 4x enlarged


def test_train_vae_cli_resume_and_outputs(data, tmp_path, capsys):
    manifest, run = _manifest(data), tmp_path / "run"
    args = ["train", "vae", "--preset", "debug", "--data", str(manifest), "--out", str(run), "--batch-size", "2",
            "--num-frames", "1,5", "--max-pixels", "1024", "--ckpt-every", "2", "--log-every", "1",
            "--lr", "1e-3", "--no-progress", "--threads", "1"]
    assert main(args + ["--steps", "4"]) == 0
    assert (run / "ckpt-0000004" / "COMPLETE").exists() and (run / "metrics.png").exists()
    assert (run / "samples" / "ckpt-0000002" / "recon-0.png").exists()
    strip_img, _ = read_video(run / "samples" / "ckpt-0000004" / "recon-0.png")
    assert strip_img.shape[1] >= 2 * 128 and strip_img.shape[1] % 2 == 0  # originals above reconstructions
    half = strip_img.shape[1] // 2
    assert not np.array_equal(strip_img[0, :half], strip_img[0, half:])  # 4 steps do not make a perfect VAE
    cfg = json.loads((run / "vae" / "config.json").read_text())
    assert cfg["latent_channels"] == 4 and len(cfg["latent_mean"]) == 4 and min(cfg["latent_std"]) > 0
    vae = CausalVAE.from_pretrained(run / "vae")  # loads: the folder is whole
    assert vae.config.latent_std == cfg["latent_std"]
    assert main(args + ["--steps", "6", "--resume", "--preset", "world"]) == 0  # the checkpoint's architecture wins
    out = capsys.readouterr().out
    recs = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in recs] == [1, 2, 3, 4, 5, 6]
    assert all(r["loss"] is not None and np.isfinite(r["loss"]) and "psnr" in r for r in recs)
    assert (run / "ckpt-0000006" / "COMPLETE").exists() and "step 6" in out
    state = json.loads((run / "ckpt-0000006" / "trainer_state.json").read_text())
    assert state["config"]["task"]["preset"] == "debug"


def test_train_vae_decoder_only_keeps_the_latent_space(data, tmp_path, capsys):
    manifest, run = _manifest(data), tmp_path / "run"
    base = ["train", "vae", "--data", str(manifest), "--batch-size", "2", "--num-frames", "1,5", "--max-pixels",
            "1024", "--ckpt-every", "2", "--lr", "1e-2", "--no-progress", "--threads", "1"]
    assert main(base + ["--preset", "debug", "--out", str(run), "--steps", "2"]) == 0
    before = CausalVAE.from_pretrained(run / "vae")
    assert main(base + ["--init", str(run / "vae"), "--decoder-only", "--out", str(tmp_path / "ft"), "--steps", "2",
                        "--ema-decay", "0"]) == 0
    assert main(base + ["--decoder-only", "--out", str(tmp_path / "ft"), "--steps", "4", "--resume",
                        "--ema-decay", "0"]) == 0
    after = CausalVAE.from_pretrained(tmp_path / "ft" / "vae")
    a, b = before.state_dict(), after.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith("encoder."))  # same latents, bit for bit
    assert any(not torch.equal(a[k], b[k]) for k in a if k.startswith("decoder."))
    assert after.config.latent_mean == before.config.latent_mean and after.config.latent_std == before.config.latent_std
    capsys.readouterr()
    assert main(base + ["--preset", "debug", "--decoder-only", "--out", str(tmp_path / "x"), "--steps", "1"]) == 2
    assert "--init" in capsys.readouterr().err


def test_train_vae_rejects_bad_options(data, tmp_path, capsys):
    base = ["train", "vae", "--data", str(_manifest(data)), "--out", str(tmp_path / "r"), "--steps", "1"]
    assert main(base + ["--preset", "huge"]) == 2
    assert "unknown VAE preset" in capsys.readouterr().err
    assert main(base + ["--preset", "debug", "--num-frames", "6"]) == 2
    assert "4k+1" in capsys.readouterr().err


def test_reconstruct_prints_psnr_matching_a_direct_decode(data, vae_dir, tmp_path, capsys):
    _manifest(data)
    out = tmp_path / "recon.mp4"
    assert main(["reconstruct", "--vae", str(vae_dir), str(data / "clip1.mp4"), str(out),
                 "--chunk-frames", "4", "--chunk-latent-frames", "1"]) == 0
    printed = capsys.readouterr().out
    m = re.search(r"PSNR ([\d.]+) dB\s+SSIM (-?[\d.]+)", printed)
    assert m, printed
    frames, _ = read_video(out)
    assert frames.shape == (9, 32, 48, 3)
    # the chunked path must give the same PSNR as one whole-clip encode + decode
    src, _ = read_video(data / "clip1.mp4")
    x = torch.from_numpy(src).permute(3, 0, 1, 2)[None].float() / 127.5 - 1.0
    vae = CausalVAE.from_pretrained(vae_dir)
    with torch.no_grad():
        ref = psnr(x, vae.decode(vae.encode(x).mode()))
    assert float(m.group(1)) == pytest.approx(float(ref), abs=0.02)
    assert -1 <= float(m.group(2)) <= 1


def test_encode_cache_resume_and_reader(data, vae_dir, tmp_path, capsys):
    manifest, cache = _manifest(data, corrupt=True), tmp_path / "cache"
    args = ["encode", str(manifest), "--vae", str(vae_dir), "--out", str(cache), "--num-frames", "5",
            "--max-pixels", "1024", "--shard-size", "2", "--no-progress"]
    assert main(args) == 0
    meta = json.loads((cache / "cache.json").read_text())
    assert meta["items"] == 4 and meta["failures"] == 1 and len(meta["shards"]) == 3
    assert meta["failed"][0]["path"].endswith("broken.mp4") and meta["vae_config"]["latent_channels"] == 4
    lines = (cache / "index.jsonl").read_text().splitlines()
    assert len(lines) == 4
    first = json.loads(lines[0])
    assert {"key", "shard", "shape", "text", "short_text", "spec", "path", "num_frames", "height", "width",
            "fps"} <= set(first)

    lc = LatentCache(cache)
    assert len(lc) == 4 and lc.shapes()[0] == (4, 2, 4, 4)
    item = lc[1]  # clip1: 5 frames 32x48, budget 1024 px -> 16x32 -> latent [4, 2, 2, 4]
    assert item["latent"].dtype == torch.float32 and tuple(item["latent"].shape) == (4, 2, 2, 4)
    assert item["short_text"] == "square 1" and item["num_frames"] == 5
    vae = CausalVAE.from_pretrained(vae_dir)
    x = VideoDataset(manifest, num_frames=5, max_pixels=1024, random_start=False).load(1)["video"]
    with torch.no_grad():
        z = vae.encode_latents(x[None])[0]
    assert torch.allclose(item["latent"], z, atol=2e-3 * (1 + z.abs().max().item()))
    whole = tmp_path / "whole"  # --chunk-frames 0 codes each clip in one pass: the same latents
    assert main([*args[:5], str(whole), *args[6:], "--chunk-frames", "0", "--threads", "1"]) == 0
    assert torch.allclose(LatentCache(whole)[1]["latent"], item["latent"], atol=2e-3 * (1 + z.abs().max().item()))

    # resume: a shard whose record never made it into cache.json is redone, its stray index lines dropped
    last = shard_name(2)
    del meta["shards"][last]
    meta["items"] -= 1
    (cache / "cache.json").write_text(json.dumps(meta))
    (cache / last).unlink()
    capsys.readouterr()
    assert main(args) == 0
    assert "(1 encoded now)" in capsys.readouterr().out
    assert len((cache / "index.jsonl").read_text().splitlines()) == 4 and (cache / last).exists()
    assert main(args) == 0 and "(0 encoded now)" in capsys.readouterr().out
    assert main(args[:-5] + ["--max-pixels", "2048", "--shard-size", "2", "--no-progress"]) == 2  # other settings
    assert "already holds a cache" in capsys.readouterr().err

    parts = [lc.shard_for_rank(r, 3) for r in range(3)]
    keys = [p.rows[0]["key"] for p in parts]
    assert [len(p) for p in parts] == [1, 1, 1] and len(set(keys)) == 3
    with pytest.raises(ValueError):
        lc.shard_for_rank(3, 3)


def test_encode_several_manifests_into_one_cache_in_order(data, vae_dir, tmp_path):
    first = _manifest(data)
    other = tmp_path / "other"
    other.mkdir()
    write_video(other / "extra.mp4", _clip(9, 32, 32, COLORS[0], bg=128), fps=8)
    second = other / "manifest.csv"
    write_manifest(second, [{"path": str(other / "extra.mp4"), "text": "an extra square", "num_frames": 9, "height": 32,
                             "width": 32, "fps": 8.0}])  # written relative: read back against its own manifest's folder
    cache = tmp_path / "cache"
    assert main(["encode", str(first), str(second), "--vae", str(vae_dir), "--out", str(cache), "--num-frames", "5",
                 "--max-pixels", "1024", "--no-progress"]) == 0
    lc = LatentCache(cache)
    assert [lc.rows[i]["text"] for i in range(len(lc))] == [f"a {i} square moves right" for i in range(4)] + ["an extra square"]
    assert lc.rows[4]["path"] == str(other / "extra.mp4")
    meta = json.loads((cache / "cache.json").read_text())
    assert meta["settings"]["manifest"] == [str(first), str(second)] and meta["failures"] == 0


def test_vae_training_resume_is_bitwise(data, tmp_path):
    from chronotope.train.trainer import Trainer

    manifest = _manifest(data)

    def task() -> VAETask:
        torch.manual_seed(0)
        ds = MixedLengths([VideoDataset(manifest, num_frames=n, max_pixels=1024, seed=1) for n in (1, 5)])
        return VAETask(CausalVAE(VAE_PRESETS["debug"]()), ds, batch_size=2, num_sample_items=1, stats_items=1)

    kw = dict(steps=3, lr=1e-3, log_every=1, progress=False, seed=1)
    Trainer(task(), tmp_path / "a", ckpt_every=10, **kw).fit()
    Trainer(task(), tmp_path / "b", ckpt_every=2, **{**kw, "steps": 2}).fit()
    Trainer(task(), tmp_path / "b", ckpt_every=2, resume=True, **kw).fit()
    la, lb = (read_metrics(tmp_path / r / "metrics.jsonl") for r in "ab")
    assert [(r["step"], r["loss"]) for r in la] == [(r["step"], r["loss"]) for r in lb]
    wa, wb = (CausalVAE.from_pretrained(tmp_path / r / "vae").state_dict() for r in "ab")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_vae_task_needs_enough_items(data):
    ds = VideoDataset(_manifest(data), num_frames=1, max_pixels=1024)
    with pytest.raises(ValueError, match="batch size"):
        next(VAETask(CausalVAE(VAE_PRESETS["debug"]()), ds, batch_size=8).batches(0, 0))


def test_cache_stores_extra_tensors_per_item(tmp_path, vae_dir):
    from chronotope.data.latent_cache import encode_to_cache

    g = torch.Generator().manual_seed(0)
    items = [{"video": torch.rand(3, 1, 16, 16, generator=g) * 2 - 1, "text": f"t{i}"} for i in range(3)]
    vae = CausalVAE.from_pretrained(vae_dir)
    counts = encode_to_cache(vae, items, tmp_path / "c", shard_size=2, progress=False,
                             extra_tensors=lambda it: {"text_emb": torch.full((2, 5), float(it["text"][1:]))})
    assert counts == {"items": 3, "failures": 0, "shards": 2, "encoded_now": 3}
    lc = LatentCache(tmp_path / "c")
    assert lc[2]["text_emb"].shape == (2, 5) and float(lc[2]["text_emb"][0, 0]) == 2.0 and lc[2]["text"] == "t2"
    assert lc[0]["latent"].shape == (4, 1, 2, 2)


def test_reconstruct_says_cost_progress_and_domain_in_a_sidecar(data, vae_dir, tmp_path, capsys, monkeypatch):
    import chronotope.request as request

    _manifest(data)
    monkeypatch.setattr(request, "LONG_SECONDS", 0.0)  # every clip "takes minutes": the estimate is printed first
    out = tmp_path / "recon.mp4"
    assert main(["reconstruct", "--vae", str(vae_dir), str(data / "clip1.mp4"), str(out), "--threads", "1"]) == 0
    err = capsys.readouterr().err
    assert "will take about" in err and "reconstruct: 100%" in err and "9/9" in err  # estimate, then a progress bar
    side = json.loads((tmp_path / "recon.json").read_text())
    assert side["num_frames"] == 9 and (side["height"], side["width"]) == (32, 48) and side["tile_size"] is None
    # a random-weight VAE codes nothing well: the input is out of its domain, on stderr and in the sidecar
    assert side["psnr"] < 23 and any("out of the model's domain" in n for n in side["notes"])
    assert "out of the model's domain" in err


def test_reconstruct_tiles_large_frames_so_memory_stays_flat(data, vae_dir, tmp_path, monkeypatch):
    """A 720p clip ran at 10.7 GB: the VAE's mid attention held every latent position of a frame at once. Large
    frames are now coded in tiles of at most vae.tiling.TILE pixels, so no layer sees more positions than a tile."""
    from chronotope.vae.layers import SpatialAttention
    from chronotope.vae.tiling import TILE, auto_tile, tile_spans

    big = data / "big.png"
    write_video(big, _clip(1, 560, 720, COLORS[0], bg=240), fps=8)
    seen = []
    forward = SpatialAttention.forward
    monkeypatch.setattr(SpatialAttention, "forward", lambda self, x, cache=None: seen.append(x.shape[-2] * x.shape[-1])
                        or forward(self, x, cache))
    assert main(["reconstruct", "--vae", str(vae_dir), str(big), str(tmp_path / "big.png"), "--no-progress"]) == 0
    side = json.loads((tmp_path / "big.json").read_text())
    assert side["tile_size"] is not None and max(seen) <= (TILE // 8) ** 2 < 70 * 90  # whole frame: 70 x 90 cells
    assert read_video(tmp_path / "big.png")[0].shape == (1, 560, 720, 3)
    th, tw = auto_tile(720, 1280, 8)  # 720p: 2 x 4 tiles of at most TILE, not pushed back over each other
    assert th <= TILE and tw <= TILE and th % 8 == 0 and tw % 8 == 0
    assert len(tile_spans(720, th, 32)) * len(tile_spans(1280, tw, 32)) * th * tw < 1.2 * 720 * 1280
    assert auto_tile(256, 256, 8) is None  # small frames stay whole: the same numbers as before


def test_reconstruct_metrics_in_strips_equal_whole_frames_and_chunks_shrink_with_size():
    from chronotope.vae.losses import ssim
    from chronotope.vae.reconstruct import chunk_frames_for, frame_errors

    g = torch.Generator().manual_seed(0)
    ref = torch.rand(3, 150, 70, generator=g) * 2 - 1
    out = (ref + 0.3 * torch.randn(3, 150, 70, generator=g)).clamp(-1, 1)
    mse, s = frame_errors(ref, out, rows=32)  # 5 strips, overlapping by the SSIM window
    assert s == pytest.approx(float(ssim(ref[None], out[None])), abs=1e-5)
    assert mse == pytest.approx(float((ref - out).square().mean()), rel=1e-5)
    assert chunk_frames_for(64, 64, 4) == 16 and chunk_frames_for(720, 1280, 4) == 4  # large frames: fewer at once
