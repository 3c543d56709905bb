"""The gradient probe: the support of units on a positive-weight copy of the model.

A float64 copy with random positive weights, zero biases and identity BatchNorm
statistics runs under the engine's ``"probe"`` rules (pointwise non-linearities are the
identity, gates a bounded surrogate, max-pooling a window sum), so a unit's gradient
support is its domain of dependence. It measures fields where the analysis has no rule,
and cross-checks the analysis everywhere else (``verify=True``).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from . import _rf_graph
from ._forward import EvalMode, check_model, example_input, forward_to_layer, resolve_layer, split_layer_spec
from ._guard import autograd_inside
from ._rf_types import ReceptiveField, ReceptiveFieldError, check_input_shape
from .engine import ReverseRules

__all__ = ["check_against_probe", "measure_support", "probe_field"]


# --------------------------------------------------------------------------------------
# The probe.
# --------------------------------------------------------------------------------------


class _PositiveCopy:
    """A float64 copy of the model with random positive weights, zero biases and identity
    BatchNorm statistics, made lazily: a module's tensors are created when it first runs,
    so the probe never pays for the layers after the one it measures (VGG's classifier)."""

    def __init__(self, model: nn.Module) -> None:
        self.device = next((t.device for t in (*model.parameters(), *model.buffers())), torch.device("cpu"))
        memo: dict[int, Any] = {}
        for tensor in (*model.parameters(), *model.buffers()):
            if tensor.is_floating_point():
                meta = torch.empty(tensor.shape, dtype=torch.float64, device="meta")
                memo[id(tensor)] = nn.Parameter(meta, requires_grad=False) if isinstance(tensor, nn.Parameter) else meta
        self.model = copy.deepcopy(model, memo).eval()
        self.gen = torch.Generator().manual_seed(0)
        for module in self.model.modules():
            module.register_forward_pre_hook(lambda m, _inputs: self.materialize(m))

    def materialize(self, module: nn.Module) -> None:
        for name, param in list(module._parameters.items()):
            if param is not None and param.is_meta:
                if name.startswith("bias"):
                    values = torch.zeros(param.shape, dtype=torch.float64)
                else:
                    values = torch.rand(param.shape, generator=self.gen, dtype=torch.float64) + 0.5
                    if param.dim() >= 2:
                        values /= param[0].numel()
                module._parameters[name] = nn.Parameter(values.to(self.device), requires_grad=False)
        for name, buffer in list(module._buffers.items()):
            if buffer is not None and buffer.is_meta:
                fill = 0.0 if name.endswith("running_mean") else 1.0
                module._buffers[name] = torch.full(buffer.shape, fill, dtype=torch.float64, device=self.device)

    def materialize_all(self) -> None:
        for module in self.model.modules():
            self.materialize(module)


@autograd_inside
def measure_support(
    model: nn.Module,
    layer: str | nn.Module,
    input_shape: Sequence[int],
    units: Sequence[Sequence[int]],
    channel: int | None = None,
    detach_global: bool = False,
) -> list[tuple[int, ...] | None]:
    """The input pixels that units of ``layer`` depend on, measured by the probe.

    Each unit's gradient support is taken on a copy of ``model`` with random positive
    weights and zero biases, where every pointwise non-linearity is the identity and
    max-pooling a window sum (the engine's ``"probe"`` rules); the support is then
    the field clipped to the image (with holes for dilated kernels).

    Args:
        model: the network (not modified: the probe runs on a copy).
        layer: a module of ``model`` or its dotted name; its output must be
            ``[N, C, *spatial]``.
        input_shape: ``(C, H, W)`` without batch.
        units: spatial coordinates, e.g. ``[(y, x), ...]``; all channels are seeded.
        channel: seed only this channel.
        detach_global: hold gates computed from global statistics (squeeze-excitation)
            and the statistics of GroupNorm, LayerNorm and InstanceNorm fixed, so that
            the support is the local field that :func:`receptive_field` reports; with
            False (default) a unit behind such a gate sees the whole input.

    Returns:
        For each unit, the bounding box ``(top, left, bottom, right)`` (half-open) of
        its support, or None if it is empty.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 1, 3), nn.Conv2d(1, 1, 3))
        >>> measure_support(net, "1", (1, 8, 8), [(0, 0), (3, 2)])
        [(0, 0, 5, 5), (3, 2, 8, 7)]
    """
    model = check_model(model)
    name, _ = resolve_layer(model, layer)
    input_shape = check_input_shape(input_shape)
    x = torch.rand((len(units), *input_shape), generator=torch.Generator().manual_seed(1), dtype=torch.float64) + 0.5
    copy_ = _PositiveCopy(model)
    x = x.to(copy_.device).requires_grad_(True)
    with torch.enable_grad():
        out = _run_probe(copy_, name, x, detach_global)
        seed = _seed(out, units, channel, name, len(input_shape) - 1)
        (grad,) = torch.autograd.grad(out, x, seed, allow_unused=True)
    return [_bounding_box(grad[row] if grad is not None else None) for row in range(len(units))]


def _run_probe(copy_: _PositiveCopy, name: str, x: Tensor, detach_global: bool) -> Tensor:
    module = dict(copy_.model.named_modules())[split_layer_spec(name)[0]]
    with ReverseRules("probe"):
        try:
            return _probe_forward(copy_.model, module, x, name, detach_global)
        except (NotImplementedError, RuntimeError) as err:
            if "meta" not in str(err):
                raise
            copy_.materialize_all()  # a module used another module's weights before that one ran
            return _probe_forward(copy_.model, module, x, name, detach_global)


def _seed(out: Tensor, units: Sequence[Sequence[int]], channel: int | None, name: str, n: int) -> Tensor:
    """1 at each row's unit (all channels, or ``channel``), 0 elsewhere; with clear errors."""
    if out.dim() != n + 2:
        raise ValueError(f"layer {name!r} outputs shape {tuple(out.shape)}; the probe needs [N, C, *spatial]")
    if channel is not None and not 0 <= channel < out.shape[1]:
        raise ValueError(f"channel={channel} is out of range: layer {name!r} has {out.shape[1]} channels")
    seed = torch.zeros_like(out)
    for row, unit in enumerate(units):
        if len(unit) != n or not all(0 <= int(u) < s for u, s in zip(unit, out.shape[2:], strict=True)):
            raise ValueError(f"units[{row}] = {tuple(unit)} is out of range for the map {tuple(out.shape[2:])}")
        at: tuple[Any, ...] = (row, slice(None) if channel is None else channel, *(int(u) for u in unit))
        seed[at] = 1.0
    return seed


def _bounding_box(grad: Tensor | None) -> tuple[int, ...] | None:
    """The half-open bounding box of the nonzero gradient (over channels), or None."""
    where = (grad.abs().sum(0) > 0).nonzero() if grad is not None else None
    if where is None or len(where) == 0:
        return None
    lo, hi = where.min(0).values, where.max(0).values + 1
    return (*(int(v) for v in lo), *(int(v) for v in hi))


def _probe_forward(probe: nn.Module, module: nn.Module, x: Tensor, name: str, detach_global: bool) -> Tensor:
    if not detach_global:
        return forward_to_layer(probe, module, (x,), layer_name=name)
    recorder = _rf_graph.FieldRecorder(tuple(x.shape[2:]), detach_global=True)
    recorder.start(x)
    with recorder:
        return forward_to_layer(probe, module, (x,), layer_name=name)


def _probe_units(output_size: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Centre, its neighbours and the borders along each axis (others at the centre)."""
    mid = tuple(s // 2 for s in output_size)
    units = {mid}
    for axis, size in enumerate(output_size):
        for pos in {0, 1, mid[axis], mid[axis] + 1, size - 2, size - 1}:
            if 0 <= pos < size:
                units.add(tuple(pos if a == axis else mid[a] for a in range(len(output_size))))
    return sorted(units)


def _layer_output_size(model: nn.Module, name: str, input_shape: tuple[int, ...]) -> tuple[int, ...]:
    module = dict(model.named_modules())[split_layer_spec(name)[0]]
    with torch.no_grad(), EvalMode(model):
        out = forward_to_layer(model, module, (example_input(model, input_shape),), layer_name=name)
    if out.dim() != len(input_shape) + 1:
        raise ValueError(f"layer {name!r} outputs shape {tuple(out.shape)}; the probe needs [N, C, *spatial]")
    return tuple(out.shape[2:])


def probe_field(
    model: nn.Module, name: str, input_shape: tuple[int, ...], channel: int | None = None
) -> ReceptiveField:
    output_size = _layer_output_size(model, name, input_shape)
    units = _probe_units(output_size)
    boxes = measure_support(model, name, input_shape, units, channel=channel, detach_global=True)
    n, extent = len(output_size), input_shape[1:]
    if all(b is None for b in boxes):
        raise ValueError(f"layer {name!r} does not depend on the input: the probe finds no support")
    size: list[int] = []
    stride: list[int] = []
    offset: list[int] = []
    exact = True
    for axis in range(n):
        along = [
            (u[axis], b[axis], b[axis + n])
            for u, b in zip(units, boxes, strict=True)
            if b is not None and all(u[a] == output_size[a] // 2 for a in range(n) if a != axis)
        ]
        starts = sorted({(u, start) for u, start, _ in along if start > 0})
        if output_size[axis] > 1 and len(starts) >= 2 and starts[0][0] != starts[-1][0]:
            (ua, sa), (ub, sb) = starts[0], starts[-1]
            stride.append((sb - sa) // (ub - ua))
        else:
            stride.append(extent[axis])
        whole = [(u, start, stop) for u, start, stop in along if start > 0 and stop < extent[axis]]
        if whole:  # a unit whose field lies inside the input: its box is measured exactly
            u0, start0, stop0 = whole[0]
            size.append(stop0 - start0)
            offset.append(start0 - u0 * stride[-1])
        else:  # every probed unit reaches a border: the smallest box containing every measured one
            exact = False
            offset.append(min(start - u * stride[-1] for u, start, _ in along))
            size.append(max(stop - u * stride[-1] for u, _, stop in along) - offset[-1])
    return ReceptiveField(
        tuple(size), tuple(stride), tuple(offset), extent, output_size, name, exact, "probe", channel=channel
    )


def check_against_probe(model: nn.Module, analytic: ReceptiveField, input_shape: tuple[int, ...]) -> None:
    units = _probe_units(analytic.output_size)
    boxes = measure_support(
        model, analytic.layer, input_shape, units, channel=analytic.channel, detach_global=bool(analytic.global_via)
    )
    n = len(analytic.size)
    for unit, measured in zip(units, boxes, strict=True):
        box = analytic.clipped_box(*unit)
        # A box in the padding only has nothing to see.
        expected: tuple[int, ...] | None = None if any(box[a] >= box[a + n] for a in range(n)) else box
        if measured != expected:
            raise ReceptiveFieldError(
                f"analytic and probe receptive fields of layer {analytic.layer!r} disagree at unit {unit}: "
                f"analytic box (clipped) {expected}, probe support {measured}"
            )
    if analytic.global_via:  # with the global paths open, every unit sees the whole input
        whole = (*(0 for _ in analytic.input_size), *analytic.input_size)
        opened = measure_support(model, analytic.layer, input_shape, units[:1], channel=analytic.channel)
        if opened[0] != whole:
            raise ReceptiveFieldError(
                f"layer {analytic.layer!r} depends on the whole input through {analytic.global_via[0]!r} by the "
                f"analysis, but the probe with global paths open sees only {opened[0]} at unit {units[0]}"
            )
