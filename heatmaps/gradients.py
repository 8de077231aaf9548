"""Gradient-based maps on captum, differentiable with ``create_graph``.

captum's gradient attributions call ``self.gradient_func`` to take input
gradients; its default does not build a graph. Each class here installs a
gradient function that passes ``create_graph`` (and keeps the graph for the
next target), so the maps are differentiable w.r.t. the model's parameters:

* :class:`SaliencyHeatmap` - ``|d y_c / d x|`` (Simonyan et al., 2014, sec. 3.1);
* :class:`InputXGradientHeatmap` - ``x * d y_c / d x`` (Shrikumar et al., 2016);
  equal to LRP-0 on ReLU networks without biases;
* :class:`IntegratedGradientsHeatmap` - ``(x - x') * int_0^1 d y_c(x' + a (x - x')) / d x da``
  (Sundararajan et al., ICML 2017, eq. 1), Gauss-Legendre quadrature;
* :class:`SmoothGradHeatmap` - ``1/n sum_i d y_c(x + eps_i) / d x``, ``eps_i ~ N(0, s^2)``
  (Smilkov et al., 2017, eq. 3), optionally of the absolute gradient.

Maps are the attributions summed over colour channels (``channel_reduction``).
Saliency and Input x Gradient reuse the logits of the call's own forward pass;
Integrated Gradients and SmoothGrad evaluate the model on interpolated or noisy
copies, so their logits come from one additional plain forward pass.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any

import torch
from captum._utils.common import _run_forward
from captum.attr import InputXGradient, IntegratedGradients, Saliency
from captum.attr._utils.approximation_methods import approximation_parameters
from captum.attr._utils.common import _format_input_baseline
from torch import Tensor, nn

from .base import Heatmap, check_channel_reduction, reduce_channels


def _gradients(
    forward_fn: Callable,
    inputs: tuple[Tensor, ...],
    target_ind: Any = None,
    additional_forward_args: Any = None,
    *,
    create_graph: bool,
) -> tuple[Tensor, ...]:
    """captum's ``compute_gradients`` contract, with ``create_graph`` and a retained graph."""
    with torch.enable_grad():
        outputs = _run_forward(forward_fn, inputs, target_ind, additional_forward_args)
        return torch.autograd.grad(
            outputs.sum(), inputs, create_graph=create_graph, retain_graph=True
        )


class _CaptumGradientHeatmap(Heatmap):
    """Shared machinery: one captum method call per target column."""

    def __init__(self, model: nn.Module, channel_reduction: str = "sum") -> None:
        super().__init__(model)
        self.channel_reduction = check_channel_reduction(channel_reduction)
        self._cached: tuple[Tensor, Tensor] | None = None

    @contextlib.contextmanager
    def _attached(self, x: Tensor) -> Iterator[None]:
        try:
            yield
        finally:
            self._cached = None

    def _forward_with_cache(self, inp: Tensor, *args: Any) -> Tensor:
        """The model, but returning the call's own logits for its own input (no second forward)."""
        if self._cached is not None and inp is self._cached[0] and not args:
            return self._cached[1]
        return self.model(inp, *args)

    def _method(self) -> Any:
        raise NotImplementedError

    def _call_method(self, method: Any, x: Tensor, target: Tensor) -> Tensor:
        return method.attribute(x, target=target)

    def _attribute(self, x: Tensor, logits: Tensor, index: Tensor, create_graph: bool) -> Tensor:
        self._cached = (x, logits)
        method = self._method()
        method.gradient_func = functools.partial(_gradients, create_graph=create_graph)
        maps = []
        for k in range(index.shape[1]):
            attribution = self._call_method(method, x, index[:, k])
            maps.append(reduce_channels(attribution, self.channel_reduction))
        return torch.stack(maps, dim=1)


class SaliencyHeatmap(_CaptumGradientHeatmap):
    """Saliency: absolute input gradient of the class logit (captum ``Saliency``).

    Args:
        abs: take the absolute value (captum's default); ``False`` keeps the sign.
    """

    name = "saliency"

    def __init__(self, model: nn.Module, abs: bool = True, channel_reduction: str = "sum") -> None:
        super().__init__(model, channel_reduction)
        self.abs = abs

    def _method(self) -> Any:
        return Saliency(self._forward_with_cache)

    def _call_method(self, method: Any, x: Tensor, target: Tensor) -> Tensor:
        return method.attribute(x, target=target, abs=self.abs)


class InputXGradientHeatmap(_CaptumGradientHeatmap):
    """Input times input gradient of the class logit (captum ``InputXGradient``)."""

    name = "input_x_gradient"

    def _method(self) -> Any:
        return InputXGradient(self._forward_with_cache)


