"""The classic figures: first-layer filters, top-9 patches beside their projections, hierarchy.

Every projection cell of :func:`plot_topk` is drawn by
``captum.attr.visualization.visualize_image_attr``, so every Captum method and sign
works; ``method="projection"`` draws the projection itself as an RGB image, as Zeiler &
Fergus do. Figures are plain matplotlib: save them with ``fig.savefig("fig.pdf")``
(PNG, PDF and SVG; images stay pixel-exact with ``interpolation="nearest"``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import matplotlib
import numpy as np
import torch
from captum.attr import visualization as captum_viz
from matplotlib.figure import Figure
from torch import Tensor, nn

from .mining_result import MiningResult

__all__ = ["normalize_projection", "plot_filters", "plot_hierarchy", "plot_topk"]

_CAPTUM_METHODS = ("heat_map", "blended_heat_map", "original_image", "masked_image", "alpha_scaling")


def _figure(use_pyplot: bool, figsize: tuple[float, float]) -> Figure:
    if use_pyplot:
        import matplotlib.pyplot as plt

        return plt.figure(figsize=figsize)
    return Figure(figsize=figsize)


def _finish(fig: Figure, use_pyplot: bool) -> None:
    if use_pyplot and matplotlib.get_backend().lower() not in ("agg", "pdf", "svg", "ps", "cairo", "template"):
        import matplotlib.pyplot as plt

        plt.show()


def _blank(ax: Any) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def normalize_projection(projection: Tensor, outlier_perc: float = 0.5) -> np.ndarray:
    """A projection ``[C, h, w]`` as an ``[h, w, C]`` image in [0, 1], zero at mid-grey.

    Values are divided by ``2 * m`` and shifted by 0.5, where ``m`` is the
    ``100 - outlier_perc`` percentile of the absolute values (the contrast
    normalization of Zeiler & Fergus's figures). An all-zero projection is mid-grey.
    """
    array = projection.detach().float().cpu().numpy()
    scale = float(np.percentile(np.abs(array), 100 - outlier_perc)) if array.size else 0.0
    if scale <= 0:
        scale = float(np.abs(array).max()) or 1.0
    image = np.clip(array / (2 * scale) + 0.5, 0, 1)
    return np.moveaxis(image, 0, -1) if image.ndim == 3 else image


def _display(image: Tensor, denormalize: Callable[[Tensor], Tensor] | None, mask: Tensor | None = None) -> np.ndarray:
    """A data image ``[C, h, w]`` as ``[h, w, C]`` in [0, 1] (min-max if no denormalize)."""
    image = image.detach().float().cpu()
    if denormalize is not None:
        shown = denormalize(image).clamp(0, 1)
    else:
        valid = image[:, mask] if mask is not None and mask.any() else image.flatten(1)
        low, high = float(valid.min()), float(valid.max())
        shown = ((image - low) / (high - low if high > low else 1.0)).clamp(0, 1)
    if mask is not None:
        shown = torch.where(mask, shown, torch.full_like(shown, 0.5))
    array = shown.numpy()
    array = np.moveaxis(array, 0, -1)
    return array[..., 0] if array.shape[-1] == 1 else array


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

    Example:
        >>> from captum_deconvviz.zoo import load_default_model
        >>> fig, axes = plot_filters(load_default_model().features[0], sort_by_norm=True, use_pyplot=False)
        >>> fig.savefig("filters.pdf")  # doctest: +SKIP
    """
    weight = weights.weight if isinstance(weights, nn.Module) else weights
    if not isinstance(weight, Tensor) or weight.dim() != 4 or weight.shape[1] not in (1, 3):
        shape = tuple(weight.shape) if isinstance(weight, Tensor) else type(weights).__name__
        raise ValueError(f"weights must be a Conv2d (or weight [F, C, kh, kw]) with 1 or 3 input channels, got {shape}")
    if normalize not in ("per_filter", "global"):
        raise ValueError(f"normalize must be 'per_filter' or 'global', got {normalize!r}")
    weight = weight.detach().float().cpu()
    order = list(range(weight.shape[0]))
    if sort_by_norm:
        order = weight.flatten(1).norm(dim=1).argsort(descending=True).tolist()
    count = len(order)
    ncols = ncols or math.ceil(math.sqrt(count))
    nrows = math.ceil(count / ncols)
    fig = _figure(use_pyplot, (ncols * cell_inches, nrows * cell_inches + (0.4 if title else 0)))
    axes = np.array(fig.subplots(nrows, ncols, squeeze=False))
    global_scale = float(weight.abs().max()) or 1.0
    for cell, ax in enumerate(axes.flat):
        _blank(ax)
        if cell >= count:
            ax.set_visible(False)
            continue
        w = weight[order[cell]]
        scale = (float(w.abs().max()) or 1.0) if normalize == "per_filter" else global_scale
        image = (w / (2 * scale) + 0.5).clamp(0, 1).permute(1, 2, 0).numpy()
        ax.imshow(
            image[..., 0] if image.shape[-1] == 1 else image, cmap="gray", vmin=0, vmax=1, interpolation="nearest"
        )
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.99 if not title else 1 - 0.4 / fig.get_figheight(),
                        wspace=0.08, hspace=0.08)  # fmt: skip
    if title:
        fig.suptitle(title)
    _finish(fig, use_pyplot)
    return fig, axes


