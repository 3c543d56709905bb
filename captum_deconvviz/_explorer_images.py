"""The explorer's images: cells packed into a few sheet files, and Captum's overlays drawn per sheet.

A sheet holds the cells of many channels (one row of ``k`` cells per channel), so the
browser loads one file for a group of channels instead of one PNG per channel, and only
when a channel of the group is shown. Patches, DeconvNet projections and whole images are
lossless WebP; the Guided Backprop column and the overlays, which are looked at rather than
measured, are lossy WebP (quality 90). PNG is the fallback where Pillow has no WebP or a
sheet is wider than WebP allows.

The overlays (heat map, blended heat map, masked image) are drawn by Captum's own
``visualize_image_attr``, once per sheet rather than once per record: each record's map is
first normalized on its own the way ``visualize_image_attr`` does it (channel sum, then
the ``100 - outlier_perc`` cumulative-sum threshold, clipped to [-1, 1]), so the one call
over the sheet, with (next to) no outliers, draws every cell as its own call would.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import torch
from captum.attr import visualization as captum_viz
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, features
from torch import Tensor

from ._figures import display_image

__all__ = [
    "LOSSY_KINDS",
    "LOSSY_MIN_CELL",
    "OVERLAYS",
    "SHEET_PIXELS",
    "Sheets",
    "captum_overlays",
    "display_crops",
    "lossy_cells",
    "normalize_attributions",
    "normalize_projections",
    "save_block",
    "save_grid",
    "sheet_rows",
    "thumbnails",
]

#: The overlays of the clicked-patch view: (our key, ``visualize_image_attr`` method).
OVERLAYS: tuple[tuple[str, str], ...] = (
    ("heat_map", "heat_map"),
    ("blended", "blended_heat_map"),
    ("masked", "masked_image"),
)
#: Kinds of cells stored lossy (WebP quality 90).
LOSSY_KINDS = frozenset({"gbp", "heat_map", "blended", "masked"})
#: With ``lossless=False``, cells at least this many pixels a side are stored lossy too. Lossy
#: WebP halves the colour resolution, which on smaller cells is a visible error: on the
#: default model's 5-px conv1 projections 13/255 on average, against 3-4/255 on its 15-32 px
#: cells, and such small cells are small files anyway.
LOSSY_MIN_CELL = 16
#: At most this many pixels per sheet file (about 1 MB of lossless WebP): small enough to
#: load at once when a channel is opened, large enough that a layer is a few files.
SHEET_PIXELS = 1_000_000
_WEBP = features.check("webp")
# Not 0: Captum's threshold test (cumsum >= total * 0.01 * 100) can miss the last element by a
# rounding error. Any map's normalized values sum to at most its pixel count (< 1e8 here), so with
# this the threshold is still the maximum, 1, as long as some cell reaches it (each non-empty does).
_NO_OUTLIERS = 1e-9
_WEBP_SIDE = 16383  # the largest WebP side


@dataclass(frozen=True)
class Sheets:
    """Where a grid of cells was saved: ``files[g]`` holds rows ``g * per_sheet ...``, ``cols`` cells a row."""

    files: list[str]
    cell: tuple[int, int]
    per_sheet: int
    cols: int

    def to_json(self) -> dict[str, object]:
        """The sheet geometry as the explorer's JSON reads it."""
        return {"files": self.files, "cell": list(self.cell), "per_sheet": self.per_sheet, "cols": self.cols}


def _to_uint8(array: np.ndarray) -> np.ndarray:
    return (np.clip(array, 0, 1) * 255 + 0.5).astype(np.uint8)


def _save(pixels: np.ndarray, path: Path, lossy: bool) -> str:
    """Save ``pixels [H, W, 3]`` uint8; returns the file name (its suffix says the format)."""
    if _WEBP and max(pixels.shape[:2]) <= _WEBP_SIDE:
        name = path.parent / f"{path.name}.webp"  # not with_suffix: stems such as "features.1_top" hold dots
        options = {"quality": 90, "method": 4} if lossy else {"lossless": True, "quality": 80, "method": 4}
        Image.fromarray(pixels).save(name, "WEBP", **options)
    else:
        name = path.parent / f"{path.name}.png"
        Image.fromarray(pixels).save(name, "PNG")
    return name.name


