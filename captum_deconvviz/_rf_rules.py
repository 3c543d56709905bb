"""Geometry rules: the field of an op's output from the fields of its inputs.

One function per kind of op, dispatched by :func:`apply` on the op's name (the
catalogue is in ``_ops.py``):

* windows (convolutions, pooling): the arithmetic of Araujo et al. per axis, exact
  per-unit reach; channel groups map output channels to their input channels;
* resampling (interpolate, transposed convolutions, adaptive pooling): the exact reach
  of every unit, read from the op itself; the box is a safe bound where jumps are
  fractional;
* padding in every mode: the reach follows the pixels that reflect, replicate or wrap;
* index and shape ops (view, permute, slicing, split, flip, channel shuffle...): the op
  is run on a tensor of element indices, which says where each output element comes from;
* merges (add, mul, cat, where...): the hull of the inputs' fields; a gate computed from
  global statistics and broadcast over the map (squeeze-excitation, ECA, global
  context) adds a reason to ``via`` instead of widening the field;
* ops that mix space (global reductions, softmax over positions, a linear layer over a
  spatial dim): the whole input;
* normalizations: GroupNorm, InstanceNorm and LayerNorm over spatial dims keep the local
  field and add their statistics to ``via``.

Anything else that changes a tensor's shape raises :class:`~._field.Unmodelled`, and the
receptive field of layers downstream of it comes from the gradient probe.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from . import _geometry as geometry
from . import _ops as ops
from ._field import Field, Seg, Unmodelled, bound_from_reach, compact, empty_seg, gather_axis, global_seg, hull
from ._field import window_axis as window_seg_axis

if TYPE_CHECKING:
    from ._rf_graph import FieldRecorder

__all__ = ["NON_TENSOR_OPS", "NO_DEPENDENCE_OPS", "apply", "gate_reason", "has_tensor", "localize", "op_name",
           "tensors_in"]  # fmt: skip

NON_TENSOR_OPS = ops.NON_TENSOR_OPS
NO_DEPENDENCE_OPS = ops.NO_DEPENDENCE_OPS


def op_name(func: Callable[..., Any]) -> str:
    name = getattr(func, "__name__", "")
    if name == "__get__":  # a property such as Tensor.T, seen through its descriptor
        owner = getattr(func, "__self__", None)
        name = "__get__" + str(getattr(owner, "__name__", ""))
    return name


def tensors_in(args: Sequence[Any], kwargs: dict[str, Any]) -> Iterator[Tensor]:
    for value in (*args, *kwargs.values()):
        if isinstance(value, Tensor):
            yield value
        elif isinstance(value, (list, tuple)):
            yield from (v for v in value if isinstance(v, Tensor))


def has_tensor(out: Any) -> bool:
    return isinstance(out, Tensor) or (isinstance(out, (tuple, list)) and any(isinstance(o, Tensor) for o in out))


# --------------------------------------------------------------------------------------
# Dispatch.
# --------------------------------------------------------------------------------------


def apply(
    rec: FieldRecorder,
    name: str,
    func: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    out: Any,
    sources: list[tuple[Tensor, Field]],
) -> Field | list[Field | None] | None:
    """The field (or, for tuple outputs, the list of fields) of ``out``."""
    first = args[0] if args else kwargs.get("input")
    first_field = rec.get(first) if isinstance(first, Tensor) else None
    if name in ops.SHAPE_LIKE_OPS:  # x.expand_as(y): y gives a shape, not values
        sources = [(t, f) for t, f in sources if t is first]
    if name in ops.IDENTITY_OPS and isinstance(first_field, Field) and _only_source(sources, first):
        return first_field
    kind = geometry.op_kind(name)
    if kind in ("conv", "conv_transpose") and isinstance(first_field, Field):
        return _conv(rec, name, args, kwargs, out, first_field, kind)
    if kind in ("max", "avg", "lp") and isinstance(first_field, Field):
        return _pool(rec, name, args, kwargs, out, first_field)
    if kind == "adaptive" and isinstance(first_field, Field):
        return _adaptive(rec, name, out, first, first_field)
    if name in ops.COPY_OPS and len(args) > 1 and isinstance(args[1], Tensor):
        source = rec.get(args[1])
        return _pointwise(rec, name, [(args[1], source)], out) if isinstance(source, Field) else None
    if name == "pad" and isinstance(first_field, Field):
        return _pad(rec, args, kwargs, out, first, first_field)
    if name in ops.RESAMPLE_OPS and isinstance(first_field, Field):
        return _resample(rec, name, func, args, kwargs, out, first, first_field)
    if name in ops.CONCAT_OPS or name in ops.STACK_OPS:
        return _concat(rec, name, args, kwargs, out)
    if name in ops.INDEX_OPS and isinstance(first_field, Field) and _only_source(sources, first):
        return _index(rec, name, func, args, kwargs, out, first, first_field)
    if name in ops.REDUCTION_OPS and isinstance(first_field, Field) and not _tensor_arg(args, 1):
        return _reduce(rec, name, args, kwargs, out, first, first_field)
    if name in ops.MIX_ALONG_DIM_OPS and isinstance(first_field, Field) and _only_source(sources, first):
        return _mix_along(rec, name, args, kwargs, out, first, first_field)
    if name in ops.NORM_OPS and isinstance(first_field, Field):
        return _norm(rec, name, args, kwargs, out, first, first_field)
    if name in ops.MATMUL_OPS:
        return _matmul(rec, name, args, kwargs, out, sources)
    return _pointwise(rec, name, sources, out)


def _only_source(sources: list[tuple[Tensor, Field]], first: Any) -> bool:
    return all(t is first for t, _ in sources)


def _tensor_arg(args: tuple[Any, ...], i: int) -> bool:
    return len(args) > i and isinstance(args[i], Tensor)


def _arg(args: tuple[Any, ...], kwargs: dict[str, Any], i: int, key: str, default: Any = None) -> Any:
    return kwargs[key] if key in kwargs else (args[i] if len(args) > i else default)


# --------------------------------------------------------------------------------------
# Building blocks.
# --------------------------------------------------------------------------------------


def _global(rec: FieldRecorder, shape: Sequence[int], via: frozenset[str], source: Seg | None = None) -> Field:
    """A field on which every element depends on the whole input; trailing dims are spatial."""
    n = len(rec.input_size)
    spatial = len(shape) >= n + 1
    dims: tuple[int | None, ...] = (None,) * (len(shape) - n) + tuple(range(n)) if spatial else (None,) * len(shape)
    map_size = tuple(shape[-n:]) if spatial else (1,) * n
    base = source or Seg(
        tuple(np.zeros(1, dtype=np.int64) for _ in range(n)),
        tuple(np.full(1, s, dtype=np.int64) for s in rec.input_size),
        (0,) * n,
        rec.input_size,
        rec.input_size,
    )
    seg = global_seg(base, rec.input_size, map_size)
    cmap_shape = tuple(s for s, d in zip(shape, dims, strict=True) if d is None)
    return Field(dims, np.zeros(cmap_shape, dtype=np.int64), (seg,), via)


def _global_from(rec: FieldRecorder, out: Tensor, f: Field) -> Field:
    return _global(rec, tuple(out.shape), f.via, f.layer_seg() if not f.hidden else f.hidden[0].layer_seg())


def _map_size(rec: FieldRecorder, f: Field, shape: Sequence[int]) -> tuple[int, ...]:
    sizes = [1] * len(rec.input_size)
    for d, a in enumerate(f.dims):
        if a is not None:
            sizes[a] = int(shape[d])
    return tuple(sizes)


def _trailing_spatial(f: Field, n: int) -> bool:
    """The last ``n`` dims hold the spatial axes in order, after a channel dim."""
    return len(f.dims) > n and f.dims[-n:] == tuple(range(n)) and f.dims[-n - 1] is None and f.hidden is None


def _merge_axis(cmap: np.ndarray, segs: Sequence[Seg], axis: int) -> tuple[np.ndarray, tuple[Seg, ...]]:
    """Hull the segs along one cmap axis (keepdim)."""
    if cmap.shape[axis] == 0:
        return cmap, tuple(segs)
    slices = np.moveaxis(cmap, axis, 0)
    current, merged = slices[0], list(segs)
    for other in slices[1:]:
        current, merged_t = _pair(current, other, merged, merged)
        merged = list(merged_t)
    return np.expand_dims(current, axis), tuple(merged)


def _pair(
    a: np.ndarray, b: np.ndarray, segs_a: Sequence[Seg], segs_b: Sequence[Seg]
) -> tuple[np.ndarray, tuple[Seg, ...]]:
    """Element-wise hull of two seg maps over the same channel grid."""
    key = a.astype(np.int64) * len(segs_b) + b
    unique, inverse = np.unique(key, return_inverse=True)
    segs = tuple(hull([segs_a[k // len(segs_b)], segs_b[k % len(segs_b)]]) for k in unique.tolist())
    return inverse.reshape(key.shape).astype(np.int64), segs


def _hull_all(f: Field) -> tuple[np.ndarray, tuple[Seg, ...]]:
    """One seg for every channel: the union of all."""
    return np.zeros_like(f.cmap), (f.layer_seg(),)


# --------------------------------------------------------------------------------------
# Windows: convolutions and pooling.
# --------------------------------------------------------------------------------------


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


def _conv(
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
        return _global_from(rec, out, f)
    if not _trailing_spatial(f, n) or len(rec.input_size) != n:
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


def _pool(rec: FieldRecorder, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any, f: Field) -> Field:
    spec = geometry.window_from_call(name, args, kwargs)
    result = out[0] if isinstance(out, (tuple, list)) else out
    if f.is_global:
        return _global_from(rec, result, f)
    if not all(a is not None for a in f.dims[-spec.n :]) or f.dims[-spec.n :] != tuple(range(spec.n)):
        raise Unmodelled(name, rec.where(), "pooling over dims that are not the input's spatial dims")
    out_size = tuple(result.shape[-spec.n :])
    return Field(f.dims, f.cmap, tuple(_window(s, spec, out_size) for s in f.segs), f.via)


def _adaptive(rec: FieldRecorder, name: str, out: Any, x: Tensor, f: Field) -> Field:
    result = out[0] if isinstance(out, (tuple, list)) else out
    n = geometry.spatial_dims_of(name)
    if f.is_global or f.dims[-n:] != tuple(range(n)) or f.hidden is not None:
        if f.is_global:
            return _global_from(rec, result, f)
        raise Unmodelled(name, rec.where(), "adaptive pooling over dims that are not spatial")
    in_size, out_size = tuple(x.shape[-n:]), tuple(result.shape[-n:])
    if all(o == 1 for o in out_size) and any(i > 1 for i in in_size):
        return _global_from(rec, result, f)
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


# --------------------------------------------------------------------------------------
# Padding and resampling.
# --------------------------------------------------------------------------------------


def _pad(rec: FieldRecorder, args: tuple[Any, ...], kwargs: dict[str, Any], out: Tensor, x: Tensor, f: Field) -> Field:
    pad = [int(p) for p in _arg(args, kwargs, 1, "pad")]
    mode = _arg(args, kwargs, 2, "mode", "constant")
    if f.is_global:
        return _global_from(rec, out, f)
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
    from ._field import gather_bounds

    lo, hi = gather_bounds(seg.lo[axis], seg.hi[axis], index[:, None], valid[:, None])
    j = seg.stride[axis]
    return seg.with_axis(axis, lo, hi, offset=seg.offset[axis] - before * j)


def _resample(
    rec: FieldRecorder,
    name: str,
    func: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    out: Tensor,
    x: Tensor,
    f: Field,
) -> Field:
    """Interpolation: each axis's reach is read from the op run on one-hot inputs."""
    n = len(rec.input_size)
    if f.is_global:
        return _global_from(rec, out, f)
    if not _trailing_spatial(f, n) or x.dim() != n + 2:
        raise Unmodelled(name, rec.where(), "resampling a tensor that is not [N, C, *spatial]")
    in_size, out_size = tuple(x.shape[-n:]), tuple(out.shape[-n:])
    segs = list(f.segs)
    for axis in range(n):
        m = in_size[axis]
        shape = [m, 1, *in_size]
        onehot = torch.zeros(shape, dtype=torch.float64)  # on the CPU: the analysis may run on meta
        index = [slice(None)] * len(shape)
        for i in range(m):
            index[0], index[2 + axis] = i, i
            onehot[tuple(index)] = 1.0
        rest = args[1:] if args else ()
        kw = {k: v for k, v in kwargs.items() if k != "input"}
        with torch.no_grad():
            response = func(onehot, *rest, **kw)
        line = [slice(None), 0] + [slice(None) if a == axis else s // 2 for a, s in enumerate(response.shape[2:])]
        weights = response[tuple(line)].abs().cpu().numpy()  # [m, out]
        reach = weights.T > 0  # [out, m]
        width = max(1, int(reach.sum(1).max()))
        order = np.argsort(~reach, axis=1, kind="stable")[:, :width]
        valid = np.take_along_axis(reach, order, axis=1)
        segs = [gather_axis(s, axis, order, valid, m / out_size[axis]) for s in segs]
    return Field(f.dims, f.cmap, tuple(segs), f.via)


# --------------------------------------------------------------------------------------
# Index and shape ops, traced on element indices.
# --------------------------------------------------------------------------------------


def _index(
    rec: FieldRecorder,
    name: str,
    func: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    out: Any,
    x: Tensor,
    f: Field,
) -> Field | list[Field | None] | None:
    outs = list(out) if isinstance(out, (tuple, list)) else [out]
    if f.is_global:
        fields: list[Field | None] = [_global_from(rec, o, f) if isinstance(o, Tensor) else None for o in outs]
        if f.gate or _broadcasts_space(f, x, outs):
            fields = [replace(fl, gate=True) if fl is not None else None for fl in fields]
        return fields if isinstance(out, (tuple, list)) else fields[0]
    if f.hidden is not None:
        fields = [_hidden_index(rec, name, o, f) if isinstance(o, Tensor) else None for o in outs]
        return fields if isinstance(out, (tuple, list)) else fields[0]
    code = torch.arange(x.numel()).reshape(x.shape)  # on the CPU: the analysis may run on meta
    rest = args[1:] if args else ()
    kw = {k: v for k, v in kwargs.items() if k not in ("input", "out")}
    with torch.no_grad():
        traced = func(code, *rest, **kw)
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


# --------------------------------------------------------------------------------------
# Merges.
# --------------------------------------------------------------------------------------


def _concat(rec: FieldRecorder, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], out: Tensor) -> Field | None:
    items = list(_arg(args, kwargs, 0, "tensors", []))
    dim = int(_arg(args, kwargs, 1, "dim", 0))
    fields = [rec.get(t) if isinstance(t, Tensor) else None for t in items]
    live = [fl for fl in fields if isinstance(fl, Field)]
    if not live:
        return None
    via = frozenset().union(*(fl.via for fl in live))
    if all(fl.is_global for fl in live):
        return _global(rec, tuple(out.shape), via, hull([fl.layer_seg() for fl in live]))
    first = live[0]
    if any(fl.dims != first.dims or fl.hidden is not None for fl in live):
        raise Unmodelled(name, rec.where(), "joining tensors whose dims hold different things")
    stack = name in ops.STACK_OPS
    ndim = items[0].dim() + (1 if stack else 0)
    dim = dim % ndim
    map_size = _map_size(rec, first, items[0].shape)
    segs: list[Seg] = []
    cmaps = []
    for t, fl in zip(items, fields, strict=True):
        if isinstance(fl, Field) and fl.is_global:
            fl = Field(first.dims, np.zeros_like(first.cmap), (fl.layer_seg().resized(map_size),), fl.via)
        if not isinstance(fl, Field):  # a constant: depends on nothing
            shape = [s for s, a in zip(t.shape, first.dims, strict=True) if a is None]
            fl = Field(first.dims, np.zeros(shape, dtype=np.int64), (empty_seg(map_size),))
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


