"""Analytic receptive fields over a ``torch.fx`` graph (see ``receptive_field.py``).

Every node's output gets a :class:`Field`: per spatial axis the field size ``r``, the
jump ``j`` and the first input pixel ``left`` of unit 0's box, plus the tensor dims
that hold the spatial axes (``layout``), so that permutes (ConvNeXt's channels-last
blocks) are followed. A window op with kernel ``k``, stride ``s``, padding ``p`` and
dilation ``d`` maps ``(r, j, left)`` to ``(r + d(k-1) j, j s, left - p j)``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.fx as fx
from torch import Tensor, nn
from torch.fx.passes.shape_prop import ShapeProp

__all__ = ["Field", "ReceptiveFieldError", "TraceFailed", "analyse", "box_slices", "layer_node", "walk_chain"]


class ReceptiveFieldError(ValueError):
    """The receptive field cannot be computed (misaligned paths, unsupported op, ...)."""


class TraceFailed(Exception):
    """``torch.fx`` could not trace the model."""


@dataclass(frozen=True, eq=False)
class Field:
    """Per spatial axis: field ``size``, ``jump`` and ``left`` (first pixel of unit 0's box).

    ``lo[axis][u]`` and ``hi[axis][u]`` bound (half-open) the input pixels that unit ``u``
    really reaches along that axis: the union over the units that exist in each layer
    below, so border units whose boxes overlap padding, dilation holes or pixels left
    unseen by a stride are exact. Empty units have ``lo >= hi``.
    """

    size: tuple[int, ...]
    jump: tuple[int, ...]
    left: tuple[int, ...]
    layout: tuple[int, ...]
    lo: tuple[np.ndarray, ...]
    hi: tuple[np.ndarray, ...]
    is_global: bool = False
    exact: bool = True

    def centre2(self) -> tuple[int, ...]:
        """Twice the centre of unit 0's box: an integer, also for even sizes."""
        return tuple(2 * a + r - 1 for a, r in zip(self.left, self.size, strict=True))


def input_field(input_size: tuple[int, ...], layout: tuple[int, ...]) -> Field:
    """The input itself: one pixel per unit."""
    n = len(input_size)
    lo = tuple(np.arange(s) for s in input_size)
    return Field((1,) * n, (1,) * n, (0,) * n, layout, lo, tuple(a + 1 for a in lo))


def ntuple(value: Any, n: int) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * n
    value = tuple(int(v) for v in value)
    return value * n if len(value) == 1 else value


def window(field: Field, out_size: Sequence[int], kernel: Any, stride: Any, padding: Any, dilation: Any = 1) -> Field:
    """The field after a convolution or pooling window that outputs ``out_size`` units."""
    if field.is_global:
        return field
    n = len(field.size)
    k, d = ntuple(kernel, n), ntuple(dilation, n)
    s = k if stride is None or (isinstance(stride, (list, tuple)) and len(stride) == 0) else ntuple(stride, n)
    if padding == "valid":
        p = (0,) * n
    elif padding == "same":
        p = tuple((di * (ki - 1)) // 2 for ki, di in zip(k, d, strict=True))
    else:
        p = ntuple(padding, n)
    size = tuple(r + di * (ki - 1) * j for r, ki, di, j in zip(field.size, k, d, field.jump, strict=True))
    left = tuple(a - pi * j for a, pi, j in zip(field.left, p, field.jump, strict=True))
    jump = tuple(j * si for j, si in zip(field.jump, s, strict=True))
    bounds = [
        _window_bounds(lo, hi, o, ki, si, pi, di)
        for lo, hi, o, ki, si, pi, di in zip(field.lo, field.hi, out_size, k, s, p, d, strict=True)
    ]
    lo, hi = (tuple(b[0] for b in bounds), tuple(b[1] for b in bounds))
    return Field(size, jump, left, field.layout, lo, hi, False, field.exact)


_EMPTY_LO, _EMPTY_HI = np.iinfo(np.int64).max // 4, np.iinfo(np.int64).min // 4


def _window_bounds(
    lo: np.ndarray, hi: np.ndarray, n_out: int, k: int, s: int, p: int, d: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per output unit: union of the bounds of the input units its window touches."""
    taps = np.arange(n_out)[:, None] * s - p + np.arange(k)[None, :] * d
    return _gather_bounds(lo, hi, taps, (taps >= 0) & (taps < len(lo)))


def _gather_bounds(
    lo: np.ndarray, hi: np.ndarray, index: np.ndarray, valid: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    clipped = np.clip(index, 0, len(lo) - 1)
    return np.where(valid, lo[clipped], _EMPTY_LO).min(1), np.where(valid, hi[clipped], _EMPTY_HI).max(1)


def box_slices(
    starts: Sequence[int], size: Sequence[int], extent: Sequence[int]
) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Where a box ``[start, start + size)`` meets the image ``[0, extent)``, per axis:
    the slices in image coordinates, and the same pixels in box coordinates."""
    inside, local = [], []
    for start, length, limit in zip(starts, size, extent, strict=True):
        lo, hi = max(0, start), min(limit, start + length)
        hi = max(lo, hi)
        inside.append(slice(lo, hi))
        local.append(slice(lo - start, hi - start))
    return tuple(inside), tuple(local)


def _shape(node: Any) -> tuple[int, ...] | None:
    meta = getattr(node, "meta", {}).get("tensor_meta")
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _name(node: fx.Node) -> str:
    return node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))


_CONV_FUNCS = {"conv1d", "conv2d", "conv3d"}
_POOL_FUNCS = {
    "max_pool1d", "max_pool2d", "max_pool3d", "_max_pool1d", "_max_pool2d", "_max_pool3d",
    "max_pool1d_with_indices", "max_pool2d_with_indices", "max_pool3d_with_indices",
    "avg_pool1d", "avg_pool2d", "avg_pool3d",
}  # fmt: skip
_SHAPE_FUNCS = {
    "flatten", "unflatten", "view", "reshape", "squeeze", "unsqueeze", "contiguous", "getitem",
    "mean", "sum", "amax", "amin", "max", "min", "std", "var", "norm", "logsumexp",
    "linear", "layer_norm", "permute", "transpose", "swapaxes",
}  # fmt: skip
_NON_TENSOR = {"size", "dim", "numel", "__len__", "_assert", "eq", "ne", "is_floating_point", "getattr"}
_UNSUPPORTED_MODULES = (
    nn.modules.conv._ConvTransposeNd, nn.Upsample, nn.PixelShuffle, nn.PixelUnshuffle, nn.Fold, nn.Unfold,
)  # fmt: skip


class Analysis:
    """Walk a shape-propagated graph once and give every node's output a :class:`Field`."""

    def __init__(self, gm: fx.GraphModule, input_size: tuple[int, ...]) -> None:
        self.gm = gm
        self.input_size = input_size
        self.modules = dict(gm.named_modules())
        self.fields: dict[fx.Node, Any] = {}

    def run(self) -> None:
        first_input = True
        for node in self.gm.graph.nodes:
            if node.op == "placeholder" and first_input:
                n, shape = len(self.input_size), _shape(node) or ()
                layout = tuple(range(len(shape) - n, len(shape)))
                self.fields[node] = input_field(self.input_size, layout)
                first_input = False
            elif node.op in ("placeholder", "get_attr", "output"):
                self.fields[node] = None
            else:
                self.fields[node] = self._visit(node)

    # ---- building blocks ---------------------------------------------------------------

    def _inputs(self, node: fx.Node) -> list[tuple[fx.Node, Any]]:
        return [(a, self.fields[a]) for a in node.all_input_nodes if self.fields.get(a) is not None]

    def _global(self, node: fx.Node, source: Field, exact: bool = True) -> Field:
        out, n = _shape(node), len(self.input_size)
        layout = tuple(range(len(out) - n, len(out))) if out is not None and len(out) >= n else ()
        out_size = tuple(out[d] for d in layout) if out is not None and layout else (1,) * n
        lo = tuple(np.full(m, a.min()) for a, m in zip(source.lo, out_size, strict=True))
        hi = tuple(np.full(m, b.max()) for b, m in zip(source.hi, out_size, strict=True))
        return Field(self.input_size, self.input_size, (0,) * n, layout, lo, hi, True, exact and source.exact)

    def _merge(self, node: fx.Node, inputs: list[tuple[fx.Node, Any]]) -> Any:
        fields = [(a, f) for a, f in inputs if isinstance(f, Field)]
        if not fields:
            return next((f for _, f in inputs if isinstance(f, tuple)), None)
        exact = all(f.exact for _, f in fields)
        n = len(fields[0][1].size)
        lo = tuple(np.minimum.reduce(np.broadcast_arrays(*(f.lo[i] for _, f in fields))) for i in range(n))
        hi = tuple(np.maximum.reduce(np.broadcast_arrays(*(f.hi[i] for _, f in fields))) for i in range(n))
        if any(f.is_global for _, f in fields):
            return replace(self._global(node, fields[0][1]), lo=lo, hi=hi, exact=exact)
        first_node, first = fields[0]
        for other_node, other in fields[1:]:
            if other.jump != first.jump or other.centre2() != first.centre2():
                raise ReceptiveFieldError(
                    f"paths merging at node {node.name!r} are misaligned: {first_node.name!r} has stride "
                    f"{first.jump} and centre {tuple(c / 2 for c in first.centre2())}, {other_node.name!r} has "
                    f"stride {other.jump} and centre {tuple(c / 2 for c in other.centre2())} (input pixels)"
                )
        size = tuple(max(f.size[i] for _, f in fields) for i in range(n))
        left = tuple(min(f.left[i] for _, f in fields) for i in range(n))
        return Field(size, first.jump, left, first.layout, lo, hi, False, exact)

    def _window(self, node: fx.Node, field: Field, *geometry: Any) -> Field:
        if not field.is_global:
            ndim = len(_shape(node.all_input_nodes[0]) or ())
            if field.layout != tuple(range(ndim - len(field.size), ndim)):
                raise ReceptiveFieldError(f"node {node.name!r} slides a window over non-spatial axes")
        out_size = (_shape(node) or (1,) * len(field.size))[-len(field.size) :]
        return window(field, out_size, *geometry)

    def _adaptive(self, node: fx.Node, field: Field) -> Field:
        if field.is_global:
            return field
        n = len(field.size)
        in_size, out_size = (_shape(node.all_input_nodes[0]) or ())[-n:], (_shape(node) or ())[-n:]
        if all(o == 1 for o in out_size):
            return self._global(node, field)
        if tuple(in_size) == tuple(out_size):
            return field
        if all(i % o == 0 for i, o in zip(in_size, out_size, strict=True)):
            k = tuple(i // o for i, o in zip(in_size, out_size, strict=True))
            return self._window(node, field, k, k, 0)
        # Windows of unequal sizes have no single stride: the whole input bounds size and
        # stride, while each unit's reach stays exact (adaptive windows: floor(i*in/out) to
        # ceil((i+1)*in/out)).
        bounded = self._global(node, field, exact=False)
        los, his = [], []
        for lo, hi, n_in, n_out in zip(field.lo, field.hi, in_size, out_size, strict=True):
            starts = (np.arange(n_out) * n_in) // n_out
            stops = -((-(np.arange(n_out) + 1) * n_in) // n_out)
            width = int((stops - starts).max())
            index = starts[:, None] + np.arange(width)[None, :]
            a, b = _gather_bounds(lo, hi, index, index < stops[:, None])
            los.append(a)
            his.append(b)
        return replace(bounded, lo=tuple(los), hi=tuple(his))

    def _pad(self, node: fx.Node, field: Field, pad: Sequence[int]) -> Field:
        if field.is_global:
            return field
        ndim, left = len(_shape(node) or ()), list(field.left)
        lo, hi = list(field.lo), list(field.hi)
        for i in range(len(pad) // 2):  # (left, right) pairs, from the last dim backwards
            if ndim - 1 - i in field.layout:
                axis = field.layout.index(ndim - 1 - i)
                before, after = int(pad[2 * i]), int(pad[2 * i + 1])
                left[axis] -= before * field.jump[axis]
                lo[axis] = np.pad(lo[axis], (before, after), constant_values=_EMPTY_LO)
                hi[axis] = np.pad(hi[axis], (before, after), constant_values=_EMPTY_HI)
        return replace(field, left=tuple(left), lo=tuple(lo), hi=tuple(hi))

    # ---- dispatch ----------------------------------------------------------------------

    def _visit(self, node: fx.Node) -> Any:
        inputs = self._inputs(node)
        if not inputs:
            return None
        field = inputs[0][1]
        name = _name(node)
        if isinstance(field, tuple):  # (output, indices) of a pooling op
            return field[node.args[1]] if name == "getitem" and isinstance(node.args[1], int) else None
        if node.op == "call_module":
            return self._visit_module(node, self.modules[node.target], field, inputs)
        if name in _NON_TENSOR:
            return None

        def arg(i: int, key: str, default: Any = None) -> Any:
            return node.kwargs[key] if key in node.kwargs else (node.args[i] if len(node.args) > i else default)

        if name in _CONV_FUNCS:
            n = len(field.size)
            kernel = (_shape(node.args[1]) or ())[-n:]
            return self._window(node, field, kernel, arg(3, "stride", 1), arg(4, "padding", 0), arg(5, "dilation", 1))
        if name in _POOL_FUNCS:
            dilation = 1 if name.startswith("avg") else arg(4, "dilation", 1)
            out = self._window(node, field, arg(1, "kernel_size"), arg(2, "stride"), arg(3, "padding", 0), dilation)
            return (out, None) if _shape(node) is None else out
        if name.startswith("adaptive_"):
            out = self._adaptive(node, field)
            return (out, None) if _shape(node) is None else out
        if name == "pad":
            return self._pad(node, field, arg(1, "pad"))
        if name in ("cat", "concat", "concatenate"):
            dim, ndim = arg(1, "dim", 0), len(_shape(node) or ())
            if ndim and dim % ndim in field.layout:
                raise ReceptiveFieldError(f"node {node.name!r} concatenates along a spatial axis")
            return self._merge(node, inputs)
        if name in _SHAPE_FUNCS:
            return self._reshape(node, field, inputs)
        return self._pointwise(node, inputs)

    def _visit_module(self, node: fx.Node, module: nn.Module, field: Any, inputs: list) -> Any:
        if isinstance(module, _UNSUPPORTED_MODULES):
            raise ReceptiveFieldError(
                f"node {node.name!r} ({type(module).__name__}) is not supported by the analytic method; "
                "use method='probe'"
            )
        if isinstance(module, nn.modules.conv._ConvNd):
            return self._window(node, field, module.kernel_size, module.stride, module.padding, module.dilation)
        if isinstance(module, nn.modules.pooling._MaxPoolNd):
            out = self._window(node, field, module.kernel_size, module.stride, module.padding, module.dilation)
            return (out, None) if module.return_indices else out
        if isinstance(module, nn.modules.pooling._AvgPoolNd) and hasattr(module, "kernel_size"):
            return self._window(node, field, module.kernel_size, module.stride, module.padding)
        if isinstance(module, (nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd)):
            out = self._adaptive(node, field)
            return (out, None) if getattr(module, "return_indices", False) else out
        if isinstance(module, (nn.Linear, nn.Flatten, nn.Unflatten, nn.LayerNorm)):
            return self._reshape(node, field, inputs)
        return self._pointwise(node, inputs)

    def _pointwise(self, node: fx.Node, inputs: list[tuple[fx.Node, Any]]) -> Any:
        out = _shape(node)
        if out is None:
            return next((f for _, f in inputs if isinstance(f, tuple)), None)
        for arg, field in inputs:
            shape = _shape(arg)
            if not isinstance(field, Field) or field.is_global or shape is None:
                continue
            spatial = tuple(shape[d] for d in field.layout)
            if len(out) != len(shape) or tuple(out[d] for d in field.layout) != spatial:
                raise ReceptiveFieldError(
                    f"node {node.name!r} ({_name(node)}) changes the spatial shape {spatial} in a way the "
                    "analytic method does not know; use method='probe'"
                )
        return self._merge(node, inputs)

    def _reshape(self, node: fx.Node, field: Any, inputs: list[tuple[fx.Node, Any]]) -> Any:
        if not isinstance(field, Field):
            return None
        in_shape, out_shape = _shape(node.all_input_nodes[0]), _shape(node)
        if in_shape is None or out_shape is None:
            return None
        if field.is_global:
            return self._global(node, field)
        name = _name(node)
        module = self.modules.get(node.target) if node.op == "call_module" else None
        if name in ("permute", "transpose", "swapaxes"):
            dims = _permutation(node, len(in_shape))
            return replace(field, layout=tuple(dims.index(d) for d in field.layout))
        if isinstance(module, nn.Linear) or name == "linear":
            return self._global(node, field) if len(in_shape) - 1 in field.layout else self._merge(node, inputs)
        if isinstance(module, nn.LayerNorm) or name == "layer_norm":
            count = len(module.normalized_shape) if module is not None else len(ntuple(node.args[1], 1))
            normalized = set(range(len(in_shape) - count, len(in_shape)))
            return self._global(node, field) if normalized & set(field.layout) else self._merge(node, inputs)
        # flatten, view, reductions, getitem...: the spatial axes survive only when the
        # output keeps, unchanged, the trailing dims from the first spatial one onwards.
        tail = len(in_shape) - field.layout[0]
        trailing = field.layout == tuple(range(field.layout[0], len(in_shape)))
        if trailing and len(out_shape) >= tail and out_shape[len(out_shape) - tail :] == in_shape[field.layout[0] :]:
            shift = len(out_shape) - len(in_shape)
            return replace(field, layout=tuple(d + shift for d in field.layout))
        return self._global(node, field)


def _permutation(node: fx.Node, ndim: int) -> list[int]:
    args = list(node.args[1:])
    if _name(node) == "permute":
        dims = node.kwargs.get("dims", args[0] if len(args) == 1 and isinstance(args[0], (list, tuple)) else args)
        return [int(d) % ndim for d in dims]
    a, b = (int(v) % ndim for v in args[:2])
    dims = list(range(ndim))
    dims[a], dims[b] = dims[b], dims[a]
    return dims


class EvalMode:
    """Eval mode for a shape-only forward; every module's flag is restored after."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.flags = model, [(m, m.training) for m in model.modules()]

    def __enter__(self) -> None:
        self.model.eval()

    def __exit__(self, *exc: object) -> None:
        for module, flag in self.flags:
            module.training = flag


def example_input(model: nn.Module, input_shape: tuple[int, ...], batch: int = 1) -> Tensor:
    param = next((p for p in model.parameters() if p.is_floating_point()), None)
    dtype = param.dtype if param is not None else torch.float32
    device = param.device if param is not None else torch.device("cpu")
    return torch.zeros((batch, *input_shape), dtype=dtype, device=device)


def analyse(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[fx.GraphModule, Analysis]:
    """Trace ``model``, propagate shapes for ``input_shape`` and compute every node's field."""
    try:
        gm = fx.symbolic_trace(model)
    except Exception as err:  # any tracing failure means: fall back
        raise TraceFailed(f"{type(err).__name__}: {err}") from err
    try:
        with torch.no_grad(), EvalMode(model):
            ShapeProp(gm).propagate(example_input(model, input_shape))
    except Exception as err:
        raise ValueError(f"the model cannot run on input_shape={input_shape}: {type(err).__name__}: {err}") from None
    analysis = Analysis(gm, tuple(input_shape[1:]))
    analysis.run()
    return gm, analysis


def layer_node(gm: fx.GraphModule, name: str) -> fx.Node:
    """The node holding the output of module ``name`` (its first call)."""
    nodes = list(gm.graph.nodes)
    for node in nodes:
        if node.op == "call_module" and node.target == name:
            return node
    members = [
        n
        for n in nodes
        if any(path == name or path.startswith(name + ".") for path, _ in n.meta.get("nn_module_stack", {}).values())
    ]
    if not members:
        raise ValueError(f"layer {name!r} does not appear in the traced graph of the model")
    inside = set(members)
    leaving = [n for n in members if any(user not in inside for user in n.users)]
    return (leaving or members)[-1]


def walk_chain(model: nn.Module, name: str, input_shape: tuple[int, ...], reason: str) -> tuple[Field, tuple[int, ...]]:
    """Fallback when tracing fails: follow the leaf modules, in execution order, as a chain."""
    warnings.warn(
        f"torch.fx could not trace the model ({reason}); walking its modules in execution order instead, "
        "which is exact for plain chains of layers only",
        UserWarning,
        stacklevel=4,
    )
    calls: list[tuple[str, nn.Module, Any, Any]] = []
    handles = [
        module.register_forward_hook(lambda m, i, o, n=mod_name: calls.append((n, m, i[0] if i else None, o)))
        for mod_name, module in model.named_modules()
        if not list(module.children())
    ]
    try:
        with torch.no_grad(), EvalMode(model):
            model(example_input(model, input_shape))
    finally:
        for handle in handles:
            handle.remove()
    n = len(input_shape) - 1
    field = input_field(tuple(input_shape[1:]), tuple(range(2, 2 + n)))
    previous: Any = None
    found: tuple[Field, tuple[int, ...]] | None = None
    for index, (mod_name, module, inp, out) in enumerate(calls):
        if index and not (
            isinstance(inp, Tensor) and isinstance(previous, Tensor) and inp.data_ptr() == previous.data_ptr()
        ):
            raise ReceptiveFieldError(
                f"the model cannot be traced by torch.fx ({reason}) and is not a plain chain: module "
                f"{mod_name!r} does not take the previous module's output; use method='probe'"
            )
        out_size = tuple(out.shape[-n:]) if isinstance(out, Tensor) else (1,) * n
        if isinstance(module, (nn.modules.conv._ConvNd, nn.modules.pooling._MaxPoolNd)):
            field = window(field, out_size, module.kernel_size, module.stride, module.padding, module.dilation)
        elif isinstance(module, nn.modules.pooling._AvgPoolNd) and hasattr(module, "kernel_size"):
            field = window(field, out_size, module.kernel_size, module.stride, module.padding)
        elif isinstance(inp, Tensor) and out_size != tuple(inp.shape[-n:]):
            size = tuple(input_shape[1:])
            lo = tuple(np.full(m, a.min()) for a, m in zip(field.lo, out_size, strict=True))
            hi = tuple(np.full(m, b.max()) for b, m in zip(field.hi, out_size, strict=True))
            field = Field(size, size, (0,) * n, field.layout, lo, hi, True)
        previous = out
        if mod_name == name:
            return field, tuple(out.shape[-n:])
        if mod_name.startswith(name + "."):
            found = (field, tuple(out.shape[-n:]))  # a container: its last leaf so far
        elif found is not None:
            return found
    if found is not None:
        return found
    raise ValueError(f"layer {name!r} was not called in the forward pass of the model")
