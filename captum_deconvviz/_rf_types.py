"""What a receptive field is: :class:`ReceptiveField` (boxes, crops, masks) and its table."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any

import torch
from torch import Tensor

from ._geometry import box_slices
from ._tables import to_html, to_markdown

__all__ = ["ReceptiveField", "ReceptiveFieldError", "ReceptiveFieldTable", "check_input_shape"]


class ReceptiveFieldError(ValueError):
    """The receptive field cannot be computed, or the analytic method and the probe disagree."""


@dataclass(frozen=True)
class ReceptiveField:
    """The receptive field of the units of one layer, per spatial dimension.

    Attributes:
        size: field size in input pixels, e.g. ``(h, w)``.
        stride: jump in input pixels between neighbouring units.
        offset: first input pixel (top, left) of unit ``(0, 0)``'s box; may be < 0.
        input_size: spatial size of the input the field was computed for.
        output_size: spatial size of the layer's map (the valid unit indices).
        layer: the layer's name.
        exact: False when ``size``, ``stride`` and ``offset`` are a safe bound (upsampling,
            transposed convolutions with stride, adaptive pooling with windows of unequal
            sizes): every unit's true support lies inside its box; :attr:`reach` stays exact.
        method: ``"analytic"`` or ``"probe"``.
        reach: per axis, ``(lo, hi)`` tuples with, for every unit index, the half-open
            range of input pixels the unit really depends on (analytic method only;
            None otherwise). It differs from the box clipped to the image only at the
            borders: windows that overlap padding, dilation holes, pixels a stride
            leaves unseen. :meth:`clipped_box` uses it.
        global_via: readable reasons why every unit also depends, weakly, on the whole
            input although what it looks at is local: gates computed from global
            statistics (``"squeeze-excitation gate at blocks.2.se"``) or normalization
            statistics over the map (``"GroupNorm statistics at 'layer1.0.bn1'"``). The box
            is the local field, with those statistics held fixed, which is what ZF-style
            patches show. Empty when there are none.
        channel: the channel this field is for, or None for the whole layer (the union
            over its channels: the widest).
    """

    size: tuple[int, ...]
    stride: tuple[int, ...]
    offset: tuple[int, ...]
    input_size: tuple[int, ...]
    output_size: tuple[int, ...]
    layer: str = ""
    exact: bool = True
    method: str = "analytic"
    reach: tuple[tuple[tuple[int, ...], tuple[int, ...]], ...] | None = dataclass_field(
        default=None, repr=False, compare=False
    )
    global_via: tuple[str, ...] = ()
    channel: int | None = None

    def _check_index(self, index: Sequence[int]) -> None:
        if len(index) != len(self.size):
            raise ValueError(f"expected {len(self.size)} unit coordinates, got {len(index)}: {tuple(index)}")
        for axis, (i, n) in enumerate(zip(index, self.output_size, strict=True)):
            if not 0 <= int(i) < n:
                raise ValueError(
                    f"unit coordinate {int(i)} on axis {axis} is out of range for layer {self.layer!r} "
                    f"whose map is {tuple(self.output_size)}"
                )

    def box(self, *index: int) -> tuple[int, ...]:
        """Half-open box of unit ``index`` in input pixels: ``(top, left, bottom, right)``.

        For 1-d maps ``(start, stop)``. The box may extend beyond the image.

        Example:
            >>> rf = ReceptiveField((5, 5), (2, 2), (-2, -2), (32, 32), (16, 16))
            >>> rf.box(0, 3)
            (-2, 4, 3, 9)
        """
        self._check_index(index)
        starts = tuple(o + int(i) * s for o, i, s in zip(self.offset, index, self.stride, strict=True))
        return (*starts, *(a + n for a, n in zip(starts, self.size, strict=True)))

    def clipped_box(self, *index: int) -> tuple[int, ...]:
        """The bounding box of the input pixels unit ``index`` depends on.

        That is the box clipped to the image, except at borders where the analytic
        :attr:`reach` knows better. Empty (start == stop) if the unit sees padding only.
        """
        box = self.box(*index)
        n = len(self.size)
        starts, stops = [], []
        for axis, i in enumerate(index):
            if self.reach is not None:
                lo, hi = self.reach[axis][0][int(i)], self.reach[axis][1][int(i)]
            else:
                lo, hi = max(0, box[axis]), min(self.input_size[axis], box[axis + n])
            lo = min(max(lo, 0), self.input_size[axis])
            starts.append(lo)
            stops.append(max(lo, min(hi, self.input_size[axis])))
        return (*starts, *stops)

    def valid_mask(self, *index: int) -> Tensor:
        """Boolean mask of ``size``: True where the box lies inside the image."""
        _, local = box_slices(self.box(*index)[: len(self.size)], self.size, self.input_size)
        mask = torch.zeros(self.size, dtype=torch.bool)
        mask[local] = True
        return mask

    def crop(self, image: Tensor, *index: int, fill: float = 0.0) -> Tensor:
        """The ``size`` pixels of ``image [C, *input_size]`` under unit ``index``'s box.

        Pixels outside the image are ``fill``; :meth:`valid_mask` tells which.

        Example:
            >>> rf = ReceptiveField((3, 3), (1, 1), (-1, -1), (4, 4), (4, 4))
            >>> rf.crop(torch.ones(1, 4, 4), 0, 0, fill=-1.0)[0]
            tensor([[-1., -1., -1.],
                    [-1.,  1.,  1.],
                    [-1.,  1.,  1.]])
        """
        if not isinstance(image, Tensor) or image.dim() != len(self.size) + 1:
            raise ValueError(f"image must be a tensor [C, {', '.join(map(str, self.input_size))}], got {_shape(image)}")
        if tuple(image.shape[1:]) != tuple(self.input_size):
            raise ValueError(
                f"image has spatial size {tuple(image.shape[1:])} but the field was computed for {self.input_size}"
            )
        n = len(self.size)
        inside, local = box_slices(self.box(*index)[:n], self.size, self.input_size)
        out = image.new_full((image.shape[0], *self.size), fill)
        into: tuple[Any, ...] = (slice(None), *local)
        source: tuple[Any, ...] = (slice(None), *inside)
        out[into] = image[source]
        return out

    def __str__(self) -> str:
        dims = "x".join(map(str, self.size))
        return (
            f"ReceptiveField({self.layer or 'layer'}: size {dims}, stride {'x'.join(map(str, self.stride))}, "
            f"offset {tuple(self.offset)}{'' if self.exact else ', bound'}"
            f"{f', global via {len(self.global_via)}' if self.global_via else ''})"
        )


def _shape(value: Any) -> str:
    return str(tuple(value.shape)) if isinstance(value, Tensor) else type(value).__name__


class ReceptiveFieldTable(list):
    """Rows ``(layer name, ReceptiveField)`` for every convolution and pooling layer.

    ``str(table)`` (and ``print(table)``) gives an aligned text table;
    :meth:`to_markdown` a Markdown one; notebooks show HTML.
    """

    _HEADER = ("layer", "type", "map", "size", "stride", "offset", "global via")

    def _cells(self) -> list[tuple[str, ...]]:
        def dims(values: Iterable[int]) -> str:
            return "x".join(str(v) for v in values)

        return [
            (
                name,
                kind,
                dims(rf.output_size),
                dims(rf.size) + ("" if rf.exact else " (bound)"),
                dims(rf.stride),
                str(tuple(rf.offset)),
                str(len(rf.global_via)) if rf.global_via else "-",
            )
            for name, kind, rf in self
        ]

    def __str__(self) -> str:
        rows = [self._HEADER, *self._cells()]
        widths = [max(len(row[i]) for row in rows) for i in range(len(self._HEADER))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def to_markdown(self) -> str:
        """The table in Markdown."""
        return to_markdown(self._HEADER, self._cells())

    def to_html(self) -> str:
        """The table in HTML, every cell escaped (notebooks show it; the report embeds it)."""
        return to_html(self._HEADER, self._cells())

    def _repr_html_(self) -> str:
        return self.to_html()


def check_input_shape(input_shape: Any) -> tuple[int, ...]:
    if not isinstance(input_shape, (tuple, list, torch.Size)) or not all(isinstance(v, int) for v in input_shape):
        raise TypeError(f"input_shape must be a tuple of ints such as (C, H, W), got {input_shape!r}")
    if not 2 <= len(input_shape) <= 4 or any(v < 1 for v in input_shape):
        raise ValueError(
            f"input_shape must be (C, L), (C, H, W) or (C, D, H, W) of positive ints, got {tuple(input_shape)}"
        )
    return tuple(input_shape)
