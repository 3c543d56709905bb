"""The receptive-field-cropped reverse pass: a unit's projection from its field alone.

A unit's projection depends only on the pixels of its receptive field, and on the
units of each lower layer inside its cone. So the forward and reverse passes can run
on the crop under the unit's box instead of the whole image, exactly:

* every convolution and pooling runs without padding on the local map;
* before it, local positions that do not exist in the full image's map of that
  layer (beyond its borders) are set to what the full computation pads with: 0 for
  convolutions and average pooling, -inf for max-pooling;
* each tensor carries the full-map index of its first local unit (per example, per
  axis), so merges (residual adds, concatenations) slice their operands to the
  common range.

The cost scales with the cone of the unit instead of the whole image: for VGG16's
conv4_3 at 224x224 it is 13x fewer FLOPs. Paths through non-local ops (global or
adaptive pooling, flattening, attention) cannot be cropped; :func:`cropped_plan`
then returns None and callers use the full image.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from . import _rf_graph
from .engine import ActivationPolicy, ReverseRules

__all__ = ["CroppedPlan", "cropped_plan"]

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_MAX = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVG = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}
_FUNCTIONAL_WINDOWS = {
    "conv1d", "conv2d", "conv3d", "max_pool1d", "max_pool2d", "max_pool3d", "_max_pool1d", "_max_pool2d",
    "_max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d",
}  # fmt: skip
_NON_TENSOR = {"size", "dim", "numel", "getattr", "_assert", "eq", "ne"}


class _NotCroppable(Exception):
    pass


@dataclass(frozen=True)
class _Window:
    kind: str  # "conv", "max" or "avg"
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    in_size: tuple[int, ...]  # the full map size of the window's input
    module: nn.Module | None = None


def _window_of(node: fx.Node, module: nn.Module | None, n: int) -> _Window:
    in_size = (_rf_graph._shape(node.all_input_nodes[0]) or ())[-n:]
    if module is not None:
        if isinstance(module, nn.modules.conv._ConvNd):
            if module.padding_mode != "zeros" or isinstance(module.padding, str):
                raise _NotCroppable(f"{node.name}: padding {module.padding!r}/{module.padding_mode!r}")
            kind, k, s, p, d = "conv", module.kernel_size, module.stride, module.padding, module.dilation
        elif isinstance(module, nn.modules.pooling._MaxPoolNd):
            if module.return_indices:
                raise _NotCroppable(f"{node.name}: max-pool returning indices")
            kind, k, s, p, d = "max", module.kernel_size, module.stride, module.padding, module.dilation
        else:
            if not module.count_include_pad and _rf_graph.ntuple(module.padding, n) != (0,) * n:
                raise _NotCroppable(f"{node.name}: average pooling that excludes padding")
            if getattr(module, "divisor_override", None) is not None:
                raise _NotCroppable(f"{node.name}: divisor_override")
            kind, k, s, p, d = "avg", module.kernel_size, module.stride, module.padding, 1
    else:
        name = _rf_graph._name(node)

        def arg(i: int, key: str, default: Any = None) -> Any:
            return node.kwargs[key] if key in node.kwargs else (node.args[i] if len(node.args) > i else default)

        if name.startswith("conv"):
            if isinstance(arg(4, "padding", 0), str):
                raise _NotCroppable(f"{node.name}: string padding")
            kind, k = "conv", (_rf_graph._shape(node.args[1]) or ())[-n:]
            s, p, d = arg(3, "stride", 1), arg(4, "padding", 0), arg(5, "dilation", 1)
            if arg(6, "groups", 1) is None:
                raise _NotCroppable(f"{node.name}: groups")
        elif "max" in name:
            if arg(6, "return_indices", False):
                raise _NotCroppable(f"{node.name}: max-pool returning indices")
            kind, k, s, p, d = (
                "max",
                arg(1, "kernel_size"),
                arg(2, "stride"),
                arg(3, "padding", 0),
                arg(4, "dilation", 1),
            )
        else:
            if not arg(5, "count_include_pad", True) and _rf_graph.ntuple(arg(3, "padding", 0), n) != (0,) * n:
                raise _NotCroppable(f"{node.name}: average pooling that excludes padding")
            kind, k, s, p, d = "avg", arg(1, "kernel_size"), arg(2, "stride"), arg(3, "padding", 0), 1
    k = _rf_graph.ntuple(k, n)
    s = k if s is None or (isinstance(s, (list, tuple)) and len(s) == 0) else _rf_graph.ntuple(s, n)
    return _Window(kind, k, s, _rf_graph.ntuple(p, n), _rf_graph.ntuple(d, n), tuple(in_size), module)


class CroppedPlan:
    """How to run the forward pass of one layer's units on their receptive-field crops.

    Built by :func:`cropped_plan`; :meth:`project` does the work.
    """

    def __init__(self, model: nn.Module, layer: str, input_shape: tuple[int, ...]) -> None:
        gm, analysis = _rf_graph.analyse(model, input_shape)
        self.gm = gm
        self.layer = layer
        self.input_shape = input_shape
        self.target = _rf_graph.layer_node(gm, layer)
        field = analysis.fields.get(self.target)
        if not isinstance(field, _rf_graph.Field) or field.is_global:
            raise _NotCroppable(f"layer {layer!r} depends on the whole input")
        self.field = field
        self.n = len(field.size)
        shape = _rf_graph._shape(self.target) or ()
        self.output_size = tuple(shape[d] for d in field.layout)
        self.channels = shape[1] if len(shape) > 1 else 1
        if len(shape) != 2 + self.n or field.layout != tuple(range(2, 2 + self.n)):
            raise _NotCroppable(f"layer {layer!r} does not output [N, C, *spatial]")
        ancestors = self._ancestors()
        self.nodes = [node for node in gm.graph.nodes if node in ancestors]
        self.windows: dict[fx.Node, _Window] = {}
        self.fields = analysis.fields
        modules = dict(gm.named_modules())
        # The leaf modules the plan calls (fx shares them with the model; containers are copies).
        self._modules = [(n.target, modules[n.target]) for n in self.nodes if n.op == "call_module"]
        for node in self.nodes:
            node_field = analysis.fields.get(node)
            if isinstance(node_field, tuple):
                raise _NotCroppable(f"{node.name}: tuple output")
            if isinstance(node_field, _rf_graph.Field) and node_field.is_global:
                raise _NotCroppable(f"{node.name}: non-local op")
            module = modules.get(node.target) if node.op == "call_module" else None
            if module is not None and isinstance(
                module, (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)
            ):
                continue  # checked at run time: only eval mode is position-independent
            if isinstance(
                module, (nn.modules.conv._ConvNd, nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd)
            ):
                if isinstance(module, nn.modules.conv._ConvTransposeNd):
                    raise _NotCroppable(f"{node.name}: transposed convolution")
                self.windows[node] = _window_of(node, module, self.n)
            elif node.op in ("call_function", "call_method") and _rf_graph._name(node) in _FUNCTIONAL_WINDOWS:
                self.windows[node] = _window_of(node, None, self.n)
        self.cost_ratio = self._cost_ratio()

    def _ancestors(self) -> set[fx.Node]:
        seen: set[fx.Node] = set()
        stack = [self.target]
        while stack:
            node = stack.pop()
            if node not in seen:
                seen.add(node)
                stack.extend(node.all_input_nodes)
        return seen

    def _cost_ratio(self) -> float:
        """Window work on the crop's cone over window work on the whole map (a FLOP proxy)."""
        full = cropped = 0.0
        for node, window in self.windows.items():
            out = (_rf_graph._shape(node) or ())[-self.n :]
            field = self.fields[node]
            per_unit = float(torch.tensor(window.kernel).prod())
            channels = float((_rf_graph._shape(node) or (1, 1))[1])
            cone = [
                min(o, (r_target - r_node) // j_node + 1)
                for o, r_target, r_node, j_node in zip(out, self.field.size, field.size, field.jump, strict=True)
            ]
            full += per_unit * channels * float(torch.tensor(out).prod())
            cropped += per_unit * channels * float(torch.tensor(cone).prod())
        return cropped / full if full else 1.0

    def usable_for(self, model: nn.Module) -> bool:
        """False if the model's modules changed since the plan, or are in training mode."""
        current = dict(model.named_modules())
        for name, module in self._modules:
            if current.get(name) is not module:
                return False
            if module.training and isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)):
                return False
        return True

    def boxes(self, units: Tensor) -> Tensor:
        """Box starts ``[N, n]`` (input pixels) of units ``[N, 1 + n]`` given as ``(channel, *position)``."""
        position = units[:, 1:].long()
        left = torch.tensor(self.field.left, device=units.device)
        jump = torch.tensor(self.field.jump, device=units.device)
        return left + position * jump

    def project(
        self,
        images: Tensor,
        units: Tensor,
        seed: str,
        rules: str,
        activations: ActivationPolicy,
    ) -> tuple[Tensor, Tensor]:
        """Projections on the crops ``[N, C, *field.size]`` and the crops' starts ``[N, n]``."""
        n, size = self.n, self.field.size
        starts = self.boxes(units.cpu())
        crops = images.new_zeros((images.shape[0], images.shape[1], *size))
        for row in range(images.shape[0]):
            inside, local = _rf_graph.box_slices(starts[row].tolist(), size, images.shape[-n:])
            crops[(row, slice(None), *local)] = images[(row, slice(None), *inside)]
        crops.requires_grad_(True)
        with torch.enable_grad():
            with ReverseRules(rules, activations=activations):
                out, origin = _CroppedRun(self, starts.to(images.device)).run_crop(crops)
            local = units[:, 1:].to(out.device).long() - origin
            if bool((local < 0).any()) or any(
                bool((local[:, a] >= out.shape[out.dim() - n + a]).any()) for a in range(n)
            ):
                raise RuntimeError("cropped forward lost the target unit")  # a bug, never user error
            rows = torch.arange(out.shape[0], device=out.device)
            index = (rows, units[:, 0].to(out.device).long(), *local.t())
            grad = torch.zeros_like(out)
            grad[index] = out.detach()[index] if seed == "activation" else 1.0
            (projection,) = torch.autograd.grad(out, crops, grad, allow_unused=True)
        if projection is None:
            projection = torch.zeros_like(crops)
        return projection, starts


