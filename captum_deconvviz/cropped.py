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

from . import _geometry as geometry
from ._field import Field, Seg
from ._forward import EvalMode, example_input, split_layer_spec
from ._geometry import box_slices
from ._guard import check_finite
from ._rf_graph import FieldRecorder
from .engine import ActivationPolicy, ReverseRules

__all__ = ["CroppedPlan", "cropped_plan"]

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_MAX = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVG = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


class _NotCroppable(Exception):
    pass


@dataclass(frozen=True)
class _Window:
    spec: geometry.WindowSpec
    in_size: tuple[int, ...]  # the full map size of the window's input
    module: nn.Module | None = None


def _target_name(node: fx.Node) -> str:
    return node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))


class _FieldPass(fx.Interpreter):
    """Runs the traced graph once under the field recorder: each node's output shape and
    field, and the real geometry of every window op (functional ones included)."""

    def __init__(self, gm: fx.GraphModule, recorder: FieldRecorder) -> None:
        super().__init__(gm)
        self.recorder = recorder
        self.shapes: dict[fx.Node, tuple[int, ...]] = {}
        self.fields: dict[fx.Node, Any] = {}
        self.specs: dict[fx.Node, geometry.WindowSpec] = {}

    def run_node(self, n: fx.Node) -> Any:
        if n.op in ("call_function", "call_method") and geometry.op_kind(_target_name(n)) in ("conv", "max", "avg"):
            args, kwargs = self.fetch_args_kwargs_from_env(n)
            self.specs[n] = geometry.window_from_call(_target_name(n), args, kwargs)
        result = super().run_node(n)
        if isinstance(result, Tensor):
            self.shapes[n] = tuple(result.shape)
            self.fields[n] = self.recorder.get(result)
        elif isinstance(result, (tuple, list)):
            self.fields[n] = tuple(self.recorder.get(r) if isinstance(r, Tensor) else None for r in result)
        return result


def _layer_node(gm: fx.GraphModule, name: str) -> fx.Node:
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
        raise _NotCroppable(f"layer {name!r} does not appear in the traced graph of the model")
    inside = set(members)
    leaving = [n for n in members if any(user not in inside for user in n.users)]
    return (leaving or members)[-1]