def _is_gate(t: Tensor, f: Field, out_shape: Sequence[int]) -> bool:
    """A global tensor broadcast over the map: a gate or a statistic, not a path."""
    if not f.is_global:
        return False
    if f.gate:
        return True
    offset = len(out_shape) - t.dim()
    return any(a is not None and t.shape[d] == 1 and out_shape[d + offset] > 1 for d, a in enumerate(f.dims))


def gate_reason(rec: FieldRecorder) -> str:
    """Describe the gate in words from the modules running, e.g. 'squeeze-excitation gate at blocks.2.se'."""
    for path, module in reversed(rec.stack):
        kind = ops.describe_gate(type(module).__name__)
        if kind:
            return f"{kind} gate at {path or 'the model'}"
    return f"global gate at {rec.path()}"


def _pointwise(rec: FieldRecorder, name: str, sources: list[tuple[Tensor, Any]], out: Any) -> Field | None:
    result = out[0] if isinstance(out, (tuple, list)) else out
    if not isinstance(result, Tensor):
        return None
    out_shape = tuple(result.shape)
    fields = [(t, f) for t, f in sources if isinstance(f, Field)]
    try:
        np.broadcast_shapes(out_shape, *(tuple(t.shape) for t, _ in fields))
        fits = (
            all(len(t.shape) <= len(out_shape) for t, _ in fields)
            and tuple(np.broadcast_shapes(*(tuple(t.shape) for t, _ in fields))) == out_shape
        ) or len(fields) == 0
    except ValueError:
        fits = False
    if not fits:
        raise Unmodelled(name, rec.where(), f"changes the shape {tuple(fields[0][0].shape)} to {out_shape}")
    via = frozenset().union(*(f.via for _, f in fields))
    gates = [(t, f) for t, f in fields if _is_gate(t, f, out_shape)]
    paths = [(t, f) for t, f in fields if not any(t is g for g, _ in gates)]
    if gates and paths:
        via = via | {gate_reason(rec)}
    if not paths:
        return _global(rec, out_shape, via, hull([f.layer_seg() for _, f in fields]))
    if any(f.is_global for _, f in paths):
        return _global(rec, out_shape, via, hull([f.layer_seg() for _, f in paths]))
    hidden = [f for _, f in paths if f.hidden is not None]
    if hidden:
        if len(paths) == 1:
            f = paths[0][1]
            return Field(f.dims if len(f.dims) == len(out_shape) else (None,) * len(out_shape),
                         np.zeros(out_shape, dtype=np.int64), f.segs, via, f.hidden)  # fmt: skip
        raise Unmodelled(name, rec.where(), "merging maps whose spatial dims were flattened")
    dims: list[int | None] = [None] * len(out_shape)
    decided = [False] * len(out_shape)
    for t, f in paths:
        offset = len(out_shape) - t.dim()
        for d, a in enumerate(f.dims):
            e = d + offset
            if t.shape[d] != out_shape[e] and t.shape[d] == 1:
                continue  # broadcast along e
            if decided[e] and dims[e] != a:
                raise Unmodelled(name, rec.where(), "merging tensors whose dims hold different things")
            dims[e], decided[e] = a, True
    map_size = [1] * len(rec.input_size)
    for e, a in enumerate(dims):
        if a is not None:
            map_size[a] = out_shape[e]
    channel_out = [e for e, a in enumerate(dims) if a is None]
    cmap = np.zeros([out_shape[e] for e in channel_out], dtype=np.int64)
    segs: tuple[Seg, ...] | None = None
    for t, f in paths:
        offset = len(out_shape) - t.dim()
        shape = [1] * len(channel_out)
        for d, a in enumerate(f.dims):
            if a is None and d + offset in channel_out:
                shape[channel_out.index(d + offset)] = t.shape[d]
        own = np.broadcast_to(f.cmap.reshape(shape), cmap.shape)
        own_segs = tuple(s.resized(map_size) for s in f.segs)
        if segs is None:
            cmap, segs = own.copy(), own_segs
        else:
            cmap, segs = _pair(cmap, own, segs, own_segs)
    assert segs is not None
    cmap, kept = compact(cmap, segs)
    return Field(tuple(dims), cmap, kept, via)


