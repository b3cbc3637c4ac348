"""Layouts and module plumbing: channels-last and other non-contiguous inputs, batch
size 0, ``.to(device, dtype)`` (the meta device included: no device-specific code),
deepcopy, pickling, and torch.save/load of state_dicts across nfold and torch layers.
"""

from __future__ import annotations

import copy
import io
import pickle
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

import nfold


def _randn(*shape: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(*shape, dtype=dtype)


# --------------------------------------------------------------------------------------
# non-contiguous inputs: every op gives what it gives on the contiguous copy
# --------------------------------------------------------------------------------------


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
    return x.contiguous(memory_format=fmt)


def _sliced(x: torch.Tensor) -> torch.Tensor:
    """Every other element of a twice-as-large tensor along the last dim (stride 2)."""
    return torch.repeat_interleave(x, 2, dim=-1)[..., ::2]


def _transposed(x: torch.Tensor) -> torch.Tensor:
    """A permuted view (batch and channel strides swapped)."""
    return x.transpose(0, 1).contiguous().transpose(0, 1)


def _expanded(x: torch.Tensor) -> torch.Tensor:
    """A batch made of one sample broadcast with stride 0."""
    return x[:1].expand_as(x)


LAYOUTS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "channels_last": _channels_last,
    "sliced": _sliced,
    "transposed": _transposed,
    "expanded": _expanded,
}

# name -> (op on one input, input shape, exact). Spatial dims 2 or 3 (channels-last formats).
OPS: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], tuple[int, ...], bool]] = {
    "unfold": (lambda x: nfold.unfold(x, (2, 3), padding=1, stride=(2, 1)), (2, 3, 5, 6), True),
    "unfold_reflect_3d": (
        lambda x: nfold.unfold(x, 2, padding=1, padding_mode="reflect"),
        (2, 2, 3, 4, 3),
        True,
    ),
    "fold": (lambda y: nfold.fold(y.flatten(2), (4, 5), 2), (2, 3 * 4, 3, 4), True),
    "unfold_transpose": (lambda x: nfold.unfold_transpose(x, 3, stride=2), (2, 2, 3, 4), True),
    "sliding_window_view": (
        lambda x: nfold.sliding_window_view(x, 2, dilation=2) * 1,
        (2, 2, 5, 4, 3),
        True,
    ),
    "conv": (
        lambda x: nfold.conv(x, _W, padding="same", groups=2),
        (2, 4, 5, 6),
        False,
    ),
    "conv_3d_stride": (
        lambda x: nfold.conv(x, _W3, stride=(2, 1, 2)),
        (2, 2, 5, 4, 5),
        False,
    ),
    "conv_transpose": (
        lambda x: nfold.conv_transpose(x, _WT, stride=2, output_padding=1),
        (2, 4, 3, 5),
        False,
    ),
}
_gen = torch.Generator().manual_seed(2)
_W = torch.randn(6, 2, 3, 3, dtype=torch.float64, generator=_gen)
_W3 = torch.randn(3, 2, 2, 3, 2, dtype=torch.float64, generator=_gen)
_WT = torch.randn(4, 3, 2, 3, dtype=torch.float64, generator=_gen)


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("op", list(OPS))
def test_non_contiguous_input_forward_and_backward(op: str, layout: str) -> None:
    fn, shape, exact = OPS[op]
    strided = LAYOUTS[layout](_randn(*shape)).detach().requires_grad_()
    dense = strided.detach().contiguous().requires_grad_()
    assert dense.is_contiguous() and not strided.is_contiguous()
    got, want = fn(strided), fn(dense)
    tol = {"rtol": 0.0, "atol": 0.0} if exact else {}
    torch.testing.assert_close(got, want, **tol)
    cotangent = torch.randn_like(want)
    torch.testing.assert_close(
        torch.autograd.grad(got, strided, cotangent)[0],
        torch.autograd.grad(want, dense, cotangent)[0],
        **tol,
    )


