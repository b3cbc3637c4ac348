"""Outputs are ordinary tensors: in-place ops on them (``relu_``, ``+=``, ``mul_``,
``ReLU(inplace=True)``) work and give the same gradients as the out-of-place ops, as on
torch's ``F.conv2d`` / ``F.unfold`` / ``F.fold`` outputs (issue 11 §1: a bias-free conv
followed by ``ReLU(inplace=True)`` crashed after ``nfold.convert``).

Every op and module, N = 1..4, with and without bias, batched and unbatched, chunked and
not, eager, under ``torch.compile`` and under ``torch.func``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
import torch
from torch import nn

import nfold

_gen = torch.Generator().manual_seed(3)


def _randn(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, dtype=torch.float64, generator=_gen)


# name -> (op of the tensors, the tensors). Each op returns one output of nfold's.
Case = tuple[Callable[..., torch.Tensor], tuple[torch.Tensor, ...]]


def _cases() -> dict[str, Case]:
    cases: dict[str, Case] = {}
    for n in (1, 2, 3, 4):
        s = (5, 4, 4, 3)[:n]
        k = (3, 2, 2, 2)[:n]
        x = _randn(2, 4, *s)
        cases[f"unfold_{n}d"] = (lambda x, k=k: nfold.unfold(x, k, padding=1, stride=2), (x,))
        cases[f"unfold_{n}d_unbatched"] = (lambda x, k=k: nfold.unfold(x, k), (x[0],))
        cols = nfold.unfold(x, k, padding=1)
        cases[f"fold_{n}d"] = (
            lambda y, s=s, k=k: nfold.fold(y, s, k, padding=1),
            (_randn(*cols.shape),),
        )
        cases[f"fold_{n}d_1x1"] = (
            lambda y, s=s: nfold.fold(y, s, 1),
            (_randn(2, 4, x[0, 0].numel()),),
        )
        cases[f"unfold_transpose_{n}d"] = (
            lambda x, k=k: nfold.unfold_transpose(x, k, stride=2),
            (x,),
        )
        w = _randn(6, 2, *k)
        b = _randn(6)
        for bias, method in itertools.product((False, True), ("gemm", "auto")):
            tag = ("bias" if bias else "nobias") + ("_auto" if method == "auto" else "")
            args = (x, w, b) if bias else (x, w)
            cases[f"conv_{n}d_{tag}"] = (
                lambda x, w, b=None, m=method: nfold.conv(x, w, b, padding=1, groups=2, method=m),
                args,
            )
            if n <= 2:  # slabs over batch and positions (2 KB slabs are slow in 3-d and 4-d)
                cases[f"conv_{n}d_{tag}_chunked"] = (
                    lambda x, w, b=None, m=method: nfold.conv(
                        x, w, b, padding=1, max_workspace_bytes=2048, method=m
                    ),
                    (x, _randn(6, 4, *k), *args[2:]),
                )
            wt = _randn(4, 3, *k)
            cases[f"conv_transpose_{n}d_{tag}"] = (
                lambda x, w, b=None, m=method: nfold.conv_transpose(
                    x, w, b, stride=2, groups=2, method=m
                ),
                (x, wt, b) if bias else (x, wt),
            )
        cases[f"conv_{n}d_1x1"] = (
            lambda x, w: nfold.conv(x, w, method="gemm"),
            (x, _randn(3, 4, *(1,) * n)),
        )
        cases[f"conv_{n}d_unbatched"] = (
            lambda x, w: nfold.conv(x, w, method="gemm"),
            (x[0], w[:, :1].repeat(1, 4, *(1,) * n)),
        )
    return cases


CASES = _cases()


def _grads(
    case: Case, inplace: Callable[[torch.Tensor], torch.Tensor] | None
) -> list[torch.Tensor]:
    op, tensors = case
    leaves = [t.clone().requires_grad_() for t in tensors]
    out = op(*leaves)
    out = inplace(out) if inplace is not None else out
    (out * out).sum().backward()
    return [leaf.grad for leaf in leaves]


def _relu_(t: torch.Tensor) -> torch.Tensor:
    return torch.relu_(t)


def _relu_module(t: torch.Tensor) -> torch.Tensor:
    return nn.ReLU(inplace=True)(t)


def _add_(t: torch.Tensor) -> torch.Tensor:
    t += 1
    return t


def _mul_(t: torch.Tensor) -> torch.Tensor:
    return t.mul_(2)


INPLACE = {"relu_": (_relu_, torch.relu), "ReLU_inplace": (_relu_module, torch.relu),
           "iadd": (_add_, lambda t: t + 1), "mul_": (_mul_, lambda t: t * 2)}  # fmt: skip


@pytest.mark.parametrize("how", INPLACE)
@pytest.mark.parametrize("name", CASES)
def test_inplace_on_output_matches_out_of_place(name: str, how: str) -> None:
    inplace, out_of_place = INPLACE[how]
    got = _grads(CASES[name], inplace)
    want = _grads(CASES[name], out_of_place)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=0)


def _module_cases() -> dict[str, tuple[nn.Module, torch.Tensor]]:
    x2, x4 = _randn(2, 4, 6, 6), _randn(2, 4, 4, 3, 4, 3)
    return {
        "Unfold": (nfold.Unfold(3, padding=1), x2),
        "Fold": (nfold.Fold((6, 6), 1), _randn(2, 4, 36)),
        "UnfoldTranspose": (nfold.UnfoldTranspose(2, stride=2), x2),
        "ConvNd_4d_nobias": (nfold.ConvNd(4, 6, 3, padding=1, bias=False, ndim=4), x4),
        "ConvTransposeNd_4d": (nfold.ConvTransposeNd(4, 6, 2, stride=2, ndim=4), x4),
        "Conv2d_nobias": (nfold.Conv2d(4, 6, 3, bias=False), x2),
        "ConvTranspose2d_nobias": (nfold.ConvTranspose2d(4, 6, 3, bias=False), x2),
        "converted": (nfold.convert(nn.Sequential(nn.Conv2d(4, 6, 3, bias=False))), x2),
    }


MODULES = _module_cases()


@pytest.mark.parametrize("name", MODULES)
def test_relu_inplace_after_module(name: str) -> None:
    module, x = MODULES[name]
    module = module.double()
    torch.manual_seed(0)
    net = nn.Sequential(module, nn.ReLU(inplace=True))
    ref = nn.Sequential(module, nn.ReLU())
    got_x, want_x = x.clone().requires_grad_(), x.clone().requires_grad_()
    net(got_x).square().sum().backward()
    got_params = [p.grad.clone() for p in module.parameters()]
    module.zero_grad()
    ref(want_x).square().sum().backward()
    torch.testing.assert_close(got_x.grad, want_x.grad, rtol=0, atol=0)
    for g, p in zip(got_params, module.parameters(), strict=True):
        torch.testing.assert_close(g, p.grad, rtol=0, atol=0)


COMPILED = [
    "unfold_3d",
    "fold_2d",
    "unfold_transpose_2d",
    "conv_2d_nobias",
    "conv_transpose_1d_nobias",
]


@pytest.mark.parametrize("name", COMPILED)
def test_inplace_under_compile(name: str) -> None:
    op, tensors = CASES[name]

    def f(*ts: torch.Tensor) -> torch.Tensor:
        out = op(*ts)
        out += 1
        return torch.relu_(out)

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    leaves = [t.clone().requires_grad_() for t in tensors]
    refs = [t.clone().requires_grad_() for t in tensors]
    compiled(*leaves).square().sum().backward()
    torch.relu(op(*refs) + 1).square().sum().backward()
    for a, b in zip(leaves, refs, strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=0)


@pytest.mark.parametrize(
    "name", ["unfold_2d", "fold_3d", "conv_4d_nobias", "conv_transpose_2d_nobias"]
)
def test_inplace_under_torch_func(name: str) -> None:
    op, tensors = CASES[name]

    def loss(inplace: bool, *ts: torch.Tensor) -> torch.Tensor:
        out = op(*ts)
        out = torch.relu_(out.mul_(2)) if inplace else torch.relu(out * 2)
        return out.square().sum()

    got = torch.func.grad(lambda *ts: loss(True, *ts), argnums=0)(*tensors)
    want = torch.func.grad(lambda *ts: loss(False, *ts), argnums=0)(*tensors)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    first, rest = torch.stack([tensors[0], -tensors[0]]), tensors[1:]
    got_v = torch.func.vmap(lambda t: torch.relu_(op(t, *rest).mul_(2)))(first)
    want_v = torch.stack([torch.relu(op(t, *rest) * 2) for t in first])
    torch.testing.assert_close(got_v, want_v, rtol=0, atol=0)
