"""Semi-supervised data: few pixel-labelled images among many image-labelled ones.

As in Yu et al., every image has image-level labels and only a few also have
pixel labels; batches mix both (by default half and half, 5 + 5 of 10).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from .common import IGNORE_INDEX

__all__ = [
    "MixedBatchSampler",
    "empty_stage_message",
    "PixelLabelSubset",
    "choose_pixel_labelled",
    "dataset_labels",
    "pixel_label_split",
]


def dataset_labels(dataset: Dataset) -> torch.Tensor:
    """Multi-hot image labels ``(N, C)`` of every item of ``dataset``.

    Uses ``dataset.all_labels()`` when the dataset has it (cheap: no image
    decoding), otherwise reads every item's ``"labels"``.
    """
    all_labels = getattr(dataset, "all_labels", None)
    if callable(all_labels):
        return all_labels()
    return torch.stack([dataset[i]["labels"] for i in range(len(dataset))])


def choose_pixel_labelled(dataset_labels: torch.Tensor, n: int, seed: int = 0) -> list[int]:
    """Choose ``n`` sample indices to be pixel-labelled, class-balanced where possible.

    Round robin over classes: each pick takes the class covered by the fewest
    chosen samples so far (among classes some unchosen sample still has; ties
    go to the lower class index) and chooses the first unchosen sample in a
    seeded random order that contains it. Once no unchosen sample has any
    class, the rest follow the random order. So with ``n >= C`` every class
    that occurs is covered. Deterministic in ``(dataset_labels, n, seed)``,
    and the selections are nested: the result for ``n`` is a prefix of the
    result for any larger ``n`` with the same seed.

    Args:
        dataset_labels: ``(N, C)`` multi-hot image labels (bool, int or float).
        n: number of indices, ``0 <= n <= N``.
        seed: seed of the random order.

    Returns:
        ``n`` distinct indices into the data set, in selection order.
    """
    labels = torch.as_tensor(dataset_labels)
    if labels.dim() != 2:
        raise ValueError(f"dataset_labels must be (N, C), got shape {tuple(labels.shape)}")
    total = labels.shape[0]
    if not 0 <= n <= total:
        raise ValueError(f"cannot choose {n} pixel-labelled samples out of {total}")
    present = labels.detach().cpu().numpy() > 0
    order = np.random.default_rng(seed % (1 << 64)).permutation(total)
    present = present[order]  # rows in random order
    free = np.ones(total, dtype=bool)
    coverage = np.zeros(labels.shape[1], dtype=np.int64)
    chosen: list[int] = []
    while len(chosen) < n:
        available = (present & free[:, None]).any(axis=0)
        if available.any():
            cls = int(np.argmin(np.where(available, coverage, np.iinfo(np.int64).max)))
            row = int(np.argmax(present[:, cls] & free))
        else:
            row = int(np.argmax(free))
        free[row] = False
        coverage += present[row]
        chosen.append(int(order[row]))
    return chosen


class PixelLabelSubset(Dataset):
    """View of ``dataset`` where only ``labelled_indices`` keep their pixel labels.

    Other items get a mask of all :data:`~rrr.data.common.IGNORE_INDEX` and
    ``has_mask`` False; their image-level ``labels`` are kept. ``classes`` and
    ``num_classes`` are those of the wrapped dataset.
    """

    def __init__(self, dataset: Dataset, labelled_indices: Sequence[int]) -> None:
        self.dataset = dataset
        size = len(dataset)
        indices = [int(i) for i in labelled_indices]
        bad = [i for i in indices if not 0 <= i < size]
        if bad:
            raise ValueError(f"labelled index {bad[0]} out of range for a dataset of {size}")
        if len(set(indices)) != len(indices):
            raise ValueError("labelled_indices contains duplicates")
        self._labelled = set(indices)
        self.labelled_indices: list[int] = sorted(self._labelled)
        self.unlabelled_indices: list[int] = [i for i in range(size) if i not in self._labelled]
        self.classes: list[str] = list(dataset.classes)
        self.num_classes: int = dataset.num_classes

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        item = dict(self.dataset[index])
        if int(index) % len(self) not in self._labelled:
            item["mask"] = torch.full_like(item["mask"], IGNORE_INDEX)
            item["has_mask"] = torch.tensor(False)
        return item

    def all_labels(self) -> torch.Tensor:
        """Image labels ``(N, C)`` of the wrapped dataset (unchanged by the subset)."""
        return dataset_labels(self.dataset)


def pixel_label_split(
    dataset: Dataset, pixel_labels: int | str, seed: int
) -> tuple[PixelLabelSubset, list[int]]:
    """The training view where ``pixel_labels`` images keep their masks, and those indices.

    ``pixel_labels`` is a number ``0 <= n <= len(dataset)`` or ``"all"``; the
    images are chosen by :func:`choose_pixel_labelled` and returned in selection
    order (which fixes the batch order of a seed).

    Raises:
        ValueError: more pixel-labelled images asked for than the data set has.
    """
    size = len(dataset)
    if pixel_labels == "all":
        n = size
    else:
        n = int(pixel_labels)
        if n > size:
            raise ValueError(
                f"--pixel-labels {n} is more than the {size} training images; "
                "use --pixel-labels all for every one"
            )
    chosen = choose_pixel_labelled(dataset_labels(dataset), n, seed)
    return PixelLabelSubset(dataset, chosen), chosen


class MixedBatchSampler(Sampler[list[int]]):
    """Batches of ``labelled_per_batch`` pixel-labelled plus unlabelled indices.

    An epoch is one pass over the (shuffled) ``unlabelled`` indices,
    ``batch_size - labelled_per_batch`` per batch; the few ``labelled``
    indices are drawn from successive reshuffled passes over them, so they
    cycle (without repeats inside a batch unless ``labelled_per_batch``
    exceeds their number).
    The order is a deterministic function of ``(seed, epoch)``; call
    :meth:`set_epoch` before each epoch. Edge cases: with no unlabelled
    indices every batch is labelled (an epoch is one pass over ``labelled``);
    with no labelled indices every batch is unlabelled.

    ``labelled_per_batch=None`` means half the batch (5 + 5 of 10, the paper's
    ratio). With ``drop_last=False`` the final, short batch is kept (with its
    labelled share); for ``world_size > 1`` it is topped up with unlabelled
    indices from the start of the epoch so every rank gets the same count.

    Distributed: with ``world_size > 1`` each rank yields its shard of every
    global batch of ``batch_size`` (which must be divisible by
    ``world_size``): positions ``rank, rank + world_size, ...`` of the global
    batch listed labelled first, so each rank gets ``batch_size // world_size``
    indices with the labelled share split as evenly as possible, and the union
    over ranks is exactly the single-process batch.
    """

    def __init__(
        self,
        labelled: Sequence[int],
        unlabelled: Sequence[int],
        batch_size: int = 10,
        labelled_per_batch: int | None = None,
        seed: int = 0,
        drop_last: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.labelled = [int(i) for i in labelled]
        self.unlabelled = [int(i) for i in unlabelled]
        if not self.labelled and not self.unlabelled:
            raise ValueError("MixedBatchSampler needs labelled or unlabelled indices")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if labelled_per_batch is None:
            labelled_per_batch = batch_size // 2
        if not 0 <= labelled_per_batch <= batch_size:
            raise ValueError(
                f"labelled_per_batch must be in 0..{batch_size}, got {labelled_per_batch}"
            )
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"invalid rank {rank} for world_size {world_size}")
        if batch_size % world_size:
            raise ValueError(f"batch_size {batch_size} is not divisible by world_size {world_size}")
        if not self.unlabelled:
            labelled_per_batch = batch_size
        elif not self.labelled:
            labelled_per_batch = 0
        self.batch_size = batch_size
        self.labelled_per_batch = labelled_per_batch
        self.seed = seed
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose batch order :meth:`__iter__` yields."""
        self.epoch = int(epoch)

    @property
    def _per_batch_pool(self) -> tuple[list[int], int]:
        """The index pool an epoch passes over once, and its share per batch."""
        if self.labelled_per_batch == self.batch_size:
            return self.labelled, self.batch_size
        return self.unlabelled, self.batch_size - self.labelled_per_batch

    def __len__(self) -> int:
        pool, per_batch = self._per_batch_pool
        if self.drop_last:
            return len(pool) // per_batch
        return math.ceil(len(pool) / per_batch)

    def global_batches(self) -> list[list[int]]:
        """All batches of the current epoch as one process would see them."""
        rng = np.random.default_rng([self.seed % (1 << 64), self.epoch])
        pool, per_batch = self._per_batch_pool
        pool_order = [pool[i] for i in rng.permutation(len(pool))]
        count = len(self)
        mixed = pool is self.unlabelled and self.labelled_per_batch > 0
        labelled_pass: list[int] = []
        batches = []
        for b in range(count):
            part = pool_order[b * per_batch : (b + 1) * per_batch]
            if len(part) < per_batch and self.world_size > 1:
                shortfall = (-(len(part) + self.labelled_per_batch * mixed)) % self.world_size
                part = part + [pool_order[i % len(pool_order)] for i in range(shortfall)]
            if not mixed:
                batches.append(part)
                continue
            head: list[int] = []
            while len(head) < self.labelled_per_batch:
                if not labelled_pass:
                    # a new reshuffled pass; indices already in this batch go last
                    order = [self.labelled[i] for i in rng.permutation(len(self.labelled))]
                    labelled_pass = [i for i in order if i not in head]
                    labelled_pass += [i for i in order if i in head]
                head.append(labelled_pass.pop(0))
            batches.append(head + part)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.global_batches():
            yield batch[self.rank :: self.world_size]


def empty_stage_message(
    phase: str, images: int, labelled: int, batch_size: int, labelled_per_batch: int | None
) -> str:
    """Why an epoch of ``phase`` has no batch at all, and what to change (an error message).

    ``labelled_per_batch=None`` is the sampler's default, half the batch.
    """
    if labelled_per_batch is None:
        labelled_per_batch = batch_size // 2
    if phase == "pretrain":
        return (
            f"the classification stage has no batches: {images} training images do not fill "
            f"one batch of {batch_size}; lower --batch-size or add --train-images"
        )
    if labelled_per_batch >= batch_size or labelled == images:
        return (
            f"the fine-tuning stage has no batches: its batches are all pixel-labelled and "
            f"{labelled} pixel-labelled images do not fill one batch of {batch_size}; lower "
            "--labelled-per-batch (the rest of each batch is image-labelled) or --batch-size"
        )
    return (
        f"the fine-tuning stage has no batches: {images - labelled} image-labelled images do "
        f"not fill the {batch_size - labelled_per_batch} places of one batch; lower "
        "--batch-size or raise --labelled-per-batch"
    )
