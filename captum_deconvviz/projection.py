"""DeconvNet projections of chosen units: ``project_units``, ``project_records`` and the neuron seeds.

A projection runs the forward pass only up to the unit's layer, seeds the layer's
reverse signal with the unit's activation (all other units zeroed, as Zeiler &
Fergus do), and runs one reverse pass to the input. Many units share each forward
and each backward.

Vocabulary (:mod:`captum_deconvviz._units` checks it): a *unit* is ``(channel, y, x)``,
one index per layer dimension (``(feature,)`` for a linear layer); a *record* is
``(image, channel, y, x, value)``. :func:`project_units` takes one unit per input
row, ``[N, k]``; :func:`project_records` takes the index columns of records,
``[R, 1 + k]`` of ``(image, channel, y, x)``, and runs each image's forward pass once.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from ._checks import check_bool, check_int
from ._chunks import MAX_CHUNK_ROWS, MAX_CROPPED_CHUNK_ROWS, ChunkSizer
from ._forward import EvalMode, check_model, format_inputs, forward_to_layer, resolve_layer
from ._geometry import box_slices
from ._guard import autograd_inside, check_finite, explain_shape_errors
from ._units import (
    Seed,
    check_records,
    check_seed,
    check_units,
    check_within,
    neuron_seed,
    place_seeds,
    reverse_from_seeds,
    seed_units,
)
from .cropped import CroppedPlan, cropped_plan
from .engine import ActivationPolicy, ReverseRules, rule_set

__all__ = ["Seed", "neuron_seed", "project_records", "project_units"]

#: ``crop="auto"`` uses the cropped pass when its window work is at most this fraction
#: of the full pass's.
CROP_WHEN_COST_BELOW = 0.5


@contextmanager
def capture_reverse_signals(model: nn.Module) -> Iterator[dict[str, list[Tensor]]]:
    """Record the reverse signal at the output of every submodule that runs.

    Keys are module names in the order their forward returns; a module called
    several times gets ``name``, ``name#2``, ``name#3``... The values fill in
    during the backward pass.
    """
    signals: dict[str, list[Tensor]] = {}
    calls: dict[str, int] = {}
    handles = []

    def make_hook(name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, _inp: Any, out: Any) -> None:
            if not (isinstance(out, Tensor) and out.requires_grad):
                return
            calls[name] = calls.get(name, 0) + 1
            key = name if calls[name] == 1 else f"{name}#{calls[name]}"
            slot = signals.setdefault(key, [])
            out.register_hook(lambda grad: slot.append(grad.detach()))

        return hook

    try:
        for name, module in model.named_modules():
            if name:
                handles.append(module.register_forward_hook(make_hook(name)))
        yield signals
    finally:
        for handle in handles:
            handle.remove()


@dataclass(frozen=True)
class _Projector:
    """One layer's projections: the model, the layer, the reverse rules and seed, a cropped plan."""

    model: nn.Module
    module: nn.Module
    name: str
    seed: Seed
    rules: str
    activations: ActivationPolicy
    plan: CroppedPlan | None = None
    argname: str = "inputs"

    def cropping(self, crop: bool | str, input_shape: tuple[int, ...]) -> _Projector:
        """This projector with a cropped plan where ``crop`` asks for one and the layer allows it."""
        return replace(self, plan=_choose_plan(self.model, self.name, input_shape, crop))

    def sizer(self, rows: int | None) -> ChunkSizer:
        """Chunks of ``rows`` rows, or sized from the first's memory; crops allow more per chunk."""
        return ChunkSizer(self.model, rows, MAX_CHUNK_ROWS if self.plan is None else MAX_CROPPED_CHUNK_ROWS)

    @property
    def layer_shape(self) -> tuple[int, ...] | None:
        """The layer output's shape per example, when the plan knows it before any forward pass."""
        return None if self.plan is None else (self.plan.channels, *self.plan.output_size)

    def per_row(self, images: Tensor, units: Tensor, rows: range) -> Tensor:
        """Projections of one unit per image; ``rows`` are the caller's row numbers, for errors."""
        if self.plan is not None:
            return self.on_crops(images, units)
        x = images.detach().requires_grad_(True)
        with torch.enable_grad():
            with ReverseRules(self.rules, activations=self.activations):
                layer_out = forward_to_layer(self.model, self.module, (x,), layer_name=self.name, argname=self.argname)
            check_within(units, layer_out.shape[1:], "units", rows=rows)
            # Indices built apart from the subscript: mypy's parser reads a starred tuple inside [] as 3.11 syntax.
            at_units: tuple[Tensor, ...] = (torch.arange(len(units)), *units.t())
            seeded = layer_out.detach()[at_units]
            check_finite(seeded, f"the activations of layer {self.name!r} at units", "activations", rows)
            (projection,) = reverse_from_seeds(layer_out, (x,), seed_units(layer_out, units, self.seed))
        return projection

    def on_crops(self, images: Tensor, units: Tensor) -> Tensor:
        """Project on crops, then paste each crop back at its box in a full-size zero image."""
        assert self.plan is not None
        projection, starts = self.plan.project(images, units.to(torch.long), self.seed, self.rules, self.activations)
        out = torch.zeros_like(images)
        for row in range(images.shape[0]):
            inside, local = box_slices(starts[row].tolist(), projection.shape[2:], images.shape[2:])
            # Indices built apart from the subscript: mypy's parser reads a starred tuple inside [] as 3.11 syntax.
            to_index: tuple[int | slice, ...] = (row, slice(None), *inside)
            from_index: tuple[int | slice, ...] = (row, slice(None), *local)
            out[to_index] = projection[from_index]
        return out

    def by_slot(self, images: Tensor, chunk: list[int], records: Tensor, slot: Tensor) -> Tensor:
        """Projections ``[M, len(chunk), C, H, W]``: record slot ``m`` of every image in the chunk.

        One forward pass for the chunk's images, one batched reverse pass per slot.
        """
        x = images[chunk].detach().requires_grad_(True)
        local = {image: i for i, image in enumerate(chunk)}
        rows = torch.cat([(records[:, 0] == image).nonzero().flatten() for image in chunk])
        slots = int(slot[rows].max()) + 1
        with torch.enable_grad():
            with ReverseRules(self.rules, activations=self.activations):
                layer_out = forward_to_layer(self.model, self.module, (x,), layer_name=self.name, argname=self.argname)
            if layer_out.dim() == 2 and records.shape[1] == 4:
                # A linear layer's records as mining keeps them: its [N, F] output seen as [N, F, 1, 1].
                layer_out = layer_out[:, :, None, None]
            check_within(records[rows], layer_out.shape[1:], "records", rows=rows.tolist(), records=True)
            image_rows = torch.tensor([local[int(i)] for i in records[rows, 0]])
            where = records[rows, 1:].t()
            at_records: tuple[Tensor, ...] = (image_rows, *where)
            seeded = layer_out.detach()[at_records]
            check_finite(seeded, f"the activations of layer {self.name!r} at records", "activations", rows.tolist())
            grad = layer_out.new_zeros((slots, *layer_out.shape))
            place_seeds(grad, (slot[rows], image_rows, *where), layer_out.detach(), (image_rows, *where), self.seed)
            if slots == 1:
                return reverse_from_seeds(layer_out, (x,), grad[0])[0].unsqueeze(0)
            # A batched reverse pass holds the backward's buffers once per slot, which the chunk
            # sizer (it meters the forward) does not see: an image with 51 records of a ResNet-18
            # layer took 24 GB. At most MAX_BATCHED_SLOTS slots per pass, on the same forward.
            parts = [
                reverse_from_seeds(
                    layer_out, (x,), grad[first : first + MAX_BATCHED_SLOTS], batched=True,
                    retain_graph=first + MAX_BATCHED_SLOTS < slots,
                )[0]
                for first in range(0, slots, MAX_BATCHED_SLOTS)
            ]  # fmt: skip
            return parts[0] if len(parts) == 1 else torch.cat(parts)


