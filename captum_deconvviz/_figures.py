"""Figure utilities shared by :mod:`~captum_deconvviz.viz` and the report.

Small, model-free helpers: make and finish a figure (pyplot or bare), blank an axis,
turn data images and projections into displayable arrays, tile images into a mosaic,
and draw one attribution cell with Captum's ``visualize_image_attr``. The checks of the
arguments only figures take (result types, image functions, colormaps, Captum's methods
and signs, example indices, tensor shapes and values) are here too, so every figure
refuses a bad argument in one line before it draws anything; plain numbers and flags
are checked with :mod:`~captum_deconvviz._checks`.
"""

from __future__ import annotations

import difflib
import math
import numbers
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import matplotlib
import numpy as np
import torch
from captum.attr import visualization as captum_viz
from matplotlib.colors import Colormap
from matplotlib.figure import Figure
from torch import Tensor

from ._checks import check_choice, check_int, show

__all__ = [
    "CAPTUM_METHODS",
    "SIGNS",
    "attribution_cell",
    "blank",
    "check_cell_style",
    "check_cmap",
    "check_finite_values",
    "check_image_function",
    "check_indices",
    "check_shape",
    "check_type",
    "deprecated",
    "display_image",
    "finish",
    "grid",
    "mosaic",
    "new_figure",
    "normalize_projection",
    "projection_drawer",
]

#: Captum's ways to draw an attribution, and its signs (``visualize_image_attr``'s names).
CAPTUM_METHODS: tuple[str, ...] = tuple(captum_viz.ImageVisualizationMethod.__members__)
SIGNS: tuple[str, ...] = tuple(captum_viz.VisualizeSign.__members__)
#: Captum masks or scales the image by the attribution with these, which needs one sign.
_ONE_SIGN_METHODS = ("masked_image", "alpha_scaling")

#: Backends that draw to files only: ``plt.show()`` there would only warn.
_NON_INTERACTIVE = ("agg", "pdf", "svg", "ps", "cairo", "template")


def deprecated(message: str, stacklevel: int = 3) -> None:
    """Warn that a figure's old spelling goes in the next release.

    ``stacklevel`` counts from here: 3 points at the caller of the function that calls this.
    """
    warnings.warn(f"{message} (deprecated; it will be removed in the next release)", DeprecationWarning,
                  stacklevel=stacklevel)  # fmt: skip


def new_figure(use_pyplot: bool, figsize: tuple[float, float]) -> Figure:
    """A figure made by pyplot (shown in notebooks), or a bare ``Figure`` that pyplot never sees."""
    if use_pyplot:
        import matplotlib.pyplot as plt

        return plt.figure(figsize=figsize)
    return Figure(figsize=figsize)


def finish(fig: Figure, use_pyplot: bool) -> None:
    """Show a pyplot figure on an interactive backend, as Captum's ``use_pyplot`` does."""
    if use_pyplot and matplotlib.get_backend().lower() not in _NON_INTERACTIVE:
        import matplotlib.pyplot as plt

        plt.show()


def blank(ax: Any) -> None:
    """No ticks and no frame: the axis shows only its image."""
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def grid(count: int) -> tuple[int, int]:
    """``(rows, cols)`` of the squarest grid with room for ``count`` cells (9: 3x3)."""
    side = math.ceil(math.sqrt(count))
    return math.ceil(count / side), side


def normalize_projection(projection: Tensor, outlier_perc: float = 0.5) -> np.ndarray:
    """A projection ``[C, h, w]`` as an ``[h, w, C]`` image in [0, 1], zero at mid-grey.

    Values are divided by ``2 * m`` and shifted by 0.5, where ``m`` is the
    ``100 - outlier_perc`` percentile of the absolute values (the contrast
    normalization of Zeiler & Fergus's figures). An all-zero projection is mid-grey.

    Example:
        >>> normalize_projection(torch.tensor([[[-1.0, 0.0, 1.0]]]), outlier_perc=0).squeeze().tolist()
        [0.0, 0.5, 1.0]
    """
    array = projection.detach().float().cpu().numpy()
    scale = float(np.percentile(np.abs(array), 100 - outlier_perc)) if array.size else 0.0
    if scale <= 0:
        scale = float(np.abs(array).max()) or 1.0
    image = np.clip(array / (2 * scale) + 0.5, 0, 1)
    return np.moveaxis(image, 0, -1) if image.ndim == 3 else image


