"""DiT training on World latents: packing a cache into batches, learning shown, and `chronotope train dit`."""

from __future__ import annotations

import json

import pytest
import torch

from chronotope.config import DIT_PRESETS, VAE_PRESETS
from chronotope.data.latent_cache import LatentCache, encode_to_cache
from chronotope.dit.model import DiT
from chronotope.pipeline import DebugTextEncoder, VideoPipeline
from chronotope.train.dit_task import DiTTask, TextEmbeddings, plan_packs
from chronotope.train.trainer import Trainer
from chronotope.vae.model import CausalVAE
from chronotope.world.generate import iter_world


def world_items(num: int, num_frames: int = 9, seed: int = 0) -> list[dict]:
    items = []
    for row, frames in iter_world(num, seed=seed, height=32, width=32, num_frames=num_frames):
        video = torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 127.5 - 1  # [3, T, H, W]
        items.append({"video": video, "text": row["text"]})
    return items


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> LatentCache:
    torch.manual_seed(0)
    vae = CausalVAE(VAE_PRESETS["debug"]())
    out = tmp_path_factory.mktemp("cache")
    encode_to_cache(vae, world_items(4) + world_items(2, num_frames=1, seed=9), out, progress=False)
    return LatentCache(out)


def test_plan_packs_fills_budget_first_fit_decreasing():
    lengths = [16, 16, 4, 64, 8]
    packs = plan_packs(lengths, order=[2, 0, 1, 3, 4], budget=40)
    assert packs == [[2], [0, 1, 4]]  # longest first into the first pack with room; packs in order of first item
    assert plan_packs(lengths, order=[2, 0, 1, 3, 4], budget=40, window=2) == [[0, 2], [1, 4]]  # windows of 2


