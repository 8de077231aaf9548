"""Ctrl-C during training: finish the step, write a checkpoint, then stop.

A ``KeyboardInterrupt`` raised in the middle of a step could leave the
optimizer's update half applied; instead, while :class:`StopRequests` is
active the first SIGINT only sets a flag that the training loop checks
between steps. A second SIGINT interrupts at once, as usual.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

__all__ = ["RunInterrupted", "StopRequests"]


class RunInterrupted(Exception):
    """The run stopped at the user's request after writing a checkpoint at ``global_step``."""

    def __init__(self, global_step: int) -> None:
        super().__init__(f"interrupted at step {global_step}")
        self.global_step = global_step


class StopRequests:
    """Context manager: SIGINT sets :attr:`requested` instead of raising (main thread only)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None
