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

import inspect
import itertools
from collections.abc import Sequence
from typing import Any, TypeVar

import torch
import torch.nn.functional as F

from . import _args
from ._args import IntOrTuple, PaddingArg, Pads

# (kernel_size, dilation, per-side zero padding, stride, flip)
Geometry = tuple[tuple[int, ...], tuple[int, ...], Pads, tuple[int, ...], bool]

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


def _window_view(x: torch.Tensor, geom: Geometry) -> torch.Tensor:
    """``(B, C, *P)`` (already padded) -> view ``(B, C, *L, *k)``."""
    kernel, dilation, _, stride, _ = geom
    n = len(kernel)
    for i, (k, d, s) in enumerate(zip(kernel, dilation, stride, strict=True)):
        x = x.unfold(2 + i, d * (k - 1) + 1, s)
    if any(d > 1 for d in dilation):
        index: tuple[Any, ...] = (..., *(slice(None, None, d) for d in dilation))
        x = x[index]
    assert x.dim() == 2 + 2 * n
    return x


def _swap_grid_and_kernel(t: torch.Tensor, n: int) -> torch.Tensor:
    """``(B, C, *L, *k)`` <-> ``(B, C, *k, *L)`` (a view)."""
    return t.permute(0, 1, *range(2 + n, 2 + 2 * n), *range(2, 2 + n))


# Zero padding is applied to at most this many bytes of input at a time, so unfold's
# peak memory is its output plus this, not plus a padded copy of the whole input.
_PAD_CHUNK_BYTES = 1 << 20


