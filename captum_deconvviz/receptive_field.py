"""Receptive fields ("domains of dependence"): which input pixels a unit can see.

Two methods that cross-check each other:

* **analytic** (default): the model runs once on zeros of ``input_shape`` under a
  recorder (a ``TorchFunctionMode``, like the reverse engine) that gives every tensor
  its field, with the arithmetic of Araujo, Norris & Sim (Distill 2019) per spatial
  dimension. With ``j`` the jump (stride in input pixels), ``r`` the field size and
  ``left`` the first input pixel of unit 0's field, a layer with kernel ``k``, stride
  ``s``, padding ``p`` and dilation ``d`` maps ``(j, r, left)`` to
  ``(j*s, r + (d*(k-1)) * j, left - p*j)``. Merges take the hull of their inputs'
  fields (misaligned paths have one: the union); channels of one layer may have
  different fields (concatenations), which ``channel=`` gives exactly. Gates and
  normalization statistics computed over the whole map (squeeze-excitation,
  GroupNorm) are reported in :attr:`ReceptiveField.global_via` instead of widening the
  field. Ops the analysis cannot model make it fall back to the probe, with a warning.
* **probe**: a copy of the model with random positive weights, every pointwise
  non-linearity replaced by the identity and max-pooling by a window sum (the
  engine's ``"probe"`` rules); the gradient support of a unit is its field.

The box of unit ``(y, x)`` is ``offset + (y, x) * stride`` to that plus ``size``,
half-open, in input pixels. It may leave the image: the unit then sees padding. Where
reflect or replicate padding folds pixels back inside the image, the box stays the
geometric window and :meth:`ReceptiveField.clipped_box` is the set of input pixels
reached.
"""

from __future__ import annotations

import copy
import html
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from . import _rf_graph
from ._field import Field, Unmodelled
from ._forward import (
    EvalMode,
    check_model,
    example_input,
    forward_to_layer,
    resolve_layer,
    split_layer_spec,
)
from ._geometry import box_slices
from .engine import ReverseRules

__all__ = [
    "ReceptiveField",
    "ReceptiveFieldError",
    "ReceptiveFieldTable",
    "measure_support",
    "receptive_field",
    "receptive_field_table",
]

Method = Literal["analytic", "probe"]


class ReceptiveFieldError(ValueError):
    """The receptive field cannot be computed, or the analytic method and the probe disagree."""


