"""Seeded differential fuzzer for nfold ("never a silently wrong number", issue 7).

Each case draws N in 1..5, a shape, kernel, stride, dilation, a padding form and mode,
groups, output_padding and a dtype, runs one nfold op and compares it with

* an independent reference written here from the index formulas (gathers and scatters
  over explicit per-dim index tables; no nfold code), for every N;
* torch where torch has the op: ``F.unfold``/``F.fold`` (N = 2), ``F.conv{N}d`` and
  ``F.conv_transpose{N}d`` (N <= 3; larger N by an exact recursion over the first spatial
  dim down to ``F.conv3d``/``F.conv_transpose3d``), and ``W @ unfold(x)`` against
  ``F.conv{N}d`` for every N <= 3.

Comparisons:

* Data-movement ops (unfold, fold, unfold_transpose, sliding_window_view and their
  gradients) are compared bitwise (``torch.equal``) in every dtype (integer, bool, half,
  bfloat16, complex included). The data are small integers, so every sum fold does is
  exact in any order; a bitwise difference is a bug, never round-off. ``reduction="mean"``
  divides, so it is compared to within one rounding of the dtype.
* conv / conv_transpose (forward and the gradients of input, weight and bias) are
  compared in float64 (and some float32) against a bound derived from the standard
  summation error analysis: two implementations that each compute a sum of K products
  in any order differ by at most ``2 * gamma_K * sum|terms|`` per element, with
  ``gamma_K = K u / (1 - K u)`` and u the unit round-off (2**-53 for float64, 2**-24 for
  float32). ``sum|terms|`` is computed exactly per element by running the reference on
  ``|x|``, ``|w|``, ``|b|``, ``|grad|``. An indexing bug moves at least one O(1) term
  and exceeds this bound by many orders of magnitude.

Usage (from the repo root or from tests/)::

    python tests/fuzz.py --cases 10000 [--seed 0] [--ops conv,fold] [--case 123]
    cd tests && python -m fuzz --cases 10000

Prints the cases tried, the mismatches and per-op counts; exits 1 on any mismatch.
Every case is reproducible on its own from (seed, index): ``--seed S --case I``.
"""

from __future__ import annotations

import argparse
import itertools
import math
import random
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

import nfold
from nfold import conv as nf_conv
from nfold import conv_transpose as nf_conv_transpose

# ----------------------------------------------------------------------------------------
# Independent reference (index formulas only; nothing from nfold)
# ----------------------------------------------------------------------------------------


def _source_index(q: int, size: int, mode: str) -> int:
    """Input index that padded coordinate ``q`` (0 = first unpadded element) reads, or -1
    for a zero. Modes as in torch.nn.ConvNd (padding < size for reflect, <= for circular)."""
    if 0 <= q < size:
        return q
    if mode == "zeros":
        return -1
    if mode == "reflect":
        return -q if q < 0 else 2 * (size - 1) - q
    if mode == "replicate":
        return min(max(q, 0), size - 1)
    if mode == "circular":
        return q % size
    raise AssertionError(mode)


def _gather(x: torch.Tensor, tables: list[list[list[int]]]) -> torch.Tensor:
    """``(B, C, *S)`` -> ``(B, C, *A, *Bt)`` with ``out[..., a, b] = x[..., tables[i][a][b]]``
    (per spatial dim i; -1 reads a zero). Pure indexing: bitwise in every dtype."""
    batch, channels, *spatial = x.shape
    n = len(spatial)
    a_sizes = [len(t) for t in tables]
    b_sizes = [len(t[0]) if t else 0 for t in tables]
    total = math.prod(spatial)
    flat = torch.zeros(a_sizes + b_sizes, dtype=torch.long)
    valid = torch.ones(a_sizes + b_sizes, dtype=torch.bool)
    row_stride = 1
    for i in reversed(range(n)):
        shape = [1] * (2 * n)
        shape[i], shape[n + i] = a_sizes[i], b_sizes[i]
        t = torch.tensor(tables[i], dtype=torch.long).reshape(shape)
        flat = flat + t.clamp(min=0) * row_stride
        valid = valid & (t >= 0)
        row_stride *= spatial[i]
    flat = torch.where(valid, flat, torch.full_like(flat, total))
    xf = torch.cat([x.reshape(batch, channels, total), x.new_zeros(batch, channels, 1)], 2)
    return xf[:, :, flat.reshape(-1)].reshape(batch, channels, *a_sizes, *b_sizes)


def _blocks(spatial, kernel, dilation, pads, stride):
    return [
        (s + lo + hi - d * (k - 1) - 1) // st + 1
        for s, k, d, (lo, hi), st in zip(spatial, kernel, dilation, pads, stride, strict=True)
    ]


def _unfold_tables(spatial, kernel, dilation, pads, stride, mode):
    blocks = _blocks(spatial, kernel, dilation, pads, stride)
    return [
        [[_source_index(b * st + o * d - lo, s, mode) for b in range(nb)] for o in range(k)]
        for s, k, d, (lo, _), st, nb in zip(
            spatial, kernel, dilation, pads, stride, blocks, strict=True
        )
    ], blocks


