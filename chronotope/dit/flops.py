"""Analytic parameter and FLOP count of the DiT, layer by layer (multiply-accumulates, as the DiT paper's Gflops).

Checked against the DiT paper (Peebles & Xie 2023, Table 4: DiT-XL/2 = 118.64 Gflops at 256x256, which
counts multiply-accumulates) and against torch.utils.flop_counter on the debug model (tests/test_dit.py).

    chronotope flops --preset world-s --latent 5,8,8 --text-len 32
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from chronotope.config import DiTConfig
from chronotope.dit.patches import token_grid

# latent (T, H, W) used when none is given: a 17-frame 64px clip for the small presets, 256px image otherwise
DEFAULT_LATENT = {"debug": (5, 8, 8), "world-s": (5, 8, 8)}
PAPER_LATENT = (1, 32, 32)


@dataclass
class FlopReport:
    """Per-layer multiply-accumulates for one forward pass, and the parameter count."""

    rows: list[tuple[str, int]] = field(default_factory=list)  # (layer, MACs) for the whole forward
    params: int = 0
    tokens: int = 0

    @property
    def macs(self) -> int:
        return sum(m for _, m in self.rows)

    @property
    def flops(self) -> int:
        return 2 * self.macs

    def table(self) -> str:
        lines = [f"{'layer':<28}{'GMACs':>12}{'share':>8}"]
        total = max(self.macs, 1)
        for name, m in self.rows:
            lines.append(f"{name:<28}{m / 1e9:>12.4f}{100 * m / total:>7.1f}%")
        lines.append(f"{'total forward':<28}{self.macs / 1e9:>12.4f}")
        lines.append(f"params {self.params / 1e6:.2f} M   tokens {self.tokens}   "
                     f"forward {self.macs / 1e9:.3f} GMACs = {self.flops / 1e9:.3f} GFLOPs "
                     f"(training step about 3x: {3 * self.flops / 1e9:.3f} GFLOPs)")
        return "\n".join(lines)


def paper_config(size: str, patch: int) -> DiTConfig:
    """The DiT paper's model: class label instead of text, 4 latent channels, learned sigma, no RoPE/QK-norm."""
    from chronotope.config import DIT_PRESETS

    if size not in ("S", "B", "L", "XL"):
        raise ValueError(f"paper sizes are S, B, L, XL; got {size!r}")
    return replace(DIT_PRESETS[size](), in_channels=4, out_channels=8, patch=(1, patch, patch), num_classes=1000,
                   qk_norm=False, rope=False)


def count_params(cfg: DiTConfig) -> int:
    D, P = cfg.width, cfg.in_channels * cfg.patch[0] * cfg.patch[1] * cfg.patch[2]
    out = (cfg.out_channels or cfg.in_channels) * P // cfg.in_channels
    hd, hid = D // cfg.heads, int(D * cfg.mlp_ratio)
    qk = 2 * hd if cfg.qk_norm else 0
    n = (P * D + D) + (cfg.freq_dim * D + D + D * D + D)
    cross = cfg.num_classes == 0
    n += (cfg.num_classes + 1) * D if not cross else (cfg.text_dim * D + D + D * D + D + D)
    block = (6 * D * D + 6 * D) + (3 * D * D + 3 * D) + qk + (D * D + D) + (D * hid + hid + hid * D + D)
    if cross:
        block += 2 * D + (D * D + D) + (2 * D * D + 2 * D) + qk + (D * D + D)
    return n + cfg.depth * block + (2 * D * D + 2 * D) + (D * out + out)


def count_flops(cfg: DiTConfig, latents: list[tuple[int, int, int]], text_len: int = 32,
                distinct_conditions: int | None = None) -> FlopReport:
    """MACs of one forward over a packed batch of `latents` ((T, H, W) each), one caption of `text_len` each.

    distinct_conditions: rows the timestep embedder and adaLN run on (the model embeds each distinct
    (timestep, class) once, then gathers per token); default one per sample.
    """
    D, P = cfg.width, cfg.in_channels * cfg.patch[0] * cfg.patch[1] * cfg.patch[2]
    out = (cfg.out_channels or cfg.in_channels) * P // cfg.in_channels
    hid = int(D * cfg.mlp_ratio)
    lens = [a * b * c for a, b, c in (token_grid(s, cfg.patch) for s in latents)]
    L, N, U = sum(lens), len(lens), distinct_conditions or len(lens)
    cross = cfg.num_classes == 0
    rows = [("patch embed", L * P * D), ("timestep embed", U * (cfg.freq_dim * D + D * D))]
    if cross:
        rows.append(("text embed", N * text_len * (cfg.text_dim * D + D * D)))
    per_block = [
        ("adaLN modulation", U * D * 6 * D),
        ("self-attn qkv", L * D * 3 * D),
        ("self-attn scores+values", 2 * sum(n * n for n in lens) * D),
        ("self-attn out", L * D * D),
    ]
    if cross:
        per_block += [
            ("cross-attn q+out", 2 * L * D * D),
            ("cross-attn kv", N * text_len * 2 * D * D),
            ("cross-attn scores+values", 2 * L * text_len * D),
        ]
    per_block.append(("mlp", 2 * L * D * hid))
    rows += [(f"{name} x{cfg.depth}", cfg.depth * m) for name, m in per_block]
    rows.append(("final layer", U * D * 2 * D + L * D * out))
    return FlopReport(rows=rows, params=count_params(cfg), tokens=L)