def lossy_cells(lossless: bool, cell: tuple[int, ...]) -> bool:
    """Whether cells of ``cell = (h, w)`` pixels that are lossless by default are stored lossy."""
    return not lossless and min(cell) >= LOSSY_MIN_CELL


def sheet_rows(columns: int, h: int, w: int, total: int) -> int:
    """How many rows of ``columns`` cells ``h x w`` one sheet holds (at least one, at most ``total``)."""
    return max(1, min(total, SHEET_PIXELS // max(1, columns * h * w), _WEBP_SIDE // max(h, 1)))


def save_block(cells: np.ndarray, path: Path, lossy: bool = False) -> str:
    """Save ``cells [rows, cols, h, w, 3]`` (values in [0, 1]) as one sheet; returns its file name."""
    rows, columns, h, w = cells.shape[:4]
    pixels = _to_uint8(cells.transpose(0, 2, 1, 3, 4).reshape(rows * h, columns * w, 3))
    return _save(pixels, path, lossy)


def save_grid(images: np.ndarray, folder: Path, stem: str, cols: int, lossy: bool = False) -> Sheets:
    """Pack ``images [N, h, w, 3]`` into sheets ``{stem}_{g}``, ``cols`` a row, in reading order."""
    count, h, w = images.shape[:3]
    cols = max(1, min(cols, count))
    rows = -(-count // cols)
    grid = np.full((rows * cols, h, w, 3), 0.9)
    grid[:count] = images
    grid = grid.reshape(rows, cols, h, w, 3)
    per_sheet = sheet_rows(cols, h, w, rows)
    files = [
        save_block(grid[start : start + per_sheet], folder / f"{stem}_{g}", lossy)
        for g, start in enumerate(range(0, rows, per_sheet))
    ]
    return Sheets(files, (h, w), per_sheet, cols)


def thumbnails(images: np.ndarray, side: int = 32) -> np.ndarray:
    """``images [N, h, w, 3]`` shrunk (box filter) to at most ``side`` pixels a side."""
    h, w = images.shape[1:3]
    scale = min(1.0, side / max(h, w))
    if scale >= 1:
        return images
    th, tw = max(1, round(h * scale)), max(1, round(w * scale))
    return np.stack([
        np.asarray(Image.fromarray(_to_uint8(image)).resize((tw, th), Image.Resampling.BOX)) / 255.0
        for image in images
    ])  # fmt: skip


def normalize_projections(projections: Tensor, outlier_perc: float = 0.5) -> np.ndarray:
    """Projections ``[N, C, h, w]`` as ``[N, h, w, 3]`` in [0, 1], zero at mid-grey, each on its own scale.

    The batched form of ``normalize_projection`` (the figures' Zeiler & Fergus contrast): each map
    divided by twice its ``100 - outlier_perc`` percentile of absolute values, plus 0.5.
    """
    maps = projections.detach().float().cpu()
    count = maps.shape[0]
    if count == 0:
        return np.zeros((0, *maps.shape[2:], 3))
    flat = maps.abs().reshape(count, -1)
    scale = torch.quantile(flat, 1 - outlier_perc / 100, dim=1) if flat.shape[1] else torch.zeros(count)
    scale = torch.where(scale > 0, scale, flat.amax(dim=1))
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    image = (maps / (2 * scale.view(-1, 1, 1, 1)) + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    return np.repeat(image, 3, axis=3) if image.shape[3] == 1 else image


def display_crops(crops: Tensor, mask: Tensor, denormalize: Callable[[Tensor], Tensor] | None) -> np.ndarray:
    """Data crops ``[N, C, h, w]`` as ``[N, h, w, 3]`` in [0, 1]; pixels outside the image mid-grey."""
    shown = [display_image(image, denormalize, m) for image, m in zip(crops, mask, strict=True)]
    return (
        np.stack([s if s.ndim == 3 else np.repeat(s[..., None], 3, axis=2) for s in shown])
        if shown
        else (np.zeros((0, *crops.shape[2:], 3)))
    )


def normalize_attributions(maps: Tensor, outlier_perc: float = 2.0) -> np.ndarray:
    """Each map ``[N, C, h, w]`` summed over channels and normalized as ``visualize_image_attr`` does.

    The sign is ``"absolute_value"``: the absolute channel sum divided by its cumulative-sum
    threshold at ``100 - outlier_perc`` percent, clipped to [0, 1]. All-zero maps stay zero.

    Returns:
        ``[N, h, w]`` float64.
    """
    combined = maps.detach().double().cpu().sum(dim=1).abs().numpy()
    out = np.zeros_like(combined)
    for i, values in enumerate(combined):
        ordered = np.sort(values.ravel())
        sums = np.cumsum(ordered)
        if sums.size == 0 or sums[-1] <= 0:
            continue
        threshold = ordered[np.where(sums >= sums[-1] * 0.01 * (100 - outlier_perc))[0][0]]
        if threshold <= 0:
            threshold = ordered[-1]
        out[i] = np.clip(values / threshold, -1, 1)
    return out


def _render(attr: np.ndarray, original: np.ndarray, method: str) -> np.ndarray:
    """One ``visualize_image_attr`` call drawn at exactly one figure pixel per array pixel."""
    height, width = attr.shape[:2]
    dpi = 100
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    with warnings.catch_warnings(), matplotlib.rc_context({"image.interpolation": "nearest"}):
        warnings.simplefilter("ignore")
        captum_viz.visualize_image_attr(
            attr[..., None], original, method=method, sign="absolute_value", outlier_perc=_NO_OUTLIERS,
            plt_fig_axis=(fig, ax), use_pyplot=False,
        )  # fmt: skip
    ax.set_axis_off()
    ax.set_xlim(-0.5, width - 0.5)
    ax.set_ylim(height - 0.5, -0.5)
    canvas.draw()
    pixels = np.asarray(canvas.buffer_rgba())[..., :3]
    if pixels.shape[:2] != (height, width):  # figure size rounding: resample to the exact grid
        pixels = np.asarray(Image.fromarray(pixels).resize((width, height), Image.Resampling.NEAREST))
    return pixels / 255.0


def _grey_per_cell(originals: np.ndarray) -> np.ndarray:
    """Each cell's channel mean stretched to [0, 1] on its own, as grey RGB."""
    grey = originals.mean(axis=4)
    low = grey.min(axis=(2, 3), keepdims=True)
    high = grey.max(axis=(2, 3), keepdims=True)
    stretched = (grey - low) / np.where(high > low, high - low, 1.0)
    return np.repeat(stretched[..., None], 3, axis=4)


def captum_overlays(normalized: np.ndarray, originals: np.ndarray) -> dict[str, np.ndarray]:
    """Captum's heat map, blended heat map and masked image of many cells, one call per method.

    Args:
        normalized: ``[rows, cols, h, w]`` maps from :func:`normalize_attributions` (in [0, 1]).
        originals: ``[rows, cols, h, w, 3]`` the images under them, in [0, 1].

    Returns:
        Per key of :data:`OVERLAYS`, ``[rows, cols, h, w, 3]`` in [0, 1]; cells whose map is all
        zero (dead channels, missing records) are mid-grey.
    """
    rows, cols, h, w = normalized.shape
    empty = ~np.any(normalized.reshape(rows, cols, -1) > 0, axis=2)
    out = {key: np.full((rows, cols, h, w, 3), 0.5) for key, _ in OVERLAYS}
    if empty.all():
        return out
    attr = normalized.transpose(0, 2, 1, 3).reshape(rows * h, cols * w)
    for key, method in OVERLAYS:
        # The blended heat map shows the image's grey levels stretched to their range (imshow's
        # autoscale): stretched per cell here, or one call would stretch them over the whole sheet.
        shown = _grey_per_cell(originals) if method == "blended_heat_map" else originals
        original = shown.transpose(0, 2, 1, 3, 4).reshape(rows * h, cols * w, 3)
        sheet = _render(attr, original, method).reshape(rows, h, cols, w, 3).transpose(0, 2, 1, 3, 4)
        out[key] = np.where(empty[:, :, None, None, None], 0.5, sheet)
    return out
