"""Settings of ``nfold check``: the low precisions it accepts, the built-in table of op
settings, and how many terms each compared quantity sums (its round-off budget)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from . import _reference as R

#: The low precisions compared against float64.
LOW_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def low_precision(dtype: torch.dtype | str) -> torch.dtype:
    """The one dtype rule of ``check``, ``check_model``, ``compare`` and the CLI: the low
    precision must be float32, float16 or bfloat16 (it is compared against float64).

    >>> low_precision("bfloat16")
    torch.bfloat16
    """
    name = dtype if isinstance(dtype, str) else str(dtype).removeprefix("torch.")
    if name not in LOW_DTYPES:
        raise ValueError(
            f"dtype must be one of {', '.join(LOW_DTYPES)} (the low precision compared "
            f"against float64), got {name}"
        )
    return LOW_DTYPES[name]


OPS = ("unfold", "fold", "unfold_transpose", "conv", "conv_transpose")


@dataclass(frozen=True)
class Setting:
    """One built-in case: an op, its input (and weight) shapes and keyword arguments.

    ``kwargs`` go to nfold's op and to the reference; ``method``, when set, only to
    nfold's op. Built-in conv rows run ``"gemm"`` (nfold's own arithmetic) against torch
    or the naive reference; ``"auto"`` rows (N = 4, 5) run against ``"gemm"``.
    """

    id: str
    op: str
    n: int
    shapes: tuple[tuple[int, ...], ...]  # input, then weight and bias for convolutions
    kwargs: dict[str, Any] = field(default_factory=dict, hash=False)
    method: str | None = None

    @property
    def nfold_kwargs(self) -> dict[str, Any]:
        """What nfold's op is called with."""
        return self.kwargs if self.method is None else {**self.kwargs, "method": self.method}

    @property
    def kernel_size(self) -> tuple[int, ...]:
        if self.op in ("conv", "conv_transpose"):
            return self.shapes[1][2:]
        k = self.kwargs["kernel_size"]
        return (k,) * self.n if isinstance(k, int) else tuple(k)

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
    return _make("fold", n, [shape], {"output_size": output_size, **kw})


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
    method: str = "gemm",
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
            (method, method != "gemm"),
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
    return Setting(s.id, s.op, n, s.shapes, kw, method)


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
    # the auto engine (native conv3d over the trailing dims) against nfold's gemm path
    for n in (4, 5):
        sp, k2 = (4,) * (n - 1) + (5,), (2,) * n
        s += [
            _conv((2, 4, *sp), 6, k2, padding=1, groups=2, method="auto"),
            _conv((2, 4, *sp), 4, k2, stride=2, dilation=(2,) + (1,) * (n - 1), method="auto"),
            _conv_t((2, 4, *sp), 6, k2, stride=2, padding=1, groups=2, method="auto"),
        ]
    ids = [x.id for x in s]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise RuntimeError(f"duplicate setting ids {dup}")
    return tuple(s)


def conv_lengths(
    transposed: bool,
    kernel_size: Sequence[int],
    channels: tuple[int, int, int],
    input_shape: Sequence[int],
    output_shape: Sequence[int],
    padding_mode: str = "zeros",
) -> dict[str, int]:
    """Terms summed per entry of each quantity of a conv / transposed conv (an upper
    bound), from ``(in_channels, out_channels, groups)`` and the input / output shapes."""
    c_in, c_out, groups = channels
    n = len(kernel_size)
    k = math.prod(kernel_size)
    # a padded input element may be read up to ~3x per dim (reflect, circular)
    reread = 3**n if padding_mode != "zeros" else 1
    batch = output_shape[0] if len(output_shape) == n + 2 else 1
    inputs, outputs = math.prod(input_shape[-n:]), math.prod(output_shape[-n:])
    return {
        "forward": c_in // groups * k + 1,
        "grad_input": c_out // groups * k * reread,
        "grad_weight": batch * (inputs if transposed else outputs),
        "grad_bias": batch * outputs,
    }


def reduction_length(setting: Setting, quantity: str, out_shape: Sequence[int]) -> int:
    """Terms summed per entry of ``quantity`` (an upper bound; 0 for pure copies), given
    the shape of the op's output."""
    op, n = setting.op, setting.n
    if op in ("conv", "conv_transpose"):
        x = setting.shapes[0]
        channels = (x[-n - 1], out_shape[-n - 1], setting.kwargs.get("groups", 1))
        mode = setting.kwargs.get("padding_mode", "zeros")
        lengths = conv_lengths(
            op == "conv_transpose", setting.kernel_size, channels, x, out_shape, mode
        )
        return lengths[quantity]
    k = math.prod(setting.kernel_size)
    reread = 3**n if setting.kwargs.get("padding_mode", "zeros") != "zeros" else 1
    if op == "fold":
        return k if quantity == "forward" else 0
    return 0 if quantity == "forward" else k * reread  # unfold, unfold_transpose


SETTINGS: tuple[Setting, ...] = _builtin_settings()