# --------------------------------------------------------------------------------------
# Reductions, ops that mix along a dim, normalizations, matrix products.
# --------------------------------------------------------------------------------------


def _dims_arg(value: Any, ndim: int) -> list[int] | None:
    if value is None:
        return None
    if isinstance(value, int):
        return [value % ndim] if ndim else []
    if isinstance(value, (list, tuple, torch.Size)):
        return [int(v) % ndim for v in value]
    return None


def _reduce(
    rec: FieldRecorder, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any, x: Tensor, f: Field
) -> Any:
    position = 2 if name in ("norm", "linalg_vector_norm") else 1
    raw = kwargs.get("dim", kwargs.get("axis", args[position] if len(args) > position else None))
    if isinstance(raw, (int, list, tuple, torch.Size)) and not isinstance(raw, bool):
        reduced = _dims_arg(raw, x.dim()) or []
    else:
        reduced = list(range(x.dim()))
    keepdim = bool(kwargs.get("keepdim", False)) or any(a is True for a in args[position + 1 :][:2])
    outs = list(out) if isinstance(out, (tuple, list)) else [out]
    result = next(o for o in outs if isinstance(o, Tensor))
    if f.is_global or f.hidden is not None or any(f.dims[d] is not None for d in reduced):
        field = _global_from(rec, result, f)
    else:
        cmap, segs = f.cmap, f.segs
        channel_dims = f.channel_dims()
        for d in reduced:
            cmap, segs = _merge_axis(cmap, segs, channel_dims.index(d))
        dims = list(f.dims)
        if not keepdim:
            keep = [i for i, d in enumerate(channel_dims) if d not in reduced]
            cmap = cmap.reshape([cmap.shape[i] for i in keep]) if keep else cmap.reshape(())
            dims = [a for d, a in enumerate(f.dims) if d not in reduced]
        if len(dims) != result.dim():
            raise Unmodelled(name, rec.where(), "a reduction whose output shape was not foreseen")
        cmap, segs = compact(cmap, segs)
        field = Field(tuple(dims), cmap, segs, f.via)
    return [field if isinstance(o, Tensor) else None for o in outs] if isinstance(out, (tuple, list)) else field