@dataclass(frozen=True)
class ReceptiveField:
    """The receptive field of the units of one layer, per spatial dimension.

    Attributes:
        size: field size in input pixels, e.g. ``(h, w)``.
        stride: jump in input pixels between neighbouring units.
        offset: first input pixel (top, left) of unit ``(0, 0)``'s box; may be < 0.
        input_size: spatial size of the input the field was computed for.
        output_size: spatial size of the layer's map (the valid unit indices).
        layer: the layer's name.
        exact: False when ``size``, ``stride`` and ``offset`` are a safe bound (upsampling,
            transposed convolutions with stride, adaptive pooling with windows of unequal
            sizes): every unit's true support lies inside its box; :attr:`reach` stays exact.
        method: ``"analytic"`` or ``"probe"``.
        reach: per axis, ``(lo, hi)`` tuples with, for every unit index, the half-open
            range of input pixels the unit really depends on (analytic method only;
            None otherwise). It differs from the box clipped to the image only at the
            borders: windows that overlap padding, dilation holes, pixels a stride
            leaves unseen. :meth:`clipped_box` uses it.
        global_via: readable reasons why every unit also depends, weakly, on the whole
            input although what it looks at is local: gates computed from global
            statistics (``"squeeze-excitation gate at blocks.2.se"``) or normalization
            statistics over the map (``"GroupNorm statistics at 'layer1.0.bn1'"``). The box
            is the local field, with those statistics held fixed, which is what ZF-style
            patches show. Empty when there are none.
        channel: the channel this field is for, or None for the whole layer (the union
            over its channels: the widest).
    """

    size: tuple[int, ...]
    stride: tuple[int, ...]
    offset: tuple[int, ...]
    input_size: tuple[int, ...]
    output_size: tuple[int, ...]
    layer: str = ""
    exact: bool = True
    method: str = "analytic"
    reach: tuple[tuple[tuple[int, ...], tuple[int, ...]], ...] | None = dataclass_field(
        default=None, repr=False, compare=False
    )
    global_via: tuple[str, ...] = ()
    channel: int | None = None

    def _check_index(self, index: Sequence[int]) -> None:
        if len(index) != len(self.size):
            raise ValueError(f"expected {len(self.size)} unit coordinates, got {len(index)}: {tuple(index)}")
        for axis, (i, n) in enumerate(zip(index, self.output_size, strict=True)):
            if not 0 <= int(i) < n:
                raise ValueError(
                    f"unit coordinate {int(i)} on axis {axis} is out of range for layer {self.layer!r} "
                    f"whose map is {tuple(self.output_size)}"
                )

    def box(self, *index: int) -> tuple[int, ...]:
        """Half-open box of unit ``index`` in input pixels: ``(top, left, bottom, right)``.

        For 1-d maps ``(start, stop)``. The box may extend beyond the image.

        Example:
            >>> rf = ReceptiveField((5, 5), (2, 2), (-2, -2), (32, 32), (16, 16))
            >>> rf.box(0, 3)
            (-2, 4, 3, 9)
        """
        self._check_index(index)
        starts = tuple(o + int(i) * s for o, i, s in zip(self.offset, index, self.stride, strict=True))
        return (*starts, *(a + n for a, n in zip(starts, self.size, strict=True)))

    def clipped_box(self, *index: int) -> tuple[int, ...]:
        """The bounding box of the input pixels unit ``index`` depends on.

        That is the box clipped to the image, except at borders where the analytic
        :attr:`reach` knows better. Empty (start == stop) if the unit sees padding only.
        """
        box = self.box(*index)
        n = len(self.size)
        starts, stops = [], []
        for axis, i in enumerate(index):
            if self.reach is not None:
                lo, hi = self.reach[axis][0][int(i)], self.reach[axis][1][int(i)]
            else:
                lo, hi = max(0, box[axis]), min(self.input_size[axis], box[axis + n])
            lo = min(max(lo, 0), self.input_size[axis])
            starts.append(lo)
            stops.append(max(lo, min(hi, self.input_size[axis])))
        return (*starts, *stops)

    def valid_mask(self, *index: int) -> Tensor:
        """Boolean mask of ``size``: True where the box lies inside the image."""
        _, local = box_slices(self.box(*index)[: len(self.size)], self.size, self.input_size)
        mask = torch.zeros(self.size, dtype=torch.bool)
        mask[local] = True
        return mask

    def crop(self, image: Tensor, *index: int, fill: float = 0.0) -> Tensor:
        """The ``size`` pixels of ``image [C, *input_size]`` under unit ``index``'s box.

        Pixels outside the image are ``fill``; :meth:`valid_mask` tells which.

        Example:
            >>> rf = ReceptiveField((3, 3), (1, 1), (-1, -1), (4, 4), (4, 4))
            >>> rf.crop(torch.ones(1, 4, 4), 0, 0, fill=-1.0)[0]
            tensor([[-1., -1., -1.],
                    [-1.,  1.,  1.],
                    [-1.,  1.,  1.]])
        """
        if not isinstance(image, Tensor) or image.dim() != len(self.size) + 1:
            raise ValueError(f"image must be a tensor [C, {', '.join(map(str, self.input_size))}], got {_shape(image)}")
        if tuple(image.shape[1:]) != tuple(self.input_size):
            raise ValueError(
                f"image has spatial size {tuple(image.shape[1:])} but the field was computed for {self.input_size}"
            )
        n = len(self.size)
        inside, local = box_slices(self.box(*index)[:n], self.size, self.input_size)
        out = image.new_full((image.shape[0], *self.size), fill)
        out[(slice(None), *local)] = image[(slice(None), *inside)]
        return out

    def __str__(self) -> str:
        dims = "x".join(map(str, self.size))
        return (
            f"ReceptiveField({self.layer or 'layer'}: size {dims}, stride {'x'.join(map(str, self.stride))}, "
            f"offset {tuple(self.offset)}{'' if self.exact else ', bound'}"
            f"{f', global via {len(self.global_via)}' if self.global_via else ''})"
        )


def _shape(value: Any) -> str:
    return str(tuple(value.shape)) if isinstance(value, Tensor) else type(value).__name__


# --------------------------------------------------------------------------------------
# Public entry points.
# --------------------------------------------------------------------------------------


