"""Verdicts of ``nfold check``: from the errors of one quantity in a low precision and in
float64 to ``exact`` / ``round-off`` / ``MISMATCH`` (see :data:`RULE`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

#: The float64 error must be at most this fraction of the low-precision one. Round-off
#: gives eps64 / eps32 ~ 1.9e-9 (a spread of the max over entries of a few x); a bug
#: gives ~1. 1e-6 sits ~500x above the first and 6 orders of magnitude below the second.
RATIO = 1e-6
#: Allowed excess of the low-precision error over ``eps * sqrt(K)`` (random-walk
#: round-off of a K-term sum, normwise) or over the reference's own round-off.
TOL_FACTOR = 16.0

EXACT, ROUND_OFF, MISMATCH, ERROR, SKIPPED = "exact", "round-off", "MISMATCH", "ERROR", "skipped"
NOT_COMPARED = "not compared"
FAILURES = (MISMATCH, ERROR)
COMPARED = (EXACT, ROUND_OFF, MISMATCH)
HIGH = torch.float64

#: The rule, in the words the README and ``nfold check --help`` print (one source).
RULE = """\
errors of one quantity, from the same numbers: abs = max |result - reference|,
rel = abs / max |reference|, in the low precision (float32 unless --dtype) and in float64.
  exact      abs is 0 in both precisions.
  round-off  rel_low <= tol, where tol = 16 * max(eps_low * sqrt(K), the reference's own
             rel_low against its float64 result) and K is the number of terms summed per
             entry (0 for a pure copy: copies must be exact); and the error shrinks with
             the precision: abs_float64 <= 1e-6 * abs_low, or rel_float64 <= tol *
             eps_float64 / eps_low (the float64 error is itself round-off).
  MISMATCH   anything else (or a wrong shape): a bug.
  ERROR      the code under test raised.  skipped: the reference raised (no kernel).
  not compared  the layer did not run through nfold: no verdict is given."""

#: Why a row is marked ``~0``.
NEAR_ZERO_LEGEND = (
    "~0: the reference is near zero, a sum that cancels (e.g. the gradient of a conv bias "
    "before BatchNorm): in the low precision it lost over half its digits, more than a "
    "K-term sum explains, so rel is large by nature and the bound is its own error."
)


def eps(dtype: torch.dtype) -> float:
    return float(torch.finfo(dtype).eps)


def tolerance(eps_low: float, reduction_length: int, noise_low: float = 0.0) -> float:
    """Largest low-precision relative error still taken for round-off.

    ``TOL_FACTOR * max(eps_low * sqrt(K), noise_low)``: ``K`` terms summed per entry
    (0 for a pure copy: then the only allowance is the reference's own noise, normally 0,
    so data movement must be exact), ``noise_low`` the reference's own relative error in
    the low precision.

    >>> tolerance(2.0**-23, 0)
    0.0
    >>> round(tolerance(2.0**-23, 100) / 2.0**-23)
    160
    """
    return TOL_FACTOR * max(eps_low * math.sqrt(max(reduction_length, 0)), noise_low)


def verdict(
    abs_low: float,
    rel_low: float,
    abs_high: float,
    rel_high: float,
    tol: float,
    *,
    eps_low: float = 2.0**-23,
    eps_high: float = 2.0**-52,
) -> str:
    """``exact``, ``round-off`` or ``MISMATCH`` from the errors of one quantity in the low
    precision and in float64, and the low-precision round-off bound ``tol``
    (see :func:`tolerance` and :data:`RULE`).

    >>> verdict(0.0, 0.0, 0.0, 0.0, 1e-5)
    'exact'
    >>> verdict(3e-7, 1e-7, 5e-16, 2e-16, 1e-5)
    'round-off'
    >>> verdict(0.3, 0.1, 0.3, 0.1, 1e-5)
    'MISMATCH'
    """
    values = (abs_low, rel_low, abs_high, rel_high)
    if not all(math.isfinite(v) for v in values):
        return MISMATCH
    if abs_low == 0 and abs_high == 0:
        return EXACT
    if rel_low > tol:
        return MISMATCH  # larger than round-off in the low precision
    shrinks = abs_high <= RATIO * abs_low or rel_high <= tol * eps_high / eps_low
    return ROUND_OFF if shrinks else MISMATCH


def errors(a: torch.Tensor | None, b: torch.Tensor) -> tuple[float, float]:
    """``(max |a - b|, max |a - b| / max |b|)``; infinite for a missing or misshapen ``a``."""
    if a is None or a.shape != b.shape:
        return math.inf, math.inf
    if b.numel() == 0:
        return 0.0, 0.0
    a64, b64 = a.detach().to(torch.float64), b.detach().to(torch.float64)
    diff = (a64 - b64).abs()
    diff = torch.where(a64.isnan() & b64.isnan(), torch.zeros_like(diff), diff)
    diff = torch.where(a64 == b64, torch.zeros_like(diff), diff)  # equal infinities
    err = float(diff.nan_to_num(nan=math.inf).max())
    scale = float(b64.abs().nan_to_num(nan=0.0, posinf=0.0).max())
    if err == 0:
        return 0.0, 0.0
    return err, (err / scale if scale > 0 else math.inf)


@dataclass
class Row:
    """One compared quantity of one setting (or layer), with its errors and verdict."""

    setting: str
    quantity: str
    reference: str
    abs_low: float = math.nan
    rel_low: float = math.nan
    abs_high: float = math.nan
    rel_high: float = math.nan
    tolerance: float = math.nan
    reduction_length: int = 0
    verdict: str = MISMATCH
    note: str = ""
    near_zero: bool = False  # the reference cancels: see NEAR_ZERO_LEGEND

    @property
    def failed(self) -> bool:
        return self.verdict in FAILURES


Pair = Sequence[torch.Tensor | None]  # (low-precision result, float64 result)


def judge(row: Row, tested: Pair, ref: Pair, eps_low: float) -> Row:
    """Fill ``row`` (its ``reduction_length`` already set) from the tested code's and the
    reference's (low, float64) results, and return it."""
    if ref[0] is None or ref[1] is None:
        raise ValueError(f"{row.setting} {row.quantity}: the reference has no result")
    row.abs_low, row.rel_low = errors(tested[0], ref[0])
    row.abs_high, row.rel_high = errors(tested[1], ref[1])
    _, noise = errors(ref[0], ref[1])
    noise = noise if math.isfinite(noise) else 0.0
    row.tolerance = tolerance(eps_low, row.reduction_length, noise)
    # cancellation, not a long sum: over half the digits lost, beyond the K-term bound
    textbook = TOL_FACTOR * eps_low * math.sqrt(max(row.reduction_length, 1))
    row.near_zero = noise > max(math.sqrt(eps_low), textbook)
    row.verdict = verdict(
        row.abs_low,
        row.rel_low,
        row.abs_high,
        row.rel_high,
        row.tolerance,
        eps_low=eps_low,
        eps_high=eps(HIGH),
    )
    if tested[0] is not None and tested[0].shape != ref[0].shape:
        row.note = f"shape {tuple(tested[0].shape)} != {tuple(ref[0].shape)}"
    return row
