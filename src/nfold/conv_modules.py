"""Convolution modules that compute through :func:`nfold.conv` / :func:`nfold.conv_transpose`.

- ``ConvNd`` / ``ConvTransposeNd``: any N. Parameters (``weight``, ``bias``), their shapes,
  state_dict keys, ``extra_repr`` and default initialisation are those of
  ``torch.nn.Conv{N}d`` / ``torch.nn.ConvTranspose{N}d``, so the same seed gives the same
  weights and a state_dict moves both ways.
- ``Conv1d/2d/3d``, ``ConvTranspose1d/2d/3d``: subclasses of the torch classes of the same
  name (``isinstance(m, torch.nn.Conv2d)`` holds) whose forward runs through nfold.

Every module has a ``max_workspace_bytes`` attribute (default None) passed on to the
functional call; set it to bound the unfolded matrix. Every module has a ``method``
attribute too: "auto" (torch's native conv over the trailing dims, the default of
``ConvNd`` / ``ConvTransposeNd``) or "gemm" (nfold's own unfold -> matmul arithmetic, the
default of the drop-in subclasses, which exist to run it).
"""

from __future__ import annotations

import inspect
import math

import torch
from torch import nn

from . import _args
from ._args import IntOrTuple, PaddingArg
from .conv import conv, conv_transpose

# torch.fx.symbolic_trace records these calls as graph nodes (torch's conv layers are fx
# leaves; nfold's are traced into, down to here)
torch.fx.wrap("conv")
torch.fx.wrap("conv_transpose")


def _positive_int(value: object, name: str) -> int:
    if not _args._is_int(value):
        raise _args.ArgumentTypeError(f"{name} must be an int, got {value!r}")
    if value < 1:  # type: ignore[operator]
        raise _args.ArgumentError(f"{name} must be a positive int, got {value!r}")
    return int(value)  # type: ignore[call-overload]


