"""DeconvNet projections of chosen units: ``project_units`` and the neuron seeds.

A projection runs the forward pass only up to the unit's layer, seeds the layer's
reverse signal with the unit's activation (all other units zeroed, as Zeiler &
Fergus do), and runs one reverse pass to the input. Many units, one per input row,
share that single forward and single backward.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from typing import Any, Literal

import torch
from captum._utils.common import _verify_select_neuron
from torch import Tensor, nn

from ._forward import check_model, format_inputs, forward_to_layer, resolve_layer
from ._geometry import box_slices
from .cropped import CroppedPlan, cropped_plan
from .engine import ActivationPolicy, ReverseRules, rule_set

__all__ = ["Seed", "neuron_seed", "project_records", "project_units"]

Seed = Literal["activation", "one"]
_SEEDS = ("activation", "one")

#: :func:`project_units` picks its rows per forward/backward so that the tensors autograd
#: keeps for the reverse pass stay near this many bytes. Measured on a 2-core CPU with
#: ``benchmarks/bench_attribution.py``: VGG16 at 112x112 (10.6 MB per image) is fastest at
#: 4-8 rows, AlexNet at 160x160 (0.8 MB per image) at 16-64 rows.
PROJECTION_MEMORY_BUDGET = 48 * 2**20
#: Rows of the first chunk, which measures the memory per row, and the most rows per chunk.
FIRST_CHUNK_ROWS, MAX_CHUNK_ROWS = 4, 64
#: ``crop="auto"`` uses the cropped pass when its window work is at most this fraction
#: of the full pass's.
CROP_WHEN_COST_BELOW = 0.5

NeuronSelector = int | tuple[Any, ...] | Callable[[Tensor], Tensor] | Tensor


def _check_seed(seed: Any) -> None:
    if seed not in _SEEDS:
        raise ValueError(f"seed must be 'activation' (Zeiler & Fergus) or 'one' (Captum), got {seed!r}")


def _per_example_units(layer_out: Tensor, units: Tensor, argname: str) -> tuple[Tensor, ...]:
    """Validate a LongTensor [N, k] of per-example unit indices against ``layer_out``."""
    n, dims = layer_out.shape[0], layer_out.dim() - 1
    if units.dtype in (torch.bool,) or units.is_floating_point() or units.is_complex():
        raise TypeError(f"{argname} must be an integer tensor of unit indices, got {units.dtype}")
    if units.dim() != 2 or units.shape[0] != n or units.shape[1] != dims:
        raise ValueError(
            f"{argname} must have shape [N={n}, {dims}] (one index per layer dimension, one row per "
            f"input); got {tuple(units.shape)} for a layer output of shape {tuple(layer_out.shape)}"
        )
    units = units.to(device=layer_out.device, dtype=torch.long)
    bounds = torch.tensor(layer_out.shape[1:], device=units.device)
    bad = (units < 0) | (units >= bounds)
    if bool(bad.any()):
        row = int(bad.any(dim=1).nonzero()[0])
        raise ValueError(
            f"{argname}[{row}] = {units[row].tolist()} is out of range for a layer output of shape "
            f"{tuple(layer_out.shape[1:])} per example"
        )
    return (torch.arange(n, device=units.device), *units.unbind(1))


def neuron_seed(
    layer_out: Tensor, neuron_selector: NeuronSelector, seed: Seed = "activation", argname: str = "neuron_selector"
) -> Tensor:
    """The reverse signal that starts a projection at ``layer_out``.

    Args:
        layer_out: the layer's tensor for the batch, shape ``[N, ...]``.
        neuron_selector: anything Captum's neuron methods take (an int, a tuple of
            ints or slices, a callable from the layer tensor to one value per
            example), or a LongTensor ``[N, layer_out.dim() - 1]`` with a different
            unit for each example.
        seed: ``"activation"`` seeds each selected unit with its own activation, as
            Zeiler & Fergus do; ``"one"`` seeds it with 1, as Captum does.
        argname: the name used in error messages.

    Returns:
        A tensor shaped like ``layer_out``: zero everywhere but at the selected units.

    Example:
        >>> out = torch.arange(8.0).reshape(2, 2, 2)
        >>> neuron_seed(out, (1, 0)).tolist()
        [[[0.0, 0.0], [2.0, 0.0]], [[0.0, 0.0], [6.0, 0.0]]]
    """
    _check_seed(seed)
    activation = layer_out.detach()
    if isinstance(neuron_selector, Tensor):
        index = _per_example_units(activation, neuron_selector, argname)
        weights = torch.zeros_like(activation)
        weights[index] = 1.0
    else:
        if not (isinstance(neuron_selector, (int, tuple)) or callable(neuron_selector)):
            raise TypeError(
                f"{argname} must be an int, a tuple of ints/slices, a callable or a LongTensor [N, k]; "
                f"got {type(neuron_selector).__name__}"
            )
        probe = activation.clone().requires_grad_(True)
        with torch.enable_grad():
            try:
                selected = _verify_select_neuron((probe,), neuron_selector)
            except (IndexError, AssertionError) as err:
                raise ValueError(
                    f"{argname}={neuron_selector!r} does not fit a layer output of shape "
                    f"{tuple(activation.shape)}: {err}"
                ) from None
            if not isinstance(selected, Tensor) or selected.dim() == 0 or selected.shape[0] != activation.shape[0]:
                raise ValueError(f"{argname} must select one value per example; got {selected!r:.80}")
            if selected[0].numel() != 1:
                raise ValueError(
                    f"{argname}={neuron_selector!r} selects {selected[0].numel()} values per example from a "
                    f"layer output of shape {tuple(activation.shape)}; give one index per layer dimension "
                    "(slices are summed)"
                )
            if not selected.requires_grad:
                raise ValueError(f"{argname} returned a value that does not depend on the layer output")
            (weights,) = torch.autograd.grad(selected.sum(), probe)
    return weights * activation if seed == "activation" else weights


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
        units: integer tensor ``[N, k]`` of unit indices into the layer's output
            per example, ``k = layer_output.dim() - 1``: ``(channel, y, x)`` for a
            conv layer, ``(feature,)`` for a linear one.
        seed: ``"activation"`` (Zeiler & Fergus: the unit's own activation) or
            ``"one"`` (Captum's convention).
        return_intermediates: also return the reverse signal at the output of every
            submodule the forward ran, keyed by module name: the layer-by-layer
            reconstructions of Zeiler & Fergus's figures.
        batch_size: rows per forward/backward. ``None`` measures the memory autograd
            keeps per row on the first chunk and sizes the next chunks to about
            :data:`PROJECTION_MEMORY_BUDGET` (fastest on CPUs, whose caches are small).
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
    model = check_model(model)
    name, module = resolve_layer(model, layer)
    (inputs,) = format_inputs(inputs, model)
    _check_seed(seed)
    rules = rule_set(rules, projecting=True).name
    if not isinstance(units, Tensor) or units.is_floating_point() or units.is_complex() or units.dtype == torch.bool:
        kind = units.dtype if isinstance(units, Tensor) else type(units).__name__
        raise TypeError(f"units must be an integer tensor [N, k], got {kind}")
    if units.dim() != 2 or units.shape[0] != inputs.shape[0]:
        raise ValueError(
            f"units must have shape [N, k] with N = inputs.shape[0] = {inputs.shape[0]}; got {tuple(units.shape)}"
        )
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")

    plan = None if return_intermediates else _choose_plan(model, name, tuple(inputs.shape[1:]), crop)
    chunks: list[Tensor] = []
    signals: dict[str, list[Tensor]] = {}
    start, rows = 0, batch_size or FIRST_CHUNK_ROWS
    while start < inputs.shape[0]:
        stop = start + rows
        with ExitStack() as stack:
            chunk_signals = stack.enter_context(capture_reverse_signals(model)) if return_intermediates else {}
            meter = stack.enter_context(_SavedBytes(model)) if batch_size is None and start == 0 else None
            if plan is not None:
                chunks.append(_project_cropped(plan, inputs[start:stop], units[start:stop], seed, rules, activations))
            else:
                chunks.append(
                    _project_chunk(model, module, name, inputs[start:stop], units[start:stop], seed, rules, activations)
                )
        for key, value in chunk_signals.items():
            signals.setdefault(key, []).extend(value)
        if meter is not None:
            per_row = meter.bytes / len(chunks[0])
            rows = int(min(MAX_CHUNK_ROWS, max(1, PROJECTION_MEMORY_BUDGET // max(per_row, 1))))
        start = stop
    projections = torch.cat(chunks) if len(chunks) > 1 else chunks[0]
    if return_intermediates:
        return projections, {key: torch.cat(value) for key, value in signals.items() if value}
    return projections


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


def _project_cropped(
    plan: CroppedPlan, images: Tensor, units: Tensor, seed: Seed, rules: str, activations: ActivationPolicy
) -> Tensor:
    """Project on crops, then paste each crop back at its box in a full-size zero image."""
    limits = torch.tensor((plan.channels, *plan.output_size))
    if units.shape[1] != 1 + plan.n:
        raise ValueError(
            f"units must have shape [N={units.shape[0]}, {1 + plan.n}] (one index per layer dimension, one row per "
            f"input); got {tuple(units.shape)} for a layer output of shape (N, {', '.join(map(str, limits.tolist()))})"
        )
    if bool(((units < 0) | (units >= limits)).any()):
        row = int(((units < 0) | (units >= limits)).any(dim=1).nonzero()[0])
        raise ValueError(
            f"units[{row}] = {units[row].tolist()} is out of range for a layer output of shape "
            f"{tuple(limits.tolist())} per example"
        )
    projection, starts = plan.project(images, units.to(torch.long), seed, rules, activations)
    out = torch.zeros_like(images)
    for row in range(images.shape[0]):
        inside, local = box_slices(starts[row].tolist(), projection.shape[2:], images.shape[2:])
        # Indices built apart from the subscript: mypy's parser reads a starred tuple inside [] as 3.11 syntax.
        to_index: tuple[int | slice, ...] = (row, slice(None), *inside)
        from_index: tuple[int | slice, ...] = (row, slice(None), *local)
        out[to_index] = projection[from_index]
    return out


class _SavedBytes:
    """Counts the bytes autograd saves for the backward, the model's own tensors excepted."""

    def __init__(self, model: nn.Module) -> None:
        self.bytes = 0
        self._own = {t.data_ptr() for t in (*model.parameters(), *model.buffers())}
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _pack(self, tensor: Tensor) -> Tensor:
        if tensor.data_ptr() not in self._own:
            self.bytes += tensor.numel() * tensor.element_size()
        return tensor

    def __enter__(self) -> _SavedBytes:
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._hooks.__exit__(*exc)


