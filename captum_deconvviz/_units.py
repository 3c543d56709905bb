"""Units, records and seeds: the projection vocabulary, checked and placed in one place.

- A **unit** is one value of a layer's output for one example, given by one index per
  layer dimension: ``(channel, y, x)`` for a conv layer, ``(feature,)`` for a linear one.
  ``project_units`` and the neuron classes take a LongTensor ``[N, k]`` of units, one per
  input row.
- A **record** is a unit of a given image with its activation: ``(image, channel, y, x,
  value)``, as mining returns them. ``project_records`` takes the index columns only,
  a LongTensor ``[R, 1 + k]`` of ``(image, channel, y, x)`` whose first column indexes
  the images it is given.
- A **seed** is what the reverse pass starts from at a unit, every other unit of the
  layer zeroed: ``"activation"``, the unit's own activation (Zeiler & Fergus), or
  ``"one"`` (Captum's neuron methods). :func:`reverse_from_seeds` runs the reverse pass
  from the seeds to the inputs.

Every check here raises an error that names the argument and the shape it expects.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from captum._utils.common import _verify_select_neuron
from torch import Tensor

__all__ = [
    "SEEDS",
    "NeuronSelector",
    "Seed",
    "apply_seed",
    "check_index_tensor",
    "check_records",
    "check_seed",
    "check_units",
    "check_within",
    "neuron_seed",
    "place_seeds",
    "reverse_from_seeds",
    "seed_units",
]

Seed = Literal["activation", "one"]
SEEDS: tuple[Seed, ...] = ("activation", "one")

#: What a unit row holds, for error messages.
UNIT_FORM = "(channel, y, x) for a conv layer"
#: What a record row holds, for error messages.
RECORD_FORM = "(image, channel, y, x) for a conv layer"


def check_seed(seed: Any) -> None:
    """Raise unless ``seed`` is ``"activation"`` or ``"one"``.

    Example:
        >>> check_seed("one")
    """
    if seed not in SEEDS:
        raise ValueError(f"seed must be 'activation' (Zeiler & Fergus) or 'one' (Captum), got {seed!r}")


def check_index_tensor(index: Any, argname: str, form: str) -> Tensor:
    """Return ``index`` if it is a tensor of integers, else raise a ``TypeError``.

    Args:
        index: the argument as given.
        argname: its name, for the message.
        form: the shape and meaning it should have, e.g. ``"[N, k] of units"``.

    Returns:
        ``index`` itself.

    Example:
        >>> check_index_tensor(torch.tensor([[0, 1, 2]]), "units", "[N, k]").shape
        torch.Size([1, 3])
    """
    if not isinstance(index, Tensor) or index.is_floating_point() or index.is_complex() or index.dtype == torch.bool:
        kind = index.dtype if isinstance(index, Tensor) else type(index).__name__
        raise TypeError(f"{argname} must be an integer tensor {form}, got {kind}")
    return index


def check_units(units: Any, n: int, argname: str = "units") -> Tensor:
    """Check a LongTensor ``[N, k]`` of units, one per input row; return it.

    Args:
        units: the argument as given.
        n: the number of input rows ``N``.
        argname: its name, for messages.

    Returns:
        ``units``, unchanged. Whether ``k`` and each index fit the layer is
        :func:`check_within`'s question, once the layer's shape is known.

    Example:
        >>> check_units(torch.tensor([[5, 3, 4], [17, 0, 2]]), n=2).tolist()
        [[5, 3, 4], [17, 0, 2]]
    """
    check_index_tensor(units, argname, f"[N, k] of units {UNIT_FORM}")
    if units.dim() != 2 or units.shape[0] != n:
        raise ValueError(
            f"{argname} must have shape [N, k] with N = inputs.shape[0] = {n} (one unit per input row: "
            f"{UNIT_FORM}); got {tuple(units.shape)}"
        )
    return units


def check_records(records: Any, n_images: int, argname: str = "records") -> Tensor:
    """Check a LongTensor ``[R, 1 + k]`` of records ``(image, *unit)``; return it as int64 on the CPU.

    Args:
        records: the argument as given.
        n_images: how many images the first column may index.
        argname: its name, for messages.

    Returns:
        The records as an int64 CPU tensor (they index on the host).

    Example:
        >>> check_records(torch.tensor([[1, 5, 3, 4], [0, 17, 0, 2]]), n_images=2).dtype
        torch.int64
    """
    check_index_tensor(records, argname, f"[R, 1 + k] of records {RECORD_FORM}")
    if records.dim() != 2 or records.shape[1] < 2:
        raise ValueError(
            f"{argname} must have shape [R, 1 + k] (one record per row: {RECORD_FORM}); got {tuple(records.shape)}"
        )
    records = records.long().cpu()
    if len(records) and (int(records[:, 0].min()) < 0 or int(records[:, 0].max()) >= n_images):
        raise ValueError(f"{argname}[:, 0] must index the {n_images} images")
    return records


def check_within(
    index: Tensor,
    layer_shape: Sequence[int],
    argname: str = "units",
    rows: Sequence[int] | None = None,
    records: bool = False,
) -> None:
    """Check that every row of ``index`` names a unit of a layer output ``[N, *layer_shape]``.

    Args:
        index: integer rows: units ``[N, k]`` with one index per layer dimension, or,
            with ``records``, records ``[R, 1 + k]`` whose first column (the image,
            checked by :func:`check_records`) is passed over.
        layer_shape: the layer output's shape per example, e.g. ``(C, H, W)``.
        argname: the argument's name, for messages.
        rows: the argument's row number of each row of ``index`` (default
            ``0, 1, ...``), so that a chunk's error names the row the caller gave.
        records: whether ``index`` holds records rather than units.

    Example:
        >>> check_within(torch.tensor([[2, 0, 1]]), (4, 6, 6))
        >>> check_within(torch.tensor([[0, 2, 0, 6]]), (4, 6, 6), "records", records=True)
        Traceback (most recent call last):
        ValueError: records[0] = [0, 2, 0, 6] is out of range for a layer output of shape (4, 6, 6) per example
    """
    lead, dims = int(records), len(layer_shape)
    if index.dim() != 2 or index.shape[1] != lead + dims:
        shape, form = (
            (f"R={index.shape[0]}, {lead + dims}", RECORD_FORM)
            if records
            else (f"N={index.shape[0]}, {dims}", UNIT_FORM)
        )
        raise ValueError(
            f"{argname} must have shape [{shape}] ({'the image, then ' if records else ''}one index per layer "
            f"dimension: {form}; one row per {'record' if records else 'input'}); got {tuple(index.shape)} for a "
            f"layer output of shape (N, {', '.join(map(str, layer_shape))})"
        )
    bounds = torch.tensor(tuple(layer_shape), device=index.device)
    unit = index[:, lead:]
    bad = ((unit < 0) | (unit >= bounds)).any(dim=1)
    if bool(bad.any()):
        local = int(bad.nonzero()[0])
        row = local if rows is None else int(rows[local])
        raise ValueError(
            f"{argname}[{row}] = {index[local].tolist()} is out of range for a layer output of shape "
            f"{tuple(layer_shape)} per example"
        )


NeuronSelector = int | tuple[Any, ...] | Callable[[Tensor], Tensor] | Tensor


def neuron_seed(
    layer_out: Tensor, neuron_selector: NeuronSelector, seed: Seed = "activation", argname: str = "neuron_selector"
) -> Tensor:
    """The reverse signal that starts a projection at ``layer_out``.

    Args:
        layer_out: the layer's tensor for the batch, shape ``[N, ...]``.
        neuron_selector: anything Captum's neuron methods take (an int, a tuple of
            ints or slices, a callable from the layer tensor to one value per
            example), or a LongTensor ``[N, k]`` of units, one per example:
            ``(channel, y, x)`` rows for a conv layer, ``k = layer_out.dim() - 1``.
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
    check_seed(seed)
    activation = layer_out.detach()
    if isinstance(neuron_selector, Tensor):
        units = check_units(neuron_selector, activation.shape[0], argname)
        check_within(units, activation.shape[1:], argname)
        return seed_units(activation, units, seed)
    return apply_seed(_selector_weights(activation, neuron_selector, argname), activation, seed)


