"""unfold, fold, unfold_transpose and sliding_window_view (the data-movement core).

References, by N:
- N = 2: torch.nn.functional.unfold / fold, bitwise (torch.equal).
- N = 1, 3: W @ unfold(x) against conv{1,3}d and the unfold_transpose product against
  conv_transpose{1,3}d (groups by a per-group matmul), float64 to round-off.
- N = 4, 5 (and every N for dtypes torch's ops lack): the nested-loop references in
  ``reference.py``, bitwise.
Plus properties: adjointness, fold-mean identity, autograd of every order, jvp, vmap.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck

import nfold
from nfold import _plan
from reference import (
    ALL_DTYPES,
    INT_DTYPES,
    as_pairs,
    as_tuple,
    dtype_id,
    grouped_matmul,
    make_exact,
    make_tensor,
    num_blocks,
    ref_fold,
    ref_unfold,
    ref_unfold_transpose,
    tol,
)

F64 = torch.float64


@dataclass(frozen=True)
class Case:
    """One unfold/fold geometry. ``padding`` may be int, N-tuple or per-side pairs."""

    id: str
    shape: tuple[int, ...]  # (B, C, *S)
    kernel_size: int | tuple[int, ...]
    dilation: int | tuple[int, ...] = 1
    padding: object = 0
    stride: int | tuple[int, ...] = 1
    padding_mode: str = "zeros"
    kw: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def n(self) -> int:
        return len(self.shape) - 2

    @property
    def spatial(self) -> tuple[int, ...]:
        return self.shape[2:]

    def args(self) -> tuple:
        return (self.kernel_size, self.dilation, self.padding, self.stride)

    def fold_args(self) -> tuple:
        """Positional ``fold`` arguments after the input (output_size as an N-tuple)."""
        return (self.spatial, self.kernel_size, self.dilation, self.padding, self.stride)

    def blocks(self) -> tuple[int, ...]:
        k, d, s = (as_tuple(v, self.n) for v in (self.kernel_size, self.dilation, self.stride))
        pads = as_pairs(self.padding, self.n)
        return tuple(num_blocks(self.spatial[i], k[i], d[i], *pads[i], s[i]) for i in range(self.n))

    def cols_shape(self) -> tuple[int, int, int]:
        k = as_tuple(self.kernel_size, self.n)
        return (self.shape[0], self.shape[1] * math.prod(k), math.prod(self.blocks()))


def params(cases):
    return [pytest.param(c, id=c.id) for c in cases]


def torch_pad(x: torch.Tensor, padding, mode: str) -> torch.Tensor:
    """Pad with torch's own F.pad (the meaning padding_mode has in torch's ConvNd)."""
    pairs = as_pairs(padding, x.dim() - 2)
    return F.pad(x, [v for pair in reversed(pairs) for v in pair], mode=mode)


# --------------------------------------------------------------------------------------
# N = 2 against torch.nn.functional.unfold / fold, bitwise
# --------------------------------------------------------------------------------------

CASES_2D = [
    Case("k3", (2, 3, 7, 8), 3),
    Case("k1", (2, 3, 5, 4), 1),
    Case("k2x3_nonsquare", (2, 3, 7, 8), (2, 3)),
    Case("s2", (2, 2, 9, 8), 3, stride=2),
    Case("s2x3", (1, 2, 9, 10), (3, 2), stride=(2, 3)),
    Case("s4_gt_kernel", (1, 2, 11, 11), 2, stride=4),
    Case("p1", (2, 3, 5, 6), 3, padding=1),
    Case("p2x0", (1, 2, 5, 6), 3, padding=(2, 0)),
    Case("p3_bigger_than_input", (1, 1, 2, 3), 3, padding=3),
    Case("d2", (1, 2, 9, 9), 3, dilation=2),
    Case("d1x3_p1x2_s2x1", (1, 2, 10, 11), (2, 3), dilation=(1, 3), padding=(1, 2), stride=(2, 1)),
    Case("d2_p2_s3", (2, 2, 12, 10), (3, 2), dilation=2, padding=2, stride=3),
    Case("kernel_is_input", (1, 2, 4, 5), (4, 5)),
    Case("input_1x1", (2, 1, 1, 1), 1),
    Case("batch0", (0, 3, 6, 6), 3),
    Case("batch0_p1_s2", (0, 2, 5, 7), (2, 3), padding=1, stride=2),
]


def _layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values as ``x`` in another memory layout."""
    if layout == "contiguous":
        return x.contiguous()
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "noncontiguous":  # every other element of a twice-as-wide buffer, transposed
        buf = torch.zeros((*x.shape[:-2], x.shape[-1], 2 * x.shape[-2]), dtype=x.dtype)
        buf[..., ::2] = x.transpose(-1, -2)
        out = buf[..., ::2].transpose(-1, -2)
        assert (x.numel() <= 1 or not out.is_contiguous()) and torch.equal(out, x)
        return out
    raise ValueError(layout)


LAYOUTS = ["contiguous", "noncontiguous", "channels_last"]


@pytest.fixture(params=["nfold", "torch_below"])
def engine(request, monkeypatch):  # type: ignore[no-untyped-def]
    """Small N = 2 float calls run torch's own op (Policy.torch_below); "nfold" turns that
    off, so that nfold's own path is held to torch's bits too."""
    if request.param == "nfold":
        monkeypatch.setitem(_plan.POLICIES, "cpu", dataclasses.replace(_plan.CPU, torch_below=0))
        _plan.clear_caches()
    return request.param


def test_small_2d_float_calls_run_torchs_ops(monkeypatch):
    """Below Policy.torch_below, N = 2 float unfold / fold are torch's own calls (the same
    bits, at a C++ call's cost); above it, and for other N or dtypes, nfold's."""
    calls = []
    for name, kernel in (("unfold", "im2col"), ("fold", "col2im")):  # the kernels F.* call
        real = getattr(torch._C._nn, kernel)
        monkeypatch.setattr(
            torch._C._nn, kernel, lambda *a, real=real, name=name: calls.append(name) or real(*a)
        )
    x = make_tensor((2, 3, 7, 8), torch.float32, seed=1)
    cols = nfold.unfold(x, 3, padding=1)
    nfold.fold(cols, (7, 8), 3, padding=1)
    assert calls == ["unfold", "fold"]
    nfold.unfold(x.double(), 3, padding=((1, 0), (1, 1)))  # asymmetric padding
    nfold.unfold(x.half(), 3)
    nfold.unfold(x[:, None], 3)  # N = 3
    nfold.unfold(torch.zeros(64, 3, 32, 32), 3)  # 3.4 MB of output
    assert calls == ["unfold", "fold"]


@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=dtype_id)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", params(CASES_2D))
def test_unfold_2d_equals_torch(case, layout, dtype, engine):
    x = _layout(make_tensor(case.shape, dtype, seed=1), layout)
    expected = F.unfold(x, *case.args())
    assert torch.equal(nfold.unfold(x, *case.args()), expected)


