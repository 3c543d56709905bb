"""Exemplar figures: the Guided Backprop column of ``plot_topk`` and the exemplar rows of a channel.

:func:`plot_exemplars` draws one row per view of a channel (its top-k, bottom-k, the images
at activation quantiles, a class's own top-k): the :class:`~captum_deconvviz.ExemplarRow` s
that :func:`~captum_deconvviz.exemplar_rows` computes (``_exemplar_records``, a layer
below), patches and, where computed with a model, their DeconvNet projections. It runs no
model. Its row layout (:func:`draw_exemplar_rows`) also serves ``plot_class_units`` in
``_class_figures``.

With ``plot_topk(guided=True)`` each record becomes three cells side by side: its patch,
its DeconvNet projection and its Guided Backprop projection (seeded with the same unit),
and each channel's title gives the agreement of the two projections, computed from the
tensors drawn by :func:`~captum_deconvviz._exemplar_agreement.crop_agreement` (the
numbers of :func:`~captum_deconvviz.exemplar_agreement`); ``viz`` lays the blocks out and
calls these. Projections are drawn as given, or (``model=``) as the result computes them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from torch import Tensor

from ._checks import check_bool, check_float, show
from ._exemplar_agreement import channel_means, crop_agreement
from ._exemplar_records import ExemplarRow
from ._figures import (
    CAPTUM_METHODS,
    blank,
    check_cell_style,
    check_cmap,
    check_finite_values,
    check_image_function,
    display_image,
    finish,
    grid,
    new_figure,
    projection_drawer,
)
from .mining_result import Crops, MiningResult

__all__ = [
    "GUIDED_SIDE", "PAIRED_LINE", "check_cells", "check_rows", "draw_exemplar_rows", "draw_rows", "guided_block",
    "guided_titles", "guided_widths", "plot_exemplars",
]  # fmt: skip

#: Index of the Guided Backprop cells in ``plot_topk``'s axes (0: DeconvNet, 1: patches).
GUIDED_SIDE = 2
#: Width of the gap between two records' cell triples, in cells.
_GAP = 0.3
#: Cells of one record, left to right: (side in the axes array, column offset in the triple).
_TRIPLE = ((1, 0), (0, 1), (GUIDED_SIDE, 2))


def guided_widths(k: int) -> list[float]:
    """Relative widths of the columns of one channel block: per record column three cells, then a gap."""
    _, cols = grid(k)
    widths: list[float] = []
    for c in range(cols):
        widths += [1.0, 1.0, 1.0] + ([_GAP] if c < cols - 1 else [])
    return widths


def guided_block(
    cells: Callable[[int, int], Any],
    patches: Crops,
    deconv: Tensor,
    guided: Tensor,
    k: int,
    denormalize: Callable[[Tensor], Tensor] | None,
    draw_projection: Callable[[Any, Tensor, np.ndarray], None],
) -> np.ndarray:
    """One channel's block: per record its patch, DeconvNet and Guided Backprop cells.

    ``cells(row, col)`` makes the block's axis at that cell (columns as in
    :func:`guided_widths`); ``draw_projection`` draws a projection as the figure's
    other projection cells are drawn.

    Returns:
        axes ``[3, rows, cols]``: 0 DeconvNet, 1 patches, 2 Guided Backprop.
    """
    rows, cols = grid(k)
    axes = np.empty((3, rows, cols), dtype=object)
    for slot in range(rows * cols):
        r, c = divmod(slot, cols)
        for side, offset in _TRIPLE:
            ax = axes[side, r, c] = cells(r, c * 4 + offset)
            blank(ax)
            if slot >= k or not bool(patches.mask[slot].any()):
                ax.set_facecolor("0.9")
                continue
            patch = display_image(patches.images[slot], denormalize, patches.mask[slot])
            if side == 1:
                ax.imshow(patch, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            else:
                draw_projection(ax, (deconv if side == 0 else guided)[slot], patch)
    return axes


def guided_titles(deconv: Tensor, guided: Tensor, mask: Tensor) -> list[str]:
    """Per channel, the second line of its title: the channel means of Spearman and SSIM.

    Args:
        deconv: the DeconvNet projections drawn, ``[channels, k, C, h, w]``.
        guided: the Guided Backprop projections drawn, alike.
        mask: the patches' valid mask ``[channels, k, h, w]``.
    """
    means = {metric: channel_means(values) for metric, values in crop_agreement(deconv, guided, mask).items()}

    def number(value: float) -> str:
        return "n/a" if math.isnan(value) else f"{value:.2f}"

    return [
        f"patch | DeconvNet | GBP: Spearman {number(float(means['spearman'][b]))} "
        f"(abs {number(float(means['spearman_abs'][b]))}), SSIM {number(float(means['ssim'][b]))}"
        for b in range(deconv.shape[0])
    ]


# --------------------------------------------------------------------------------------
# Rows of exemplars: plot_exemplars and plot_class_units.
# --------------------------------------------------------------------------------------

#: Heights of a row's title line and of its cells, and the gap between two records' cell pairs, in cells.
_HEADER, _PAIR_GAP = 0.42, 0.25
#: The figure title's second line where the rows have projections.
PAIRED_LINE = "each record: its patch, then its DeconvNet projection"


def check_cells(
    method: str, sign: str, cmap: Any, alpha_overlay: Any, outlier_perc: Any, cell_inches: Any, denormalize: Any
) -> None:
    """The cell options every exemplar figure shares with ``plot_topk``, checked before any work."""
    check_cell_style(method, sign, ("projection", *CAPTUM_METHODS))
    check_cmap(cmap)
    check_float(outlier_perc, "outlier_perc", minimum=0.0, below=100.0)
    check_float(alpha_overlay, "alpha_overlay", minimum=0.0, maximum=1.0)
    check_float(cell_inches, "cell_inches", above=0.0)
    check_image_function(denormalize, "denormalize")


def _check_crops(crops: Any, argname: str) -> Crops:
    if not isinstance(crops, Crops):
        raise TypeError(f"{argname} must be Crops (images [k, C, h, w], mask [k, h, w]), got {show(crops)}")
    images, mask = crops.images, crops.mask
    if not isinstance(images, Tensor) or not isinstance(mask, Tensor) or images.dim() != 4 or mask.dim() != 3 or (
        images.shape[0] != mask.shape[0] or images.shape[2:] != mask.shape[1:]
    ):  # fmt: skip
        raise ValueError(f"{argname} must hold images [k, C, h, w] and a mask [k, h, w] of one channel's records, "
                         f"got {show(images)} and {show(mask)}")  # fmt: skip
    check_finite_values(images, argname, "NaN/Inf cells would draw blank")
    return crops


def check_rows(rows: Any, maker: str) -> list[ExemplarRow]:
    """``rows`` as a list of :class:`ExemplarRow`, checked before anything is drawn.

    ``maker`` names the function that computes them, for the message (a result passed
    where rows belong is the spelling of before the rows were computed apart).
    """
    if isinstance(rows, MiningResult):
        raise TypeError(f"rows must be ExemplarRows: compute them with {maker} and pass those (figures run no "
                        "model), got a MiningResult")  # fmt: skip
    if isinstance(rows, ExemplarRow):
        rows = [rows]
    if isinstance(rows, (str, bytes)) or not isinstance(rows, Sequence):
        raise TypeError(f"rows must be a list of ExemplarRows (from {maker}), got {show(rows)}")
    if not rows:
        raise ValueError(f"rows is empty: nothing to draw (compute rows with {maker})")
    checked = list(rows)
    for i, row in enumerate(checked):
        if not isinstance(row, ExemplarRow):
            raise TypeError(f"rows[{i}] must be an ExemplarRow (from {maker}), got {type(row).__name__}")
        if not isinstance(row.title, str) or not isinstance(row.figure_title, str):
            raise TypeError(f"rows[{i}].title and .figure_title must be str, got {show(row.title)} and "
                            f"{show(row.figure_title)}")  # fmt: skip
        patches = _check_crops(row.patches, f"rows[{i}].patches")
        if row.projections is not None:
            projections = _check_crops(row.projections, f"rows[{i}].projections")
            if projections.images.shape[0] != patches.images.shape[0] or (
                projections.images.shape[2:] != patches.images.shape[2:]
            ):  # fmt: skip
                raise ValueError(f"rows[{i}].projections must match its patches [k, C, h, w], got "
                                 f"{list(projections.images.shape)} for {list(patches.images.shape)}")  # fmt: skip
        if (row.projections is None) != (checked[0].projections is None):
            raise ValueError(f"rows[{i}] {'has no' if row.projections is None else 'has'} projections, rows[0] "
                             f"{'has' if row.projections is None else 'has none'}: compute all rows with the same "
                             "model= (or all without)")  # fmt: skip
    return checked


def _figure_title(rows: list[ExemplarRow], title: Any) -> str:
    """``title``, or the rows' own: their distinct ``figure_title`` s (else layer and channel), in order."""
    if title is not None:
        if not isinstance(title, str):
            raise TypeError(f"title must be a str or None (the rows' own), got {show(title)}")
        return title
    lines: list[str] = []
    for row in rows:
        line = row.figure_title or f"{row.layer} #{row.channel}"
        if line not in lines:
            lines.append(line)
    if rows[0].projections is not None:
        lines.append(PAIRED_LINE)
    return "\n".join(lines)


