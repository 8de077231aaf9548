"""Grad-CAM on captum's ``LayerGradCam``, exactly differentiable.

Grad-CAM (Selvaraju et al., ICCV 2017, eq. 1-2) of class ``c`` at a layer with
activations ``A`` (channels ``k``, positions ``(i, j)``, ``Z = h * w``)::

    alpha_k^c = 1/Z * sum_ij d y^c / d A_kij
    L^c       = ReLU( sum_k alpha_k^c A_k )

upsampled bilinearly to the input size. captum computes it with
``grad_kwargs={"create_graph": True}`` so the map stays differentiable.

Closed form: when the head is global average pooling followed by a linear
layer ``y = W mean_ij(A) + b``, the gradient is ``d y^c / d A_kij = W_ck / Z``
everywhere, so ``L^c = ReLU(sum_k W_ck A_k / Z)`` for *all* classes is one
einsum on the activations of the forward pass - no backward pass at all. It
gives the same values as captum (checked in the tests) and is used whenever the
model's logits are verified, on the call's own forward pass, to equal that
head applied to the layer's activations.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from captum.attr import LayerGradCam
from torch import Tensor, nn

from .base import Heatmap, batched_input_grad, one_hot_grad_outputs
from .feature_grid import LAYOUTS, family_target_layer, resolve_layout, to_grid

_GLOBAL_POOLS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_EXCLUDED = (*_GLOBAL_POOLS, nn.Flatten, nn.Dropout)


#: the modes that take ``align_corners`` (the others refuse it)
_INTERPOLATING = ("linear", "bilinear", "bicubic", "trilinear")


def _resize(maps: Tensor, size: tuple[int, ...], mode: str) -> Tensor:
    """Resize ``(B, K, h, w)`` maps to ``size``; ``align_corners=False`` where the mode takes it."""
    align = False if mode in _INTERPOLATING else None
    return F.interpolate(maps, size=size, mode=mode, align_corners=align)


def _check_mode(mode: str) -> str:
    """Validate an interpolation mode when the backend is built, not after the first backward.

    Tried on a tiny map, so every mode the installed torch resizes 4-D maps
    with is accepted.
    """
    try:
        _resize(torch.zeros(1, 1, 2, 2), (3, 3), mode)
    except (NotImplementedError, ValueError, RuntimeError, TypeError):
        raise ValueError(
            f"mode: {mode!r} is not an F.interpolate mode for (B, K, h, w) maps "
            "(e.g. 'bilinear', 'bicubic', 'nearest', 'area')"
        ) from None
    return mode


def _is_gate(pool: str, shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]]) -> bool:
    """Whether a global pool computes a gate (squeeze-excitation), not the classifier's input.

    A gate's pool sits in a block that returns a map shaped like its input.
    """
    parent = pool.rpartition(".")[0]
    return bool(parent) and parent in shapes and shapes[parent][0] == shapes[parent][1]


def find_target_layer(model: nn.Module, x: Tensor) -> tuple[str, nn.Module]:
    """The Grad-CAM layer: the last module producing a 4-D feature map, found on one forward pass.

    Among modules returning the same tensor (a block and its last child), the
    outermost one is chosen, e.g. ``layer4`` of a ResNet or ``features`` of a
    VGG, DenseNet, MobileNet or EfficientNet (the last one run among equally
    deep ones, e.g. SqueezeNet's final ReLU rather than the convolution it
    overwrites in place). Global pools, and everything finishing after the
    classifier's global pool has started (a classifier block holding it,
    ConvNeXt's LayerNorm on the pooled features), are skipped; pools computing
    squeeze-excitation gates (see :func:`_is_gate`) do not count. Families whose last feature
    map is the wrong layer have their own (:func:`heatmaps.feature_grid.family_target_layer`:
    ViT's tokens before the last attention).

    Raises:
        ValueError: no feature map, or one followed by token layers ``(B, T, C)``
            (a transformer of a family not known here: pass ``layer=``).
    """
    names = {module: name for name, module in model.named_modules() if name}
    family = family_target_layer(model)
    if family is not None:
        return family, dict(model.named_modules())[family]
    outputs: list[tuple[str, nn.Module, Tensor]] = []  # in the order the modules finish
    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}  # name: (input, output)
    pools: list[tuple[int, str]] = []  # global pools: (outputs finished before it, name)

    def pre_hook(module: nn.Module, args: tuple) -> None:
        if isinstance(module, _GLOBAL_POOLS):
            pools.append((len(outputs), names[module]))
        if args and isinstance(args[0], Tensor):
            shapes[names[module]] = (tuple(args[0].shape), ())

    def hook(module: nn.Module, args: tuple, out: object) -> None:
        if isinstance(out, Tensor) and not isinstance(module, _EXCLUDED):
            outputs.append((names[module], module, out))
            if names[module] in shapes:
                shapes[names[module]] = (shapes[names[module]][0], tuple(out.shape))

    handles = [m.register_forward_hook(hook) for m in names]
    handles += [m.register_forward_pre_hook(pre_hook) for m in names]
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()  # no BatchNorm statistics update by this probing pass; restored below
        with torch.no_grad():
            model(x[:1])
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes:
            module.training = training
    end = min([at for at, pool in pools if not _is_gate(pool, shapes)], default=len(outputs))
    seen = [item for item in outputs[:end] if item[2].ndim == 4]
    if not seen:
        raise ValueError(
            "GradCAMHeatmap: the model has no module producing a (B, C, h, w) feature map; "
            "pass layer= explicitly"
        )
    last = seen[-1][2]
    candidates = [(name, module) for name, module, out in seen if out is last]
    name, module = min(reversed(candidates), key=lambda item: item[0].count("."))
    finished = max(i for i, item in enumerate(outputs[:end]) if item[2] is last)
    later = [item[0] for item in outputs[finished:end] if item[2].ndim == 3]
    if later:
        raise ValueError(
            f"GradCAMHeatmap: the last (B, C, h, w) feature map ({name!r}, "
            f"{type(module).__name__}) is followed by token layers (B, tokens, C) such as "
            f"{later[-1]!r}; pass layer= the token layer to explain (its patch tokens are "
            "reshaped to a grid)"
        )
    return name, module


class GradCAMHeatmap(Heatmap):
    """Grad-CAM maps (captum ``LayerGradCam``), differentiable w.r.t. the parameters.

    Args:
        model: a classifier returning logits ``(B, C)``.
        layer: the module whose activations are weighted, or its dotted name;
            found automatically (see :func:`find_target_layer`) when ``None``.
        relu: apply the ReLU of the Grad-CAM definition (captum's
            ``relu_attributions``).
        closed_form: ``"auto"`` uses the one-einsum path whenever the head is
            verified to be average pooling + linear; ``False`` always uses captum.
        mode: interpolation to the input size (``"bilinear"`` as in the paper);
            any ``F.interpolate`` mode for 4-D maps, checked when the backend is built.
        layout: how the layer's output holds the feature map: ``"nchw"``,
            ``"nhwc"`` (channels last, Swin's stages) or ``"tokens"`` (ViT:
            ``(B, 1 + h w, C)``, see :func:`heatmaps.feature_grid.tokens_to_grid`);
            ``"auto"`` takes 4-D outputs as ``"nchw"`` and 3-D ones as tokens.
            Other than ``"nchw"``, the maps are computed here from the call's
            own forward pass (one backward pass to the layer, no captum).
    """

    name = "gradcam"
    needs_input_grad = False

    def __init__(
        self,
        model: nn.Module,
        layer: nn.Module | str | None = None,
        relu: bool = True,
        closed_form: str | bool = "auto",
        mode: str = "bilinear",
        layout: str = "auto",
    ) -> None:
        super().__init__(model)
        if isinstance(layer, str):
            modules = dict(model.named_modules())
            if layer not in modules:
                raise ValueError(f"GradCAMHeatmap: model has no module named {layer!r}")
            layer = modules[layer]
        if layer is not None and not isinstance(layer, nn.Module):
            raise TypeError(f"layer: expected a module or its name, got {type(layer).__name__}")
        if closed_form not in ("auto", False):
            raise ValueError(f"closed_form: expected 'auto' or False, got {closed_form!r}")
        _check_mode(mode)
        if layout not in LAYOUTS:
            raise ValueError(f"layout: expected one of {', '.join(LAYOUTS)}, got {layout!r}")
        self.layout = layout
        self._layer = layer
        self.relu = relu
        self.closed_form = closed_form
        self.mode = mode
        self._head: nn.Linear | None = None
        self._activations: list[Tensor] = []
        #: how the last call computed its maps: ``"closed_form"``, ``"captum"`` or ``"grid"``
        #: (a token or channels-last layer, see ``layout``)
        self.last_path: str | None = None

    @property
    def layer(self) -> nn.Module | None:
        return self._layer

    def _ensure_layer(self, x: Tensor) -> nn.Module:
        if self._layer is None:
            _, self._layer = find_target_layer(self.model, x)
        return self._layer

    @contextlib.contextmanager
    def _attached(self, x: Tensor) -> Iterator[None]:
        self._ensure_layer(x)
        self._activations = []

        def keep(module: nn.Module, args: tuple, out: Tensor) -> None:
            self._activations.append(out)

        handle = self._layer.register_forward_hook(keep)
        try:
            yield
        finally:
            handle.remove()
            self._activations = []

    def _closed_form_head(self, activations: Tensor, logits: Tensor) -> nn.Linear | None:
        """A linear layer ``W`` with ``logits == W mean(A) + b`` on this batch, if any."""
        if self.closed_form is False or activations.ndim != 4:
            return None
        if not bool(torch.isfinite(logits).all()):
            return None  # nothing to verify the head against; captum handles the general case
        channels, num_classes = activations.shape[1], logits.shape[1]
        pooled = activations.detach().mean(dim=(2, 3))
        candidates = [self._head] if self._head is not None else []
        candidates += [
            m
            for m in self.model.modules()
            if isinstance(m, nn.Linear)
            and m.in_features == channels
            and m.out_features == num_classes
            and m is not self._head
        ]
        for head in candidates:
            with torch.no_grad():
                expected = F.linear(pooled, head.weight, head.bias)
            tol = 1e-4 if logits.dtype == torch.float32 else 1e-8
            scale = logits.detach().abs().max().clamp(min=1.0)
            if torch.allclose(expected, logits.detach(), atol=tol * float(scale), rtol=0):
                self._head = head
                return head
        return None

    def _attribute(self, x: Tensor, logits: Tensor, index: Tensor, create_graph: bool) -> Tensor:
        activations = self._activations[-1] if self._activations else None
        layout = "nchw" if activations is None else resolve_layout(self.layout, activations)
        head = self._closed_form_head(activations, logits) if layout == "nchw" else None
        if layout != "nchw":
            self.last_path = "grid"
            cams = self._grid_cams(activations, layout, logits, index, create_graph)
        elif head is not None:
            self.last_path = "closed_form"
            # d y_c / d A_kij = W_ck / (h w) for every position: no backward pass needed
            weights = head.weight[index] / (activations.shape[2] * activations.shape[3])
            cams = torch.einsum("bkc,bchw->bkhw", weights, activations)
        else:
            self.last_path = "captum"
            cams = self._captum_cams(x, index, create_graph)
        if self.relu:
            cams = F.relu(cams)
        return _resize(cams, x.shape[-2:], self.mode)

    def _grid_cams(
        self, activations: Tensor, layout: str, logits: Tensor, index: Tensor, create_graph: bool
    ) -> Tensor:
        """Grad-CAM on the grid of a token or channels-last layer, from the call's forward pass."""
        if not activations.requires_grad:
            raise ValueError(
                "GradCAMHeatmap: the target layer's output does not depend on anything that "
                "requires grad; unfreeze the layers up to it or pass an input with requires_grad"
            )
        grads = batched_input_grad(
            logits, activations, one_hot_grad_outputs(logits, index), create_graph
        )
        grid = to_grid(activations, layout)  # (B, C, h, w)
        grad_grid = to_grid(grads.flatten(0, 1), layout).unflatten(0, grads.shape[:2])
        alpha = grad_grid.mean(dim=(-2, -1))  # (K, B, C): eq. 1 of the paper
        return torch.einsum("kbc,bchw->bkhw", alpha, grid)

    def _captum_cams(self, x: Tensor, index: Tensor, create_graph: bool) -> Tensor:
        method = LayerGradCam(self.model, self._layer)
        maps = []
        for k in range(index.shape[1]):
            cam = method.attribute(
                x,
                target=index[:, k],
                relu_attributions=False,
                grad_kwargs={"create_graph": create_graph, "retain_graph": True},
            )
            maps.append(cam[:, 0])
        return torch.stack(maps, dim=1)
