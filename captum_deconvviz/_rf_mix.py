"""Geometry rules for merges, reductions, ops that mix along a dim, norms and products.

Merges take the hull of their inputs' fields unit by unit; a global statistic broadcast over
the map is a gate, named in ``via``, not a path. Reductions or products over a spatial dim
mix space: the whole input.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from ._field import (
    Field,
    Seg,
    Unmodelled,
    compact,
    hull,
)
from ._rf_blocks import arg, dims_arg, gate_reason, global_field, global_like, is_gate, merge_axis, pair

if TYPE_CHECKING:
    from ._rf_graph import FieldRecorder


def pointwise_rule(rec: FieldRecorder, name: str, sources: list[tuple[Tensor, Any]], out: Any) -> Field | None:
    result = out[0] if isinstance(out, (tuple, list)) else out
    if not isinstance(result, Tensor):
        return None
    out_shape = tuple(result.shape)
    fields = [(t, f) for t, f in sources if isinstance(f, Field)]
    if not _broadcast_to(out_shape, [tuple(t.shape) for t, _ in fields]):
        raise Unmodelled(name, rec.where(), f"changes the shape {tuple(fields[0][0].shape)} to {out_shape}")
    via = frozenset().union(*(f.via for _, f in fields))
    gates = [(t, f) for t, f in fields if is_gate(t, f, out_shape)]
    paths = [(t, f) for t, f in fields if not any(t is g for g, _ in gates)]
    if gates and paths:
        via = via | {gate_reason(rec)}
    if not paths:
        return global_field(rec, out_shape, via, hull([f.layer_seg() for _, f in fields]))
    if any(f.is_global for _, f in paths):
        return global_field(rec, out_shape, via, hull([f.layer_seg() for _, f in paths]))
    hidden = [f for _, f in paths if f.hidden is not None]
    if hidden:
        if len(paths) == 1:
            f = paths[0][1]
            return Field(f.dims if len(f.dims) == len(out_shape) else (None,) * len(out_shape),
                         np.zeros(out_shape, dtype=np.int64), f.segs, via, f.hidden)  # fmt: skip
        raise Unmodelled(name, rec.where(), "merging maps whose spatial dims were flattened")
    dims = _merged_dims(rec, name, paths, out_shape)
    return _merge_paths(rec, paths, out_shape, dims, via)


def _broadcast_to(out_shape: tuple[int, ...], shapes: list[tuple[int, ...]]) -> bool:
    """The operands broadcast exactly to ``out_shape`` (a pointwise op)."""
    if not shapes:
        return True
    try:
        return all(len(s) <= len(out_shape) for s in shapes) and tuple(np.broadcast_shapes(*shapes)) == out_shape
    except ValueError:
        return False


def _merged_dims(
    rec: FieldRecorder, name: str, paths: list[tuple[Tensor, Field]], out_shape: tuple[int, ...]
) -> tuple[int | None, ...]:
    """What each output dim holds, agreed by every operand that is not broadcast along it."""
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
    return tuple(dims)


def _merge_paths(
    rec: FieldRecorder,
    paths: list[tuple[Tensor, Field]],
    out_shape: tuple[int, ...],
    dims: tuple[int | None, ...],
    via: frozenset[str],
) -> Field:
    """The element-wise hull of the operands' fields, broadcast to the output."""
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
            cmap, segs = pair(cmap, own, segs, own_segs)
    assert segs is not None
    cmap, kept = compact(cmap, segs)
    return Field(dims, cmap, kept, via)


def reduce_rule(
    rec: FieldRecorder, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any, x: Tensor, f: Field
) -> Any:
    position = 2 if name in ("norm", "linalg_vector_norm") else 1
    raw = kwargs.get("dim", kwargs.get("axis", args[position] if len(args) > position else None))
    if isinstance(raw, (int, list, tuple, torch.Size)) and not isinstance(raw, bool):
        reduced = dims_arg(raw, x.dim()) or []
    else:
        reduced = list(range(x.dim()))
    keepdim = bool(kwargs.get("keepdim", False)) or any(a is True for a in args[position + 1 :][:2])
    outs = list(out) if isinstance(out, (tuple, list)) else [out]
    result = next(o for o in outs if isinstance(o, Tensor))
    if f.is_global or f.hidden is not None or any(f.dims[d] is not None for d in reduced):
        field = global_like(rec, result, f)
    else:
        cmap, segs = f.cmap, f.segs
        channel_dims = f.channel_dims()
        for d in reduced:
            cmap, segs = merge_axis(cmap, segs, channel_dims.index(d))
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


