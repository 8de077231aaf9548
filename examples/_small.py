"""The "small size" switch shared by the example notebooks.

The test suite executes every notebook with ``EXAMPLES_SMALL=1``, which shrinks
data sets and step counts so a notebook runs in well under a minute on two CPU
cores. Without it (the default) the notebooks use sizes that give meaningful
pictures and still run in a few minutes on a laptop CPU::

    from _small import SMALL, pick

    N_TRAIN = pick(12_000, small=1_200)

Importing it also silences tqdm's "IProgress not found" warning, which captum
triggers on import in a notebook without ipywidgets (no progress bars are used).
"""

from __future__ import annotations

import os
import warnings
from typing import TypeVar

T = TypeVar("T")

warnings.filterwarnings("ignore", message="IProgress not found")

SMALL: bool = os.environ.get("EXAMPLES_SMALL", "").strip().lower() not in ("", "0", "false", "no")
"""True when the environment variable ``EXAMPLES_SMALL`` is set (to anything but 0/false/no)."""


def pick(default: T, small: T) -> T:
    """``small`` when :data:`SMALL` is on, ``default`` otherwise."""
    return small if SMALL else default
