"""Backends by name, and third-party backends from the entry-point group."""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap

import pytest
import torch

import heatmaps
from heatmaps import registry

BUILTIN = {
    "gradcam",
    "input_x_gradient",
    "integrated_gradients",
    "lrp",
    "saliency",
    "smoothgrad",
}
CLASSES = {
    "lrp": heatmaps.LRPHeatmap,
    "gradcam": heatmaps.GradCAMHeatmap,
    "saliency": heatmaps.SaliencyHeatmap,
    "input_x_gradient": heatmaps.InputXGradientHeatmap,
    "integrated_gradients": heatmaps.IntegratedGradientsHeatmap,
    "smoothgrad": heatmaps.SmoothGradHeatmap,
    "explainer": heatmaps.ExplainerHeatmap,
}


@pytest.fixture(autouse=True)
def isolated_registry(monkeypatch):
    """Every test here sees the registry as the package left it, and leaves nothing behind."""
    monkeypatch.setattr(registry, "_BACKENDS", dict(registry._BACKENDS))
    before = set(registry._BACKENDS)
    yield
    # the tests clean up after themselves (the copy above only keeps a failed one from
    # leaking into other test files)
    assert set(registry._BACKENDS) == before, "a test left a backend registered"


def _constant_maps(self, x, logits, index, create_graph):
    ones = x.new_ones(x.shape[0], index.shape[1], *x.shape[-2:])
    return ones * logits.gather(1, index)[..., None, None]


def test_builtin_classes_register_under_their_own_names():
    for name, cls in CLASSES.items():
        assert cls.__dict__["name"] == name
        assert registry._BACKENDS[name] is cls
    assert set(CLASSES) <= set(heatmaps.available())


def test_importing_heatmaps_registers_every_builtin():
    code = "import heatmaps; print(','.join(heatmaps.available()))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert set(CLASSES) <= set(out.strip().split(","))


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
    try:
        assert "constant" in heatmaps.available()
        heatmap = heatmaps.get("constant", small_model)
        out = heatmap.explain(small_input, 2)
        assert torch.allclose(out.maps[:, 0, 0, 0], out.logits[:, 2])
        # loading the entry point defined the class, which declared its name
        assert registry._BACKENDS["constant"] is type(heatmap)
    finally:
        sys.modules.pop("toy_backend", None)
        registry._BACKENDS.pop("constant", None)


def test_register_at_run_time(small_model):
    heatmaps.register("my_lrp", lambda model, **kw: heatmaps.LRPHeatmap(model, "epsilon", **kw))
    assert "my_lrp" in heatmaps.available()
    assert isinstance(heatmaps.get("my_lrp", small_model), heatmaps.LRPHeatmap)
    heatmaps.unregister("my_lrp")
    assert "my_lrp" not in heatmaps.available()
    with pytest.raises(TypeError):
        heatmaps.register("broken", 3)
    assert "broken" not in heatmaps.available()


def test_a_subclass_with_a_name_registers_itself_and_can_be_removed(small_model, small_input):
    class ConstantHeatmap(heatmaps.Heatmap):
        name = "constant_in_a_test"
        _attribute = _constant_maps

    try:
        assert "constant_in_a_test" in heatmaps.available()
        heatmap = heatmaps.get("constant_in_a_test", small_model)
        assert type(heatmap) is ConstantHeatmap
        out = heatmap.explain(small_input, 1)
        assert torch.equal(out.maps[:, 0, 0, 0], out.logits[:, 1].detach())
    finally:
        assert heatmaps.unregister("constant_in_a_test") is ConstantHeatmap
    assert "constant_in_a_test" not in heatmaps.available()
    with pytest.raises(ValueError, match="unknown backend 'constant_in_a_test'"):
        heatmaps.get("constant_in_a_test", small_model)
    with pytest.raises(KeyError, match="constant_in_a_test"):
        heatmaps.unregister("constant_in_a_test")


def test_subclasses_without_a_name_of_their_own_do_not_register():
    before = dict(registry._BACKENDS)

    class Intermediate(heatmaps.Heatmap):  # no name: an abstract helper
        pass

    class Variant(heatmaps.LRPHeatmap):  # inherits "lrp", does not take it over
        pass

    class OptedOut(heatmaps.Heatmap, register=False):
        name = "opted_out"

    assert registry._BACKENDS == before
    assert registry._BACKENDS["lrp"] is heatmaps.LRPHeatmap
    assert "opted_out" not in heatmaps.available()


def test_a_second_class_cannot_take_a_declared_name():
    with pytest.raises(ValueError, match="'lrp'.*LRPHeatmap already holds.*heatmaps.register"):

        class MyLRP(heatmaps.LRPHeatmap):
            name = "lrp"

    assert registry._BACKENDS["lrp"] is heatmaps.LRPHeatmap

    def define():
        class Twice(heatmaps.Heatmap):
            name = "twice_in_a_test"

        return Twice

    first = define()
    try:
        # the same class defined again (module reload, re-run notebook cell) replaces itself
        second = define()
        assert second is not first and registry._BACKENDS["twice_in_a_test"] is second
        with pytest.raises(ValueError, match="'twice_in_a_test'.*already holds"):

            class Other(heatmaps.Heatmap):
                name = "twice_in_a_test"

        assert registry._BACKENDS["twice_in_a_test"] is second
    finally:
        heatmaps.unregister("twice_in_a_test")


def test_register_replaces_and_unregister_returns_what_it_removed(small_model):
    heatmaps.register("lrp", heatmaps.GradCAMHeatmap)  # explicit: replaces the built-in
    try:
        assert isinstance(heatmaps.get("lrp", small_model), heatmaps.GradCAMHeatmap)
    finally:
        heatmaps.register("lrp", heatmaps.LRPHeatmap)
    assert isinstance(heatmaps.get("lrp", small_model), heatmaps.LRPHeatmap)
    removed = heatmaps.unregister("gradcam")
    try:
        assert removed is heatmaps.GradCAMHeatmap and "gradcam" not in heatmaps.available()
    finally:
        heatmaps.register("gradcam", removed)
    with pytest.raises(TypeError, match="non-empty str"):
        heatmaps.register("", heatmaps.LRPHeatmap)


def test_a_factory_must_return_a_heatmap(small_model):
    heatmaps.register("not_a_heatmap", lambda model: model)
    try:
        with pytest.raises(TypeError, match="did not return a heatmaps.Heatmap"):
            heatmaps.get("not_a_heatmap", small_model)
    finally:
        heatmaps.unregister("not_a_heatmap")
