"""The data-movement core: unfold (im2col), fold (col2im), unfold_transpose and
sliding_window_view for any number N of spatial dims and any dtype.

One geometry serves all three ops: a block grid given by ``kernel_size``,
``dilation``, per-side zero padding and ``stride`` (and, for the transposed im2col,
a flipped kernel). unfold copies a strided view once (zero-padding the input a chunk at
a time); fold, its adjoint, adds the prod(kernel_size) strided slices into a zeroed
output in a fixed order (for short rows, one scatter_add_ pass in that same order; for
blocks that do not overlap, one strided add). Each is the other's backward, so
derivatives of every order are exact.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from . import _args, _plan, _slabs
from ._args import IntOrTuple, PaddingArg, Pads
from ._plan import Geometry

_LOW_PRECISION = (torch.float16, torch.bfloat16)
_REAL = {
    torch.complex32: torch.float16,
    torch.complex64: torch.float32,
    torch.complex128: torch.float64,
}
# torch has no add for these (fold sums them in int64) and no reflect/replicate kernel
_NO_ADD = tuple(getattr(torch, n) for n in ("uint16", "uint32", "uint64") if hasattr(torch, n))
_NO_PAD_KERNEL = (torch.bool, *_NO_ADD)
_WIDER = {
    torch.float16: torch.float32,
    torch.bfloat16: torch.float32,
    torch.float32: torch.float64,
    torch.complex32: torch.complex64,
    torch.complex64: torch.complex128,
}


def _window_view(x: torch.Tensor, geom: Geometry, kernel_last: bool = True) -> torch.Tensor:
    """``(B, C, *P)`` (already padded) -> view ``(B, C, *L, *k)`` (or ``(B, C, *k, *L)``
    if not ``kernel_last``): a chain of ``Tensor.unfold``, differentiable for any input
    (``as_strided``'s backward is wrong on inputs that overlap themselves, e.g. expanded)."""
    n = len(geom.kernel)
    for i, (span, s) in enumerate(zip(geom.span, geom.stride, strict=True)):
        x = x.unfold(2 + i, span, s)
    if any(d > 1 for d in geom.dilation):
        index: tuple[Any, ...] = (..., *(slice(None, None, d) for d in geom.dilation))
        x = x[index]
    if kernel_last:
        return x
    return x.permute(0, 1, *range(2 + n, 2 + 2 * n), *range(2, 2 + n))


def _blocks(x: torch.Tensor, geom: Geometry, blocks: Sequence[int]) -> torch.Tensor:
    """:func:`_window_view` ``(B, C, *k, *L)`` of an already padded ``x`` (``blocks`` = L)
    for the core's forwards (no autograd there): one ``as_strided``, in whatever layout
    ``x`` has. Dynamo cannot trace ``storage_offset`` inside an autograd.Function, so
    compiled code takes the chain."""
    if torch.compiler.is_compiling():
        return _window_view(x, geom, kernel_last=False)
    strides = x.stride()[2:]
    grid = [s * t for s, t in zip(strides, geom.stride, strict=True)]
    offsets = [s * d for s, d in zip(strides, geom.dilation, strict=True)]
    size, stride = (*x.shape[:2], *geom.kernel, *blocks), (*x.stride()[:2], *offsets, *grid)
    return x.as_strided(size, stride, x.storage_offset())


_is_legacy_batched = getattr(torch._C._functorch, "is_legacy_batchedtensor", None)


def _legacy_batched(t: torch.Tensor) -> bool:
    """``t`` is batched by torch's legacy vmap (``autograd.grad(..., is_grads_batched=True)``,
    ``autograd.functional.jacobian(..., vectorize=True)``), which runs the core's forwards
    on batched tensors with no vmap rule and refuses in-place writes of them into fresh
    buffers."""
    if _is_legacy_batched is None or torch.compiler.is_compiling():  # dynamo cannot call it
        return False
    return bool(_is_legacy_batched(t))


def _unfold_batched(x: torch.Tensor, geom: Geometry) -> torch.Tensor:
    """unfold of a :func:`_legacy_batched` tensor out of place: pad, the block view, a
    reshape (the same copy, in whatever memory layout)."""
    if geom.padded:
        x = F.pad(x, [p for pair in reversed(geom.padding) for p in pair])
    blocks = _window_view(x, geom, kernel_last=False)  # (B, C, *k, *L)
    if geom.flip:
        blocks = blocks.flip(tuple(range(2, 2 + len(geom.kernel))))
    return blocks.reshape(x.shape[0], -1, math.prod(blocks.shape[2 + len(geom.kernel) :]))


def _fold_batched(y: torch.Tensor, spatial: tuple[int, ...], geom: Geometry) -> torch.Tensor:
    """fold of a :func:`_legacy_batched` tensor out of place: one ``scatter_add`` into a
    zero-padded buffer, cropped (the scatter path's sums, in its order on the CPU)."""
    acc = torch.float32 if y.dtype in _LOW_PRECISION else y.dtype
    padded = _args.padded_size(spatial, geom.padding)
    index = _index(padded, geom, y.device)
    planes = y.shape[0] * (y.shape[1] // math.prod(geom.kernel))
    buf = torch.zeros((planes, math.prod(padded)), dtype=acc, device=y.device)
    buf = buf.scatter_add(1, index.expand(planes, -1), y.to(acc).reshape(planes, -1))
    out = buf.view(planes, *padded)
    for i, (n, (lo, _)) in enumerate(zip(spatial, geom.padding, strict=True)):
        out = out.narrow(1 + i, lo, n)  # (indexing would alias, which legacy vmap lacks)
    return out.reshape(y.shape[0], -1, *spatial).to(y.dtype)


class _UnfoldSteps(NamedTuple):
    """How :func:`_unfold_forward` runs on one input shape and geometry."""

    blocks: tuple[int, ...]  # L per spatial dim
    pads: list[int] | None  # F.pad's flat list, None if unpadded
    chunks: list[tuple[slice, slice]]  # (batch, channel) ranges padded one at a time; [] all
    size: tuple[int, ...]  # the block view (B, C, *k, *L)
    stride: tuple[int, ...]  # its strides on a contiguous (padded) input
    shape: tuple[int, int, int]  # the result (B, C * prod(k), L)
    direct: bool  # one (pad and) strided copy: no chunks, flip or rows_first
    torch_args: _plan.TorchArgs | None  # or torch's F.unfold (Policy.torch_below)


@_plan.memo
def _unfold_steps(
    shape: torch.Size, dtype: torch.dtype, rule: _plan.Policy, geom: Geometry, rows_first: bool
) -> _UnfoldSteps:
    batch, channels, spatial = shape[0], shape[1], tuple(shape[2:])
    item = dtype.itemsize
    blocks = geom.blocks(spatial)
    padded = _args.padded_size(spatial, geom.padding)
    out_bytes = batch * channels * math.prod(geom.kernel) * math.prod(blocks) * item
    native = None if rows_first else _plan.torch_args(geom, dtype, rule, batch, out_bytes)
    chunks = _pad_chunks(batch, channels, item * math.prod(padded), geom.padding, rule)
    strides = [math.prod(padded[i + 1 :]) for i in range(len(padded))]
    plane = math.prod(padded)
    grid = [s * t for s, t in zip(strides, geom.stride, strict=True)]
    offsets = [s * d for s, d in zip(strides, geom.dilation, strict=True)]
    return _UnfoldSteps(
        blocks,
        [p for pair in reversed(geom.padding) for p in pair] if geom.padded else None,
        chunks,
        (batch, channels, *geom.kernel, *blocks),
        (channels * plane, plane, *offsets, *grid),
        (batch, channels * math.prod(geom.kernel), math.prod(blocks)),
        not (chunks or geom.flip or rows_first),
        native,
    )


def _pad_chunks(
    batch: int, channels: int, plane: int, pads: Pads, rule: _plan.Policy
) -> list[tuple[slice, slice]]:
    """``(batch, channel)`` ranges of the input (``plane``: bytes of one zero-padded plane)
    whose zero-padded copy fits the device policy's ``pad_chunk_bytes``
    (:func:`_slabs.planes`), so unfold's peak memory is its output plus that, not plus a
    padded copy of the whole input. ``[]``: all of it at once."""
    if not _args.has_padding(pads):
        return []
    return _slabs.planes(batch, channels, plane, rule.pad_chunk_bytes)


def _unfold_forward(x: torch.Tensor, geom: Geometry, rows_first: bool = False) -> torch.Tensor:
    """``(B, C, *S)`` -> ``(B, C * prod(k), L)``; with ``rows_first`` the result is laid out
    in memory as ``(C * prod(k), B, L)`` (same values, a transposed view), so that the
    batch can be merged into the columns of one GEMM without a copy."""
    if _legacy_batched(x):
        return _unfold_batched(x, geom)
    steps = _unfold_steps(x.shape, x.dtype, _plan.policy(x.device), geom, rows_first)
    if steps.torch_args is not None:
        return steps.torch_args.unfold(x)
    if steps.direct:  # (pad and) one strided copy
        part = x if steps.pads is None else F.pad(x, steps.pads)
        if torch.compiler.is_compiling() or not part.is_contiguous():
            blocks = _blocks(part, geom, steps.blocks)
        else:
            blocks = part.as_strided(steps.size, steps.stride, part.storage_offset())
        return blocks.clone(memory_format=torch.contiguous_format).view(steps.shape)
    kernel, n = geom.kernel, len(geom.kernel)
    batch, channels = x.shape[:2]
    outs = steps.blocks
    if rows_first:
        shape = (channels, *kernel, batch, *outs)
        cols = torch.empty(shape, dtype=x.dtype, device=x.device).movedim(1 + n, 0)
    else:
        cols = torch.empty((batch, channels, *kernel, *outs), dtype=x.dtype, device=x.device)
    for chunk in steps.chunks or [(slice(None), slice(None))]:
        part = x[chunk] if steps.pads is None else F.pad(x[chunk], steps.pads)
        blocks = _blocks(part, geom, outs)  # (b, c, *k, *L)
        dst = cols[chunk]
        if geom.flip:  # torch has no negative strides: copy one kernel offset at a time
            for offset in itertools.product(*(range(k) for k in kernel)):
                flipped = tuple(k - 1 - j for k, j in zip(kernel, offset, strict=True))
                to: tuple[Any, ...] = (slice(None), slice(None), *flipped)
                src: tuple[Any, ...] = (slice(None), slice(None), *offset)
                dst[to].copy_(blocks[src])
        else:
            dst.copy_(blocks)
    return cols.view(steps.shape)


def _phase_plan(
    size: int, k: int, d: int, lo: int, s: int, blocks: int, flip: bool
) -> dict[int, tuple[int, list[tuple[int, int, int, int]]]]:
    """One spatial dim of fold: kernel offsets grouped by the output phase they hit.

    Block ``l`` of kernel offset ``j`` lands on output ``q = r + s * (l + t)`` with
    ``r, t = divmod``-parts of ``j d - lo``. Returns ``{r: (M_r, [(j, first, last, t)])}``
    where ``M_r`` counts outputs of phase ``r`` and blocks ``first..last`` are in range.
    """
    plan: dict[int, tuple[int, list[tuple[int, int, int, int]]]] = {}
    for j in range(k):
        t, r = divmod(((k - 1 - j) if flip else j) * d - lo, s)
        count = max(0, (size - r + s - 1) // s)
        first, last = max(0, -t), min(blocks - 1, count - 1 - t)
        if first <= last:
            plan.setdefault(r, (count, []))[1].append((j, first, last, t))
    return plan


_Index = tuple[Any, ...]
_Strided = tuple[tuple[int, ...], tuple[int, ...], int]  # as_strided's size, stride, offset
# one strided add of fold: (dst, src) as indices and as views of contiguous tensors
_Add = tuple[_Index, _Index, _Strided, _Strided]
# a stride phase of fold: its buffer's spatial size (None: out itself), its adds in
# row-major kernel-offset order, and where the buffer goes in out (None: it is out)
_Phase = tuple[tuple[int, ...] | None, list[_Add], tuple[_Index, _Strided] | None]


def _strided(shape: Sequence[int], index: _Index) -> _Strided:
    """``index`` (ints and slices) of a contiguous tensor of ``shape`` as an as_strided view."""
    strides = [math.prod(shape[i + 1 :]) for i in range(len(shape))]
    size, stride, offset = [], [], 0
    full = (*index, *(slice(None),) * (len(shape) - len(index)))
    for n, st, ix in zip(shape, strides, full, strict=True):
        if isinstance(ix, int):
            offset += ix * st
            continue
        start, stop, step = ix.indices(n)
        size.append(len(range(start, stop, step)))
        stride.append(st * step)
        offset += start * st
    return tuple(size), tuple(stride), offset


class _FoldSteps(NamedTuple):
    """How :func:`_fold_forward` runs on one input shape and geometry."""

    acc: torch.dtype  # the dtype sums are accumulated in
    cols: tuple[int, ...]  # the input viewed as (B, C, *k, *L)
    out: tuple[int, ...]  # (B, C, *spatial)
    scatter: bool  # one scatter_add_ pass (else one strided add if disjoint, else phases)
    padded: tuple[int, ...]  # spatial size of the scatter's zero-padded buffer
    crop: tuple[slice, ...] | None  # where the output lies in that buffer (None: unpadded)
    chunks: list[tuple[slice, slice]]  # (batch, channel) ranges scattered one at a time
    disjoint: bool  # one strided add (blocks do not overlap)
    phases: list[_Phase]  # else these phases (none for the scatter and disjoint paths)
    covered: bool  # the phase buffers are written to every output element (out needs no zeros)
    positions: torch.Tensor | None  # the scatter's index where it is small (else built per call)
    torch_args: _plan.TorchArgs | None  # or torch's F.fold (Policy.torch_below)


@_plan.memo(maxsize=256)  # steps hold scatter indices of up to 64 KB: at most 16 MB
def _fold_steps(
    shape: torch.Size, dtype: torch.dtype, device: torch.device, rule: _plan.Policy,
    contiguous: bool, spatial: tuple[int, ...], geom: Geometry,
) -> _FoldSteps:  # fmt: skip
    kernel = geom.kernel
    blocks = geom.blocks(spatial)
    batch, channels = shape[0], shape[1] // math.prod(kernel)
    acc = torch.float32 if dtype in _LOW_PRECISION else dtype
    strided = any(st > 1 for st in geom.stride)
    scatter = _scatter_pays(shape, dtype, contiguous, blocks, strided, acc, math.prod(kernel), rule)
    padded = _args.padded_size(spatial, geom.padding)
    crop = tuple(slice(lo, lo + n) for n, (lo, _) in zip(spatial, geom.padding, strict=True))
    plane = dtype.itemsize * math.prod(padded)
    chunks = _slabs.planes(batch, channels, plane, rule.pad_chunk_bytes) if geom.padded else []
    phases: list[_Phase] = []
    covered = False
    if not (scatter or geom.disjoint):
        phases, covered = _phases(spatial, blocks, geom, batch, channels)
    small = 8 * math.prod(kernel) * math.prod(blocks) <= rule.small_index
    index = _index(padded, geom, device) if scatter and small else None
    return _FoldSteps(
        acc, (batch, channels, *kernel, *blocks), (batch, channels, *spatial), scatter,
        padded, crop if geom.padded else None, chunks, geom.disjoint, phases, covered, index,
        _plan.torch_args(geom, dtype, rule, batch, math.prod(shape) * dtype.itemsize),
    )  # fmt: skip


def _phases(spatial: tuple[int, ...], blocks: tuple[int, ...], geom: Geometry, batch: int,
             channels: int) -> tuple[list[_Phase], bool]:  # fmt: skip
    """fold's phases, and whether their buffers (strided) are written to every output."""
    plans = [
        _phase_plan(size, k, d, lo, s, nb, geom.flip)
        for size, k, d, (lo, _), s, nb in zip(
            spatial, geom.kernel, geom.dilation, geom.padding, geom.stride, blocks, strict=True
        )
    ]
    strided = any(s > 1 for s in geom.stride)
    cols = (batch, channels, *geom.kernel, *blocks)
    everything = (slice(None), slice(None))
    phases: list[_Phase] = []
    for phase in itertools.product(*(sorted(plan.items()) for plan in plans)):
        counts = tuple(count for _, (count, _) in phase)
        buf = (batch, channels, *(counts if strided else spatial))
        adds: list[_Add] = []
        for offset in itertools.product(*(terms for _, (_, terms) in phase)):
            src = (*everything, *(j for j, *_ in offset))
            src += tuple(slice(first, last + 1) for _, first, last, _ in offset)
            dst = (*everything, *(slice(first + t, last + t + 1) for _, first, last, t in offset))
            adds.append((dst, src, _strided(buf, dst), _strided(cols, src)))
        if strided:
            steps = zip(phase, geom.stride, strict=True)
            where = (*everything, *(slice(r, None, s) for (r, _), s in steps))
            out = (batch, channels, *spatial)
            phases.append((counts, adds, (where, _strided(out, where))))
        else:
            phases.append((None, adds, None))
    covered = strided and all(
        set(plan) == {r for r in range(s) if size > r}
        for plan, s, size in zip(plans, geom.stride, spatial, strict=True)
    )
    return phases, covered


def _fold_scatter(y: torch.Tensor, steps: _FoldSteps, geom: Geometry) -> torch.Tensor:
    """fold as ``scatter_add_`` passes into a zero-padded buffer, cropped into the output,
    a chunk of planes at a time (:func:`_slabs.planes`: the padded copy never exceeds the
    policy's ``pad_chunk_bytes``).

    On the CPU scatter_add_ walks each row's index in order (on GPUs it uses atomics), so
    every output element still receives its blocks in row-major kernel-offset order,
    starting from zero: bitwise equal to the phase path.
    """
    index = _index(steps.padded, geom, y.device) if steps.positions is None else steps.positions
    cells = math.prod(steps.padded)

    def scatter(part: torch.Tensor) -> torch.Tensor:
        """``(b, c, prod(k) * L)`` -> the ``(b, c, *padded)`` sums."""
        rows = part.shape[0] * part.shape[1]
        buf = torch.zeros((rows, cells), dtype=y.dtype, device=y.device)
        buf = buf.scatter_add_(1, index.expand(rows, -1), part.reshape(rows, index.shape[-1]))
        return buf.view(*part.shape[:2], *steps.padded)

    src = y.view(*steps.out[:2], index.shape[-1])
    if steps.crop is None:
        return scatter(src)
    where = (slice(None), slice(None), *steps.crop)
    if not steps.chunks:
        return scatter(src)[where].clone(memory_format=torch.contiguous_format)
    out = torch.empty(steps.out, dtype=y.dtype, device=y.device)
    for chunk in steps.chunks:
        out[chunk] = scatter(src[chunk])[where]
    return out


def _index(padded: tuple[int, ...], geom: Geometry, device: torch.device) -> torch.Tensor:
    """Where fold's scatter sends each column: ``(1, prod(k) * L)`` flat positions of the
    padded output (the unfold of their arange)."""
    if torch.compiler.is_compiling():  # made in the graph (an exported program cannot
        return _positions(padded, geom, device)  # save grad-mode switches)
    with torch.inference_mode(False), torch.no_grad():  # cached: must serve every mode
        return _positions(padded, geom, device)


def _positions(padded: tuple[int, ...], geom: Geometry, device: torch.device) -> torch.Tensor:
    positions = torch.arange(math.prod(padded), device=device).view(1, 1, *padded)
    return _unfold_forward(positions, geom.unpadded()).view(1, -1)


def _scatter_pays(
    shape: torch.Size, dtype: torch.dtype, contiguous: bool, blocks: tuple[int, ...],
    strided: bool, acc: torch.dtype, kernel: int, rule: _plan.Policy,
) -> bool:  # fmt: skip
    """Whether fold takes one ``scatter_add_`` pass: only where scatter keeps the
    summation order, and either when its int64 index (8 bytes per column, shared by all
    planes) and the input are small (then one op beats a strided add per kernel
    offset), or for rows shorter than the policy's ``short_row`` (``short_strided_row``
    with a stride: phases then also need a buffer and a strided write each) when the
    index is at most ``index_share`` of the input."""
    if not (rule.ordered_scatter and contiguous and dtype == acc != torch.complex32):
        return False
    item = dtype.itemsize
    if 8 * kernel * shape[2] <= rule.small_index and math.prod(shape) * item <= rule.small_index:
        return True  # a small fold (fixed-cost bound); the index has prod(k) * L entries
    planes = shape[0] * shape[1] // kernel
    short = rule.short_strided_row if strided else rule.short_row
    return blocks[-1] < short and rule.index_share * planes * item >= 8


def _fold_forward(y: torch.Tensor, spatial: tuple[int, ...], geom: Geometry) -> torch.Tensor:
    """``(B, C*prod(k), L)`` -> ``(B, C, *spatial)``.

    Outputs are split into stride phases (``q mod s``); each phase is accumulated in a
    contiguous buffer (vectorised adds) and then written to its strided slice once.
    Every output element receives its blocks in row-major kernel-offset order, starting
    from zero, as torch's col2im does, so results are bitwise equal to torch's.
    Padding is never materialised: out-of-range blocks are clipped.
    """
    if y.dtype in _NO_ADD:
        return _fold_forward(y.to(torch.int64), spatial, geom).to(y.dtype)
    if _legacy_batched(y):
        return _fold_batched(y, spatial, geom)
    rule = _plan.policy(y.device)
    steps = _fold_steps(y.shape, y.dtype, y.device, rule, y.is_contiguous(), spatial, geom)
    if steps.torch_args is not None:
        return steps.torch_args.fold(y, spatial)
    if steps.scatter:
        return _fold_scatter(y, steps, geom)
    out = (torch.empty if steps.covered else torch.zeros)(
        steps.out, dtype=steps.acc, device=y.device
    )
    cols = y.reshape(steps.cols)
    if steps.disjoint:  # each element gets at most one term, 0 + x: one strided add
        _blocks(out, geom, steps.cols[2 + len(spatial) :]).add_(cols)
    # views by precomputed strides (~1 us) rather than by indexing (~4 us each)
    strided = cols.is_contiguous() and not torch.compiler.is_compiling()
    base = cols.storage_offset() if strided else 0
    for counts, adds, where in steps.phases:
        buf = out if counts is None else out.new_zeros((*steps.out[:2], *counts))
        for dst, src, (d_size, d_stride, d_at), (s_size, s_stride, s_at) in adds:
            if strided:
                term = cols.as_strided(s_size, s_stride, base + s_at)
                buf.as_strided(d_size, d_stride, d_at).add_(term)
            else:
                buf[dst].add_(cols[src])
        if where is not None:  # the phase's slice of out
            if strided:
                out.as_strided(*where[1]).copy_(buf)
            else:
                out[where[0]] = buf
    return out if steps.acc == y.dtype else out.to(y.dtype)


def _owning(t: torch.Tensor) -> torch.Tensor:
    """``t`` as a tensor that owns its view metadata (no copy).

    Autograd forbids in-place ops on a view created inside a custom Function (they would
    bypass its backward), so an output that is a reshape of a buffer made in ``forward``
    would break ``relu_``, ``+=`` and ``ReLU(inplace=True)``. ``detach()`` gives the same
    storage as a plain tensor (~1 us). Only for buffers ``forward`` allocated itself: an
    alias of an input would let in-place ops on the output silently change that input.
    Under legacy vmap (:func:`_legacy_batched`), ``torch.jit.trace`` and ``torch.export``
    ``t`` is returned as is.
    """
    if _legacy_batched(t) or _records_aten_ops():
        return t  # legacy vmap has no detach; a traced detach would cut the traced graph
    return t.detach()


def _records_aten_ops() -> bool:
    """Under ``torch.jit.trace`` or ``torch.export``: a call is recorded as the aten ops of
    the forward, which autograd differentiates in the traced program (a Function would be
    a PythonOp that cannot be saved, or inlined with its ``detach``)."""
    return torch._C._get_tracing_state() is not None or torch.compiler.is_exporting()


def _move_vmap_dim(x: torch.Tensor, bdim: int) -> tuple[torch.Tensor, int, int]:
    x = x.movedim(bdim, 0)
    v, b = x.shape[:2]
    return x.reshape(v * b, *x.shape[2:]), v, b


class _UnfoldCore(torch.autograd.Function):
    """im2col on a batched ``(B, C, *S)`` tensor; backward is fold. Traceable by dynamo."""

    @staticmethod
    def forward(x: torch.Tensor, geom: Geometry, rows_first: bool) -> torch.Tensor:  # type: ignore[override]
        return _owning(_unfold_forward(x, geom, rows_first))

    @staticmethod
    def setup_context(ctx, inputs, output):  # type: ignore[no-untyped-def]
        x, geom, rows_first = inputs
        ctx.geom, ctx.spatial, ctx.rows_first = geom, tuple(x.shape[2:]), rows_first

    @staticmethod
    def backward(ctx, grad):  # type: ignore[no-untyped-def]
        return _fold(grad, ctx.spatial, ctx.geom), None, None


class _FoldCore(torch.autograd.Function):
    """col2im onto a batched ``(B, C, *spatial)`` tensor; backward is unfold."""

    @staticmethod
    def forward(y: torch.Tensor, spatial: tuple[int, ...], geom: Geometry) -> torch.Tensor:  # type: ignore[override]
        return _owning(_fold_forward(y, spatial, geom))

    @staticmethod
    def setup_context(ctx, inputs, output):  # type: ignore[no-untyped-def]
        _, spatial, geom = inputs
        ctx.geom = geom
        ctx.spatial = spatial

    @staticmethod
    def backward(ctx, grad):  # type: ignore[no-untyped-def]
        return _unfold(grad, ctx.geom), None, None


class _Unfold(_UnfoldCore):
    """Adds forward-mode AD (unfold is linear) and a vmap rule (merge into the batch)."""

    @staticmethod
    def jvp(ctx, tangent, *_):  # type: ignore[no-untyped-def]
        return _unfold(tangent, ctx.geom, ctx.rows_first)

    @staticmethod
    def vmap(info, in_dims, x, geom, rows_first):  # type: ignore[no-untyped-def]
        flat, v, b = _move_vmap_dim(x, in_dims[0])
        out = _unfold(flat, geom, rows_first)
        return out.view(v, b, *out.shape[1:]), 0


class _Fold(_FoldCore):
    @staticmethod
    def jvp(ctx, tangent, *_):  # type: ignore[no-untyped-def]
        return _fold(tangent, ctx.spatial, ctx.geom)

    @staticmethod
    def vmap(info, in_dims, y, spatial, geom):  # type: ignore[no-untyped-def]
        flat, v, b = _move_vmap_dim(y, in_dims[0])
        out = _fold(flat, spatial, geom)
        return out.view(v, b, *out.shape[1:]), 0


_Function = type[torch.autograd.Function]


def _old_style(cls: _Function) -> _Function:
    """``cls`` (new-style: ``forward`` + ``setup_context``) as an old-style Function,
    ``forward(ctx, *args)``: same forward, backward and jvp. ``Function.apply`` binds a
    new-style forward's signature on every call, which costs ~5x a small unfold; an
    old-style one skips that, but functorch transforms refuse it."""

    def forward(ctx, *args):  # type: ignore[no-untyped-def]
        out = cls.forward(*args)
        cls.setup_context(ctx, args, out)
        return out

    body = {"forward": staticmethod(forward), "backward": staticmethod(cls.backward)}
    if "jvp" in vars(cls):
        body["jvp"] = staticmethod(cls.jvp)
    return type(cls.__name__ + "Eager", (torch.autograd.Function,), body)


_transforms_active = getattr(torch._C, "_are_functorch_transforms_active", None)


def functorch_active() -> bool:
    """A functorch transform (``torch.func.vmap``, ``grad``, ...) is active; an unknown
    state counts as one. The same check torch's own ``Function.apply`` makes."""
    return _transforms_active is None or _transforms_active()


def _traced() -> bool:
    """Under torch.compile, torch.jit.trace or a functorch transform."""
    return (
        torch.compiler.is_compiling()
        or torch._C._get_tracing_state() is not None
        or functorch_active()
    )


def _dual() -> bool:
    """Forward-mode AD is active (tangents exist only inside ``forward_ad.dual_level()``;
    an unknown level counts as active)."""
    return getattr(torch.autograd.forward_ad, "_current_level", 0) >= 0


def _records(args: tuple[Any, ...]) -> bool:
    """Grad mode is on and a tensor argument requires grad."""
    return torch.is_grad_enabled() and any(
        isinstance(a, torch.Tensor) and a.requires_grad for a in args
    )


def _graph_needed(args: tuple[Any, ...]) -> bool:
    """Whether a call must record autograd state (backward or forward mode)."""
    return _dual() or _records(args)


def eager_graph(*args: Any) -> bool:
    """Whether a call records an eager autograd graph and nothing else (no compile, no
    functorch transform, no forward-mode AD), so an old-style Function without jvp or
    vmap rules may serve it."""
    return not _traced() and not _dual() and _records(args)


def plain_call(*args: Any) -> bool:
    """Whether a call records nothing (no autograd graph, functorch transform or trace), so
    its results may be written into preallocated buffers."""
    return not _traced() and not _graph_needed(args)


class Variants(NamedTuple):
    """One op as three Functions with the same forward and backward (so results agree
    bitwise): ``core`` for torch.compile (dynamo cannot trace a custom jvp or vmap),
    ``full`` (jvp, vmap) under functorch transforms, ``eager`` (old-style, jvp) else;
    where no gradient can be asked for, the forward alone (a Function's bookkeeping
    costs more than a small unfold)."""

    core: _Function
    full: _Function
    eager: _Function

    def apply(self, *args: Any) -> torch.Tensor:
        if _records_aten_ops():
            return self.core.forward(*args)  # type: ignore[no-any-return]
        if torch.compiler.is_compiling():
            fn = self.core
        elif functorch_active():
            fn = self.full
        elif not _graph_needed(args):
            return self.core.forward(*args)  # type: ignore[no-any-return]
        else:
            fn = self.eager
        return fn.apply(*args)  # type: ignore[no-any-return]

    @classmethod
    def of(cls, full: _Function) -> Variants:
        return cls(full.__mro__[1], full, _old_style(full))


_UNFOLD = Variants.of(_Unfold)
_FOLD = Variants.of(_Fold)


def _unfold(x: torch.Tensor, geom: Geometry, rows_first: bool = False) -> torch.Tensor:
    return _UNFOLD.apply(x, geom, rows_first)


def _fold(y: torch.Tensor, spatial: tuple[int, ...], geom: Geometry) -> torch.Tensor:
    return _FOLD.apply(y, spatial, geom)


def _pad_index(size: int, lo: int, hi: int, mode: str, device: torch.device) -> torch.Tensor:
    idx = torch.arange(-lo, size + hi, device=device)
    if mode == "reflect":
        return (size - 1) - ((size - 1) - idx.abs()).abs()
    if mode == "replicate":
        return idx.clamp(0, size - 1)
    return idx.remainder(size)  # circular


def autocasting(device: str) -> bool:
    """Autocast is on for the device type ``device`` (which may have no autocast: meta)."""
    return torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device)


def pad(input: torch.Tensor, pads: Pads, mode: str) -> torch.Tensor:
    """Pad the last ``len(pads)`` dims of ``input`` by ``(lo, hi)`` pairs, for any N.

    ``mode`` is "zeros", "reflect", "replicate" or "circular" (torch's conv meaning).
    Pure data movement (gathers), differentiable.
    """
    n = len(pads)
    flat = [p for pair in reversed(pads) for p in pair]
    if mode == "zeros":
        return F.pad(input, flat)
    if n <= 3 and input.dim() == n + 2 and input.dtype not in _NO_PAD_KERNEL:
        # torch's own kernel: faster than gathers. Autocast would run reflect and
        # replicate pads in float32; padding is data movement, so keep the dtype
        device = input.device.type
        if autocasting(device):
            with torch.autocast(device, enabled=False):
                return F.pad(input, flat, mode=mode)
        return F.pad(input, flat, mode=mode)
    for i, (lo, hi) in enumerate(pads):
        if lo or hi:
            dim = input.dim() - n + i
            input = input.index_select(
                dim, _pad_index(input.shape[dim], lo, hi, mode, input.device)
            )
    return input


def unfold(
    input: torch.Tensor,
    kernel_size: IntOrTuple,
    dilation: IntOrTuple = 1,
    padding: PaddingArg = 0,
    stride: IntOrTuple = 1,
    padding_mode: str = "zeros",
) -> torch.Tensor:
    """Extract sliding local blocks (im2col) from an N-d input.

    Args:
        input: ``(B, C, *S)`` or unbatched ``(C, *S)``, any dtype.
        kernel_size: block size, int or N-tuple.
        dilation: spacing of block elements, int or N-tuple.
        padding: int, N-tuple, per-side pairs ``((lo, hi), ...)``, "valid" or "same".
        stride: step between blocks, int or N-tuple.
        padding_mode: "zeros", "reflect", "replicate" or "circular".

    Returns:
        ``(B, C * prod(k), L)`` (or ``(C * prod(k), L)``), row ``c * prod(k) + flat(offset)``,
        column the row-major block index; equal to ``torch.nn.functional.unfold`` for N = 2.

    >>> x = torch.arange(16.).view(1, 1, 16)
    >>> unfold(x, 3, stride=5).shape
    torch.Size([1, 3, 3])
    """
    x = _args.check_tensor(input)
    plan = _plan.unfold_plan(
        x.shape, x.dtype, x.device, kernel_size, dilation, padding, stride, padding_mode
    )
    x = x if plan.batched else x.unsqueeze(0)
    if plan.mode != "zeros":
        x = pad(x, plan.mode_padding, plan.mode)
    args = plan.torch_args
    out = _unfold(x, plan.geometry) if args is None else args.unfold(x)
    return out if plan.batched else out.squeeze(0)


def fold(
    input: torch.Tensor,
    output_size: IntOrTuple,
    kernel_size: IntOrTuple,
    dilation: IntOrTuple = 1,
    padding: PaddingArg = 0,
    stride: IntOrTuple = 1,
    reduction: str = "sum",
) -> torch.Tensor:
    """Combine sliding local blocks into an N-d tensor (col2im), the adjoint of ``unfold``.

    Overlapping values are summed in a fixed order (deterministic); float16 and bfloat16
    are accumulated in float32. N is the length of any tuple argument; with ints only,
    N = 2 as in ``torch.nn.functional.fold``.

    Args:
        input: ``(B, C * prod(k), L)`` or unbatched ``(C * prod(k), L)``, any dtype.
        output_size: spatial size of the result, int or N-tuple.
        kernel_size, dilation, padding, stride: as for ``unfold``.
        reduction: "sum", or "mean" to divide each element by the number of blocks
            covering it (0 where none does; floating and complex dtypes only).

    Returns:
        ``(B, C, *output_size)`` (or ``(C, *output_size)``).

    >>> x = torch.ones(1, 1, 10)
    >>> fold(unfold(x, 3), (10,), (3,)).flatten().tolist()
    [1.0, 2.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 2.0, 1.0]
    """
    y = _args.check_tensor(input)
    plan = _plan.fold_plan(
        y.shape, y.dtype, y.device, output_size, kernel_size, dilation, padding, stride, reduction
    )
    y = y if plan.batched else y.unsqueeze(0)
    geom, spatial = plan.geometry, plan.output_size
    if plan.reduction == "sum" and plan.torch_args is not None:
        out = plan.torch_args.fold(y, spatial)
    elif plan.reduction == "sum":
        out = _fold(y, spatial, geom)
    else:
        # Summing c copies of x is exact in the wider type, so the mean of identical
        # values is x exactly (float64 inputs have no wider type: round-off there).
        acc = _WIDER.get(y.dtype, y.dtype)
        ones = torch.ones(
            (1, math.prod(geom.kernel), y.shape[2]), dtype=_REAL.get(acc, acc), device=y.device
        )
        counts = _fold_forward(ones, spatial, geom)
        out = (_fold(y.to(acc), spatial, geom) / counts.clamp(min=1)).to(y.dtype)
    return out if plan.batched else out.squeeze(0)


def _dilate(x: torch.Tensor, stride: tuple[int, ...]) -> torch.Tensor:
    """Insert ``s - 1`` zeros between neighbours along each spatial dim (differentiable)."""
    n = len(stride)
    for i, s in enumerate(stride):
        if s > 1:
            dim = x.dim() - n + i
            size = x.shape[dim]
            x = x.unsqueeze(dim + 1)
            zeros = x.new_zeros((*x.shape[: dim + 1], s - 1, *x.shape[dim + 2 :]))
            x = torch.cat([x, zeros], dim + 1).flatten(dim, dim + 1)
            x = x.narrow(dim, 0, (size - 1) * s + 1)
    return x


def unfold_transpose(
    input: torch.Tensor,
    kernel_size: IntOrTuple,
    stride: IntOrTuple = 1,
    padding: IntOrTuple = 0,
    output_padding: IntOrTuple = 0,
    dilation: IntOrTuple = 1,
) -> torch.Tensor:
    """The im2col of a transposed convolution.

    For weight ``W`` of shape ``(C_in, C_out, *k)``,
    ``conv_transpose(x, W) == (W.transpose(0, 1).flatten(1) @ unfold_transpose(x))``
    reshaped to ``(B, C_out, *out)``, ``out_i = (S_i-1) s_i - 2 p_i + d_i (k_i-1) + op_i + 1``.

    Args:
        input: ``(B, C_in, *S)`` or unbatched ``(C_in, *S)``, any dtype.
        kernel_size, stride, padding, output_padding, dilation: as for
            ``torch.nn.ConvTransposeNd``, ints or N-tuples.

    Returns:
        ``(B, C_in * prod(k), prod(out))`` (or unbatched).

    >>> unfold_transpose(torch.ones(1, 2, 4), 3, stride=2).shape
    torch.Size([1, 6, 9])
    """
    x = _args.check_tensor(input)
    plan = _plan.unfold_transpose_plan(
        x.shape, x.dtype, x.device, kernel_size, stride, padding, output_padding, dilation
    )
    x = x if plan.batched else x.unsqueeze(0)
    if x.shape[0] == 0 or 0 in plan.blocks:  # an empty result, as torch's, in the graph
        rows = x.shape[1] * math.prod(plan.geometry.kernel)
        out = x[:0].reshape(x.shape[0], rows, math.prod(plan.blocks)).clone()
        return out if plan.batched else out.squeeze(0)
    # Zero-insert by the stride, pad by d (k-1) - p (+ output_padding on the high side;
    # negative values crop), then a stride-1 im2col with the kernel flipped.
    out = _unfold(F.pad(_dilate(x, plan.stride), plan.pads), plan.geometry)
    return out if plan.batched else out.squeeze(0)


def sliding_window_view(
    input: torch.Tensor,
    kernel_size: IntOrTuple,
    dilation: IntOrTuple = 1,
    stride: IntOrTuple = 1,
) -> torch.Tensor:
    """Zero-copy view of all sliding blocks, window dims last (as numpy's).

    Args:
        input: ``(B, C, *S)`` or unbatched ``(C, *S)``.
        kernel_size, dilation, stride: ints or N-tuples.

    Returns:
        A view ``(B, C, *L, *k)`` (or ``(C, *L, *k)``) sharing ``input``'s storage.

    >>> sliding_window_view(torch.arange(5.).view(1, 1, 5), 2).shape
    torch.Size([1, 1, 4, 2])
    """
    x = _args.check_tensor(input)
    plan = _plan.window_plan(x.shape, kernel_size, dilation, stride)
    view = _window_view(x if plan.batched else x.unsqueeze(0), plan.geometry)
    return view if plan.batched else view.squeeze(0)
