"""Multi-process training under ``torchrun``: the process group and gradient averaging.

Gradients are averaged with one flat all-reduce after ``backward()`` rather than
by ``DistributedDataParallel``: DDP's bucketed hooks do not support the double
backward of heatmap losses (its documentation excludes ``autograd.grad`` with
``create_graph``; here it gave gradients several percent off the
single-process ones), while one all-reduce of the finished gradients is exact
by construction.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from .device import resolve_device

__all__ = [
    "Distributed",
    "average_gradients",
    "barrier",
    "broadcast_buffers",
    "broadcast_parameters",
    "setup_distributed",
]


@dataclass
class Distributed:
    """This process's place in the run: rank, number of processes, local rank."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the process that validates and writes files."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def setup_distributed(device_name: str) -> tuple[Distributed, torch.device]:
    """Join the ``torchrun`` process group (gloo on CPU, nccl on GPU) when launched by it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed(), resolve_device(device_name)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Distributed(rank, world, local), device


def broadcast_parameters(model: nn.Module) -> None:
    """Start every process from rank 0's parameters and buffers."""
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            dist.broadcast(tensor, src=0)


def broadcast_buffers(model: nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm statistics) to every process."""
    with torch.no_grad():
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def barrier() -> None:
    dist.barrier()


def average_gradients(model: nn.Module, world_size: int) -> None:
    """Average parameter gradients over processes with one all-reduce (module docstring).

    A parameter without a gradient on some process contributes zeros, so every
    process takes part in the same collective.
    """
    params = list(model.parameters())
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world_size
    offset = 0
    for param, grad in zip(params, grads):
        n = grad.numel()
        if param.requires_grad:
            param.grad = flat[offset : offset + n].view_as(param).clone()
        offset += n
