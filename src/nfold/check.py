"""The equivalence diagnostic behind ``nfold check``: is nfold equal to torch, or is
the difference round-off?

Protocol. Every comparison is made twice, from the same values: once in a low precision
(float32 by default) and once in float64 (inputs and weights are drawn once, rounded to
the low precision and then widened, so both runs see identical numbers). Round-off
shrinks with the machine epsilon -- by ``eps64 / eps32 = 2**-29 ~ 1.9e-9`` from float32 to
float64 -- while a bug (a missed stride, a transposed weight, a dropped bias) gives an
error of the same size in both precisions.

Errors of one quantity (an output or a gradient), nfold against the reference:
``abs`` is ``max |nfold - ref|`` and ``rel`` is ``abs / max |ref|`` (normwise, so that
near-zero reference entries do not blow it up).

Verdict (:func:`verdict`):

- ``exact``: zero error in both precisions.
- ``round-off``: both of
  (1) the low-precision error is within the round-off bound,
  ``rel_low <= tol = TOL_FACTOR * max(eps_low * sqrt(K), noise_low)``, where ``K`` is the
  reduction length (terms summed per entry; 0 for pure copies, so copies must be exact)
  and ``noise_low`` is the reference's own low-precision relative error (reference in
  low precision against reference in float64): nfold may be up to ``TOL_FACTOR`` times
  less accurate than the textbook ``eps * sqrt(K)`` or than the reference itself, not more;
  (2) the error shrinks with precision: ``abs_high <= RATIO * abs_low``, or the float64
  error is itself within the same bound scaled to float64 (``tol * eps64 / eps_low``;
  this covers low-precision results that happen to agree exactly).
- ``MISMATCH``: anything else, or a shape that differs.
- ``ERROR``: nfold raised on a valid setting. ``skipped``: the reference raised (torch
  has no kernel for that dtype on that device); not a failure.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import _reference as R

__all__ = [
    "RATIO",
    "SETTINGS",
    "TOL_FACTOR",
    "Report",
    "Row",
    "ModelError",
    "Setting",
    "check_builtin",
    "check_model",
    "tolerance",
    "verdict",
]

#: The float64 error must be at most this fraction of the low-precision one. Round-off
#: gives eps64 / eps32 ~ 1.9e-9 (a spread of the max over entries of a few x); a bug
#: gives ~1. 1e-6 sits ~500x above the first and 6 orders of magnitude below the second.
RATIO = 1e-6
#: Allowed excess of the low-precision error over ``eps * sqrt(K)`` (random-walk
#: round-off of a K-term sum, normwise) or over the reference's own round-off.
TOL_FACTOR = 16.0

EXACT, ROUND_OFF, MISMATCH, ERROR, SKIPPED = "exact", "round-off", "MISMATCH", "ERROR", "skipped"
FAILURES = (MISMATCH, ERROR)
LOW_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_HIGH = torch.float64


def _eps(dtype: torch.dtype) -> float:
    return float(torch.finfo(dtype).eps)


# ----------------------------------------------------------------------------- verdicts


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
    (see :func:`tolerance` and the module docstring).

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


def _errors(a: torch.Tensor | None, b: torch.Tensor) -> tuple[float, float]:
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


# ----------------------------------------------------------------------------- reports


@dataclass
class Row:
    """One compared quantity of one setting (or layer)."""

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

    @property
    def failed(self) -> bool:
        return self.verdict in FAILURES


def _fmt(value: float) -> str:
    if math.isnan(value):
        return "-"
    return "0" if value == 0 else f"{value:.2e}"


@dataclass
class Report:
    """What a check found: one :class:`Row` per setting (or layer) and quantity."""

    rows: list[Row]
    title: str
    dtype: str = "float32"
    device: str = "cpu"
    seed: int = 0
    seconds: float = 0.0
    first_mismatch: str | None = None

    @property
    def ok(self) -> bool:
        """No MISMATCH and no ERROR."""
        return not any(row.failed for row in self.rows)

    def counts(self) -> dict[str, int]:
        out = {v: 0 for v in (EXACT, ROUND_OFF, MISMATCH, ERROR, SKIPPED)}
        for row in self.rows:
            out[row.verdict] += 1
        return out

    def summary(self) -> str:
        counts = ", ".join(f"{n} {v}" for v, n in self.counts().items() if n or v == MISMATCH)
        text = f"{len(self.rows)} rows: {counts} ({self.seconds:.1f} s)"
        if self.first_mismatch:
            text += f"\nfirst layer that disagrees: {self.first_mismatch}"
        return text

    def format(self) -> str:
        """The table: one line per row, then the summary."""
        lo = self.dtype
        head = (
            "setting",
            "quantity",
            "reference",
            f"abs {lo}",
            f"rel {lo}",
            "abs float64",
            "rel float64",
            "verdict",
        )
        lines = [
            (
                r.setting,
                r.quantity,
                r.reference,
                _fmt(r.abs_low),
                _fmt(r.rel_low),
                _fmt(r.abs_high),
                _fmt(r.rel_high),
                r.verdict + (f"  ({r.note})" if r.note else ""),
            )
            for r in self.rows
        ]
        widths = [max(len(line[i]) for line in [head, *lines]) for i in range(len(head) - 1)]
        out = [self.title]
        for line in [head, *lines]:
            out.append(
                "  ".join(c.ljust(w) for c, w in zip(line[:-1], widths, strict=True))
                + "  "
                + line[-1]
            )
        out.append(self.summary())
        return "\n".join(out)

    def __str__(self) -> str:
        return self.format()

    def to_dict(self) -> dict[str, Any]:
        def clean(v: Any) -> Any:  # JSON has no inf/nan
            return None if isinstance(v, float) and not math.isfinite(v) else v

        return {
            "title": self.title,
            "dtype": self.dtype,
            "device": self.device,
            "seed": self.seed,
            "seconds": round(self.seconds, 3),
            "ok": self.ok,
            "counts": self.counts(),
            "first_mismatch": self.first_mismatch,
            "thresholds": {"ratio": RATIO, "tol_factor": TOL_FACTOR},
            "rows": [{k: clean(v) for k, v in dataclasses.asdict(r).items()} for r in self.rows],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)


def _compare(
    row: Row,
    nf: tuple[torch.Tensor | None, torch.Tensor | None],
    ref: tuple[torch.Tensor, torch.Tensor],
    eps_low: float,
) -> Row:
    """Fill ``row`` from nfold's and the reference's (low, float64) results."""
    row.abs_low, row.rel_low = _errors(nf[0], ref[0])
    row.abs_high, row.rel_high = _errors(nf[1], ref[1])
    _, noise = _errors(ref[0], ref[1])
    row.tolerance = tolerance(eps_low, row.reduction_length, noise if math.isfinite(noise) else 0)
    row.verdict = verdict(
        row.abs_low,
        row.rel_low,
        row.abs_high,
        row.rel_high,
        row.tolerance,
        eps_low=eps_low,
        eps_high=_eps(_HIGH),
    )
    if any(
        t is not None and r is not None and t.shape != r.shape for t, r in zip(nf, ref, strict=True)
    ):
        row.note = (
            f"shape {tuple(nf[0].shape) if nf[0] is not None else '?'} != {tuple(ref[0].shape)}"
        )
    return row


# ----------------------------------------------------------------------------- settings

OPS = ("unfold", "fold", "unfold_transpose", "conv", "conv_transpose")


@dataclass(frozen=True)
class Setting:
    """One built-in case: an op, its input (and weight) shapes and keyword arguments."""

    id: str
    op: str
    n: int
    shapes: tuple[tuple[int, ...], ...]  # input, then weight and bias for convolutions
    kwargs: dict[str, Any] = field(default_factory=dict, hash=False)

    @property
    def kernel_size(self) -> tuple[int, ...]:
        if self.op in ("conv", "conv_transpose"):
            return self.shapes[1][2:]
        k = self.kwargs["kernel_size"]
        return (k,) * self.n if isinstance(k, int) else tuple(k)

    @property
    def batched(self) -> bool:
        return len(self.shapes[0]) == self.n + 2 or self.op == "fold"

    def quantities(self) -> list[str]:
        names = ["forward", "grad_input", "grad_weight", "grad_bias"]
        return names[: len(self.shapes) + 1]


def _tag(name: str, value: Any) -> str:
    if isinstance(value, str):
        return value if name == "padding_mode" else f"p{value}"
    if isinstance(value, int):
        return f"{name}{value}"
    if any(isinstance(v, (tuple, list)) for v in value):
        return name + "".join(f"({lo},{hi})" for lo, hi in value)
    return name + "x".join(map(str, value))


_SHORT = {
    "kernel_size": "k",
    "stride": "s",
    "dilation": "d",
    "padding": "p",
    "output_padding": "op",
    "groups": "g",
    "output_size": "osize",
    "padding_mode": "padding_mode",
}


def _make(
    op: str, n: int, shapes: Sequence[tuple[int, ...]], kwargs: dict[str, Any], extra: str = ""
) -> Setting:
    parts = [f"{op}{n}d"]
    for name, value in kwargs.items():
        if name == "reduction":
            parts.append(value)
        elif not (name == "padding_mode" and value == "zeros"):
            parts.append(_tag(_SHORT[name], value) if name != "padding_mode" else value)
    if extra:
        parts.append(extra)
    return Setting("-".join(parts), op, n, tuple(tuple(s) for s in shapes), kwargs)


def _unfold(shape: tuple[int, ...], *, unbatched: bool = False, **kw: Any) -> Setting:
    return _make(
        "unfold", len(shape) - 1 - (not unbatched), [shape], kw, "unbatched" if unbatched else ""
    )


def _fold(batch: int, channels: int, output_size: tuple[int, ...], **kw: Any) -> Setting:
    n = len(output_size)
    tup = {k: (v,) * n if isinstance(v, int) else v for k, v in kw.items() if k != "reduction"}
    k = tup["kernel_size"]
    count = R.blocks(
        output_size,
        k,
        tup.get("dilation", (1,) * n),
        R.pairs(kw.get("padding", 0), k, tup.get("dilation", (1,) * n)),
        tup.get("stride", (1,) * n),
    )
    shape = (batch, channels * math.prod(k), math.prod(count))
    setting = _make("fold", n, [shape], {"output_size": output_size, **kw})
    return setting


def _unfold_t(shape: tuple[int, ...], **kw: Any) -> Setting:
    return _make("unfold_transpose", len(shape) - 2, [shape], kw)


def _conv(
    shape: tuple[int, ...],
    out_channels: int,
    kernel_size: tuple[int, ...],
    *,
    bias: bool = True,
    unbatched: bool = False,
    transposed: bool = False,
    **kw: Any,
) -> Setting:
    n = len(kernel_size)
    groups = kw.get("groups", 1)
    c_in = shape[1]
    if transposed:
        weight = (c_in, out_channels // groups, *kernel_size)
    else:
        weight = (out_channels, c_in // groups, *kernel_size)
    shapes = [shape[1:] if unbatched else shape, weight] + ([(out_channels,)] if bias else [])
    extra = "-".join(
        t
        for t, on in (
            ("dw", groups == c_in and groups > 1),
            ("nobias", not bias),
            ("unbatched", unbatched),
        )
        if on
    )
    # a conv's kernel size is its weight's: named in the id, not passed to the op
    s = _make(
        "conv_transpose" if transposed else "conv",
        n,
        shapes,
        {"kernel_size": kernel_size, **kw},
        extra,
    )
    return Setting(s.id, s.op, n, s.shapes, kw)


def _conv_t(
    shape: tuple[int, ...], out_channels: int, kernel_size: tuple[int, ...], **kw: Any
) -> Setting:
    return _conv(shape, out_channels, kernel_size, transposed=True, **kw)


def _builtin_settings() -> tuple[Setting, ...]:
    s: list[Setting] = []
    # unfold: every padding form and mode, N = 1..4 (N = 2 against torch.nn.functional.unfold)
    s += [
        _unfold((2, 2, 9), kernel_size=3),
        _unfold((2, 2, 11), kernel_size=3, dilation=2, padding=1, stride=2),
        _unfold((2, 2, 7), kernel_size=2, padding=((0, 1),)),
        _unfold((2, 2, 7), kernel_size=3, padding=2, padding_mode="reflect"),
        _unfold((2, 3, 6, 7), kernel_size=3),
        _unfold((2, 2, 7, 8), kernel_size=(2, 3), dilation=(1, 2), padding=(1, 0), stride=(2, 1)),
        _unfold((2, 2, 5, 6), kernel_size=2, padding="same"),
        _unfold((2, 2, 5, 6), kernel_size=3, padding="valid"),
        _unfold((2, 2, 5, 6), kernel_size=(2, 3), padding=((1, 0), (0, 2))),
        _unfold((2, 2, 5, 6), kernel_size=3, padding=(2, 1), padding_mode="reflect"),
        _unfold((2, 2, 5, 6), kernel_size=3, padding=1, stride=2, padding_mode="replicate"),
        _unfold((2, 2, 5, 6), kernel_size=(3, 2), padding=(1, 2), padding_mode="circular"),
        _unfold((2, 6, 7), kernel_size=(2, 3), unbatched=True),
        _unfold(
            (2, 2, 4, 5, 6), kernel_size=(1, 2, 3), dilation=(2, 1, 1), padding=1, stride=(1, 2, 2)
        ),
        _unfold((1, 2, 4, 4, 5), kernel_size=2, padding=1, padding_mode="circular"),
        _unfold((2, 2, 3, 4, 3, 4), kernel_size=2),
        _unfold(
            (1, 2, 4, 3, 4, 5),
            kernel_size=(2, 1, 2, 3),
            stride=(1, 2, 1, 2),
            dilation=(1, 1, 2, 1),
            padding=(1, 0, 0, 1),
        ),
        _unfold((1, 2, 3, 3, 4, 3), kernel_size=2, padding=1, padding_mode="reflect"),
        _unfold(
            (1, 2, 3, 4, 3, 3), kernel_size=(2, 3, 1, 2), padding="same", padding_mode="replicate"
        ),
    ]
    # fold (sum and mean), N = 1..4 (N = 2 against torch.nn.functional.fold)
    s += [
        _fold(2, 2, (9,), kernel_size=3),
        _fold(2, 2, (11,), kernel_size=3, dilation=2, padding=1, stride=2),
        _fold(2, 2, (6, 7), kernel_size=3),
        _fold(2, 2, (7, 8), kernel_size=(2, 3), dilation=(1, 2), padding=(1, 0), stride=(2, 1)),
        _fold(2, 2, (6, 7), kernel_size=3, stride=2, reduction="mean"),
        _fold(2, 2, (5, 6), kernel_size=(2, 3), padding=((1, 0), (0, 2))),
        _fold(2, 2, (4, 5, 6), kernel_size=2),
        _fold(1, 2, (5, 4, 6), kernel_size=(3, 2, 2), stride=2, padding=1, reduction="mean"),
        _fold(1, 2, (3, 4, 3, 4), kernel_size=2),
        _fold(
            1,
            2,
            (4, 5, 3, 4),
            kernel_size=(2, 3, 1, 2),
            stride=(2, 1, 1, 1),
            dilation=(1, 1, 1, 2),
            padding=1,
        ),
        _fold(1, 2, (3, 4, 4, 3), kernel_size=2, reduction="mean"),
    ]
    # unfold_transpose (stride, padding, output_padding, dilation), N = 1..4
    s += [
        _unfold_t((2, 2, 5), kernel_size=3, stride=2),
        _unfold_t((2, 2, 5), kernel_size=3, stride=2, padding=1, output_padding=1, dilation=2),
        _unfold_t((2, 2, 4, 5), kernel_size=3, stride=2, padding=1, output_padding=1),
        _unfold_t((2, 2, 4, 5), kernel_size=(2, 3), stride=(1, 2), dilation=(2, 1)),
        _unfold_t((1, 2, 3, 4, 3), kernel_size=2, stride=2, output_padding=1),
        _unfold_t((1, 2, 3, 2, 3, 2), kernel_size=2, stride=2, padding=1),
        _unfold_t(
            (1, 2, 3, 2, 2, 3),
            kernel_size=(2, 1, 3, 2),
            stride=(2, 1, 1, 2),
            output_padding=(1, 0, 0, 1),
            dilation=(1, 1, 2, 1),
        ),
    ]
    # conv: groups (depthwise too), stride, dilation, every padding form and mode, bias or not
    for n, size in ((1, 9), (2, 6), (3, 5), (4, 4)):
        sp = (size,) * n
        k3, k2 = (3,) * n, (2,) * n
        s += [
            _conv((2, 4, *sp), 6, k3),
            _conv((2, 4, *sp), 6, k2, stride=2, dilation=2, padding=1, groups=2),
            _conv((2, 4, *sp), 8, k3, groups=4, padding="same"),
            _conv((2, 4, *sp), 4, k2, padding="same", dilation=2, bias=False),
            _conv((2, 4, *sp), 4, k2, padding="valid"),
            _conv((2, 2, *sp), 4, k2, padding=tuple((i % 2, (i + 1) % 3) for i in range(n))),
            _conv((2, 2, *sp), 3, k3, padding=1, padding_mode="reflect"),
            _conv((2, 2, *sp), 3, k2, stride=2, padding=1, padding_mode="replicate"),
            _conv((2, 2, *sp), 3, k3, padding="same", padding_mode="circular"),
        ]
        if n <= 2:
            kt = tuple(range(2, 2 + n))
            s += [
                _conv((2, 2, *sp), 4, kt, stride=tuple(range(1, 1 + n)), padding=tuple(range(n))),
                _conv((2, 2, *sp), 3, k3, padding=1, unbatched=True),
            ]
    # conv_transpose: groups (depthwise too), stride, dilation, padding, output_padding, output_size
    for n, size in ((1, 5), (2, 4), (3, 3), (4, 3)):
        sp = (size,) * n
        k3, k2 = (3,) * n, (2,) * n
        out_size = tuple(
            (size - 1) * 2 - 2 + 3 + 1 for _ in range(n)
        )  # output_padding 1 via output_size
        s += [
            _conv_t((2, 4, *sp), 6, k3),
            _conv_t((2, 4, *sp), 6, k3, stride=2, padding=1, output_padding=1, groups=2),
            _conv_t((2, 4, *sp), 4, k2, stride=2, dilation=2, output_padding=1, groups=4),
            _conv_t((2, 2, *sp), 4, k3, stride=2, padding=1, output_size=out_size, bias=False),
        ]
        if n <= 2:
            s += [_conv_t((2, 2, *sp), 3, k2, stride=2, unbatched=True)]
    ids = [x.id for x in s]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise RuntimeError(f"duplicate setting ids {dup}")
    return tuple(s)


def reduction_length(setting: Setting, quantity: str, out_shape: Sequence[int]) -> int:
    """Terms summed per entry of ``quantity`` (an upper bound; 0 for pure copies), given
    the shape of the op's output."""
    op, n = setting.op, setting.n
    k = math.prod(setting.kernel_size)
    # a padded input element may be read up to ~3x per dim (reflect, circular)
    reread = 3**n if setting.kwargs.get("padding_mode", "zeros") != "zeros" else 1
    if op in ("unfold", "unfold_transpose"):
        return 0 if quantity == "forward" else k * reread
    if op == "fold":
        return k if quantity == "forward" else 0
    x, w = setting.shapes[0], setting.shapes[1]
    groups = setting.kwargs.get("groups", 1)
    batch = x[0] if len(x) == n + 2 else 1
    if quantity == "forward":
        per_group_in = w[0] // groups if op == "conv_transpose" else w[1]
        return per_group_in * k + 1
    if quantity == "grad_input":
        per_group_out = w[1] if op == "conv_transpose" else w[0] // groups
        return per_group_out * k * reread
    positions = (
        math.prod(x[-n:])
        if (op, quantity) == ("conv_transpose", "grad_weight")
        else math.prod(out_shape[-n:])
    )
    return batch * positions


