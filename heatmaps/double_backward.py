"""Second derivatives through every layer, for heatmap calls with ``create_graph=True``.

A map that is itself a gradient (Saliency, Input x Gradient, Integrated
Gradients, SmoothGrad, Grad-CAM through captum) is trained by differentiating
the backward pass, so every operation needs a second derivative. PyTorch
lacks some:

* Hardsigmoid (MobileNetV3's squeeze-excitation gate): no derivative of
  ``aten::hardsigmoid_backward``. :func:`twice_differentiable` computes it as
  ``hardsigmoid(x) = clamp(x + 3, 0, 6) / 6`` instead, and Hardswish as
  ``hardswish(x) = x * clamp(x + 3, 0, 6) / 6`` (PyTorch versions differ in
  whether they have its second derivative). Same values (up to rounding), the same
  derivatives everywhere but at the kinks ``x = +-3``: ``1/6``, resp.
  ``(2x + 3) / 6``, on ``(-3, 3)``; ``0``, resp. ``0`` and ``1``, outside.
  An in-place call runs out of place.
* ``F.normalize`` at a zero vector: the second derivative of the norm there is
  NaN (Swin V2's cosine attention on padded windows), replaced by
  :func:`normalize`, whose values are the same (up to rounding).
* fused ``scaled_dot_product_attention`` (ViT's ``nn.MultiheadAttention``): no
  derivative of the flash/efficient kernels' backward. The call runs under
  ``torch.nn.attention.sdpa_kernel(SDPBackend.MATH)``, whose composite
  (matmul, softmax) implementation is twice differentiable.
  ``nn.MultiheadAttention``'s fused fast path
  (``torch._native_multi_head_attention``) is taken only when no input or
  parameter requires grad, i.e. never where a second derivative is needed.

The substitution is a ``TorchFunctionMode``: it intercepts the function calls
(also those of ``nn.Hardsigmoid`` and ``nn.Hardswish`` modules and of
torchvision's functional attention code), is thread-local, and changes
nothing in the model: no module swapped, no hook, no attribute.

Anything else without a second derivative is found by :func:`check_second_derivative`
on the maps' graph, which raises one error naming the backend and the layer.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.overrides import TorchFunctionMode

#: the name of autograd's node for an operation whose derivative PyTorch does not implement
NOT_IMPLEMENTED = "torch::autograd::NotImplemented"


def hardsigmoid(x: Tensor, inplace: bool = False) -> Tensor:
    """``clamp(x + 3, 0, 6) / 6``: ``F.hardsigmoid`` with a second derivative (zero a.e.)."""
    return (x + 3).clamp(0, 6) / 6


def hardswish(x: Tensor, inplace: bool = False) -> Tensor:
    """``x * clamp(x + 3, 0, 6) / 6``: ``F.hardswish`` with a second derivative."""
    return x * hardsigmoid(x)


def normalize(
    x: Tensor, p: float = 2.0, dim: int = 1, eps: float = 1e-12, out: Tensor | None = None
) -> Tensor:
    """``F.normalize`` whose second derivative is finite at ``x = 0``.

    ``x / sqrt(max(sum(x^2), eps^2))`` equals ``x / max(||x||, eps)`` (same
    values; same derivatives but at ``||x|| = eps``), but does not differentiate
    the norm at zero, where PyTorch's second derivative is ``0 / 0 = NaN``
    (Swin V2's cosine attention meets zero keys on padded windows).
    """
    if p != 2 or out is not None:
        return _ORIGINAL_NORMALIZE(x, p, dim, eps, out)
    return x / x.square().sum(dim, keepdim=True).clamp_min(eps * eps).sqrt()


_ORIGINAL_NORMALIZE = F.normalize

#: functions run by a twice-differentiable equivalent inside :func:`twice_differentiable`
STAND_INS = {F.hardsigmoid: hardsigmoid, F.hardswish: hardswish, F.normalize: normalize}


class _StandIns(TorchFunctionMode):
    """Calls :data:`STAND_INS` functions' equivalents instead (thread-local, nothing patched)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        return STAND_INS.get(func, func)(*args, **(kwargs or {}))


@contextlib.contextmanager
def twice_differentiable() -> Iterator[None]:
    """Run a block with second derivatives through every function PyTorch lacks them for.

    Under a ``TorchFunctionMode`` (thread-local, so no module or function is
    patched), ``F.hardsigmoid``, ``F.hardswish`` and ``F.normalize`` (also when
    ``nn.Hardsigmoid`` and ``nn.Hardswish`` modules call them) run as
    :func:`hardsigmoid`, :func:`hardswish` and :func:`normalize`, and
    attention runs on the math kernel.
    """
    with sdpa_kernel(SDPBackend.MATH), _StandIns():
        yield


def _reaches_not_implemented(roots: list, stops: set) -> bool:
    """Whether a graph walk from ``roots`` (not entering ``stops``) meets a NotImplemented node."""
    seen = set(stops)
    todo = [node for node in roots if node is not None]
    while todo:
        node = todo.pop()
        if node in seen:
            continue
        seen.add(node)
        if node.name() == NOT_IMPLEMENTED:
            return True
        todo.extend(n for n, _ in node.next_functions if n is not None)
    return False


def _layers_without_second_derivative(model: nn.Module, x: Tensor) -> list[str]:
    """Innermost modules whose own first derivative has no derivative (error path only).

    Runs one forward pass of ``model`` with a hook on every module that takes
    the gradient of the module's output w.r.t. its tensor inputs with
    ``create_graph=True`` and walks that local graph (stopping at the inputs).
    """
    names = {module: name for name, module in model.named_modules()}
    found: list[str] = []

    def hook(module: nn.Module, args: tuple, out: object) -> None:
        inputs = [a for a in args if isinstance(a, Tensor) and a.requires_grad]
        if not (isinstance(out, Tensor) and out.requires_grad and inputs):
            return
        grads = torch.autograd.grad(
            out, inputs, torch.ones_like(out), create_graph=True, allow_unused=True
        )
        stops = {a.grad_fn for a in inputs if a.grad_fn is not None}
        roots = [g.grad_fn for g in grads if g is not None]
        if _reaches_not_implemented(roots, stops):
            found.append(names[module])

    handles = [module.register_forward_hook(hook) for module in names]
    try:
        with torch.enable_grad():
            model(x.detach().requires_grad_(True))
    finally:
        for handle in handles:
            handle.remove()
    return [n for n in found if n and not any(o.startswith(f"{n}.") for o in found)]


def check_second_derivative(maps: Tensor, model: nn.Module, x: Tensor, backend: str) -> None:
    """Raise if training on ``maps`` would need a derivative PyTorch does not implement.

    One walk over the maps' autograd graph; on a hit, a diagnostic forward pass
    names the innermost layers responsible. Call it inside :func:`twice_differentiable`.

    Raises:
        NotImplementedError: naming the backend and the layer type(s).
    """
    if maps.grad_fn is None or not _reaches_not_implemented([maps.grad_fn], set()):
        return
    modules = dict(model.named_modules())
    layers = _layers_without_second_derivative(model, x)
    where = (
        ", ".join(f"{type(modules[n]).__name__} ({n!r})" for n in layers)
        if layers
        else f"an operation in {type(model).__name__}.forward outside its submodules"
    )
    raise NotImplementedError(
        f"{backend}: create_graph=True maps cannot be differentiated again: {where} computes "
        "an operation without a second derivative in PyTorch; replace it by a twice-"
        "differentiable equivalent (heatmaps.double_backward does so for Hardsigmoid, "
        "Hardswish, F.normalize and fused attention) or use create_graph=False"
    )
