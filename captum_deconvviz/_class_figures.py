"""Figures of the class statistics: class histograms, selectivity by layer, the units of a class.

Drawn from a :class:`~captum_deconvviz.MiningResult` mined with labels
(``mine_topk(..., labels=True)``): :func:`plot_class_histogram` from
:meth:`~captum_deconvviz.MiningResult.class_stats`, :func:`plot_selectivity` from the
selectivity index of every layer, :func:`plot_class_units` from the rows that
:func:`~captum_deconvviz.class_unit_rows` computes with
:meth:`~captum_deconvviz.MiningResult.class_units`, in the row layout of
``_exemplar_figures``. Exported by ``viz``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from torch import Tensor

from ._checks import check_bool, check_float, check_int, show
from ._exemplar_figures import draw_exemplar_rows
from ._exemplar_records import ExemplarRow
from ._figures import check_indices, check_type, finish, new_figure
from .exemplars import ClassStats
from .mining_result import MiningResult

__all__ = ["BAR_COLOR", "MEDIAN_COLOR", "POINT_COLOR", "TOP_CLASS_COLOR", "plot_class_histogram", "plot_class_units",
           "plot_selectivity"]  # fmt: skip

#: The bars of the classes, the bar of the channel's top class, the points of the selectivity strip.
BAR_COLOR, TOP_CLASS_COLOR, POINT_COLOR = "#8da0b6", "#c0392b", "#34608d"
MEDIAN_COLOR = "#e67e22"
_RESULT_ORIGIN = "from mine_topk or MiningResult.load"


def _class_stats(result: Any, layer: str, caller: str) -> ClassStats:
    """``result.class_stats(layer)``, or a one-line error saying how to mine with labels."""
    check_type(result, "result", MiningResult, _RESULT_ORIGIN)
    if not result.has_labels:
        raise ValueError(f"{caller} needs class statistics: the result was mined without labels; pass labels=True "
                         "(data of (image, label) items) or a LongTensor of labels to mine_topk")  # fmt: skip
    return result.class_stats(layer)


def _selectivity_text(stats: ClassStats, channel: int) -> str:
    value = float(stats.selectivity[channel])
    shown = "n/a" if math.isnan(value) else f"{value:.2f}"
    return f"selectivity {shown}, top {stats.name(int(stats.top_class[channel]))}"


def plot_class_histogram(
    result: MiningResult,
    layer: str,
    channels: int | Sequence[int] | None = None,
    ncols: int | None = None,
    panel_inches: tuple[float, float] = (2.2, 1.7),
    use_pyplot: bool = True,
) -> tuple[Figure, np.ndarray]:
    """Per channel, the classes of its top-N images as a bar chart, titled with its selectivity.

    Each panel counts the labels of the channel's ``top_n`` strongest images
    (``result.class_stats(layer).histogram``); the bar of its top class (the class of the
    largest mean activation) is drawn in red. All panels share one count axis, so bar
    heights compare across channels. The class names label the axis when the data had
    them (its ``classes``).

    Args:
        result: a result of ``mine_topk(..., labels=True)``.
        layer: a mined layer.
        channels: one channel, a list, or None for every channel of the layer.
        ncols: panels per row; default up to 4.
        panel_inches: ``(width, height)`` of one panel.
        use_pyplot: as in Captum.

    Returns:
        ``(fig, axes)``: axes as a 2-d array (rows x ncols), panel ``i`` (row-major) for
        the ``i``-th channel; unused panels are hidden.

    Raises:
        ValueError: the result was mined without labels (pass ``labels=True``), the layer
            was not mined, or a channel is out of range.
        TypeError: ``result`` is not a ``MiningResult``, or an argument of the wrong type.

    Example:
        >>> from captum_deconvviz import mine_topk, plot_class_histogram
        >>> from captum_deconvviz.zoo import default_sample, load_default_model
        >>> result = mine_topk(load_default_model(), "features.9", default_sample(), labels=True,
        ...                    progress=False)  # doctest: +SKIP
        >>> fig, axes = plot_class_histogram(result, "features.9", [0, 5, 12], use_pyplot=False)  # doctest: +SKIP
    """
    stats = _class_stats(result, layer, "plot_class_histogram")
    count = stats.histogram.shape[0]
    chosen = list(range(count)) if channels is None else [c % count for c in check_indices(channels, "channels", count)]
    check_int(ncols, "ncols", minimum=1, allow_none=True)
    if not isinstance(panel_inches, (tuple, list)) or len(panel_inches) != 2:
        raise TypeError(f"panel_inches must be (width, height) in inches, got {show(panel_inches)}")
    width, height = (check_float(v, f"panel_inches[{i}]", above=0.0) for i, v in enumerate(panel_inches))
    check_bool(use_pyplot, "use_pyplot")
    cols = ncols or min(4, len(chosen))
    rows = math.ceil(len(chosen) / cols)
    fig = new_figure(use_pyplot, (cols * width, rows * height + 0.4))
    axes = np.array(fig.subplots(rows, cols, squeeze=False))
    classes = stats.histogram.shape[1]
    names = [stats.name(c) for c in range(classes)]
    top = max(1, int(stats.histogram[chosen].max()))
    for i, ax in enumerate(axes.flat):
        if i >= len(chosen):
            ax.set_visible(False)
            continue
        channel = chosen[i]
        top_class = int(stats.top_class[channel])
        colors = [TOP_CLASS_COLOR if c == top_class else BAR_COLOR for c in range(classes)]
        ax.bar(range(classes), stats.histogram[channel].tolist(), width=0.8, color=colors, linewidth=0)
        ax.set_ylim(0, top * 1.08)
        ax.set_xlim(-0.6, classes - 0.4)
        ax.set_xticks(range(classes))
        named = stats.class_names is not None
        ax.set_xticklabels(names, rotation=90 if named else 0, fontsize=6)
        ax.tick_params(axis="y", labelsize=6)
        ax.set_title(f"#{channel}: {_selectivity_text(stats, channel)}", fontsize=7)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        if i % cols == 0:
            ax.set_ylabel(f"of top {stats.top_n}", fontsize=7)
    fig.suptitle(f"{layer}: classes of each channel's {stats.top_n} strongest images", fontsize=9)
    fig.tight_layout()
    finish(fig, use_pyplot)
    return fig, axes


def plot_selectivity(
    result: MiningResult,
    layers: str | Sequence[str] | None = None,
    threshold: float | None = None,
    names: Sequence[str] | None = None,
    figsize: tuple[float, float] | None = None,
    use_pyplot: bool = True,
) -> tuple[Figure, Any]:
    """The class selectivity index of every channel, one column per layer: does it grow with depth?

    Each column is a box plot (median, quartiles, whiskers at 1.5 IQR) of the layer's
    selectivity indices (Morcos et al. 2018, ``result.class_stats(layer).selectivity``)
    with every channel as a point (spread sideways so that they do not hide each other)
    and the mean as a white diamond. The axis label under each column gives the layer,
    its channels, and the channels without an index (dead, or one class only).

    Args:
        result: a result of ``mine_topk(..., labels=True)``.
        layers: the layers to show, shallow to deep; default ``result.layers``.
        threshold: draw a dashed line at this index and give, per layer, the share of
            channels above it.
        names: what to call the layers under their columns (e.g. ``["conv1", ...]``);
            default their names in the model.
        figsize: the figure's size in inches; default ``(1.3 * layers + 1.2, 3.2)``.
        use_pyplot: as in Captum.

    Returns:
        ``(fig, ax)``: column ``i`` at x = ``i`` shows ``layers[i]``.

    Raises:
        ValueError: the result was mined without labels (pass ``labels=True``), a layer
            was not mined, or ``layers`` is empty.
        TypeError: ``result`` is not a ``MiningResult``, or an argument of the wrong type.

    Example:
        >>> from captum_deconvviz import mine_topk, plot_selectivity
        >>> from captum_deconvviz.zoo import DEFAULT_LAYERS, default_sample, load_default_model
        >>> result = mine_topk(load_default_model(), list(DEFAULT_LAYERS), default_sample(), labels=True,
        ...                    progress=False)  # doctest: +SKIP
        >>> fig, ax = plot_selectivity(result, threshold=0.5, use_pyplot=False)  # doctest: +SKIP
    """
    layers_, limit, size = _selectivity_arguments(result, layers, threshold, names, figsize, use_pyplot)
    values, labels = _selectivity_columns(result, layers_, names, limit)
    fig = new_figure(use_pyplot, size)
    ax = fig.add_subplot(1, 1, 1)
    _draw_selectivity(ax, values, labels, limit)
    fig.tight_layout()
    finish(fig, use_pyplot)
    return fig, ax


def _selectivity_arguments(
    result: Any, layers: Any, threshold: Any, names: Any, figsize: Any, use_pyplot: Any
) -> tuple[list[str], float | None, tuple[float, float]]:
    """:func:`plot_selectivity`'s arguments checked: the layers, the threshold and the figure size."""
    check_type(result, "result", MiningResult, _RESULT_ORIGIN)
    layers_ = result.layers if layers is None else [layers] if isinstance(layers, str) else layers
    if not isinstance(layers_, Sequence) or not all(isinstance(n, str) for n in layers_):
        raise TypeError(f"layers must be a layer name or a list of them (see result.layers), got {show(layers)}")
    if not layers_:
        raise ValueError("layers is empty: give at least one mined layer (see result.layers)")
    limit = None if threshold is None else check_float(threshold, "threshold")
    if names is not None and (isinstance(names, str) or not isinstance(names, Sequence) or len(names) != len(layers_)
                              or not all(isinstance(n, str) for n in names)):  # fmt: skip
        raise ValueError(f"names must be one name (a str) per layer, {len(layers_)} in all; got {show(names)}")
    if figsize is not None and (not isinstance(figsize, (tuple, list)) or len(figsize) != 2):
        raise TypeError(f"figsize must be (width, height) in inches, got {show(figsize)}")
    size = (1.3 * len(layers_) + 1.2, 3.2) if figsize is None else tuple(
        check_float(v, f"figsize[{i}]", above=0.0) for i, v in enumerate(figsize))  # fmt: skip
    check_bool(use_pyplot, "use_pyplot")
    return list(layers_), limit, (float(size[0]), float(size[1]))


