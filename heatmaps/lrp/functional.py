"""LRP for operations a module's ``forward`` performs functionally (``x + y``, ``x * gate``, ...).

Forward hooks see modules only. torchvision computes residual sums, squeeze-
excitation products, concatenations, global average pools and channel
shuffles in ``forward`` code, and each of them needs an LRP treatment of its
own (a sum splits relevance in proportion to its summands, an average pool
in proportion to its inputs; a gate receives none). A
:class:`torch.overrides.TorchFunctionMode` sees every torch function a
``forward`` calls; :class:`FunctionalTracer` uses it twice:

* **probe** (once per model structure, on the first call, under
  ``no_grad``): every function called *outside* the modules that have a rule
  (or are leaves), on a tensor that depends on the input ("tainted"), is
  looked up in :func:`heatmaps.lrp.registry.functional_treatment`. Unknown
  ones are refused by name (:class:`FunctionalFinding`); the probe also
  records which BatchNorms read the output of a convolution or linear layer
  directly (data flow, for the canonizer) - module order alone would merge
  DenseNet's BatchNorm-before-convolution into the wrong layer.
* **call** (only for models whose probe found functions with a rule): the
  same mode applies the treatments' gates to the real forward pass.

Treatments (:class:`Treatment`), registered in :mod:`heatmaps.lrp.rules.functional_ops`:

* ``route``: the gradient already is the relevance (reshapes, indexing,
  ``torch.cat`` and ``chunk`` - relevance split back by channel -, ReLU,
  max-pooling, dropout, padding, channel shuffles);
* ``sum`` / ``pool``: the composite's rule for zennit's ``Sum`` / average
  pooling (``Norm``: ``R_i = x_i R / stab(z)``), as input and output gates;
* ``scale``: a product with one input-dependent factor (the *signal*) and one
  constant, parameter or gate (a squeeze-excitation scale, a layer scale, a
  constant): relevance is handed to the signal unchanged, none to the gate;
* ``activation``: functional activations, the pass rule.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves
from zennit.layer import Sum
from zennit.types import BatchNorm
from zennit.types import Linear as LinearLike

from .division import StabilisedInverse, plain_epsilon
from .gates import InputGate, OutputGate, PassGate, rule_kind
from .registry import functional_treatment

#: activations whose output is a gate in ``[0, 1]`` (squeeze-excitation scales)
GATE_ACTIVATIONS: tuple[type[nn.Module], ...] = (nn.Sigmoid, nn.Hardsigmoid)
#: functions whose output is such a gate
GATE_FUNCTIONS = frozenset(
    [
        torch.sigmoid,
        torch.Tensor.sigmoid,
        torch.nn.functional.sigmoid,
        torch.nn.functional.hardsigmoid,
    ]
)


@dataclass(frozen=True)
class Treatment:
    """How LRP treats a torch function called in ``forward`` code.

    Attributes:
        kind: ``"route"``, ``"sum"``, ``"pool"``, ``"scale"`` or ``"activation"``.
        outplace: for an in-place function, its out-of-place form (the result
            is written back with ``copy_``).
        divides: a division (only the numerator may depend on the input).
    """

    kind: str
    outplace: Callable | None = None
    divides: bool = False


@dataclass(frozen=True)
class FunctionalFinding:
    """A function called on input-dependent tensors that LRP cannot treat."""

    function: str
    module: str
    module_type: str
    reason: str

    def describe(self) -> str:
        """``torch.Tensor.sub in 'layer1.0' (Block): no LRP rule``."""
        return (
            f"{self.function} in {self.module or '<model>'!r} ({self.module_type}): {self.reason}"
        )


def function_name(func: object) -> str:
    """``torch.nn.functional.layer_norm``, ``torch.cat``, ``torch.Tensor.add``."""
    name = getattr(func, "__name__", repr(func))
    module = getattr(func, "__module__", None)
    if module is None:
        return f"torch.Tensor.{name}"
    if module.startswith("torch._C"):
        module = "torch"
    return f"{module}.{name}"


@dataclass
class ProbeResult:
    """What the probe forward found."""

    findings: list[FunctionalFinding] = field(default_factory=list)
    #: whether the forward calls functions that need gates (sum, pool, scale, activation)
    needs_gates: bool = False
    #: ``[((linear_name,), batch_norm_name), ...]`` of BatchNorms reading a linear layer's output
    batchnorm_pairs: list[tuple[tuple[str, ...], str]] = field(default_factory=list)
    #: BatchNorms whose input is not a linear layer's output
    unpaired_batchnorms: list[str] = field(default_factory=list)


class FunctionalTracer(TorchFunctionMode):
    """Tracks input-dependent tensors through a forward pass and treats functional calls.

    Args:
        model: the (canonized) model.
        covered: ids of the modules whose insides are not inspected (those with
            a rule, and leaves).
        rules: ``{"sum": rule, "pool": rule}``, the composite's rules for
            functional sums and average pools.
        state: the call's gate state; ``None`` for the probe (no gates).
    """

    def __init__(
        self,
        model: nn.Module,
        covered: set[int],
        rules: dict[str, object | None],
        state: Any = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.covered = covered
        self.rules = rules
        self.state = state
        self.names = {id(m): name for name, m in model.named_modules()}
        self.stack: list[nn.Module] = []
        self.depth = 0
        self._tainted: dict[int, weakref.ref] = {}
        # outputs of sigmoid-like activations (squeeze-excitation scales): the gate of a product
        self._gates: dict[int, weakref.ref] = {}
        self._produced: dict[int, tuple[str, weakref.ref]] = {}
        self.result = ProbeResult()
        self._entered = False

    # -- taint ---------------------------------------------------------------------------
    def _taint(self, value: Any) -> None:
        for leaf in tree_leaves(value):
            if isinstance(leaf, Tensor):
                self._tainted[id(leaf)] = weakref.ref(leaf)

    def _is_tainted(self, tensor: Tensor) -> bool:
        ref = self._tainted.get(id(tensor))
        return ref is not None and ref() is tensor

    def _mark_gate(self, value: Any) -> None:
        for leaf in tree_leaves(value):
            if isinstance(leaf, Tensor):
                self._gates[id(leaf)] = weakref.ref(leaf)

    def is_gate(self, tensor: Any) -> bool:
        """Whether ``tensor`` is the output of a sigmoid-like activation (or a reshape of one)."""
        ref = self._gates.get(id(tensor)) if isinstance(tensor, Tensor) else None
        return ref is not None and ref() is tensor

    def _any_tainted(self, value: Any) -> bool:
        return any(isinstance(t, Tensor) and self._is_tainted(t) for t in tree_leaves(value))

    # -- module hooks --------------------------------------------------------------------
    def _pre(self, module: nn.Module, args: tuple) -> None:
        if module is self.model:
            self._taint(args)
            if self.state is not None and not self._entered:
                self.__enter__()
                self._entered = True
        if self.state is None and isinstance(module, BatchNorm) and args:
            self._pair_batchnorm(module, args[0])
        self.stack.append(module)
        if id(module) in self.covered:
            self.depth += 1

    def _post(self, module: nn.Module, args: tuple, out: Any) -> None:
        if self.stack and self.stack[-1] is module:
            self.stack.pop()
            if id(module) in self.covered:
                self.depth -= 1
        if self._any_tainted(args):
            self._taint(out)
            if isinstance(module, GATE_ACTIVATIONS):
                self._mark_gate(out)
        if self.state is None and isinstance(module, LinearLike) and isinstance(out, Tensor):
            self._produced[id(out)] = (self.names.get(id(module), ""), weakref.ref(out))
        if module is self.model and self._entered:
            self._entered = False
            self.__exit__(None, None, None)

    def _pair_batchnorm(self, module: nn.Module, x: Any) -> None:
        name = self.names.get(id(module), "")
        produced = self._produced.get(id(x)) if isinstance(x, Tensor) else None
        if produced is not None and produced[1]() is x and x.dim() > 1:
            linear = dict(self.model.named_modules()).get(produced[0])
            channels = getattr(module, "num_features", None)
            if linear is not None and channels == x.shape[1]:
                self.result.batchnorm_pairs.append(((produced[0],), name))
                return
        self.result.unpaired_batchnorms.append(name)

    @contextlib.contextmanager
    def hooked(self) -> Iterator[FunctionalTracer]:
        """The module hooks for one forward pass (outermost pre-hook, innermost-last post-hook)."""
        handles = []
        try:
            for module in self.model.modules():
                handles.append(module.register_forward_pre_hook(self._pre, prepend=True))
                handles.append(module.register_forward_hook(self._post))
            yield self
        finally:
            for handle in handles:
                handle.remove()
            if self._entered:
                self._entered = False
                self.__exit__(None, None, None)

    # -- functions -------------------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        kwargs = kwargs or {}
        if self.depth or not self._any_tainted((args, kwargs)):
            return func(*args, **kwargs)
        treatment = functional_treatment(func)
        if self.state is None:
            out = func(*args, **kwargs)
            if any(isinstance(t, Tensor) for t in tree_leaves(out)):
                self._classify(func, treatment, args, kwargs, out)
                self._taint(out)
        elif treatment is None or treatment.kind == "route":
            out = func(*args, **kwargs)
            self._taint(out)
        else:
            out = self._apply(func, treatment, args, kwargs)
            self._taint(out)
        if treatment is not None and (
            func in GATE_FUNCTIONS
            or (treatment.kind == "route" and any(self.is_gate(a) for a in tree_leaves(args)))
        ):
            self._mark_gate(out)
        return out

    def _where(self) -> tuple[str, str]:
        module = self.stack[-1] if self.stack else self.model
        return self.names.get(id(module), ""), type(module).__name__

    def _refuse(self, func: object, reason: str) -> None:
        name, type_name = self._where()
        finding = FunctionalFinding(function_name(func), name, type_name, reason)
        if finding not in self.result.findings:
            self.result.findings.append(finding)

    def _classify(self, func: object, treatment: Treatment | None, args, kwargs, out) -> None:
        if treatment is None:
            self._refuse(func, "no LRP rule for this function")
            return
        if treatment.kind == "route":
            return
        if treatment.kind in ("sum", "pool"):
            rule = self.rules.get(treatment.kind)
            if rule is None or rule_kind(rule) not in ("gradient", "pass"):
                label = "none" if rule is None else type(rule).__name__
                self._refuse(
                    func,
                    f"its rule in the composite ({label}) is not a modified-gradient rule "
                    "(Norm/Epsilon), which functional calls support",
                )
                return
            if treatment.kind == "sum" and (kwargs.get("alpha", 1) != 1 or len(args) > 2):
                self._refuse(func, "a scaled sum (alpha) has no LRP rule")
                return
        if treatment.kind == "scale" and _signal_index(self, args, out, treatment) is None:
            self._refuse(
                func,
                "a product or quotient of two input-dependent tensors of the same shape "
                "(a bilinear operation, e.g. attention) has no LRP rule here",
            )
            return
        self.result.needs_gates = True

    def _apply(self, func: Callable, treatment: Treatment, args: tuple, kwargs: dict) -> Any:
        inplace = treatment.outplace is not None
        target = args[0]
        if inplace:
            # compute out of place from a copy (so saved tensors are not overwritten), then write back
            func = treatment.outplace  # type: ignore[assignment]
            args = (target.clone(), *args[1:])
        state = self.state
        if treatment.kind in ("sum", "pool"):
            rule = self.rules[treatment.kind]
            if rule_kind(rule) == "pass":
                out = func(*args, **kwargs)
            else:
                gated = 2 if treatment.kind == "sum" else 1
                args = tuple(
                    InputGate.apply(a, state, rule)
                    if i < gated and isinstance(a, Tensor) and a.requires_grad
                    else a
                    for i, a in enumerate(args)
                )
                z = func(*args, **kwargs)
                epsilon = plain_epsilon(rule)
                inverse = None if epsilon is None else StabilisedInverse.apply(z, epsilon)
                out = OutputGate.apply(z, inverse, state, rule, False)
        elif treatment.kind == "scale":
            z = func(*args, **kwargs)
            index = _signal_index(self, args, z, treatment)
            assert index is not None, "refused by the probe"
            out = PassGate.apply(args[index], z, state)
        else:  # activation
            kwargs = {k: v for k, v in kwargs.items() if k != "inplace"}
            z = func(*args, **kwargs)
            out = PassGate.apply(args[0], z, state)
        if inplace:
            target.copy_(out)
            return target
        return out


def _signal_index(
    tracer: FunctionalTracer, args: tuple, out: Any, treatment: Treatment
) -> int | None:
    """Which of a product's two factors is the signal, or ``None`` if neither can be.

    The signal depends on the input and has the product's shape; the other
    factor (number, constant, parameter, or an input-dependent gate: the
    output of a sigmoid-like activation, or a factor that is broadcast)
    receives no relevance.
    """
    if len(args) < 2 or not isinstance(out, Tensor):
        return None
    factors = args[:2]
    tainted = [isinstance(f, Tensor) and tracer._is_tainted(f) for f in factors]
    shaped = [isinstance(f, Tensor) and f.shape == out.shape for f in factors]
    if treatment.divides:
        return 0 if tainted[0] and not tainted[1] and shaped[0] else None
    if tainted[0] and tainted[1]:
        gates = [tracer.is_gate(f) for f in factors]
        if gates[0] != gates[1]:
            index = 1 if gates[0] else 0
            return index if shaped[index] else None
        if shaped[0] and not shaped[1]:
            return 0
        if shaped[1] and not shaped[0]:
            return 1
        return None
    index = 0 if tainted[0] else 1
    return index if shaped[index] else None


def functional_rules(composite: Any) -> dict[str, object | None]:
    """The composite's rules for functional sums (zennit ``Sum``) and average pools."""
    ctx: dict = {}
    return {
        "sum": composite.module_map(ctx, "<functional sum>", Sum()),
        "pool": composite.module_map(ctx, "<functional pool>", nn.AdaptiveAvgPool2d(1)),
    }


def probe(model: nn.Module, x: Tensor, covered: set[int], composite: Any) -> ProbeResult:
    """Run one forward pass of ``model`` on ``x`` (no graph) and report what it calls.

    The random number generators are restored afterwards (dropout in train mode).
    """
    tracer = FunctionalTracer(model, covered, functional_rules(composite))
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad(), tracer.hooked(), tracer:
        model(x)
    return tracer.result


__all__ = [
    "FunctionalFinding",
    "FunctionalTracer",
    "ProbeResult",
    "Treatment",
    "function_name",
    "functional_rules",
    "probe",
]