@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=dtype_id)
@pytest.mark.parametrize("layout", ["contiguous", "noncontiguous"])
@pytest.mark.parametrize("case", params(CASES_2D))
def test_fold_2d_equals_torch(case, layout, dtype, engine):
    # Random (inexact) values: bitwise equality needs torch's summation order.
    y = make_tensor(case.cols_shape(), dtype, seed=2)
    if layout == "noncontiguous":
        y = y.transpose(-1, -2).contiguous().transpose(-1, -2)
    expected = F.fold(y, *case.fold_args())
    assert torch.equal(nfold.fold(y, *case.fold_args()), expected)


TORCH_2D_DTYPES = [torch.float16, torch.bfloat16, torch.complex64, torch.complex128, torch.bool]


@pytest.mark.parametrize("dtype", TORCH_2D_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("case", params(CASES_2D[:12]))
def test_unfold_2d_equals_torch_other_dtypes(case, dtype):
    x = make_tensor(case.shape, dtype, seed=3)
    assert torch.equal(nfold.unfold(x, *case.args()), F.unfold(x, *case.args()))


@pytest.mark.parametrize("case", params(CASES_2D[:12]))
def test_fold_2d_bool_equals_torch(case):
    y = make_tensor(case.cols_shape(), torch.bool, seed=4)
    assert torch.equal(nfold.fold(y, *case.fold_args()), F.fold(y, *case.fold_args()))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=dtype_id)
@pytest.mark.parametrize("case", params(CASES_2D[:12]))
def test_fold_2d_half_accumulates_in_float32(case, dtype):
    # torch's CPU fold sums in the input dtype; nfold sums in float32 and rounds once.
    y = make_tensor(case.cols_shape(), dtype, seed=5)
    expected = F.fold(y.float(), *case.fold_args()).to(dtype)
    assert torch.equal(nfold.fold(y, *case.fold_args()), expected)


