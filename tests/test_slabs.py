"""The slab plan of conv / conv_transpose is data: a list of slabs that tile the output
exactly once, each within the budget, each reading exactly the input rows its outputs
need. (That running the plan equals the unchunked op is pinned in test_conv.py.) So are
the plane chunks of unfold's zero padding and fold's padded scatter."""

from __future__ import annotations

import dataclasses
import itertools
import math
import sys

import pytest
import torch
import torch.nn.functional as F

import nfold
from nfold import _native, _plan, _slabs
from nfold._layouts import ConvCacheSlabs, ConvSlabs, ConvTransposeSlabs, NativeConvSlabs

# (layout, batch, input spatial, params, output spatial)
CONV = ConvSlabs((3, 2), (1, 2), (2, 1), c_in=4, c_out=6, groups=2, item=8, weight_numel=48)
CONV_T = ConvTransposeSlabs((3, 2), (2, 1), (2, 3), c_in=4, c_out=6, groups=2, item=8,
                             weight_numel=48)  # fmt: skip
CASES = {
    "conv": (CONV, 3, (9, 7), ((1, 2), (0, 1)), (5, 6)),
    "conv_transpose": (CONV_T, 3, (5, 4), (1, 0), (12, 11)),
}


def _covered(layout, spatial, params, outs, slab):
    """The output positions of ``slab`` per dim, checking its input rows on the way."""
    ranges = []
    for i in range(len(outs)):
        if i < len(slab.spans):
            s = slab.spans[i]
            assert s.start >= 0 and s.start + s.length <= spatial[i]
            ranges.append(range(s.first, s.stop))
        else:
            ranges.append(range(outs[i]))
    return ranges


@pytest.mark.parametrize("budget", [1, 600, 3000, 20000, 10**9])
@pytest.mark.parametrize("name", CASES)
def test_slabs_tile_the_output_once_within_budget(name, budget):
    layout, batch, spatial, params, outs = CASES[name]
    slabs = _slabs.plan(batch, spatial, params, outs, budget, layout)
    seen: dict[tuple[int, ...], int] = {}
    for slab in slabs:
        b0, nb = slab.batch
        ranges = _covered(layout, spatial, params, outs, slab)
        for point in itertools.product(range(b0, b0 + nb), *ranges):
            seen[point] = seen.get(point, 0) + 1
        sub_sp = [s.length for s in slab.spans] + list(spatial[len(slab.spans) :])
        sub_ps = [s.param for s in slab.spans] + list(params[len(slab.spans) :])
        sub_os = [len(r) for r in ranges]
        single = nb == 1 and math.prod(sub_os) == 1
        assert single or layout.cost(nb, sub_sp, sub_ps, sub_os) <= budget, slab
    assert len(seen) == batch * math.prod(outs) and set(seen.values()) == {1}
    if budget == 10**9:
        assert slabs == [_slabs.Slab((0, batch), ())]