def _mix_along(
    rec: FieldRecorder, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any, x: Tensor, f: Field
) -> Any:
    """Every output element along ``dim`` depends on every input element along it."""
    position = {"normalize": 2, "topk": 2, "kthvalue": 2}.get(name, 1)
    default = -1 if name in ("sort", "argsort", "topk", "glu", "kthvalue") else (1 if name == "normalize" else None)
    raw = kwargs.get("dim", args[position] if len(args) > position else default)
    if raw is None:
        raise Unmodelled(name, rec.where(), "no dim given")
    dim = int(raw) % x.dim()
    outs = list(out) if isinstance(out, (tuple, list)) else [out]
    result = next(o for o in outs if isinstance(o, Tensor))
    if f.is_global or f.hidden is not None or f.dims[dim] is not None:
        field = _global_from(rec, result, f)
    else:
        cax = f.channel_dims().index(dim)
        cmap, segs = _merge_axis(f.cmap, f.segs, cax)
        shape = list(cmap.shape)
        shape[cax] = result.shape[dim]
        field = Field(f.dims, np.broadcast_to(cmap, shape).copy(), segs, f.via)
    return [field if isinstance(o, Tensor) else None for o in outs] if isinstance(out, (tuple, list)) else field


def _norm(
    rec: FieldRecorder, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], out: Tensor, x: Tensor, f: Field
) -> Field:
    reason = ""
    mixed: list[int] = []
    if name == "batch_norm":
        if _arg(args, kwargs, 5, "training", False):
            reason = "BatchNorm batch statistics"
    elif name == "group_norm":
        reason = "GroupNorm statistics"
    elif name == "instance_norm":
        if _arg(args, kwargs, 5, "use_input_stats", True):
            reason = "InstanceNorm statistics"
    elif name in ("layer_norm", "rms_norm"):
        shape = _arg(args, kwargs, 1, "normalized_shape")
        count = 1 if isinstance(shape, int) else len(shape)
        normalized = list(range(x.dim() - count, x.dim()))
        if any(f.dims[d] is not None for d in normalized) or f.hidden is not None:
            reason = ("LayerNorm" if name == "layer_norm" else "RMSNorm") + " statistics"
        else:
            mixed = normalized
    elif name in ("local_response_norm", "normalize"):
        mixed = [1 % x.dim()] if name == "local_response_norm" else [int(_arg(args, kwargs, 2, "dim", 1)) % x.dim()]
        if any(f.dims[d] is not None for d in mixed):
            return _global_from(rec, out, f)
    if f.is_global:
        return _global_from(rec, out, f)
    via = f.via | ({f"{reason} at {rec.path()}"} if reason else frozenset())
    cmap, segs = f.cmap, f.segs
    channel_dims = f.channel_dims()
    for d in mixed:
        cax = channel_dims.index(d)
        merged, segs = _merge_axis(cmap, segs, cax)
        cmap = np.broadcast_to(merged, cmap.shape).copy()
    cmap, segs = compact(cmap, segs)
    return Field(f.dims, cmap, segs, via, f.hidden)


