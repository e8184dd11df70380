"""LoRA (issue 29, part 2): adapters on the DiT's attention and MLP linears (train/lora.py), merged at sampling time
(pipeline/lora.py), and `chronotope train lora` on a tiny World manifest. Debug presets, seconds each."""

from __future__ import annotations

import json
import os
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from chronotope.cli import main
from chronotope.config import DIT_PRESETS
from chronotope.dit.model import DiT
from chronotope.dit.patches import Sample, pack
from chronotope.pipeline import VideoPipeline
from chronotope.pipeline.lora import ADAPTER_FILE, CONFIG_FILE, check_fits, read_adapter
from chronotope.train.lora import LoRALinear, add_lora, lora_state_dict, save_adapter

KW = dict(num_frames=5, height=32, width=32, num_inference_steps=2, guidance_scale=1.0, seed=0, progress=False,
          expand_prompt=False)


def debug_dit(seed: int = 0, **changes) -> DiT:
    """A debug DiT with no zero-initialised tensor (so that it is not the identity and every layer matters)."""
    torch.manual_seed(seed)
    dit = DiT(replace(DIT_PRESETS["debug"](), **changes))
    with torch.no_grad():
        for p in dit.parameters():
            if not p.any():
                p.normal_(0.0, 0.02)
    return dit.eval()


def velocity(dit: DiT) -> torch.Tensor:
    """The DiT on a fixed two-sample pack with text: [L, C*pt*ph*pw]."""
    g = torch.Generator().manual_seed(1)
    samples = [Sample(torch.randn(4, 2, 4, 4, generator=g), timestep=torch.tensor([0.0, 0.7]), text_idx=0),
               Sample(torch.randn(4, 1, 2, 6, generator=g), timestep=torch.tensor([0.3]), text_idx=1)]
    packed = pack(samples, patch=dit.config.patch)
    text, mask = torch.randn(2, 5, dit.config.text_dim, generator=g), torch.ones(2, 5, dtype=torch.bool)
    with torch.no_grad():
        return dit(packed, text, mask)


def trained_adapter(dit: DiT, rank: int = 4, seed: int = 0, **kw) -> DiT:
    """`dit` with adapters whose B is random (as after training), so that they change the output."""
    add_lora(dit, rank, **kw)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in dit.modules():
            if isinstance(layer, LoRALinear):
                layer.lora_B.weight.copy_(torch.randn(layer.lora_B.weight.shape, generator=g) * 0.05)
    return dit


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("lora") / "model"
    VideoPipeline.from_presets("debug", "debug", defaults=dict(height=32, width=32, num_frames=5)).save_pretrained(folder)
    return str(folder)


def adapter_for(model_dir: str, folder, rank: int = 4, seed: int = 0, dtype=torch.float32) -> str:
    """An adapter with random B for the model in `model_dir`, saved to `folder`."""
    dit = trained_adapter(DiT.from_pretrained(os.path.join(model_dir, "dit")), rank, seed)
    save_adapter(dit, folder, dtype)
    return str(folder)