def _reset_parameters(weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    """torch's ``_ConvNd.reset_parameters``, for any N (same RNG draws in the same order)."""
    with torch.no_grad():
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
        if bias is not None:
            # fan_in as torch computes it for conv and transposed conv alike:
            # weight.shape[1] * prod(k)
            fan_in = weight.shape[1] * math.prod(weight.shape[2:])
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
            nn.init.uniform_(bias, -bound, bound)


_METHODS = ("auto", "gemm")


class _ConvBase(nn.Module):
    """Shared state of ConvNd / ConvTransposeNd, laid out like torch's ``_ConvNd``."""

    max_workspace_bytes: int | None = None
    method: str = "auto"

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntOrTuple,
        stride: IntOrTuple,
        padding: PaddingArg,
        dilation: IntOrTuple,
        transposed: bool,
        output_padding: IntOrTuple,
        groups: int,
        bias: bool,
        padding_mode: str,
        device: torch.device | str | None,
        dtype: torch.dtype | None,
        ndim: int | None,
        method: str = "auto",
    ) -> None:
        super().__init__()
        self.method = _args.choice(method, "method", _METHODS)
        sizes = {
            "kernel_size": kernel_size,
            "stride": stride,
            "padding": padding,
            "dilation": dilation,
            "output_padding": output_padding,
        }
        if ndim is not None:
            _positive_int(ndim, "ndim")
        if ndim is None and all(_args.tuple_len(v, k) is None for k, v in sizes.items()):
            raise _args.ArgumentError(
                f"{type(self).__name__} cannot tell the number of spatial dims from int size "
                f"arguments (kernel_size={kernel_size!r}): pass ndim=N or N-tuples"
            )
        n = _args.infer_n(sizes, default=ndim)
        if ndim is not None and ndim != n:
            raise _args.ArgumentError(
                f"ndim={ndim} disagrees with the size arguments, which have {n} dims"
            )
        in_channels = _positive_int(in_channels, "in_channels")
        out_channels = _positive_int(out_channels, "out_channels")
        groups = _positive_int(groups, "groups")
        for count, name in ((in_channels, "in_channels"), (out_channels, "out_channels")):
            if count % groups:
                raise _args.ArgumentError(
                    f"{name} ({count}) must be divisible by groups ({groups})"
                )
        kernel = _args.ntuple(kernel_size, n, "kernel_size")
        st = _args.ntuple(stride, n, "stride")
        dil = _args.ntuple(dilation, n, "dilation")
        out_pad = _args.ntuple(output_padding, n, "output_padding", min_value=0)
        mode = _args.choice(padding_mode, "padding_mode", _args.PADDING_MODES)
        pad_: object
        if transposed:
            pad_ = _args.ntuple(padding, n, "padding", min_value=0)
            if mode != "zeros":
                raise _args.ArgumentError(
                    f'padding_mode must be "zeros" for a transposed conv, got {mode!r}'
                )
            _args.transpose_output_size((1,) * n, kernel, st, (0,) * n, out_pad, dil)  # checks op
        else:
            pairs = _args.padding_pairs(padding, n, kernel, dil, st)
            nested = _args._is_seq(padding) and any(
                _args._is_seq(p)
                for p in padding  # type: ignore[union-attr]
            )
            if isinstance(padding, str) or nested:
                pad_ = padding if isinstance(padding, str) else pairs
            else:
                pad_ = tuple(lo for lo, _ in pairs)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding, self.dilation = kernel, st, pad_, dil
        self.transposed, self.output_padding, self.groups = transposed, out_pad, groups
        self.padding_mode = mode
        shape = (
            (in_channels, out_channels // groups)
            if transposed
            else (out_channels, in_channels // groups)
        )
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty((*shape, *kernel), **factory))  # type: ignore[arg-type]
        if bias:
            self.bias = nn.Parameter(torch.empty(out_channels, **factory))  # type: ignore[arg-type]
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _reset_parameters(self.weight, self.bias)

    def extra_repr(self) -> str:
        # torch's _ConvNd.extra_repr, so the repr reads the same.
        s = "{in_channels}, {out_channels}, kernel_size={kernel_size}, stride={stride}"
        if self.padding != (0,) * len(self.padding):
            s += ", padding={padding}"
        if self.dilation != (1,) * len(self.dilation):
            s += ", dilation={dilation}"
        if self.output_padding != (0,) * len(self.output_padding):
            s += ", output_padding={output_padding}"
        if self.groups != 1:
            s += ", groups={groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.padding_mode != "zeros":
            s += ", padding_mode={padding_mode}"
        if self.method != "auto":
            s += ", method={method}"
        return s.format(**self.__dict__)


class ConvNd(_ConvBase):
    """N-d convolution layer computed as unfold -> matmul (``torch.nn.Conv{N}d`` for any N).

    N is ``len(kernel_size)`` (or of any tuple argument), else ``ndim``.

    Args:
        in_channels, out_channels: channel counts, both divisible by ``groups``.
        kernel_size, stride, dilation: int or N-tuple.
        padding: int, N-tuple, per-side pairs, "same" or "valid".
        groups, bias, padding_mode, device, dtype: as ``torch.nn.Conv2d``.
        ndim: N, needed only when every size argument is an int.
        method: "auto" (torch's native conv over the trailing dims) or "gemm"
            (unfold -> matmul), as :func:`nfold.conv`.

    Shapes: ``(B, C_in, *S) -> (B, C_out, *L)``; weight ``(C_out, C_in/groups, *k)``.

    >>> m = ConvNd(2, 4, 3, padding="same", ndim=4)
    >>> m(torch.randn(1, 2, 5, 5, 5, 5)).shape
    torch.Size([1, 4, 5, 5, 5, 5])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntOrTuple,
        stride: IntOrTuple = 1,
        padding: PaddingArg = 0,
        dilation: IntOrTuple = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        ndim: int | None = None,
        method: str = "auto",
    ) -> None:
        super().__init__(
            in_channels, out_channels, kernel_size, stride, padding, dilation, False, 0,
            groups, bias, padding_mode, device, dtype, ndim, method,
        )  # fmt: skip

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return conv(
            input, self.weight, self.bias, self.stride, self.padding, self.dilation,  # type: ignore[arg-type]
            self.groups, self.padding_mode, self.max_workspace_bytes, self.method,
        )  # fmt: skip


class ConvTransposeNd(_ConvBase):
    """N-d transposed convolution layer computed as matmul -> fold (``torch.nn.ConvTranspose{N}d``
    for any N).

    Args:
        in_channels, out_channels: channel counts, both divisible by ``groups``.
        kernel_size, stride, padding, output_padding, dilation: int or N-tuple.
        groups, bias, padding_mode ("zeros" only), device, dtype: as torch's.
        ndim: N, needed only when every size argument is an int.
        method: "auto" or "gemm", as :func:`nfold.conv_transpose`.

    Shapes: ``(B, C_in, *S) -> (B, C_out, *O)``; weight ``(C_in, C_out/groups, *k)``.
    ``forward(input, output_size=None)``: ``output_size`` picks the output padding, as torch's.

    >>> m = ConvTransposeNd(2, 4, 3, stride=2, ndim=4)
    >>> m(torch.randn(1, 2, 3, 3, 3, 3), output_size=(8, 8, 8, 8)).shape
    torch.Size([1, 4, 8, 8, 8, 8])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntOrTuple,
        stride: IntOrTuple = 1,
        padding: IntOrTuple = 0,
        output_padding: IntOrTuple = 0,
        groups: int = 1,
        bias: bool = True,
        dilation: IntOrTuple = 1,
        padding_mode: str = "zeros",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        ndim: int | None = None,
        method: str = "auto",
    ) -> None:
        super().__init__(
            in_channels, out_channels, kernel_size, stride, padding, dilation, True,
            output_padding, groups, bias, padding_mode, device, dtype, ndim, method,
        )  # fmt: skip

    def forward(self, input: torch.Tensor, output_size: IntOrTuple | None = None) -> torch.Tensor:
        return _transpose_forward(self, input, output_size)