@pytest.mark.parametrize("dtype", INT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("case", params(CASES_2D[:12]))
def test_fold_2d_integers_equal_torch_in_float64(case, dtype):
    # torch has no integer fold; small integers are summed exactly in float64.
    y = make_exact(case.cols_shape(), dtype, seed=6)
    expected = F.fold(y.double(), *case.fold_args()).to(dtype)
    assert torch.equal(nfold.fold(y, *case.fold_args()), expected)


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
@pytest.mark.parametrize(
    "case",
    params(
        [
            Case("k3_p1", (2, 2, 5, 6), 3, padding=1),
            Case("k2x3_p1x2_s2", (1, 2, 6, 7), (2, 3), padding=(1, 2), stride=2),
            Case("k3_d2_p2", (1, 1, 5, 5), 3, dilation=2, padding=2),
            Case("pairs_0_2_1_0", (1, 2, 4, 5), 2, padding=((0, 2), (1, 0))),
        ]
    ),
)
def test_unfold_2d_padding_mode_equals_torch_pad(case, mode):
    x = make_tensor(case.shape, F64, seed=7)
    expected = F.unfold(
        torch_pad(x, case.padding, mode), case.kernel_size, case.dilation, 0, case.stride
    )
    got = nfold.unfold(x, *case.args(), padding_mode=mode)
    assert torch.equal(got, expected)


@pytest.mark.parametrize(
    "padding",
    [((0, 1), (2, 0)), ((1, 1), (0, 3)), [(2, 0), (0, 0)]],
    ids=["lo0hi1_lo2hi0", "lo1hi1_lo0hi3", "list_of_pairs"],
)
def test_unfold_fold_2d_per_side_padding_equal_torch_on_padded(padding):
    x = make_tensor((2, 2, 5, 6), F64, seed=8)
    xp = torch_pad(x, padding, "constant")
    expected = F.unfold(xp, (2, 3), stride=(1, 2))
    cols = nfold.unfold(x, (2, 3), padding=padding, stride=(1, 2))
    assert torch.equal(cols, expected)
    # fold with per-side padding = torch's fold onto the padded grid, then cropped
    (lo0, _), (lo1, _) = as_pairs(padding, 2)
    folded = F.fold(expected, xp.shape[2:], (2, 3), stride=(1, 2))
    crop = folded[:, :, lo0 : lo0 + 5, lo1 : lo1 + 6]
    assert torch.equal(nfold.fold(cols, (5, 6), (2, 3), padding=padding, stride=(1, 2)), crop)


def test_unfold_2d_unbatched_equals_torch():
    # Unbatched N = 2 input needs a tuple among the sizes (with ints only N = dim - 2).
    x = make_tensor((3, 6, 7), F64, seed=9)
    assert torch.equal(nfold.unfold(x, (2, 3), padding=1), F.unfold(x, (2, 3), padding=1))
    y = make_tensor((3 * 6, 16), F64, seed=10)
    assert torch.equal(nfold.fold(y, (5, 6), (2, 3)), F.fold(y, (5, 6), (2, 3)))


def test_fold_beyond_2_pow_24_output_elements_equals_torch():
    # unfoldNd's float32 index tensor cannot address past 2^24; nfold has no such limit.
    size = (4098, 4098)
    assert math.prod(size) > 2**24
    y = make_tensor((1, 4, (size[0] // 2) * (size[1] // 2)), torch.float32, seed=11)
    got = nfold.fold(y, size, 2, stride=2)
    assert torch.equal(got, F.fold(y, size, 2, stride=2))
    assert got[0, 0, -1, -1] == y[0, 3, -1]  # last element: kernel offset (1, 1), last block


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=dtype_id)
def test_fold_4096_overlapping_half_ones_counts_4096(dtype):
    # kernel 64x64 on a 127x127 output: the centre element is covered by all 64*64 blocks.
    y = torch.ones((1, 64 * 64, 64 * 64), dtype=dtype)
    got = nfold.fold(y, (127, 127), 64)
    assert got[0, 0, 63, 63].item() == 4096
    # every element: its exact count, rounded once to the dtype
    expected = F.fold(y.double(), (127, 127), 64).to(dtype)
    assert torch.equal(got, expected)


# --------------------------------------------------------------------------------------
# N = 1, 3 (and 2) against torch's convolutions, float64 to round-off
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConvCase:
    id: str
    shape: tuple[int, ...]
    out_channels: int
    kernel_size: tuple[int, ...]
    stride: int | tuple[int, ...] = 1
    padding: object = 0
    dilation: int | tuple[int, ...] = 1
    groups: int = 1
    padding_mode: str = "zeros"


CONV_CASES = [
    # N = 1
    ConvCase("1d_k3", (2, 3, 10), 4, (3,)),
    ConvCase("1d_k4_s3_p2_d2", (2, 2, 13), 3, (4,), stride=3, padding=2, dilation=2),
    ConvCase("1d_groups3", (2, 6, 9), 9, (3,), stride=2, padding=1, groups=3),
    ConvCase("1d_depthwise", (1, 4, 8), 4, (2,), groups=4),
    ConvCase("1d_reflect", (2, 2, 7), 3, (3,), padding=2, padding_mode="reflect"),
    ConvCase("1d_replicate_s2", (1, 2, 7), 2, (3,), stride=2, padding=3, padding_mode="replicate"),
    ConvCase(
        "1d_circular_groups2", (2, 4, 6), 2, (3,), padding=2, groups=2, padding_mode="circular"
    ),
    ConvCase("1d_same_even_k", (2, 2, 9), 3, (4,), padding="same"),
    ConvCase("1d_same_k3_d3", (1, 2, 9), 2, (3,), padding="same", dilation=3),
    ConvCase("1d_valid", (1, 2, 9), 2, (3,), padding="valid"),
    ConvCase("1d_batch0", (0, 2, 9), 2, (3,), padding=1),
    # N = 2
    ConvCase(
        "2d_groups2_s2_d2", (2, 4, 7, 8), 6, (3, 2), stride=2, padding=1, dilation=2, groups=2
    ),
    ConvCase("2d_same_even", (1, 2, 5, 6), 2, (2, 4), padding="same", dilation=(2, 1)),
    # N = 3
    ConvCase("3d_k2", (2, 2, 4, 5, 3), 3, (2, 2, 2)),
    ConvCase(
        "3d_k2x3x1_s2x1x3_p1x0x1",
        (1, 2, 5, 6, 7),
        3,
        (2, 3, 1),
        stride=(2, 1, 3),
        padding=(1, 0, 1),
    ),
    ConvCase("3d_d2_groups2", (2, 4, 5, 5, 5), 4, (2, 2, 3), dilation=(2, 1, 2), groups=2),
    ConvCase(
        "3d_reflect", (1, 2, 4, 4, 5), 2, (3, 3, 3), padding=(1, 2, 1), padding_mode="reflect"
    ),
    ConvCase("3d_replicate", (1, 2, 3, 4, 3), 2, (2, 2, 2), padding=1, padding_mode="replicate"),
    ConvCase(
        "3d_circular_s2",
        (1, 2, 4, 4, 4),
        3,
        (3, 2, 3),
        stride=2,
        padding=(1, 1, 2),
        padding_mode="circular",
    ),
    ConvCase("3d_same_even", (1, 2, 5, 4, 6), 2, (2, 3, 4), padding="same"),
]


def _torch_conv(x, w, case: ConvCase):
    conv = (F.conv1d, F.conv2d, F.conv3d)[x.dim() - 3]
    if case.padding_mode == "zeros":
        return conv(x, w, None, case.stride, case.padding, case.dilation, case.groups)
    # what torch.nn.ConvNd does for non-zero padding modes
    return conv(
        torch_pad(x, case.padding, case.padding_mode),
        w,
        None,
        case.stride,
        0,
        case.dilation,
        case.groups,
    )


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CONV_CASES])
def test_weight_times_unfold_equals_torch_conv(case):
    x = make_tensor(case.shape, F64, seed=12)
    w = make_tensor(
        (case.out_channels, case.shape[1] // case.groups, *case.kernel_size), F64, seed=13
    )
    expected = _torch_conv(x, w, case)
    cols = nfold.unfold(
        x, case.kernel_size, case.dilation, case.padding, case.stride, case.padding_mode
    )
    got = grouped_matmul(w.flatten(1), cols, case.groups).reshape(expected.shape)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


@dataclass(frozen=True)
class TransposeCase:
    id: str
    shape: tuple[int, ...]
    out_channels: int
    kernel_size: tuple[int, ...]
    stride: int | tuple[int, ...] = 1
    padding: int | tuple[int, ...] = 0
    output_padding: int | tuple[int, ...] = 0
    dilation: int | tuple[int, ...] = 1
    groups: int = 1

    def args(self) -> tuple:
        return (self.kernel_size, self.stride, self.padding, self.output_padding, self.dilation)


TRANSPOSE_CASES = [
    TransposeCase("1d_k3", (2, 3, 5), 2, (3,)),
    TransposeCase("1d_k3_s2_p1_op1", (2, 2, 5), 3, (3,), stride=2, padding=1, output_padding=1),
    TransposeCase("1d_k2_s3_gaps", (1, 2, 4), 2, (2,), stride=3),
    TransposeCase("1d_k2_p2_crops", (1, 2, 6), 2, (2,), stride=3, padding=2),
    TransposeCase("1d_d2_op1", (1, 2, 4), 2, (3,), dilation=2, output_padding=1),
    TransposeCase("1d_groups3", (2, 6, 4), 3, (3,), stride=2, groups=3),
    TransposeCase(
        "2d_groups2_all",
        (1, 4, 3, 4),
        6,
        (3, 2),
        stride=(2, 3),
        padding=(1, 0),
        output_padding=(1, 2),
        dilation=(1, 2),
        groups=2,
    ),
    TransposeCase("3d_k2", (2, 2, 2, 3, 2), 3, (2, 2, 2)),
    TransposeCase(
        "3d_k3x2x2_s2x1x3_p1x0x1_op1x0x2",
        (1, 2, 3, 3, 2),
        2,
        (3, 2, 2),
        stride=(2, 1, 3),
        padding=(1, 0, 1),
        output_padding=(1, 0, 2),
    ),
    TransposeCase(
        "3d_d2_groups2", (1, 4, 2, 3, 2), 4, (2, 3, 2), dilation=(2, 1, 2), stride=2, groups=2
    ),
    TransposeCase("3d_batch0", (0, 2, 2, 3, 2), 3, (2, 2, 2), stride=2),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in TRANSPOSE_CASES])
def test_unfold_transpose_product_equals_torch_conv_transpose(case):
    x = make_tensor(case.shape, F64, seed=14)
    c_in, g = case.shape[1], case.groups
    w = make_tensor((c_in, case.out_channels // g, *case.kernel_size), F64, seed=15)
    conv_t = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[x.dim() - 3]
    expected = conv_t(x, w, None, case.stride, case.padding, case.output_padding, g, case.dilation)
    cols = nfold.unfold_transpose(x, *case.args())
    # per group: W_g (C_in/g, C_out/g, *k) -> (C_out/g, C_in/g * K)
    w2d = torch.cat([w_g.transpose(0, 1).flatten(1) for w_g in w.chunk(g, 0)], 0)
    got = grouped_matmul(w2d, cols, g).reshape(expected.shape)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in TRANSPOSE_CASES])
def test_unfold_transpose_equals_reference(case):
    x = make_tensor(case.shape, F64, seed=16)
    assert torch.equal(
        nfold.unfold_transpose(x, *case.args()), ref_unfold_transpose(x, *case.args())
    )


# --------------------------------------------------------------------------------------
# any N (4 and 5 included) against the nested-loop reference, bitwise
# --------------------------------------------------------------------------------------

CASES_ND = [
    Case("1d_k3_p1_s2", (2, 2, 9), 3, padding=1, stride=2),
    Case("1d_pairs_d2", (1, 2, 8), 3, dilation=2, padding=((2, 1),)),
    Case(
        "3d_mixed",
        (1, 2, 4, 5, 6),
        (2, 3, 2),
        dilation=(1, 1, 2),
        padding=(1, 0, 1),
        stride=(2, 1, 2),
    ),
    Case("4d_k2", (2, 2, 3, 3, 4, 3), 2),
    Case(
        "4d_mixed",
        (1, 2, 4, 3, 5, 4),
        (2, 1, 3, 2),
        dilation=(1, 1, 2, 1),
        padding=(1, 0, 1, 0),
        stride=(2, 1, 2, 3),
    ),
    Case("4d_pairs", (1, 1, 3, 3, 3, 3), (2, 2, 1, 2), padding=((0, 1), (1, 0), (0, 0), (1, 1))),
    Case("4d_batch0", (0, 2, 3, 3, 3, 3), 2),
    Case("5d_k2", (1, 2, 3, 3, 3, 3, 3), 2),
    Case(
        "5d_mixed",
        (2, 1, 3, 4, 2, 3, 4),
        (2, 2, 1, 2, 3),
        stride=(1, 2, 1, 1, 2),
        padding=(0, 1, 0, 1, 1),
        dilation=(1, 1, 1, 2, 1),
    ),
]


@pytest.mark.parametrize("case", params(CASES_ND))
def test_unfold_nd_equals_reference(case):
    x = make_tensor(case.shape, F64, seed=17)
    assert torch.equal(nfold.unfold(x, *case.args()), ref_unfold(x, *case.args()))


@pytest.mark.parametrize("dtype", [F64, torch.int64], ids=dtype_id)
@pytest.mark.parametrize("case", params(CASES_ND))
def test_fold_nd_equals_reference(case, dtype):
    y = make_exact(case.cols_shape(), dtype, seed=18)
    assert torch.equal(nfold.fold(y, *case.fold_args()), ref_fold(y, *case.fold_args()))


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
@pytest.mark.parametrize(
    "case",
    params(
        [
            Case("1d_p2_s2", (2, 1, 5), 3, padding=2, stride=2),
            Case("1d_pairs", (1, 2, 4), 2, padding=((3, 1),)),
            Case("4d_p1", (1, 1, 3, 2, 3, 3), (2, 2, 1, 3), padding=(1, 1, 0, 2)),
            Case(
                "5d_pairs",
                (1, 1, 2, 3, 2, 2, 3),
                2,
                padding=((1, 0), (0, 2), (1, 1), (0, 0), (2, 1)),
            ),
        ]
    ),
)
def test_unfold_padding_mode_nd_equals_reference(case, mode):
    x = make_tensor(case.shape, F64, seed=19)
    got = nfold.unfold(x, *case.args(), padding_mode=mode)
    assert torch.equal(got, ref_unfold(x, *case.args(), padding_mode=mode))


TRANSPOSE_ND = [
    TransposeCase("4d_k2_s2", (1, 2, 2, 2, 3, 2), 1, (2, 2, 2, 2), stride=2),
    TransposeCase(
        "4d_mixed",
        (1, 1, 3, 2, 2, 2),
        1,
        (2, 3, 1, 2),
        stride=(1, 2, 3, 1),
        padding=(1, 1, 0, 0),
        output_padding=(0, 1, 2, 0),
        dilation=(2, 1, 1, 1),
    ),
    TransposeCase(
        "5d_k2",
        (1, 1, 2, 2, 2, 2, 2),
        1,
        (2, 2, 2, 2, 2),
        stride=(1, 2, 1, 2, 1),
        padding=(0, 1, 0, 0, 1),
    ),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in TRANSPOSE_ND])
