"""Empty inputs and outputs: nfold returns what torch returns, and raises where torch raises.

One table of settings (batch 0, channels 0, a spatial dim 0 with and without padding,
output size 0, ...) for every op and module and N = 1...4. Each row is checked against
torch where torch has the op (conv / conv_transpose and their modules for N <= 3;
unfold / fold and nn.Unfold / nn.Fold for N = 2; unfold_transpose as torch's one-hot
transposed convolution, the way unfoldNd computes it, for N <= 3) and against the shape
formula of the op (``expect_*`` below, itself checked against torch by the same rows)
everywhere. Where a result is returned, gradients flow: zeros of each input's shape.
Where torch raises, nfold raises ValueError.

One deliberate difference: torch's conv with C_in = 0 returns a tensor with 0 output
channels, ignoring weight.shape[0] (pytorch/pytorch#101356: its own meta kernel says
C_out); nfold returns the sum over no input channels, zeros (plus bias) of shape
``(B, C_out, *L)``. The ``channels_in0`` rows pin both.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch
import torch.nn.functional as F

import nfold

Shape = tuple[int, ...]
NS = (1, 2, 3, 4)


def dims(first: int, rest: int, n: int) -> Shape:
    """An N-tuple whose first spatial dim is special: ``(first, rest, ..., rest)``."""
    return (first, *(rest,) * (n - 1))


# ----------------------------------------------------------------- the shape formulas


def blocks(spatial: Shape, k: Shape, d: Shape, p: Shape, s: Shape) -> Shape | None:
    """Sliding blocks per dim (None when the dilated kernel exceeds the padded input)."""
    spans = [di * (ki - 1) + 1 for ki, di in zip(k, d, strict=True)]
    if any(si + 2 * pi < span for si, pi, span in zip(spatial, p, spans, strict=True)):
        return None
    sizes = zip(spatial, p, spans, s, strict=True)
    return tuple((si + 2 * pi - span) // st + 1 for si, pi, span, st in sizes)


def transposed(spatial: Shape, k: Shape, s: Shape, p: Shape, op: Shape, d: Shape) -> Shape | None:
    out = tuple(
        (si - 1) * st - 2 * pi + di * (ki - 1) + oi + 1
        for si, ki, st, pi, oi, di in zip(spatial, k, s, p, op, d, strict=True)
    )
    return None if any(o < 0 for o in out) else out


def expect_unfold(x: Shape, k: Shape, d: Shape, p: Shape, s: Shape) -> Shape | None:
    b, c, *spatial = x
    if c == 0 or 0 in spatial:  # torch's unfold: only the batch may be empty
        return None
    bl = blocks(tuple(spatial), k, d, p, s)
    return None if bl is None else (b, c * math.prod(k), math.prod(bl))


def expect_fold(y: Shape, out: Shape, k: Shape, d: Shape, p: Shape, s: Shape) -> Shape | None:
    b, rows, length = y
    if rows == 0 or 0 in out or rows % math.prod(k):
        return None
    bl = blocks(out, k, d, p, s)
    return None if bl is None or math.prod(bl) != length else (b, rows // math.prod(k), *out)


def expect_window(x: Shape, k: Shape, d: Shape, s: Shape) -> Shape | None:
    b, c, *spatial = x
    bl = blocks(tuple(spatial), k, d, (0,) * len(k), s)
    return None if bl is None else (b, c, *bl, *k)


def expect_conv(x: Shape, w: Shape, s: Shape, p: Shape, d: Shape) -> Shape | None:
    b, c, *spatial = x
    if w[0] == 0 or (0 in spatial and b and c):  # torch: C_out >= 1; S = 0 only if B or C is 0
        return None
    bl = blocks(tuple(spatial), w[2:], d, p, s)
    return None if bl is None else (b, w[0], *bl)


def expect_conv_transpose(
    x: Shape, w: Shape, s: Shape, p: Shape, op: Shape, d: Shape
) -> Shape | None:
    b, c, *spatial = x
    if c == 0 or w[1] == 0 or (b and 0 in spatial):  # torch: non-empty weight; S = 0 if B = 0
        return None
    out = transposed(tuple(spatial), w[2:], s, p, op, d)
    return None if out is None else (b, w[1], *out)


def expect_unfold_transpose(
    x: Shape, k: Shape, s: Shape, p: Shape, op: Shape, d: Shape
) -> Shape | None:
    b, c, *spatial = x
    if c == 0 or (b and 0 in spatial):  # as the transposed conv it is the im2col of
        return None
    out = transposed(tuple(spatial), k, s, p, op, d)
    return None if out is None else (b, c * math.prod(k), math.prod(out))


# ---------------------------------------------------------------------- torch references


def one_hot(c: int, k: Shape, dtype: torch.dtype) -> torch.Tensor:
    """``(C, prod(k), *k)``: a transposed-conv weight (groups = C) whose output has
    unfold_transpose's shape (one output channel per input channel and kernel offset)."""
    eye = torch.eye(math.prod(k), dtype=dtype).reshape(1, math.prod(k), *k)
    return eye.repeat(c, 1, *(1,) * len(k))