def _transpose_forward(
    m: nn.Module, input: torch.Tensor, output_size: IntOrTuple | None
) -> torch.Tensor:
    if m.padding_mode != "zeros":
        raise _args.ArgumentError(
            f'only padding_mode="zeros" is supported for {type(m).__name__}, got {m.padding_mode!r}'
        )
    # As torch: an explicit output_size decides the output padding, the attribute is ignored.
    output_padding = m.output_padding if output_size is None else 0
    return conv_transpose(
        input, m.weight, m.bias, m.stride, m.padding, output_padding, m.groups,  # type: ignore[arg-type]
        m.dilation, output_size, m.max_workspace_bytes, m.method,  # type: ignore[arg-type]
    )  # fmt: skip


class _Method:
    """``method`` of the drop-in subclasses: "gemm" unless given (``Conv2d(..., method=)``)."""

    max_workspace_bytes: int | None = None
    method: str = "gemm"

    def __init__(self, *args: object, method: str = "gemm", **kwargs: object) -> None:
        method = _args.choice(method, "method", _METHODS)
        super().__init__(*args, **kwargs)
        self.method = method

    def __init_subclass__(cls, **kwargs: object) -> None:
        # the torch class's signature plus ``method``, for help() and docs/api.md
        super().__init_subclass__(**kwargs)
        torch_base = next((b for b in cls.__mro__ if b.__module__ == "torch.nn.modules.conv"
                           and issubclass(b, nn.modules.conv._ConvNd)), None)  # fmt: skip
        if torch_base is not None:
            sig = inspect.signature(torch_base)
            extra = inspect.Parameter("method", inspect.Parameter.KEYWORD_ONLY, default="gemm")
            cls.__signature__ = sig.replace(parameters=[*sig.parameters.values(), extra])  # type: ignore[attr-defined]


class _TorchConv(_Method):
    """Mixin for the torch conv subclasses: ``_conv_forward`` through :func:`nfold.conv`."""

    def _conv_forward(
        self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        return conv(
            input, weight, bias, self.stride, self.padding, self.dilation, self.groups,  # type: ignore[attr-defined]
            self.padding_mode, self.max_workspace_bytes, self.method,  # type: ignore[attr-defined]
        )  # fmt: skip


class _TorchConvTranspose(_Method):
    """Mixin for the torch transposed-conv subclasses: forward through ``conv_transpose``."""

    def forward(self, input: torch.Tensor, output_size: IntOrTuple | None = None) -> torch.Tensor:
        return _transpose_forward(self, input, output_size)  # type: ignore[arg-type]


class Conv1d(_TorchConv, nn.Conv1d):
    """``torch.nn.Conv1d`` computed through :func:`nfold.conv`.

    >>> isinstance(Conv1d(2, 3, 3), nn.Conv1d)
    True
    """


class Conv2d(_TorchConv, nn.Conv2d):
    """``torch.nn.Conv2d`` computed through :func:`nfold.conv`.

    >>> Conv2d(2, 3, 3, padding=1)(torch.randn(1, 2, 5, 5)).shape
    torch.Size([1, 3, 5, 5])
    """


class Conv3d(_TorchConv, nn.Conv3d):
    """``torch.nn.Conv3d`` computed through :func:`nfold.conv`.

    >>> Conv3d(2, 3, 3)(torch.randn(1, 2, 5, 5, 5)).shape
    torch.Size([1, 3, 3, 3, 3])
    """


class ConvTranspose1d(_TorchConvTranspose, nn.ConvTranspose1d):
    """``torch.nn.ConvTranspose1d`` computed through :func:`nfold.conv_transpose`.

    >>> ConvTranspose1d(2, 3, 3, stride=2)(torch.randn(1, 2, 4), output_size=[10]).shape
    torch.Size([1, 3, 10])
    """


class ConvTranspose2d(_TorchConvTranspose, nn.ConvTranspose2d):
    """``torch.nn.ConvTranspose2d`` computed through :func:`nfold.conv_transpose`.

    >>> ConvTranspose2d(2, 3, 3, stride=2)(torch.randn(1, 2, 4, 4)).shape
    torch.Size([1, 3, 9, 9])
    """


class ConvTranspose3d(_TorchConvTranspose, nn.ConvTranspose3d):
    """``torch.nn.ConvTranspose3d`` computed through :func:`nfold.conv_transpose`.

    >>> ConvTranspose3d(2, 3, 2, stride=2)(torch.randn(1, 2, 2, 2, 2)).shape
    torch.Size([1, 3, 4, 4, 4])
    """
