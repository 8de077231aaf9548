"""Generate the option tables of docs/cli.md and the API pages from the code.

    python docs/hooks/reference.py          # rewrite the generated parts
    python docs/hooks/reference.py --check  # exit 1 if they are out of date

docs/cli.md keeps its prose; each command's option tables sit between
``<!-- generated: rrr.X -->`` and ``<!-- end generated -->`` and are rebuilt from
the command's argparse parser (groups become tables, help texts become the
descriptions). docs/api/heatmaps.md and docs/api/rrr.md list one ``:::``
block per public module of the package, found by walking it, below a
hand-written introduction that ends at ``<!-- generated: modules -->``.
tests/test_docs.py runs the check.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

PARSERS = {
    "rrr.finetune": ("rrr.config", "finetune_parser"),
    "rrr.evaluate": ("rrr.evaluate", "evaluate_parser"),
    "rrr.predict": ("rrr.predict", "predict_parser"),
    "rrr.study": ("rrr.study", "study_parser"),
    "rrr.study_report": ("rrr.study_report", "report_parser"),
}
END = "<!-- end generated -->"


def parser_of(command: str) -> argparse.ArgumentParser:
    module, factory = PARSERS[command]
    return getattr(importlib.import_module(module), factory)()


def _option(action: argparse.Action) -> str:
    if not action.option_strings:
        return f"`{(action.metavar or action.dest).upper()} ...`"
    name = max(action.option_strings, key=len)
    if action.nargs == 0:
        return f"`{name}`"
    if action.metavar:
        return f"`{name} {action.metavar}`"
    if action.choices:
        return f"`{name} {{{','.join(str(c) for c in action.choices)}}}`"
    return f"`{name} {action.dest.upper()}`"


def _default(action: argparse.Action) -> str:
    if action.required:
        return "required"
    if action.nargs == 0:
        return "off"
    value = action.default
    if value is None or value == argparse.SUPPRESS:
        return "–"
    if isinstance(value, (tuple, list)):
        value = ",".join(str(v) for v in value)
    return f"`{value}`"


def option_tables(parser: argparse.ArgumentParser) -> str:
    """One markdown table per argument group of ``parser`` (``--help`` left out)."""
    blocks = []
    for group in parser._action_groups:
        actions = [a for a in group._group_actions if not isinstance(a, argparse._HelpAction)]
        if not actions:
            continue
        title = {"positional arguments": "Arguments", "options": "Options"}.get(
            group.title, group.title
        )
        rows = ["| option | default | description |", "|---|---|---|"]
        for action in actions:
            text = (action.help or "").replace("|", "\\|").replace("%%", "%")
            rows.append(f"| {_option(action)} | {_default(action)} | {text} |")
        blocks.append(f"### {title}\n\n" + "\n".join(rows))
    return "\n\n".join(blocks)


def _replace_block(text: str, marker: str, body: str, path: Path) -> str:
    start = f"<!-- generated: {marker} -->"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        raise SystemExit(f"{path}: no '{start}' ... '{END}' block")
    return pattern.sub(lambda _: f"{start}\n\n{body}\n\n{END}", text)


def cli_reference(text: str, path: Path) -> str:
    for command in PARSERS:
        text = _replace_block(text, command, option_tables(parser_of(command)), path)
    return text


def public_modules(package: str) -> list[str]:
    """Every module of ``package`` whose name does not start with an underscore."""
    root = importlib.import_module(package)
    names = [package]
    for info in pkgutil.walk_packages(root.__path__, prefix=f"{package}."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return sorted(names)


def api_page(text: str, package: str, path: Path) -> str:
    body = "\n\n".join(f"::: {name}" for name in public_modules(package))
    return _replace_block(text, "modules", body, path)


def _test_module(name: str):
    tests = str(ROOT / "tests")
    sys.path.insert(0, tests)
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(tests)


def reliability(text: str, path: Path) -> str:
    """The tables of docs/reliability.md from the ``CASES`` of the bad-input tests."""
    library = _test_module("test_bad_inputs_library").CASES
    cli = _test_module("test_bad_inputs").CASES
    rows = ["| case | what the user does | what happens | backends |", "|---|---|---|---|"]
    for case in library:
        where = "all" if case.backends is None else ", ".join(case.backends)
        fixed = " (fixed)" if case.fixed else ""
        rows.append(
            f"| `{case.id}`{fixed} | {case.how} | `{case.error.__name__}`: "
            f"`{case.match.lstrip('^')}` | {where} |"
        )
    library_table = "\n".join(rows)
    rows = ["| case | what the user does | what happens |", "|---|---|---|"]
    for case in cli:
        fixed = " (fixed)" if case.fixed else ""
        if case.behaves == "error":
            happens = f"exit {case.code}, one line: `{case.expect.replace('|', '/')}`"
        elif case.behaves == "warning":
            happens = f"one warning line `{case.expect}`, the run goes on (exit {case.code})"
        else:
            happens = f"{case.behaves}; the run goes on (exit {case.code})"
        rows.append(f"| `{case.id}`{fixed} | `rrr.{case.command}`: {case.trigger} | {happens} |")
    cli_table = "\n".join(rows)
    counts = (
        f"{len(library)} library cases and {len(cli)} command-line cases; "
        f"{sum(c.fixed for c in [*library, *cli])} of them were wrong or gave a raw "
        "traceback before and are marked (fixed)."
    )
    body = f"{counts}\n\n## Library\n\n{library_table}\n\n## Command line\n\n{cli_table}"
    return _replace_block(text, "reliability", body, path)


def targets() -> dict[Path, object]:
    docs = ROOT / "docs"
    return {
        docs / "reliability.md": reliability,
        docs / "cli.md": cli_reference,
        docs / "api" / "heatmaps.md": lambda text, path: api_page(text, "heatmaps", path),
        docs / "api" / "rrr.md": lambda text, path: api_page(text, "rrr", path),
    }


def stale() -> list[Path]:
    """The generated files whose content differs from what the code gives now."""
    return [
        path for path, make in targets().items() if make(path.read_text(), path) != path.read_text()
    ]  # type: ignore[operator]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale files")
    args = parser.parse_args(argv)
    if args.check:
        old = stale()
        for path in old:
            print(f"{path.relative_to(ROOT)} is out of date: run python docs/hooks/reference.py")
        return 1 if old else 0
    for path, make in targets().items():
        path.write_text(make(path.read_text(), path))  # type: ignore[operator]
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
