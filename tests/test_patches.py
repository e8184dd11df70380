"""Spacetime patches and Patch n' Pack: round trips (incl. hypothesis), ids, per-token timesteps, dropping, budgets."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from chronotope.dit.patches import Sample, pack, pack_to_budget, patchify, position_ids, token_grid, unpack, unpatchify


@pytest.mark.parametrize("patch", [(1, 2, 2), (2, 2, 2), (1, 1, 1), (1, 4, 2)])
def test_patchify_round_trip(patch):
    x = torch.randn(3, 4, 8, 12)
    tok = patchify(x, patch)
    grid = token_grid((4, 8, 12), patch)
    assert tok.shape == (grid[0] * grid[1] * grid[2], 3 * patch[0] * patch[1] * patch[2])
    assert torch.equal(unpatchify(tok, grid, patch), x)


def test_ids_follow_patchify_order():
    x = torch.randn(2, 3, 4, 6)
    tok = patchify(x, (1, 2, 2))  # [3*2*3, 8]
    ids = position_ids(token_grid((3, 4, 6), (1, 2, 2)))
    assert ids.dtype == torch.long and ids.shape == (18, 3)
    for n in (0, 5, 11, 17):
        t, h, w = ids[n].tolist()
        cube = x[:, t, 2 * h:2 * h + 2, 2 * w:2 * w + 2]  # [C, 2, 2]
        assert torch.equal(tok[n], cube.reshape(-1))


def test_bad_patch_names_valid_values():
    with pytest.raises(ValueError, match=r"valid patch sizes for it are \[1, 2, 3, 6\]"):
        patchify(torch.randn(1, 6, 8, 8), (4, 2, 2))
    with pytest.raises(ValueError, match="pt=1"):  # an image (T=1) with a temporal patch
        pack([Sample(torch.randn(4, 1, 8, 8))], patch=(2, 2, 2))


latent_shapes = st.tuples(st.sampled_from([1, 1, 2, 3, 5]), st.sampled_from([2, 4, 6, 8]), st.sampled_from([2, 4, 10]))


@settings(max_examples=40, deadline=None)
@given(shapes=st.lists(latent_shapes, min_size=1, max_size=6), drop=st.sampled_from([0.0, 0.5]), seed=st.integers(0, 99))
def test_pack_unpack_exact(shapes, drop, seed):
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(3, *s, generator=g) for s in shapes]
    packed = pack([Sample(x, timestep=0.5, text_idx=i) for i, x in enumerate(xs)], drop_rate=drop, generator=g)
    L = sum(t * h * w // 4 for t, h, w in shapes)
    assert packed.tokens.shape == (L, 12) and packed.ids.shape == (L, 3)
    assert packed.cu_seqlens.dtype == torch.int32 and packed.cu_seqlens[-1] == L
    assert packed.max_seqlen == max(t * h * w // 4 for t, h, w in shapes)
    assert torch.equal(torch.bincount(packed.sample_idx, minlength=len(xs)),
                       (packed.cu_seqlens[1:] - packed.cu_seqlens[:-1]).long())
    for x, y in zip(xs, unpack(packed, packed.tokens)):
        assert torch.equal(x, y)
    kept = torch.bincount(packed.sample_idx[~packed.is_dropped], minlength=len(xs))
    assert (kept >= 1).all()  # every sample keeps at least one token


def test_per_frame_timestep_and_cond_mask():
    x = torch.randn(4, 3, 4, 4)  # 3 latent frames, 4 tokens each
    t = torch.tensor([0.0, 0.4, 0.9])
    cond = torch.tensor([True, False, False])
    p = pack([Sample(x, timestep=t, is_cond=cond)], drop_rate=0.9, generator=torch.Generator().manual_seed(0))
    assert torch.equal(p.timestep, t.repeat_interleave(4))
    assert torch.equal(p.is_cond, cond.repeat_interleave(4))
    assert not (p.is_cond & p.is_dropped).any()  # conditioning tokens are never dropped
    assert int(p.is_dropped.sum()) == int(0.9 * 8)
    assert torch.equal(p.loss_mask, ~p.is_cond & ~p.is_dropped)
    per_token = torch.rand(12)
    assert torch.equal(pack([Sample(x, timestep=per_token)]).timestep, per_token)
    with pytest.raises(ValueError, match="per latent frame"):
        pack([Sample(x, timestep=torch.rand(5))])
    with pytest.raises(ValueError, match="inside a temporal patch"):
        pack([Sample(torch.randn(4, 2, 4, 4), timestep=torch.tensor([0.0, 1.0]))], patch=(2, 2, 2))


def realistic_lengths(n: int, seed: int = 0) -> list[int]:
    """Token counts at 256px-class area, patch 1x2x2: images and 9/17/33-frame clips at 1:1, 16:9, 9:16."""
    g = torch.Generator().manual_seed(seed)
    grids = [(16, 16), (12, 21), (21, 12)]  # 1:1, 16:9, 9:16 latent-token grids
    frames = [1, 3, 5, 9]  # latent frames of an image, 9-, 17- and 33-frame clips
    out = []
    for _ in range(n):
        h, w = grids[int(torch.randint(3, (1,), generator=g))]
        out.append(frames[int(torch.randint(4, (1,), generator=g))] * h * w)
    return out


def test_pack_to_budget_fills_and_covers():
    lengths = realistic_lengths(300)
    budget = 8192
    bins = pack_to_budget(lengths, budget)
    flat = sorted(i for b in bins for i in b)
    assert flat == list(range(len(lengths)))  # every sample exactly once
    assert all(sum(lengths[i] for i in b) <= budget for b in bins)
    fill = sum(lengths) / (budget * len(bins))
    assert fill > 0.97, fill
    assert all(lengths[b[k]] >= lengths[b[k + 1]] for b in bins for k in range(len(b) - 1))
    with pytest.raises(ValueError, match="budget"):
        pack_to_budget([10, 5000], 4096)
