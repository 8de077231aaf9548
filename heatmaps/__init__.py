"""Exactly differentiable attribution heatmaps behind one interface.

>>> from heatmaps import LRPHeatmap
>>> maps = LRPHeatmap(model, composite="epsilon_plus_flat")(x, targets, create_graph=True)

Importing the package imports every built-in backend; each registers itself
under its ``name`` (see :mod:`heatmaps.registry`), so :func:`available` lists them all.
"""

from .base import Explanation, Heatmap
from .explainer import ExplainerHeatmap
from .gradcam import GradCAMHeatmap
from .gradients import (
    InputXGradientHeatmap,
    IntegratedGradientsHeatmap,
    SaliencyHeatmap,
    SmoothGradHeatmap,
)
from .lrp import LRPHeatmap
from .recomputation import activation_checkpointing, default_checkpoint_modules, is_checkpointed
from .registry import available, get, register, unregister

__all__ = [
    "ExplainerHeatmap",
    "Explanation",
    "GradCAMHeatmap",
    "Heatmap",
    "InputXGradientHeatmap",
    "IntegratedGradientsHeatmap",
    "LRPHeatmap",
    "SaliencyHeatmap",
    "SmoothGradHeatmap",
    "activation_checkpointing",
    "available",
    "default_checkpoint_modules",
    "get",
    "is_checkpointed",
    "register",
    "unregister",
]
__version__ = "0.1.0"
