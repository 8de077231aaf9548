"""``make demo``: the main job on the embedded Fashion-MNIST scenes, in a few minutes on a CPU.

Pre-trains a resnet18 on image-level labels of 2,000 scenes (4 epochs of 125
steps), then fine-tunes it for 125 steps with LRP-epsilon heatmaps and 50
pixel-labelled scenes with the CLI's default recipe (epsilon 0.1, classification
weight 10, segmenter scalars at learning rate 1e-3: docs/results.md says how it
was chosen), evaluates it on test scenes and prints where the overlays and
metrics are. Pass any ``rrr.finetune`` option to change it, e.g. ``python -m
rrr.demo --model mt-unet`` for the multi-task U-Net baseline on the same data and
schedule.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from . import evaluate, finetune

# the budget; the heatmap recipe is the CLI's defaults
DEMO = [
    "--arch", "resnet18", "--method", "lrp", "--steps-per-epoch", "125",
    "--image-size", "64", "--train-images", "2000", "--val-images", "200",
    "--pixel-labels", "50", "--pretrain-epochs", "4", "--epochs", "1",
    "--batch-size", "16", "--pretrain-lr", "1e-3", "--lr", "1e-4",
]  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    extra = list(sys.argv[1:] if argv is None else argv)
    out = Path("runs/demo")
    if "--out" in extra:
        out = Path(extra[extra.index("--out") + 1])
    else:
        extra += ["--out", str(out)]
    if (out / "checkpoint.pt").exists() and "--resume" not in extra:
        print(f"rrr.demo: {out} already holds a demo run; showing its results (delete it to rerun)")
    else:
        code = finetune.main([*DEMO, *extra])
        if code:
            return code
    report = out / "test_metrics.json"
    code = evaluate.main(
        ["--checkpoint", str(out / "checkpoint.pt"), "--split", "test", "--json", str(report)]
    )
    if code:
        return code
    result = json.loads(report.read_text())
    overlays = sorted((out / "overlays").glob("epoch_*.png"))
    print()
    print(
        f"test mIoU {result['miou']:.3f}, pixel accuracy {result['pixel_accuracy']:.3f}, "
        f"classification mAP {result.get('map', float('nan')):.3f}"
    )
    print(f"metrics:  {out / 'metrics.json'}, {report}")
    if overlays:
        print(f"overlays: {overlays[-1]}")
    print(f"tensorboard --logdir {out / 'tensorboard'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
