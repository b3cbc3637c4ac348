"""nfold._args: the size-argument normaliser, N inference and the pure shape helpers,
checked against the formulas and against the shapes torch's own ops produce."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nfold import _args
from reference import make_tensor

# --------------------------------------------------------------------------------------
# ntuple / tuple_len / infer_n
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value,n,expected",
    [
        (3, 1, (3,)),
        (3, 4, (3, 3, 3, 3)),
        ((1, 2), 2, (1, 2)),
        ([4, 5, 6], 3, (4, 5, 6)),
        (torch.Size([2, 3]), 2, (2, 3)),
    ],
    ids=["int_n1", "int_n4", "tuple", "list", "torch_size"],
)
def test_ntuple_accepts_int_tuple_list_size(value, n, expected):
    assert _args.ntuple(value, n, "kernel_size") == expected


def test_ntuple_min_value_zero_allows_zero():
    assert _args.ntuple((0, 2), 2, "padding", min_value=0) == (0, 2)


@pytest.mark.parametrize(
    "value,exc,needles",
    [
        (0, ValueError, ["kernel_size", ">= 1", "0"]),
        ((2, -1), ValueError, ["kernel_size", ">= 1", "(2, -1)"]),
        ((2, 2, 2), ValueError, ["kernel_size", "2 ints", "length 3"]),
        ((2.0, 2), TypeError, ["kernel_size", "ints", "2.0"]),
        (2.5, TypeError, ["kernel_size", "2.5"]),
        (True, TypeError, ["kernel_size", "True"]),
        ("3", TypeError, ["kernel_size", "'3'"]),
        (None, TypeError, ["kernel_size", "None"]),
    ],
    ids=[
        "zero",
        "negative_in_tuple",
        "wrong_length",
        "float_in_tuple",
        "float",
        "bool",
        "str",
        "none",
    ],
)
def test_ntuple_errors_name_argument_value_and_expectation(value, exc, needles):
    with pytest.raises(exc, match="kernel_size") as info:
        _args.ntuple(value, 2, "kernel_size")
    for needle in needles:
        assert needle in str(info.value)


@pytest.mark.parametrize(
    "value,expected",
    [(3, None), ("same", None), ((1, 2, 3), 3), ([1], 1), (((1, 2), (3, 4)), 2)],
    ids=["int", "str", "tuple3", "list1", "pairs2"],
)
def test_tuple_len(value, expected):
    assert _args.tuple_len(value, "padding") == expected


def test_infer_n_from_tuples_else_default():
    assert _args.infer_n({"kernel_size": 3, "stride": (1, 2, 3)}, default=2) == 3
    assert _args.infer_n({"kernel_size": 3, "stride": 1}, default=2) == 2
    assert _args.infer_n({"kernel_size": (2,), "padding": ((1, 0),)}, default=5) == 1


def test_infer_n_disagreeing_tuples_name_both():
    with pytest.raises(ValueError, match="kernel_size") as info:
        _args.infer_n({"kernel_size": (2, 2), "stride": (1, 1, 1)}, default=None)
    assert "stride" in str(info.value) and "2" in str(info.value) and "3" in str(info.value)


def test_infer_n_without_any_n_raises():
    with pytest.raises(ValueError, match="spatial dim"):
        _args.infer_n({"kernel_size": 3}, default=None)


# --------------------------------------------------------------------------------------
# spatial_input
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape,sizes,n,batched",
    [
        ((2, 3, 5), {"kernel_size": 2}, 1, True),
        ((2, 3, 5, 5), {"kernel_size": 2}, 2, True),
        ((3, 5, 5), {"kernel_size": (2, 2)}, 2, False),
        ((3, 5), {"kernel_size": (2,)}, 1, False),
        ((1, 1, 2, 2, 2, 2, 2), {"kernel_size": 1}, 5, True),
    ],
    ids=["1d", "2d", "2d_unbatched", "1d_unbatched", "5d"],
)
def test_spatial_input_batched_and_unbatched(shape, sizes, n, batched):
    x = torch.zeros(shape)
    out, got_n, got_batched = _args.spatial_input(x, sizes)
    assert (got_n, got_batched) == (n, batched)
    assert out.shape == (shape if batched else (1, *shape))


def test_spatial_input_wrong_dims_names_input_and_shape():
    with pytest.raises(ValueError, match="input") as info:
        _args.spatial_input(torch.zeros(2, 3, 4, 5), {"kernel_size": (2, 2, 2, 2)})
    assert "(2, 3, 4, 5)" in str(info.value)


def test_spatial_input_rejects_non_tensor():
    with pytest.raises(TypeError, match="input must be a torch.Tensor, got list"):
        _args.spatial_input([[1.0, 2.0]], {"kernel_size": 1})


# --------------------------------------------------------------------------------------
# padding_pairs
# --------------------------------------------------------------------------------------

K3, D1, S1 = (3, 3), (1, 1), (1, 1)


@pytest.mark.parametrize(
    "padding,kernel,dilation,expected",
    [
        (1, (3, 3), (1, 1), ((1, 1), (1, 1))),
        ((0, 2), (3, 3), (1, 1), ((0, 0), (2, 2))),
        (((0, 1), (2, 3)), (3, 3), (1, 1), ((0, 1), (2, 3))),
        ([[0, 1], [2, 3]], (3, 3), (1, 1), ((0, 1), (2, 3))),
        ("valid", (3, 3), (1, 1), ((0, 0), (0, 0))),
        ("same", (3, 5), (1, 1), ((1, 1), (2, 2))),
        ("same", (2, 4), (1, 1), ((0, 1), (1, 2))),  # even: extra element on the high side
        ("same", (2, 3), (3, 2), ((1, 2), (2, 2))),  # total d (k - 1) = 3 and 4
    ],
    ids=["int", "tuple", "pairs", "nested_lists", "valid", "same_odd", "same_even", "same_dilated"],
)
def test_padding_pairs(padding, kernel, dilation, expected):
    assert _args.padding_pairs(padding, 2, kernel, dilation, (1, 1)) == expected


@pytest.mark.parametrize("kernel", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("dilation", [1, 2, 3])
def test_padding_same_matches_torch_conv_same(kernel, dilation):
    # conv1d(padding="same") == conv1d on an explicitly (lo, hi)-padded input
    x = make_tensor((1, 1, 9), torch.float64, seed=1)
    w = make_tensor((1, 1, kernel), torch.float64, seed=2)
    ((lo, hi),) = _args.padding_pairs("same", 1, (kernel,), (dilation,), (1,))
    expected = F.conv1d(x, w, padding="same", dilation=dilation)
    got = F.conv1d(F.pad(x, (lo, hi)), w, dilation=dilation)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.parametrize(
    "padding,exc,match",
    [
        (-1, ValueError, "padding must be >= 0"),
        (((0, -1), (0, 0)), ValueError, "padding must be >= 0"),
        (((0, 1, 2), (0, 0)), ValueError, "padding as per-side pairs"),
        (((0, 1),), ValueError, "padding as per-side pairs must be 2 pairs"),
        ("full", ValueError, 'padding must be an int, a tuple, "same" or "valid", got \'full\''),
        ((1, 2, 3), ValueError, "padding must be an int or a tuple of 2 ints"),
    ],
    ids=["negative", "negative_pair", "triple", "too_few_pairs", "unknown_string", "wrong_length"],
)
def test_padding_pairs_errors(padding, exc, match):
    with pytest.raises(exc, match=match.replace("(", r"\(").replace(")", r"\)")):
        _args.padding_pairs(padding, 2, K3, D1, S1)


def test_padding_same_needs_stride_one():
    with pytest.raises(ValueError, match=r'padding="same" needs stride 1, got stride=\(1, 2\)'):
        _args.padding_pairs("same", 2, K3, D1, (1, 2))


def test_choice():
    assert _args.choice("sum", "reduction", _args.REDUCTIONS) == "sum"
    with pytest.raises(ValueError, match=r"reduction must be one of 'sum', 'mean', got 'max'"):
        _args.choice("max", "reduction", _args.REDUCTIONS)
    with pytest.raises(ValueError, match="padding_mode must be one of"):
        _args.choice(None, "padding_mode", _args.PADDING_MODES)


# --------------------------------------------------------------------------------------
# output sizes, against the shapes torch's ops produce
# --------------------------------------------------------------------------------------

SHAPE_SETTINGS = [
    ((5, 7), (3, 3), (1, 2), (1, 0), (2, 1)),
    ((9, 4), (2, 4), (3, 1), (0, 2), (1, 3)),
    ((1, 1), (1, 1), (1, 1), (0, 0), (1, 1)),
    ((6, 6), (3, 2), (2, 2), (2, 1), (3, 4)),
]


@pytest.mark.parametrize(
    "spatial,kernel,dilation,padding,stride", SHAPE_SETTINGS, ids=lambda v: "x".join(map(str, v))
)
def test_output_size_matches_torch_unfold(spatial, kernel, dilation, padding, stride):
    pads = tuple((p, p) for p in padding)
    blocks = _args.output_size(spatial, kernel, dilation, pads, stride)
    x = torch.zeros(1, 1, *spatial)
    assert F.unfold(x, kernel, dilation, padding, stride).shape[-1] == blocks[0] * blocks[1]
    y = F.conv2d(x, torch.zeros(1, 1, *kernel), None, stride, padding, dilation)
    assert y.shape[2:] == blocks


def test_output_size_per_side_pairs():
    assert _args.output_size((5,), (3,), (1,), ((0, 3),), (2,)) == (3,)
    assert _args.output_size((5,), (3,), (1,), ((3, 0),), (2,)) == (3,)


def test_output_size_kernel_larger_than_padded_input_raises():
    with pytest.raises(ValueError, match="kernel_size") as info:
        _args.output_size((4, 4), (3, 6), (1, 1), ((0, 0), (0, 1)), (1, 1))
    message = str(info.value)
    assert "spatial dim 1" in message and "spans 6" in message and "5" in message


@pytest.mark.parametrize(
    "spatial,kernel,stride,padding,output_padding,dilation",
    [
        ((3, 4), (3, 2), (2, 3), (1, 0), (1, 2), (1, 2)),
        ((5, 2), (2, 2), (1, 1), (0, 0), (0, 0), (1, 1)),
        ((4, 4), (2, 3), (3, 2), (2, 1), (0, 1), (2, 1)),
    ],
    ids=["all_set", "plain", "crop"],
)
def test_transpose_output_size_matches_torch(
    spatial, kernel, stride, padding, output_padding, dilation
):
    got = _args.transpose_output_size(spatial, kernel, stride, padding, output_padding, dilation)
    y = F.conv_transpose2d(
        torch.zeros(1, 1, *spatial),
        torch.zeros(1, 1, *kernel),
        None,
        stride,
        padding,
        output_padding,
        1,
        dilation,
    )
    assert y.shape[2:] == got


def test_transpose_output_size_rejects_large_output_padding():
    with pytest.raises(ValueError, match="output_padding must be smaller than max"):
        _args.transpose_output_size((3,), (3,), (2,), (0,), (2,), (1,))


def test_transpose_output_size_rejects_negative_allows_zero():
    with pytest.raises(ValueError, match="negative"):
        _args.transpose_output_size((1,), (1,), (1,), (1,), (0,), (1,))
    # size 0: torch returns an empty tensor
    assert _args.transpose_output_size((2,), (1,), (1,), (1,), (0,), (1,)) == (0,)


@pytest.mark.parametrize("extra", [0, 1, 2])
def test_output_padding_for_matches_torch_conv_transpose(extra):
    # torch.nn.ConvTranspose1d(stride=3) with output_size picks output_padding = extra
    conv = torch.nn.ConvTranspose1d(1, 1, 3, stride=3, padding=1, bias=False)
    x = torch.zeros(1, 1, 4)
    smallest = conv(x).shape[-1]
    want = smallest + extra
    assert conv(x, output_size=[want]).shape[-1] == want
    assert _args.output_padding_for((4,), (want,), (3,), (3,), (1,), (1,)) == (extra,)
    # batch and channel dims may be included, as torch allows
    assert _args.output_padding_for((4,), (1, 1, want), (3,), (3,), (1,), (1,)) == (extra,)


def test_output_padding_for_unreachable_size():
    with pytest.raises(
        ValueError, match=r"output_size \(13,\) is not reachable: dim 0 must lie in \[10, 12\]"
    ):
        _args.output_padding_for((4,), (13,), (3,), (3,), (1,), (1,))
