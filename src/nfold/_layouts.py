"""What a slab of conv / conv_transpose costs and which input rows it reads: the
:class:`_slabs.Layout` of each engine, so that one planner (:func:`_slabs.plan`) cuts
the work of both methods.

A layout's ``cost`` is the bytes its slab holds at once beside the whole input and
output: for ``"gemm"`` the largest of its unfolded matrix, matmul result and input
copy (they live one after another); for ``"auto"`` the sum of what torch's native conv
and its leading-dim unfold hold together, including what torch's kernel for that slab's
shape holds (``_native_held``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch

from . import _args
from ._slabs import Param


@dataclasses.dataclass(frozen=True)
class ConvSizes:
    """What every slab layout needs to know (``item``: bytes per element)."""

    kernel: tuple[int, ...]
    dilation: tuple[int, ...]
    stride: tuple[int, ...]
    c_in: int
    c_out: int
    groups: int
    item: int
    weight_numel: int


class ConvSlabs(ConvSizes):
    """conv's layout ("gemm"); a slab's param per dim is its zero padding (lo, hi)."""

    def cost(
        self, batch: int, spatial: Sequence[int], params: Sequence[Param], outs: Sequence[int]
    ) -> int:
        cols = math.prod(outs)
        padded = _args.padded_size(spatial, tuple(params))
        return (
            self.item
            * batch
            * max(
                self.c_in * math.prod(self.kernel) * cols,  # unfolded matrix
                self.c_out * cols,  # matmul result
                self.c_in * math.prod(padded),  # padded (or copied) input slab
                # grouped weight broadcast by matmul
                self.weight_numel if batch > 1 and self.groups > 1 else 0,
            )
        )

    def rows(
        self, i: int, size: int, param: Param, first: int, stop: int
    ) -> tuple[int, int, Param]:
        lo, st = param[0], self.stride[i]
        a = first * st - lo  # input coordinate of the slab's first padded element
        e = (stop - 1) * st + self.dilation[i] * (self.kernel[i] - 1) + 1 - lo  # one past last
        new_lo = min(max(-a, 0), e - a)
        new_hi = min(max(e - size, 0), e - a - new_lo)
        return min(max(a, 0), size), e - a - new_lo - new_hi, (new_lo, new_hi)


@dataclasses.dataclass(frozen=True)
class ConvCacheSlabs(ConvSlabs):
    """conv's layout ("gemm") for the cache budget: a slab is cut for what the GEMM reads
    while it is in cache (the unfolded matrix, the padded input slab), and for every
    intermediate only where that exceeds ``limit`` (``max_workspace_bytes``). The GEMM's
    result is written once: cutting for it alone would only add a concatenation of the
    output (All-CNN-C conv1: half of its forward+backward time)."""

    limit: int | None = None

    def cost(
        self, batch: int, spatial: Sequence[int], params: Sequence[Param], outs: Sequence[int]
    ) -> int:
        every = super().cost(batch, spatial, params, outs)
        if self.limit is not None and every > self.limit:
            return every
        padded = _args.padded_size(spatial, tuple(params))
        unfolded = self.c_in * math.prod(self.kernel) * math.prod(outs)
        return self.item * batch * max(unfolded, self.c_in * math.prod(padded))


class ConvTransposeSlabs(ConvSizes):
    """conv_transpose's layout ("gemm"); a slab's param per dim is the uncropped
    coordinate (relative to its input rows) of its first output position."""

    def cost(
        self, batch: int, spatial: Sequence[int], params: Sequence[Param], outs: Sequence[int]
    ) -> int:
        return (
            self.item
            * batch
            * max(
                self.c_out * math.prod(self.kernel) * math.prod(spatial),  # columns before fold
                self.c_out * math.prod(outs),  # folded slab
                self.c_in * math.prod(spatial),  # input slab (copied if not contiguous)
                # grouped weight broadcast by matmul
                self.weight_numel if batch > 1 and self.groups > 1 else 0,
            )
        )

    def rows(
        self, i: int, size: int, param: Param, first: int, stop: int
    ) -> tuple[int, int, Param]:
        span, st = self.dilation[i] * (self.kernel[i] - 1) + 1, self.stride[i]
        u0, u1 = int(param) + first, int(param) + stop
        lo = max(0, -((span - 1 - u0) // st))  # ceil((u0 - span + 1) / s)
        hi = min(size - 1, (u1 - 1) // st)
        if hi < lo:
            return min(lo, size), 0, 0
        return lo, hi - lo + 1, u0 - lo * st


def transposed_window(
    spatial: Sequence[int], stride: Sequence[int], spans: Sequence[int],
    params: Sequence[Param], outs: Sequence[int],
) -> tuple[tuple[int, ...], tuple[tuple[int, int], ...], list[int]]:  # fmt: skip
    """Where a conv_transpose output slab lies in the uncropped transposed conv of its
    input rows (:class:`ConvTransposeSlabs` params): the uncropped size, the ``(lo, hi)``
    cropped off each dim, and ``F.pad``'s flat list of zeros past its edges (rows no input
    reaches)."""
    full = tuple((s - 1) * st + sp for s, st, sp in zip(spatial, stride, spans, strict=True))
    ends = [(int(p), f - int(p) - o) for p, f, o in zip(params, full, outs, strict=True)]
    crop = tuple((max(lo, 0), max(hi, 0)) for lo, hi in ends)
    extend = [v for lo, hi in reversed(ends) for v in (max(-lo, 0), max(-hi, 0))]
    return full, crop, extend


def backend(
    device: torch.device,
    dtype: torch.dtype,
    x_shape: Sequence[int],
    w_shape: Sequence[int],
    stride: Sequence[int],
    dilation: Sequence[int],
    groups: int,
    transposed: bool,
) -> str:
    """The name of the kernel torch's conv picks for these shapes ("Mkldnn", "Slow3d",
    ...; ``torch._C._select_conv_backend`` on stride-0 dummies, ~2 us), or "Slow" where
    torch cannot tell."""
    select = getattr(torch._C, "_select_conv_backend", None)
    if select is None:
        return "Slow"
    m = len(stride)
    dummy = torch.empty((), dtype=dtype, device=device)
    try:
        picked = select(
            dummy.expand(*x_shape), dummy.expand(*w_shape), None, list(stride), [0] * m,
            list(dilation), transposed, [0] * m, groups, None,
        )  # fmt: skip
    except (RuntimeError, TypeError):
        return "Slow"
    return str(getattr(picked, "name", picked))


def _native_held(
    kernel_name: str,
    x_shape: Sequence[int],
    w_shape: Sequence[int],
    groups: int,
    transposed: bool,
    out_spatial: Sequence[int],
    columns: int,
) -> int:
    """Elements torch's native conv holds beside its input and output, by the kernel it
    picks for these shapes (``kernel_name``, from :func:`backend`): ``columns`` (one
    sample's im2col matrix) for ``slow_conv3d`` & co.; for oneDNN, a copy of the input in
    its blocked layout, channels rounded up to 16, and one of the output unless its
    channels are a multiple of 16 (measured peak RSS on the CPU with torch 2.13, 3 to 48
    channels); nothing for the rest (cuDNN and the depthwise kernels)."""
    if kernel_name.startswith("Slow"):
        return columns
    if not kernel_name.startswith("Mkldnn"):
        return 0
    c_in, c_out = x_shape[1], w_shape[1] * groups if transposed else w_shape[0]
    blocked_out = -(-c_out // 16) * 16 if c_out % 16 else 0  # else written in place
    return x_shape[0] * (
        -(-c_in // 16) * 16 * math.prod(x_shape[2:]) + blocked_out * math.prod(out_spatial)
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Native:
    """Where torch's conv runs (which kernel it picks depends on it), and whether a bias is
    added (a copy of the slab's output)."""

    device: torch.device
    dtype: torch.dtype
    bias: bool


@dataclasses.dataclass(frozen=True)
class NativeConvSlabs(ConvSlabs, _Native):
    """conv's layout for ``"auto"``: torch's ``conv{m}d`` over the trailing dims of an input
    whose leading ``N - m`` dims are unfolded into channels (``_native._conv``)."""

    def cost(
        self, batch: int, spatial: Sequence[int], params: Sequence[Param], outs: Sequence[int]
    ) -> int:
        n = len(self.kernel)
        lead = n - min(n, 3)
        padded = _args.padded_size(spatial, tuple(params))
        cells = self.c_in * math.prod(padded)  # the slab's padded (or copied) input
        depthwise = self.groups > 1 and self.groups == self.c_in  # _native._sum_offsets
        if not lead:
            merged = 0
        elif depthwise:  # a permuted copy of the input, a running sum beside each term
            merged = cells + self.c_out * math.prod(outs)
        else:
            merged = (
                math.prod(outs[:lead])
                * self.c_in
                * math.prod(self.kernel[:lead])
                * math.prod(padded[lead:])
            )
        out = self.c_out * math.prod(outs) * (2 if self.bias else 1)  # bias adds a copy
        held = batch * (cells + merged + out)
        c_native = self.c_in * math.prod(self.kernel[:lead])
        native_x = (batch * math.prod(outs[:lead]), c_native, *padded[lead:])
        native_w = (self.c_out, c_native // self.groups, *self.kernel[lead:])
        columns = self.c_in * math.prod(self.kernel) * math.prod(outs[lead:])
        name = backend(self.device, self.dtype, native_x, native_w, self.stride[lead:],
                       self.dilation[lead:], self.groups, False)  # fmt: skip
        held += _native_held(name, native_x, native_w, self.groups, False, outs[lead:], columns)
        return self.item * held


@dataclasses.dataclass(frozen=True)
class NativeConvTransposeSlabs(ConvTransposeSlabs, _Native):
    """conv_transpose's layout for ``"auto"``: torch's ``conv_transpose{m}d`` over the
    trailing dims, then ``fold`` over the leading ones, uncropped, then cropped."""

    def cost(
        self, batch: int, spatial: Sequence[int], params: Sequence[Param], outs: Sequence[int]
    ) -> int:
        n = len(self.kernel)
        lead = n - min(n, 3)
        spans = _args.span(self.kernel, self.dilation)
        full = [(s - 1) * st + sp for s, st, sp in zip(spatial, self.stride, spans, strict=True)]
        k_lead = math.prod(self.kernel[:lead])
        native_out = self.c_out * k_lead * math.prod(spatial[:lead]) * math.prod(full[lead:])
        uncropped = self.c_out * math.prod(full) if lead else 0  # the fold's result
        out = self.c_out * math.prod(outs) * (2 if self.bias else 1)
        held = batch * (self.c_in * math.prod(spatial) + native_out + uncropped + out)
        native_x = (batch * math.prod(spatial[:lead]), self.c_in, *spatial[lead:])
        native_w = (self.c_in, self.c_out * k_lead // self.groups, *self.kernel[lead:])
        columns = self.c_out * math.prod(self.kernel) * math.prod(spatial[lead:])
        name = backend(self.device, self.dtype, native_x, native_w, self.stride[lead:],
                       self.dilation[lead:], self.groups, True)  # fmt: skip
        held += _native_held(name, native_x, native_w, self.groups, True, full[lead:], columns)
        return self.item * held
