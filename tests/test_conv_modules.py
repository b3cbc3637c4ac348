"""Conv modules: same parameters, init, state_dict, repr and results as torch's."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import nfold

F64 = torch.float64
pytestmark = pytest.mark.filterwarnings("ignore:Using padding=.same.:UserWarning")
NFOLD_TWINS = {
    nn.Conv1d: nfold.Conv1d, nn.Conv2d: nfold.Conv2d, nn.Conv3d: nfold.Conv3d,
    nn.ConvTranspose1d: nfold.ConvTranspose1d, nn.ConvTranspose2d: nfold.ConvTranspose2d,
    nn.ConvTranspose3d: nfold.ConvTranspose3d,
}  # fmt: skip
TORCH = {
    (n, t): getattr(nn, f"Conv{'Transpose' if t else ''}{n}d") for n in (1, 2, 3) for t in (0, 1)
}

INIT_SETTINGS = {
    "plain": dict(in_channels=3, out_channels=4, kernel_size=3),
    "grouped_no_bias": dict(in_channels=4, out_channels=6, kernel_size=2, groups=2, bias=False),
    "depthwise_strided": dict(in_channels=4, out_channels=8, kernel_size=3, groups=4, stride=2),
}


def _ids():
    return [pytest.param(n, t, s, id=f"{n}d-{'T' if t else 'conv'}-{s}")
            for n in (1, 2, 3) for t in (0, 1) for s in INIT_SETTINGS]  # fmt: skip


def _generic(n: int, transposed: int, **kw) -> nn.Module:
    return (nfold.ConvTransposeNd if transposed else nfold.ConvNd)(ndim=n, **kw)


@pytest.mark.parametrize("n, transposed, setting", _ids())
def test_same_init_as_torch_from_same_seed(n: int, transposed: int, setting: str) -> None:
    kw = INIT_SETTINGS[setting]
    torch.manual_seed(123)
    ref = TORCH[n, transposed](**kw)
    for make in (
        lambda: NFOLD_TWINS[TORCH[n, transposed]](**kw),
        lambda: _generic(n, transposed, **kw),
    ):
        torch.manual_seed(123)
        m = make()
        assert m.state_dict().keys() == ref.state_dict().keys()
        for key, value in ref.state_dict().items():
            assert torch.equal(m.state_dict()[key], value), key
        assert m.extra_repr() == ref.extra_repr()


@pytest.mark.parametrize("transposed", [0, 1], ids=["ConvNd", "ConvTransposeNd"])
def test_init_for_n_above_3_follows_torch_rule(transposed: int) -> None:
    # kaiming_uniform_(a=sqrt(5)) gives bound sqrt(6 / (1 + 5)) * sqrt(3 / fan_in) = 1/sqrt(fan_in),
    # drawn for the weight, then the bias from U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    torch.manual_seed(5)
    m = _generic(4, transposed, in_channels=4, out_channels=6, kernel_size=(2, 3, 1, 2), groups=2)
    shape = (4, 3, 2, 3, 1, 2) if transposed else (6, 2, 2, 3, 1, 2)
    fan_in = shape[1] * 12
    bound = 1 / fan_in**0.5
    torch.manual_seed(5)
    w = torch.empty(shape).uniform_(-bound, bound)
    b = torch.empty(6).uniform_(-bound, bound)
    assert m.weight.shape == shape
    torch.testing.assert_close(m.weight.detach(), w, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(m.bias.detach(), b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate", "circular"])
@pytest.mark.parametrize("padding", [1, "same"], ids=["pad1", "same"])
def test_conv_modules_match_torch(n: int, mode: str, padding) -> None:
    kw = dict(in_channels=4, out_channels=6, kernel_size=(3, 2, 2)[:n], padding=padding,
              padding_mode=mode, groups=2, dtype=F64)  # fmt: skip
    torch.manual_seed(0)
    ref = TORCH[n, 0](**kw)
    torch.manual_seed(0)
    ours = NFOLD_TWINS[TORCH[n, 0]](**kw)
    torch.manual_seed(0)
    generic = nfold.ConvNd(**kw)
    x = torch.randn(2, 4, *(6, 5, 4)[:n], dtype=F64)
    want = ref(x)
    for m in (ours, generic):
        torch.testing.assert_close(m(x), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_conv_transpose_modules_match_torch_with_output_size(n: int) -> None:
    kw = dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=1, groups=2,
              output_padding=1, dtype=F64)  # fmt: skip
    torch.manual_seed(0)
    ref = TORCH[n, 1](**kw)
    torch.manual_seed(0)
    ours = NFOLD_TWINS[TORCH[n, 1]](**kw)
    torch.manual_seed(0)
    generic = nfold.ConvTransposeNd(ndim=n, **kw)
    x = torch.randn(2, 4, *(4, 3, 2)[:n], dtype=F64)
    for m in (ours, generic):
        torch.testing.assert_close(m(x), ref(x), rtol=1e-12, atol=1e-12)
        size = [2 * s - 1 for s in x.shape[2:]]  # smallest reachable: overrides output_padding=1
        torch.testing.assert_close(
            m(x, output_size=size), ref(x, output_size=size), rtol=1e-12, atol=1e-12
        )
        torch.testing.assert_close(
            m(x[0], output_size=size), ref(x[0], output_size=size), rtol=1e-12, atol=1e-12
        )
        with pytest.raises(ValueError, match="output_size"):
            m(x, output_size=[2 * s + 5 for s in x.shape[2:]])


def test_isinstance_of_torch_classes() -> None:
    for torch_cls, ours in NFOLD_TWINS.items():
        assert isinstance(ours(2, 2, 1), torch_cls)


@pytest.mark.parametrize("transposed", [0, 1], ids=["conv", "transpose"])
def test_state_dict_round_trip_both_ways(transposed: int) -> None:
    kw = dict(in_channels=4, out_channels=6, kernel_size=(3, 2), groups=2)
    ref = TORCH[2, transposed](**kw)
    for ours in (NFOLD_TWINS[TORCH[2, transposed]](**kw), _generic(2, transposed, **kw)):
        ours.load_state_dict(ref.state_dict())
        for k, v in ref.state_dict().items():
            assert torch.equal(ours.state_dict()[k], v)
        back = TORCH[2, transposed](**kw)
        with torch.no_grad():
            for p in ours.parameters():
                p.add_(1)
        back.load_state_dict(ours.state_dict())
        for k, v in ours.state_dict().items():
            assert torch.equal(back.state_dict()[k], v)


def test_generic_modules_any_n() -> None:
    m = nfold.ConvNd(2, 4, (2, 1, 2, 1, 2), padding="same", dtype=F64)
    assert m(torch.randn(1, 2, 3, 3, 3, 3, 3, dtype=F64)).shape == (1, 4, 3, 3, 3, 3, 3)
    t = nfold.ConvTransposeNd(2, 4, 2, stride=2, ndim=4, dtype=F64)
    assert t(torch.randn(1, 2, 2, 2, 2, 2, dtype=F64)).shape == (1, 4, 4, 4, 4, 4)
    assert "ConvNd(2, 4, kernel_size=(2, 1, 2, 1, 2)" in repr(m)


def test_workspace_attribute_is_used() -> None:
    torch.manual_seed(0)
    m = nfold.Conv2d(2, 3, 3, dtype=F64)
    x = torch.randn(4, 2, 8, 8, dtype=F64)
    want = m(x)
    m.max_workspace_bytes = 2 * 18 * 36 * 8  # two samples' unfolded matrices
    assert torch.equal(m(x), want)
    m.max_workspace_bytes = 8
    with pytest.raises(ValueError, match="max_workspace_bytes"):
        m(x)


CT = nfold.ConvTransposeNd
MODULE_ERRORS = {
    "ndim-missing": (lambda: nfold.ConvNd(2, 2, 3), ValueError, "spatial dim"),
    "ndim-disagrees": (lambda: nfold.ConvNd(2, 2, (3, 3), ndim=3), ValueError, "ndim"),
    "groups-in": (lambda: nfold.ConvNd(3, 4, 3, groups=2, ndim=2), ValueError, "in_channels"),
    "groups-out": (lambda: nfold.ConvNd(4, 3, 3, groups=2, ndim=2), ValueError, "out_channels"),
    "same-strided": (
        lambda: nfold.ConvNd(2, 2, 3, stride=2, padding="same", ndim=2),
        ValueError,
        "same",
    ),
    "padding-mode": (
        lambda: nfold.ConvNd(2, 2, 3, padding_mode="mirror", ndim=2),
        ValueError,
        "padding_mode",
    ),
    "transpose-mode": (
        lambda: CT(2, 2, 3, padding_mode="reflect", ndim=2),
        ValueError,
        "padding_mode",
    ),
    "output-padding": (
        lambda: CT(2, 2, 3, stride=2, output_padding=2, ndim=2),
        ValueError,
        "output_padding",
    ),
    "channels-type": (lambda: nfold.ConvNd(2.0, 2, 3, ndim=2), TypeError, "in_channels"),
}


@pytest.mark.parametrize("name", list(MODULE_ERRORS))
def test_module_errors(name: str) -> None:
    fn, exc, match = MODULE_ERRORS[name]
    with pytest.raises(exc, match=match):
        fn()


def test_torch_transpose_subclass_rejects_non_zeros_mode_at_forward() -> None:
    m = nfold.ConvTranspose2d(2, 2, 3)
    m.padding_mode = "reflect"
    with pytest.raises(ValueError, match="padding_mode"):
        m(torch.randn(1, 2, 4, 4))


@pytest.mark.parametrize("cls", [nfold.ConvNd, nfold.ConvTransposeNd])
def test_int_only_sizes_without_ndim_ask_for_ndim(cls) -> None:
    """Issue 11 §4: the error asks for what is missing (ndim= or tuples), not 'got None'."""
    with pytest.raises(ValueError, match=r"pass ndim=N or N-tuples") as info:
        cls(3, 4, 3)
    assert "None" not in str(info.value)