def ref_unfold(x, kernel, dilation, pads, stride, mode="zeros"):
    """``(B, C, *S)`` -> ``(B, C * prod(k), prod(L))``, row c*prod(k)+flat(offset)."""
    tables, blocks = _unfold_tables(x.shape[2:], kernel, dilation, pads, stride, mode)
    out = _gather(x, tables)
    return out.reshape(x.shape[0], x.shape[1] * math.prod(kernel), math.prod(blocks))


UNSIGNED_NO_ADD = tuple(
    getattr(torch, n) for n in ("uint16", "uint32", "uint64") if hasattr(torch, n)
)


def ref_fold(y, spatial, kernel, dilation, pads, stride):
    """Adjoint of ref_unfold (zero padding): scatter-add each kernel offset's columns."""
    tables, blocks = _unfold_tables(spatial, kernel, dilation, pads, stride, "zeros")
    batch = y.shape[0]
    channels = y.shape[1] // math.prod(kernel)
    total = math.prod(spatial)
    cols = y.reshape(batch, channels, math.prod(kernel), math.prod(blocks))
    # torch has no add for uint16/32/64: sum those in int64 (same bits modulo 2**bits)
    acc = torch.int64 if y.dtype in UNSIGNED_NO_ADD else y.dtype
    cols = cols.to(acc)
    out = torch.zeros(batch, channels, total + 1, dtype=acc)  # last column: discard
    for r, offset in enumerate(itertools.product(*(range(k) for k in kernel))):
        flat = torch.zeros(blocks, dtype=torch.long)
        valid = torch.ones(blocks, dtype=torch.bool)
        row_stride = 1
        for i in reversed(range(len(spatial))):
            shape = [1] * len(spatial)
            shape[i] = blocks[i]
            t = torch.tensor(tables[i][offset[i]], dtype=torch.long).reshape(shape)
            flat = flat + t.clamp(min=0) * row_stride
            valid = valid & (t >= 0)
            row_stride *= spatial[i]
        idx = torch.where(valid, flat, torch.full_like(flat, total)).reshape(-1)
        keep = idx < total  # within one offset the valid targets are distinct
        out[:, :, idx[keep]] = out[:, :, idx[keep]] + cols[:, :, r][:, :, keep]
    return out[:, :, :total].reshape(batch, channels, *spatial).to(y.dtype)


def ref_unfold_transpose(x, kernel, stride, padding, output_padding, dilation):
    """Row (c, o), column q of the transposed im2col holds x[c, p] with
    q = p * s - pad + o * d (per dim), zero where no such p exists."""
    spatial = x.shape[2:]
    out_sizes = [
        (s - 1) * st - 2 * p + d * (k - 1) + op + 1
        for s, k, st, p, op, d in zip(
            spatial, kernel, stride, padding, output_padding, dilation, strict=True
        )
    ]
    tables = []
    for s, k, st, p, d, size in zip(
        spatial, kernel, stride, padding, dilation, out_sizes, strict=True
    ):
        rows = []
        for o in range(k):
            row = []
            for q in range(size):
                num = q + p - o * d
                row.append(num // st if num % st == 0 and 0 <= num // st < s else -1)
            rows.append(row)
        tables.append(rows)
    out = _gather(x, tables)
    return out.reshape(x.shape[0], x.shape[1] * math.prod(kernel), math.prod(out_sizes))


def ref_sliding_window_view(x, kernel, dilation, stride):
    blocks = _blocks(x.shape[2:], kernel, dilation, [(0, 0)] * len(kernel), stride)
    tables = [
        [[b * st + o * d for o in range(k)] for b in range(nb)]
        for k, d, st, nb in zip(kernel, dilation, stride, blocks, strict=True)
    ]
    return _gather(x, tables)


def ref_pad(x, pads, mode):
    tables = [
        [[_source_index(q, s, mode) for q in range(-lo, s + hi)]]
        for s, (lo, hi) in zip(x.shape[2:], pads, strict=True)
    ]
    return _gather(x, tables).reshape(*x.shape[:2], *(len(t[0]) for t in tables))


def _conv_valid(x, w, stride, dilation, groups):
    """Unpadded convolution; N <= 3 by torch, larger N by summing (N-1)-d convolutions
    over the kernel offsets of the first spatial dim."""
    n = x.dim() - 2
    if n <= 3:
        return getattr(F, f"conv{n}d")(x, w, None, stride, 0, dilation, groups)
    k0, s0, d0 = w.shape[2], stride[0], dilation[0]
    blocks = (x.shape[2] - d0 * (k0 - 1) - 1) // s0 + 1
    batch, channels = x.shape[:2]
    out = None
    for j in range(k0):
        xs = x[:, :, j * d0 : j * d0 + (blocks - 1) * s0 + 1 : s0]
        xs = xs.movedim(2, 1).reshape(batch * blocks, channels, *xs.shape[3:])
        y = _conv_valid(xs, w[:, :, j], stride[1:], dilation[1:], groups)
        y = y.reshape(batch, blocks, *y.shape[1:]).movedim(1, 2)
        out = y if out is None else out + y
    return out


def ref_conv(x, w, b, stride, pads, dilation, groups, mode):
    y = _conv_valid(ref_pad(x, pads, mode), w, stride, dilation, groups)
    if b is not None:
        y = y + b.reshape(1, -1, *[1] * (y.dim() - 2))
    return y


def _conv_transpose_nb(x, w, stride, padding, output_padding, dilation, groups):
    n = x.dim() - 2
    if n <= 3:
        f = getattr(F, f"conv_transpose{n}d")
        return f(x, w, None, stride, padding, output_padding, groups, dilation)
    k0, s0, p0, op0, d0 = w.shape[2], stride[0], padding[0], output_padding[0], dilation[0]
    size0 = x.shape[2]
    out0 = (size0 - 1) * s0 - 2 * p0 + d0 * (k0 - 1) + op0 + 1
    batch, channels = x.shape[:2]
    xs = x.movedim(2, 1).reshape(batch * size0, channels, *x.shape[3:])
    out = None
    for j in range(k0):
        y = _conv_transpose_nb(
            xs, w[:, :, j], stride[1:], padding[1:], output_padding[1:], dilation[1:], groups
        )
        y = y.reshape(batch, size0, *y.shape[1:])
        if out is None:
            out = y.new_zeros(batch, out0, *y.shape[2:])
        for p in range(size0):
            q = p * s0 + j * d0 - p0
            if 0 <= q < out0:
                out[:, q] = out[:, q] + y[:, p]
    return out.movedim(1, 2)


def ref_conv_transpose(x, w, b, stride, padding, output_padding, dilation, groups):
    y = _conv_transpose_nb(x, w, stride, padding, output_padding, dilation, groups)
    if b is not None:
        y = y + b.reshape(1, -1, *[1] * (y.dim() - 2))
    return y


# ----------------------------------------------------------------------------------------
# Case generation
# ----------------------------------------------------------------------------------------

DM_DTYPES = [
    torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.complex64,
    torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool,
    torch.complex128,
] + [getattr(torch, n) for n in ("uint16", "uint32", "uint64") if hasattr(torch, n)]  # fmt: skip
MODES = ["zeros", "reflect", "replicate", "circular"]
BUDGET = 6000  # max elements of the largest tensor a case builds (2 shared cores)


def small_ints(rng: torch.Generator, shape, dtype) -> torch.Tensor:
    """Integer-valued data (so that every sum is exact in any order), any dtype."""
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=rng).bool()
    if not dtype.is_signed and not dtype.is_floating_point and not dtype.is_complex:
        return torch.randint(0, 7, shape, generator=rng).to(dtype)  # unsigned ints
    v = torch.randint(-3, 4, shape, generator=rng)
    if dtype.is_complex:
        return torch.complex(v.double(), torch.randint(-3, 4, shape, generator=rng).double()).to(
            dtype
        )
    return v.to(dtype)


