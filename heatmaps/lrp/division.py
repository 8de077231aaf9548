"""Stabilised divisions ``R / stab(z)`` with cheap derivatives.

Every LRP rule divides the relevance arriving at a layer by the layer's
(modified) output, stabilised as zennit does: ``stab(z) = z + eps * (sign(z)
+ [z == 0])``. Written with ordinary operations, the differentiable relevance
pass keeps ``R``, ``stab(z)`` and ``R / stab(z)`` per layer, and the final
backward pass runs a division's or product's and a reciprocal's derivatives.
The functions here keep only ``1 / stab(z)`` and ``r = R / stab(z)`` (which
the layer's own backward keeps as well) and compute both derivatives from
them in three elementwise passes::

    dL/dR = s / stab(z),    dL/dz = -(s / stab(z)) * r,    s = dL/dr

(the shift is piecewise constant in ``z``, so its derivative is zero almost
everywhere).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch._C._functorch import is_legacy_batchedtensor
from torch.autograd import Function
from torch.autograd.function import once_differentiable
from zennit.core import BasicHook, Stabilizer


def plain_epsilon(rule: BasicHook) -> float | None:
    """The epsilon of an ``Epsilon``/``Norm`` rule whose stabiliser is zennit's default form.

    That form is ``stab(z) = z + eps * (sign(z) + [z == 0])``: a shift that is
    piecewise constant in ``z``, so its derivative is zero almost everywhere.
    """
    for cell in rule.gradient_mapper.__closure__ or ():
        value = cell.cell_contents
        if isinstance(value, Stabilizer) and not value.clip and not value.norm_scale:
            return float(value.epsilon)
    return None


def _shift(z: Tensor, epsilon: float) -> Tensor:
    """``eps * (sign(z) + [z == 0])``: ``+eps`` where ``z >= 0``, ``-eps`` elsewhere (no graph)."""
    with torch.no_grad():
        eps = z.new_tensor(epsilon)
        return torch.where(z >= 0, eps, -eps)


def _inverse(z: Tensor, epsilon: float) -> Tensor:
    """``1 / stab(z)``, without a graph."""
    with torch.no_grad():
        return (z + _shift(z, epsilon)).reciprocal_()


class StabilisedInverse(Function):
    """``1 / (z + eps * (sign(z) + [z == 0]))`` from ``z``, for :class:`EpsilonScale` only.

    The forward pass computes the inverse without a graph (the shift is
    piecewise constant in ``z``, so its derivative is zero almost everywhere).
    The backward pass is **not** the derivative of the inverse: the only
    consumer of the result, :class:`EpsilonScale`, already returns the
    gradient with respect to ``z`` (it needs ``r = R / stab(z)``, which it
    keeps anyway, for that: ``d(R / stab(z)) / dz = -r / stab(z)``), and this
    function hands it on. Splitting the derivative this way means the
    relevance pass keeps two tensors per layer (the inverse and ``r``, which
    the layer's own backward keeps as well) instead of also ``R``, and the
    final backward pass runs three elementwise passes per layer instead of
    five (a product's two and a reciprocal's three).
    """

    @staticmethod
    def forward(z: Tensor, epsilon: float) -> Tensor:  # type: ignore[override]
        return _inverse(z, epsilon)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # type: ignore[override]
        # in the relevance pass no gradient reaches the inverse (the output gate returns
        # none for it): without this, autograd would hand backward a tensor of zeros, and
        # adding it to the gradient of z would cost two passes over every layer's output
        ctx.set_materialize_grads(False)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_z: Tensor | None):  # type: ignore[override]
        return grad_z, None


class EpsilonScale(Function):
    """``r = R * inverse``: the epsilon rule's division of the output relevance by ``stab(z)``.

    ``inverse`` must come from :class:`StabilisedInverse`; the gradient this
    function returns for it is the gradient with respect to ``z``::

        dL/dR = s * inverse,    dL/dz = -(s * inverse) * r,    s = dL/dr

    """

    @staticmethod
    def forward(relevance: Tensor, inverse: Tensor) -> Tensor:  # type: ignore[override]
        return relevance * inverse

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # type: ignore[override]
        ctx.save_for_backward(inputs[1], output)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        inverse, scaled = ctx.saved_tensors
        grad_relevance = grad * inverse
        return grad_relevance, (grad_relevance * scaled).neg_()


def epsilon_scale(relevance: Tensor, inverse: Tensor) -> Tensor:
    """:class:`EpsilonScale`, or the same values and derivatives from ordinary operations.

    The vectorised multi-class backward (``is_grads_batched``) runs under
    PyTorch's legacy ``vmap``, which does not record custom autograd functions
    (their outputs come back without a graph). There the product is written
    with ordinary operations: ``(inverse - c) * m`` with ``c = inverse``
    and ``m = -(R * inverse**2)`` both detached is zero in value, and its
    derivative with respect to ``inverse`` is ``m``, the derivative with
    respect to ``z`` that :class:`StabilisedInverse` hands on.
    """
    if not is_legacy_batchedtensor(relevance):
        return EpsilonScale.apply(relevance, inverse)
    if not torch.is_grad_enabled():  # maps without a graph: the product is all there is
        return relevance * inverse
    constant = inverse.detach()
    scaled = relevance * constant
    with torch.no_grad():  # (legacy vmap has no batching rule for detach())
        slope = (relevance * constant).mul_(constant).neg_()
    return scaled + (inverse - constant) * slope


class StabilisedDivide(Function):
    """``r = R / stab(z)`` for a ``z`` computed in the relevance pass (a modified layer output).

    Keeps ``1 / stab(z)`` and ``r`` (``z`` itself is then freed); derivatives
    as in the module docstring.
    """

    @staticmethod
    def forward(ctx, relevance: Tensor, z: Tensor, epsilon: float) -> Tensor:  # type: ignore[override]
        inverse = _inverse(z, epsilon)
        scaled = relevance * inverse
        ctx.save_for_backward(inverse, scaled)
        return scaled

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        inverse, scaled = ctx.saved_tensors
        grad_relevance = grad * inverse
        return grad_relevance, (grad_relevance * scaled).neg_(), None


def stabilised_divide(relevance: Tensor, z: Tensor, epsilon: float) -> Tensor:
    """:class:`StabilisedDivide`, or an ordinary division under legacy ``vmap``.

    (See :func:`epsilon_scale`; here ``z`` has its own graph, so the ordinary
    form is simply ``R / (z + shift)``.)
    """
    if not is_legacy_batchedtensor(relevance):
        return StabilisedDivide.apply(relevance, z, epsilon)
    return relevance / (z + _shift(z, epsilon))
