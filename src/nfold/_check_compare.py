"""``compare(fn, reference, *inputs)``: the user's own function against a reference, with
the verdicts of ``nfold check``."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ._check_model import ModelError, model_inputs
from ._check_report import Report
from ._check_run import differentiable, flatten, seeded, versions
from ._check_settings import low_precision
from ._check_verdicts import ERROR, HIGH, NOT_COMPARED, Row, eps, judge

Results = dict[str, torch.Tensor | None]


def _name(fn: Any) -> str:
    if isinstance(fn, nn.Module):
        return type(fn).__name__
    return str(getattr(fn, "__name__", None) or type(fn).__name__)


def _pairs(fn: Any, reference: Any) -> list[tuple[str, str | None, str | None]]:
    """``(row name, fn's parameter name, reference's)`` for every floating parameter:
    the same Parameter object in both first, then equal names, then the rest alone."""
    mine = dict(fn.named_parameters()) if isinstance(fn, nn.Module) else {}
    theirs = dict(reference.named_parameters()) if isinstance(reference, nn.Module) else {}
    by_id = {id(p): name for name, p in theirs.items()}
    out: list[tuple[str, str | None, str | None]] = []
    for name, p in mine.items():
        other = by_id.get(id(p)) or (name if name in theirs else None)
        out.append((name, name, other))
    matched = {other for _, _, other in out}
    out += [(name, None, name) for name in theirs if name not in matched]
    return out


def _run(
    fn: Any,
    inputs: Sequence[Any],
    grad_outputs: list[torch.Tensor] | None,
    seed: int,
) -> tuple[list[torch.Tensor], Results]:
    """Outputs of ``fn(*inputs)`` (floating ones) and, given ``grad_outputs``, the
    gradients of every floating input and parameter, by name."""
    torch.manual_seed(seed)  # the same dropout masks in every run
    outs = [t for t in flatten(fn(*inputs)) if differentiable(t)]
    leaves = {
        f"input[{i}]": x
        for i, x in enumerate(inputs)
        if isinstance(x, torch.Tensor) and x.requires_grad
    }
    if isinstance(fn, nn.Module):
        leaves.update({n: p for n, p in fn.named_parameters() if p.requires_grad})
    grads: Results = dict.fromkeys(leaves)
    pairs = [
        (t, g.to(t.dtype))
        for t, g in zip(outs, grad_outputs or [], strict=False)
        if t.requires_grad and t.shape == g.shape
    ]
    if pairs and leaves:
        found = torch.autograd.grad(
            [t for t, _ in pairs], list(leaves.values()), [g for _, g in pairs], allow_unused=True
        )
        grads = {
            name: torch.zeros_like(x) if g is None else g
            for (name, x), g in zip(leaves.items(), found, strict=True)
        }
    return [t.detach() for t in outs], grads


def _copies(
    fn: Any, reference: Any, low: torch.dtype, dtype: torch.dtype, device: torch.device
) -> tuple[Any, Any]:
    """``fn`` and ``reference`` with their parameters and buffers (modules only, copied
    together so that shared parameters stay shared) rounded to ``low``, then in
    ``dtype``; plain functions as they are."""
    fn, reference = copy.deepcopy((fn, reference))
    for m in (fn, reference):
        if isinstance(m, nn.Module):
            m.to(device=device, dtype=low).to(dtype)
    return fn, reference


def compare(
    fn: Callable[..., Any],
    reference: Callable[..., Any],
    *inputs: Any,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
    seed: int = 0,
    reduction_length: int = 0,
) -> Report:
    """Compare ``fn(*inputs)`` with ``reference(*inputs)``, outputs and gradients, in
    ``dtype`` and in float64 from the same numbers, with the verdicts of ``nfold check``
    (exact / round-off / MISMATCH, the rule of ``nfold check --help``).

    Floating inputs are rounded to ``dtype`` and copied to float64; if ``fn`` or
    ``reference`` is an ``nn.Module``, its parameters and buffers too (plain functions run
    as they are: pass their tensors as inputs). Rows: each floating output, then the
    gradient (from one seeded random gradient of the outputs) of each floating input and
    of each parameter, paired between ``fn`` and ``reference`` by identity (a shared
    Parameter) or by name; a parameter of only one of them is ``not compared``.

    Args:
        fn: the function (or module) under test.
        reference: what it should equal, e.g. the torch op it replaces.
        *inputs: positional inputs of both; tensors or anything else (passed as is).
        dtype: the low precision: float32, float16 or bfloat16 (anything else is a
            ValueError: it is compared against float64).
        device: where to run (default: the device of the first tensor input, else cpu).
        seed: seeds the output gradient and the RNG before each call (dropout).
        reduction_length: terms summed per output entry (``K`` of the round-off bound
            ``16 * max(eps * sqrt(K), the reference's own error)``), if known; with 0 the
            bound is the reference's own round-off.

    Returns:
        A :class:`Report` (print it for the table); ``report.ok`` is False on any
        MISMATCH or ERROR. Raises ``ModelError`` if ``reference`` itself fails.

    >>> import torch.nn.functional as F
    >>> def my_conv(x, w):  # conv as unfold + matmul
    ...     cols = F.unfold(x, w.shape[2:])
    ...     return (w.flatten(1) @ cols).reshape(x.shape[0], w.shape[0], 4, 4)
    >>> x, w = torch.randn(2, 3, 6, 6), torch.randn(5, 3, 3, 3)
    >>> compare(my_conv, F.conv2d, x, w).ok
    True
    """
    start = time.perf_counter()
    for name, f in (("fn", fn), ("reference", reference)):
        if not callable(f):
            raise TypeError(f"{name} must be callable, got {type(f).__name__}")
    low = low_precision(dtype)
    if device is None:
        first = next((x for x in inputs if isinstance(x, torch.Tensor)), None)
        device = first.device if first is not None else torch.device("cpu")
    device = torch.device(device)
    fn_name, ref_name = _name(fn), _name(reference)
    low_name = str(low).removeprefix("torch.")
    title = (
        f"nfold.compare: {fn_name} against {ref_name}, {low_name} vs float64, device {device}, "
        f"seed {seed} ({versions()})"
    )

    def report(rows: list[Row]) -> Report:
        return Report(rows, title, low_name, str(device), seed, time.perf_counter() - start)

    results: dict[tuple[str, torch.dtype], tuple[list[torch.Tensor], Results]] = {}
    grad_outputs: list[torch.Tensor] | None = None
    for dt in (low, HIGH):
        mine, theirs = _copies(fn, reference, low, dt, device)
        try:
            results["ref", dt] = _run(theirs, model_inputs(inputs, low, dt, device), None, seed)
            if grad_outputs is None:
                gen = seeded(seed, "grad_output")
                grad_outputs = [
                    torch.randn(t.shape, generator=gen).to(low).to(device)
                    for t in results["ref", dt][0]
                ]
            results["ref", dt] = _run(
                theirs, model_inputs(inputs, low, dt, device), grad_outputs, seed
            )
        except Exception as exc:
            shapes = [tuple(t.shape) for t in flatten(inputs)]
            raise ModelError(
                f"the reference {ref_name} failed on the inputs {shapes} in {dt}: "
                f"{type(exc).__name__}: {exc} (compare converts only the inputs it is given "
                f"and the parameters of modules: pass tensors a function captures as inputs)"
            ) from exc
        try:
            results["fn", dt] = _run(
                mine, model_inputs(inputs, low, dt, device), grad_outputs, seed
            )
        except Exception as exc:
            row = Row(fn_name, "output", ref_name, verdict=ERROR)
            row.note = f"{fn_name} raised {type(exc).__name__}: {exc}"
            return report([row])

    rows: list[Row] = []

    def add(quantity: str, tested: Sequence[Any], ref: Sequence[Any]) -> None:
        if None in ref:  # no gradient in the reference (its outputs do not require grad)
            return
        row = Row(fn_name, quantity, ref_name, reduction_length=reduction_length)
        rows.append(judge(row, tested, ref, eps(low)))

    outs = {who: (results[who, low][0], results[who, HIGH][0]) for who in ("fn", "ref")}
    count = len(outs["ref"][0])
    for i in range(count):
        tested = [out[i] if i < len(out) else None for out in outs["fn"]]
        add("output" if count == 1 else f"output[{i}]", tested, [out[i] for out in outs["ref"]])
    grads = {who: (results[who, low][1], results[who, HIGH][1]) for who in ("fn", "ref")}
    tensor_inputs = [k for k in grads["ref"][0] if k.startswith("input[")]
    for key in tensor_inputs:
        quantity = "grad_input" if len(tensor_inputs) == 1 else f"grad_{key}"
        add(quantity, [g.get(key) for g in grads["fn"]], [g[key] for g in grads["ref"]])
    for name, mine, theirs in _pairs(fn, reference):
        if mine is None or theirs is None:
            row = Row(fn_name, f"grad_{name}", ref_name, verdict=NOT_COMPARED)
            row.note = f"only {'reference' if mine is None else 'fn'} has parameter {name!r}"
            rows.append(row)
        elif theirs in grads["ref"][0]:  # a parameter that requires grad
            add(
                f"grad_{name}",
                [g.get(mine) for g in grads["fn"]],
                [g[theirs] for g in grads["ref"]],
            )
    result = report(rows)
    result.nothing_compared = f"{ref_name} returned no floating tensor"
    return result
