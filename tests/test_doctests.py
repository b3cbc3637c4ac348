"""The ``>>>`` examples in nfold's docstrings run as doctests, and every public name in
``nfold.__all__`` carries at least one.

Each docstring is its own test id (``nfold.patches.unfold``, ...). The examples see their
module's globals (``torch`` and the module's own names), as ``python -m doctest`` would.
"""

from __future__ import annotations

import doctest
import importlib
import io
import pkgutil
import types

import pytest
import torch

import nfold

OPTIONFLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
# Modules that are entry points, not libraries (importing runs nothing, but they hold
# no examples by design).
SKIP_MODULES = {"nfold.__main__"}


def _modules() -> list[types.ModuleType]:
    found = [nfold]
    for info in pkgutil.iter_modules(nfold.__path__, "nfold."):
        if info.name in SKIP_MODULES:
            continue
        try:
            found.append(importlib.import_module(info.name))
        except ModuleNotFoundError as err:  # an optional third-party dependency (bench)
            if err.name is None or err.name.split(".")[0] == "nfold":
                raise
    return found


def _doctests() -> dict[str, doctest.DocTest]:
    finder = doctest.DocTestFinder(exclude_empty=True)
    tests: dict[str, doctest.DocTest] = {}
    for module in _modules():
        for test in finder.find(module):
            if test.examples:
                tests.setdefault(test.name, test)
    return tests


DOCTESTS = _doctests()


@pytest.mark.parametrize("name", sorted(DOCTESTS))
def test_docstring_examples_run(name: str) -> None:
    test = DOCTESTS[name]
    torch.manual_seed(0)
    output = io.StringIO()
    runner = doctest.DocTestRunner(optionflags=OPTIONFLAGS)
    globs = dict(test.globs)
    result = runner.run(
        doctest.DocTest(
            test.examples, globs, test.name, test.filename, test.lineno, test.docstring
        ),
        out=output.write,
        clear_globs=True,
    )
    assert result.attempted > 0
    assert result.failed == 0, output.getvalue()


def _examples_of(obj: object) -> list[doctest.Example]:
    """The examples in ``obj``'s own docstring (a class: its docstring and its methods')."""
    found = doctest.DocTestFinder(recurse=isinstance(obj, type)).find(obj, name="x", module=False)
    return [example for test in found for example in test.examples]


@pytest.mark.parametrize("name", sorted(nfold.__all__))
def test_public_name_has_an_example(name: str) -> None:
    obj = getattr(nfold, name)
    assert _examples_of(obj), (
        f"nfold.{name} ({getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', '?')}) "
        "has no '>>>' example in its docstring"
    )


def test_public_names_are_documented_and_sorted() -> None:
    assert list(nfold.__all__) == sorted(nfold.__all__)
    for name in nfold.__all__:
        assert getattr(nfold, name).__doc__, f"nfold.{name} has no docstring"