SETTINGS: tuple[Setting, ...] = _builtin_settings()


# ----------------------------------------------------------------------------- op wiring


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


def _reference(setting: Setting) -> tuple[Callable[..., torch.Tensor], str]:
    """torch's op where it has one (conv / conv_transpose for N <= 3, unfold / fold for
    N = 2; fold's per-side pairs excepted), else the naive reference of
    :mod:`nfold._reference`. Returns the op and its name for the table."""
    op, n, kw = setting.op, setting.n, dict(setting.kwargs)
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
    kw = dict(setting.kwargs)
    if setting.op in ("conv", "conv_transpose"):
        return lambda x, w, b=None: fn(x, w, b, **kw)
    return lambda x: fn(x, **kw)


# ----------------------------------------------------------------------------- built-in run

Results = list[torch.Tensor | None]  # forward, then one gradient per input tensor


def _evaluate(
    fn: Callable[..., torch.Tensor], tensors: Sequence[torch.Tensor], grad_out: torch.Tensor | None
) -> tuple[torch.Tensor, Results]:
    """Forward and, if ``grad_out`` fits the output, the gradient of every input."""
    leaves = [t.detach().clone().requires_grad_(True) for t in tensors]
    out = fn(*leaves)
    if grad_out is None or out.shape != grad_out.shape:
        return out.detach(), [out.detach(), *([None] * len(leaves))]
    grads = torch.autograd.grad(out, leaves, grad_out, allow_unused=True)
    return out.detach(), [
        out.detach(),
        *(torch.zeros_like(t) if g is None else g for t, g in zip(leaves, grads, strict=True)),
    ]


