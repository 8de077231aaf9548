"""heatmaps.viz: shapes, ranges, colour conventions and atomic saving."""

from __future__ import annotations

import matplotlib.image
import pytest
import torch
from matplotlib.figure import Figure

from heatmaps.labels import IGNORE_INDEX
from heatmaps.viz import (
    class_legend,
    class_palette,
    heatmap_grid,
    label_overlay,
    legend_handles,
    overlay,
    save_figure,
)


def grey_image(size=6):
    return torch.full((3, size, size), 0.5)


@pytest.mark.parametrize("kind", ["signed", "positive"])
def test_overlay_shape_range_and_no_side_effects(kind):
    image = torch.rand(3, 5, 7)
    heatmap = torch.randn(5, 7, requires_grad=True)
    out = overlay(image, heatmap, kind=kind)
    assert out.shape == (3, 5, 7) and out.dtype == torch.float32
    assert 0 <= out.min() and out.max() <= 1
    assert heatmap.grad is None and not out.requires_grad


def test_signed_overlay_positive_is_red_negative_is_blue():
    heatmap = torch.zeros(6, 6)
    heatmap[1, 1] = 2.0
    heatmap[4, 4] = -1.0
    out = overlay(grey_image(), heatmap, kind="signed")
    red, blue = 0, 2
    assert out[red, 1, 1] > out[blue, 1, 1]
    assert out[blue, 4, 4] > out[red, 4, 4]
    # zero relevance leaves the image untouched
    assert torch.allclose(out[:, 0, 0], torch.full((3,), 0.5))
    # stronger relevance, stronger colour
    assert out[red, 1, 1] - out[blue, 1, 1] > out[blue, 4, 4] - out[red, 4, 4]


def test_signed_overlay_is_scale_invariant_and_handles_zero_maps():
    heatmap = torch.randn(6, 6)
    assert torch.allclose(overlay(grey_image(), heatmap), overlay(grey_image(), 10 * heatmap))
    assert torch.equal(overlay(grey_image(), torch.zeros(6, 6)), grey_image())


def test_positive_overlay_ignores_negative_values_and_accepts_grey_images():
    heatmap = torch.zeros(6, 6)
    heatmap[2, 2] = 1.0
    image = torch.full((1, 6, 6), 0.5)
    out = overlay(image, heatmap, kind="positive", alpha=1.0)
    assert out.shape == (3, 6, 6)
    # jet: maximum is dark red, zero is dark blue
    assert out[0, 2, 2] > out[2, 2, 2] and out[2, 0, 0] > out[0, 0, 0]
    negative = heatmap.clone()
    negative[0, 0] = -5.0
    assert torch.equal(
        overlay(image, negative, kind="positive"), overlay(image, heatmap, "positive")
    )


def test_overlay_rejects_bad_input():
    with pytest.raises(ValueError, match="heatmap"):
        overlay(grey_image(), torch.zeros(5, 6))
    with pytest.raises(ValueError, match="kind"):
        overlay(grey_image(), torch.zeros(6, 6), kind="jet")
    with pytest.raises(ValueError, match="image"):
        overlay(torch.zeros(2, 6, 6), torch.zeros(6, 6))


def test_heatmap_grid_has_one_row_per_image_and_image_plus_map_columns():
    images, maps = torch.rand(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    figure = heatmap_grid(
        images, maps, row_labels=["a", "b"], col_labels=["x", "y", "z"], title="grid"
    )
    assert isinstance(figure, Figure)
    assert len(figure.axes) == 2 * (3 + 1)
    assert [ax.get_title() for ax in figure.axes[:4]] == ["image", "x", "y", "z"]
    assert figure.axes[4].get_ylabel() == "b"
    with pytest.raises(ValueError, match="col_labels"):
        heatmap_grid(images, maps, col_labels=["x"])


def test_label_overlay_palette_background_and_ignore():
    image = grey_image(4)
    labels = torch.zeros(4, 4, dtype=torch.long)
    labels[0, 0] = 1
    labels[1, 1] = 2
    labels[3, 3] = 255
    out = label_overlay(image, labels, num_classes=2, alpha=1.0)
    palette = class_palette(2)
    assert out.shape == (3, 4, 4) and 0 <= out.min() and out.max() <= 1
    assert torch.allclose(out[:, 0, 0], palette[1]) and torch.allclose(out[:, 1, 1], palette[2])
    assert torch.allclose(out[:, 2, 2], image[:, 2, 2])  # background transparent
    assert torch.allclose(out[:, 3, 3], torch.ones(3))  # ignored shown white
    assert not torch.allclose(palette[1], palette[2])
    with pytest.raises(ValueError, match="labels must lie"):
        label_overlay(image, torch.full((4, 4), 3), num_classes=2)


def test_class_palette_is_fixed_and_distinct():
    palette = class_palette(20)
    assert palette.shape == (21, 3)
    assert torch.equal(palette, class_palette(20))
    assert len({tuple(row.tolist()) for row in palette}) == 21


def _rgb(patch):
    return torch.tensor(patch.get_facecolor()[:3], dtype=torch.float32)


def test_class_legend_names_the_palette_colours_background_first(tmp_path):
    names = ["cat", "dog", "car"]
    figure = Figure()
    axis = figure.subplots()
    legend = class_legend(axis, names, loc="upper right")
    assert axis.get_legend() is legend
    assert [t.get_text() for t in legend.get_texts()] == ["background", *names]
    colours = torch.stack([_rgb(h) for h in legend.legend_handles])
    assert torch.equal(colours, class_palette(len(names)))
    save_figure(figure, tmp_path / "legend.png")  # it renders


def test_class_legend_of_the_labels_present_in_a_label_map():
    names = ["cat", "dog", "car"]
    label_map = torch.tensor([[0, 3], [3, IGNORE_INDEX]])
    handles = legend_handles(names, present=label_map.unique(), background="bg")
    assert [h.get_label() for h in handles] == ["bg", "car", "unlabelled"]
    palette = class_palette(len(names))
    assert torch.equal(_rgb(handles[0]), palette[0]) and torch.equal(_rgb(handles[1]), palette[3])
    # white, as label_overlay blends unlabelled pixels
    assert torch.equal(_rgb(handles[2]), torch.ones(3))
    figure = Figure()
    legend = class_legend(figure, names, present=[2, 1])  # a figure legend, sorted by label
    assert [t.get_text() for t in legend.get_texts()] == ["cat", "dog"]
    with pytest.raises(ValueError, match="present: label 4"):
        legend_handles(names, present=[4])


def test_save_figure_writes_a_readable_png_atomically(tmp_path):
    figure = heatmap_grid(torch.rand(1, 3, 8, 8), torch.randn(1, 2, 8, 8))
    target = tmp_path / "nested" / "grid.png"
    written = save_figure(figure, target)
    assert written == target and target.is_file()
    pixels = matplotlib.image.imread(target)
    assert pixels.ndim == 3 and pixels.shape[0] > 0
    assert [p.name for p in target.parent.iterdir()] == ["grid.png"]  # no temporary left
    save_figure(figure, target)  # overwriting works
    assert target.is_file()
