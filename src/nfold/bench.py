"""The benchmark suite behind ``nfold bench`` and ``benchmarks/run.py``.

Every row times nfold and its peers in the same run with
``torch.utils.benchmark.Timer.blocked_autorange`` (three round-robin rounds of
``min_run_time / 3`` each; the best median per implementation) and reports *ratios*
(nfold time / peer time: below 1 nfold is faster), because absolute times on a
shared machine are noise. Before a row is timed, every peer's result is compared
with nfold's (``torch.testing.assert_close``), so a ratio is never reported for a
wrong answer: a row whose peer disagrees is marked ``MISMATCH`` and loses that ratio.

Peers:
    copy floor  ``t.clone()`` of a contiguous tensor the size of the column matrix
                ``(B, C*prod(k), L)`` (for unfold_transpose: of its output); once for a
                forward, twice for forward+backward (each pass moves that matrix once).
                No im2col/col2im can beat it by much.
    GEMM floor  conv rows: the conv's matrix products alone (torch.matmul on an unfolded
                matrix built beforehand), as nfold runs them; no unfold+GEMM conv beats it.
    torch       ``torch.nn.functional.unfold``/``fold`` (N = 2 only; other padding
                modes go through ``F.pad`` first), ``F.conv{N}d`` (N <= 3).
    unfoldNd    ``unfoldNd.unfoldNd``/``foldNd``/``unfold_transposeNd`` (N <= 3), if installed.
    naive       autograd through a plain strided view: ``F.pad`` -> ``Tensor.unfold`` per
                dim -> permute -> reshape (forward+backward of unfold only).
    torchnd     ``torchnd.conv_nd`` (PyPI ``torchnd``) for N = 4 convolutions, if installed.
    unchunked   nfold's conv without ``max_workspace_bytes`` (workspace rows).
    reshape+matmul  patchify and 1x1 conv rows: reshape -> permute -> matmul.

Peak memory is measured in one fresh subprocess (so the timing process's heap does not
matter): glibc is told to return every allocation >= 64 KiB to the OS on free
(``mallopt``), inputs are built, the op is run once to load its code, the kernel's
peak-RSS counter is reset (``/proc/self/clear_refs``), the op is run again and the rise
of ``VmHWM`` over the resting RSS is the op's peak extra memory (output included).
It is reported divided by the op's output size; unfold with zero padding costs
1 + (padded input / output). The kernel batches RSS updates per thread, so values are
good to ~0.25 MB: tables leave the column blank for outputs under 1 MB (the JSON keeps
the raw bytes). Linux only; elsewhere the column is empty.

All-CNN-C (Springenberg et al. 2015, "Striving for Simplicity", Table 2, model C) on
CIFAR-10, the layers used (the input size is that layer's input):

    layer   C_in -> C_out  kernel  stride  padding  input    output
    conv1      3 ->  96      3       1       1      32x32    32x32
    conv2     96 ->  96      3       1       1      32x32    32x32
    conv3     96 ->  96      3       2       1      32x32    16x16
    conv4     96 -> 192      3       1       1      16x16    16x16
    conv5    192 -> 192      3       1       1      16x16    16x16
    conv6    192 -> 192      3       2       1      16x16     8x8
    conv7    192 -> 192      3       1       0       8x8      6x6   (valid)
    conv8    192 -> 192      1       1       0       6x6      6x6
    (conv9   192 ->  10      1: not benchmarked, then global average pooling)

Options (``add_arguments``): ``--quick`` (a reduced suite at small sizes, < 1 minute),
``--json FILE``, ``--plot FILE.png``, ``--markdown FILE``, ``--batch-size``,
``--filter SUBSTRING``, ``--min-run-time``, ``--no-memory``.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import importlib
import importlib.metadata
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

from . import _args
from .patches import fold, unfold, unfold_transpose

Impls = dict[str, Callable[[], Any]]

ALL_CNN_C: tuple[tuple[str, int, int, int, int, int, int], ...] = (
    # name, C_in, C_out, input size, kernel, stride, padding
    ("conv1", 3, 96, 32, 3, 1, 1),
    ("conv2", 96, 96, 32, 3, 1, 1),
    ("conv3", 96, 96, 32, 3, 2, 1),
    ("conv4", 96, 192, 16, 3, 1, 1),
    ("conv5", 192, 192, 16, 3, 1, 1),
    ("conv6", 192, 192, 16, 3, 2, 1),
    ("conv7", 192, 192, 8, 3, 1, 0),
    ("conv8", 192, 192, 6, 1, 1, 0),
)
QUICK_LAYERS = ("conv2", "conv3", "conv7")
MEMORY_MIN_BYTES = 1 << 20  # RSS counters are per-thread batched: ~0.25 MB slack
DATA_OPS = ("unfold", "unfold+bwd", "fold", "fold+bwd", "unfold_transpose")
PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
PEER_ORDER = (
    "copy floor",
    "GEMM floor",
    "torch",
    "unfoldNd",
    "naive",
    "torchnd",
    "unchunked",
    "reshape+matmul",
)
FLOORS = ("copy floor", "GEMM floor")  # bounds, not results: neither checked nor measured
MIB = 1 << 20


# --------------------------------------------------------------------------- the suite


@dataclass(frozen=True)
class Row:
    """One benchmark row: an op on one input geometry (all tuples are N-tuples)."""

    op: str  # "unfold", "unfold+bwd", "fold", "fold+bwd", "unfold_transpose",
    # "unfold scaling", "conv", "conv+bwd", "conv workspace"
    config: str
    shape: tuple[int, ...]  # input of the forward conv geometry: (B, C, *S)
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    padding_mode: str = "zeros"
    out_channels: int = 0  # conv rows
    groups: int = 1
    max_workspace_bytes: int | None = None

    @property
    def id(self) -> str:
        return f"{self.op} | {self.config}"

    @property
    def n(self) -> int:
        return len(self.kernel)


def _row(
    op: str, config: str, shape: Iterable[int], k: int, s: int = 1, p: int = 0, **kw: Any
) -> Row:
    shape = tuple(shape)
    n = len(shape) - 2
    return Row(op, config, shape, (k,) * n, (s,) * n, (p,) * n, (1,) * n, **kw)


def _geom_name(shape: tuple[int, ...], k: int, s: int, p: int) -> str:
    text = f"{tuple(shape)} k{k}".replace(" ", "")
    return text + (f" s{s}" if s != 1 else "") + (f" p{p}" if p else "")


def suite(quick: bool = False, tiny: bool = False, batch_size: int | None = None) -> list[Row]:
    """The rows of the benchmark, in order.

    ``quick`` selects a reduced set of rows (fewer All-CNN-C layers for the data-movement
    ops, conv forward+backward only, scaling up to 16 MB, no workspace row) at small sizes;
    ``tiny`` shrinks every size to a toy (for tests), keeping the row set of ``quick`` or
    of the full suite.
    """
    b = batch_size if batch_size is not None else (1 if tiny else 4 if quick else 32)
    ch = (lambda c: min(c, 4)) if tiny else (lambda c: c)
    rows: list[Row] = []

    def conv_rows(
        config: str,
        shape: tuple[int, ...],
        c_out: int,
        k: int,
        s: int = 1,
        p: int = 0,
        groups: int = 1,
    ) -> None:
        for op in ("conv+bwd",) if quick else ("conv", "conv+bwd"):
            rows.append(_row(op, config, shape, k, s, p, out_channels=c_out, groups=groups))

    # Data movement on All-CNN-C, then the other geometries.
    geoms: list[tuple[str, tuple[int, ...], int, int, int]] = []
    for name, c_in, _, size, k, s, p in ALL_CNN_C:
        if quick and name not in QUICK_LAYERS:
            continue
        geoms.append((f"All-CNN-C {name} b{b}", (b, ch(c_in), size, size), k, s, p))
    if tiny:
        readme, seq, vol, lf = (2, 3, 16, 16), (1, 4, 256), (1, 2, 8, 8, 8), (1, 1, 5, 5, 5, 5)
    elif quick:
        readme, seq, vol, lf = (
            (8, 3, 32, 32),
            (4, 64, 4096),
            (1, 8, 32, 32, 32),
            (1, 2, 12, 12, 12, 12),
        )
    else:
        readme, seq, vol, lf = (
            (64, 3, 32, 32),
            (32, 64, 4096),
            (4, 16, 32, 32, 32),
            (2, 4, 16, 16, 16, 16),
        )
    geoms += [
        ("unfoldNd README " + _geom_name(readme, 3, 2, 1), readme, 3, 2, 1),
        ("1-d " + _geom_name(seq, 5, 1, 2), seq, 5, 1, 2),
        ("3-d " + _geom_name(vol, 3, 1, 1), vol, 3, 1, 1),
        ("3-d " + _geom_name(vol, 3, 2, 1), vol, 3, 2, 1),
        ("4-d " + _geom_name(lf, 3, 1, 1), lf, 3, 1, 1),
    ]
    for op in DATA_OPS:
        rows += [_row(op, config, shape, k, s, p) for config, shape, k, s, p in geoms]
    for op in ("unfold", "unfold+bwd"):
        for mode in PADDING_MODES:
            config = f"padding_mode={mode} " + _geom_name(readme, 3, 2, 1)
            rows.append(_row(op, config, readme, 3, 2, 1, padding_mode=mode))

    # Linear scaling: unfold of (B, C, H, W) k3 p1 with B growing the output 4x per step.
    scale_shape = (1, 16, 16) if tiny else (8, 32, 32)
    per_batch = scale_shape[0] * 9 * scale_shape[1] * scale_shape[2] * 4
    targets = [16 << 10, 64 << 10] if tiny else [MIB << (2 * i) for i in range(3 if quick else 6)]
    for target in targets:
        bs = max(1, round(target / per_batch))
        shape = (bs, *scale_shape)
        rows.append(
            _row(
                "unfold scaling",
                f"{_fmt_bytes(bs * per_batch)} output " + _geom_name(shape, 3, 1, 1),
                shape,
                3,
                1,
                1,
            )
        )

    # Convolution: All-CNN-C, a depthwise layer, two volumes, a 4-d light field.
    for name, c_in, c_out, size, k, s, p in ALL_CNN_C:
        conv_rows(f"All-CNN-C {name} b{b}", (b, ch(c_in), size, size), ch(c_out), k, s, p)
    dw = (b, ch(96), 32, 32)
    conv_rows(
        "depthwise " + _geom_name(dw, 3, 1, 1) + f" groups={dw[1]}",
        dw,
        dw[1],
        3,
        1,
        1,
        groups=dw[1],
    )
    for s in (1, 2):
        conv_rows("3-d " + _geom_name(vol, 3, s, 1) + f" ->{2 * vol[1]}", vol, 2 * vol[1], 3, s, 1)
    conv_rows("4-d " + _geom_name(lf, 3, 1, 1) + f" ->{2 * lf[1]}", lf, 2 * lf[1], 3, 1, 1)
    # ViT-B/16's stem: a "patchify" conv (stride == kernel), whose unfold is a permutation
    img, patch, dim = ((1, 3, 32, 32), 16, 4) if tiny else ((b, 3, 224, 224), 16, 768)
    conv_rows("patchify " + _geom_name(img, patch, patch, 0) + f" ->{dim}", img, dim, patch, patch)

    if not quick:
        ws: tuple[int, ...] = (1, 2, 16, 16, 16) if tiny else (1, 16, 128, 128, 128)
        # a generous limit, and one below the default 8 MB slabs
        for limit in (16 << 10,) if tiny else (64 * MIB, 2 * MIB):
            rows.append(
                _row(
                    "conv workspace",
                    _geom_name(ws, 3, 1, 1) + f" max_workspace_bytes={_fmt_bytes(limit)}",
                    ws,
                    3,
                    1,
                    1,
                    out_channels=ws[1],
                    max_workspace_bytes=limit,
                )
            )
    return rows


# --------------------------------------------------------------------------- building rows


def _optional(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


def _nfold_conv() -> Any:
    mod = _optional("nfold.conv")
    return getattr(mod, "conv", None) if mod is not None else None


def _pads(row: Row) -> list[int]:
    return [p for p in reversed(row.padding) for _ in range(2)]


def _padded(x: torch.Tensor, row: Row) -> tuple[torch.Tensor, tuple[int, ...]]:
    """For padding modes other than zeros: pad with F.pad first, then unfold with 0."""
    if row.padding_mode == "zeros":
        return x, row.padding
    return F.pad(x, _pads(row), mode=row.padding_mode), (0,) * row.n


def _naive_unfold(x: torch.Tensor, row: Row) -> torch.Tensor:
    """Autograd through a plain strided view: F.pad -> Tensor.unfold per dim -> reshape."""
    n = row.n
    if row.padding_mode == "zeros":
        x = F.pad(x, _pads(row))
    else:
        x = F.pad(x, _pads(row), mode=row.padding_mode)
    for i, (k, s, d) in enumerate(zip(row.kernel, row.stride, row.dilation, strict=True)):
        x = x.unfold(2 + i, d * (k - 1) + 1, s)
    if any(d > 1 for d in row.dilation):
        x = x[(..., *(slice(None, None, d) for d in row.dilation))]  # type: ignore[index]
    b, c = x.shape[:2]
    x = x.permute(0, 1, *range(2 + n, 2 + 2 * n), *range(2, 2 + n))
    return x.reshape(b, c * math.prod(row.kernel), -1)


def _blocks(row: Row) -> tuple[int, ...]:
    pads = tuple((p, p) for p in row.padding)
    return _args.output_size(row.shape[2:], row.kernel, row.dilation, pads, row.stride)


@dataclass
class Built:
    impls: Impls
    out_bytes: int
    floor_bytes: int  # bytes of the matrix the copy floor clones (0: no floor)
    gemm_floor: Callable[[], Any] | None = None  # conv rows: their GEMMs alone
    rtol: float = 1.3e-6
    atol: float = 1e-5
    note: str = ""


def _grad_of(
    f: Callable[[], torch.Tensor], inputs: tuple[torch.Tensor, ...], g: torch.Tensor
) -> Callable[[], Any]:
    def run() -> Any:
        out = f()
        return (out.detach(), *torch.autograd.grad(out, inputs, g))

    return run


def build(row: Row) -> Built:
    """Allocate the inputs of ``row`` and return its implementations as closures.

    Each closure returns its result (a tensor, or a tuple for forward+backward), which the
    check compares with nfold's; impl ``"nfold"`` is always present.
    """
    gen = torch.Generator().manual_seed(0)
    randn = lambda *shape: torch.randn(shape, generator=gen)  # noqa: E731
    unfoldnd = _optional("unfoldNd")
    n, k, s, p, d = row.n, row.kernel, row.stride, row.padding, row.dilation
    blocks = _blocks(row)
    b, c = row.shape[:2]
    cols_shape = (b, c * math.prod(k), math.prod(blocks))
    cols_bytes = 4 * math.prod(cols_shape)
    x = randn(*row.shape)
    impls: Impls = {}

    if row.op in ("unfold", "unfold scaling", "unfold+bwd"):
        mode = row.padding_mode
        impls["nfold"] = lambda: unfold(x, k, d, p, s, padding_mode=mode)
        if n == 2:
            impls["torch"] = lambda: F.unfold(*_padded_args(x, row))
        if unfoldnd is not None and n <= 3:
            impls["unfoldNd"] = lambda: unfoldnd.unfoldNd(*_padded_args(x, row))
        if row.op == "unfold+bwd":
            impls["naive"] = lambda: _naive_unfold(x, row)
            x.requires_grad_(True)
            g = randn(*cols_shape)
            impls = {name: _grad_of(f, (x,), g) for name, f in impls.items()}
        return Built(impls, cols_bytes, cols_bytes)

    if row.op in ("fold", "fold+bwd"):
        y = randn(*cols_shape)
        size = row.shape[2:]
        impls["nfold"] = lambda: fold(y, size, k, d, p, s)
        if n == 2:
            impls["torch"] = lambda: F.fold(y, size, k, d, p, s)
        if unfoldnd is not None and n <= 3:
            impls["unfoldNd"] = lambda: unfoldnd.foldNd(y, size, k, d, p, s)
        if row.op == "fold+bwd":
            y.requires_grad_(True)
            g = randn(*row.shape)
            impls = {name: _grad_of(f, (y,), g) for name, f in impls.items()}
        return Built(impls, 4 * math.prod(row.shape), cols_bytes, rtol=1e-5, atol=1e-5)

    if row.op == "unfold_transpose":
        # The transposed geometry of the row's conv: (B, C, *blocks) back to (B, C, *S).
        xt = randn(b, c, *blocks)
        out_pad = tuple(
            size - ((nb - 1) * st - 2 * pd + dl * (kk - 1) + 1)
            for size, nb, st, pd, dl, kk in zip(row.shape[2:], blocks, s, p, d, k, strict=True)
        )
        impls["nfold"] = lambda: unfold_transpose(xt, k, s, p, out_pad, d)
        if unfoldnd is not None and n <= 3:
            impls["unfoldNd"] = lambda: unfoldnd.unfold_transposeNd(xt, k, s, p, out_pad, d)
        out_bytes = 4 * b * c * math.prod(k) * math.prod(row.shape[2:])
        return Built(impls, out_bytes, out_bytes)

    if row.op in ("conv", "conv+bwd", "conv workspace"):
        conv = _nfold_conv()
        if conv is None:
            return Built({}, 0, 0, note="skipped: nfold.conv is not available yet")
        w = randn(row.out_channels, c // row.groups, *k) / math.sqrt(c // row.groups * math.prod(k))
        bias = randn(row.out_channels)
        kw = dict(stride=s, padding=p, dilation=d, groups=row.groups)
        impls["nfold"] = lambda: conv(x, w, bias, max_workspace_bytes=row.max_workspace_bytes, **kw)
        if row.op == "conv workspace":
            impls["unchunked"] = lambda: conv(x, w, bias, **kw)
        if _is_patchify(row):
            impls["reshape+matmul"] = lambda: _patch_matmul(x, w, bias, k)
        if n <= 3:
            torch_conv = getattr(F, f"conv{n}d")
            impls["torch"] = lambda: torch_conv(x, w, bias, **kw)
        else:
            torchnd = _optional("torchnd")
            if torchnd is not None:
                dims = tuple(range(2, 2 + n))
                impls["torchnd"] = lambda: (
                    torchnd.conv_nd(x, w, dim=dims, channel_dim=1, **kw) + bias.view(-1, *(1,) * n)
                )
        out_shape = (b, row.out_channels, *blocks)
        if row.op == "conv+bwd":
            for t in (x, w, bias):
                t.requires_grad_(True)
            g = randn(*out_shape)
            impls = {name: _grad_of(f, (x, w, bias), g) for name, f in impls.items()}
        gemms = _gemm_floor(x.detach(), w.detach(), row, backward=row.op == "conv+bwd")
        # float32 sums of up to ~1e5 products in a different order: round-off, not bugs.
        return Built(impls, 4 * math.prod(out_shape), 0, gemms, rtol=1e-3, atol=1e-3)

    raise ValueError(f"unknown op {row.op!r}")


def _gemm_floor(
    x: torch.Tensor, w: torch.Tensor, row: Row, backward: bool
) -> Callable[[], Any] | None:
    """The conv's GEMMs alone, on an unfolded matrix built beforehand, shaped as nfold
    runs them: per-sample ``W @ cols``; for backward also ``W^T @ grad`` and one
    ``grad @ cols^T`` with the batch merged into the contraction. None for a workspace row
    (its unfolded matrix is gigabytes)."""
    if row.max_workspace_bytes is not None:
        return None
    b, g, c_out = x.shape[0], row.groups, row.out_channels
    cols = unfold(x, row.kernel, row.dilation, row.padding, row.stride)
    length = cols.shape[2]
    cols = cols.view(b, g, -1, length)
    w_mat = w.reshape(g, c_out // g, -1)
    if not backward:
        return lambda: torch.matmul(w_mat, cols)
    grad = torch.randn(b, g, c_out // g, length)
    cols_rows = cols.permute(1, 2, 0, 3).reshape(g, -1, b * length)
    grad_rows = grad.permute(1, 2, 0, 3).reshape(g, c_out // g, b * length)
    return lambda: (
        torch.matmul(w_mat, cols),
        torch.matmul(w_mat.mT, grad),
        torch.matmul(grad_rows, cols_rows.mT),
    )


def _is_patchify(row: Row) -> bool:
    """stride == kernel (1x1 kernels included), no padding or dilation, one group, and
    sizes that the kernel divides: unfold is a reshape and a permutation."""
    return (
        row.groups == 1
        and row.stride == row.kernel
        and not any(row.padding)
        and all(d == 1 for d in row.dilation)
        and all(sz % k == 0 for sz, k in zip(row.shape[2:], row.kernel, strict=True))
    )


def _patch_matmul(
    x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor, k: tuple[int, ...]
) -> torch.Tensor:
    """The baseline for patchify rows: reshape -> permute -> reshape -> matmul."""
    b, c, n = x.shape[0], x.shape[1], len(k)
    blocks = [size // kk for size, kk in zip(x.shape[2:], k, strict=True)]
    split = x.reshape(b, c, *(v for pair in zip(blocks, k, strict=True) for v in pair))
    order = (0, 1, *(3 + 2 * i for i in range(n)), *(2 + 2 * i for i in range(n)))
    cols = split.permute(order).reshape(b, c * math.prod(k), math.prod(blocks))
    out = w.reshape(w.shape[0], -1) @ cols
    return out.view(b, w.shape[0], *blocks) + bias.view(-1, *(1,) * n)


def _padded_args(x: torch.Tensor, row: Row) -> tuple[Any, ...]:
    xp, pad = _padded(x, row)
    return xp, row.kernel, row.dilation, pad, row.stride


def _floor(nbytes: int, passes: int) -> Callable[[], Any]:
    src = torch.ones(nbytes // 4)  # touched, so clone reads real pages
    if passes == 1:
        return src.clone
    return lambda: tuple(src.clone() for _ in range(passes))


def _check(results: dict[str, Any], built: Built) -> dict[str, str]:
    """Compare every peer's result with nfold's: "ok" or "MISMATCH: ..." per peer."""
    ref = results["nfold"]
    ref = ref if isinstance(ref, tuple) else (ref,)
    status = {}
    for name, got in results.items():
        if name == "nfold" or name in FLOORS or got is None:
            continue
        got = got if isinstance(got, tuple) else (got,)
        try:
            for a, e in zip(got, ref, strict=True):
                scale = float(e.abs().max()) if e.numel() else 1.0
                torch.testing.assert_close(a, e, rtol=built.rtol, atol=built.atol * max(scale, 1.0))
            status[name] = "ok"
        except (AssertionError, ValueError) as err:
            status[name] = "MISMATCH: " + str(err).strip().splitlines()[0]
    return status


# --------------------------------------------------------------------------- timing


def time_fn(fn: Callable[[], Any], min_run_time: float) -> dict[str, float]:
    """Median and IQR (seconds) of ``fn`` from ``Timer.blocked_autorange``.

    ``min_run_time <= 0`` times a single call (smoke tests: the numbers mean nothing).
    """
    from torch.utils import benchmark

    if min_run_time <= 0:
        start = time.perf_counter()
        fn()
        return {"median_s": max(time.perf_counter() - start, 1e-9), "iqr_s": 0.0, "runs": 1}

    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    m = timer.blocked_autorange(min_run_time=min_run_time)
    return {"median_s": m.median, "iqr_s": m.iqr, "runs": len(m.times)}


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.3g} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    raise AssertionError


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def bench_row(row: Row, min_run_time: float) -> dict[str, Any]:
    """Build, check and time one row; returns its JSON-able record."""
    record: dict[str, Any] = {
        "id": row.id,
        "op": row.op,
        "config": row.config,
        "n": row.n,
        "row": asdict(row),
        "times": {},
        "ratios": {},
        "check": {},
        "errors": {},
    }
    built = build(row)
    record["note"] = built.note
    record["out_bytes"] = built.out_bytes
    if not built.impls:
        return record
    impls = dict(built.impls)
    if built.floor_bytes:
        impls["copy floor"] = _floor(built.floor_bytes, 2 if row.op.endswith("+bwd") else 1)
    if built.gemm_floor is not None:
        impls["GEMM floor"] = built.gemm_floor
    results: dict[str, Any] = {}
    for name, fn in impls.items():
        try:
            results[name] = fn()
        except Exception as err:  # a peer's own limits (e.g. unfoldNd's 2^24 fold cap)
            record["errors"][name] = f"{type(err).__name__}: {str(err).strip().splitlines()[0]}"
            if name == "nfold":
                raise
    record["check"] = _check(results, built)
    del results
    timed = [n for n in impls if n not in record["errors"] and record["check"].get(n, "ok") == "ok"]
    rounds = 3 if min_run_time > 0 else 1
    for _ in range(rounds):  # round-robin, keep each impl's best median: load spikes hit all
        for name in timed:
            m = time_fn(impls[name], min_run_time / rounds)
            best = record["times"].get(name)
            if best is None or m["median_s"] < best["median_s"]:
                record["times"][name] = m
    t = record["times"].get("nfold", {}).get("median_s")
    for name, timing in record["times"].items():
        if name != "nfold" and t:
            record["ratios"][name] = t / timing["median_s"]
    return record


# --------------------------------------------------------------------------- memory


def _hwm_tools() -> tuple[Callable[[], None], Callable[[str], int]] | None:
    if not (os.path.exists("/proc/self/clear_refs") and os.path.exists("/proc/self/status")):
        return None

    def reset() -> None:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak-RSS counter (VmHWM) to the current RSS

    def status(key: str) -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        raise KeyError(key)

    try:
        reset()
    except OSError:
        return None
    return reset, status


def _memory_child() -> None:
    """Entry point of the memory subprocess: spec JSON on stdin, results JSON on stdout."""
    import gc

    spec = json.load(sys.stdin)
    try:  # every allocation >= 64 KiB is its own mmap, returned to the OS on free
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 16)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 1 << 16)  # M_TRIM_THRESHOLD
    except OSError:
        pass
    tools = _hwm_tools()
    out: dict[str, dict[str, int]] = {}
    if tools is None:
        json.dump(out, sys.stdout)
        return
    reset, status = tools
    gc.collect()
    gc.freeze()  # the import graph is large: keep the collector off it while measuring
    torch.set_num_threads(spec["threads"])
    for item in spec["rows"]:
        row = Row(**{k: tuple(v) if isinstance(v, list) else v for k, v in item.items()})  # type: ignore[arg-type]
        built = build(row)
        out[row.id] = {}
        for name, fn in built.impls.items():
            try:
                fn()  # load code pages, size thread-local buffers (tensors die by refcount)
                base = status("VmRSS")
                reset()
                fn()
                out[row.id][name] = max(0, status("VmHWM") - base)
            except Exception:
                continue
        del built
        if spec.get("progress"):
            _progress(
                f"  memory {row.id}: "
                + ", ".join(f"{k} {_fmt_bytes(v)}" for k, v in out[row.id].items())
            )
    json.dump(out, sys.stdout)


def measure_memory(rows: list[Row], progress: bool = True) -> dict[str, dict[str, int]]:
    """Peak extra bytes of every impl of ``rows``, measured in one fresh subprocess."""
    spec = {
        "rows": [asdict(r) for r in rows],
        "threads": torch.get_num_threads(),
        "progress": progress,
    }
    proc = subprocess.run(
        [sys.executable, "-c", "from nfold.bench import _memory_child; _memory_child()"],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        check=False,
    )
    if progress and proc.stderr:
        sys.stderr.write(proc.stderr)
    if proc.returncode != 0:
        _progress(f"memory subprocess failed (exit {proc.returncode}); no memory column")
        return {}
    return json.loads(proc.stdout)


# --------------------------------------------------------------------------- reporting


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(
                (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu
            )
    except OSError:
        pass

    def version(dist: str) -> str | None:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "nfold": version("nfold"),
        "unfoldNd": version("unfoldNd"),
        "torchnd": version("torchnd"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "loadavg_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def _fmt_ms(t: float | None) -> str:
    if t is None:
        return ""
    return f"{1e3 * t:.0f}" if t >= 0.1 else f"{1e3 * t:.3g}"


def _ratio(r: float | None) -> str:
    return "" if r is None else f"{r:.2f}"


def _peers_of(records: list[dict[str, Any]]) -> list[str]:
    seen = {name for rec in records for name in (*rec["ratios"], *rec["check"], *rec["errors"])}
    seen.discard("nfold")
    return [p for p in PEER_ORDER if p in seen]


def render_table(result: dict[str, Any]) -> str:
    """Markdown: one table per op; ratio columns are nfold time / peer time."""
    lines: list[str] = []
    by_op: dict[str, list[dict[str, Any]]] = {}
    for rec in result["rows"]:
        by_op.setdefault(rec["op"], []).append(rec)
    for op, records in by_op.items():
        peers = _peers_of(records)
        mem_names = ["nfold", *[p for p in peers if p not in FLOORS]]
        has_mem = any(rec.get("memory") for rec in records)
        head = ["config", "nfold ms"] + [f"÷ {p}" for p in peers]
        if op in ("unfold scaling",):
            head.append("nfold GB/s")
        if has_mem:
            head += [f"mem/out {p}" for p in mem_names]
        lines += [
            f"### {op}",
            "",
            "| " + " | ".join(head) + " |",
            "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|",
        ]
        for rec in records:
            t = rec["times"].get("nfold", {}).get("median_s")
            cells = [rec["config"], _fmt_ms(t)]
            for p in peers:
                if p in rec["ratios"]:
                    cells.append(_ratio(rec["ratios"][p]))
                elif rec["check"].get(p, "ok") != "ok":
                    cells.append("MISMATCH")
                elif p in rec["errors"]:
                    cells.append("error")
                else:
                    cells.append("–")
            if op == "unfold scaling":
                cells.append("" if t is None else f"{rec['out_bytes'] / t / 1e9:.2f}")
            if has_mem:
                mem = rec.get("memory") or {}
                for p in mem_names:
                    v = mem.get(p)
                    cells.append(
                        ""
                        if v is None or rec["out_bytes"] < MEMORY_MIN_BYTES
                        else f"{v / rec['out_bytes']:.2f}"
                    )
            if rec.get("note"):
                cells[0] += f" ({rec['note']})"
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    problems = [
        (rec["id"], name, msg)
        for rec in result["rows"]
        for name, msg in (*rec["errors"].items(), *rec["check"].items())
        if msg != "ok"
    ]
    if problems:
        lines += ["### peers that failed or disagreed (no ratio reported)", ""]
        lines += [f"- `{rid}` — {name}: {msg}" for rid, name, msg in problems]
        lines.append("")
    return "\n".join(lines)


def render_markdown(result: dict[str, Any]) -> str:
    m = result["meta"]
    head = [
        "# nfold benchmark results",
        "",
        f"- date: {m['date']}; preset: {m['preset']}; All-CNN-C batch: {m['batch_size']}",
        f"- machine: {m['cpu']}, {m['cores']} cores ({m['usable_cores']} usable), "
        f"torch threads {m['torch_threads']}; load average at start "
        f"{_fmt_load(m.get('loadavg_start'))}, at end {_fmt_load(m.get('loadavg_end'))}",
        f"- torch {m['torch']}, nfold {m['nfold']}, unfoldNd {m['unfoldNd']}, "
        f"torchnd {m['torchnd']}, Python {m['python']}, {m['platform']}",
        f"- timing: torch.utils.benchmark.Timer.blocked_autorange(min_run_time={m['min_run_time']})"
        ", median; all peers timed in the same run",
        "",
        "Ratio columns `÷ peer` are nfold time / peer time: below 1 nfold is faster. The copy "
        "floor is `clone()` of the column matrix (once per pass). `mem/out` is the peak "
        "extra memory of the op (output included) over its output size, measured in a fresh "
        "subprocess (blank for outputs under 1 MB: RSS counters are good to ~0.25 MB). "
        "Every peer's result was checked against nfold's before timing.",
        "",
        "",
    ]
    return "\n".join(head) + render_table(result)


def _fmt_load(load: Any) -> str:
    return "n/a" if not load else "/".join(f"{v:.1f}" for v in load)


def plot(result: dict[str, Any], path: str) -> None:
    """Bars of nfold time / peer time per row, growing from the line at 1 on a log axis
    (left of it nfold is faster), one panel per op in two columns, one colour per peer."""
    try:
        import matplotlib
    except ImportError as err:
        raise RuntimeError(
            "--plot needs matplotlib: pip install matplotlib (or pip install 'nfold[bench]')"
        ) from err
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    by_op: dict[str, list[dict[str, Any]]] = {}
    for rec in result["rows"]:
        if rec["ratios"]:
            by_op.setdefault(rec["op"], []).append(rec)
    if not by_op:
        by_op = {"(no timed rows)": []}
    palette = ["#8c8c8c", "#bcbd22", "#d62728", "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd"]
    palette.append("#8c564b")
    colors = dict(zip(PEER_ORDER, palette, strict=True))
    peers = _peers_of([r for recs in by_op.values() for r in recs])
    ratios = [v for recs in by_op.values() for r in recs for v in r["ratios"].values()]
    lo, hi = min([0.5, *ratios]) / 1.3, max([2.0, *ratios]) * 1.3

    # Two columns, panels placed greedily in the shorter one.
    cols: list[list[str]] = [[], []]
    load = [0.0, 0.0]
    size = {
        op: len(recs) * max(1, len({p for r in recs for p in r["ratios"]})) + 6
        for op, recs in by_op.items()
    }
    for op in by_op:
        c = 0 if load[0] <= load[1] else 1
        cols[c].append(op)
        load[c] += size[op]
    units = max(load)
    fig = plt.figure(figsize=(15, 1.2 + 0.085 * units))
    grid = fig.add_gridspec(
        int(units),
        2,
        hspace=0.0,
        wspace=0.55,
        left=0.17,
        right=0.98,
        top=1 - 0.9 / (1.2 + 0.085 * units),
        bottom=0.3 / (1.2 + 0.085 * units),
    )
    for c, ops in enumerate(cols):
        start = 0
        for op in ops:
            recs = by_op[op]
            ax = fig.add_subplot(grid[start + 3 : start + size[op] - 2, c])
            start += size[op]
            op_peers = [p for p in peers if any(p in r["ratios"] for r in recs)]
            width = 0.84 / max(1, len(op_peers))
            for j, p in enumerate(op_peers):
                ys = [i + (j - (len(op_peers) - 1) / 2) * width for i in range(len(recs))]
                vals = [r["ratios"].get(p, 1.0) for r in recs]
                ax.barh(ys, [v - 1 for v in vals], left=1, height=width, color=colors[p])
            ax.axvline(1.0, color="black", linewidth=1.2)
            ax.set_xscale("log")
            ax.set_xlim(lo, hi)
            ax.set_ylim(len(recs) - 0.5, -0.5)
            ax.set_yticks(range(len(recs)))
            ax.set_yticklabels([r["config"] for r in recs], fontsize=7)
            ax.set_title(op, fontsize=10, loc="left", fontweight="bold")
            ax.grid(axis="x", which="major", alpha=0.4)
            ax.tick_params(axis="x", labelsize=7)
    m = result["meta"]
    fig.suptitle(
        f"nfold time / peer time (log; < 1 nfold faster)   —   {m['preset']} run, "
        f"torch {m['torch']}, {m['cores']} cores, {m['date']}",
        fontsize=11,
        y=0.998,
    )
    handles = [Patch(color=colors[p], label=f"÷ {p}") for p in peers]
    if handles:
        fig.legend(
            handles=handles,
            loc="upper center",
            ncol=min(len(handles), 4),
            fontsize=9,
            bbox_to_anchor=(0.5, 1 - 0.35 / (1.2 + 0.085 * units)),
            frameon=False,
        )
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``nfold bench`` (also used by ``benchmarks/run.py``)."""
    parser.add_argument(
        "--quick",
        action="store_true",
        help="reduced suite at small sizes (finishes in about a minute)",
    )
    parser.add_argument("--json", metavar="FILE", help="write the raw numbers as JSON")
    parser.add_argument("--plot", metavar="FILE.png", help="write a bar chart (needs matplotlib)")
    parser.add_argument("--markdown", metavar="FILE", help="write the tables as Markdown")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="All-CNN-C batch size (default 32; 4 with --quick)",
    )
    parser.add_argument(
        "--filter",
        metavar="SUBSTRING",
        default=None,
        help="only rows whose 'op | config' contains SUBSTRING (case-insensitive)",
    )
    parser.add_argument(
        "--min-run-time",
        type=float,
        default=None,
        help="seconds per Timer.blocked_autorange (default 0.5; 0.05 with --quick)",
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocess")
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # toy sizes, tests


def collect(args: argparse.Namespace) -> dict[str, Any]:
    """Run the rows selected by ``args``; returns ``{"meta": ..., "rows": [...]}``."""
    rows = suite(quick=args.quick, tiny=args.tiny, batch_size=args.batch_size)
    if args.filter:
        rows = [r for r in rows if args.filter.lower() in r.id.lower()]
    min_run_time = args.min_run_time
    if min_run_time is None:
        min_run_time = 0.0 if args.tiny else 0.05 if args.quick else 0.5
    meta = machine_info()
    meta.update(
        preset=("tiny " if args.tiny else "") + ("quick" if args.quick else "full"),
        batch_size=args.batch_size or (1 if args.tiny else 4 if args.quick else 32),
        min_run_time=min_run_time,
    )
    start = time.perf_counter()
    threads = torch.get_num_threads()
    if args.tiny:  # toy sizes: OpenMP hand-offs would dominate (and spin on a busy machine)
        torch.set_num_threads(1)
    try:
        records = _collect_rows(rows, min_run_time, args.no_memory)
    finally:
        torch.set_num_threads(threads)
    meta["loadavg_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    meta["wall_s"] = time.perf_counter() - start
    return {"meta": meta, "rows": records}


def _collect_rows(rows: list[Row], min_run_time: float, no_memory: bool) -> list[dict[str, Any]]:
    records = []
    for i, row in enumerate(rows, 1):
        rec = bench_row(row, min_run_time)
        records.append(rec)
        t = rec["times"].get("nfold", {}).get("median_s")
        summary = ", ".join(f"÷{p} {r:.2f}" for p, r in rec["ratios"].items())
        bad = [f"{p}: {m}" for p, m in (*rec["errors"].items(), *rec["check"].items()) if m != "ok"]
        _progress(
            f"[{i}/{len(rows)}] {row.id}: "
            + (rec["note"] or f"nfold {1e3 * t:.3g} ms" if t else rec["note"] or "no timing")
            + (f"; {summary}" if summary else "")
            + (f"; {'; '.join(bad)}" if bad else "")
        )
    if not no_memory:
        _progress("measuring peak memory in a subprocess ...")
        memory = measure_memory([r for r, rec in zip(rows, records, strict=True) if rec["times"]])
        for rec in records:
            rec["memory"] = memory.get(rec["id"], {})
    return records


def run(args: argparse.Namespace) -> int:
    """Run the suite, print the tables, write the requested files; returns the exit code."""
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print(
                "error: --plot needs matplotlib: pip install matplotlib "
                "(or pip install 'nfold[bench]')",
                file=sys.stderr,
            )
            return 2
    result = collect(args)
    print(render_table(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(render_markdown(result))
    if args.plot:
        plot(result, args.plot)
    mismatches = [
        r["id"]
        for r in result["rows"]
        if any(m.startswith("MISMATCH") for m in r["check"].values())
    ]
    return 1 if mismatches else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m nfold.bench", description=__doc__.split("\n")[0]
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