def _selectivity_columns(
    result: MiningResult, layers: list[str], names: Sequence[str] | None, limit: float | None
) -> tuple[list[np.ndarray], list[str]]:
    """Per layer, the defined selectivity indices and the column's label (channels, n/a, share above ``limit``)."""
    values, labels = [], []
    for i, name in enumerate(layers):
        selectivity = _class_stats(result, name, "plot_selectivity").selectivity
        defined = selectivity[~selectivity.isnan()].numpy()
        values.append(defined)
        label = f"{name if names is None else names[i]}\n{len(selectivity)} channels"
        if len(defined) < len(selectivity):
            label += f"\n{len(selectivity) - len(defined)} n/a"
        if limit is not None and len(defined):
            label += f"\n{100 * float((defined > limit).mean()):.0f}% > {limit:g}"
        labels.append(label)
    return values, labels


def _draw_selectivity(ax: Any, values: list[np.ndarray], labels: list[str], limit: float | None) -> None:
    """Box plots with every channel as a point and the mean as a white diamond, one column per layer."""
    shown = [i for i, v in enumerate(values) if len(v)]
    ax.boxplot([values[i] for i in shown], positions=shown, widths=0.5, showfliers=False, whis=1.5,
               medianprops={"color": MEDIAN_COLOR, "linewidth": 1.6}, boxprops={"color": "0.35"},
               whiskerprops={"color": "0.35"}, capprops={"color": "0.35"})  # fmt: skip
    spread = np.random.default_rng(0)
    for i in shown:
        offsets = spread.uniform(-0.16, 0.16, len(values[i]))
        ax.plot(i + offsets, values[i], "o", color=POINT_COLOR, markersize=2.2, markeredgewidth=0,
                label="channel" if i == shown[0] else None)  # fmt: skip
        ax.plot([i], [float(values[i].mean())], "D", color="white", markeredgecolor="black", markersize=5,
                markeredgewidth=0.8, label="mean" if i == shown[0] else None)  # fmt: skip
    if limit is not None:
        ax.axhline(limit, color="0.5", linestyle="--", linewidth=0.8)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, fontsize=7)
    ax.set_xlim(-0.6, len(labels) - 0.4)
    low = min([0.0, *(float(v.min()) for v in values if len(v))])
    ax.set_ylim(bottom=low)
    ax.set_ylabel("class selectivity index", fontsize=8)
    ax.tick_params(axis="y", labelsize=7)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.set_title("Class selectivity by layer", fontsize=9)
    if shown:
        ax.plot([], [], color=MEDIAN_COLOR, linewidth=1.6, label="median")
        ax.legend(loc="upper left", fontsize=7, frameon=False, handletextpad=0.2, borderaxespad=0.1)


