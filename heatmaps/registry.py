"""Backends by name, including third-party ones from entry points.

Built-in backends are registered here; other packages add theirs through the
entry-point group ``heatmaps.backends``, e.g. in their ``setup.cfg``::

    [options.entry_points]
    heatmaps.backends =
        mymethod = mypackage.module:MyHeatmap

where ``MyHeatmap`` is a :class:`heatmaps.Heatmap` subclass (or any callable
``(model, **options) -> Heatmap``).
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import metadata
from typing import Any

from torch import nn

from .base import Heatmap

ENTRY_POINT_GROUP = "heatmaps.backends"

_BUILTIN: dict[str, str] = {
    "lrp": "heatmaps.lrp:LRPHeatmap",
    "gradcam": "heatmaps.gradcam:GradCAMHeatmap",
    "saliency": "heatmaps.gradients:SaliencyHeatmap",
    "input_x_gradient": "heatmaps.gradients:InputXGradientHeatmap",
    "integrated_gradients": "heatmaps.gradients:IntegratedGradientsHeatmap",
    "smoothgrad": "heatmaps.gradients:SmoothGradHeatmap",
    "explainer": "heatmaps.explainer:ExplainerHeatmap",
}
_REGISTERED: dict[str, Callable[..., Heatmap]] = {}


def register(name: str, factory: Callable[..., Heatmap]) -> None:
    """Register a backend factory under ``name`` (overrides entry points of that name)."""
    if not callable(factory):
        raise TypeError(f"register: factory for {name!r} is not callable")
    _REGISTERED[name] = factory


def _entry_points() -> dict[str, metadata.EntryPoint]:
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def available() -> list[str]:
    """Names of every backend: built-in, registered at run time, and from entry points."""
    return sorted(set(_BUILTIN) | set(_REGISTERED) | set(_entry_points()))


def _load(path: str) -> Callable[..., Heatmap]:
    module_name, _, attr = path.partition(":")
    module = __import__(module_name, fromlist=[attr])
    return getattr(module, attr)


def get(name: str, model: nn.Module, **options: Any) -> Heatmap:
    """Build the backend ``name`` around ``model`` with backend-specific ``options``.

    Raises:
        ValueError: unknown name (the message lists the available ones).
    """
    if name in _REGISTERED:
        factory = _REGISTERED[name]
    elif name in _BUILTIN:
        factory = _load(_BUILTIN[name])
    else:
        points = _entry_points()
        if name not in points:
            raise ValueError(
                f"heatmaps.get: unknown backend {name!r}; available: {', '.join(available())}"
            )
        factory = points[name].load()
    heatmap = factory(model, **options)
    if not isinstance(heatmap, Heatmap):
        raise TypeError(f"backend {name!r} did not return a heatmaps.Heatmap")
    return heatmap