def normal(rng: torch.Generator, shape, dtype) -> torch.Tensor:
    return torch.randn(shape, generator=rng, dtype=torch.float64).to(dtype)


def restride(t: torch.Tensor, how: str) -> torch.Tensor:
    """Same values, different memory layout."""
    if how == "strided":  # every other element of a wider buffer
        buf = torch.zeros(*t.shape, 2, dtype=t.dtype)
        out = buf[..., 0]
        out.copy_(t)
        return out
    if how == "permuted" and t.dim() >= 2:  # channels-last-like: C innermost
        perm = [0, *range(2, t.dim()), 1]
        return t.permute(perm).contiguous().permute([0, t.dim() - 1, *range(1, t.dim() - 1)])
    return t


def _as_size_arg(rnd: random.Random, values: tuple[int, ...], allow_int: bool):
    """An N-tuple of sizes in one of its accepted spellings."""
    if allow_int and len(set(values)) == 1 and rnd.random() < 0.5:
        return values[0]
    return list(values) if rnd.random() < 0.2 else tuple(values)


def _padding_arg(rnd, pads, allow_int, spelled):
    """Per-side pairs in the spelling ``spelled`` (int / tuple / pairs)."""
    if spelled == "pairs":
        return tuple((lo, hi) for lo, hi in pads)
    return _as_size_arg(rnd, tuple(lo for lo, _ in pads), allow_int)


@dataclass
class Case:
    op: str
    n: int
    desc: dict = field(default_factory=dict)


def _dims(rnd: random.Random, n: int):
    kmax = 3 if n <= 3 else 2
    kernel = tuple(rnd.randint(1, kmax) for _ in range(n))
    dilation = tuple(rnd.choice([1, 1, 2, 3]) if rnd.random() < 0.5 else 1 for _ in range(n))
    stride = tuple(rnd.choice([1, 1, 2, 3]) if rnd.random() < 0.6 else 1 for _ in range(n))
    return kernel, dilation, stride


