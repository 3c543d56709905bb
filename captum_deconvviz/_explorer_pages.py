"""What the explorer shows of one layer (its sheets and JSON) and of the data images.

:func:`layer_page` computes a layer's patches and projections group by group (a sheet's
worth of channels at a time, so memory stays bounded on wide layers), saves one sheet per
kind of cell and group, and returns the layer's JSON. :func:`image_sheets` saves the whole
images the records come from.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor, nn

from . import _explorer_data as data_json
from ._datasource import fetch
from ._exemplar_agreement import channel_means, crop_agreement
from ._explorer_images import (
    LOSSY_KINDS,
    captum_overlays,
    display_crops,
    lossy_cells,
    normalize_attributions,
    normalize_projections,
    save_block,
    save_grid,
    sheet_rows,
    thumbnails,
)
from ._figures import display_image
from ._layer_crops import LayerCrops, cell_size, records_of
from .mining_result import Crops, MiningResult

__all__ = ["image_sheets", "layer_page"]

_MISSING = 0.9  # light grey: a slot without a record (fewer images than k)


def _cells(crops: Crops, counts: Sequence[int], k: int, make: Callable[[Tensor, Tensor], np.ndarray]) -> np.ndarray:
    """``[channels, k, h, w, 3]`` display cells from crops ``[channels, k, C, h, w]``; missing slots grey."""
    channels = crops.images.shape[0]
    flat = make(crops.images.flatten(0, 1), crops.mask.flatten(0, 1))
    cells = flat.reshape(channels, k, *flat.shape[1:])
    for row, count in enumerate(counts):
        cells[row, count:] = _MISSING
    return cells


def _group(
    folder: Path,
    stem: str,
    kind: str,
    group: int,
    channels: list[int],
    counts: list[int],
    k: int,
    fetch: Callable[[str, list[int]], Crops],
    denormalize: Callable[[Tensor], Tensor] | None,
    guided: bool,
    files: dict[str, list[str]],
    agreement: dict[str, list[float]],
    lossless: bool = True,
) -> np.ndarray:
    """Save the sheets of one group of channels; returns the top-1 projection cells for thumbnails.

    Patches are not saved: the page cuts them out of the whole images, which it has anyway.
    The top-k DeconvNet sheet is lossless unless ``lossless`` is False and its cells are large
    (:func:`lossy_cells`); the rest is lossy.
    """
    zf = fetch("zf", channels)
    shown_zf = _cells(zf, counts, k, lambda images, _mask: normalize_projections(images))
    cells = {"zf": shown_zf}
    if guided:
        gbp = fetch("gbp", channels)
        cells["gbp"] = _cells(gbp, counts, k, lambda images, _mask: normalize_projections(images))
        metrics = crop_agreement(zf.images, gbp.images, zf.mask)
        for metric in ("spearman", "ssim"):
            agreement.setdefault(metric, []).extend(channel_means(metrics[metric]).tolist())
    if kind == "top":  # the clicked-patch view's overlays, drawn by Captum over the patches
        patches = fetch("patch", channels)
        shown = _cells(patches, counts, k, lambda images, mask: display_crops(images, mask, denormalize))
        normalized = normalize_attributions(zf.images.flatten(0, 1)).reshape(len(channels), k, *zf.images.shape[-2:])
        for row, count in enumerate(counts):
            normalized[row, count:] = 0
        cells.update(captum_overlays(normalized, shown))
    for name, block in cells.items():
        lossy = name in LOSSY_KINDS or kind != "top" or lossy_cells(lossless, block.shape[2:4])
        files.setdefault(name, []).append(save_block(block, folder / f"{stem}_{kind}_{name}_{group}", lossy=lossy))
    return shown_zf[:, 0]


def _records_json(
    folder: Path,
    stem: str,
    kind: str,
    result: MiningResult,
    model: nn.Module,
    data: Any,
    layer: str,
    denormalize: Callable[[Tensor], Tensor] | None,
    guided: bool,
    slots: data_json.ImageSlots,
    keep: Sequence[int] = (),
    advance: Callable[[int], Any] = lambda _channels: None,
    lossless: bool = True,
) -> tuple[dict[str, Any], np.ndarray, dict[str, list[float]], Crops | None]:
    channels = result.channels(layer)
    k = result.k if kind == "top" else result.bottom_k
    field = result.fields.get(layer)
    records = [records_of(result, layer, c, kind) for c in range(channels)]
    size = cell_size(field) if field is not None else (1, 1)
    per_sheet = sheet_rows(k, size[0], size[1], channels)
    files: dict[str, list[str]] = {}
    agreement: dict[str, list[float]] = {}
    tops = []
    fetch = LayerCrops(result, model, data, layer, kind, align=per_sheet, keep=keep)
    for group, start in enumerate(range(0, channels, per_sheet)):
        chosen = list(range(start, min(channels, start + per_sheet)))
        counts = [len(records[c]) for c in chosen]
        tops.append(_group(folder, stem, kind, group, chosen, counts, k, fetch, denormalize, guided, files, agreement,
                           lossless))  # fmt: skip
        advance(len(chosen))
    payload = {
        "cell": list(size),
        "per_sheet": per_sheet,
        "cols": k,
        "files": files,
        "records": [data_json.record_rows(r, field, slots) for r in records],
    }
    return payload, np.concatenate(tops), agreement, fetch.kept() if keep else None


def layer_page(
    folder: Path,
    stem: str,
    result: MiningResult,
    model: nn.Module,
    data: Any,
    layer: str,
    denormalize: Callable[[Tensor], Tensor] | None,
    guided: bool,
    slots: data_json.ImageSlots,
    keep: Sequence[int] = (),
    advance: Callable[[int], Any] = lambda _channels: None,
    lossless: bool = True,
) -> tuple[dict[str, Any], Crops | None]:
    """Save a layer's sheets (top-k, bottom-k where mined, thumbnails) and return its JSON.

    Each kind of crop of each group of channels is computed once, when its sheet is made: run it
    with the result's cache off (``cache_limit = 0``), or a wide layer's requests evict each
    other's crops and compute them again.

    Args:
        folder: the explorer folder.
        stem: the layer's safe file-name stem.
        result, model, data: the mining result, its model and data.
        layer: the mined layer.
        denormalize: maps data images to [0, 1] RGB.
        guided: also save the Guided Backprop projections of each record, and each channel's
            mean agreement (Spearman, SSIM) between them and the DeconvNet's.
        slots: the image slots the records' images get.
        keep: channels whose DeconvNet projections to return (the hierarchy figure's).
        advance: called with the number of channels each time a group of them is saved (a
            progress bar's ``update``).
        lossless: as in :func:`~captum_deconvviz.explorer.write_explorer`.

    Returns:
        The layer's entry of the explorer's JSON, and the projections of ``keep`` (None for a
        layer without a receptive field).
    """
    field = result.fields.get(layer)
    entry: dict[str, Any] = {
        "name": layer,
        "id": stem,
        "channels": result.channels(layer),
        "field": data_json.field_json(field),
        "stats": data_json.stats_columns(result, layer),
        "classes": data_json.class_columns(result, layer),
        "agreement": None,
        "top": None,
        "bottom": None,
        "thumbs": None,
    }
    if field is None:  # no crops without a field: the table still has the statistics
        return entry, None
    entry["top"], top1, agreement, shown = _records_json(
        folder, stem, "top", result, model, data, layer, denormalize, guided, slots, keep, advance, lossless
    )
    entry["agreement"] = data_json.agreement_columns(agreement, result.channels(layer)) if guided else None
    if result.bottom_k > 0:
        entry["bottom"], *_ = _records_json(folder, stem, "bottom", result, model, data, layer, denormalize,
                                            False, slots, advance=advance, lossless=lossless)  # fmt: skip
    thumbs = thumbnails(top1)
    lossy = lossy_cells(lossless, thumbs.shape[1:3])
    entry["thumbs"] = save_grid(thumbs, folder, f"{stem}_thumbs", cols=32, lossy=lossy).to_json()
    return entry, shown


def image_sheets(
    folder: Path,
    data: Any,
    slots: data_json.ImageSlots,
    denormalize: Callable[[Tensor], Tensor] | None,
    labels: Sequence[str] | None,
    lossless: bool = True,
) -> dict[str, Any]:
    """Save the whole images of the slots (in slot order) and return their JSON entry (lossless
    WebP, or lossy as :func:`lossy_cells` says)."""
    images = []
    for start in range(0, len(slots.indices), 256):  # a batch at a time: the images may be large
        for image in fetch(data, slots.indices[start : start + 256]):
            shown = display_image(image, denormalize)
            images.append(shown if shown.ndim == 3 else np.repeat(shown[..., None], 3, axis=2))
    entry: dict[str, Any] = {
        "index": list(slots.indices),
        "labels": [str(labels[i]) for i in slots.indices] if labels is not None else None,
        "sheets": None,
    }
    if images:
        stacked = np.stack(images)
        cols = max(1, min(32, 2048 // stacked.shape[2]))
        lossy = lossy_cells(lossless, stacked.shape[1:3])
        entry["sheets"] = save_grid(stacked, folder, "images", cols=cols, lossy=lossy).to_json()
    return entry
