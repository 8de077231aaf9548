"""The Explainer: learned class-specific masks in one forward pass (paper 1b).

Stalder, Perraudin, Achanta, Perez-Cruz, Volpi, "What you see is what you
classify: black box attributions", NeurIPS 2022. A segmentation network, the
*Explainer*, is trained to predict for every class ``c`` a sigmoid mask ``s_c``
such that the frozen classifier still recognises the labelled classes on the
masked-in image and is left uncertain by the masked-out image.

* :mod:`.networks` - :func:`build_explainer` (DeepLabV3-ResNet50 as in the paper,
  LR-ASPP MobileNetV3, FCN, or a small network for tests);
* :mod:`.losses` - the loss terms and :class:`ExplainerLoss`;
* :mod:`.heatmap` - :class:`ExplainerHeatmap`, the ``"explainer"`` backend;
* :mod:`.training` - :func:`explainer_step`, :func:`freeze_classifier`, the
  optional pixel-level term.

>>> explainer = build_explainer("small", num_classes=10)
>>> classifier = freeze_classifier(classifier)
>>> total, terms = explainer_step(explainer, classifier, x, labels, ExplainerLoss(), optimizer=opt)
>>> maps = ExplainerHeatmap(classifier, explainer)(x, "all")     # (B, 10, H, W) in [0, 1]
"""

from .heatmap import ExplainerHeatmap
from .losses import (
    ExplainerLoss,
    ExplainerLossConfig,
    aggregate_masks,
    area_loss,
    classification_loss,
    entropy_loss,
    per_class_masked_inputs,
    present_classes,
    sparsity_loss,
    total_variation,
)
from .networks import (
    ARCHITECTURES,
    ClassifierUNet,
    SegmentationLogits,
    SmallExplainer,
    build_explainer,
)
from .training import (
    check_frozen,
    explainer_step,
    freeze_classifier,
    segmentation_logits,
)

__all__ = [
    "ARCHITECTURES",
    "ClassifierUNet",
    "ExplainerHeatmap",
    "ExplainerLoss",
    "ExplainerLossConfig",
    "SegmentationLogits",
    "SmallExplainer",
    "aggregate_masks",
    "area_loss",
    "build_explainer",
    "check_frozen",
    "classification_loss",
    "entropy_loss",
    "explainer_step",
    "freeze_classifier",
    "per_class_masked_inputs",
    "present_classes",
    "segmentation_logits",
    "sparsity_loss",
    "total_variation",
]
