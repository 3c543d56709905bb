"""Every figure: first-layer filters, top-k patches beside their projections, hierarchy, results.

Figures draw the tensors and results they are given and never run a model: compute
projections with :meth:`MiningResult.projections` (a comparison with
:func:`~captum_deconvviz.compare_methods`, a diagnosis with
:func:`~captum_deconvviz.diagnose`) and pass them in. Every projection cell of
:func:`plot_topk` is drawn by ``captum.attr.visualization.visualize_image_attr``, so
every Captum method and sign works; ``method="projection"`` draws the projection itself
as an RGB image, as Zeiler & Fergus do. Figures are plain matplotlib: save them with
``fig.savefig("fig.pdf")`` (PNG, PDF and SVG; images stay pixel-exact with
``interpolation="nearest"``). The figures of results (:func:`plot_comparison`,
:func:`plot_randomization`, :func:`plot_diagnosis`, :func:`plot_feature_evolution`) are
written in ``_result_figures``, the hierarchy in ``_hierarchy_figure``, a channel's
exemplars (:func:`plot_exemplars`) in ``_exemplar_figures``, the class statistics
(:func:`plot_class_histogram`, :func:`plot_selectivity`, :func:`plot_class_units`) in
``_class_figures``; all are exported here. The exemplar figures draw rows computed
beforehand, with their projections, by :func:`~captum_deconvviz.exemplar_rows` and
:func:`~captum_deconvviz.class_unit_rows`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from torch import Tensor, nn

from ._checks import check_bool, check_choice, check_float, check_int, show
from ._class_figures import plot_class_histogram, plot_class_units, plot_selectivity
from ._exemplar_figures import guided_block, guided_titles, guided_widths, plot_exemplars
from ._figures import (
    CAPTUM_METHODS,
    blank,
    check_cell_style,
    check_cmap,
    check_finite_values,
    check_image_function,
    check_shape,
    check_type,
    deprecated,
    display_image,
    finish,
    grid,
    new_figure,
    normalize_projection,
    projection_drawer,
)
from ._hierarchy_figure import hierarchy_channels, plot_hierarchy
from ._result_figures import (
    feature_evolution,
    plot_comparison,
    plot_diagnosis,
    plot_feature_evolution,
    plot_randomization,
)
from .mining_result import Crops, MiningResult

__all__ = [
    "feature_evolution", "hierarchy_channels", "normalize_projection", "plot_class_histogram", "plot_class_units",
    "plot_comparison", "plot_diagnosis", "plot_exemplars", "plot_feature_evolution", "plot_filters", "plot_hierarchy",
    "plot_randomization", "plot_selectivity", "plot_topk",
]  # fmt: skip

_RESULT_ORIGIN = "from mine_topk or MiningResult.load"


# --------------------------------------------------------------------------------------
# First-layer filters.
# --------------------------------------------------------------------------------------


def _filter_images(weights: nn.Module | Tensor, sort_by_norm: bool, normalize: str) -> list[np.ndarray]:
    """Each filter as an image in [0, 1] around mid-grey, in the order to draw them."""
    if isinstance(weights, nn.Module) and not isinstance(getattr(weights, "weight", None), Tensor):
        first = next((m for m in weights.modules() if isinstance(m, nn.Conv2d)), None)
        if first is None:
            raise ValueError(f"weights is a {type(weights).__name__} with no Conv2d; pass a Conv2d or its weight")
        weights = first  # a whole model: its first convolution, the layer ZF's Fig. 6 shows
    weight = weights.weight if isinstance(weights, nn.Module) else weights
    if not isinstance(weight, Tensor) or weight.dim() != 4 or weight.shape[1] not in (1, 3):
        shape = tuple(weight.shape) if isinstance(weight, Tensor) else type(weights).__name__
        raise ValueError(f"weights must be a Conv2d (or weight [F, C, kh, kw]) with 1 or 3 input channels, got {shape}")
    check_choice(normalize, "normalize", ("per_filter", "global"))
    # NaN/Inf filters would draw as blank cells, with nothing to say why.
    check_finite_values(weight, "weights", "the filters would draw blank; check the checkpoint or the training run")
    weight = weight.detach().float().cpu()
    order = list(range(weight.shape[0]))
    if sort_by_norm:
        order = weight.flatten(1).norm(dim=1).argsort(descending=True).tolist()
    global_scale = float(weight.abs().max()) or 1.0
    images = []
    for index in order:
        w = weight[index]
        scale = (float(w.abs().max()) or 1.0) if normalize == "per_filter" else global_scale
        image = (w / (2 * scale) + 0.5).clamp(0, 1).permute(1, 2, 0).numpy()
        images.append(image[..., 0] if image.shape[-1] == 1 else image)
    return images


def plot_filters(
    weights: nn.Module | Tensor,
    ncols: int | None = None,
    sort_by_norm: bool = False,
    normalize: str = "per_filter",
    title: str | None = None,
    cell_inches: float = 0.45,
    use_pyplot: bool = True,
) -> tuple[Figure, np.ndarray]:
    """First-layer filters as RGB images, one per cell, as in Zeiler & Fergus's Fig. 2.

    Args:
        weights: a ``Conv2d`` with 3 (or 1) input channels, or its weight tensor
            ``[F, C, kh, kw]``.
        ncols: cells per row; default ``ceil(sqrt(F))``.
        sort_by_norm: order filters by decreasing L2 norm (the strongest first).
        normalize: ``"per_filter"`` (each filter's contrast stretched around
            mid-grey: ``w / (2 max|w|) + 0.5``) or ``"global"`` (one scale for all
            filters, which shows their relative strength).
        title: a figure title.
        cell_inches: size of one cell.
        use_pyplot: create the figure with pyplot (shown in notebooks), as Captum's
            ``use_pyplot``; False builds a bare ``matplotlib.figure.Figure``.

    Returns:
        ``(fig, axes)``, axes as a 2-d array (rows x ncols); unused cells are hidden.

    Raises:
        ValueError: ``weights`` hold NaN or Inf (the filters would draw blank) or are on
            the meta device; a size or choice is out of range.
        TypeError: a number or flag of the wrong type (``use_pyplot`` must be a bool).

    Example:
        >>> from captum_deconvviz.zoo import load_default_model
        >>> fig, axes = plot_filters(load_default_model().features[0], sort_by_norm=True, use_pyplot=False)
        >>> fig.savefig("filters.pdf")  # doctest: +SKIP
    """
    check_int(ncols, "ncols", minimum=1, allow_none=True)
    check_bool(sort_by_norm, "sort_by_norm")
    check_float(cell_inches, "cell_inches", above=0.0)
    check_bool(use_pyplot, "use_pyplot")
    images = _filter_images(weights, sort_by_norm, normalize)
    ncols = ncols or math.ceil(math.sqrt(len(images)))
    nrows = math.ceil(len(images) / ncols)
    fig = new_figure(use_pyplot, (ncols * cell_inches, nrows * cell_inches + (0.4 if title else 0)))
    axes = np.array(fig.subplots(nrows, ncols, squeeze=False))
    for cell, ax in enumerate(axes.flat):
        blank(ax)
        if cell < len(images):
            ax.imshow(images[cell], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        else:
            ax.set_visible(False)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.99 if not title else 1 - 0.4 / fig.get_figheight(),
                        wspace=0.08, hspace=0.08)  # fmt: skip
    if title:
        fig.suptitle(title)
    finish(fig, use_pyplot)
    return fig, axes


# --------------------------------------------------------------------------------------
# Top-k patches and their projections.
# --------------------------------------------------------------------------------------


def _topk_projections(
    result: MiningResult,
    data: Any,
    layer: str,
    channels: list[int],
    projections: Crops | Tensor | None,
    model: nn.Module | None,
    expected: tuple[int, ...],
    mask: Tensor,
) -> Tensor:
    """The projection images ``[channels, k, C, h, w]`` to draw, checked against the patches' shape ``expected``.

    From ``model`` only in the deprecated spelling. ``mask``: the patches' (see :func:`_checked_images`).
    """
    if model is not None:
        if projections is not None:
            raise ValueError("plot_topk got both projections and model (deprecated): give only projections")
        deprecated("plot_topk(model=...): pass projections=result.projections(model, data, layer, channels)", 4)
        projections = result.projections(model, data, layer, channels)
    if projections is None:
        raise ValueError("plot_topk needs projections=result.projections(model, data, layer, channels)")
    return _checked_images(projections, "projections", layer, expected, mask)


def _checked_images(
    projections: Any, argname: str, layer: str, expected: tuple[int, ...], mask: Tensor | None = None
) -> Tensor:
    """The images of ``projections`` (``Crops`` or a tensor) if shaped ``expected`` and finite, else raise.

    Given the patches' ``mask``, the masks of ``Crops`` must equal it: the projections of other
    channels' (or another layer's) records have the same shape, but their receptive fields meet
    the image's border elsewhere. A plain tensor carries no mask, so it is checked by shape only.
    """
    images = projections.images if isinstance(projections, Crops) else projections
    if isinstance(images, Tensor) and expected[0] == 1 and images.dim() == 4:  # one channel's [k, C, h, w]
        images = images.unsqueeze(0)
    n, k, c, h, w = expected
    described = (f"[{n}, k={k}, {c}, {h}, {w}] (the {k} records of each of {n} channel(s), {c} image channels, "
                 f"{h}x{w} crops: the receptive field of {layer!r})")  # fmt: skip
    images = check_shape(images, argname, expected, described)
    check_finite_values(images, argname, "NaN/Inf cells would draw blank")
    if mask is not None and isinstance(projections, Crops) and isinstance(projections.mask, Tensor):
        given = projections.mask.reshape(mask.shape) if projections.mask.numel() == mask.numel() else None
        if given is None or not bool((given.to(mask.device).bool() == mask.bool()).all()):
            raise ValueError(
                f"{argname} are not the projections of these channels' records: their crops lie elsewhere than the "
                f"patches' of layer {layer!r} (their masks differ); pass result.projections(model, data, layer, "
                "channels) for the same layer and channels"
            )
    return images


def _channel_list(channels: Any) -> list[Any]:
    """``channels`` (one or a sequence) as a non-empty list; the result checks each index."""
    if isinstance(channels, Tensor) and channels.dim() == 0:
        channels = channels.item()
    if isinstance(channels, numbers.Integral):
        return [channels]
    if isinstance(channels, (str, bytes)) or not isinstance(channels, Iterable):
        raise TypeError(f"channels must be a channel index or a list of them, got {show(channels)}")
    channel_list = list(channels)
    if not channel_list:
        raise ValueError("channels is empty")
    return channel_list


def _topk_block(
    cells: Callable[[int, int], Any],
    patches: Crops,
    projections: Tensor,
    k: int,
    denormalize: Callable[[Tensor], Tensor] | None,
    draw_projection: Callable[[Any, Tensor, np.ndarray], None],
) -> np.ndarray:
    """One channel's block: projections (side 0) and patches (side 1), each a grid of ``k`` cells.

    ``cells(row, col)`` makes the block's axis at that cell; the patches' grid starts ``cols`` to the right.
    """
    rows, cols = grid(k)
    axes = np.empty((2, rows, cols), dtype=object)
    for slot in range(rows * cols):
        r, c = divmod(slot, cols)
        for side in (0, 1):
            ax = axes[side, r, c] = cells(r, side * cols + c)
            blank(ax)
            if slot >= k or not bool(patches.mask[slot].any()):
                ax.set_facecolor("0.9")
                continue
            patch = display_image(patches.images[slot], denormalize, patches.mask[slot])
            if side == 1:
                ax.imshow(patch, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            else:
                draw_projection(ax, projections[slot], patch)
    return axes


class _TopkLayout:
    """Where plot_topk's blocks go: up to 4 blocks a row, apart by an empty column; with titles, the
    layer's name in a first row and each block's title in a row above it, as tall as their text (a
    line, or two with the Guided Backprop agreement), not a whole cell."""

    def __init__(self, k: int, blocks: int, guided: bool, titles: bool) -> None:
        self.rows, cols = grid(k)
        self.per_row, self.title_rows = min(4, blocks), (1 if titles else 0)
        self.block_widths = guided_widths(k) if guided else [1.0] * (2 * cols)
        self.widths = ([*self.block_widths, 1.0] * self.per_row)[:-1]
        block_title = (0.5 if guided else 0.26) if titles else 0.0
        block = [block_title] * self.title_rows + [1.0] * self.rows
        self.heights = [0.3] * self.title_rows + block * math.ceil(blocks / self.per_row)

    def size(self, cell_inches: float) -> tuple[float, float]:
        return sum(self.widths) * cell_inches, sum(self.heights) * cell_inches

    def grid(self, fig: Figure) -> Any:
        return fig.add_gridspec(len(self.heights), len(self.widths), width_ratios=self.widths,
                                height_ratios=self.heights, wspace=0.05, hspace=0.05, left=0.01, right=0.99,
                                bottom=0.01, top=0.99)  # fmt: skip

    def corner(self, block: int) -> tuple[int, int]:
        """The grid row and column of block ``block``'s first cell (its title, if any, is the row above)."""
        block_row, block_col = divmod(block, self.per_row)
        top = self.title_rows + block_row * (self.rows + self.title_rows) + self.title_rows
        return top, block_col * (len(self.block_widths) + 1)


