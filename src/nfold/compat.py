"""unfoldNd compatibility: unfoldNd's names, and ``install()`` for libraries that import
``unfoldNd`` by name.

nfold's signatures extend unfoldNd's (same positional order, extra keywords at the
end), so the compatible names are the nfold functions and modules themselves:
``import nfold as unfoldNd`` is a working migration for your own code. Libraries that
``import unfoldNd`` themselves (BackPACK, ...) are reached with :func:`install`.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import math
import sys
import types
import warnings
from collections.abc import Callable
from typing import Any

from . import _args
from .conv import conv
from .modules import Fold as FoldNd
from .modules import Unfold as UnfoldNd
from .modules import UnfoldTranspose as UnfoldTransposeNd
from .patches import fold as foldNd
from .patches import unfold as unfoldNd
from .patches import unfold_transpose as unfold_transposeNd

__all__ = [
    "FoldNd",
    "UnfoldNd",
    "UnfoldTransposeNd",
    "foldNd",
    "install",
    "uninstall",
    "unfoldNd",
    "unfold_transposeNd",
]


# ------------------------------------------------- the private helpers of unfoldNd.utils
# Only those that libraries import (searched: `from unfoldNd.utils import _get_conv,
# _get_kernel_size_numel, _tuple`), with unfoldNd's call forms, for any N >= 1.


def _check_n(n: object) -> int:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise _args.ArgumentError(f"N (number of spatial dims) must be a positive int, got {n!r}")
    return n


def _tuple(value: Any, n: int) -> tuple[Any, ...]:
    """unfoldNd.utils._tuple: ``value`` (an int or an ``n``-sequence) as an ``n``-tuple."""
    n = _check_n(n)
    if isinstance(value, (tuple, list)):
        if len(value) != n:
            raise _args.ArgumentError(f"expected an int or a tuple of {n} values, got {value!r}")
        return tuple(value)
    return (value,) * n


def _get_kernel_size_numel(kernel_size: tuple[int, ...]) -> int:
    """unfoldNd.utils._get_kernel_size_numel: number of elements of a kernel (a tuple)."""
    if not isinstance(kernel_size, tuple):
        raise _args.ArgumentError(f"kernel_size must be a tuple. Got {kernel_size}.")
    return math.prod(kernel_size)


def _get_conv(n: int) -> Callable[..., Any]:
    """unfoldNd.utils._get_conv: a convolution with ``torch.nn.functional.conv{n}d``'s call
    form, ``(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1)``:
    :func:`nfold.conv`, for any ``n``."""
    _check_n(n)
    return conv


# --------------------------------------------------------------------------- install()

_SUBMODULES: dict[str, dict[str, object]] = {
    "unfold": {"UnfoldNd": UnfoldNd, "unfoldNd": unfoldNd},
    "fold": {"FoldNd": FoldNd, "foldNd": foldNd},
    "unfold_transpose": {
        "UnfoldTransposeNd": UnfoldTransposeNd,
        "unfold_transposeNd": unfold_transposeNd,
    },
    "utils": {
        "_get_conv": _get_conv,
        "_get_kernel_size_numel": _get_kernel_size_numel,
        "_tuple": _tuple,
    },
}
_NAMES = ("unfoldNd", *(f"unfoldNd.{sub}" for sub in _SUBMODULES))

# sys.modules entries install() replaced (None: there was none), while installed.
_replaced: dict[str, types.ModuleType | None] | None = None


def _module(name: str, attrs: dict[str, object], package: bool) -> types.ModuleType:
    # A spec (no loader, nothing on disk) so that importlib.util.find_spec("unfoldNd"),
    # which optional-dependency checks use, finds it.
    spec = importlib.machinery.ModuleSpec(name, None, is_package=package)
    module = importlib.util.module_from_spec(spec)
    module.__doc__ = f"nfold standing in for {name} (installed by nfold.compat.install())."
    module.__dict__.update(attrs)
    module.__all__ = sorted(k for k in attrs if not k.startswith("_"))  # type: ignore[attr-defined]
    return module


class _Installed:
    """What :func:`install` returns: ``with install(): ...`` uninstalls on exit, unless
    that call found nfold already installed (then the outer install stays)."""

    def __init__(self, installed: bool) -> None:
        self.installed = installed

    def __enter__(self) -> _Installed:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.installed:
            uninstall()


def install() -> _Installed:
    """Make ``import unfoldNd`` resolve to nfold in this process.

    Puts modules named ``unfoldNd``, ``unfoldNd.unfold``, ``unfoldNd.fold``,
    ``unfoldNd.unfold_transpose`` and ``unfoldNd.utils`` into ``sys.modules``, holding
    unfoldNd's names (``unfoldNd``, ``UnfoldNd``, ``foldNd``, ``FoldNd``,
    ``unfold_transposeNd``, ``UnfoldTransposeNd``; in ``utils``: ``_get_conv``,
    ``_get_kernel_size_numel``, ``_tuple``) bound to nfold's functions and modules,
    which take unfoldNd's call forms. Whether or not unfoldNd is installed, every
    later ``import unfoldNd`` / ``from unfoldNd... import ...`` gets nfold's.

    Call it before importing the library that uses unfoldNd: a module that already
    ran ``from unfoldNd import unfoldNd`` keeps the function it got. If unfoldNd's own
    modules are already imported, they are replaced and a ``UserWarning`` says so.
    Calling it again while installed does nothing (and its handle undoes nothing).

    Returns:
        A handle; ``with nfold.compat.install(): ...`` undoes it on exit
        (see :func:`uninstall`) if this call installed it.

    >>> import nfold, torch
    >>> with nfold.compat.install():
    ...     from unfoldNd import unfoldNd  # what a library does
    ...     unfoldNd(torch.zeros(1, 2, 5, 5, 5), 3).shape
    torch.Size([1, 54, 27])
    >>> unfoldNd is nfold.unfold
    True
    """
    global _replaced
    installs = _replaced is None
    if installs:
        present = [name for name in _NAMES if name in sys.modules]
        if present:
            warnings.warn(
                f"nfold.compat.install(): replacing the already imported {', '.join(present)} "
                "with nfold; modules that imported names from it before keep unfoldNd's",
                UserWarning,
                stacklevel=2,
            )
        _replaced = {name: sys.modules.get(name) for name in _NAMES}
        public = {k: v for attrs in _SUBMODULES.values() for k, v in attrs.items() if k[0] != "_"}
        top = _module("unfoldNd", public, package=True)
        for sub, attrs in _SUBMODULES.items():
            module = _module(f"unfoldNd.{sub}", attrs, package=False)
            sys.modules[module.__name__] = module
            setattr(top, sub, module)
        sys.modules["unfoldNd"] = top
    return _Installed(installs)


def uninstall() -> None:
    """Undo :func:`install`: restore the ``sys.modules`` entries it replaced (the real
    unfoldNd's if it had been imported) and remove the others. Does nothing if not
    installed. Modules that imported names while installed keep nfold's."""
    global _replaced
    if _replaced is None:
        return
    for name, previous in _replaced.items():
        if previous is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = previous
    _replaced = None
