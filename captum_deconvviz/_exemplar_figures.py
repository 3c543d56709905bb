"""Exemplar figures: the Guided Backprop column of ``plot_topk`` and the exemplar rows of a channel.

:func:`plot_exemplars` draws one row per view of a channel (its top-k, bottom-k, the images
at activation quantiles, a class's own top-k): patches (and, with ``model``, DeconvNet
projections) that the :class:`~captum_deconvviz.MiningResult` returns. Its row layout
(:func:`draw_rows`) also serves ``plot_class_units`` in ``_class_figures``.

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
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from torch import Tensor, nn

from ._checks import check_bool, check_float, check_int, show
from ._exemplar_agreement import channel_means, crop_agreement
from ._figures import (
    CAPTUM_METHODS,
    blank,
    check_cell_style,
    check_cmap,
    check_image_function,
    check_type,
    display_image,
    finish,
    grid,
    new_figure,
    projection_drawer,
)
from .mining_result import Crops, MiningResult

__all__ = [
    "GUIDED_SIDE", "RESULT_ORIGIN", "Row", "check_cells", "class_name", "draw_rows", "guided_block", "guided_titles",
    "guided_widths", "mined_option", "plot_exemplars",
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

RESULT_ORIGIN = "from mine_topk or MiningResult.load"
#: Heights of a row's title line and of its cells, and the gap between two records' cell pairs, in cells.
_HEADER, _PAIR_GAP = 0.42, 0.25


@dataclass
class Row:
    """One row of a figure: its title, its patches and (with a model) their projections."""

    title: str
    patches: Crops
    projections: Crops | None


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


def _range(values: list[float]) -> str:
    return f"{values[0]:.3g} to {values[-1]:.3g}" if values else "no records"


def draw_rows(
    rows: list[Row], title: str, cell_inches: float, use_pyplot: bool, draw_options: dict[str, Any],
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


def mined_option(result: MiningResult, option: str) -> Any:
    """A mining option of the exemplar statistics as ``result.meta`` records it (None if not mined)."""
    options = result.meta.get("exemplars")
    return options.get(option) if isinstance(options, dict) else None


def _views(
    result: MiningResult, kinds: str | Sequence[str] | None, quantiles: Sequence[float], classes: Sequence[int]
) -> list[tuple[str, int | None, float | None]]:
    """The rows of :func:`plot_exemplars` as ``(kind, cls, q)``, each checked against what was mined."""
    if kinds is None:
        kinds = ("top", "bottom") if result.bottom_k else ("top",)
    kind_list = [kinds] if isinstance(kinds, str) else list(kinds)
    views: list[tuple[str, int | None, float | None]] = []
    for i, kind in enumerate(kind_list):
        if kind not in ("top", "bottom"):
            raise ValueError(f"kinds[{i}] must be 'top' or 'bottom' (quantiles and classes have their own "
                             f"arguments); got {show(kind)}")  # fmt: skip
        if kind == "bottom" and not result.bottom_k:
            raise ValueError("kinds has 'bottom', but the result was mined with bottom_k=0: pass bottom_k=9 to "
                             "mine_topk")  # fmt: skip
        views.append((kind, None, None))
    for argname, values in (("quantiles", quantiles), ("classes", classes)):
        if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, np.ndarray, Tensor)):
            raise TypeError(f"{argname} must be a sequence (a tuple or list), got {show(values)}")
    if len(quantiles) and not mined_option(result, "quantiles"):
        raise ValueError("quantiles needs a result mined with quantiles=True (see mine_topk)")
    for i, q in enumerate(quantiles):
        views.append(("quantile", None, check_float(q, f"quantiles[{i}]", minimum=0.0, maximum=1.0)))
    if len(classes) and not mined_option(result, "by_class"):
        raise ValueError("classes needs a result mined with labels=True and by_class=True (see mine_topk)")
    count = len(result.class_names or []) or None
    for i, cls in enumerate(classes):
        checked = check_int(cls, f"classes[{i}]", minimum=0, maximum=count - 1 if count else None)
        views.append(("top", checked, None))
    if not views:
        raise ValueError("nothing to draw: kinds, quantiles and classes are all empty")
    return views


def plot_exemplars(
    result: MiningResult,
    data: Any,
    layer: str,
    channel: int,
    model: nn.Module | None = None,
    kinds: str | Sequence[str] | None = None,
    quantiles: Sequence[float] = (),
    classes: Sequence[int] = (),
    method: str = "projection",
    sign: str = "absolute_value",
    cmap: str | None = None,
    alpha_overlay: float = 0.5,
    outlier_perc: float = 2,
    denormalize: Callable[[Tensor], Tensor] | None = None,
    cell_inches: float = 0.55,
    use_pyplot: bool = True,
) -> tuple[Figure, np.ndarray]:
    """One channel's exemplars, one row per view: top-k, bottom-k, quantiles, a class's own top-k.

    Borowski et al. (ICLR 2021) found that people predict a unit's behaviour better from
    its strongest *and* weakest natural exemplars than from the strongest alone; this
    figure puts the views of one channel under each other. Each row is titled with its
    view and the range of its records' values; its cells are the records' receptive-field
    patches, each (with ``model``) followed by its DeconvNet projection, drawn as
    :func:`~captum_deconvviz.plot_topk` draws them. The figure title gives the channel's
    class selectivity index and top class when the result has labels.

    Args:
        result: a :class:`~captum_deconvviz.MiningResult`.
        data: the data that was mined.
        layer: a mined layer.
        channel: the channel.
        model: the mined model: with it, each patch gets its DeconvNet projection beside
            it (``result.projections(model, data, layer, channel, kind=...)``, cached by
            the result); without it, patches only.
        kinds: ``"top"`` and/or ``"bottom"`` rows (bottom-k needs ``mine_topk(...,
            bottom_k=N)``; its row is lowest first). Default: top, and bottom where mined.
        quantiles: a row of the ``k`` images around each quantile of the images' best
            values (needs ``mine_topk(..., quantiles=True)``), e.g. ``(0.5,)``.
        classes: a row of each class's own top-k (needs ``mine_topk(..., labels=True,
            by_class=True)``).
        method, sign, cmap, alpha_overlay, outlier_perc: how projection cells are drawn,
            as in :func:`~captum_deconvviz.plot_topk` (``"projection"``: the projection
            itself as an RGB image; otherwise Captum's ``visualize_image_attr``).
        denormalize: maps a data image to [0, 1] RGB, e.g.
            :func:`captum_deconvviz.zoo.denormalize`; default min-max per patch.
        cell_inches: size of one cell.
        use_pyplot: as in Captum.

    Returns:
        ``(fig, axes)``: axes ``[rows, 2, slots]``, side 0 the projections (None without
        ``model``), side 1 the patches; rows in the order top, bottom, quantiles,
        classes; ``slots`` is the longest row (``k`` or ``bottom_k``).

    Raises:
        ValueError: a view that the result was not mined for (the message says which
            ``mine_topk`` argument to pass), a quantile outside [0, 1], a class or
            channel out of range, no view at all, or ``data``/``model`` that were not
            the mined ones.
        TypeError: ``result`` is not a ``MiningResult``, or an argument of the wrong type.

    Example:
        >>> from captum_deconvviz import mine_topk, plot_exemplars
        >>> from captum_deconvviz.zoo import default_sample, denormalize, load_default_model
        >>> model, data = load_default_model(), default_sample()
        >>> result = mine_topk(model, "features.9", data, labels=True, bottom_k=9, quantiles=True,
        ...                    by_class=True, progress=False)  # doctest: +SKIP
        >>> fig, axes = plot_exemplars(result, data, "features.9", 12, model=model, quantiles=(0.5,),
        ...                            classes=(3,), denormalize=denormalize, use_pyplot=False)  # doctest: +SKIP
        >>> fig.savefig("exemplars.png", dpi=200)  # doctest: +SKIP
    """
    check_type(result, "result", MiningResult, RESULT_ORIGIN)
    check_cells(method, sign, cmap, alpha_overlay, outlier_perc, cell_inches, denormalize)
    check_bool(use_pyplot, "use_pyplot")
    if isinstance(channel, Sequence) or (isinstance(channel, Tensor) and channel.dim() > 0):
        raise TypeError(f"channel must be one channel index (one figure per channel), got {show(channel)}")
    views = _views(result, kinds, quantiles, classes)
    records = {view: result.records(layer, channel, kind=view[0], cls=view[1], q=view[2]) for view in views}
    rows = []
    ranked = "" if result.rank_by == "activation" else " by relevance"
    for (kind, cls, q), found in records.items():
        values = [record.value for record in found]
        if kind == "bottom":
            title = f"bottom {result.bottom_k}, lowest first ({_range(values)})"
        elif kind == "quantile":
            title = f"around quantile {q:g} ({_range(values)})"
        elif cls is not None:
            title = f"top {result.k}{ranked} among class {class_name(result, cls)} ({_range(values)})"
        else:
            title = f"top {result.k}{ranked} ({_range(values)})"
        patches = result.patches(data, layer, channel, kind=kind, cls=cls, q=q)
        projections = None if model is None else result.projections(model, data, layer, channel, kind=kind, cls=cls,
                                                                     q=q)  # fmt: skip
        rows.append(Row(title, patches, projections))
    heading = f"{layer} #{channel}"
    if result.has_labels:
        stats = result.class_stats(layer)
        selectivity = float(stats.selectivity[channel])
        shown = "n/a" if math.isnan(selectivity) else f"{selectivity:.2f}"
        heading += f": class selectivity {shown}, top class {stats.name(int(stats.top_class[channel]))}"
    if model is not None:
        heading += "\neach record: its patch, then its DeconvNet projection"
    options = {"method": method, "sign": sign, "cmap": cmap, "alpha_overlay": alpha_overlay,
               "outlier_perc": outlier_perc}  # fmt: skip
    return draw_rows(rows, heading, cell_inches, use_pyplot, options, denormalize)


def class_name(result: MiningResult, cls: int) -> str:
    names = result.class_names
    return names[cls] if names is not None and 0 <= cls < len(names) else str(cls)
