"""Bad arguments to unfold / fold / unfold_transpose / sliding_window_view and the modules:
each raises ValueError or TypeError before any tensor work, with a message that names
the argument, the value received and what was expected."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch.overrides import TorchFunctionMode

import nfold

X = torch.zeros(1, 2, 5, 5)  # (B, C, H, W)
Y = torch.zeros(1, 8, 16)  # fold input for output (5, 5), kernel 2: C = 2, L = 4 * 4
# inputs are made here, not inside the calls, so that the calls do no tensor work of their own
Y_C6, Y_L15, Y_LONG = torch.zeros(1, 6, 16), torch.zeros(1, 8, 15), Y.long()
X_1x1, X_NUMPY = X[..., :1, :1], X.numpy()
Z_3x4, Z_7, Z_16, Z_4D, Z_0D = (
    torch.zeros(3, 4),
    torch.zeros(7),
    torch.zeros(16),
    torch.zeros(1, 1, 8, 16),
    torch.tensor(1.0),
)


@dataclass(frozen=True)
class Bad:
    id: str
    call: Callable[[], object]
    exc: type[Exception]
    needles: tuple[str, ...]  # every one must appear in the message; the first is the argument


BAD = [
    # ---- kernel_size / stride / dilation <= 0 -------------------------------------------
    Bad(
        "unfold_kernel_0", lambda: nfold.unfold(X, 0), ValueError, ("kernel_size", "got 0", ">= 1")
    ),
    Bad(
        "unfold_kernel_neg_in_tuple",
        lambda: nfold.unfold(X, (2, -1)),
        ValueError,
        ("kernel_size", "(2, -1)", ">= 1"),
    ),
    Bad(
        "unfold_stride_0",
        lambda: nfold.unfold(X, 2, stride=0),
        ValueError,
        ("stride", "got 0", ">= 1"),
    ),
    Bad(
        "unfold_dilation_0",
        lambda: nfold.unfold(X, 2, dilation=(1, 0)),
        ValueError,
        ("dilation", "(1, 0)", ">= 1"),
    ),
    Bad(
        "fold_kernel_0",
        lambda: nfold.fold(Y, (5, 5), 0),
        ValueError,
        ("kernel_size", "got 0", ">= 1"),
    ),
    Bad(
        "fold_stride_neg",
        lambda: nfold.fold(Y, (5, 5), 2, stride=-1),
        ValueError,
        ("stride", "-1", ">= 1"),
    ),
    Bad(
        "fold_dilation_0",
        lambda: nfold.fold(Y, (5, 5), 2, dilation=0),
        ValueError,
        ("dilation", "got 0", ">= 1"),
    ),
    Bad(
        "fold_output_size_neg",
        lambda: nfold.fold(Y, (5, -5), 2),
        ValueError,
        ("output_size", "(5, -5)", ">= 1"),
    ),
    Bad(
        "unfold_transpose_kernel_0",
        lambda: nfold.unfold_transpose(X, 0),
        ValueError,
        ("kernel_size", "got 0", ">= 1"),
    ),
    Bad(
        "unfold_transpose_stride_0",
        lambda: nfold.unfold_transpose(X, 2, stride=(0, 1)),
        ValueError,
        ("stride", "(0, 1)", ">= 1"),
    ),
    Bad(
        "unfold_transpose_dilation_0",
        lambda: nfold.unfold_transpose(X, 2, dilation=0),
        ValueError,
        ("dilation", "got 0", ">= 1"),
    ),
    Bad(
        "window_view_kernel_0",
        lambda: nfold.sliding_window_view(X, 0),
        ValueError,
        ("kernel_size", "got 0", ">= 1"),
    ),
    Bad(
        "window_view_stride_0",
        lambda: nfold.sliding_window_view(X, 2, stride=0),
        ValueError,
        ("stride", "got 0", ">= 1"),
    ),
    # ---- wrong types -----------------------------------------------------------------------
    Bad(
        "unfold_kernel_float",
        lambda: nfold.unfold(X, 2.0),
        TypeError,
        ("kernel_size", "2.0", "int"),
    ),
    Bad(
        "unfold_kernel_bool",
        lambda: nfold.unfold(X, True),
        TypeError,
        ("kernel_size", "True", "int"),
    ),
    Bad(
        "unfold_padding_float",
        lambda: nfold.unfold(X, 2, padding=1.5),
        TypeError,
        ("padding", "1.5", "int"),
    ),
    Bad(
        "fold_stride_float_in_tuple",
        lambda: nfold.fold(Y, (5, 5), 2, stride=(1, 1.0)),
        TypeError,
        ("stride", "(1, 1.0)", "ints"),
    ),
    # ---- negative padding ------------------------------------------------------------------
    Bad(
        "unfold_padding_neg",
        lambda: nfold.unfold(X, 2, padding=-1),
        ValueError,
        ("padding", "-1", ">= 0"),
    ),
    Bad(
        "unfold_padding_neg_pair",
        lambda: nfold.unfold(X, 2, padding=((0, 1), (-1, 0))),
        ValueError,
        ("padding", "-1", ">= 0"),
    ),
    Bad(
        "fold_padding_neg",
        lambda: nfold.fold(Y, (5, 5), 2, padding=(0, -2)),
        ValueError,
        ("padding", "(0, -2)", ">= 0"),
    ),
    Bad(
        "unfold_transpose_padding_neg",
        lambda: nfold.unfold_transpose(X, 2, padding=-1),
        ValueError,
        ("padding", "-1", ">= 0"),
    ),
    Bad(
        "unfold_transpose_output_padding_neg",
        lambda: nfold.unfold_transpose(X, 2, output_padding=-1),
        ValueError,
        ("output_padding", "-1", ">= 0"),
    ),
    # ---- tuples of the wrong length --------------------------------------------------------
    Bad(
        "unfold_tuples_disagree",
        lambda: nfold.unfold(X, (2, 2), stride=(1, 1, 1)),
        ValueError,
        ("kernel_size", "stride", "has 2", "has 3"),
    ),
    Bad(
        "unfold_tuple_longer_than_input",
        lambda: nfold.unfold(X, (2, 2, 2, 2)),
        ValueError,
        ("kernel_size", "(2, 2, 2, 2)", "(1, 2, 5, 5)", "6 dims"),
    ),
    Bad(
        "unfold_pairs_wrong_count",
        lambda: nfold.unfold(X, (2, 2), padding=((1, 1),)),
        ValueError,
        ("padding", "kernel_size has 2", "padding has 1"),
    ),
    Bad(
        "unfold_pairs_fix_n",
        lambda: nfold.unfold(X, 2, padding=((1, 1),)),
        ValueError,
        ("padding", "((1, 1),)", "3 dims", "(1, 2, 5, 5)"),
    ),
    Bad(
        "unfold_pairs_triple",
        lambda: nfold.unfold(X, 2, padding=((1, 1, 1), (0, 0))),
        ValueError,
        ("padding", "((1, 1, 1), (0, 0))", "pairs"),
    ),
    Bad(
        "fold_tuples_disagree",
        lambda: nfold.fold(Y, (5, 5), (2, 2, 2)),
        ValueError,
        ("output_size", "kernel_size", "has 2", "has 3"),
    ),
    Bad(
        "unfold_transpose_tuples_disagree",
        lambda: nfold.unfold_transpose(X, (2, 2), output_padding=(0,)),
        ValueError,
        ("kernel_size", "output_padding", "has 2", "has 1"),
    ),
    Bad(
        "window_view_tuples_disagree",
        lambda: nfold.sliding_window_view(X, (2,), dilation=(1, 1)),
        ValueError,
        ("kernel_size", "dilation", "has 1", "has 2"),
    ),
    # ---- unknown strings -------------------------------------------------------------------
    Bad(
        "unfold_padding_mode",
        lambda: nfold.unfold(X, 2, padding=1, padding_mode="mirror"),
        ValueError,
        ("padding_mode", "'mirror'", "'reflect'"),
    ),
    Bad(
        "unfold_padding_string",
        lambda: nfold.unfold(X, 2, padding="full"),
        ValueError,
        ("padding", "'full'", '"same"'),
    ),
    Bad(
        "unfold_same_with_stride",
        lambda: nfold.unfold(X, 3, padding="same", stride=2),
        ValueError,
        ("padding", "same", "stride", "(2, 2)"),
    ),
    Bad(
        "unfold_transpose_padding_string",
        lambda: nfold.unfold_transpose(X, 2, padding="same"),
        TypeError,
        ("padding", "'same'", "int"),
    ),
    Bad(
        "fold_reduction",
        lambda: nfold.fold(Y, (5, 5), 2, reduction="max"),
        ValueError,
        ("reduction", "'max'", "'mean'"),
    ),
    Bad(
        "fold_mean_of_integers",
        lambda: nfold.fold(Y_LONG, (5, 5), 2, reduction="mean"),
        TypeError,
        ("reduction", "torch.int64", "floating"),
    ),
    # ---- padding too large for the padding mode ----------------------------------------------
    Bad(
        "unfold_reflect_padding_eq_size",
        lambda: nfold.unfold(X, 2, padding=(0, 5), padding_mode="reflect"),
        ValueError,
        ("padding", "reflect", "5", "smaller than"),
    ),
    Bad(
        "unfold_reflect_pair_too_big",
        lambda: nfold.unfold(X, 2, padding=((0, 0), (6, 0)), padding_mode="reflect"),
        ValueError,
        ("padding", "reflect", "6", "spatial dim 1"),
    ),
    Bad(
        "unfold_circular_padding_gt_size",
        lambda: nfold.unfold(X, 2, padding=6, padding_mode="circular"),
        ValueError,
        ("padding", "circular", "6", "at most"),
    ),
    # ---- kernel does not fit ----------------------------------------------------------------
    Bad(
        "unfold_kernel_bigger_than_input",
        lambda: nfold.unfold(X, (2, 6)),
        ValueError,
        ("kernel_size", "(2, 6)", "spatial dim 1", "5"),
    ),
    Bad(
        "unfold_dilated_kernel_too_big",
        lambda: nfold.unfold(X, 3, dilation=3),
        ValueError,
        ("kernel_size", "spans 7", "5"),
    ),
    Bad(
        "fold_kernel_bigger_than_output",
        lambda: nfold.fold(Y, (5, 1), 2),
        ValueError,
        ("kernel_size", "spans 2", "spatial dim 1"),
    ),
    Bad(
        "window_view_kernel_too_big",
        lambda: nfold.sliding_window_view(X, 6),
        ValueError,
        ("kernel_size", "(6, 6)", "5"),
    ),
    # ---- fold input inconsistent with the geometry ----------------------------------------
    Bad(
        "fold_channels_not_divisible",
        lambda: nfold.fold(Y_C6, (5, 5), 2),
        ValueError,
        ("kernel_size", "(6)", "divisible", "4"),
    ),
    Bad(
        "fold_blocks_mismatch",
        lambda: nfold.fold(Y_L15, (5, 5), 2),
        ValueError,
        ("output_size", "(15)", "16", "(5, 5)"),
    ),
    Bad(
        "fold_blocks_mismatch_stride",
        lambda: nfold.fold(Y, (5, 5), 2, stride=2),
        ValueError,
        ("output_size", "(16)", "number of blocks 4"),
    ),
    # ---- transposed geometry ----------------------------------------------------------------
    Bad(
        "unfold_transpose_output_padding_too_big",
        lambda: nfold.unfold_transpose(X, 2, stride=2, output_padding=2),
        ValueError,
        ("output_padding", "(2, 2)", "smaller than max(stride, dilation)"),
    ),
    Bad(
        "unfold_transpose_output_not_positive",
        lambda: nfold.unfold_transpose(X_1x1, 1, padding=1),
        ValueError,
        ("padding", "negative", "(-1, -1)"),
    ),
    # ---- input -----------------------------------------------------------------------------
    Bad(
        "unfold_input_list",
        lambda: nfold.unfold([[1.0]], 2),
        TypeError,
        ("input", "torch.Tensor", "list"),
    ),
    Bad(
        "fold_input_none",
        lambda: nfold.fold(None, (5, 5), 2),
        TypeError,
        ("input", "torch.Tensor", "NoneType"),
    ),
    Bad(
        "unfold_transpose_input_ndarray",
        lambda: nfold.unfold_transpose(X_NUMPY, 2),
        TypeError,
        ("input", "torch.Tensor", "ndarray"),
    ),
    Bad(
        "window_view_input_float",
        lambda: nfold.sliding_window_view(1.0, 2),
        TypeError,
        ("input", "torch.Tensor", "float"),
    ),
    Bad(
        "unfold_input_2d_ints_only",
        lambda: nfold.unfold(Z_3x4, 2),
        ValueError,
        ("input", "at least 3 dims", "(3, 4)"),
    ),
    Bad(
        "unfold_input_1d_for_1_spatial_dim",
        lambda: nfold.unfold(Z_7, (2,)),
        ValueError,
        ("input", "3 dims", "(7,)"),
    ),
    Bad(
        "fold_input_1d",
        lambda: nfold.fold(Z_16, (5, 5), 2),
        ValueError,
        ("input", "3 dims", "(16,)"),
    ),
    Bad(
        "fold_input_4d",
        lambda: nfold.fold(Z_4D, (5, 5), 2),
        ValueError,
        ("input", "3 dims", "(1, 1, 8, 16)"),
    ),
    Bad(
        "unfold_transpose_input_0d",
        lambda: nfold.unfold_transpose(Z_0D, 2),
        ValueError,
        ("input", "at least 3 dims", "()"),
    ),
    Bad(
        "window_view_input_2d",
        lambda: nfold.sliding_window_view(Z_3x4, 2),
        ValueError,
        ("input", "at least 3 dims", "(3, 4)"),
    ),
    # ---- modules validate in __init__, before seeing an input --------------------------------
    Bad("Unfold_kernel_0", lambda: nfold.Unfold(0), ValueError, ("kernel_size", "got 0")),
    Bad(
        "Unfold_stride_tuple_0",
        lambda: nfold.Unfold(2, stride=(1, 0)),
        ValueError,
        ("stride", "(1, 0)"),
    ),
    Bad("Unfold_padding_neg", lambda: nfold.Unfold(2, padding=-1), ValueError, ("padding", "-1")),
    Bad(
        "Unfold_padding_mode",
        lambda: nfold.Unfold(2, padding_mode="wrap"),
        ValueError,
        ("padding_mode", "'wrap'"),
    ),
    Bad(
        "Unfold_tuples_disagree",
        lambda: nfold.Unfold((2, 2), dilation=(1,)),
        ValueError,
        ("kernel_size", "dilation"),
    ),
    Bad(
        "Fold_reduction",
        lambda: nfold.Fold((5, 5), 2, reduction="avg"),
        ValueError,
        ("reduction", "'avg'"),
    ),
    Bad(
        "Fold_output_size_neg",
        lambda: nfold.Fold((5, -1), 2),
        ValueError,
        ("output_size", "(5, -1)"),
    ),
    Bad("Fold_kernel_float", lambda: nfold.Fold((5, 5), 2.5), TypeError, ("kernel_size", "2.5")),
    Bad(
        "UnfoldTranspose_output_padding_neg",
        lambda: nfold.UnfoldTranspose(2, output_padding=-1),
        ValueError,
        ("output_padding", "-1"),
    ),
    Bad(
        "UnfoldTranspose_dilation_0",
        lambda: nfold.UnfoldTranspose(2, dilation=0),
        ValueError,
        ("dilation", "got 0"),
    ),
    Bad(
        "UnfoldTranspose_unreachable_output_size",
        lambda: nfold.UnfoldTranspose(2, stride=2)(X, output_size=(20, 20)),
        ValueError,
        ("output_size", "(20, 20)", "[10, 11]"),
    ),
    Bad(
        "UnfoldTranspose_output_size_wrong_length",
        lambda: nfold.UnfoldTranspose(2, stride=2)(X, output_size=(10,)),
        ValueError,
        ("output_size", "(10,)", "2 ints"),
    ),
    Bad(
        "Unfold_forward_kernel_too_big",
        lambda: nfold.Unfold(6)(X),
        ValueError,
        ("kernel_size", "(6, 6)"),
    ),
    Bad(
        "Fold_forward_channels",
        lambda: nfold.Fold((5, 5), 2)(Y_C6),
        ValueError,
        ("kernel_size", "(6)", "divisible"),
    ),
]


@pytest.mark.parametrize("bad", [pytest.param(b, id=b.id) for b in BAD])
def test_bad_argument_raises_with_informative_message(bad):
    with pytest.raises(bad.exc, match=bad.needles[0]) as info:
        bad.call()
    message = str(info.value)
    missing = [n for n in bad.needles if n not in message]
    assert not missing, f"message {message!r} lacks {missing}"


class _Recorder(TorchFunctionMode):
    """Records the name of every torch function / Tensor method called."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: set[str] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls.add(getattr(func, "__name__", repr(func)))
        return func(*args, **(kwargs or {}))


