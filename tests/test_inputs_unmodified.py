"""Inputs are never modified (issue 7): every op, forward and backward, leaves its inputs
bitwise unchanged, and its output shares no memory with them, except
``sliding_window_view``, documented as a view (checked to be one).

The settings include the degenerate geometries where an implementation is most tempted
to return its input (kernel 1, stride 1, no padding: unfold / fold are then reshapes),
unbatched inputs (squeeze/unsqueeze views), non-contiguous and channels-last inputs.
"""

# ruff: noqa: E501  (one bad call / one setting per line reads as a table)

from __future__ import annotations

import pytest
import torch

import nfold


def _storage_range(t: torch.Tensor) -> tuple[int, int]:
    s = t.untyped_storage()
    return s.data_ptr(), s.data_ptr() + s.nbytes()


def shares_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.untyped_storage().nbytes() == 0 or b.untyped_storage().nbytes() == 0:
        return False
    (a0, a1), (b0, b1) = _storage_range(a), _storage_range(b)
    return a0 < b1 and b0 < a1


def _x(shape, dtype=torch.float64, layout="contiguous"):
    g = torch.Generator().manual_seed(sum(shape))
    t = torch.randint(-3, 4, shape, generator=g).to(dtype)
    if layout == "strided":
        buf = torch.zeros(*shape, 2, dtype=dtype)
        buf[..., 0] = t
        return buf[..., 0]
    if layout == "channels_last" and len(shape) == 4:
        return t.contiguous(memory_format=torch.channels_last)
    return t


