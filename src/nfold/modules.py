"""Thin ``nn.Module`` wrappers around the functional core. Each validates its arguments
once in ``__init__`` and shows only non-default settings in ``extra_repr``."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from . import _args, _plan
from ._args import IntOrTuple, PaddingArg
from .patches import fold, unfold, unfold_transpose

# torch.fx.symbolic_trace records these calls as graph nodes (see conv_modules)
torch.fx.wrap("unfold")
torch.fx.wrap("fold")
torch.fx.wrap("unfold_transpose")


def _repr(defaults: Mapping[str, object], values: Mapping[str, object]) -> str:
    return ", ".join(
        f"{k}={v!r}" for k, v in values.items() if k not in defaults or defaults[k] != v
    )


def _validate(sizes: Mapping[str, object], min_values: Mapping[str, int]) -> int:
    """Type- and range-check size arguments before any input is seen; returns the N they
    fix (1 when all are ints: then the check does not depend on N)."""
    n = _args.infer_n(sizes, default=1)
    for name, value in sizes.items():
        if name != "padding":
            _args.ntuple(value, n, name, min_value=min_values.get(name, 1))
    return n


class Unfold(nn.Module):
    """Module form of :func:`nfold.unfold`; ``(B, C, *S) -> (B, C * prod(k), L)``.

    >>> Unfold((2, 2, 2), stride=2)(torch.randn(1, 3, 4, 4, 4)).shape
    torch.Size([1, 24, 8])
    """

    def __init__(
        self,
        kernel_size: IntOrTuple,
        dilation: IntOrTuple = 1,
        padding: PaddingArg = 0,
        stride: IntOrTuple = 1,
        padding_mode: str = "zeros",
    ) -> None:
        super().__init__()
        sizes = {"kernel_size": kernel_size, "dilation": dilation, "stride": stride}
        n = _validate({**sizes, "padding": padding}, {})
        k, d, s = (_args.ntuple(v, n, name) for name, v in sizes.items())
        _args.padding_pairs(padding, n, k, d, s)
        _args.choice(padding_mode, "padding_mode", _args.PADDING_MODES)
        self.kernel_size, self.dilation, self.padding = kernel_size, dilation, padding
        self.stride, self.padding_mode = stride, padding_mode

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return unfold(
            input, self.kernel_size, self.dilation, self.padding, self.stride, self.padding_mode
        )

    def extra_repr(self) -> str:
        defaults = {"dilation": 1, "padding": 0, "stride": 1, "padding_mode": "zeros"}
        return _repr(defaults, vars_of(self, "kernel_size", *defaults))


class Fold(nn.Module):
    """Module form of :func:`nfold.fold`; ``(B, C * prod(k), L) -> (B, C, *output_size)``.

    >>> Fold((4, 4, 4), 2, stride=2)(torch.randn(1, 24, 8)).shape
    torch.Size([1, 3, 4, 4, 4])
    """

    def __init__(
        self,
        output_size: IntOrTuple,
        kernel_size: IntOrTuple,
        dilation: IntOrTuple = 1,
        padding: PaddingArg = 0,
        stride: IntOrTuple = 1,
        reduction: str = "sum",
    ) -> None:
        super().__init__()
        sizes = {"kernel_size": kernel_size, "dilation": dilation, "stride": stride}
        n = _validate({"output_size": output_size, **sizes, "padding": padding}, {"output_size": 0})
        k, d, s = (_args.ntuple(v, n, name) for name, v in sizes.items())
        _args.padding_pairs(padding, n, k, d, s)
        _args.choice(reduction, "reduction", _args.REDUCTIONS)
        self.output_size, self.kernel_size, self.dilation = output_size, kernel_size, dilation
        self.padding, self.stride, self.reduction = padding, stride, reduction

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return fold(
            input,
            self.output_size,
            self.kernel_size,
            self.dilation,
            self.padding,
            self.stride,
            self.reduction,
        )

    def extra_repr(self) -> str:
        defaults = {"dilation": 1, "padding": 0, "stride": 1, "reduction": "sum"}
        return _repr(defaults, vars_of(self, "output_size", "kernel_size", *defaults))


class UnfoldTranspose(nn.Module):
    """Module form of :func:`nfold.unfold_transpose`. ``forward(input, output_size=None)``
    derives ``output_padding`` from ``output_size`` as ``torch.nn.ConvTransposeNd`` does.

    >>> UnfoldTranspose(3, stride=2)(torch.randn(1, 2, 4, 4), output_size=(10, 10)).shape
    torch.Size([1, 18, 100])
    """

    def __init__(
        self,
        kernel_size: IntOrTuple,
        stride: IntOrTuple = 1,
        padding: IntOrTuple = 0,
        output_padding: IntOrTuple = 0,
        dilation: IntOrTuple = 1,
    ) -> None:
        super().__init__()
        sizes = {
            "kernel_size": kernel_size,
            "stride": stride,
            "padding": padding,
            "output_padding": output_padding,
            "dilation": dilation,
        }
        _validate(sizes, {"padding": 0, "output_padding": 0})
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.output_padding, self.dilation = output_padding, dilation

    def forward(self, input: torch.Tensor, output_size: IntOrTuple | None = None) -> torch.Tensor:
        output_padding = self.output_padding
        if output_size is not None:
            sizes = {"kernel_size": self.kernel_size, "stride": self.stride,
                     "padding": self.padding, "dilation": self.dilation}  # fmt: skip
            x = _args.check_tensor(input)
            n, _ = _args.input_n(x.shape, sizes)
            t = _plan.transposed(n, self.kernel_size, self.stride, self.padding, 0, self.dilation)
            spatial = tuple(x.shape[-n:])
            output_padding = _args.output_padding_for(
                spatial, output_size, t.kernel, t.stride, t.padding, t.dilation
            )
        return unfold_transpose(
            input, self.kernel_size, self.stride, self.padding, output_padding, self.dilation
        )

    def extra_repr(self) -> str:
        defaults = {"stride": 1, "padding": 0, "output_padding": 0, "dilation": 1}
        return _repr(defaults, vars_of(self, "kernel_size", *defaults))


def vars_of(module: nn.Module, *names: str) -> dict[str, object]:
    return {name: getattr(module, name) for name in names}
