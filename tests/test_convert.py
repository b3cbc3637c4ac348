"""convert(model): torch conv layers swapped for nfold twins sharing their parameters."""

from __future__ import annotations

import pickle

import pytest
import torch
from torch import nn

import nfold

F64 = torch.float64


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding="same", groups=2, padding_mode="reflect"),
        nn.ConvTranspose2d(4, 2, 2, stride=2),
        nn.Sequential(nn.Conv2d(2, 2, 1, bias=False)),
    ).to(F64)


def _grads(model: nn.Module, x: torch.Tensor):
    model.zero_grad()
    out = model(x)
    out.square().sum().backward()
    return out.detach(), [p.grad.clone() for p in model.parameters()]


def test_same_outputs_and_gradients() -> None:
    model = small_model()
    x = torch.randn(2, 3, 6, 6, dtype=F64)
    converted = nfold.convert(model)
    want, want_grads = _grads(model, x)
    got, got_grads = _grads(converted, x)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)


def test_types_replaced_and_original_untouched() -> None:
    model = small_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    converted = nfold.convert(model)
    assert [type(m) for m in model.modules()].count(nn.Conv2d) == 3
    kinds = [type(m) for m in converted.modules()]
    assert kinds.count(nfold.Conv2d) == 3 and kinds.count(nfold.ConvTranspose2d) == 1
    assert nn.Conv2d not in kinds and nn.ConvTranspose2d not in kinds
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    assert converted.state_dict().keys() == model.state_dict().keys()
    assert all(p.dtype == F64 for p in converted.parameters())


def test_inplace_shares_parameter_objects() -> None:
    model = small_model()
    params = {name: p for name, p in model.named_parameters()}
    out = nfold.convert(model, inplace=True)
    assert out is model
    for name, p in model.named_parameters():
        assert p is params[name]
    assert isinstance(model[0], nfold.Conv2d)


def test_twin_shares_parameters_of_the_module_it_replaces() -> None:
    conv = nn.Conv1d(2, 3, 3)
    twin = nfold.convert(conv, inplace=True)
    assert isinstance(twin, nfold.Conv1d) and twin.weight is conv.weight and twin.bias is conv.bias


@pytest.mark.parametrize("training", [True, False])
def test_train_eval_mode_preserved(training: bool) -> None:
    model = small_model().train(training)
    assert all(m.training == training for m in nfold.convert(model).modules())


def test_shared_module_becomes_one_twin() -> None:
    shared = nn.Conv2d(2, 2, 1)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    out = nfold.convert(model)
    assert out[0] is out[2] and isinstance(out[0], nfold.Conv2d)


class _Plain(nn.Conv2d):  # computes as nn.Conv2d: converted as one
    pass


class _OwnForward(nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * 2


class _OwnConvForward(nn.Conv1d):
    def _conv_forward(self, x, weight, bias):  # type: ignore[no-untyped-def]
        return super()._conv_forward(x, weight.flip(-1), bias)


class _OwnOutputPadding(nn.ConvTranspose2d):
    def _output_padding(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return (0, 0)


class _PlainTranspose(nn.ConvTranspose3d):
    def extra(self) -> int:  # other methods do not change how it computes
        return 1


def test_subclasses_that_keep_torchs_forward_are_converted_as_their_base() -> None:
    torch.manual_seed(0)
    plain, transpose = _Plain(2, 3, 3).double(), _PlainTranspose(2, 2, 2).double()
    kept = [_OwnForward(2, 2, 1), _OwnConvForward(2, 2, 3), _OwnOutputPadding(2, 2, 2)]
    model = nn.ModuleList([plain, transpose, *kept])
    out = nfold.convert(model)
    assert type(out[0]) is nfold.Conv2d and type(out[1]) is nfold.ConvTranspose3d
    assert out[0].weight is plain.weight and out[1].bias is transpose.bias
    assert [type(m) for m in out[2:]] == [type(m) for m in kept]
    x = torch.randn(1, 2, 5, 5, dtype=F64)
    torch.testing.assert_close(out[0](x), plain(x), rtol=1e-12, atol=1e-12)
    x3 = torch.randn(1, 2, 2, 3, 2, dtype=F64)
    torch.testing.assert_close(out[1](x3), transpose(x3), rtol=1e-12, atol=1e-12)
    # nfold's own layers subclass torch's and override _conv_forward / forward: left alone
    twins = [nfold.Conv2d(2, 2, 1), nfold.ConvTranspose1d(2, 2, 1)]
    assert [type(m) for m in nfold.convert(nn.Sequential(*twins))] == [type(m) for m in twins]


def test_copy_shares_parameters_and_buffers_with_the_original() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ConvTranspose2d(4, 2, 2))
    converted = nfold.convert(model)
    assert converted is not model and type(model[0]) is nn.Conv2d
    assert type(converted[0]) is nfold.Conv2d and converted[1] is not model[1]
    for (name, p), (name2, q) in zip(
        model.named_parameters(), converted.named_parameters(), strict=True
    ):
        assert name == name2 and p is q, name
    for (name, b), (_, c) in zip(model.named_buffers(), converted.named_buffers(), strict=True):
        assert b is c, name  # BatchNorm's running statistics: one state, as the weights
    # training the converted model trains the original: one optimizer serves both
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = model[0].weight.detach().clone()
    converted(torch.randn(2, 3, 6, 6)).square().sum().backward()
    opt.step()
    assert not torch.equal(model[0].weight, before)
    assert int(model[1].num_batches_tracked) == 1


def test_convert_rejects_non_modules() -> None:
    with pytest.raises(TypeError, match="model"):
        nfold.convert(lambda x: x)


@pytest.mark.parametrize("inplace", [False, True], ids=["copy", "inplace"])
def test_uninitialised_lazy_convs_become_lazy_twins(inplace: bool) -> None:
    """An uninitialised ``nn.LazyConv2d`` & co. becomes a lazy twin: it infers its input
    channels and initialises its parameters (from the same RNG draws as torch's) at the
    first call, then is nfold's layer; it pickles before that, and a torch state_dict
    loads into it."""

    def lazy() -> nn.Sequential:
        torch.manual_seed(0)
        return nn.Sequential(
            nn.LazyConv2d(4, 3), nn.ReLU(), nn.LazyConvTranspose2d(2, 3, stride=2),
            nn.Flatten(0, 1), nn.LazyConv1d(3, 2),
        )  # fmt: skip

    x = torch.randn(2, 3, 6, 6)
    want = lazy()(x)
    net = nfold.convert(lazy(), inplace=inplace)
    restored = pickle.loads(pickle.dumps(net))
    got = net(x)
    assert [type(net[i]) for i in (0, 2, 4)] == [nfold.Conv2d, nfold.ConvTranspose2d, nfold.Conv1d]
    assert net[0].in_channels == 3 and net[4].in_channels == 9
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    got.sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    trained = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.ConvTranspose2d(4, 2, 3, stride=2),
                            nn.Flatten(0, 1), nn.Conv1d(9, 3, 2))  # fmt: skip
    restored.load_state_dict(trained.state_dict())
    torch.testing.assert_close(restored(x), trained(x), rtol=1e-5, atol=1e-6)
    assert type(restored[0]) is nfold.Conv2d
