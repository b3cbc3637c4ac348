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
gradient (double backward, jvp, vmap and ``torch.compile`` included). Where torch has no
native kernel for the dtype on the device (probed once per (device, dtype, m) with a tiny
call, then cached), the caller falls back to ``method="gemm"``.

``max_workspace_bytes`` bounds the intermediates here too: the output is computed in
slabs over the batch, then over output positions of spatial dim 0, 1, ... (conv), or
over input positions added into the output (conv_transpose). A slab's cost counts its
padded input, unfolded leading dims and output and the one-sample im2col matrix an
im2col-based native kernel (torch's CPU float64 conv3d, say) would build, so the bound
holds whichever kernel torch picks. Depthwise convs sum one native conv per leading
offset instead of merging the offsets into channels (see ``_sum_offsets``).
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from . import _args
from ._args import Pads
from ._plan import Geometry
from ._slabs import largest
from .patches import _fold, pad

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
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
    fn = (_CONV_TRANSPOSE if transposed else _CONV)[m]
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
    mode: str,
    groups: int,
    limit: int | None,
) -> torch.Tensor:
    """Batched ``(B, C_in, *S)`` -> ``(B, C_out, *L)``; arguments already validated."""
    if mode != "zeros":  # as torch.nn.ConvNd: pad with the mode, then convolve unpadded
        x, pads = pad(x, pads, mode), ((0, 0),) * len(pads)
    if limit is None:
        return _conv(x, w, bias, stride, dilation, pads, groups)
    n, kernel = len(stride), tuple(w.shape[2:])
    lead = n - min(n, 3)
    c_in, c_out, item = x.shape[1], w.shape[0], x.element_size()

    def cost(batch: int, padded: Sequence[int], outs: Sequence[int]) -> int:
        cols = math.prod(outs)
        merged = math.prod(kernel[:lead]) * math.prod(outs[:lead]) * math.prod(padded[lead:])
        # an im2col-based native kernel (e.g. torch's CPU float64 conv3d) unfolds one
        # sample of its batch at a time
        native_cols = c_in * math.prod(kernel) * math.prod(outs[lead:])
        ours = max(c_in * merged, c_out * cols, c_in * math.prod(padded))
        return item * max(batch * ours, native_cols)

    def run(part: torch.Tensor, part_pads: Pads) -> torch.Tensor:
        return _conv(part, w, bias, stride, dilation, part_pads, groups)

    return _conv_slabs(x, pads, kernel, stride, dilation, limit, cost, run)


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
        return _CONV[m](x, w, bias, stride, trail, dilation, groups)
    if _sum_offsets(x, w, groups):
        return _conv_sum(x, w, bias, stride, dilation, trail, groups)
    kernel = tuple(w.shape[2:])
    batch, c_in, c_out = x.shape[0], x.shape[1], w.shape[0]
    view = x
    for i in range(lead):  # (B, C, *L_lead, *S_trail, *span_lead)
        view = view.unfold(2 + i, dilation[i] * (kernel[i] - 1) + 1, stride[i])
    if any(d > 1 for d in dilation[:lead]):
        every: tuple[Any, ...] = (..., *(slice(None, None, d) for d in dilation[:lead]))
        view = view[every]
    outs_lead, spatial_trail = view.shape[2 : 2 + lead], x.shape[2 + lead :]
    # (B, *L_lead, C, *k_lead, *S_trail): one copy
    view = view.permute(
        0, *range(2, 2 + lead), 1, *range(2 + n, 2 + n + lead), *range(2 + lead, 2 + n)
    )
    cols = view.reshape(
        batch * math.prod(outs_lead), c_in * math.prod(kernel[:lead]), *spatial_trail
    )
    w_m = w.reshape(c_out, -1, *kernel[lead:])
    y = _CONV[m](cols, w_m, bias, stride[lead:], trail, dilation[lead:], groups)
    y = y.view(batch, *outs_lead, c_out, *y.shape[2:])
    return y.movedim(1 + lead, 1).contiguous()


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
        term = _CONV[
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


def _conv_slabs(
    x: torch.Tensor,
    pads: Pads,
    kernel: tuple[int, ...],
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
    limit: int,
    cost: Callable[[int, Sequence[int], Sequence[int]], int],
    run: Callable[[torch.Tensor, Pads], torch.Tensor],
) -> torch.Tensor:
    """``run`` on output slabs (batch, then spatial dim 0, 1, ...) whose cost fits ``limit``,
    each reading its input rows with its own share of the padding; slabs concatenated."""
    n = len(stride)
    spans = _args.span(kernel, dilation)

    def fits(batch: int, spatial: Sequence[int], ps: Pads, outs: Sequence[int]) -> bool:
        return cost(batch, _args.padded_size(spatial, ps), outs) <= limit

    def slab(x: torch.Tensor, ps: Pads, i: int, o0: int, o1: int) -> tuple[torch.Tensor, Pads]:
        size, lo = x.shape[2 + i], ps[i][0]
        a = o0 * stride[i] - lo  # input coordinate of the slab's first padded element
        e = (o1 - 1) * stride[i] + spans[i] - lo  # one past its last
        new_lo = min(max(-a, 0), e - a)
        new_hi = min(max(e - size, 0), e - a - new_lo)
        part = x.narrow(2 + i, min(max(a, 0), size), e - a - new_lo - new_hi)
        return part, (*ps[:i], (new_lo, new_hi), *ps[i + 1 :])

    def split(x: torch.Tensor, ps: Pads, i: int) -> torch.Tensor:
        outs = _args.output_size(tuple(x.shape[2:]), kernel, dilation, ps, stride)
        if i == n or fits(x.shape[0], x.shape[2:], ps, outs):
            return run(x, ps)

        def rows(q: int) -> bool:
            part, part_ps = slab(x, ps, i, 0, q)
            return fits(x.shape[0], part.shape[2:], part_ps, (*outs[:i], q, *outs[i + 1 :]))

        step = largest(1, outs[i], rows) if rows(1) else 1
        pieces = [
            split(*slab(x, ps, i, o0, min(o0 + step, outs[i])), i + 1)
            for o0 in range(0, outs[i], step)
        ]
        return torch.cat(pieces, 2 + i)

    batch = x.shape[0]
    outs = _args.output_size(tuple(x.shape[2:]), kernel, dilation, pads, stride)
    if batch <= 1 or not fits(1, x.shape[2:], pads, outs):
        step = 1
    else:
        step = largest(1, batch, lambda b: fits(b, x.shape[2:], pads, outs))
    if step >= batch:
        return split(x, pads, 0)
    return torch.cat([split(p, pads, 0) for p in x.split(step)], 0)


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
    limit: int | None,
) -> torch.Tensor:
    """Batched ``(B, C_in, *S)`` -> ``(B, C_out, *outs)``; arguments already validated."""
    if limit is None:
        return _conv_transpose(x, w, bias, stride, padding, output_padding, dilation, groups, outs)
    out = _conv_transpose_slabs(x, w, stride, padding, dilation, groups, outs, limit)
    return out if bias is None else out + bias.view(-1, *(1,) * len(outs))


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


