"""nfold.compat.install(): ``import unfoldNd`` (and its submodules) resolve to nfold.

The library-style package below imports every path and name that libraries import from
unfoldNd (BackPACK: ``from unfoldNd import unfoldNd, unfold_transposeNd``; others:
``from unfoldNd.utils import _get_conv, _get_kernel_size_numel, _tuple``, the classes)
at import time, and calls them in unfoldNd's call forms. Its results are compared with
the real unfoldNd (a test dependency) and torch. Every test restores ``sys.modules``.
"""

from __future__ import annotations

import importlib
import importlib.util
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import nfold
from nfold import compat

LIBRARY = '''
"""A library that uses unfoldNd, as BackPACK-style libraries do."""
import torch
import unfoldNd
import unfoldNd.utils
from unfoldNd import FoldNd, UnfoldNd, UnfoldTransposeNd, foldNd, unfold_transposeNd
from unfoldNd import unfoldNd as top_unfoldNd
from unfoldNd.fold import FoldNd as fold_FoldNd, foldNd as fold_foldNd
from unfoldNd.unfold import UnfoldNd as unfold_UnfoldNd, unfoldNd as unfold_unfoldNd
from unfoldNd.unfold_transpose import UnfoldTransposeNd as ut_UnfoldTransposeNd
from unfoldNd.unfold_transpose import unfold_transposeNd as ut_unfold_transposeNd
from unfoldNd.utils import _get_conv, _get_kernel_size_numel, _tuple


def unfold_input(x, module):
    return top_unfoldNd(x, module.kernel_size, dilation=module.dilation,
                        padding=module.padding, stride=module.stride)


def unfold_transpose_input(x, module):
    return unfold_transposeNd(x, module.kernel_size, stride=module.stride,
                              padding=module.padding, output_padding=0,
                              dilation=module.dilation)


class OneHotUnfold:
    """Unfold by one-hot convolution, written with unfoldNd.utils' helpers."""

    def __init__(self, in_channels, kernel_size, n, stride=1):
        self.kernel_size = _tuple(kernel_size, n)
        self.numel = _get_kernel_size_numel(self.kernel_size)
        self.conv = _get_conv(n)
        self.in_channels, self.stride = in_channels, stride

    def __call__(self, x):
        weight = torch.eye(self.numel, dtype=x.dtype).reshape(self.numel, 1, *self.kernel_size)
        weight = weight.repeat(self.in_channels, *(1,) * (len(self.kernel_size) + 1))
        out = self.conv(x, weight, None, self.stride, 0, 1, self.in_channels)
        return out.reshape(x.shape[0], self.in_channels * self.numel, -1)
'''

NAMES = ("unfoldNd", "unfoldNd.unfold", "unfoldNd.fold", "unfoldNd.unfold_transpose")
ALL_NAMES = (*NAMES, "unfoldNd.utils")


@pytest.fixture
def clean_modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """sys.modules without any unfoldNd module or the test library; restored afterwards.
    Yields a directory on sys.path to write the library into."""
    saved = {name: sys.modules.pop(name) for name in ALL_NAMES if name in sys.modules}
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        yield tmp_path
    finally:
        compat.uninstall()
        for name in (*ALL_NAMES, "mylib"):
            sys.modules.pop(name, None)
        sys.modules.update(saved)


def _import_library(path: Path) -> object:
    (path / "mylib.py").write_text(LIBRARY)
    importlib.invalidate_caches()
    return importlib.import_module("mylib")


def _real_unfoldnd() -> dict[str, object]:
    """The real unfoldNd's modules (imported fresh, then taken out of sys.modules)."""
    pytest.importorskip("unfoldNd")
    import unfoldNd
    import unfoldNd.utils

    modules = {name: sys.modules.pop(name) for name in ALL_NAMES if name in sys.modules}
    assert modules["unfoldNd"] is unfoldNd
    return modules


