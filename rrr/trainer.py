"""The fine-tuning loop: stages, checkpoints, resume, logging, multi-process.

Stages: ``pretrain_epochs`` of multi-label classification on every training
image, then ``epochs`` of classification plus the segmentation loss on the
heatmaps, with every batch mixing pixel-labelled and image-labelled images.

Exact resume: the batch order is a pure function of ``(seed, epoch)``, the
model, optimizer and RNG states are checkpointed every ``checkpoint_every``
steps and at each epoch end, and a resumed run skips the batches of the
interrupted epoch it has already taken - so a run killed at any moment and
resumed ends with the same weights as an uninterrupted one (in deterministic
mode, on the CPU).
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from heatmaps.checkpointing import activation_checkpointing, default_checkpoint_modules

from .baselines import UNetSegmenter
from .checkpoint import atomic_write_text, load_checkpoint, save_checkpoint
from .data import (
    MixedBatchSampler,
    PixelLabelSubset,
    build_dataset,
    choose_pixel_labelled,
    dataset_labels,
)
from .evaluation import SegmentationMetrics
from .explainer_segmenter import ExplainerSegmenter
from .models import build_segmenter
from .objectives import classification_loss, segmentation_loss
from .segmenter import freeze_batchnorm


def resolve_device(name: str) -> torch.device:
    """``auto`` = CUDA when present, else CPU; anything else as torch parses it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine")
    return device


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def setup_distributed(device_name: str) -> tuple[Distributed, torch.device]:
    """Join the ``torchrun`` process group (gloo on CPU, nccl on GPU) when launched by it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed(), resolve_device(device_name)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Distributed(rank, world, local), device


def broadcast_parameters(model: nn.Module) -> None:
    """Start every process from rank 0's parameters and buffers."""
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            dist.broadcast(tensor, src=0)


def broadcast_buffers(model: nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm statistics) to every process."""
    with torch.no_grad():
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def average_gradients(model: nn.Module, world_size: int) -> None:
    """Average parameter gradients over processes with one all-reduce.

    This is DistributedDataParallel's synchronisation without its reducer:
    DDP's bucketed hooks do not support the double backward of heatmap losses
    (its documentation excludes ``autograd.grad`` with ``create_graph``; here it
    gave gradients several percent off the single-process ones), while one
    flat all-reduce after ``backward()`` is exact by construction. A parameter
    without a gradient on some process contributes zeros, so every process
    takes part in the same collective.
    """
    params = list(model.parameters())
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world_size
    offset = 0
    for param, grad in zip(params, grads):
        n = grad.numel()
        if param.requires_grad:
            param.grad = flat[offset : offset + n].view_as(param).clone()
        offset += n


def dataset_options(config: dict[str, Any], split: str) -> dict[str, Any]:
    length = config["train_images"] if split == "train" else config["val_images"]
    return {
        "root": config["data_root"],
        "size": config["image_size"],
        "length": length,
        "objects": tuple(config["objects"]),
        "scene_seed": config["scene_seed"],
        "download": config.get("download", False),
    }


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
        "python": torch.tensor(random.getstate()[1], dtype=torch.int64),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), 624, 0, 0.0))
    random.setstate((3, tuple(int(v) for v in state["python"].tolist()), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def check_checkpointing_options(config: dict[str, Any]) -> None:
    """Refuse ``--checkpoint-activations`` where it would give wrong gradients."""
    if not config.get("checkpoint_activations", False):
        return
    if config["model"] == "heatmap" and config["method"] == "lrp":
        raise ValueError(
            "--checkpoint-activations does not support --method lrp: LRP attaches its rules "
            "only during the heatmap call, so the recomputation in the backward pass would run "
            "without them; use --method gradcam, or drop --checkpoint-activations"
        )


def shuffled_batches(
    n: int, batch_size: int, seed: int, epoch: int, rank: int = 0, world: int = 1
) -> list[list[int]]:
    """Classification batches: a permutation per ``(seed, epoch)``, sharded over ranks."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n, generator=generator).tolist()
    per_rank = batch_size // world
    batches = []
    for start in range(0, n - batch_size + 1, batch_size):
        batch = order[start : start + batch_size]
        batches.append(batch[rank * per_rank : (rank + 1) * per_rank])
    return batches


