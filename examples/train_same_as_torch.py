"""A VGG-like net built from nfold layers trains exactly like the torch one from the same seed,
and why the popular "Unfold + Linear + Fold" rewrite did not.

Run: python examples/train_same_as_torch.py
"""

import torch
from torch import nn

import nfold


class UnfoldLinearConv(nn.Module):
    """The popular rewrite: a 3x3 'conv' as unfold -> nn.Linear -> reshape (fold of kernel 1)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(c_in * 9, c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cols = nn.functional.unfold(x, 3, padding=1)  # (B, C_in*9, H*W)
        return (
            self.linear(cols.transpose(1, 2)).transpose(1, 2).reshape(x.shape[0], -1, *x.shape[2:])
        )


def vgg_like(conv) -> nn.Module:
    net = nn.Sequential(
        conv(3, 4), nn.ReLU(), conv(4, 4), nn.ReLU(), nn.MaxPool2d(2),
        conv(4, 8), nn.ReLU(), conv(8, 8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(8 * 8 * 8, 10),
    )  # fmt: skip
    # torchvision's VGG._initialize_weights: model init code dispatches on the layer type.
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)
    return net.double()


def train(net: nn.Module, steps: int = 10) -> list[float]:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, 32, 32, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 10, (4,), generator=gen)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def build(kind: str) -> nn.Module:
    torch.manual_seed(0)
    layer = {
        "torch": lambda i, o: nn.Conv2d(i, o, 3, padding=1),
        "nfold": lambda i, o: nfold.Conv2d(i, o, 3, padding=1),
        "unfold+linear": UnfoldLinearConv,
    }[kind]
    return vgg_like(layer)


if __name__ == "__main__":
    runs = {kind: train(build(kind)) for kind in ("torch", "nfold", "unfold+linear")}
    print("step  " + "  ".join(f"{k:>14}" for k in runs))
    for i in range(10):
        print(f"{i:4d}  " + "  ".join(f"{v[i]:14.10f}" for v in runs.values()))
    worst = max(abs(a - b) / abs(b) for a, b in zip(runs["nfold"], runs["torch"], strict=True))
    print(f"\nnfold vs torch, max relative loss difference over 10 steps: {worst:.1e}")
    print("nfold.Conv2d is an nn.Conv2d subclass, so the init loop above treats it as a conv.")

    torch.manual_seed(0)
    conv = nn.Conv2d(3, 8, 3)
    torch.manual_seed(0)
    linear = nn.Linear(27, 8)
    same = torch.equal(conv.weight.flatten(1), linear.weight)
    print(f"\nDefault inits alone: nn.Linear(27, 8) == nn.Conv2d(3, 8, 3) flattened? {same}")
    print("So the Unfold+Linear net diverged because its layers are nn.Linear to every")
    print("isinstance-based init (here N(0, 0.01) instead of Kaiming), not because of the maths.")