# name -> (function of its inputs, list of inputs)
CASES = {
    "unfold-identity": (lambda x: nfold.unfold(x, 1), [_x((2, 3, 4, 5))]),
    "unfold-identity-unbatched": (lambda x: nfold.unfold(x, (1, 1)), [_x((3, 4, 5))]),
    "unfold-1d-k1-strided": (lambda x: nfold.unfold(x, 1), [_x((2, 3, 7), layout="strided")]),
    "unfold-padded": (lambda x: nfold.unfold(x, 3, padding=1), [_x((2, 3, 4, 5))]),
    "unfold-reflect": (lambda x: nfold.unfold(x, 3, padding=1, padding_mode="reflect"), [_x((1, 2, 4, 5))]),
    "unfold-circular-3d": (lambda x: nfold.unfold(x, 2, padding=1, padding_mode="circular"), [_x((1, 2, 3, 4, 3))]),
    "unfold-channels-last": (lambda x: nfold.unfold(x, 2, stride=2), [_x((2, 3, 4, 6), layout="channels_last")]),
    "unfold-int64": (lambda x: nfold.unfold(x, 2), [_x((2, 3, 4, 5), torch.int64)]),
    "unfold-bool": (lambda x: nfold.unfold(x, 1), [_x((2, 3, 4, 5), torch.bool)]),
    "unfold-batch-0": (lambda x: nfold.unfold(x, 2), [_x((0, 3, 4, 5))]),
    "fold-identity": (lambda y: nfold.fold(y, (4, 5), 1), [_x((2, 3, 20))]),
    "fold-identity-unbatched": (lambda y: nfold.fold(y, (4, 5), 1), [_x((3, 20))]),
    "fold-identity-1d": (lambda y: nfold.fold(y, (7,), 1), [_x((2, 3, 7))]),
    "fold-overlapping": (lambda y: nfold.fold(y, (4, 5), 2), [_x((2, 12, 12))]),
    "fold-mean": (lambda y: nfold.fold(y, (4, 5), 2, reduction="mean"), [_x((2, 12, 12))]),
    "fold-mean-identity": (lambda y: nfold.fold(y, (4, 5), 1, reduction="mean"), [_x((2, 3, 20))]),
    "fold-float16": (lambda y: nfold.fold(y, (4, 5), 2), [_x((2, 12, 12), torch.float16)]),
    "fold-int8": (lambda y: nfold.fold(y, (4, 5), 2), [_x((2, 12, 12), torch.int8)]),
    "fold-strided": (lambda y: nfold.fold(y, (4, 5), 1), [_x((2, 3, 20), layout="strided")]),
    "unfold_transpose-identity": (lambda x: nfold.unfold_transpose(x, 1), [_x((2, 3, 4, 5))]),
    "unfold_transpose-strided": (lambda x: nfold.unfold_transpose(x, 3, stride=2, padding=1), [_x((2, 3, 4, 5))]),
    "unfold_transpose-uint8": (lambda x: nfold.unfold_transpose(x, 2), [_x((1, 2, 3, 3), torch.uint8)]),
    "conv-1x1": (lambda x, w: nfold.conv(x, w), [_x((2, 3, 4, 5)), _x((4, 3, 1, 1))]),
    "conv-1x1-identity-weight": (lambda x, w: nfold.conv(x, w), [_x((2, 3, 4, 5)), torch.eye(3).view(3, 3, 1, 1).double()]),
    "conv-bias": (lambda x, w, b: nfold.conv(x, w, b, padding="same"), [_x((2, 3, 4, 5)), _x((4, 3, 3, 3)), _x((4,))]),
    "conv-groups-reflect": (lambda x, w: nfold.conv(x, w, padding=1, groups=3, padding_mode="reflect"), [_x((2, 3, 4, 5)), _x((3, 1, 3, 3))]),
    "conv-chunked": (lambda x, w: nfold.conv(x, w, max_workspace_bytes=2048), [_x((2, 3, 6, 5)), _x((4, 3, 2, 2))]),
    "conv-unbatched": (lambda x, w: nfold.conv(x, w), [_x((3, 4, 5)), _x((4, 3, 1, 1))]),
    "conv_transpose-1x1": (lambda x, w: nfold.conv_transpose(x, w), [_x((2, 3, 4, 5)), _x((3, 4, 1, 1))]),
    "conv_transpose-strided-bias": (lambda x, w, b: nfold.conv_transpose(x, w, b, stride=2, output_padding=1), [_x((2, 3, 4, 5)), _x((3, 2, 3, 3)), _x((2,))]),
    "conv_transpose-chunked": (lambda x, w: nfold.conv_transpose(x, w, stride=2, max_workspace_bytes=2048), [_x((2, 3, 4, 5)), _x((3, 2, 3, 3))]),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_inputs_unchanged_and_not_aliased(case):
    fn, inputs = CASES[case]
    differentiable = all(t.is_floating_point() for t in inputs)
    leaves = [t.requires_grad_() if differentiable else t for t in inputs]
    before = [t.detach().clone() for t in leaves]
    out = fn(*leaves)
    for i, t in enumerate(leaves):
        assert not shares_memory(out, t), f"output aliases input {i}"
    if differentiable and out.numel():
        grad = torch.ones_like(out)
        grad_before = grad.clone()
        grads = torch.autograd.grad(out, leaves, grad, allow_unused=True)
        assert torch.equal(grad, grad_before), "backward modified the incoming gradient"
        for g in grads:
            assert g is None or not shares_memory(g, grad), "a gradient aliases grad_output"
    with torch.no_grad():  # writing into the output must not reach the inputs
        out.detach().zero_() if out.dtype != torch.bool else out.detach().fill_(False)
    for i, (t, b) in enumerate(zip(leaves, before, strict=True)):
        assert torch.equal(t.detach(), b), f"input {i} was modified"


def test_sliding_window_view_is_a_documented_view():
    x = _x((2, 3, 5, 6))
    before = x.clone()
    view = nfold.sliding_window_view(x, (2, 3), stride=(1, 2))
    assert shares_memory(view, x)
    assert view.untyped_storage().data_ptr() == x.untyped_storage().data_ptr()
    assert torch.equal(x, before)
    x[0, 0, 0, 0] = 100.0  # a view sees writes to its input
    assert view[0, 0, 0, 0, 0, 0].item() == 100.0


def test_modules_leave_inputs_unchanged():
    x = _x((2, 3, 4, 5))
    before = x.clone()
    cols = nfold.Unfold(1)(x)
    folded = nfold.Fold((4, 5), 1)(cols)
    conv = nfold.Conv2d(3, 3, 1).double()
    y = conv(x)
    for out in (cols, folded, y):
        assert not shares_memory(out, x)
    assert torch.equal(x, before)
