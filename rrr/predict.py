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
    parser = argparse.ArgumentParser(
        prog="python -m rrr.predict", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--device", default="auto")
    return parser


def _palette(num_classes: int) -> list[int]:
    import matplotlib

    colours = matplotlib.colormaps["tab20"].resampled(max(num_classes, 1))
    palette = [0, 0, 0]
    for c in range(num_classes):
        palette += [int(255 * v) for v in colours(c)[:3]]
    return palette + [255, 255, 255] * (256 - len(palette) // 3)


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
    from heatmaps.viz import label_overlay

    from .checkpoint import CheckpointError, atomic_write_bytes
    from .loading import load_trained
    from .trainer import resolve_device

    try:
        device = resolve_device(args.device)
        model, state = load_trained(args.checkpoint, device)
        size = int(state["config"]["image_size"])
        images = [(Path(p), load_image(Path(p), size)) for p in args.images]
    except (ValueError, CheckpointError) as error:
        print(f"rrr.predict: error: {error}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    palette = _palette(state["num_classes"])
    for path, x in images:
        with torch.enable_grad():
            labels = (
                model(x[None].to(device), None, create_graph=False).seg_logits.argmax(1)[0].cpu()
            )
        picture = Image.fromarray(labels.numpy().astype(np.uint8), mode="P")
        picture.putpalette(palette)
        atomic_write_bytes(
            out / f"{path.stem}_labels.png", lambda h, p=picture: p.save(h, format="PNG")
        )
        overlay = label_overlay(x, labels, state["num_classes"])
        rgb = Image.fromarray((overlay.permute(1, 2, 0).clamp(0, 1).numpy() * 255).astype(np.uint8))
        atomic_write_bytes(
            out / f"{path.stem}_overlay.png", lambda h, p=rgb: p.save(h, format="PNG")
        )
        print(f"{path} -> {out / (path.stem + '_labels.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
