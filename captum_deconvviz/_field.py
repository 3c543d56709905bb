"""Receptive-field values: what one tensor's elements depend on in the input.

A :class:`Field` describes a tensor seen during the analysed forward pass:

* ``dims``: for each tensor dim, the spatial axis it holds (0 for height, ...), or None
  for a channel-like dim (batch, channels, groups);
* ``cmap``: for every channel-like element, the index of its :class:`Seg`, so channels
  with different fields (a concatenation of branches) keep them apart;
* ``segs``: the fields themselves. Per spatial axis a seg keeps, for every unit of the
  map, the half-open range ``[lo, hi)`` of input pixels it really reaches (exact at
  borders, padding, dilation holes), and the unclipped box arithmetic of Araujo et al.
  (``offset``, ``size``, ``stride``, as :class:`~captum_deconvviz.ReceptiveField` names them);
* ``via``: readable reasons why every unit also depends, through global statistics
  or gates, on the whole input (squeeze-excitation, GroupNorm, ...).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

__all__ = ["EMPTY_HI", "EMPTY_LO", "Field", "Seg", "Unmodelled"]

EMPTY_LO, EMPTY_HI = np.iinfo(np.int64).max // 4, np.iinfo(np.int64).min // 4


class Unmodelled(Exception):
    """An op the analysis has no geometry rule for; the probe answers instead."""

    def __init__(self, op: str, where: str, why: str = "") -> None:
        self.op, self.where, self.why = op, where, why
        super().__init__(f"op {op!r} at {where}" + (f" ({why})" if why else ""))


@dataclass(frozen=True, eq=False)
class Seg:
    """The field shared by a group of channels: per axis, exact reach and box arithmetic.

    Attributes:
        lo, hi: per axis, an int array over the map's units: the half-open range of input
            pixels each unit reaches (``lo >= hi`` when it reaches none).
        offset, size, stride: per axis, the box of unit ``u`` is ``offset + u * stride`` to that
            plus ``size`` (unclipped; may leave the image), in input pixels.
        exact: False when ``offset``/``size``/``stride`` are a safe bound (fractional strides of
            upsampling, windows of unequal sizes); ``lo``/``hi`` stay exact.
        is_global: every unit depends on the whole input (past a global pooling, a
            flatten into a linear layer, attention over positions).
        empty: no unit depends on the input (padding channels).
    """

    lo: tuple[np.ndarray, ...]
    hi: tuple[np.ndarray, ...]
    offset: tuple[int, ...]
    size: tuple[int, ...]
    stride: tuple[int, ...]
    exact: bool = True
    is_global: bool = False
    empty: bool = False

    @property
    def n(self) -> int:
        return len(self.lo)

    def map_size(self) -> tuple[int, ...]:
        return tuple(len(a) for a in self.lo)

    def with_axis(self, axis: int, lo: np.ndarray, hi: np.ndarray, **summary: int | bool) -> Seg:
        """A copy with axis ``axis``'s reach (and optionally its summary) replaced."""
        los, his = list(self.lo), list(self.hi)
        los[axis], his[axis] = lo, hi
        left, size, jump = list(self.offset), list(self.size), list(self.stride)
        if "offset" in summary:
            left[axis] = int(summary["offset"])
        if "size" in summary:
            size[axis] = int(summary["size"])
        if "stride" in summary:
            jump[axis] = int(summary["stride"])
        exact = self.exact and bool(summary.get("exact", True))
        return replace(self, lo=tuple(los), hi=tuple(his), offset=tuple(left), size=tuple(size), stride=tuple(jump),
                       exact=exact)  # fmt: skip

    def resized(self, map_size: Sequence[int]) -> Seg:
        """This seg broadcast to another map size (a global seg, or a map of size 1)."""
        los, his = [], []
        for lo, hi, m in zip(self.lo, self.hi, map_size, strict=True):
            if len(lo) == m:
                los.append(lo)
                his.append(hi)
            else:
                los.append(np.full(m, lo.min() if len(lo) else EMPTY_LO, dtype=np.int64))
                his.append(np.full(m, hi.max() if len(hi) else EMPTY_HI, dtype=np.int64))
        return replace(self, lo=tuple(los), hi=tuple(his))


