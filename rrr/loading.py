"""Rebuilding a trained segmenter from its checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .checkpoint import CheckpointError, load_checkpoint
from .config import ConfigError, RunConfig
from .segmenters import Segmenter, build_segmenter


def load_trained(path: str | Path, device: torch.device) -> tuple[Segmenter, dict[str, Any]]:
    """The segmenter of a checkpoint (in eval mode) and the checkpoint's state.

    The architecture comes from the saved configuration; weights come from the
    checkpoint only (``--weights`` of the run is not consulted, nothing downloads).
    ``state["run_config"]`` is the saved configuration as a :class:`RunConfig`.
    """
    state = load_checkpoint(path, map_location=device)
    try:
        config = RunConfig.from_dict(state["config"]).replace(weights="none")
    except (ConfigError, TypeError) as error:
        raise CheckpointError(f"checkpoint {path}: {error}") from None
    try:
        model = build_segmenter(config, state["num_classes"])
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError) as error:
        reason = str(error).splitlines()[0]
        raise CheckpointError(
            f"checkpoint {path}: weights do not fit its configuration ({reason})"
        ) from None
    state["run_config"] = config
    return model.to(device).eval(), state