def gen_unfold_geometry(rnd: random.Random, n: int, mode_choice=True, same_ok=True):
    """(kernel, dilation, stride, pads, padding_arg, mode, spatial)."""
    kernel, dilation, stride = _dims(rnd, n)
    mode = rnd.choice(MODES) if mode_choice else "zeros"
    form = rnd.choice(
        ["int", "tuple", "pairs", "valid", "same"]
        if same_ok
        else ["int", "tuple", "pairs", "valid"]
    )
    if form == "same":
        stride = (1,) * n
        pads = tuple(
            (d * (k - 1) // 2, d * (k - 1) - d * (k - 1) // 2)
            for k, d in zip(kernel, dilation, strict=True)
        )
    elif form == "valid":
        pads = ((0, 0),) * n
    elif form == "pairs":
        pads = tuple((rnd.randint(0, 2), rnd.randint(0, 2)) for _ in range(n))
    else:
        p = tuple(rnd.randint(0, 2) for _ in range(n))
        if form == "int":
            p = (p[0],) * n
        pads = tuple((v, v) for v in p)
    spatial = []
    for k, d, (lo, hi) in zip(kernel, dilation, pads, strict=True):
        span = d * (k - 1) + 1
        least = max(1, span - lo - hi)
        if mode == "reflect":
            least = max(least, max(lo, hi) + 1)
        elif mode == "circular":
            least = max(least, lo, hi)
        spatial.append(rnd.randint(least, least + (4 if n <= 2 else 2)))
    if form in ("valid", "same"):
        padding_arg = form
    elif form == "pairs":
        padding_arg = tuple(pads)
    else:
        padding_arg = _as_size_arg(rnd, tuple(lo for lo, _ in pads), allow_int=True)
    return kernel, dilation, stride, pads, padding_arg, mode, tuple(spatial)


def _spell(rnd, values, tuple_needed):
    """Spell an N-tuple as an int only when some other argument carries N."""
    return _as_size_arg(rnd, values, allow_int=not tuple_needed)


# ----------------------------------------------------------------------------------------
# Comparison helpers
# ----------------------------------------------------------------------------------------

UNIT_ROUNDOFF = {torch.float64: 2.0**-53, torch.float32: 2.0**-24}


class Mismatch(Exception):
    pass


def same(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    if got.shape != want.shape:
        raise Mismatch(f"{what}: shape {tuple(got.shape)} != expected {tuple(want.shape)}")
    if got.dtype != want.dtype:
        raise Mismatch(f"{what}: dtype {got.dtype} != expected {want.dtype}")
    if not torch.equal(got, want):
        diff = (got != want).nonzero()
        raise Mismatch(f"{what}: {len(diff)} elements differ, first at {diff[0].tolist()}")


def close_dtype(got, want, what):
    """Within one rounding of the dtype (for reduction="mean")."""
    if got.shape != want.shape or got.dtype != want.dtype:
        raise Mismatch(f"{what}: {got.shape}/{got.dtype} != {want.shape}/{want.dtype}")
    try:
        torch.testing.assert_close(got, want)
    except AssertionError as e:
        raise Mismatch(f"{what}: {e}") from None


def within_bound(got, want, abs_terms, k_terms, what):
    """|got - want| <= 2 gamma_K sum|terms| (+ the smallest normal, for exact zeros)."""
    if got.shape != want.shape or got.dtype != want.dtype:
        raise Mismatch(
            f"{what}: {tuple(got.shape)}/{got.dtype} != {tuple(want.shape)}/{want.dtype}"
        )
    u = UNIT_ROUNDOFF[want.dtype]
    gamma = k_terms * u / (1 - k_terms * u)
    err = (got.double() - want.double()).abs()
    bound = 2 * gamma * abs_terms.double() + torch.finfo(want.dtype).tiny
    bad = err > bound
    if bad.any():
        i = bad.nonzero()[0].tolist()
        raise Mismatch(
            f"{what}: |err| {err[tuple(i)].item():.3e} > bound {bound[tuple(i)].item():.3e} at {i} "
            f"(max err {err.max().item():.3e}, K={k_terms})"
        )


def check_unchanged(before: list[torch.Tensor], after: list[torch.Tensor], what: str) -> None:
    for i, (b, a) in enumerate(zip(before, after, strict=True)):
        if not torch.equal(b, a):
            raise Mismatch(f"{what}: input {i} was modified")


def _grads(out, inputs, grad_out):
    """Gradients of <out, grad_out>; an input the output does not depend on gets zeros
    (as torch's convolutions give). An output cut off from the graph is a bug: torch's
    ops always connect it, so ``loss.backward()`` would fail."""
    if not out.requires_grad:
        raise Mismatch("output does not require grad although its inputs do")
    grads = torch.autograd.grad(out, inputs, grad_out, allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for t, g in zip(inputs, grads, strict=True)]


# ----------------------------------------------------------------------------------------
# Ops
# ----------------------------------------------------------------------------------------


def case_unfold(rnd, gen, n, counts):
    kernel, dilation, stride, pads, padding_arg, mode, spatial = gen_unfold_geometry(rnd, n)
    batch, channels = (
        rnd.randint(0, 2) if rnd.random() < 0.05 else rnd.randint(1, 2),
        rnd.randint(1, 3),
    )
    blocks = _blocks(spatial, kernel, dilation, pads, stride)
    if batch * channels * math.prod(kernel) * math.prod(blocks) > BUDGET:
        return None
    dtype = rnd.choice(DM_DTYPES)
    x = small_ints(gen, (batch, channels, *spatial), dtype)
    xin = restride(x, rnd.choice(["contig", "strided", "permuted"]))
    unbatched = batch == 1 and rnd.random() < 0.2
    tuple_needed = unbatched or rnd.random() < 0.3
    args = dict(
        kernel_size=_spell(rnd, kernel, tuple_needed),
        dilation=_spell(rnd, dilation, False),
        padding=padding_arg,
        stride=_spell(rnd, stride, False),
        padding_mode=mode,
    )
    if unbatched and isinstance(args["kernel_size"], int):
        args["kernel_size"] = tuple(kernel)
    desc = dict(shape=tuple(x.shape), dtype=str(dtype), unbatched=unbatched, **args)
    want = ref_unfold(x, kernel, dilation, pads, stride, mode)
    saved = xin.clone()
    got = nfold.unfold(xin[0] if unbatched else xin, **args)
    check_unchanged([saved], [xin], "unfold")
    same(got, want[0] if unbatched else want, "unfold vs reference")
    counts["unfold"] += 1
    if n == 2:  # torch: F.pad (any mode, per side) then F.unfold
        torch_mode = "constant" if mode == "zeros" else mode
        try:
            padded = F.pad(x, [p for pair in reversed(pads) for p in pair], mode=torch_mode)
            tw = F.unfold(padded, kernel, dilation, 0, stride)
        except (RuntimeError, NotImplementedError):
            tw = None  # torch has no im2col / pad for this dtype
        if tw is not None:
            same(got if not unbatched else got.unsqueeze(0), tw, "unfold vs F.unfold")
            counts["unfold~F.unfold"] += 1
    if dtype.is_floating_point and batch > 0:  # integer data: exact in any float dtype
        xg = x.clone().requires_grad_()
        g = small_ints(gen, want.shape, dtype)
        (gx,) = _grads(nfold.unfold(xg, **{**args, "kernel_size": tuple(kernel)}), [xg], g)
        (rx,) = _grads(ref_unfold(xg, kernel, dilation, pads, stride, mode), [xg], g)
        same(gx, rx, "unfold grad_input")
        counts["unfold.grad"] += 1
    if n <= 3 and dtype in (torch.float64, torch.float32) and batch > 0:
        # W @ unfold(x) against torch's convolution
        c_out = rnd.randint(1, 3)
        w = normal(gen, (c_out, channels, *kernel), dtype)
        xf = normal(gen, x.shape, dtype)
        cols = nfold.unfold(xf, tuple(kernel), args["dilation"], padding_arg, args["stride"], mode)
        got_c = (w.flatten(1) @ cols).reshape(batch, c_out, *blocks)
        want_c = ref_conv(xf, w, None, stride, pads, dilation, 1, mode)
        abs_c = ref_conv(xf.abs(), w.abs(), None, stride, pads, dilation, 1, mode)
        within_bound(got_c, want_c, abs_c, channels * math.prod(kernel), "W @ unfold(x) vs F.conv")
        counts["unfold~F.conv"] += 1
    return desc


def case_fold(rnd, gen, n, counts):
    kernel, dilation, stride, pads, padding_arg, _, spatial = gen_unfold_geometry(
        rnd, n, mode_choice=False, same_ok=False
    )
    batch, channels = rnd.randint(1, 2), rnd.randint(1, 3)
    blocks = _blocks(spatial, kernel, dilation, pads, stride)
    if batch * channels * math.prod(kernel) * math.prod(blocks) > BUDGET:
        return None
    reduction = "mean" if rnd.random() < 0.25 else "sum"
    dtypes = [d for d in DM_DTYPES if reduction == "sum" or d.is_floating_point or d.is_complex]
    dtype = rnd.choice(dtypes)
    y = small_ints(gen, (batch, channels * math.prod(kernel), math.prod(blocks)), dtype)
    yin = restride(y, rnd.choice(["contig", "strided", "permuted"]))
    unbatched = batch == 1 and rnd.random() < 0.2
    tuple_needed = n != 2 or rnd.random() < 0.3
    args = dict(
        output_size=_spell(rnd, spatial, tuple_needed),
        kernel_size=_spell(rnd, kernel, False),
        dilation=_spell(rnd, dilation, False),
        padding=padding_arg,
        stride=_spell(rnd, stride, False),
        reduction=reduction,
    )
    if n != 2 and all(not isinstance(v, (tuple, list)) for v in args.values()):
        args["output_size"] = tuple(spatial)
    desc = dict(shape=tuple(y.shape), dtype=str(dtype), unbatched=unbatched, **args)
    saved = yin.clone()
    got = nfold.fold(yin[0] if unbatched else yin, **args)
    check_unchanged([saved], [yin], "fold")
    if reduction == "sum":
        want = ref_fold(y, spatial, kernel, dilation, pads, stride)
        same(got, want[0] if unbatched else want, "fold vs reference")
        counts["fold"] += 1
    else:
        wide = torch.complex128 if dtype.is_complex else torch.float64
        total = ref_fold(y.to(wide), spatial, kernel, dilation, pads, stride)
        ones = torch.ones((1, math.prod(kernel), math.prod(blocks)), dtype=torch.float64)
        count = ref_fold(ones, spatial, kernel, dilation, pads, stride)
        want = (total / count.clamp(min=1)).to(dtype)
        close_dtype(got, want[0] if unbatched else want, "fold mean vs reference")
        counts["fold.mean"] += 1
    if n == 2 and reduction == "sum" and all(lo == hi for lo, hi in pads):
        try:
            tw = F.fold(y, spatial, kernel, dilation, tuple(lo for lo, _ in pads), stride)
        except (RuntimeError, NotImplementedError):
            tw = None
        if tw is not None and dtype != torch.bool:
            same(got if not unbatched else got.unsqueeze(0), tw, "fold vs F.fold")
            counts["fold~F.fold"] += 1
    if dtype.is_floating_point and reduction == "sum":
        yg = y.clone().requires_grad_()
        g = small_ints(gen, (batch, channels, *spatial), dtype)
        kw = {**args, "output_size": tuple(spatial)}
        (gy,) = _grads(nfold.fold(yg, **kw), [yg], g)
        (ry,) = _grads(ref_fold(yg, spatial, kernel, dilation, pads, stride), [yg], g)
        same(gy, ry, "fold grad_input")
        counts["fold.grad"] += 1
    return desc


def gen_transpose_geometry(rnd, n):
    kernel, dilation, stride = _dims(rnd, n)
    padding = tuple(rnd.randint(0, 2) for _ in range(n))
    out_pad = tuple(rnd.randint(0, max(s, d) - 1) for s, d in zip(stride, dilation, strict=True))
    spatial = []
    for k, st, p, op, d in zip(kernel, stride, padding, out_pad, dilation, strict=True):
        size = rnd.randint(1, 4 if n <= 2 else 3)
        while (size - 1) * st - 2 * p + d * (k - 1) + op + 1 < 1:
            size += 1
        spatial.append(size)
    out_sizes = tuple(
        (s - 1) * st - 2 * p + d * (k - 1) + op + 1
        for s, k, st, p, op, d in zip(
            spatial, kernel, stride, padding, out_pad, dilation, strict=True
        )
    )
    return kernel, dilation, stride, padding, out_pad, tuple(spatial), out_sizes


def case_unfold_transpose(rnd, gen, n, counts):
    kernel, dilation, stride, padding, out_pad, spatial, out_sizes = gen_transpose_geometry(rnd, n)
    batch, channels = rnd.randint(1, 2), rnd.randint(1, 3)
    if batch * channels * math.prod(kernel) * math.prod(out_sizes) > BUDGET:
        return None
    dtype = rnd.choice(DM_DTYPES)
    x = small_ints(gen, (batch, channels, *spatial), dtype)
    xin = restride(x, rnd.choice(["contig", "strided", "permuted"]))
    unbatched = batch == 1 and rnd.random() < 0.2
    args = dict(
        kernel_size=_spell(rnd, kernel, unbatched),
        stride=_spell(rnd, stride, False),
        padding=_spell(rnd, padding, False),
        output_padding=_spell(rnd, out_pad, False),
        dilation=_spell(rnd, dilation, False),
    )
    desc = dict(shape=tuple(x.shape), dtype=str(dtype), unbatched=unbatched, **args)
    saved = xin.clone()
    got = nfold.unfold_transpose(xin[0] if unbatched else xin, **args)
    check_unchanged([saved], [xin], "unfold_transpose")
    want = ref_unfold_transpose(x, kernel, stride, padding, out_pad, dilation)
    same(got, want[0] if unbatched else want, "unfold_transpose vs reference")
    counts["unfold_transpose"] += 1
    if dtype.is_floating_point:
        xg = x.clone().requires_grad_()
        g = small_ints(gen, want.shape, dtype)
        kw = {**args, "kernel_size": tuple(kernel)}
        (gx,) = _grads(nfold.unfold_transpose(xg, **kw), [xg], g)
        (rx,) = _grads(
            ref_unfold_transpose(xg, kernel, stride, padding, out_pad, dilation), [xg], g
        )
        same(gx, rx, "unfold_transpose grad_input")
        counts["unfold_transpose.grad"] += 1
    if n <= 3 and dtype in (torch.float64, torch.float32):
        c_out = rnd.randint(1, 3)
        w = normal(gen, (channels, c_out, *kernel), dtype)
        xf = normal(gen, x.shape, dtype)
        cols = nfold.unfold_transpose(xf, tuple(kernel), stride, padding, out_pad, dilation)
        got_c = (w.transpose(0, 1).flatten(1) @ cols).reshape(batch, c_out, *out_sizes)
        want_c = ref_conv_transpose(xf, w, None, stride, padding, out_pad, dilation, 1)
        abs_c = ref_conv_transpose(xf.abs(), w.abs(), None, stride, padding, out_pad, dilation, 1)
        within_bound(got_c, want_c, abs_c, channels * math.prod(kernel),
                     "W^T @ unfold_transpose(x) vs F.conv_transpose")  # fmt: skip
        counts["unfold_transpose~F.conv_transpose"] += 1
    return desc


def case_sliding_window_view(rnd, gen, n, counts):
    kernel, dilation, stride = _dims(rnd, n)
    spatial = tuple(
        d * (k - 1) + 1 + rnd.randint(0, 3) for k, d in zip(kernel, dilation, strict=True)
    )
    batch, channels = rnd.randint(1, 2), rnd.randint(1, 3)
    if batch * channels * math.prod(spatial) * math.prod(kernel) > BUDGET:
        return None
    dtype = rnd.choice(DM_DTYPES)
    x = small_ints(gen, (batch, channels, *spatial), dtype)
    xin = restride(x, rnd.choice(["contig", "strided", "permuted"]))
    unbatched = batch == 1 and rnd.random() < 0.2
    args = dict(
        kernel_size=_spell(rnd, kernel, unbatched),
        dilation=_spell(rnd, dilation, False),
        stride=_spell(rnd, stride, False),
    )
    desc = dict(shape=tuple(x.shape), dtype=str(dtype), unbatched=unbatched, **args)
    got = nfold.sliding_window_view(xin[0] if unbatched else xin, **args)
    want = ref_sliding_window_view(x, kernel, dilation, stride)
    same(got, want[0] if unbatched else want, "sliding_window_view vs reference")
    if got.numel() and got.untyped_storage().data_ptr() != xin.untyped_storage().data_ptr():
        raise Mismatch("sliding_window_view is not a view of its input")
    counts["sliding_window_view"] += 1
    return desc


def _call_workspace(fn, leaves, has_bias, kwargs):
    """Call conv/conv_transpose; a max_workspace_bytes below the documented minimum raises
    ValueError (by design): double it until accepted, so that chunking is exercised."""
    bias = leaves[2] if has_bias else None
    while True:
        try:
            return fn(leaves[0], leaves[1], bias, **kwargs)
        except ValueError as e:
            if "max_workspace_bytes" not in str(e) or "max_workspace_bytes" not in kwargs:
                raise
            kwargs["max_workspace_bytes"] *= 2


def case_conv(rnd, gen, n, counts):
    kernel, dilation, stride, pads, padding_arg, mode, spatial = gen_unfold_geometry(rnd, n)
    groups = rnd.choice([1, 1, 2, 3])
    c_in, c_out = groups * rnd.randint(1, 2), groups * rnd.randint(1, 2)
    batch = rnd.randint(1, 2)
    blocks = _blocks(spatial, kernel, dilation, pads, stride)
    if batch * c_in * math.prod(kernel) * math.prod(blocks) > BUDGET:
        return None
    dtype = torch.float64 if rnd.random() < 0.8 else torch.float32
    x = normal(gen, (batch, c_in, *spatial), dtype)
    w = normal(gen, (c_out, c_in // groups, *kernel), dtype)
    b = normal(gen, (c_out,), dtype) if rnd.random() < 0.5 else None
    xin = restride(x, rnd.choice(["contig", "strided", "permuted"]))
    kwargs = dict(stride=_spell(rnd, stride, False), padding=padding_arg, groups=groups,
                  dilation=_spell(rnd, dilation, False), padding_mode=mode)  # fmt: skip
    k_fwd = c_in // groups * math.prod(kernel) + 1
    # inner lengths of the three gradient sums (an upper bound is all the bound needs)
    k_grad = max(k_fwd, c_out // groups * math.prod(kernel), batch * math.prod(blocks))
    if mode != "zeros":  # a padded copy of an input element adds its own terms to grad_input
        k_grad *= math.prod(1 + lo + hi for lo, hi in pads)

    kwargs["method"] = rnd.choice(["gemm", "gemm", "auto"])  # nfold's own path, or torch's

    def reference(x, w, b):
        return ref_conv(x, w, b, stride, pads, dilation, groups, mode)

    return _compare_bilinear(
        "conv", nf_conv, reference, (xin, w, b), kwargs, rnd, gen, counts, k_fwd, k_grad
    )


def case_conv_transpose(rnd, gen, n, counts):
    kernel, dilation, stride, padding, out_pad, spatial, out_sizes = gen_transpose_geometry(rnd, n)
    groups = rnd.choice([1, 1, 2, 3])
    c_in, c_out = groups * rnd.randint(1, 2), groups * rnd.randint(1, 2)
    batch = rnd.randint(1, 2)
    if batch * c_out * math.prod(kernel) * math.prod(out_sizes) > BUDGET:
        return None
    dtype = torch.float64 if rnd.random() < 0.8 else torch.float32
    x = normal(gen, (batch, c_in, *spatial), dtype)
    w = normal(gen, (c_in, c_out // groups, *kernel), dtype)
    b = normal(gen, (c_out,), dtype) if rnd.random() < 0.5 else None
    xin = restride(x, rnd.choice(["contig", "strided", "permuted"]))
    kwargs = dict(stride=_spell(rnd, stride, False), padding=_spell(rnd, padding, False),
                  groups=groups, dilation=_spell(rnd, dilation, False))  # fmt: skip
    if rnd.random() < 0.3 and all(op < st for op, st in zip(out_pad, stride, strict=True)):
        # torch's (and nfold's) output_size reaches [min, min + stride - 1] only
        kwargs["output_size"] = (
            tuple(out_sizes) if rnd.random() < 0.7 else (batch, c_out, *out_sizes)
        )
    else:
        kwargs["output_padding"] = _spell(rnd, out_pad, False)
    k_fwd = c_in // groups * math.prod(kernel) + 1
    k_grad = max(k_fwd, c_out // groups * math.prod(kernel), batch * math.prod(out_sizes))

    kwargs["method"] = rnd.choice(["gemm", "gemm", "auto"])

    def reference(x, w, b):
        return ref_conv_transpose(x, w, b, stride, padding, out_pad, dilation, groups)

    return _compare_bilinear(
        "conv_transpose", nf_conv_transpose, reference, (xin, w, b), kwargs, rnd, gen, counts,
        k_fwd, k_grad,
    )  # fmt: skip


def _compare_bilinear(op, fn, reference, operands, kwargs, rnd, gen, counts, k_fwd, k_grad):
    """Run nfold's ``fn`` (sometimes chunked) and ``reference`` on the same ``(x, w, bias)``;
    compare the forward and every gradient within the summation bound for sums of
    ``k_fwd`` / ``k_grad`` terms. Returns the case description."""
    xin, w, b = operands
    if rnd.random() < 0.3:
        kwargs["max_workspace_bytes"] = rnd.choice([1, 64, 512, 4096])
    desc = dict(x=tuple(xin.shape), w=tuple(w.shape), bias=b is not None, dtype=str(w.dtype))
    desc.update(kwargs)
    leaves = [t.clone().requires_grad_() for t in operands if t is not None]
    saved = [t.detach().clone() for t in leaves]
    got = _call_workspace(fn, leaves, b is not None, kwargs)
    check_unchanged(saved, [t.detach() for t in leaves], op)
    ref_leaves = [t.detach().clone().requires_grad_() for t in leaves]
    abs_leaves = [t.detach().abs().requires_grad_() for t in leaves]
    bias_of = (lambda ts: ts[2]) if b is not None else (lambda ts: None)
    want = reference(ref_leaves[0], ref_leaves[1], bias_of(ref_leaves))
    abs_w = reference(abs_leaves[0], abs_leaves[1], bias_of(abs_leaves))
    within_bound(got.detach(), want.detach(), abs_w.detach(), k_fwd, op)
    counts[op] += 1
    g = normal(gen, want.shape, w.dtype)
    got_g = _grads(got, leaves, g)
    want_g = (
        _grads(want, ref_leaves, g)
        if want.requires_grad
        else [torch.zeros_like(t) for t in ref_leaves]
    )
    abs_g = _grads(abs_w, abs_leaves, g.abs()) if want.requires_grad else want_g
    for name, a, r, s in zip(
        ["grad_input", "grad_weight", "grad_bias"], got_g, want_g, abs_g, strict=False
    ):
        within_bound(a, r, s, k_grad, f"{op} {name}")
    counts[f"{op}.grad"] += 1
    return desc


OPS: dict[str, Callable] = {
    "unfold": case_unfold,
    "fold": case_fold,
    "unfold_transpose": case_unfold_transpose,
    "sliding_window_view": case_sliding_window_view,
    "conv": case_conv,
    "conv_transpose": case_conv_transpose,
}


# ----------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------


@dataclass
class Report:
    tried: int = 0
    skipped: int = 0
    counts: Counter = field(default_factory=Counter)
    per_op: Counter = field(default_factory=Counter)
    mismatches: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.mismatches


def run_case(
    seed: int, index: int, ops: list[str], report: Report, verbose: bool = False
) -> tuple[str, int, dict | None]:
    case_seed = seed * 1_000_003 + index
    rnd = random.Random(case_seed)
    gen = torch.Generator().manual_seed(case_seed)
    op = rnd.choice(ops)
    n = rnd.choice([1, 2, 2, 3, 3, 4, 5])
    desc = None
    try:
        for _ in range(20):  # redraw until the case fits the budget
            desc = OPS[op](rnd, gen, n, report.counts)
            if desc is not None:
                break
        else:
            report.skipped += 1
            return op, n, None
    except Mismatch as e:
        report.mismatches.append((index, op, n, str(e)))
    except Exception as e:  # noqa: BLE001 - a crash on a valid case is a finding too
        tb = traceback.format_exc(limit=-3) if verbose else ""
        report.mismatches.append((index, op, n, f"{type(e).__name__}: {e}\n{tb}"))
    report.tried += 1
    report.per_op[op] += 1
    if verbose and desc is not None:
        print(index, op, n, desc)
    return op, n, desc


def fuzz(cases: int, seed: int = 0, ops: list[str] | None = None, start: int = 0,
         verbose: bool = False, time_limit: float | None = None) -> Report:  # fmt: skip
    ops = list(ops or OPS)
    report = Report()
    t0 = time.monotonic()
    for index in range(start, start + cases):
        run_case(seed, index, ops, report, verbose)
        if time_limit is not None and time.monotonic() - t0 > time_limit:
            break
    return report


def format_report(report: Report, seconds: float, seed: int) -> str:
    lines = [
        f"seed {seed}: {report.tried} cases tried, {len(report.mismatches)} mismatches, "
        f"{report.skipped} skipped (no geometry within budget), {seconds:.1f} s",
        "cases per op: " + ", ".join(f"{k}={v}" for k, v in sorted(report.per_op.items())),
        "comparisons:  " + ", ".join(f"{k}={v}" for k, v in sorted(report.counts.items())),
    ]
    for index, op, n, msg in report.mismatches[:50]:
        lines.append(f"MISMATCH case {index} ({op}, N={n}): {msg}")
        lines.append(f"  reproduce: python tests/fuzz.py --seed {seed} --case {index} -v")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--start", type=int, default=0, help="first case index")
    p.add_argument("--case", type=int, default=None, help="run this one case index")
    p.add_argument("--ops", default="", help="comma-separated subset of " + ",".join(OPS))
    p.add_argument("--time-limit", type=float, default=None, help="stop after this many seconds")
    p.add_argument(
        "--budget",
        type=int,
        default=BUDGET,
        help="max elements of the largest tensor of a case (default %(default)s)",
    )
    p.add_argument("-v", "--verbose", action="store_true")
    a = p.parse_args(argv)
    globals()["BUDGET"] = a.budget
    torch.set_num_threads(1)
    ops = [o for o in a.ops.split(",") if o] or None
    start, cases = (a.case, 1) if a.case is not None else (a.start, a.cases)
    t0 = time.monotonic()
    report = fuzz(cases, a.seed, ops, start, a.verbose or a.case is not None, a.time_limit)
    print(f"budget {BUDGET} elements per tensor, torch {torch.__version__}")
    print(format_report(report, time.monotonic() - t0, a.seed))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
