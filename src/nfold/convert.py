"""``convert(model)``: swap torch's conv layers for their nfold twins."""

from __future__ import annotations

import copy

from torch import nn

from . import _args
from .conv_modules import (
    Conv1d,
    Conv2d,
    Conv3d,
    ConvTranspose1d,
    ConvTranspose2d,
    ConvTranspose3d,
)

TWINS: dict[type[nn.Module], type[nn.Module]] = {
    nn.Conv1d: Conv1d,
    nn.Conv2d: Conv2d,
    nn.Conv3d: Conv3d,
    nn.ConvTranspose1d: ConvTranspose1d,
    nn.ConvTranspose2d: ConvTranspose2d,
    nn.ConvTranspose3d: ConvTranspose3d,
}


def _twin(module: nn.Module) -> nn.Module:
    """The nfold twin of ``module``: same state (parameters, buffers, hooks, mode), new class."""
    cls = TWINS[type(module)]
    new = cls.__new__(cls)
    # Shallow state copy: Parameter objects are shared; the containers are not.
    new.__dict__.update(
        {k: (v.copy() if isinstance(v, dict) else v) for k, v in module.__dict__.items()}
    )
    return new


def convert(model: nn.Module, inplace: bool = False, method: str = "gemm") -> nn.Module:
    """Replace every ``torch.nn.Conv{1,2,3}d`` / ``ConvTranspose{1,2,3}d`` by its nfold twin.

    Only modules whose type is exactly one of those six torch classes are replaced
    (subclasses may override ``forward`` and are left alone). The twin shares the
    replaced module's ``weight`` and ``bias`` (the same ``Parameter`` objects), its
    attributes, hooks and train/eval mode, hence also its device and dtype. A module
    used at several places is replaced by one twin.

    Args:
        model: any ``nn.Module`` (may itself be a conv layer).
        inplace: modify ``model`` itself; otherwise a deep copy is converted and
            ``model`` is left untouched (the copy's parameters are then new objects).
        method: the twins' ``method``: "gemm" (nfold's own unfold -> matmul arithmetic)
            or "auto" (torch's native conv), as :func:`nfold.conv`.

    Returns:
        The converted model (``model`` itself when ``inplace`` and it is not a conv).

    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    >>> type(convert(net)[0]).__module__
    'nfold.conv_modules'
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    method = _args.choice(method, "method", ("auto", "gemm"))
    if not inplace:
        model = copy.deepcopy(model)
    memo: dict[int, nn.Module] = {}

    def swap(module: nn.Module) -> nn.Module:
        if type(module) in TWINS:
            if id(module) not in memo:
                memo[id(module)] = _twin(module)
                memo[id(module)].method = method  # type: ignore[assignment]
            return memo[id(module)]
        return module

    for parent in list(model.modules()):
        for name, child in list(parent._modules.items()):
            if child is not None:
                parent._modules[name] = swap(child)
    return swap(model)
