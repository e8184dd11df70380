"""`chronotope average`: a model soup of fine-tunes (the mean DiT), a VAE swap, and refusals."""

from __future__ import annotations

import json

import pytest
import torch

from chronotope.cli import main
from chronotope.config import DIT_PRESETS, VAE_PRESETS
from chronotope.dit.model import DiT
from chronotope.pipeline import VideoPipeline
from chronotope.vae.model import CausalVAE


def _folder(path, seed: int, **dit_changes):
    torch.manual_seed(seed)
    cfg = DIT_PRESETS["debug"]()
    for k, v in dit_changes.items():
        setattr(cfg, k, v)
    VideoPipeline(CausalVAE(VAE_PRESETS["debug"]()), DiT(cfg), None, "debug").save_pretrained(path)
    return path


def test_average_is_the_mean_dit_with_the_chosen_vae(tmp_path, capsys):
    a, b = _folder(tmp_path / "a", 0), _folder(tmp_path / "b", 1)
    torch.manual_seed(2)
    CausalVAE(VAE_PRESETS["debug"]()).save_pretrained(tmp_path / "vae2")
    assert main(["average", str(a), str(b), "--vae", str(tmp_path / "vae2"), "--out", str(tmp_path / "soup"),
                 "--fp32"]) == 0
    wa, wb = (VideoPipeline.from_pretrained(p).dit.state_dict() for p in (a, b))
    soup = VideoPipeline.from_pretrained(tmp_path / "soup")
    assert all(torch.allclose(soup.dit.state_dict()[k], (wa[k] + wb[k]) / 2) for k in wa)
    want_vae = CausalVAE.from_pretrained(tmp_path / "vae2").state_dict()
    assert all(torch.equal(soup.vae.state_dict()[k], want_vae[k]) for k in want_vae)
    assert json.loads((tmp_path / "soup" / "training.json").read_text())["average_of"] == [str(a), str(b)]
    # the default stores fp16: half the size, and loading casts back
    assert main(["average", str(a), "--out", str(tmp_path / "half")]) == 0
    assert (tmp_path / "half" / "dit" / "model.safetensors").stat().st_size < \
        0.6 * (tmp_path / "soup" / "dit" / "model.safetensors").stat().st_size


def test_average_refuses_other_architectures(tmp_path, capsys):
    a, b = _folder(tmp_path / "a", 0), _folder(tmp_path / "b", 1, depth=3)
    assert main(["average", str(a), str(b), "--out", str(tmp_path / "soup")]) == 2
    err = capsys.readouterr().err
    assert "architecture" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "soup").exists()
