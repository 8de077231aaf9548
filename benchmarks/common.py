"""Timing and memory helpers shared by the benchmark scripts.

Times are the minimum over repeats of wall-clock seconds, with the compared
cases interleaved round-robin so that load on a shared machine hits all of
them alike; only ratios are reported as results.

Memory is measured two ways. :func:`saved_tensor_bytes` counts the bytes of
distinct storages autograd saves for backward during one step (counted with
``torch.autograd.graph.saved_tensors_hooks``): deterministic and device
independent, so its ratios compare across machines. :func:`peak_bytes` is the
real peak increase during one call: ``torch.cuda.max_memory_allocated`` on
CUDA, the process's resident set on the CPU (:func:`peak_rss_bytes`, which
needs ``MALLOC_MMAP_THRESHOLD_`` set at process start).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_times(
    cases: dict[str, Callable[[], object]], repeats: int, device: torch.device, warmup: int = 1
) -> dict[str, list[float]]:
    """Seconds per case in each of ``repeats`` interleaved rounds (round-robin over the cases)."""
    for _ in range(warmup):
        for fn in cases.values():
            fn()
            sync(device)
    seconds: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            seconds[name].append(time.perf_counter() - start)
    return seconds


def interleaved_min_times(
    cases: dict[str, Callable[[], object]], repeats: int, device: torch.device, warmup: int = 1
) -> dict[str, float]:
    """Minimum seconds per case over ``repeats`` interleaved rounds."""
    return {name: min(t) for name, t in interleaved_times(cases, repeats, device, warmup).items()}


def median_round_ratios(seconds: dict[str, list[float]], base: str) -> dict[str, float]:
    """Per case, the median over rounds of its time divided by ``base``'s time in the same round.

    On a shared machine the load drifts between rounds; a ratio taken within
    one round sees the same load in numerator and denominator, so its median
    moves less from run to run than the ratio of the two minima.
    """
    return {
        name: statistics.median(t / b for t, b in zip(times, seconds[base]))
        for name, times in seconds.items()
    }


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


def _status_bytes(field: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``) in bytes."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field} field")


#: glibc returns freed blocks of at least this many bytes to the OS at once, so the
#: resident set falls back between steps and the next step's peak starts from there
MALLOC_MMAP_THRESHOLD = "65536"


def _mmap_threshold_env() -> dict[str, str]:
    # the Makefile's timing settings raise both thresholds; a peak measurement needs the
    # low mmap threshold and glibc's own trimming
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_TRIM_THRESHOLD_"}
    return {**env, "MALLOC_MMAP_THRESHOLD_": MALLOC_MMAP_THRESHOLD}


def ensure_malloc_mmap_threshold() -> None:
    """Re-execute the running script with ``MALLOC_MMAP_THRESHOLD_`` set (and glibc's trimming), unless it is.

    glibc reads the variable at process start only; without it, freed memory of
    one step can stay in the heap and the next step's peak RSS increase is
    under-counted. Call it first thing in ``main()`` of a script that uses
    :func:`peak_rss_bytes`.
    """
    if (
        os.environ.get("MALLOC_MMAP_THRESHOLD_") != MALLOC_MMAP_THRESHOLD
        or "MALLOC_TRIM_THRESHOLD_" in os.environ
    ):
        os.execve(sys.executable, [sys.executable, *sys.argv], _mmap_threshold_env())


def run_with_mmap_threshold(command: list[str]) -> dict:
    """Run ``command`` with ``MALLOC_MMAP_THRESHOLD_`` set; parse the JSON on its last line."""
    done = subprocess.run(
        command, env=_mmap_threshold_env(), capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def peak_rss_bytes(fn: Callable[[], object]) -> int:
    """Peak increase of the process's resident set while ``fn`` runs (Linux).

    Runs ``fn`` once as a warm-up, resets the high-water mark (``VmHWM``, by
    writing ``5`` to ``/proc/self/clear_refs``), reads ``VmRSS``, runs ``fn``
    again and returns ``VmHWM - VmRSS`` before the call. Needs
    ``MALLOC_MMAP_THRESHOLD_`` in the environment at process start (see
    :func:`ensure_malloc_mmap_threshold`).
    """
    fn()
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    before = _status_bytes("VmRSS")
    fn()
    return _status_bytes("VmHWM") - before


def cuda_peak_increase_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Peak increase of ``torch.cuda.max_memory_allocated`` during ``fn`` (after a warm-up)."""
    fn()
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def peak_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Peak memory increase of one call of ``fn``: allocated CUDA memory, or resident set on CPU."""
    if device.type == "cuda":
        return cuda_peak_increase_bytes(fn, device)
    return peak_rss_bytes(fn)


def environment(device: torch.device) -> dict[str, object]:
    info: dict[str, object] = {
        "torch": torch.__version__,
        "device": str(device),
        "threads": torch.get_num_threads(),
        # idle OpenMP threads spin unless PASSIVE (the Makefile's setting); it changes timings
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "unset"),
        # glibc's thresholds: raised, they stop the page faults of re-mapped large buffers
        "MALLOC_MMAP_THRESHOLD_": os.environ.get("MALLOC_MMAP_THRESHOLD_", "default"),
        "MALLOC_TRIM_THRESHOLD_": os.environ.get("MALLOC_TRIM_THRESHOLD_", "default"),
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