def test_plan_packs_fill_windows_and_cover_the_epoch():
    """A random mix: every item that fits is packed exactly once, no pack over budget, nearly full packs, and
    packs drawn from the whole order (not sorted by length across the epoch)."""
    g = torch.Generator().manual_seed(0)
    lengths = [int(n) for n in torch.tensor([48, 64, 240, 300, 576, 2100])[torch.randint(6, (3000,), generator=g)]]
    order = torch.randperm(len(lengths), generator=g).tolist()
    packs = plan_packs(lengths, order, 2048)
    assert sorted(i for p in packs for i in p) == sorted(i for i in range(len(lengths)) if lengths[i] <= 2048)
    fill = [sum(lengths[i] for i in p) / 2048 for p in packs]
    assert max(fill) <= 1.0 and sum(fill[:-1]) / (len(fill) - 1) >= 0.98
    position = {i: r for r, i in enumerate(order)}
    early = [position[i] for p in packs[:len(packs) // 4] for i in p]
    assert max(early) < len(order) // 3  # packs follow the (random) order: the epoch's first packs hold its first items
    assert packs == plan_packs(lengths, order, 2048)  # the plan is a function of the order only


def test_pack_keeps_conditioning_frames_clean(cache):
    model = DiT(DIT_PRESETS["debug"]())
    text = TextEmbeddings.build(cache, DebugTextEncoder(), progress=False)
    task = DiTTask(model, cache, text, token_budget=256, cond_probs={"first": 1.0})
    g = torch.Generator().manual_seed(0)
    packed, target, emb, mask = task.make_pack([0, 1], g)
    clean = torch.cat([cache[i]["latent"] for i in (0, 1)], dim=1)  # not the layout; just a dtype check
    assert clean.dtype == torch.float32
    assert packed.is_cond.any() and (packed.timestep[packed.is_cond] == 0).all()
    assert (packed.timestep[~packed.is_cond] > 0).all()
    from chronotope.dit.patches import Sample, pack

    x0 = pack([Sample(cache[i]["latent"]) for i in (0, 1)], model.config.patch).tokens
    assert torch.equal(packed.tokens[packed.is_cond], x0[packed.is_cond])  # given frames enter exactly clean
    assert target.shape == packed.tokens.shape and emb.shape[0] == mask.shape[0] == 2


def eval_loss(task: DiTTask, model: DiT) -> float:
    """Loss on fixed noise and t (no caption dropout), to compare before and after training."""
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        losses = [task.loss(model, [i for i in range(len(task.lengths))], g)[0] for _ in range(4)]
    return float(torch.stack(losses).mean())


def test_debug_dit_overfits_world_latents(cache, tmp_path):
    torch.manual_seed(0)
    model = DiT(DIT_PRESETS["debug"]())
    text = TextEmbeddings.build(cache, DebugTextEncoder(), progress=False)
    task = DiTTask(model, cache, text, token_budget=4096, caption_dropout=0.0, cond_probs={"none": 1.0})
    before = eval_loss(task, model)
    Trainer(task, tmp_path / "run", steps=150, lr=3e-3, ema_decay=None, ckpt_every=150, progress=False).fit()
    after = eval_loss(task, model)
    print(f"eval loss {before:.4f} -> {after:.4f}")
    assert after < 0.35 * before, (before, after)


def test_train_dit_cli_resumes_and_exports_a_pipeline(cache, tmp_path):
    from chronotope.cli import main

    # a VAE folder for the cache, so the run also exports a whole pipeline folder
    vae_dir = tmp_path / "vae"
    CausalVAE(VAE_PRESETS["debug"]()).save_pretrained(vae_dir)
    meta_path = cache.dir / "cache.json"
    meta = json.loads(meta_path.read_text())
    meta["vae"] = str(vae_dir)
    meta_path.write_text(json.dumps(meta))
    run = tmp_path / "run"
    common = ["train", "dit", "--preset", "debug", "--data", str(cache.dir), "--out", str(run), "--text-encoder",
              "debug", "--token-budget", "128", "--ckpt-every", "2", "--no-progress", "--threads", "1",
              "--cond-probs", "none=0.5,first=0.5"]
    assert main(common + ["--steps", "2"]) == 0
    assert main(common + ["--steps", "4", "--resume"]) == 0
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 4
    state = json.loads(next(run.glob("ckpt-*4/trainer_state.json")).read_text())
    assert state["config"]["task"]["cond_probs"] == {"none": 0.5, "first": 0.5}
    pipe = VideoPipeline.from_pretrained(run / "model")
    out = pipe("a red circle", num_frames=5, height=32, width=32, num_inference_steps=2, seed=0, progress=False,
               expand_prompt=False)
    assert out.frames[0].shape == (5, 32, 32, 3)


def test_train_dit_init_and_time_shift_reach_the_model_folder(cache, tmp_path, capsys):
    from chronotope.cli import main

    vae_dir = tmp_path / "vae"
    CausalVAE(VAE_PRESETS["debug"]()).save_pretrained(vae_dir)
    meta = json.loads((cache.dir / "cache.json").read_text())
    meta["vae"] = str(vae_dir)
    (cache.dir / "cache.json").write_text(json.dumps(meta))
    config = DIT_PRESETS["debug"]()
    config.depth = 1  # not the preset's: the init's config must win over --preset
    torch.manual_seed(1)
    init = DiT(config)
    for p in init.parameters():  # no zero-initialised tensors, so a fresh model cannot pass for it
        torch.nn.init.normal_(p, std=0.02)
    init.save_pretrained(str(tmp_path / "init" / "dit"))  # a model folder's layout: init/dit/

    run = tmp_path / "run"
    common = ["train", "dit", "--preset", "debug", "--data", str(cache.dir), "--out", str(run), "--text-encoder",
              "debug", "--token-budget", "128", "--ckpt-every", "2", "--no-progress", "--threads", "1",
              "--lr", "1e-12", "--warmup", "0"]
    assert main(common + ["--steps", "2", "--init", str(tmp_path / "init"), "--time-shift", "3"]) == 0
    assert main(common + ["--steps", "4", "--resume", "--time-shift", "5"]) == 0  # the run's own shift wins
    trained = DiT.from_pretrained(str(run / "dit"))
    assert trained.config.depth == 1
    for (name, a), b in zip(trained.state_dict().items(), init.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=name)  # lr ~0: still the init's weights
    index = json.loads((run / "model" / "model_index.json").read_text())
    assert index["defaults"]["time_shift"] == 3.0
    pipe = VideoPipeline.from_pretrained(run / "model")
    out = pipe("a red circle", num_frames=5, height=32, width=32, num_inference_steps=2, seed=0, progress=False,
               expand_prompt=False)
    assert out.params["shift"] == pytest.approx(3.0)  # 3 x the rule's 1.0 for a few tokens

    # --patch with --init: a finer patch, the input and output layers resized (DiT.extended), the body kept
    assert main(common + ["--steps", "1", "--init", str(tmp_path / "init"), "--patch", "1,1,1",
                          "--out", str(tmp_path / "fine")]) == 0
    fine, want = DiT.from_pretrained(str(tmp_path / "fine" / "dit")), init.extended(patch=(1, 1, 1))
    assert fine.config.patch == (1, 1, 1)
    for (name, a), b in zip(fine.state_dict().items(), want.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=name)

    # --abs-pos with --init: absolute position features added to the trained DiT, zero-initialised
    assert main(common + ["--steps", "1", "--init", str(tmp_path / "init"), "--abs-pos",
                          "--out", str(tmp_path / "abs")]) == 0
    assert DiT.from_pretrained(str(tmp_path / "abs" / "dit")).config.abs_pos

    capsys.readouterr()
    assert main(common + ["--steps", "2", "--init", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r2")]) == 2
    assert "not a DiT folder" in capsys.readouterr().err
    assert main(common + ["--steps", "2", "--time-shift", "0", "--out", str(tmp_path / "r3")]) == 2
    assert "time shift" in capsys.readouterr().err


def test_device_pack_matches_the_flow_and_its_host_facts(cache):
    """The pack built on the device: samples sorted by length (one attention run per distinct length),
    x_t = x0 + t * (noise - x0) where noised, clean where given, and PackInfo's host values agree with it."""
    from chronotope.dit.attention import segments_from_lengths
    from chronotope.dit.patches import Sample, pack

    model = DiT(DIT_PRESETS["debug"]())
    text = TextEmbeddings.build(cache, DebugTextEncoder(), progress=False)
    task = DiTTask(model, cache, text, token_budget=4096, cond_probs={"none": 0.5, "first": 0.5}, drop_rate=0.25)
    items = list(range(len(cache)))
    packed, target, emb, mask = task.make_pack(items, torch.Generator().manual_seed(3))
    order = sorted(items, key=lambda i: -task.lengths[i])
    x0 = pack([Sample(cache[i]["latent"]) for i in order], model.config.patch).tokens
    info = packed.info
    assert [task.lengths[i] for i in order] == sorted(task.lengths, reverse=True)
    kept_lengths = (info.keep_cu[1:] - info.keep_cu[:-1]).tolist()  # after token dropping
    assert info.seg == segments_from_lengths(kept_lengths) and info.seg.total == int(info.keep_cu[-1])
    assert torch.equal(info.t_table[info.t_inv], packed.timestep)
    t = packed.timestep[:, None]
    assert torch.allclose(packed.tokens, x0 + t * target, atol=1e-5)
    assert torch.equal(packed.tokens[packed.is_cond], x0[packed.is_cond]) and packed.is_cond.any()
    kept = (~packed.is_dropped).nonzero().squeeze(1)
    assert packed.is_dropped.any() and torch.equal(info.keep, kept) and not (packed.is_dropped & packed.is_cond).any()
    assert info.keep_cu[-1] == kept.numel() and info.max_seqlen == int((info.keep_cu[1:] - info.keep_cu[:-1]).max())
    task.drop_rate = 0.0  # without dropping: one attention run per distinct length
    whole = task.make_pack(items, torch.Generator().manual_seed(3))[0].info
    assert [r[3] for r in whole.seg.runs] == sorted({task.lengths[i] for i in items}, reverse=True)
    # the model gives the same velocity with the host facts as when it reads them back itself
    from dataclasses import replace

    with torch.no_grad():
        fast = model(packed, emb, mask)
        slow = model(replace(packed, info=None), emb, mask)
    assert torch.allclose(fast, slow, atol=1e-5)


@pytest.fixture(scope="module")
def board_cache(tmp_path_factory) -> LatentCache:
    """Two 3-shot World storyboards, each shot cached as its own clip linked to its storyboard."""
    from chronotope.world.storyboard import render_storyboard, sample_storyboard

    items = []
    for seed in range(2):
        out = render_storyboard(sample_storyboard(seed, 3), 32, 32, [5, 9, 5], 8.0)
        items.append({"video": torch.from_numpy(out.frames).permute(3, 0, 1, 2).float() / 127.5 - 1,
                      "text": "", "shots": out.shots})
    torch.manual_seed(0)
    out_dir = tmp_path_factory.mktemp("boards")
    encode_to_cache(CausalVAE(VAE_PRESETS["debug"]()), items, out_dir, progress=False)
    return LatentCache(out_dir)


@pytest.mark.parametrize("shots", [False, True], ids=["clips", "storyboard-shots-with-context"])
def test_a_training_step_reads_nothing_back_from_the_device(cache, board_cache, tmp_path, shots):
    """No .item() / bool() / int() / float() of a tensor inside a non-logging step (the profiler's
    aten::_local_scalar_dense), except inside CPU-only kernels (fused AdamW's CPU kernel reads its step count);
    also not for a shot-aware DiT on storyboard shots with their context."""
    from torch.profiler import profile

    config = DIT_PRESETS["debug"]()
    config.shot_embed = 3 if shots else 0
    model = DiT(config)
    data = board_cache if shots else cache
    text = TextEmbeddings.build(data, DebugTextEncoder(), progress=False)
    task = DiTTask(model, data, text, token_budget=256)
    assert task.shot_aware == shots
    trainer = Trainer(task, tmp_path / "run", steps=6, log_every=100, ckpt_every=100, progress=False, plot=False)
    with profile() as prof:
        trainer.fit()
    events = list(prof.events())
    # not the first step (it reads the cache into the token store, once) nor the last (it logs and checkpoints)
    steps = sorted((e for e in events if e.name == "train/step"), key=lambda e: e.time_range.start)[1:-1]

    def under_fused(e) -> bool:
        p = e.cpu_parent
        while p is not None:
            if p.name == "aten::_fused_adamw_":
                return True
            p = p.cpu_parent
        return False

    reads = [e for e in events if e.name == "aten::_local_scalar_dense" and not under_fused(e)
             and any(s.time_range.start <= e.time_range.start <= s.time_range.end for s in steps)]
    assert len(steps) == 4 and reads == []


def test_pack_cond_masks_follow_the_mode_rules():
    from chronotope.diffusion import flow

    frames = [1, 2, 3, 5, 9] * 60
    g = torch.Generator().manual_seed(0)
    for probs in ({"head": 1.0}, {"tail": 1.0}, {"random": 1.0}, {"first_last": 1.0}, {"last": 1.0}, {"first": 1.0}):
        for T, m in zip(frames, flow.sample_cond_masks(frames, g, probs).split(frames)):
            if T == 1:
                assert not m.any()  # images never get conditioning
                continue
            assert m.any() and not m.all(), (probs, T, m)  # at least one frame given, one free
            mode = next(iter(probs))
            if mode == "head":
                assert m[0] and (m.long().diff() <= 0).all()
            elif mode == "tail":
                assert m[-1] and (m.long().diff() >= 0).all()
            elif mode in ("first", "last", "first_last"):
                want = flow.cond_mask_for_mode(mode, T)
                assert torch.equal(m, want)
    mixed = flow.sample_cond_masks([5] * 2000, g)  # the default mix: half the clips get no conditioning
    share = sum(bool(m.any()) for m in mixed.split([5] * 2000)) / 2000
    assert 0.45 < share < 0.55
