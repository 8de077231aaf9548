"""Cost of all-class maps: Explainer masks vs LRP vs Grad-CAM, side by side in one run.

For a batch of random images and ``K`` classes, times the production of the
``K`` maps of every image by

* ``LRPHeatmap(resnet50, composite="epsilon_plus_flat")(x, "all")``,
* ``GradCAMHeatmap(resnet50)(x, "all")``,
* the paper's Explainer, DeepLabV3-ResNet50, one forward under ``torch.no_grad()``
  (sigmoid masks of all ``K`` classes),
* a light Explainer, LR-ASPP MobileNetV3-Large, likewise,
* and both Explainers through the common interface,
  ``ExplainerHeatmap(resnet50, explainer)(x, "all")``, which also runs the
  classifier forward pass (for the logits / predicted-class targets).

Weights are random (no download): timings do not depend on the weight values.
Prints a markdown table of seconds per image (median over ``--repeats`` timed
calls after one warm-up call) and the ratio LRP time / method time.

    python benchmarks/explainer_cost.py --image-size 64 --batch 8 --classes 10 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torchvision

from heatmaps import ExplainerHeatmap, GradCAMHeatmap, LRPHeatmap
from heatmaps.explainer import build_explainer


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Median wall-clock seconds of ``fn()`` over ``repeats`` calls, after one warm-up call."""
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> list[tuple[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--classes", type=int, default=10, help="K, maps per image")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    torch.manual_seed(args.seed)
    k, size = args.classes, args.image_size
    x = torch.rand(args.batch, 3, size, size, device=device)

    classifier = torchvision.models.resnet50(weights=None, num_classes=k).to(device).eval()
    deeplab = build_explainer("deeplabv3_resnet50", k).to(device).eval()
    lraspp = build_explainer("lraspp_mobilenet_v3_large", k).to(device).eval()
    lrp = LRPHeatmap(classifier, composite="epsilon_plus_flat")
    gradcam = GradCAMHeatmap(classifier)

    def masks(net: torch.nn.Module) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            with torch.no_grad():
                return net(x).sigmoid()

        return run

    methods: list[tuple[str, Callable[[], object]]] = [
        ("LRPHeatmap resnet50, epsilon_plus_flat", lambda: lrp(x, "all")),
        ("GradCAMHeatmap resnet50", lambda: gradcam(x, "all")),
        ("Explainer DeepLabV3-ResNet50 (masks, no_grad)", masks(deeplab)),
        ("Explainer LR-ASPP MobileNetV3 (masks, no_grad)", masks(lraspp)),
        (
            "ExplainerHeatmap DeepLabV3-ResNet50 (+ classifier forward)",
            lambda: ExplainerHeatmap(classifier, deeplab)(x, "all"),
        ),
        (
            "ExplainerHeatmap LR-ASPP MobileNetV3 (+ classifier forward)",
            lambda: ExplainerHeatmap(classifier, lraspp)(x, "all"),
        ),
    ]
    for _, fn in methods:  # every method must give (B, K, H, W) maps
        out = fn()
        assert tuple(out.shape) == (args.batch, k, size, size), tuple(out.shape)

    results = [(name, time_call(fn, args.repeats, device) / args.batch) for name, fn in methods]
    lrp_time = results[0][1]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"device {device} ({name}), torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"image {size}px, batch {args.batch}, K = {k}, median of {args.repeats} after 1 warm-up\n"
    )
    print("| method (all K maps) | s / image | LRP / method |")
    print("|---|---:|---:|")
    for method, seconds in results:
        print(f"| {method} | {seconds:.4g} | {lrp_time / seconds:.1f}x |")
    return results


if __name__ == "__main__":
    main()
