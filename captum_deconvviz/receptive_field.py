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

import warnings
from collections.abc import Sequence
from typing import Literal

from torch import nn

from . import _rf_graph
from ._checks import check_bool, check_int
from ._field import Field, Unmodelled
from ._forward import check_model, resolve_layer, split_layer_spec
from ._probe import check_against_probe, measure_support, probe_field
from ._rf_types import ReceptiveField, ReceptiveFieldError, ReceptiveFieldTable, check_input_shape

__all__ = [
    "ReceptiveField",
    "ReceptiveFieldError",
    "ReceptiveFieldTable",
    "measure_support",
    "receptive_field",
    "receptive_field_table",
]

Method = Literal["analytic", "probe"]


# --------------------------------------------------------------------------------------
# Public entry points.
# --------------------------------------------------------------------------------------


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
        return probe_field(model, name, input_shape, channel)
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
            rf = probe_field(model, name, input_shape, channel)
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
        ReceptiveFieldError: the layer does not depend on the input, its output flattens
            the spatial dims, or the two methods disagree under ``verify``.
        ValueError: the layer is not in the model, its output holds no single tensor
            (pick one), ``channel`` is out of range, or the input is too small for the model.

    Example:
        >>> import torchvision
        >>> rf = receptive_field(torchvision.models.vgg16(), "features.30", (3, 224, 224))
        >>> rf.size, rf.stride, rf.offset
        ((212, 212), (32, 32), (-90, -90))
    """
    model = check_model(model, needs_values=False)  # shapes suffice: a meta-device model is analysed
    name, _ = resolve_layer(model, layer)
    input_shape = check_input_shape(input_shape)
    if method not in ("analytic", "probe"):
        raise ValueError(f"method must be 'analytic' or 'probe', got {method!r}")
    check_int(channel, "channel", minimum=0, allow_none=True)
    check_bool(verify, "verify")
    if method == "probe" and not verify:
        return probe_field(model, name, input_shape, channel)
    analytic = _analytic(model, name, input_shape, channel)
    if verify:
        if analytic.method == "analytic":
            check_against_probe(model, analytic, input_shape)
        if method == "probe":
            return probe_field(model, name, input_shape, channel)
    return analytic


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
    model = check_model(model, needs_values=False)  # shapes suffice: a meta-device model is analysed
    input_shape = check_input_shape(input_shape)
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