def _seeded(seed: int, key: str) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(key.encode()))


def run_setting(setting: Setting, low: torch.dtype, device: torch.device, seed: int) -> list[Row]:
    """All rows of one setting: nfold against its reference, in ``low`` and in float64."""
    gen = _seeded(seed, setting.id)
    base = [torch.randn(shape, generator=gen).to(low) for shape in setting.shapes]
    inputs = {dt: [t.to(device=device, dtype=dt) for t in base] for dt in (low, _HIGH)}
    ref_fn, ref_name = _reference(setting)
    names = setting.quantities()
    rows = [Row(setting.id, q, ref_name) for q in names]
    try:
        out_low = ref_fn(*inputs[low]).detach()
        g = torch.randn(out_low.shape, generator=gen).to(low)
        grad_out = {dt: g.to(device=device, dtype=dt) for dt in (low, _HIGH)}
        ref = {dt: _evaluate(ref_fn, inputs[dt], grad_out[dt])[1] for dt in (low, _HIGH)}
    except Exception as exc:  # torch has no kernel for this dtype / device: not nfold's fault
        for row in rows:
            row.verdict, row.note = SKIPPED, f"reference raised {type(exc).__name__}: {exc}"
        return rows
    nf_fn = _nfold_op(setting)
    try:
        nf = {dt: _evaluate(nf_fn, inputs[dt], grad_out[dt])[1] for dt in (low, _HIGH)}
    except Exception as exc:
        for row in rows:
            row.verdict, row.note = ERROR, f"nfold raised {type(exc).__name__}: {exc}"
        return rows
    for i, row in enumerate(rows):
        row.reduction_length = reduction_length(setting, row.quantity, out_low.shape)
        _compare(row, (nf[low][i], nf[_HIGH][i]), (ref[low][i], ref[_HIGH][i]), _eps(low))  # type: ignore[arg-type]
    return rows


