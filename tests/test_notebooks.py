"""Execute every example notebook (``examples/*.ipynb``) at its small size.

Each notebook runs with ``EXAMPLES_SMALL=1`` (see ``examples/_small.py``) and
``MPLBACKEND=Agg`` in a fresh kernel, with ``examples/`` as working directory.
The kernel is started from a temporary kernelspec that points at the Python
running the tests, so it sees the same packages whatever kernelspecs are
installed. Outputs are never written back to the repository's files.

Run as a script to re-execute notebooks at their default size and store the
outputs in the files (what readers see on GitHub)::

    .venv/bin/python tests/test_notebooks.py examples/01_heatmaps_quickstart.ipynb
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
NOTEBOOKS = sorted(EXAMPLES.glob("*.ipynb"))
KERNEL_NAME = "python3"
CELL_TIMEOUT = 600


@contextlib.contextmanager
def kernel_for_this_python(name: str = KERNEL_NAME) -> Iterator[Path]:
    """A temporary kernelspec ``name`` running ``sys.executable``, first on ``JUPYTER_PATH``."""
    saved = os.environ.get("JUPYTER_PATH")
    with tempfile.TemporaryDirectory(prefix="kernelspec-") as tmp:
        spec_dir = Path(tmp) / "kernels" / name
        spec_dir.mkdir(parents=True)
        spec = {
            "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": f"Python 3 ({sys.executable})",
            "language": "python",
        }
        (spec_dir / "kernel.json").write_text(json.dumps(spec, indent=1))
        os.environ["JUPYTER_PATH"] = os.pathsep.join([tmp, *([saved] if saved else [])])
        try:
            yield spec_dir
        finally:
            if saved is None:
                os.environ.pop("JUPYTER_PATH", None)
            else:
                os.environ["JUPYTER_PATH"] = saved


def execute(path: Path, timeout: int = CELL_TIMEOUT):
    """Execute a copy of the notebook at ``path`` in ``examples/``; return the executed copy.

    The environment of the kernel is this process's ``os.environ``; the file is not modified.
    """
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(path, as_version=4)
    with kernel_for_this_python():
        client = NotebookClient(
            notebook,
            timeout=timeout,
            kernel_name=KERNEL_NAME,
            record_timing=False,
            resources={"metadata": {"path": str(path.parent)}},
        )
        client.execute()
    # store the generic kernel name, not the temporary spec's interpreter path
    notebook.metadata["kernelspec"] = {
        "name": KERNEL_NAME,
        "display_name": "Python 3 (ipykernel)",
        "language": "python",
    }
    return notebook


def _has_fashion_mnist() -> bool:
    from rrr.data import DatasetError, find_fashion_mnist

    try:
        find_fashion_mnist("train")
        find_fashion_mnist("test")
    except DatasetError:
        return False
    return True


def test_notebooks_found() -> None:
    assert NOTEBOOKS, f"no notebooks in {EXAMPLES}"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_executes(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    if not _has_fashion_mnist():
        pytest.skip("the notebooks need the real Fashion-MNIST files (make data)")
    from nbclient.exceptions import CellExecutionError

    monkeypatch.setenv("EXAMPLES_SMALL", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    # torch's OpenMP threads sleep instead of spinning while they wait: on a shared
    # two-core machine spinning threads can slow a kernel down several times
    monkeypatch.setenv("OMP_WAIT_POLICY", os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
    original = path.read_bytes()
    try:
        notebook = execute(path)
    except CellExecutionError as error:
        pytest.fail(f"{path.name} failed:\n{error}", pytrace=False)
    assert path.read_bytes() == original, "executing a notebook must not modify its file"
    errors = [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if output.get("output_type") == "error"
    ]
    assert not errors, errors


def main(argv: list[str] | None = None) -> int:
    """Execute notebooks at their default size (or ``--small``) and store the outputs."""
    import nbformat

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("notebooks", nargs="*", type=Path, default=NOTEBOOKS)
    parser.add_argument("--small", action="store_true", help="set EXAMPLES_SMALL=1")
    args = parser.parse_args(argv)
    os.environ.pop("MPLBACKEND", None)  # let the kernel use its inline backend
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if args.small:
        os.environ["EXAMPLES_SMALL"] = "1"
    else:
        os.environ.pop("EXAMPLES_SMALL", None)
    for path in args.notebooks:
        path = path.resolve()
        start = time.perf_counter()
        notebook = execute(path)
        nbformat.write(notebook, path)
        print(f"{path.name}: executed and stored in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
