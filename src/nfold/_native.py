"""The ``method="auto"`` engine of ``conv`` / ``conv_transpose``: torch's native
convolution over the trailing ``m = min(N, 3)`` spatial dims, the leading ``N - m`` dims
unfolded (conv) or folded (conv_transpose) around it.

- conv: the input's leading dims are unfolded into channels (``C * prod(k_lead)``) and
  their output positions into the batch (``B * prod(L_lead)``), by one copy of a strided
  view; one ``F.conv{m}d`` with the weight reshaped to
  ``(C_out, C_in/groups * prod(k_lead), *k_trail)`` contracts channels, leading offsets
  and the trailing dims at once; the positions are moved back. For N <= 3 nothing is
  unfolded: it is torch's own conv.
- conv_transpose: its adjoint, one ``F.conv_transpose{m}d`` over the trailing dims with
  the weight reshaped to ``(C_in, C_out/groups * prod(k_lead), *k_trail)``, then nfold's
  ``fold`` over the leading dims (per-side fold padding crops; an ``output_padding`` past
  the last block is zero-extended).

Everything is differentiable torch ops plus nfold's fold, so autograd gives every
gradient (double backward, jvp, vmap and ``torch.compile`` included). In eager training
the merged conv runs as ``_MergedGrad`` instead, which saves the input rather than the
merged input (``prod(k_lead)`` times larger) and builds the latter a chunk at a time.
Where torch has no native kernel for the dtype on the device (probed once per (device,
dtype, m) with a tiny call, then cached), the caller falls back to ``method="gemm"``.

``max_workspace_bytes`` bounds the intermediates here too: the output is computed in
slabs over the batch, then over output positions of spatial dim 0, 1, ... (conv), or
over input positions added into the output (conv_transpose). A slab's cost counts its
padded input, unfolded leading dims and output and the one-sample im2col matrix an
im2col-based native kernel (torch's CPU float64 conv3d, say) would build, so the bound
holds whichever kernel torch picks. Depthwise convs sum one native conv per leading
offset instead of merging the offsets into channels (see ``_sum_offsets``).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from . import _args, _layouts, _slabs
from ._args import Pads
from ._plan import Geometry
from ._slabs import Param
from .patches import _fold, _owning, eager_graph, plain_call

CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_TRANSPOSE = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}

# (device type, dtype, m, transposed) -> whether torch runs that conv, gradients included
_NATIVE: dict[tuple[str, torch.dtype, int, bool], bool] = {}


def native(device: torch.device, dtype: torch.dtype, n: int, transposed: bool) -> bool:
    """Whether torch's ``conv{m}d`` (or transposed) runs for ``dtype`` on ``device``."""
    key = (device.type, dtype, min(n, 3), transposed)
    known = _NATIVE.get(key)
    if known is None:
        if torch.compiler.is_compiling():  # no probing while tracing; eager calls probe
            return True
        known = _NATIVE[key] = _probe(device, *key[1:])
    return known


def _probe(device: torch.device, dtype: torch.dtype, m: int, transposed: bool) -> bool:
    fn = (_CONV_TRANSPOSE if transposed else CONV)[m]
    try:
        with torch.inference_mode(False), torch.enable_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "ComplexHalf support is experimental"
            x = torch.ones((1, 1, *(2,) * m), dtype=dtype, device=device, requires_grad=True)
            w = torch.ones((1, 1, *(1,) * m), dtype=dtype, device=device, requires_grad=True)
            torch.autograd.grad(fn(x, w).sum(), (x, w))
    except (RuntimeError, NotImplementedError, TypeError):
        return False
    return True


# --------------------------------------------------------------------------- conv


