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

import shlex
import sys
import warnings
from collections.abc import Sequence

from .config import finetune_parser


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    print(f"rrr.finetune: warning: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = finetune_parser().parse_args(argv)
    with warnings.catch_warnings():
        # warnings of the run (e.g. a clamped option) as one line each, like the errors
        warnings.simplefilter("default")
        # torchmetrics' note that a class is absent from the validation images (its AP
        # is then undefined and left out): expected on small validation sets, not news
        warnings.filterwarnings("ignore", message="No positive samples found in target")
        warnings.showwarning = _one_line_warning
        return _run(argv, args)


def _run(argv: list[str], args) -> int:  # noqa: ANN001
    # imported late so that --help answers instantly
    from .checkpoint import CheckpointError
    from .config import RunConfig
    from .data import DatasetError
    from .interrupt import RunInterrupted
    from .trainer import Trainer

    trainer = None
    failed = True
    try:
        trainer = Trainer(RunConfig.from_args(args))
        result = trainer.run()
        failed = False
    except RunInterrupted as stop:
        failed = False
        again = shlex.join(
            [
                "python",
                "-m",
                "rrr.finetune",
                *argv,
                *(["--resume"] if "--resume" not in argv else []),
            ]
        )
        print(
            f"rrr.finetune: interrupted at step {stop.global_step}; checkpoint written to "
            f"{trainer.out / 'checkpoint.pt'}; continue with: {again}",
            file=sys.stderr,
        )
        return 130
    except KeyboardInterrupt:
        print("rrr.finetune: interrupted before a checkpoint could be written", file=sys.stderr)
        return 130
    except (ValueError, CheckpointError, DatasetError, FloatingPointError) as error:
        print(f"rrr.finetune: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # e.g. --out became unwritable or the disk filled up mid-run
        where = f" ({error.filename})" if error.filename else ""
        print(
            f"rrr.finetune: error: cannot write{where}: {error.strerror or error}", file=sys.stderr
        )
        return 2
    finally:
        if trainer is not None:
            trainer.close(failed)
    if trainer.dist.main:
        miou = result.get("val_miou")
        summary = f"val mIoU {miou:.4f}" if isinstance(miou, float) else "no validation mIoU"
        print(f"done: {summary}; outputs in {trainer.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
