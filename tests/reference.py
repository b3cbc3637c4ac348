"""Slow, obviously-correct references for the nfold tests, written independently of
the code under test (plain Python loops over output positions and kernel offsets;
no strided views, no padding helpers from nfold).

Importable from any test file as ``from reference import ...`` (``tests`` is on
pytest's ``pythonpath``). Keep inputs tiny: cost is O(B-vectorised * L * prod(k)).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch

# --------------------------------------------------------------------------------------
# dtypes and tolerances
# --------------------------------------------------------------------------------------

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
COMPLEX_DTYPES = (torch.complex64, torch.complex128)
INT_DTYPES = (
    torch.uint8,
    torch.int8,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.uint16,
    torch.uint32,
    torch.uint64,
)
ALL_DTYPES = (*FLOAT_DTYPES, *COMPLEX_DTYPES, *INT_DTYPES, torch.bool)

# dtype -> (rtol, atol) for results that went through floating-point arithmetic
# (conv products, round-off comparisons). Data movement is compared with torch.equal.
TOL: dict[torch.dtype, tuple[float, float]] = {
    torch.float16: (1e-3, 1e-5),
    torch.bfloat16: (1.6e-2, 1e-5),
    torch.float32: (1.3e-6, 1e-5),
    torch.float64: (1e-12, 1e-12),
    torch.complex64: (1.3e-6, 1e-5),
    torch.complex128: (1e-12, 1e-12),
}


def tol(dtype: torch.dtype) -> dict[str, float]:
    """Keyword arguments ``rtol``/``atol`` for ``torch.testing.assert_close``."""
    rtol, atol = TOL.get(dtype, (0.0, 0.0))
    return {"rtol": rtol, "atol": atol}


def dtype_id(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# --------------------------------------------------------------------------------------
# seeded generators
# --------------------------------------------------------------------------------------


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def make_tensor(
    shape: Sequence[int], dtype: torch.dtype = torch.float64, seed: int = 0
) -> torch.Tensor:
    """Random tensor of any dtype (normal for float/complex, full range for small ints)."""
    g = generator(seed)
    shape = tuple(shape)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=g).bool()
    if dtype.is_floating_point:
        return torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    if dtype.is_complex:
        real = torch.float64 if dtype == torch.complex128 else torch.float32
        return torch.complex(
            torch.randn(shape, generator=g, dtype=real), torch.randn(shape, generator=g, dtype=real)
        ).to(dtype)
    info = torch.iinfo(dtype)
    low, high = max(info.min, -(2**62)), min(info.max, 2**62)
    return torch.randint(low, high, shape, generator=g, dtype=torch.int64).to(dtype)


def make_exact(
    shape: Sequence[int], dtype: torch.dtype = torch.float64, seed: int = 0
) -> torch.Tensor:
    """Small integer values (|v| <= 8, >= 0 for unsigned) in ``dtype``: sums of a few hundred
    of them are exact in every dtype, so summation order cannot change the result."""
    g = generator(seed)
    shape = tuple(shape)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=g).bool()
    signed = dtype not in (torch.uint8, torch.uint16, torch.uint32, torch.uint64)
    low = -8 if signed else 0
    values = torch.randint(low, 9, shape, generator=g, dtype=torch.int64)
    if dtype.is_complex:
        imag = torch.randint(low, 9, shape, generator=g, dtype=torch.int64)
        return torch.complex(values.double(), imag.double()).to(dtype)
    return values.to(dtype)


# --------------------------------------------------------------------------------------
# geometry helpers (written from the formulas in the docs, not from nfold._args)
# --------------------------------------------------------------------------------------


def as_tuple(value: int | Sequence[int], n: int) -> tuple[int, ...]:
    return (value,) * n if isinstance(value, int) else tuple(value)


def as_pairs(padding: int | Sequence, n: int) -> tuple[tuple[int, int], ...]:
    """int, N-tuple or per-side pairs -> ((lo, hi), ...)."""
    if isinstance(padding, int):
        return ((padding, padding),) * n
    if all(isinstance(p, int) for p in padding):
        return tuple((p, p) for p in padding)
    return tuple((lo, hi) for lo, hi in padding)


def num_blocks(size: int, k: int, d: int, lo: int, hi: int, s: int) -> int:
    return (size + lo + hi - d * (k - 1) - 1) // s + 1


def _source_index(p: int, size: int, lo: int, mode: str) -> int | None:
    """Padded coordinate ``p`` -> index into the unpadded input, or None for a zero."""
    j = p - lo
    if 0 <= j < size:
        return j
    if mode == "zeros":
        return None
    if mode == "replicate":
        return min(max(j, 0), size - 1)
    if mode == "circular":
        return j % size
    if mode == "reflect":  # mirror about the edge elements, edges not repeated
        while not 0 <= j < size:
            j = -j if j < 0 else 2 * (size - 1) - j
        return j
    raise ValueError(mode)


# --------------------------------------------------------------------------------------
# references
# --------------------------------------------------------------------------------------


def ref_unfold(
    x: torch.Tensor,
    kernel_size: int | Sequence[int],
    dilation: int | Sequence[int] = 1,
    padding: int | Sequence = 0,
    stride: int | Sequence[int] = 1,
    padding_mode: str = "zeros",
) -> torch.Tensor:
    """im2col of a batched ``(B, C, *S)`` tensor -> ``(B, C * prod(k), L)``, any N, any dtype."""
    n = x.dim() - 2
    k, d, s = as_tuple(kernel_size, n), as_tuple(dilation, n), as_tuple(stride, n)
    pads = as_pairs(padding, n)
    spatial = x.shape[2:]
    blocks = [num_blocks(spatial[i], k[i], d[i], *pads[i], s[i]) for i in range(n)]
    b, c = x.shape[:2]
    out = torch.zeros((b, c, math.prod(k), math.prod(blocks)), dtype=x.dtype)
    for col, pos in enumerate(itertools.product(*(range(m) for m in blocks))):
        for row, off in enumerate(itertools.product(*(range(m) for m in k))):
            idx = [
                _source_index(pos[i] * s[i] + off[i] * d[i], spatial[i], pads[i][0], padding_mode)
                for i in range(n)
            ]
            if None not in idx:
                out[:, :, row, col] = x[(slice(None), slice(None), *idx)]
    return out.reshape(b, c * math.prod(k), math.prod(blocks))


def ref_fold(
    y: torch.Tensor,
    output_size: Sequence[int],
    kernel_size: int | Sequence[int],
    dilation: int | Sequence[int] = 1,
    padding: int | Sequence = 0,
    stride: int | Sequence[int] = 1,
) -> torch.Tensor:
    """col2im of ``(B, C * prod(k), L)`` -> ``(B, C, *output_size)`` (sums in ``y.dtype``;
    feed exact values when comparing bitwise)."""
    if y.dtype in (torch.uint16, torch.uint32, torch.uint64):  # torch cannot add these
        wide = ref_fold(y.to(torch.int64), output_size, kernel_size, dilation, padding, stride)
        return wide.to(y.dtype)
    output_size = tuple(output_size)
    n = len(output_size)
    k, d, s = as_tuple(kernel_size, n), as_tuple(dilation, n), as_tuple(stride, n)
    pads = as_pairs(padding, n)
    blocks = [num_blocks(output_size[i], k[i], d[i], *pads[i], s[i]) for i in range(n)]
    b = y.shape[0]
    c = y.shape[1] // math.prod(k)
    cols = y.reshape(b, c, math.prod(k), math.prod(blocks))
    out = torch.zeros((b, c, *output_size), dtype=y.dtype)
    for col, pos in enumerate(itertools.product(*(range(m) for m in blocks))):
        for row, off in enumerate(itertools.product(*(range(m) for m in k))):
            idx = [pos[i] * s[i] + off[i] * d[i] - pads[i][0] for i in range(n)]
            if all(0 <= idx[i] < output_size[i] for i in range(n)):
                where = (slice(None), slice(None), *idx)
                out[where] = out[where] + cols[:, :, row, col]
    return out


def ref_unfold_transpose(
    x: torch.Tensor,
    kernel_size: int | Sequence[int],
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    output_padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
) -> torch.Tensor:
    """im2col of a transposed conv: ``(B, C, *S)`` -> ``(B, C * prod(k), prod(out))`` with
    ``U[c*K + j, o] = x[c, i]`` where ``o = i * s - p + j * d`` (the definition of
    ``conv_transpose``: input element ``i`` meets weight offset ``j`` at output ``o``)."""
    n = x.dim() - 2
    k, s, p = as_tuple(kernel_size, n), as_tuple(stride, n), as_tuple(padding, n)
    op, d = as_tuple(output_padding, n), as_tuple(dilation, n)
    spatial = x.shape[2:]
    out_size = [
        (spatial[i] - 1) * s[i] - 2 * p[i] + d[i] * (k[i] - 1) + op[i] + 1 for i in range(n)
    ]
    b, c = x.shape[:2]
    out = torch.zeros((b, c, math.prod(k), math.prod(out_size)), dtype=x.dtype)
    for col, pos in enumerate(itertools.product(*(range(m) for m in out_size))):
        for row, off in enumerate(itertools.product(*(range(m) for m in k))):
            idx = []
            for i in range(n):
                num = pos[i] + p[i] - off[i] * d[i]
                if num % s[i] or not 0 <= num // s[i] < spatial[i]:
                    break
                idx.append(num // s[i])
            else:
                out[:, :, row, col] = x[(slice(None), slice(None), *idx)]
    return out.reshape(b, c * math.prod(k), math.prod(out_size))


def transpose_out_size(
    spatial: Sequence[int],
    kernel_size: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    output_padding: Sequence[int],
    dilation: Sequence[int],
) -> tuple[int, ...]:
    return tuple(
        (sz - 1) * s - 2 * p + d * (k - 1) + op + 1
        for sz, k, s, p, op, d in zip(
            spatial, kernel_size, stride, padding, output_padding, dilation, strict=True
        )
    )


def grouped_matmul(weight2d: torch.Tensor, cols: torch.Tensor, groups: int) -> torch.Tensor:
    """``(C_out, C_in/g * K) x (B, C_in * K, L) -> (B, C_out, L)``, one matmul per group
    (the block-diagonal product written out by hand)."""
    outs = []
    for w_g, c_g in zip(weight2d.chunk(groups, 0), cols.chunk(groups, 1), strict=True):
        outs.append(w_g @ c_g)
    return torch.cat(outs, 1)


def ref_conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
) -> torch.Tensor:
    """N-d convolution from ``ref_unfold`` (weight ``(C_out, C_in/groups, *k)``), any N."""
    n = x.dim() - 2
    k = tuple(weight.shape[2:])
    cols = ref_unfold(x, k, dilation, padding, stride, padding_mode)
    pads, s, d = as_pairs(padding, n), as_tuple(stride, n), as_tuple(dilation, n)
    blocks = [num_blocks(x.shape[2 + i], k[i], d[i], *pads[i], s[i]) for i in range(n)]
    out = grouped_matmul(weight.flatten(1), cols, groups)
    return out.reshape(x.shape[0], weight.shape[0], *blocks)


def ref_conv_transpose(
    x: torch.Tensor,
    weight: torch.Tensor,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    output_padding: int | Sequence[int] = 0,
    groups: int = 1,
    dilation: int | Sequence[int] = 1,
) -> torch.Tensor:
    """N-d transposed convolution from ``ref_unfold_transpose`` (weight
    ``(C_in, C_out/groups, *k)``), any N."""
    n = x.dim() - 2
    k = tuple(weight.shape[2:])
    cols = ref_unfold_transpose(x, k, stride, padding, output_padding, dilation)
    c_in, c_out_g = weight.shape[:2]
    # per group: (C_out/g, C_in/g * K)
    w2d = torch.cat(
        [w.transpose(0, 1).flatten(1) for w in weight.chunk(groups, 0)], 0
    )  # (C_out, C_in/g * K)
    size = transpose_out_size(
        x.shape[2:],
        k,
        as_tuple(stride, n),
        as_tuple(padding, n),
        as_tuple(output_padding, n),
        as_tuple(dilation, n),
    )
    return grouped_matmul(w2d, cols, groups).reshape(x.shape[0], c_out_g * groups, *size)
