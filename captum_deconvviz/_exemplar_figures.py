"""The Guided Backprop column of :func:`~captum_deconvviz.plot_topk` (``guided=True``).

Each record becomes three cells side by side: its patch, its DeconvNet projection and
its Guided Backprop projection (seeded with the same unit), and each channel's title
gives the agreement of the two projections, computed from the tensors drawn by
:func:`~captum_deconvviz._exemplar_agreement.crop_agreement` (the numbers of
:func:`~captum_deconvviz.exemplar_agreement`). ``viz`` lays the blocks out and calls
these; nothing here runs a model.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from torch import Tensor

from ._exemplar_agreement import channel_means, crop_agreement
from ._figures import blank, display_image, grid
from .mining_result import Crops

__all__ = ["GUIDED_SIDE", "guided_block", "guided_titles", "guided_widths"]

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
