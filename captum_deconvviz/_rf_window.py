"""Geometry rules for windows (convolutions, pooling), padding and resampling.

Windows follow the arithmetic of Araujo et al. per axis with exact per-unit reach; output
channels of a group see the union of that group's input channels. Resampling (interpolate,
strided transposed convolutions, adaptive pooling with unequal windows) reads each unit's
reach from the op itself and bounds the box.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from . import _geometry as geometry
from ._field import (
    Field,
    Seg,
    Unmodelled,
    empty_seg,
    gather_axis,
    gather_bounds,
    hull,
)
from ._field import window_axis as window_seg_axis
from ._rf_blocks import OpCall, arg, global_like, trailing_spatial

if TYPE_CHECKING:
    from ._rf_graph import FieldRecorder


def _window(seg: Seg, spec: geometry.WindowSpec, out_size: Sequence[int]) -> Seg:
    for axis in range(spec.n):
        seg = window_seg_axis(
            seg, axis, int(out_size[axis]), spec.kernel[axis], spec.stride[axis], spec.before[axis], spec.dilation[axis]
        )
    return seg


def _transposed(seg: Seg, spec: geometry.WindowSpec, out_size: Sequence[int]) -> Seg:
    for axis in range(spec.n):
        k, s, p, d = spec.kernel[axis], spec.stride[axis], spec.before[axis], spec.dilation[axis]
        if s == 1:  # the same as a convolution padded with d(k-1) - p: exact arithmetic
            seg = window_seg_axis(seg, axis, int(out_size[axis]), k, 1, d * (k - 1) - p, d)
            continue
        o = np.arange(int(out_size[axis]))[:, None]
        num = o + p - np.arange(k)[None, :] * d
        index = np.floor_divide(num, s)
        valid = (num % s == 0) & (index >= 0) & (index < seg.map_size()[axis])
        seg = gather_axis(seg, axis, index, valid, 1.0 / s)
    return seg


def conv_rule(
    rec: FieldRecorder, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], out: Tensor, f: Field, kind: str
) -> Field:
    spec = geometry.window_from_call(name, args, kwargs)
    n = spec.n
    weight = geometry.bind_call(name, args, kwargs)["weight"]
    via = f.via
    wf = rec.get(weight)
    if isinstance(wf, Field):  # weights computed from the input (dynamic convolution)
        if not wf.is_global:
            raise Unmodelled(name, rec.where(), "weights computed from a local part of the input")
        via = via | {f"input-dependent weights at {rec.where()}"}
    if f.is_global:
        return global_like(rec, out, f)
    if not trailing_spatial(f, n) or len(rec.input_size) != n:
        raise Unmodelled(name, rec.where(), "a window over dims that are not the input's spatial dims")
    out_size = tuple(out.shape[-n:])
    c_in = int(f.cmap.shape[-1])
    c_out = int(out.shape[-n - 1])
    groups = spec.groups
    per_in = c_in // groups
    per_out = (int(weight.shape[1]) if kind == "conv_transpose" else c_out // groups) or 1
    row = f.cmap.reshape(-1, c_in)[0]
    move = _transposed if kind == "conv_transpose" else _window
    cache: dict[tuple[int, ...], int] = {}
    segs: list[Seg] = []
    out_row = np.zeros(c_out, dtype=np.int64)
    for g in range(groups):
        ids = tuple(np.unique(row[g * per_in : (g + 1) * per_in]).tolist())
        if ids not in cache:
            base = f.segs[ids[0]] if per_in == 1 or len(ids) == 1 else hull([f.segs[i] for i in ids])
            cache[ids] = len(segs)
            segs.append(move(base, spec, out_size))
        out_row[g * per_out : (g + 1) * per_out] = cache[ids]
    cmap = np.broadcast_to(out_row, (*f.cmap.shape[:-1], c_out)).copy()
    return Field(f.dims, cmap, tuple(segs), via)


def pool_rule(
    rec: FieldRecorder, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any, f: Field
) -> Field:
    spec = geometry.window_from_call(name, args, kwargs)
    result = out[0] if isinstance(out, (tuple, list)) else out
    if f.is_global:
        return global_like(rec, result, f)
    if not all(a is not None for a in f.dims[-spec.n :]) or f.dims[-spec.n :] != tuple(range(spec.n)):
        raise Unmodelled(name, rec.where(), "pooling over dims that are not the input's spatial dims")
    out_size = tuple(result.shape[-spec.n :])
    return Field(f.dims, f.cmap, tuple(_window(s, spec, out_size) for s in f.segs), f.via)


def adaptive_rule(rec: FieldRecorder, name: str, out: Any, x: Tensor, f: Field) -> Field:
    result = out[0] if isinstance(out, (tuple, list)) else out
    n = geometry.spatial_dims_of(name)
    if f.is_global or f.dims[-n:] != tuple(range(n)) or f.hidden is not None:
        if f.is_global:
            return global_like(rec, result, f)
        raise Unmodelled(name, rec.where(), "adaptive pooling over dims that are not spatial")
    in_size, out_size = tuple(x.shape[-n:]), tuple(result.shape[-n:])
    if all(o == 1 for o in out_size) and any(i > 1 for i in in_size):
        return global_like(rec, result, f)
    segs = []
    for seg in f.segs:
        for axis, (n_in, n_out) in enumerate(zip(in_size, out_size, strict=True)):
            if n_in % n_out == 0:
                k = n_in // n_out
                seg = window_seg_axis(seg, axis, n_out, k, k, 0, 1)
                continue
            starts = (np.arange(n_out) * n_in) // n_out
            stops = -((-(np.arange(n_out) + 1) * n_in) // n_out)
            index = starts[:, None] + np.arange(int((stops - starts).max()))[None, :]
            seg = gather_axis(seg, axis, index, index < stops[:, None], n_in / n_out)
        segs.append(seg)
    return Field(f.dims, f.cmap, tuple(segs), f.via)


def pad_rule(
    rec: FieldRecorder, args: tuple[Any, ...], kwargs: dict[str, Any], out: Tensor, x: Tensor, f: Field
) -> Field:
    pad = [int(p) for p in arg(args, kwargs, 1, "pad")]
    mode = arg(args, kwargs, 2, "mode", "constant")
    if f.is_global:
        return global_like(rec, out, f)
    if f.hidden is not None:
        raise Unmodelled("pad", rec.where(), "padding a flattened map")
    cmap, segs = f.cmap, list(f.segs)
    channel_dims = f.channel_dims()
    for i in range(len(pad) // 2):
        dim = x.dim() - 1 - i
        before, after = pad[2 * i], pad[2 * i + 1]
        if before == 0 and after == 0:
            continue
        axis = f.dims[dim]
        if axis is None:  # padding channels: the new ones depend on nothing
            if mode != "constant":
                raise Unmodelled("pad", rec.where(), f"{mode} padding of a channel dim")
            cax = channel_dims.index(dim)
            empty = len(segs)
            segs.append(empty_seg(segs[0].map_size()))
            width = [(0, 0)] * cmap.ndim
            width[cax] = (max(before, 0), max(after, 0))
            cmap = np.pad(cmap, width, constant_values=empty)
            stop = cmap.shape[cax] - max(-after, 0)
            cmap = np.take(cmap, np.arange(max(-before, 0), stop), axis=cax)
            continue
        n_in = int(x.shape[dim])
        q = np.arange(-before, n_in + after)
        if mode == "constant":
            index, valid = q, (q >= 0) & (q < n_in)
        elif mode == "reflect":
            index, valid = np.abs(q), np.ones(len(q), dtype=bool)
            index = np.where(index > n_in - 1, 2 * (n_in - 1) - index, index)
        elif mode == "replicate":
            index, valid = np.clip(q, 0, n_in - 1), np.ones(len(q), dtype=bool)
        elif mode == "circular":
            index, valid = np.mod(q, n_in), np.ones(len(q), dtype=bool)
        else:
            raise Unmodelled("pad", rec.where(), f"padding mode {mode!r}")
        segs = [_pad_axis(s, axis, before, index, valid) for s in segs]
    return Field(f.dims, cmap, tuple(segs), f.via)


def _pad_axis(seg: Seg, axis: int, before: int, index: np.ndarray, valid: np.ndarray) -> Seg:
    """The box shifts by the padding; the reach follows the pixels each position copies."""
    if seg.is_global or seg.empty:
        return seg.resized(tuple(len(index) if a == axis else m for a, m in enumerate(seg.map_size())))

    lo, hi = gather_bounds(seg.lo[axis], seg.hi[axis], index[:, None], valid[:, None])
    j = seg.stride[axis]
    return seg.with_axis(axis, lo, hi, offset=seg.offset[axis] - before * j)


def resample_rule(rec: FieldRecorder, call: OpCall, out: Tensor, x: Tensor, f: Field) -> Field:
    name = call.name
    """Interpolation: each axis's reach is read from the op run on one-hot inputs."""
    n = len(rec.input_size)
    if f.is_global:
        return global_like(rec, out, f)
    if not trailing_spatial(f, n) or x.dim() != n + 2:
        raise Unmodelled(name, rec.where(), "resampling a tensor that is not [N, C, *spatial]")
    in_size, out_size = tuple(x.shape[-n:]), tuple(out.shape[-n:])
    segs = list(f.segs)
    for axis in range(n):
        m = in_size[axis]
        shape = [m, 1, *in_size]
        onehot = torch.zeros(shape, dtype=torch.float64)  # on the CPU: the analysis may run on meta
        index: list[Any] = [slice(None)] * len(shape)
        for i in range(m):
            index[0], index[2 + axis] = i, i
            onehot[tuple(index)] = 1.0
        response = call.rerun(onehot)
        line = [slice(None), 0] + [slice(None) if a == axis else s // 2 for a, s in enumerate(response.shape[2:])]
        weights = response[tuple(line)].abs().cpu().numpy()  # [m, out]
        reach = weights.T > 0  # [out, m]
        width = max(1, int(reach.sum(1).max()))
        order = np.argsort(~reach, axis=1, kind="stable")[:, :width]
        valid = np.take_along_axis(reach, order, axis=1)
        segs = [gather_axis(s, axis, order, valid, m / out_size[axis]) for s in segs]
    return Field(f.dims, f.cmap, tuple(segs), f.via)
