"""Running the built-in table of ``nfold check``: each setting through nfold and through
torch (or the naive reference of :mod:`nfold._reference`), forward and every gradient,
in the low precision and in float64."""

from __future__ import annotations

import dataclasses
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from . import _reference as R
from ._check_report import Report
from ._check_settings import SETTINGS, Setting, low_precision, reduction_length
from ._check_verdicts import ERROR, HIGH, SKIPPED, Row, eps, judge


def _flat_pads(pairs: Sequence[tuple[int, int]]) -> list[int]:
    return [v for lo_hi in reversed(pairs) for v in lo_hi]


def _is_pairs(padding: object) -> bool:
    return isinstance(padding, (tuple, list)) and any(isinstance(p, (tuple, list)) for p in padding)


def _torch_pad(
    x: torch.Tensor, padding: object, kernel: Sequence[int], dilation: Sequence[int], mode: str
) -> torch.Tensor:
    pairs = R.pairs(padding, kernel, dilation)
    return F.pad(x, _flat_pads(pairs), mode="constant" if mode == "zeros" else mode)


def _tuple(value: Any, n: int) -> tuple[int, ...]:
    return (value,) * n if isinstance(value, int) else tuple(value)


def _torch_conv(setting: Setting) -> Callable[..., torch.Tensor]:
    """``F.conv{N}d``; other padding modes and per-side pairs through ``F.pad`` first, as
    ``torch.nn.ConvNd`` does."""
    kw = dict(setting.kwargs)
    fn = getattr(F, f"conv{setting.n}d")
    mode, padding = kw.pop("padding_mode", "zeros"), kw.pop("padding", 0)
    dilation = _tuple(kw.get("dilation", 1), setting.n)

    def run(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
        if mode == "zeros" and not _is_pairs(padding):
            return fn(x, w, b, padding=padding, **kw)
        return fn(_torch_pad(x, padding, setting.kernel_size, dilation, mode), w, b, **kw)

    return run


def _torch_conv_transpose(setting: Setting) -> Callable[..., torch.Tensor]:
    """``F.conv_transpose{N}d``; ``output_size`` becomes ``output_padding`` as in
    ``torch.nn.ConvTransposeNd``."""
    kw = dict(setting.kwargs)
    fn = getattr(F, f"conv_transpose{setting.n}d")
    size = kw.pop("output_size", None)

    def run(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
        if size is not None:
            n = setting.n
            geometry = zip(
                x.shape[-n:],
                _tuple(kw.get("stride", 1), n),
                _tuple(kw.get("padding", 0), n),
                _tuple(kw.get("dilation", 1), n),
                w.shape[2:],
                size,
                strict=True,
            )
            kw["output_padding"] = tuple(
                o - ((i - 1) * s - 2 * p + d * (k - 1) + 1) for i, s, p, d, k, o in geometry
            )
        return fn(x, w, b, **kw)

    return run


def _torch_unfold(setting: Setting) -> Callable[..., torch.Tensor]:
    """``F.unfold``; other padding modes, "same" and per-side pairs through ``F.pad``."""
    kw = dict(setting.kwargs)
    mode, padding = kw.pop("padding_mode", "zeros"), kw.pop("padding", 0)
    dilation = _tuple(kw.get("dilation", 1), 2)

    def run(x: torch.Tensor) -> torch.Tensor:
        if mode == "zeros" and not isinstance(padding, str) and not _is_pairs(padding):
            return F.unfold(x, padding=padding, **kw)
        return F.unfold(_torch_pad(x, padding, setting.kernel_size, dilation, mode), **kw)

    return run


def _torch_fold(setting: Setting) -> Callable[..., torch.Tensor]:
    """``F.fold``; ``reduction="mean"`` divides by ``F.fold`` of ones (clamped to 1)."""
    kw = dict(setting.kwargs)
    mean = kw.pop("reduction", "sum") == "mean"

    def run(y: torch.Tensor) -> torch.Tensor:
        out = F.fold(y, **kw)
        return out / F.fold(torch.ones_like(y[:1]), **kw).clamp(min=1) if mean else out

    return run


def reference_op(setting: Setting) -> tuple[Callable[..., torch.Tensor], str]:
    """torch's op where it has one (conv / conv_transpose for N <= 3, unfold / fold for
    N = 2; fold's per-side pairs excepted), else the naive reference of
    :mod:`nfold._reference`. Returns the op and its name for the table."""
    op, n, kw = setting.op, setting.n, dict(setting.kwargs)
    if setting.method == "auto":
        gemm = _nfold_op(dataclasses.replace(setting, method="gemm"))
        return gemm, "nfold-gemm"
    if op == "conv" and n <= 3:
        return _torch_conv(setting), f"F.conv{n}d"
    if op == "conv_transpose" and n <= 3:
        return _torch_conv_transpose(setting), f"F.conv_transpose{n}d"
    if op == "unfold" and n == 2:
        return _torch_unfold(setting), "F.unfold"
    if op == "fold" and n == 2 and not _is_pairs(kw.get("padding", 0)):
        return _torch_fold(setting), "F.fold"
    ref = getattr(R, op)
    if op in ("conv", "conv_transpose"):
        return lambda x, w, b=None: ref(x, w, b, **kw), "naive"
    return lambda x: ref(x, **kw), "naive"


def _nfold_op(setting: Setting) -> Callable[..., torch.Tensor]:
    """nfold's op, looked up on the package at call time (so a patched op is the one run)."""
    import nfold

    fn = getattr(nfold, setting.op)
    kw = setting.nfold_kwargs
    if setting.op in ("conv", "conv_transpose"):
        return lambda x, w, b=None: fn(x, w, b, **kw)
    return lambda x: fn(x, **kw)


# ----------------------------------------------------------------------------- built-in run

Results = list[torch.Tensor | None]  # forward, then one gradient per input tensor


def evaluate(
    fn: Callable[..., torch.Tensor], tensors: Sequence[torch.Tensor], grad_out: torch.Tensor | None
) -> Results:
    """Forward and, if ``grad_out`` fits the output, the gradient of every input."""
    leaves = [t.detach().clone().requires_grad_(True) for t in tensors]
    out = fn(*leaves)
    if grad_out is None or out.shape != grad_out.shape:
        return [out.detach(), *([None] * len(leaves))]
    grads = torch.autograd.grad(out, leaves, grad_out, allow_unused=True)
    zeros = (torch.zeros_like(t) if g is None else g for t, g in zip(leaves, grads, strict=True))
    return [out.detach(), *zeros]


def flatten(value: Any) -> list[torch.Tensor]:
    """The tensors of a (nested) tuple, list or dict, in order."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in flatten(v)]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in flatten(v)]
    return []


def differentiable(t: torch.Tensor) -> bool:
    return t.is_floating_point() or t.is_complex()


def seeded(seed: int, key: str) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(key.encode()))


def run_setting(setting: Setting, low: torch.dtype, device: torch.device, seed: int) -> list[Row]:
    """All rows of one setting: nfold against its reference, in ``low`` and in float64."""
    gen = seeded(seed, setting.id)
    base = [torch.randn(shape, generator=gen).to(low) for shape in setting.shapes]
    inputs = {dt: [t.to(device=device, dtype=dt) for t in base] for dt in (low, HIGH)}
    ref_fn, ref_name = reference_op(setting)
    names = setting.quantities()
    rows = [Row(setting.id, q, ref_name) for q in names]
    try:
        out_low = ref_fn(*inputs[low]).detach()
        g = torch.randn(out_low.shape, generator=gen).to(low)
        grad_out = {dt: g.to(device=device, dtype=dt) for dt in (low, HIGH)}
        ref = {dt: evaluate(ref_fn, inputs[dt], grad_out[dt]) for dt in (low, HIGH)}
    except Exception as exc:  # torch has no kernel for this dtype / device: not nfold's fault
        for row in rows:
            row.verdict, row.note = SKIPPED, f"reference raised {type(exc).__name__}: {exc}"
        return rows
    nf_fn = _nfold_op(setting)
    try:
        nf = {dt: evaluate(nf_fn, inputs[dt], grad_out[dt]) for dt in (low, HIGH)}
    except Exception as exc:
        for row in rows:
            row.verdict, row.note = ERROR, f"nfold raised {type(exc).__name__}: {exc}"
        return rows
    for i, row in enumerate(rows):
        row.reduction_length = reduction_length(setting, row.quantity, out_low.shape)
        judge(row, (nf[low][i], nf[HIGH][i]), (ref[low][i], ref[HIGH][i]), eps(low))
    return rows


def versions() -> str:
    from . import __version__

    return f"nfold {__version__}, torch {torch.__version__}"


def check_builtin(
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    seed: int = 0,
    only: str | None = None,
    settings: Iterable[Setting] | None = None,
) -> Report:
    """Run the built-in settings (or ``settings``; ``only``: keep ids containing that
    substring) through nfold and torch / the naive reference, forward and every gradient,
    in ``dtype`` and float64, and return the :class:`Report`. Runs on one CPU thread
    (restored afterwards): the shapes are small."""
    start = time.perf_counter()
    dtype = low_precision(dtype)
    device = torch.device(device)
    chosen = [
        s for s in (SETTINGS if settings is None else settings) if only is None or only in s.id
    ]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny shapes: threads only add overhead (15x on a busy machine)
    try:
        rows = [row for s in chosen for row in run_setting(s, dtype, device, seed)]
    finally:
        torch.set_num_threads(threads)
    low = str(dtype).removeprefix("torch.")
    title = (
        f"nfold check: {len(chosen)} settings, {low} vs float64, device {device}, seed {seed} "
        f"({versions()})"
    )
    report = Report(rows, title, low, str(device), seed, time.perf_counter() - start)
    report.nothing_compared = "every reference raised" if rows else "no setting was selected"
    return report
