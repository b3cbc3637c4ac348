"""Determinism (issue 7): fold, conv, conv_transpose and their backwards give bitwise
identical results across 100 repeated calls, and the same bits with
``torch.use_deterministic_algorithms(True)`` (which must not make them raise).

float32 inputs with overlapping blocks (kernel > stride) make the sums order-sensitive,
so any run-to-run change of summation order would show as a bitwise difference.
"""

from __future__ import annotations

import pytest
import torch

import nfold

REPEATS = 100


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _fold_case(dtype):
    g = _gen(1)
    y = torch.randn(2, 3 * 27, 4 * 3 * 4, generator=g).to(dtype).requires_grad_()
    grad = torch.randn(2, 3, 6, 5, 7, generator=g).to(dtype)

    def run():
        out = nfold.fold(y, (6, 5, 7), 3, stride=(1, 1, 2), padding=(0, 0, 1))
        (gy,) = torch.autograd.grad(out, y, grad)
        return out.detach(), gy

    return run


def _fold_mean_case(dtype):
    g = _gen(2)
    y = torch.randn(1, 2 * 16, 7 * 7, generator=g).to(dtype).requires_grad_()
    grad = torch.randn(1, 2, 10, 10, generator=g).to(dtype)

    def run():
        out = nfold.fold(y, (10, 10), 4, reduction="mean")
        (gy,) = torch.autograd.grad(out, y, grad)
        return out.detach(), gy

    return run


def _conv_case(dtype, **kwargs):
    g = _gen(3)
    x = torch.randn(2, 4, 7, 6, 5, generator=g).to(dtype).requires_grad_()
    w = torch.randn(6, 2, 3, 2, 3, generator=g).to(dtype).requires_grad_()
    b = torch.randn(6, generator=g).to(dtype).requires_grad_()
    out0 = nfold.conv(x, w, b, padding=1, dilation=(1, 2, 1), groups=2, **kwargs)
    grad = torch.randn(out0.shape, generator=g).to(dtype)

    def run():
        out = nfold.conv(x, w, b, padding=1, dilation=(1, 2, 1), groups=2, **kwargs)
        return (out.detach(), *torch.autograd.grad(out, (x, w, b), grad))

    return run


def _conv_transpose_case(dtype, **kwargs):
    g = _gen(4)
    x = torch.randn(2, 4, 4, 3, 5, generator=g).to(dtype).requires_grad_()
    w = torch.randn(4, 3, 3, 3, 2, generator=g).to(dtype).requires_grad_()
    b = torch.randn(6, generator=g).to(dtype).requires_grad_()
    args = dict(stride=(2, 1, 2), padding=1, output_padding=(1, 0, 0), groups=2, **kwargs)
    out0 = nfold.conv_transpose(x, w, b, **args)
    grad = torch.randn(out0.shape, generator=g).to(dtype)

    def run():
        out = nfold.conv_transpose(x, w, b, **args)
        return (out.detach(), *torch.autograd.grad(out, (x, w, b), grad))

    return run


CASES = {
    "fold-float32": lambda: _fold_case(torch.float32),
    "fold-float16": lambda: _fold_case(torch.float16),
    "fold-bfloat16": lambda: _fold_case(torch.bfloat16),
    "fold-mean-float32": lambda: _fold_mean_case(torch.float32),
    "conv-float32": lambda: _conv_case(torch.float32),
    "conv-float32-chunked": lambda: _conv_case(torch.float32, max_workspace_bytes=32768),
    "conv_transpose-float32": lambda: _conv_transpose_case(torch.float32),
    "conv_transpose-float32-chunked": lambda: _conv_transpose_case(
        torch.float32, max_workspace_bytes=32768
    ),
}


@pytest.fixture
def deterministic_flag():
    """Yield a setter for torch.use_deterministic_algorithms; restore the flag after."""
    before = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    yield torch.use_deterministic_algorithms
    torch.use_deterministic_algorithms(before, warn_only=warn_only)


def _assert_bitwise(got, want, what):
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(a, b), f"{what}: result {i} differs bitwise"


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_repeated_calls_are_bitwise_identical(case, deterministic_flag, one_thread):
    deterministic_flag(False)
    run = CASES[case]()
    first = run()
    for i in range(REPEATS - 1):
        _assert_bitwise(run(), first, f"call {i + 2}")
    deterministic_flag(True)
    _assert_bitwise(run(), first, "with use_deterministic_algorithms(True)")


def test_flag_is_restored(deterministic_flag):
    """The fixture above leaves the global flag as it found it (checked by a second test
    module run order-independently: here, directly)."""
    assert torch.are_deterministic_algorithms_enabled() is False
