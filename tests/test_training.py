"""Training equivalence: a small VGG-like net trains the same in torch and converted to nfold."""

from __future__ import annotations

import copy

import torch
from torch import nn

import nfold


def vgg_like() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(8 * 8 * 8, 10),
    )  # fmt: skip


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 10) -> list[float]:
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_ten_sgd_steps_match_torch_in_float64() -> None:
    torch.manual_seed(0)
    reference = vgg_like().double()
    # convert shares the Parameters: convert a copy to train both from the same weights
    converted = nfold.convert(copy.deepcopy(reference))
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, 32, 32, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 10, (4,), generator=gen)
    want = train(reference, x, y)
    got = train(converted, x, y)
    assert want[-1] < want[0]  # it does learn
    for g, w in zip(got, want, strict=True):
        assert abs(g - w) <= 1e-10 * abs(w), (got, want)
