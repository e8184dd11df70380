"""Model soups: the weight-by-weight mean of fine-tunes of one model (Wortsman et al. 2022, WiSE-FT / model
soups), and the re-export of a model folder for shipping (fp16, optional shards).

    chronotope average runs/a/model runs/b/model --vae runs/vae-dec2/vae --out chronotope/assets/world-model

The DiTs must share one architecture (fine-tunes of a common parent); the mean is taken in fp32. The VAE
comes from the first folder unless `vae` names another one with the same latent space (a decoder-only
fine-tune). With one folder this is a plain re-export.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from chronotope.atomic import atomic_write_json, swap_in_folder


def average_models(sources: list[str | os.PathLike], out: str | os.PathLike, vae: str | os.PathLike | None = None,
                   dtype: torch.dtype | None = torch.float16, max_shard_size: int | str | None = None) -> Path:
    """Write OUT: the first source's pipeline with its DiT weights replaced by the mean over `sources`."""
    from chronotope.train.evaluate import load_pipeline
    from chronotope.vae.model import CausalVAE

    if not sources:
        raise ValueError("name at least one model folder to average (or to re-export)")
    if max_shard_size is not None:
        from chronotope.weights import parse_size

        parse_size(max_shard_size)  # a bad size is refused before anything is read or written
    pipes = [load_pipeline(s) for s in sources]  # the text encoder is only named, not loaded
    first = pipes[0]
    states = [p.dit.state_dict() for p in pipes]
    for src, p, sd in zip(sources, pipes, states):
        if p.dit.config != first.dit.config or sd.keys() != states[0].keys():
            raise ValueError(f"{src}: its DiT ({p.dit.config}) is not the architecture of {sources[0]} "
                             f"({first.dit.config}); only fine-tunes of one model can be averaged")
    mean = {k: sum(sd[k].float() for sd in states) / len(states) for k in states[0]}
    first.dit.load_state_dict({k: v.to(states[0][k].dtype) for k, v in mean.items()})
    if vae is not None:
        new_vae = CausalVAE.from_pretrained(vae)
        if new_vae.config.latent_channels != first.vae.config.latent_channels:
            raise ValueError(f"--vae {vae}: {new_vae.config.latent_channels} latent channels, the models' VAE has "
                             f"{first.vae.config.latent_channels}; use a decoder fine-tune of the same VAE")
        first.vae = new_vae
    out = Path(out)

    def write(tmp: Path) -> None:
        first.save_pretrained(tmp, dtype=dtype, max_shard_size=max_shard_size)
        atomic_write_json(tmp / "training.json", {"average_of": [str(s) for s in sources],
                                                  "vae": str(vae or Path(sources[0]) / "vae")})

    swap_in_folder(out, write)
    return out
