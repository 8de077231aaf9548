"""``python -m rrr.finetune``: fine-tune a torchvision classifier into a semantic segmenter.

Examples::

    python -m rrr.finetune --arch resnet50 --pixel-labels 50 --out runs/r50
    python -m rrr.finetune --arch resnet18 --model unet --out runs/unet
    torchrun --nproc_per_node 2 -m rrr.finetune --arch resnet18 --out runs/ddp

Every run writes into ``--out``: ``checkpoint.pt`` (atomic), ``metrics.json``,
``log.csv``, TensorBoard events in ``tensorboard/`` and validation overlays in
``overlays/``. ``--resume`` continues a run from its last checkpoint.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from .config import finetune_parser


def main(argv: Sequence[str] | None = None) -> int:
    args = finetune_parser().parse_args(argv)
    # imported late so that --help answers instantly
    from .checkpoint import CheckpointError
    from .config import RunConfig
    from .data import DatasetError
    from .trainer import Trainer

    try:
        trainer = Trainer(RunConfig.from_args(args))
        try:
            result = trainer.run()
        finally:
            trainer.close()
    except (ValueError, CheckpointError, DatasetError, FloatingPointError) as error:
        print(f"rrr.finetune: error: {error}", file=sys.stderr)
        return 2
    if trainer.dist.main:
        miou = result.get("val_miou")
        summary = f"val mIoU {miou:.4f}" if isinstance(miou, float) else "no validation mIoU"
        print(f"done: {summary}; outputs in {trainer.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
