"""Timing and memory helpers shared by the benchmark scripts.

Times are the minimum over repeats of wall-clock seconds, with the compared
cases interleaved round-robin so that load on a shared machine hits all of
them alike; only ratios are reported as results.

Memory is the peak of bytes held by tensors autograd saved for backward during
one step (distinct storages, counted with ``torch.autograd.graph.saved_tensors_hooks``),
plus the parameter gradients; on CUDA also ``torch.cuda.max_memory_allocated``.
The saved-tensor count is deterministic and device independent, which makes
its ratios comparable across machines.
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_min_times(
    cases: dict[str, Callable[[], object]], repeats: int, device: torch.device, warmup: int = 1
) -> dict[str, float]:
    """Minimum seconds per case over ``repeats`` interleaved rounds."""
    for _ in range(warmup):
        for fn in cases.values():
            fn()
            sync(device)
    best = dict.fromkeys(cases, float("inf"))
    for _ in range(repeats):
        for name, fn in cases.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def saved_tensor_bytes(fn: Callable[[], object]) -> int:
    """Bytes of distinct storages autograd saves while ``fn`` runs."""
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


def cuda_peak_bytes(fn: Callable[[], object], device: torch.device) -> int | None:
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device)


def environment(device: torch.device) -> dict[str, object]:
    info: dict[str, object] = {
        "torch": torch.__version__,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    def fmt(value: object) -> str:
        if isinstance(value, float):
            return f"{value:.2f}"
        return str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def add_benchmark_options(parser: argparse.ArgumentParser) -> None:
    """The options every benchmark script shares: architectures, batch, size, repeats, device."""
    parser.add_argument("--archs", default="resnet18,resnet50")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
