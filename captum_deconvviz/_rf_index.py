"""Geometry rules for index and shape ops, traced on a tensor of element indices, and joins.

An op such as ``view``, ``permute``, slicing, ``split`` or a channel shuffle is run once on
``arange(numel)`` shaped like its input: where each output element comes from decides which
output dims hold spatial axes and which input channels each output channel copies.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from . import _ops as ops
from ._field import (
    Field,
    Seg,
    Unmodelled,
    bound_from_reach,
    compact,
    empty_seg,
    hull,
)
from ._rf_blocks import OpCall, arg, global_field, global_like, map_size

if TYPE_CHECKING:
    from ._rf_graph import FieldRecorder


def index_rule(rec: FieldRecorder, call: OpCall, out: Any, x: Tensor, f: Field) -> Field | list[Field | None] | None:
    name = call.name
    outs = list(out) if isinstance(out, (tuple, list)) else [out]
    if f.is_global:
        fields: list[Field | None] = [global_like(rec, o, f) if isinstance(o, Tensor) else None for o in outs]
        if f.gate or _broadcasts_space(f, x, outs):
            fields = [replace(fl, gate=True) if fl is not None else None for fl in fields]
        return fields if isinstance(out, (tuple, list)) else fields[0]
    if f.hidden is not None:
        fields = [_hidden_index(rec, name, o, f) if isinstance(o, Tensor) else None for o in outs]
        return fields if isinstance(out, (tuple, list)) else fields[0]
    traced = call.rerun(torch.arange(x.numel()).reshape(x.shape))  # on the CPU: the analysis may run on meta
    traced_list = list(traced) if isinstance(traced, (tuple, list)) else [traced]
    fields = []
    for o, t in zip(outs, traced_list, strict=False):
        if isinstance(o, Tensor) and isinstance(t, Tensor) and t.shape == o.shape:
            fields.append(_from_indices(rec, name, f, tuple(x.shape), t.cpu().numpy()))
        else:
            fields.append(None)
    return fields if isinstance(out, (tuple, list)) else fields[0]


def _broadcasts_space(f: Field, x: Tensor, outs: list[Any]) -> bool:
    """A global statistic with size-1 spatial dims expanded to a map (``expand``, ``repeat``)."""
    if not any(x.shape[d] == 1 for d, a in enumerate(f.dims) if a is not None):
        return False
    return any(isinstance(o, Tensor) and o.dim() == x.dim() and o.numel() > x.numel() for o in outs)


def _hidden_index(rec: FieldRecorder, name: str, out: Tensor, f: Field) -> Field:
    assert f.hidden is not None
    saved, shape = f.hidden
    if tuple(out.shape) == shape and name in ops.RESHAPE_OPS:
        return Field(saved.dims, saved.cmap, saved.segs, saved.via | f.via)
    if tuple(out.shape) == tuple(np.broadcast_shapes(f.cmap.shape)) or name in ops.IDENTITY_OPS:
        return f
    if name in ops.RESHAPE_OPS:  # still flattened, another way
        cmap_shape = tuple(out.shape)
        return Field((None,) * out.dim(), np.zeros(cmap_shape, dtype=np.int64), f.segs, f.via, f.hidden)
    raise Unmodelled(name, rec.where(), "an index op on a map whose spatial dims were flattened")


def _from_indices(rec: FieldRecorder, name: str, f: Field, in_shape: tuple[int, ...], src: np.ndarray) -> Field:
    """The output field of an index op, from the flat input index of each output element."""
    out_shape = src.shape
    coords = np.unravel_index(src, in_shape) if src.size else tuple(np.zeros(out_shape, int) for _ in in_shape)
    varies = _variation(coords, out_shape)
    n_out = len(out_shape)
    out_dims: list[int | None] = [None] * n_out
    spatial_index: dict[int, np.ndarray] = {}  # axis -> input unit of each output position
    constant: dict[int, int] = {}  # axis -> the one input unit kept
    mixed = False
    for d, axis in enumerate(f.dims):
        if axis is None:
            continue
        along = [e for e in range(n_out) if varies[d][e]]
        if len(along) > 1:
            mixed = True
        elif len(along) == 1:
            e = along[0]
            if any(varies[other][e] for other in range(len(in_shape)) if other != d):
                mixed = True
            out_dims[e] = axis
            line = tuple(slice(None) if k == e else 0 for k in range(n_out))
            spatial_index[axis] = coords[d][line].reshape(-1)
        else:
            constant[axis] = int(coords[d].reshape(-1)[0]) if src.size else 0
    if mixed:  # spatial dims flattened together with others: kept for the inverse reshape
        seg = f.layer_seg()
        return Field((None,) * n_out, np.zeros(out_shape, dtype=np.int64), (seg,), f.via, (f, in_shape))
    # Axes that vanished (size-1 maps) come back on new size-1 dims at the end, in order.
    if constant:
        free = [e for e in range(n_out) if out_dims[e] is None and not any(varies[d][e] for d in range(len(in_shape)))]
        for axis, e in zip(
            sorted(constant), free[-len(constant) :] if len(free) >= len(constant) else [], strict=False
        ):
            out_dims[e] = axis
    # Channel-like output elements: their input channel coordinates, read on the spatial origin.
    channel_out = [e for e in range(n_out) if out_dims[e] is None]
    origin = tuple(slice(None) if out_dims[e] is None else 0 for e in range(n_out))
    channel_in = f.channel_dims()
    picked = tuple(coords[d][origin] for d in channel_in)
    cmap = f.cmap[picked] if channel_in else np.zeros([out_shape[e] for e in channel_out], dtype=np.int64)
    cmap = np.asarray(cmap).reshape([out_shape[e] for e in channel_out])
    segs = []
    for seg in f.segs:
        for axis in range(seg.n):
            if axis in spatial_index:
                seg = _index_axis(seg, axis, spatial_index[axis])
            elif axis in constant:
                seg = _index_axis(seg, axis, np.array([constant[axis]]))
            if (
                axis not in spatial_index
                and out_dims.count(axis)
                and seg.map_size()[axis] != out_shape[out_dims.index(axis)]
            ):
                seg = seg.resized(
                    tuple(out_shape[out_dims.index(a)] if a in out_dims else m for a, m in enumerate(seg.map_size()))
                )
        segs.append(seg)
    cmap, kept = compact(cmap, segs)
    return Field(tuple(out_dims), cmap, kept, f.via)


def _variation(coords: tuple[np.ndarray, ...], out_shape: tuple[int, ...]) -> list[list[bool]]:
    """``varies[d][e]``: input coordinate ``d`` changes along output dim ``e`` (checked on two lines)."""
    n_out = len(out_shape)
    varies = [[False] * n_out for _ in coords]
    if not all(out_shape):
        return varies
    bases = [tuple(0 for _ in out_shape), tuple(s - 1 for s in out_shape)]
    for e in range(n_out):
        if out_shape[e] < 2:
            continue
        for base in bases:
            line = tuple(slice(None) if k == e else base[k] for k in range(n_out))
            for d, c in enumerate(coords):
                if not varies[d][e] and np.any(c[line] != c[line][0]):
                    varies[d][e] = True
    return varies


def _index_axis(seg: Seg, axis: int, index: np.ndarray) -> Seg:
    """Output unit ``o`` of this axis is input unit ``index[o]``."""
    if seg.is_global or seg.empty:
        return seg.resized(tuple(len(index) if a == axis else m for a, m in enumerate(seg.map_size())))
    lo, hi = seg.lo[axis][index], seg.hi[axis][index]
    steps = np.diff(index)
    j = seg.stride[axis]
    if len(index) == 1:
        return seg.with_axis(axis, lo, hi, offset=seg.offset[axis] + int(index[0]) * j)
    if np.all(steps == steps[0]) and steps[0] > 0:  # a regular slice: exact arithmetic
        return seg.with_axis(axis, lo, hi, offset=seg.offset[axis] + int(index[0]) * j, stride=j * int(steps[0]))
    out = seg.with_axis(axis, lo, hi)
    return bound_from_reach(out, axis, seg, index[:, None], np.ones((len(index), 1), dtype=bool), 1.0)


def concat_rule(
    rec: FieldRecorder, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], out: Tensor
) -> Field | None:

    items = list(arg(args, kwargs, 0, "tensors", []))
    dim = int(arg(args, kwargs, 1, "dim", 0))
    fields = [rec.get(t) if isinstance(t, Tensor) else None for t in items]
    live = [fl for fl in fields if isinstance(fl, Field)]
    if not live:
        return None
    via = frozenset().union(*(fl.via for fl in live))
    if all(fl.is_global for fl in live):
        return global_field(rec, tuple(out.shape), via, hull([fl.layer_seg() for fl in live]))
    first = live[0]
    if any(fl.dims != first.dims or fl.hidden is not None for fl in live):
        raise Unmodelled(name, rec.where(), "joining tensors whose dims hold different things")
    stack = name in ops.STACK_OPS
    ndim = items[0].dim() + (1 if stack else 0)
    dim = dim % ndim
    sizes = map_size(rec, first, items[0].shape)
    segs: list[Seg] = []
    cmaps = []
    for t, fl in zip(items, fields, strict=True):
        if isinstance(fl, Field) and fl.is_global:
            fl = Field(first.dims, np.zeros_like(first.cmap), (fl.layer_seg().resized(sizes),), fl.via)
        if not isinstance(fl, Field):  # a constant: depends on nothing
            shape = [s for s, a in zip(t.shape, first.dims, strict=True) if a is None]
            fl = Field(first.dims, np.zeros(shape, dtype=np.int64), (empty_seg(sizes),))
        cmaps.append(fl.cmap + len(segs))
        segs.extend(fl.segs)
    if stack:
        cax = sum(1 for d in range(dim) if d < len(first.dims) and first.dims[d] is None)
        dims = list(first.dims)
        dims.insert(dim, None)
        cmap = np.stack(cmaps, axis=cax)
        cmap, kept = compact(cmap, segs)
        return Field(tuple(dims), cmap, kept, via)
    if first.dims[dim] is not None:
        raise Unmodelled(name, rec.where(), "concatenation along a spatial dim")
    cax = first.channel_dims().index(dim)
    cmap, kept = compact(np.concatenate(cmaps, axis=cax), segs)
    return Field(first.dims, cmap, kept, via)
