"""Every benchmark side by side in one process; writes results.json and the docs tables.

    python benchmarks/run_all.py [--archs resnet18,resnet50] [--repeats 3] [--device auto]

* training-step and map costs (``heatmap_cost.py``), time and saved-tensor
  memory ratios to one classification training step;
* all-class maps: ``K = 10`` LRP maps in one call vs ``K`` one-class calls,
  and multi-hot targets (only present classes computed);
* the derivative of a convolution's input gradient, autograd's against
  ``ConvInputGradient`` (``conv_double_backward.py``);
* the results go to ``benchmarks/results.json`` and between the
  ``<!-- BENCHMARK:... -->`` markers of ``docs/benchmarks.md``, with the
  targets of the performance issue next to each measured ratio.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import torch
import torchvision

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import (  # noqa: E402
    add_benchmark_options,
    environment,
    interleaved_min_times,
    markdown_table,
    resolve_device,
)
from conv_double_backward import run as run_conv_double_backward  # noqa: E402
from conv_double_backward import table as conv_double_backward_table  # noqa: E402
from heatmap_cost import run as run_heatmap_cost  # noqa: E402
from heatmap_cost import table as heatmap_cost_table  # noqa: E402

import heatmaps  # noqa: E402

TARGETS = {
    "LRP epsilon step": 2.5,
    "LRP epsilon_plus_flat step": 4.0,
    "Grad-CAM step": 1.2,
    "LRPHeatmap, no graph / zennit attributor": 1.05,
}


def all_class_costs(arch: str, batch: int, size: int, repeats: int, device: torch.device) -> dict:
    torch.manual_seed(0)
    model = torchvision.models.get_model(arch, weights=None, num_classes=10).to(device).eval()
    x = torch.rand(batch, 3, size, size, device=device)
    k = 10
    results = {}
    for composite in ("epsilon", "epsilon_plus_flat"):
        hm = heatmaps.LRPHeatmap(model, composite=composite)
        multi_hot = torch.zeros(batch, k, dtype=torch.bool, device=device)
        multi_hot[:, :2] = True  # two present classes per image
        cases = {
            "all classes, one call": lambda hm=hm: hm(x, "all"),
            "K one-class calls": lambda hm=hm: [hm(x, c) for c in range(k)],
            "multi-hot, 2 of 10 present": lambda hm=hm, mh=multi_hot: hm(x, mh),
        }
        times = interleaved_min_times(cases, repeats, device)
        results[composite] = {
            "seconds": times,
            "all / K one-class": times["all classes, one call"] / times["K one-class calls"],
            "multi-hot / all": times["multi-hot, 2 of 10 present"] / times["all classes, one call"],
        }
    return results


def replace_block(text: str, name: str, block: str) -> str:
    pattern = re.compile(rf"(<!-- BENCHMARK:{name} -->\n).*?(\n<!-- /BENCHMARK:{name} -->)", re.S)
    if not pattern.search(text):
        return text + f"\n<!-- BENCHMARK:{name} -->\n{block}\n<!-- /BENCHMARK:{name} -->\n"
    return pattern.sub(lambda m: m.group(1) + block + m.group(2), text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_benchmark_options(parser)
    parser.add_argument("--docs", default=str(HERE.parent / "docs" / "benchmarks.md"))
    parser.add_argument("--json", default=str(HERE / "results.json"))
    args = parser.parse_args()
    device = resolve_device(args.device)
    archs = args.archs.split(",")
    results = run_heatmap_cost(archs, args.batch, args.size, args.repeats, device)
    results["all_class"] = {
        arch: all_class_costs(arch, args.batch, args.size, args.repeats, device) for arch in archs
    }
    results["conv_double_backward"] = run_conv_double_backward(
        archs, args.batch, args.size, args.repeats, device
    )
    Path(args.json).write_text(json.dumps(results, indent=2) + "\n")

    env = results["environment"]
    header = (
        f"Measured on {env['device']} ({env['processor']}, {env['threads']} threads), torch "
        f"{env['torch']}, batch {args.batch}, {args.size} px, minimum of {args.repeats} "
        "interleaved repeats; time ratios are to one classification training step (ratio of "
        "the minima; the targets also give the median over rounds of the ratio within a round). "
        f"OMP_WAIT_POLICY={env.get('OMP_WAIT_POLICY', 'unset')}, glibc MALLOC_MMAP_THRESHOLD_="
        f"{env.get('MALLOC_MMAP_THRESHOLD_', 'default')} and MALLOC_TRIM_THRESHOLD_="
        f"{env.get('MALLOC_TRIM_THRESHOLD_', 'default')}. Peak memory "
        "is the increase of the resident set during one step (allocated memory on CUDA), "
        "parameter gradients included; the saved-tensor ratio compares bytes of tensors "
        "autograd saves for backward.\n\n"
    )
    cost = header + heatmap_cost_table(results)
    target_rows = []
    for name, target in TARGETS.items():
        row: list[object] = [name, f"<= {target}"]
        for arch in archs:
            value = results["archs"][arch]["ratio"].get(name)
            median = results["archs"][arch]["median_ratio"].get(name)
            verdict = "" if value is None else f" ({'met' if value <= target else 'not met'})"
            row.append(
                "–"
                if value is None
                else f"{value:.2f}{verdict}" + ("" if median is None else f"; median {median:.2f}")
            )
        target_rows.append(row)
    for name in ("LRP epsilon step", "LRP epsilon_plus_flat step"):
        row = [f"peak memory, {name}", "<= 3.0"]
        for arch in archs:
            value = results["archs"][arch]["peak_ratio"][name]
            row.append(f"{value:.2f} ({'met' if value <= 3.0 else 'not met'})")
        target_rows.append(row)
    cost += "\n\nTargets of the performance issue:\n\n" + markdown_table(
        ["ratio", "target", *archs], target_rows
    )
    rows = []
    for arch in archs:
        for composite, entry in results["all_class"][arch].items():
            rows.append([arch, composite, entry["all / K one-class"], entry["multi-hot / all"]])
    all_class = markdown_table(
        [
            "arch",
            "composite",
            "all 10 classes / 10 one-class calls (target <= 0.7)",
            "multi-hot 2 of 10 / all",
        ],
        rows,
    )
    docs = Path(args.docs)
    text = docs.read_text() if docs.exists() else "# Benchmarks\n"
    text = replace_block(text, "heatmap_cost", cost)
    text = replace_block(text, "all_class", all_class)
    conv = (
        f"Seconds summed over all convolutions (batch {args.batch}, {args.size} px, minimum of "
        f"{args.repeats} interleaved repeats per layer):\n\n"
        + conv_double_backward_table(results["conv_double_backward"])
    )
    text = replace_block(text, "conv_double_backward", conv)
    docs.write_text(text)
    print(cost)
    print()
    print(all_class)
    print()
    print(conv)
    print(json.dumps(environment(device)))


if __name__ == "__main__":
    main()
