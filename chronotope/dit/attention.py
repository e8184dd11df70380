"""One `attention()` for packed sequences: block-diagonal, so a token never sees another sample (NaViT).

Backends (all agree numerically, tests/test_dit.py):
  "sdpa"  PyTorch scaled_dot_product_attention per run of equal-length samples (one batched call per
          run, views not copies): cost ∝ Σ len², never (Σ len)².
  "flex"  FlexAttention with a document mask built from the sample index. Compiled on CUDA; on CPU it
          runs flex's unfused eager reference (correct, slow; a warning says so).
  "flash" flash_attn_varlen_func, imported only when asked for (error if the package is missing).
  "auto"  flash on CUDA half-precision when installed, else sdpa.
`cross_attention()` lets the tokens of sample i attend to the valid tokens of its own caption only.

On CUDA, SDPA runs without its cuDNN backend: a pack brings new (samples, length) shapes every step and
cuDNN builds an execution plan for each new shape. Measured on one H200 (benchmarks/train_step.py,
world-s, 32k-token packs, bf16): about 0.94 s per step with it, 0.098 s without (flash / efficient).
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

# every SDPA backend but cuDNN's (see the module docstring), in PyTorch's own order of preference
_PACKED_SDPA = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def _backends(x: Tensor) -> contextlib.AbstractContextManager:
    return sdpa_kernel(_PACKED_SDPA) if x.is_cuda else contextlib.nullcontext()

BACKENDS = ("auto", "sdpa", "flex", "flash")


@dataclass(frozen=True)
class Segments:
    """Runs of consecutive equal-length samples: (start token, start sample, count, length) each."""

    runs: tuple[tuple[int, int, int, int], ...]
    total: int


def segments(cu_seqlens: Tensor) -> Segments:
    """cu_seqlens [N+1] -> runs of consecutive equal-length samples (reads cu_seqlens on the host)."""
    cu = cu_seqlens.tolist()
    return segments_from_lengths([b - a for a, b in zip(cu[:-1], cu[1:])])


def segments_from_lengths(lengths: list[int]) -> Segments:
    """Per-sample token counts (host ints) -> runs of consecutive equal lengths. A pack whose samples are
    sorted by length has one run per distinct length: one attention call each."""
    runs, i, n, start = [], 0, len(lengths), 0
    while i < n:
        length, j = lengths[i], i + 1
        while j < n and lengths[j] == length:
            j += 1
        runs.append((start, i, j - i, length))
        start += (j - i) * length
        i = j
    return Segments(tuple(runs), start)


def _sdpa(q: Tensor, k: Tensor, v: Tensor, seg: Segments) -> Tensor:
    outs = []
    whole = len(seg.runs) == 1  # no slicing then: a slice's backward zero-fills and copies the full gradient
    for start, _, count, length in seg.runs:
        sl = slice(start, start + count * length)
        # [count*length, nh, hd] -> [count, nh, length, hd] (a view)
        qs, ks, vs = ((x if whole else x[sl]).unflatten(0, (count, length)).transpose(1, 2) for x in (q, k, v))
        with _backends(q):
            o = F.scaled_dot_product_attention(qs, ks, vs)  # [count, nh, length, hd]
        outs.append(o.transpose(1, 2).flatten(0, 1))  # [count*length, nh, hd]
    return outs[0] if len(outs) == 1 else torch.cat(outs)


_warned: set[str] = set()


def _warn_once(msg: str) -> None:
    if msg not in _warned:
        _warned.add(msg)
        warnings.warn(msg, stacklevel=3)


_compiled_flex = None


def _flex(q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor) -> Tensor:
    global _compiled_flex
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    L = q.shape[0]
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    doc = torch.repeat_interleave(torch.arange(lengths.numel(), device=q.device), lengths)  # [L]

    def same_sample(b, h, q_idx, kv_idx):
        return doc[q_idx] == doc[kv_idx]

    block_mask = create_block_mask(same_sample, None, None, L, L, device=q.device)
    qs, ks, vs = (x.transpose(0, 1).unsqueeze(0) for x in (q, k, v))  # [1, nh, L, hd]
    if q.is_cuda:
        if _compiled_flex is None:
            _compiled_flex = torch.compile(flex_attention, dynamic=False)
        fn = _compiled_flex
    else:
        _warn_once("flex attention on CPU runs its unfused eager reference (slow, for checks); use sdpa")
        fn = flex_attention
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        o = fn(qs, ks, vs, block_mask=block_mask)  # [1, nh, L, hd]
    return o.squeeze(0).transpose(0, 1)


def _flash(q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor, max_seqlen: int) -> Tensor:
    try:
        from flash_attn import flash_attn_varlen_func
    except ImportError as err:
        raise ValueError("attention backend 'flash' needs the flash-attn package (pip install flash-attn); "
                         "use backend='sdpa' otherwise") from err
    cu = cu_seqlens.to(device=q.device, dtype=torch.int32)
    return flash_attn_varlen_func(q, k, v, cu, cu, max_seqlen, max_seqlen)


def _flash_available() -> bool:
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return False
    return True


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cu_seqlens: Tensor,
    max_seqlen: int,
    backend: str = "auto",
    seg: Segments | None = None,
) -> Tensor:
    """Block-diagonal self-attention over a packed sequence.

    q, k, v: [L, nh, hd]; cu_seqlens: [N+1] int32 sample boundaries; max_seqlen: longest sample.
    seg: optional precomputed `segments(cu_seqlens)` (saves a host sync per call). Returns [L, nh, hd].
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; choose one of {BACKENDS}")
    if backend == "auto":
        use_flash = q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and _flash_available()
        backend = "flash" if use_flash else "sdpa"
    if backend == "flash":
        return _flash(q, k, v, cu_seqlens, max_seqlen)
    if backend == "flex":
        try:
            return _flex(q, k, v, cu_seqlens)
        except Exception as err:  # flex needs a recent torch and, off CPU, a working compiler
            _warn_once(f"flex attention failed ({type(err).__name__}: {err}); falling back to sdpa")
    return _sdpa(q, k, v, seg if seg is not None else segments(cu_seqlens))


def cross_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None,
    cu_seqlens: Tensor,
    seg: Segments | None = None,
) -> Tensor:
    """Tokens of sample i attend to the valid tokens of sample i's caption only.

    q: [L, nh, hd] packed queries; k, v: [N, Lt, nh, hd] caption keys/values, one row per sample
    (gather rows with the sample's text index first); mask: [N, Lt] bool (True = valid; every row needs
    at least one True, or SDPA returns NaN) or None when all are valid. Returns [L, nh, hd].
    """
    seg = seg if seg is not None else segments(cu_seqlens)
    outs, whole = [], len(seg.runs) == 1  # one run: no slicing (a slice's backward zero-fills and copies)
    for start, first, count, length in seg.runs:
        rows = slice(first, first + count)
        qs = (q if whole else q[start:start + count * length]).unflatten(0, (count, length)).transpose(1, 2)
        kr, vr, mr = (k, v, mask) if whole else (k[rows], v[rows], None if mask is None else mask[rows])
        ks, vs = kr.transpose(1, 2), vr.transpose(1, 2)  # [n, nh, Lt, hd]; qs [n, nh, l, hd]
        m = None if mr is None else mr[:, None, None, :]  # [n, 1, 1, Lt]
        with _backends(q):
            o = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=m)
        outs.append(o.transpose(1, 2).flatten(0, 1))  # [n*l, nh, hd]
    return outs[0] if len(outs) == 1 else torch.cat(outs)