def _grid(count: int) -> tuple[int, int]:
    side = math.ceil(math.sqrt(count))
    return math.ceil(count / side), side


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
    projections: Tensor | None = None,
    cell_inches: float = 0.55,
    titles: bool = True,
    use_pyplot: bool = True,
) -> tuple[Figure, np.ndarray]:
    """Zeiler & Fergus's layout: per channel, its top-k projections beside their patches.

    Each channel gets a block: a 3x3 grid (for k = 9) of DeconvNet projections on the
    left and the 3x3 grid of the matching receptive-field patches on the right.

    Args:
        result: a :class:`~captum_deconvviz.MiningResult`.
        data: the data that was mined.
        layer: a mined layer.
        channels: one channel or a list; blocks are laid out in rows of up to 4.
        model: the model, required to compute the projections (unless given).
        method: ``"projection"`` (the projection itself as an RGB image, as in the
            paper) or any method of ``captum.attr.visualization.visualize_image_attr``
            (``"heat_map"``, ``"blended_heat_map"`` overlays it on the patch, ...).
        sign, cmap, alpha_overlay, outlier_perc: passed to ``visualize_image_attr``
            for each projection cell (``outlier_perc`` also clips ``"projection"``).
        denormalize: maps a data image to [0, 1] RGB for display, e.g.
            :func:`captum_deconvviz.zoo.denormalize`; default min-max per patch.
        projections: precomputed ``result.projections(...).images`` for these channels.
        cell_inches: size of one cell.
        titles: label each block with its channel and best activation.
        use_pyplot: as in Captum.

    Returns:
        ``(fig, axes)``: axes ``[channels, 2, rows, cols]`` (0: projections, 1: patches).

    Example:
        >>> fig, axes = plot_topk(result, data, "features.9", [3, 17], model=model, use_pyplot=False)
        >>> fig.savefig("topk.png", dpi=300)  # doctest: +SKIP
    """
    if method != "projection" and method not in _CAPTUM_METHODS:
        raise ValueError(f"method must be 'projection' or one of Captum's {_CAPTUM_METHODS}, got {method!r}")
    channel_list = [channels] if isinstance(channels, int) else list(channels)
    if not channel_list:
        raise ValueError("channels is empty")
    patches = result.patches(data, layer, channel_list, fill=0.0)
    if projections is None:
        if model is None:
            raise ValueError("plot_topk needs model= to compute the projections (or pass projections=)")
        projections = result.projections(model, data, layer, channel_list).images
    if projections.shape[:2] != patches.images.shape[:2]:
        raise ValueError(f"projections has shape {tuple(projections.shape)}, expected [{len(channel_list)}, k, ...]")
    rows, cols = _grid(result.k)
    per_row = min(4, len(channel_list))
    block_rows = math.ceil(len(channel_list) / per_row)
    gap = 1  # an empty column between projections and patches, and between blocks
    total_cols = per_row * (2 * cols + gap) - gap
    total_rows = block_rows * (rows + (1 if titles else 0))
    fig = _figure(use_pyplot, (total_cols * cell_inches, total_rows * cell_inches))
    grid = fig.add_gridspec(
        total_rows, total_cols, wspace=0.05, hspace=0.05, left=0.01, right=0.99, bottom=0.01, top=0.99
    )
    axes = np.empty((len(channel_list), 2, rows, cols), dtype=object)
    for b, channel in enumerate(channel_list):
        block_row, block_col = divmod(b, per_row)
        top = block_row * (rows + (1 if titles else 0)) + (1 if titles else 0)
        left = block_col * (2 * cols + gap)
        if titles:
            header = fig.add_subplot(grid[top - 1, left : left + 2 * cols])
            header.axis("off")
            records = result.records(layer, channel)
            best = f", max {records[0].value:.3g}" if records else ""
            header.text(0.5, 0.0, f"{layer} #{channel}{best}", ha="center", va="bottom", fontsize=8)
        for slot in range(rows * cols):
            r, c = divmod(slot, cols)
            for side in (0, 1):
                ax = fig.add_subplot(grid[top + r, left + side * cols + c])
                axes[b, side, r, c] = ax
                _blank(ax)
                if slot >= result.k or not bool(patches.mask[b, slot].any()):
                    ax.set_facecolor("0.9")
                    continue
                patch = _display(patches.images[b, slot], denormalize, patches.mask[b, slot])
                if side == 1:
                    ax.imshow(patch, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
                else:
                    _projection_cell(
                        ax, fig, projections[b, slot], patch, method, sign, cmap, alpha_overlay, outlier_perc
                    )
    _finish(fig, use_pyplot)
    return fig, axes


def _projection_cell(
    ax: Any, fig: Figure, projection: Tensor, patch: np.ndarray, method: str, sign: str, cmap: str | None,
    alpha_overlay: float, outlier_perc: float,
) -> None:  # fmt: skip
    attr = projection.detach().float().cpu().permute(1, 2, 0).numpy()
    if not np.any(attr):
        ax.set_facecolor("0.5")  # a zero projection (dead unit): Captum cannot normalize it
        return
    original = patch if patch.ndim == 3 else np.repeat(patch[..., None], 3, axis=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Captum warns about near-zero scales; the cell shows it anyway
        if method == "projection":
            captum_viz.visualize_image_attr(
                attr, normalize_projection(projection, outlier_perc), method="original_image",
                plt_fig_axis=(fig, ax), use_pyplot=False,
            )  # fmt: skip
        else:
            captum_viz.visualize_image_attr(
                attr, original, method=method, sign=sign, plt_fig_axis=(fig, ax), outlier_perc=outlier_perc,
                cmap=cmap, alpha_overlay=alpha_overlay, use_pyplot=False,
            )  # fmt: skip


def plot_hierarchy(
    result: MiningResult,
    data: Any,
    model: nn.Module,
    layers: Sequence[str] | None = None,
    channels_per_layer: int = 4,
    denormalize: Callable[[Tensor], Tensor] | None = None,
    outlier_perc: float = 0.5,
    cell_inches: float = 1.6,
    use_pyplot: bool = True,
) -> tuple[Figure, np.ndarray]:
    """Layers side by side, a few channels each: projections and patches (ZF Fig. 2).

    Each column is a layer; each cell shows, for one of its strongest channels (by
    maximum activation, dead channels skipped), the 3x3 mosaic of its top-9
    projections above the mosaic of their patches. Patches grow with depth, with the
    receptive field.

    Args:
        result: a :class:`~captum_deconvviz.MiningResult`.
        data: the mined data.
        model: the mined model (for the projections).
        layers: columns; default all mined layers, in mining order.
        channels_per_layer: rows.
        denormalize: maps data images to [0, 1] RGB.
        outlier_perc: percentile clipped when normalizing projections.
        cell_inches: size of one layer/channel cell.
        use_pyplot: as in Captum.

    Returns:
        ``(fig, axes)`` with axes ``[channels_per_layer, len(layers)]``.
    """
    layers = list(layers or result.layers)
    fig = _figure(use_pyplot, (len(layers) * cell_inches, channels_per_layer * cell_inches * 2 + 0.3))
    axes = np.array(fig.subplots(channels_per_layer, len(layers), squeeze=False))
    for col, layer in enumerate(layers):
        maximum = result.stats(layer).maximum
        alive = [c for c in maximum.argsort(descending=True).tolist() if maximum[c] > 0][:channels_per_layer]
        crops = result.patches(data, layer, alive) if alive else None
        projections = result.projections(model, data, layer, alive).images if alive else None
        for row in range(channels_per_layer):
            ax = axes[row, col]
            _blank(ax)
            if row == 0:
                field = result.fields.get(layer)
                size = f"\n{field.size[0]}x{field.size[1]} px" if field is not None else ""
                ax.set_title(f"{layer}{size}", fontsize=8)
            if row >= len(alive):
                continue
            assert projections is not None and crops is not None  # alive is not empty here
            top = _mosaic([normalize_projection(p, outlier_perc) for p in projections[row]], result.k)
            bottom = _mosaic(
                [_display(img, denormalize, m) for img, m in zip(crops.images[row], crops.mask[row], strict=True)],
                result.k,
            )
            ax.imshow(np.concatenate([top, np.ones((1, *top.shape[1:])), bottom]), interpolation="nearest")
            ax.set_ylabel(f"#{alive[row]}", fontsize=7)
    fig.subplots_adjust(left=0.05, right=0.99, bottom=0.01, top=0.94, wspace=0.18, hspace=0.08)
    _finish(fig, use_pyplot)
    return fig, axes


def _mosaic(images: list[np.ndarray], k: int) -> np.ndarray:
    """Tile ``k`` images [h, w, 3] into a square grid with 1-pixel white gaps."""
    rows, cols = _grid(k)
    h, w = images[0].shape[:2]
    canvas = np.ones((rows * (h + 1) - 1, cols * (w + 1) - 1, 3))
    for i, image in enumerate(images[:k]):
        r, c = divmod(i, cols)
        tile = image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2)
        canvas[r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = tile
    return canvas