def _matmul(
    rec: FieldRecorder,
    name: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    out: Tensor,
    sources: list[tuple[Tensor, Any]],
) -> Field:
    fields = [(t, f) for t, f in sources if isinstance(f, Field)]
    via = frozenset().union(*(f.via for _, f in fields))
    x = args[0] if args else kwargs.get("input")
    if all(f.is_global for _, f in fields):
        return _global(rec, tuple(out.shape), via, hull([f.layer_seg() for _, f in fields]))
    if name == "linear" or (len(fields) == 1 and fields[0][0] is x):
        f = fields[0][1]
        assert isinstance(x, Tensor)
        if len(fields) != 1 or fields[0][0] is not x or (x.dim() < 2 and name != "linear"):
            raise Unmodelled(name, rec.where(), "a product of two input-dependent tensors")
        if f.hidden is not None or f.dims[-1] is not None:
            return _global(rec, tuple(out.shape), via, f.layer_seg() if f.hidden is None else f.hidden[0].layer_seg())
        if out.dim() != x.dim():
            raise Unmodelled(name, rec.where(), "a product that changes the number of dims")
        cax = len(f.channel_dims()) - 1
        merged, segs = _merge_axis(f.cmap, f.segs, cax)
        shape = list(merged.shape)
        shape[cax] = out.shape[-1]
        return Field(f.dims, np.broadcast_to(merged, shape).copy(), segs, via)
    other = fields[0][1]
    if other.hidden is not None or (len(other.dims) >= 2 and other.dims[-2] is not None):
        return _global(
            rec, tuple(out.shape), via, other.layer_seg() if other.hidden is None else other.hidden[0].layer_seg()
        )
    raise Unmodelled(name, rec.where(), "a matrix product the analysis does not model")


