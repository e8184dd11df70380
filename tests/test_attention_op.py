"""The packed attention op (chronotope::packed_attention): per-sample SDPA in one call, and a DiTBlock compiles through it."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from chronotope.config import DIT_PRESETS
from chronotope.dit.attention import packed_attention, run_table, segments_from_lengths
from chronotope.dit.model import DiT
from chronotope.dit.patches import Sample, pack

LENGTHS = [5, 5, 3, 7, 3, 3, 1]  # repeats, singletons, a length that comes back later: 5 runs


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def per_sample(q, k, v, mask=None):
    """Reference: one SDPA call per sample; self when k is packed like q, else cross on the sample's caption row."""
    outs, start = [], 0
    for i, n in enumerate(LENGTHS):
        qs = q[start:start + n].transpose(0, 1)  # [nh, n, hd]
        if k.dim() == 3:
            ks, vs = k[start:start + n].transpose(0, 1), v[start:start + n].transpose(0, 1)
        else:
            keep = slice(None) if mask is None else mask[i]
            ks, vs = k[i, keep].transpose(0, 1), v[i, keep].transpose(0, 1)  # only the valid caption tokens
        outs.append(F.scaled_dot_product_attention(qs, ks, vs).transpose(0, 1))
        start += n
    return torch.cat(outs)  # [L, nh, hd]


def leaves(*shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=g, dtype=torch.float64).requires_grad_() for s in shapes]


def grads_match(out, ref, inputs):
    g = torch.randn_like(out)
    got = torch.autograd.grad(out, inputs, g)
    want = torch.autograd.grad(ref, inputs, g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


def test_self_attention_equals_per_sample_sdpa():
    L, runs = sum(LENGTHS), run_table(segments_from_lengths(LENGTHS))
    q, k, v = leaves((L, 2, 8), (L, 2, 8), (L, 2, 8))
    out, _ = packed_attention(q, k, v, runs)
    ref = per_sample(q, k, v)
    torch.testing.assert_close(out, ref)
    grads_match(out, ref, (q, k, v))


@pytest.mark.parametrize("masked", [False, True])
def test_cross_attention_equals_per_sample_sdpa(masked):
    L, N, Lt, runs = sum(LENGTHS), len(LENGTHS), 6, run_table(segments_from_lengths(LENGTHS))
    q, k, v = leaves((L, 2, 8), (N, Lt, 2, 8), (N, Lt, 2, 8), seed=1)
    mask = None
    if masked:  # captions of different lengths, one with a single valid token
        mask = torch.arange(Lt)[None, :] < torch.tensor([6, 2, 4, 1, 6, 3, 5])[:, None]
    out, _ = packed_attention(q, k, v, runs, mask)
    ref = per_sample(q, k, v, mask)
    torch.testing.assert_close(out, ref)
    grads_match(out, ref, (q, k, v))


def test_op_registration_passes_opcheck():
    """Fake (meta) implementation, autograd registration and schema agree with the real op."""
    runs = run_table(segments_from_lengths(LENGTHS))
    L, N = sum(LENGTHS), len(LENGTHS)
    q, k, v = (x.detach().float().requires_grad_() for x in leaves((L, 2, 8), (N, 4, 2, 8), (N, 4, 2, 8)))
    mask = torch.arange(4)[None, :] < torch.tensor([4, 2, 1, 3, 4, 4, 2])[:, None]
    torch.library.opcheck(packed_attention, (q, k, v, runs, mask))
    torch.library.opcheck(packed_attention, (q, q.detach().clone().requires_grad_(), q.detach().clone(), runs))


def block_inputs(shapes):
    """A debug DiT, and the (x, c, ctx) its first block sees on a pack of `shapes` with a masked caption."""
    torch.manual_seed(0)
    model = DiT(DIT_PRESETS["debug"]())
    g = torch.Generator().manual_seed(0)
    samples = [Sample(torch.randn(4, *s, generator=g), timestep=0.2 + 0.1 * i, text_idx=i % 2)
               for i, s in enumerate(shapes)]
    text, mask = torch.randn(2, 6, 384, generator=g), torch.tensor([[True] * 6, [True] * 3 + [False] * 3])
    seen = {}
    hook = model.blocks[0].register_forward_pre_hook(lambda m, args: seen.setdefault("args", args))
    with torch.no_grad():
        model(pack(samples), text, mask)
    hook.remove()
    return model.blocks[0], seen["args"]


SHAPES = [(3, 8, 8), (3, 8, 8), (1, 8, 12), (2, 4, 8), (5, 4, 4)]  # 4 distinct lengths


class CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls[str(func.overloadpacket)] = self.calls.get(str(func.overloadpacket), 0) + 1
        return func(*args, **(kwargs or {}))


def test_block_makes_one_attention_call_per_layer():
    block, args = block_inputs(SHAPES)
    assert len(args[2].seg.runs) == 4
    with CountOps() as count:
        block(*args)
    assert count.calls.get("chronotope.packed_attention") == 2  # self + cross, not 2 per distinct length
    assert not any("scaled_dot_product" in name for name in count.calls)


def test_block_compiles_without_graph_breaks():
    block, args = block_inputs(SHAPES)
    explained = torch._dynamo.explain(block)(*args)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1


def test_compiled_block_does_not_recompile_across_pack_layouts():
    """compile(dynamic=True), as train/parallel.py compiles each block: one graph for packs of any structure
    (one sample; one run, which the eager block takes a fast path for; as many samples as runs or as table
    columns; many runs), with the eager block's outputs."""
    from torch._dynamo.utils import counters

    layouts = [SHAPES, [(3, 8, 8)], [(2, 4, 4), (2, 4, 4)], [(1, 4, 4), (2, 4, 4), (3, 4, 4)],
               [(1, 4, 4), (2, 4, 4), (3, 4, 4), (4, 4, 4)], [(2, 8, 8)] * 3 + [(1, 4, 8)], SHAPES[::-1]]
    block, _ = block_inputs(SHAPES)
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(block, backend="eager", dynamic=True)
    with torch.no_grad():
        for shapes in layouts:
            _, args = block_inputs(shapes)
            torch.testing.assert_close(compiled(*args), block(*args), rtol=1e-6, atol=1e-6)
    assert counters["frames"]["ok"] == 1, "a pack layout recompiled the block"
    torch._dynamo.reset()
