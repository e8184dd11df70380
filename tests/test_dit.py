"""The DiT over packed sequences: attention backends, sample isolation, per-token t, zero-init, RoPE, FLOPs, overfit."""

import warnings

import pytest
import torch
import torch.nn.functional as F

from chronotope.config import DIT_PRESETS
from chronotope.dit.attention import attention, cross_attention
from chronotope.dit.embeddings import RoPE3D, apply_rope, default_rope_axes, rope_positions
from chronotope.dit.flops import PAPER_LATENT, count_flops, count_params, paper_config
from chronotope.dit.model import DiT
from chronotope.dit.patches import Sample, pack, patchify, unpack

C = 4  # debug preset latent channels


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny shapes: one thread is faster, and on a shared 2-core machine 2 spinning threads can be 40x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make_batch(ts=(0.3, 0.6, 0.8), seed=0, drop=0.0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(3, 8, 8), (3, 8, 8), (1, 8, 12)]  # two equal-length clips (one batched run) + an image
    samples = [Sample(torch.randn(C, *s, generator=g), timestep=t, text_idx=i) for i, (s, t) in enumerate(zip(shapes, ts))]
    text = torch.randn(3, 6, 384, generator=g)
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[1, 4:] = False
    return pack(samples, drop_rate=drop, generator=g), text, mask


def randomized_model(seed=0):
    torch.manual_seed(seed)
    model = DiT(DIT_PRESETS["debug"]())
    with torch.no_grad():  # leave zero-init so outputs depend on everything
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def dense_reference(q, k, v, cu):
    """Full attention over the whole sequence with a block-diagonal boolean mask."""
    lengths = (cu[1:] - cu[:-1]).long()
    doc = torch.repeat_interleave(torch.arange(len(lengths)), lengths)
    mask = doc[:, None] == doc[None, :]
    o = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), attn_mask=mask)
    return o.transpose(0, 1)


def test_attention_backends_agree_with_dense_reference():
    torch.manual_seed(0)
    cu = torch.tensor([0, 16, 32, 48, 53, 80, 160], dtype=torch.int32)  # runs of equal lengths and odd ones
    q, k, v = (torch.randn(160, 2, 16) for _ in range(3))
    ref = dense_reference(q, k, v, cu)
    sdpa = attention(q, k, v, cu, 80, backend="sdpa")
    torch.testing.assert_close(sdpa, ref, atol=1e-5, rtol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        flex = attention(q, k, v, cu, 80, backend="flex")
    torch.testing.assert_close(flex, ref, atol=1e-5, rtol=1e-5)
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match="flash-attn"):
            attention(q, k, v, cu, 80, backend="flash")
    with pytest.raises(ValueError, match="backend"):
        attention(q, k, v, cu, 80, backend="nope")


def test_cross_attention_uses_own_caption_and_mask():
    torch.manual_seed(0)
    cu = torch.tensor([0, 4, 8, 11], dtype=torch.int32)
    q = torch.randn(11, 2, 8)
    k, v = torch.randn(3, 5, 2, 8), torch.randn(3, 5, 2, 8)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)
    out = cross_attention(q, k, v, mask, cu)
    for i, (a, b) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        n = int(mask[i].sum())
        ref = F.scaled_dot_product_attention(q[a:b].transpose(0, 1), k[i, :n].transpose(0, 1), v[i, :n].transpose(0, 1))
        torch.testing.assert_close(out[a:b], ref.transpose(0, 1), atol=1e-6, rtol=1e-5)


def test_output_shape_and_zero_init():
    packed, text, mask = make_batch()
    model = DiT(DIT_PRESETS["debug"]())
    out = model(packed, text, mask)
    assert out.shape == packed.tokens.shape
    assert torch.equal(out, torch.zeros_like(out))  # adaLN-Zero + zero final linear


def test_tokens_never_see_another_sample():
    packed, text, mask = make_batch()
    model = randomized_model()
    out = model(packed, text, mask)
    tokens = packed.tokens.clone()
    second = packed.sample_idx == 1
    tokens[second] += torch.randn_like(tokens[second])
    out2 = model(packed.with_tokens(tokens), text, mask)
    first = packed.sample_idx == 0
    assert torch.equal(out[first], out2[first])  # exactly unchanged
    assert not torch.allclose(out[second], out2[second])


