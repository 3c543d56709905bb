"""The probe's local mode: the same op with its global gates and statistics held fixed."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from . import _geometry as geometry
from . import _ops as ops
from ._field import (
    Field,
)
from ._rf_blocks import OpCall, arg, is_gate, tensors_in

if TYPE_CHECKING:
    from ._rf_graph import FieldRecorder


def localize(rec: FieldRecorder, call: OpCall, sources: list[tuple[Tensor, Any]]) -> OpCall:
    """Under ``detach_global``: the same op with its global gates and statistics held fixed."""
    name, func, args, kwargs = call.name, call.func, call.args, call.kwargs
    fields = [(t, f) for t, f in sources if isinstance(f, Field)]
    if name in ops.NORM_OPS and name in _LOCAL_NORMS:
        x = args[0] if args else kwargs.get("input")
        f = rec.get(x) if isinstance(x, Tensor) else None
        if (
            isinstance(f, Field)
            and isinstance(x, Tensor)
            and not f.is_global
            and assert_local_norm(name, args, kwargs, f, x)
        ):
            return OpCall(name, _LOCAL_NORMS[name], args, kwargs)
        return call
    if name in ops.CONCAT_OPS or name in ops.INDEX_OPS or geometry.op_kind(name) is not None:
        return call
    try:
        shapes = [tuple(t.shape) for t in tensors_in(args, kwargs)]
        out_shape = tuple(np.broadcast_shapes(*shapes))
    except ValueError:
        return call
    gates = {id(t) for t, f in fields if is_gate(t, f, out_shape)}
    if not gates or len(gates) == len(fields):
        return call

    def detach(v: Any) -> Any:
        if isinstance(v, Tensor) and id(v) in gates:
            return v.detach()
        if isinstance(v, (list, tuple)):
            return type(v)(detach(i) for i in v)
        return v

    return OpCall(name, func, tuple(detach(a) for a in args), {k: detach(v) for k, v in kwargs.items()})


def assert_local_norm(name: str, args: tuple[Any, ...], kwargs: dict[str, Any], f: Field, x: Tensor) -> bool:
    """True when the norm's statistics run over spatial dims (so the probe must hold them fixed)."""
    if name != "layer_norm":
        return name != "instance_norm" or bool(arg(args, kwargs, 5, "use_input_stats", True))
    shape = arg(args, kwargs, 1, "normalized_shape")
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