@pytest.mark.parametrize("fmt", ["channels_last", "channels_last_3d"])
def test_channels_last_model_matches_torch(fmt: str) -> None:
    """A channels-last network (weights and activations) converted to nfold."""
    torch.manual_seed(0)
    memory_format = getattr(torch, fmt)
    dims = 2 if fmt == "channels_last" else 3
    conv = {2: torch.nn.Conv2d, 3: torch.nn.Conv3d}[dims]
    convt = {2: torch.nn.ConvTranspose2d, 3: torch.nn.ConvTranspose3d}[dims]
    theirs = torch.nn.Sequential(
        conv(3, 4, 3, padding=1, groups=1), torch.nn.Tanh(), convt(4, 2, 2, stride=2)
    )
    theirs = theirs.double().to(memory_format=memory_format)  # type: ignore[call-overload]
    ours = nfold.convert(theirs)
    x = _randn(2, 3, *(4,) * dims).contiguous(memory_format=memory_format)
    torch.testing.assert_close(ours(x), theirs(x))


def test_non_contiguous_weights() -> None:
    x = _randn(2, 3, 5, 5)
    w = _randn(3, 4, 3, 3).transpose(0, 1)  # (C_out, C_in, k, k) = (4, 3, 3, 3)
    w_t = _randn(3, 3, 4, 3).transpose(2, 3)  # (C_in, C_out, k0, k1) = (3, 3, 3, 4)
    assert not w.is_contiguous() and not w_t.is_contiguous()
    torch.testing.assert_close(nfold.conv(x, w, padding=1), F.conv2d(x, w, padding=1))
    torch.testing.assert_close(
        nfold.conv_transpose(x, w_t, stride=2), F.conv_transpose2d(x, w_t, stride=2)
    )


# --------------------------------------------------------------------------------------
# batch size 0
# --------------------------------------------------------------------------------------

# name -> (nfold op, torch op or None, input shape with batch 0)
EMPTY: dict[str, tuple[Callable, Callable | None, tuple[int, ...]]] = {
    "unfold": (
        lambda x: nfold.unfold(x, 3, padding=1),
        lambda x: F.unfold(x, 3, padding=1),
        (0, 3, 5, 6),
    ),
    "unfold_3d": (lambda x: nfold.unfold(x, 2, stride=2), None, (0, 2, 4, 4, 4)),
    "fold": (
        lambda y: nfold.fold(y, (4, 5), (3, 2)),
        lambda y: F.fold(y, (4, 5), (3, 2)),
        (0, 18, 8),
    ),
    "unfold_transpose": (lambda x: nfold.unfold_transpose(x, 3, stride=2), None, (0, 2, 3, 4)),
    "sliding_window_view": (lambda x: nfold.sliding_window_view(x, 2), None, (0, 2, 4, 5)),
    "conv": (
        lambda x: nfold.conv(x, _W, stride=2, groups=2),
        lambda x: F.conv2d(x, _W, stride=2, groups=2),
        (0, 4, 6, 7),
    ),
    "conv_transpose": (
        lambda x: nfold.conv_transpose(x, _WT, stride=2),
        lambda x: F.conv_transpose2d(x, _WT, stride=2),
        (0, 4, 3, 5),
    ),
}


@pytest.mark.parametrize("op", list(EMPTY))
def test_batch_size_zero(op: str) -> None:
    ours, theirs, shape = EMPTY[op]
    x = _randn(*shape).requires_grad_()
    out = ours(x)
    assert out.shape[0] == 0
    if theirs is not None:
        assert out.shape == theirs(x).shape
    (grad,) = torch.autograd.grad(out.sum(), x)
    assert grad.shape == x.shape


@pytest.mark.parametrize(
    "module",
    [
        nfold.Conv1d(2, 3, 3),
        nfold.ConvNd(2, 3, (2, 2, 2, 2)),
        nfold.ConvTranspose2d(2, 3, 3, stride=2),
        nfold.ConvTransposeNd(2, 3, (2, 1, 2, 1)),
    ],
    ids=lambda m: type(m).__name__,
)
def test_batch_size_zero_modules_give_zero_parameter_gradients(module: torch.nn.Module) -> None:
    n = module.weight.dim() - 2
    out = module(torch.randn(0, 2, *(4,) * n))
    assert out.shape[:2] == (0, 3)
    out.sum().backward()
    for p in module.parameters():
        assert p.grad is not None
        torch.testing.assert_close(p.grad, torch.zeros_like(p), rtol=0, atol=0)


# --------------------------------------------------------------------------------------
# modules: .to, deepcopy, pickle, torch.save/load
# --------------------------------------------------------------------------------------