def _versions() -> str:
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
        f"({_versions()})"
    )
    return Report(rows, title, low, str(device), seed, time.perf_counter() - start)


# ----------------------------------------------------------------------------- model check

_TORCH_CONVS: tuple[type[nn.Module], ...] = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)


def conv_layers(model: nn.Module) -> list[str]:
    """Qualified names of the torch conv / transposed conv layers of ``model``."""
    return [name for name, m in model.named_modules() if isinstance(m, _TORCH_CONVS)]


def _flatten(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _flatten(v)]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _flatten(v)]
    return []


def _differentiable(t: torch.Tensor) -> bool:
    return t.is_floating_point() or t.is_complex()


class ModelError(ValueError):
    """The torch model itself failed on the example input (not nfold's fault)."""


@dataclass
class _Run:
    order: list[str] = field(
        default_factory=list
    )  # layer calls in forward order ("name" or "name#2")
    outputs: dict[str, torch.Tensor] = field(default_factory=dict)
    grad_inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    shapes: dict[str, tuple[torch.Size, torch.Size]] = field(default_factory=dict)
    params: dict[str, torch.Tensor | None] = field(default_factory=dict)  # "name.weight" -> grad
    model_outputs: list[torch.Tensor] = field(default_factory=list)
    input_grads: list[torch.Tensor | None] = field(default_factory=list)

    def quantities(self, key: str | None) -> dict[str, torch.Tensor | None]:
        """Compared quantities of one layer call (``key``) or of the whole model (None)."""
        if key is None:
            outs = {f"output[{i}]": t for i, t in enumerate(self.model_outputs)}
            grads = {f"grad_input[{i}]": g for i, g in enumerate(self.input_grads)}
            return {k.removesuffix("[0]"): v for k, v in {**outs, **grads}.items()}
        out = {"output": self.outputs.get(key), "grad_input": self.grad_inputs.get(key)}
        if "#" not in key:  # parameter gradients sum over calls: reported with the first
            for pname in ("weight", "bias"):
                if f"{key}.{pname}" in self.params:
                    out[f"grad_{pname}"] = self.params[f"{key}.{pname}"]
        return out