# --------------------------------------------------------------------------------------
# The probe's local mode: detach global gates and statistics.
# --------------------------------------------------------------------------------------


def localize(
    rec: FieldRecorder,
    name: str,
    func: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    sources: list[tuple[Tensor, Any]],
) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
    """Under ``detach_global``: the same op with its global gates and statistics held fixed."""
    fields = [(t, f) for t, f in sources if isinstance(f, Field)]
    if name in ops.NORM_OPS and name in _LOCAL_NORMS:
        x = args[0] if args else kwargs.get("input")
        f = rec.get(x) if isinstance(x, Tensor) else None
        if isinstance(f, Field) and not f.is_global and assert_local_norm(name, args, kwargs, f, x):
            return _LOCAL_NORMS[name], args, kwargs
        return func, args, kwargs
    if name in ops.CONCAT_OPS or name in ops.INDEX_OPS or geometry.op_kind(name) is not None:
        return func, args, kwargs
    try:
        shapes = [tuple(t.shape) for t in tensors_in(args, kwargs)]
        out_shape = tuple(np.broadcast_shapes(*shapes))
    except ValueError:
        return func, args, kwargs
    gates = {id(t) for t, f in fields if _is_gate(t, f, out_shape)}
    if not gates or len(gates) == len(fields):
        return func, args, kwargs

    def detach(v: Any) -> Any:
        if isinstance(v, Tensor) and id(v) in gates:
            return v.detach()
        if isinstance(v, (list, tuple)):
            return type(v)(detach(i) for i in v)
        return v

    return func, tuple(detach(a) for a in args), {k: detach(v) for k, v in kwargs.items()}