def _all_modules() -> dict[str, tuple[torch.nn.Module, tuple[int, ...]]]:
    """name -> (module, input shape): one of every public nfold module class."""
    torch.manual_seed(0)
    return {
        "Unfold": (
            nfold.Unfold((2, 3), padding=((1, 0), (0, 2)), padding_mode="zeros"),
            (2, 3, 4, 5),
        ),
        "Fold": (nfold.Fold((4, 5), 2, reduction="mean"), (2, 8, 12)),
        "UnfoldTranspose": (nfold.UnfoldTranspose(2, stride=2), (2, 2, 3, 3)),
        "UnfoldNd": (nfold.UnfoldNd(2), (2, 2, 3, 3, 3)),
        "Conv1d": (nfold.Conv1d(2, 4, 3, groups=2, padding_mode="circular", padding=1), (2, 2, 6)),
        "Conv2d": (nfold.Conv2d(2, 3, 3, stride=2), (2, 2, 5, 5)),
        "Conv3d": (nfold.Conv3d(2, 3, 2, bias=False), (1, 2, 3, 3, 3)),
        "ConvNd": (nfold.ConvNd(2, 3, 2, ndim=4), (1, 2, 3, 3, 3, 3)),
        "ConvTranspose1d": (nfold.ConvTranspose1d(2, 3, 3, stride=2), (2, 2, 4)),
        "ConvTranspose2d": (nfold.ConvTranspose2d(2, 4, 2, groups=2), (2, 2, 3, 3)),
        "ConvTranspose3d": (nfold.ConvTranspose3d(2, 3, 2, dilation=2), (1, 2, 2, 3, 2)),
        "ConvTransposeNd": (nfold.ConvTransposeNd(2, 3, 2, stride=2, ndim=4), (1, 2, 2, 2, 2, 2)),
    }


MODULE_NAMES = list(_all_modules())


def _module(name: str) -> tuple[torch.nn.Module, torch.Tensor]:
    module, shape = _all_modules()[name]
    return module, torch.randn(*shape)


@pytest.mark.parametrize("name", MODULE_NAMES)
def test_to_dtype(name: str) -> None:
    module, x = _module(name)
    want = module(x.double()) if not list(module.parameters()) else None
    moved = module.to(torch.float64)
    assert moved is module  # nn.Module.to is in place and returns self
    assert all(p.dtype == torch.float64 for p in module.parameters())
    out = module(x.double())
    assert out.dtype == torch.float64
    if want is not None:
        torch.testing.assert_close(out, want, rtol=0, atol=0)


@pytest.mark.parametrize("name", MODULE_NAMES)
def test_to_meta_device_gives_shapes_without_data(name: str) -> None:
    """Any device torch runs on: the meta device runs the same code, shapes only."""
    module, x = _module(name)
    want = module(x)
    module.to(device="meta")
    out = module(x.to("meta"))
    assert out.device.type == "meta"
    assert out.shape == want.shape and out.dtype == want.dtype


def test_to_device_and_dtype_together_matches_torch() -> None:
    torch.manual_seed(0)
    theirs = torch.nn.Conv2d(2, 3, 3, padding=1)
    ours = nfold.Conv2d(2, 3, 3, padding=1)
    ours.load_state_dict(theirs.state_dict())
    for m in (ours, theirs):
        m.to(torch.device("cpu"), torch.float64)
    x = _randn(2, 2, 4, 4)
    torch.testing.assert_close(ours(x), theirs(x))


@pytest.mark.parametrize("name", MODULE_NAMES)
def test_deepcopy_is_equal_and_independent(name: str) -> None:
    module, x = _module(name)
    clone = copy.deepcopy(module)
    assert repr(clone) == repr(module)
    torch.testing.assert_close(clone(x), module(x), rtol=0, atol=0)
    for p, q in zip(clone.parameters(), module.parameters(), strict=True):
        assert p.data_ptr() != q.data_ptr()
        with torch.no_grad():
            p.add_(1)
        assert not torch.equal(p, q)


