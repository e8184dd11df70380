"""One `attention()` for packed sequences: block-diagonal, so a token never sees another sample (NaViT).

Backends (all agree numerically, tests/test_dit.py):
  "sdpa"  the `chronotope::packed_attention` op: one call per layer for the whole pack, self or cross
          (tests/test_attention_op.py). Inside, SDPA per run of equal-length samples (one batched kernel
          per run, views not copies): cost ∝ Σ len², never (Σ len)². A torch.library custom op with a fake
          implementation, so a compiled DiTBlock traces through it without a graph break or a recompile
          per pack structure (the runs travel as a host tensor, not as Python ints).
  "flex"  FlexAttention with a document mask built from the sample index. Compiled on CUDA; on CPU it
          runs flex's unfused eager reference (correct, slow; a warning says so).
  "flash" flash_attn_varlen_func, imported only when asked for (error if the package is missing).
  "auto"  on CUDA half precision one varlen kernel for self-attention (torch.nn.attention.varlen, else
          flash-attn when installed); otherwise sdpa.
`cross_attention()` lets the tokens of sample i attend to the valid tokens of its own caption only.

On CUDA, SDPA runs without its cuDNN backend: a pack brings new (samples, length) shapes every step and
cuDNN builds an execution plan for each new shape. Measured on one H200 (benchmarks/train_step.py,
world-s, 32k-token packs, bf16): about 0.94 s per step with it, 0.098 s without (flash / efficient).
"""

from __future__ import annotations

import contextlib
import importlib.util
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import register_flop_formula

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
    sorted by length has one run per distinct length: one SDPA kernel each, inside one attention op call."""
    runs, i, n, start = [], 0, len(lengths), 0
    while i < n:
        length, j = lengths[i], i + 1
        while j < n and lengths[j] == length:
            j += 1
        runs.append((start, i, j - i, length))
        start += (j - i) * length
        i = j
    return Segments(tuple(runs), start)


def run_table(seg: Segments) -> Tensor:
    """The runs of `seg` as a host tensor [R, 4] (start token, start sample, count, length): what the packed
    attention op reads, a tensor so a compiled block takes any pack structure without recompiling.

    A pack of one run gets a second, empty one (count 0, skipped by the op): compile(dynamic=True) specialises a
    dim of size 1, so a one-run pack would recompile a block compiled on a many-run pack (and back)."""
    runs = list(seg.runs) + [(seg.total, sum(r[2] for r in seg.runs), 0, 0)] * max(0, 2 - len(seg.runs))
    table = torch.tensor(runs, dtype=torch.int64)  # [R >= 2, 4]
    # its 4 columns static: compile(dynamic=True) would otherwise tie them to any other size 4 of the first pack
    # (4 samples, say), a guard the next pack fails (a recompile)
    if not torch.compiler.is_compiling():
        torch._dynamo.mark_static(table, 1)
    return table


def _q_view(x: Tensor, run: list[int]) -> Tensor:
    """A run's slice of a tensor packed like the queries: [L, nh, ...] -> [n, nh, l, ...] (a view)."""
    start, _, count, length = run
    return x[start:start + count * length].unflatten(0, (count, length)).transpose(1, 2)


def _kv_view(x: Tensor, run: list[int]) -> Tensor:
    """A run's keys or values: self [L, nh, hd] packed like q, or cross [N, Lt, nh, hd] caption rows -> [n, nh, l|Lt, hd]."""
    if x.dim() == 3:
        return _q_view(x, run)
    _, first, count, _ = run
    return x[first:first + count].transpose(1, 2)


def _mask_view(mask: Tensor | None, run: list[int]) -> Tensor | None:
    """[N, Lt] bool -> the run's [n, 1, 1, Lt], broadcast over heads and queries."""
    _, first, count, _ = run
    return None if mask is None else mask[first:first + count, None, None, :]


