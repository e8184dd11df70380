"""The diffusion transformer (DiT, Peebles & Xie 2023) over Patch n' Pack sequences, with text cross-attention.

    packed = pack(samples)                              # chronotope/dit/patches.py
    v = DiT(DIT_PRESETS["debug"]())(packed, text, text_mask)   # [L, C*pt*ph*pw] velocity per token

Token dropping: tokens with `packed.is_dropped` are removed from the input sequence (no compute);
the output keeps the full packed layout with zeros at dropped tokens, so the loss is simply
`((v - target)**2)[packed.loss_mask].mean()` and `unpack(packed, v)` works unchanged.
Null caption (classifier-free guidance): a sample whose text_mask row is all False gets one valid
learned token instead (an all-False mask makes SDPA return NaN). Per-frame conditions (the shot index of
storyboards, ...) are entries of dit/conditioning.py: each adds its zero-initialised embedding to its tokens.
"""

from __future__ import annotations

import json
import os

import torch
import torch.nn as nn
from torch import Tensor

from chronotope.config import DiTConfig, config_from_dict
from chronotope.dit.attention import segments
from chronotope.dit.conditioning import FRAME_CONDITIONS, model_conditions
from chronotope.dit.embeddings import (RoPE3D, TimestepEmbedder, default_rope_axes, position_features,
                                       rope_positions)
from chronotope.dit.layers import Context, DiTBlock, FinalLayer, free_size
from chronotope.dit.patches import PackedBatch


POS_FEATURES = 32  # sinusoidal features per axis for `DiTConfig.abs_pos`


