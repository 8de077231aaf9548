"""``python -m rrr.predict``: label maps and overlays for image files.

Example::

    python -m rrr.predict --checkpoint runs/r18/checkpoint.pt img1.png img2.jpg --out preds/

Writes ``<stem>_labels.png`` (palette PNG, pixel value = class index, 0 =
background) and ``<stem>_overlay.png`` for every image.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError


def predict_parser() -> argparse.ArgumentParser:
    from .config import OneLineParser

    parser = OneLineParser(prog="python -m rrr.predict", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--checkpoint",
        required=True,
        metavar="PATH",
        help="a checkpoint.pt written by rrr.finetune",
    )
    parser.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory")
    parser.add_argument("--device", default="auto", metavar="DEVICE", help="as for rrr.finetune")
    return parser


def palette_bytes(num_classes: int) -> list[int]:
    """The PNG palette of label maps: :func:`heatmaps.viz.class_palette`'s colours, 0..255."""
    from heatmaps.viz import class_palette

    colours = (class_palette(num_classes) * 255).round().to(torch.uint8).flatten().tolist()
    return colours + [255, 255, 255] * (256 - len(colours) // 3)


def save_overlay(path: Path, image: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> None:
    """The image with its label map blended in and a legend of the classes it shows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from heatmaps.viz import class_legend, label_overlay, save_figure

    fig, ax = plt.subplots(figsize=(4, 4.6))
    ax.imshow(label_overlay(image, labels, len(classes) - 1).permute(1, 2, 0).clamp(0, 1).numpy())
    ax.set_axis_off()
    shown = sorted({int(v) for v in labels.unique()})
    class_legend(
        fig, classes[1:], present=shown, background=classes[0], loc="lower center", ncols=3
    )
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    save_figure(fig, path)
    plt.close(fig)


def load_image(path: Path, size: int) -> torch.Tensor:
    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB")
    except FileNotFoundError:
        raise ValueError(f"image {path}: no such file") from None
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"image {path}: cannot be decoded ({error})") from None
    x = torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return F.interpolate(x[None], size=(size, size), mode="bilinear", align_corners=False)[0]


def main(argv: Sequence[str] | None = None) -> int:
    args = predict_parser().parse_args(argv)
    from .checkpoint import CheckpointError, atomic_write_bytes
    from .device import resolve_device
    from .loading import load_trained

    try:
        device = resolve_device(args.device)
        model, state = load_trained(args.checkpoint, device)
        size = int(state["run_config"].image_size)
        images = [(Path(p), load_image(Path(p), size)) for p in args.images]
    except (ValueError, CheckpointError) as error:
        print(f"rrr.predict: error: {error}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    palette = palette_bytes(state["num_classes"])
    classes = list(state["classes"])
    for path, x in images:
        labels = model.predict(x[None].to(device))[0].cpu()
        picture = Image.fromarray(labels.numpy().astype(np.uint8), mode="P")
        picture.putpalette(palette)
        atomic_write_bytes(
            out / f"{path.stem}_labels.png", lambda h, p=picture: p.save(h, format="PNG")
        )
        save_overlay(out / f"{path.stem}_overlay.png", x, labels, classes)
        print(f"{path} -> {out / (path.stem + '_labels.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
