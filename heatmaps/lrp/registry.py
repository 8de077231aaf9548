"""One registry for LRP: which gates a (rule, layer) pair gets, and rules for layers and functions.

zennit attaches a rule to a layer by the rule's own hook; here a rule's
relevance is computed by *gates* (:mod:`heatmaps.lrp.gates`), and which gates
a layer gets depends on the kind of its rule and on the layer's type. Three
tables, each filled by the small files of :mod:`heatmaps.lrp.rules` (one file
per layer rule, found automatically):

* :func:`register_gates` - ``(rule kind or rule class, module type) ->`` the
  function that attaches the gates (forward hooks) for one call. Looked up by
  the rule (its class, then its kind: ``"pass"``, ``"gradient"``, ``"basic"``,
  see :func:`heatmaps.lrp.gates.rule_kind`) and the module's class hierarchy,
  most specific first.
* :func:`register_rule` - ``module type ->`` a function choosing the rule of
  such a module from the composite's choice (a default for layers the
  composites do not map, a correction where their choice is wrong, or a
  :class:`Refusal`).
* :func:`register_functional` - ``torch function ->`` its LRP treatment when a
  module's ``forward`` calls it directly (``x + y``, ``x * gate``,
  ``x.mean(...)``), used by :mod:`heatmaps.lrp.functional`.

A rule for a new layer type is therefore one file in ``heatmaps/lrp/rules/``
with its ``@register_gates`` (and, where the composites do not map the layer,
``@register_rule``) function, plus its test.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from torch import nn

#: attaches the gates of ``rule`` around ``module`` for one call; returns the hook handles
GateAttacher = Callable[[nn.Module, object, Any], list[Any]]
#: ``(module, rule chosen by the composite or None, composite) -> rule, None or Refusal``
RuleChooser = Callable[[nn.Module, object | None, Any], object | None]

_GATES: dict[tuple[object, type], GateAttacher] = {}
_RULES: dict[type, RuleChooser] = {}
_FUNCTIONAL: dict[object, Any] = {}
_loaded = False


@dataclass(frozen=True)
class Refusal:
    """The rule of a layer LRP cannot handle: the reason is reported by the coverage check."""

    reason: str


def register_gates(kind: str | type, module_type: type) -> Callable[[GateAttacher], GateAttacher]:
    """Register the gate attacher for rules of ``kind`` (a kind name or a rule class) on ``module_type``."""

    def decorate(attach: GateAttacher) -> GateAttacher:
        _GATES[(kind, module_type)] = attach
        return attach

    return decorate


def register_rule(*module_types: type) -> Callable[[RuleChooser], RuleChooser]:
    """Register the function that chooses the rule for modules of ``module_types``."""

    def decorate(choose: RuleChooser) -> RuleChooser:
        for module_type in module_types:
            _RULES[module_type] = choose
        return choose

    return decorate


def register_functional(funcs: Iterable[object], treatment: Any) -> None:
    """Register the LRP treatment of torch functions called directly in ``forward`` code."""
    for func in funcs:
        _FUNCTIONAL[func] = treatment


def _load_rules() -> None:
    """Import every module of :mod:`heatmaps.lrp.rules` once (they register themselves)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    from . import rules

    for info in pkgutil.iter_modules(rules.__path__):
        importlib.import_module(f"{rules.__name__}.{info.name}")


def gate_attacher(module: nn.Module, rule: object, kind: str) -> GateAttacher:
    """The attacher for ``rule`` (of kind ``kind``) on ``module``: rule class first, then kind.

    Raises:
        TypeError: no attacher is registered (cannot happen for the three kinds,
            which have attachers for ``nn.Module``).
    """
    _load_rules()
    for module_type in type(module).__mro__:
        for key in (*type(rule).__mro__[:-1], kind):
            attach = _GATES.get((key, module_type))
            if attach is not None:
                return attach
    raise TypeError(f"LRP: no gates for rule {type(rule).__name__} on {type(module).__name__}")


def choose_rule(module: nn.Module, rule: object | None, composite: Any) -> object | None:
    """The rule for ``module`` given the composite's ``rule``: a registered chooser may change it."""
    _load_rules()
    for module_type in type(module).__mro__:
        choose = _RULES.get(module_type)
        if choose is not None:
            return choose(module, rule, composite)
    return rule


def functional_treatment(func: object) -> Any:
    """The registered treatment of the torch function ``func``, or ``None``."""
    _load_rules()
    return _FUNCTIONAL.get(func)


__all__ = [
    "GateAttacher",
    "Refusal",
    "RuleChooser",
    "choose_rule",
    "functional_treatment",
    "gate_attacher",
    "register_functional",
    "register_gates",
    "register_rule",
]
