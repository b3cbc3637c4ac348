"""Shared pytest setup. The reusable helpers (dtype -> tolerance table, seeded
generators, the slow references for unfold / fold / unfold_transpose for any N) live
in ``reference.py`` so that any test module can ``from reference import ...``; they are
re-exported here for discoverability."""

from __future__ import annotations

import pytest
import torch

from nfold import _plan
from reference import (  # noqa: F401  (re-exported)
    ALL_DTYPES,
    COMPLEX_DTYPES,
    FLOAT_DTYPES,
    INT_DTYPES,
    TOL,
    dtype_id,
    generator,
    make_exact,
    make_tensor,
    ref_fold,
    ref_unfold,
    ref_unfold_transpose,
    tol,
)


def pytest_configure(config: pytest.Config) -> None:
    # torch-internal notices that say nothing about nfold
    config.addinivalue_line(
        "filterwarnings", "ignore:`torch.jit.script` is deprecated:DeprecationWarning"
    )
    config.addinivalue_line(
        "filterwarnings", "ignore:Using padding='same' with even kernel:UserWarning"
    )


@pytest.fixture(autouse=True)
def _fresh_plans(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """Plans are cached per call signature, and some are derived from the device policy,
    which tests patch: forget them after such a test, so later tests see the real one."""
    yield
    if "monkeypatch" in request.fixturenames:
        _plan.clear_caches()


@pytest.fixture(autouse=True)
def _seed() -> None:
    """Every test starts from the same global RNG state (tests also pass explicit
    generators; this pins anything that falls back on the global one)."""
    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """Small ops on a shared 2-core machine: one intra-op thread avoids pool spin-waits."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
