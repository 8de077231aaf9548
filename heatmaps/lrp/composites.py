"""Composites by name.

A composite maps every layer of a model to a zennit rule. zennit ships the
mixed composites; the segmentation paper (Yu et al.) uses the plain epsilon
rule on every layer, which zennit 0.5 has no composite for, so it is defined
here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from zennit import composites as zc
from zennit.core import Composite
from zennit.rules import Epsilon
from zennit.types import Convolution


class EpsilonComposite(zc.LayerMapComposite):
    """LRP-epsilon on every convolution and linear layer.

    Rule (Bach et al. 2015, eq. 58; Montavon et al. 2019, sec. 10.2.2):
    ``R_i = sum_j x_i w_ij / (z_j + eps * sign(z_j)) * R_j`` with
    ``z_j = sum_i x_i w_ij + b_j``. Activations pass relevance, sums and average
    pools use the stabilised normalisation rule, exactly as in zennit's other
    composites (``layer_map_base``).

    Args:
        epsilon: stabiliser of the linear layers (Yu et al. use 1e-8).
        stabilizer: stabiliser of the normalisation rule on sums and pools.
        canonizers: zennit canonizers (usually left to :class:`LRPHeatmap`).
    """

    def __init__(
        self,
        epsilon: float = 1e-6,
        stabilizer: float = 1e-6,
        layer_map: list | None = None,
        zero_params: list[str] | None = None,
        canonizers: list | None = None,
    ) -> None:
        layer_map = (
            list(layer_map or [])
            + zc.layer_map_base(stabilizer)
            + [
                (Convolution, Epsilon(epsilon=epsilon, zero_params=zero_params)),
                (torch.nn.Linear, Epsilon(epsilon=epsilon, zero_params=zero_params)),
            ]
        )
        super().__init__(layer_map=layer_map, canonizers=canonizers)


#: composite factories by name; each accepts the composite's keyword arguments
COMPOSITES: dict[str, Callable[..., Composite]] = {
    "epsilon": EpsilonComposite,
    "epsilon_plus": zc.EpsilonPlus,
    "epsilon_plus_flat": zc.EpsilonPlusFlat,
    "epsilon_gamma_box": zc.EpsilonGammaBox,
    "epsilon_alpha2_beta1": zc.EpsilonAlpha2Beta1,
    "epsilon_alpha2_beta1_flat": zc.EpsilonAlpha2Beta1Flat,
}


def make_composite(composite: str | Composite, **kwargs: Any) -> Composite:
    """Return a zennit composite from a name in :data:`COMPOSITES` or an instance.

    ``epsilon_gamma_box`` needs the input range: ``low`` and ``high`` default
    to 0 and 1 (images scaled to [0, 1]).
    """
    if isinstance(composite, Composite):
        if kwargs:
            raise ValueError("composite: keyword arguments only apply to a composite given by name")
        return composite
    if not isinstance(composite, str):
        raise TypeError(
            f"composite: expected a name or a zennit Composite, got {type(composite).__name__}"
        )
    if composite not in COMPOSITES:
        raise ValueError(
            f"composite: unknown name {composite!r}; available: {', '.join(sorted(COMPOSITES))}"
        )
    if composite == "epsilon_gamma_box":
        kwargs.setdefault("low", 0.0)
        kwargs.setdefault("high", 1.0)
    return COMPOSITES[composite](**kwargs)
