"""A layer's crops for the report and the explorer: computed a chunk of channels at a time, cut to cells.

Both pages show every channel of a layer. Asking the result for the whole layer at once holds
every record's receptive-field-sized crop in memory (a ResNet-50 ``layer4`` at 224 px: 2,048
channels x 9 records x 3 x 427 x 427 floats, 40 GB); asking per channel gives up the shared
forward passes. :class:`LayerCrops` asks for a chunk of channels at a time, within
:data:`CHUNK_BYTES`, and keeps only the chunk it is handing out.

The cells it hands out are at most the image's size (:func:`cell_size`): where a receptive
field is larger than the image, most of its crop is padding, and a field-sized cell would make
sheets, files and drawing time grow with the field's area rather than the image's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .mining_result import Crops, MiningResult, Record
from .receptive_field import ReceptiveField

__all__ = ["CHUNK_BYTES", "LayerCrops", "cell_size", "window"]

#: Bytes of crops of one kind computed in one call (per layer, kind and chunk of channels).
CHUNK_BYTES = 256 * 2**20


def cell_size(field: ReceptiveField) -> tuple[int, ...]:
    """The size of a layer's cells: its receptive field, but no larger than the image.

    Example:
        >>> rf = ReceptiveField((435, 435), (32, 32), (-218, -218), (64, 64), (2, 2))
        >>> cell_size(rf)
        (64, 64)
    """
    return tuple(min(s, n) for s, n in zip(field.size, field.input_size, strict=True))


def window(field: ReceptiveField, box: Sequence[int]) -> tuple[int, ...]:
    """Where a record's cell starts, in image pixels: the :func:`cell_size` window of ``box``
    (half-open, as ``field.box``) that holds all of the box's part inside the image.

    The cell is the box where the box fits in the image. Otherwise the window starts where
    the box enters the image, moved back where it would end past the box: the part inside
    the image is at most the cell's size, so it always fits.

    Example:
        >>> rf = ReceptiveField((435, 435), (32, 32), (-218, -218), (64, 64), (2, 2))
        >>> window(rf, rf.box(1, 0))
        (0, 0)
    """
    cell = cell_size(field)
    n = len(cell)
    return tuple(min(max(box[a], 0), box[a + n] - cell[a]) for a in range(n))


def records_of(result: MiningResult, layer: str, channel: int, kind: str) -> list[Record]:
    """The channel's records of ``kind`` (``"top"`` or ``"bottom"``)."""
    return list(result.records(layer, channel, kind=kind))


def windowed(result: MiningResult, layer: str, channels: Sequence[int], kind: str, crops: Crops) -> Crops:
    """Each record's :func:`window` of its receptive-field-sized crop: ``crops`` ``[channels, k, C, *field]``
    (patches or projections of ``channels``' records of ``kind``, as the result gives them) cut to
    ``[channels, k, C, *cell]``; the crops themselves where every box fits in the image."""
    field = result.fields[layer]
    assert field is not None, "crops come from a layer with a receptive field"
    cell = cell_size(field)
    if tuple(crops.images.shape[-2:]) == cell:  # every box fits in the image: the cell is the box
        return crops
    images = crops.images.new_full((*crops.images.shape[:-2], *cell), 0.0)
    mask = crops.mask.new_zeros((*crops.mask.shape[:-2], *cell))
    for row, channel in enumerate(channels):
        for slot, record in enumerate(records_of(result, layer, channel, kind)):
            box = field.box(record.y, record.x)
            corner = window(field, box)
            top, left = corner[0] - box[0], corner[1] - box[1]  # in the crop's pixels
            images[row, slot] = crops.images[row, slot, :, top : top + cell[0], left : left + cell[1]]
            mask[row, slot] = crops.mask[row, slot, top : top + cell[0], left : left + cell[1]]
    return Crops(images, mask)


