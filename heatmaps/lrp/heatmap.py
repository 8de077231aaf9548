"""``LRPHeatmap``: zennit composites and canonizers, exactly differentiable."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

from torch import Tensor, nn
from zennit.canonizers import Canonizer
from zennit.core import Composite

from ..base import (
    Heatmap,
    batched_input_grad,
    check_channel_reduction,
    one_hot_grad_outputs,
    reduce_channels,
)
from ..recomputation import is_checkpointed
from .canonizers import FunctionalMergeBatchNorm, auto_canonizers, translate_canonizers
from .composites import make_composite
from .coverage import (
    UncoveredLayer,
    check_batchnorm_frozen,
    functional_message,
    functional_warning,
    uncovered_message,
    uncovered_warning,
    unsupported_layers,
)
from .functional import FunctionalFinding, FunctionalTracer, functional_rules, probe
from .gates import GateState, rule_kind
from .registry import Refusal, choose_rule, gate_attacher
from .saved_weights import WeightRecipes


class LRPHeatmap(Heatmap):
    """Layer-wise relevance propagation maps, differentiable w.r.t. the parameters.

    The relevance of output class ``c`` starts as the one-hot vector ``e_c``
    at the logits (zennit's convention; or ``y_c e_c``, see ``relevance``) and
    is propagated to the input by the rules of ``composite``; the map is the
    input relevance summed over colour channels. With ``create_graph=True`` the map is an exactly differentiable
    function of every parameter, BatchNorm affine parameters included.

    Args:
        model: a classifier returning logits ``(B, C)``.
        composite: a name from :data:`heatmaps.lrp.COMPOSITES` (``"epsilon"``,
            ``"epsilon_plus_flat"``, ``"epsilon_gamma_box"``,
            ``"epsilon_alpha2_beta1"``, ...) or a zennit ``Composite`` instance.
        canonizers: ``"auto"`` (ResNet and BatchNorm canonizers chosen from the
            model's modules), a list of zennit canonizers (BatchNorm merges are
            replaced by functional ones), or ``[]`` for none. A composite
            instance that carries its own canonizers uses those.
        channel_reduction: how input relevance ``(B, 3, H, W)`` becomes a map:
            ``"sum"`` (relevance is conserved), ``"abs_sum"`` or ``"max_abs"``.
        batched: compute the ``K`` maps of one call in one vectorised backward
            (``True``), one backward per class on the shared forward
            (``False``), or choose (``None``, the default): one per class when
            every rule is a modified gradient (the ``"epsilon"`` composite),
            vectorised otherwise. PyTorch's vectorised backward (legacy
            ``vmap``) cannot run the custom autograd functions of the epsilon
            gates and falls back to slower ordinary operations, one
            convolution per class, so the ``"epsilon"`` composite is faster
            one class at a time; composites with rules that recompute their
            layer (z+, gamma, ...) gain more from one vectorised backward
            (the timings are in docs/benchmarks.md).
        relevance: output relevance of class ``c``: ``"one_hot"`` (``e_c``,
            zennit's convention) or ``"logit"`` (``y_c e_c``, the convention of
            Bach et al. 2015, where the relevance sums to the logit). The
            logit form is much better conditioned for training: with ``e_c``
            the last layer divides by ``y_c``, so maps and their parameter
            gradients blow up wherever a logit crosses zero. The logit is kept
            in the graph, so the maps stay exactly differentiable.
        unsupported: what to do about layers LRP does not cover (below):
            ``"error"`` (default) raises a ``ValueError`` naming the first one
            when the heatmap is built (and at a call, if the model changed
            since); ``"warn"`` issues one ``UserWarning`` listing them all and
            lets relevance cross them as a plain gradient.
        **composite_kwargs: passed to the named composite (e.g. ``epsilon=1e-8``).

    What LRP covers: every layer must be mapped to a rule by the composite
    (after the canonizers, and as changed by :mod:`heatmaps.lrp.rules`), or be
    a parameter-free layer whose gradient already is its relevance (identity,
    reshapes, max-pooling, dropout, ReLU: see
    :data:`heatmaps.lrp.coverage.PASS_THROUGH`). A layer with parameters of its
    own and no rule (LayerNorm, a learned scale, ConvNeXt's layer scale), a
    refused layer (attention) or a parameter-free leaf that is not known to
    pass relevance (InstanceNorm, upsampling, softmax) would give maps that
    are not LRP, so it is refused (``unsupported``). Operations a module's
    ``forward`` performs functionally (``x + y``, ``torch.cat``, ``gate * x``,
    ``x.mean(...)``) are found by a probe forward pass on the first call
    (:mod:`heatmaps.lrp.functional`): sums and average pools get the
    composite's rule for them, squeeze-excitation gates the signal-take-all
    rule, routing operations their gradient, and any other function is refused
    by name. BatchNorm is merged into the layer whose output it reads (data
    flow); a BatchNorm before its convolution (DenseNet) gets the epsilon rule.
    The families covered and the formulas are in docs/concepts/lrp_rules.md.

    BatchNorm: the canonizers merge BatchNorm with its running statistics, so a
    call on a model with a BatchNorm layer in training mode raises a
    ``ValueError`` naming it (its maps and logits would be those of the
    eval-mode model); freeze BatchNorm first (``model.eval()`` or
    ``rrr.segmenters.freeze_batchnorm``).

    Defaults: ``composite="epsilon_plus_flat"`` and ``relevance="one_hot"`` are
    the explanation-quality choice of the LRP literature (flat rule on the
    first layer, z+ on the other convolutions, epsilon on dense layers;
    relevance starting from ``e_c`` at the output, zennit's convention), for
    maps meant to be looked at. ``python -m rrr.finetune`` trains on maps made
    with ``composite="epsilon"`` and ``relevance="logit"`` instead. The epsilon
    rule on every layer is what the segmentation paper it implements (Yu et
    al.) uses; the fine-tuning recipe was calibrated on input x gradient maps,
    which equal LRP-0 on ReLU networks (the epsilon rule as epsilon goes to
    0), and its recorded runs train with it; and an epsilon training step is
    cheaper than an ``epsilon_plus_flat`` one (docs/benchmarks.md). The logit
    start keeps maps and gradients bounded where a logit crosses zero (see
    ``relevance``). docs/concepts/backends.md says more.

    The hooks live only for the duration of a call; nothing is left on the model.
    """

    name = "lrp"

    def __init__(
        self,
        model: nn.Module,
        composite: str | Composite = "epsilon_plus_flat",
        canonizers: str | Sequence[Canonizer] = "auto",
        channel_reduction: str = "sum",
        batched: bool | None = None,
        relevance: str = "one_hot",
        unsupported: str = "error",
        **composite_kwargs: Any,
    ) -> None:
        super().__init__(model)
        if relevance not in ("one_hot", "logit"):
            raise ValueError(f"relevance: expected 'one_hot' or 'logit', got {relevance!r}")
        if unsupported not in ("error", "warn"):
            raise ValueError(f"unsupported: expected 'error' or 'warn', got {unsupported!r}")
        self.unsupported = unsupported
        self.relevance = relevance
        self.composite = make_composite(composite, **composite_kwargs)
        self.composite_name = composite if isinstance(composite, str) else type(composite).__name__
        if isinstance(canonizers, str):
            if canonizers != "auto":
                raise ValueError(f"canonizers: expected 'auto' or a list, got {canonizers!r}")
            if self.composite.canonizers:
                self._canonizers = translate_canonizers(self.composite.canonizers)
            else:
                self._canonizers = auto_canonizers(model)
        else:
            self._canonizers = translate_canonizers(list(canonizers))
        self.channel_reduction = check_channel_reduction(channel_reduction)
        self.batched = batched
        self._state: GateState | None = None
        # the uncovered layers last warned about (unsupported="warn"), to warn once per change
        self._warned: list[UncoveredLayer] | None = None
        self._warned_functional: list[FunctionalFinding] | None = None
        # the model structure the probe forward pass last saw, and whether it found
        # functional calls that need gates (see heatmaps.lrp.functional)
        self._probed: tuple | None = None
        self._needs_gates = False
        with self._canonized():
            self._check_coverage(self._rules())

    def extra_repr(self) -> str:
        return f"composite={self.composite_name!r}, canonizers={[type(c).__name__ for c in self._canonizers]}"

    @contextlib.contextmanager
    def _canonized(self) -> Iterator[list[Canonizer]]:
        """Apply the canonizers to the model; remove them on exit, also after an exception."""
        applied: list[Canonizer] = []
        try:
            for canonizer in self._canonizers:
                applied += canonizer.apply(self.model)
            yield applied
        finally:
            for canonizer in reversed(applied):
                canonizer.remove()

    def _rules(self) -> list[tuple[str, nn.Module, object | None]]:
        """``(name, module, rule)`` of every module of the (canonized) model, in module order.

        The composite's rule, as changed by the rules registered with
        :func:`heatmaps.lrp.registry.register_rule` (unmerged BatchNorm,
        refused layers).
        """
        ctx: dict = {}
        composite = self.composite
        return [
            (name, module, choose_rule(module, composite.module_map(ctx, name, module), composite))
            for name, module in self.model.named_modules()
        ]

    @staticmethod
    def _covered(rules: list[tuple[str, nn.Module, object | None]]) -> set[int]:
        """Ids of the modules whose insides the functional probe does not inspect."""
        return {
            id(module)
            for _, module, rule in rules
            if rule is not None or next(module.children(), None) is None
        }

    def _probe(self, x: Tensor) -> None:
        """Once per model structure: find functional calls and BatchNorm data flow (one forward).

        BatchNorm merges chosen by module order (:class:`FunctionalMergeBatchNorm`
        without a name map) are replaced by the pairs the data flow shows: a
        BatchNorm is merged only into the convolution or linear layer whose
        output it reads. Functions without an LRP treatment are refused
        (``unsupported``).
        """
        key = tuple((name, id(module)) for name, module in self.model.named_modules())
        if key == self._probed:
            return
        with self._canonized():
            rules = self._rules()
            self._check_coverage(rules)
            try:
                result = probe(self.model, x, self._covered(rules), self.composite)
            except Exception:  # the real forward pass raises it again, with the usual checks
                return
        if any(isinstance(c, FunctionalMergeBatchNorm) for c in self._canonizers):
            merged = FunctionalMergeBatchNorm(result.batchnorm_pairs)
            self._canonizers = [
                merged if isinstance(c, FunctionalMergeBatchNorm) and c.name_map is None else c
                for c in self._canonizers
            ]
        findings = result.findings
        if findings:
            if self.unsupported == "error":
                raise ValueError(functional_message(findings, self.composite_name))
            if findings != self._warned_functional:
                self._warned_functional = findings
                warnings.warn(functional_warning(findings, self.composite_name), stacklevel=4)
        self._needs_gates = result.needs_gates
        self._probed = key

    def _check_coverage(self, rules: list[tuple[str, nn.Module, object | None]]) -> None:
        """Raise or warn (``unsupported``) about layers LRP does not cover."""
        uncovered = unsupported_layers(rules)
        if not uncovered:
            return
        if self.unsupported == "error":
            raise ValueError(uncovered_message(uncovered, self.composite_name))
        if uncovered != self._warned:
            self._warned = uncovered
            warnings.warn(uncovered_warning(uncovered, self.composite_name), stacklevel=3)

    @contextlib.contextmanager
    def _attached(self, x: Tensor) -> Iterator[None]:
        if is_checkpointed(self.model):
            raise RuntimeError(
                "LRPHeatmap: the model runs under heatmaps.activation_checkpointing; LRP attaches "
                "its rules only for the duration of a call, so the recomputation in the final "
                "backward pass would run without them (use checkpointing with Grad-CAM, or none)"
            )
        check_batchnorm_frozen(self.model)
        self._probe(x)
        recipes = WeightRecipes()
        state = GateState(recipes=recipes)
        handles: list[Any] = []
        with self._canonized() as applied:
            try:
                rules = self._rules()
                self._check_coverage(rules)
                for _, module, rule in rules:
                    if rule is None or isinstance(rule, Refusal):
                        continue
                    kind = rule_kind(rule)
                    handles += gate_attacher(module, rule, kind)(module, rule, state)
                    state.vectorise |= kind == "basic"
                self._state = state
                for canonizer in applied:
                    for merged, compute in getattr(canonizer, "merged_weights", ()):
                        recipes.remember(merged, compute)
                tracer = contextlib.nullcontext()
                if self._needs_gates:
                    rules_of = functional_rules(self.composite)
                    tracer = FunctionalTracer(self.model, self._covered(rules), rules_of, state)
                    tracer = tracer.hooked()
                with recipes.saving(), tracer:
                    yield
            finally:
                state.active = False
                self._state = None
                for handle in handles:
                    handle.remove()

    def _attribute(self, x: Tensor, logits: Tensor, index: Tensor, create_graph: bool) -> Tensor:
        state = self._state
        assert state is not None, "LRPHeatmap._attribute runs only inside _attached()"
        grad_outputs = one_hot_grad_outputs(logits, index)
        if self.relevance == "logit":
            grad_outputs = grad_outputs * (logits if create_graph else logits.detach())[None]
        state.active, state.create_graph = True, create_graph
        try:
            batched = state.vectorise if self.batched is None else self.batched
            relevance = batched_input_grad(logits, x, grad_outputs, create_graph, batched)
        finally:
            state.active = False
        k, batch = relevance.shape[:2]
        maps = reduce_channels(relevance.flatten(0, 1), self.channel_reduction)
        return maps.unflatten(0, (k, batch)).transpose(0, 1)


__all__ = ["LRPHeatmap"]