def test_per_token_timestep_is_per_sample():
    packed, text, mask = make_batch()
    model = randomized_model()
    out = model(packed, text, mask)
    t = packed.timestep.clone()
    second = packed.sample_idx == 1
    t[second] = 0.05
    out2 = model(packed.with_tokens(packed.tokens, timestep=t), text, mask)
    first = packed.sample_idx == 0
    torch.testing.assert_close(out[first], out2[first], atol=1e-6, rtol=1e-6)
    assert (out[second] - out2[second]).abs().max() > 1e-3
    # a clean conditioning frame (t = 0) inside a sample changes only through attention, not its modulation
    t3 = packed.timestep.clone()
    t3[(packed.sample_idx == 0) & (packed.ids[:, 0] == 0)] = 0.0
    out3 = model(packed.with_tokens(packed.tokens, timestep=t3), text, mask)
    assert (out3[first] - out[first]).abs().max() > 1e-4


def test_dropped_tokens_cost_nothing_and_return_zero():
    packed, text, mask = make_batch(drop=0.5)
    assert packed.is_dropped.any()
    model = randomized_model()
    out = model(packed, text, mask)
    assert torch.equal(out[packed.is_dropped], torch.zeros_like(out[packed.is_dropped]))
    assert (out[~packed.is_dropped].abs().sum(1) > 0).all()
    assert len(unpack(packed, out)) == 3


def test_null_caption_no_nan_and_text_matters():
    packed, text, mask = make_batch()
    model = randomized_model()
    empty = mask.clone()
    empty[0] = False  # classifier-free guidance: sample 0 gets the null caption
    out = model(packed, text, empty)
    assert torch.isfinite(out).all()
    first = packed.sample_idx == 0
    assert (out[first] - model(packed, text, mask)[first]).abs().max() > 1e-4


def test_gradients_reach_every_parameter():
    packed, text, mask = make_batch()
    model = randomized_model().train()
    empty = mask.clone()
    empty[2] = False
    model(packed, text, empty).square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_rope_ids_and_relative_positions():
    assert default_rope_axes(64) == (16, 24, 24) and sum(default_rope_axes(72)) == 72
    ids = torch.tensor([[0, 0, 0], [1, 2, 3], [2, 7, 5]])
    pos = rope_positions(ids, torch.tensor([0, 0, 1]), [(3, 4, 8), (3, 8, 16)], "min_side", ref=4)
    torch.testing.assert_close(pos, torch.tensor([[0.0, 0, 0], [1, 2, 3], [2, 3.5, 2.5]]))  # scale 1, then 0.5
    assert torch.equal(rope_positions(ids, torch.tensor([0, 0, 1]), [(3, 4, 8), (3, 8, 16)], "none"), ids.float())
    rope = RoPE3D((4, 6, 6))
    q, k = torch.randn(1, 1, 16), torch.randn(1, 1, 16)
    a = torch.tensor([[1.0, 2.0, 3.0]])
    b = torch.tensor([[4.0, 0.5, 7.0]])
    d = torch.tensor([[2.5, -1.0, 4.0]])

    def score(pq, pk):
        return (apply_rope(q, *rope(pq)) * apply_rope(k, *rope(pk))).sum()

    torch.testing.assert_close(score(a, b), score(a + d, b + d), atol=1e-4, rtol=1e-4)  # depends on differences only
    assert abs(score(a, b) - score(a, b + d)) > 1e-3
    torch.testing.assert_close(apply_rope(q, *rope(b)).norm(), q.norm())


PAPER_GFLOPS = {"S/2": 6.06, "B/2": 23.01, "L/2": 80.71, "XL/2": 118.64, "S/4": 1.41, "B/4": 5.56, "L/4": 19.70,
                "XL/4": 29.05, "S/8": 0.36, "B/8": 1.42, "L/8": 5.01, "XL/8": 7.39}


@pytest.mark.parametrize("name", sorted(PAPER_GFLOPS))
def test_flops_match_dit_paper_table4(name):
    size, p = name.split("/")
    report = count_flops(paper_config(size, int(p)), [PAPER_LATENT])  # 256x256 image = 32x32x4 latent
    assert abs(report.macs / 1e9 / PAPER_GFLOPS[name] - 1) < 0.03


def test_params_and_flops_match_the_model():
    from torch.utils.flop_counter import FlopCounterMode

    cfg = DIT_PRESETS["debug"]()
    model = DiT(cfg)
    assert count_params(cfg) == sum(p.numel() for p in model.parameters())
    packed, text, mask = make_batch()

    def cpu_sdpa_flops(q, k, v, *args, out_shape=None, **kwargs) -> int:  # not in torch's registry (CPU kernel)
        b, h, s_q, d = q
        return 4 * b * h * s_q * k[2] * d  # QK^T and AV: 2 matmuls, 2 FLOPs per MAC

    counter = FlopCounterMode(display=False, custom_mapping={
        torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: cpu_sdpa_flops})
    with counter, torch.no_grad():
        model(packed, text, mask)
    latents = [(3, 8, 8), (3, 8, 8), (1, 8, 12)]
    analytic = count_flops(cfg, latents, text_len=6, distinct_conditions=3).flops
    assert abs(counter.get_total_flops() / analytic - 1) < 0.03, (counter.get_total_flops(), analytic)