def torch_unfold_transpose(x: torch.Tensor, k: Shape, s: Shape, p: Shape, op: Shape, d: Shape):
    n = len(k)
    fn = getattr(F, f"conv_transpose{n}d")
    out = fn(x, one_hot(x.shape[1], k, x.dtype), None, s, p, op, x.shape[1], d)
    return out.flatten(2)


# ------------------------------------------------------------------------------- table


@dataclass
class Row:
    """One op on one setting: ``run(lib, tensors)`` with lib "nfold" or "torch"."""

    name: str
    n: int
    shapes: dict[str, Shape]
    expected: Shape | None
    run: Callable[[str, dict[str, torch.Tensor]], torch.Tensor]
    torch_has: bool  # whether the "torch" branch of run exists for this N
    torch_shape: Shape | None = field(default=None)  # set where torch knowingly differs

    @property
    def id(self) -> str:
        return f"{self.name}-{self.n}d"


def _unfold_rows(n: int) -> list[Row]:
    rows = []
    settings = {
        "batch0": ((0, 2, *dims(5, 5, n)), dims(3, 3, n), 0),
        "batch0_spatial0_padded": ((0, 2, *dims(0, 5, n)), dims(1, 3, n), 1),
        "channels0": ((2, 0, *dims(5, 5, n)), dims(3, 3, n), 0),
        "spatial0": ((2, 2, *dims(0, 5, n)), dims(1, 3, n), 0),
        "spatial0_padded": ((2, 2, *dims(0, 5, n)), dims(1, 3, n), 1),
        "kernel_exceeds_input": ((2, 2, *dims(2, 5, n)), dims(3, 3, n), 0),
    }
    for setting, (x, k, pad) in settings.items():
        ones, p = (1,) * n, (pad,) * n

        def run_unfold(lib, t, k=k, p=p):
            fn = F.unfold if lib == "torch" else nfold.unfold
            return fn(t["x"], k, 1, p, 1)

        def run_module(lib, t, k=k, p=p):
            cls = torch.nn.Unfold if lib == "torch" else nfold.Unfold
            return cls(k, 1, p, 1)(t["x"])

        def run_window(lib, t, k=k):
            return nfold.sliding_window_view(t["x"], k)

        want = expect_unfold(x, k, ones, p, ones)
        rows.append(Row(f"unfold-{setting}", n, {"x": x}, want, run_unfold, n == 2))
        rows.append(Row(f"Unfold-{setting}", n, {"x": x}, want, run_module, n == 2))
        if pad == 0:
            want = expect_window(x, k, ones, ones)
            rows.append(Row(f"sliding_window_view-{setting}", n, {"x": x}, want, run_window, False))
    return rows


def _fold_rows(n: int) -> list[Row]:
    rows = []
    k = dims(3, 3, n)
    length = math.prod(dims(3, 3, n))  # blocks of a 5^n output with kernel 3
    settings = {
        "batch0": ((0, 2 * 3**n, length), dims(5, 5, n), 0),
        "channels0": ((2, 0, length), dims(5, 5, n), 0),
        "blocks0": ((2, 2 * 3**n, 0), dims(5, 5, n), 0),
        "output0": ((2, 3**n, length), dims(0, 5, n), 0),
        "output0_padded": ((2, 3**n, math.prod(dims(1, 5, n))), dims(0, 3, n), 2),
    }
    for setting, (y, out, pad) in settings.items():
        ones, p = (1,) * n, (pad,) * n

        def run_fold(lib, t, out=out, p=p):
            fn = F.fold if lib == "torch" else nfold.fold
            return fn(t["y"], out, k, 1, p, 1)

        def run_module(lib, t, out=out, p=p):
            cls = torch.nn.Fold if lib == "torch" else nfold.Fold
            return cls(out, k, 1, p, 1)(t["y"])

        want = expect_fold(y, out, k, ones, p, ones)
        rows.append(Row(f"fold-{setting}", n, {"y": y}, want, run_fold, n == 2))
        rows.append(Row(f"Fold-{setting}", n, {"y": y}, want, run_module, n == 2))
    return rows