def mix_along_rule(
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
        field = global_like(rec, result, f)
    else:
        cax = f.channel_dims().index(dim)
        cmap, segs = merge_axis(f.cmap, f.segs, cax)
        shape = list(cmap.shape)
        shape[cax] = result.shape[dim]
        field = Field(f.dims, np.broadcast_to(cmap, shape).copy(), segs, f.via)
    return [field if isinstance(o, Tensor) else None for o in outs] if isinstance(out, (tuple, list)) else field


def norm_rule(
    rec: FieldRecorder, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], out: Tensor, x: Tensor, f: Field
) -> Field:
    reason = ""
    mixed: list[int] = []
    if name == "batch_norm":
        if arg(args, kwargs, 5, "training", False):
            reason = "BatchNorm batch statistics"
    elif name == "group_norm":
        reason = "GroupNorm statistics"
    elif name == "instance_norm":
        if arg(args, kwargs, 5, "use_input_stats", True):
            reason = "InstanceNorm statistics"
    elif name in ("layer_norm", "rms_norm"):
        shape = arg(args, kwargs, 1, "normalized_shape")
        count = 1 if isinstance(shape, int) else len(shape)
        normalized = list(range(x.dim() - count, x.dim()))
        if any(f.dims[d] is not None for d in normalized) or f.hidden is not None:
            reason = ("LayerNorm" if name == "layer_norm" else "RMSNorm") + " statistics"
        else:
            mixed = normalized
    elif name in ("local_response_norm", "normalize"):
        mixed = [1 % x.dim()] if name == "local_response_norm" else [int(arg(args, kwargs, 2, "dim", 1)) % x.dim()]
        if any(f.dims[d] is not None for d in mixed):
            return global_like(rec, out, f)
    if f.is_global:
        return global_like(rec, out, f)
    via = f.via | ({f"{reason} at {rec.path()}"} if reason else frozenset())
    cmap, segs = f.cmap, f.segs
    channel_dims = f.channel_dims()
    for d in mixed:
        cax = channel_dims.index(d)
        merged, segs = merge_axis(cmap, segs, cax)
        cmap = np.broadcast_to(merged, cmap.shape).copy()
    cmap, segs = compact(cmap, segs)
    return Field(f.dims, cmap, segs, via, f.hidden)


def matmul_rule(
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
        return global_field(rec, tuple(out.shape), via, hull([f.layer_seg() for _, f in fields]))
    if name == "linear" or (len(fields) == 1 and fields[0][0] is x):
        f = fields[0][1]
        assert isinstance(x, Tensor)
        if len(fields) != 1 or fields[0][0] is not x or (x.dim() < 2 and name != "linear"):
            raise Unmodelled(name, rec.where(), "a product of two input-dependent tensors")
        if f.hidden is not None or f.dims[-1] is not None:
            return global_field(
                rec, tuple(out.shape), via, f.layer_seg() if f.hidden is None else f.hidden[0].layer_seg()
            )
        if out.dim() != x.dim():
            raise Unmodelled(name, rec.where(), "a product that changes the number of dims")
        cax = len(f.channel_dims()) - 1
        merged, segs = merge_axis(f.cmap, f.segs, cax)
        shape = list(merged.shape)
        shape[cax] = out.shape[-1]
        return Field(f.dims, np.broadcast_to(merged, shape).copy(), segs, via)
    other = fields[0][1]
    if other.hidden is not None or (len(other.dims) >= 2 and other.dims[-2] is not None):
        return global_field(
            rec, tuple(out.shape), via, other.layer_seg() if other.hidden is None else other.hidden[0].layer_seg()
        )
    raise Unmodelled(name, rec.where(), "a matrix product the analysis does not model")
