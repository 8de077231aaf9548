"""Weights computed during an LRP call, recomputed in the backward pass instead of kept.

An LRP call computes new weight tensors from the parameters: BatchNorms merged
into their convolutions (``w' = w * s``, :class:`~heatmaps.lrp.canonizers.
FunctionalMergeBatchNorm`) and the modified weights of rules such as z+
(``max(w', 0)``). Autograd keeps each of them for the convolutions' backward
passes, so a training step holds a copy of every such weight until its final
backward pass: one extra copy of the model's convolution weights per kind,
a sizeable part of the peak memory of a step at small image sizes.

Inside :meth:`WeightRecipes.saving` a tensor registered with ``remember`` is
saved as its recipe (a function of the parameters) and recomputed when the
final backward pass needs it: a weight-sized operation, cheap next to the
activation-sized work of the step. While the tensor itself is alive (during
the call) the backward pass gets the tensor itself, so a differentiable
relevance pass that unpacks and saves it again saves the recipe again.
Every other saved tensor goes to the saved-tensor hooks that were active
outside (e.g. the user's ``torch.autograd.graph.save_on_cpu``), or is kept.

PyTorch has no public way to read the enclosing saved-tensor hooks;
``torch._C._autograd._top_saved_tensors_default_hooks`` is what
``torch.utils.checkpoint`` itself uses for that. Where it is missing, no hooks
are installed and the weights are kept, so user hooks are never shadowed.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch._C._functorch import is_legacy_batchedtensor

_top_hooks: Callable[[bool], Any] | None = getattr(
    torch._C._autograd, "_top_saved_tensors_default_hooks", None
)


@dataclass(frozen=True)
class Recipe:
    """A computed weight: the tensor while it lives, else ``compute()``."""

    tensor: weakref.ref
    compute: Callable[[], Tensor]

    def get(self) -> Tensor:
        tensor = self.tensor()
        if tensor is not None:
            return tensor
        with torch.no_grad():
            return self.compute()


def _key(tensor: Tensor) -> tuple | None:
    # autograd hands the pack hook a detached alias, not the tensor itself: compare storage
    if tensor.layout != torch.strided or is_legacy_batchedtensor(tensor):
        return None
    try:
        pointer = tensor.data_ptr()
    except RuntimeError:  # a tensor without storage (e.g. a functorch wrapper)
        return None
    return (pointer, tuple(tensor.shape), tuple(tensor.stride()), tensor.dtype, tensor.device)


class WeightRecipes:
    """The recipes of one LRP call; :meth:`saving` installs the saved-tensor hooks."""

    def __init__(self) -> None:
        self._registry: dict[tuple, Recipe] = {}

    def remember(self, tensor: Tensor, compute: Callable[[], Tensor]) -> None:
        """Save ``tensor`` as ``compute`` (a function of the parameters, no graph needed).

        Keep ``tensor`` alive while autograd may save it: a tensor recomputed
        for an inner backward pass is a new tensor, and would be saved whole.
        """
        key = _key(tensor)
        if key is not None:
            self._registry[key] = Recipe(weakref.ref(tensor), compute)

    def source(self, tensor: Tensor) -> Callable[[], Tensor]:
        """A function giving ``tensor``'s values that does not keep a remembered tensor alive."""
        key = _key(tensor)
        recipe = None if key is None else self._registry.get(key)
        if recipe is not None and recipe.tensor() is tensor:
            return recipe.get
        return lambda: tensor

    def _lookup(self, tensor: Tensor) -> Recipe | None:
        key = _key(tensor)
        recipe = None if key is None else self._registry.get(key)
        # the remembered tensor must still be alive, else its storage is another tensor's now
        if recipe is None or recipe.tensor() is None:
            return None
        return recipe

    @contextlib.contextmanager
    def saving(self) -> Iterator[WeightRecipes]:
        """Saved-tensor hooks that keep recipes instead of the remembered tensors."""
        if _top_hooks is None:
            yield self
            return
        outer = _top_hooks(False)

        def pack(tensor: Tensor) -> tuple[bool, Any]:
            recipe = self._lookup(tensor)
            if recipe is not None:
                return True, recipe
            if outer is not None:
                return False, outer[0](tensor)
            # a detached alias, as PyTorch keeps a saved tensor without hooks: the tensor
            # itself would hold its grad_fn, and a node saving its own output (ReLU, exp)
            # would form a cycle through C++ that nothing collects, leaking the graph
            return False, tensor.detach()

        def unpack(packed: tuple[bool, Any]) -> Tensor:
            is_recipe, value = packed
            if is_recipe:
                return value.get()
            return value if outer is None else outer[1](value)

        with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
            yield self