class Trainer:
    """One run of ``python -m rrr.finetune`` (see the module docstring)."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.out = Path(config["out"])
        self.dist, self.device = setup_distributed(config["device"])
        if config["batch_size"] % self.dist.world_size:
            raise ValueError(
                f"--batch-size {config['batch_size']} must be divisible by the "
                f"{self.dist.world_size} processes"
            )
        check_checkpointing_options(config)
        if config["deterministic"]:
            torch.use_deterministic_algorithms(True)
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        self._check_out_dir()
        seed_everything(config["seed"])

        self.train_set_full = build_dataset(
            config["data"], "train", **dataset_options(config, "train")
        )
        self.val_set = build_dataset(config["data"], "val", **dataset_options(config, "val"))
        self.num_classes = self.train_set_full.num_classes
        self.classes = list(self.train_set_full.classes)
        labels = dataset_labels(self.train_set_full)
        n_pixel = min(config["pixel_labels"], len(self.train_set_full))
        self.pixel_indices = choose_pixel_labelled(labels, n_pixel, config["seed"])
        self.train_set = PixelLabelSubset(self.train_set_full, self.pixel_indices)
        labelled = set(self.pixel_indices)
        self.unlabelled_indices = [i for i in range(len(self.train_set_full)) if i not in labelled]

        self.model = build_segmenter(config, self.num_classes).to(self.device)
        # --checkpoint-activations: the encoder's stages, checked here so that an unsupported
        # architecture stops the run before it trains
        self.checkpoint_modules: list[str] | None = None
        if config.get("checkpoint_activations", False):
            try:
                self.checkpoint_modules = default_checkpoint_modules(self.encoder)
            except ValueError:
                raise ValueError(
                    f"--checkpoint-activations does not support --arch {config['arch']}"
                    f"{' with --model ' + config['model'] if config['model'] != 'heatmap' else ''}: "
                    f"no known stages in {type(self.encoder).__name__} (supported: ResNet-like "
                    "models and models with a 'features' Sequential)"
                ) from None
        self.optimizer = self._optimizer()
        self.epoch, self.batch_in_epoch, self.global_step = 0, 0, 0
        self.history: list[dict[str, Any]] = []
        if config["resume"]:
            self._resume()
        if self.dist.active:
            broadcast_parameters(self.model)
        self.writer = None
        if self.dist.main:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(self.out / "tensorboard", purge_step=self.global_step)

    # -- set-up -----------------------------------------------------------------------------
    @property
    def encoder(self) -> nn.Module:
        """The network whose activations ``--checkpoint-activations`` recomputes.

        The classifier of a heatmap or explainer segmenter, the encoder of a U-Net.
        """
        if isinstance(self.model, UNetSegmenter):
            return self.model.net.encoder
        return self.model.classifier

    def activation_checkpointing(self) -> contextlib.AbstractContextManager:
        """The encoder under :func:`~heatmaps.checkpointing.activation_checkpointing`, or a no-op.

        A no-op context unless ``--checkpoint-activations`` is set.
        """
        if self.checkpoint_modules is None:
            return contextlib.nullcontext()
        return activation_checkpointing(self.encoder, self.checkpoint_modules)

    def _check_out_dir(self) -> None:
        checkpoint = self.out / "checkpoint.pt"
        if self.config["resume"]:
            if not checkpoint.is_file():
                raise ValueError(f"--resume: no checkpoint at {checkpoint} to continue from")
        elif checkpoint.exists():
            raise ValueError(
                f"--out {self.out} already holds a run (checkpoint.pt); pass --resume to "
                "continue it or choose another --out (nothing was overwritten)"
            )
        if self.dist.main:
            self.out.mkdir(parents=True, exist_ok=True)

    def _optimizer(self) -> torch.optim.Optimizer:
        scalars = [
            p for n, p in self.model.named_parameters() if n in ("scale", "background_logit")
        ]
        ids = {id(p) for p in scalars}
        weights = [p for p in self.model.parameters() if id(p) not in ids]
        groups = [{"params": weights, "lr": self.config["lr"], "name": "model"}]
        if scalars:
            groups.append({"params": scalars, "lr": self.config["scalar_lr"], "name": "scalars"})
        if self.config["optimizer"] == "sgd":
            return torch.optim.SGD(groups, momentum=0.9, weight_decay=self.config["weight_decay"])
        return torch.optim.AdamW(groups, weight_decay=self.config["weight_decay"])

    def _resume(self) -> None:
        state = load_checkpoint(self.out / "checkpoint.pt", map_location=self.device)
        saved = state["config"]
        for key in ("arch", "model", "method", "data", "image_size", "pixel_labels", "seed"):
            if saved.get(key) != self.config.get(key):
                raise ValueError(
                    f"--resume: --{key.replace('_', '-')} {self.config.get(key)} differs from the "
                    f"run in {self.out} ({saved.get(key)})"
                )
        explainer = self.config.get("explainer")  # --method explainer: its network must match too
        if self.config["method"] == "explainer" and saved.get("explainer") != explainer:
            raise ValueError(
                f"--resume: --explainer {self.config['explainer']} differs from the run in "
                f"{self.out} ({saved.get('explainer')})"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch, self.batch_in_epoch = state["epoch"], state["batch_in_epoch"]
        self.global_step = state["global_step"]
        self.history = json.loads(state.get("history", "[]"))
        set_rng_state(state["rng"])

    # -- one epoch --------------------------------------------------------------------------
    @property
    def total_epochs(self) -> int:
        return self.config["pretrain_epochs"] + self.config["epochs"]

    def phase(self, epoch: int) -> str:
        return "pretrain" if epoch < self.config["pretrain_epochs"] else "finetune"

    def batches(self, epoch: int) -> list[list[int]]:
        c = self.config
        if self.phase(epoch) == "pretrain":
            batches = shuffled_batches(
                len(self.train_set),
                c["batch_size"],
                c["seed"],
                epoch,
                self.dist.rank,
                self.dist.world_size,
            )
        else:
            per_batch = c["labelled_per_batch"]
            if per_batch is None:
                per_batch = c["batch_size"] // 2
            sampler = MixedBatchSampler(
                self.pixel_indices,
                self.unlabelled_indices,
                batch_size=c["batch_size"],
                labelled_per_batch=min(per_batch, c["batch_size"]),
                seed=c["seed"],
                rank=self.dist.rank,
                world_size=self.dist.world_size,
            )
            sampler.set_epoch(epoch)
            batches = list(sampler)
        if c["steps_per_epoch"]:
            batches = batches[: c["steps_per_epoch"]]
        return batches

    def _set_lr(self, phase: str) -> None:
        for group in self.optimizer.param_groups:
            if group.get("name") == "model":
                group["lr"] = self.config["pretrain_lr" if phase == "pretrain" else "lr"]
            else:
                group["lr"] = self.config["scalar_lr"]

    def step(self, batch: dict[str, torch.Tensor], phase: str) -> dict[str, float]:
        c = self.config
        x = batch["image"].to(self.device)
        labels = batch["labels"].to(self.device)
        target = batch["mask"].to(self.device)
        has_mask = batch["has_mask"].to(self.device)
        present = labels > 0.5
        self.optimizer.zero_grad(set_to_none=True)
        terms: dict[str, torch.Tensor] = {}
        if phase == "pretrain":
            out = self.model(x, present, classify_only=True)
            terms["cls"] = classification_loss(out.logits, labels)
            loss = terms["cls"]
        elif isinstance(self.model, ExplainerSegmenter):  # --method explainer: stage 2
            loss, terms = self.model.objective(
                x, labels, target, has_mask, c["loss"], c["seg_weight"]
            )
        else:
            out = self.model(x, present & has_mask[:, None])
            loss = torch.zeros((), device=self.device)
            if c["model"] != "unet" and c["cls_weight"] > 0:
                terms["cls"] = classification_loss(out.logits, labels)
                loss = loss + c["cls_weight"] * terms["cls"]
            if c["seg_weight"] > 0:
                terms["seg"] = segmentation_loss(c["loss"], out, target, has_mask, present)
                loss = loss + c["seg_weight"] * terms["seg"]
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"step {self.global_step}: the loss is {loss.item()}; lower --lr or use "
                "--normalise std"
            )
        loss.backward()
        if self.dist.active:
            average_gradients(self.model, self.dist.world_size)
        self.optimizer.step()
        return {"loss": loss.item(), **{k: v.item() for k, v in terms.items()}}

    def _train_mode(self, phase: str) -> None:
        """Train mode; in the heatmap stage BatchNorm statistics stay frozen (``--freeze-bn``).

        Classification pre-training updates them as usual (a classifier trained
        from scratch needs them); heatmap batches are small and LRP canonizers
        need fixed statistics.
        """
        self.model.train()
        if self.config["freeze_bn"] and phase == "finetune":
            freeze_batchnorm(self.model)

    def run(self) -> dict[str, Any]:
        """Train the remaining epochs; return the last epoch's record.

        With ``--checkpoint-activations`` the encoder is checkpointed for the
        whole run and restored at its end, also after an exception (the saved
        ``state_dict`` is the same either way).
        """
        with self.activation_checkpointing():
            return self._run()

    def _run(self) -> dict[str, Any]:
        c = self.config
        for epoch in range(self.epoch, self.total_epochs):
            phase = self.phase(epoch)
            if phase == "pretrain" and c["model"] == "unet":
                self._end_epoch(epoch, phase, {}, skipped=True)
                continue
            self._set_lr(phase)
            batches = self.batches(epoch)
            start = self.batch_in_epoch if epoch == self.epoch else 0
            loader = DataLoader(
                self.train_set,
                batch_sampler=batches[start:],
                num_workers=c["workers"],
                persistent_workers=False,
            )
            self._train_mode(phase)
            sums: dict[str, float] = {}
            seen = 0
            bar = tqdm(
                loader,
                total=len(batches) - start,
                desc=f"epoch {epoch + 1}/{self.total_epochs} {phase}",
                disable=not (c["progress"] and self.dist.main),
                dynamic_ncols=True,
            )
            for i, batch in enumerate(bar, start=start):
                values = self.step(batch, phase)
                self.global_step += 1
                seen += 1
                for key, value in values.items():
                    sums[key] = sums.get(key, 0.0) + value
                bar.set_postfix(loss=f"{values['loss']:.4f}")
                if self.writer is not None:
                    for key, value in values.items():
                        self.writer.add_scalar(f"train/{key}", value, self.global_step)
                if c["checkpoint_every"] and self.global_step % c["checkpoint_every"] == 0:
                    self.save(epoch, i + 1)
            means = {key: value / max(seen, 1) for key, value in sums.items()}
            self._end_epoch(epoch, phase, means)
        return self.history[-1] if self.history else {}

    def _end_epoch(
        self, epoch: int, phase: str, train: dict[str, float], skipped: bool = False
    ) -> None:
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "phase": phase,
            "global_step": self.global_step,
        }
        record.update({f"train_{k}": v for k, v in train.items()})
        if self.dist.main and not skipped:
            record.update(self.validate(epoch, phase))
        if self.dist.active:
            # BatchNorm statistics of a train-mode epoch are per process: keep rank 0's
            broadcast_buffers(self.model)
            dist.barrier()
        self.history.append(record)
        if self.dist.main:
            self._log(record)
        self.save(epoch + 1, 0)

    # -- evaluation, logging, checkpoints ------------------------------------------------------
    @torch.no_grad()
    def validate(self, epoch: int, phase: str) -> dict[str, Any]:
        self.model.eval()
        loader = DataLoader(
            self.val_set, batch_size=self.config["batch_size"], num_workers=self.config["workers"]
        )
        predicted = SegmentationMetrics(self.num_classes, self.classes)
        oracle = SegmentationMetrics(self.num_classes, self.classes)
        drawn = []
        for batch in loader:
            x = batch["image"].to(self.device)
            target = batch["mask"]
            labels = batch["labels"]
            with torch.enable_grad():
                out = self.model(x, None, create_graph=False)
            pred = out.seg_logits.argmax(1).cpu()
            predicted.update(pred, target, out.logits.cpu(), labels)
            if self.config["model"] == "heatmap" and phase == "finetune":
                with torch.enable_grad():
                    gated = self.model(x, labels.to(self.device) > 0.5, create_graph=False)
                oracle.update(gated.seg_logits.argmax(1).cpu(), target)
            if len(drawn) < self.config["overlays"]:
                drawn.extend(zip(x.cpu(), target, pred))
        result = {f"val_{k}": v for k, v in predicted.compute().items()}
        if self.config["model"] == "heatmap" and phase == "finetune":
            result["val_miou_true_gating"] = oracle.compute()["miou"]
        if drawn and phase == "finetune":
            self._draw(drawn[: self.config["overlays"]], epoch)
        self._train_mode(phase)
        return result

    def _draw(self, items: list, epoch: int) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from heatmaps.viz import label_overlay, save_figure

        fig, axes = plt.subplots(len(items), 3, figsize=(6, 2 * len(items)), squeeze=False)
        for row, (image, target, pred) in enumerate(items):
            panels = [
                (image, "image"),
                (label_overlay(image, target, self.num_classes), "ground truth"),
                (label_overlay(image, pred, self.num_classes), "prediction"),
            ]
            for ax, (picture, title) in zip(axes[row], panels):
                ax.imshow(picture.permute(1, 2, 0).clamp(0, 1).numpy())
                ax.set_axis_off()
                if row == 0:
                    ax.set_title(title, fontsize=8)
        fig.tight_layout()
        save_figure(fig, self.out / "overlays" / f"epoch_{epoch + 1:03d}.png")
        plt.close(fig)

    def _log(self, record: dict[str, Any]) -> None:
        flat = {k: v for k, v in record.items() if not isinstance(v, dict)}
        path = self.out / "log.csv"
        rows = []
        if path.exists():
            with path.open() as handle:
                rows = list(csv.DictReader(handle))
        rows.append({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in flat.items()})
        fields: list[str] = []
        for row in rows:
            fields += [k for k in row if k not in fields]
        lines = [",".join(fields)] + [",".join(str(row.get(f, "")) for f in fields) for row in rows]
        atomic_write_text(path, "\n".join(lines) + "\n")
        if self.writer is not None:
            for key, value in flat.items():
                if isinstance(value, float) and key.startswith("val_") and math.isfinite(value):
                    self.writer.add_scalar(key.replace("val_", "val/"), value, self.global_step)
            self.writer.flush()
        metrics = {
            "config": self.config,
            "epochs_done": record["epoch"],
            "global_step": self.global_step,
            "history": self.history,
        }
        last_val = next((r for r in reversed(self.history) if "val_miou" in r), None)
        if last_val is not None:
            metrics.update({k[4:]: v for k, v in last_val.items() if k.startswith("val_")})
        atomic_write_text(
            self.out / "metrics.json", json.dumps(metrics, indent=2, default=str) + "\n"
        )

    def save(self, epoch: int, batch_in_epoch: int) -> None:
        if not self.dist.main:
            return
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": epoch,
            "batch_in_epoch": batch_in_epoch,
            "global_step": self.global_step,
            "rng": rng_state(),
            "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.config.items()},
            "num_classes": self.num_classes,
            "classes": self.classes,
            "history": json.dumps(self.history, default=str),
            "saved_at": time.time(),
        }
        save_checkpoint(self.out / "checkpoint.pt", state)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
