"""Unfold / Fold / UnfoldTranspose modules and the unfoldNd-compatible names."""

from __future__ import annotations

import copy
import inspect
import pickle

import pytest
import torch
import torch.nn.functional as F

import nfold
from reference import (
    grouped_matmul,
    make_exact,
    make_tensor,
    ref_fold,
    ref_unfold,
    ref_unfold_transpose,
)

F64 = torch.float64

# --------------------------------------------------------------------------------------
# modules = their functions
# --------------------------------------------------------------------------------------

UNFOLD_SETTINGS = [
    pytest.param((1, 2, 9), dict(kernel_size=3, dilation=2, padding=1, stride=2), id="1d"),
    pytest.param(
        (2, 2, 6, 7),
        dict(kernel_size=(2, 3), padding=((1, 0), (0, 2)), stride=(2, 1)),
        id="2d_pairs",
    ),
    pytest.param(
        (1, 2, 4, 4, 5), dict(kernel_size=2, padding=1, padding_mode="reflect"), id="3d_reflect"
    ),
    pytest.param((1, 1, 3, 3, 3, 3), dict(kernel_size=2, padding="same"), id="4d_same"),
    pytest.param(
        (2, 5, 6),
        dict(kernel_size=(2, 2), padding_mode="circular", padding=1),
        id="2d_unbatched_circular",
    ),
]


@pytest.mark.parametrize("shape,kwargs", UNFOLD_SETTINGS)
def test_unfold_module_equals_function(shape, kwargs):
    x = make_tensor(shape, F64, seed=1)
    assert torch.equal(nfold.Unfold(**kwargs)(x), nfold.unfold(x, **kwargs))


FOLD_SETTINGS = [
    pytest.param(
        (1, 6, 4), dict(output_size=(9,), kernel_size=3, dilation=2, padding=1, stride=2), id="1d"
    ),
    pytest.param(
        (2, 12, 21),
        dict(output_size=(6, 7), kernel_size=(2, 3), padding=((1, 0), (0, 2)), stride=(2, 1)),
        id="2d_pairs",
    ),
    pytest.param(
        (1, 16, 40),
        dict(output_size=(4, 5, 6), kernel_size=2, stride=(2, 1, 1), reduction="mean"),
        id="3d_mean",
    ),
    pytest.param((8, 9), dict(output_size=4, kernel_size=2), id="2d_unbatched_ints"),
]


@pytest.mark.parametrize("shape,kwargs", FOLD_SETTINGS)
def test_fold_module_equals_function(shape, kwargs):
    y = make_tensor(shape, F64, seed=2)
    assert torch.equal(nfold.Fold(**kwargs)(y), nfold.fold(y, **kwargs))


TRANSPOSE_SETTINGS = [
    pytest.param((1, 2, 4), dict(kernel_size=3, stride=2, padding=1, output_padding=1), id="1d"),
    pytest.param((2, 2, 3, 4), dict(kernel_size=(2, 3), stride=(2, 1), dilation=(1, 2)), id="2d"),
    pytest.param((1, 1, 2, 2, 3), dict(kernel_size=2, stride=2, padding=(1, 0, 0)), id="3d"),
    pytest.param((2, 3, 2), dict(kernel_size=(2, 2), stride=2), id="2d_unbatched"),
]


@pytest.mark.parametrize("shape,kwargs", TRANSPOSE_SETTINGS)
def test_unfold_transpose_module_equals_function(shape, kwargs):
    x = make_tensor(shape, F64, seed=3)
    assert torch.equal(nfold.UnfoldTranspose(**kwargs)(x), nfold.unfold_transpose(x, **kwargs))


@pytest.mark.parametrize(
    "n,shape,kernel,stride,padding,dilation,output_size",
    [
        (1, (2, 2, 5), (3,), (3,), (1,), (1,), (14,)),
        (1, (2, 2, 5), (3,), (3,), (1,), (1,), (1, 4, 15)),  # with batch and channel dims
        (2, (1, 2, 3, 4), (3, 2), (2, 3), (1, 0), (1, 2), (6, 13)),
        (3, (1, 2, 2, 3, 2), (2, 2, 3), (2, 1, 3), (0, 1, 1), (1, 1, 1), (5, 2, 6)),
    ],
    ids=["1d_op2", "1d_full_size", "2d_op1x2", "3d_op1x0x2"],
)
def test_unfold_transpose_output_size_like_torch_conv_transpose(
    n, shape, kernel, stride, padding, dilation, output_size
):
    # torch.nn.ConvTransposeNd(...)(x, output_size) derives output_padding; the nfold module
    # must produce the im2col of exactly that transposed convolution.
    torch_cls = (torch.nn.ConvTranspose1d, torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d)[
        n - 1
    ]
    conv = torch_cls(shape[1], 4, kernel, stride, padding, dilation=dilation, bias=False, dtype=F64)
    x = make_tensor(shape, F64, seed=4)
    expected = conv(x, output_size=list(output_size))
    module = nfold.UnfoldTranspose(kernel, stride, padding, dilation=dilation)
    cols = module(x, output_size=output_size)
    got = (conv.weight.transpose(0, 1).flatten(1) @ cols).reshape(expected.shape)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    assert torch.equal(module(x), nfold.unfold_transpose(x, kernel, stride, padding, 0, dilation))


