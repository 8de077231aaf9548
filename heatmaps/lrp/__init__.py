"""Layer-wise relevance propagation on zennit, exactly differentiable.

The package is split like zennit itself:

* :mod:`.composites` - composites by name (the ``"epsilon"`` composite of the
  segmentation paper plus zennit's built-ins);
* :mod:`.canonizers` - canonizers chosen per architecture, with BatchNorm merged
  *functionally* (no parameter is written);
* :mod:`.gates` - the autograd functions that turn zennit rules into exactly
  differentiable backward passes;
* :mod:`.basic_rules` - the relevance of rules with modified parameters (z+,
  gamma, alpha-beta, ...) from live parameters;
* :mod:`.division`, :mod:`.conv_relevance` - the stabilised division and a
  convolution's input gradient, with cheap derivatives;
* :mod:`.saved_weights` - computed weights saved as recipes, not kept;
* :mod:`.coverage` - which layers the rules cover, and the refusal of
  train-mode BatchNorm;
* :mod:`.heatmap` - :class:`LRPHeatmap`, the backend.
"""

from .canonizers import FunctionalMergeBatchNorm, auto_canonizers
from .composites import COMPOSITES, EpsilonComposite, make_composite
from .heatmap import LRPHeatmap

__all__ = [
    "COMPOSITES",
    "EpsilonComposite",
    "FunctionalMergeBatchNorm",
    "LRPHeatmap",
    "auto_canonizers",
    "make_composite",
]
