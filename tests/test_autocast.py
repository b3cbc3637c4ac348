"""torch.autocast("cpu", dtype=torch.bfloat16): nfold's conv layers behave as torch's.

torch's conv is on autocast's lower-precision list: float32 operands (input, weight,
bias) are cast to bfloat16 and the output is bfloat16, whatever mix of float32 and
bfloat16 the operands come in (e.g. a bfloat16 activation from the previous layer and
float32 parameters). nfold's conv goes through matmul, also on that list; these tests pin
that the output dtype equals torch's and the values agree to bfloat16 round-off. The
data-movement ops (unfold / fold) are on no list: like torch's, they keep the dtype.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

import nfold

AUTOCAST_DTYPE = torch.bfloat16


def _autocast() -> torch.autocast:
    return torch.autocast("cpu", dtype=AUTOCAST_DTYPE)


def _assert_bf16_close(got: torch.Tensor, want: torch.Tensor) -> None:
    """Same dtype and shape; values equal to a few bfloat16 ulps of the output's scale
    (both sides round products/sums to bfloat16, in different orders)."""
    assert got.dtype == want.dtype
    scale = want.detach().abs().max().float().item()
    torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=2e-2 * scale)


# name -> (nfold module factory, torch module factory, input shape); same geometry.
LAYERS: dict[str, tuple[Callable[[], torch.nn.Module], Callable[[], torch.nn.Module], tuple]] = {
    "Conv1d": (
        lambda: nfold.Conv1d(4, 6, 3, padding=1, groups=2),
        lambda: torch.nn.Conv1d(4, 6, 3, padding=1, groups=2),
        (2, 4, 9),
    ),
    "Conv2d": (
        lambda: nfold.Conv2d(3, 5, (3, 2), stride=2, padding="valid"),
        lambda: torch.nn.Conv2d(3, 5, (3, 2), stride=2, padding="valid"),
        (2, 3, 8, 7),
    ),
    "Conv3d_no_bias": (
        lambda: nfold.Conv3d(2, 4, 2, dilation=(1, 2, 1), bias=False),
        lambda: torch.nn.Conv3d(2, 4, 2, dilation=(1, 2, 1), bias=False),
        (1, 2, 4, 5, 3),
    ),
    "ConvNd_3d_reflect": (
        lambda: nfold.ConvNd(2, 3, (3, 3, 3), padding=1, padding_mode="reflect"),
        lambda: torch.nn.Conv3d(2, 3, 3, padding=1, padding_mode="reflect"),
        (1, 2, 4, 4, 4),
    ),
    "ConvTranspose1d": (
        lambda: nfold.ConvTranspose1d(4, 2, 3, stride=2, groups=2),
        lambda: torch.nn.ConvTranspose1d(4, 2, 3, stride=2, groups=2),
        (2, 4, 6),
    ),
    "ConvTranspose2d": (
        lambda: nfold.ConvTranspose2d(3, 4, 3, stride=2, padding=1, output_padding=1),
        lambda: torch.nn.ConvTranspose2d(3, 4, 3, stride=2, padding=1, output_padding=1),
        (2, 3, 4, 5),
    ),
    "ConvTransposeNd_3d": (
        lambda: nfold.ConvTransposeNd(2, 3, (2, 2, 2), stride=(2, 1, 1)),
        lambda: torch.nn.ConvTranspose3d(2, 3, 2, stride=(2, 1, 1)),
        (1, 2, 3, 3, 3),
    ),
}


def _twins(name: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    make_ours, make_theirs, _ = LAYERS[name]
    theirs = make_theirs()
    ours = make_ours()
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


@pytest.mark.parametrize("name", list(LAYERS))
def test_layer_output_dtype_and_values_match_torch(name: str) -> None:
    ours, theirs = _twins(name)
    x = torch.randn(*LAYERS[name][2])
    with _autocast():
        want = theirs(x)
        got = ours(x)
    assert want.dtype == AUTOCAST_DTYPE
    _assert_bf16_close(got, want)


@pytest.mark.parametrize("name", list(LAYERS))
def test_layer_bfloat16_input_float32_parameters(name: str) -> None:
    """The input of a layer deep in an autocast model is already bfloat16."""
    ours, theirs = _twins(name)
    x = torch.randn(*LAYERS[name][2]).to(AUTOCAST_DTYPE)
    with _autocast():
        want = theirs(x)
        got = ours(x)
    _assert_bf16_close(got, want)


@pytest.mark.parametrize("name", ["Conv2d", "ConvTranspose2d"])
def test_backward_under_autocast_matches_torch(name: str) -> None:
    """Gradients flow back to the float32 parameters, in float32, as for torch's layer."""
    ours, theirs = _twins(name)
    x = torch.randn(*LAYERS[name][2])
    for module in (ours, theirs):
        with _autocast():
            loss = module(x).float().square().mean()
        loss.backward()
    for (key, p_ours), p_theirs in zip(ours.named_parameters(), theirs.parameters(), strict=True):
        assert p_ours.grad is not None and p_theirs.grad is not None, key
        assert p_ours.grad.dtype == p_theirs.grad.dtype == torch.float32, key
        scale = p_theirs.grad.abs().max().item()
        torch.testing.assert_close(p_ours.grad, p_theirs.grad, rtol=5e-2, atol=5e-2 * scale)


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
@pytest.mark.parametrize("n", [1, 2, 3])
def test_padding_modes_train_under_autocast(n: int, mode: str) -> None:
    """Autocast runs torch's reflect / replicate pads in float32; the padded input of the
    "gemm" conv keeps the operands' dtype, so backward multiplies like dtypes: gradients
    in float32 like torch's layer, to bfloat16 round-off."""
    theirs = getattr(torch.nn, f"Conv{n}d")(3, 4, 3, padding=1, padding_mode=mode)
    ours = getattr(nfold, f"Conv{n}d")(3, 4, 3, padding=1, padding_mode=mode)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 3, *(5,) * n)
    outs = []
    for module in (ours, theirs):
        with _autocast():
            out = module(x)
        out.float().square().mean().backward()
        outs.append(out)
    _assert_bf16_close(outs[0], outs[1])
    for p_ours, p_theirs in zip(ours.parameters(), theirs.parameters(), strict=True):
        assert p_ours.grad is not None and p_ours.grad.dtype == p_theirs.grad.dtype
        scale = p_theirs.grad.abs().max().item()
        torch.testing.assert_close(p_ours.grad, p_theirs.grad, rtol=5e-2, atol=5e-2 * scale)