def test_a_fresh_adapter_changes_nothing_and_trains_alone():
    base = debug_dit()
    before = velocity(base)
    names = add_lora(base, rank=4)
    assert len(names) == 2 * 7 and all(isinstance(base.get_submodule(n), LoRALinear) for n in names)
    assert torch.equal(velocity(base), before)  # B = 0: exactly the base model
    trainable = {n for n, p in base.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert "blocks.0.attn.qkv.weight" in base.state_dict()  # the base keys are unchanged
    assert set(lora_state_dict(base)) == {f"{n}.lora_{ab}.weight" for n in names for ab in "AB"}
    only_attn = add_lora(debug_dit(), rank=2, targets=("attn",))
    assert only_attn == ["blocks.0.attn.qkv", "blocks.0.attn.proj", "blocks.1.attn.qkv", "blocks.1.attn.proj"]
    with pytest.raises(ValueError, match="choose from attn, cross, mlp"):
        add_lora(debug_dit(), rank=2, targets=("ffn",))
    with pytest.raises(ValueError, match="rank"):
        add_lora(debug_dit(), rank=0)


def test_save_and_load_round_trip_is_exact(tmp_path):
    dit = trained_adapter(debug_dit(), rank=4, alpha=8.0)
    save_adapter(dit, tmp_path / "a32", torch.float32)
    save_adapter(dit, tmp_path / "a16")
    adapter = read_adapter(tmp_path / "a32")
    for key, value in lora_state_dict(dit).items():
        path, ab = key.rsplit(".lora_", 1)
        loaded = (adapter.a if ab.startswith("A") else adapter.b)[path]
        assert torch.equal(loaded, value), key
        half = read_adapter(tmp_path / "a16")
        assert torch.equal((half.a if ab.startswith("A") else half.b)[path], value.half()), key
    config = json.loads((tmp_path / "a32" / CONFIG_FILE).read_text())
    assert (config["rank"], config["alpha"], config["targets"]) == (4, 8.0, ["attn", "cross", "mlp"])
    assert config["base"]["architecture"]["width"] == 64
    # merged into a plain DiT, the adapter computes what the LoRALinear branches compute
    plain = debug_dit()
    from chronotope.pipeline.lora import merge

    merge(plain, adapter, scale=1.0)
    torch.testing.assert_close(velocity(plain), velocity(dit), atol=1e-5, rtol=1e-4)


def test_scale_zero_is_the_base_and_unload_restores_it(model_dir, tmp_path):
    pipe = VideoPipeline.from_pretrained(model_dir)
    weights = {k: v.clone() for k, v in pipe.dit.state_dict().items()}
    base = pipe("a red circle", **KW).frames[0]
    adapter = adapter_for(model_dir, tmp_path / "run" / "lora")
    assert (pipe.load_lora(tmp_path / "run", scale=0.0)("a red circle", **KW).frames[0] == base).all()
    out = pipe.load_lora(tmp_path / "run", scale=1.0)("a red circle", **KW)
    assert not (out.frames[0] == base).all()  # a random adapter at scale 1 changes the video
    assert out.params["lora"] == [{"path": adapter, "scale": 0.0}, {"path": adapter, "scale": 1.0}]
    pipe.unload_lora()
    assert all(torch.equal(v, weights[k]) for k, v in pipe.dit.state_dict().items())  # bit for bit
    assert (pipe("a red circle", **KW).frames[0] == base).all()
    with pytest.raises(ValueError, match="lora_scale=nan"):
        pipe.load_lora(adapter, float("nan"))


def test_two_adapters_add_up_at_the_weight_level(tmp_path):
    base = debug_dit()
    w0 = {k: v.clone() for k, v in base.state_dict().items()}
    save_adapter(trained_adapter(debug_dit(), rank=4, seed=1), tmp_path / "one", torch.float32)
    save_adapter(trained_adapter(debug_dit(), rank=2, seed=2, targets=("attn",)), tmp_path / "two", torch.float32)
    one, two = read_adapter(tmp_path / "one"), read_adapter(tmp_path / "two")
    from chronotope.pipeline.lora import merge, merged, unmerge

    merge(base, one, 0.8)
    merge(base, two, -0.5)
    assert [m["scale"] for m in merged(base)] == [0.8, -0.5]
    for path in one.a:
        want = w0[f"{path}.weight"] + 0.8 * one.delta(path) + (-0.5 * two.delta(path) if path in two.a else 0)
        torch.testing.assert_close(base.get_submodule(path).weight, want, atol=1e-6, rtol=0)
    unmerge(base)
    assert all(torch.equal(v, w0[k]) for k, v in base.state_dict().items()) and merged(base) == []


def test_an_adapter_for_another_model_is_refused_in_one_line(model_dir, tmp_path, capsys):
    wide = trained_adapter(debug_dit(width=32, heads=2), rank=2)
    save_adapter(wide, tmp_path / "wide")
    with pytest.raises(ValueError, match=r"does not fit this model: blocks.0.attn.proj is \[64, 64\] here.*width 32, depth 2.*has width 64"):
        check_fits(read_adapter(tmp_path / "wide"), debug_dit())
    deep = trained_adapter(debug_dit(depth=3), rank=2)
    save_adapter(deep, tmp_path / "deep")
    with pytest.raises(ValueError, match="blocks.2.attn.proj is missing here"):
        check_fits(read_adapter(tmp_path / "deep"), debug_dit())
    pipe = VideoPipeline.from_pretrained(model_dir)
    w0 = {k: v.clone() for k, v in pipe.dit.state_dict().items()}
    with pytest.raises(ValueError):
        pipe.load_lora(tmp_path / "wide")
    assert all(torch.equal(v, w0[k]) for k, v in pipe.dit.state_dict().items())  # refused before any change
    rc = main(["generate", "a red circle", "--model", model_dir, "--lora", str(tmp_path / "wide"), "--steps", "1",
               "--no-progress", "--out", str(tmp_path / "x.mp4")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "does not fit this model" in err[0]
    with pytest.raises(FileNotFoundError, match="no LoRA adapter"):
        read_adapter(tmp_path)


def test_adapter_file_is_a_small_share_of_the_dit(model_dir, tmp_path):
    adapter = adapter_for(model_dir, tmp_path / "a", rank=4, dtype=torch.float16)
    dit = DiT.from_pretrained(os.path.join(model_dir, "dit"))
    n_lora = sum(v.numel() for v in load_file(os.path.join(adapter, ADAPTER_FILE)).values())
    # rank r on a linear [out, in] adds r * (in + out) numbers; 7 linears per block (widths from layers.py)
    w, hidden, depth, r = dit.config.width, int(dit.config.width * dit.config.mlp_ratio), dit.config.depth, 4
    per_block = r * ((w + 3 * w) + 2 * w + 2 * w + (w + 2 * w) + 2 * w + (w + hidden) * 2)
    assert n_lora == depth * per_block
    size = os.path.getsize(os.path.join(adapter, ADAPTER_FILE))
    assert size < 2 * n_lora + 4096  # float16 plus a small header
    mask = os.umask(0)
    os.umask(mask)
    assert os.stat(os.path.join(adapter, ADAPTER_FILE)).st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's 0600
    # the shipped model's shape (world-s, width 256, depth 6): rank 4 on every target is under 2% of its DiT
    shipped = replace(DIT_PRESETS["world-s"](), in_channels=16, patch=(1, 1, 1), abs_pos=True)
    big = DiT(shipped)
    total = sum(p.numel() for p in big.parameters())
    add_lora(big, rank=4)
    assert sum(v.numel() for v in lora_state_dict(big).values()) / total < 0.02


def test_train_lora_cli_trains_the_adapter_alone_resumes_and_generates(model_dir, tmp_path):
    assert main(["world", "--out", str(tmp_path / "w"), "--num", "3", "--height", "32", "--width", "32",
                 "--num-frames", "5", "--no-progress", "--no-tracks"]) == 0
    run = tmp_path / "run"
    common = ["train", "lora", "--model", model_dir, "--data", str(tmp_path / "w" / "manifest.csv"), "--out", str(run),
              "--rank", "2", "--text-encoder", "debug", "--num-frames", "5", "--max-pixels", "1024",
              "--token-budget", "256", "--ckpt-every", "2", "--lr", "1e-2", "--no-progress", "--threads", "1"]
    assert main(common + ["--steps", "2"]) == 0
    assert main(common + ["--steps", "4", "--resume", "--rank", "8"]) == 0  # the run's rank wins over --rank 8
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 4 and len(steps) == len(set(steps))  # the second run went on from step 2
    base = DiT.from_pretrained(os.path.join(model_dir, "dit")).state_dict()
    ckpt = load_file(str(next(run.glob("ckpt-*4")) / "model.safetensors"))
    assert all(torch.equal(ckpt[k], v) for k, v in base.items())  # the base weights never moved
    tensors = load_file(str(run / "lora" / ADAPTER_FILE))
    assert tensors and all(".lora_A." in k or ".lora_B." in k for k in tensors)
    assert all(v.dtype == torch.float16 for v in tensors.values())
    assert any(v.abs().max() > 0 for k, v in tensors.items() if ".lora_B." in k)  # it learned something
    straight = tmp_path / "straight"  # one uninterrupted run: the resumed one matches it bit for bit
    assert main([*common[:common.index("--out") + 1], str(straight), *common[common.index("--out") + 2:],
                 "--steps", "4"]) == 0
    again = load_file(str(next(straight.glob("ckpt-*4")) / "model.safetensors"))  # float32, as trained
    assert all(torch.equal(again[k], ckpt[k]) for k in tensors)
    config = json.loads((run / "lora" / CONFIG_FILE).read_text())
    assert config["rank"] == 2 and config["step"] == 4
    out = tmp_path / "gen.mp4"
    assert main(["generate", "a red circle", "--model", model_dir, "--lora", str(run), "--lora-scale", "0.8",
                 "--steps", "1", "--num-frames", "5", "--no-progress", "--out", str(out)]) == 0
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["lora"] == [{"path": str(run / "lora"), "scale": 0.8}]


def test_train_lora_minutes_bounds_the_run_and_bench_scores_with_the_adapter(model_dir, tmp_path):
    assert main(["world", "--out", str(tmp_path / "w"), "--num", "2", "--height", "32", "--width", "32",
                 "--num-frames", "5", "--no-progress", "--no-tracks"]) == 0
    run = tmp_path / "run"
    assert main(["train", "lora", "--model", model_dir, "--data", str(tmp_path / "w" / "manifest.csv"), "--out",
                 str(run), "--rank", "2", "--text-encoder", "debug", "--num-frames", "5", "--max-pixels", "1024",
                 "--token-budget", "256", "--lr", "1e-2", "--no-progress", "--threads", "1", "--log-every", "1",
                 "--minutes", "0.0001", "--steps", "1000"]) == 0
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["step"] < 1000 and (run / "lora" / ADAPTER_FILE).is_file()  # the clock ended it, adapter out
    state = json.loads((next(run.glob("ckpt-*")) / "trainer_state.json").read_text())
    assert state["config"]["time_budget_s"] == pytest.approx(0.006)
    common = ["bench", "generate-and-score", "--model", model_dir, "--num", "1", "--modes", "t2v", "--steps", "1",
              "--steps-table", "", "--num-frames", "5", "--resolution", "32px", "--untrained-aspect-ratios", "",
              "--composition", "purple:triangle", "--device", "cpu", "--no-progress"]
    assert main(common + ["--out", str(tmp_path / "b")]) == 0
    assert main(common + ["--out", str(tmp_path / "b"), "--lora", str(run), "--lora-scale", "0.5"]) == 0
    res = json.loads((tmp_path / "b" / "results.json").read_text())
    assert res["generated"] == 1 and res["skipped"] == 0  # the base model's video is not reused for the adapter
    assert res["config"]["lora"] == [{"path": str(run / "lora"), "scale": 0.5}]
    assert res["config"]["composition"] == ["purple", "triangle"]
    side = json.loads((tmp_path / "b" / "videos" / "00000_t2v_s1.json").read_text())
    assert side["job"]["lora"] == res["config"]["lora"]