def assert_local_norm(name: str, args: tuple[Any, ...], kwargs: dict[str, Any], f: Field, x: Tensor) -> bool:
    """True when the norm's statistics run over spatial dims (so the probe must hold them fixed)."""
    if name != "layer_norm":
        return name != "instance_norm" or bool(_arg(args, kwargs, 5, "use_input_stats", True))
    shape = _arg(args, kwargs, 1, "normalized_shape")
    count = 1 if isinstance(shape, int) else len(shape)
    return any(f.dims[d] is not None for d in range(x.dim() - count, x.dim())) or f.hidden is not None


def _normalize_with_fixed_stats(x: Tensor, dims: list[int], groups: int | None, eps: float) -> Tensor:
    if groups is not None:
        shaped = x.reshape(x.shape[0], groups, -1)
        mean = shaped.detach().mean(-1, keepdim=True)
        var = shaped.detach().var(-1, unbiased=False, keepdim=True)
        return ((shaped - mean) / torch.sqrt(var + eps)).reshape(x.shape)
    mean = x.detach().mean(dims, keepdim=True)
    var = x.detach().var(dims, unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps)


def _affine(y: Tensor, weight: Tensor | None, bias: Tensor | None, channel_dim: int | None) -> Tensor:
    shape = [1] * y.dim()
    if weight is not None:
        if channel_dim is None:
            y = y * weight
        else:
            shape[channel_dim] = -1
            y = y * weight.reshape(shape)
    if bias is not None:
        if channel_dim is None:
            y = y + bias
        else:
            shape[channel_dim] = -1
            y = y + bias.reshape(shape)
    return y


