"""Building blocks of the causal 3D VAE (MAGVIT-v2 / Wan 2.1 style): convolutions that only look at the past.

Every block takes `(x, cache)`. With `cache=None` a block codes a whole clip at once; with a dict it
codes the clip chunk by chunk: each causal convolution keeps, under its own key, the input frames
of the previous chunk that its next output still needs (the last kernel_t - 1 frames for stride 1),
like Wan's `feat_cache`. Both ways give the same numbers (tests/test_vae.py checks it).

Time padding choice: a causal convolution pads the past with copies of the *first frame*
(replicate), not zeros, so an image is coded as a video that was still before it began.
Normalisation is GroupNorm *per frame* (statistics over each group's channels and H, W of one
frame, as SD's / Wan's GroupNorm but never across time), which keeps the model causal and chunking
exact (GroupNorm over T would not be). An earlier RMS norm over channels at each position (Wan's
RMS_norm) could not learn World's sparse objects on flat backgrounds: it rescales every position on
its own, so nothing contrasts an object with the frame around it, and one-batch overfitting stalled
at the background-only PSNR (~20 dB). Per-frame GroupNorm subtracts the frame's mean, so objects stand out.

Shortcuts (`shortcut=True`, DC-AE's "space-to-channel" residuals, Chen et al. 2024): every
resampling step also adds a parameter-free path (space-to-channel or channel-to-space, averaged or
repeated to the new width; frame averaging or repeating in time), so the network starts close to a
plain rearrangement of pixels and only learns the residual. Without them the World VAE plateaued at
about 20 dB with small objects missing; with them a 2D check reached 27 dB in 800 steps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

Cache = dict  # layer -> state carried between time chunks (frames a causal conv still needs, or a flag)

CHANNELS_LAST = torch.channels_last_3d  # CPU fast path: oneDNN convs and norms run on [B, T, H, W, C] memory


def _mkldnn_ok(x: torch.Tensor) -> bool:
    mkldnn = torch.backends.mkldnn
    return x.device.type == "cpu" and x.dtype == torch.float32 and mkldnn.is_available() and mkldnn.enabled


class CausalConv3d(nn.Conv3d):
    """3D convolution, causal in time, 'same' zero padding in space. [B, Cin, T, H, W] -> [B, Cout, T', H', W'].

    T' = T for time stride 1; for time stride 2 and kernel 3 the first frame gives one output and every
    two further frames one more (T = 1 + 2k -> 1 + k), so the first frame is always coded alone.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, int, int] = (3, 3, 3),
        time_stride: int = 1,
        space_stride: int = 1,
        time_shortcut: bool = False,
    ) -> None:
        kt, kh, kw = kernel_size
        if time_shortcut and (in_channels != out_channels or space_stride != 1 or time_stride > kt):
            raise ValueError("time_shortcut needs equal widths, no space stride and time_stride <= kernel_t")
        super().__init__(
            in_channels, out_channels, kernel_size,
            stride=(time_stride, space_stride, space_stride), padding=(0, kh // 2, kw // 2),
        )
        self.time_pad = kt - 1  # frames of past context each output needs
        self.time_shortcut = time_shortcut  # add the mean of the newest time_stride frames of each window

    def forward(self, x: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        if self.time_pad == 0:
            return self._conv(x)
        if cache is not None and self in cache:
            x = cat_time([cache[self], x])  # [B, C, kept + T, H, W]
        else:  # start of a clip: replicate the first frame into the past (in x's memory format, so cat keeps it)
            past = x[:, :, :1].expand(-1, -1, self.time_pad, -1, -1).contiguous(memory_format=_format(x))
            x = cat_time([past, x])  # [B, C, pad + T, H, W]
        kt, st = self.kernel_size[0], self.stride[0]
        if x.shape[2] < kt:
            raise ValueError(
                f"a time chunk is too short for a causal conv (kernel {kt}, stride {st}); "
                "use chunk sizes that are multiples of the VAE's temporal_factor"
            )
        n_out = (x.shape[2] - kt) // st + 1
        if cache is not None:
            cache[self] = x[:, :, n_out * st :].clone(memory_format=_format(x))  # where the next window starts
        y = self._conv(x)
        if self.time_shortcut:  # window j is x[j*st : j*st + kt]; its newest st frames, averaged
            newest = [x[:, :, kt - st + i : kt - st + i + (n_out - 1) * st + 1 : st] for i in range(st)]
            y = y + sum(newest) / st
        return y

    def _conv(self, x: torch.Tensor) -> torch.Tensor:
        # F.conv3d picks PyTorch's slow reference kernel for small inputs (N*C*T*H < 20480, batch 1);
        # calling oneDNN directly is 2-5x faster there on CPU, with the same autograd support.
        if _mkldnn_ok(x):
            return torch.ops.aten.mkldnn_convolution(
                x, self.weight, self.bias, self.padding, self.stride, self.dilation, self.groups
            )
        return super().forward(x)


def _format(x: torch.Tensor) -> torch.memory_format:
    channels_last = x.is_contiguous(memory_format=CHANNELS_LAST) and not x.is_contiguous()
    return CHANNELS_LAST if channels_last else torch.contiguous_format


def cat_time(xs: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate [B, C, T_i, H, W] along time, keeping the memory format. For channels-last memory
    ([B, T, H, W, C]) the frames are contiguous blocks; torch.cat along dim 2 does not see that and
    runs ~3.5x slower than the same cat on the permuted [B, T, H, W, C] view."""
    if all(_format(x) is CHANNELS_LAST for x in xs):
        return torch.cat([x.permute(0, 2, 3, 4, 1) for x in xs], dim=1).permute(0, 4, 1, 2, 3)
    return torch.cat(xs, dim=2)


def match_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """Parameter-free width change of [B, C, ...]: average groups of C / channels (C > channels) or repeat
    each channel channels / C times (C < channels)."""
    C = x.shape[1]
    if C == channels:
        return x
    if C > channels:
        if C % channels:
            raise ValueError(f"cannot average {C} channels down to {channels}")
        return x.unflatten(1, (channels, C // channels)).mean(dim=2)
    if channels % C:
        raise ValueError(f"cannot repeat {C} channels up to {channels}")
    return x.repeat_interleave(channels // C, dim=1)


def space_to_channel(x: torch.Tensor) -> torch.Tensor:
    """[B, C, T, H, W] -> [B, 4C, T, H/2, W/2]: each 2x2 block of a frame moved into channels."""
    return rearrange(x, "b c t (h i) (w j) -> b (c i j) t h w", i=2, j=2)


def channel_to_space(x: torch.Tensor) -> torch.Tensor:
    """[B, 4C, T, H, W] -> [B, C, T, 2H, 2W], the inverse of space_to_channel."""
    return rearrange(x, "b (c i j) t h w -> b c t (h i) (w j)", i=2, j=2)


def _groups(channels: int) -> int:
    """Groups for FrameGroupNorm: 32 as SD / Wan when there are >= 4 channels per group, fewer for narrow layers."""
    groups = max(1, min(32, channels // 4))
    while channels % groups:
        groups -= 1
    return groups


class FrameGroupNorm(nn.Module):
    """GroupNorm of each frame on its own: statistics over (C/G, H, W) per (batch, group, frame), then a
    per-channel affine. [B, C, T, H, W] -> same shape and memory format. Never mixes frames, so causal."""

    def __init__(self, channels: int, groups: int | None = None, eps: float = 1e-6) -> None:
        super().__init__()
        self.groups = _groups(channels) if groups is None else groups
        if channels % self.groups:
            raise ValueError(f"channels ({channels}) must be divisible by groups ({self.groups})")
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5:
            raise ValueError(f"FrameGroupNorm expects [B, C, T, H, W], got shape {tuple(x.shape)}")
        B, C, T, H, W = x.shape
        # Frames become the batch: [B, T, C, H, W] -> [B*T, C, H, W]. For channels-last [B, T, H, W, C]
        # memory this is a view (2D channels-last), and group_norm has a fused channels-last CPU kernel.
        frames = x.transpose(1, 2).reshape(B * T, C, H, W)
        y = F.group_norm(frames, self.groups, self.weight, self.bias, self.eps)
        # With one frame (B * T == 1) group_norm cannot tell the layout and returns NCHW; restore x's, or
        # every later conv and cat of the chunk pays a slow layout-changing copy (a third of decode time).
        return y.reshape(B, T, C, H, W).transpose(1, 2).contiguous(memory_format=_format(x))


class MatchChannels(nn.Module):
    """match_channels as a module: [B, C, ...] -> [B, channels, ...]."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return match_channels(x, self.channels)


class ResBlock(nn.Module):
    """Pre-norm residual block: (per-frame GroupNorm, SiLU, causal conv time_kernel x 3 x 3) x 2, plus a 1x1x1
    conv shortcut (or, with `shortcut`, a parameter-free channel repeat / average) if widths differ."""

    def __init__(self, in_channels: int, out_channels: int, shortcut: bool = False, time_kernel: int = 3) -> None:
        super().__init__()
        kernel = (time_kernel, 3, 3)
        self.norm1 = FrameGroupNorm(in_channels)
        self.conv1 = CausalConv3d(in_channels, out_channels, kernel)
        self.norm2 = FrameGroupNorm(out_channels)
        self.conv2 = CausalConv3d(out_channels, out_channels, kernel)
        if in_channels == out_channels:
            self.shortcut = nn.Identity()
        elif shortcut:  # parameter-free (repeat or average channels), so the pixel path stays a rearrangement
            self.shortcut = MatchChannels(out_channels)
        else:
            self.shortcut = CausalConv3d(in_channels, out_channels, (1, 1, 1))

    def forward(self, x: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)), cache)  # [B, Cout, T, H, W]
        h = self.conv2(F.silu(self.norm2(h)), cache)
        return h.add_(self.shortcut(x))


class SpatialAttention(nn.Module):
    """Single-head self-attention within each frame (over its H*W positions), so it stays causal in time."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = FrameGroupNorm(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        B, C, T, H, W = x.shape
        h = rearrange(self.norm(x), "b c t h w -> (b t) (h w) c")
        q, k, v = self.qkv(h).chunk(3, dim=-1)  # 3 x [B*T, H*W, C]
        h = self.proj(F.scaled_dot_product_attention(q, k, v))
        return x + rearrange(h, "(b t) (h w) c -> b c t h w", b=B, h=H)


class Downsample(nn.Module):
    """Halve H and W with a stride-2 3x3 conv per frame; optionally halve time (1 + 2k -> 1 + k frames)
    with a causal stride-2 conv over time (kernel 3), as Wan's `downsample2d` / `downsample3d`."""

    def __init__(self, channels: int, time: bool, shortcut: bool = False) -> None:
        super().__init__()
        self.shortcut = shortcut
        self.space = CausalConv3d(channels, channels, (1, 3, 3), space_stride=2)
        self.time = CausalConv3d(channels, channels, (3, 1, 1), time_stride=2, time_shortcut=shortcut) if time else None

    def forward(self, x: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        y = self.space(x)  # [B, C, T, H/2, W/2]
        if self.shortcut:
            y = y + match_channels(space_to_channel(x), y.shape[1])
        return self.time(y, cache) if self.time is not None else y  # [B, C, 1 + (T-1)/2, H/2, W/2]


class Upsample(nn.Module):
    """Inverse of Downsample: optionally double time (a causal conv makes 2 frames per frame, the very
    first frame of a clip is dropped: 1 + k -> 1 + 2k), then nearest 2x in space and a 3x3 conv to
    `out_channels` (Wan 2.1 halves the width here)."""

    def __init__(self, channels: int, out_channels: int, time: bool, shortcut: bool = False) -> None:
        super().__init__()
        self.shortcut = shortcut
        self.time = CausalConv3d(channels, 2 * channels, (3, 1, 1)) if time else None
        self.space = CausalConv3d(channels, out_channels, (1, 3, 3))

    def forward(self, x: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        if self.time is not None:
            first = cache is None or self not in cache
            if cache is not None:
                cache[self] = True
            fmt = _format(x)
            y = self.time(x, cache)  # [B, 2C, T, H, W]
            if self.shortcut:  # both new frames start as copies of their latent frame
                y = y + torch.cat([x, x], dim=1)
            x = rearrange(y, "b (two c) t h w -> b c (t two) h w", two=2)  # [B, C, 2T, H, W]
            if first:
                x = x[:, :, 1:]  # the first latent frame stands for one frame only
            x = x.contiguous(memory_format=fmt)
        y = self.space(F.interpolate(x, scale_factor=(1.0, 2.0, 2.0), mode="nearest"))  # [B, Cout, T, 2H, 2W]
        if self.shortcut:
            y = y + channel_to_space(match_channels(x, 4 * y.shape[1]))
        return y