def _conv_transpose_slabs(
    x: torch.Tensor,
    w: torch.Tensor,
    stride: tuple[int, ...],
    padding: tuple[int, ...],
    dilation: tuple[int, ...],
    groups: int,
    outs: tuple[int, ...],
    limit: int,
) -> torch.Tensor:
    """The uncropped transposed conv of input slabs (batch, then input positions of spatial
    dim 0, 1, ...) added into one output buffer, then cropped to ``outs``."""
    n = len(stride)
    kernel = tuple(w.shape[2:])
    spans = _args.span(kernel, dilation)
    c_in, c_out, item = x.shape[1], w.shape[1] * groups, x.element_size()
    k_numel = math.prod(kernel)
    zeros = (0,) * n

    lead = n - min(n, 3)
    k_lead = math.prod(kernel[:lead])

    def fits(batch: int, spatial: Sequence[int]) -> bool:
        cells = math.prod(spatial)
        uncropped = [(s_ - 1) * st + sp for s_, st, sp in zip(spatial, stride, spans, strict=True)]
        # the native output before the leading fold; an im2col-based native kernel's
        # columns of one sample of its batch
        native_out = c_out * k_lead * math.prod(spatial[:lead]) * math.prod(uncropped[lead:])
        native_cols = c_out * k_numel * math.prod(spatial[lead:])
        ours = max(native_out, c_out * math.prod(uncropped), c_in * cells)
        return item * max(batch * ours, native_cols) <= limit

    def uncropped(part: torch.Tensor) -> torch.Tensor:
        size = tuple(
            (s_ - 1) * st + sp for s_, st, sp in zip(part.shape[2:], stride, spans, strict=True)
        )
        return _conv_transpose(part, w, None, stride, zeros, zeros, dilation, groups, size)

    def add(buf: torch.Tensor, part: torch.Tensor, origin: tuple[int, ...], i: int) -> torch.Tensor:
        if i == n or fits(part.shape[0], part.shape[2:]):
            piece = uncropped(part)
            index: tuple[Any, ...] = (
                ...,
                *(
                    slice(a * st, a * st + p)
                    for a, st, p in zip(origin, stride, piece.shape[2:], strict=True)
                ),
            )
            buf[index] += piece
            return buf

        def rows(q: int) -> bool:
            return fits(part.shape[0], (*part.shape[2 : 2 + i], q, *part.shape[3 + i :]))

        size = part.shape[2 + i]
        step = largest(1, size, rows) if rows(1) else 1
        for r0 in range(0, size, step):
            sub = part.narrow(2 + i, r0, min(step, size - r0))
            buf = add(buf, sub, (*origin[:i], origin[i] + r0, *origin[i + 1 :]), i + 1)
        return buf

    full = tuple(
        max((s_ - 1) * st + sp, p + o)
        for s_, st, sp, p, o in zip(x.shape[2:], stride, spans, padding, outs, strict=True)
    )
    crop: tuple[Any, ...] = (..., *(slice(p, p + o) for p, o in zip(padding, outs, strict=True)))

    def one(part: torch.Tensor) -> torch.Tensor:
        buf = part.new_zeros((part.shape[0], c_out, *full))
        buf = add(buf, part, zeros, 0)
        return buf[crop].contiguous()

    batch = x.shape[0]
    if batch <= 1 or not fits(1, x.shape[2:]):
        step = 1
    else:
        step = largest(1, batch, lambda b: fits(b, x.shape[2:]))
    if step >= batch:
        return one(x)
    return torch.cat([one(p) for p in x.split(step)], 0)