def _run_model(
    model: nn.Module,
    inputs: Sequence[Any],
    layers: Sequence[str],
    seed: int,
    grad_outputs: list[torch.Tensor] | None,
) -> _Run:
    """Forward with hooks on ``layers``, then backward with ``grad_outputs`` (drawn here,
    seeded, if None). Captures layer outputs, each layer's gradient with respect to its
    own input, parameter gradients and the gradient of every floating model input."""
    run = _Run()
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    handles = []

    def pre_hook(name: str) -> Callable[..., Any]:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
            calls[name] = calls.get(name, 0) + 1
            key = name if calls[name] == 1 else f"{name}#{calls[name]}"
            run.order.append(key)
            x = args[0] if args else None
            if not isinstance(x, torch.Tensor) or not x.requires_grad:
                return None
            x = x.clone()  # used by this layer only: its gradient is this layer's grad_input

            def store(grad: torch.Tensor) -> None:
                run.grad_inputs[key] = grad.detach().clone()

            x.register_hook(store)
            return (x, *args[1:])

        return hook

    def post_hook(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            key = run.order[-1]
            if isinstance(output, torch.Tensor):
                run.outputs[key] = output.detach().clone()  # later in-place ops must not touch it
                run.shapes[key] = (args[0].shape, output.shape)

        return hook

    for name in layers:
        if name not in modules:
            continue
        handles.append(modules[name].register_forward_pre_hook(pre_hook(name)))
        handles.append(modules[name].register_forward_hook(post_hook(name)))
    try:
        torch.manual_seed(seed)  # same dropout masks in the torch model and its twin
        out = model(*inputs)
    finally:
        for h in handles:
            h.remove()
    outs = [t for t in _flatten(out) if _differentiable(t) and t.requires_grad]
    run.model_outputs = [t.detach() for t in outs]
    if grad_outputs is None:
        gen = _seeded(seed, "grad_output")
        grad_outputs = [torch.randn(t.shape, generator=gen).to(t.dtype).to(t.device) for t in outs]
    leaves = [x for x in inputs if isinstance(x, torch.Tensor) and x.requires_grad]
    param_names = []
    params = []
    for name in layers:
        for pname in ("weight", "bias"):
            p = getattr(modules.get(name), pname, None)
            if isinstance(p, torch.Tensor) and p.requires_grad:
                param_names.append(f"{name}.{pname}")
                params.append(p)
    # an output of the wrong shape (a twin with a missed stride) is reported as such; the
    # backward pass then runs from the outputs that fit
    pairs = [
        (t, g.to(t.dtype)) for t, g in zip(outs, grad_outputs, strict=False) if t.shape == g.shape
    ]
    grads: Sequence[torch.Tensor | None] = (None,) * (len(leaves) + len(params))
    if pairs and len(outs) == len(grad_outputs):
        grads = torch.autograd.grad(
            [t for t, _ in pairs], [*leaves, *params], [g for _, g in pairs], allow_unused=True
        )
    run.input_grads = list(grads[: len(leaves)])
    run.params = dict(zip(param_names, grads[len(leaves) :], strict=True))
    return run


def _model_inputs(example_input: Any, dtype: torch.dtype, device: torch.device) -> list[Any]:
    items = list(example_input) if isinstance(example_input, (tuple, list)) else [example_input]
    out = []
    for x in items:
        if isinstance(x, torch.Tensor):
            x = x.detach().to(device)
            if _differentiable(x):
                x = x.to(dtype).requires_grad_(True)
        out.append(x)
    return out


def _layer_lengths(
    module: nn.Module, shapes: tuple[torch.Size, torch.Size] | None
) -> dict[str, int]:
    """Reduction length of each quantity of a conv layer (an upper bound)."""
    if shapes is None:
        return {}
    k = math.prod(getattr(module, "kernel_size", (1,)))
    groups = getattr(module, "groups", 1)
    c_in, c_out = getattr(module, "in_channels", 1), getattr(module, "out_channels", 1)
    x_shape, y_shape = shapes
    n = len(getattr(module, "kernel_size", ())) or max(len(y_shape) - 2, 1)
    batch = y_shape[0] if len(y_shape) == n + 2 else 1
    positions = max(math.prod(x_shape[-n:]), math.prod(y_shape[-n:]))
    reread = 3**n if getattr(module, "padding_mode", "zeros") != "zeros" else 1
    return {
        "output": c_in // groups * k + 1,
        "grad_input": c_out // groups * k * reread,
        "grad_weight": batch * positions,
        "grad_bias": batch * positions,
    }


def check_model(
    model: nn.Module,
    example_input: Any,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
    seed: int = 0,
) -> Report:
    """Run ``model`` against its ``nfold.convert``-ed twin, layer by layer, in ``dtype``
    and in float64, and give each quantity a verdict (exact / round-off / MISMATCH).

    ``model`` is not modified: it is copied, and the copies are converted to ``dtype``
    and float64. Rows per torch conv layer (in call order; a layer called twice appears
    as ``name#2``): its ``output``, ``grad_input`` (gradient with respect to the layer's
    own input), ``grad_weight`` and ``grad_bias``; then the model's ``output`` and the
    gradient of its floating inputs. The backward pass uses one seeded random gradient
    of the output. :attr:`Report.first_mismatch` names the first layer that disagrees:
    the first in forward order whose output disagrees, else the first reached by the
    backward pass (the deepest) whose gradients disagree.

    Args:
        model: an ``nn.Module`` with ``torch.nn`` conv / transposed conv layers.
        example_input: a tensor (or a tuple of positional inputs) the model accepts;
            floating tensors are cast to ``dtype`` / float64.
        dtype: the low precision: float32, float16 or bfloat16.
        device: where to run (default: the device of the model's first parameter).
        seed: seeds the backward gradient and the RNG before each forward (dropout).

    Returns:
        A :class:`Report`; ``report.ok`` is False on any MISMATCH.

    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Conv2d(3, 1, 1))
    >>> check_model(net, torch.randn(1, 2, 6, 6)).ok
    True
    """
    import nfold

    start = time.perf_counter()
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if device is None:
        first = next(iter(model.parameters()), None)
        device = first.device if first is not None else torch.device("cpu")
    device = torch.device(device)
    layers = conv_layers(model)
    runs: dict[tuple[str, torch.dtype], _Run] = {}
    grad_outputs = None
    low = str(dtype).removeprefix("torch.")
    for dt in (dtype, _HIGH):
        torch_model = copy.deepcopy(model).to(device=device, dtype=dt)
        try:
            runs["torch", dt] = _run_model(
                torch_model, _model_inputs(example_input, dt, device), layers, seed, grad_outputs
            )
        except Exception as exc:
            shapes = [tuple(t.shape) for t in _flatten(example_input)]
            raise ModelError(
                f"the torch model failed on the example input {shapes} in {dt}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        if grad_outputs is None:
            gen = _seeded(seed, "grad_output")
            grad_outputs = [
                torch.randn(t.shape, generator=gen).to(dtype).to(device)
                for t in runs["torch", dt].model_outputs
            ]
        try:
            twin = nfold.convert(copy.deepcopy(torch_model))
            runs["nfold", dt] = _run_model(
                twin, _model_inputs(example_input, dt, device), layers, seed, grad_outputs
            )
        except Exception as exc:
            row = Row("(model)", "forward", type(model).__name__, verdict=ERROR)
            row.note = f"nfold.convert(model) raised {type(exc).__name__}: {exc}"
            title = f"nfold check --model: {type(model).__name__} ({_versions()})"
            report = Report([row], title, low, str(device), seed, time.perf_counter() - start)
            report.first_mismatch = "(model): the nfold twin raised"
            return report
    eps_low = _eps(dtype)
    modules = dict(model.named_modules())
    torch_runs, nfold_runs = (
        (runs["torch", dtype], runs["torch", _HIGH]),
        (runs["nfold", dtype], runs["nfold", _HIGH]),
    )
    order = torch_runs[0].order
    rows: list[Row] = []
    for key in [*order, None]:  # None: the whole model
        module = model if key is None else modules[key.split("#")[0]]
        lengths = _layer_lengths(module, torch_runs[0].shapes.get(key)) if key else {}
        for quantity, ref_low in torch_runs[0].quantities(key).items():
            ref_high = torch_runs[1].quantities(key).get(quantity)
            if ref_low is None or ref_high is None:
                continue  # the torch model has no such quantity (an input without grad)
            row = Row(key or "(model)", quantity, type(module).__name__)
            row.reduction_length = lengths.get(quantity.removesuffix("[0]"), 1)
            nf = tuple(r.quantities(key).get(quantity) for r in nfold_runs)
            rows.append(_compare(row, nf, (ref_low, ref_high), eps_low))  # type: ignore[arg-type]
            if None in nf:
                row.verdict, row.note = MISMATCH, "missing in the nfold twin"
    title = (
        f"nfold check --model: {type(model).__name__} against nfold.convert(model), "
        f"{len(order)} conv layer calls, {low} vs float64, device {device}, seed {seed} "
        f"({_versions()})"
    )
    report = Report(rows, title, low, str(device), seed, time.perf_counter() - start)
    report.first_mismatch = _culprit(rows, order)
    return report


def _culprit(rows: Sequence[Row], order: Sequence[str]) -> str | None:
    """The first layer in forward order whose output disagrees; else the deepest layer
    (the first one the backward pass reaches) whose gradients disagree."""
    failed = {(r.setting, r.quantity == "output") for r in rows if r.failed}
    for key in order:
        if (key, True) in failed:
            return f"{key} (output)"
    for key in reversed(order):
        if (key, False) in failed:
            return f"{key} (gradients)"
    if any(r.failed for r in rows):
        return "(model): no conv layer disagrees, the rest of the model does"
    return None
