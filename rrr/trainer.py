"""The fine-tuning loop: stages, checkpoints, resume and validation.

Stages: ``pretrain_epochs`` of multi-label classification on every training
image, then ``epochs`` of the segmenter's own objective
(:meth:`~rrr.segmenters.Segmenter.training_loss`), with every batch mixing
pixel-labelled and image-labelled images. The loop knows only the
:class:`~rrr.segmenters.Segmenter` interface.

Exact resume: the batch order is a pure function of ``(seed, epoch)``, the
model, optimizer and RNG states and the running sums of the epoch's losses are
checkpointed every ``checkpoint_every`` steps and at each epoch end, and a
resumed run skips the batches of the interrupted epoch it has already taken -
so a run killed at any moment and resumed ends with the same weights and the
same log.csv as an uninterrupted one (in deterministic mode, on the CPU).
"""

from __future__ import annotations

import contextlib
import json
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from heatmaps.recomputation import activation_checkpointing, default_checkpoint_modules

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import RunConfig
from .data import MixedBatchSampler, build_dataset, pixel_label_split
from .data.semisupervised import empty_stage_message
from .distributed import (
    average_gradients,
    barrier,
    broadcast_buffers,
    broadcast_parameters,
    setup_distributed,
)
from .interrupt import RunInterrupted, StopRequests
from .reproducibility import (
    rng_state,
    seed_everything,
    set_rng_state,
    shuffled_batches,
    use_deterministic_algorithms,
)
from .rundir import RunDirectory
from .runlog import RunLog
from .segmentation_metrics import SegmentationMetrics
from .segmenters import Segmenter, build_segmenter, freeze_batchnorm