def _additive(mask: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """bool mask (True = attend) -> the additive float mask SDPA itself turns it into."""
    return None if mask is None else torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(
        ~mask, float("-inf"))


def _lse_dtype(q: Tensor) -> torch.dtype:
    """The CPU kernel's logsumexp dtype: float32 for half-precision inputs, else the input's."""
    return torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype


@torch.library.custom_op("chronotope::packed_attention", mutates_args=())
def packed_attention(q: Tensor, k: Tensor, v: Tensor, runs: Tensor, mask: Tensor | None = None
                     ) -> tuple[Tensor, Tensor]:
    """Block-diagonal attention over a packed sequence, one op for the whole pack (self or cross).

    q: [L, nh, hd]; self: k, v [L, nh, hd] packed like q; cross: k, v [N, Lt, nh, hd] one caption row per
    sample, mask [N, Lt] bool (True = valid) or None; runs: `run_table` [R, 4] on the host.
    Returns (out [L, nh, hd], logsumexp [L, nh] for the backward; empty off CPU).
    On CPU: one SDPA kernel call per run of equal-length samples, the kernel F.scaled_dot_product_attention
    picks there (so outputs are bit-identical to it); elsewhere F.scaled_dot_product_attention per run.
    """
    out = torch.empty_like(q, memory_format=torch.contiguous_format)  # [L, nh, hd]
    cpu = q.device.type == "cpu"
    lse = q.new_empty((q.shape[0], q.shape[1]) if cpu else (0,), dtype=_lse_dtype(q))  # [L, nh]
    for run in runs.tolist():
        if run[2] == 0:  # an empty run (run_table's padding)
            continue
        qs, ks, vs, m = _q_view(q, run), _kv_view(k, run), _kv_view(v, run), _mask_view(mask, run)
        if cpu:
            o, l = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(qs, ks, vs, attn_mask=_additive(m, q.dtype))
            _q_view(lse, run).copy_(l)  # [n, nh, l]
        else:
            with _backends(q):
                o = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=m)  # [n, nh, l, hd]
        _q_view(out, run).copy_(o)
    return out, lse


@packed_attention.register_fake
def _(q, k, v, runs, mask=None):
    return torch.empty_like(q, memory_format=torch.contiguous_format), \
        q.new_empty((q.shape[0], q.shape[1]) if q.device.type == "cpu" else (0,), dtype=_lse_dtype(q))