def test_gemm_slabs_are_cut_for_what_the_gemm_reads():
    """Without a limit, "gemm" slabs are cut for the unfolded matrix (cache), not for its
    result: a few-channel layer whose output dwarfs its unfolded matrix is one slab, with
    no concatenation. A limit still bounds every intermediate, the result included."""
    sizes = dict(c_in=3, c_out=96, groups=1, item=4, weight_numel=96 * 27)
    geometry = ((3, 3), (1, 1), (1, 1))
    every = ConvSlabs(*geometry, **sizes)
    args = (32, (32, 32), ((1, 1), (1, 1)), (32, 32))
    budget = _plan.CPU.auto_workspace
    assert every.cost(*args) > budget  # the (32, 96, 32, 32) output: 12.6 MB
    one = [_slabs.Slab((0, 32), ())]
    assert _slabs.plan(*args, budget, ConvCacheSlabs(*geometry, **sizes)) == one
    x, w = torch.zeros(32, 3, 32, 32), torch.zeros(96, 3, 3, 3)
    plan = sys.modules["nfold.conv"]._conv_plan(
        x.shape, x.dtype, x.device, w.shape, w.dtype, None, None, 1, 1, 1, 1, "zeros", None,
        "gemm")  # fmt: skip
    assert plan.whole is not None and len(plan.slabs) == 1
    for limit in (budget, 4 << 20, 1 << 40):
        slabs = _slabs.plan(
            *args, min(limit, budget), ConvCacheSlabs(*geometry, **sizes, limit=limit)
        )
        for slab in slabs:
            assert not slab.spans  # a batch range is enough here
            assert every.cost(slab.batch[1], *args[1:]) <= limit
        assert len(slabs) == (1 if limit == 1 << 40 else math.ceil(32 / (limit // (96 * 4096))))


def test_conv_slab_reads_the_rows_its_outputs_need():
    """Output rows [first, stop) of dim 0 read input rows first*s - lo ...
    (stop-1)*s + d(k-1) - lo, clipped to the input, with the clipped part as padding."""
    start, length, (lo, hi) = CONV.rows(0, 9, (1, 2), 2, 4)
    assert (start, length, lo, hi) == (3, 5, 0, 0)  # rows 3..7 for outputs 2, 3
    start, length, (lo, hi) = CONV.rows(0, 9, (1, 2), 0, 1)
    assert (start, length, lo, hi) == (0, 2, 1, 0)  # output 0 starts in the padding
    start, length, (lo, hi) = CONV.rows(0, 9, (1, 2), 4, 5)
    assert (start, length, lo, hi) == (7, 2, 0, 1)  # output 4 ends in the padding


# --------------------------------------------------------------------------- running


def _conv_leaf(w: torch.Tensor):  # type: ignore[no-untyped-def]
    """CONV's op on one slab: zero-pad by the slab's params, then torch's conv."""

    def leaf(part, params, outs):  # type: ignore[no-untyped-def]
        flat = [p for pair in reversed(params) for p in pair]
        out = F.conv2d(F.pad(part, flat), w, None, CONV.stride, 0, CONV.dilation, CONV.groups)
        assert tuple(out.shape[2:]) == tuple(outs)
        return out

    return leaf


@pytest.mark.parametrize("budget", [600, 3000, 8000])
def test_run_into_one_output_equals_concatenation(budget):
    """Without an autograd graph, slabs are copied into one preallocated output (peak: the
    output plus one slab) instead of concatenated: the same bits, and only with > 1 slab."""
    _, batch, spatial, params, outs = CASES["conv"]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, CONV.c_in, *spatial, generator=gen, dtype=torch.float64)
    w = torch.randn(CONV.c_out, CONV.c_in // CONV.groups, *CONV.kernel, generator=gen,
                    dtype=torch.float64)  # fmt: skip
    slabs = _slabs.plan(batch, spatial, params, outs, budget, CONV)
    assert len(slabs) > 1
    cat = _slabs.run(x, slabs, params, outs, _conv_leaf(w))
    into = _slabs.run(x, slabs, params, outs, _conv_leaf(w), into=True)
    assert torch.equal(into, cat) and into.is_contiguous()
    whole = _conv_leaf(w)(x, params, outs)
    torch.testing.assert_close(into, whole, rtol=1e-14, atol=1e-14)


# --------------------------------------------------------------------------- planes


@pytest.mark.parametrize(
    ("budget", "expected"),
    [(10**9, 0), (150, 0), (100, 2), (60, 3), (30, 6), (25, 9), (1, 15)],
)
def test_plane_chunks_tile_the_planes_once_within_budget(budget, expected):
    """(batch, channel) chunks of 3 x 5 planes of 10 bytes: whole samples while one fits,
    else channel ranges of one sample (one plane even above the budget); in order."""
    chunks = _slabs.planes(3, 5, 10, budget)
    assert len(chunks) == expected
    order = torch.zeros(3, 5, dtype=torch.int64)
    for i, chunk in enumerate(chunks or [(slice(None), slice(None))], start=1):
        assert bool((order[chunk] == 0).all())  # each plane once
        assert order[chunk].numel() * 10 <= budget or order[chunk].numel() == 1
        order[chunk] = i
    assert order.flatten().tolist() == sorted(order.flatten().tolist()) and bool(order.all())


@pytest.mark.parametrize(("budget", "chunks"), [(200, 24), (1200, 12), (7000, 2)])
def test_fold_scatter_runs_the_plane_chunks(monkeypatch, budget, chunks):
    """fold's padded scatter runs :func:`_slabs.planes`' chunks (channel ranges of a
    sample, whole samples): torch's col2im's bits each time."""
    rule = dataclasses.replace(_plan.CPU, pad_chunk_bytes=budget, short_row=1 << 30,
                               index_share=float("inf"), torch_below=0)  # fmt: skip
    monkeypatch.setitem(_plan.POLICIES, "cpu", rule)
    _plan.clear_caches()
    patches = sys.modules["nfold.patches"]
    planned, scattered = [], []
    planes, scatter = _slabs.planes, patches._fold_scatter
    monkeypatch.setattr(_slabs, "planes", lambda *a: planned.append(planes(*a)) or planned[-1])
    monkeypatch.setattr(patches, "_fold_scatter", lambda *a: scattered.append(1) or scatter(*a))
    gen = torch.Generator().manual_seed(2)
    y = torch.randn(4, 6 * 6, 48, generator=gen, dtype=torch.float64)  # 6 channels, 3 x 2
    args = ((6, 7), (3, 2), 1, (1, 1), 1)  # output, kernel, dilation, padding, stride
    assert torch.equal(nfold.fold(y, *args), F.fold(y, *args))
    assert scattered and len(planned[-1]) == chunks  # padded planes: 8 x 9 x 8 bytes


# --------------------------------------------------------------------------- "auto"


def _native_layout(dtype: torch.dtype, c_in: int = 16, c_out: int = 16) -> NativeConvSlabs:
    sizes = ((3, 3, 3), (1, 1, 1), (1, 1, 1), c_in, c_out, 1, dtype.itemsize, c_out * c_in * 27)
    return NativeConvSlabs(*sizes, device=torch.device("cpu"), dtype=dtype, bias=False)  # type: ignore[arg-type]


@pytest.mark.parametrize("c_out", [16, 8])
def test_native_cost_counts_what_torchs_kernel_holds(c_out):
    """A slab's cost for "auto" is its padded input and output plus what torch's chosen
    kernel holds: slow_conv3d (float64 here) one sample's im2col matrix; oneDNN
    (float32) its blocked copies (channels rounded up to 16; none for the output when
    its channels are a multiple of 16)."""
    spatial, params, outs = (24, 24, 24), ((1, 1),) * 3, (24, 24, 24)
    padded, cells = 26**3, 24**3
    for dtype in (torch.float64, torch.float32):
        select = torch._C._select_conv_backend
        x = torch.empty((), dtype=dtype).expand(2, 16, 26, 26, 26)
        w = torch.empty((), dtype=dtype).expand(c_out, 16, 3, 3, 3)
        backend = select(x, w, None, [1] * 3, [0] * 3, [1] * 3, False, [0] * 3, 1, None).name
        ours = 16 * padded + c_out * cells
        if dtype == torch.float64:
            assert backend.startswith("Slow")
            held = 16 * 27 * cells  # one sample's
        else:
            assert backend == "Mkldnn"  # (a batch of 1 this small gets slow_conv3d)
            held = 2 * (16 * padded + (16 * cells if c_out % 16 else 0))
        got = _native_layout(dtype, c_out=c_out).cost(2, spatial, params, outs)
        assert got == dtype.itemsize * (2 * ours + held)


def test_native_slabs_keep_torchs_fast_kernel(monkeypatch):
    """A limit that the whole float32 3-d conv fits (oneDNN holds no im2col matrix) runs
    one native call; slabs cut only where the limit needs them, every call within it
    (counting what oneDNN holds), equal to the unbounded result."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 16, 24, 24, 24, generator=gen)
    w = torch.randn(16, 16, 3, 3, 3, generator=gen)
    layout = _native_layout(torch.float32)
    whole = layout.cost(2, (24, 24, 24), ((1, 1),) * 3, (24, 24, 24))
    calls: list[tuple[int, ...]] = []
    real = _native._conv
    monkeypatch.setattr(_native, "_conv", lambda x, *a: calls.append(x.shape) or real(x, *a))
    unbounded = nfold.conv(x, w, padding=1)
    assert calls == []  # without a limit: torch's conv3d directly
    assert torch.equal(nfold.conv(x, w, padding=1, max_workspace_bytes=whole), unbounded)
    assert len(calls) == 1
    calls.clear()
    bounded = nfold.conv(x, w, padding=1, max_workspace_bytes=whole // 3)
    assert len(calls) > 1
    # batch-1 slabs run slow_conv3d, the whole batch oneDNN: other summation orders of
    # 432 float32 terms, so equal to round-off in norm (elementwise near-cancellation
    # can differ by more relative to a tiny element)
    assert ((bounded - unbounded).norm() / unbounded.norm()).item() < 1e-6