def test_unfold_transpose_nd_equals_reference(case):
    x = make_tensor(case.shape, F64, seed=20)
    assert torch.equal(
        nfold.unfold_transpose(x, *case.args()), ref_unfold_transpose(x, *case.args())
    )


# --------------------------------------------------------------------------------------
# every dtype: data movement is exact
# --------------------------------------------------------------------------------------

DTYPE_CASES = [
    Case("2d_p1_s2", (2, 2, 5, 6), (3, 2), padding=1, stride=2, dilation=(1, 2)),
    Case("3d_reflect", (1, 2, 4, 3, 4), 2, padding=(1, 2, 1), padding_mode="reflect"),
    Case("1d_circular", (2, 1, 6), 3, padding=((2, 1),), padding_mode="circular"),
    Case("4d_replicate", (1, 1, 3, 2, 3, 2), 2, padding=1, stride=2, padding_mode="replicate"),
]


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("case", params(DTYPE_CASES))
def test_unfold_every_dtype_equals_reference(case, dtype):
    x = make_tensor(case.shape, dtype, seed=21)
    got = nfold.unfold(x, *case.args(), padding_mode=case.padding_mode)
    assert got.dtype == dtype
    assert torch.equal(got, ref_unfold(x, *case.args(), padding_mode=case.padding_mode))


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=dtype_id)
@pytest.mark.parametrize(
    "case", params([c for c in DTYPE_CASES if c.padding_mode == "zeros"] + CASES_ND[2:4])
)
def test_fold_every_dtype_equals_reference(case, dtype):
    y = make_exact(case.cols_shape(), dtype, seed=22)
    got = nfold.fold(y, *case.fold_args())
    assert got.dtype == dtype
    assert torch.equal(got, ref_fold(y, *case.fold_args()))


DISJOINT_CASES = [
    Case("patches_k3x2", (2, 3, 9, 8), (3, 2), stride=(3, 2)),
    Case("patches_d2_s3_border", (2, 2, 9, 11), 2, dilation=2, stride=3),
    Case("3d_patches_s_gt_k", (1, 2, 4, 7, 5), 2, stride=(2, 3, 2)),
]


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("case", params([*CASES_2D, *CASES_ND, *DISJOINT_CASES]))
def test_fold_scatter_and_phase_paths_agree_bitwise(monkeypatch, case, dtype):
    """fold takes one scatter_add_ pass when output rows are short (fewer than the policy's
    short_row blocks), one strided add when blocks do not overlap, and strided phase adds
    otherwise; all sum every element's blocks in the same order, so random values (where
    order matters) agree bitwise, flipped kernels too."""
    y = make_tensor(case.cols_shape(), dtype, seed=69)
    x = make_tensor(case.shape, F64, seed=70)
    transposed_args = (case.kernel_size, case.stride, 0, 0, case.dilation)
    results = []
    disjoint = _plan.Geometry.disjoint
    # phase adds only; phases or one add for disjoint blocks; always scatter; always
    # scatter, one plane per padded chunk
    for short_row, chunk, fast in (
        (0, 1 << 20, False),
        (0, 1 << 20, True),
        (1 << 30, 1 << 20, True),
        (1 << 30, 1, True),
    ):
        rule = dataclasses.replace(
            _plan.CPU,
            short_row=short_row,
            short_strided_row=short_row,
            small_index=_plan.CPU.small_index if short_row else 0,  # small folds scatter
            index_share=float("inf"),
            pad_chunk_bytes=chunk,
            torch_below=0,
        )
        monkeypatch.setitem(_plan.POLICIES, "cpu", rule)
        monkeypatch.setattr(
            _plan.Geometry, "disjoint", disjoint if fast else property(lambda g: False)
        )
        _plan.clear_caches()  # plans hold the policy's and the disjoint decisions
        xr = x.clone().requires_grad_()
        out = nfold.unfold_transpose(xr, *transposed_args)
        (grad,) = torch.autograd.grad(out, xr, torch.ones_like(out).cumsum(-1).sin())
        results.append((nfold.fold(y, *case.fold_args()), grad))
    for fold_out, grad in results[1:]:
        assert torch.equal(fold_out, results[0][0]) and torch.equal(grad, results[0][1])