def test_library_imports_resolve_to_nfold(clean_modules: Path) -> None:
    compat.install()
    lib = _import_library(clean_modules)
    assert lib.top_unfoldNd is lib.unfold_unfoldNd is nfold.unfold  # type: ignore[attr-defined]
    assert lib.foldNd is lib.fold_foldNd is nfold.fold  # type: ignore[attr-defined]
    assert lib.unfold_transposeNd is lib.ut_unfold_transposeNd is nfold.unfold_transpose  # type: ignore[attr-defined]
    assert lib.UnfoldNd is lib.unfold_UnfoldNd is nfold.Unfold  # type: ignore[attr-defined]
    assert lib.FoldNd is lib.fold_FoldNd is nfold.Fold  # type: ignore[attr-defined]
    assert lib.UnfoldTransposeNd is lib.ut_UnfoldTransposeNd is nfold.UnfoldTranspose  # type: ignore[attr-defined]
    assert lib.unfoldNd.utils._get_conv is lib._get_conv  # type: ignore[attr-defined]
    assert sorted(lib.unfoldNd.__all__) == sorted(  # type: ignore[attr-defined]
        ["FoldNd", "UnfoldNd", "UnfoldTransposeNd", "foldNd", "unfoldNd", "unfold_transposeNd"]
    )


def test_library_results_equal_real_unfoldnd(clean_modules: Path) -> None:
    real = _real_unfoldnd()["unfoldNd"]
    compat.install()
    lib = _import_library(clean_modules)
    gen = torch.Generator().manual_seed(0)
    x3 = torch.randn(2, 3, 5, 6, 7, dtype=torch.float64, generator=gen)
    conv = torch.nn.Conv3d(3, 4, (2, 3, 2), stride=(1, 2, 1), padding=(1, 0, 1), dilation=2)
    # float64 one-hot convolutions multiply by 1 and add zeros: exact, so compare bitwise
    want = real.unfoldNd(  # type: ignore[attr-defined]
        x3, conv.kernel_size, dilation=conv.dilation, padding=conv.padding, stride=conv.stride
    )
    torch.testing.assert_close(lib.unfold_input(x3, conv), want, rtol=0, atol=0)  # type: ignore[attr-defined]

    x1 = torch.randn(2, 3, 6, dtype=torch.float64, generator=gen)
    convt = torch.nn.ConvTranspose1d(3, 2, 3, stride=2, padding=1, dilation=2)
    want = real.unfold_transposeNd(  # type: ignore[attr-defined]
        x1, convt.kernel_size, stride=convt.stride, padding=convt.padding, dilation=convt.dilation
    )
    torch.testing.assert_close(lib.unfold_transpose_input(x1, convt), want, rtol=0, atol=0)  # type: ignore[attr-defined]

    unfolded = real.unfoldNd(x3, 3, stride=2)  # type: ignore[attr-defined]
    torch.testing.assert_close(
        lib.FoldNd((5, 6, 7), 3, stride=2)(unfolded),  # type: ignore[attr-defined]
        real.FoldNd((5, 6, 7), 3, stride=2)(unfolded),  # type: ignore[attr-defined]
    )
    ut = lib.UnfoldTransposeNd((2, 3), stride=2)  # type: ignore[attr-defined]
    x2 = torch.randn(1, 2, 3, 4, dtype=torch.float64, generator=gen)
    want = real.UnfoldTransposeNd((2, 3), stride=2)(x2, output_size=(7, 10))  # type: ignore[attr-defined]
    torch.testing.assert_close(ut(x2, output_size=(7, 10)), want, rtol=0, atol=0)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_utils_helpers_match_real_unfoldnd(clean_modules: Path, n: int) -> None:
    real = _real_unfoldnd()["unfoldNd.utils"]
    compat.install()
    lib = _import_library(clean_modules)
    assert lib._tuple(3, n) == real._tuple(3, n) == (3,) * n  # type: ignore[attr-defined]
    kernel = tuple(range(2, 2 + n))
    assert lib._tuple(kernel, n) == real._tuple(kernel, n) == kernel  # type: ignore[attr-defined]
    assert lib._get_kernel_size_numel(kernel) == real._get_kernel_size_numel(kernel)  # type: ignore[attr-defined]
    gen = torch.Generator().manual_seed(n)
    x = torch.randn(2, 4, *(5,) * n, dtype=torch.float64, generator=gen)
    w = torch.randn(6, 2, *kernel, dtype=torch.float64, generator=gen)
    args = (None, 2, 1, 1, 2)  # bias, stride, padding, dilation, groups: F.conv's order
    torch.testing.assert_close(lib._get_conv(n)(x, w, *args), real._get_conv(n)(x, w, *args))  # type: ignore[attr-defined]
    one_hot = lib.OneHotUnfold(4, 2, n, stride=2)(x)  # type: ignore[attr-defined]
    torch.testing.assert_close(one_hot, nfold.unfold(x, 2, stride=2), rtol=0, atol=0)