def test_unfold_transpose_output_size_unbatched():
    x = make_tensor((2, 5), F64, seed=5)
    module = nfold.UnfoldTranspose((3,), 3, 1)
    assert torch.equal(module(x, output_size=(15,)), module(x[None], output_size=(15,))[0])


@pytest.mark.parametrize(
    "module,expected",
    [
        (nfold.Unfold(3), "Unfold(kernel_size=3)"),
        (
            nfold.Unfold((2, 3), stride=2, padding_mode="reflect"),
            "Unfold(kernel_size=(2, 3), stride=2, padding_mode='reflect')",
        ),
        (nfold.Fold((5, 5), 2), "Fold(output_size=(5, 5), kernel_size=2)"),
        (
            nfold.Fold(5, 2, dilation=2, reduction="mean"),
            "Fold(output_size=5, kernel_size=2, dilation=2, reduction='mean')",
        ),
        (nfold.UnfoldTranspose(3), "UnfoldTranspose(kernel_size=3)"),
        (
            nfold.UnfoldTranspose(3, stride=2, output_padding=1),
            "UnfoldTranspose(kernel_size=3, stride=2, output_padding=1)",
        ),
    ],
    ids=[
        "unfold_default",
        "unfold_set",
        "fold_default",
        "fold_set",
        "transpose_default",
        "transpose_set",
    ],
)
def test_repr_shows_only_non_defaults(module, expected):
    assert repr(module) == expected


@pytest.mark.parametrize(
    "module",
    [nfold.Unfold(2, padding=1), nfold.Fold((4, 4), 2), nfold.UnfoldTranspose(2, stride=2)],
    ids=["Unfold", "Fold", "UnfoldTranspose"],
)
def test_modules_have_no_state_and_copy_and_pickle(module):
    assert list(module.parameters()) == [] and module.state_dict() == {}
    x = make_tensor((1, 4, 4, 4) if not isinstance(module, nfold.Fold) else (1, 4, 9), F64, seed=6)
    expected = module(x)
    for clone in (copy.deepcopy(module), pickle.loads(pickle.dumps(module))):
        assert torch.equal(clone(x), expected)