def _selector_weights(activation: Tensor, neuron_selector: NeuronSelector, argname: str) -> Tensor:
    """Captum's neuron selection as weights on the layer output: 1 per selected unit, summed for slices."""
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
                f"{argname}={neuron_selector!r} does not fit a layer output of shape {tuple(activation.shape)}: {err}"
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
    return weights


def seed_units(layer_out: Tensor, units: Tensor, seed: Seed) -> Tensor:
    """The reverse signal that starts at unit ``units[i]`` of example ``i``, zero elsewhere.

    Args:
        layer_out: the layer's output ``[N, ...]``.
        units: checked units ``[N, layer_out.dim() - 1]`` (:func:`check_within`).
        seed: ``"activation"`` or ``"one"``.

    Returns:
        A tensor shaped like ``layer_out``.

    Example:
        >>> seed_units(torch.arange(8.0).reshape(2, 4), torch.tensor([[1], [3]]), "activation").tolist()
        [[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 7.0]]
    """
    activation = layer_out.detach()
    units = units.to(device=activation.device, dtype=torch.long)
    weights = torch.zeros_like(activation)
    index = (torch.arange(len(units), device=units.device), *units.unbind(1))  # apart from [] for mypy's 3.10 parser
    weights[index] = 1.0
    return apply_seed(weights, activation, seed)