def _conv_rows(n: int) -> list[Row]:
    rows = []
    settings = {
        "batch0": ((0, 2, *dims(5, 5, n)), (4, 2, *dims(3, 3, n)), 0),
        "batch0_spatial0_padded": ((0, 2, *dims(0, 5, n)), (4, 2, *dims(1, 3, n)), 1),
        "batch0_spatial0": ((0, 2, *dims(0, 5, n)), (4, 2, *dims(1, 3, n)), 0),
        "channels_in0": ((2, 0, *dims(5, 5, n)), (4, 0, *dims(3, 3, n)), 0),
        "channels_in0_spatial0_padded": ((2, 0, *dims(0, 5, n)), (4, 0, *dims(1, 3, n)), 1),
        "channels_out0": ((2, 2, *dims(5, 5, n)), (0, 2, *dims(3, 3, n)), 0),
        "spatial0": ((2, 2, *dims(0, 5, n)), (4, 2, *dims(1, 3, n)), 0),
        "spatial0_padded": ((2, 2, *dims(0, 5, n)), (4, 2, *dims(1, 3, n)), 1),
    }
    for setting, (x, w, pad) in settings.items():
        ones, p = (1,) * n, (pad,) * n
        torch_shape = None
        want = expect_conv(x, w, ones, p, ones)
        if x[1] == 0 and want is not None:  # torch drops C_out (see the module docstring)
            torch_shape = (want[0], 0, *want[2:])

        def run_conv(lib, t, p=p):
            fn = getattr(F, f"conv{n}d") if lib == "torch" else nfold.conv
            return fn(t["x"], t["w"], t.get("b"), 1, p, 1, 1)

        def run_module(lib, t, p=p, w=w):  # shapes only: the weights differ
            if lib == "torch":
                cls = getattr(torch.nn, f"Conv{n}d")
            else:
                cls = getattr(nfold, f"Conv{n}d") if n <= 3 else nfold.ConvNd
            return cls(w[1], w[0], w[2:], padding=p, bias=False)(t["x"])

        shapes = {"x": x, "w": w}
        rows.append(Row(f"conv-{setting}", n, shapes, want, run_conv, n <= 3, torch_shape))
        # torch.nn.ConvNd rejects out_channels=0 at construction; nfold.ConvNd (N = 4 here)
        # also rejects in_channels=0 (conv_modules.py; torch's Conv{1,2,3}d accept it)
        if w[0] and (x[1] or n <= 3):
            module_row = Row(
                f"ConvNd-{setting}", n, {"x": x}, want, run_module, n <= 3, torch_shape
            )
            rows.append(module_row)
    # bias with no input channels: the bias alone
    x, w = (2, 0, *dims(4, 4, n)), (3, 0, *dims(2, 2, n))
    want = expect_conv(x, w, (1,) * n, (0,) * n, (1,) * n)
    shapes = {"x": x, "w": w, "b": (3,)}

    def run_bias(lib, t):
        fn = getattr(F, f"conv{n}d") if lib == "torch" else nfold.conv
        return fn(t["x"], t["w"], t["b"])

    torch_shape = (want[0], 0, *want[2:])  # type: ignore[index]
    rows.append(Row("conv-channels_in0_bias", n, shapes, want, run_bias, n <= 3, torch_shape))
    return rows


