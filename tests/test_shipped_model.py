"""The shipped World model (chronotope/assets/world-model): it loads with the default text encoder and its
videos follow the prompt's background (a check a random-weight or broken model fails). CPU, a few seconds."""

from __future__ import annotations

import pytest
import torch

from chronotope.pipeline import ASSETS, VideoPipeline

pytestmark = pytest.mark.skipif(not (ASSETS / "model_index.json").is_file(), reason="no model shipped")


@pytest.fixture(scope="module")
def pipe() -> VideoPipeline:
    torch.set_num_threads(2)
    return VideoPipeline.from_pretrained(ASSETS)


@pytest.mark.parametrize("background,lo,hi", [("white", 0.75, 1.0), ("black", 0.0, 0.25)])
def test_shipped_model_draws_the_prompted_background(pipe, background, lo, hi):
    out = pipe(f"a big red circle moves right on a {background} background", num_frames=17, height=64, width=64,
               num_inference_steps=10, seed=0, progress=False)
    frames = out.frames[0]  # uint8 [17, 64, 64, 3]
    assert frames.shape == (17, 64, 64, 3)
    median = float(torch.from_numpy(frames).float().median()) / 255.0  # most pixels are background
    assert lo <= median <= hi, f"median brightness {median:.2f} for a {background} background"
