"""The documentation: the site builds with ``mkdocs build --strict``, and the CLI
reference lists every option the command-line parsers accept."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_mkdocs_build_strict(tmp_path):
    mkdocs = Path(sys.executable).parent / "mkdocs"
    result = subprocess.run(
        [str(mkdocs), "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=600,
    )
    if result.returncode != 0:
        print(result.stderr)
    assert result.returncode == 0, (
        f"mkdocs build --strict failed (exit {result.returncode}):\n{result.stderr}"
    )
    assert (tmp_path / "site" / "index.html").is_file()


def _cli_sections() -> dict[str, str]:
    """``docs/cli.md`` split at its ``## `python -m rrr.X` `` headings."""
    text = (ROOT / "docs" / "cli.md").read_text()
    parts = re.split(r"^## `python -m (rrr\.\w+)`$", text, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2]))


@pytest.mark.parametrize(
    "command, module, factory",
    [
        ("rrr.finetune", "rrr.config", "finetune_parser"),
        ("rrr.evaluate", "rrr.evaluate", "evaluate_parser"),
        ("rrr.predict", "rrr.predict", "predict_parser"),
    ],
)
def test_cli_reference_lists_every_option(command, module, factory):
    parser = getattr(importlib.import_module(module), factory)()
    section = _cli_sections().get(command)
    assert section is not None, f"docs/cli.md has no section for python -m {command}"
    options = [
        option
        for action in parser._actions
        for option in action.option_strings
        if option.startswith("--") and option != "--help"
    ]
    missing = [o for o in options if not re.search(rf"`{re.escape(o)}[` ]", section)]
    assert not missing, f"docs/cli.md, python -m {command}: options not documented: {missing}"
