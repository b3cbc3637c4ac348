"""Helpers for the nfold tests: the dtype -> tolerance table, seeded generators, geometry
helpers written from the formulas in the docs, and the slow, obviously-correct reference
ops ``ref_unfold``, ``ref_fold``, ``ref_unfold_transpose``: those are
:mod:`nfold._reference`'s (one naive reference for ``nfold check`` and the tests,
written from the definitions without nfold's own code); tests/fuzz.py keeps an
independent second oracle.

Importable from any test file as ``from reference import ...`` (``tests`` is on
pytest's ``pythonpath``). Keep inputs tiny: the references loop over kernel offsets.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from nfold._reference import fold as ref_fold  # noqa: F401  (re-exported)
from nfold._reference import unfold as ref_unfold  # noqa: F401
from nfold._reference import unfold_transpose as ref_unfold_transpose  # noqa: F401

# --------------------------------------------------------------------------------------
# dtypes and tolerances
# --------------------------------------------------------------------------------------

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
COMPLEX_DTYPES = (torch.complex64, torch.complex128)
INT_DTYPES = (
    torch.uint8,
    torch.int8,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.uint16,
    torch.uint32,
    torch.uint64,
)
ALL_DTYPES = (*FLOAT_DTYPES, *COMPLEX_DTYPES, *INT_DTYPES, torch.bool)

# dtype -> (rtol, atol) for results that went through floating-point arithmetic
# (conv products, round-off comparisons). Data movement is compared with torch.equal.
TOL: dict[torch.dtype, tuple[float, float]] = {
    torch.float16: (1e-3, 1e-5),
    torch.bfloat16: (1.6e-2, 1e-5),
    torch.float32: (1.3e-6, 1e-5),
    torch.float64: (1e-12, 1e-12),
    torch.complex64: (1.3e-6, 1e-5),
    torch.complex128: (1e-12, 1e-12),
}


def tol(dtype: torch.dtype) -> dict[str, float]:
    """Keyword arguments ``rtol``/``atol`` for ``torch.testing.assert_close``."""
    rtol, atol = TOL.get(dtype, (0.0, 0.0))
    return {"rtol": rtol, "atol": atol}


def dtype_id(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# --------------------------------------------------------------------------------------
# seeded generators
# --------------------------------------------------------------------------------------


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def make_tensor(
    shape: Sequence[int], dtype: torch.dtype = torch.float64, seed: int = 0
) -> torch.Tensor:
    """Random tensor of any dtype (normal for float/complex, full range for small ints)."""
    g = generator(seed)
    shape = tuple(shape)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=g).bool()
    if dtype.is_floating_point:
        return torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    if dtype.is_complex:
        real = torch.float64 if dtype == torch.complex128 else torch.float32
        return torch.complex(
            torch.randn(shape, generator=g, dtype=real), torch.randn(shape, generator=g, dtype=real)
        ).to(dtype)
    info = torch.iinfo(dtype)
    low, high = max(info.min, -(2**62)), min(info.max, 2**62)
    return torch.randint(low, high, shape, generator=g, dtype=torch.int64).to(dtype)


def make_exact(
    shape: Sequence[int], dtype: torch.dtype = torch.float64, seed: int = 0
) -> torch.Tensor:
    """Small integer values (|v| <= 8, >= 0 for unsigned) in ``dtype``: sums of a few hundred
    of them are exact in every dtype, so summation order cannot change the result."""
    g = generator(seed)
    shape = tuple(shape)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=g).bool()
    signed = dtype not in (torch.uint8, torch.uint16, torch.uint32, torch.uint64)
    low = -8 if signed else 0
    values = torch.randint(low, 9, shape, generator=g, dtype=torch.int64)
    if dtype.is_complex:
        imag = torch.randint(low, 9, shape, generator=g, dtype=torch.int64)
        return torch.complex(values.double(), imag.double()).to(dtype)
    return values.to(dtype)


# --------------------------------------------------------------------------------------
# geometry helpers (written from the formulas in the docs, not from nfold._args)
# --------------------------------------------------------------------------------------


def as_tuple(value: int | Sequence[int], n: int) -> tuple[int, ...]:
    return (value,) * n if isinstance(value, int) else tuple(value)


def as_pairs(padding: int | Sequence, n: int) -> tuple[tuple[int, int], ...]:
    """int, N-tuple or per-side pairs -> ((lo, hi), ...)."""
    if isinstance(padding, int):
        return ((padding, padding),) * n
    if all(isinstance(p, int) for p in padding):
        return tuple((p, p) for p in padding)
    return tuple((lo, hi) for lo, hi in padding)


def num_blocks(size: int, k: int, d: int, lo: int, hi: int, s: int) -> int:
    return (size + lo + hi - d * (k - 1) - 1) // s + 1


def grouped_matmul(weight2d: torch.Tensor, cols: torch.Tensor, groups: int) -> torch.Tensor:
    """``(C_out, C_in/g * K) x (B, C_in * K, L) -> (B, C_out, L)``, one matmul per group
    (the block-diagonal product written out by hand)."""
    outs = []
    for w_g, c_g in zip(weight2d.chunk(groups, 0), cols.chunk(groups, 1), strict=True):
        outs.append(w_g @ c_g)
    return torch.cat(outs, 1)
