"""A row's inputs and its implementations: nfold and every peer, as closures.

Peers:
    copy floor  ``t.clone()`` of a contiguous tensor the size of the column matrix
                ``(B, C*prod(k), L)`` (for unfold_transpose: of its output); once for a
                forward, twice for forward+backward (each pass moves that matrix once).
                No im2col/col2im can beat it by much.
    GEMM floor  conv rows: the conv's matrix products alone (torch.matmul on an unfolded
                matrix built beforehand), as nfold runs them; no unfold+GEMM conv beats it.
    torch       ``torch.nn.functional.unfold``/``fold`` (N = 2 only; other padding
                modes go through ``F.pad`` first), ``F.conv{N}d`` (N <= 3); fixed-cost
                rows: the same call (``F.unfold``, ``nn.Unfold``, ...) on the same input.
    unfoldNd    ``unfoldNd.unfoldNd``/``foldNd``/``unfold_transposeNd`` (N <= 3), if installed.
    naive       autograd through a plain strided view: ``F.pad`` -> ``Tensor.unfold`` per
                dim -> permute -> reshape (forward+backward of unfold only).
    torchnd     ``torchnd.conv_nd`` (PyPI ``torchnd``) for N = 4 convolutions, if installed.
    unchunked   nfold's conv without ``max_workspace_bytes`` (workspace rows).
    reshape+matmul  patchify and 1x1 conv rows: reshape -> permute -> matmul.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import _args, conv_modules, modules
from ..conv import conv
from ..patches import fold, unfold, unfold_transpose
from .suite import FIXED_COST_OPS, Row

Impls = dict[str, Callable[[], Any]]

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
OPTIONAL_PEERS = {"unfoldNd": "unfoldNd", "torchnd": "torchnd"}  # peer -> module


@dataclass
class Built:
    impls: Impls
    out_bytes: int
    floor_bytes: int  # bytes of the matrix the copy floor clones (0: no floor)
    gemm_floor: Callable[[], Any] | None = None  # conv rows: their GEMMs alone
    rtol: float = 1.3e-6
    atol: float = 1e-5


def optional(module: str) -> Any:
    """The module, or None when it is not installed."""
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


def build(row: Row) -> Built:
    """Allocate the inputs of ``row`` and return its implementations as closures.

    Each closure returns its result (a tensor, or a tuple for forward+backward), which the
    check compares with nfold's; impl ``"nfold"`` is always present. The floors are not
    among them (see :func:`floors`).
    """
    gen = torch.Generator().manual_seed(0)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=gen)

    if row.op in FIXED_COST_OPS:
        return _build_fixed_cost(row, randn)
    unfoldnd = optional("unfoldNd")
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
        w = randn(row.out_channels, c // row.groups, *k) / math.sqrt(c // row.groups * math.prod(k))
        bias = randn(row.out_channels)
        kw: dict[str, Any] = dict(stride=s, padding=p, dilation=d, groups=row.groups)
        impls["nfold"] = lambda: conv(x, w, bias, max_workspace_bytes=row.max_workspace_bytes, **kw)
        if row.op == "conv workspace":
            impls["unchunked"] = lambda: conv(x, w, bias, **kw)
        if _is_patchify(row):
            impls["reshape+matmul"] = lambda: _patch_matmul(x, w, bias, k)
        if n <= 3:
            torch_conv = getattr(F, f"conv{n}d")
            impls["torch"] = lambda: torch_conv(x, w, bias, **kw)
        else:
            torchnd = optional("torchnd")
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


def floors(row: Row, built: Built) -> Impls:
    """The copy and GEMM floors of a built row (bounds to time against, never checked)."""
    impls: Impls = {}
    if built.floor_bytes:
        impls["copy floor"] = _copy_floor(built.floor_bytes, 2 if row.op.endswith("+bwd") else 1)
    if built.gemm_floor is not None:
        impls["GEMM floor"] = built.gemm_floor
    return impls


def _build_fixed_cost(row: Row, randn: Callable[..., torch.Tensor]) -> Built:
    """nfold's call and torch's on the same (small) input; see suite.fixed_cost_rows."""
    k, p = row.kernel, row.padding
    b, c = row.shape[:2]
    size = row.shape[2:]
    if row.call.lower() == "fold":
        x = randn(b, c * math.prod(k), math.prod(_blocks(row)))
        out_shape = row.shape
    else:
        x = randn(*row.shape)
        out_shape = (b, c * math.prod(k), math.prod(_blocks(row)))
    params: dict[str, tuple[torch.Tensor, ...]] = {"nfold": (), "torch": ()}
    impls: Impls
    if row.call == "unfold":
        impls = {
            "nfold": lambda: unfold(x, k, padding=p),
            "torch": lambda: F.unfold(x, k, padding=p),
        }
    elif row.call == "Unfold":
        mods = {"nfold": modules.Unfold(k, padding=p), "torch": nn.Unfold(k, padding=p)}
        impls = {name: partial(m, x) for name, m in mods.items()}
    elif row.call == "fold":
        impls = {
            "nfold": lambda: fold(x, size, k, padding=p),
            "torch": lambda: F.fold(x, size, k, padding=p),
        }
    elif row.call == "Fold":
        mods = {"nfold": modules.Fold(size, k, padding=p), "torch": nn.Fold(size, k, padding=p)}
        impls = {name: partial(m, x) for name, m in mods.items()}
    elif row.call == "conv":
        out_shape = (b, row.out_channels, *_blocks(row))
        w, bias = randn(row.out_channels, c, *k), randn(row.out_channels)
        impls = {
            "nfold": lambda: conv(x, w, bias, padding=p),
            "torch": lambda: F.conv2d(x, w, bias, padding=p),
        }
        params = {"nfold": (w, bias), "torch": (w, bias)}
    elif row.call == "Conv2d":
        out_shape = (b, row.out_channels, *_blocks(row))
        k2, p2 = (k[0], k[1]), (p[0], p[1])
        ref = nn.Conv2d(c, row.out_channels, k2, padding=p2)
        ours = conv_modules.Conv2d(c, row.out_channels, k2, padding=p2)
        ours.load_state_dict(ref.state_dict())
        mods = {"nfold": ours, "torch": ref}
        impls = {name: partial(m, x) for name, m in mods.items()}
        params = {name: tuple(m.parameters()) for name, m in mods.items()}
    else:
        raise ValueError(f"unknown fixed-cost call {row.call!r}")
    grad = row.op != "fixed cost"
    for t in (x, *params["nfold"], *params["torch"]):
        t.requires_grad_(grad)
    if row.op.endswith("+bwd"):
        g = randn(*out_shape)
        impls = {name: _grad_of(f, (x, *params[name]), g) for name, f in impls.items()}
    return Built(impls, 4 * math.prod(out_shape), 0)


def _pads(row: Row) -> list[int]:
    return [p for p in reversed(row.padding) for _ in range(2)]


def _padded_args(x: torch.Tensor, row: Row) -> tuple[Any, ...]:
    """F.unfold's arguments; padding modes other than zeros go through F.pad first."""
    if row.padding_mode == "zeros":
        return x, row.kernel, row.dilation, row.padding, row.stride
    xp = F.pad(x, _pads(row), mode=row.padding_mode)
    return xp, row.kernel, row.dilation, (0,) * row.n, row.stride


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


def _grad_of(
    f: Callable[[], torch.Tensor], inputs: tuple[torch.Tensor, ...], g: torch.Tensor
) -> Callable[[], Any]:
    def run() -> Any:
        out = f()
        return (out.detach(), *torch.autograd.grad(out, inputs, g))

    return run


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


def _copy_floor(nbytes: int, passes: int) -> Callable[[], Any]:
    src = torch.ones(nbytes // 4)  # touched, so clone reads real pages
    if passes == 1:
        return src.clone
    return lambda: tuple(src.clone() for _ in range(passes))
