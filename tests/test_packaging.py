"""The wheel: built offline from the source tree, it holds every module and py.typed,
declares the ``nfold`` command, and imports and runs on its own (from the wheel file,
not from the source tree).

Installing into a fresh venv (which needs ``pip install torch==2.13.0`` first) takes
minutes, so that is done by hand; see CHANGELOG / the issue report for the commands.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import nfold

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if importlib.util.find_spec("setuptools") is None:
        pytest.skip("setuptools is not installed (needed to build offline)")
    out = tmp_path_factory.mktemp("wheel")
    build = tmp_path_factory.mktemp("build")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
        + ["-w", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PIP_NO_INDEX": "1", "TMPDIR": str(build)},
        check=False,
    )
    if proc.returncode and "setuptools>=" in proc.stderr:
        pytest.skip(f"installed setuptools too old to build offline: {proc.stderr[-300:]}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (found,) = out.glob("nfold-*.whl")
    return found


def test_wheel_contents(wheel: Path) -> None:
    assert wheel.name == f"nfold-{nfold.__version__}-py3-none-any.whl"
    names = set(zipfile.ZipFile(wheel).namelist())
    source = {f"nfold/{p.name}" for p in (ROOT / "src" / "nfold").glob("*.py")}
    assert source | {"nfold/py.typed"} <= names
    assert not any(name.startswith(("tests/", "docs/", "benchmarks/")) for name in names)
    dist_info = f"nfold-{nfold.__version__}.dist-info"
    entry_points = zipfile.ZipFile(wheel).read(f"{dist_info}/entry_points.txt").decode()
    assert "nfold = nfold.__main__:main" in entry_points
    metadata = zipfile.ZipFile(wheel).read(f"{dist_info}/METADATA").decode()
    assert "Requires-Dist: torch" in metadata


def test_wheel_imports_and_runs_the_command(wheel: Path, tmp_path: Path) -> None:
    """A pure-Python wheel is importable as a zip: import nfold from it (not the source
    tree), run a conv against torch's and the command's entry point."""
    script = (
        "import sys, torch, nfold\n"
        f"assert nfold.__file__.startswith({str(wheel)!r}), nfold.__file__\n"
        "x, w = torch.randn(2, 3, 5, 6), torch.randn(4, 3, 3, 3)\n"
        "torch.testing.assert_close(nfold.conv(x, w), torch.nn.functional.conv2d(x, w))\n"
        "from nfold.__main__ import main\n"
        "sys.exit(main(['--version']))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(wheel)},
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"nfold {nfold.__version__}" in proc.stdout
