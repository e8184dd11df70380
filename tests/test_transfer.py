"""Re-basing a DiT on another latent space (chronotope/train/transfer.py): the least-squares maps and the
composed input/output layers."""

import pytest
import torch

from chronotope.config import DIT_PRESETS
from chronotope.dit.model import DiT
from chronotope.dit.patches import Sample, pack, patchify
from chronotope.train.transfer import LatentMaps, LinearMap, paired_tokens, rebase_dit


def test_fit_recovers_an_exact_linear_map_and_reports_r2():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 6, generator=g)
    w, b = torch.randn(3, 6, generator=g), torch.randn(3, generator=g)
    m = LinearMap.fit(x, x @ w.T + b, ridge=0.0)
    assert torch.allclose(m.weight, w, atol=1e-4) and torch.allclose(m.bias, b, atol=1e-4)
    assert m.r2 > 0.9999
    noisy = LinearMap.fit(x, x @ w.T + 3 * torch.randn(2000, 3, generator=g))
    assert 0.1 < noisy.r2 < 0.9  # the noise is not explained
    with pytest.raises(ValueError, match="more rows"):
        LinearMap.fit(x[:5], x[:5, :3])


def test_paired_tokens_need_one_grid():
    old, new = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 16, 16)
    o, n = paired_tokens([old], [new], (1, 1, 1), (1, 2, 2))
    assert o.shape == (3 * 64, 4) and n.shape == (3 * 64, 16)
    with pytest.raises(ValueError, match="different token grids"):
        paired_tokens([old], [new], (1, 1, 1), (1, 1, 1))


def test_rebased_dit_is_the_old_dit_seen_through_the_maps():
    """New latent = an invertible linear function of the old one: the re-based DiT must compute exactly
    B v_old(A x_new + a) - b, i.e. the old model's velocity expressed in the new space."""
    torch.manual_seed(0)
    cfg = DIT_PRESETS["debug"]()
    cfg.patch = (1, 1, 1)
    dit = DiT(cfg).eval()
    for p in dit.parameters():  # a trained-looking model: no zero-initialised layer left
        p.data.normal_(0, 0.05)
    c = cfg.in_channels
    a_w, a_b = torch.randn(c, c) + 3 * torch.eye(c), torch.randn(c)  # old = A new + a
    b_w, b_b = torch.linalg.inv(a_w), -torch.linalg.inv(a_w) @ a_b  # new = B old + b
    maps = LatentMaps(LinearMap(a_w, a_b, 1.0), LinearMap(b_w, b_b, 1.0), tokens=0)
    new = rebase_dit(dit, maps, in_channels=c, patch=(1, 1, 1)).eval()
    z_new = torch.randn(c, 2, 4, 4)
    z_old = torch.einsum("oc,cthw->othw", a_w, z_new) + a_b[:, None, None, None]
    text, mask = torch.randn(1, 5, cfg.text_dim), torch.ones(1, 5, dtype=torch.bool)
    with torch.no_grad():
        v_old = dit(pack([Sample(z_old, timestep=0.7)], patch=(1, 1, 1)), text, mask)  # [L, c]
        v_new = new(pack([Sample(z_new, timestep=0.7)], patch=(1, 1, 1)), text, mask)
    assert torch.allclose(v_new, v_old @ b_w.T - b_b, atol=1e-4)
    assert not torch.allclose(v_new, v_old, atol=1e-2)  # the maps did something


def test_rebase_changes_channels_and_patch_and_refuses_mismatched_maps():
    cfg = DIT_PRESETS["debug"]()
    cfg.patch = (1, 1, 1)
    dit = DiT(cfg)
    old_dim, new_dim = cfg.in_channels, 2 * 4  # 2 channels at patch 1x2x2
    maps = LatentMaps(LinearMap(torch.randn(old_dim, new_dim), torch.zeros(old_dim), 0.5),
                      LinearMap(torch.randn(new_dim, old_dim), torch.zeros(new_dim), 0.5), tokens=0)
    new = rebase_dit(dit, maps, in_channels=2, patch=(1, 2, 2))
    assert new.config.in_channels == 2 and new.config.patch == (1, 2, 2)
    assert torch.equal(new.blocks[0].attn.qkv.weight, dit.blocks[0].attn.qkv.weight)  # the trunk is kept
    z = torch.randn(2, 1, 4, 4)
    assert new(pack([Sample(z, timestep=0.5)], patch=(1, 2, 2)), torch.randn(1, 3, cfg.text_dim),
               torch.ones(1, 3, dtype=torch.bool)).shape == patchify(z, (1, 2, 2)).shape
    with pytest.raises(ValueError, match="features"):
        rebase_dit(dit, maps, in_channels=3, patch=(1, 2, 2))


def test_world_model_rebases_an_init_on_other_latents_once(tmp_path, monkeypatch):
    """train world-model --init on a model whose VAE makes other latents: the DiT is re-based (timed as its own
    stage, its fit recorded) and step 0 kept, so a resumed run loads it instead of fitting again."""
    from chronotope.config import VAE_PRESETS
    from chronotope.pipeline import VideoPipeline
    from chronotope.train import world_model as wm
    from chronotope.vae.model import CausalVAE

    torch.set_num_threads(1)
    VideoPipeline.from_presets("debug", "debug").save_pretrained(tmp_path / "init")  # 4 latent channels
    cfg = VAE_PRESETS["debug"]()
    cfg.latent_channels = 2
    CausalVAE(cfg).save_pretrained(tmp_path / "vae2")
    monkeypatch.setattr(wm, "REBASE_CLIPS", 6)
    recipe = wm.WorldModelRecipe(out=str(tmp_path / "run"), init=str(tmp_path / "init"), vae=str(tmp_path / "vae2"),
                                 patch=(1, 2, 2), device="cpu", progress=False, encode_batch=4)
    run = wm.WorldRun(recipe.resolved())
    model = wm._dit_model(run, channels=2).model
    assert model.config.in_channels == 2 and model.config.patch == (1, 2, 2)
    stage = run.state["stages"]["rebase"]
    assert stage["done"] and stage["tokens"] > 8 and 0 <= stage["r2_new_to_old"] <= 1
    kept = DiT.from_pretrained(tmp_path / "run" / "rebase" / "dit")
    again = wm._dit_model(run, channels=2).model
    mine = again.state_dict()  # the recipe's additions (absolute positions) start at zero on top of step 0
    assert all(torch.equal(mine[k], v) for k, v in kept.state_dict().items())
    assert all(torch.equal(mine[k], v) for k, v in model.state_dict().items())
