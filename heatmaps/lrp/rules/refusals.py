"""Layers LRP refuses by name, until they have rules of their own.

LayerNorm and attention need the AttnLRP rules (Achtibat et al., ICML 2024:
LayerNorm's division by the standard deviation treated as a constant, the
softmax as a linearised gate, the bilinear query-key and attention-value
products split uniformly), which are not implemented here. zennit's
composites map ``MultiheadAttention`` with the activations (``Pass``), which
is wrong; it is refused here. LayerNorm has parameters and no rule, so the
coverage check refuses it already (:mod:`heatmaps.lrp.coverage`).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..registry import Refusal, register_rule

ATTENTION = Refusal("attention block: no AttnLRP rule for attention yet")


@register_rule(nn.MultiheadAttention)
def attention_rule(module: nn.Module, rule: object | None, composite: Any) -> object | None:
    """Refuse attention (softmax and bilinear products have no rule here)."""
    return ATTENTION
