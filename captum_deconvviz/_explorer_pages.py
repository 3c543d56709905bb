"""What the explorer shows of one layer (its sheets and JSON) and of the data images.

:func:`layer_page` computes a layer's patches and projections group by group (a sheet's
worth of channels at a time, so memory stays bounded on wide layers), saves one sheet per
kind of cell and group, and returns the layer's JSON. :func:`image_sheets` saves the whole
images the records come from.
"""

from __future__ import annotations

import math
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
    normalize_attributions,
    normalize_projections,
    save_block,
    save_grid,
    sheet_rows,
    thumbnails,
)
from ._figures import display_image
from .mining_result import Crops, MiningResult

__all__ = ["CHUNK_BYTES", "image_sheets", "layer_page"]

_MISSING = 0.9  # light grey: a slot without a record (fewer images than k)
#: Bytes of crops of one kind computed in one call (per layer, kind and chunk of channels).
CHUNK_BYTES = 256 * 2**20


def _kind_kwargs(kind: str) -> dict[str, Any]:
    return {} if kind == "top" else {"kind": kind}


def _records(result: MiningResult, layer: str, channel: int, kind: str) -> list[Any]:
    return list(result.records(layer, channel, **_kind_kwargs(kind)))


def _cells(crops: Crops, counts: Sequence[int], k: int, make: Callable[[Tensor, Tensor], np.ndarray]) -> np.ndarray:
    """``[channels, k, h, w, 3]`` display cells from crops ``[channels, k, C, h, w]``; missing slots grey."""
    channels = crops.images.shape[0]
    flat = make(crops.images.flatten(0, 1), crops.mask.flatten(0, 1))
    cells = flat.reshape(channels, k, *flat.shape[1:])
    for row, count in enumerate(counts):
        cells[row, count:] = _MISSING
    return cells


class _Chunks:
    """A layer's crops of one kind, computed a chunk of channels at a time and handed out by sheet group.

    One call per chunk lets records of the same image share one forward pass across many channels
    (the whole layer, when it fits in :data:`CHUNK_BYTES`); each chunk is computed once per kind.
    """

    def __init__(self, result: MiningResult, model: nn.Module, data: Any, layer: str, kind: str, per_sheet: int):
        self.result, self.model, self.data, self.layer, self.kind = result, model, data, layer, kind
        k = result.k if kind == "top" else result.bottom_k
        field = result.fields[layer]
        assert field is not None
        # As the result's cache reckons a computation: crops and masks, or a full-size projection per record.
        per_channel = max(k * (result.input_shape[0] * 4 + 1) * field.size[0] * field.size[1],
                          k * 4 * math.prod(result.input_shape))  # fmt: skip
        self.size = per_sheet * max(1, CHUNK_BYTES // max(1, per_sheet * per_channel))
        self.held: dict[str, tuple[int, Crops]] = {}

    def __call__(self, name: str, channels: list[int]) -> Crops:
        start = channels[0] - channels[0] % self.size
        if name not in self.held or self.held[name][0] != start:
            chunk = list(range(start, min(self.result.channels(self.layer), start + self.size)))
            extra = _kind_kwargs(self.kind)
            if name == "patch":
                crops = self.result.patches(self.data, self.layer, chunk, **extra)
            else:
                rules = "guided" if name == "gbp" else "zf"
                crops = self.result.projections(self.model, self.data, self.layer, chunk, rules=rules, **extra)
            self.held[name] = (start, self._windows(crops, chunk))
        first, crops = self.held[name]
        rows = slice(channels[0] - first, channels[0] - first + len(channels))
        return Crops(crops.images[rows], crops.mask[rows])

    def _windows(self, crops: Crops, chunk: list[int]) -> Crops:
        """Each record's :func:`~._explorer_data.window` of its receptive-field-sized crop."""
        field = self.result.fields[self.layer]
        assert field is not None
        cell = data_json.cell_size(field)
        if tuple(crops.images.shape[-2:]) == cell:  # every box fits in the image: the cell is the box
            return crops
        images = crops.images.new_full((*crops.images.shape[:-2], *cell), 0.0)
        mask = crops.mask.new_zeros((*crops.mask.shape[:-2], *cell))
        for row, channel in enumerate(chunk):
            for slot, record in enumerate(_records(self.result, self.layer, channel, self.kind)):
                box = field.box(record.y, record.x)
                corner = data_json.window(field, box)
                top, left = corner[0] - box[0], corner[1] - box[1]  # in the crop's pixels
                images[row, slot] = crops.images[row, slot, :, top : top + cell[0], left : left + cell[1]]
                mask[row, slot] = crops.mask[row, slot, top : top + cell[0], left : left + cell[1]]
        return Crops(images, mask)


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
) -> np.ndarray:
    """Save the sheets of one group of channels; returns the top-1 projection cells for thumbnails.

    Patches are not saved: the page cuts them out of the whole images, which it has anyway.
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
        lossy = name in LOSSY_KINDS or kind != "top"
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
) -> tuple[dict[str, Any], np.ndarray, dict[str, list[float]]]:
    channels = result.channels(layer)
    k = result.k if kind == "top" else result.bottom_k
    field = result.fields.get(layer)
    records = [_records(result, layer, c, kind) for c in range(channels)]
    size = data_json.cell_size(field) if field is not None else (1, 1)
    per_sheet = sheet_rows(k, size[0], size[1], channels)
    files: dict[str, list[str]] = {}
    agreement: dict[str, list[float]] = {}
    tops = []
    fetch = _Chunks(result, model, data, layer, kind, per_sheet)
    for group, start in enumerate(range(0, channels, per_sheet)):
        chosen = list(range(start, min(channels, start + per_sheet)))
        counts = [len(records[c]) for c in chosen]
        tops.append(_group(folder, stem, kind, group, chosen, counts, k, fetch, denormalize, guided, files, agreement))
    payload = {
        "cell": list(size),
        "per_sheet": per_sheet,
        "cols": k,
        "files": files,
        "records": [data_json.record_rows(r, field, slots) for r in records],
    }
    return payload, np.concatenate(tops), agreement


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
    entry["top"], top1, agreement = _records_json(folder, stem, "top", result, model, data, layer, denormalize,
                                                  guided, slots)  # fmt: skip
    entry["agreement"] = data_json.agreement_columns(agreement, result.channels(layer)) if guided else None
    if result.bottom_k > 0:
        entry["bottom"], _, _ = _records_json(folder, stem, "bottom", result, model, data, layer, denormalize,
                                              False, slots)  # fmt: skip
    entry["thumbs"] = save_grid(thumbnails(top1), folder, f"{stem}_thumbs", cols=32).to_json()
    # The hierarchy figure draws whole receptive fields (plot_hierarchy's cells), not the explorer's
    # image-sized cells: its few channels are projected again.
    shown = result.projections(model, data, layer, list(keep)) if keep else None
    return entry, shown


def image_sheets(
    folder: Path,
    data: Any,
    slots: data_json.ImageSlots,
    denormalize: Callable[[Tensor], Tensor] | None,
    labels: Sequence[str] | None,
) -> dict[str, Any]:
    """Save the whole images of the slots (in slot order) and return their JSON entry."""
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
        entry["sheets"] = save_grid(stacked, folder, "images", cols=cols).to_json()
    return entry
