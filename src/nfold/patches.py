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

import functools
import itertools
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from . import _args, _plan
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


def _pad_chunks(x: torch.Tensor, pads: Pads) -> list[tuple[slice, slice]]:
    """``(batch, channel)`` ranges of ``x`` whose zero-padded copy fits the device policy's
    ``pad_chunk_bytes``, so unfold's peak memory is its output plus that, not plus a
    padded copy of the whole input. ``[]``: all of ``x`` at once."""
    batch, channels = x.shape[:2]
    if not _args.has_padding(pads):
        return []
    budget = _plan.policy(x.device).pad_chunk_bytes
    plane = x.element_size() * math.prod(_args.padded_size(x.shape[2:], pads))
    if plane * channels * batch <= budget:
        return []
    if plane * channels <= budget:
        step = max(1, budget // max(plane * channels, 1))
        return [(slice(b, b + step), slice(None)) for b in range(0, batch, step)]
    step = max(1, budget // plane)
    channel_steps = range(0, channels, step)
    return [(slice(b, b + 1), slice(c, c + step)) for b in range(batch) for c in channel_steps]


def _unfold_forward(x: torch.Tensor, geom: Geometry, rows_first: bool = False) -> torch.Tensor:
    """``(B, C, *S)`` -> ``(B, C * prod(k), L)``; with ``rows_first`` the result is laid out
    in memory as ``(C * prod(k), B, L)`` (same values, a transposed view), so that the
    batch can be merged into the columns of one GEMM without a copy."""
    kernel, n = geom.kernel, len(geom.kernel)
    batch, channels = x.shape[:2]
    outs = geom.blocks(tuple(x.shape[2:]))
    rows, length = channels * math.prod(kernel), math.prod(outs)
    flat_pads = [p for pair in reversed(geom.padding) for p in pair]
    chunks = _pad_chunks(x, geom.padding)
    if not (chunks or geom.flip or rows_first):  # (pad and) one strided copy
        part = F.pad(x, flat_pads) if geom.padded else x
        blocks = _blocks(part, geom, outs)
        return blocks.clone(memory_format=torch.contiguous_format).view(batch, rows, length)
    if rows_first:
        shape = (channels, *kernel, batch, *outs)
        cols = torch.empty(shape, dtype=x.dtype, device=x.device).movedim(1 + n, 0)
    else:
        cols = torch.empty((batch, channels, *kernel, *outs), dtype=x.dtype, device=x.device)
    for chunk in chunks or [(slice(None), slice(None))]:
        part = F.pad(x[chunk], flat_pads) if geom.padded else x[chunk]
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
    return cols.view(batch, rows, length)


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


def _fold_scatter(y: torch.Tensor, spatial: tuple[int, ...], geom: Geometry) -> torch.Tensor:
    """fold as ``scatter_add_`` passes into a zero-padded buffer, cropped into the output,
    a chunk of planes at a time (so the padded copy never exceeds the policy's ``pad_chunk_bytes``).

    On the CPU scatter_add_ walks each row's index in order (on GPUs it uses atomics), so
    every output element still receives its blocks in row-major kernel-offset order,
    starting from zero: bitwise equal to the phase path.
    """
    pads = geom.padding
    padded = _args.padded_size(spatial, pads)
    index = _scatter_index(padded, geom, y.device)
    batch, channels = y.shape[0], y.shape[1] // math.prod(geom.kernel)
    rows = batch * channels
    src = y.view(rows, index.numel())

    def scatter(part: torch.Tensor) -> torch.Tensor:
        buf = torch.zeros((part.shape[0], math.prod(padded)), dtype=y.dtype, device=y.device)
        return buf.scatter_add_(1, index.view(1, -1).expand(part.shape[0], -1), part)

    if not geom.padded:
        return scatter(src).view(batch, channels, *spatial)
    out = torch.empty((rows, *spatial), dtype=y.dtype, device=y.device)
    crop: tuple[Any, ...] = tuple(
        slice(lo, lo + s) for s, (lo, _) in zip(spatial, pads, strict=True)
    )
    budget = _plan.policy(y.device).pad_chunk_bytes
    step = max(1, budget // (y.element_size() * math.prod(padded)))
    for r in range(0, rows, step):
        out[r : r + step] = scatter(src[r : r + step]).view(-1, *padded)[(slice(None), *crop)]
    return out.view(batch, channels, *spatial)


def _index(padded: tuple[int, ...], geom: Geometry, device: torch.device) -> torch.Tensor:
    """Where fold's scatter sends each column: ``(1, prod(k), L)`` flat positions of the
    padded output (the unfold of their arange)."""
    with torch.inference_mode(False), torch.no_grad():  # cached: must serve every mode
        positions = torch.arange(math.prod(padded), device=device).view(1, 1, *padded)
        return _unfold_forward(positions, geom.unpadded())


_cached_index = functools.lru_cache(maxsize=64)(_index)


def _scatter_index(padded: tuple[int, ...], geom: Geometry, device: torch.device) -> torch.Tensor:
    """:func:`_index`, cached per geometry when small (a small fold is then one
    ``scatter_add_``); traced, not cached, under torch.compile."""
    columns = math.prod(geom.kernel) * math.prod(geom.unpadded().blocks(padded))
    if 8 * columns <= _plan.policy(device).small_index and not torch.compiler.is_compiling():
        return _cached_index(padded, geom, device)
    return _index(padded, geom, device)


def _scatter_pays(y: torch.Tensor, blocks: tuple[int, ...], acc: torch.dtype, kernel: int) -> bool:
    """Whether fold takes one ``scatter_add_`` pass: only where scatter keeps the
    summation order, and either when its int64 index (8 bytes per column, shared by all
    planes) and the input are small (then one op beats a strided add per kernel
    offset), or for rows
    shorter than the policy's ``short_row`` (strided adds then cost more per row than a
    scatter per element: 1.5-2.2x for 6 and 8 blocks on CPU) when the index is at most
    ``index_share`` of the input."""
    rule = _plan.policy(y.device)
    if not (rule.ordered_scatter and y.is_contiguous() and y.dtype == acc != torch.complex32):
        return False
    if (
        8 * kernel * y.shape[2] <= rule.small_index
        and y.numel() * y.element_size() <= rule.small_index
    ):
        return True  # a small fold (fixed-cost bound); the index has prod(k) * L entries
    planes = y.shape[0] * y.shape[1] // kernel
    return blocks[-1] < rule.short_row and rule.index_share * planes * y.element_size() >= 8


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
    kernel = geom.kernel
    blocks = geom.blocks(spatial)
    batch = y.shape[0]
    channels = y.shape[1] // math.prod(kernel)
    acc = torch.float32 if y.dtype in _LOW_PRECISION else y.dtype
    if _scatter_pays(y, blocks, acc, math.prod(kernel)):
        return _fold_scatter(y, spatial, geom)
    out = torch.zeros((batch, channels, *spatial), dtype=acc, device=y.device)
    cols = y.reshape(batch, channels, *kernel, *blocks)
    if geom.disjoint:  # each element gets at most one term, 0 + x: one strided add
        _blocks(out, geom, blocks).add_(cols)
        return out if acc == y.dtype else out.to(y.dtype)
    plans = [
        _phase_plan(size, k, d, lo, s, nb, geom.flip)
        for size, k, d, (lo, _), s, nb in zip(
            spatial, kernel, geom.dilation, geom.padding, geom.stride, blocks, strict=True
        )
    ]
    strided = any(s > 1 for s in geom.stride)
    for phase in itertools.product(*(sorted(plan.items()) for plan in plans)):
        counts = [count for _, (count, _) in phase]
        buf = out.new_zeros((batch, channels, *counts)) if strided else out
        for offset in itertools.product(*(terms for _, (_, terms) in phase)):
            src: list[Any] = [slice(None), slice(None), *(j for j, *_ in offset)]
            dst: list[Any] = [slice(None), slice(None)]
            for _, first, last, t in offset:
                src.append(slice(first, last + 1))
                dst.append(slice(first + t, last + t + 1))
            buf[tuple(dst)].add_(cols[tuple(src)])
        if strided:
            phase_slice = (slice(r, None, s) for (r, _), s in zip(phase, geom.stride, strict=True))
            out[(slice(None), slice(None), *phase_slice)] = buf
    return out if acc == y.dtype else out.to(y.dtype)


def _owning(t: torch.Tensor) -> torch.Tensor:
    """``t`` as a tensor that owns its view metadata (no copy).

    Autograd forbids in-place ops on a view created inside a custom Function (they would
    bypass its backward), so an output that is a reshape of a buffer made in ``forward``
    would break ``relu_``, ``+=`` and ``ReLU(inplace=True)``. ``detach()`` gives the same
    storage as a plain tensor (~1 us). Only for buffers ``forward`` allocated itself: an
    alias of an input would let in-place ops on the output silently change that input.
    """
    return t.detach()


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


def _graph_needed(args: tuple[Any, ...]) -> bool:
    """Whether a call must record autograd state: a tensor argument requires grad (and
    grad mode is on), or forward-mode AD is active (tangents exist only inside
    ``forward_ad.dual_level()``; an unknown level counts as active)."""
    if getattr(torch.autograd.forward_ad, "_current_level", 0) >= 0:
        return True
    return torch.is_grad_enabled() and any(
        isinstance(a, torch.Tensor) and a.requires_grad for a in args
    )


def plain_call(*args: Any) -> bool:
    """Whether a call records nothing (no autograd graph, functorch transform or trace), so
    its results may be written into preallocated buffers."""
    if torch.compiler.is_compiling() or _transforms_active is None or _transforms_active():
        return False
    return not _graph_needed(args)


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
        if torch.compiler.is_compiling():
            fn = self.core
        elif _transforms_active is None or _transforms_active():
            fn = self.full  # the same check torch's own Function.apply makes
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
        return F.pad(input, flat, mode=mode)  # torch's own kernel: faster than gathers
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
    out = _unfold(x, plan.geometry)
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
    if plan.reduction == "sum":
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
