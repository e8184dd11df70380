"""A new per-frame condition goes through the one conditioning path (dit/conditioning.py, docs/architecture.md):
a toy condition, defined by one FRAME_CONDITIONS entry and carried by its data's per-frame values, drives one
debug training step (its embedder learns from the cache's values, laid out as sampling lays them out) and one
sample (the value given to the pipeline changes the video; a model without it refuses it)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from chronotope.config import DIT_PRESETS, VAE_PRESETS
from chronotope.data.latent_cache import LatentCache, encode_to_cache
from chronotope.dit import conditioning
from chronotope.dit.conditioning import FRAME_CONDITIONS, FrameCondition
from chronotope.dit.model import DiT
from chronotope.pipeline import VideoPipeline
from chronotope.text.encoder import DebugTextEncoder
from chronotope.train.dit_task import DiTTask, TextEmbeddings
from chronotope.vae.model import CausalVAE


def _parse_toy(value, n: int) -> torch.Tensor:
    if value not in (0, 1, 2, 3):
        raise ValueError(f"toy must be 0, 1, 2 or 3, got {value!r}")
    return torch.full((n,), int(value), dtype=torch.long)


TOY = FrameCondition(size=lambda cfg: cfg.conditions.get("toy", 0), build=conditioning._zero_embedding,
                     embed=conditioning._lookup, null=conditioning._first_row, parse=_parse_toy,
                     help="a toy index per frame")


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(FRAME_CONDITIONS, "toy", TOY)  # the one entry a new condition adds


@pytest.fixture(scope="module")
def toy_cache(tmp_path_factory) -> LatentCache:
    """Four 9-frame clips whose per-frame toy values (one per pixel frame, as a data source writes them) differ."""
    torch.manual_seed(0)
    items = [{"video": torch.rand(3, 9, 32, 32) * 2 - 1, "text": f"clip {i}",
              "conditions": {"toy": [(i + f // 4) % 4 for f in range(9)]}} for i in range(4)]
    out = tmp_path_factory.mktemp("toy-cache")
    encode_to_cache(CausalVAE(VAE_PRESETS["debug"]()), items, out, progress=False)
    return LatentCache(out)


def toy_dit() -> DiT:
    """A debug DiT with the toy condition; its zero-initialised gates and output layer made small and random (as a
    trained model's are), so gradients reach its inputs. The toy embedder stays zero, as a new condition starts."""
    torch.manual_seed(0)
    model = DiT(replace(DIT_PRESETS["debug"](), conditions={"toy": 4}))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not p.any() and not name.startswith("toy_embedder."):
                p.normal_(0.0, 0.02)
    return model


def test_a_training_step_lays_out_and_learns_the_toy_condition(toy, toy_cache):
    model = toy_dit()
    assert not model.toy_embedder.weight.any()  # zero at the start: a trained model gains it by fine-tuning
    text = TextEmbeddings.build(toy_cache, DebugTextEncoder(), progress=False)
    task = DiTTask(model, toy_cache, text, token_budget=4096, cond_probs={"none": 1.0})
    packed, *_ = task.make_pack([0, 1], torch.Generator().manual_seed(0))
    # one value per latent frame (pixel frames 0, 4, 8), repeated over the frame's 2 x 2 tokens, in pack order
    per_token = packed.conditions["toy"].view(2, 3, 4)
    rows = sorted([0, 1], key=lambda i: -task.lengths[i])
    want = [[(i + f // 4) % 4 for f in (0, 4, 8)] for i in rows]
    assert per_token[:, :, 0].tolist() == want and (per_token == per_token[:, :, :1]).all()
    loss, _ = task.loss(model, [0, 1, 2, 3], torch.Generator().manual_seed(1))
    loss.backward()
    grad = model.toy_embedder.weight.grad
    assert grad is not None and grad.abs().sum() > 0  # the condition reaches the loss


def test_a_sample_takes_the_toy_condition_and_a_model_without_it_refuses_it(toy):
    base = VideoPipeline.from_presets("debug", "debug", defaults=dict(height=32, width=32, num_frames=5))
    dit = toy_dit()
    dit.load_state_dict(base.dit.state_dict(), strict=False)
    with torch.no_grad():
        dit.toy_embedder.weight.normal_(0.0, 1.0, generator=torch.Generator().manual_seed(3))
    pipe = VideoPipeline(base.vae, dit.eval(), base._text_encoder, base.text_encoder_name, base.defaults)
    kw = dict(num_inference_steps=2, seed=0, progress=False)
    a, b = pipe("a red circle", conditions={"toy": 1}, **kw), pipe("a red circle", conditions={"toy": 2}, **kw)
    assert not np.array_equal(a.frames[0], b.frames[0])
    assert a.params["conditions"] == {"toy": "1"}
    assert np.array_equal(a.frames[0], pipe("a red circle", conditions={"toy": 1}, **kw).frames[0])
    with pytest.raises(ValueError, match="toy must be 0, 1, 2 or 3"):
        pipe("a red circle", conditions={"toy": 7}, **kw)
    with pytest.raises(ValueError, match="not trained with the 'toy' condition"):
        base("a red circle", conditions={"toy": 1}, **kw)
    with pytest.raises(ValueError, match="unknown condition 'wind'"):
        pipe("a red circle", conditions={"wind": 1}, **kw)