def test_fold_scatter_only_when_its_index_is_small(monkeypatch):
    """scatter_add_'s int64 index has one entry per column, shared by every plane: with
    few planes it would outweigh the input, so fold adds phases instead, unless the
    index is small (policy.small_index, 64 KB: then one scatter beats an add per kernel
    offset, and its index is cached)."""
    patches = sys.modules["nfold.patches"]
    rule = dataclasses.replace(_plan.CPU, torch_below=0)  # nfold's own fold, not F.fold
    monkeypatch.setitem(_plan.POLICIES, "cpu", rule)
    _plan.clear_caches()
    calls = []
    real = patches._fold_scatter
    monkeypatch.setattr(patches, "_fold_scatter", lambda *a: calls.append(1) or real(*a))
    # float32, 143 KB index: 2x / (1/8)x the input; then a 2 KB index
    for planes, osize, expected in ((1, (400, 7), 0), (16, (400, 7), 1), (1, (8, 7), 2)):
        y = make_tensor((planes, 9, (osize[0] - 2) * 5), torch.float32, seed=71)
        assert torch.equal(nfold.fold(y, osize, 3), F.fold(y, osize, 3))
        assert len(calls) == expected


@pytest.mark.parametrize(
    "dtype",
    [torch.uint8, torch.int8, torch.int16, torch.uint16, torch.uint32, torch.uint64],
    ids=dtype_id,
)
def test_fold_integer_overflow_wraps_like_numpy(dtype):
    # Integer sums wrap modulo 2^bits, as integer addition does in torch and numpy.
    y = torch.full((1, 2, 3), torch.iinfo(dtype).max, dtype=dtype)
    got = nfold.fold(y, (4,), 2).numpy()  # the middle elements are covered by two blocks
    top = np.full(1, torch.iinfo(dtype).max, dtype=got.dtype)
    expected = np.concatenate([top, top + top, top + top, top]).reshape(1, 1, 4)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=dtype_id)
def test_unfold_transpose_every_dtype_equals_reference(dtype):
    x = make_tensor((2, 2, 3, 4), dtype, seed=23)
    args = ((2, 3), (2, 1), (1, 0), (1, 0), (1, 2))
    got = nfold.unfold_transpose(x, *args)
    assert got.dtype == dtype
    assert torch.equal(got, ref_unfold_transpose(x, *args))


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=dtype_id)
def test_sliding_window_view_every_dtype(dtype):
    x = make_tensor((2, 2, 5, 6), dtype, seed=24)
    view = nfold.sliding_window_view(x, (2, 3), (2, 1), (1, 2))
    cols = view.permute(0, 1, 4, 5, 2, 3).reshape(2, 2 * 6, -1)
    assert torch.equal(cols, ref_unfold(x, (2, 3), (2, 1), 0, (1, 2)))


# --------------------------------------------------------------------------------------
# fold reduction="mean"
# --------------------------------------------------------------------------------------

MEAN_CASES = [
    Case("1d_overlap", (2, 2, 11), 4, stride=1),
    Case("1d_gaps", (1, 2, 11), 2, stride=3),  # elements 2, 5, 8 are covered by no block
    Case("2d_overlap_pad", (2, 2, 7, 6), 3, padding=1, stride=(1, 2)),
    Case("2d_dilated_gaps", (1, 1, 9, 9), 2, dilation=3, stride=4),
    Case(
        "3d_overlap", (1, 2, 5, 4, 5), (3, 2, 2), stride=(2, 1, 1), padding=((1, 0), (0, 0), (1, 2))
    ),
    Case("4d_overlap", (1, 1, 4, 3, 4, 3), 2, stride=(1, 2, 1, 1)),
]


def _coverage(case: Case) -> torch.Tensor:
    ones = torch.ones((1, 1, *case.spatial), dtype=F64)
    return ref_fold(ref_unfold(ones, *case.args()), case.spatial, *case.args())[0, 0]


@pytest.mark.parametrize(
    "dtype", [torch.float16, torch.bfloat16, torch.float32, torch.complex64], ids=dtype_id
)
@pytest.mark.parametrize("case", params(MEAN_CASES))
def test_fold_mean_of_unfold_is_identity_bitwise(case, dtype):
    # The mean of identical copies is exact when summed in a wider type.
    x = make_tensor(case.shape, dtype, seed=25)
    got = nfold.fold(nfold.unfold(x, *case.args()), *case.fold_args(), reduction="mean")
    covered = _coverage(case) > 0
    assert got.dtype == dtype
    assert torch.equal(got[..., covered], x[..., covered])
    assert torch.equal(got[..., ~covered], torch.zeros_like(got[..., ~covered]))


@pytest.mark.parametrize("dtype", [F64, torch.complex128], ids=dtype_id)
@pytest.mark.parametrize("case", params(MEAN_CASES))
def test_fold_mean_of_unfold_is_identity_float64(case, dtype):
    x = make_tensor(case.shape, dtype, seed=26)
    got = nfold.fold(nfold.unfold(x, *case.args()), *case.fold_args(), reduction="mean")
    covered = _coverage(case) > 0
    expected = torch.where(covered, x, torch.zeros_like(x))
    torch.testing.assert_close(got, expected, **tol(dtype))


@pytest.mark.parametrize("case", params(MEAN_CASES))
def test_fold_mean_divides_sum_by_coverage(case):
    y = make_tensor(case.cols_shape(), F64, seed=27)
    total = ref_fold(y, *case.fold_args())
    expected = total / _coverage(case).clamp(min=1)
    got = nfold.fold(y, *case.fold_args(), reduction="mean")
    torch.testing.assert_close(got, expected, **tol(F64))