def test_unfold_then_fold_mean_modules_reconstruct_and_backprop():
    # stitching overlapping patches back: Fold(mean) after Unfold is the identity, and
    # d/dx sum(fold_mean(unfold(x))) = unfold^T(1 / counts) summed per element = 1
    x = make_tensor((2, 1, 3, 3, 3), F64, seed=7).requires_grad_()
    out = nfold.Fold((3, 3, 3), (2, 2, 2), reduction="mean")(nfold.Unfold((2, 2, 2))(x))
    torch.testing.assert_close(out, x, rtol=1e-12, atol=0)
    out.sum().backward()
    torch.testing.assert_close(x.grad, torch.ones_like(x), rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------------------
# unfoldNd-compatible names
# --------------------------------------------------------------------------------------

# unfoldNd 0.2.3's signatures, transcribed from its source
UNFOLDND_SIGNATURES = {
    "unfoldNd": ["input", "kernel_size", ("dilation", 1), ("padding", 0), ("stride", 1)],
    "foldNd": [
        "input",
        "output_size",
        "kernel_size",
        ("dilation", 1),
        ("padding", 0),
        ("stride", 1),
    ],
    "unfold_transposeNd": [
        "input",
        "kernel_size",
        ("stride", 1),
        ("padding", 0),
        ("output_padding", 0),
        ("dilation", 1),
    ],
    "UnfoldNd": ["kernel_size", ("dilation", 1), ("padding", 0), ("stride", 1)],
    "FoldNd": ["output_size", "kernel_size", ("dilation", 1), ("padding", 0), ("stride", 1)],
    "UnfoldTransposeNd": [
        "kernel_size",
        ("stride", 1),
        ("padding", 0),
        ("output_padding", 0),
        ("dilation", 1),
    ],
}


def _params(obj) -> list:
    sig = inspect.signature(obj)
    return [
        p.name if p.default is inspect.Parameter.empty else (p.name, p.default)
        for p in sig.parameters.values()
    ]


@pytest.mark.parametrize("name", sorted(UNFOLDND_SIGNATURES))
def test_compat_name_accepts_unfoldnd_signature(name):
    # same positional order and defaults; nfold may add keywords at the end
    expected = UNFOLDND_SIGNATURES[name]
    got = _params(getattr(nfold, name))
    assert got[: len(expected)] == expected
    assert all(isinstance(extra, tuple) for extra in got[len(expected) :])  # only optional extras


def test_unfold_transpose_nd_forward_takes_output_size():
    assert _params(nfold.UnfoldTransposeNd.forward) == ["self", "input", ("output_size", None)]


def test_import_nfold_as_unfoldnd_migration():
    import nfold as unfoldNd  # the documented migration

    x = make_tensor((2, 3, 6, 7), F64, seed=8)
    # positional arguments in unfoldNd's order: kernel_size, dilation, padding, stride
    cols = unfoldNd.unfoldNd(x, (2, 3), 2, 1, 2)
    assert torch.equal(cols, F.unfold(x, (2, 3), 2, 1, 2))
    assert torch.equal(unfoldNd.UnfoldNd((2, 3), 2, 1, 2)(x), cols)
    folded = unfoldNd.foldNd(cols, (6, 7), (2, 3), 2, 1, 2)
    assert torch.equal(folded, F.fold(cols, (6, 7), (2, 3), 2, 1, 2))
    assert torch.equal(unfoldNd.FoldNd((6, 7), (2, 3), 2, 1, 2)(cols), folded)
    # unfold_transposeNd: kernel_size, stride, padding, output_padding, dilation
    ut = unfoldNd.unfold_transposeNd(x, (2, 3), 2, 1, 1, 1)
    assert torch.equal(ut, ref_unfold_transpose(x, (2, 3), 2, 1, 1, 1))
    module = unfoldNd.UnfoldTransposeNd((2, 3), 2, 1)
    assert torch.equal(module(x, output_size=(11, 14)), ut)


@pytest.mark.parametrize(
    "shape,kernel,dilation,padding,stride",
    [
        ((2, 2, 9), 3, 2, 1, 2),
        ((1, 2, 5, 6), (2, 3), 1, (1, 0), 1),
        ((1, 2, 4, 5, 3), 2, (1, 2, 1), 1, (2, 1, 1)),
    ],
    ids=["1d", "2d", "3d"],
)
def test_compat_equals_unfoldnd_package(shape, kernel, dilation, padding, stride):
    # an extra comparison with the real package (the references above are the main check)
    unfoldNd = pytest.importorskip("unfoldNd")
    x = make_tensor(shape, F64, seed=9)
    cols = nfold.unfoldNd(x, kernel, dilation, padding, stride)
    assert torch.equal(cols, unfoldNd.unfoldNd(x, kernel, dilation, padding, stride))
    assert torch.equal(cols, ref_unfold(x, kernel, dilation, padding, stride))
    out = tuple(shape[2:])
    folded = nfold.foldNd(cols, out, kernel, dilation, padding, stride)
    expected = unfoldNd.foldNd(cols, out, kernel, dilation, padding, stride)
    torch.testing.assert_close(folded, expected, rtol=1e-12, atol=1e-12)  # sum order differs
    y = make_exact(cols.shape, F64, seed=14)  # exact sums: any order gives the same bits
    folded = nfold.foldNd(y, out, kernel, dilation, padding, stride)
    assert torch.equal(folded, unfoldNd.foldNd(y, out, kernel, dilation, padding, stride))
    assert torch.equal(folded, ref_fold(y, out, kernel, dilation, padding, stride))


@pytest.mark.parametrize(
    "shape,kernel,stride,padding,output_padding,dilation",
    [
        ((2, 2, 4), 3, 2, 1, 1, 1),
        ((1, 2, 3, 4), (2, 3), (2, 1), (1, 0), (1, 0), (1, 2)),
        ((1, 1, 2, 3, 2), 2, (1, 2, 2), 0, (0, 1, 0), 1),
    ],
    ids=["1d", "2d", "3d"],
)
def test_compat_unfold_transpose_equals_unfoldnd_package(
    shape, kernel, stride, padding, output_padding, dilation
):
    unfoldNd = pytest.importorskip("unfoldNd")
    x = make_tensor(shape, F64, seed=10)
    got = nfold.unfold_transposeNd(x, kernel, stride, padding, output_padding, dilation)
    assert torch.equal(
        got, unfoldNd.unfold_transposeNd(x, kernel, stride, padding, output_padding, dilation)
    )
    assert torch.equal(
        got, ref_unfold_transpose(x, kernel, stride, padding, output_padding, dilation)
    )


def test_grouped_matmul_helper_is_block_diagonal_product():
    # the helper the conv comparisons rely on, against an explicit block-diagonal matrix
    w = make_tensor((6, 4), F64, seed=12)  # 2 groups: (3, 4) each
    cols = make_tensor((2, 8, 5), F64, seed=13)
    block = torch.block_diag(w[:3], w[3:])
    torch.testing.assert_close(grouped_matmul(w, cols, 2), block @ cols, rtol=1e-12, atol=1e-12)