def _transpose_rows(n: int) -> list[Row]:
    rows = []
    # the issue's case: ConvTranspose2d kernel (1, 3), padding (2, 0), dilation (2, 1)
    # on (3, 2, 4, 1) gives (3, 5, 0, 3) in torch
    issue = dict(k=dims(1, 3, n), p=dims(2, 0, n), d=dims(2, 1, n))
    settings = {
        "output0": ((3, 2, *dims(4, 1, n)), 5, issue),
        "output0_stride3": ((2, 2, *dims(1, 2, n)), 5, dict(k=dims(1, 2, n), s=dims(3, 1, n),
                                                            p=dims(1, 0, n), op=dims(1, 0, n))),
        "batch0": ((0, 2, *dims(4, 4, n)), 5, dict(k=dims(3, 3, n))),
        "batch0_spatial0": ((0, 2, *dims(0, 4, n)), 5, dict(k=dims(3, 3, n))),
        "batch0_spatial0_output0": ((0, 2, *dims(0, 4, n)), 5, dict(k=dims(1, 3, n))),
        "batch0_spatial0_negative": ((0, 2, *dims(0, 4, n)), 5, dict(k=dims(1, 3, n),
                                                                     s=dims(2, 1, n))),
        "batch0_output0": ((0, 2, *dims(4, 1, n)), 5, issue),
        "channels_in0": ((2, 0, *dims(4, 4, n)), 5, dict(k=dims(3, 3, n))),
        "channels_out0": ((2, 2, *dims(4, 4, n)), 0, dict(k=dims(3, 3, n))),
        "spatial0": ((2, 2, *dims(0, 4, n)), 5, dict(k=dims(3, 3, n))),
        "negative": ((3, 2, *dims(4, 1, n)), 5, {**issue, "p": dims(3, 0, n)}),
    }  # fmt: skip
    for setting, (x, c_out, geo) in settings.items():
        k = geo["k"]
        s, p = geo.get("s", (1,) * n), geo.get("p", (0,) * n)
        op, d = geo.get("op", (0,) * n), geo.get("d", (1,) * n)
        w = (x[1], c_out, *k)
        shapes = {"x": x, "w": w}

        def run_ct(lib, t, s=s, p=p, op=op, d=d):
            fn = getattr(F, f"conv_transpose{n}d") if lib == "torch" else nfold.conv_transpose
            return fn(t["x"], t["w"], None, s, p, op, 1, d)

        def run_ut(lib, t, k=k, s=s, p=p, op=op, d=d):
            if lib == "torch":
                return torch_unfold_transpose(t["x"], k, s, p, op, d)
            return nfold.unfold_transpose(t["x"], k, s, p, op, d)

        want = expect_conv_transpose(x, w, s, p, op, d)
        rows.append(Row(f"conv_transpose-{setting}", n, shapes, want, run_ct, n <= 3))
        want_ut = expect_unfold_transpose(x, k, s, p, op, d)
        if c_out:
            rows.append(Row(f"unfold_transpose-{setting}", n, {"x": x}, want_ut, run_ut, n <= 3))
        if want is None or x[1] == 0 or c_out == 0:
            continue  # the output_size path needs a reachable size (and modules need channels)
        size = want[2:]

        def run_module(lib, t, k=k, s=s, p=p, d=d, w=w, size=size):  # shapes only
            if lib == "torch":
                cls = getattr(torch.nn, f"ConvTranspose{n}d")
            else:
                cls = getattr(nfold, f"ConvTranspose{n}d") if n <= 3 else nfold.ConvTransposeNd
            return cls(w[0], w[1], k, s, p, dilation=d)(t["x"], output_size=size)

        def run_ut_module(lib, t, k=k, s=s, p=p, d=d, size=size):
            if lib == "torch":
                cls = getattr(torch.nn, f"ConvTranspose{n}d")
                c = t["x"].shape[1]
                m = cls(c, c * math.prod(k), k, s, p, groups=c, bias=False, dilation=d)
                with torch.no_grad():
                    m.weight.copy_(one_hot(c, k, torch.float32))
                return m(t["x"], output_size=size).flatten(2)
            return nfold.UnfoldTranspose(k, s, p, dilation=d)(t["x"], output_size=size)

        rows.append(Row(f"ConvTransposeNd_output_size-{setting}", n, {"x": x}, want, run_module,
                        n <= 3))  # fmt: skip
        rows.append(Row(f"UnfoldTranspose_output_size-{setting}", n, {"x": x}, want_ut,
                        run_ut_module, n <= 3))  # fmt: skip
    return rows


ROWS = [
    row
    for n in NS
    for row in (*_unfold_rows(n), *_fold_rows(n), *_conv_rows(n), *_transpose_rows(n))
]


def _tensors(shapes: dict[str, Shape]) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {
        name: torch.randn(shape, generator=gen).requires_grad_() for name, shape in shapes.items()
    }


