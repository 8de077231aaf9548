"""Derivative of a convolution's input gradient: autograd's against ``ConvInputGradient``.

    python benchmarks/conv_double_backward.py [--archs resnet18,resnet50] [--batch 32] [--size 64]

A differentiable LRP relevance pass records ``g = J^T r`` for every
convolution; the final backward pass of a training step differentiates it
with respect to ``r`` and the weight. For every convolution of each
architecture (its input shape recorded in one forward pass) this times that
derivative two ways, interleaved, minimum over ``--repeats``:

* ``autograd``: the derivative autograd records for ``convolution_backward``
  (``_convolution_double_backward``);
* ``ConvInputGradient``: :class:`heatmaps.lrp.conv_relevance.ConvInputGradient`
  (the forward convolution and the weight-gradient kernel).

It prints the summed seconds per architecture and their ratio; ``--layers``
adds one line per convolution.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    add_benchmark_options,
    environment,
    interleaved_min_times,
    markdown_table,
    resolve_device,
)

from heatmaps.lrp.conv_relevance import ConvGeometry, ConvInputGradient  # noqa: E402


def conv_inputs(arch: str, batch: int, size: int, device: torch.device) -> list[tuple]:
    """``(conv, input shape)`` of every convolution of ``arch``, from one forward pass."""
    model = torchvision.models.get_model(arch, weights=None, num_classes=10).to(device).eval()
    found: list[tuple] = []
    handles = [
        m.register_forward_hook(lambda mod, args, out: found.append((mod, args[0].shape)))
        for m in model.modules()
        if isinstance(m, nn.Conv2d)
    ]
    with torch.no_grad():
        model(torch.rand(batch, 3, size, size, device=device))
    for handle in handles:
        handle.remove()
    return found


def derivative_cases(conv: nn.Conv2d, shape: torch.Size) -> dict[str, Callable[[], object]]:
    """The two ways to differentiate ``g = J^T r`` of ``conv`` w.r.t. ``r`` and the weight."""
    geometry = ConvGeometry.of(conv)
    assert geometry is not None
    device = conv.weight.device
    x = torch.rand(shape, device=device, requires_grad=True)
    weight = conv.weight.detach().clone().requires_grad_(True)
    r = torch.randn_like(geometry.forward(x.detach(), weight.detach())).requires_grad_(True)
    (recorded,) = torch.autograd.grad(conv._conv_forward(x, weight, None), x, r, create_graph=True)
    ours = ConvInputGradient.apply(r, x.detach(), weight, geometry)
    s = torch.randn_like(ours)
    return {
        "autograd": lambda: torch.autograd.grad(recorded, [r, weight], s, retain_graph=True),
        "ConvInputGradient": lambda: torch.autograd.grad(ours, [r, weight], s, retain_graph=True),
    }


def run(archs: list[str], batch: int, size: int, repeats: int, device: torch.device) -> dict:
    """Seconds of both derivatives summed over each architecture's convolutions, and per layer."""
    results: dict = {}
    for arch in archs:
        totals = dict.fromkeys(("autograd", "ConvInputGradient"), 0.0)
        layers = []
        for conv, shape in conv_inputs(arch, batch, size, device):
            times = interleaved_min_times(derivative_cases(conv, shape), repeats, device)
            for name, seconds in times.items():
                totals[name] += seconds
            layers.append(
                {
                    "weight": list(conv.weight.shape),
                    "input": list(shape),
                    "ratio": times["ConvInputGradient"] / times["autograd"],
                }
            )
        ratio = totals["ConvInputGradient"] / totals["autograd"]
        results[arch] = {"seconds": totals, "ratio": ratio, "layers": layers}
    return results


def table(results: dict, layers: bool = False) -> str:
    rows = [
        [
            arch,
            f"{entry['seconds']['autograd']:.3f}",
            f"{entry['seconds']['ConvInputGradient']:.3f}",
            f"{entry['ratio']:.2f}",
        ]
        for arch, entry in results.items()
    ]
    text = markdown_table(["arch", "autograd s", "ConvInputGradient s", "ratio"], rows)
    if layers:
        layer_rows = [
            [arch, str(tuple(layer["weight"])), str(tuple(layer["input"])), f"{layer['ratio']:.2f}"]
            for arch, entry in results.items()
            for layer in entry["layers"]
        ]
        text += "\n\n" + markdown_table(["arch", "weight", "input", "ratio"], layer_rows)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_benchmark_options(parser)
    parser.add_argument("--layers", action="store_true", help="one line per convolution")
    args = parser.parse_args()
    device = resolve_device(args.device)
    print(environment(device))
    results = run(args.archs.split(","), args.batch, args.size, args.repeats, device)
    print(f"batch {args.batch}, {args.size} px, seconds summed over all convolutions\n")
    print(table(results, args.layers))


if __name__ == "__main__":
    main()