# --------------------------------------------------------------------------------------
# adjointness: <unfold(x), y> == <x, fold(y)>
# --------------------------------------------------------------------------------------

ADJOINT_CASES = [*CASES_2D[:12], *CASES_ND]


@pytest.mark.parametrize("case", params(ADJOINT_CASES))
def test_fold_is_adjoint_of_unfold(case):
    x = make_tensor(case.shape, F64, seed=28)
    y = make_tensor(case.cols_shape(), F64, seed=29)
    lhs = (nfold.unfold(x, *case.args()) * y).sum()
    rhs = (x * nfold.fold(y, *case.fold_args())).sum()
    torch.testing.assert_close(lhs, rhs, **tol(F64))


# --------------------------------------------------------------------------------------
# autograd: backward of unfold is fold and vice versa, every order, jvp, vmap
# --------------------------------------------------------------------------------------

GRAD_CASES = [
    Case("1d_p1_s2", (1, 2, 6), 3, padding=1, stride=2),
    Case("1d_reflect", (1, 1, 5), 3, padding=2, padding_mode="reflect"),
    Case("2d_d2_pairs", (1, 1, 5, 4), 2, dilation=(2, 1), padding=((1, 0), (0, 2)), stride=(1, 2)),
    Case("2d_replicate", (1, 1, 3, 4), (2, 3), padding=1, padding_mode="replicate"),
    Case("3d_circular_s2", (1, 1, 3, 3, 3), 2, padding=1, stride=2, padding_mode="circular"),
    Case("4d_k2", (1, 1, 2, 3, 2, 3), 2, stride=(1, 2, 1, 1)),
]


def _unfold_fn(case: Case):
    return lambda x: nfold.unfold(x, *case.args(), padding_mode=case.padding_mode)


@pytest.mark.parametrize("case", params(GRAD_CASES))
def test_unfold_gradcheck_gradgradcheck(case):
    x = make_tensor(case.shape, F64, seed=30).requires_grad_()
    assert gradcheck(_unfold_fn(case), (x,))
    assert gradgradcheck(_unfold_fn(case), (x,))


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("case", params([c for c in GRAD_CASES if c.padding_mode == "zeros"]))
def test_fold_gradcheck_gradgradcheck(case, reduction):
    y = make_tensor(case.cols_shape(), F64, seed=31).requires_grad_()

    def fn(y):
        return nfold.fold(y, *case.fold_args(), reduction=reduction)

    assert gradcheck(fn, (y,))
    assert gradgradcheck(fn, (y,))


GRAD_TRANSPOSE_CASES = [
    TransposeCase("1d_k3_s2_p1_op1", (1, 1, 4), 1, (3,), stride=2, padding=1, output_padding=1),
    TransposeCase("1d_k2_p2_crops", (1, 1, 5), 1, (2,), stride=3, padding=2),
    TransposeCase(
        "2d_all",
        (1, 1, 2, 3),
        1,
        (3, 2),
        stride=(2, 3),
        padding=(1, 0),
        output_padding=(1, 2),
        dilation=(1, 2),
    ),
    TransposeCase(
        "3d_s2x1x2_p1x0x0", (1, 1, 2, 2, 2), 1, (2, 2, 1), stride=(2, 1, 2), padding=(1, 0, 0)
    ),
    TransposeCase("4d_k2", (1, 1, 2, 1, 2, 1), 1, (2, 1, 2, 2), stride=(1, 1, 2, 1)),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in GRAD_TRANSPOSE_CASES])
def test_unfold_transpose_gradcheck_gradgradcheck(case):
    x = make_tensor(case.shape, F64, seed=32).requires_grad_()

    def fn(x):
        return nfold.unfold_transpose(x, *case.args())

    assert gradcheck(fn, (x,))
    assert gradgradcheck(fn, (x,))


@pytest.mark.parametrize("case", params(CASES_2D[:12]))
def test_unfold_backward_is_fold_2d_equals_torch(case, engine):
    x = make_tensor(case.shape, F64, seed=33).requires_grad_()
    g = make_tensor(case.cols_shape(), F64, seed=34)
    nfold.unfold(x, *case.args()).backward(g)
    assert torch.equal(x.grad, F.fold(g, *case.fold_args()))
    y = make_tensor(case.cols_shape(), F64, seed=35).requires_grad_()
    h = make_tensor(case.shape, F64, seed=36)
    nfold.fold(y, *case.fold_args()).backward(h)
    assert torch.equal(y.grad, F.unfold(h, *case.args()))


@pytest.mark.parametrize("case", params(CASES_ND))
def test_derivatives_of_every_order_alternate_unfold_fold(case):
    # d/dx <unfold(x), v> = fold(v); d/dv <fold(v), w> = unfold(w); d/dw <unfold(w), z> = fold(z)
    x = make_tensor(case.shape, F64, seed=37).requires_grad_()
    v = make_tensor(case.cols_shape(), F64, seed=38).requires_grad_()
    w = make_tensor(case.shape, F64, seed=39).requires_grad_()
    z = make_tensor(case.cols_shape(), F64, seed=40)
    (g1,) = torch.autograd.grad(nfold.unfold(x, *case.args()), x, v, create_graph=True)
    assert torch.equal(g1, nfold.fold(v.detach(), *case.fold_args()))
    torch.testing.assert_close(g1, ref_fold(v.detach(), *case.fold_args()), **tol(F64))
    (g2,) = torch.autograd.grad(g1, v, w, create_graph=True)
    assert torch.equal(g2, ref_unfold(w.detach(), *case.args()))
    (g3,) = torch.autograd.grad(g2, w, z)
    assert torch.equal(g3, nfold.fold(z, *case.fold_args()))
    torch.testing.assert_close(g3, ref_fold(z, *case.fold_args()), **tol(F64))


@pytest.mark.parametrize("case", params(GRAD_CASES))
def test_unfold_jvp(case):
    x, t = make_tensor(case.shape, F64, seed=41), make_tensor(case.shape, F64, seed=42)
    fn = _unfold_fn(case)
    out, tangent = torch.func.jvp(fn, (x,), (t,))
    assert torch.equal(out, fn(x))
    assert torch.equal(tangent, fn(t))


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("case", params([c for c in GRAD_CASES if c.padding_mode == "zeros"]))
def test_fold_jvp(case, reduction):
    y, t = (
        make_tensor(case.cols_shape(), F64, seed=43),
        make_tensor(case.cols_shape(), F64, seed=44),
    )

    def fn(y):
        return nfold.fold(y, *case.fold_args(), reduction=reduction)

    out, tangent = torch.func.jvp(fn, (y,), (t,))
    assert torch.equal(out, fn(y))
    torch.testing.assert_close(tangent, fn(t), **tol(F64))
    if reduction == "sum":
        assert torch.equal(tangent, fn(t))


