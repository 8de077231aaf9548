"""BatchNorm that no canonizer merged (DenseNet's BatchNorm *before* its convolution).

A BatchNorm in eval mode is an affine map per channel, ``y = a x + c`` with
``a = g / sqrt(v + eps_bn)`` and ``c = beta - m a``: a linear layer with a
diagonal weight. Where it directly follows a convolution or linear layer the
canonizer merges it into that layer (Montavon et al. 2019, sec. 10.3.1).
Elsewhere (DenseNet: BatchNorm, ReLU, then the convolution) it gets the
epsilon rule of a linear layer (Bach et al. 2015, eq. 58; Montavon et al.
2019, eq. 4), with the diagonal weight::

    R_x = a x / (a x + c + eps * sign(a x + c)) * R_y

so relevance is conserved up to what the shift ``c`` absorbs, like a bias.
zennit's composites map BatchNorm to ``Pass``, which would hand relevance
through the scaling and shift unchanged; that choice is replaced here.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from zennit.rules import Epsilon, Pass

from ..canonizers import _identity
from ..division import plain_epsilon
from ..gates import rule_kind
from ..registry import register_rule

#: the epsilon when the composite's dense-layer rule has none
DEFAULT_EPSILON = 1e-6


@register_rule(nn.modules.batchnorm._BatchNorm)
def batchnorm_rule(module: nn.Module, rule: object | None, composite: Any) -> object | None:
    """No rule for a merged BatchNorm (it computes the identity); epsilon for an unmerged one.

    The epsilon is that of the composite's rule for dense layers when it is
    an epsilon rule, else :data:`DEFAULT_EPSILON`.
    """
    if module.__dict__.get("forward") is _identity:
        return None
    if rule is not None and type(rule) is not Pass:
        return rule
    dense = composite.module_map({}, "<batchnorm epsilon>", nn.Linear(1, 1))
    epsilon = None
    if dense is not None and rule_kind(dense) == "gradient":
        epsilon = plain_epsilon(dense)
    return Epsilon(epsilon=DEFAULT_EPSILON if epsilon is None else epsilon)
