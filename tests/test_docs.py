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


def _reference():
    sys.path.insert(0, str(ROOT / "docs" / "hooks"))
    try:
        return importlib.import_module("reference")
    finally:
        sys.path.remove(str(ROOT / "docs" / "hooks"))


def test_generated_reference_is_up_to_date():
    """docs/cli.md's option tables and the API pages equal what the code generates now."""
    stale = _reference().stale()
    assert not stale, f"out of date (run python docs/hooks/reference.py): {stale}"


def _cli_sections() -> dict[str, str]:
    """``docs/cli.md`` split at its ``## `python -m rrr.X` `` headings."""
    text = (ROOT / "docs" / "cli.md").read_text()
    parts = re.split(r"^## `python -m (rrr\.\w+)`$", text, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2]))


COMMANDS = ["rrr.finetune", "rrr.evaluate", "rrr.predict"]


def _accepted(command: str) -> set[str]:
    parser = _reference().parser_of(command)
    return {o for a in parser._actions for o in a.option_strings if o.startswith("--")}


@pytest.mark.parametrize("command", COMMANDS)
def test_cli_reference_lists_every_option(command):
    """Every option the parser accepts is documented in its section of docs/cli.md."""
    section = _cli_sections().get(command)
    assert section is not None, f"docs/cli.md has no section for python -m {command}"
    missing = [
        o
        for o in sorted(_accepted(command) - {"--help"})
        if not re.search(rf"`{re.escape(o)}[` ]", section)
    ]
    assert not missing, f"docs/cli.md, python -m {command}: options not documented: {missing}"


@pytest.mark.parametrize("command", COMMANDS)
def test_cli_reference_documents_only_accepted_options(command):
    """Every ``--option`` written in a command's section is one its parser accepts."""
    section = _cli_sections()[command]
    written = set(re.findall(r"`(--[a-z][a-z0-9-]*)", section))
    unknown = sorted(written - _accepted(command))
    assert not unknown, f"docs/cli.md, python -m {command}: documents unknown options {unknown}"


def test_reference_check_fails_on_a_stale_table(tmp_path, monkeypatch):
    """The generator's check notices an edited table (so the up-to-date test can fail)."""
    reference = _reference()
    cli = tmp_path / "cli.md"
    text = (ROOT / "docs" / "cli.md").read_text()
    cli.write_text(text.replace("| `--seed SEED` |", "| `--seed S` |"))
    assert reference.cli_reference(cli.read_text(), cli) != cli.read_text()
    assert reference.cli_reference(text, cli) == text
