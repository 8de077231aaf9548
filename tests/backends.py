"""Backend factories shared by the tests: every backend, with deterministic options."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

import heatmaps

BACKENDS: dict[str, Callable[[nn.Module], heatmaps.Heatmap]] = {
    "lrp-epsilon": lambda m: heatmaps.LRPHeatmap(m, composite="epsilon"),
    # the vectorised multi-class backward runs the epsilon gates' ordinary-operation fallbacks
    "lrp-epsilon-vmap": lambda m: heatmaps.LRPHeatmap(m, composite="epsilon", batched=True),
    "lrp-epsilon-logit": lambda m: heatmaps.LRPHeatmap(m, composite="epsilon", relevance="logit"),
    "lrp-epsilon_plus_flat": lambda m: heatmaps.LRPHeatmap(m, composite="epsilon_plus_flat"),
    "lrp-epsilon_gamma_box": lambda m: heatmaps.LRPHeatmap(m, composite="epsilon_gamma_box"),
    "lrp-epsilon_alpha2_beta1": lambda m: heatmaps.LRPHeatmap(m, composite="epsilon_alpha2_beta1"),
    "gradcam": lambda m: heatmaps.GradCAMHeatmap(m),
    "gradcam-captum": lambda m: heatmaps.GradCAMHeatmap(m, closed_form=False),
    "saliency": lambda m: heatmaps.SaliencyHeatmap(m),
    "input_x_gradient": lambda m: heatmaps.InputXGradientHeatmap(m),
    "integrated_gradients": lambda m: heatmaps.IntegratedGradientsHeatmap(m, n_steps=4),
    "smoothgrad": lambda m: heatmaps.SmoothGradHeatmap(m, samples=3, seed=0),
}
