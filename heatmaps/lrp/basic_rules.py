"""Relevance of zennit ``BasicHook`` rules from modified parameters, differentiably."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch._C._functorch import is_legacy_batchedtensor
from zennit.core import BasicHook, ParamMod, zero_wrap
from zennit.rules import NoMod, ZPlus

from .conv_relevance import ConvGeometry, conv_forward, conv_input_gradient
from .division import plain_epsilon, stabilised_divide
from .saved_weights import WeightRecipes

CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def uses_output(rule: BasicHook) -> bool:
    """Whether a term of ``rule`` has unmodified parameters, so its output is the layer's own.

    :func:`basic_rule_relevance` reuses the forward output for such a term
    (when its input is unmodified as well); rules without one (z+, gamma,
    alpha-beta, flat, w-square, z-box) recompute all their terms.
    """
    return any(_is_unmodified(mod) for mod in rule.param_modifiers)


def modified_parameters(
    param_mod: Any, module: nn.Module, recipes: WeightRecipes | None = None
) -> dict[str, Tensor]:
    """The rule's modified parameters, computed from the live (possibly canonized) tensors.

    With ``recipes``, each modified tensor is saved for the backward pass as
    its recipe (the modifier applied to its source again), not kept.
    """
    mod = ParamMod.ensure(param_mod)
    keys = mod.param_keys
    if keys is None:
        keys = [name for name, _ in module.named_parameters(recurse=False)]
    missing = [key for key in keys if not hasattr(module, key)]
    if mod.require_params and missing:
        raise RuntimeError(f"LRP: module {module} lacks parameters {missing} required by its rule")
    modifier = zero_wrap(mod.zero_params or [])(mod.modifier)
    params = {}
    for key in keys:
        value = getattr(module, key, None)
        if value is not None:
            params[key] = modified = modifier(value, key)
            if recipes is not None and modified is not value:
                recipes.remember(modified, _recompute(modifier, recipes.source(value), key))
    return params


def _recompute(modifier: Callable, source: Callable[[], Tensor], key: str) -> Callable[[], Tensor]:
    return lambda: modifier(source(), key)


def functional_forward(module: nn.Module, params: dict[str, Tensor], x: Tensor) -> Tensor:
    """Run ``module`` on ``x`` with ``params`` in place of its own, bypassing its hooks."""
    if isinstance(module, CONV_TYPES):
        weight = params.get("weight", module.weight)
        bias = params.get("bias", module.bias)
        return module._conv_forward(x, weight, bias)
    if isinstance(module, nn.Linear):
        return F.linear(x, params.get("weight", module.weight), params.get("bias", module.bias))
    store = module._parameters
    saved = {key: store[key] for key in params if key in store}
    try:
        for key, value in params.items():
            if key in store:
                store[key] = value
        return module.forward(x)
    finally:
        store.update(saved)


def _zeroes_bias(param_mod: Any, module: nn.Module) -> bool:
    """Whether the modified layer has no bias (so a zero input gives a zero output)."""
    mod = ParamMod.ensure(param_mod)
    if getattr(module, "bias", None) is None:
        return True
    zero = mod.zero_params or []
    zero = [zero] if isinstance(zero, str) else zero
    keys = mod.param_keys
    return "bias" in zero and (keys is None or "bias" in keys)


def _is_unmodified(param_mod: Any) -> bool:
    mod = ParamMod.ensure(param_mod)
    return isinstance(mod, NoMod) and not mod.zero_params


def plain_zplus(rule: BasicHook) -> float | None:
    """The stabiliser epsilon of a zennit ``ZPlus`` rule in its default form, else ``None``."""
    if type(rule) is not ZPlus:
        return None
    return plain_epsilon(rule)


def zplus_relevance(
    rule: ZPlus,
    epsilon: float,
    module: nn.Module,
    x: Tensor,
    relevance: Tensor,
    create_graph: bool,
    recipes: WeightRecipes | None = None,
) -> Tensor:
    """The z+ rule's input relevance, as zennit computes it, with less work.

    zennit's ``ZPlus`` (Kohlbrenner et al. 2020, eq. 5; Montavon et al. 2019)::

        z    = layer(x+; w+, b+) + layer(x-; w-)         x+ = max(x, 0), w+ = max(w, 0), ...
        R_in = x+ * J+^T (R / stab(z)) + x- * J-^T (R / stab(z))

    On the non-negative input of a ReLU (checked on the values) ``x+ = x``
    (also in its derivative: ``clamp`` passes gradients at the bound) and the
    second term is zero, so neither the clamp nor the second layer and its
    zero tensors are computed; the division is :class:`StabilisedDivide`, and
    on a plain convolution ``J^T`` is :func:`conv_input_gradient`.
    Values equal zennit's (the dropped terms are exact zeros).
    """
    geometry = ConvGeometry.of(module)
    # the recomputed convolution with a cheaper weight gradient (not under legacy vmap, which
    # does not record custom autograd functions)
    own_forward = (
        geometry is not None
        and x.dim() == module.weight.dim()
        and not is_legacy_batchedtensor(relevance)
    )
    with torch.enable_grad():
        positive_only = not bool((x < 0).any())
        terms = [(0, x)] if positive_only else [(0, x.clamp(min=0)), (1, x.clamp(max=0))]
        inputs, z, weights = [], None, []
        for i, inp in terms:
            params = modified_parameters(rule.param_modifiers[i], module, recipes)
            weights.append(params)  # alive until the inner backward: see WeightRecipes
            inp = inp.view_as(inp) if inp.requires_grad else inp.detach().requires_grad_(True)
            if own_forward:
                assert geometry is not None
                weight, bias = params.get("weight", module.weight), params.get("bias", module.bias)
                out = conv_forward(inp, weight, bias, geometry)
            else:
                out = functional_forward(module, params, inp)
            inputs.append(inp)
            z = out if z is None else z + out
        assert z is not None
        scaled = stabilised_divide(relevance, z, epsilon)
        if geometry is not None:
            # J_i^T of a convolution with a cheaper second derivative than autograd's
            with torch.set_grad_enabled(create_graph):
                grads = [
                    conv_input_gradient(scaled, inp, params.get("weight", module.weight), geometry)
                    for inp, params in zip(inputs, weights)
                ]
        else:
            grads = torch.autograd.grad(
                z, inputs, scaled, create_graph=create_graph, retain_graph=create_graph
            )
    with torch.set_grad_enabled(create_graph):
        result = inputs[0] * grads[0]
        if len(inputs) == 2:
            result = result + inputs[1] * grads[1]
        return result


def basic_rule_relevance(
    rule: BasicHook,
    module: nn.Module,
    x: Tensor,
    relevance: Tensor,
    create_graph: bool,
    output: Tensor | None = None,
    recipes: WeightRecipes | None = None,
) -> Tensor:
    """Input relevance of a zennit ``BasicHook`` rule, differentiable when ``create_graph``.

    Same computation as ``zennit.core.BasicHook.backward``::

        z_i   = out_mod_i(layer(in_mod_i(x); param_mod_i(theta)))
        g_i   = gradient_mapper(R_out, [z_1..z_n])_i
        R_in  = reducer([in_mod_i(x)], [J_i^T g_i])

    but with live parameters and the caller's ``create_graph``. Two shortcuts
    give the same values with less work:

    * a term whose modified input is identically zero and whose modified layer
      has no bias has ``z_i = 0`` and contributes nothing to ``R_in``: its layer
      is not evaluated (the negative-input terms of z+, gamma and alpha-beta on
      the non-negative outputs of a ReLU);
    * a term with unmodified input and parameters is the forward output
      ``output`` itself and is not recomputed.

    zennit's ``ZPlus`` in its default form goes to :func:`zplus_relevance`.
    """
    epsilon = plain_zplus(rule)
    if epsilon is not None:
        return zplus_relevance(rule, epsilon, module, x, relevance, create_graph, recipes)
    with torch.enable_grad():
        inputs, outputs, live, weights = [], [], [], []
        for in_mod, param_mod, out_mod in zip(
            rule.input_modifiers, rule.param_modifiers, rule.output_modifiers
        ):
            inp = in_mod(x)
            if (
                output is not None
                and inp is x
                and _is_unmodified(param_mod)
                and x.requires_grad
                and all(i is not x for i in inputs)
            ):
                inputs.append(x)
                outputs.append(out_mod(output))
                live.append(True)
                continue
            if _zeroes_bias(param_mod, module) and not bool(inp.any()):
                inputs.append(torch.zeros_like(inp))
                outputs.append(None)
                live.append(False)
                continue
            # a distinct node per modified input, as zennit computes one gradient per input
            inp = inp.view_as(inp) if inp.requires_grad else inp.detach().requires_grad_(True)
            params = modified_parameters(param_mod, module, recipes)
            weights.append(params)  # alive until the inner backward: see WeightRecipes
            out = out_mod(functional_forward(module, params, inp))
            inputs.append(inp)
            outputs.append(out)
            live.append(True)
        reference = next(o for o in outputs if o is not None)
        outputs = [torch.zeros_like(reference) if o is None else o for o in outputs]
        grad_outputs = rule.gradient_mapper(relevance, outputs)
        if isinstance(grad_outputs, Tensor):
            grad_outputs = [grad_outputs]
        grad_outputs = list(grad_outputs)
        kept = [i for i, flag in enumerate(live) if flag]
        grads = torch.autograd.grad(
            [outputs[i] for i in kept],
            [inputs[i] for i in kept],
            grad_outputs=[grad_outputs[i] for i in kept],
            create_graph=create_graph,
            retain_graph=True,  # a reused forward output's graph is still needed afterwards
            allow_unused=True,
        )
        full: list[Tensor] = [torch.zeros_like(i) for i in inputs]
        for i, g in zip(kept, grads):
            if g is not None:
                full[i] = g
    # without create_graph the reduction is not recorded (detach() has no batching rule for
    # the vectorised multi-class backward, so the graph is simply not built)
    with torch.set_grad_enabled(create_graph):
        return rule.reducer(inputs, full)
