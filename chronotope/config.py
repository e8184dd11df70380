"""Typed configs for every model, and their presets as small functions (no inheritance, no registries).

`VAE_PRESETS["world"]()` returns a fresh `VAEConfig`; `DIT_PRESETS["world-s"]()` a fresh `DiTConfig`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields


def config_from_dict(cls, data: dict):
    """Build a config dataclass from a dict (e.g. a config.json), rejecting unknown keys clearly."""
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys {unknown}; valid keys: {sorted(names)}")
    return cls(**data)


# === VAE ========================================================================================


# === DiT ========================================================================================
