"""Training a shot-aware DiT on World storyboards (issue 28): shots in the latent cache linked to their storyboard,
training packs laid out as pipeline/storyboard.py samples, a few steps then pipe(storyboard=...), exact resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from chronotope.config import DIT_PRESETS, VAE_PRESETS
from chronotope.data.latent_cache import LatentCache, encode_to_cache
from chronotope.dit.model import DiT
from chronotope.pipeline import DebugTextEncoder, VideoPipeline
from chronotope.train.dit_task import DiTTask, TextEmbeddings
from chronotope.vae.model import CausalVAE
from chronotope.world.storyboard import render_storyboard, sample_storyboard

LENGTHS = [[5, 9, 5], [9, 5]]  # two storyboards: latent frames 2, 3, 2 and 3, 2


def _video(frames: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 127.5 - 1  # [3, T, H, W]


def board_items() -> list[dict]:
    items = []
    for seed, lengths in enumerate(LENGTHS):
        out = render_storyboard(sample_storyboard(seed, len(lengths)), 32, 32, lengths, 8.0, seed)
        items.append({"video": _video(out.frames), "text": "the whole storyboard", "shots": out.shots})
    plain = render_storyboard(sample_storyboard(7, 2), 32, 32, [5, 5], 8.0).frames[:5]
    return items + [{"video": _video(plain), "text": "a plain clip"}]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> LatentCache:
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("boards")
    encode_to_cache(CausalVAE(VAE_PRESETS["debug"]()), board_items(), out, shard_size=2, progress=False)
    return LatentCache(out)


def shot_dit() -> DiT:
    torch.manual_seed(0)
    cfg = DIT_PRESETS["debug"]()
    cfg.shot_embed = 3
    return DiT(cfg)


def test_the_cache_holds_each_shot_as_a_clip_linked_to_its_storyboard(cache):
    rows = cache.rows
    assert [r["key"] for r in rows] == ["00000000-0", "00000000-1", "00000000-2", "00000001-0", "00000001-1",
                                        "00000002"]
    assert [r.get("storyboard") for r in rows] == ["00000000"] * 3 + ["00000001"] * 2 + [None]
    assert [r.get("shot") for r in rows] == [0, 1, 2, 0, 1, None] and rows[0]["num_shots"] == 3
    assert [r["num_frames"] for r in rows] == [5, 9, 5, 9, 5, 5]
    assert [r["shape"][1] for r in rows] == [2, 3, 2, 3, 2, 2]  # each shot its own causal clip: (T - 1) / 4 + 1
    for r in rows[:5]:  # each shot keeps its own caption and spec, not the storyboard's
        assert r["text"] != "the whole storyboard" and json.loads(r["spec"])["objects"]
    # a shot that is not 4k+1 frames fails its storyboard with a reason, the rest is kept
    bad = board_items()[:1]
    bad[0]["shots"][1]["num_frames"] = 8
    counts = encode_to_cache(CausalVAE(VAE_PRESETS["debug"]()), bad, cache.dir.parent / "bad", progress=False)
    meta = json.loads((cache.dir.parent / "bad" / "cache.json").read_text())
    assert counts["items"] == 0 and "4k+1" in meta["failed"][0]["error"]


def test_a_pack_gives_earlier_shots_as_clean_context_laid_out_as_sampling_does(cache):
    from chronotope.dit.patches import Sample, pack
    from chronotope.dit.shots import frame_shots
    from chronotope.pipeline.plan import plan_context

    model = shot_dit()
    text = TextEmbeddings.build(cache, DebugTextEncoder(), progress=False)
    task = DiTTask(model, cache, text, token_budget=4096, cond_probs={"none": 1.0})
    assert task.context == [[], [0], [0, 1], [], [3], []]
    packed, target, emb, mask = task.make_pack([2], torch.Generator().manual_seed(0))
    # the pipeline's plan for shot 3 of storyboard 0: the last latent frame of shots 1 and 2, then shot 3
    z = [cache[i]["latent"] for i in (0, 1, 2)]
    shot = torch.from_numpy(frame_shots([1, 1], z[2].shape[1]))
    plan = plan_context([z[0][:, -1:], z[1][:, -1:]], tuple(z[2].shape), {"shot": shot})
    window = torch.cat([plan.latents[:, :2], z[2]], dim=1)  # [C, 2 + 2, h, w]
    ref = pack([Sample(window, timestep=plan.mask.logical_not().float(), is_cond=plan.mask,
                       conditions=plan.conditions)], model.config.patch)
    assert torch.equal(packed.ids, ref.ids) and torch.equal(packed.conditions["shot"], ref.conditions["shot"])
    assert torch.equal(packed.is_cond, ref.is_cond) and packed.grids == ref.grids == [(4, 2, 2)]
    cond = packed.is_cond
    assert cond.sum() == 8 and (packed.timestep[cond] == 0).all() and (packed.timestep[~cond] > 0).all()
    assert torch.equal(packed.tokens[cond], ref.tokens[cond])  # the context enters exactly clean
    assert not packed.loss_mask[cond].any() and packed.loss_mask[~cond].all()  # and is never in the loss
    assert packed.conditions["shot"].tolist() == [2] * 4 + [1] * 4 + [0] * 8
    # a model without a shot embedding trains every shot alone, as it makes it
    plain = DiTTask(DiT(DIT_PRESETS["debug"]()), cache, text, token_budget=4096, cond_probs={"none": 1.0})
    alone = plain.make_pack([2], torch.Generator().manual_seed(0))[0]
    assert plain.context == [[]] * 6 and not alone.conditions and not alone.is_cond.any() and alone.grids == [(2, 2, 2)]


def test_a_trained_shot_aware_dit_makes_storyboards_with_context(cache, tmp_path):
    from chronotope.train.trainer import Trainer

    model = shot_dit()
    text = TextEmbeddings.build(cache, DebugTextEncoder(), progress=False)
    task = DiTTask(model, cache, text, token_budget=64, caption_dropout=0.0)
    Trainer(task, tmp_path / "run", steps=4, lr=1e-2, ckpt_every=4, progress=False, plot=False).fit()
    rows = model.shot_embedder.weight.detach()
    assert rows[1].abs().sum() > 0 and rows[2].abs().sum() > 0  # context tokens of both earlier shots were seen
    pipe = VideoPipeline(CausalVAE(VAE_PRESETS["debug"]()), model.eval(), DebugTextEncoder(), "debug",
                         dict(height=32, width=32, num_frames=5))
    board = [{"prompt": "a large red circle moves left", "num_frames": 5},
             {"prompt": "a red circle on a white background", "num_frames": 9},
             {"prompt": "a red circle moves up", "num_frames": 5}]
    out = pipe(storyboard=board, num_inference_steps=2, seed=0, progress=False)
    assert out.frames[0].shape == (19, 32, 32, 3) and out.params["conditioning"].startswith("context")
    assert [s["context_shots"] for s in out.params["shots"]] == [0, 1, 2]


def test_shot_aware_training_resumes_exactly(cache, tmp_path):
    from safetensors.torch import load_file

    from chronotope.cli import main

    def run(out, *extra):
        argv = ["train", "dit", "--preset", "debug", "--shot-embed", "3", "--data", str(cache.dir), "--out", str(out),
                "--text-encoder", "debug", "--token-budget", "64", "--ckpt-every", "2", "--no-progress",
                "--threads", "1", "--log-every", "1", *extra]
        assert main(argv) == 0

    run(tmp_path / "a", "--steps", "4")
    run(tmp_path / "b", "--steps", "2")
    run(tmp_path / "b", "--steps", "4", "--resume")
    losses = [[json.loads(x)["loss"] for x in (tmp_path / r / "metrics.jsonl").read_text().splitlines()
               if "loss" in json.loads(x)] for r in "ab"]
    assert len(losses[0]) == 4 and losses[0] == losses[1]
    wa, wb = (load_file(str(tmp_path / r / "ckpt-0000004" / "model.safetensors")) for r in "ab")
    assert all(torch.equal(wa[k], wb[k]) for k in wa) and wa["shot_embedder.weight"].shape[0] == 3


def test_a_world_mix_with_storyboards_caches_their_shots(tmp_path):
    from chronotope.train.world_data import build_world_cache
    from chronotope.train.world_model import WorldModelRecipe
    from chronotope.world.mix import WorldMix, plan_item

    mix = WorldMix(resolution="32px", aspect_ratios=("1:1",), num_frames=(1, 5, 9), storyboards=0.5)
    assert "storyboards" not in WorldMix().to_dict() and "shot_embed" not in WorldModelRecipe("x").fixed()
    kinds = [plan_item(mix, 0, i).kind for i in range(4)]
    assert "storyboard" in kinds
    torch.manual_seed(0)
    build_world_cache(tmp_path, CausalVAE(VAE_PRESETS["debug"]()), vae_dir="vae", mix=mix, items=4, shard_size=2,
                      progress=False)
    rows = LatentCache(tmp_path).rows
    for i, kind in enumerate(kinds):
        mine = [r for r in rows if r["key"].split("-")[0] == f"{i:08d}"]
        if kind == "storyboard":
            item = plan_item(mix, 0, i)
            assert [r["shot"] for r in mine] == list(range(len(item.shots)))
            assert [r["num_frames"] for r in mine] == list(item.shots) and {r["storyboard"] for r in mine} == {f"{i:08d}"}
        else:
            assert len(mine) == 1 and "shot" not in mine[0]
    with pytest.raises(ValueError, match="--storyboards"):
        WorldMix(storyboards=0.9)


def test_encode_cuts_world_storyboards_of_a_manifest_into_their_shots(tmp_path, capsys):
    from chronotope.cli import main
    from chronotope.data.manifest import read_manifest

    boards, vae = tmp_path / "boards", tmp_path / "vae"
    assert main(["world", "--out", str(boards), "--num", "2", "--resolution", "32px", "--shots", "2,3",
                 "--num-frames", "5,9", "--no-progress"]) == 0
    CausalVAE(VAE_PRESETS["debug"]()).save_pretrained(vae)
    assert main(["encode", str(boards / "manifest.csv"), "--vae", str(vae), "--out", str(tmp_path / "cache"),
                 "--no-progress"]) == 0
    rows = LatentCache(tmp_path / "cache").rows
    shots = [json.loads(r["shots"]) for r in read_manifest(boards / "manifest.csv")]
    assert [(r["storyboard"], r["shot"]) for r in rows] == [(f"{i:08d}", j) for i, s in enumerate(shots)
                                                            for j in range(len(s))]
    assert [r["text"] for r in rows] == [shot["text"] for s in shots for shot in s]
    assert [r["shape"][1] for r in rows] == [(shot["num_frames"] - 1) // 4 + 1 for s in shots for shot in s]
    assert main(["world", "--out", str(tmp_path / "odd"), "--num", "1", "--shots", "2", "--num-frames", "6"]) == 2
    assert "4k+1" in capsys.readouterr().err


def test_world_model_trains_a_shot_aware_dit_on_a_mix_with_storyboards(tmp_path, capsys):
    from chronotope.cli import main

    torch.manual_seed(0)
    CausalVAE(VAE_PRESETS["debug"]()).save_pretrained(tmp_path / "vae")
    argv = ["train", "world-model", "--out", str(tmp_path / "wm"), "--minutes", "0.02", "--vae", str(tmp_path / "vae"),
            "--items", "6", "--shard-size", "3", "--storyboards", "0.5", "--shot-embed", "3", "--resolution", "32px",
            "--aspect-ratios", "1:1", "--num-frames", "1,5", "--text-encoder", "debug", "--dit-preset", "debug",
            "--token-budget", "256", "--warmup", "2", "--device", "cpu", "--threads", "1", "--workers", "1",
            "--bench-prompts", "0", "--no-progress"]
    assert main(argv) == 0
    rows = LatentCache(tmp_path / "wm" / "cache").rows
    assert any(r.get("shot") == 1 for r in rows) and any("shot" not in r for r in rows)
    pipe = VideoPipeline.from_pretrained(tmp_path / "wm" / "model")
    assert pipe.dit.config.shot_embed == 3
    other = [("4" if a == "3" and argv[k - 1] == "--shot-embed" else a) for k, a in enumerate(argv)]
    assert main(other) == 2  # the run in OUT was made with another --shot-embed
    assert "shot_embed" in capsys.readouterr().err


def test_a_shot_embedding_added_is_zero_and_changes_nothing_until_trained():
    from chronotope.dit.patches import Sample, pack

    torch.manual_seed(0)
    model = DiT(DIT_PRESETS["debug"]()).eval()
    aware = model.extended(shot_embed=3)
    assert aware.config.shot_embed == 3 and not aware.shot_embedder.weight.any()
    packed = pack([Sample(torch.randn(4, 3, 4, 4), timestep=torch.tensor([0.0, 0.5, 0.5]),
                          conditions={"shot": torch.tensor([1, 0, 0])})])
    text, mask = torch.randn(1, 3, 384), torch.ones(1, 3, dtype=torch.bool)
    with torch.no_grad():
        assert torch.equal(model(packed, text, mask), aware(packed, text, mask))
    with pytest.raises(ValueError, match="already has a shot embedding"):
        aware.extended(shot_embed=3)
    with pytest.raises(ValueError, match="at least 2 rows"):
        model.extended(shot_embed=1)