def test_sequential_model_under_autocast() -> None:
    """Layer after layer: bfloat16 activations meet float32 weights; same dtypes as torch."""
    torch.manual_seed(0)
    theirs = torch.nn.Sequential(
        torch.nn.Conv2d(2, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.ConvTranspose2d(4, 3, 2, stride=2),
        torch.nn.ReLU(),
        torch.nn.Conv2d(3, 1, 1),
    )
    ours = nfold.convert(theirs)
    x = torch.randn(2, 2, 6, 5)
    with _autocast():
        want = theirs(x)
        got = ours(x)
    _assert_bf16_close(got, want)


@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no_bias"])
def test_functional_conv_and_conv_transpose(with_bias: bool) -> None:
    x = torch.randn(2, 4, 6, 7)
    w, wt = torch.randn(6, 2, 3, 3), torch.randn(4, 3, 2, 2)
    b, bt = (torch.randn(6), torch.randn(6)) if with_bias else (None, None)
    with _autocast():
        _assert_bf16_close(nfold.conv(x, w, b, groups=2), F.conv2d(x, w, b, groups=2))
        _assert_bf16_close(
            nfold.conv_transpose(x, wt, bt, stride=2, groups=2),
            F.conv_transpose2d(x, wt, bt, stride=2, groups=2),
        )


def test_conv_4d_under_autocast_gives_bfloat16() -> None:
    """N = 4 has no torch op: the output dtype is the one torch gives for N <= 3, and the
    values are those of float32 nfold to bfloat16 round-off."""
    x, w, b = torch.randn(1, 2, 4, 3, 3, 4), torch.randn(3, 2, 2, 2, 2, 2), torch.randn(3)
    want = nfold.conv(x, w, b)
    with _autocast():
        got = nfold.conv(x, w, b)
    assert got.dtype == AUTOCAST_DTYPE
    scale = want.abs().max().item()
    torch.testing.assert_close(got.float(), want, rtol=2e-2, atol=2e-2 * scale)


def test_float64_is_left_alone_as_by_torch() -> None:
    """Autocast casts only float32 (and lower) operands: float64 stays float64."""
    x, w = (
        torch.randn(1, 2, 5, 5, dtype=torch.float64),
        torch.randn(3, 2, 3, 3, dtype=torch.float64),
    )
    with _autocast():
        want = F.conv2d(x, w)
        got = nfold.conv(x, w)
    assert got.dtype == want.dtype == torch.float64
    torch.testing.assert_close(got, want)


def test_data_movement_keeps_dtype_like_torch() -> None:
    x = torch.randn(2, 3, 6, 5)
    with _autocast():
        cols = nfold.unfold(x, 3, padding=1)
        want_cols = F.unfold(x, 3, padding=1)
        folded = nfold.fold(cols, (6, 5), 3, padding=1)
        want_folded = F.fold(want_cols, (6, 5), 3, padding=1)
    assert cols.dtype == want_cols.dtype == torch.float32
    low = x.to(AUTOCAST_DTYPE)
    with _autocast():  # torch's reflect pad would be float32 under autocast; ours keeps it
        for mode in ("reflect", "replicate", "circular"):
            assert nfold.unfold(low, 3, padding=1, padding_mode=mode).dtype == AUTOCAST_DTYPE
    assert folded.dtype == want_folded.dtype == torch.float32
    torch.testing.assert_close(cols, want_cols, rtol=0, atol=0)
    torch.testing.assert_close(folded, want_folded, rtol=0, atol=0)
