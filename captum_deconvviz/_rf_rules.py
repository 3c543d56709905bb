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

from typing import TYPE_CHECKING, Any

from torch import Tensor

from . import _geometry as geometry
from . import _ops as ops
from ._field import (
    Field,
)
from ._rf_blocks import OpCall, gate_reason, has_tensor, only_source, op_name, tensor_arg, tensors_in
from ._rf_index import concat_rule, index_rule
from ._rf_local import localize
from ._rf_mix import matmul_rule, mix_along_rule, norm_rule, pointwise_rule, reduce_rule
from ._rf_window import adaptive_rule, conv_rule, pad_rule, pool_rule, resample_rule

if TYPE_CHECKING:
    from ._rf_graph import FieldRecorder

NON_TENSOR_OPS = ops.NON_TENSOR_OPS
NO_DEPENDENCE_OPS = ops.NO_DEPENDENCE_OPS

__all__ = [
    "NON_TENSOR_OPS",
    "NO_DEPENDENCE_OPS",
    "OpCall",
    "apply",
    "gate_reason",
    "has_tensor",
    "localize",
    "op_name",
    "tensors_in",
]


def apply(
    rec: FieldRecorder, call: OpCall, out: Any, sources: list[tuple[Tensor, Field]]
) -> Field | list[Field | None] | None:
    name, args, kwargs = call.name, call.args, call.kwargs
    """The field (or, for tuple outputs, the list of fields) of ``out``."""
    first: Any = args[0] if args else kwargs.get("input")
    first_field = rec.get(first) if isinstance(first, Tensor) else None
    if name in ops.SHAPE_LIKE_OPS:  # x.expand_as(y): y gives a shape, not values
        sources = [(t, f) for t, f in sources if t is first]
    if name in ops.IDENTITY_OPS and isinstance(first_field, Field) and only_source(sources, first):
        return first_field
    kind = geometry.op_kind(name)
    if kind in ("conv", "conv_transpose") and isinstance(first_field, Field):
        return conv_rule(rec, name, args, kwargs, out, first_field, kind)
    if kind in ("max", "avg", "lp") and isinstance(first_field, Field):
        return pool_rule(rec, name, args, kwargs, out, first_field)
    if kind == "adaptive" and isinstance(first_field, Field):
        return adaptive_rule(rec, name, out, first, first_field)
    if name in ops.COPY_OPS and len(args) > 1 and isinstance(args[1], Tensor):
        source = rec.get(args[1])
        return pointwise_rule(rec, name, [(args[1], source)], out) if isinstance(source, Field) else None
    if name == "pad" and isinstance(first_field, Field):
        return pad_rule(rec, args, kwargs, out, first, first_field)
    if name in ops.RESAMPLE_OPS and isinstance(first_field, Field):
        return resample_rule(rec, call, out, first, first_field)
    if name in ops.CONCAT_OPS or name in ops.STACK_OPS:
        return concat_rule(rec, name, args, kwargs, out)
    if name in ops.INDEX_OPS and isinstance(first_field, Field) and only_source(sources, first):
        return index_rule(rec, call, out, first, first_field)
    if name in ops.REDUCTION_OPS and isinstance(first_field, Field) and not tensor_arg(args, 1):
        return reduce_rule(rec, name, args, kwargs, out, first, first_field)
    if name in ops.MIX_ALONG_DIM_OPS and isinstance(first_field, Field) and only_source(sources, first):
        return mix_along_rule(rec, name, args, kwargs, out, first, first_field)
    if name in ops.NORM_OPS and isinstance(first_field, Field):
        return norm_rule(rec, name, args, kwargs, out, first, first_field)
    if name in ops.MATMUL_OPS:
        return matmul_rule(rec, name, args, kwargs, out, sources)
    return pointwise_rule(rec, name, sources, out)