def _pad_chunks(x: torch.Tensor, pads: Pads) -> list[tuple[slice, slice]]:
    """``(batch, channel)`` ranges of ``x`` whose zero-padded copy fits the chunk budget."""
    batch, channels = x.shape[:2]
    if not _args.has_padding(pads):
        return [(slice(None), slice(None))]
    plane = x.element_size() * _args.prod(_args.padded_size(x.shape[2:], pads))
    if plane * channels <= _PAD_CHUNK_BYTES:
        step = max(1, _PAD_CHUNK_BYTES // max(plane * channels, 1))
        return [(slice(b, b + step), slice(None)) for b in range(0, batch, step)]
    step = max(1, _PAD_CHUNK_BYTES // plane)
    channel_steps = range(0, channels, step)
    return [(slice(b, b + 1), slice(c, c + step)) for b in range(batch) for c in channel_steps]


def _unfold_forward(x: torch.Tensor, geom: Geometry, rows_first: bool = False) -> torch.Tensor:
    """``(B, C, *S)`` -> ``(B, C * prod(k), L)``; with ``rows_first`` the result is laid out
    in memory as ``(C * prod(k), B, L)`` (same values, a transposed view), so that the
    batch can be merged into the columns of one GEMM without a copy."""
    kernel, dilation, pads, stride, flip = geom
    n = len(kernel)
    batch, channels = x.shape[:2]
    outs = _args.output_size(tuple(x.shape[2:]), kernel, dilation, pads, stride)
    if rows_first:
        shape = (channels, *kernel, batch, *outs)
        cols = torch.empty(shape, dtype=x.dtype, device=x.device).movedim(1 + n, 0)
    else:
        cols = torch.empty((batch, channels, *kernel, *outs), dtype=x.dtype, device=x.device)
    flat_pads = [p for pair in reversed(pads) for p in pair]
    for chunk in _pad_chunks(x, pads):
        part = F.pad(x[chunk], flat_pads) if any(flat_pads) else x[chunk]
        view = _window_view(part, geom)
        blocks = _swap_grid_and_kernel(view, n)  # (b, c, *k, *L)
        dst = cols[chunk]
        if flip:  # torch has no negative strides: copy one kernel offset at a time
            for offset in itertools.product(*(range(k) for k in kernel)):
                flipped = tuple(k - 1 - j for k, j in zip(kernel, offset, strict=True))
                to: tuple[Any, ...] = (slice(None), slice(None), *flipped)
                src: tuple[Any, ...] = (slice(None), slice(None), *offset)
                dst[to].copy_(blocks[src])
        else:
            dst.copy_(blocks)
    return cols.view(batch, channels * _args.prod(kernel), _args.prod(outs))


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


# Below this many blocks along the last dim, fold's strided adds cost more per row than
# a scatter_add_ pass costs per element (measured: 1.5-2.2x faster for 6 and 8 blocks).
# scatter_add_ is used only when its int64 index (8 bytes per column, shared by all
# planes) is at most _INDEX_SHARE of the input, so it never adds much memory.
_SHORT_ROW = 16
_INDEX_SHARE = 1 / 8


def _fold_scatter(y: torch.Tensor, spatial: tuple[int, ...], geom: Geometry) -> torch.Tensor:
    """fold as ``scatter_add_`` passes into a zero-padded buffer, cropped into the output,
    a chunk of planes at a time (so the padded copy never exceeds _PAD_CHUNK_BYTES).

    On the CPU scatter_add_ walks each row's index in order (on GPUs it uses atomics), so
    every output element still receives its blocks in row-major kernel-offset order,
    starting from zero: bitwise equal to the phase path.
    """
    kernel, dilation, pads, stride, flip = geom
    padded = _args.padded_size(spatial, pads)
    positions = torch.arange(_args.prod(padded), device=y.device).view(1, 1, *padded)
    index = _unfold_forward(positions, (kernel, dilation, ((0, 0),) * len(kernel), stride, flip))
    batch, channels = y.shape[0], y.shape[1] // _args.prod(kernel)
    rows = batch * channels
    src = y.view(rows, index.numel())

    def scatter(part: torch.Tensor) -> torch.Tensor:
        buf = torch.zeros((part.shape[0], _args.prod(padded)), dtype=y.dtype, device=y.device)
        return buf.scatter_add_(1, index.view(1, -1).expand(part.shape[0], -1), part)

    if not _args.has_padding(pads):
        return scatter(src).view(batch, channels, *spatial)
    out = torch.empty((rows, *spatial), dtype=y.dtype, device=y.device)
    crop: tuple[Any, ...] = tuple(
        slice(lo, lo + s) for s, (lo, _) in zip(spatial, pads, strict=True)
    )
    step = max(1, _PAD_CHUNK_BYTES // (y.element_size() * _args.prod(padded)))
    for r in range(0, rows, step):
        out[r : r + step] = scatter(src[r : r + step]).view(-1, *padded)[(slice(None), *crop)]
    return out.view(batch, channels, *spatial)


def _disjoint(geom: Geometry) -> bool:
    """Blocks that never overlap (stride >= span in every dim: patches), unpadded, unflipped."""
    kernel, dilation, pads, stride, flip = geom
    spans = _args.span(kernel, dilation)
    fits = all(s >= span for s, span in zip(stride, spans, strict=True))
    return fits and not flip and not _args.has_padding(pads)


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
    kernel, dilation, pads, stride, flip = geom
    blocks = _args.output_size(spatial, kernel, dilation, pads, stride)
    batch = y.shape[0]
    channels = y.shape[1] // _args.prod(kernel)
    acc = torch.float32 if y.dtype in _LOW_PRECISION else y.dtype
    if (
        blocks[-1] < _SHORT_ROW
        and y.device.type == "cpu"
        and y.is_contiguous()
        and y.dtype == acc != torch.complex32
        and _INDEX_SHARE * batch * channels * y.element_size() >= 8
    ):
        return _fold_scatter(y, spatial, geom)
    out = torch.zeros((batch, channels, *spatial), dtype=acc, device=y.device)
    cols = y.reshape(batch, channels, *kernel, *blocks)
    if _disjoint(geom):  # each element gets at most one term, 0 + x: one strided add
        _window_view(out, geom).add_(_swap_grid_and_kernel(cols, len(kernel)))
        return out if acc == y.dtype else out.to(y.dtype)
    plans = [
        _phase_plan(size, k, d, lo, s, nb, flip)
        for size, k, d, (lo, _), s, nb in zip(
            spatial, kernel, dilation, pads, stride, blocks, strict=True
        )
    ]
    strided = any(s > 1 for s in stride)
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
            phase_slice = (slice(r, None, s) for (r, _), s in zip(phase, stride, strict=True))
            out[(slice(None), slice(None), *phase_slice)] = buf
    return out if acc == y.dtype else out.to(y.dtype)


def _owning(t: torch.Tensor) -> torch.Tensor:
    """``t`` as a tensor that owns its view metadata (no copy).

    Autograd forbids in-place ops on a view created inside a custom Function (they would
    bypass its backward), so an output that is a reshape of a buffer made in ``forward``
    would break ``relu_``, ``+=`` and ``ReLU(inplace=True)``. ``detach()`` gives the same
    storage as a plain tensor (and costs ~1 us on any tensor). Only for buffers ``forward`` allocated itself: an alias of
    an input would let in-place ops on the output silently change that input.
    """
    return t.detach()


def _move_vmap_dim(x: torch.Tensor, bdim: int) -> tuple[torch.Tensor, int, int]:
    x = x.movedim(bdim, 0)
    v, b = x.shape[:2]
    return x.reshape(v * b, *x.shape[2:]), v, b


_F = TypeVar("_F", bound=type[torch.autograd.Function])


def _signature_once(cls: _F) -> _F:
    """``Function.apply`` binds its arguments with ``inspect.signature(forward)`` on every
    call (~10 us, a fifth of a small unfold); give ``forward`` its signature once."""
    cls.forward.__signature__ = inspect.signature(cls.forward)  # type: ignore[attr-defined]
    return cls


@_signature_once
class _UnfoldCore(torch.autograd.Function):
    """im2col on a batched ``(B, C, *S)`` tensor; backward is fold. Traceable by dynamo."""

    @staticmethod
    def forward(x: torch.Tensor, geom: Geometry, rows_first: bool) -> torch.Tensor:  # type: ignore[override]
        return _owning(_unfold_forward(x, geom, rows_first))

    @staticmethod
    def setup_context(ctx, inputs, output):  # type: ignore[no-untyped-def]
        x, geom, _ = inputs
        ctx.geom = geom
        ctx.spatial = tuple(x.shape[2:])

    @staticmethod
    def backward(ctx, grad):  # type: ignore[no-untyped-def]
        return _fold(grad, ctx.spatial, ctx.geom), None, None


@_signature_once
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
    def jvp(ctx, tangent, _geom, rows_first):  # type: ignore[no-untyped-def]
        return _Unfold.apply(tangent, ctx.geom, rows_first)

    @staticmethod
    def vmap(info, in_dims, x, geom, rows_first):  # type: ignore[no-untyped-def]
        flat, v, b = _move_vmap_dim(x, in_dims[0])
        out = _Unfold.apply(flat, geom, rows_first)
        return out.view(v, b, *out.shape[1:]), 0


class _Fold(_FoldCore):
    @staticmethod
    def jvp(ctx, tangent, _spatial, _geom):  # type: ignore[no-untyped-def]
        return _Fold.apply(tangent, ctx.spatial, ctx.geom)

    @staticmethod
    def vmap(info, in_dims, y, spatial, geom):  # type: ignore[no-untyped-def]
        flat, v, b = _move_vmap_dim(y, in_dims[0])
        out = _Fold.apply(flat, spatial, geom)
        return out.view(v, b, *out.shape[1:]), 0


# Dynamo cannot trace an autograd.Function with a custom jvp or vmap, so torch.compile
# gets the core Functions: same forward, same backward, so compiled gradients are
# bitwise equal to eager ones.
def _unfold(x: torch.Tensor, geom: Geometry, rows_first: bool = False) -> torch.Tensor:
    fn = _UnfoldCore if torch.compiler.is_compiling() else _Unfold
    return fn.apply(x, geom, rows_first)  # type: ignore[no-any-return]


def _fold(y: torch.Tensor, spatial: tuple[int, ...], geom: Geometry) -> torch.Tensor:
    fn = _FoldCore if torch.compiler.is_compiling() else _Fold
    return fn.apply(y, spatial, geom)  # type: ignore[no-any-return]


def _pad_index(size: int, lo: int, hi: int, mode: str, device: torch.device) -> torch.Tensor:
    idx = torch.arange(-lo, size + hi, device=device)
    if mode == "reflect":
        return (size - 1) - ((size - 1) - idx.abs()).abs()
    if mode == "replicate":
        return idx.clamp(0, size - 1)
    return idx.remainder(size)  # circular


def _check_pad_mode(spatial: Sequence[int], pads: Pads, mode: str) -> None:
    for i, (size, (lo, hi)) in enumerate(zip(spatial, pads, strict=True)):
        if mode == "reflect" and max(lo, hi) >= size:
            raise ValueError(
                f'padding {pads} with padding_mode="reflect" must be smaller than the input '
                f"size {size} in spatial dim {i}"
            )
        if mode == "circular" and max(lo, hi) > size:
            raise ValueError(
                f'padding {pads} with padding_mode="circular" must be at most the input '
                f"size {size} in spatial dim {i}"
            )
        if mode == "replicate" and size == 0 and lo + hi > 0:
            raise ValueError(f"cannot replicate-pad an empty spatial dim {i}")


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
    sizes = {"kernel_size": kernel_size, "dilation": dilation, "padding": padding, "stride": stride}
    x, n, batched = _args.spatial_input(input, sizes)
    kernel = _args.ntuple(kernel_size, n, "kernel_size")
    dil = _args.ntuple(dilation, n, "dilation")
    st = _args.ntuple(stride, n, "stride")
    pads = _args.padding_pairs(padding, n, kernel, dil, st)
    mode = _args.choice(padding_mode, "padding_mode", _args.PADDING_MODES)
    spatial = tuple(x.shape[2:])
    if mode != "zeros":
        _check_pad_mode(spatial, pads, mode)
    _args.output_size(spatial, kernel, dil, pads, st)  # raises if the kernel does not fit
    _args.check_unfold_alloc(x, kernel, dil, pads, st)
    if mode != "zeros":
        x, pads = pad(x, pads, mode), ((0, 0),) * n
    out = _unfold(x, (kernel, dil, pads, st, False))
    return out if batched else out.squeeze(0)


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
    sizes = {
        "output_size": output_size,
        "kernel_size": kernel_size,
        "dilation": dilation,
        "padding": padding,
        "stride": stride,
    }
    n = _args.infer_n(sizes, default=2)
    spatial = _args.ntuple(output_size, n, "output_size", min_value=0)
    kernel = _args.ntuple(kernel_size, n, "kernel_size")
    dil = _args.ntuple(dilation, n, "dilation")
    st = _args.ntuple(stride, n, "stride")
    pads = _args.padding_pairs(padding, n, kernel, dil, st)
    mode = _args.choice(reduction, "reduction", _args.REDUCTIONS)
    if mode == "mean" and not (y.is_floating_point() or y.is_complex()):
        raise TypeError(f'reduction="mean" needs a floating or complex input, got {y.dtype}')
    if y.dim() not in (2, 3):
        raise ValueError(
            f"input must have 3 dims (B, C * prod(kernel_size), L) or 2 (unbatched), "
            f"got shape {tuple(y.shape)}"
        )
    batched = y.dim() == 3
    y = y if batched else y.unsqueeze(0)
    k_numel = _args.prod(kernel)
    if y.shape[1] % k_numel:
        raise ValueError(
            f"input's channel dim ({y.shape[1]}) must be divisible by prod(kernel_size) = "
            f"{k_numel} (kernel_size={kernel})"
        )
    blocks = _args.output_size(spatial, kernel, dil, pads, st)
    if y.shape[2] != _args.prod(blocks):
        raise ValueError(
            f"input's last dim ({y.shape[2]}) must equal the number of blocks "
            f"{_args.prod(blocks)} = prod{blocks} for output_size={spatial}, "
            f"kernel_size={kernel}, dilation={dil}, padding={pads}, stride={st}"
        )
    _args.check_fold_alloc(y, spatial, kernel)
    geom: Geometry = (kernel, dil, pads, st, False)
    if mode == "sum":
        out = _fold(y, spatial, geom)
    else:
        # Summing c copies of x is exact in the wider type, so the mean of identical
        # values is x exactly (float64 inputs have no wider type: round-off there).
        acc = _WIDER.get(y.dtype, y.dtype)
        ones = torch.ones((1, k_numel, y.shape[2]), dtype=_REAL.get(acc, acc), device=y.device)
        counts = _fold_forward(ones, spatial, geom)
        out = (_fold(y.to(acc), spatial, geom) / counts.clamp(min=1)).to(y.dtype)
    return out if batched else out.squeeze(0)


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
    sizes = {
        "kernel_size": kernel_size,
        "stride": stride,
        "padding": padding,
        "output_padding": output_padding,
        "dilation": dilation,
    }
    x, n, batched = _args.spatial_input(input, sizes)
    kernel = _args.ntuple(kernel_size, n, "kernel_size")
    st = _args.ntuple(stride, n, "stride")
    pad_ = _args.ntuple(padding, n, "padding", min_value=0)
    out_pad = _args.ntuple(output_padding, n, "output_padding", min_value=0)
    dil = _args.ntuple(dilation, n, "dilation")
    spatial = tuple(x.shape[2:])
    _args.transpose_output_size(spatial, kernel, st, pad_, out_pad, dil)
    _args.check_unfold_transpose_alloc(x, kernel, st, pad_, out_pad, dil)
    if any(s == 0 for s in spatial):
        raise ValueError(f"input must have non-empty spatial dims, got shape {tuple(input.shape)}")
    # Zero-insert by the stride, pad by d (k-1) - p (+ output_padding on the high side;
    # negative values crop), then a stride-1 im2col with the kernel flipped.
    pads = [
        (d * (k - 1) - p, d * (k - 1) - p + op)
        for k, p, op, d in zip(kernel, pad_, out_pad, dil, strict=True)
    ]
    z = F.pad(_dilate(x, st), [v for pair in reversed(pads) for v in pair])
    out = _unfold(z, (kernel, dil, ((0, 0),) * n, (1,) * n, True))
    return out if batched else out.squeeze(0)


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
    sizes = {"kernel_size": kernel_size, "dilation": dilation, "stride": stride}
    x, n, batched = _args.spatial_input(input, sizes)
    kernel = _args.ntuple(kernel_size, n, "kernel_size")
    dil = _args.ntuple(dilation, n, "dilation")
    st = _args.ntuple(stride, n, "stride")
    zero: Pads = ((0, 0),) * n
    _args.output_size(tuple(x.shape[2:]), kernel, dil, zero, st)
    view = _window_view(x, (kernel, dil, zero, st, False))
    return view if batched else view.squeeze(0)