def apply_seed(weights: Tensor, activation: Tensor, seed: Seed) -> Tensor:
    """Seed the units that ``weights`` selects: times their activation, or as they are.

    Example:
        >>> apply_seed(torch.tensor([0.0, 1.0]), torch.tensor([3.0, 5.0]), "activation").tolist()
        [0.0, 5.0]
    """
    return weights * activation if seed == "activation" else weights


def place_seeds(grad: Tensor, into: tuple[Tensor, ...], activation: Tensor, at: tuple[Tensor, ...], seed: Seed) -> None:
    """Write seeds into ``grad[into]``: the activations ``activation[at]``, or 1.

    Example:
        >>> grad, act = torch.zeros(2, 3), torch.arange(6.0).reshape(2, 3)
        >>> at = (torch.tensor([0, 1]), torch.tensor([2, 0]))
        >>> place_seeds(grad, at, act, at, "activation")
        >>> grad.tolist()
        [[0.0, 0.0, 2.0], [3.0, 0.0, 0.0]]
    """
    grad[into] = activation[at] if seed == "activation" else 1.0


def reverse_from_seeds(
    outputs: Tensor, inputs: tuple[Tensor, ...], seeds: Tensor, batched: bool = False, retain_graph: bool = False
) -> tuple[Tensor, ...]:
    """The reverse pass from ``seeds`` at ``outputs`` back to each of ``inputs``.

    An input that no path connects to ``outputs`` (or all of them, when ``outputs`` does
    not require grad, e.g. a layer before any parameter) gets zeros: no signal reaches it.

    Args:
        outputs: the tensor the seeds start from, computed from ``inputs``.
        inputs: tensors that require grad.
        seeds: shaped like ``outputs``; with ``batched``, ``[M, *outputs.shape]``, one
            reverse pass per leading index (``torch.autograd.grad(is_grads_batched=True)``).
        batched: whether ``seeds`` has the leading dimension ``M``.
        retain_graph: keep the forward's graph for another reverse pass from ``outputs``.

    Returns:
        One tensor per input, shaped like it (with ``batched``, ``[M, *input.shape]``).

    Example:
        >>> x = torch.ones(2, requires_grad=True)
        >>> reverse_from_seeds(3 * x, (x,), torch.tensor([1.0, 2.0]))[0].tolist()
        [3.0, 6.0]
    """

    def zeros(x: Tensor) -> Tensor:
        return x.new_zeros((seeds.shape[0], *x.shape)) if batched else torch.zeros_like(x)

    if not outputs.requires_grad:
        return tuple(zeros(x) for x in inputs)
    grads = torch.autograd.grad(
        outputs, inputs, seeds, allow_unused=True, is_grads_batched=batched, retain_graph=retain_graph
    )
    return tuple(zeros(x) if g is None else g for x, g in zip(inputs, grads, strict=True))