def _group_norm_local(
    x: Tensor, num_groups: int, weight: Tensor | None = None, bias: Tensor | None = None, eps: float = 1e-5
) -> Tensor:
    return _affine(_normalize_with_fixed_stats(x, [], num_groups, eps), weight, bias, 1)


def _instance_norm_local(x: Tensor, running_mean: Any = None, running_var: Any = None, weight: Tensor | None = None,
                         bias: Tensor | None = None, use_input_stats: bool = True, momentum: float = 0.1,
                         eps: float = 1e-5) -> Tensor:  # fmt: skip
    if not use_input_stats:
        return torch.nn.functional.instance_norm(x, running_mean, running_var, weight, bias, False, momentum, eps)
    return _affine(_normalize_with_fixed_stats(x, list(range(2, x.dim())), None, eps), weight, bias, 1)


def _layer_norm_local(
    x: Tensor, normalized_shape: Any, weight: Tensor | None = None, bias: Tensor | None = None, eps: float = 1e-5
) -> Tensor:
    count = 1 if isinstance(normalized_shape, int) else len(normalized_shape)
    dims = list(range(x.dim() - count, x.dim()))
    return _affine(_normalize_with_fixed_stats(x, dims, None, eps), weight, bias, None)


_LOCAL_NORMS: dict[str, Callable[..., Tensor]] = {
    "group_norm": _group_norm_local,
    "instance_norm": _instance_norm_local,
    "layer_norm": _layer_norm_local,
}
