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

Bad input gives one clear error before the model runs wherever it can be
known in advance (:func:`check_grad_mode`, :func:`check_input`,
:func:`check_model_input`), and a heatmap is never quietly wrong: non-finite
input is refused and non-finite maps raise (:func:`check_maps`). Every message
is one line that starts with a stable phrase naming the problem (``input:``,
``model:``, ``inference_mode:``, ``create_graph=True``, ``batch of one:``,
``<Backend>: the maps are non-finite``), so callers and tests can match it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType

import torch
from torch import Tensor, nn

from . import registry
from .double_backward import check_second_derivative, twice_differentiable
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


def check_grad_mode(create_graph: bool) -> None:
    """Refuse calling contexts in which a heatmap cannot be computed as asked.

    * ``torch.inference_mode()``: every backend that backpropagates needs
      autograd, which inference mode switches off for good (tensors made in it
      cannot be recorded later, not even under ``torch.enable_grad()``);
      ``torch.no_grad()`` is the context for maps that need no graph.
    * ``create_graph=True`` under ``torch.no_grad()`` (grad mode disabled): the
      caller asks for maps with a graph in a block where they asked for none.
      Heatmaps enable grad internally for their own backward pass, so honouring
      ``create_graph`` would silently override the caller's ``no_grad``; it is
      refused instead. ``create_graph=False`` under ``no_grad`` works (the maps
      are detached, as always without ``create_graph``).

    Raises:
        RuntimeError: one of the two contexts above.
    """
    if torch.is_inference_mode_enabled():
        raise RuntimeError(
            "inference_mode: heatmaps need autograd and cannot run under torch.inference_mode(); "
            "call them under torch.no_grad() (maps without a graph) or with no context manager"
        )
    if create_graph and not torch.is_grad_enabled():
        raise RuntimeError(
            "create_graph=True asks for a graph but grad mode is disabled (torch.no_grad()); "
            "call the heatmap outside torch.no_grad() (or under torch.enable_grad()), or pass "
            "create_graph=False for maps without a graph"
        )


def check_input(x: Tensor, finite: bool = True) -> Tensor:
    """Validate an image batch: a floating tensor of shape ``(B, C, H, W)``.

    With ``finite=True`` the batch must also be free of NaN and Inf: one
    non-finite pixel makes the map of its sample all NaN (or silently wrong:
    gradients skip it), so it is refused. The check is one
    ``torch.isfinite(x).all()`` reduction (a device synchronisation on GPU).

    Raises:
        TypeError: not a tensor, or not floating point.
        ValueError: not 4-D, an empty batch, an inference tensor, or (with
            ``finite``) NaN or Inf values.
    """
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
    if x.is_inference():
        raise ValueError(
            "input: is an inference tensor (created under torch.inference_mode()) and autograd "
            "cannot record it; create it under torch.no_grad() instead, or pass x.clone() made "
            "outside inference_mode"
        )
    if finite and not x.is_meta and not bool(torch.isfinite(x).all()):
        raise ValueError(
            f"input: contains NaN or Inf values (first in sample {_first_non_finite(x)}); a "
            "heatmap of non-finite input is meaningless, so clean the input first"
        )
    return x


def _first_non_finite(t: Tensor) -> int:
    """Index of the first sample of ``t`` with a NaN or Inf (only called on the error path)."""
    bad = (~torch.isfinite(t.detach())).flatten(1).any(dim=1)
    return int(bad.nonzero()[0, 0])


def check_model_input(model: nn.Module, x: Tensor) -> None:
    """Refuse an input whose dtype or device differs from the model's parameters.

    Checked only when every parameter of ``model`` has the same dtype (the
    floating ones) or the same device, so mixed-precision and model-parallel
    models are left to themselves; the dtype check is skipped under
    ``torch.autocast``, which casts layer inputs itself. Without this
    check a mismatch surfaces as a low-level error from deep inside the first
    layer.

    Raises:
        ValueError: the input's dtype or device differs from the model's.
    """
    params = list(model.parameters())
    devices = {p.device for p in params}
    if len(devices) == 1:
        (device,) = devices
        if device != x.device:
            raise ValueError(
                f"input: on device {x.device} but the model's parameters are on {device}; "
                f"move one of them, e.g. x.to({str(device)!r}) or model.to({str(x.device)!r})"
            )
    dtypes = {p.dtype for p in params if p.is_floating_point()}
    if len(dtypes) == 1 and not _autocast_enabled(x.device.type):
        (dtype,) = dtypes
        if dtype != x.dtype:
            raise ValueError(
                f"input: dtype {x.dtype} differs from the model's parameters ({dtype}); convert "
                f"one of them, e.g. x.to({dtype}) or model.to({x.dtype})"
            )


def _autocast_enabled(device_type: str) -> bool:
    """Whether ``torch.autocast`` is on for ``device_type`` (``False`` where it has none)."""
    try:
        return torch.is_autocast_enabled(device_type)
    except RuntimeError:  # a device type without autocast (meta, ...)
        return False


