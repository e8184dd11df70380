"""Causal 3D VAE (chronotope/vae): shapes, causality, chunked/tiled coding, save/load, losses. CPU, debug preset."""

from __future__ import annotations

import math

import pytest
import torch

from chronotope.config import VAE_PRESETS, VAEConfig
from chronotope.vae.losses import psnr, psnr_from_mse, ssim, vae_loss
from chronotope.vae.model import CausalVAE, measure_latent_stats
from chronotope.vae.tiling import tile_spans, tiled_call


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny convs run faster on one thread, and far faster when other processes share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=[3, 1], ids=["time_kernel3", "time_kernel1"])
def vae(request) -> CausalVAE:
    """The debug VAE with 3x3x3 convs (Wan-like) and with per-frame convs (the world preset's choice)."""
    torch.manual_seed(0)
    cfg = VAE_PRESETS["debug"]()
    cfg.time_kernel = request.param
    return CausalVAE(cfg).eval()


def clip(T: int, H: int = 32, W: int = 32, B: int = 1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, 3, T, H, W, generator=g) * 2 - 1


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


@pytest.mark.parametrize("T", [1, 5, 9, 17])
def test_shapes(vae: CausalVAE, T: int) -> None:
    x = clip(T, 32, 48, B=2)
    with torch.no_grad():
        post = vae.encode(x)
        assert post.mean.shape == (2, 4, 1 + (T - 1) // 4, 4, 6) == (2, *vae.latent_shape(T, 32, 48))
        assert post.logvar.shape == post.mean.shape and post.kl().shape == (2,)
        y = vae.decode(post.mode())
    assert y.shape == x.shape and y.abs().max() <= 1.0


@pytest.mark.parametrize("tf,sf,T,H,t,h", [(1, 4, 3, 16, 3, 4), (2, 8, 5, 32, 3, 4), (4, 16, 9, 32, 3, 2)])
def test_other_factors(tf: int, sf: int, T: int, H: int, t: int, h: int) -> None:
    n = sf.bit_length()  # log2(sf) + 1 widths
    config = VAEConfig(latent_channels=2, temporal_factor=tf, spatial_factor=sf, widths=[4] * n, num_res_blocks=1)
    vae = CausalVAE(config)
    with torch.no_grad():
        z = vae.encode(clip(T, H, H)).mode()
        assert z.shape == (1, 2, t, h, h)
        assert vae.decode(z).shape == (1, 3, T, H, H)


def test_encoder_and_decoder_are_causal(vae: CausalVAE) -> None:
    x = clip(17)
    x2 = x.clone()
    x2[:, :, 5:] = clip(12, seed=1)  # change every frame after the first 5 (= latent frames 0 and 1)
    with torch.no_grad():
        z, z2 = vae.encode(x).mean, vae.encode(x2).mean
        assert (z[:, :, :2] - z2[:, :, :2]).abs().max() <= 1e-6
        assert (z[:, :, 2:] - z2[:, :, 2:]).abs().max() > 1e-3  # the change does reach later latents
        y, y2 = vae.decode(z), vae.decode(z2)
    assert (y[:, :, :5] - y2[:, :, :5]).abs().max() <= 1e-5
    assert (y[:, :, 5:] - y2[:, :, 5:]).abs().max() > 1e-3


def test_image_is_first_frame_of_video(vae: CausalVAE) -> None:
    x = clip(9)
    with torch.no_grad():
        z_video = vae.encode(x).mean
        z_image = vae.encode(x[:, :, :1]).mean
        assert z_image.shape[2] == 1
        assert (z_video[:, :, :1] - z_image).abs().max() <= 1e-6
        assert (vae.decode(z_video)[:, :, :1] - vae.decode(z_image)).abs().max() <= 1e-5


@pytest.mark.parametrize("chunk", [4, 8])
def test_chunked_encode_equals_whole(vae: CausalVAE, chunk: int) -> None:
    x = clip(17)
    with torch.no_grad():
        whole = vae.encode(x, chunk_frames=None)
        chunked = vae.encode(x, chunk_frames=chunk)
    assert rel_err(chunked.mean, whole.mean) < 1e-5
    assert rel_err(chunked.logvar, whole.logvar) < 1e-5


@pytest.mark.parametrize("chunk", [1, 2, 3])
def test_chunked_decode_equals_whole(vae: CausalVAE, chunk: int) -> None:
    z = torch.randn(1, 4, 5, 4, 4, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        whole = vae.decode(z, chunk_latent_frames=None, clamp=False)
        parts = list(vae.decode_iter(z, chunk_latent_frames=chunk, clamp=False))
    sizes = [p.shape[2] for p in parts]
    assert sizes[0] == 1 + 4 * (min(chunk, 5) - 1) and sum(sizes) == 17
    assert rel_err(torch.cat(parts, dim=2), whole) < 1e-5


def test_chunk_size_must_fit_temporal_factor(vae: CausalVAE) -> None:
    with pytest.raises(ValueError, match="multiple of temporal_factor"):
        vae.encode(clip(9), chunk_frames=3)


def test_tiled_call_blends_to_exact_for_pointwise_fn() -> None:
    x = torch.randn(1, 2, 3, 40, 56)
    seen = []

    def fn(t: torch.Tensor, i: int) -> torch.Tensor:  # 2x nearest upsampling: position-wise up to scale
        seen.append(i)
        return (t * 3 + 1).repeat_interleave(2, dim=-1).repeat_interleave(2, dim=-2)

    y = tiled_call(fn, x, tile=16, overlap=8, scale=(2, 1))
    assert torch.allclose(y, fn(x, -1), atol=1e-5)
    num_tiles = len(tile_spans(40, 16, 8)) * len(tile_spans(56, 16, 8))
    assert seen[:-1] == list(range(num_tiles)) and len(seen) == num_tiles + 1
    assert tile_spans(40, 16, 8)[-1] == (24, 40) and tile_spans(10, 16, 8) == [(0, 10)]


def test_tiled_vae_matches_whole_when_tiles_cover_and_blends_otherwise(vae: CausalVAE) -> None:
    x = clip(5, 64, 64)
    with torch.no_grad():
        z = vae.encode(x).mean
        y = vae.decode(z)
        assert torch.equal(vae.decode(z, tile_size=64, tile_overlap=16), y)  # one tile = whole frame
        assert rel_err(vae.encode(x, tile_size=64, tile_overlap=16).mean, z) < 1e-6
        err_no_overlap = (vae.decode(z, tile_size=32, tile_overlap=0) - y).abs().mean()
        err_overlap = (vae.decode(z, tile_size=48, tile_overlap=32) - y).abs().mean()
        tiled_enc = vae.encode(x, tile_size=48, tile_overlap=32).mean
        # tiled + chunked decode == tiled whole decode: each tile keeps its own causal cache
        a = vae.decode(z, tile_size=48, tile_overlap=32, chunk_latent_frames=1)
        b = vae.decode(z, tile_size=48, tile_overlap=32)
    assert err_overlap < err_no_overlap
    assert (tiled_enc - z).abs().mean() < 0.5 * z.abs().mean()
    assert rel_err(a, b) < 1e-5


def test_invalid_sizes_raise_with_nearest_valid(vae: CausalVAE) -> None:
    with pytest.raises(ValueError, match="5 or 9"):
        vae.latent_shape(8, 32, 32)
    with pytest.raises(ValueError, match="16 or 24"):
        vae.latent_shape(9, 20, 32)
    with pytest.raises(ValueError, match="num_frames"):
        vae.encode(clip(6))
    with pytest.raises(ValueError, match="latents"):
        vae.decode(torch.zeros(1, 3, 2, 4, 4))
    with pytest.raises(ValueError, match="tile_size"):
        vae.decode(torch.zeros(1, 4, 2, 4, 4), tile_size=20)
    with pytest.raises(ValueError, match="widths"):
        VAEConfig(spatial_factor=16, widths=[8, 8, 8, 8])
    with pytest.raises(ValueError, match="temporal_factor"):
        VAEConfig(temporal_factor=3)
    with pytest.raises(ValueError, match="time_kernel must be 1"):
        VAEConfig(time_kernel=2)


def test_save_load_round_trip_is_bitwise(vae: CausalVAE, tmp_path) -> None:
    vae.set_latent_stats([0.1, -0.2, 0.3, 0.0], [1.5, 0.5, 2.0, 1.0])
    try:
        vae.save_pretrained(tmp_path / "vae")
        assert sorted(p.name for p in (tmp_path / "vae").iterdir()) == ["config.json", "model.safetensors"]
        loaded = CausalVAE.from_pretrained(tmp_path / "vae")
    finally:
        vae.config.latent_mean = vae.config.latent_std = None
    assert loaded.config.latent_std == [1.5, 0.5, 2.0, 1.0]
    for (k, a), (k2, b) in zip(vae.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    with pytest.raises(FileNotFoundError):
        CausalVAE.from_pretrained(tmp_path / "missing")


def test_latent_normalisation(vae: CausalVAE) -> None:
    batches = [clip(5, seed=s) * 0.5 for s in range(3)]
    mean, std = measure_latent_stats(vae, batches)
    assert len(mean) == len(std) == 4
    config = vae.config
    try:
        vae.set_latent_stats(mean, std)
        with torch.no_grad():
            z = torch.cat([vae.encode_latents(b) for b in batches])
            assert z.mean(dim=(0, 2, 3, 4)).abs().max() < 1e-4
            assert (z.std(dim=(0, 2, 3, 4), unbiased=False) - 1).abs().max() < 1e-3
            raw = vae.encode(batches[0]).mode()
            assert torch.allclose(vae.denormalize(vae.normalize(raw)), raw, atol=1e-5)
            assert torch.allclose(vae.decode_latents(vae.normalize(raw)), vae.decode(raw), atol=1e-5)
    finally:
        config.latent_mean = config.latent_std = None


def test_metrics() -> None:
    x = clip(3)
    assert psnr(x, x).item() > 100 and abs(ssim(x, x).item() - 1) < 1e-5
    noisy = (x + 0.1 * torch.randn_like(x)).clamp(-1, 1)
    assert 20 < psnr(noisy, x).item() < 30 and ssim(noisy, x).item() < 0.95
    assert abs(psnr(x * 0, x * 0 + 0.02).item() - 10 * torch.log10(torch.tensor(4 / 0.02**2)).item()) < 1e-3


def test_loss_is_finite_and_decreases() -> None:
    torch.manual_seed(0)
    vae = CausalVAE(VAE_PRESETS["debug"]())
    coarse = clip(5, 2, 2, B=2)  # smooth content (white noise would be incompressible)
    x = torch.nn.functional.interpolate(coarse, size=(5, 16, 16), mode="trilinear")
    opt = torch.optim.Adam(vae.parameters(), lr=3e-3)
    losses = []
    for _ in range(20):
        recon, posterior = vae(x, generator=torch.Generator().manual_seed(0))
        loss, metrics = vae_loss(x, recon, posterior)
        assert torch.isfinite(loss) and set(metrics) >= {"l1", "ssim", "kl", "psnr"}
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.85 * losses[0]


def test_fast_cpu_path_matches_reference(monkeypatch) -> None:
    """Channels-last memory + direct oneDNN convs give the same outputs and gradients as plain F.conv3d."""
    import chronotope.vae.layers as layers

    torch.manual_seed(0)
    fast = CausalVAE(VAE_PRESETS["debug"]())
    ref = CausalVAE(VAE_PRESETS["debug"]())
    ref.load_state_dict(fast.state_dict())
    x = clip(5, 16, 16)

    def run(model: CausalVAE) -> tuple[torch.Tensor, torch.Tensor]:
        recon, _ = model(x, sample=False)
        recon.square().mean().backward()
        return recon.detach(), model.encoder.conv_in.weight.grad.clone()

    y_fast, g_fast = run(fast)
    monkeypatch.setattr(layers, "_mkldnn_ok", lambda t: False)
    monkeypatch.setattr(layers, "CHANNELS_LAST", torch.contiguous_format)
    ref.to(memory_format=torch.contiguous_format)
    y_ref, g_ref = run(ref)
    assert rel_err(y_fast, y_ref) < 1e-4 and rel_err(g_fast, g_ref) < 1e-4


def test_chunked_coding_stays_channels_last(vae: CausalVAE) -> None:
    """Every conv of a chunked decode gets channels-last input, even in the one-frame first chunk (where
    group_norm alone would return NCHW and each later conv and cat would pay a layout-changing copy)."""
    import chronotope.vae.layers as layers

    seen: list[bool] = []
    convs = [m for m in vae.decoder.modules() if isinstance(m, layers.CausalConv3d)]
    hooks = [m.register_forward_pre_hook(lambda _, args: seen.append(
        args[0].is_contiguous(memory_format=torch.channels_last_3d))) for m in convs]
    try:
        with torch.no_grad():
            vae.decode(torch.randn(1, vae.config.latent_channels, 3, 4, 4), chunk_latent_frames=1)
    finally:
        for h in hooks:
            h.remove()
    assert len(seen) >= 3 * len(convs) and all(seen)
    parts = [torch.randn(1, 4, t, 3, 5).contiguous(memory_format=torch.channels_last_3d) for t in (2, 1, 3)]
    cat = layers.cat_time(parts)
    assert torch.equal(cat, torch.cat(parts, dim=2)) and cat.is_contiguous(memory_format=torch.channels_last_3d)


def test_overfits_world_objects_not_just_background() -> None:
    """Regression: with RMS norm over channels per position the VAE only learnt World's flat background
    (one-batch PSNR stuck at the background-only ~20.5 dB). Per-frame GroupNorm learns the objects too."""
    from chronotope.world.generate import iter_world

    frames = [torch.from_numpy(f) for _, f in iter_world(2, seed=5, height=32, width=32, num_frames=1)]
    x = torch.stack([f.permute(3, 0, 1, 2).float() / 127.5 - 1 for f in frames])  # [2, 3, 1, 32, 32]
    background_psnr = psnr(x[:, :, :, :1, :1].expand_as(x), x).item()  # every pixel = the corner colour
    torch.manual_seed(0)
    config = VAEConfig(latent_channels=8, widths=[16, 16, 32, 32], num_res_blocks=1, mid_attention=False)
    vae = CausalVAE(config)
    opt = torch.optim.Adam(vae.parameters(), lr=2e-3)
    for _ in range(60):
        recon, _ = vae(x, sample=False)
        loss = (recon - x).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    # measured: ~23 dB here; the old RMS-norm model stayed at ~19.5 dB (below the background-only 20.5 dB)
    assert psnr(recon.detach().clamp(-1, 1), x).item() > background_psnr + 1.5


def test_shortcut_paths_are_exact_rearrangements() -> None:
    """The parameter-free shortcuts: space<->channel are inverses, repeat-then-average is the identity, and
    a time-stride-2 causal conv with zero weights outputs frame 0, then the mean of each later frame pair."""
    from chronotope.vae.layers import CausalConv3d, channel_to_space, match_channels, space_to_channel

    x = clip(5, 8, 8, B=2)  # [2, 3, 5, 8, 8]
    assert space_to_channel(x).shape == (2, 12, 5, 4, 4)
    torch.testing.assert_close(channel_to_space(space_to_channel(x)), x, rtol=0, atol=0)
    torch.testing.assert_close(match_channels(match_channels(x, 12), 3), x)
    with pytest.raises(ValueError, match="cannot"):
        match_channels(x, 5)
    conv = CausalConv3d(3, 3, (3, 1, 1), time_stride=2, time_shortcut=True)
    torch.nn.init.zeros_(conv.weight), torch.nn.init.zeros_(conv.bias)
    expected = torch.stack([x[:, :, 0], (x[:, :, 1] + x[:, :, 2]) / 2, (x[:, :, 3] + x[:, :, 4]) / 2], dim=2)
    torch.testing.assert_close(conv(x), expected)


def test_shortcuts_are_an_architecture_switch() -> None:
    """shortcuts=False is the plain network (learned 1x1 width changes); both keep causality and shapes."""
    plain, short = (CausalVAE(VAEConfig(latent_channels=4, widths=[8, 8, 16, 16], num_res_blocks=1, shortcuts=s))
                    for s in (False, True))
    assert sum(p.numel() for p in plain.parameters()) > sum(p.numel() for p in short.parameters())
    x = clip(9, 32, 32)
    assert plain(x, sample=False)[0].shape == short(x, sample=False)[0].shape == x.shape


def test_psnr_from_mse_is_psnr_of_an_accumulated_error():
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(1, 3, 5, 16, 16, generator=g) * 2 - 1, torch.rand(1, 3, 5, 16, 16, generator=g) * 2 - 1
    chunks = [float((a[:, :, i] - b[:, :, i]).square().mean()) for i in range(5)]  # per frame, as reconstruct adds
    assert psnr_from_mse(sum(chunks) / 5) == pytest.approx(float(psnr(a, b)), abs=1e-4)
    assert psnr_from_mse(0.0) == pytest.approx(10 * math.log10(4e12))  # identical: capped, not infinite


@pytest.mark.parametrize("preset,latent", [("world", (16, 5, 8, 8)), ("world-4x", (16, 5, 16, 16)),
                                           ("world-c64", (64, 5, 8, 8))])
def test_world_latent_options_shapes(preset: str, latent: tuple[int, ...]) -> None:
    """The latent spaces compared in docs/training-world.md: a 17-frame 64x64 clip's latent in each."""
    vae = CausalVAE(VAE_PRESETS[preset]()).eval()
    assert vae.latent_shape(17, 64, 64) == latent
    with torch.no_grad():
        assert vae.encode(clip(5, 64, 64)).mean.shape == (1, latent[0], 2, latent[2], latent[3])


def test_4x_space_keeps_causality_chunking_and_tiling() -> None:
    """world-4x's layout (two resampling stages, both halving time), at debug widths: every property the
    8x VAE has holds (causal, chunked = whole in both directions, one covering tile = whole frame)."""
    torch.manual_seed(0)
    vae = CausalVAE(VAEConfig(latent_channels=4, spatial_factor=4, widths=[8, 8, 16], num_res_blocks=1,
                              time_kernel=1)).eval()
    x = clip(17, 32, 32)
    x2 = x.clone()
    x2[:, :, 5:] = clip(12, 32, 32, seed=1)
    with torch.no_grad():
        z, z2 = vae.encode(x).mean, vae.encode(x2).mean
        assert z.shape == (1, 4, 5, 8, 8)
        assert (z[:, :, :2] - z2[:, :, :2]).abs().max() <= 1e-6 < (z[:, :, 2:] - z2[:, :, 2:]).abs().max()
        assert rel_err(vae.encode(x, chunk_frames=4).mean, z) < 1e-5
        whole = vae.decode(z, chunk_latent_frames=None, clamp=False)
        assert rel_err(torch.cat(list(vae.decode_iter(z, chunk_latent_frames=1, clamp=False)), dim=2), whole) < 1e-5
        assert torch.equal(vae.decode(z, tile_size=32, tile_overlap=8), vae.decode(z))
        assert (vae.decode(z)[:, :, :5] - vae.decode(z2)[:, :, :5]).abs().max() <= 1e-5
