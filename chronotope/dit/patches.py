"""Spacetime patches and Patch n' Pack (NaViT, Dehghani et al. 2023; Sora's "spacetime patches").

A latent video [C, T, H, W] is cut into pt x ph x pw cubes; each cube is one token carrying integer
(t, h, w) position ids. Samples of any size, duration and aspect ratio (images are T = 1) are
concatenated into ONE sequence; `cu_seqlens` marks where each sample starts so attention can be
block-diagonal (chronotope/dit/attention.py). Batches are filled to a token budget, not a sample
count (`pack_to_budget`), and tokens can be dropped during training (they never enter the model).

Default patch is (1, 2, 2): pt must divide T, and images have T = 1, so pt > 1 excludes images.

    samples = [Sample(latent, timestep=t, text_idx=i) for ...]
    packed = pack(samples, patch=(1, 2, 2))          # tokens [L, C*pt*ph*pw], ids [L, 3], ...
    latents = unpack(packed, packed.tokens)          # list of [C, T, H, W], exact inverse
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from einops import rearrange
from torch import Tensor

from chronotope.dit.attention import Segments, segments_from_lengths

Patch = tuple[int, int, int]
Grid = tuple[int, int, int]

PATCHIFY = "c (t pt) (h ph) (w pw) -> (t h w) (c pt ph pw)"
UNPATCHIFY = "(t h w) (c pt ph pw) -> c (t pt) (h ph) (w pw)"


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def token_grid(shape: tuple[int, int, int], patch: Patch = (1, 2, 2)) -> Grid:
    """(T, H, W) latent size -> (t, h, w) token grid; ValueError naming valid patch sizes."""
    for name, n, p in zip("THW", shape, patch):
        if p < 1 or n % p:
            raise ValueError(
                f"latent {name}={n} is not divisible by patch size {p}; valid patch sizes for it are "
                f"{_divisors(n)} (images have T=1, so they need pt=1; the default patch is (1, 2, 2))"
            )
    return (shape[0] // patch[0], shape[1] // patch[1], shape[2] // patch[2])


def patchify(latent: Tensor, patch: Patch = (1, 2, 2)) -> Tensor:
    """latent [C, T, H, W] -> tokens [t*h*w, C*pt*ph*pw] (row-major over t, h, w)."""
    if latent.ndim != 4:
        raise ValueError(f"patchify expects a latent [C, T, H, W], got shape {tuple(latent.shape)}")
    token_grid(tuple(latent.shape[1:]), patch)
    pt, ph, pw = patch
    return rearrange(latent, PATCHIFY, pt=pt, ph=ph, pw=pw)


def unpatchify(tokens: Tensor, grid: Grid, patch: Patch = (1, 2, 2)) -> Tensor:
    """tokens [t*h*w, C*pt*ph*pw] -> latent [C, t*pt, h*ph, w*pw]; inverse of `patchify`."""
    t, h, w = grid
    pt, ph, pw = patch
    if tokens.shape[0] != t * h * w or tokens.shape[1] % (pt * ph * pw):
        raise ValueError(f"tokens {tuple(tokens.shape)} do not fit grid {grid} with patch {patch}")
    return rearrange(tokens, UNPATCHIFY, t=t, h=h, w=w, pt=pt, ph=ph, pw=pw)


def position_ids(grid: Grid, device: torch.device | str | None = None) -> Tensor:
    """Integer (t, h, w) ids of every token of a grid, in patchify order: [t*h*w, 3] long."""
    t, h, w = grid
    axes = [torch.arange(n, device=device) for n in (t, h, w)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)  # [L, 3]


@dataclass
class Sample:
    """One latent to pack.

    latent:   [C, T, H, W]
    timestep: float, or [T] (per latent frame), or [t*h*w] (per token); clean conditioning frames carry 0
    is_cond:  None (nothing is conditioning) or [T] bool: frames given as clean conditioning (never dropped,
              excluded from the loss)
    text_idx: which row of the text batch conditions this sample
    conditions: per-frame conditions (dit/conditioning.py), name -> a scalar, [T] per latent frame or [t*h*w] per
              token, e.g. {"shot": [T] long}: the shot each frame comes from, counted back from the one being made
    """

    latent: Tensor
    timestep: float | Tensor = 0.0
    is_cond: Tensor | None = None
    text_idx: int = 0
    conditions: dict[str, int | float | Tensor] = field(default_factory=dict)


@dataclass
class PackInfo:
    """What the model needs to know about a pack as host values, fixed when the pack is built, so that a
    forward pass reads nothing back from the device (every `int(t)`/`bool(t)` of a GPU tensor waits for it).

    seg, max_seqlen: attention runs and longest sample AFTER token dropping; text_rows: captions the pack
    refers to (max text_idx + 1); t_table [U] / t_inv [L]: distinct timesteps and each token's row (None:
    the model finds them itself, e.g. after `with_tokens` gave new timesteps); one_cond: every sample's
    tokens share one timestep; keep [L'] / keep_cu [N+1]: kept token indices and their sample boundaries
    when tokens were dropped (None otherwise).
    """

    seg: Segments
    max_seqlen: int
    text_rows: int
    t_table: Tensor | None = None
    t_inv: Tensor | None = None
    one_cond: bool = False
    keep: Tensor | None = None
    keep_cu: Tensor | None = None

    def to(self, device: torch.device | str) -> "PackInfo":
        move = {k: getattr(self, k).to(device, non_blocking=True) for k in ("t_table", "t_inv", "keep", "keep_cu")
                if getattr(self, k) is not None}
        return replace(self, **move)


def pack_info(lengths: list[int], kept: list[int], text_idx: list[int], timestep: Tensor | None,
              is_dropped: Tensor | None) -> PackInfo:
    """PackInfo from host facts: per-sample token counts before / after dropping, caption rows, and the
    per-token timestep [L] and drop mask [L] as CPU tensors (None: leave the table to the model)."""
    t_table = t_inv = keep = keep_cu = None
    one_cond = False
    if timestep is not None:
        t_table, t_inv = torch.unique(timestep, return_inverse=True)  # [U], [L]
        if len(set(lengths)) == 1:  # the grouped fast path needs it: one run of samples with one t each
            rows = t_inv.view(len(lengths), lengths[0])
            one_cond = bool((rows == rows[:, :1]).all())
    if is_dropped is not None and kept != lengths:
        keep = (~is_dropped).nonzero().squeeze(1)  # [L']
        keep_cu = torch.zeros(len(kept) + 1, dtype=torch.int32)
        keep_cu[1:] = torch.cumsum(torch.tensor(kept, dtype=torch.int32), 0)
        one_cond = False
    return PackInfo(segments_from_lengths(kept), max(kept), max(text_idx) + 1, t_table, t_inv, one_cond, keep,
                    keep_cu)


@dataclass
class PackedBatch:
    """N samples packed into one sequence of L tokens (block-diagonal attention via cu_seqlens).

    tokens [L, C*pt*ph*pw]   ids [L, 3] long (t, h, w)   sample_idx [L] long   cu_seqlens [N+1] int32
    timestep [L] float       is_cond [L] bool            is_dropped [L] bool   text_idx [N] long
    grids: token grid (t, h, w) per sample; patch, channels: what `unpack` needs; info: host-side facts
    (PackInfo) so the model never reads the device (None: it computes them, with host reads).
    conditions: name -> [L] per-token values of a per-frame condition (dit/conditioning.py), e.g. "shot" [L] long;
    a condition no sample gave is absent.

    Dropped tokens stay in the batch (so `unpack`, targets and losses keep the full layout) but the model
    removes them from its input sequence: they cost no compute and the model returns zeros for them.
    Use `loss_mask` (= not conditioning and not dropped) to weight the loss.
    """

    tokens: Tensor
    ids: Tensor
    sample_idx: Tensor
    cu_seqlens: Tensor
    max_seqlen: int
    timestep: Tensor
    is_cond: Tensor
    is_dropped: Tensor
    text_idx: Tensor
    grids: list[Grid]
    patch: Patch
    channels: int
    info: PackInfo | None = None
    conditions: dict[str, Tensor] = field(default_factory=dict)

    @property
    def num_samples(self) -> int:
        return len(self.grids)

    @property
    def loss_mask(self) -> Tensor:
        """[L] bool: tokens that the loss should count (noised and fed to the model)."""
        return ~self.is_cond & ~self.is_dropped

    def with_tokens(self, tokens: Tensor, timestep: Tensor | None = None) -> "PackedBatch":
        """Same layout, new token values (e.g. x_t during sampling) and optionally new per-token t."""
        if timestep is None:
            return replace(self, tokens=tokens)
        info = None if self.info is None else replace(self.info, t_table=None, t_inv=None)
        return replace(self, tokens=tokens, timestep=timestep, info=info)

    def to(self, device: torch.device | str) -> "PackedBatch":
        move = {k: getattr(self, k).to(device) for k in
                ("tokens", "ids", "sample_idx", "timestep", "is_cond", "is_dropped", "text_idx")}
        info = None if self.info is None else self.info.to(device)
        conditions = {k: v.to(device) for k, v in self.conditions.items()}
        return replace(self, cu_seqlens=self.cu_seqlens.to(device), info=info, conditions=conditions, **move)


def _per_token(value: float | Tensor | None, grid: Grid, patch: Patch, name: str, dtype: torch.dtype) -> Tensor:
    """A scalar, per-latent-frame [T] or per-token [t*h*w] value -> per-token [t*h*w]."""
    t, h, w = grid
    n = t * h * w
    if value is None:
        return torch.zeros(n, dtype=dtype)
    v = torch.as_tensor(value, dtype=dtype)
    if v.ndim == 0:
        return v.expand(n).clone()
    if v.ndim == 1 and v.numel() == n:
        return v.clone()
    if v.ndim == 1 and v.numel() == t * patch[0]:
        per_patch = v.view(t, patch[0])  # [t, pt]: the latent frames inside each temporal patch
        if not (per_patch == per_patch[:, :1]).all():
            raise ValueError(f"{name} differs inside a temporal patch of {patch[0]} frames; use pt=1")
        return per_patch[:, 0].repeat_interleave(h * w)
    raise ValueError(f"{name} must be a scalar, [T]={t * patch[0]} per latent frame, or [L]={n} per token; "
                     f"got shape {tuple(v.shape)}")


def pack(
    samples: list[Sample],
    patch: Patch = (1, 2, 2),
    drop_rate: float = 0.0,
    generator: torch.Generator | None = None,
) -> PackedBatch:
    """Patchify and concatenate samples into one PackedBatch.

    drop_rate: fraction of each sample's non-conditioning tokens marked dropped (chosen at random,
    at least one token of every sample is kept; conditioning tokens are never dropped).
    """
    if not samples:
        raise ValueError("pack needs at least one sample")
    if not 0.0 <= drop_rate < 1.0:
        raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate}")
    channels = samples[0].latent.shape[0]
    tokens, ids, ts, conds, drops, grids, lens, kept = [], [], [], [], [], [], [], []
    for i, s in enumerate(samples):
        if s.latent.ndim != 4 or s.latent.shape[0] != channels:
            raise ValueError(f"sample {i}: expected latent [C={channels}, T, H, W], got {tuple(s.latent.shape)}")
        grid = token_grid(tuple(s.latent.shape[1:]), patch)
        tok = patchify(s.latent, patch)  # [l, C*pt*ph*pw]
        n = tok.shape[0]
        cond = _per_token(s.is_cond, grid, patch, "is_cond", torch.float32) > 0.5
        drop = torch.zeros(n, dtype=torch.bool)
        free = (~cond).nonzero().squeeze(1)  # droppable token indices
        n_drop = min(int(drop_rate * free.numel()), n - 1)
        if n_drop > 0:
            drop[free[torch.randperm(free.numel(), generator=generator)[:n_drop]]] = True
        tokens.append(tok)
        ids.append(position_ids(grid))
        ts.append(_per_token(s.timestep, grid, patch, "timestep", torch.float32))
        conds.append(cond)
        drops.append(drop)
        grids.append(grid)
        lens.append(n)
        kept.append(n - max(n_drop, 0))
    lengths = torch.tensor(lens, dtype=torch.int32)
    cu = torch.zeros(len(samples) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(lengths, 0)
    timestep, is_dropped, text_idx = torch.cat(ts), torch.cat(drops), [int(s.text_idx) for s in samples]
    on_host = timestep.device.type == "cpu"  # a latent already on a GPU: leave the table to the model
    return PackedBatch(
        tokens=torch.cat(tokens),
        ids=torch.cat(ids),
        sample_idx=torch.repeat_interleave(torch.arange(len(samples)), lengths.long()),
        cu_seqlens=cu,
        max_seqlen=max(lens),
        timestep=timestep,
        is_cond=torch.cat(conds),
        is_dropped=is_dropped,
        text_idx=torch.tensor(text_idx, dtype=torch.long),
        grids=grids,
        patch=tuple(patch),
        channels=channels,
        info=pack_info(lens, kept, text_idx, timestep if on_host else None, is_dropped),
        conditions=_pack_conditions(samples, grids, patch),
    )


def frame_tokens(values: list[float | Tensor | None], grids: list[Grid], patch: Patch, name: str,
                 dtype: torch.dtype) -> Tensor:
    """Per-sample values of a per-frame condition (a scalar, [T] per latent frame or [t*h*w] per token; None = 0)
    -> per-token values [L] in pack order: the one layout of conditions for sampling and training packs."""
    return torch.cat([_per_token(v, g, patch, name, dtype) for v, g in zip(values, grids)])


def _pack_conditions(samples: list[Sample], grids: list[Grid], patch: Patch) -> dict[str, Tensor]:
    """name -> per-token values [L] of every condition some sample gives (0 for samples that give none; the
    dtype is the first given value's: long for indices, float for measurements)."""
    out = {}
    for name in sorted({k for s in samples for k in s.conditions}):
        given = next(torch.as_tensor(s.conditions[name]) for s in samples if name in s.conditions)
        dtype = torch.long if not given.is_floating_point() else torch.float32
        out[name] = frame_tokens([s.conditions.get(name) for s in samples], grids, patch, name, dtype)
    return out


def unpack(packed: PackedBatch, tokens: Tensor | None = None) -> list[Tensor]:
    """tokens [L, C*pt*ph*pw] laid out as `packed` -> list of N latents [C, T, H, W] (inverse of `pack`)."""
    tokens = packed.tokens if tokens is None else tokens
    if tokens.shape[0] != packed.tokens.shape[0]:
        raise ValueError(f"unpack expects {packed.tokens.shape[0]} tokens (the packed layout), got {tokens.shape[0]}")
    lens = [t * h * w for t, h, w in packed.grids]
    return [unpatchify(part, grid, packed.patch) for part, grid in zip(tokens.split(lens), packed.grids)]


def pack_to_budget(lengths: list[int], budget: int) -> list[list[int]]:
    """First-fit decreasing: group sample indices into bins of at most `budget` tokens.

    Returns bins of indices into `lengths`, each bin in decreasing length order (so equal-length
    samples sit next to each other and attention can batch them in one call).
    """
    too_long = [i for i, n in enumerate(lengths) if n > budget]
    if too_long:
        raise ValueError(f"samples {too_long[:5]} have more tokens ({max(lengths)}) than the budget {budget}; "
                         f"raise the budget or lower their resolution/duration")
    bins: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for b, room in enumerate(free):
            if lengths[i] <= room:
                bins[b].append(i)
                free[b] -= lengths[i]
                break
        else:
            bins.append([i])
            free.append(budget - lengths[i])
    return bins
