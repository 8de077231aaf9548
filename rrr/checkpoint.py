"""Checkpoints written atomically and read back safely.

A checkpoint is written to a temporary file in the same directory, flushed to
disk and renamed over the old one (``os.replace`` is atomic on POSIX), so a run
killed at any moment leaves either the previous or the new checkpoint, never a
truncated one. Loading uses ``torch.load(weights_only=True)``: no pickled code
runs.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

REQUIRED_KEYS = ("model", "config", "num_classes", "classes", "epoch", "global_step")


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, corrupt or of another kind."""


def atomic_write_bytes(path: str | Path, write: Any) -> None:
    """Call ``write(file_object)`` on a temporary file and rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, lambda handle: handle.write(text.encode()))


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` atomically (see module docstring)."""
    missing = [key for key in REQUIRED_KEYS if key not in state]
    if missing:
        raise ValueError(f"checkpoint state lacks {missing}")
    atomic_write_bytes(path, lambda handle: torch.save(state, handle))


def safe_load(path: str | Path, what: str, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` with one-line errors that begin with ``what``.

    A file that holds pickled code (anything beyond tensors and plain
    containers) is refused for safety and said so; the advice is never to turn
    the safety off.
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unpickling failure is one clear line
        text = str(error)
        if "Weights only load failed" in text or "Unsupported global" in text:
            found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
            name = f" ({found.group(1)})" if found else ""
            raise CheckpointError(
                f"{what}: holds pickled code{name} beyond tensors and plain data, so it was "
                "refused for safety; only load files written by rrr.finetune or "
                "torch.save(model.state_dict())"
            ) from None
        reason = text.splitlines()[0] if text else type(error).__name__
        raise CheckpointError(f"{what}: truncated or corrupt, cannot be read ({reason})") from None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: no such file")
    state = safe_load(path, f"checkpoint {path}", map_location)
    if not isinstance(state, dict) or any(key not in state for key in REQUIRED_KEYS):
        raise CheckpointError(f"checkpoint {path}: not a checkpoint written by rrr.finetune")
    return state