def plot_class_units(
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
    """Which units matter for a class: the channels of largest mean relevance, with their top-k.

    The question users bring to Concept Relevance Propagation. Draws the rows that
    :func:`~captum_deconvviz.class_unit_rows` computes (and runs no model): one row per
    channel, most relevant first, titled with its mean relevance; its cells are the
    channel's top-k patches (ranked by relevance, as mined), each (where the rows have
    projections) followed by its DeconvNet projection. The layout is that of
    :func:`~captum_deconvviz.plot_exemplars`; the figure title is the rows'
    ``figure_title`` (the layer and the class).

    Args:
        rows: :class:`~captum_deconvviz.ExemplarRow` s, e.g. ``class_unit_rows(result,
            data, layer, cls, model=model, n=6)``; drawn top to bottom.
        method, sign, cmap, alpha_overlay, outlier_perc, denormalize, cell_inches,
            use_pyplot, title: as in :func:`~captum_deconvviz.plot_exemplars`.

    Returns:
        ``(fig, axes)``: axes ``[rows, 2, k]``, side 0 the projections (None where the
        rows have none), side 1 the patches; axes row ``i`` draws ``rows[i]``.

    Raises:
        TypeError: ``rows`` are not ``ExemplarRow`` s (a ``MiningResult``: compute the
            rows with :func:`~captum_deconvviz.class_unit_rows` first), or an argument of
            the wrong type.
        ValueError: no rows, rows with and rows without projections, projections that do
            not match their patches, or a cell option out of range.

    Example:
        >>> from captum_deconvviz import class_unit_rows, mine_topk, plot_class_units
        >>> from captum_deconvviz.zoo import default_sample, denormalize, load_default_model
        >>> model, data = load_default_model(), default_sample()
        >>> result = mine_topk(model, "features.9", data, labels=True, rank_by="relevance", target="label",
        ...                    progress=False)  # doctest: +SKIP
        >>> rows = class_unit_rows(result, data, "features.9", cls=3, model=model, n=6)  # doctest: +SKIP
        >>> fig, axes = plot_class_units(rows, denormalize=denormalize, use_pyplot=False)  # doctest: +SKIP
    """
    options = {"method": method, "sign": sign, "cmap": cmap, "alpha_overlay": alpha_overlay,
               "outlier_perc": outlier_perc}  # fmt: skip
    return draw_exemplar_rows(rows, "class_unit_rows(result, data, layer, cls, model=model)", title, cell_inches,
                              use_pyplot, options, denormalize)  # fmt: skip