def _choose_plan(model: nn.Module, name: str, input_shape: tuple[int, ...], crop: bool | str) -> CroppedPlan | None:
    if crop not in (True, False, "auto"):
        raise ValueError(f"crop must be True, False or 'auto', got {crop!r}")
    if crop is False:
        return None
    plan, why = cropped_plan(model, name, input_shape)
    if plan is None and crop is True:
        raise ValueError(f"layer {name!r} cannot be projected from crops: {why}")
    if plan is not None and crop == "auto" and plan.cost_ratio > CROP_WHEN_COST_BELOW:
        return None
    return plan


def _projector(
    model: nn.Module,
    layer: str | nn.Module,
    images: Tensor,
    seed: Seed,
    rules: str,
    activations: ActivationPolicy,
    argname: str,
) -> tuple[_Projector, Tensor]:
    """Check the arguments every projection takes; return a projector (no plan yet) and the images."""
    model = check_model(model)
    name, module = resolve_layer(model, layer)
    (images,) = format_inputs(images, model, argname)
    check_finite(images, argname)
    check_seed(seed)
    rules = rule_set(rules, projecting=True).name
    ReverseRules(rules, activations)  # checks ``activations`` before any pass
    return _Projector(model, module, name, seed, rules, activations, argname=argname), images


@autograd_inside
def project_units(
    model: nn.Module,
    layer: str | nn.Module,
    inputs: Tensor,
    units: Tensor,
    seed: Seed = "activation",
    return_intermediates: bool = False,
    *,
    batch_size: int | None = None,
    rules: str = "zf",
    activations: ActivationPolicy = "rectify",
    crop: bool | str = "auto",
) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
    """Project one unit per input row back to pixel space with the DeconvNet.

    Row ``i`` of the result is the DeconvNet projection of unit ``units[i]`` of
    ``layer`` for image ``inputs[i]``: the forward pass runs only up to ``layer``,
    the unit is seeded with its activation (all other units of the layer zeroed)
    and one reverse pass brings it to the input. Rows are processed
    ``batch_size`` at a time, one forward and one backward per chunk.

    Args:
        model: the network. It is not modified.
        layer: a module of ``model`` or its dotted name in ``model.named_modules()``.
        inputs: images, ``[N, C, H, W]`` (or any ``[N, ...]`` the model takes).
        units: LongTensor ``[N, k]`` of units, one per input row: ``(channel, y, x)``
            for a conv layer, ``(feature,)`` for a linear one (one index per layer
            dimension, ``k = layer_output.dim() - 1``).
        seed: ``"activation"`` (Zeiler & Fergus: the unit's own activation) or
            ``"one"`` (Captum's convention).
        return_intermediates: also return the reverse signal at the output of every
            submodule the forward ran, keyed by module name: the layer-by-layer
            reconstructions of Zeiler & Fergus's figures.
        batch_size: rows per forward/backward. ``None`` measures the memory autograd
            keeps per row on the first chunk and sizes the next chunks to about
            :data:`~captum_deconvviz._chunks.PROJECTION_MEMORY_BUDGET` (fastest on
            CPUs, whose caches are small).
        rules: ``"zf"`` (DeconvNet) or ``"guided"`` (Guided Backprop).
        activations: the rule for ReLU-like activations, see
            :class:`~captum_deconvviz.engine.ReverseRules`.
        crop: run each unit's forward and reverse pass on its receptive-field crop
            only (:mod:`captum_deconvviz.cropped`; exact, and cheaper in proportion to
            the unit's cone). ``"auto"`` crops when the layer allows it and it saves at
            least half the work; ``True`` insists (an error says why it cannot);
            ``False`` never crops. Ignored with ``return_intermediates``.

    Returns:
        The projections, shaped like ``inputs``; with ``return_intermediates``, a tuple
        ``(projections, {module_name: reverse_signal})``.

    Example:
        >>> import torchvision
        >>> model = torchvision.models.alexnet().eval()
        >>> images = torch.randn(2, 3, 128, 128)
        >>> units = torch.tensor([[5, 3, 4], [17, 0, 2]])  # (channel, y, x) per image
        >>> project_units(model, "features.7", images, units).shape
        torch.Size([2, 3, 128, 128])
    """
    projector, inputs = _projector(model, layer, inputs, seed, rules, activations, "inputs")
    units = check_units(units, inputs.shape[0])
    _check_rows(batch_size, "batch_size")
    check_bool(return_intermediates, "return_intermediates")
    _check_crop(crop)
    # As every entry point: eval mode with buffers untouched, and shape errors that name the argument
    # (the cropped pass runs the layers on crops, outside forward_to_layer's own translation).
    with EvalMode(projector.model), explain_shape_errors(projector.model, "inputs", inputs.shape):
        if not return_intermediates:  # the cropped pass has no module outputs to report
            projector = projector.cropping(crop, tuple(inputs.shape[1:]))
        if projector.layer_shape is not None:  # known before any pass: check every unit now
            check_within(units, projector.layer_shape)
        projections, signals = _units_in_chunks(projector, inputs, units, batch_size, return_intermediates)
    check_finite(projections, "the projections", hint=_NON_FINITE_WEIGHTS)
    return (projections, signals) if return_intermediates else projections