class Trainer:
    """One run of ``python -m rrr.finetune`` (see the module docstring)."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self.out = Path(config.out)
        self.dist, self.device = setup_distributed(config.device)
        if config.batch_size % self.dist.world_size:
            raise ValueError(
                f"--batch-size {config.batch_size} must be divisible by the "
                f"{self.dist.world_size} processes"
            )
        if config.deterministic:
            use_deterministic_algorithms()
        self.rundir = RunDirectory(self.out, config.resume, hold=self.dist.main)
        try:
            self._set_up()
        except BaseException:
            self.rundir.release(failed=True)
            raise
        self.stop = StopRequests()

    def _set_up(self) -> None:
        config = self.config
        seed_everything(config.seed)
        self.train_set_full = build_dataset(config.data, "train", **config.data_options("train"))
        self.val_set = build_dataset(config.data, "val", **config.data_options("val"))
        self.num_classes = self.train_set_full.num_classes
        self.classes = list(self.train_set_full.classes)
        self.train_set, self.pixel_indices = pixel_label_split(
            self.train_set_full, config.pixel_labels, config.seed
        )
        self.unlabelled_indices = self.train_set.unlabelled_indices
        per_batch = config.labelled_per_batch
        if per_batch is not None and per_batch > config.batch_size and self.pixel_indices:
            warnings.warn(
                f"--labelled-per-batch {per_batch} is larger than --batch-size "
                f"{config.batch_size}: every batch is all pixel-labelled images",
                stacklevel=2,
            )
        for phase in dict.fromkeys(config.phases):  # every stage has batches, or say why now
            if not self.batches(config.phases.index(phase)):
                n, k = len(self.train_set), len(self.pixel_indices)
                raise ValueError(empty_stage_message(phase, n, k, config.batch_size, per_batch))
        self.model: Segmenter = build_segmenter(config, self.num_classes).to(self.device)
        self.recomputed_modules = self._recomputed_modules()
        self.optimizer = self._optimizer()
        self.epoch, self.batch_in_epoch, self.global_step = 0, 0, 0
        self.history: list[dict[str, Any]] = []
        self.epoch_sums: dict[str, float] = {}
        if config.resume:
            self._resume()
        elif config.init_from:  # another run's weights, not its optimizer or step
            state = load_checkpoint(config.init_from, map_location=self.device)
            self.model.load_matching(state["model"], f"--init-from {config.init_from}")
        if self.dist.active:
            broadcast_parameters(self.model)
        self.log = RunLog(self.out, self.classes, self.dist.main, purge_step=self.global_step)

    # -- set-up -----------------------------------------------------------------------------
    def _recomputed_modules(self) -> list[str] | None:
        """The backbone's stages for ``--checkpoint-activations`` (checked before training)."""
        if not self.config.checkpoint_activations:
            return None
        try:
            return default_checkpoint_modules(self.model.backbone)
        except ValueError:
            raise ValueError(
                f"--checkpoint-activations does not support --arch {self.config.arch} with "
                f"--model {self.config.model}: no known stages in "
                f"{type(self.model.backbone).__name__} (supported: ResNet-like models and "
                "models with a 'features' Sequential)"
            ) from None

    def activation_checkpointing(self) -> contextlib.AbstractContextManager:
        """The backbone under activation checkpointing, or a no-op without the option."""
        if self.recomputed_modules is None:
            return contextlib.nullcontext()
        return activation_checkpointing(self.model.backbone, self.recomputed_modules)

    def _optimizer(self) -> torch.optim.Optimizer:
        groups = self.model.param_groups()
        c = self.config
        if c.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=c.lr, momentum=0.9, weight_decay=c.weight_decay)
        return torch.optim.AdamW(groups, lr=c.lr, weight_decay=c.weight_decay)

    def _resume(self) -> None:
        state = load_checkpoint(self.out / "checkpoint.pt", map_location=self.device)
        self.config.check_resumes(RunConfig.from_dict(state["config"]))
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as error:
            raise CheckpointError(
                f"--resume: the checkpoint in {self.out} does not fit this configuration "
                f"({str(error).splitlines()[0][:200]})"
            ) from None
        self.epoch, self.batch_in_epoch = state["epoch"], state["batch_in_epoch"]
        self.global_step = state["global_step"]
        self.history = json.loads(state.get("history", "[]"))
        self.epoch_sums = json.loads(state.get("epoch_sums", "{}"))
        set_rng_state(state["rng"])

    # -- one epoch --------------------------------------------------------------------------
    def batches(self, epoch: int) -> list[list[int]]:
        c = self.config
        if c.phases[epoch] == "pretrain":
            batches = shuffled_batches(
                len(self.train_set),
                c.batch_size,
                c.seed,
                epoch,
                self.dist.rank,
                self.dist.world_size,
            )
        else:
            per_batch = c.batch_size // 2 if c.labelled_per_batch is None else c.labelled_per_batch
            sampler = MixedBatchSampler(
                self.pixel_indices,
                self.unlabelled_indices,
                batch_size=c.batch_size,
                labelled_per_batch=min(per_batch, c.batch_size),
                seed=c.seed,
                rank=self.dist.rank,
                world_size=self.dist.world_size,
            )
            sampler.set_epoch(epoch)
            batches = list(sampler)
        return batches[: c.steps_per_epoch] if c.steps_per_epoch else batches

    def _set_lr(self, phase: str) -> None:
        c = self.config
        rates = {"model": c.pretrain_lr if phase == "pretrain" else c.lr, "scalars": c.scalar_lr}
        for group in self.optimizer.param_groups:
            group["lr"] = rates[group.get("name", "model")]

    def step(self, batch: dict[str, torch.Tensor], phase: str) -> dict[str, float]:
        batch = {k: batch[k].to(self.device) for k in ("image", "labels", "mask", "has_mask")}
        self.optimizer.zero_grad(set_to_none=True)
        loss, terms = self.model.training_loss(batch, phase)
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

    def train_mode(self, phase: str) -> None:
        """Train mode; in the heatmap stage BatchNorm statistics stay frozen (``--freeze-bn``).

        Classification pre-training updates them as usual (a classifier trained
        from scratch needs them); heatmap batches are small and LRP canonizers
        need fixed statistics.
        """
        self.model.train()
        if self.config.freeze_bn and phase == "finetune":
            freeze_batchnorm(self.model)

    def run(self) -> dict[str, Any]:
        """Train the remaining epochs; return the last epoch's record.

        With ``--checkpoint-activations`` the backbone is checkpointed for the
        whole run and restored at its end, also after an exception.
        """
        with self.activation_checkpointing(), self.stop:
            for epoch in range(self.epoch, len(self.config.phases)):
                self._run_epoch(epoch)
                self._stop_if_requested()
        return self.history[-1] if self.history else {}

    def _stop_if_requested(self, epoch: int | None = None, batch_in_epoch: int = 0) -> None:
        """After Ctrl-C: checkpoint where the run stands (unless just saved), then stop."""
        if self.stop.requested:
            if epoch is not None:
                self.save(epoch, batch_in_epoch)
            raise RunInterrupted(self.global_step)

    def _run_epoch(self, epoch: int) -> None:
        c = self.config
        phase = c.phases[epoch]
        if phase == "pretrain" and not self.model.has_classifier_stage:
            self._end_epoch(epoch, phase, {}, skipped=True)
            return
        self._set_lr(phase)
        self.model.start_phase(phase)
        batches = self.batches(epoch)
        start = self.batch_in_epoch if epoch == self.epoch else 0
        if start == 0:
            self.epoch_sums = {}
        loader = DataLoader(self.train_set, batch_sampler=batches[start:], num_workers=c.workers)
        self.train_mode(phase)
        bar = tqdm(
            loader,
            total=len(batches) - start,
            desc=f"epoch {epoch + 1}/{len(c.phases)} {phase}",
            disable=not (c.progress and self.dist.main),
            dynamic_ncols=True,
        )
        sums = self.epoch_sums
        for i, batch in enumerate(bar, start=start):
            values = self.step(batch, phase)
            self.global_step += 1
            sums["_steps"] = sums.get("_steps", 0.0) + 1
            for key, value in values.items():
                sums[key] = sums.get(key, 0.0) + value
            bar.set_postfix(loss=f"{values['loss']:.4f}")
            self.log.step(values, self.global_step)
            if c.checkpoint_every and self.global_step % c.checkpoint_every == 0:
                self.save(epoch, i + 1)
            if i + 1 < len(batches):
                self._stop_if_requested(epoch, i + 1)
        seen = max(sums.get("_steps", 0.0), 1.0)
        means = {key: value / seen for key, value in sums.items() if key != "_steps"}
        self._end_epoch(epoch, phase, means)

    def _end_epoch(
        self, epoch: int, phase: str, train: dict[str, float], skipped: bool = False
    ) -> None:
        record: dict[str, Any] = {"epoch": epoch + 1, "phase": phase}
        record["global_step"] = self.global_step
        record.update({f"train_{k}": v for k, v in train.items()})
        if self.dist.main and not skipped:
            record.update(self.validate(epoch, phase))
        if self.dist.active:
            # BatchNorm statistics of a train-mode epoch are per process: keep rank 0's
            broadcast_buffers(self.model)
            barrier()
        self.history.append(record)
        self.log.epoch(record, self.history, self.config.to_dict(), self.global_step)
        self.epoch_sums = {}
        self.save(epoch + 1, 0)

    # -- validation and checkpoints ----------------------------------------------------------
    @torch.no_grad()
    def validate(self, epoch: int, phase: str) -> dict[str, Any]:
        """Validation metrics; with the labels as the gate too (segmenters gated by them)."""
        self.model.eval()
        loader = DataLoader(
            self.val_set, batch_size=self.config.batch_size, num_workers=self.config.workers
        )
        predicted = SegmentationMetrics(self.num_classes, self.classes)
        oracle = SegmentationMetrics(self.num_classes, self.classes)
        with_oracle = self.model.gated_by_labels and phase == "finetune"
        drawn = []
        for batch in loader:
            x, target, labels = batch["image"].to(self.device), batch["mask"], batch["labels"]
            with torch.enable_grad():
                out = self.model(x, None, create_graph=False)
            pred = out.seg_logits.argmax(1).cpu()
            predicted.update(pred, target, out.logits.cpu(), labels)
            if with_oracle:
                with torch.enable_grad():
                    gated = self.model(x, labels.to(self.device) > 0.5, create_graph=False)
                oracle.update(gated.seg_logits.argmax(1).cpu(), target)
            if len(drawn) < self.config.overlays:
                drawn.extend(zip(x.cpu(), target, pred))
        result = {f"val_{k}": v for k, v in predicted.compute().items()}
        if with_oracle:
            result["val_miou_true_gating"] = oracle.compute()["miou"]
        if phase == "finetune":
            self.log.overlays(drawn[: self.config.overlays], epoch)
        self.train_mode(phase)
        return result

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
            "config": self.config.to_dict(),
            "num_classes": self.num_classes,
            "classes": self.classes,
            "history": json.dumps(self.history, default=str),
            "epoch_sums": json.dumps(self.epoch_sums),
            "saved_at": time.time(),
        }
        save_checkpoint(self.out / "checkpoint.pt", state)

    def close(self, failed: bool = False) -> None:
        """Close the logs and give up ``--out``'s lock (``failed``: see ``RunDirectory.release``)."""
        if hasattr(self, "log"):
            self.log.close()
        self.rundir.release(failed)