def _check_input_shape(input_shape: Any) -> tuple[int, ...]:
    if not isinstance(input_shape, (tuple, list, torch.Size)) or not all(isinstance(v, int) for v in input_shape):
        raise TypeError(f"input_shape must be a tuple of ints such as (C, H, W), got {input_shape!r}")
    if not 2 <= len(input_shape) <= 4 or any(v < 1 for v in input_shape):
        raise ValueError(
            f"input_shape must be (C, L), (C, H, W) or (C, D, H, W) of positive ints, got {tuple(input_shape)}"
        )
    return tuple(input_shape)


def _snapshot(analysis: _rf_graph.Analysis, spec: str) -> _rf_graph.Snapshot:
    """The analysed output of layer ``spec`` (a module name, possibly with picks)."""
    name, picks = split_layer_spec(spec)
    snap = analysis.outputs.get(name)
    if snap is None:
        raise ValueError(f"layer {name!r} was not called in the forward pass of the model")
    for depth, key in enumerate(picks):
        where = name + "".join(f"[{p!r}]" for p in picks[:depth])
        in_seq = snap.kind == "seq" and isinstance(key, int) and -len(snap.items) <= key < len(snap.items)
        if in_seq or (snap.kind == "dict" and key in snap.items):
            snap = snap.items[key]
        else:
            raise ValueError(f"layer={where!r} has no item {key!r}: {_choices(snap, where)}")
    if snap.kind != "tensor":
        raise ValueError(f"layer {spec!r} outputs a {snap.type_name}; pick one tensor of it: {_choices(snap, spec)}")
    return snap


def _choices(snap: _rf_graph.Snapshot, where: str) -> str:
    if snap.kind == "seq":
        return "choose one of " + ", ".join(f"{where}[{i}]" for i in range(len(snap.items)))
    if snap.kind == "dict":
        return "choose one of " + ", ".join(f"{where}[{k!r}]" for k in snap.items)
    return f"it is a {snap.type_name}"


def _analytic(model: nn.Module, name: str, input_shape: tuple[int, ...], channel: int | None) -> ReceptiveField:
    analysis = _rf_graph.analyse(model, input_shape, stop_after=split_layer_spec(name)[0])
    snap = _snapshot(analysis, name)
    return _from_snapshot(model, snap, name, input_shape, channel)


def _from_snapshot(
    model: nn.Module, snap: _rf_graph.Snapshot, name: str, input_shape: tuple[int, ...], channel: int | None
) -> ReceptiveField:
    field = snap.field
    if isinstance(field, Unmodelled):
        warnings.warn(
            f"the receptive-field analysis has no rule for the {field} that layer {name!r} depends on; "
            "measuring the field with the gradient probe instead",
            UserWarning,
            stacklevel=4,
        )
        return _probe_field(model, name, input_shape, channel)
    if field is None:
        return _probe_or_refuse(model, name, input_shape, channel)
    if field.hidden is not None:
        if field.hidden[0].is_global:
            field = field.hidden[0]
        else:
            raise ReceptiveFieldError(
                f"layer {name!r} outputs shape {snap.shape}, in which the spatial dims are flattened together "
                "with others; choose the layer before the flatten"
            )
    return _make(field, input_shape, snap.shape, name, channel)