def draw_rows(
    rows: list[ExemplarRow], title: str, cell_inches: float, use_pyplot: bool, draw_options: dict[str, Any],
    denormalize: Callable[[Tensor], Tensor] | None,
) -> tuple[Figure, np.ndarray]:  # fmt: skip
    """Lay out ``rows``: per row a title line, then per record its patch (and its projection on its right)."""
    slots = max(row.patches.images.shape[0] for row in rows)
    paired = rows[0].projections is not None
    widths = ([1.0, 1.0, _PAIR_GAP] * slots)[:-1] if paired else [1.0] * slots
    heights = [_HEADER, 1.0] * len(rows)
    top_inches = 0.25 + 0.17 * (title.count("\n") + 1)
    fig = new_figure(use_pyplot, (sum(widths) * cell_inches, sum(heights) * cell_inches + top_inches))
    spec = fig.add_gridspec(len(heights), len(widths), width_ratios=widths, height_ratios=heights, wspace=0.04,
                            hspace=0.04, left=0.01, right=0.99, bottom=0.01,
                            top=1 - top_inches / fig.get_figheight())  # fmt: skip
    fig.suptitle(title, fontsize=9, y=1 - 0.1 / fig.get_figheight(), va="top")
    draw = projection_drawer(fig, **draw_options)
    axes = np.empty((len(rows), 2, slots), dtype=object)
    for r, row in enumerate(rows):
        header = fig.add_subplot(spec[2 * r, :])
        header.axis("off")
        header.text(0.0, 0.1, row.title, ha="left", va="bottom", fontsize=8, transform=header.transAxes)
        for slot in range(slots):
            column = slot * 3 if paired else slot
            patch_ax = axes[r, 1, slot] = fig.add_subplot(spec[2 * r + 1, column])
            cells = [patch_ax]
            if paired:
                axes[r, 0, slot] = fig.add_subplot(spec[2 * r + 1, column + 1])
                cells.append(axes[r, 0, slot])
            for ax in cells:
                blank(ax)
            if slot >= row.patches.images.shape[0] or not bool(row.patches.mask[slot].any()):
                for ax in cells:
                    ax.set_facecolor("0.9")  # no record here: fewer images than slots
                continue
            patch = display_image(row.patches.images[slot], denormalize, row.patches.mask[slot])
            patch_ax.imshow(patch, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            if row.projections is not None:
                draw(axes[r, 0, slot], row.projections.images[slot], patch)
    finish(fig, use_pyplot)
    return fig, axes


def draw_exemplar_rows(
    rows: Any, maker: str, title: Any, cell_inches: float, use_pyplot: bool, draw_options: dict[str, Any],
    denormalize: Callable[[Tensor], Tensor] | None,
) -> tuple[Figure, np.ndarray]:  # fmt: skip
    """Check every argument of an exemplar figure, then draw its rows (``maker``: where rows come from)."""
    checked = check_rows(rows, maker)
    check_cells(cell_inches=cell_inches, denormalize=denormalize, **draw_options)
    check_bool(use_pyplot, "use_pyplot")
    return draw_rows(checked, _figure_title(checked, title), cell_inches, use_pyplot, draw_options, denormalize)


def plot_exemplars(
    rows: Sequence[ExemplarRow],
    *,
    method: str = "projection",
    sign: str = "absolute_value",
    cmap: str | None = None,
    alpha_overlay: float = 0.5,
    outlier_perc: float = 2,
    denormalize: Callable[[Tensor], Tensor] | None = None,
    cell_inches: float = 0.55,
    use_pyplot: bool = True,
    title: str | None = None,
) -> tuple[Figure, np.ndarray]:
    """One channel's exemplars, one row per view: top-k, bottom-k, quantiles, a class's own top-k.

    Draws the rows that :func:`~captum_deconvviz.exemplar_rows` computes (and runs no
    model): the views of one channel under each other, as Borowski et al. (ICLR 2021)
    found people read a unit best, from its strongest *and* weakest natural exemplars.
    Each row is titled with its view and the range of its records' values; its cells are
    the records' receptive-field patches, each (where the rows have projections)
    followed by its DeconvNet projection, drawn as
    :func:`~captum_deconvviz.plot_topk` draws them. The figure title is the rows'
    ``figure_title``: the channel, with its class selectivity index and top class when
    the result has labels.

    Args:
        rows: :class:`~captum_deconvviz.ExemplarRow` s, e.g. ``exemplar_rows(result,
            data, layer, channel, model=model, quantiles=(0.5,))``; drawn top to bottom.
            All rows have projections or none has.
        method, sign, cmap, alpha_overlay, outlier_perc: how projection cells are drawn,
            as in :func:`~captum_deconvviz.plot_topk` (``"projection"``: the projection
            itself as an RGB image; otherwise Captum's ``visualize_image_attr``).
        denormalize: maps a data image to [0, 1] RGB, e.g.
            :func:`captum_deconvviz.zoo.denormalize`; default min-max per patch.
        cell_inches: size of one cell.
        use_pyplot: as in Captum.
        title: the figure's title; default the rows' distinct ``figure_title`` s (a row
            without one: its layer and channel), and a line saying what the cells are
            where the rows have projections.

    Returns:
        ``(fig, axes)``: axes ``[rows, 2, slots]``, side 0 the projections (None where
        the rows have none), side 1 the patches; ``slots`` is the longest row (``k`` or
        ``bottom_k``).

    Raises:
        TypeError: ``rows`` are not ``ExemplarRow`` s (a ``MiningResult``: compute the
            rows with :func:`~captum_deconvviz.exemplar_rows` first), or an argument of
            the wrong type.
        ValueError: no rows, rows with and rows without projections, projections that do
            not match their patches, or a cell option out of range.

    Example:
        >>> from captum_deconvviz import exemplar_rows, mine_topk, plot_exemplars
        >>> from captum_deconvviz.zoo import default_sample, denormalize, load_default_model
        >>> model, data = load_default_model(), default_sample()
        >>> result = mine_topk(model, "features.9", data, labels=True, bottom_k=9, quantiles=True,
        ...                    by_class=True, progress=False)  # doctest: +SKIP
        >>> rows = exemplar_rows(result, data, "features.9", 12, model=model, quantiles=(0.5,),
        ...                      classes=(3,))  # doctest: +SKIP
        >>> fig, axes = plot_exemplars(rows, denormalize=denormalize, use_pyplot=False)  # doctest: +SKIP
        >>> fig.savefig("exemplars.png", dpi=200)  # doctest: +SKIP
    """
    options = {"method": method, "sign": sign, "cmap": cmap, "alpha_overlay": alpha_overlay,
               "outlier_perc": outlier_perc}  # fmt: skip
    return draw_exemplar_rows(rows, "exemplar_rows(result, data, layer, channel, model=model)", title, cell_inches,
                              use_pyplot, options, denormalize)  # fmt: skip
