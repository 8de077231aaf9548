"""LRP treatments of torch functions called directly in ``forward`` code.

See :mod:`heatmaps.lrp.functional` for how they are found and applied.

* routing (``route``): reshapes, indexing, ``torch.cat`` (DenseNet,
  Inception, GoogLeNet, SqueezeNet's fire modules: the gradient of a
  concatenation hands each input its own channels' relevance), ``chunk`` and
  channel shuffles (ShuffleNet), ReLU, max-pooling, dropout, zero padding;
  their gradient already is the relevance;
* sums (``sum``, ``x + y`` in MobileNet, EfficientNet, RegNet, MNASNet):
  the composite's rule for sums, zennit's ``Norm``,
  ``R_i = x_i R / stab(sum_j x_j)`` (Montavon et al. 2019, sec. 10.3);
* average pools and means (``pool``, ``F.adaptive_avg_pool2d`` in
  MobileNetV2 and DenseNet, ``x.mean((2, 3))`` in ShuffleNet and MNASNet):
  the composite's rule for average pooling, the same ``Norm`` form;
* products and quotients with a constant, parameter or broadcast gate
  (``scale``, squeeze-excitation's ``scale * x``): the gate is treated as a
  constant weight, so relevance goes to the gated signal unchanged and none
  to the gate - the "signal-take-all" rule of Arras et al. 2017 (LRP for
  LSTMs) - while the map stays a differentiable function of the gate's
  parameters through the forward values;
* functional activations (``activation``): the pass rule.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..functional import Treatment
from ..registry import register_functional


def _present(owner: object, *names: str) -> list[object]:
    return [getattr(owner, name) for name in names if hasattr(owner, name)]


T = torch.Tensor

register_functional(
    [
        *_present(
            T,
            "view",
            "view_as",
            "reshape",
            "reshape_as",
            "flatten",
            "unflatten",
            "permute",
            "transpose",
            "t",
            "contiguous",
            "squeeze",
            "unsqueeze",
            "__getitem__",
            "chunk",
            "split",
            "tensor_split",
            "unbind",
            "narrow",
            "clone",
            "expand",
            "expand_as",
            "to",
            "type_as",
            "float",
            "double",
            "half",
            "relu",
            "relu_",
            "movedim",
        ),
        *_present(
            torch,
            "flatten",
            "reshape",
            "permute",
            "transpose",
            "squeeze",
            "unsqueeze",
            "chunk",
            "split",
            "tensor_split",
            "unbind",
            "narrow",
            "cat",
            "concat",
            "concatenate",
            "clone",
            "relu",
            "relu_",
            "channel_shuffle",
            "native_channel_shuffle",
            "pixel_shuffle",
            "pixel_unshuffle",
            "movedim",
            "dropout",
        ),
        *_present(
            F,
            "relu",
            "relu_",
            "dropout",
            "dropout1d",
            "dropout2d",
            "dropout3d",
            "max_pool1d",
            "max_pool2d",
            "max_pool3d",
            "_max_pool1d",
            "_max_pool2d",
            "_max_pool3d",
            "max_pool1d_with_indices",
            "max_pool2d_with_indices",
            "max_pool3d_with_indices",
            "adaptive_max_pool1d",
            "adaptive_max_pool2d",
            "adaptive_max_pool3d",
            "channel_shuffle",
            "pixel_shuffle",
            "pixel_unshuffle",
            "pad",
            "identity",
        ),
    ],
    Treatment("route"),
)
register_functional([*_present(T, "add", "__add__", "__radd__"), torch.add], Treatment("sum"))
register_functional(_present(T, "add_", "__iadd__"), Treatment("sum", outplace=torch.add))
register_functional(
    [
        *_present(T, "mean", "sum"),
        torch.mean,
        torch.sum,
        *_present(
            F,
            "avg_pool1d",
            "avg_pool2d",
            "avg_pool3d",
            "adaptive_avg_pool1d",
            "adaptive_avg_pool2d",
            "adaptive_avg_pool3d",
        ),
        *_present(torch._C._nn, "avg_pool2d", "avg_pool3d"),
        *_present(torch, "avg_pool1d", "adaptive_avg_pool1d"),
    ],
    Treatment("pool"),
)
register_functional([*_present(T, "mul", "__mul__", "__rmul__"), torch.mul], Treatment("scale"))
register_functional(_present(T, "mul_", "__imul__"), Treatment("scale", outplace=torch.mul))
register_functional(
    [*_present(T, "div", "__truediv__"), torch.div], Treatment("scale", divides=True)
)
register_functional(
    _present(T, "div_", "__itruediv__"), Treatment("scale", outplace=torch.div, divides=True)
)
register_functional(
    [
        *_present(
            F,
            "relu6",
            "silu",
            "gelu",
            "hardswish",
            "hardsigmoid",
            "hardtanh",
            "sigmoid",
            "elu",
            "leaky_relu",
            "mish",
            "tanh",
        ),
        *_present(torch, "sigmoid", "tanh"),
        *_present(T, "sigmoid", "tanh"),
    ],
    Treatment("activation"),
)
