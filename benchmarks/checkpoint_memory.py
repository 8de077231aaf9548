"""Peak memory of one training step with and without activation checkpointing.

    python benchmarks/checkpoint_memory.py [--archs resnet18,resnet50] [--batch 32] [--size 64]

One process measures, for every architecture, the peak memory of one training
step (forward, cross-entropy on the logits plus the mean squared map,
backward; parameter gradients included, no optimizer) of:

* ``classification``: cross-entropy only;
* ``Grad-CAM``: :class:`heatmaps.GradCAMHeatmap`, maps with ``create_graph=True``;
* ``input x gradient``: :class:`heatmaps.InputXGradientHeatmap` (double backprop);

each without and with :func:`heatmaps.recomputation.activation_checkpointing`
of the default modules (``layer1`` .. ``layer4`` of a ResNet). On the CPU the
peak is the increase of the process's resident set during the step
(``peak_rss_bytes`` in ``common.py``; the script re-executes itself with
``MALLOC_MMAP_THRESHOLD_=65536`` so that freed memory goes back to the OS
between steps), on CUDA the increase of ``torch.cuda.max_memory_allocated``.
Each case reports the minimum over ``--repeats`` measurements, the cases
interleaved round-robin. It prints a markdown table of MiB and of the ratio to
the classification step without checkpointing; ``--time`` adds the ratio of
step times to that step (minimum of ``--repeats``, interleaved, as in
``heatmap_cost.py``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    add_benchmark_options,
    ensure_malloc_mmap_threshold,
    environment,
    interleaved_min_times,
    markdown_table,
    peak_bytes,
    resolve_device,
)

import heatmaps  # noqa: E402
from heatmaps.recomputation import activation_checkpointing  # noqa: E402

MIB = 2**20
METHODS = ("classification", "Grad-CAM", "input x gradient")


def build_steps(
    arch: str, batch: int, size: int, device: torch.device
) -> dict[str, Callable[[], None]]:
    """One training-step closure per (method, checkpointing) case."""
    torch.manual_seed(0)
    model = torchvision.models.get_model(arch, weights=None, num_classes=10).to(device).eval()
    x = torch.rand(batch, 3, size, size, device=device)
    y = torch.randint(10, (batch,), device=device)
    gradcam = heatmaps.GradCAMHeatmap(model)
    input_x_gradient = heatmaps.InputXGradientHeatmap(model)

    def classification() -> None:
        F.cross_entropy(model(x), y).backward()

    def heatmap_step(hm: heatmaps.Heatmap) -> Callable[[], None]:
        def step() -> None:
            out = hm.explain(x, y, create_graph=True)
            (F.cross_entropy(out.logits, y) + out.maps.square().mean()).backward()

        return step

    def train_step(fn: Callable[[], None], checkpointed: bool) -> Callable[[], None]:
        def step() -> None:
            if checkpointed:
                with activation_checkpointing(model):
                    fn()
            else:
                fn()
            model.zero_grad(set_to_none=True)  # the next step allocates its gradients anew

        return step

    bodies = {
        "classification": classification,
        "Grad-CAM": heatmap_step(gradcam),
        "input x gradient": heatmap_step(input_x_gradient),
    }
    return {
        f"{name}{', checkpointed' if ckpt else ''}": train_step(fn, ckpt)
        for name, fn in bodies.items()
        for ckpt in (False, True)
    }


def run(
    archs: list[str],
    batch: int,
    size: int,
    repeats: int,
    device: torch.device,
    timed: bool = False,
) -> dict:
    results: dict = {"environment": environment(device), "batch": batch, "size": size, "archs": {}}
    for arch in archs:
        steps = build_steps(arch, batch, size, device)
        best = dict.fromkeys(steps, float("inf"))
        for _ in range(repeats):
            for name, fn in steps.items():
                best[name] = min(best[name], peak_bytes(fn, device))
        base = best["classification"]
        results["archs"][arch] = {
            "peak_bytes": best,
            "ratio": {name: value / base for name, value in best.items()},
        }
        if timed:
            seconds = interleaved_min_times(steps, repeats, device)
            results["archs"][arch]["seconds"] = seconds
            results["archs"][arch]["time_ratio"] = {
                name: value / seconds["classification"] for name, value in seconds.items()
            }
    return results


def table(results: dict) -> str:
    archs = list(results["archs"])
    timed = all("time_ratio" in entry for entry in results["archs"].values())
    rows = []
    for method in METHODS:
        row: list[object] = [method]
        for arch in archs:
            entry = results["archs"][arch]
            for name in (method, f"{method}, checkpointed"):
                row += [entry["peak_bytes"][name] / MIB, entry["ratio"][name]]
                if timed:
                    row.append(entry["time_ratio"][name])
        rows.append(row)
    columns = ["MiB", "ratio"] + (["time ratio"] if timed else [])
    header = ["step"] + [
        f"{arch} {prefix}{what}"
        for arch in archs
        for prefix in ("", "checkpointed ")
        for what in columns
    ]
    return markdown_table(header, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_benchmark_options(parser)
    parser.add_argument("--time", action="store_true", help="also report step time ratios")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    device = resolve_device(args.device)
    if device.type == "cpu":
        ensure_malloc_mmap_threshold()  # re-executes this script once, before anything runs
    results = run(args.archs.split(","), args.batch, args.size, args.repeats, device, args.time)
    print(json.dumps(results["environment"]))
    ratios = "its ratio and the step time's ratio" if args.time else "its ratio"
    print(
        f"batch {args.batch}, {args.size} px, peak memory increase of one training step (MiB); "
        f"{ratios} to the classification step without checkpointing\n"
    )
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