class DiT(nn.Module):
    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = cfg = config
        pt, ph, pw = cfg.patch
        self.patch_dim = cfg.in_channels * pt * ph * pw
        self.out_dim = (cfg.out_channels or cfg.in_channels) * pt * ph * pw
        head_dim = cfg.width // cfg.heads
        self.x_embedder = nn.Linear(self.patch_dim, cfg.width)
        self.t_embedder = TimestepEmbedder(cfg.width, cfg.freq_dim)
        if cfg.num_classes:
            raise ValueError(f"num_classes={cfg.num_classes}: the DiT is text-conditioned; a class-conditional "
                             "config only describes the DiT paper's model to dit/flops.py")
        # caption projection as PixArt / Wan: Linear -> GELU -> Linear (exact GELU: faster on CPU, see Mlp)
        self.text_embedder = nn.Sequential(nn.Linear(cfg.text_dim, cfg.width), nn.GELU(),
                                           nn.Linear(cfg.width, cfg.width))
        self.null_text = nn.Parameter(torch.randn(cfg.width) * 0.02)
        axes = cfg.rope_axes or default_rope_axes(head_dim)
        if sum(axes) != head_dim:
            raise ValueError(f"rope_axes {axes} must sum to the head dim {head_dim} (width / heads)")
        self.rope = RoPE3D(axes, cfg.rope_theta) if cfg.rope else None
        self.pos_embedder = nn.Linear(3 * POS_FEATURES, cfg.width) if cfg.abs_pos else None
        self.conditions = model_conditions(cfg)  # name -> size; each embedder zero at the start, `{name}_embedder`
        for name, size in self.conditions.items():
            self.add_module(f"{name}_embedder", FRAME_CONDITIONS[name].build(size, cfg.width))
        self.step_embedder = TimestepEmbedder(cfg.width, cfg.freq_dim) if cfg.step_embed else None
        self.blocks = nn.ModuleList(
            DiTBlock(cfg.width, cfg.heads, cfg.mlp_ratio, cfg.qk_norm, cross_attention=True)
            for _ in range(cfg.depth))
        self.final_layer = FinalLayer(cfg.width, self.out_dim)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT's init: xavier linears, N(0, 0.02) embedders, adaLN-Zero: modulation and final linear zero.
        Per-frame condition embedders keep their own (zero) init."""
        own = {id(m) for name in self.conditions for m in self.get_submodule(f"{name}_embedder").modules()}

        def _basic(m: nn.Module) -> None:
            if isinstance(m, nn.Linear) and id(m) not in own:
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        self.apply(_basic)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in self.blocks:  # zero gates: every block starts as the identity
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)  # the initial output is exactly zero
        nn.init.zeros_(self.final_layer.linear.bias)
        if self.pos_embedder is not None:  # starts as a no-op, so it can be added to a trained model
            nn.init.zeros_(self.pos_embedder.weight)
            nn.init.zeros_(self.pos_embedder.bias)
        if self.step_embedder is not None:  # zero output: a student starts as its teacher's velocity at every d
            nn.init.normal_(self.step_embedder.mlp[0].weight, std=0.02)
            nn.init.zeros_(self.step_embedder.mlp[2].weight)
            nn.init.zeros_(self.step_embedder.mlp[2].bias)

    def _text(self, text: Tensor, text_mask: Tensor | None, text_idx: Tensor,
              text_rows: int | None = None) -> tuple[Tensor, Tensor | None]:
        """Captions [Nt, Lt, Dt] + mask [Nt, Lt] -> per-sample context [N, Lt, D] and mask [N, Lt] (or None).
        text_rows: captions the samples refer to, known on the host (PackInfo); else read from text_idx."""
        if text.ndim != 3 or text.shape[-1] != self.config.text_dim:
            raise ValueError(f"text must be [N, Lt, {self.config.text_dim}], got {tuple(text.shape)}")
        rows = text_rows if text_rows is not None else int(text_idx.max()) + 1
        if rows > text.shape[0]:
            raise ValueError(f"a sample uses caption {rows - 1} but only {text.shape[0]} were given")
        ctx = self.text_embedder(text)  # [Nt, Lt, D]
        if text_mask is None:
            return ctx[text_idx], None
        mask = text_mask.to(torch.bool)
        # give the null caption (an all-False row) one valid learned token at position 0; no branch, no host read
        first = torch.zeros_like(mask)
        first[:, 0] = ~mask.any(dim=1)  # [Nt] empty captions
        ctx = torch.where(first[..., None], self.null_text.to(ctx.dtype), ctx)
        return ctx[text_idx], (mask | first)[text_idx]  # [N, Lt, D], [N, Lt]


    def forward(self, packed: PackedBatch, text: Tensor | None = None, text_mask: Tensor | None = None,
                step: Tensor | float | None = None) -> Tensor:
        """Velocity for every packed token.

        packed: PackedBatch with tokens [L, C*pt*ph*pw], per-token timestep [L] (0 = clean conditioning), and
        per-token values [L] of the per-frame conditions the model takes (packed.conditions, e.g. "shot"; a
        condition the pack does not give reads as its null value, e.g. shot 0)
        text: [Nt, Lt, text_dim] caption token embeddings; text_mask: [Nt, Lt] bool (True = valid token,
        an all-False row = the null caption); sample i uses caption packed.text_idx[i].
        step: the step size d, a float or per token [L] (read only when config.step_embed; None = 0): the model
        then returns the average velocity over [t - d, t]. Clean tokens (t = 0) take no step: d = 0 there.
        Returns [L, out_channels*pt*ph*pw]; zeros at dropped tokens.
        """
        cfg = self.config
        if packed.tokens.shape[1] != self.patch_dim or tuple(packed.patch) != cfg.patch:
            raise ValueError(f"packed tokens {tuple(packed.tokens.shape)} with patch {packed.patch} do not match the "
                             f"model (patch {cfg.patch}, {cfg.in_channels} channels -> dim {self.patch_dim})")
        if text is None:
            raise ValueError("the DiT is text-conditional: pass text [N, Lt, text_dim] and text_mask [N, Lt]")
        seq = _Sequence(packed)  # the tokens that enter the model (dropped ones removed), host facts of the pack
        text_ctx, mask = self._text(text, text_mask, packed.text_idx, packed.info.text_rows if packed.info else None)
        c, inv, one_cond = self._modulation(seq, step)  # [U, D] distinct conditions, [L] each token's row
        free_size(c, 0, "conditions")  # a compiled block neither specialises on U nor ties it to another count

        rope, pos = None, None
        if self.rope is not None or self.pos_embedder is not None:
            pos = rope_positions(seq.ids, seq.sample_idx, packed.grids, cfg.pos_scaling, cfg.pos_ref)  # [L, 3]
        if self.rope is not None:
            rope = self.rope(pos)
        ctx = Context(seq.cu, seq.max_len, seq.seg, rope, inv, text_ctx, mask, cfg.attention, one_cond)

        h = self.x_embedder(seq.x)  # [L, D]
        if self.pos_embedder is not None:
            h = h + self.pos_embedder(position_features(pos, POS_FEATURES))
        for name in self.conditions:  # per-frame conditions: each its embedding, added to its tokens
            entry, embedder = FRAME_CONDITIONS[name], self.get_submodule(f"{name}_embedder")
            values = packed.conditions.get(name)
            h = h + (entry.null(embedder) if values is None else entry.embed(embedder, seq.take(values)))  # [L, D]
        for block in self.blocks:
            h = block(h, c, ctx)  # [L, D]
        out = self.final_layer(h, c, ctx)  # [L, out_dim]
        if seq.keep is not None:
            full = out.new_zeros(packed.tokens.shape[0], self.out_dim)
            out = full.index_copy(0, seq.keep, out)  # [L, out_dim], zeros at dropped tokens
        return out

    def _modulation(self, seq: "_Sequence", step: Tensor | float | None) -> tuple[Tensor, Tensor, bool | None]:
        """The distinct conditions of the pack's tokens, each embedded once: (c [U, D], each token's row [L],
        whether every sample's tokens share one row (the grouped fast path; None: unknown))."""
        t = seq.t
        if self.step_embedder is not None:  # distinct (t, d) pairs, each embedded once
            d = torch.as_tensor(0.0 if step is None else step, dtype=t.dtype, device=t.device)
            if d.dim():
                d = seq.take(d)
            d = torch.where(t == 0, 0.0, d.expand_as(t))  # [L]
            uniq, inv = torch.unique(torch.stack([t, d], dim=1), dim=0, return_inverse=True)  # [U, 2], [L]
            c = self.t_embedder(uniq[:, 0].contiguous()) + self.step_embedder(uniq[:, 1].contiguous())  # [U, D]
            return c, inv, None  # the pack's timestep table does not know the steps
        uniq, inv = seq.t_table if seq.t_table is not None else torch.unique(t, return_inverse=True)
        one_cond = seq.info.one_cond if seq.info is not None and seq.t_table is not None else None
        return self.t_embedder(uniq), inv, one_cond  # [U, D]

    @torch.no_grad()
    def extended(self, *, patch: tuple[int, int, int] | None = None, abs_pos: bool = False, shot_embed: int = 0,
                 step_embed: bool = False, conditions: dict[str, int] | None = None) -> "DiT":
        """A copy that takes more, computing exactly what this one computes until training moves it: absolute
        position features (`abs_pos`), a shot-index embedding of `shot_embed` rows (storyboards), a step-size
        embedding (`step_embed`, few-step sampling), per-frame condition embeddings (`conditions`, name -> size;
        dit/conditioning.py), each added zero-initialised; or a finer `patch` (each axis dividing this one's).

        A finer token is treated as the old patch filled by repeating its values over the block it covers
        (FlexiViT-style): the new input projection sums the old one's weights over that block, and the new output
        row of a latent element averages the old rows of the block it covers. The transformer body is shared, so a
        model trained at patch (1, 2, 2) starts at (1, 1, 1) knowing what it knew (4x the tokens)."""
        cfg = self.config
        model = self if patch is None else self._finer(patch)
        if abs_pos:
            if cfg.abs_pos:
                raise ValueError("this DiT already has absolute position features (abs_pos=True)")
            model = model._rebuilt(fresh=("pos_embedder.",), abs_pos=True)
        if shot_embed:
            if cfg.shot_embed:
                raise ValueError(f"this DiT already has a shot embedding (shot_embed={cfg.shot_embed})")
            if isinstance(shot_embed, bool) or not isinstance(shot_embed, int) or shot_embed < 2:
                raise ValueError(f"a shot embedding needs at least 2 rows (the new shot and one before it), "
                                 f"got {shot_embed!r}")
            model = model._rebuilt(fresh=("shot_embedder.",), shot_embed=shot_embed)
        if step_embed:
            if cfg.step_embed:
                raise ValueError("this DiT already has a step-size embedding (step_embed=True)")
            model = model._rebuilt(fresh=("step_embedder.",), step_embed=True)
        for name, size in (conditions or {}).items():
            if name in cfg.conditions:
                raise ValueError(f"this DiT already has the {name!r} condition")
            model = model._rebuilt(fresh=(f"{name}_embedder.",), conditions={**model.config.conditions, name: size})
        return model

    def _finer(self, patch: tuple[int, int, int]) -> "DiT":
        from einops import reduce

        old, new = tuple(self.config.patch), tuple(int(p) for p in patch)
        if len(new) != 3 or any(n < 1 or o % n for o, n in zip(old, new)):
            raise ValueError(f"the new patch {patch} must have 3 axes, each dividing this model's patch {old}")
        model = self._rebuilt(fresh=("x_embedder.", "final_layer.linear."), patch=new)
        r = [o // n for o, n in zip(old, new)]
        axes = dict(pt=new[0], ph=new[1], pw=new[2], rt=r[0], rh=r[1], rw=r[2])
        w_in = self.x_embedder.weight  # [D, C*pt*ph*pw] in the old patch
        model.x_embedder.weight.copy_(reduce(w_in, "d (c rt pt rh ph rw pw) -> d (c pt ph pw)", "sum", **axes))
        model.x_embedder.bias.copy_(self.x_embedder.bias)
        w_out, b_out = self.final_layer.linear.weight, self.final_layer.linear.bias  # [C*pt*ph*pw, D], [...]
        model.final_layer.linear.weight.copy_(reduce(w_out, "(c rt pt rh ph rw pw) d -> (c pt ph pw) d", "mean", **axes))
        model.final_layer.linear.bias.copy_(reduce(b_out, "(c rt pt rh ph rw pw) -> (c pt ph pw)", "mean", **axes))
        return model

    def _rebuilt(self, fresh: tuple[str, ...], **changes) -> "DiT":
        """A new DiT with `changes` to this one's config, holding this one's weights except those whose names
        start with one of `fresh` (left as initialised, for the caller to fill), in this one's train/eval mode."""
        from dataclasses import replace

        model = DiT(replace(self.config, **changes))
        kept = {k: v for k, v in self.state_dict().items() if not k.startswith(fresh)}
        missing, unexpected = model.load_state_dict(kept, strict=False)
        if unexpected or any(not k.startswith(fresh) for k in missing):
            raise RuntimeError(f"rebuilding the DiT with {changes}: missing {missing}, unexpected {unexpected}")
        return model.train(self.training)

    # --- folders: config.json + weights (chronotope/weights.py: one file, or shards + index) ------------

    def save_pretrained(self, folder: str | os.PathLike, dtype: torch.dtype | None = None,
                        max_shard_size: int | str | None = None) -> None:
        """config.json + model.safetensors (or shards + index when over `max_shard_size`), each atomically;
        `dtype` stores the weights in another precision (e.g. torch.float16 to ship; loading casts back)."""
        from chronotope.atomic import atomic_write_json
        from chronotope.weights import save_weights

        save_weights(self.state_dict(), folder, dtype=dtype, max_shard_size=max_shard_size)
        atomic_write_json(os.path.join(folder, "config.json"), self.config.to_dict(), indent=2)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> "DiT":
        from chronotope.weights import has_weights, load_weights

        if not os.path.exists(os.path.join(folder, "config.json")) or not has_weights(folder):
            raise FileNotFoundError(f"{folder} has no config.json and model.safetensors (or sharded weights); "
                                    "save one with DiT.save_pretrained(folder)")
        with open(os.path.join(folder, "config.json")) as f:
            model = cls(config_from_dict(DiTConfig, json.load(f)))
        model.load_state_dict(load_weights(folder))
        return model


class _Sequence:
    """The tokens of a pack that enter the model: dropped ones removed (NaViT), with the attention runs and,
    when the pack carries its host facts (PackInfo), its timestep table, so nothing here reads the device.

    x [L', D_in], t [L'], sample_idx [L'], ids [L', 3]; keep [L'] (None: nothing dropped); cu [N+1], max_len,
    seg: the attention layout; t_table: (distinct t [U], each token's row [L']) or None."""

    def __init__(self, packed: PackedBatch):
        info = self.info = packed.info
        self.keep, self.t_table = None, None
        cu, max_len = packed.cu_seqlens, packed.max_seqlen
        if info is not None:  # host facts of the pack: nothing below reads the device
            self.keep, max_len = info.keep, info.max_seqlen
            if self.keep is not None:
                cu = info.keep_cu
            if info.t_table is not None:
                self.t_table = (info.t_table, info.t_inv if self.keep is None else info.t_inv[self.keep])
        elif bool(packed.is_dropped.any()):
            self.keep = (~packed.is_dropped).nonzero().squeeze(1)  # [L']
        self.x, self.t = self.take(packed.tokens), self.take(packed.timestep)
        self.sample_idx, self.ids = self.take(packed.sample_idx), self.take(packed.ids)
        if self.keep is not None and info is None:
            lengths = torch.bincount(self.sample_idx, minlength=packed.num_samples)  # [N]
            cu = torch.nn.functional.pad(torch.cumsum(lengths, 0), (1, 0)).to(torch.int32)
            max_len = int(lengths.max())
        self.cu, self.max_len = cu, max_len
        self.seg = info.seg if info is not None else segments(cu)

    def take(self, values: Tensor) -> Tensor:
        """Per-token values [L, ...] of the whole pack -> those of the tokens that enter the model [L', ...]."""
        return values if self.keep is None else values[self.keep]