def input_seg(input_size: Sequence[int]) -> Seg:
    """The input itself: one pixel per unit."""
    lo = tuple(np.arange(s, dtype=np.int64) for s in input_size)
    n = len(input_size)
    return Seg(lo, tuple(a + 1 for a in lo), (0,) * n, (1,) * n, (1,) * n)


def empty_seg(map_size: Sequence[int]) -> Seg:
    """Units that depend on no input pixel."""
    n = len(map_size)
    lo = tuple(np.full(m, EMPTY_LO, dtype=np.int64) for m in map_size)
    hi = tuple(np.full(m, EMPTY_HI, dtype=np.int64) for m in map_size)
    return Seg(lo, hi, (0,) * n, (0,) * n, (1,) * n, True, False, True)


def global_seg(source: Seg, input_size: Sequence[int], map_size: Sequence[int]) -> Seg:
    """Every unit depends on everything ``source`` reaches: the whole input."""
    n = len(input_size)
    lo = tuple(
        np.full(m, a.min() if len(a) else EMPTY_LO, dtype=np.int64) for a, m in zip(source.lo, map_size, strict=True)
    )
    hi = tuple(
        np.full(m, b.max() if len(b) else EMPTY_HI, dtype=np.int64) for b, m in zip(source.hi, map_size, strict=True)
    )
    return Seg(lo, hi, (0,) * n, tuple(input_size), tuple(input_size), source.exact, True, source.empty)