def test_overfits_a_few_latents():
    """Overfit one batch: rectified flow x_t = (1-t) x0 + t eps, target v = eps - x0, 4 latents, 4 captions."""
    torch.manual_seed(0)
    model = DiT(DIT_PRESETS["debug"]())
    x0 = [torch.randn(C, 3, 8, 8) * 0.5 + torch.randn(C, 1, 1, 1) for _ in range(4)]
    text = torch.randn(4, 5, 384)
    mask = torch.ones(4, 5, dtype=torch.bool)
    t = torch.tensor([0.2, 0.4, 0.6, 0.8])
    clean = pack([Sample(x, timestep=float(ti), text_idx=i) for i, (x, ti) in enumerate(zip(x0, t))])
    noise = torch.randn_like(clean.tokens)
    tt = clean.timestep[:, None]  # [L, 1] per-token t
    x_t = clean.with_tokens((1 - tt) * clean.tokens + tt * noise)
    target = noise - clean.tokens
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    losses = []
    for _ in range(150):
        loss = (model(x_t, text, mask) - target)[x_t.loss_mask].square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.02 * losses[0], (losses[0], losses[-1])


def test_save_and_load_pretrained_round_trip(tmp_path):
    model = randomized_model()
    model.save_pretrained(str(tmp_path / "dit"))
    assert sorted(p.name for p in (tmp_path / "dit").iterdir()) == ["config.json", "model.safetensors"]
    loaded = DiT.from_pretrained(str(tmp_path / "dit")).eval()
    packed, text, mask = make_batch()
    assert torch.equal(model(packed, text, mask), loaded(packed, text, mask))
    with pytest.raises(FileNotFoundError, match="config.json"):
        DiT.from_pretrained(str(tmp_path / "missing"))


def test_flops_cli(capsys):
    from chronotope.cli import main

    assert main(["flops", "--preset", "XL", "--paper"]) == 0
    out = capsys.readouterr().out
    assert "118.6" in out and "674.8" in out  # DiT-XL/2: Gflops (MACs) and params, as in the paper
    assert main(["flops", "--preset", "debug", "--patch", "1,3,2"]) == 2  # H=8 not divisible by 3
    assert "valid patch sizes" in capsys.readouterr().err


def test_class_conditional_config_describes_the_paper_model_only():
    with pytest.raises(ValueError, match="text-conditioned"):
        DiT(paper_config("S", 2))


@pytest.mark.parametrize("rope", [True, False])
def test_fused_norm_rope_matches_unfused_ops(rope):
    """chronotope/dit/fused.py: values and gradients (input, weight) equal RMSNorm -> scale -> RoPE done op by op,
    on a non-contiguous q/k view of a fused qkv, as SelfAttention passes it."""
    from chronotope.dit.fused import norm_rope

    g = torch.Generator().manual_seed(0)
    L, nh, hd = 7, 3, 16
    qkv = torch.randn(L, 3, nh, hd, generator=g, dtype=torch.float64, requires_grad=True)
    w = (1 + 0.3 * torch.randn(2, 1, hd, generator=g, dtype=torch.float64)).requires_grad_()
    cs = tuple(x.double() for x in RoPE3D((4, 6, 6))(torch.rand(L, 3, generator=g) * 5)) if rope else (None, None)
    grad = torch.randn(L, 2, nh, hd, generator=g, dtype=torch.float64)

    ref = F.rms_norm(qkv[:, :2], (hd,), eps=1e-6) * w
    if rope:
        ref = apply_rope(ref, *cs)
    out = norm_rope(qkv[:, :2], w, *cs)
    torch.testing.assert_close(out, ref)
    for a, b in zip(torch.autograd.grad(out, (qkv, w), grad), torch.autograd.grad(ref, (qkv, w), grad)):
        torch.testing.assert_close(a, b)
    assert torch.autograd.gradcheck(lambda x, s: norm_rope(x[:, :2], s, *cs), (qkv, w))
    with pytest.raises(ValueError, match="both cos and sin"):
        norm_rope(qkv[:, :2], w, cs[0] if rope else torch.ones(hd), None)