class _CroppedRun(fx.Interpreter):
    """Runs a plan's nodes on crops, tracking the full-map index of each local map's origin."""

    def __init__(self, plan: CroppedPlan, starts: Tensor) -> None:
        super().__init__(plan.gm)
        self.plan = plan
        self.starts = starts
        self.origins: dict[fx.Node, Tensor] = {}

    def run_crop(self, crops: Tensor) -> tuple[Tensor, Tensor]:
        first = True
        for node in self.plan.nodes:
            if node.op == "placeholder":
                if not first:
                    raise _NotCroppable("models with several inputs")
                self.env[node] = crops
                self.origins[node] = self.starts
                first = False
                continue
            self.env[node] = self._run(node)
        target = self.plan.target
        return self.env[target], self.origins[target]

    def _spatial_inputs(self, node: fx.Node) -> list[fx.Node]:
        return [a for a in node.all_input_nodes if a in self.origins]

    def _run(self, node: fx.Node) -> Any:
        spatial = self._spatial_inputs(node)
        if node in self.plan.windows:
            return self._window(node, self.plan.windows[node], spatial[0])
        if len(spatial) > 1:
            self._align(spatial)
        args, kwargs = self.fetch_args_kwargs_from_env(node)
        result = getattr(self, node.op)(node.target, args, kwargs)
        if spatial and isinstance(result, Tensor) and _rf_graph._name(node) not in _NON_TENSOR:
            self.origins[node] = self.origins[spatial[0]]
        return result

    def _layout(self, node: fx.Node) -> tuple[int, ...]:
        field = self.plan.fields[node]
        return field.layout

    def _align(self, nodes: list[fx.Node]) -> None:
        """Slice every operand of a merge to the units all of them hold."""
        n = self.plan.n
        lows = torch.stack([self.origins[a] for a in nodes])  # [inputs, N, n]
        sizes = torch.tensor(
            [[self.env[a].shape[d] for d in self._layout(a)] for a in nodes], device=lows.device
        )  # [inputs, n]
        low = lows.max(dim=0).values
        high = (lows + sizes[:, None, :]).min(dim=0).values
        for i, node in enumerate(nodes):
            start = low - lows[i]
            length = high - low
            if bool((start != start[0]).any()) or bool((length != length[0]).any()):
                raise RuntimeError("merge operands are not aligned alike in every example")
            tensor = self.env[node]
            for axis, dim in enumerate(self._layout(node)):
                tensor = tensor.narrow(dim, int(start[0, axis]), int(length[0, axis]))
            self.env[node] = tensor
            self.origins[node] = low
        del n

    def _window(self, node: fx.Node, window: _Window, source: fx.Node) -> Tensor:
        n = self.plan.n
        x, origin = self.env[source], self.origins[source]
        # Positions that do not exist in the full map get the full computation's padding.
        valid = None
        for axis in range(n):
            index = origin[:, axis : axis + 1] + torch.arange(x.shape[x.dim() - n + axis], device=x.device)
            inside = (index >= 0) & (index < window.in_size[axis])  # [N, m]
            shape = [x.shape[0]] + [1] * (x.dim() - 1)
            shape[x.dim() - n + axis] = inside.shape[1]
            inside = inside.view(shape)
            valid = inside if valid is None else valid & inside
        fill = float("-inf") if window.kind == "max" else 0.0
        x = torch.where(valid, x, torch.full((), fill, dtype=x.dtype, device=x.device))
        # First output unit whose window lies inside the local map; the same offset in every example.
        stride = torch.tensor(window.stride, device=x.device)
        padding = torch.tensor(window.padding, device=x.device)
        first = torch.div(origin + padding + stride - 1, stride, rounding_mode="floor")
        skip = first * stride - padding - origin
        if bool((skip != skip[0]).any()):
            raise RuntimeError("crop origins are not aligned to the stride grid")
        for axis in range(n):
            x = x.narrow(x.dim() - n + axis, int(skip[0, axis]), x.shape[x.dim() - n + axis] - int(skip[0, axis]))
        self.origins[node] = first
        if window.kind == "conv":
            module = window.module
            if module is not None:
                weight, bias, groups = module.weight, module.bias, module.groups
            else:
                args, kwargs = self.fetch_args_kwargs_from_env(node)
                weight = args[1]
                bias = kwargs.get("bias", args[2] if len(args) > 2 else None)
                groups = kwargs.get("groups", args[6] if len(args) > 6 else 1)
            return _CONV[n](x, weight, bias, window.stride, 0, window.dilation, groups)
        if window.kind == "max":
            return _MAX[n](x, window.kernel, window.stride, 0, window.dilation)
        return _AVG[n](x, window.kernel, window.stride, 0)


_PLANS: weakref.WeakKeyDictionary[nn.Module, dict[tuple[Any, ...], CroppedPlan | str]] = weakref.WeakKeyDictionary()


def cropped_plan(model: nn.Module, layer: str, input_shape: tuple[int, ...]) -> tuple[CroppedPlan | None, str]:
    """The cropped-pass plan for ``layer`` at ``input_shape``, or ``(None, why not)``.

    Plans are cached per model and checked against its modules before each use.
    """
    cache = _PLANS.setdefault(model, {})
    key = (layer, tuple(input_shape))
    if key not in cache:
        try:
            cache[key] = CroppedPlan(model, layer, tuple(input_shape))
        except (_NotCroppable, _rf_graph.TraceFailed, _rf_graph.ReceptiveFieldError, ValueError) as err:
            cache[key] = str(err) or type(err).__name__
    plan = cache[key]
    if isinstance(plan, str):
        return None, plan
    if not plan.usable_for(model):
        return None, "the model changed since the plan was made, or BatchNorm/Dropout is in training mode"
    return plan, ""
