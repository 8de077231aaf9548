"""Every targets form gives the documented shape; bad input is named in the error.

tests/test_bad_inputs_library.py lists every bad library input (these target
cases included) with the one-line message it must give, over every backend.
"""

from __future__ import annotations

import pytest
import torch
from backends import BACKENDS
from torch import nn

import heatmaps
from heatmaps.targets import resolve_targets


@pytest.fixture
def heatmap(small_model):
    return heatmaps.LRPHeatmap(small_model, composite="epsilon")


@pytest.mark.parametrize(
    "targets, k",
    [
        (None, 1),
        (3, 1),
        (torch.tensor([0, 4]), 1),
        (torch.tensor([[0, 1, 2], [4, 4, 3]]), 3),
        ("all", 5),
        (torch.tensor([[True, False, True, False, False], [False] * 5]), 5),
    ],
)
def test_target_forms_give_documented_shapes(heatmap, small_input, targets, k):
    out = heatmap.explain(small_input, targets)
    assert out.maps.shape == (2, k, 8, 8)
    assert out.targets.shape == (2, k)
    assert out.logits.shape == (2, 5)


def test_none_is_the_predicted_class(heatmap, small_input):
    out = heatmap.explain(small_input)
    assert torch.equal(out.targets[:, 0], out.logits.argmax(1))


def test_multi_hot_zero_for_absent_and_equal_for_present(heatmap, small_input):
    multi_hot = torch.tensor(
        [[True, False, True, False, False], [False, False, False, False, True]]
    )
    maps = heatmap(small_input, multi_hot)
    every = heatmap(small_input, "all")
    assert torch.equal(maps[~multi_hot], torch.zeros_like(maps[~multi_hot]))
    assert torch.allclose(maps[multi_hot], every[multi_hot], rtol=1e-10, atol=1e-12)


def test_multi_hot_computes_only_present_classes(small_model, small_input):
    calls = []
    heatmap = heatmaps.LRPHeatmap(small_model, composite="epsilon")
    original = heatmap._attribute

    def spy(x, logits, index, create_graph):
        calls.append(index.shape[1])
        return original(x, logits, index, create_graph)

    heatmap._attribute = spy
    multi_hot = torch.zeros(2, 5, dtype=torch.bool)
    multi_hot[0, [1, 2]] = True
    multi_hot[1, 4] = True
    heatmap(small_input, multi_hot)
    assert calls == [2]  # not 5


def test_a_callable_chooses_from_the_same_forward_pass(small_model, small_input):
    """``lambda z: z > t``: the classes whose logit clears t, one forward pass, the same maps."""
    heatmap = heatmaps.LRPHeatmap(small_model, composite="epsilon")
    heatmap(small_input, 0)  # the first call also runs LRP's one-time probe of functional ops
    forwards = []
    handle = small_model.register_forward_hook(lambda *_: forwards.append(1))
    try:
        out = heatmap.explain(small_input, lambda z: z > z.median())
    finally:
        handle.remove()
    assert len(forwards) == 1
    chosen = out.logits > out.logits.median()
    assert torch.equal(out.active, chosen)
    assert torch.equal(out.maps, heatmap(small_input, chosen))
    with pytest.raises(TypeError, match="not another callable"):
        heatmap(small_input, lambda z: lambda w: w)


@pytest.mark.parametrize(
    "targets, error, message",
    [
        (5, ValueError, "out of range"),
        (-1, ValueError, "out of range"),
        (torch.tensor([0, 1, 2]), ValueError, "one class per sample"),
        (torch.tensor([[0], [9]]), ValueError, "out of range"),
        (torch.zeros(2, 0, dtype=torch.long), ValueError, "K >= 1"),
        (torch.zeros(2, 1, 1, dtype=torch.long), ValueError, "3 dimensions"),
        (torch.zeros(2, 4, dtype=torch.bool), ValueError, "multi-hot"),
        (torch.tensor([0.0, 1.0]), TypeError, "integer tensor"),
        ("some", ValueError, "unknown string"),
        ([0, 1], TypeError, "expected None"),
        (True, TypeError, "bool"),
    ],
)
def test_malformed_targets(heatmap, small_input, targets, error, message):
    with pytest.raises(error, match=message):
        heatmap(small_input, targets)


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_bad_inputs_are_named(backend, small_model):
    heatmap = BACKENDS[backend](small_model)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        heatmap(torch.rand(3, 8, 8, dtype=torch.float64))
    with pytest.raises(TypeError, match="floating-point"):
        heatmap(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(TypeError, match="torch.Tensor"):
        heatmap([[0.0]])


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_model_that_is_not_a_classifier(backend):
    segmenter = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.ReLU()).double()
    heatmap = BACKENDS[backend](segmenter)
    with pytest.raises((ValueError, TypeError), match=r"\(B, C\)"):
        heatmap(torch.rand(1, 3, 8, 8, dtype=torch.float64), 0)


def test_resolve_targets_directly():
    logits = torch.zeros(3, 4)
    assert resolve_targets(2, logits).index.tolist() == [[2], [2], [2]]
    assert resolve_targets("all", logits).index.shape == (3, 4)
    assert resolve_targets(torch.tensor(1), logits).index.tolist() == [[1], [1], [1]]


def test_unknown_composite_and_canonizers(small_model):
    with pytest.raises(ValueError, match="unknown name 'nope'"):
        heatmaps.LRPHeatmap(small_model, composite="nope")
    with pytest.raises(ValueError, match="canonizers"):
        heatmaps.LRPHeatmap(small_model, canonizers="sometimes")
    with pytest.raises(TypeError, match="Module"):
        heatmaps.LRPHeatmap("not a model")
