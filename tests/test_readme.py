"""The README's two commands are what a newcomer pastes; CI must run the same test command."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    return re.findall(r"```bash\n(.+?)\n```", (ROOT / "README.md").read_text())


def test_readme_opens_with_install_check_and_test_commands():
    commands = _readme_commands()
    assert len(commands) >= 2
    assert commands[0].endswith("nfold check")
    assert "pytest" in commands[1]


def test_ci_runs_the_readme_test_command_verbatim():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert _readme_commands()[1] in ci


def test_readme_api_block_runs():
    """The README's "API in a dozen lines" block runs as written (and its shape comments
    hold)."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## API in a dozen lines\n\n```python\n(.+?)\n```", text, re.S)
    assert block is not None
    scope: dict = {}
    try:
        exec(block.group(1), scope)  # noqa: S102 (our own README)
    finally:
        import nfold.compat

        nfold.compat.uninstall()
    assert scope["cols"].shape == (2, 3 * 81, 4096)
    assert scope["y"].shape == scope["x"].shape
    assert scope["A"].shape == (243, 243)
    torch = scope["torch"]
    torch.testing.assert_close(scope["mine"], scope["out"], rtol=1e-4, atol=1e-4)