def conv(
    x: torch.Tensor,
    w: torch.Tensor,
    bias: torch.Tensor | None,
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
    pads: Pads,
    groups: int,
    outs: tuple[int, ...],
    slabs: list[_slabs.Slab],
) -> torch.Tensor:
    """Batched ``(B, C_in, *S)`` (already padded by any non-zero padding mode) ->
    ``(B, C_out, *L)``, in the ``slabs`` the call's plan cut (``NativeConvSlabs``)."""

    def leaf(part: torch.Tensor, part_pads: Sequence[Param], _: Sequence[int]) -> torch.Tensor:
        return _conv(part, w, bias, stride, dilation, tuple(part_pads), groups)

    return _slabs.run(x, slabs, pads, outs, leaf, into=plain_call(x, w, bias))


def _conv(
    x: torch.Tensor,
    w: torch.Tensor,
    bias: torch.Tensor | None,
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
    pads: Pads,
    groups: int,
) -> torch.Tensor:
    n = len(stride)
    m = min(n, 3)
    lead = n - m
    trail_pads = pads[lead:]
    if 0 in x.shape[2:]:  # a slab that sees only padding: torch's conv rejects it unpadded
        x, pads = F.pad(x, [p for pair in reversed(pads) for p in pair]), ((0, 0),) * n
        trail_pads = pads[lead:]
    if any(lo != hi for lo, hi in trail_pads) or (lead and _args.has_padding(pads[:lead])):
        # F.conv takes symmetric padding only; pad the rest (and the leading dims) here
        sym = [min(lo, hi) for lo, hi in trail_pads]
        extra = tuple((lo - s, hi - s) for (lo, hi), s in zip(pads, [0] * lead + sym, strict=True))
        x = F.pad(x, [p for pair in reversed(extra) for p in pair])
        trail: tuple[int, ...] = tuple(sym)
    else:
        trail = tuple(lo for lo, _ in trail_pads)
    if not lead:
        return CONV[m](x, w, bias, stride, trail, dilation, groups)
    if _sum_offsets(x, w, groups):
        return _conv_sum(x, w, bias, stride, dilation, trail, groups)
    spec = _Merged(tuple(w.shape[2:]), stride, dilation, trail, groups)
    if not eager_graph(x, w):  # inference (fastest unchunked), compile, functorch, jvp
        return spec(x, w, bias)
    out = _MergedGrad.apply(x, w, spec)
    return out if bias is None else out + bias.view(-1, *(1,) * n)


