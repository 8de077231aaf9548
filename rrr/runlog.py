"""What a run writes besides its checkpoint: log.csv, metrics.json, TensorBoard, overlays.

Only the main process (rank 0) of a run writes. Every file is written
atomically (temporary file + rename), so a run killed at any moment leaves the
previous or the new version, never a truncated one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from .checkpoint import atomic_write_text

__all__ = ["RunLog"]


class RunLog:
    """The logs of one run in ``out``.

    Args:
        out: the run directory.
        classes: class names, background first (overlay legends).
        enabled: False on processes other than rank 0 (then nothing is written).
        purge_step: TensorBoard events after this step are dropped (on resume, the
            steps a killed run logged after its last checkpoint).
    """

    def __init__(
        self, out: Path, classes: Sequence[str], enabled: bool = True, purge_step: int = 0
    ) -> None:
        self.out = Path(out)
        self.classes = list(classes)
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(self.out / "tensorboard", purge_step=purge_step)

    def step(self, values: dict[str, float], global_step: int) -> None:
        """The loss terms of one training step, as TensorBoard scalars ``train/<term>``."""
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(f"train/{key}", value, global_step)

    def epoch(
        self,
        record: dict[str, Any],
        history: list[dict[str, Any]],
        config: dict[str, Any],
        global_step: int,
    ) -> None:
        """Rewrite log.csv and metrics.json from ``history`` (ending with ``record``); add
        ``record``'s validation scalars to TensorBoard."""
        if self.writer is None:
            return
        # log.csv is rewritten from the whole history (checkpointed with the model), so a run
        # killed after writing it but before its checkpoint does not log that epoch twice
        rows = [
            {
                k: (f"{v:.6g}" if isinstance(v, float) else v)
                for k, v in r.items()
                if not isinstance(v, dict)
            }
            for r in history
        ]
        fields: list[str] = []
        for row in rows:
            fields += [k for k in row if k not in fields]
        lines = [",".join(fields)] + [",".join(str(row.get(f, "")) for f in fields) for row in rows]
        atomic_write_text(self.out / "log.csv", "\n".join(lines) + "\n")
        flat = {k: v for k, v in record.items() if not isinstance(v, dict)}
        for key, value in flat.items():
            if isinstance(value, float) and key.startswith("val_") and math.isfinite(value):
                self.writer.add_scalar(key.replace("val_", "val/"), value, global_step)
        self.writer.flush()
        metrics = {
            "config": config,
            "epochs_done": record["epoch"],
            "global_step": global_step,
            "history": history,
        }
        last_val = next((r for r in reversed(history) if "val_miou" in r), None)
        if last_val is not None:
            metrics.update({k[4:]: v for k, v in last_val.items() if k.startswith("val_")})
        atomic_write_text(
            self.out / "metrics.json", json.dumps(metrics, indent=2, default=str) + "\n"
        )

    def overlays(self, items: list[tuple[Tensor, Tensor, Tensor]], epoch: int) -> Path | None:
        """Draw (image, ground truth, prediction) rows with a class legend; return the PNG path."""
        if self.writer is None or not items:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from heatmaps.viz import class_legend, label_overlay, save_figure

        num_classes = len(self.classes) - 1
        fig, axes = plt.subplots(len(items), 3, figsize=(6, 2 * len(items) + 0.6), squeeze=False)
        for row, (image, target, pred) in enumerate(items):
            panels = [
                (image, "image"),
                (label_overlay(image, target, num_classes), "ground truth"),
                (label_overlay(image, pred, num_classes), "prediction"),
            ]
            for ax, (picture, title) in zip(axes[row], panels):
                ax.imshow(picture.permute(1, 2, 0).clamp(0, 1).numpy())
                ax.set_axis_off()
                if row == 0:
                    ax.set_title(title, fontsize=8)
        class_legend(
            fig,
            self.classes[1:],
            background=self.classes[0],
            loc="lower center",
            ncols=min(len(self.classes), 6),
            fontsize=6,
        )
        fig.tight_layout(rect=(0, 0.6 / (2 * len(items) + 0.6), 1, 1))
        path = self.out / "overlays" / f"epoch_{epoch + 1:03d}.png"
        save_figure(fig, path)
        plt.close(fig)
        return path

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
