"""Rebuilding a trained model from its checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import CheckpointError, load_checkpoint
from .models import build_segmenter


def load_trained(path: str | Path, device: torch.device) -> tuple[nn.Module, dict[str, Any]]:
    """The model of a checkpoint (in eval mode) and the checkpoint's state.

    The architecture comes from the saved configuration; weights come from the
    checkpoint only (``--weights`` of the run is not consulted, nothing downloads).
    """
    state = load_checkpoint(path, map_location=device)
    config = dict(state["config"], weights="none")
    try:
        model = build_segmenter(config, state["num_classes"])
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError) as error:
        raise CheckpointError(
            f"checkpoint {path}: weights do not fit its configuration ({error})"
        ) from None
    return model.to(device).eval(), state