def display_image(
    image: Tensor, denormalize: Callable[[Tensor], Tensor] | None, mask: Tensor | None = None
) -> np.ndarray:
    """A data image ``[C, h, w]`` as ``[h, w, C]`` in [0, 1] (``[h, w]`` for one channel).

    Args:
        image: the image as the model sees it.
        denormalize: maps it to [0, 1] RGB; None stretches its values min-max
            (over the ``mask`` pixels only, when given).
        mask: ``[h, w]``, False where the pixels are not the image's (outside a
            receptive-field crop): those are drawn mid-grey.
    """
    image = image.detach().float().cpu()
    if denormalize is not None:
        shown = denormalize(image)
        if not isinstance(shown, Tensor):
            raise TypeError(f"denormalize must return a Tensor, returned {type(shown).__name__}")
        if shown.dim() != 3 or shown.shape[0] not in (1, 3) or shown.shape[1:] != image.shape[1:]:
            raise ValueError(f"denormalize must map an image [C, h, w] to [3, h, w] (or [1, h, w]); for one of shape "
                             f"{list(image.shape)} it returned shape {list(shown.shape)}")  # fmt: skip
        shown = shown.detach().float().cpu().clamp(0, 1)
    else:
        valid = image[:, mask] if mask is not None and mask.any() else image.flatten(1)
        low, high = float(valid.min()), float(valid.max())
        shown = ((image - low) / (high - low if high > low else 1.0)).clamp(0, 1)
    if mask is not None:
        mask = mask.cpu()
        shown = torch.where(mask, shown, torch.full_like(shown, 0.5))
    array = np.moveaxis(shown.numpy(), 0, -1)
    return array[..., 0] if array.shape[-1] == 1 else array


