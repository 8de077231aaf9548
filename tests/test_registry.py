"""Backends by name, and third-party backends from the entry-point group."""

from __future__ import annotations

import importlib
import sys
import textwrap

import pytest
import torch

import heatmaps

BUILTIN = {
    "gradcam",
    "input_x_gradient",
    "integrated_gradients",
    "lrp",
    "saliency",
    "smoothgrad",
}


def test_builtins_available_and_constructible(small_model, small_input):
    assert BUILTIN <= set(heatmaps.available())
    for name in BUILTIN:
        heatmap = heatmaps.get(name, small_model)
        assert isinstance(heatmap, heatmaps.Heatmap)
        assert heatmap(small_input, 0).shape == (2, 1, 8, 8)
    lrp = heatmaps.get("lrp", small_model, composite="epsilon", epsilon=1e-8)
    assert lrp.composite_name == "epsilon"


def test_unknown_backend_lists_the_available_ones(small_model):
    with pytest.raises(ValueError, match="unknown backend 'nope'.*lrp"):
        heatmaps.get("nope", small_model)


def test_entry_point_backend_from_a_test_package(tmp_path, monkeypatch, small_model, small_input):
    package = tmp_path / "toy_backend"
    package.mkdir()
    (package / "__init__.py").write_text(
        textwrap.dedent(
            """
            import torch
            from heatmaps import Heatmap

            class ConstantHeatmap(Heatmap):
                name = "constant"

                def _attribute(self, x, logits, index, create_graph):
                    ones = x.new_ones(x.shape[0], index.shape[1], *x.shape[-2:])
                    return ones * logits.gather(1, index)[..., None, None]
            """
        )
    )
    dist = tmp_path / "toy_backend-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-backend\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[heatmaps.backends]\nconstant = toy_backend:ConstantHeatmap\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    assert "constant" in heatmaps.available()
    heatmap = heatmaps.get("constant", small_model)
    out = heatmap.explain(small_input, 2)
    assert torch.allclose(out.maps[:, 0, 0, 0], out.logits[:, 2])
    sys.modules.pop("toy_backend", None)


def test_register_at_run_time(small_model):
    heatmaps.register("my_lrp", lambda model, **kw: heatmaps.LRPHeatmap(model, "epsilon", **kw))
    assert "my_lrp" in heatmaps.available()
    assert isinstance(heatmaps.get("my_lrp", small_model), heatmaps.LRPHeatmap)
    with pytest.raises(TypeError):
        heatmaps.register("broken", 3)