def test_unfold_transpose_jvp():
    x, t = make_tensor((2, 2, 3, 4), F64, seed=45), make_tensor((2, 2, 3, 4), F64, seed=46)

    def fn(x):
        return nfold.unfold_transpose(x, (2, 3), stride=2, padding=(1, 0), output_padding=(1, 0))

    out, tangent = torch.func.jvp(fn, (x,), (t,))
    assert torch.equal(out, fn(x)) and torch.equal(tangent, fn(t))


@pytest.mark.parametrize("case", params(GRAD_CASES))
def test_forward_over_reverse_hessian_vector_product(case):
    # f(x) = |unfold(x)|^2 / 2 has Hessian U^T U: hvp(v) = unfold^T(unfold(v)).
    fn = _unfold_fn(case)
    x, v = make_tensor(case.shape, F64, seed=47), make_tensor(case.shape, F64, seed=48)
    _, hvp = torch.func.jvp(torch.func.grad(lambda x: fn(x).square().sum() / 2), (x,), (v,))
    xv = v.clone().requires_grad_()
    (expected,) = torch.autograd.grad(fn(xv), xv, fn(v))
    assert torch.equal(hvp, expected)


@pytest.mark.parametrize("in_dim", [0, 1])
@pytest.mark.parametrize("case", params(GRAD_CASES))
def test_unfold_vmap(case, in_dim):
    fn = _unfold_fn(case)
    xs = make_tensor((3, *case.shape), F64, seed=49)
    got = torch.func.vmap(fn, in_dims=in_dim)(xs.movedim(0, in_dim))
    assert torch.equal(got, torch.stack([fn(x) for x in xs]))


@pytest.mark.parametrize("case", params([c for c in GRAD_CASES if c.padding_mode == "zeros"]))
def test_fold_vmap(case):
    ys = make_tensor((3, *case.cols_shape()), F64, seed=50)

    def fn(y):
        return nfold.fold(y, *case.fold_args())

    assert torch.equal(torch.func.vmap(fn)(ys), torch.stack([fn(y) for y in ys]))
    # unbatched samples under vmap
    assert torch.equal(torch.func.vmap(fn)(ys[:, 0]), torch.stack([fn(y) for y in ys[:, 0]]))


def test_unfold_transpose_vmap_unbatched_samples():
    xs = make_tensor((4, 2, 3, 3), F64, seed=51)

    def fn(x):
        return nfold.unfold_transpose(x, (2, 2), stride=2, padding=1)

    assert torch.equal(torch.func.vmap(fn)(xs), torch.stack([fn(x) for x in xs]))


@pytest.mark.parametrize("case", params(GRAD_CASES[:3]))
def test_vmap_of_grad_per_sample_gradients(case):
    fn = _unfold_fn(case)
    xs = make_tensor((3, *case.shape), F64, seed=52)

    def loss(x):
        return fn(x).pow(3).sum()

    got = torch.func.vmap(torch.func.grad(loss))(xs)
    for x, g in zip(xs, got, strict=True):
        xr = x.clone().requires_grad_()
        (expected,) = torch.autograd.grad(loss(xr), xr)
        assert torch.equal(g, expected)


