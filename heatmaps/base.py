"""The common interface every heatmap backend implements.

A backend subclasses :class:`Heatmap`, sets ``name`` in its class body (which
registers it under that name, see :mod:`heatmaps.registry`) and implements two
methods:

* :meth:`Heatmap._attached` - a context manager that prepares the model for one
  call on the input batch (registers hooks, swaps canonized parameters in) and undoes it all on
  exit, also after an exception;
* :meth:`Heatmap._attribute` - turns the logits of one forward pass into
  ``(B, K, H, W)`` maps for resolved target classes.

:meth:`Heatmap.explain` does the rest: validates the input, runs exactly one
forward pass of the classifier, resolves the targets against its logits, and
guarantees the hygiene contract (same modes, same ``requires_grad`` flags, no
hooks left, no ``.grad`` written, parameters never written in place).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from . import registry
from .targets import ResolvedTargets, TargetsLike, resolve_targets


@dataclass
class Explanation:
    """What :meth:`Heatmap.explain` returns.

    Attributes:
        logits: ``(B, C)`` classifier output of the one forward pass.
        maps: ``(B, K, H, W)`` heatmaps, same ``H, W``, device and dtype as the input.
        targets: ``(B, K)`` class index of every map.
        active: ``(B, K)`` bool, ``False`` where a multi-hot target marked the
            class absent (its map is all zeros).
    """

    logits: Tensor
    maps: Tensor
    targets: Tensor
    active: Tensor


def check_input(x: Tensor) -> Tensor:
    """Validate an image batch: a floating tensor of shape ``(B, C, H, W)``."""
    if not isinstance(x, Tensor):
        raise TypeError(f"input: expected a torch.Tensor, got {type(x).__name__}")
    if not x.dtype.is_floating_point:
        raise TypeError(
            f"input: expected a floating-point image tensor, got dtype {x.dtype} "
            "(convert with x.float() / 255 first)"
        )
    if x.ndim != 4:
        raise ValueError(
            f"input: expected a batch of images of shape (B, C, H, W), got {x.ndim} dimensions "
            f"{tuple(x.shape)}"
        )
    if x.shape[0] == 0:
        raise ValueError("input: the batch is empty")
    return x


def check_logits(logits: object, batch: int) -> Tensor:
    """Validate that the wrapped model is a classifier: output ``(B, C)``."""
    if not isinstance(logits, Tensor):
        raise TypeError(
            f"model: a classifier must return a tensor of logits (B, C), got {type(logits).__name__}"
        )
    if logits.ndim != 2 or logits.shape[0] != batch:
        raise ValueError(
            f"model: a classifier must return logits of shape (B, C) = ({batch}, C), got "
            f"{tuple(logits.shape)}; wrap segmentation or detection models in a classifier first"
        )
    return logits


#: the buffers of a norm layer that a forward pass in training mode writes
NORM_STATISTICS = ("running_mean", "running_var", "num_batches_tracked")


class NormStatisticsCopies:
    """Run a block on copies of the running statistics of norm layers; put the originals back.

    On entry, every BatchNorm-like module (``nn.modules.batchnorm._NormBase``:
    BatchNorm, SyncBatchNorm, InstanceNorm) in ``module``, or with
    ``training_only=True`` every one that is in training mode at that moment,
    gets clones of its :data:`NORM_STATISTICS` buffers in place of the
    originals; on exit the original buffer objects are put back, unwritten.
    Forward passes inside the block therefore cannot update the user's
    statistics, and a forward pass that normalises with the batch statistics
    (training mode) gives the same output on the copies.

    Used by :func:`preserved_state` (every norm layer, for the whole heatmap
    call) and by :func:`heatmaps.activation_checkpointing` (train-mode layers,
    for each recomputation in the backward pass). One instance can be entered
    repeatedly and nested: each entry swaps anew, each exit undoes the latest
    entry.
    """

    def __init__(self, module: nn.Module, training_only: bool = False) -> None:
        self.module = module
        self.training_only = training_only
        self._swapped: list[list[tuple[dict[str, Tensor | None], str, Tensor]]] = []

    def __enter__(self) -> None:
        swapped: list[tuple[dict[str, Tensor | None], str, Tensor]] = []
        try:
            for sub in self.module.modules():
                if isinstance(sub, nn.modules.batchnorm._NormBase) and (
                    sub.training or not self.training_only
                ):
                    for key in NORM_STATISTICS:
                        buffer = sub._buffers.get(key)
                        if buffer is not None:
                            swapped.append((sub._buffers, key, buffer))
                            sub._buffers[key] = buffer.clone()
        except BaseException:
            _put_back(swapped)
            raise
        self._swapped.append(swapped)

    def __exit__(self, *exc_info: object) -> None:
        _put_back(self._swapped.pop())


def _put_back(swapped: list[tuple[dict[str, Tensor | None], str, Tensor]]) -> None:
    for store, key, buffer in swapped:
        store[key] = buffer


@contextlib.contextmanager
def preserved_state(model: nn.Module) -> Iterator[None]:
    """Keep the model exactly as it was across one heatmap call.

    * train/eval modes and ``requires_grad`` flags are restored on exit
      (backends never change them on purpose; this is the safety net that makes
      the promise hold even if a third-party canonizer or hook does);
    * BatchNorm running statistics are swapped for copies during the call
      (:class:`NormStatisticsCopies`), so forward passes of a train-mode model
      (the call's own, and the extra ones of Integrated Gradients, SmoothGrad
      or captum's Grad-CAM) never update the user's statistics; the original
      buffer objects are put back, unwritten.
    """
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        with NormStatisticsCopies(model):
            yield
    finally:
        for module, training in modes:
            if module.training != training:
                module.train(training)
        for param, flag in flags:
            if param.requires_grad != flag:
                param.requires_grad_(flag)


def reduce_channels(relevance: Tensor, how: str) -> Tensor:
    """Reduce an input-space attribution ``(N, C, H, W)`` to a map ``(N, H, W)``."""
    if how == "sum":
        return relevance.sum(dim=1)
    if how == "abs_sum":
        return relevance.abs().sum(dim=1)
    if how == "max_abs":
        return relevance.abs().amax(dim=1)
    raise ValueError(f"channel_reduction: expected 'sum', 'abs_sum' or 'max_abs', got {how!r}")


class Heatmap(nn.Module):
    """Base class: a classifier wrapped so that calling it returns heatmaps.

    ``hm(x, targets, create_graph=False)`` returns ``(B, K, H, W)`` maps;
    ``hm.explain(...)`` also returns the logits of the same forward pass.
    With ``create_graph=True`` the maps are differentiable w.r.t. the model's
    parameters (and the input), so a loss on them trains the model.
    """

    #: name under which the backend is registered: a subclass that sets it in its own
    #: class body registers itself under it when defined (see :mod:`heatmaps.registry`)
    name: str = "base"
    #: whether the maps are gradients w.r.t. the input (then the input is made to require
    #: grad for the call); layer-based backends set this to ``False`` and save the input
    #: gradient of the first layer
    needs_input_grad: bool = True

    def __init_subclass__(cls, register: bool = True, **kwargs: object) -> None:
        """Register a subclass whose class body sets ``name`` (``register=False`` opts out)."""
        super().__init_subclass__(**kwargs)
        if register and "name" in cls.__dict__:
            registry.declare(cls)

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        self.model = model

    # -- public API --------------------------------------------------------------------------
    def forward(  # type: ignore[override]
        self, x: Tensor, targets: TargetsLike = None, *, create_graph: bool = False
    ) -> Tensor:
        """Return ``(B, K, H, W)`` heatmaps of ``x`` for ``targets``."""
        return self.explain(x, targets, create_graph=create_graph).maps

    def explain(
        self, x: Tensor, targets: TargetsLike = None, *, create_graph: bool = False
    ) -> Explanation:
        """One forward pass: logits, maps and the resolved ``(B, K)`` targets."""
        x = check_input(x)
        with preserved_state(self.model), self._attached(x):
            frozen = not any(p.requires_grad for p in self.model.parameters())
            if x.requires_grad or not (self.needs_input_grad or frozen):
                x_in = x
            else:
                x_in = x.detach().requires_grad_(True)
            with torch.enable_grad():
                logits = check_logits(self.model(x_in), x.shape[0])
                resolved = resolve_targets(targets, logits)
                maps = self._maps_for(x_in, logits, resolved, create_graph)
        if not create_graph:
            maps = maps.detach()
            logits = logits if x.requires_grad else logits.detach()
        return Explanation(logits, maps, resolved.index, resolved.active)

    # -- backend hooks ---------------------------------------------------------------------
    @contextlib.contextmanager
    def _attached(self, x: Tensor) -> Iterator[None]:
        """Prepare the model for one call on ``x``; undo everything on exit."""
        yield

    def _attribute(self, x: Tensor, logits: Tensor, index: Tensor, create_graph: bool) -> Tensor:
        """``(B, K, H, W)`` maps of the classes ``index`` (B, K) from one forward pass."""
        raise NotImplementedError

    def _maps_for(
        self, x: Tensor, logits: Tensor, targets: ResolvedTargets, create_graph: bool
    ) -> Tensor:
        """Maps for resolved targets; inactive (absent) classes are not computed at all."""
        if targets.all_active:
            return self._attribute(x, logits, targets.index, create_graph)
        batch, k = targets.index.shape
        active = targets.active
        counts = active.sum(dim=1)
        k_needed = int(counts.max())
        height, width = x.shape[-2:]
        if k_needed == 0:
            return x.new_zeros(batch, k, height, width) + 0 * logits.sum()
        # compact the active classes to the left: (B, k_needed), padded with class 0
        order = torch.argsort((~active).to(torch.int8), dim=1, stable=True)[:, :k_needed]
        compact = targets.index.gather(1, order)
        slot = torch.arange(k_needed, device=x.device).expand(batch, k_needed)
        compact = torch.where(slot < counts[:, None], compact, torch.zeros_like(compact))
        maps = self._attribute(x, logits, compact, create_graph)
        b_idx, s_idx = torch.nonzero(slot < counts[:, None], as_tuple=True)
        k_idx = order[b_idx, s_idx]
        out = maps.new_zeros(batch, k, height, width)
        return out.index_put((b_idx, k_idx), maps[b_idx, s_idx])

    def extra_repr(self) -> str:
        return f"name={self.name!r}"


def one_hot_grad_outputs(logits: Tensor, index: Tensor) -> Tensor:
    """``(K, B, C)`` one-hot output gradients, one slice per target column."""
    batch, num_classes = logits.shape
    k = index.shape[1]
    out = logits.new_zeros(k, batch, num_classes)
    out.scatter_(2, index.t()[:, :, None], 1.0)
    return out


def batched_input_grad(
    outputs: Tensor,
    x: Tensor,
    grad_outputs: Tensor,
    create_graph: bool,
    batched: bool = True,
) -> Tensor:
    """``(K, *x.shape)`` gradients of ``outputs`` w.r.t. ``x``, one per slice of ``grad_outputs``.

    All ``K`` backward passes share one forward pass. With ``batched=True`` they
    run as one vectorised backward (``is_grads_batched``), otherwise one after
    the other on the retained graph.
    """
    k = grad_outputs.shape[0]
    if k == 1:
        (g,) = torch.autograd.grad(
            outputs, x, grad_outputs[0], create_graph=create_graph, retain_graph=True
        )
        return g[None]
    if batched:
        (g,) = torch.autograd.grad(
            outputs,
            x,
            grad_outputs,
            create_graph=create_graph,
            retain_graph=True,
            is_grads_batched=True,
        )
        return g
    grads = [
        torch.autograd.grad(outputs, x, go, create_graph=create_graph, retain_graph=True)[0]
        for go in grad_outputs
    ]
    return torch.stack(grads)
