"""Exactly differentiable attribution heatmaps behind one interface.

>>> from heatmaps import LRPHeatmap
>>> maps = LRPHeatmap(model, composite="epsilon_plus_flat")(x, targets, create_graph=True)
"""

from .base import Explanation, Heatmap
from .checkpointing import activation_checkpointing, default_checkpoint_modules, is_checkpointed
from .explainer import ExplainerHeatmap
from .gradcam import GradCAMHeatmap
from .gradients import (
    InputXGradientHeatmap,
    IntegratedGradientsHeatmap,
    SaliencyHeatmap,
    SmoothGradHeatmap,
)
from .lrp import LRPHeatmap
from .registry import available, get, register

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
]
__version__ = "0.1.0"