@pytest.mark.parametrize("case", params(GRAD_CASES[:3]))
def test_jacrev_equals_jacfwd_and_is_a_selection_matrix(case):
    fn = _unfold_fn(case)
    x = make_tensor(case.shape, F64, seed=53)
    jr = torch.func.jacrev(fn)(x).reshape(-1, x.numel())
    jf = torch.func.jacfwd(fn)(x).reshape(-1, x.numel())
    assert torch.equal(jr, jf)
    assert set(jr.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(jr @ x.flatten(), fn(x).flatten())


# --------------------------------------------------------------------------------------
# argument forms, unbatched input
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_int_and_tuple_sizes_agree(n):
    x = make_tensor((1, 2, *([5] * n)), F64, seed=54)
    by_int = nfold.unfold(x, 2, 2, 1, 2)
    by_tuple = nfold.unfold(x, (2,) * n, (2,) * n, (1,) * n, (2,) * n)
    by_list = nfold.unfold(x, [2] * n, [2] * n, [1] * n, [2] * n)
    by_pairs = nfold.unfold(x, 2, 2, ((1, 1),) * n, 2)
    for other in (by_tuple, by_list, by_pairs):
        assert torch.equal(by_int, other)
    y = make_tensor(by_int.shape, F64, seed=55)
    by_int_f = nfold.fold(y, (5,) * n, 2, 2, 1, 2)
    for args in [
        ((5,) * n, (2,) * n, (2,) * n, (1,) * n, (2,) * n),
        ([5] * n, 2, 2, ((1, 1),) * n, 2),
        (torch.Size([5] * n), 2, 2, 1, 2),
    ]:
        assert torch.equal(nfold.fold(y, *args), by_int_f)


def test_fold_ints_only_means_two_spatial_dims():
    # As torch.nn.functional.fold: with ints only, output_size is 2-d.
    y = make_tensor((1, 4, 16), F64, seed=56)
    assert torch.equal(nfold.fold(y, 5, 2), F.fold(y, 5, 2))


@pytest.mark.parametrize("n", [1, 2, 3])
def test_padding_valid_is_zero(n):
    x = make_tensor((1, 2, *([5] * n)), F64, seed=57)
    assert torch.equal(nfold.unfold(x, 3, padding="valid"), nfold.unfold(x, 3))


@pytest.mark.parametrize(
    "kernel_size,dilation,pairs",
    [
        ((3,), (1,), ((1, 1),)),
        ((4,), (1,), ((1, 2),)),  # even kernel: the extra element on the high side
        ((2, 3), (3, 1), ((1, 2), (1, 1))),
        ((2, 2, 4), (1, 2, 1), ((0, 1), (1, 1), (1, 2))),
    ],
    ids=["k3", "k4_even", "k2x3_d3x1", "k2x2x4_d1x2x1"],
)
def test_padding_same_keeps_size_and_pads_like_torch_conv(kernel_size, dilation, pairs):
    n = len(kernel_size)
    x = make_tensor((1, 2, *([6] * n)), F64, seed=58)
    cols = nfold.unfold(x, kernel_size, dilation, "same")
    assert cols.shape[-1] == 6**n
    assert torch.equal(cols, nfold.unfold(x, kernel_size, dilation, pairs))
    assert torch.equal(cols, ref_unfold(x, kernel_size, dilation, pairs))


@pytest.mark.parametrize(
    "kernel_size", [(3,), (4,), (2, 3), (2, 2, 3)], ids=["k3", "k4_even", "k2x3", "k2x2x3"]
)
def test_fold_padding_same_and_valid(kernel_size):
    n = len(kernel_size)
    y = make_exact((1, 2 * math.prod(kernel_size), 5**n), F64, seed=63)
    pairs = tuple(((k - 1) // 2, k - 1 - (k - 1) // 2) for k in kernel_size)
    got = nfold.fold(y, (5,) * n, kernel_size, padding="same")
    assert torch.equal(got, ref_fold(y, (5,) * n, kernel_size, padding=pairs))
    cols = make_exact(
        (1, 2 * math.prod(kernel_size), math.prod(6 - k for k in kernel_size)), F64, seed=64
    )
    assert torch.equal(
        nfold.fold(cols, (5,) * n, kernel_size, padding="valid"),
        nfold.fold(cols, (5,) * n, kernel_size),
    )


@pytest.mark.parametrize("layout", ["channels_last_3d", "noncontiguous", "expanded"])
def test_unfold_3d_memory_layouts_equal_reference(layout):
    base = make_tensor((2, 3, 4, 5, 6), F64, seed=65)
    if layout == "channels_last_3d":
        x = base.contiguous(memory_format=torch.channels_last_3d)
    elif layout == "noncontiguous":
        x = make_tensor((2, 3, 6, 5, 8), F64, seed=65)[..., ::2].transpose(2, 4)
    else:  # stride-0 dims (broadcast) are a valid input too
        x = make_tensor((2, 3, 4, 5, 1), F64, seed=65).expand(2, 3, 4, 5, 6)
    args = ((2, 3, 2), (1, 1, 2), ((1, 0), (0, 1), (1, 1)), (2, 1, 1))
    assert torch.equal(nfold.unfold(x, *args), ref_unfold(x, *args))
    for mode in ("reflect", "circular"):
        assert torch.equal(
            nfold.unfold(x, *args, padding_mode=mode), ref_unfold(x, *args, padding_mode=mode)
        )


@pytest.mark.parametrize(
    ("budget", "chunks"), [(1, 15), (1200, 9), (6000, 2)], ids=["plane", "planes", "samples"]
)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_zero_padding_in_chunks_is_bitwise_the_same(monkeypatch, budget, chunks, layout):
    """Zero padding is applied to one chunk of (batch, channel) planes at a time, so that
    unfold's peak memory is its output plus one padded chunk; every chunking gives the
    same bits, for unfold, unfold_transpose (flipped copies) and the rows-first layout."""
    patches = sys.modules["nfold.patches"]
    x = _layout(make_tensor((3, 5, 6, 7), F64, seed=67), layout)
    kernel, dilation, pads, stride = (3, 2), (1, 2), ((1, 2), (0, 1)), (2, 1)
    rule = dataclasses.replace(_plan.CPU, pad_chunk_bytes=budget, torch_below=0)
    monkeypatch.setitem(_plan.POLICIES, "cpu", rule)
    _plan.clear_caches()  # plans are derived from the policy
    plane = 9 * 8 * x.element_size()  # padded planes are 9 x 8 x 8 bytes
    assert len(patches._pad_chunks(3, 5, plane, pads, rule)) == chunks
    out = nfold.unfold(x, kernel, dilation, pads, stride)
    assert torch.equal(out, ref_unfold(x, kernel, dilation, pads, stride))
    geom = _plan.Geometry(kernel, dilation, pads, stride)
    rows_first = patches._unfold_forward(x, geom, rows_first=True)
    assert rows_first.transpose(0, 1).is_contiguous() and torch.equal(rows_first, out)
    y = _layout(make_tensor((3, 5, 4, 5), F64, seed=68), layout)
    args = (kernel, (2, 1), (1, 2), (1, 0), (1, 2))  # kernel, stride, padding, out_pad, dil
    assert torch.equal(nfold.unfold_transpose(y, *args), ref_unfold_transpose(y, *args))


@pytest.mark.parametrize("n", [1, 2, 3])
def test_unbatched_input_gives_unbatched_output(n):
    x = make_tensor((2, *([4] * n)), F64, seed=59)
    k = (2,) * n
    assert torch.equal(nfold.unfold(x, k, padding=1), nfold.unfold(x[None], k, padding=1)[0])
    y = nfold.unfold(x, k, padding=1)
    assert torch.equal(
        nfold.fold(y, (4,) * n, k, padding=1), nfold.fold(y[None], (4,) * n, k, padding=1)[0]
    )
    assert torch.equal(
        nfold.unfold_transpose(x, k, stride=2), nfold.unfold_transpose(x[None], k, stride=2)[0]
    )
    assert torch.equal(nfold.sliding_window_view(x, k), nfold.sliding_window_view(x[None], k)[0])


def test_ints_only_take_n_from_input_dims():
    x = make_tensor((2, 3, 6, 7), F64, seed=60)
    assert nfold.unfold(x, 2).shape == (2, 3 * 4, 5 * 6)  # 4-d input -> N = 2
    # 3-d input with ints only -> N = 1, batched (torch's 2-d unfold would read it unbatched)
    assert nfold.unfold(x[0], 2).shape == (3, 6 * 2, 6)


# --------------------------------------------------------------------------------------
# sliding_window_view
# --------------------------------------------------------------------------------------

VIEW_CASES = [
    Case("1d_k3", (2, 2, 7), 3),
    Case("2d_k2x3_s2_d2x1", (1, 2, 7, 8), (2, 3), dilation=(2, 1), stride=2),
    Case("3d_k2", (1, 1, 4, 3, 5), (2, 1, 3), stride=(1, 1, 2)),
    Case("4d_k2_d2", (1, 1, 5, 3, 3, 4), 2, dilation=(2, 1, 1, 1), stride=(1, 2, 1, 1)),
]


@pytest.mark.parametrize("case", params(VIEW_CASES))
def test_sliding_window_view_is_a_view_with_window_dims_last(case):
    x = make_tensor(case.shape, F64, seed=61)
    view = nfold.sliding_window_view(x, case.kernel_size, case.dilation, case.stride)
    k = as_tuple(case.kernel_size, case.n)
    assert view.shape == (*case.shape[:2], *case.blocks(), *k)
    assert view.untyped_storage().data_ptr() == x.untyped_storage().data_ptr()
    n = case.n
    cols = view.permute(0, 1, *range(2 + n, 2 + 2 * n), *range(2, 2 + n)).reshape(case.cols_shape())
    assert torch.equal(cols, ref_unfold(x, case.kernel_size, case.dilation, 0, case.stride))
    x.zero_()  # writes to the input show through the view
    assert not view.any()


@pytest.mark.parametrize("case", params([c for c in VIEW_CASES if c.dilation == 1]))
def test_sliding_window_view_equals_numpy(case):
    x = make_tensor(case.shape, F64, seed=62)
    n, k = case.n, as_tuple(case.kernel_size, case.n)
    s = as_tuple(case.stride, n)
    expected = np.lib.stride_tricks.sliding_window_view(x.numpy(), k, axis=tuple(range(2, 2 + n)))
    expected = expected[(..., *(slice(None, None, st) for st in s), *(slice(None),) * n)]
    got = nfold.sliding_window_view(x, case.kernel_size, stride=case.stride)
    np.testing.assert_array_equal(got.numpy(), expected)