def _probe_or_refuse(model: nn.Module, name: str, input_shape: tuple[int, ...], channel: int | None) -> ReceptiveField:
    """The analysis lost the input (an op outside torch's Python API, e.g. TorchScript): ask the probe."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rf = _probe_field(model, name, input_shape, channel)
    except ValueError as err:
        raise ReceptiveFieldError(f"layer {name!r} does not depend on the input ({err})") from None
    warnings.warn(
        f"the receptive-field analysis lost track of the input before layer {name!r} (an op outside torch's "
        "Python API, such as a TorchScript function?); the field was measured with the gradient probe",
        UserWarning,
        stacklevel=4,
    )
    return rf


def _make(
    field: Field, input_shape: tuple[int, ...], shape: tuple[int, ...], name: str, channel: int | None = None
) -> ReceptiveField:
    n = len(input_shape) - 1
    output_size = [1] * n
    for d, axis in enumerate(field.dims):
        if axis is not None:
            output_size[axis] = int(shape[d])
    channels = field.cmap.reshape(field.cmap.shape[0], -1)[0] if field.cmap.ndim >= 1 else field.cmap.reshape(1)
    if channel is None:
        seg = field.layer_seg()
    else:
        if not 0 <= channel < len(channels):
            raise ValueError(f"channel={channel} is out of range: layer {name!r} has {len(channels)} channels")
        seg = field.segs[int(channels[channel])]
    if seg.empty:
        where = f"channel {channel} of layer {name!r}" if channel is not None else f"layer {name!r}"
        raise ReceptiveFieldError(f"{where} does not depend on the input")
    seg = seg.resized(tuple(output_size))
    reach = tuple((tuple(int(v) for v in lo), tuple(int(v) for v in hi)) for lo, hi in zip(seg.lo, seg.hi, strict=True))
    return ReceptiveField(
        seg.size,
        seg.stride,
        seg.offset,
        input_shape[1:],
        tuple(output_size),
        name,
        seg.exact,
        "analytic",
        reach,
        tuple(sorted(field.via)),
        channel,
    )


def receptive_field(
    model: nn.Module,
    layer: str | nn.Module,
    input_shape: Sequence[int],
    method: Method = "analytic",
    verify: bool = False,
    channel: int | None = None,
) -> ReceptiveField:
    """The receptive field of the units of ``layer`` for inputs of ``input_shape``.

    Args:
        model: the network. It is not modified (the analysis runs it once in eval mode
            on zeros, and restores every module's training flag; its hooks are removed).
        layer: a module of ``model`` or its dotted name. A container (e.g. a ResNet
            stage) means its output; for a module that outputs a tuple, list or dict
            (HRNet stages), pick one tensor: ``"stages.1[0]"``.
        input_shape: ``(C, H, W)`` (or ``(C, L)``, ``(C, D, H, W)``), without batch.
        method: ``"analytic"`` (the recorded ops of one forward pass; an op it cannot
            model makes it fall back to the probe, with a warning naming the op) or
            ``"probe"`` (the gradient support of units of a positive-weight copy).
        verify: compute both and raise :class:`ReceptiveFieldError` if the probe's
            support of probed units (centre, neighbours and borders) differs from the
            analytic box clipped to the image. Global gates and statistics are held
            fixed in the probe, as in the analytic field.
        channel: give channel ``channel``'s own field. Without it, the layer's field is
            the union over its channels (for a concatenation of branches: the widest).

    Returns:
        A :class:`ReceptiveField`.

    Raises:
        ReceptiveFieldError: paths that merge are misaligned, an op is unknown to the
            analytic method, or the two methods disagree under ``verify``.
        ValueError: the layer is not in the model, the input is too small for the
            model, or (probe) every probed unit sees the whole input.

    Example:
        >>> import torchvision
        >>> rf = receptive_field(torchvision.models.vgg16(), "features.30", (3, 224, 224))
        >>> rf.size, rf.stride, rf.offset
        ((212, 212), (32, 32), (-90, -90))
    """
    model = check_model(model)
    name, _ = resolve_layer(model, layer)
    input_shape = _check_input_shape(input_shape)
    if method not in ("analytic", "probe"):
        raise ValueError(f"method must be 'analytic' or 'probe', got {method!r}")
    if channel is not None and (isinstance(channel, bool) or not isinstance(channel, int)):
        raise TypeError(f"channel must be an int or None, got {type(channel).__name__}")
    if method == "probe" and not verify:
        return _probe_field(model, name, input_shape, channel)
    analytic = _analytic(model, name, input_shape, channel)
    if verify:
        if analytic.method == "analytic":
            _verify(model, analytic, input_shape)
        if method == "probe":
            return _probe_field(model, name, input_shape, channel)
    return analytic


class ReceptiveFieldTable(list):
    """Rows ``(layer name, ReceptiveField)`` for every convolution and pooling layer.

    ``str(table)`` (and ``print(table)``) gives an aligned text table;
    :meth:`to_markdown` a Markdown one; notebooks show HTML.
    """

    _HEADER = ("layer", "type", "map", "size", "stride", "offset", "global via")

    def _cells(self) -> list[tuple[str, ...]]:
        def dims(values: Iterable[int]) -> str:
            return "x".join(str(v) for v in values)

        return [
            (
                name,
                kind,
                dims(rf.output_size),
                dims(rf.size) + ("" if rf.exact else " (bound)"),
                dims(rf.stride),
                str(tuple(rf.offset)),
                str(len(rf.global_via)) if rf.global_via else "-",
            )
            for name, kind, rf in self
        ]

    def __str__(self) -> str:
        rows = [self._HEADER, *self._cells()]
        widths = [max(len(row[i]) for row in rows) for i in range(len(self._HEADER))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def to_markdown(self) -> str:
        """The table in Markdown."""
        lines = ["| " + " | ".join(self._HEADER) + " |", "|" + "---|" * len(self._HEADER)]
        lines += ["| " + " | ".join(row) + " |" for row in self._cells()]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self._HEADER)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in self._cells())
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_TABLE_TYPES = (
    nn.modules.conv._ConvNd,
    nn.modules.pooling._MaxPoolNd,
    nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd,
)


def receptive_field_table(model: nn.Module, input_shape: Sequence[int]) -> ReceptiveFieldTable:
    """The analytic receptive field of every convolution and pooling layer, in forward order.

    The "global via" column counts the gates and statistics through which a layer's units
    also depend on the whole input (see :attr:`ReceptiveField.global_via`).

    Args:
        model: the network (not modified).
        input_shape: ``(C, H, W)`` without batch.

    Returns:
        A :class:`ReceptiveFieldTable` of ``(name, type, ReceptiveField)`` rows; it
        prints as an aligned table.

    Example:
        >>> import torchvision
        >>> print(receptive_field_table(torchvision.models.alexnet(), (3, 224, 224))[:2])  # doctest: +SKIP
    """
    model = check_model(model)
    input_shape = _check_input_shape(input_shape)
    analysis = _rf_graph.analyse(model, input_shape)
    modules = dict(model.named_modules())
    table = ReceptiveFieldTable()
    for name in analysis.order:
        module = modules[name]
        snap = analysis.outputs[name]
        if isinstance(module, _TABLE_TYPES) and snap.kind == "tensor":
            table.append((name, type(module).__name__, _from_snapshot(model, snap, name, input_shape, None)))
    table.sort(key=lambda row: analysis.order.index(row[0]))
    return table


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
    input_shape = _check_input_shape(input_shape)
    copy_ = _PositiveCopy(model)
    probe = copy_.model
    module = dict(probe.named_modules())[split_layer_spec(name)[0]]
    device = copy_.device
    gen = torch.Generator().manual_seed(1)
    x = (torch.rand((len(units), *input_shape), generator=gen, dtype=torch.float64) + 0.5).to(device)
    x.requires_grad_(True)
    with torch.enable_grad():
        with ReverseRules("probe"):
            try:
                out = _probe_forward(probe, module, x, name, detach_global)
            except (NotImplementedError, RuntimeError) as err:
                if "meta" not in str(err):
                    raise
                copy_.materialize_all()  # a module used another module's weights before that one ran
                out = _probe_forward(probe, module, x, name, detach_global)
        n = len(input_shape) - 1
        if out.dim() != n + 2:
            raise ValueError(f"layer {name!r} outputs shape {tuple(out.shape)}; the probe needs [N, C, *spatial]")
        seed = torch.zeros_like(out)
        if channel is not None and not 0 <= channel < out.shape[1]:
            raise ValueError(f"channel={channel} is out of range: layer {name!r} has {out.shape[1]} channels")
        for row, unit in enumerate(units):
            if len(unit) != n or not all(0 <= int(u) < s for u, s in zip(unit, out.shape[2:], strict=True)):
                raise ValueError(f"units[{row}] = {tuple(unit)} is out of range for the map {tuple(out.shape[2:])}")
            seed[(row, slice(None) if channel is None else channel, *(int(u) for u in unit))] = 1.0
        (grad,) = torch.autograd.grad(out, x, seed, allow_unused=True)
    boxes: list[tuple[int, ...] | None] = []
    for row in range(len(units)):
        support = grad[row].abs().sum(0) > 0 if grad is not None else torch.zeros(input_shape[1:], dtype=torch.bool)
        where = support.nonzero()
        if len(where) == 0:
            boxes.append(None)
            continue
        lo, hi = where.min(0).values, where.max(0).values + 1
        boxes.append((*(int(v) for v in lo), *(int(v) for v in hi)))
    return boxes


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


def _probe_field(
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


def _verify(model: nn.Module, analytic: ReceptiveField, input_shape: tuple[int, ...]) -> None:
    units = _probe_units(analytic.output_size)
    boxes = measure_support(
        model, analytic.layer, input_shape, units, channel=analytic.channel, detach_global=bool(analytic.global_via)
    )
    n = len(analytic.size)
    for unit, measured in zip(units, boxes, strict=True):
        expected: tuple[int, ...] | None = analytic.clipped_box(*unit)
        if any(expected[a] >= expected[a + n] for a in range(n)):
            expected = None  # the box lies in the padding only: nothing to see
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