class LayerCrops:
    """A layer's patches and projections of one kind of record, a chunk of channels at a time, in cells.

    One call per chunk lets records of the same image share one forward pass across many
    channels (the whole layer, when it fits in :data:`CHUNK_BYTES`); each chunk is computed
    once per kind of crop, so ask for the channels in order. Each record's crop is cut to its
    :func:`window`. Turn the result's cache off (``cache_limit = 0``) while a layer is read:
    the chunks are already the unit of reuse.

    Args:
        result, model, data: the mining result, its model and data.
        layer: a mined layer with a receptive field.
        kind: ``"top"`` or ``"bottom"`` records.
        align: chunks start at multiples of this many channels (a sheet's group of channels).
        keep: channels whose DeconvNet projections to keep whole (receptive-field-sized, as
            the hierarchy figure draws them), in :meth:`kept` once their chunk is computed.
    """

    def __init__(
        self,
        result: MiningResult,
        model: nn.Module,
        data: Any,
        layer: str,
        kind: str,
        align: int = 1,
        keep: Sequence[int] = (),
    ):
        self.result, self.model, self.data, self.layer, self.kind = result, model, data, layer, kind
        self.keep = list(keep)
        self._kept: dict[int, tuple[Tensor, Tensor]] = {}
        field = result.fields[layer]
        if field is None:
            raise ValueError(f"layer {layer!r} has no receptive field: its records have no crops")
        self.field = field
        self.cell = cell_size(field)
        k = result.k if kind == "top" else result.bottom_k
        # As the result's cache reckons a computation: crops and masks, or a full-size projection per record.
        per_channel = max(k * (result.input_shape[0] * 4 + 1) * math.prod(field.size),
                          k * 4 * math.prod(result.input_shape))  # fmt: skip
        # Chunks are whole sheet groups; each is computed in steps that keep the field-sized
        # crops within CHUNK_BYTES (a group of 27 channels of 435-px crops is 600 MB), and only
        # its cells, at most the image's size, are held.
        self.step = max(1, CHUNK_BYTES // max(1, per_channel))
        self.size = align * max(1, CHUNK_BYTES // max(1, align * per_channel))
        self.held: dict[str, tuple[int, Crops]] = {}

    def __call__(self, name: str, channels: Sequence[int]) -> Crops:
        """Crops ``[len(channels), k, C, *cell]`` and masks: ``name`` is ``"patch"``, ``"zf"`` or ``"gbp"``.

        ``channels`` are consecutive and within one chunk (one sheet group, or one channel).
        """
        start = channels[0] - channels[0] % self.size
        if name not in self.held or self.held[name][0] != start:
            chunk = list(range(start, min(self.result.channels(self.layer), start + self.size)))
            parts = [self._compute(name, chunk[i : i + self.step]) for i in range(0, len(chunk), self.step)]
            cells = parts[0] if len(parts) == 1 else Crops(torch.cat([p.images for p in parts]),
                                                             torch.cat([p.mask for p in parts]))  # fmt: skip
            self.held[name] = (start, cells)
        first, crops = self.held[name]
        rows = slice(channels[0] - first, channels[0] - first + len(channels))
        return Crops(crops.images[rows], crops.mask[rows])

    def _compute(self, name: str, channels: list[int]) -> Crops:
        """The cells of ``channels``' records: their crops from the result, cut to their windows."""
        if name == "patch":
            crops = self.result.patches(self.data, self.layer, channels, kind=self.kind)
        else:
            rules = "guided" if name == "gbp" else "zf"
            crops = self.result.projections(self.model, self.data, self.layer, channels, rules=rules, kind=self.kind)
            if name == "zf":
                # Copies: a view would keep the whole step's field-sized crops alive.
                self._kept.update({c: (crops.images[i].clone(), crops.mask[i].clone())
                                   for i, c in enumerate(channels) if c in self.keep})  # fmt: skip
        return self._windows(crops, channels)

    def kept(self) -> Crops:
        """The whole DeconvNet projections of the ``keep`` channels, in that order (all read by now)."""
        missing = [c for c in self.keep if c not in self._kept]
        if missing:
            raise RuntimeError(f"channels {missing} of layer {self.layer!r} were not read yet")
        return Crops(torch.stack([self._kept[c][0] for c in self.keep]),
                     torch.stack([self._kept[c][1] for c in self.keep]))  # fmt: skip

    def _windows(self, crops: Crops, chunk: list[int]) -> Crops:
        """Each record's :func:`window` of its receptive-field-sized crop."""
        return windowed(self.result, self.layer, chunk, self.kind, crops)
