"""Layer activations of any layout as ``(B, C, h, w)`` grids, for Grad-CAM.

Grad-CAM weighs the channels of a spatial feature map. Convolutional networks
(and MaxViT) produce ``(B, C, h, w)`` maps; transformers do not:

* ViT's encoder works on tokens ``(B, 1 + N, C)``: a class token followed by
  ``N = h * w`` patch tokens in row-major order. :func:`tokens_to_grid` drops
  the leading non-patch tokens and reshapes the rest to ``(B, C, h, w)``
  (``h = w = sqrt(N)``; torchvision's ViT takes square images only).
* Swin's stages are channels-last ``(B, h, w, C)``; :func:`nhwc_to_grid`
  permutes them. (torchvision's Swin permutes its final features to
  ``(B, C, h, w)`` itself, which is the layer Grad-CAM picks by default.)

Both are views, so maps computed from the grids stay exactly differentiable.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

#: the layouts :func:`to_grid` understands; ``"auto"`` is ``"nchw"`` for 4-D, ``"tokens"`` for 3-D
LAYOUTS = ("auto", "nchw", "nhwc", "tokens")


def tokens_to_grid(tokens: Tensor) -> Tensor:
    """``(B, P + N, C)`` tokens to a ``(B, C, h, w)`` grid of the ``N = h * w`` patch tokens.

    The ``P`` leading tokens (class token, registers) are dropped: ``N`` is the
    largest square not above the token count, ``P`` the rest.

    Raises:
        ValueError: not 3-D, or more leading tokens than patch tokens (no square grid).
    """
    if tokens.ndim != 3:
        raise ValueError(f"tokens: expected (B, tokens, C), got shape {tuple(tokens.shape)}")
    side = math.isqrt(tokens.shape[1])
    prefix = tokens.shape[1] - side * side
    if side == 0 or prefix > side * side:
        raise ValueError(
            f"tokens: {tokens.shape[1]} tokens are no square grid of patch tokens after a few "
            "leading (class) tokens; pass a layer with a (B, C, h, w) output"
        )
    patches = tokens[:, prefix:]
    return patches.transpose(1, 2).unflatten(2, (side, side))


def nhwc_to_grid(features: Tensor) -> Tensor:
    """Channels-last ``(B, h, w, C)`` features to ``(B, C, h, w)``."""
    if features.ndim != 4:
        raise ValueError(f"features: expected (B, h, w, C), got shape {tuple(features.shape)}")
    return features.permute(0, 3, 1, 2)


def resolve_layout(layout: str, activations: Tensor) -> str:
    """The concrete layout of ``activations`` (``"auto"`` decided by their rank)."""
    if layout != "auto":
        return layout
    if activations.ndim == 4:
        return "nchw"
    if activations.ndim == 3:
        return "tokens"
    raise ValueError(
        f"GradCAMHeatmap: the target layer's output has shape {tuple(activations.shape)}; "
        "expected a feature map (B, C, h, w) or tokens (B, tokens, C)"
    )


def to_grid(activations: Tensor, layout: str) -> Tensor:
    """``activations`` of a concrete ``layout`` (not ``"auto"``) as ``(B, C, h, w)``."""
    if layout == "tokens":
        return tokens_to_grid(activations)
    if layout == "nhwc":
        return nhwc_to_grid(activations)
    return activations


def family_target_layer(model: nn.Module) -> str | None:
    """The Grad-CAM layer of model families whose last feature map is not the right one.

    torchvision's ViT: the input LayerNorm ``ln_1`` of the last encoder block.
    The last block's *output* is no choice: only its class token reaches the
    head (the final LayerNorm is per token), so the patch tokens there get zero
    gradient; before the last attention, they get the gradient through it.
    """
    from torchvision.models import VisionTransformer

    if isinstance(model, VisionTransformer) and len(model.encoder.layers) > 0:
        last = list(model.encoder.layers.named_children())[-1][0]
        return f"encoder.layers.{last}.ln_1"
    return None
