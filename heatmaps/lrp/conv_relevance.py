"""A convolution's backward pass to its input, with a cheaper derivative than autograd's.

Every LRP rule on a convolution ``z = conv(x; W)`` sends a rescaled relevance
``r`` back through the layer: ``g = J^T r``, the gradient of ``<z, r>`` with
respect to ``x`` (a transposed convolution of ``r`` with ``W``). A
differentiable relevance pass records it, and the final backward pass of a
training step differentiates it with respect to ``r`` and ``W``::

    dL/dr = conv(s; W)                           (no bias)
    dL/dW = weight gradient of conv at input s, output gradient r

with ``s = dL/dg``. Both are the kernels of an ordinary training step (the
forward convolution and the weight gradient of its backward). PyTorch's own
derivative of the recorded ``convolution_backward`` (its
``_convolution_double_backward``) computes the weight term as a convolution
over batch-transposed tensors instead. On the CPU (oneDNN) the weight-gradient
kernel is much faster for 1x1 kernels and for outputs of 8x8 positions or
more, and slower for larger kernels on smaller outputs (resnet's last stages
at 64 px input); :meth:`ConvGeometry.derivatives` takes the
faster one by that rule. For 2-d convolutions with at most
:data:`UNFOLD_UP_TO` output positions (the last stages of a ResNet at 64 px)
both oneDNN routes are slow (its weight-gradient kernel on a 2x2 output takes
several times as long as the forward convolution), and both terms come from
one unfolded input and two matrix products::

    cols  = unfold(s)                                  (B, C k k, L)
    dL/dr = W_flat @ cols,    dL/dW = r_flat @ cols^T

The thresholds come from ``benchmarks/conv_double_backward.py``; its results
are in docs/benchmarks.md. No library offers this derivative, so it is
written here from the ATen kernels and matrix products.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch._C._functorch import is_legacy_batchedtensor
from torch.autograd import Function
from torch.autograd.function import once_differentiable

#: output positions from which the own kernels are faster than autograd's (measured on the CPU)
OWN_KERNELS_FROM = 64
#: output positions up to which the unfolded matrix products are faster (2-d, measured on the CPU)
UNFOLD_UP_TO = 16
_PLAIN_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass(frozen=True)
class ConvGeometry:
    """Stride, integer padding, dilation and groups of a zero-padded convolution."""

    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int

    @classmethod
    def of(cls, module: nn.Module) -> ConvGeometry | None:
        """The geometry of ``module`` if its forward is exactly ``conv(x; weight) + bias``, else ``None``.

        That is a ``Conv1d``/``Conv2d``/``Conv3d`` with zero padding given as
        integers (not ``"same"``) and no overridden ``forward``.
        """
        if not isinstance(module, _PLAIN_CONVS) or "forward" in module.__dict__:
            return None
        if module.padding_mode != "zeros" or isinstance(module.padding, str):
            return None
        return cls(
            tuple(module.stride), tuple(module.padding), tuple(module.dilation), module.groups
        )

    def input_gradient(self, r: Tensor, x: Tensor, weight: Tensor) -> Tensor:
        """``J^T r``: ATen's input gradient of the convolution (``x`` gives only the shape)."""
        return self._backward(r, x, weight, (True, False, False))[0]

    def derivatives(
        self, s: Tensor, r: Tensor, weight: Tensor, need_r: bool, need_weight: bool
    ) -> tuple[Tensor | None, Tensor | None]:
        """``d<s, J^T r>/dr = conv(s; W)`` and ``d<s, J^T r>/dW``, by the faster kernels.

        For 1x1 kernels and outputs of at least :data:`OWN_KERNELS_FROM`
        positions: the forward convolution and the weight-gradient kernel
        (at input ``s``, output gradient ``r``). For other 2-d kernels with at
        most :data:`UNFOLD_UP_TO` output positions and no groups: two matrix
        products on the unfolded ``s``. Otherwise PyTorch's
        ``_convolution_double_backward`` (autograd's own derivative), which
        is faster there on the CPU.
        """
        zeros = [0] * len(self.stride)
        if self._unfolds(r, weight):
            return self._unfolded_derivatives(s, r, weight, need_r, need_weight)
        pointwise = all(size == 1 for size in weight.shape[2:])
        if not pointwise and r[0, 0].numel() < OWN_KERNELS_FROM:
            grad_r, _, grad_weight = torch.ops.aten._convolution_double_backward(
                s,
                None,
                None,
                r,
                weight,
                s,  # the input of the convolution: only its shape is used, and s has it
                self.stride,
                self.padding,
                self.dilation,
                False,
                zeros,
                self.groups,
                [need_r, False, need_weight],
            )
            return grad_r, grad_weight
        grad_r = self.forward(s, weight) if need_r else None
        grad_weight = self._backward(r, s, weight, (False, True, False))[1] if need_weight else None
        return grad_r, grad_weight

    def _unfolds(self, out: Tensor, weight: Tensor) -> bool:
        """Whether the weight term for the output-shaped ``out`` goes the unfolded way.

        A 2-d convolution without groups, not 1x1, with at most
        :data:`UNFOLD_UP_TO` output positions.
        """
        pointwise = all(size == 1 for size in weight.shape[2:])
        return (
            not pointwise
            and out.dim() == 4
            and out[0, 0].numel() <= UNFOLD_UP_TO
            and self.groups == 1
        )

    def _unfolded_derivatives(
        self, s: Tensor, r: Tensor, weight: Tensor, need_r: bool, need_weight: bool
    ) -> tuple[Tensor | None, Tensor | None]:
        """Both derivatives from ``cols = unfold(s)`` and two matrix products (see the module docstring)."""
        cols = F.unfold(
            s, weight.shape[2:], dilation=self.dilation, padding=self.padding, stride=self.stride
        )
        batch, patch, positions = cols.shape
        channels = weight.shape[0]
        # (C k k, B L): one product over the whole batch instead of B small ones
        cols = cols.transpose(0, 1).reshape(patch, batch * positions)
        grad_r = grad_weight = None
        if need_r:
            grad_r = torch.mm(weight.reshape(channels, patch), cols)
            grad_r = grad_r.view(channels, batch, *r.shape[2:]).transpose(0, 1).contiguous()
        if need_weight:
            rows = r.reshape(batch, channels, positions).transpose(0, 1)
            grad_weight = torch.mm(rows.reshape(channels, batch * positions), cols.t())
            grad_weight = grad_weight.view_as(weight)
        return grad_r, grad_weight

    def forward_derivatives(
        self, grad: Tensor, x: Tensor, weight: Tensor, needs: tuple[bool, bool, bool]
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        """Gradients of ``<grad, conv(x; W) + b>`` w.r.t. ``x``, ``W`` and ``b``.

        ATen's ``convolution_backward``, except that the weight gradient of a
        2-d output of at most :data:`UNFOLD_UP_TO` positions (no groups, not
        1x1) is the matrix product ``grad_flat @ unfold(x)^T``.
        """
        need_x, need_weight, need_bias = needs
        if not (need_weight and self._unfolds(grad, weight)):
            return self._backward(grad, x, weight, needs, bias=need_bias)
        grad_x = self._backward(grad, x, weight, (True, False, False))[0] if need_x else None
        grad_weight = self._unfolded_derivatives(x, grad, weight, False, True)[1]
        grad_bias = grad.sum((0, 2, 3)) if need_bias else None
        return grad_x, grad_weight, grad_bias

    def forward(self, x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        """``conv(x; W) + b`` (no bias by default)."""
        zeros = [0] * len(self.stride)
        return torch.ops.aten.convolution(
            x, weight, bias, self.stride, self.padding, self.dilation, False, zeros, self.groups
        )

    def _backward(
        self, r: Tensor, x: Tensor, weight: Tensor, mask: tuple, bias: bool = False
    ) -> tuple:
        """ATen's ``convolution_backward``; ``mask[2]`` and ``bias`` when the layer has a bias."""
        zeros = [0] * len(self.stride)
        return torch.ops.aten.convolution_backward(
            r,
            x,
            weight,
            [weight.shape[0]] if bias else None,
            self.stride,
            self.padding,
            self.dilation,
            False,
            zeros,
            self.groups,
            list(mask),
        )


class ConvInputGradient(Function):
    """``g = J^T r`` for ``z = conv(x; W)``, differentiable in ``r`` and ``W`` (see the module docstring).

    ``x`` is used for its shape only and gets no gradient (``J`` does not
    depend on it).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, r: Tensor, x: Tensor, weight: Tensor, geometry: ConvGeometry
    ) -> Tensor:
        ctx.geometry = geometry
        ctx.save_for_backward(r, weight)
        return geometry.input_gradient(r, x, weight)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        r, weight = ctx.saved_tensors
        need_r, _, need_weight, _ = ctx.needs_input_grad
        grad_r, grad_weight = ctx.geometry.derivatives(grad, r, weight, need_r, need_weight)
        return grad_r, None, grad_weight, None


class ConvForward(Function):
    """``z = conv(x; W) + b``, with the weight gradient of :meth:`ConvGeometry.forward_derivatives`.

    For the layers an LRP rule recomputes with modified weights (z+): on the
    small outputs of a network's last stages oneDNN's weight-gradient kernel
    is several times slower than the matrix product used there.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, x: Tensor, weight: Tensor, bias: Tensor | None, geometry: ConvGeometry
    ) -> Tensor:
        ctx.geometry = geometry
        ctx.save_for_backward(x, weight)
        return geometry.forward(x, weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        needs = tuple(ctx.needs_input_grad[:3])
        return (*ctx.geometry.forward_derivatives(grad, x, weight, needs), None)  # type: ignore[arg-type]


def conv_forward(x: Tensor, weight: Tensor, bias: Tensor | None, geometry: ConvGeometry) -> Tensor:
    """:class:`ConvForward` (``x`` batched; not for use under legacy ``vmap``, see :func:`conv_input_gradient`)."""
    return ConvForward.apply(x, weight, bias, geometry)


def conv_input_gradient(r: Tensor, x: Tensor, weight: Tensor, geometry: ConvGeometry) -> Tensor:
    """:class:`ConvInputGradient`, or ATen's ``convolution_backward`` recorded by autograd under legacy ``vmap``.

    The vectorised multi-class backward (``is_grads_batched``) runs under
    PyTorch's legacy ``vmap``, which does not record custom autograd
    functions; there the recorded ATen op gives the same values and exact
    (if slower) derivatives. An unbatched input (``x`` without its batch
    dimension, as ``nn.Conv2d`` accepts) is given one.
    """
    if x.dim() == weight.dim() - 1:
        return conv_input_gradient(r.unsqueeze(0), x.unsqueeze(0), weight, geometry).squeeze(0)
    if is_legacy_batchedtensor(r):
        return geometry.input_gradient(r, x, weight)
    return ConvInputGradient.apply(r, x, weight, geometry)
