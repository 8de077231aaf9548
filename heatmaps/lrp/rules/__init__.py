"""LRP layer rules, one file each; every module here registers itself on import.

:func:`heatmaps.lrp.registry.gate_attacher` imports all of them (with
``pkgutil``), so a rule for a new layer type is a new file here (its
``@register_gates`` and, if the composites do not map the layer,
``@register_rule`` functions) plus its test; nothing else is edited.
"""