def _units_in_chunks(
    projector: _Projector, inputs: Tensor, units: Tensor, batch_size: int | None, capture: bool
) -> tuple[Tensor, dict[str, Tensor]]:
    """:func:`project_units`' projections chunk by chunk, and the reverse signals if ``capture``."""
    sizer = projector.sizer(batch_size)
    chunks: list[Tensor] = []
    signals: dict[str, list[Tensor]] = {}
    for start, stop in sizer.spans(len(inputs)):
        recorder: AbstractContextManager[dict[str, list[Tensor]]] = (
            capture_reverse_signals(projector.model) if capture else nullcontext({})
        )
        with recorder as chunk_signals, sizer.measure(stop - start):
            chunks.append(projector.per_row(inputs[start:stop], units[start:stop], range(start, stop)))
        for key, value in chunk_signals.items():
            signals.setdefault(key, []).extend(value)
    projections = torch.cat(chunks) if len(chunks) > 1 else chunks[0]
    return projections, {key: torch.cat(value) for key, value in signals.items() if value}


#: Record slots per batched reverse pass of :func:`project_records` (each slot costs a backward's buffers).
MAX_BATCHED_SLOTS = 8

_NON_FINITE_WEIGHTS = (
    "the seeded units were finite, so the model's weights (or a layer on the reverse path) hold NaN or Inf"
)


