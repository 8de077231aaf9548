"""Cost of heatmaps relative to one classification training step.

    python benchmarks/heatmap_cost.py [--archs resnet18,resnet50] [--batch 32] [--size 64]

Runs every case side by side in one process (interleaved, minimum of
``--repeats``) and prints a markdown table of time ratios to one
classification training step (forward, cross-entropy, backward, SGD step) of
the same model and batch, plus two memory ratios of the training steps: the
peak memory increase of one step (resident set on CPU, allocated memory on
CUDA) and the bytes of tensors autograd saves for backward. Cases:

* ``zennit attributor``: zennit 0.5.1's own ``Gradient`` attributor (epsilon_plus_flat, ResNet canonizer), no graph;
* ``LRPHeatmap, no graph``: our maps, same composite;
* ``zennit double-backprop step``: zennit with ``create_graph=True`` and a loss on the maps (gradients inexact);
* ``LRP <composite> step``: our exactly differentiable training step (classification + map loss);
* ``Grad-CAM step`` and ``input-gradient step`` (input x gradient, double backprop).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    add_benchmark_options,
    environment,
    interleaved_times,
    markdown_table,
    median_round_ratios,
    peak_bytes,
    resolve_device,
    run_with_mmap_threshold,
    saved_tensor_bytes,
)

import heatmaps  # noqa: E402


def build_cases(arch: str, batch: int, size: int, device: torch.device, zennit: bool = True):
    torch.manual_seed(0)
    model = torchvision.models.get_model(arch, weights=None, num_classes=10).to(device).eval()
    # lr 0: every case runs a full optimizer step, but the shared weights never drift (or diverge)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    x = torch.rand(batch, 3, size, size, device=device)
    y = torch.randint(10, (batch,), device=device)

    # every step also frees its gradients at the end, so that its peak memory counts them
    def classification_step():
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def heatmap_step(hm):
        def step():
            optimizer.zero_grad(set_to_none=True)
            out = hm.explain(x, y, create_graph=True)
            loss = F.cross_entropy(out.logits, y) + out.maps.square().mean()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return step

    lrp_flat = heatmaps.LRPHeatmap(model, composite="epsilon_plus_flat")
    steps = {
        "classification step": classification_step,
        "LRP epsilon step": heatmap_step(heatmaps.LRPHeatmap(model, composite="epsilon")),
        "LRP epsilon_plus_flat step": heatmap_step(lrp_flat),
        "Grad-CAM step": heatmap_step(heatmaps.GradCAMHeatmap(model)),
        "input-gradient step": heatmap_step(heatmaps.InputXGradientHeatmap(model)),
    }
    maps = {"LRPHeatmap, no graph": lambda: lrp_flat(x, y)}
    if zennit and arch.startswith("resnet"):
        from zennit.attribution import Gradient
        from zennit.composites import EpsilonPlusFlat
        from zennit.torchvision import ResNetCanonizer

        one_hot = torch.eye(10, device=device)[y]

        def zennit_maps():
            composite = EpsilonPlusFlat(canonizers=[ResNetCanonizer()])
            with Gradient(model, composite) as attributor:
                attributor(x, one_hot)

        def zennit_step():
            composite = EpsilonPlusFlat(canonizers=[ResNetCanonizer()])
            optimizer.zero_grad(set_to_none=True)
            with Gradient(model, composite, create_graph=True) as attributor:
                out, relevance = attributor(x.requires_grad_(True), one_hot)
            x.requires_grad_(False)
            (F.cross_entropy(out, y) + relevance.sum(1).square().mean()).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        maps["zennit attributor"] = zennit_maps
        steps["zennit double-backprop step (inexact)"] = zennit_step
    return steps, maps


def step_peaks(arch: str, batch: int, size: int, device: torch.device, steps: dict) -> dict:
    """Peak memory of each training step: in this process on CUDA, in a child process on CPU.

    The CPU measurement needs glibc to return freed memory at once
    (``MALLOC_MMAP_THRESHOLD_``), which makes every allocation a system call and
    would distort the timings; so it runs in a separate process.
    """
    if device.type == "cuda":
        return {name: peak_bytes(fn, device) for name, fn in steps.items()}
    command = [sys.executable, __file__, "--peak-only", arch, "--batch", str(batch)]
    command += ["--size", str(size), "--device", str(device)]
    return run_with_mmap_threshold(command)


def run(archs: list[str], batch: int, size: int, repeats: int, device: torch.device) -> dict:
    results: dict = {"environment": environment(device), "batch": batch, "size": size, "archs": {}}
    for arch in archs:
        steps, maps = build_cases(arch, batch, size, device)
        rounds = interleaved_times({**steps, **maps}, repeats, device)
        times = {name: min(t) for name, t in rounds.items()}
        base = times["classification step"]
        memory = {name: saved_tensor_bytes(fn) for name, fn in steps.items()}
        peak = step_peaks(arch, batch, size, device, steps)
        results["archs"][arch] = {
            "seconds": times,
            "ratio": {name: t / base for name, t in times.items()},
            "median_ratio": median_round_ratios(rounds, "classification step"),
            "peak_bytes": peak,
            "peak_ratio": {k: v / peak["classification step"] for k, v in peak.items()},
            "saved_bytes": memory,
            "memory_ratio": {k: v / memory["classification step"] for k, v in memory.items()},
        }
        if "zennit attributor" in times:
            results["archs"][arch]["ratio"]["LRPHeatmap, no graph / zennit attributor"] = (
                times["LRPHeatmap, no graph"] / times["zennit attributor"]
            )
            results["archs"][arch]["median_ratio"]["LRPHeatmap, no graph / zennit attributor"] = (
                median_round_ratios(rounds, "zennit attributor")["LRPHeatmap, no graph"]
            )
    return results


def table(results: dict) -> str:
    archs = list(results["archs"])
    names = list(results["archs"][archs[0]]["ratio"])
    rows = []
    kinds = ("time ratio", "peak memory ratio", "saved-tensor ratio")
    for name in names:
        row: list[object] = [name]
        for arch in archs:
            entry = results["archs"][arch]
            row.append(entry["ratio"].get(name, float("nan")))
            for key in ("peak_ratio", "memory_ratio"):
                value = entry[key].get(name)
                row.append("" if value is None else value)
        rows.append(row)
    header = ["case"] + [f"{a} {k}" for a in archs for k in kinds]
    return markdown_table(header, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_benchmark_options(parser)
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--peak-only", metavar="ARCH", help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = resolve_device(args.device)
    if args.peak_only:  # the child process of step_peaks()
        steps, _ = build_cases(args.peak_only, args.batch, args.size, device)
        print(json.dumps({name: peak_bytes(fn, device) for name, fn in steps.items()}))
        return
    results = run(args.archs.split(","), args.batch, args.size, args.repeats, device)
    print(json.dumps(results["environment"]))
    print(f"batch {args.batch}, {args.size} px, ratios to one classification training step\n")
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