def mosaic(images: list[np.ndarray], k: int) -> np.ndarray:
    """Tile ``k`` images ``[h, w, 3]`` (or ``[h, w]``) into a square grid with 1-pixel white gaps."""
    rows, cols = grid(k)
    h, w = images[0].shape[:2]
    canvas = np.ones((rows * (h + 1) - 1, cols * (w + 1) - 1, 3))
    for i, image in enumerate(images[:k]):
        r, c = divmod(i, cols)
        tile = image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2)
        canvas[r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = tile
    return canvas


def attribution_cell(ax: Any, fig: Figure, attribution: Tensor, original: np.ndarray, **options: Any) -> None:
    """Draw ``attribution [C, h, w]`` over ``original [h, w(, 3)]`` with ``visualize_image_attr``.

    Args:
        ax, fig: where to draw.
        attribution: the map; an all-zero one (a dead unit) is a mid-grey cell, since
            Captum cannot normalize it.
        original: the image in [0, 1] (grey images are repeated to RGB).
        options: passed to ``visualize_image_attr`` (``method``, ``sign``,
            ``outlier_perc``, ``cmap``, ``alpha_overlay``, ...).
    """
    attr = attribution.detach().float().cpu().permute(1, 2, 0).numpy()
    if not np.any(attr):
        ax.set_facecolor("0.5")
        ax.set_xticks([])
        ax.set_yticks([])
        return
    rgb = original if original.ndim == 3 else np.repeat(original[..., None], 3, axis=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Captum warns about near-zero scales; the cell shows it anyway
        captum_viz.visualize_image_attr(attr, rgb, plt_fig_axis=(fig, ax), use_pyplot=False, **options)


def projection_drawer(
    fig: Figure, method: str, sign: str, cmap: str | None, alpha_overlay: float, outlier_perc: float
) -> Callable[[Any, Tensor, np.ndarray], None]:
    """How figures draw a projection cell: ``draw(ax, projection, its patch)``.

    ``method="projection"`` draws the projection itself as an RGB image (the contrast
    normalization of :func:`normalize_projection`); any other method is Captum's
    ``visualize_image_attr`` with these options, over the patch.
    """

    def draw(ax: Any, projection: Tensor, patch: np.ndarray) -> None:
        if method == "projection":  # the projection itself, as an RGB image
            attribution_cell(
                ax, fig, projection, normalize_projection(projection, outlier_perc), method="original_image"
            )
        else:
            attribution_cell(ax, fig, projection, patch, method=method, sign=sign, outlier_perc=outlier_perc, cmap=cmap,
                             alpha_overlay=alpha_overlay)  # fmt: skip

    return draw


# --------------------------------------------------------------------------------------
# Argument checks of figures: each raises one line naming the argument, before any drawing.
# --------------------------------------------------------------------------------------


def check_type(value: Any, argname: str, expected: type, origin: str) -> None:
    """Raise ``TypeError`` unless ``value`` is an ``expected`` (``origin``: where one comes from)."""
    if not isinstance(value, expected):
        raise TypeError(f"{argname} must be a {expected.__name__} ({origin}), got {type(value).__name__}")


def check_image_function(function: Any, argname: str) -> None:
    """Raise ``TypeError`` unless ``function`` is callable or None.

    Only a function is taken: a name such as ``"imagenet"`` would have to be guessed at.
    """
    if function is not None and not callable(function):
        raise TypeError(
            f"{argname} must be a function mapping an image tensor [C, h, w] to [0, 1] RGB (for example "
            f"captum_deconvviz.zoo.denormalize), or None; got {show(function)} ({type(function).__name__})"
        )


def check_cmap(cmap: Any) -> None:
    """Raise unless ``cmap`` is None, a ``Colormap`` or the name of one in ``matplotlib.colormaps``."""
    if cmap is None or isinstance(cmap, Colormap):
        return
    if not isinstance(cmap, str):
        raise TypeError(f"cmap must be a colormap name ('viridis'...), a Colormap or None, got {type(cmap).__name__}")
    if cmap not in matplotlib.colormaps:
        close = difflib.get_close_matches(cmap, list(matplotlib.colormaps), n=3)
        hint = f"did you mean {', '.join(map(repr, close))}?" if close else "see list(matplotlib.colormaps)"
        raise ValueError(f"cmap={cmap!r} is not a matplotlib colormap; {hint}")


def check_cell_style(method: str, sign: str, methods: Sequence[str] = CAPTUM_METHODS) -> None:
    """Raise unless ``method`` is one of ``methods`` and ``sign`` one of Captum's signs that it can draw.

    ``sign`` is checked whatever the method, so a typo is caught even where the default
    method does not use it.
    """
    check_choice(method, "method", methods)
    check_choice(sign, "sign", SIGNS)
    if sign == "all" and method in _ONE_SIGN_METHODS:
        raise ValueError(f"sign='all' cannot be drawn with method={method!r}, which masks or scales the image by "
                         "one sign; use 'positive', 'negative' or 'absolute_value'")  # fmt: skip


def check_indices(values: Any, argname: str, count: int) -> list[int]:
    """``values`` (one index or a sequence) as a non-empty list of ints in ``[-count, count)``, else raise."""
    if isinstance(values, str) or not isinstance(values, (numbers.Integral, Sequence, np.ndarray, Tensor)):
        kind = type(values).__name__
        raise TypeError(f"{argname} must be an index or a list of indices, got {show(values)} ({kind})")
    if isinstance(values, Tensor) and values.dim() == 0:
        values = values.item()
    items = [values] if isinstance(values, numbers.Integral) else list(values)
    if not items:
        raise ValueError(f"{argname} is empty; give at least one index in [0, {count})")
    checked = []
    for i, value in enumerate(items):
        index = check_int(value, f"{argname}[{i}]", minimum=-count, maximum=count - 1)
        assert index is not None  # None is refused: allow_none is off
        checked.append(index)
    return checked


def check_finite_values(tensor: Tensor, argname: str, consequence: str) -> None:
    """Raise ``ValueError`` naming ``argname`` and the count if ``tensor`` holds NaN or Inf."""
    if tensor.device.type == "meta":
        raise ValueError(f"{argname} is on the meta device: it has shapes but no values to draw; load its values first")
    if not tensor.is_floating_point():
        return
    bad = int((~torch.isfinite(tensor.detach())).sum())
    if bad:
        raise ValueError(f"{argname} holds {bad} NaN/Inf values (of {tensor.numel()}): {consequence}")


def check_shape(tensor: Any, argname: str, expected: tuple[int, ...], described: str) -> Tensor:
    """The images of ``tensor`` (a ``Tensor``, or a ``Crops`` with ``.images``) if shaped ``expected``, else raise.

    ``described`` is ``expected`` as the message shows it, with what each size is.
    """
    images = getattr(tensor, "images", tensor)
    if not isinstance(images, Tensor):
        raise TypeError(f"{argname} must be a Crops or a Tensor {described}, got {type(tensor).__name__}")
    if tuple(images.shape) != tuple(expected):
        raise ValueError(f"{argname} has shape {list(images.shape)}, expected {described}")
    return images