def _check_rows(rows: Any, argname: str) -> None:
    check_int(rows, argname, minimum=1, allow_none=True)


def _check_crop(crop: Any) -> None:
    if not (crop is True or crop is False or crop == "auto"):
        raise ValueError(f"crop must be True, False or 'auto', got {crop!r}")


@autograd_inside
def project_records(
    model: nn.Module,
    layer: str | nn.Module,
    images: Tensor,
    records: Tensor | None = None,
    seed: Seed = "activation",
    rules: str = "zf",
    activations: ActivationPolicy = "rectify",
    rows: int | None = None,
    crop: bool | str = "auto",
    *,
    units: Tensor | None = None,
) -> Tensor:
    """Project many records of few images: each image's forward pass runs once.

    A record is ``(image, channel, y, x, value)`` (what mining keeps); this function
    takes its index columns, so that many units of one image share that image's
    forward pass.

    Args:
        model: the network (not modified).
        layer: a module of ``model`` or its dotted name.
        images: the distinct images ``[U, C, H, W]``.
        records: LongTensor ``[R, 1 + k]`` of records ``(image, channel, y, x)`` for a
            conv layer (``(image, feature)`` for a linear one, or ``(image, feature, 0, 0)``
            as mining records it): a row of ``images``, then the unit; several records may
            share an image.
        seed: ``"activation"`` or ``"one"``.
        rules: ``"zf"`` or ``"guided"``.
        activations: the rule for ReLU-like activations.
        rows: projections per reverse pass (images x records per image); ``None``
            sizes it from the memory autograd keeps per image.
        crop: as in :func:`project_units`: with a cropped pass each record runs on its
            own receptive-field crop, which beats sharing full-image forward passes
            when the crop's cone is small.
        units: the former name of ``records``: still accepted for one release, with
            a ``DeprecationWarning``.

    Returns:
        ``[R, C, H, W]``: row ``r`` is the projection of unit ``records[r, 1:]`` of image
        ``records[r, 0]``. Records of one image share its forward pass; their reverse
        passes run together (``torch.autograd.grad(..., is_grads_batched=True)``).

    Example:
        >>> import torchvision
        >>> model = torchvision.models.alexnet().eval()
        >>> images = torch.randn(2, 3, 128, 128)
        >>> records = torch.tensor([[0, 5, 3, 4], [0, 17, 0, 2], [1, 5, 1, 1]])  # (image, channel, y, x)
        >>> project_records(model, "features.7", images, records).shape
        torch.Size([3, 3, 128, 128])
    """
    records = _renamed_records(records, units)
    projector, images = _projector(model, layer, images, seed, rules, activations, "images")
    records = check_records(records, len(images))
    _check_rows(rows, "rows")
    _check_crop(crop)
    result = images.new_zeros((len(records), *images.shape[1:]))
    if len(records) == 0:
        return result
    with EvalMode(projector.model), explain_shape_errors(projector.model, "images", images.shape):
        projector = projector.cropping(crop, tuple(images.shape[1:]))
        if projector.layer_shape is not None:  # each record on its own crop
            check_within(records, projector.layer_shape, "records", records=True)
            _records_on_crops(projector, images, records, rows, result)
        else:
            _records_by_image(projector, images, records, rows, result)
    check_finite(result, "the projections", hint=_NON_FINITE_WEIGHTS)
    return result