def _project_chunk(
    model: nn.Module,
    module: nn.Module,
    name: str,
    images: Tensor,
    units: Tensor,
    seed: Seed,
    rules: str,
    activations: ActivationPolicy,
) -> Tensor:
    x = images.detach().requires_grad_(True)
    with torch.enable_grad():
        with ReverseRules(rules, activations=activations):
            layer_out = forward_to_layer(model, module, (x,), layer_name=name)
        grad_outputs = neuron_seed(layer_out, units, seed, argname="units")
        if not layer_out.requires_grad:
            return torch.zeros_like(images)
        (projection,) = torch.autograd.grad(layer_out, x, grad_outputs, allow_unused=True)
    return torch.zeros_like(images) if projection is None else projection


def project_records(
    model: nn.Module,
    layer: str | nn.Module,
    images: Tensor,
    units: Tensor,
    seed: Seed = "activation",
    rules: str = "zf",
    activations: ActivationPolicy = "rectify",
    rows: int | None = None,
    crop: bool | str = "auto",
) -> Tensor:
    """Project many units of few images: each image's forward pass runs once.

    Args:
        model: the network (not modified).
        layer: a module of ``model`` or its dotted name.
        images: the distinct images ``[U, C, H, W]``.
        units: ``[R, 1 + k]`` integer rows ``(image row, *unit index)``, e.g.
            ``(u, channel, y, x)``; several rows may share an image.
        seed: ``"activation"`` or ``"one"``.
        rules: ``"zf"`` or ``"guided"``.
        activations: the rule for ReLU-like activations.
        rows: projections per reverse pass (images x records per image); ``None``
            sizes it from the memory autograd keeps per image.
        crop: as in :func:`project_units`: with a cropped pass each record runs on its
            own receptive-field crop, which beats sharing full-image forward passes
            when the crop's cone is small.

    Returns:
        ``[R, C, H, W]``: row ``r`` is the projection of unit ``units[r, 1:]`` of image
        ``units[r, 0]``. Records of one image share its forward pass; their reverse
        passes run together (``torch.autograd.grad(..., is_grads_batched=True)``).
    """
    model = check_model(model)
    name, module = resolve_layer(model, layer)
    (images,) = format_inputs(images, model)
    _check_seed(seed)
    if not isinstance(units, Tensor) or units.dim() != 2 or units.shape[1] < 2 or units.is_floating_point():
        raise ValueError("units must be an integer tensor [R, 1 + k] of (image row, *unit index)")
    units = units.long().cpu()
    if len(units) and (int(units[:, 0].min()) < 0 or int(units[:, 0].max()) >= len(images)):
        raise ValueError(f"units[:, 0] must index the {len(images)} images")
    result = torch.zeros((len(units), *images.shape[1:]), dtype=images.dtype, device=images.device)
    if len(units) == 0:
        return result
    plan = _choose_plan(model, name, tuple(images.shape[1:]), crop)
    if plan is not None:
        start, chunk = 0, rows or FIRST_CHUNK_ROWS
        while start < len(units):
            stop = start + chunk
            meter = _SavedBytes(model) if rows is None and start == 0 else None
            with meter if meter is not None else nullcontext():
                rows_images = images[units[start:stop, 0].to(images.device)]
                result[start:stop] = _project_cropped(
                    plan, rows_images, units[start:stop, 1:], seed, rules, activations
                )
            if meter is not None:
                per_row = meter.bytes / min(chunk, len(units))
                chunk = int(min(MAX_CHUNK_ROWS * 4, max(1, PROJECTION_MEMORY_BUDGET // max(per_row, 1))))
            start = stop
        return result
    # Each record's slot among the records of its image; images with most records first.
    counts = torch.bincount(units[:, 0], minlength=len(images))
    by_image = torch.argsort(units[:, 0], stable=True)
    group_start = torch.cumsum(counts, 0) - counts
    slot = torch.empty(len(units), dtype=torch.long)
    slot[by_image] = torch.arange(len(units)) - group_start[units[by_image, 0]]
    image_order = [int(i) for i in torch.argsort(counts, descending=True, stable=True) if counts[i] > 0]

    budget = rows
    position = 0
    meter_rows = FIRST_CHUNK_ROWS
    while position < len(image_order):
        per_image = int(counts[image_order[position]])
        take = max(1, (budget if budget is not None else meter_rows * per_image) // per_image)
        chunk_images = image_order[position : position + take]
        meter = _SavedBytes(model) if budget is None else None
        with meter if meter is not None else nullcontext():
            grads = _project_slots(model, module, name, images, chunk_images, units, slot, seed, rules, activations)
        if meter is not None:
            per_row = meter.bytes / len(chunk_images)
            budget = int(min(MAX_CHUNK_ROWS, max(1, PROJECTION_MEMORY_BUDGET // max(per_row, 1))))
        for local, image in enumerate(chunk_images):
            records = (units[:, 0] == image).nonzero().flatten()
            result[records] = grads[slot[records], local]
        position += len(chunk_images)
    return result


def _project_slots(
    model: nn.Module,
    module: nn.Module,
    name: str,
    images: Tensor,
    chunk: list[int],
    units: Tensor,
    slot: Tensor,
    seed: Seed,
    rules: str,
    activations: ActivationPolicy,
) -> Tensor:
    """Projections ``[M, len(chunk), C, H, W]``: slot m of every image in the chunk."""
    x = images[chunk].detach().requires_grad_(True)
    local = {image: i for i, image in enumerate(chunk)}
    rows = torch.cat([(units[:, 0] == image).nonzero().flatten() for image in chunk])
    slots = int(slot[rows].max()) + 1
    with torch.enable_grad():
        with ReverseRules(rules, activations=activations):
            layer_out = forward_to_layer(model, module, (x,), layer_name=name)
        activation = layer_out.detach()
        grad = torch.zeros((slots, *layer_out.shape), dtype=layer_out.dtype, device=layer_out.device)
        where = units[rows, 1:]
        if where.shape[1] != layer_out.dim() - 1:
            raise ValueError(
                f"units must give {layer_out.dim() - 1} indices after the image row for layer {name!r} "
                f"(output {tuple(layer_out.shape)}), got {where.shape[1]}"
            )
        bounds = torch.tensor(layer_out.shape[1:])
        if bool(((where < 0) | (where >= bounds)).any()):
            raise ValueError(f"units hold indices out of range for layer {name!r} with output {tuple(layer_out.shape)}")
        image_rows = torch.tensor([local[int(i)] for i in units[rows, 0]])
        index = (slot[rows], image_rows, *where.t())
        seeded = (image_rows, *where.t())  # apart from the subscript, as in _project_cropped
        grad[index] = activation[seeded] if seed == "activation" else 1.0
        if not layer_out.requires_grad:
            return torch.zeros((slots, *x.shape), dtype=x.dtype, device=x.device)
        if slots == 1:
            (projection,) = torch.autograd.grad(layer_out, x, grad[0], allow_unused=True)
            projection = None if projection is None else projection.unsqueeze(0)
        else:
            (projection,) = torch.autograd.grad(layer_out, x, grad, allow_unused=True, is_grads_batched=True)
    return torch.zeros((slots, *x.shape), dtype=x.dtype, device=x.device) if projection is None else projection