class CroppedPlan:
    """How to run the forward pass of one layer's units on their receptive-field crops.

    Built by :func:`cropped_plan`; :meth:`project` does the work. The plan replays a
    ``torch.fx`` trace of the model: the cropped pass must *re-run* the model's ops with
    other window arguments, which needs a program, not only the record of one run that
    the receptive-field analysis keeps. Models that fx cannot trace are projected on the
    whole image instead (exact, only slower).
    """

    def __init__(self, model: nn.Module, layer: str, input_shape: tuple[int, ...]) -> None:
        if split_layer_spec(layer)[1]:
            raise _NotCroppable(f"layer {layer!r} picks from a container output")
        try:
            gm = fx.symbolic_trace(model)
        except Exception as err:  # any tracing failure means: project on the whole image
            raise _NotCroppable(f"torch.fx cannot trace the model: {type(err).__name__}") from err
        recorder = FieldRecorder(tuple(input_shape[1:]))
        run = _FieldPass(gm, recorder)
        x = example_input(model, input_shape)
        with torch.no_grad(), EvalMode(model):
            recorder.start(x)
            with recorder:
                run.run(x)
        self.gm = gm
        self.layer = layer
        self.input_shape = input_shape
        self.shapes = run.shapes
        self.target = _layer_node(gm, layer)
        field = run.fields.get(self.target)
        if not isinstance(field, Field) or field.is_global or field.via or field.hidden is not None:
            raise _NotCroppable(f"layer {layer!r} depends on the whole input")
        seg = field.layer_seg()
        if not seg.exact:
            raise _NotCroppable(f"layer {layer!r} has a bounded, not exact, field")
        self.field = seg
        self.n = len(seg.size)
        shape = self.shapes.get(self.target, ())
        if len(shape) != 2 + self.n or field.dims != (None, None, *range(self.n)):
            raise _NotCroppable(f"layer {layer!r} does not output [N, C, *spatial]")
        self.output_size = tuple(shape[2:])
        self.channels = shape[1]
        ancestors = self._ancestors()
        self.nodes = [node for node in gm.graph.nodes if node in ancestors]
        self.windows: dict[fx.Node, _Window] = {}
        self.fields: dict[fx.Node, Seg] = {}
        self.layouts: dict[fx.Node, tuple[int, ...]] = {}
        modules = dict(gm.named_modules())
        # The leaf modules the plan calls (fx shares them with the model; containers are copies).
        self._modules: list[tuple[str, nn.Module]] = [
            (str(n.target), modules[str(n.target)]) for n in self.nodes if n.op == "call_module"
        ]
        for node in self.nodes:
            self._check_node(node, run, modules)
        self.cost_ratio = self._cost_ratio()

    def _check_node(self, node: fx.Node, run: _FieldPass, modules: dict[str, nn.Module]) -> None:
        node_field = run.fields.get(node)
        if isinstance(node_field, tuple):
            raise _NotCroppable(f"{node.name}: tuple output")
        if isinstance(node_field, Field):
            if node_field.is_global or node_field.hidden is not None:
                raise _NotCroppable(f"{node.name}: non-local op")
            seg = node_field.layer_seg()
            if not seg.exact:
                raise _NotCroppable(f"{node.name}: resampling")
            self.fields[node] = seg
            self.layouts[node] = tuple(node_field.spatial_dims())
        elif node_field is not None:
            raise _NotCroppable(f"{node.name}: {node_field}")
        module = modules.get(node.target) if node.op == "call_module" else None  # type: ignore[arg-type]
        if isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)):
            return  # checked at run time: only eval mode is position-independent
        spec = geometry.window_from_module(module) if module is not None else run.specs.get(node)
        if spec is None:
            return
        if module is not None and not type(module).__module__.startswith("torch.nn"):
            # a subclass may transform its weights or pad by itself (weight standardization, TF "same")
            raise _NotCroppable(f"{node.name}: {type(module).__name__} is not torch's own window module")
        if spec.kind not in ("conv", "max", "avg"):
            raise _NotCroppable(f"{node.name}: {spec.kind} window")
        if not spec.zero_padded:
            raise _NotCroppable(f"{node.name}: padding that is not zeros")
        source = node.all_input_nodes[0]
        in_size = self.shapes.get(source, ())[-self.n :]
        self.windows[node] = _Window(spec, tuple(in_size), module)

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
            out = self.shapes.get(node, ())[-self.n :]
            field = self.fields[node]
            per_unit = float(torch.tensor(window.spec.kernel).prod())
            channels = float(self.shapes.get(node, (1, 1))[1])
            cone = [
                min(o, (r_target - r_node) // j_node + 1)
                for o, r_target, r_node, j_node in zip(out, self.field.size, field.size, field.stride, strict=True)
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
        left = torch.tensor(self.field.offset, device=units.device)
        jump = torch.tensor(self.field.stride, device=units.device)
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
            inside, local = box_slices(starts[row].tolist(), size, images.shape[-n:])
            into: tuple[Any, ...] = (row, slice(None), *local)
            source: tuple[Any, ...] = (row, slice(None), *inside)
            crops[into] = images[source]
        crops.requires_grad_(True)
        with torch.enable_grad():
            with ReverseRules(rules, activations=activations):
                out, origin = _CroppedRun(self, starts.to(images.device)).run_crop(crops)
            where = units[:, 1:].to(out.device).long() - origin
            if bool((where < 0).any()) or any(
                bool((where[:, a] >= out.shape[out.dim() - n + a]).any()) for a in range(n)
            ):
                raise RuntimeError("cropped forward lost the target unit")  # a bug, never user error
            rows = torch.arange(out.shape[0], device=out.device)
            index = (rows, units[:, 0].to(out.device).long(), *where.t())
            check_finite(out.detach()[index], "the seeded units' activations", "activations")
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
        if spatial and isinstance(result, Tensor) and node in self.plan.layouts:
            self.origins[node] = self.origins[spatial[0]]
        return result

    def _layout(self, node: fx.Node) -> tuple[int, ...]:
        return self.plan.layouts[node]

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
        spec = window.spec
        fill = float("-inf") if spec.kind == "max" else 0.0
        assert valid is not None  # n >= 1 spatial axes
        x = torch.where(valid, x, torch.full((), fill, dtype=x.dtype, device=x.device))
        # First output unit whose window lies inside the local map; the same offset in every example.
        stride = torch.tensor(spec.stride, device=x.device)
        padding = torch.tensor(spec.before, device=x.device)
        first = torch.div(origin + padding + stride - 1, stride, rounding_mode="floor")
        skip = first * stride - padding - origin
        if bool((skip != skip[0]).any()):
            raise RuntimeError("crop origins are not aligned to the stride grid")
        for axis in range(n):
            x = x.narrow(x.dim() - n + axis, int(skip[0, axis]), x.shape[x.dim() - n + axis] - int(skip[0, axis]))
        self.origins[node] = first
        if spec.kind == "conv":
            module = window.module
            weight: Tensor
            bias: Tensor | None
            if module is not None:
                weight, bias = module.weight, module.bias  # type: ignore[assignment]
            else:
                args, kwargs = self.fetch_args_kwargs_from_env(node)
                bound = geometry.bind_call(_target_name(node), args, kwargs)
                weight, bias = bound["weight"], bound.get("bias")
            return _CONV[n](x, weight, bias, spec.stride, 0, spec.dilation, spec.groups)
        if spec.kind == "max":
            return _MAX[n](x, spec.kernel, spec.stride, 0, spec.dilation)
        return _AVG[n](x, spec.kernel, spec.stride, 0)


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
        except (_NotCroppable, ValueError) as err:
            cache[key] = str(err) or type(err).__name__
    plan = cache[key]
    if isinstance(plan, str):
        return None, plan
    if not plan.usable_for(model):
        return None, "the model changed since the plan was made, or BatchNorm/Dropout is in training mode"
    return plan, ""
