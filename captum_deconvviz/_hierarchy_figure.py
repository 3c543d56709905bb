"""The hierarchy figure: a few live channels per layer, each its top-k projections in a mosaic.

Split from :mod:`captum_deconvviz.viz`, which exports :func:`plot_hierarchy` and
:func:`hierarchy_channels`; like every figure it draws what it is given and runs no model
(except through the deprecated ``model=`` spelling).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from torch import Tensor, nn

from ._checks import check_bool, check_float, check_int
from ._figures import (
    blank,
    check_finite_values,
    check_image_function,
    check_shape,
    check_type,
    deprecated,
    display_image,
    finish,
    mosaic,
    new_figure,
    normalize_projection,
)
from ._layer_crops import windowed
from .mining_result import Crops, MiningResult

__all__ = ["hierarchy_channels", "plot_hierarchy"]

_RESULT_ORIGIN = "from mine_topk or MiningResult.load"

# --------------------------------------------------------------------------------------
# The hierarchy.
# --------------------------------------------------------------------------------------


def hierarchy_channels(
    result: MiningResult, layers: Sequence[str] | None = None, channels_per_layer: int = 4
) -> dict[str, list[int]]:
    """The channels :func:`plot_hierarchy` shows: per layer, its strongest live ones, strongest first.

    Channels are ranked by their maximum activation; dead channels (never positive)
    are left out, so a layer may have fewer than ``channels_per_layer``.

    Args:
        result: a :class:`~captum_deconvviz.MiningResult`.
        layers: mined layers (one name, or a list); default all, in mining order.
        channels_per_layer: at most this many channels per layer (>= 1).

    Returns:
        ``{layer: [channel, ...]}``, strongest first.

    Example:
        >>> shown = hierarchy_channels(result, channels_per_layer=4)  # doctest: +SKIP
        >>> projections = {layer: result.projections(model, data, layer, channels)
        ...                for layer, channels in shown.items()}  # doctest: +SKIP
    """
    check_type(result, "result", MiningResult, _RESULT_ORIGIN)
    check_int(channels_per_layer, "channels_per_layer", minimum=1)
    if isinstance(layers, str):
        layers = [layers]
    if layers is not None and not list(layers):
        raise ValueError("layers is empty; give None for every mined layer")
    shown = {}
    for layer in list(layers or result.layers):
        maximum = result.stats(layer).maximum
        shown[layer] = [c for c in maximum.argsort(descending=True).tolist() if maximum[c] > 0][:channels_per_layer]
    return shown


def _hierarchy_cell(
    projections: Tensor, crops: Crops, k: int, denormalize: Callable[[Tensor], Tensor] | None, outlier_perc: float
) -> np.ndarray:
    """One channel: the mosaic of its projections above the mosaic of their patches."""
    top = mosaic([normalize_projection(p, outlier_perc) for p in projections], k)
    bottom = mosaic([display_image(img, denormalize, m) for img, m in zip(crops.images, crops.mask, strict=True)], k)
    return np.concatenate([top, np.ones((1, *top.shape[1:])), bottom])


def _hierarchy_inputs(
    result: MiningResult,
    data: Any,
    shown: dict[str, list[int]],
    projections: Mapping[str, Crops | Tensor] | nn.Module | None,
    model: nn.Module | None,
) -> dict[str, tuple[Tensor, Crops]]:
    """Per layer with live channels: its projections (checked against the patches' shape) and its patches."""
    if isinstance(projections, nn.Module):  # the old third argument: the model
        if model is not None:
            raise ValueError("plot_hierarchy got two models (projections=a model, and model=...): give one; "
                             "better, projections={layer: result.projections(model, data, layer, ...)}")  # fmt: skip
        model, projections = projections, None
    elif model is not None and projections is not None:
        raise ValueError("plot_hierarchy got both projections and model (deprecated): give only projections")
    if projections is not None and not isinstance(projections, Mapping):
        raise TypeError(f"projections must be a dict {{layer: projections}}, got {type(projections).__name__}")
    if model is not None:
        deprecated("plot_hierarchy(result, data, model): pass the projections of hierarchy_channels(result)", 4)
        projections = {layer: result.projections(model, data, layer, alive) for layer, alive in shown.items() if alive}
    if projections is None:
        raise ValueError("plot_hierarchy needs projections: {layer: result.projections(model, data, layer, channels)}")
    cells = {}
    for layer, alive in shown.items():
        if not alive:
            continue
        crops = result.patches(data, layer, alive)
        n, k, c, h, w = crops.images.shape
        described = (f"[{n}, k={k}, {c}, {h}, {w}]: it must hold the {n} channels {alive}, in that order "
                     "(hierarchy_channels(result) picks them)")  # fmt: skip
        argname = f"projections[{layer!r}]"
        if projections.get(layer) is None:
            raise ValueError(f"{argname} is missing; expected {described}")
        images = check_shape(projections[layer], argname, tuple(crops.images.shape), described)
        check_finite_values(images, argname, "NaN/Inf cells would draw blank")
        # A field larger than the image (a deep layer on small images): each record's image-sized
        # window of its box, as the explorer's cells, not the image small in a mostly grey field.
        shown_projections = windowed(result, layer, alive, "top", Crops(images, crops.mask)).images
        cells[layer] = (shown_projections, windowed(result, layer, alive, "top", crops))
    return cells


def plot_hierarchy(
    result: MiningResult,
    data: Any,
    projections: Mapping[str, Crops | Tensor] | nn.Module | None = None,
    layers: Sequence[str] | None = None,
    channels_per_layer: int = 4,
    denormalize: Callable[[Tensor], Tensor] | None = None,
    outlier_perc: float = 0.5,
    cell_inches: float = 1.6,
    use_pyplot: bool = True,
    *,
    model: nn.Module | None = None,
) -> tuple[Figure, np.ndarray]:
    """Layers side by side, a few channels each: projections and patches (ZF Fig. 2).

    Each column is a layer; each cell shows, for one of its strongest channels (by
    maximum activation, dead channels skipped: :func:`hierarchy_channels`), the 3x3
    mosaic of its top-9 projections above the mosaic of their patches. Patches grow
    with depth, with the receptive field.

    Args:
        result: a :class:`~captum_deconvviz.MiningResult`.
        data: the mined data.
        projections: per layer, the projections of the channels
            :func:`hierarchy_channels` picks, in its order
            (``result.projections(model, data, layer, channels)``). Passing the model
            here (the old third argument) still works, deprecated.
        layers: columns; default all mined layers, in mining order.
        channels_per_layer: rows.
        denormalize: maps data images to [0, 1] RGB.
        outlier_perc: percentile clipped when normalizing projections.
        cell_inches: size of one layer/channel cell.
        use_pyplot: as in Captum.
        model: deprecated: pass ``projections`` instead.

    Returns:
        ``(fig, axes)`` with axes ``[channels_per_layer, len(layers)]``.

    Raises:
        ValueError: a layer's projections are missing, not shaped like its patches, or
            hold NaN or Inf; ``projections`` and ``model`` are both given;
            ``channels_per_layer`` < 1.
        TypeError: ``result`` is not a ``MiningResult``, ``denormalize`` is not a
            function, or a number or flag has the wrong type.

    Example:
        >>> shown = hierarchy_channels(result)  # doctest: +SKIP
        >>> projections = {layer: result.projections(model, data, layer, channels)
        ...                for layer, channels in shown.items()}  # doctest: +SKIP
        >>> fig, axes = plot_hierarchy(result, data, projections, use_pyplot=False)  # doctest: +SKIP
    """
    check_image_function(denormalize, "denormalize")
    check_float(outlier_perc, "outlier_perc", minimum=0.0, below=100.0)
    check_float(cell_inches, "cell_inches", above=0.0)
    check_bool(use_pyplot, "use_pyplot")
    shown = hierarchy_channels(result, layers, channels_per_layer)
    cells = _hierarchy_inputs(result, data, shown, projections, model)
    fig = new_figure(use_pyplot, (len(shown) * cell_inches, channels_per_layer * cell_inches * 2 + 0.3))
    axes = np.array(fig.subplots(channels_per_layer, len(shown), squeeze=False))
    for col, (layer, alive) in enumerate(shown.items()):
        for row in range(channels_per_layer):
            ax = axes[row, col]
            blank(ax)
            if row == 0:
                field = result.fields.get(layer)
                size = f"\n{field.size[0]}x{field.size[1]} px" if field is not None else ""
                ax.set_title(f"{layer}{size}", fontsize=8)
            if row >= len(alive):
                continue
            images, crops = cells[layer]
            channel = Crops(crops.images[row], crops.mask[row])
            ax.imshow(_hierarchy_cell(images[row], channel, result.k, denormalize, outlier_perc),
                      interpolation="nearest")  # fmt: skip
            ax.set_ylabel(f"#{alive[row]}", fontsize=7)
    fig.subplots_adjust(left=0.05, right=0.99, bottom=0.01, top=0.94, wspace=0.18, hspace=0.08)
    finish(fig, use_pyplot)
    return fig, axes