def plot_topk(
    result: MiningResult,
    data: Any,
    layer: str,
    channels: int | Sequence[int],
    model: nn.Module | None = None,
    method: str = "projection",
    sign: str = "absolute_value",
    cmap: str | None = None,
    alpha_overlay: float = 0.5,
    outlier_perc: float = 2,
    denormalize: Callable[[Tensor], Tensor] | None = None,
    projections: Crops | Tensor | None = None,
    cell_inches: float = 0.55,
    titles: bool = True,
    use_pyplot: bool = True,
    guided: bool = False,
    guided_projections: Crops | Tensor | None = None,
) -> tuple[Figure, np.ndarray]:
    """Zeiler & Fergus's layout: per channel, its top-k projections beside their patches.

    Each channel gets a block: a 3x3 grid (for k = 9) of DeconvNet projections on the
    left and the 3x3 grid of the matching receptive-field patches on the right. With
    ``guided=True`` each record shows three cells instead, patch | DeconvNet projection
    | Guided Backprop projection (seeded with the same unit), and each block's title
    adds the channel's mean Spearman rank correlation (of the signed and of the
    absolute maps) and SSIM between the two projections, over the pixels inside the
    image: the numbers of :func:`~captum_deconvviz.exemplar_agreement`.

    Args:
        result: a :class:`~captum_deconvviz.MiningResult`.
        data: the data that was mined.
        layer: a mined layer.
        channels: one channel or a list; blocks are laid out in rows of up to 4.
        model: deprecated: pass ``projections`` instead (the figure then computes
            nothing with a model).
        method: ``"projection"`` (the projection itself as an RGB image, as in the
            paper) or any method of ``captum.attr.visualization.visualize_image_attr``
            (``"heat_map"``, ``"blended_heat_map"`` overlays it on the patch, ...).
        sign, cmap, alpha_overlay, outlier_perc: passed to ``visualize_image_attr``
            for each projection cell (``outlier_perc`` also clips ``"projection"``).
        denormalize: maps a data image to [0, 1] RGB for display, e.g.
            :func:`captum_deconvviz.zoo.denormalize`; default min-max per patch.
        projections: the projections of these channels' records:
            ``result.projections(model, data, layer, channels)`` (its :class:`Crops`, or
            their ``.images``).
        cell_inches: size of one cell.
        titles: label each block with its channel and best activation (and, with
            ``guided``, the agreement numbers).
        use_pyplot: as in Captum.
        guided: add the Guided Backprop column (needs ``guided_projections``).
        guided_projections: the Guided Backprop projections of the same records:
            ``result.projections(model, data, layer, channels, rules="guided")`` (or
            ``exemplar_agreement(...).guided``); drawn like ``projections``.

    Returns:
        ``(fig, axes)``: axes ``[channels, 2, rows, cols]`` (0: projections, 1: patches),
        or ``[channels, 3, rows, cols]`` with ``guided`` (2: Guided Backprop).

    Raises:
        ValueError: ``method``, ``sign`` or ``cmap`` is not one Captum or matplotlib
            knows (``sign`` is checked for every method); ``projections`` is not shaped
            like the patches ``[channels, k, C, h, w]`` (the message gives both shapes),
            holds NaN or Inf, or is given together with the deprecated ``model``;
            ``guided_projections`` is missing with ``guided=True``, given without it,
            or not shaped like ``projections``; ``projections`` or ``guided_projections``
            are :class:`Crops` whose masks differ from the patches' (the projections of
            other channels' or another layer's records). Plain tensors carry no mask: those
            of other records of the same shape cannot be told apart, so pass the ``Crops``.
        TypeError: ``result`` is not a ``MiningResult``, ``denormalize`` is not a
            function, or a number or flag has the wrong type.

    Example:
        >>> projections = result.projections(model, data, "features.9", [3, 17])  # doctest: +SKIP
        >>> fig, axes = plot_topk(result, data, "features.9", [3, 17], projections=projections,
        ...                       use_pyplot=False)  # doctest: +SKIP
        >>> fig.savefig("topk.png", dpi=300)  # doctest: +SKIP
        >>> guided = result.projections(model, data, "features.9", [3, 17], rules="guided")  # doctest: +SKIP
        >>> fig, axes = plot_topk(result, data, "features.9", [3, 17], projections=projections, guided=True,
        ...                       guided_projections=guided, use_pyplot=False)  # doctest: +SKIP
    """
    check_type(result, "result", MiningResult, _RESULT_ORIGIN)
    check_cell_style(method, sign, ("projection", *CAPTUM_METHODS))
    check_cmap(cmap)
    check_float(outlier_perc, "outlier_perc", minimum=0.0, below=100.0)
    check_float(alpha_overlay, "alpha_overlay", minimum=0.0, maximum=1.0)
    check_float(cell_inches, "cell_inches", above=0.0)
    check_image_function(denormalize, "denormalize")
    check_bool(titles, "titles")
    check_bool(use_pyplot, "use_pyplot")
    check_bool(guided, "guided")
    if guided_projections is not None and not guided:
        raise ValueError("guided_projections is given but guided=False: pass guided=True to draw them")
    if guided and guided_projections is None:
        raise ValueError("plot_topk(guided=True) needs guided_projections=result.projections(model, data, layer, "
                         "channels, rules='guided')")  # fmt: skip
    channel_list = _channel_list(channels)
    patches = result.patches(data, layer, channel_list, fill=0.0)
    expected = tuple(patches.images.shape)
    shown = _topk_projections(result, data, layer, channel_list, projections, model, expected, patches.mask)
    shown_guided = (
        _checked_images(guided_projections, "guided_projections", layer, expected, patches.mask) if guided else None
    )
    layout = _TopkLayout(result.k, len(channel_list), guided, titles)
    fig = new_figure(use_pyplot, layout.size(cell_inches))
    spec = layout.grid(fig)
    if titles:
        heading = fig.add_subplot(spec[0, :])
        heading.axis("off")
        heading.text(0.0, 0.0, layer, ha="left", va="bottom", fontsize=9, fontweight="bold")
    draw = projection_drawer(fig, method, sign, cmap, alpha_overlay, outlier_perc)
    axes = np.empty((len(channel_list), 3 if guided else 2, *grid(result.k)), dtype=object)
    agreement = guided_titles(shown, shown_guided, patches.mask) if shown_guided is not None else None
    for b, channel in enumerate(channel_list):
        top, left = layout.corner(b)
        if titles:
            header = fig.add_subplot(spec[top - 1, left : left + len(layout.block_widths)])
            header.axis("off")
            records = result.records(layer, channel)
            best = f", max {records[0].value:.3g}" if records else ""
            text = f"#{channel}{best}" + (f"\n{agreement[b]}" if agreement is not None else "")
            header.text(0.5, 0.0, text, ha="center", va="bottom", fontsize=8 if agreement is None else 7)

        def cells(r: int, c: int, top: int = top, left: int = left) -> Any:
            return fig.add_subplot(spec[top + r, left + c])

        block = Crops(patches.images[b], patches.mask[b])
        if shown_guided is not None:
            axes[b] = guided_block(cells, block, shown[b], shown_guided[b], result.k, denormalize, draw)
        else:
            axes[b] = _topk_block(cells, block, shown[b], result.k, denormalize, draw)
    finish(fig, use_pyplot)
    return fig, axes
