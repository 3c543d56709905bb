"""Building blocks of the geometry rules: argument access, global fields, seg maps, gates."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from . import _ops as ops
from ._field import (
    Field,
    Seg,
    global_seg,
    hull,
)

if TYPE_CHECKING:
    from ._rf_graph import FieldRecorder


@dataclass(frozen=True)
class OpCall:
    """One op as the recorder saw it: its name, the callable and its arguments."""

    name: str
    func: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]

    def rerun(self, replacement: Tensor) -> Any:
        """The same op with its first tensor replaced (index tracing, one-hot responses)."""
        rest = self.args[1:] if self.args else ()
        kwargs = {k: v for k, v in self.kwargs.items() if k not in ("input", "out")}
        with torch.no_grad():
            return self.func(replacement, *rest, **kwargs)


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


def only_source(sources: list[tuple[Tensor, Field]], first: Any) -> bool:
    return all(t is first for t, _ in sources)


def tensor_arg(args: tuple[Any, ...], i: int) -> bool:
    return len(args) > i and isinstance(args[i], Tensor)


def arg(args: tuple[Any, ...], kwargs: dict[str, Any], i: int, key: str, default: Any = None) -> Any:
    return kwargs[key] if key in kwargs else (args[i] if len(args) > i else default)


def global_field(rec: FieldRecorder, shape: Sequence[int], via: frozenset[str], source: Seg | None = None) -> Field:
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


def global_like(rec: FieldRecorder, out: Tensor, f: Field) -> Field:
    return global_field(rec, tuple(out.shape), f.via, f.layer_seg() if not f.hidden else f.hidden[0].layer_seg())


def map_size(rec: FieldRecorder, f: Field, shape: Sequence[int]) -> tuple[int, ...]:
    sizes = [1] * len(rec.input_size)
    for d, a in enumerate(f.dims):
        if a is not None:
            sizes[a] = int(shape[d])
    return tuple(sizes)


def trailing_spatial(f: Field, n: int) -> bool:
    """The last ``n`` dims hold the spatial axes in order, after a channel dim."""
    return len(f.dims) > n and f.dims[-n:] == tuple(range(n)) and f.dims[-n - 1] is None and f.hidden is None


def merge_axis(cmap: np.ndarray, segs: Sequence[Seg], axis: int) -> tuple[np.ndarray, tuple[Seg, ...]]:
    """Hull the segs along one cmap axis (keepdim)."""
    if cmap.shape[axis] == 0:
        return cmap, tuple(segs)
    slices = np.moveaxis(cmap, axis, 0)
    current, merged = slices[0], list(segs)
    for other in slices[1:]:
        current, merged_t = pair(current, other, merged, merged)
        merged = list(merged_t)
    return np.expand_dims(current, axis), tuple(merged)


def pair(
    a: np.ndarray, b: np.ndarray, segs_a: Sequence[Seg], segs_b: Sequence[Seg]
) -> tuple[np.ndarray, tuple[Seg, ...]]:
    """Element-wise hull of two seg maps over the same channel grid."""
    key = a.astype(np.int64) * len(segs_b) + b
    unique, inverse = np.unique(key, return_inverse=True)
    segs = tuple(hull([segs_a[k // len(segs_b)], segs_b[k % len(segs_b)]]) for k in unique.tolist())
    return inverse.reshape(key.shape).astype(np.int64), segs


def is_gate(t: Tensor, f: Field, out_shape: Sequence[int]) -> bool:
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


def dims_arg(value: Any, ndim: int) -> list[int] | None:
    if value is None:
        return None
    if isinstance(value, int):
        return [value % ndim] if ndim else []
    if isinstance(value, (list, tuple, torch.Size)):
        return [int(v) % ndim for v in value]
    return None
