"""convert(model): torch conv layers swapped for nfold twins sharing their parameters."""

from __future__ import annotations

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


def test_shared_module_becomes_one_twin_and_subclasses_are_kept() -> None:
    class MyConv(nn.Conv2d):
        pass

    shared = nn.Conv2d(2, 2, 1)
    model = nn.Sequential(shared, nn.ReLU(), shared, MyConv(2, 2, 1))
    out = nfold.convert(model)
    assert out[0] is out[2] and isinstance(out[0], nfold.Conv2d)
    assert type(out[3]) is MyConv


def test_convert_rejects_non_modules() -> None:
    with pytest.raises(TypeError, match="model"):
        nfold.convert(lambda x: x)
