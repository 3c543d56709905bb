"""The explorer's data: plain JSON (numbers, strings, lists), embedded in ``index.html`` without code.

Every string in it (layer, file and class names, the command line) stays a JSON string: the
page's script shows them with ``textContent``, never as markup. :func:`embed_json` writes the
JSON so that no string can close the ``<script type="application/json">`` element it sits in.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from ._layer_crops import window
from .mining_result import MiningResult, Record
from .receptive_field import ReceptiveField

__all__ = [
    "FORMAT",
    "ImageSlots",
    "agreement_columns",
    "class_columns",
    "class_names",
    "embed_json",
    "field_json",
    "number",
    "numbers",
    "record_rows",
    "stats_columns",
]

#: The version of the JSON layout (``data.format``); the page's script refuses others.
FORMAT = 1

# In a <script> element only "</script" and "<!--" matter; escaping every <, > and & (and the
# two line separators JavaScript once refused in strings) is simplest and still valid JSON.
_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def embed_json(payload: Any) -> str:
    """``payload`` as JSON that is safe inside ``<script type="application/json">``.

    Example:
        >>> embed_json({"name": "</script><b>"})
        '{"name":"\\\\u003c/script\\\\u003e\\\\u003cb\\\\u003e"}'
    """
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return "".join(_ESCAPES.get(ch, ch) for ch in text)


def number(value: float, digits: int = 4) -> float | None:
    """``value`` to ``digits`` significant digits; None for NaN and infinities (JSON has neither)."""
    value = float(value)
    if not math.isfinite(value):
        return None
    return float(f"{value:.{digits}g}")


def numbers(values: Any, digits: int = 4) -> list[float | None]:
    """:func:`number` of each value of a tensor or sequence."""
    listed = values.tolist() if hasattr(values, "tolist") else list(values)
    return [number(v, digits) for v in listed]


def field_json(field: ReceptiveField | None) -> dict[str, list[int]] | None:
    """A receptive field's size, stride and offset, or None where it is unknown."""
    if field is None:
        return None
    return {"size": list(field.size), "stride": list(field.stride), "offset": list(field.offset)}


class ImageSlots:
    """The data images the explorer shows whole: each dataset index gets a slot in the image sheets."""

    def __init__(self) -> None:
        self.indices: list[int] = []
        self._slot: dict[int, int] = {}

    def slot(self, index: int) -> int:
        """The slot of dataset image ``index`` (a new one the first time)."""
        if index not in self._slot:
            self._slot[index] = len(self.indices)
            self.indices.append(index)
        return self._slot[index]


def record_rows(records: Sequence[Record], field: ReceptiveField | None, slots: ImageSlots) -> list[list[Any]]:
    """Per record ``[image slot, y, x, value, top, left, bottom, right, cell top, cell left]``.

    The box is the record's receptive field in input pixels (half-open, may leave the image);
    the cell's corner is :func:`window`'s, where the record's patch and projection cells start.
    Zeros where no field is known.
    """
    rows = []
    for record in records:
        box = field.box(record.y, record.x) if field is not None else (0, 0, 0, 0)
        corner = window(field, box) if field is not None else (0, 0)
        rows.append([slots.slot(record.index), record.y, record.x, number(record.value), *map(int, box), *corner])
    return rows


def stats_columns(result: MiningResult, layer: str) -> dict[str, list[Any]]:
    """The channel table's columns that every result has: max, mean, fraction active, dead."""
    stats = result.stats(layer)
    return {
        "max": numbers(stats.maximum),
        "mean": numbers(stats.mean),
        "active": numbers(stats.fraction_active, 3),
        "dead": [int(d) for d in stats.dead.tolist()],
    }


def class_columns(result: MiningResult, layer: str) -> dict[str, Any] | None:
    """Selectivity, top class and the class histogram per channel, where the result was mined with labels.

    Returns:
        ``{"top_n", "selectivity", "top_class", "histogram"}`` (``top_n``: the images per
        channel behind the histogram; the others one entry per channel), or None for a result
        mined without labels.
    """
    if not result.has_labels:
        return None
    stats = result.class_stats(layer)
    return {
        "top_n": stats.top_n,
        "selectivity": numbers(stats.selectivity, 3),
        "top_class": [int(c) for c in stats.top_class.tolist()],
        "histogram": [[int(n) for n in row] for row in stats.histogram.tolist()],
    }


def class_names(result: MiningResult) -> list[str] | None:
    """The class names the result was mined with, as strings, or None."""
    names = result.class_names
    return [str(name) for name in names] if names else None


def agreement_columns(means: dict[str, list[float]], channels: int) -> dict[str, list[float | None]] | None:
    """Per-channel mean agreement between DeconvNet and Guided Backprop (``spearman``, ``ssim``), or None
    when a column is not one value per channel."""
    if any(len(means.get(key, ())) != channels for key in ("spearman", "ssim")):
        return None
    return {key: numbers(means[key], 3) for key in ("spearman", "ssim")}
