"""``python -m rrr.evaluate``: segmentation and classification metrics of a trained model.

Example::

    python -m rrr.evaluate --checkpoint runs/r18/checkpoint.pt --split test --json test.json

Data options default to the run's own; pass them to evaluate on data composed
differently (e.g. ``--objects 3,5`` for more crowded scenes). Prints and
optionally writes JSON with ``miou``, ``per_class_iou``, ``pixel_accuracy``,
``map`` and ``f1``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from .config import add_data_options


def evaluate_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m rrr.evaluate",
        description="Evaluate a checkpoint of rrr.finetune on a data split.",
    )
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--split", choices=["train", "val", "test"], default="test")
    add_data_options(parser, with_defaults=False)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--gating",
        choices=["predicted", "none", "true"],
        default=None,
        help="class gating of heatmap models (default: the run's; 'true' uses the labels)",
    )
    parser.add_argument("--json", default=None, help="write the metrics to this JSON file")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    return parser


def evaluate(args: argparse.Namespace) -> dict:
    from .checkpoint import atomic_write_text
    from .data import build_dataset
    from .evaluation import SegmentationMetrics
    from .loading import load_trained
    from .trainer import dataset_options, resolve_device

    device = resolve_device(args.device)
    model, state = load_trained(args.checkpoint, device)
    config = dict(state["config"])
    for key in (
        "data",
        "data_root",
        "image_size",
        "train_images",
        "val_images",
        "objects",
        "scene_seed",
    ):
        value = getattr(args, key)
        if value is not None:
            config[key] = value
    config["download"] = args.download
    gating = args.gating
    if gating in ("predicted", "none") and hasattr(model, "gating"):
        model.gating = gating
    dataset = build_dataset(config["data"], args.split, **dataset_options(config, args.split))
    metrics = SegmentationMetrics(state["num_classes"], list(state["classes"]))
    loader = DataLoader(dataset, batch_size=args.batch_size)
    for batch in tqdm(loader, desc=f"evaluate {args.split}", disable=not args.progress):
        x = batch["image"].to(device)
        present = batch["labels"].to(device) > 0.5 if gating == "true" else None
        with torch.enable_grad():
            out = model(x, present, create_graph=False)
        metrics.update(
            out.seg_logits.argmax(1).cpu(), batch["mask"], out.logits.cpu(), batch["labels"]
        )
    result = metrics.compute()
    result.update({"checkpoint": str(args.checkpoint), "split": args.split, "images": len(dataset)})
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    args = evaluate_parser().parse_args(argv)
    from .checkpoint import CheckpointError
    from .data import DatasetError

    try:
        result = evaluate(args)
    except (ValueError, CheckpointError, DatasetError) as error:
        print(f"rrr.evaluate: error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