@pytest.mark.parametrize("name", MODULE_NAMES)
def test_pickle_round_trip(name: str) -> None:
    module, x = _module(name)
    restored = pickle.loads(pickle.dumps(module))
    assert type(restored) is type(module)
    assert repr(restored) == repr(module)
    torch.testing.assert_close(restored(x), module(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", MODULE_NAMES)
def test_torch_save_load_whole_module(name: str) -> None:
    module, x = _module(name)
    buffer = io.BytesIO()
    torch.save(module, buffer)
    buffer.seek(0)
    restored = torch.load(buffer, weights_only=False)
    torch.testing.assert_close(restored(x), module(x), rtol=0, atol=0)


def _save_load(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Through torch.save / torch.load(weights_only=True), as a checkpoint would go."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


# name -> (torch layer factory, nfold twin factories, input shape)
TWINS: dict[
    str, tuple[Callable[[], torch.nn.Module], list[Callable[[], torch.nn.Module]], tuple]
] = {
    "Conv1d": (
        lambda: torch.nn.Conv1d(4, 6, 3, groups=2),
        [lambda: nfold.Conv1d(4, 6, 3, groups=2), lambda: nfold.ConvNd(4, 6, (3,), groups=2)],
        (2, 4, 7),
    ),
    "Conv2d": (
        lambda: torch.nn.Conv2d(3, 5, (3, 2), stride=2, bias=False),
        [
            lambda: nfold.Conv2d(3, 5, (3, 2), stride=2, bias=False),
            lambda: nfold.ConvNd(3, 5, (3, 2), stride=2, bias=False),
        ],
        (2, 3, 6, 5),
    ),
    "Conv3d": (
        lambda: torch.nn.Conv3d(2, 3, 2, padding=1, padding_mode="replicate"),
        [
            lambda: nfold.Conv3d(2, 3, 2, padding=1, padding_mode="replicate"),
            lambda: nfold.ConvNd(2, 3, 2, padding=1, padding_mode="replicate", ndim=3),
        ],
        (1, 2, 3, 4, 3),
    ),
    "ConvTranspose1d": (
        lambda: torch.nn.ConvTranspose1d(2, 3, 3, stride=2),
        [
            lambda: nfold.ConvTranspose1d(2, 3, 3, stride=2),
            lambda: nfold.ConvTransposeNd(2, 3, (3,), stride=2),
        ],
        (2, 2, 5),
    ),
    "ConvTranspose2d": (
        lambda: torch.nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2),
        [
            lambda: nfold.ConvTranspose2d(4, 6, 3, stride=2, groups=2),
            lambda: nfold.ConvTransposeNd(4, 6, 3, stride=2, groups=2, ndim=2),
        ],
        (2, 4, 3, 3),
    ),
    "ConvTranspose3d": (
        lambda: torch.nn.ConvTranspose3d(2, 3, 2),
        [lambda: nfold.ConvTranspose3d(2, 3, 2), lambda: nfold.ConvTransposeNd(2, 3, (2, 2, 2))],
        (1, 2, 2, 3, 2),
    ),
}


@pytest.mark.parametrize("twin", [0, 1], ids=["drop_in", "Nd"])
@pytest.mark.parametrize("name", list(TWINS))
def test_state_dict_torch_to_nfold(name: str, twin: int) -> None:
    make_theirs, make_ours, shape = TWINS[name]
    theirs, ours = make_theirs().double(), make_ours[twin]().double()
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    ours.load_state_dict(_save_load(theirs.state_dict()))
    x = _randn(*shape)
    torch.testing.assert_close(ours(x), theirs(x))


@pytest.mark.parametrize("twin", [0, 1], ids=["drop_in", "Nd"])
@pytest.mark.parametrize("name", list(TWINS))
def test_state_dict_nfold_to_torch(name: str, twin: int) -> None:
    make_theirs, make_ours, shape = TWINS[name]
    theirs, ours = make_theirs().double(), make_ours[twin]().double()
    theirs.load_state_dict(_save_load(ours.state_dict()))
    x = _randn(*shape)
    torch.testing.assert_close(theirs(x), ours(x))


def test_state_dict_of_converted_model_loads_into_torch_model() -> None:
    torch.manual_seed(0)

    def build() -> torch.nn.Module:
        return torch.nn.Sequential(
            torch.nn.Conv2d(2, 4, 3, padding=1),
            torch.nn.BatchNorm2d(4),
            torch.nn.ReLU(),
            torch.nn.ConvTranspose2d(4, 2, 2, stride=2),
        ).double()

    theirs = build()
    ours = nfold.convert(build())
    ours.load_state_dict(_save_load(theirs.state_dict()))
    ours.eval(), theirs.eval()
    x = _randn(2, 2, 4, 4)
    torch.testing.assert_close(ours(x), theirs(x))
    fresh = build().eval()
    fresh.load_state_dict(_save_load(ours.state_dict()))
    torch.testing.assert_close(fresh(x), theirs(x))