@torch.library.custom_op("chronotope::packed_attention_backward", mutates_args=())
def packed_attention_backward(grad: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
                              runs: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of `packed_attention` w.r.t. q, k, v, run by run: the CPU kernel's own backward from the saved
    logsumexp (what autograd of F.scaled_dot_product_attention runs there); elsewhere a recomputed forward."""
    dq, dk, dv = (torch.zeros_like(x, memory_format=torch.contiguous_format) for x in (q, k, v))
    for run in runs.tolist():
        if run[2] == 0:  # an empty run (run_table's padding)
            continue
        qs, ks, vs, m = _q_view(q, run), _kv_view(k, run), _kv_view(v, run), _mask_view(mask, run)
        gs, dqs, dks, dvs = _q_view(grad, run), _q_view(dq, run), _kv_view(dk, run), _kv_view(dv, run)
        if q.device.type == "cpu":
            g = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
                gs, qs, ks, vs, _q_view(out, run), _q_view(lse, run), 0.0, False, attn_mask=_additive(m, q.dtype))
        else:
            with torch.enable_grad(), _backends(q):
                leaves = [x.detach().requires_grad_() for x in (qs, ks, vs)]
                g = torch.autograd.grad(F.scaled_dot_product_attention(*leaves, attn_mask=m), leaves, gs)
        for d, x in zip((dqs, dks, dvs), g):
            d.copy_(x)
    return dq, dk, dv


@packed_attention_backward.register_fake
def _(grad, q, k, v, out, lse, runs, mask=None):
    return tuple(torch.empty_like(x, memory_format=torch.contiguous_format) for x in (q, k, v))


def _setup(ctx, inputs, output) -> None:
    q, k, v, runs, mask = inputs
    ctx.save_for_backward(q, k, v, output[0], output[1], runs, mask)


def _backward(ctx, grad: Tensor, _grad_lse: Tensor):
    q, k, v, out, lse, runs, mask = ctx.saved_tensors
    return (*packed_attention_backward(grad, q, k, v, out, lse, runs, mask), None, None)


packed_attention.register_autograd(_backward, setup_context=_setup)


def _flops(q: Tensor, k: Tensor, runs: Tensor) -> int:
    """QK^T and AV of every run, 2 FLOPs per multiply-add (torch.utils.flop_counter's convention for SDPA)."""
    nh, hd = q.shape[1], q.shape[2]
    return sum(4 * count * nh * length * (length if k.dim() == 3 else k.shape[1]) * hd
               for _, _, count, length in runs.tolist())


@register_flop_formula(torch.ops.chronotope.packed_attention, get_raw=True)
def _(q, k, v, runs, mask=None, *args, out_val=None, **kwargs) -> int:
    return _flops(q, k, runs)


@register_flop_formula(torch.ops.chronotope.packed_attention_backward, get_raw=True)
def _(grad, q, k, v, out, lse, runs, mask=None, *args, out_val=None, **kwargs) -> int:
    return _flops(q, k, runs) * 5 // 2  # recomputed scores + 4 gradient matmuls, as torch counts SDPA's backward


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


def _varlen(q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor, max_seqlen: int) -> Tensor | None:
    """One varlen kernel call for the whole pack on CUDA: PyTorch's own (torch.nn.attention.varlen, itself a
    compilable op with its backward) when this torch has it, else flash-attn's when installed; None if neither."""
    cu = cu_seqlens.to(device=q.device, dtype=torch.int32)
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        if not _flash_available():
            return None
        return _flash(q, k, v, cu, max_seqlen)
    return varlen_attn(q, k, v, cu, cu, max_seqlen, max_seqlen)


def _flash_available() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def _autocast(*xs: Tensor | None) -> tuple[Tensor | None, ...]:
    """Cast q, k, v to the autocast dtype when autocast is on, as it casts SDPA's inputs: a custom op is in
    none of autocast's lists, and mixed-precision inputs (a norm's fp32 output beside a bf16 linear's) would
    reach the kernel as they are."""
    dev = xs[0].device.type
    if not torch.is_autocast_enabled(dev):
        return xs
    dtype = torch.get_autocast_dtype(dev)
    return tuple(None if x is None else x.to(dtype) for x in xs)


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cu_seqlens: Tensor,
    max_seqlen: int,
    backend: str = "auto",
    seg: Segments | None = None,
    runs: Tensor | None = None,
) -> Tensor:
    """Block-diagonal self-attention over a packed sequence: one op call for the whole pack.

    q, k, v: [L, nh, hd]; cu_seqlens: [N+1] int32 sample boundaries; max_seqlen: longest sample.
    seg / runs: optional precomputed `segments(cu_seqlens)` or its `run_table` (saves a host read per call).
    Returns [L, nh, hd].
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; choose one of {BACKENDS}")
    q, k, v = _autocast(q, k, v)
    if backend == "auto" and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        o = _varlen(q, k, v, cu_seqlens, max_seqlen)
        if o is not None:
            return o
    if backend == "flash":
        return _flash(q, k, v, cu_seqlens, max_seqlen)
    if backend == "flex":
        try:
            return _flex(q, k, v, cu_seqlens)
        except Exception as err:  # flex needs a recent torch and, off CPU, a working compiler
            _warn_once(f"flex attention failed ({type(err).__name__}: {err}); falling back to sdpa")
    if runs is None:
        runs = run_table(seg if seg is not None else segments(cu_seqlens))
    return packed_attention(q, k, v, runs)[0]


def cross_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None,
    cu_seqlens: Tensor,
    seg: Segments | None = None,
    runs: Tensor | None = None,
) -> Tensor:
    """Tokens of sample i attend to the valid tokens of sample i's caption only: one op call for the pack.

    q: [L, nh, hd] packed queries; k, v: [N, Lt, nh, hd] caption keys/values, one row per sample
    (gather rows with the sample's text index first); mask: [N, Lt] bool (True = valid; every row needs
    at least one True, or SDPA returns NaN) or None when all are valid. Returns [L, nh, hd].
    """
    if runs is None:
        runs = run_table(seg if seg is not None else segments(cu_seqlens))
    return packed_attention(*_autocast(q, k, v), runs, mask)[0]
