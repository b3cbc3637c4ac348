"""``convert(model)``: swap torch's conv layers for their nfold twins."""

from __future__ import annotations

import copy
import itertools
from typing import Any

from torch import nn
from torch.nn.modules.conv import _LazyConvXdMixin
from torch.nn.modules.lazy import LazyModuleMixin

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


def _lazy_twin(cls: type[nn.Module], n: int) -> type[nn.Module]:
    """nfold's lazy conv class over ``cls`` (as ``nn.LazyConv2d`` is over ``nn.Conv2d``):
    it infers ``in_channels`` at its first call, then becomes ``cls``."""
    lazy = type(f"Lazy{cls.__name__}", (_LazyConvXdMixin, cls), {
        "cls_to_become": cls, "_get_num_spatial_dims": lambda self: n, "__module__": __name__,
    })  # fmt: skip
    globals()[lazy.__name__] = lazy  # so that pickle finds it
    return lazy


#: the twin of an uninitialised lazy conv (``nn.LazyConv2d`` & co.), by its nfold class
LAZY_TWINS = {twin: _lazy_twin(twin, int(twin.__name__[-2])) for twin in TWINS.values()}


#: The methods through which a torch conv layer computes: a subclass that overrides none
#: of them computes as its base, and is converted as its base.
OWN_COMPUTE = ("forward", "_conv_forward", "_output_padding")


def twin_class(module: nn.Module) -> type[nn.Module] | None:
    """nfold's class for ``module``, or None if ``convert`` leaves it alone."""
    for base, twin in TWINS.items():
        if isinstance(module, base):
            cls = type(module)
            same = all(getattr(cls, m, None) is getattr(base, m, None) for m in OWN_COMPUTE)
            return twin if same else None
    return None


def _twin(module: nn.Module, cls: type[nn.Module]) -> nn.Module:
    """The nfold twin of ``module``: same state (parameters, buffers, hooks, mode), new class."""
    new = cls.__new__(cls)
    # Shallow state copy: Parameter objects are shared; the containers are not.
    new.__dict__.update(
        {k: (v.copy() if isinstance(v, dict) else v) for k, v in module.__dict__.items()}
    )
    return new


def _lazy(module: Any, cls: type[nn.Module]) -> nn.Module:
    """The lazy twin of an uninitialised lazy conv ``module``, whose hooks (copied bound to
    ``module``) are registered again bound to the twin, as ``LazyModuleMixin`` does."""
    new: Any = _twin(module, LAZY_TWINS[cls])
    for hooks, handle in (
        (new._forward_pre_hooks, module._initialize_hook),
        (new._forward_pre_hooks_with_kwargs, module._initialize_hook),
        (new._load_state_dict_pre_hooks, module._load_hook),
    ):
        hooks.pop(handle.id, None)
    new._load_hook = new._register_load_state_dict_pre_hook(new._lazy_load_hook)
    new._initialize_hook = new.register_forward_pre_hook(new._infer_parameters, with_kwargs=True)
    return new


def convert(model: nn.Module, inplace: bool = False, method: str = "gemm") -> nn.Module:
    """Replace every ``torch.nn.Conv{1,2,3}d`` / ``ConvTranspose{1,2,3}d`` by its nfold twin.

    Replaced: those six torch classes, and their subclasses that override none of
    ``forward``, ``_conv_forward``, ``_output_padding`` (they compute as their base and
    become its twin; other methods and attributes of the subclass are not kept as
    methods). Subclasses that override one of them are left alone. The twin shares
    the replaced module's ``weight`` and ``bias`` (the same ``Parameter`` objects), its
    buffers, attributes, hooks and train/eval mode, hence also its device and dtype. A
    module used at several places is replaced by one twin. An uninitialised lazy conv
    (``nn.LazyConv2d`` & co.) becomes a lazy twin that infers its input channels at its
    first call, as torch's does, and then is nfold's layer.

    Args:
        model: any ``nn.Module`` (may itself be a conv layer).
        inplace: modify ``model`` itself; otherwise the module structure is copied
            and converted, ``model`` keeps its classes, and both share their
            Parameters and buffers (training either trains both, as with
            ``inplace=True``).
        method: the twins' ``method``: "gemm" (nfold's own unfold -> matmul arithmetic)
            or "auto" (torch's native conv), as :func:`nfold.conv`.

    Returns:
        The converted model (``model`` itself when ``inplace`` and it is not a conv).

    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    >>> type(convert(net)[0]).__module__
    'nfold.conv_modules'
    """
    if not isinstance(model, nn.Module):
        raise _args.ArgumentTypeError(
            f"model must be a torch.nn.Module, got {type(model).__name__}"
        )
    method = _args.choice(method, "method", ("auto", "gemm"))
    if not inplace:  # new modules, the same Parameters and buffers
        state = itertools.chain(model.parameters(), model.buffers())
        model = copy.deepcopy(model, {id(t): t for t in state})
    memo: dict[int, nn.Module] = {}

    def swap(module: nn.Module) -> nn.Module:
        cls = twin_class(module)
        if cls is not None and id(module) not in memo:
            lazy = isinstance(module, LazyModuleMixin) and module.has_uninitialized_params()
            memo[id(module)] = _lazy(module, cls) if lazy else _twin(module, cls)
            memo[id(module)].method = method  # type: ignore[assignment]
        return memo.get(id(module), module)

    for parent in list(model.modules()):
        for name, child in list(parent._modules.items()):
            if child is not None:
                parent._modules[name] = swap(child)
    return swap(model)