def _outcome(row: Row, lib: str) -> tuple[torch.Tensor | None, Exception | None]:
    t = _tensors(row.shapes)
    try:
        return row.run(lib, t), None
    except (RuntimeError, ValueError) as err:
        return None, err


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors:UserWarning")
@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
def test_empty_matches_torch_and_shape_formula(row: Row) -> None:
    if row.torch_has:  # the formula (and hence nfold) says what torch does
        got, err = _outcome(row, "torch")
        want = row.torch_shape or row.expected
        if want is None:
            assert err is not None, f"torch returned {tuple(got.shape)}, formula says raise"  # type: ignore[union-attr]
        else:
            assert got is not None, f"torch raised {err!r}, formula says {want}"
            assert tuple(got.shape) == want
    t = _tensors(row.shapes)
    if row.expected is None:
        with pytest.raises(ValueError):
            row.run("nfold", t)
        return
    out = row.run("nfold", t)
    assert tuple(out.shape) == row.expected
    assert out.dtype == torch.float32
    if not row.name.startswith("sliding_window_view"):  # (a view of the input by design)
        out.mul_(2)  # an ordinary tensor: in-place ops work, as on torch's
    inputs = list(t.values())
    grads = torch.autograd.grad(out.sum(), inputs)
    for name, x, g in zip(t, inputs, grads, strict=True):
        assert g.shape == x.shape, name
        assert not g.any() or name == "b", name
    if "b" in t:  # the bias alone reaches the output: its gradient counts the outputs
        torch.testing.assert_close(grads[-1], torch.full_like(t["b"], 2.0 * out[:, 0].numel()))
        torch.testing.assert_close(out / 2, t["b"].view(-1, *(1,) * row.n).expand_as(out))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_issue_14_case(dtype: torch.dtype) -> None:
    """The reported geometry, verbatim: ConvTranspose2d kernel (1, 3), padding (2, 0),
    dilation (2, 1) on (3, 2, 4, 1) gives (3, 5, 0, 3). (torch's float64 and batch-1 paths
    raise "Output size is too small" for it; nfold gives the empty tensor for every dtype.)"""
    m = torch.nn.ConvTranspose2d(2, 5, (1, 3), padding=(2, 0), dilation=(2, 1))
    want = m(torch.randn(3, 2, 4, 1))
    assert want.shape == (3, 5, 0, 3)
    m = m.to(dtype)
    x = torch.randn(3, 2, 4, 1, dtype=dtype, requires_grad=True)
    twin = nfold.ConvTranspose2d(2, 5, (1, 3), padding=(2, 0), dilation=(2, 1), dtype=dtype)
    twin.load_state_dict(m.state_dict())
    assert twin(x).shape == want.shape
    got = nfold.conv_transpose(x, m.weight, m.bias, padding=(2, 0), dilation=(2, 1))
    assert got.shape == want.shape
    cols = nfold.unfold_transpose(x, (1, 3), padding=(2, 0), dilation=(2, 1))
    assert cols.shape == (3, 6, 0)
    grads = torch.autograd.grad(got.sum() + cols.sum(), [x, m.weight, m.bias])
    assert [tuple(g.shape) for g in grads] == [(3, 2, 4, 1), (2, 5, 1, 3), (5,)]
    assert not any(g.any() for g in grads)


def test_unbatched_empty_output() -> None:
    x = torch.randn(2, 4, 1)
    w = torch.randn(2, 5, 1, 3)
    # torch's unbatched, batch-1 and float64 paths raise "Output size is too small" here
    want = F.conv_transpose2d(x.expand(3, -1, -1, -1), w, padding=(2, 0), dilation=(2, 1))[0]
    got = nfold.conv_transpose(x, w, padding=(2, 0), dilation=(2, 1))
    assert got.shape == want.shape == (5, 0, 3)
    assert nfold.unfold_transpose(x, (1, 3), padding=(2, 0), dilation=(2, 1)).shape == (6, 0)


@pytest.mark.parametrize(
    "fn",
    [
        lambda: nfold.unfold(torch.randn(2, 0, 5, 5), 3),
        lambda: nfold.fold(torch.randn(2, 9, 9), (0, 5), 3, padding=2),
        lambda: nfold.conv_transpose(torch.randn(2, 2, 0, 4), torch.randn(2, 5, 3, 3)),
        lambda: nfold.conv(torch.randn(2, 2, 4, 4), torch.randn(0, 2, 3, 3)),
    ],
    ids=["unfold-channels0", "fold-output0", "conv_transpose-spatial0", "conv-channels_out0"],
)
def test_empty_errors_name_what_is_empty(fn: Callable[[], object]) -> None:
    with pytest.raises(ValueError, match=r"non-empty|>= 1"):
        fn()