def _records_on_crops(projector: _Projector, images: Tensor, records: Tensor, rows: int | None, out: Tensor) -> None:
    """Project the records into ``out``, chunk by chunk of records, each on its crop."""
    sizer = projector.sizer(rows)
    for start, stop in sizer.spans(len(records)):
        with sizer.measure(stop - start):
            chunk_images = images[records[start:stop, 0].to(images.device)]
            out[start:stop] = projector.on_crops(chunk_images, records[start:stop, 1:])


def _records_by_image(projector: _Projector, images: Tensor, records: Tensor, rows: int | None, out: Tensor) -> None:
    """Project the records into ``out``: one forward pass per image, all its records' reverse passes batched.

    Images with the most records go first, so that each chunk's batched reverse pass
    has about as many slots as each of its images has records.
    """
    counts, slot, order = _slots(records, len(images))
    sizer = projector.sizer(rows)
    for start, stop in sizer.spans(len(order), lambda position: int(counts[order[position]])):
        chunk = order[start:stop]
        with sizer.measure(len(chunk)):
            grads = projector.by_slot(images, chunk, records, slot)
        for local, image in enumerate(chunk):
            mine = (records[:, 0] == image).nonzero().flatten()
            out[mine] = grads[slot[mine], local]


def _slots(records: Tensor, n_images: int) -> tuple[Tensor, Tensor, list[int]]:
    """Records per image, each record's slot among its image's records, and the images
    that have records, those with the most records first."""
    counts = torch.bincount(records[:, 0], minlength=n_images)
    by_image = torch.argsort(records[:, 0], stable=True)
    group_start = torch.cumsum(counts, 0) - counts
    slot = torch.empty(len(records), dtype=torch.long)
    slot[by_image] = torch.arange(len(records)) - group_start[records[by_image, 0]]
    order = [int(i) for i in torch.argsort(counts, descending=True, stable=True) if counts[i] > 0]
    return counts, slot, order


def _renamed_records(records: Tensor | None, units: Tensor | None) -> Tensor:
    """``project_records``'s fourth argument was called ``units``; it holds records."""
    if units is not None:
        warnings.warn(
            "project_records(units=...) is deprecated: the argument holds records (image, channel, y, x); "
            "pass records=... (units= goes in the next release)",
            DeprecationWarning,
            stacklevel=4,  # the caller of project_records, past autograd_inside's frame
        )
        if records is not None:
            raise TypeError("project_records() got both records and units; pass records only")
        return units
    if records is None:
        raise TypeError("project_records() missing required argument: 'records'")
    return records