@dataclasses.dataclass(frozen=True)
class _Merged:
    """A conv whose leading ``N - 3`` dims are unfolded into channels around one native
    ``conv3d`` (its input already padded along them); ``trail``: its symmetric padding."""

    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    trail: tuple[int, ...]
    groups: int

    @property
    def lead(self) -> int:
        return len(self.kernel) - 3

    def merge(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, *S)`` -> ``(B * prod(L_lead), C * prod(k_lead), *S_trail)``, one copy."""
        lead, n = self.lead, len(self.kernel)
        view = x
        for i in range(lead):  # (B, C, *L_lead, *S_trail, *span_lead)
            view = view.unfold(2 + i, self.dilation[i] * (self.kernel[i] - 1) + 1, self.stride[i])
        if any(d > 1 for d in self.dilation[:lead]):
            every: tuple[Any, ...] = (..., *(slice(None, None, d) for d in self.dilation[:lead]))
            view = view[every]
        outs_lead = view.shape[2 : 2 + lead]
        view = view.permute(  # (B, *L_lead, C, *k_lead, *S_trail)
            0, *range(2, 2 + lead), 1, *range(2 + n, 2 + n + lead), *range(2 + lead, 2 + n)
        )
        return view.reshape(
            x.shape[0] * math.prod(outs_lead),
            x.shape[1] * math.prod(self.kernel[:lead]),
            *x.shape[2 + lead :],
        )

    def native(self, cols: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None
               ) -> torch.Tensor:  # fmt: skip
        w_m = w.reshape(w.shape[0], -1, *self.kernel[self.lead :])
        sl = slice(self.lead, None)
        return CONV[3](cols, w_m, bias, self.stride[sl], self.trail, self.dilation[sl], self.groups)

    def __call__(self, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None
                 ) -> torch.Tensor:  # fmt: skip
        """The conv, by differentiable torch ops (autograd saves the merged input)."""
        y = self.native(self.merge(x), w, bias)
        y = y.view(x.shape[0], *_merged_outs(self, x), y.shape[1], *y.shape[2:])
        return y.movedim(1 + self.lead, 1).contiguous()


#: in training, the merged input is built in chunks of at most the input's size / this.
#: Measured on benchmarks/conv_engine.py's 4-d and 5-d rows (Xeon, 1 thread), peak memory
#: of forward + backward / torchnd's: 1: 0.40-1.66, 2: 0.39-1.28, 4: 0.39-1.02; forward +
#: backward time / torchnd's: 1: 0.38-1.05, 2: 0.38-0.99, 4: 0.40-1.03.
_MERGED_CHUNKS = 4


class _MergedGrad(torch.autograd.Function):
    """``_Merged`` in eager autograd: saves the input, not the merged input (``prod(k_lead)``
    times larger), and builds the merged input a chunk at a time (:func:`_chunks`), in
    forward and again in backward for ``convolution_backward``, so the peak memory is the
    input, the output (and its gradient) and one chunk, not the whole merged input (and
    its gradient, and oneDNN's blocked copies of both). Each chunk's input gradient is
    added into the whole one by a strided add per leading kernel offset
    (:func:`_unmerge_add`, the adjoint of the merge). Under ``create_graph`` (double
    backward) it differentiates a recomputation by torch ops instead."""

    @staticmethod
    def forward(ctx, x, w, spec):  # type: ignore[no-untyped-def, override]
        ctx.save_for_backward(x, w)
        ctx.spec = spec
        return _owning(_merged_forward(spec, x, w))

    @staticmethod
    def backward(ctx, grad):  # type: ignore[no-untyped-def, override]
        x, w = ctx.saved_tensors
        spec, needs = ctx.spec, ctx.needs_input_grad[:2]
        if torch.is_grad_enabled():  # create_graph: differentiate a recomputation
            wanted = [t for t, need in zip((x, w), needs, strict=True) if need]
            with torch.enable_grad():
                out = spec(x, w, None)
            found = torch.autograd.grad(out, wanted, grad, create_graph=True, allow_unused=True)
            pairs = zip(wanted, found, strict=True)
            grads = iter(torch.zeros_like(t) if g is None else g for t, g in pairs)
            return (next(grads) if needs[0] else None), (next(grads) if needs[1] else None), None
        return (*_merged_grads(spec, x, w, grad, needs), None)


def _chunks(
    spec: _Merged, x: torch.Tensor, outs_lead: Sequence[int]
) -> Iterator[tuple[slice, slice, slice]]:
    """(samples, rows of the first leading output dim, the input rows they read) of each
    chunk of ``_Merged``'s work whose merged input is at most the input's size."""
    lead, kernel = spec.lead, spec.kernel
    batch, rows = x.shape[0], outs_lead[0]
    row_cols = (
        math.prod(outs_lead[1:])
        * x.shape[1]
        * math.prod(kernel[:lead])
        * math.prod(x.shape[2 + lead :])
    )
    budget = max(x.numel() // _MERGED_CHUNKS, 1)
    if rows * row_cols <= budget:
        step_b, step_r = max(1, budget // max(rows * row_cols, 1)), rows
    else:
        step_b, step_r = 1, max(1, budget // max(row_cols, 1))
        if step_r < rows:  # keep the kernel torch picks for the whole (small batches may
            # fall back to slow_conv3d, 7x slower)
            step_r = _fast_rows(spec, x, outs_lead, step_r)
    span0 = spec.dilation[0] * (kernel[0] - 1) + 1
    for b0 in range(0, batch, step_b):
        for r0 in range(0, rows, step_r):
            r1 = min(rows, r0 + step_r)
            reads = slice(r0 * spec.stride[0], (r1 - 1) * spec.stride[0] + span0)
            yield slice(b0, b0 + step_b), slice(r0, r1), reads


def _fast_rows(spec: _Merged, x: torch.Tensor, outs_lead: Sequence[int], step: int) -> int:
    """``step`` rows per chunk, doubled until torch picks the same kind of kernel for one
    sample's chunk as for all of it."""
    lead, kernel, rows = spec.lead, spec.kernel, outs_lead[0]
    per_row = math.prod(outs_lead[1:])
    c_native = x.shape[1] * math.prod(kernel[:lead])

    def slow(r: int) -> bool:
        shape = (r * per_row, c_native, *x.shape[2 + lead :])
        w_shape = (1, c_native // spec.groups, *kernel[lead:])
        picked = _layouts.backend(
            x.device, x.dtype, shape, w_shape, spec.stride[lead:], spec.dilation[lead:],
            spec.groups, False,
        )  # fmt: skip
        return picked.startswith("Slow")

    if slow(rows):
        return step
    while step < rows and slow(step):
        step *= 2
    return min(step, rows)


def _merged_outs(spec: _Merged, x: torch.Tensor) -> tuple[int, ...]:
    lead = spec.lead
    return _args.output_size(
        tuple(x.shape[2 : 2 + lead]), spec.kernel[:lead], spec.dilation[:lead],
        ((0, 0),) * lead, spec.stride[:lead],
    )  # fmt: skip


def _merged_forward(spec: _Merged, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``_Merged`` without autograd, chunk by chunk into one output."""
    lead, outs_lead = spec.lead, _merged_outs(spec, x)
    out = None
    for samples, rows, reads in _chunks(spec, x, outs_lead):
        y = spec.native(spec.merge(x[samples, :, reads]), w, None)
        y = y.view(-1, rows.stop - rows.start, *outs_lead[1:], *y.shape[1:])
        if out is None:
            out = y.new_empty((x.shape[0], y.shape[1 + lead], *outs_lead, *y.shape[2 + lead :]))
        out[samples, :, rows] = y.movedim(1 + lead, 1)
    if out is None:  # an empty batch
        return spec(x, w, None)
    return out


def _merged_grads(
    spec: _Merged, x: torch.Tensor, w: torch.Tensor, grad: torch.Tensor, needs: Sequence[bool]
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Input and weight gradients of ``_Merged``, chunk by chunk (:func:`_chunks`)."""
    lead, c_out = spec.lead, w.shape[0]
    w_m = w.reshape(c_out, -1, *spec.kernel[lead:])
    sl = slice(lead, None)
    grad_x = torch.zeros_like(x) if needs[0] else None
    grad_w = None
    for samples, rows, reads in _chunks(spec, x, tuple(grad.shape[2 : 2 + lead])):
        xs = x[samples, :, reads]
        g = grad[samples, :, rows]
        cols = spec.merge(xs)
        grad_cols, part_w, _ = torch.ops.aten.convolution_backward(
            g.movedim(1, 1 + lead).reshape(-1, c_out, *grad.shape[2 + lead :]),
            cols, w_m, None, spec.stride[sl], spec.trail, spec.dilation[sl],
            False, [0] * 3, spec.groups, [needs[0], needs[1], False],
        )  # fmt: skip
        if grad_x is not None:
            _unmerge_add(spec, grad_x[samples, :, reads], grad_cols, tuple(g.shape[2 : 2 + lead]))
        if needs[1]:
            grad_w = part_w if grad_w is None else grad_w + part_w
    if needs[1] and grad_w is None:  # an empty batch
        grad_w = torch.zeros_like(w)
    return grad_x, None if grad_w is None else grad_w.reshape(w.shape)


def _unmerge_add(
    spec: _Merged, into: torch.Tensor, cols: torch.Tensor, outs_lead: tuple[int, ...]
) -> None:
    """``into += `` the adjoint of ``spec.merge`` applied to ``cols``: one strided add of
    whole trailing volumes per leading kernel offset, in row-major offset order."""
    lead, kernel = spec.lead, spec.kernel[: spec.lead]
    c = into.shape[1]
    view = cols.reshape(into.shape[0], *outs_lead, c, *kernel, *cols.shape[2:])
    # (B, C, *k_lead, *L_lead, *S_trail)
    view = view.permute(0, 1 + lead, *range(2 + lead, 2 + 2 * lead), *range(1, 1 + lead),
                        *range(2 + 2 * lead, view.dim()))  # fmt: skip
    for offset in itertools.product(*(range(k) for k in kernel)):
        dst: tuple[Any, ...] = tuple(
            slice(j * d, j * d + (o - 1) * s + 1, s)
            for j, d, s, o in zip(offset, spec.dilation, spec.stride, outs_lead, strict=False)
        )
        src: tuple[Any, ...] = offset
        into[(slice(None), slice(None), *dst)].add_(view[(slice(None), slice(None), *src)])


def _sum_offsets(x: torch.Tensor, w: torch.Tensor, groups: int) -> bool:
    """Sum one native conv per leading offset instead of merging the offsets into channels:
    for depthwise convs only.

    Merged, a depthwise conv has prod(k_lead) channels per group, which torch's depthwise
    kernels do not take: 6x slower than one depthwise conv per offset in the forward
    (benchmarks/conv_engine.py, 4-d depthwise). Elsewhere merging measured as fast or
    faster, forward and forward+backward, at 2 to 32 channels: one larger conv instead of
    prod(k_lead) small ones, and no full-size gradient buffer per offset in backward.
    """
    return groups > 1 and groups == x.shape[1]


def _conv_sum(
    x: torch.Tensor,
    w: torch.Tensor,
    bias: torch.Tensor | None,
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
    trail: tuple[int, ...],
    groups: int,
) -> torch.Tensor:
    """``sum_j conv_m(x[offset j], w[:, :, j])`` over the leading kernel offsets j; ``x`` is
    already padded along the leading dims, ``trail`` is the trailing (symmetric) padding."""
    n = len(stride)
    m = min(n, 3)
    lead = n - m
    kernel = tuple(w.shape[2:])
    batch, c_in, c_out = x.shape[0], x.shape[1], w.shape[0]
    outs_lead = _args.output_size(
        tuple(x.shape[2 : 2 + lead]),
        kernel[:lead],
        dilation[:lead],
        ((0, 0),) * lead,
        stride[:lead],
    )
    # (*S_lead, B, C, *S_trail): with stride 1 along one leading dim, a slice is a view
    rows = x.permute(*range(2, 2 + lead), 0, 1, *range(2 + lead, 2 + n)).contiguous()
    out = None
    for offset in itertools.product(*(range(k) for k in kernel[:lead])):
        index = tuple(
            slice(j * d, j * d + (o - 1) * s + 1, s)
            for j, d, s, o in zip(offset, dilation, stride, outs_lead, strict=False)
        )
        part = rows[index].reshape(math.prod(outs_lead) * batch, c_in, *x.shape[2 + lead :])
        term = CONV[
            m
        ](
            part,
            w[(slice(None), slice(None), *offset)],  # type: ignore[index]
            bias if out is None else None,
            stride[lead:],
            trail,
            dilation[lead:],
            groups,
        )
        out = term if out is None else out + term
    assert out is not None
    out = out.view(*outs_lead, batch, c_out, *out.shape[2:])
    return out.permute(lead, lead + 1, *range(lead), *range(lead + 2, n + 2)).contiguous()


# --------------------------------------------------------------------------- conv_transpose


def conv_transpose(
    x: torch.Tensor,
    w: torch.Tensor,
    bias: torch.Tensor | None,
    stride: tuple[int, ...],
    padding: tuple[int, ...],
    output_padding: tuple[int, ...],
    dilation: tuple[int, ...],
    groups: int,
    outs: tuple[int, ...],
    slabs: list[_slabs.Slab],
) -> torch.Tensor:
    """Batched ``(B, C_in, *S)`` -> ``(B, C_out, *outs)``; arguments already validated.
    In the ``slabs`` the call's plan cut (``NativeConvTransposeSlabs``), each the uncropped
    transposed conv of the input rows it reads, cropped."""
    if _slabs.whole(slabs, x.shape[0]):  # no crop
        return _conv_transpose(x, w, bias, stride, padding, output_padding, dilation, groups, outs)
    n, c_out = len(stride), w.shape[1] * groups
    spans = _args.span(tuple(w.shape[2:]), dilation)
    zeros = (0,) * n

    def leaf(part: torch.Tensor, ps: Sequence[Param], os: Sequence[int]) -> torch.Tensor:
        # ps[i]: uncropped coordinate (relative to these input rows) of output position 0
        if 0 in part.shape[2:]:  # no input row reaches this slab of the output
            linked = part.flatten()[:0].sum() + w.flatten()[:0].sum()  # stays in the graph
            y = part.new_zeros((part.shape[0], c_out, *os)) + linked
        else:
            full, crop, extend = _layouts.transposed_window(part.shape[2:], stride, spans, ps, os)
            y = _conv_transpose(part, w, None, stride, zeros, zeros, dilation, groups, full)
            window: tuple[Any, ...] = tuple(
                slice(lo, f - hi) for (lo, hi), f in zip(crop, full, strict=True)
            )
            y = y[(..., *window)]
            y = F.pad(y, extend) if any(extend) else y
        return y if bias is None else y + bias.view(-1, *(1,) * n)

    return _slabs.run(x, slabs, padding, outs, leaf, into=plain_call(x, w, bias))


def _conv_transpose(
    x: torch.Tensor,
    w: torch.Tensor,
    bias: torch.Tensor | None,
    stride: tuple[int, ...],
    padding: tuple[int, ...],
    output_padding: tuple[int, ...],
    dilation: tuple[int, ...],
    groups: int,
    outs: tuple[int, ...],
) -> torch.Tensor:
    n = len(stride)
    m = min(n, 3)
    lead = n - m
    fn = _CONV_TRANSPOSE[m]
    if not lead:
        return fn(x, w, bias, stride, padding, output_padding, groups, dilation)
    kernel = tuple(w.shape[2:])
    batch, c_in, c_out = x.shape[0], x.shape[1], w.shape[1] * groups
    spatial = tuple(x.shape[2:])
    k_lead, positions = math.prod(kernel[:lead]), math.prod(spatial[:lead])
    rows = x.movedim(1, 1 + lead).reshape(batch * positions, c_in, *spatial[lead:])
    w_m = w.reshape(c_in, -1, *kernel[lead:])
    sl = slice(lead, None)
    y = fn(rows, w_m, None, stride[sl], padding[sl], output_padding[sl], groups, dilation[sl])
    trail = math.prod(y.shape[2:])
    # (B, C_out * prod(k_lead), prod(S_lead) * T): fold's column layout
    cols = y.view(batch, positions, c_out * k_lead, trail).transpose(1, 2)
    cols = cols.reshape(batch, c_out * k_lead, positions * trail)
    crop, size, extend = [], [], []
    for s_, k, st, p, o, d in zip(
        spatial[:lead], kernel, stride, padding, outs, dilation, strict=False
    ):
        full = (s_ - 1) * st + d * (k - 1) + 1  # uncropped extent
        hi = max(full - p - o, 0)
        crop.append((p, hi))
        size.append(full - p - hi)
        extend.append(o - (full - p - hi))  # output_padding past the last block: zeros
    geom = Geometry(
        (*kernel[:lead], 1), (*dilation[:lead], 1), (*crop, (0, 0)), (*stride[:lead], 1)
    )
    out = _fold(cols, (*size, trail), geom)
    if any(extend):
        out = F.pad(out, [0, 0, *(v for e in reversed(extend) for v in (0, e))])
    out = out.view(batch, c_out, *outs)
    return out if bias is None else out + bias.view(-1, *(1,) * n)
