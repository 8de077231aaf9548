"""Seeds, random-number-generator states and the batch order of a run.

Exact resume rests on two facts: the batch order of an epoch is a pure
function of ``(seed, epoch)`` (:func:`shuffled_batches`, and the mixed sampler
of :mod:`rrr.data.semisupervised`), and every generator's state goes into the
checkpoint (:func:`rng_state`) and comes back on resume (:func:`set_rng_state`).
"""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch

__all__ = [
    "rng_state",
    "seed_everything",
    "set_rng_state",
    "shuffled_batches",
    "use_deterministic_algorithms",
]


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def use_deterministic_algorithms() -> None:
    """torch's deterministic kernels (``--deterministic``), with the cuBLAS setting they need."""
    torch.use_deterministic_algorithms(True)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def rng_state() -> dict[str, Any]:
    """Every generator's state as tensors (storable with ``weights_only`` checkpoints)."""
    state = {
        "torch": torch.get_rng_state(),
        "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
        "python": torch.tensor(random.getstate()[1], dtype=torch.int64),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the states :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), 624, 0, 0.0))
    random.setstate((3, tuple(int(v) for v in state["python"].tolist()), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def shuffled_batches(
    n: int, batch_size: int, seed: int, epoch: int, rank: int = 0, world: int = 1
) -> list[list[int]]:
    """Classification batches: a permutation per ``(seed, epoch)``, sharded over ranks."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n, generator=generator).tolist()
    per_rank = batch_size // world
    batches = []
    for start in range(0, n - batch_size + 1, batch_size):
        batch = order[start : start + batch_size]
        batches.append(batch[rank * per_rank : (rank + 1) * per_rank])
    return batches