def check_maps(maps: Tensor, backend: str) -> None:
    """Refuse non-finite maps computed from finite input.

    Called after the maps are computed (one ``torch.isfinite(maps).all()``
    reduction); it reads the maps only, so maps made with ``create_graph=True``
    keep their graph.

    Raises:
        FloatingPointError: the maps contain NaN or Inf.
    """
    if not maps.is_meta and not bool(torch.isfinite(maps.detach()).all()):
        raise FloatingPointError(
            f"{backend}: the maps are non-finite (NaN or Inf, first in sample "
            f"{_first_non_finite(maps)}) although the input is finite; the model computes "
            "non-finite values (check its parameters and logits for NaN/Inf or overflow)"
        )


#: the message with which torch refuses a train-mode BatchNorm that sees one value per channel
_ONE_VALUE_PER_CHANNEL = "Expected more than 1 value per channel when training"


def _batchnorm_in(traceback: TracebackType | None) -> nn.Module | None:
    """The BatchNorm module whose ``forward`` is among the frames of ``traceback``, if any."""
    found = None
    while traceback is not None:
        module = traceback.tb_frame.f_locals.get("self")
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            found = module
        traceback = traceback.tb_next
    return found


def run_classifier(model: nn.Module, x: Tensor) -> object:
    """``model(x)``, with torch's refusal of a batch of one in train-mode BatchNorm made clear.

    Whether a train-mode BatchNorm can normalise a batch of one depends on the
    size of its input (it needs more than one value per channel: a ``(1, C)``
    vector cannot, a ``(1, C, 4, 4)`` map can), which is only known when the
    layer runs; so this error is translated rather than predicted.

    Raises:
        ValueError: a batch of one reached a BatchNorm layer in training mode
            that sees one value per channel.
    """
    try:
        return model(x)
    except ValueError as error:
        if not str(error).startswith(_ONE_VALUE_PER_CHANNEL):
            raise
        layer = _batchnorm_in(error.__traceback__)
        names = {module: name for name, module in model.named_modules()}
        where = f" {names[layer]!r}" if layer in names else ""
        raise ValueError(
            f"batch of one: BatchNorm layer{where} is in training mode and sees one value per "
            "channel, from which it cannot compute batch statistics; call model.eval() (or "
            "freeze BatchNorm, e.g. rrr.segmenters.freeze_batchnorm) or pass a larger batch"
        ) from None


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


#: the ways :func:`reduce_channels` turns an input attribution into a map
CHANNEL_REDUCTIONS = ("sum", "abs_sum", "max_abs")


def check_channel_reduction(how: str) -> str:
    """Validate a ``channel_reduction`` option when a backend is built, before any call."""
    if how not in CHANNEL_REDUCTIONS:
        raise ValueError(f"channel_reduction: expected 'sum', 'abs_sum' or 'max_abs', got {how!r}")
    return how


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

    Every call validates before the model runs: the calling context
    (:func:`check_grad_mode`), the input (:func:`check_input`, finiteness
    included) and its agreement with the model (:func:`check_model_input`);
    after computing, non-finite maps raise (:func:`check_maps`). Set
    :attr:`check_finite` to ``False`` to skip the two finiteness checks.
    """

    #: name under which the backend is registered: a subclass that sets it in its own
    #: class body registers itself under it when defined (see :mod:`heatmaps.registry`)
    name: str = "base"
    #: whether the maps are gradients w.r.t. the input (then the input is made to require
    #: grad for the call); layer-based backends set this to ``False`` and save the input
    #: gradient of the first layer
    needs_input_grad: bool = True
    #: refuse non-finite input (``ValueError``) and non-finite maps (``FloatingPointError``);
    #: each check is one reduction over the tensor. Set to ``False`` on a class or an
    #: instance (``hm.check_finite = False``) to accept non-finite input and return
    #: whatever maps it gives.
    check_finite: bool = True

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
        """One forward pass: logits, maps and the resolved ``(B, K)`` targets.

        Raises:
            RuntimeError: called under ``torch.inference_mode()``, or with
                ``create_graph=True`` under ``torch.no_grad()``.
            TypeError: the input is not a floating-point tensor; a target of
                the wrong type; the model does not return a tensor.
            ValueError: malformed input (rank, empty, NaN/Inf, dtype or device
                other than the model's), malformed targets, a model that is
                not a classifier, a batch of one in train-mode BatchNorm, or a
                backend's own refusal (e.g. LRP on train-mode BatchNorm).
            FloatingPointError: the maps are non-finite although the input is
                finite.
            NotImplementedError: with ``create_graph=True``, the maps' graph
                needs a second derivative PyTorch lacks, in a layer that
                :mod:`heatmaps.double_backward` does not substitute (the error
                names it).
        """
        check_grad_mode(create_graph)
        x = check_input(x, finite=self.check_finite)
        check_model_input(self.model, x)
        # second derivatives through every layer, for the call only (heatmaps.double_backward)
        twice = twice_differentiable() if create_graph else contextlib.nullcontext()
        with preserved_state(self.model), twice, self._attached(x):
            frozen = not any(p.requires_grad for p in self.model.parameters())
            if x.requires_grad or not (self.needs_input_grad or frozen):
                x_in = x
            else:
                x_in = x.detach().requires_grad_(True)
            with torch.enable_grad():
                logits = check_logits(run_classifier(self.model, x_in), x.shape[0])
                resolved = resolve_targets(targets, logits)
                maps = self._maps_for(x_in, logits, resolved, create_graph)
                if create_graph:
                    check_second_derivative(maps, self.model, x_in, type(self).__name__)
        if self.check_finite:
            check_maps(maps, type(self).__name__)
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
