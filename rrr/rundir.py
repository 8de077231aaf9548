"""The run directory (``--out``): checked, locked and cleaned before a run writes to it.

* **Checked at start:** ``--out`` must be a directory this process can write
  (a file in its place, or a directory without write permission, is refused
  before any training, not after the first epoch).
* **Locked:** a run holds ``--out/.lock`` (JSON: host, process id and the
  process's start time) from start to exit, so a second run into the same
  directory refuses in one line instead of interleaving its logs and
  overwriting the first run's checkpoint. A lock is *stale*, and is taken
  over, when its process is gone (or the process id now belongs to another
  process: the start times differ), or when it came along with a copied run
  directory (it records the directory's device and inode). Under ``torchrun``
  only rank 0 holds it.
* **Cleaned:** temporary files of atomic writes that a killed run left behind
  (``.<name>.*.tmp``) are removed once the lock is held.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import socket
import tempfile
from pathlib import Path

__all__ = ["RunDirectory", "RunDirectoryError"]

LOCK_NAME = ".lock"


class RunDirectoryError(ValueError):
    """``--out`` cannot be used: not writable, not a directory, or held by another run."""


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), or None if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces: count fields after its closing parenthesis
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


class RunDirectory:
    """``--out`` of one run (see the module docstring).

    Args:
        path: the directory; created if missing.
        resume: whether the run continues the one in ``path``.
        hold: take the lock and clean up (rank 0); other ranks only check.
    """

    def __init__(self, path: str | Path, resume: bool, hold: bool = True) -> None:
        self.path = Path(path)
        self.held = False
        self.created = False
        checkpoint = self.path / "checkpoint.pt"
        if self.path.exists() and not self.path.is_dir():
            raise RunDirectoryError(f"--out {self.path}: exists and is not a directory")
        if resume and not checkpoint.is_file():
            raise RunDirectoryError(f"--resume: no checkpoint at {checkpoint} to continue from")
        if not resume and checkpoint.exists():
            raise RunDirectoryError(
                f"--out {self.path} already holds a run (checkpoint.pt); pass --resume to "
                "continue it or choose another --out (nothing was overwritten)"
            )
        if not hold:
            return
        if not self.path.exists():
            try:
                self.path.mkdir(parents=True)
            except OSError as error:
                raise RunDirectoryError(
                    f"--out {self.path}: cannot create it ({error.strerror})"
                ) from None
            self.created = True
        self._check_writable()
        self._lock()
        self._remove_stale_temporaries()

    def _check_writable(self) -> None:
        """Write and remove a probe file (``os.access`` says yes to root on a read-only mount)."""
        try:
            fd, probe = tempfile.mkstemp(prefix=".write-probe.", suffix=".tmp", dir=self.path)
            os.close(fd)
            os.unlink(probe)
        except OSError as error:
            raise RunDirectoryError(f"--out {self.path}: not writable ({error.strerror})") from None

    # -- the lock ---------------------------------------------------------------------------
    @property
    def lock_path(self) -> Path:
        return self.path / LOCK_NAME

    def _identity(self) -> dict[str, object]:
        stat = self.path.stat()
        return {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "start": _start_time(os.getpid()),
            "directory": [stat.st_dev, stat.st_ino],
        }

    def _owner(self) -> dict[str, object] | None:
        """The live run that holds the lock, or None when there is no lock or it is stale."""
        try:
            owner = json.loads(self.lock_path.read_text())
            pid = int(owner["pid"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            return None  # unreadable or half-written: its writer died mid-write
        stat = self.path.stat()
        if owner.get("directory") != [stat.st_dev, stat.st_ino]:
            return None  # copied along with the run directory
        if owner.get("host") != socket.gethostname():
            return owner  # another machine on a shared file system: cannot tell, respect it
        if not _alive(pid) or (owner.get("start") not in (None, _start_time(pid))):
            return None
        return owner

    def _lock(self) -> None:
        me = json.dumps(self._identity())
        for _ in range(3):
            try:
                fd = os.open(self.lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner is not None:
                    raise RunDirectoryError(
                        f"--out {self.path} is in use by another run (process {owner['pid']} "
                        f"on {owner['host']}); wait for it to finish or choose another --out"
                    ) from None
                with contextlib.suppress(FileNotFoundError):
                    self.lock_path.unlink()  # stale: take it over
                continue
            with os.fdopen(fd, "w") as handle:
                handle.write(me)
            self.held = True
            return
        raise RunDirectoryError(f"--out {self.path}: could not take the lock {self.lock_path}")

    def release(self, failed: bool = False) -> None:
        """Give the lock up.

        ``failed``: the run stopped on an error. If this run created the directory
        and never wrote a checkpoint into it, the directory goes too (it holds
        only this run's first logs), so a failed start leaves nothing behind.
        """
        if not self.held:
            return
        with contextlib.suppress(OSError, ValueError):
            if json.loads(self.lock_path.read_text()).get("pid") == os.getpid():
                self.lock_path.unlink()
        self.held = False
        if failed and self.created and not (self.path / "checkpoint.pt").exists():
            shutil.rmtree(self.path, ignore_errors=True)

    # -- clean-up ---------------------------------------------------------------------------
    def _remove_stale_temporaries(self) -> None:
        for path in self.path.rglob(".*.tmp"):
            try:
                path.unlink()
            except OSError as error:
                if error.errno != errno.ENOENT:
                    raise RunDirectoryError(
                        f"--out {self.path}: cannot remove the stale temporary file {path} "
                        f"({error.strerror})"
                    ) from None