def test_a_finer_patch_resizes_only_the_input_and_output_layers():
    from einops import rearrange

    torch.manual_seed(0)
    model = DiT(DIT_PRESETS["debug"]())  # patch (1, 2, 2)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    fine = model.extended(patch=(1, 1, 1))
    assert fine.config.patch == (1, 1, 1) and fine.patch_dim == model.config.in_channels
    coarse_state = model.state_dict()
    for name, value in fine.state_dict().items():  # the transformer body is shared unchanged
        if not name.startswith(("x_embedder.", "final_layer.linear.")):
            assert torch.equal(value, coarse_state[name]), name
    # a latent constant over each 2x2 block embeds, token for token, like the coarse patch over that block
    C = model.config.in_channels
    x = torch.randn(C, 3, 2, 2).repeat_interleave(2, 2).repeat_interleave(2, 3)  # [C, 3, 4, 4]
    coarse = model.x_embedder(patchify(x, (1, 2, 2)))  # [3*2*2, D]
    finer = fine.x_embedder(patchify(x, (1, 1, 1)))  # [3*4*4, D]
    finer = rearrange(finer, "(t h rh w rw) d -> (t h w) (rh rw) d", t=3, h=2, rh=2, w=2, rw=2)
    torch.testing.assert_close(finer, coarse[:, None].expand_as(finer), atol=1e-5, rtol=0)
    # each latent element's output is the mean of the coarse outputs over the block it covers
    h = torch.randn(7, model.config.width)
    want = model.final_layer.linear(h).view(7, C, 4).mean(-1)
    torch.testing.assert_close(fine.final_layer.linear(h), want, atol=1e-5, rtol=0)
    for bad in ((1, 3, 1), (2, 1, 1), (1, 1)):
        with pytest.raises(ValueError, match="must have 3 axes, each dividing"):
            model.extended(patch=bad)


def _trained_looking_debug_dit() -> DiT:
    """A debug DiT whose weights are all small random values (no zero gates), as a trained one's would be."""
    torch.manual_seed(0)
    model = DiT(DIT_PRESETS["debug"]()).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    return model


def test_abs_pos_starts_as_a_no_op_and_then_tells_frames_apart():
    model = _trained_looking_debug_dit()
    with_pos = model.extended(abs_pos=True).eval()
    assert with_pos.config.abs_pos and not model.config.abs_pos
    C = model.config.in_channels
    x = torch.randn(C, 3, 4, 4)
    frozen = x[:, :1].expand(C, 3, 4, 4).contiguous()  # the same content in every frame
    emb, mask = torch.randn(1, 6, model.config.text_dim), torch.ones(1, 6, dtype=torch.bool)

    def run(m: DiT, latent: torch.Tensor) -> torch.Tensor:
        packed = pack([Sample(latent, timestep=torch.full((3,), 0.9))], model.config.patch)
        with torch.no_grad():
            return unpack(packed, m(packed, emb, mask))[0]  # [C, 3, 4, 4]

    torch.testing.assert_close(run(with_pos, x), run(model, x))  # zero-initialised: the same function
    # RoPE alone sees only offsets: identical frames get near-identical outputs (only edge effects differ);
    # trained absolute features (here random) give each frame its own
    torch.nn.init.normal_(with_pos.pos_embedder.weight, std=0.5)
    spread = lambda y: float((y - y.mean(1, keepdim=True)).abs().mean())  # noqa: E731
    assert spread(run(with_pos, frozen)) > 2 * spread(run(model, frozen))
    with pytest.raises(ValueError, match="already has absolute position"):
        with_pos.extended(abs_pos=True)


def test_a_folder_with_the_retired_pooled_text_key_loads_when_it_is_false(tmp_path):
    import json

    from chronotope.config import DiTConfig, config_from_dict

    model = randomized_model()
    model.save_pretrained(str(tmp_path / "dit"))
    path = tmp_path / "dit" / "config.json"
    saved = json.loads(path.read_text())
    assert "pooled_text" not in saved  # no longer written
    path.write_text(json.dumps({**saved, "pooled_text": False}))  # as folders saved before its removal hold it
    packed, text, mask = make_batch()
    assert torch.equal(DiT.from_pretrained(str(tmp_path / "dit")).eval()(packed, text, mask), model(packed, text, mask))
    path.write_text(json.dumps({**saved, "pooled_text": True}))
    with pytest.raises(ValueError, match="pooled_text=True: that option was an experiment and has been removed"):
        DiT.from_pretrained(str(tmp_path / "dit"))
    with pytest.raises(ValueError, match="unknown DiTConfig keys"):
        config_from_dict(DiTConfig, {**saved, "pooled": False})
