"""Overlays, grids and label maps for looking at heatmaps (matplotlib, headless-safe).

Everything here works on detached CPU copies of its inputs and returns either
a ``(3, H, W)`` float tensor in ``[0, 1]`` (for TensorBoard or
``torchvision.utils.save_image``) or a :class:`matplotlib.figure.Figure`
created without ``pyplot``, so no GUI backend and no global figure state is
involved. Save figures with :func:`save_figure`.

Colour conventions:

* label maps (:func:`label_overlay`): one fixed colour per class from
  :func:`class_palette`, the project's one class palette; :func:`class_legend`
  draws the matching legend of class names.

* ``kind="signed"`` (LRP, gradients): diverging ``bwr`` colormap symmetric
  around 0, scaled by the map's maximum absolute value; red = positive
  relevance (evidence for the class), blue = negative. The overlay strength
  grows with ``|relevance|``, so irrelevant pixels show the image unchanged.
* ``kind="positive"`` (Grad-CAM, masks): sequential ``jet`` colormap over
  ``[0, max]`` (negative values clipped to 0) blended at a constant ``alpha``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import matplotlib
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.legend import Legend
from matplotlib.patches import Patch
from torch import Tensor

from .labels import IGNORE_INDEX

__all__ = [
    "class_legend",
    "class_palette",
    "heatmap_grid",
    "label_overlay",
    "legend_handles",
    "overlay",
    "save_figure",
]

Kind = Literal["signed", "positive"]
_COLORMAPS = {"signed": "bwr", "positive": "jet"}


def _image_rgb(image: Tensor) -> Tensor:
    """A detached float CPU ``(3, H, W)`` copy of a 1- or 3-channel image, clipped to [0, 1]."""
    if image.dim() != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"image: expected (3, H, W) or (1, H, W), got {tuple(image.shape)}")
    image = image.detach().to("cpu", torch.float32).clamp(0, 1)
    return image.expand(3, -1, -1).clone()


def _colormap(name: str, values: Tensor) -> Tensor:
    """Apply a matplotlib colormap to values in [0, 1]: ``(H, W)`` -> ``(3, H, W)``."""
    rgba = matplotlib.colormaps[name](values.numpy())
    return torch.from_numpy(np.ascontiguousarray(rgba[..., :3])).permute(2, 0, 1).float()


def overlay(image: Tensor, heatmap: Tensor, kind: Kind = "signed", alpha: float = 0.5) -> Tensor:
    r"""Blend a heatmap over an image.

    ``signed``: :math:`v = h / \max|h|`, colour :math:`c = \mathrm{bwr}((v + 1)/2)`,
    weight :math:`w = \alpha |v|`. ``positive``: :math:`v = h^+ / \max h^+`,
    :math:`c = \mathrm{jet}(v)`, :math:`w = \alpha`. Output
    :math:`(1 - w)\,x + w\,c`. An all-zero map leaves the image unchanged
    (``signed``) or blends the colormap's zero colour (``positive``).

    Args:
        image: ``(3, H, W)`` (or ``(1, H, W)``) in ``[0, 1]``.
        heatmap: ``(H, W)`` (or ``(1, H, W)``), same size as the image.
        kind: ``"signed"`` or ``"positive"``.
        alpha: maximum weight of the colour.

    Returns:
        ``(3, H, W)`` float32 CPU tensor in ``[0, 1]``.
    """
    if kind not in _COLORMAPS:
        raise ValueError(f"kind: expected 'signed' or 'positive', got {kind!r}")
    rgb = _image_rgb(image)
    heatmap = heatmap.detach().to("cpu", torch.float32)
    if heatmap.dim() == 3 and heatmap.shape[0] == 1:
        heatmap = heatmap[0]
    if heatmap.shape != rgb.shape[1:]:
        raise ValueError(
            f"heatmap: expected shape {tuple(rgb.shape[1:])} to match the image, "
            f"got {tuple(heatmap.shape)}"
        )
    heatmap = torch.nan_to_num(heatmap)
    if kind == "signed":
        scale = heatmap.abs().max()
        values = heatmap / scale if scale > 0 else torch.zeros_like(heatmap)
        colour = _colormap(_COLORMAPS[kind], (values + 1) / 2)
        weight = alpha * values.abs()
    else:
        positive = heatmap.clamp(min=0)
        scale = positive.max()
        values = positive / scale if scale > 0 else positive
        colour = _colormap(_COLORMAPS[kind], values)
        weight = torch.full_like(values, alpha)
    return ((1 - weight) * rgb + weight * colour).clamp(0, 1)


def heatmap_grid(
    images: Tensor,
    maps: Tensor,
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    kind: Kind = "signed",
    title: str | None = None,
    alpha: float = 0.5,
    cell_size: float = 2.0,
) -> Figure:
    """A grid of overlays: one row per image, the image first, then one column per map.

    Args:
        images: ``(B, 3, H, W)`` in ``[0, 1]``.
        maps: ``(B, K, H, W)``.
        row_labels: ``B`` labels written left of the rows.
        col_labels: ``K`` labels (class names) for the map columns; the image
            column is titled "image".
        kind: colour convention of :func:`overlay`.
        title: figure title.
        alpha: passed to :func:`overlay`.
        cell_size: inches per cell.

    Returns:
        A :class:`matplotlib.figure.Figure` with ``B x (K + 1)`` axes.
    """
    if images.dim() != 4 or maps.dim() != 4 or images.shape[0] != maps.shape[0]:
        raise ValueError(
            "images and maps: expected (B, 3, H, W) and (B, K, H, W) with the same B, got "
            f"{tuple(images.shape)} and {tuple(maps.shape)}"
        )
    rows, classes = maps.shape[:2]
    if row_labels is not None and len(row_labels) != rows:
        raise ValueError(f"row_labels: expected {rows} labels, got {len(row_labels)}")
    if col_labels is not None and len(col_labels) != classes:
        raise ValueError(f"col_labels: expected {classes} labels, got {len(col_labels)}")
    figure = Figure(figsize=(cell_size * (classes + 1), cell_size * rows), layout="constrained")
    axes = figure.subplots(rows, classes + 1, squeeze=False)
    for row in range(rows):
        panels = [_image_rgb(images[row])]
        panels += [overlay(images[row], maps[row, k], kind, alpha) for k in range(classes)]
        for column, panel in enumerate(panels):
            axis = axes[row, column]
            axis.imshow(panel.permute(1, 2, 0).numpy(), interpolation="nearest")
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                names = ["image", *(col_labels or [f"map {k}" for k in range(classes)])]
                axis.set_title(str(names[column]), fontsize="small")
        if row_labels is not None:
            axes[row, 0].set_ylabel(str(row_labels[row]), fontsize="small")
    if title:
        figure.suptitle(title)
    return figure


def class_palette(num_classes: int) -> Tensor:
    """Fixed qualitative colours: ``(num_classes + 1, 3)`` in ``[0, 1]``; row 0 (background) black.

    Row ``c + 1`` is the colour of class ``c``, i.e. the palette is indexed by
    label-map value. Classes take the ``tab20``, ``tab20b`` and ``tab20c``
    colours in order (cycling after 60 classes), so a class keeps its colour
    across images, runs and tools: every class-coloured picture of the project
    uses this palette, and :func:`class_legend` names its colours.
    """
    colours = [
        matplotlib.colormaps[name].colors[i]
        for name in ("tab20", "tab20b", "tab20c")
        for i in range(20)
    ]
    rows = [(0.0, 0.0, 0.0)] + [colours[(c - 1) % len(colours)] for c in range(1, num_classes + 1)]
    return torch.tensor(rows, dtype=torch.float32)


def label_overlay(
    image: Tensor,
    label_map: Tensor,
    num_classes: int,
    alpha: float = 0.5,
    ignore_index: int = IGNORE_INDEX,
) -> Tensor:
    """Colour a ``(H, W)`` label map over an image.

    Label 0 (background) is transparent; labels ``1..num_classes`` get the
    :func:`class_palette` colours blended at ``alpha``; ``ignore_index`` pixels
    (unlabelled) are blended with white, so they stay distinguishable from
    background.

    Args:
        image: ``(3, H, W)`` (or ``(1, H, W)``) in ``[0, 1]``.
        label_map: ``(H, W)`` integer labels.
        num_classes: number of foreground classes C (labels ``0..C``).
        alpha: weight of the class colour.
        ignore_index: label of unlabelled pixels.

    Returns:
        ``(3, H, W)`` float32 CPU tensor in ``[0, 1]``.
    """
    rgb = _image_rgb(image)
    labels = label_map.detach().to("cpu").long()
    if labels.shape != rgb.shape[1:]:
        raise ValueError(
            f"label_map: expected shape {tuple(rgb.shape[1:])}, got {tuple(labels.shape)}"
        )
    ignored = labels == ignore_index
    known = labels[~ignored]
    if known.numel() and (int(known.min()) < 0 or int(known.max()) > num_classes):
        raise ValueError(
            f"label_map: labels must lie in [0, {num_classes}] or equal ignore_index="
            f"{ignore_index}; found values in [{int(known.min())}, {int(known.max())}]"
        )
    palette = class_palette(num_classes)
    colour = palette[labels.where(~ignored, 0)].permute(2, 0, 1)
    colour[:, ignored] = 1.0
    weight = alpha * ((labels != 0) | ignored).float()
    return ((1 - weight) * rgb + weight * colour).clamp(0, 1)


def legend_handles(
    class_names: Sequence[str],
    present: Tensor | Sequence[int] | None = None,
    *,
    background: str = "background",
    ignore_index: int = IGNORE_INDEX,
) -> list[Patch]:
    """Legend entries naming the :func:`class_palette` colours: background first, then the classes.

    Entry ``0`` is the background (label 0) and entry ``c + 1`` class ``c``,
    each a :class:`matplotlib.patches.Patch` whose face colour is that row of
    ``class_palette(len(class_names))`` and whose label is the name.

    Args:
        class_names: the ``C`` foreground class names, class ``c`` first at
            index ``c`` (label-map value ``c + 1``).
        present: only these label-map values, e.g. ``label_map.unique()``
            (in increasing order, each once); ``ignore_index`` among them adds
            a white ``"unlabelled"`` entry, the colour :func:`label_overlay`
            blends such pixels with. ``None``: background and every class.
        background: the name of label 0.
        ignore_index: label of unlabelled pixels.

    Raises:
        ValueError: a value in ``present`` outside ``[0, C]`` and not ``ignore_index``.
    """
    names = [background, *(str(name) for name in class_names)]
    palette = class_palette(len(class_names))
    if present is None:
        labels = list(range(len(names)))
    else:
        values = present.flatten().tolist() if isinstance(present, Tensor) else list(present)
        labels = sorted({int(v) for v in values})
    handles = []
    for label in labels:
        if label == ignore_index:
            continue
        if not 0 <= label < len(names):
            raise ValueError(
                f"present: label {label} is neither in [0, {len(class_names)}] (background and "
                f"{len(class_names)} classes) nor ignore_index={ignore_index}"
            )
        colour = tuple(float(v) for v in palette[label])
        handles.append(Patch(facecolor=colour, edgecolor="0.5", label=names[label]))
    if ignore_index in labels:
        handles.append(Patch(facecolor=(1.0, 1.0, 1.0), edgecolor="0.5", label="unlabelled"))
    return handles


def class_legend(
    where: Axes | Figure,
    class_names: Sequence[str],
    present: Tensor | Sequence[int] | None = None,
    *,
    background: str = "background",
    ignore_index: int = IGNORE_INDEX,
    **legend_kwargs: object,
) -> Legend:
    """Draw a legend of class names in the :func:`class_palette` colours on an axes or figure.

    >>> axis.imshow(label_overlay(image, label_map, len(names)).permute(1, 2, 0))
    >>> class_legend(axis, names, present=label_map.unique())

    The entries are those of :func:`legend_handles` (background first, as
    label 0); ``legend_kwargs`` go to ``where.legend`` (e.g. ``loc``,
    ``ncols``, ``bbox_to_anchor``; ``fontsize`` defaults to ``"small"``).

    Returns:
        The :class:`matplotlib.legend.Legend`.
    """
    handles = legend_handles(class_names, present, background=background, ignore_index=ignore_index)
    legend_kwargs.setdefault("fontsize", "small")
    return where.legend(handles=handles, **legend_kwargs)


def save_figure(figure: Figure, path: str | os.PathLike[str], dpi: int = 100) -> Path:
    """Write a figure atomically: render to a temporary file beside ``path``, then rename.

    A reader never sees a half-written file, and an interrupted save leaves
    any previous file intact. The format follows the suffix (PNG if none);
    missing parent directories are created.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    file_format = path.suffix[1:].lower() or "png"
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            figure.savefig(stream, format=file_format, dpi=dpi)
        os.chmod(temporary, 0o644)  # mkstemp creates 0o600; make it readable like a normal file
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path
