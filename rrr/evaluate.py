"""``python -m rrr.evaluate``: segmentation and classification metrics of a trained model.

Example::

    python -m rrr.evaluate --checkpoint runs/r18/checkpoint.pt --split test --json test.json

Data options default to the run's own; pass them to evaluate on data composed
differently (e.g. ``--objects 3,5`` for more crowded scenes). Prints and
optionally writes JSON with ``miou``, ``per_class_iou``, ``pixel_accuracy``,
``map`` and ``f1``.

``--explanation-metrics`` adds, under ``"explanation"``, the mask metrics of
Stalder et al. (NeurIPS 2022) of the maps that explain the checkpoint's
classifier, averaged over every (image, present class) pair of the split:
mask F1 and discrete IoU at 0.5, continuous IoU, AUC and the saliency metric;
and their class specificity (:func:`heatmaps.metrics.class_specificity`):
``own`` and ``other``, the mean map of a present class on its own items and on
the other classes' items of the scene (over the pairs whose scene has both),
their ``ratio``, and ``absent``, the mean map of an absent class on the items.
``"all_items_reference"`` scores the same way the maps that paint every item of
the scene for every present class (:func:`heatmaps.metrics.all_items_maps`;
own = other = 1, ratio 1 and absent 0 by construction), the value of knowing
where the items are but not which is which.
The maps are those of the run's own backend (the Explainer's masks for
``--method explainer``), or of ``--explain-method NAME`` built on the same
classifier, so Explainer, Grad-CAM and LRP of one frozen classifier can be
compared from one checkpoint::

    python -m rrr.evaluate --checkpoint runs/expl/checkpoint.pt --explanation-metrics
    python -m rrr.evaluate --checkpoint runs/expl/checkpoint.pt --explain-method gradcam
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import torch
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm import tqdm

from heatmaps.base import Heatmap
from heatmaps.labels import IGNORE_INDEX, class_masks

from .config import OneLineParser, RunConfig, add_data_options, positive_int
from .segmenters import Segmenter


def evaluate_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="python -m rrr.evaluate",
        description="Evaluate a checkpoint of rrr.finetune on a data split.",
    )
    parser.add_argument(
        "--checkpoint",
        required=True,
        metavar="PATH",
        help="a checkpoint.pt written by rrr.finetune",
    )
    parser.add_argument(
        "--split", choices=["train", "val", "test"], default="test", help="split to evaluate"
    )
    parser.add_argument(
        "--batch-size", type=positive_int, default=16, metavar="N", help="evaluation batch size"
    )
    parser.add_argument("--device", default="auto", metavar="DEVICE", help="as for rrr.finetune")
    parser.add_argument(
        "--gating",
        choices=["predicted", "none", "true"],
        default=None,
        help="class gating of heatmap models (default: the run's); true gates by the true "
        "image-level labels",
    )
    parser.add_argument(
        "--explanation-metrics",
        action="store_true",
        help="also score the maps that explain the classifier against the class masks "
        "(mask F1, discrete and continuous IoU, AUC, saliency metric) and their class "
        "specificity (mean map on the own item, on the other items, their ratio, on the items "
        "for absent classes), next to the reference that paints all items for every present class",
    )
    parser.add_argument(
        "--explain-method",
        default=None,
        metavar="NAME",
        help="score the maps of this backend (gradcam, lrp, explainer, any name in "
        "heatmaps.available()) of the checkpoint's classifier instead of the run's own maps; "
        "implies --explanation-metrics",
    )
    parser.add_argument(
        "--composite",
        default=None,
        metavar="NAME",
        help="LRP composite of --explain-method lrp (default: the run's --composite)",
    )
    parser.add_argument(
        "--saliency-variant",
        choices=["crop", "mask"],
        default="crop",
        help="saliency metric on the tight box crop (Dabkowski & Gal) or on the soft-masked "
        "image (Stalder et al.)",
    )
    parser.add_argument(
        "--json", default=None, metavar="PATH", help="also write the metrics to this JSON file"
    )
    parser.add_argument(
        "--no-progress", dest="progress", action="store_false", help="no progress bar"
    )
    add_data_options(parser, with_defaults=False)
    return parser


def explanation_backend(model: Segmenter, config: RunConfig, name: str | None = None) -> Heatmap:
    """The :class:`heatmaps.Heatmap` whose maps ``--explanation-metrics`` scores.

    ``name=None``: the run's own maps (:meth:`~rrr.segmenters.Segmenter.heatmap`:
    the heatmap backend of a heatmap segmenter, the Explainer of an explainer
    run); otherwise the backend ``name`` built with :func:`heatmaps.get` on the
    checkpoint's classifier (``"explainer"`` needs an explainer run; ``"lrp"``
    uses ``config``'s composite, epsilon and relevance).
    """
    import heatmaps

    from .classifiers import check_support

    own = model.heatmap()
    if own is None:
        raise ValueError(
            f"--explanation-metrics: the checkpoint's model ({config.model}) has no "
            "classifier to explain; use a checkpoint of --model heatmap or explainer"
        )
    if name is None:
        return own
    if name == "explainer":
        if own.name != "explainer":
            raise ValueError(
                "--explain-method explainer: the checkpoint has no Explainer; train one with "
                "python -m rrr.finetune --method explainer"
            )
        return own
    if name not in heatmaps.available():
        raise ValueError(
            f"--explain-method {name}: unknown backend; available: {', '.join(heatmaps.available())}"
        )
    check_support(name, config.arch)
    options: dict = {}
    if name == "lrp":
        options["composite"] = config.composite
        if options["composite"] == "epsilon":
            options["epsilon"] = config.epsilon
        options["relevance"] = config.relevance
    return heatmaps.get(name, own.model, **options)


def _number(value: Tensor) -> float | None:
    """A finite tensor as a float; ``None`` (JSON ``null``) for nan or inf."""
    return float(value) if bool(torch.isfinite(value)) else None


class ExplanationMetrics:
    """Mean mask metrics (:mod:`heatmaps.metrics`) over (image, present class) pairs.

    Maps of a backend whose name is ``"explainer"`` are masks in ``[0, 1]`` and
    are used as they are; the maps of every other backend are rescaled per map
    with ``normalise_maps(how="max")`` (positive part over its maximum). The
    ground truth of class ``c`` is the pixels labelled ``c + 1``; unlabelled
    pixels count as not the object, and images without labelled pixels are skipped.

    The maps of every class are computed (absent ones too, for the class
    specificity's ``absent``), the mask metrics are taken over the present
    classes only. Class specificity (:func:`heatmaps.metrics.class_specificity`)
    is summed over the batches and finalised in :meth:`compute`; so is that of
    the all-items reference (:func:`heatmaps.metrics.all_items_maps`), with its
    mask F1, discrete and continuous IoU.
    """

    KEYS = ("mask_f1", "discrete_iou", "continuous_iou", "auc", "saliency")
    SPECIFICITY = ("own", "other", "ratio", "absent")
    REFERENCE_KEYS = ("mask_f1", "discrete_iou", "continuous_iou")

    def __init__(
        self, backend, num_classes: int, saliency_variant: str = "crop", threshold: float = 0.5
    ) -> None:
        self.backend = backend
        self.num_classes = num_classes
        self.saliency_variant = saliency_variant
        self.threshold = threshold
        self.values: dict[str, list[Tensor]] = {key: [] for key in self.KEYS}
        self.reference: dict[str, list[Tensor]] = {key: [] for key in self.REFERENCE_KEYS}
        self.specificity: list[dict[str, Tensor]] = []
        self.reference_specificity: list[dict[str, Tensor]] = []
        self._outputs: int | None = None

    def maps(self, x: Tensor, present: Tensor) -> Tensor:
        """``(B, C, H, W)`` maps in ``[0, 1]`` of the classes marked in ``present`` (others 0).

        Mark every class to get the maps of absent classes too (each class's map
        does not depend on which other classes are asked for).
        """
        from heatmaps.metrics import normalise_maps

        if self._outputs is None:
            with torch.no_grad():
                self._outputs = self.backend.model(x[:1]).shape[1]
        outputs = self._outputs
        # a classifier with a background output neuron has C + 1 outputs: never explain it
        targets = torch.cat([present, present.new_zeros(len(x), outputs - present.shape[1])], 1)
        maps = self.backend(x, targets, create_graph=False).detach()[:, : self.num_classes]
        return maps if self.backend.name == "explainer" else normalise_maps(maps, how="max")

    def update(self, x: Tensor, labels: Tensor, target: Tensor) -> None:
        from heatmaps.metrics import (
            all_items_maps,
            class_specificity,
            continuous_iou,
            discrete_iou,
            mask_auc,
            mask_f1,
            saliency_metric,
        )

        keep = (target != IGNORE_INDEX).flatten(1).any(1) & (labels > 0.5).any(1)
        if not bool(keep.any()):
            return
        x, labels, target = x[keep], labels[keep], target[keep].to(x.device)
        present = labels.to(x.device) > 0.5
        maps = self.maps(x, torch.ones_like(present))
        truth = class_masks(target, self.num_classes)
        t = self.threshold
        reference = all_items_maps(truth, present).to(maps.dtype)
        metrics = {
            "mask_f1": lambda m: mask_f1(m, truth, t),
            "discrete_iou": lambda m: discrete_iou(m, truth, t),
            "continuous_iou": lambda m: continuous_iou(m, truth),
            "auc": lambda m: mask_auc(m, truth),
        }
        for store, scored in ((self.values, maps), (self.reference, reference)):
            for key in store.keys() & metrics.keys():
                store[key].append(metrics[key](scored)[present].cpu())
        self.specificity.append(class_specificity(maps, truth, present))
        self.reference_specificity.append(class_specificity(reference, truth, present))
        image, cls = present.nonzero(as_tuple=True)
        saliency = saliency_metric(
            self.backend.model,
            x[image],
            maps[image, cls],
            cls,
            variant=self.saliency_variant,
            threshold=t,
            activation="sigmoid",
        )
        self.values["saliency"].append(saliency.cpu())

    @staticmethod
    def _means(values: dict[str, list[Tensor]]) -> dict[str, float | None]:
        means: dict[str, float | None] = {}
        for key, parts in values.items():
            joined = torch.cat(parts) if parts else torch.zeros(0)
            mean = joined.double().nanmean() if len(joined) else torch.tensor(float("nan"))
            means[key] = None if mean.isnan() else float(mean)
        return means

    @classmethod
    def _specificity(cls, sums: list[dict[str, Tensor]]) -> dict:
        from heatmaps.metrics import SPECIFICITY_SUMS, summarise_class_specificity

        if not sums:
            sums = [{key: torch.zeros((), dtype=torch.float64) for key in SPECIFICITY_SUMS}]
        summary = summarise_class_specificity(*sums)
        result: dict = {key: _number(summary[key]) for key in cls.SPECIFICITY}
        result["specificity_pairs"] = int(summary["pairs"])
        result["absent_pairs"] = int(summary["absent_pairs"])
        return result

    def compute(self) -> dict:
        """The means, class specificity and the ``"all_items_reference"`` as a JSON-ready dict.

        ``own``, ``other``, ``ratio``, ``absent``: see
        :func:`heatmaps.metrics.summarise_class_specificity`; ``null`` where
        undefined (no pair) or infinite (other = 0). ``specificity_pairs``
        counts the (scene, present class) pairs whose scene holds an item of
        another class, ``absent_pairs`` the (scene, absent class) pairs.
        """
        result: dict = {
            "method": self.backend.name,
            "maps": "masks as they are"
            if self.backend.name == "explainer"
            else "normalise_maps(how='max')",
            "threshold": self.threshold,
            "saliency_variant": self.saliency_variant,
        }
        pairs = torch.cat(self.values["mask_f1"]) if self.values["mask_f1"] else torch.zeros(0)
        result["pairs"] = len(pairs)
        result.update(self._means(self.values))
        result.update(self._specificity(self.specificity))
        result["all_items_reference"] = {
            "maps": "every item of the scene for every present class, absent classes 0 "
            "(own = other = 1, ratio 1, absent 0 by construction)",
            **self._means(self.reference),
            **self._specificity(self.reference_specificity),
        }
        return result


def evaluate(args: argparse.Namespace) -> dict:
    from .checkpoint import atomic_write_text
    from .data import build_dataset
    from .device import resolve_device
    from .loading import load_trained
    from .segmentation_metrics import SegmentationMetrics

    device = resolve_device(args.device)
    model, state = load_trained(args.checkpoint, device)
    # unset data options (None) keep the run's values; --download is a plain switch
    changes = {
        key: getattr(args, key)
        for key in RunConfig.data_fields()
        if key != "download" and getattr(args, key) is not None
    }
    config: RunConfig = state["run_config"].replace(**changes, download=args.download)
    if args.composite is not None:
        config = config.replace(composite=args.composite)
    gating = args.gating
    if gating in ("predicted", "none"):
        model.gating = gating
    dataset = build_dataset(config.data, args.split, **config.data_options(args.split))
    metrics = SegmentationMetrics(state["num_classes"], list(state["classes"]))
    explanation = None
    if args.explanation_metrics or args.explain_method:
        backend = explanation_backend(model, config, args.explain_method)
        explanation = ExplanationMetrics(backend, state["num_classes"], args.saliency_variant)
    loader = DataLoader(dataset, batch_size=args.batch_size)
    for batch in tqdm(loader, desc=f"evaluate {args.split}", disable=not args.progress):
        x = batch["image"].to(device)
        present = batch["labels"].to(device) > 0.5 if gating == "true" else None
        with torch.enable_grad():
            out = model(x, present, create_graph=False)
        metrics.update(
            out.seg_logits.argmax(1).cpu(), batch["mask"], out.logits.cpu(), batch["labels"]
        )
        if explanation is not None:
            explanation.update(x, batch["labels"], batch["mask"])
    result = metrics.compute()
    if explanation is not None:
        result["explanation"] = explanation.compute()
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