def gather_bounds(
    lo: np.ndarray, hi: np.ndarray, index: np.ndarray, valid: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``index`` (input units), the union of their ranges; invalid taps ignored."""
    if len(lo) == 0:
        return np.full(len(index), EMPTY_LO, dtype=np.int64), np.full(len(index), EMPTY_HI, dtype=np.int64)
    clipped = np.clip(index, 0, len(lo) - 1)
    return np.where(valid, lo[clipped], EMPTY_LO).min(1), np.where(valid, hi[clipped], EMPTY_HI).max(1)


def window_axis(seg: Seg, axis: int, n_out: int, k: int, s: int, p: int, d: int) -> Seg:
    """One axis of a convolution or pooling window: exact reach and box arithmetic."""
    if seg.is_global or seg.empty:
        return seg.resized(_with(seg.map_size(), axis, n_out))
    taps = np.arange(n_out)[:, None] * s - p + np.arange(k)[None, :] * d
    lo, hi = gather_bounds(seg.lo[axis], seg.hi[axis], taps, (taps >= 0) & (taps < len(seg.lo[axis])))
    j = seg.stride[axis]
    return seg.with_axis(
        axis, lo, hi, offset=seg.offset[axis] - p * j, size=seg.size[axis] + d * (k - 1) * j, stride=j * s
    )


def gather_axis(seg: Seg, axis: int, index: np.ndarray, valid: np.ndarray, step: float) -> Seg:
    """An axis whose output unit ``o`` reaches the input units ``index[o][valid[o]]``.

    Used for upsampling, transposed convolutions, adaptive pooling and index ops. The
    reach stays exact; the box arithmetic becomes a safe bound (:func:`bound_from_reach`)
    unless the caller can state it exactly.
    """
    if seg.is_global or seg.empty:
        return seg.resized(_with(seg.map_size(), axis, len(index)))
    lo, hi = gather_bounds(seg.lo[axis], seg.hi[axis], index, valid)
    out = seg.with_axis(axis, lo, hi)
    return bound_from_reach(out, axis, seg, index, valid, step)


def bound_from_reach(seg: Seg, axis: int, source: Seg, index: np.ndarray, valid: np.ndarray, step: float) -> Seg:
    """Box arithmetic that contains, for every unit, the boxes of the input units it reaches.

    The box of input unit ``i`` is ``source.offset + i * source.stride`` plus ``source.size``; the
    new stride is ``max(1, round(step * source.stride))`` and ``offset``/``size`` the smallest that
    cover every unit's union of boxes. Marked inexact.
    """
    jump = max(1, round(step * source.stride[axis]))
    starts = source.offset[axis] + index * source.stride[axis]
    first = np.where(valid, starts, EMPTY_LO).min(1)
    last = np.where(valid, starts + source.size[axis], EMPTY_HI).max(1)
    units = np.arange(len(index))
    live = valid.any(1)
    if not live.any():
        return replace(seg, exact=False)
    left = int((first - units * jump)[live].min())
    size = int((last - units * jump)[live].max()) - left
    return seg.with_axis(axis, seg.lo[axis], seg.hi[axis], offset=left, size=size, stride=jump, exact=False)


def hull(segs: Sequence[Seg]) -> Seg:
    """The union of several fields over the same map: per unit, the hull of their reach."""
    live = [s for s in segs if not s.empty]
    if not live:
        return segs[0]
    if len(live) == 1:
        return live[0]
    sizes = {s.map_size() for s in live}
    if len(sizes) != 1:
        raise ValueError(f"cannot merge fields over maps of sizes {sorted(sizes)}")
    n = live[0].n
    lo = tuple(np.minimum.reduce([s.lo[a] for s in live]) for a in range(n))
    hi = tuple(np.maximum.reduce([s.hi[a] for s in live]) for a in range(n))
    exact = all(s.exact for s in live)
    if any(s.is_global for s in live):
        first = next(s for s in live if s.is_global)
        return replace(first, lo=lo, hi=hi, exact=exact)
    jumps = {s.stride for s in live}
    left = tuple(min(s.offset[a] for s in live) for a in range(n))
    right = tuple(max(s.offset[a] + s.size[a] for s in live) for a in range(n))
    if len(jumps) == 1:  # misaligned paths: the union of their boxes, still exact
        size = tuple(r - a for r, a in zip(right, left, strict=True))
        return Seg(lo, hi, left, size, live[0].stride, exact)
    # Paths with different strides: no common grid; bound every unit's union of boxes.
    units = [np.arange(m) for m in live[0].map_size()]
    jump = tuple(min(s.stride[a] for s in live) for a in range(n))
    left = tuple(int(min((s.offset[a] + units[a] * (s.stride[a] - jump[a])).min() for s in live)) for a in range(n))
    ends = tuple(
        int(max((s.offset[a] + s.size[a] + units[a] * (s.stride[a] - jump[a])).max() for s in live)) for a in range(n)
    )
    return Seg(lo, hi, left, tuple(e - a for e, a in zip(ends, left, strict=True)), jump, False)


def _with(values: tuple[int, ...], axis: int, value: int) -> tuple[int, ...]:
    out = list(values)
    out[axis] = value
    return tuple(out)


@dataclass(frozen=True, eq=False)
class Field:
    """What the elements of one tensor depend on (see the module docstring).

    Attributes:
        dims: per tensor dim, its spatial axis, or None for a channel-like dim.
        cmap: int array over the channel-like dims: the seg of each channel-like element.
        segs: the distinct fields.
        via: reasons for a global dependence through statistics or gates.
        hidden: when a reshape merged spatial dims with others, the field before it and
            the shape it had, so that the inverse reshape restores it.
        gate: a global statistic expanded over the map (``y.expand_as(x)`` in ECA): it
            multiplies a path, it is not one.
    """

    dims: tuple[int | None, ...]
    cmap: np.ndarray
    segs: tuple[Seg, ...]
    via: frozenset[str] = frozenset()
    hidden: tuple[Field, tuple[int, ...]] | None = None
    gate: bool = False

    @property
    def is_global(self) -> bool:
        return all(s.is_global or s.empty for s in self.segs) and not all(s.empty for s in self.segs)

    def spatial_dims(self) -> list[int]:
        """Tensor dims holding spatial axes, in axis order."""
        pairs = sorted((a, d) for d, a in enumerate(self.dims) if a is not None)
        return [d for _, d in pairs]

    def channel_dims(self) -> list[int]:
        return [d for d, a in enumerate(self.dims) if a is None]

    def used(self) -> list[Seg]:
        """The segs some element uses."""
        return [self.segs[i] for i in np.unique(self.cmap)]

    def layer_seg(self) -> Seg:
        """The union over all channels: the layer's (widest) field."""
        return hull(self.used())


def compact(cmap: np.ndarray, segs: Sequence[Seg]) -> tuple[np.ndarray, tuple[Seg, ...]]:
    """Drop unused segs and renumber ``cmap``."""
    used, inverse = np.unique(cmap, return_inverse=True)
    return inverse.reshape(cmap.shape).astype(np.int64), tuple(segs[i] for i in used)
