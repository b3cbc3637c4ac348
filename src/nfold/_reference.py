"""Slow, obviously-correct reference ops for any number N of spatial dims.

``nfold check`` compares nfold against these where torch has no op (unfold and fold for
N != 2, unfold_transpose, conv and conv_transpose for N > 3). They are written from
the definitions, independently of nfold's own code (no ``nfold.unfold``, no shared
argument helpers), so that a bug in nfold cannot hide in its own reference:

- padding: explicit per-dim index lists (reflect / replicate / circular) or zero blocks;
- conv: one strided slice of the padded input per kernel offset, contracted with that
  offset's weight by ``einsum``, summed over offsets;
- conv_transpose: the scatter form, each input element times the kernel added into
  ``i * stride + offset * dilation`` of an uncropped output, then cropped by ``padding``;
- unfold, fold, unfold_transpose: the same slices copied or added without weights.

Everything is plain autograd over slicing, ``einsum`` and ``cat``, so the reference
gradients are torch's derivatives of these definitions. Small shapes only: the loops
run over every kernel offset in Python.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["blocks", "conv", "conv_transpose", "fold", "pad", "pairs", "unfold", "unfold_transpose"]


def _tuple(value: int | Sequence[int], n: int) -> tuple[int, ...]:
    out = (value,) * n if isinstance(value, int) else tuple(value)
    if len(out) != n:
        raise ValueError(f"expected an int or {n} ints, got {value!r}")
    return out


def pairs(
    padding: object, kernel_size: Sequence[int], dilation: Sequence[int]
) -> tuple[tuple[int, int], ...]:
    """``((lo, hi), ...)`` from an int, an N-tuple, per-side pairs, "valid" or "same"
    ("same": total ``d * (k - 1)``, the odd element on the high side, as torch's conv)."""
    n = len(kernel_size)
    if padding == "valid":
        return ((0, 0),) * n
    if padding == "same":
        totals = [d * (k - 1) for k, d in zip(kernel_size, dilation, strict=True)]
        return tuple((t // 2, t - t // 2) for t in totals)
    if isinstance(padding, int):
        return ((padding, padding),) * n
    out = []
    for p in padding:  # type: ignore[attr-defined]
        out.append((p, p) if isinstance(p, int) else (p[0], p[1]))
    if len(out) != n:
        raise ValueError(f"padding {padding!r} does not have {n} entries")
    return tuple(out)


def _source_index(j: int, size: int, mode: str) -> int:
    """Where position ``j`` (may lie outside ``[0, size)``) reads from in the input."""
    if 0 <= j < size:
        return j
    if mode == "reflect":  # mirror about the edge element, which is not repeated
        return -j if j < 0 else 2 * (size - 1) - j
    if mode == "replicate":
        return 0 if j < 0 else size - 1
    if mode == "circular":
        return j % size
    raise ValueError(f"unknown padding mode {mode!r}")


def pad(x: torch.Tensor, pads: Sequence[tuple[int, int]], mode: str = "zeros") -> torch.Tensor:
    """Pad the last ``len(pads)`` dims by ``(lo, hi)`` each, for any number of dims."""
    n = len(pads)
    for i, (lo, hi) in enumerate(pads):
        dim = x.dim() - n + i
        size = x.shape[dim]
        if mode == "zeros":
            shape = list(x.shape)
            parts = []
            if lo:
                shape[dim] = lo
                parts.append(x.new_zeros(shape))
            parts.append(x)
            if hi:
                shape[dim] = hi
                parts.append(x.new_zeros(shape))
            x = torch.cat(parts, dim)
        else:
            index = [_source_index(j, size, mode) for j in range(-lo, size + hi)]
            x = x.index_select(dim, torch.tensor(index, dtype=torch.long, device=x.device))
    return x


def blocks(
    spatial: Sequence[int],
    kernel_size: Sequence[int],
    dilation: Sequence[int],
    pads: Sequence[tuple[int, int]],
    stride: Sequence[int],
) -> tuple[int, ...]:
    """Number of sliding blocks per dim over the padded input."""
    return tuple(
        (s + lo + hi - d * (k - 1) - 1) // st + 1
        for s, k, d, (lo, hi), st in zip(spatial, kernel_size, dilation, pads, stride, strict=True)
    )


Index = tuple[Any, ...]  # a tensor index: mixes Ellipsis, slices and ints


def _offsets(kernel_size: Sequence[int]) -> list[Index]:
    return list(itertools.product(*(range(k) for k in kernel_size)))  # row-major


def _window(
    offset: Sequence[int], dilation: Sequence[int], stride: Sequence[int], count: Sequence[int]
) -> Index:
    """Positions ``offset * d + i * s`` for ``i < count``, per dim."""
    return tuple(
        slice(j * d, j * d + (c - 1) * s + 1, s)
        for j, d, s, c in zip(offset, dilation, stride, count, strict=True)
    )


def unfold(
    input: torch.Tensor,
    kernel_size: int | Sequence[int],
    dilation: int | Sequence[int] = 1,
    padding: object = 0,
    stride: int | Sequence[int] = 1,
    padding_mode: str = "zeros",
) -> torch.Tensor:
    """``(B, C, *S)`` -> ``(B, C * prod(k), prod(L))``; N is ``input.dim() - 2``."""
    n = input.dim() - 2
    k, d, s = _tuple(kernel_size, n), _tuple(dilation, n), _tuple(stride, n)
    x = pad(input, pairs(padding, k, d), padding_mode)
    count = blocks(x.shape[2:], k, d, ((0, 0),) * n, s)
    cols = [x[(..., *_window(off, d, s, count))] for off in _offsets(k)]
    out = torch.stack(cols, dim=2)  # (B, C, prod(k), *L)
    return out.reshape(x.shape[0], x.shape[1] * math.prod(k), math.prod(count))


def fold(
    input: torch.Tensor,
    output_size: int | Sequence[int],
    kernel_size: int | Sequence[int],
    dilation: int | Sequence[int] = 1,
    padding: object = 0,
    stride: int | Sequence[int] = 1,
    reduction: str = "sum",
) -> torch.Tensor:
    """``(B, C * prod(k), L)`` -> ``(B, C, *output_size)``: every block added back where
    unfold took it from; ``reduction="mean"`` divides by the number of covering blocks."""
    if input.dtype in (torch.uint16, torch.uint32, torch.uint64):  # torch cannot add these
        wide = fold(input.long(), output_size, kernel_size, dilation, padding, stride, reduction)
        return wide.to(input.dtype)
    tuples = [v for v in (output_size, kernel_size, dilation, stride) if not isinstance(v, int)]
    n = len(tuples[0]) if tuples else 2  # ints only: 2 spatial dims, as torch's fold
    size = _tuple(output_size, n)
    k, d, s = _tuple(kernel_size, n), _tuple(dilation, n), _tuple(stride, n)
    pads = pairs(padding, k, d)
    count = blocks(size, k, d, pads, s)
    batch, channels = input.shape[0], input.shape[1] // math.prod(k)
    cols = input.reshape(batch, channels, math.prod(k), *count)
    padded = [sz + lo + hi for sz, (lo, hi) in zip(size, pads, strict=True)]
    full = input.new_zeros((batch, channels, *padded))
    covered = torch.zeros(padded, dtype=torch.long, device=input.device)
    for i, off in enumerate(_offsets(k)):
        window = _window(off, d, s, count)
        full[(slice(None), slice(None), *window)] += cols[:, :, i]
        covered[window] += 1
    crop: Index = tuple(slice(lo, lo + sz) for sz, (lo, _) in zip(size, pads, strict=True))
    out = full[(..., *crop)]
    if reduction == "mean":
        out = out / covered[crop].clamp(min=1).to(out.dtype)
    return out


def unfold_transpose(
    input: torch.Tensor,
    kernel_size: int | Sequence[int],
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    output_padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
) -> torch.Tensor:
    """The columns ``U`` with ``conv_transpose(x, W) == W.transpose(0, 1).flatten(1) @ U``:
    ``U[b, c * prod(k) + flat(j), o] = x[b, c, i]`` where ``o + p == i * s + j * d``, else 0."""
    n = input.dim() - 2
    k, s, p = _tuple(kernel_size, n), _tuple(stride, n), _tuple(padding, n)
    op, d = _tuple(output_padding, n), _tuple(dilation, n)
    spatial = input.shape[2:]
    out = [
        (i - 1) * st - 2 * pp + dd * (kk - 1) + o + 1
        for i, st, pp, dd, kk, o in zip(spatial, s, p, d, k, op, strict=True)
    ]
    full_size = [
        (i - 1) * st + dd * (kk - 1) + 1 + o
        for i, st, dd, kk, o in zip(spatial, s, d, k, op, strict=True)
    ]
    batch, channels = input.shape[:2]
    offsets = _offsets(k)
    full = input.new_zeros((batch, channels, len(offsets), *full_size))
    for i, off in enumerate(offsets):
        full[(slice(None), slice(None), i, *_window(off, d, s, spatial))] = input
    crop: Index = tuple(slice(pp, pp + o) for pp, o in zip(p, out, strict=True))
    return full[(..., *crop)].reshape(batch, channels * len(offsets), math.prod(out))


def _batched(input: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, bool]:
    return (input, True) if input.dim() == weight.dim() else (input.unsqueeze(0), False)


def conv(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | Sequence[int] = 1,
    padding: object = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
) -> torch.Tensor:
    """Cross-correlation, weight ``(C_out, C_in / groups, *k)``, as torch's ``convNd``."""
    x, batched = _batched(input, weight)
    n = weight.dim() - 2
    k = tuple(weight.shape[2:])
    s, d = _tuple(stride, n), _tuple(dilation, n)
    x = pad(x, pairs(padding, k, d), padding_mode)
    count = blocks(x.shape[2:], k, d, ((0, 0),) * n, s)
    batch, c_in = x.shape[:2]
    c_out = weight.shape[0]
    xg = x.reshape(batch, groups, c_in // groups, *x.shape[2:])
    wg = weight.reshape(groups, c_out // groups, c_in // groups, *k)
    terms = []
    for off in _offsets(k):
        patch = xg[(slice(None), slice(None), slice(None), *_window(off, d, s, count))]
        terms.append(torch.einsum("bgc...,goc->bgo...", patch, wg[(..., *off)]))
    out = terms[0]
    for term in terms[1:]:
        out = out + term
    out = out.reshape(batch, c_out, *count)
    if bias is not None:
        out = out + bias.reshape(1, c_out, *(1,) * n)
    return out if batched else out.squeeze(0)


def conv_transpose(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    output_padding: int | Sequence[int] = 0,
    groups: int = 1,
    dilation: int | Sequence[int] = 1,
    output_size: Sequence[int] | None = None,
) -> torch.Tensor:
    """Transposed convolution, weight ``(C_in, C_out / groups, *k)``, as torch's
    ``conv_transposeNd``: ``x[b, c, i] * W[c, o, j]`` lands at ``i * s + j * d - p``."""
    x, batched = _batched(input, weight)
    n = weight.dim() - 2
    k = tuple(weight.shape[2:])
    s, p, d = _tuple(stride, n), _tuple(padding, n), _tuple(dilation, n)
    spatial = tuple(x.shape[2:])
    smallest = [
        (i - 1) * st - 2 * pp + dd * (kk - 1) + 1
        for i, st, pp, dd, kk in zip(spatial, s, p, d, k, strict=True)
    ]
    if output_size is not None:
        op = tuple(o - m for o, m in zip(tuple(output_size)[-n:], smallest, strict=True))
    else:
        op = _tuple(output_padding, n)
    out = [m + o for m, o in zip(smallest, op, strict=True)]
    batch, c_in = x.shape[:2]
    c_out = weight.shape[1] * groups
    xg = x.reshape(batch, groups, c_in // groups, *spatial)
    wg = weight.reshape(groups, c_in // groups, c_out // groups, *k)
    full_size = [m + 2 * pp + o for m, pp, o in zip(smallest, p, op, strict=True)]
    full = x.new_zeros((batch, groups, c_out // groups, *full_size))
    for off in _offsets(k):
        term = torch.einsum("bgc...,gco->bgo...", xg, wg[(..., *off)])
        full[(slice(None), slice(None), slice(None), *_window(off, d, s, spatial))] += term
    crop: Index = tuple(slice(pp, pp + o) for pp, o in zip(p, out, strict=True))
    result = full[(..., *crop)].reshape(batch, c_out, *out)
    if bias is not None:
        result = result + bias.reshape(1, c_out, *(1,) * n)
    return result if batched else result.squeeze(0)