# attribute reads (shape, dtype: "__get__"), dim() and the unbatched unsqueeze view are not work
_NOT_WORK = {"__get__", "dim", "size", "unsqueeze", "is_floating_point", "is_complex"}


@pytest.mark.parametrize("bad", [pytest.param(b, id=b.id) for b in BAD if b.exc is ValueError])
def test_validation_happens_before_any_tensor_work(bad):
    with _Recorder() as recorder, pytest.raises(bad.exc):
        bad.call()
    assert recorder.calls <= _NOT_WORK, f"work done before raising: {recorder.calls - _NOT_WORK}"


def test_recorder_sees_work_on_a_valid_call():
    # the check above can fail: a valid call does record copies / allocations
    with _Recorder() as recorder:
        nfold.unfold(X, 2)
        nfold.fold(Y, (5, 5), 2)
    assert recorder.calls - _NOT_WORK


def test_bad_argument_does_not_touch_input():
    x = torch.arange(50.0).view(1, 2, 5, 5)
    before = x.clone()
    with pytest.raises(ValueError):
        nfold.unfold(x, 2, padding=5, padding_mode="reflect")
    assert torch.equal(x, before) and x._version == 0


def test_fold_output_size_too_small_names_output_size() -> None:
    """Issue 11 §4: fold's output_size, not an 'input spatial size', is what is too small."""
    with pytest.raises(ValueError, match=r"the output_size \(2, 5\)") as info:
        nfold.fold(torch.randn(1, 9, 3), (2, 5), 3)  # (an output_size of 0 is rejected first)
    assert "input" not in str(info.value)