def test_utils_helpers_any_n_and_errors(clean_modules: Path) -> None:
    compat.install()
    from unfoldNd.utils import _get_conv, _get_kernel_size_numel, _tuple

    assert _tuple(2, 4) == (2, 2, 2, 2)
    assert _get_kernel_size_numel((2, 2, 3, 1)) == 12
    x, w = torch.randn(1, 2, 3, 4, 3, 4), torch.randn(3, 2, 2, 2, 2, 2)
    torch.testing.assert_close(_get_conv(4)(x, w), nfold.conv(x, w))
    with pytest.raises(ValueError, match="tuple of 2 values"):
        _tuple((1, 2, 3), 2)
    with pytest.raises(ValueError, match="kernel_size must be a tuple"):
        _get_kernel_size_numel(3)
    with pytest.raises(ValueError, match="positive int"):
        _get_conv(0)


def test_install_replaces_imported_unfoldnd_and_uninstall_restores(clean_modules: Path) -> None:
    real = _real_unfoldnd()
    sys.modules.update(real)
    with pytest.warns(UserWarning, match="replacing the already imported unfoldNd"):
        compat.install()
    import unfoldNd

    assert unfoldNd.unfoldNd is nfold.unfold
    assert sys.modules["unfoldNd.utils"] is not real["unfoldNd.utils"]
    compat.uninstall()
    for name, module in real.items():
        assert sys.modules[name] is module
    import unfoldNd as again

    assert again is real["unfoldNd"]


def test_install_is_idempotent_and_a_context_manager(clean_modules: Path) -> None:
    compat.uninstall()  # not installed: nothing to do
    assert "unfoldNd" not in sys.modules
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning: nothing to replace, then already ours
        with compat.install():
            first = sys.modules["unfoldNd"]
            compat.install()
            assert sys.modules["unfoldNd"] is first
            assert importlib.util.find_spec("unfoldNd") is not None
            assert importlib.util.find_spec("unfoldNd.utils") is not None
            with pytest.raises(ModuleNotFoundError, match="unfoldNd.nonexistent"):
                importlib.import_module("unfoldNd.nonexistent")
    for name in ALL_NAMES:
        assert name not in sys.modules


def test_nested_install_leaves_the_outer_one(clean_modules: Path) -> None:
    """A ``with install()`` inside an installed state undoes nothing on exit: the outer
    install (a plain call or an enclosing ``with``) stays until its own uninstall."""
    compat.install()
    with compat.install():
        pass
    assert sys.modules["unfoldNd"].unfoldNd is nfold.unfold
    with compat.install():
        pass
    assert sys.modules["unfoldNd"].unfoldNd is nfold.unfold
    compat.uninstall()
    for name in ALL_NAMES:
        assert name not in sys.modules


def test_fresh_process_library_runs_on_nfold(tmp_path: Path) -> None:
    """The documented recipe, as a user runs it: install() first, then the library."""
    (tmp_path / "mylib.py").write_text(LIBRARY)
    script = textwrap.dedent(
        """
        import sys, warnings
        warnings.simplefilter("error")
        import nfold, nfold.compat
        nfold.compat.install()
        import torch, mylib
        x = torch.randn(2, 3, 4, 5, 6)
        m = torch.nn.Conv3d(3, 2, 3, padding=1)
        assert mylib.unfold_input(x, m).shape == (2, 81, 120)
        assert mylib.top_unfoldNd is nfold.unfold
        print(sys.modules["unfoldNd"].__doc__)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "nfold standing in for unfoldNd" in result.stdout


def test_public_names_keep_unfoldnd_signatures() -> None:
    """``import nfold as unfoldNd`` (no install) keeps working: same objects."""
    assert compat.unfoldNd is nfold.unfoldNd is nfold.unfold
    assert compat.unfold_transposeNd is nfold.unfold_transposeNd is nfold.unfold_transpose
    x = torch.randn(1, 2, 6)
    torch.testing.assert_close(nfold.unfoldNd(x, 3), F.unfold(x.unsqueeze(-1), (3, 1)))
