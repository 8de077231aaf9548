"""Command-line options shared by ``rrr.finetune``, ``rrr.evaluate`` and ``rrr.predict``."""

from __future__ import annotations

import argparse

from .losses import LOSSES


def _pair(text: str) -> tuple[int, int]:
    try:
        low, high = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN,MAX (two integers), got {text!r}") from None
    if not 1 <= low <= high:
        raise argparse.ArgumentTypeError(f"expected 1 <= MIN <= MAX, got {text!r}")
    return low, high


def _positive(kind: type):
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
        return value

    return parse


def _non_negative(kind: type):
    def parse(text: str):
        value = kind(text)
        if value < 0:
            raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text}")
        return value

    return parse


DATA_DEFAULTS = {
    "data": "fashion-scenes",
    "data_root": None,
    "image_size": 64,
    "train_images": 3000,
    "val_images": 300,
    "objects": (1, 3),
    "scene_seed": 0,
}


def add_data_options(parser: argparse.ArgumentParser, with_defaults: bool = True) -> None:
    """Data options. Without defaults (evaluation) an unset option means "as in the run"."""
    d = DATA_DEFAULTS if with_defaults else dict.fromkeys(DATA_DEFAULTS)
    group = parser.add_argument_group("data")
    group.add_argument("--data", choices=["fashion-scenes", "voc", "folder"], default=d["data"])
    group.add_argument("--data-root", default=d["data_root"], help="dataset directory")
    group.add_argument("--download", action="store_true", help="allow downloading the dataset")
    group.add_argument("--image-size", type=_positive(int), default=d["image_size"])
    group.add_argument(
        "--train-images",
        type=_positive(int),
        default=d["train_images"],
        help="training scenes (fashion-scenes)",
    )
    group.add_argument(
        "--val-images",
        type=_positive(int),
        default=d["val_images"],
        help="validation/test scenes (fashion-scenes)",
    )
    group.add_argument(
        "--objects",
        type=_pair,
        default=d["objects"],
        metavar="MIN,MAX",
        help="items per scene (fashion-scenes)",
    )
    group.add_argument(
        "--scene-seed",
        type=int,
        default=d["scene_seed"],
        help="scene composition seed (fashion-scenes)",
    )


def finetune_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m rrr.finetune",
        description="Fine-tune a torchvision classifier into a semantic segmenter from image-level "
        "labels plus a few pixel-labelled images, or train a U-Net baseline on the same data.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--arch", default="resnet18", help="torchvision classification architecture"
    )
    parser.add_argument("--model", choices=["heatmap", "unet", "mt-unet"], default="heatmap")
    parser.add_argument(
        "--method", default="lrp", help="heatmap backend (see heatmaps.available())"
    )
    parser.add_argument(
        "--explainer",
        default="deeplabv3_resnet50",
        help="Explainer network (with --method explainer): deeplabv3_resnet50 (the paper's), "
        "lraspp_mobilenet_v3_large, fcn_resnet50, deeplabv3_resnet101, "
        "deeplabv3_mobilenet_v3_large or small",
    )
    parser.add_argument("--composite", default="epsilon", help="LRP composite (with --method lrp)")
    parser.add_argument(
        "--epsilon", type=float, default=1e-6, help="epsilon of the 'epsilon' composite"
    )
    parser.add_argument(
        "--loss", choices=sorted(LOSSES), default="ce", help="segmentation loss on the heatmaps"
    )
    parser.add_argument("--cls-weight", type=_non_negative(float), default=1.0)
    parser.add_argument("--seg-weight", type=_non_negative(float), default=1.0)
    parser.add_argument(
        "--weights",
        default="none",
        help="none, DEFAULT (torchvision, downloads) or a state-dict PATH",
    )
    parser.add_argument("--background", choices=["constant", "neuron"], default="constant")
    parser.add_argument("--normalise", choices=["std", "max", "none"], default="std")
    parser.add_argument(
        "--smoothing", type=_non_negative(int), default=0, help="box blur of the maps (px)"
    )
    parser.add_argument("--gating", choices=["predicted", "none"], default="predicted")
    parser.add_argument(
        "--threshold", type=float, default=0.0, help="class logit threshold of --gating predicted"
    )
    add_data_options(parser)
    parser.add_argument(
        "--pixel-labels",
        type=_non_negative(int),
        default=50,
        help="training images that keep pixel masks",
    )
    parser.add_argument(
        "--labelled-per-batch",
        type=_non_negative(int),
        default=None,
        help="pixel-labelled images per batch (default: half)",
    )
    parser.add_argument(
        "--pretrain-epochs",
        type=_non_negative(int),
        default=2,
        help="multi-label classification epochs first",
    )
    parser.add_argument("--epochs", type=_non_negative(int), default=2)
    parser.add_argument(
        "--steps-per-epoch",
        type=_non_negative(int),
        default=0,
        help="cap on batches per epoch (0 = all)",
    )
    parser.add_argument("--batch-size", type=_positive(int), default=16)
    parser.add_argument(
        "--lr", type=_positive(float), default=1e-4, help="fine-tuning learning rate (AdamW)"
    )
    parser.add_argument("--pretrain-lr", type=_positive(float), default=1e-3)
    parser.add_argument(
        "--scalar-lr",
        type=_positive(float),
        default=1e-2,
        help="learning rate of the segmenter's scale and background",
    )
    parser.add_argument(
        "--optimizer",
        choices=["adamw", "sgd"],
        default="adamw",
        help="AdamW (as in the paper) or SGD with momentum 0.9",
    )
    parser.add_argument("--weight-decay", type=_non_negative(float), default=1e-4)
    parser.add_argument(
        "--no-freeze-bn", dest="freeze_bn", action="store_false", help="update BatchNorm statistics"
    )
    parser.add_argument(
        "--checkpoint-activations",
        action="store_true",
        help="recompute the encoder's activations in the backward pass instead of keeping "
        "them (less memory, one more forward pass; not with --method lrp)",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--deterministic", action="store_true", help="torch deterministic algorithms"
    )
    parser.add_argument("--out", default="runs/latest", help="output directory")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument(
        "--checkpoint-every",
        type=_non_negative(int),
        default=50,
        help="also checkpoint every N steps (0 = epochs only)",
    )
    parser.add_argument(
        "--workers", type=_non_negative(int), default=0, help="data loader processes"
    )
    parser.add_argument(
        "--overlays", type=_non_negative(int), default=4, help="validation images drawn each epoch"
    )
    parser.add_argument(
        "--no-progress", dest="progress", action="store_false", help="no progress bars"
    )
    return parser