class IntegratedGradientsHeatmap(_CaptumGradientHeatmap):
    """Integrated Gradients from a constant baseline (captum ``IntegratedGradients``).

    Args:
        n_steps: quadrature points of the path integral.
        baseline: the reference input value ``x'`` (a float or a tensor broadcastable to x).
        internal_batch_size: chunk size of the ``n_steps * B`` path evaluations (at least
            one quadrature step per chunk); the chunks' attributions are summed with their
            graphs, so the maps stay differentiable (captum's own chunking detaches them).
    """

    name = "integrated_gradients"

    def __init__(
        self,
        model: nn.Module,
        n_steps: int = 32,
        baseline: float | Tensor = 0.0,
        internal_batch_size: int | None = None,
        channel_reduction: str = "sum",
    ) -> None:
        super().__init__(model, channel_reduction)
        if n_steps < 1:
            raise ValueError(f"n_steps: expected >= 1, got {n_steps}")
        if internal_batch_size is not None and internal_batch_size < 1:
            raise ValueError(
                f"internal_batch_size: expected >= 1 or None, got {internal_batch_size}"
            )
        self.n_steps = n_steps
        self.baseline = baseline
        self.internal_batch_size = internal_batch_size

    def _method(self) -> Any:
        return IntegratedGradients(self.model)

    def _call_method(self, method: Any, x: Tensor, target: Tensor) -> Tensor:
        if self.internal_batch_size is None:
            return method.attribute(x, baselines=self.baseline, target=target, n_steps=self.n_steps)
        # captum's own chunking (``_batch_attribution``) adds the chunks' attributions detached,
        # which cuts the graph of all chunks but the first; the same chunks, summed with their graphs
        baselines = _format_input_baseline((x,), self.baseline)[1]
        sizes, alphas = approximation_parameters("gausslegendre")
        sizes, alphas = sizes(self.n_steps), alphas(self.n_steps)
        step = max(1, self.internal_batch_size // x.shape[0])
        total = 0
        for start in range(0, self.n_steps, step):
            chunk = slice(start, min(start + step, self.n_steps))
            (attribution,) = method._attribute(
                inputs=(x,),
                baselines=baselines,
                target=target,
                n_steps=len(sizes[chunk]),
                method="gausslegendre",
                step_sizes_and_alphas=(sizes[chunk], alphas[chunk]),
            )
            total = total + attribution
        return total


class SmoothGradHeatmap(_CaptumGradientHeatmap):
    """SmoothGrad: input gradients averaged over noisy copies (captum ``Saliency``).

    captum's ``NoiseTunnel`` accumulates the per-sample attributions under
    ``torch.no_grad()``, which cuts the graph, so the noise loop is written here
    (same noise draw as ``NoiseTunnel``: ``x.repeat_interleave(n) + N(0, s^2)``),
    and captum's ``Saliency`` computes the gradients of all noisy copies at once.

    Args:
        samples: noisy copies per image.
        stdev: standard deviation of the Gaussian noise (input units).
        abs: average absolute gradients (``|grad|``) or signed ones (default).
        seed: when set, the noise is drawn after seeding a forked RNG on every
            call, so the map is a deterministic (finite-difference checkable)
            function of the parameters and the global RNG is left untouched.
    """

    name = "smoothgrad"

    def __init__(
        self,
        model: nn.Module,
        samples: int = 8,
        stdev: float = 0.1,
        abs: bool = False,
        seed: int | None = None,
        channel_reduction: str = "sum",
    ) -> None:
        super().__init__(model, channel_reduction)
        if samples < 1:
            raise ValueError(f"samples: expected >= 1, got {samples}")
        if not stdev >= 0:
            raise ValueError(f"stdev: expected a standard deviation >= 0, got {stdev}")
        self.samples = samples
        self.stdev = stdev
        self.abs = abs
        self.seed = seed

    def _method(self) -> Any:
        return Saliency(self.model)

    def _noisy(self, x: Tensor) -> Tensor:
        devices = [x.device] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices, enabled=self.seed is not None):
            if self.seed is not None:
                torch.manual_seed(self.seed)
            size = (x.shape[0] * self.samples, *x.shape[1:])
            stdev = torch.tensor(self.stdev, device=x.device, dtype=x.dtype).repeat(size)
            noise = torch.normal(0.0, stdev)
        return x.repeat_interleave(self.samples, dim=0) + noise

    def _call_method(self, method: Any, x: Tensor, target: Tensor) -> Tensor:
        noisy = self._noisy(x)
        grads = method.attribute(noisy, target=target.repeat_interleave(self.samples), abs=self.abs)
        return grads.unflatten(0, (x.shape[0], self.samples)).mean(dim=1)
