"""Shared plumbing: argument checks, layer lookup and a forward pass stopped at a layer.

Every public entry point validates its arguments here so that bad input gets a
clear error that names the argument, before anything touches the model.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import torch
from captum._utils.common import _run_forward, _select_targets
from captum._utils.typing import TargetType
from torch import Tensor, nn

from ._checks import show
from ._compiled import VIEW_OF, eager_compiled, is_compile_wrapper, unwrap_compiled
from ._guard import EvalMode, check_dense, explain_call_errors, explain_shape_errors

__all__ = [
    "EvalMode",
    "check_model",
    "check_target",
    "format_inputs",
    "forward_to_layer",
    "model_device",
    "on_model_device",
    "resolve_layer",
]


class StopForward(BaseException):
    """Raised from a hook to end the forward pass once the layer has run.

    A BaseException, so that ``except Exception`` blocks inside user models let it pass.
    """


_StopForward = StopForward  # the name other modules used before


def example_input(model: nn.Module, input_shape: tuple[int, ...], batch: int = 1) -> Tensor:
    """Zeros of ``(batch, *input_shape)`` in the model's floating dtype, on its device."""
    param = next((p for p in model.parameters() if p.is_floating_point()), None)
    dtype = param.dtype if param is not None else torch.float32
    device = param.device if param is not None else torch.device("cpu")
    return torch.zeros((batch, *input_shape), dtype=dtype, device=device)


def meta_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose parameters and buffers live on the ``meta`` device.

    Running it computes every shape and no value: the receptive-field analysis needs only
    shapes, so a ResNet-50 is analysed in milliseconds. Models whose forward reads values
    (data-dependent control flow) fail on it; callers then run the real model.
    """
    memo: dict[int, Any] = {}
    for tensor in (*model.parameters(), *model.buffers()):
        meta = torch.empty(tensor.shape, dtype=tensor.dtype, device="meta")
        memo[id(tensor)] = nn.Parameter(meta, requires_grad=False) if isinstance(tensor, nn.Parameter) else meta
    copied = copy.deepcopy(model, memo)
    return copied


def split_layer_spec(spec: str) -> tuple[str, tuple[int | str, ...]]:
    """``"stages.1[0]"`` -> ``("stages.1", (0,))``: a module name and a pick into its output.

    Picks are integers (tuple and list outputs) or keys (dict outputs), possibly nested:
    ``"head[0]['logits']"``.
    """
    name, picks = spec, list[int | str]()
    while name.endswith("]") and "[" in name:
        cut = name.rindex("[")
        raw = name[cut + 1 : -1].strip()
        if raw.lstrip("-").isdigit():
            picks.append(int(raw))
        else:
            picks.append(raw.strip("'\""))
        name = name[:cut]
    return name, tuple(reversed(picks))


def pick_output(value: Any, picks: tuple[int | str, ...], layer: str) -> Any:
    """Apply a layer spec's picks to a module's output, with errors that list the choices."""
    for depth, key in enumerate(picks):
        where = layer + "".join(f"[{p!r}]" for p in picks[:depth])
        if isinstance(value, (tuple, list)):
            if not isinstance(key, int) or not -len(value) <= key < len(value):
                raise ValueError(
                    f"layer={where!r} outputs a {type(value).__name__} of {len(value)} items; pick one with "
                    f"an index from 0 to {len(value) - 1}, e.g. {where + '[0]'!r}"
                )
            value = value[key]
        elif isinstance(value, dict):
            if key not in value:
                raise ValueError(f"layer={where!r} outputs a dict with keys {list(value)}; {key!r} is not one")
            value = value[key]
        else:
            raise ValueError(f"layer={where!r} outputs a {type(value).__name__}, which cannot be indexed by {key!r}")
    return value


def describe_choices(value: Any, layer: str) -> str:
    """How to pick a tensor from a container output, for error messages."""
    if isinstance(value, (tuple, list)):
        return ", ".join(f"{layer}[{i}]" for i in range(len(value)))
    if isinstance(value, dict):
        return ", ".join(f"{layer}[{k!r}]" for k in value)
    return layer


def check_model(model: Any, argname: str = "model", needs_values: bool = True) -> nn.Module:
    """Return ``model`` if it is an ``nn.Module`` the engine can see, else raise.

    Refused: anything not a module; ``DataParallel`` wrappers; TorchScript modules (the
    engine routes the ops of the Python ``forward``, which a scripted module no longer
    runs); and, with ``needs_values``, models whose parameters or buffers are on the
    ``meta`` device (shapes only: the receptive-field analysis takes them, nothing else
    can compute on them). ``torch.compile`` wrappers are unwrapped.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"{argname} must be a torch.nn.Module, got {type(model).__name__}")
    for name, module in model.named_modules():
        if isinstance(module, torch.jit.ScriptModule):
            what = argname if not name else f"{argname}.{name}"
            raise TypeError(
                f"{what} is a TorchScript module: the DeconvNet engine needs the eager module (its Python "
                "forward); pass the nn.Module you scripted"
            )
    model = unwrap_compiled(model)
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        raise TypeError(
            f"{argname} is a {type(model).__name__}: its replicas run in other threads, where the "
            f"DeconvNet engine cannot route their ops. Pass {argname}.module instead."
        )
    if needs_values:
        for name, tensor in (*model.named_parameters(), *model.named_buffers()):
            if tensor.is_meta:
                raise ValueError(
                    f"{argname} holds no values (meta device): {name} is on meta, which keeps shapes only; "
                    f"load its weights first, e.g. {argname}.to_empty(device='cpu') then load_state_dict"
                )
    return model


def model_device(model: nn.Module) -> torch.device | None:
    """The device of the model's first parameter or buffer, or None if it has neither."""
    for param in model.parameters():
        return param.device
    for buffer in model.buffers():
        return buffer.device
    return None


def on_model_device(tensor: Tensor, model: nn.Module) -> Tensor:
    """``tensor`` on the model's device (itself if it is there, or the model has no tensors).

    For the images the package reads from a dataset for a model it was given: datasets
    yield CPU tensors, and a model on a GPU must still be served. What a user passes in
    themselves is checked, not moved (:func:`format_inputs`), as Captum does.
    """
    device = model_device(model)
    return tensor if device is None else tensor.to(device, non_blocking=True)


def model_dtype(model: nn.Module) -> torch.dtype | None:
    """The dtype of the model's first floating-point parameter or buffer, or None."""
    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor.is_floating_point():
            return tensor.dtype
    return None


def check_dtype(tensor: Tensor, model: nn.Module | None, where: str) -> None:
    """Refuse ``tensor`` unless it is floating point and matches the model's dtype."""
    if not tensor.is_floating_point():
        raise TypeError(
            f"{where} must be a floating-point tensor (images normalized as the model expects), got "
            f"{tensor.dtype}; convert it, e.g. with .float()"
        )
    dtype = model_dtype(model) if model is not None else None
    if dtype is not None and tensor.dtype != dtype:
        name = str(dtype).removeprefix("torch.")
        raise TypeError(
            f"{where}: dtype {str(tensor.dtype).removeprefix('torch.')} does not match the model's parameters "
            f"({name}); "
            f"convert one of them: the images with .to(torch.{name}), or the model with model.to({tensor.dtype})"
        )


def resolve_layer(model: nn.Module, layer: Any, argname: str = "layer") -> tuple[str, nn.Module]:
    """Find ``layer`` (a module of ``model`` or its dotted name) and return ``(name, module)``.

    A name may end with picks into a container output, ``"stages.1[0]"``; the returned
    name keeps them (see :func:`split_layer_spec`), the module is ``stages.1``.
    """
    model = unwrap_compiled(model)
    if isinstance(layer, str):
        modules = dict(model.named_modules())
        base, _picks = split_layer_spec(layer)
        base = ".".join(part for part in base.split(".") if part != "_orig_mod")  # names of the uncompiled model
        if base in modules:
            return base + layer[len(split_layer_spec(layer)[0]) :], modules[base]
        close = difflib.get_close_matches(base, [n for n in modules if n], n=5)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"{argname}={layer!r} is not a module of the model{hint}")
    if isinstance(layer, nn.Module):
        while is_compile_wrapper(layer) and isinstance(getattr(layer, "_orig_mod", None), nn.Module):
            layer = layer._orig_mod
        for name, module in model.named_modules():
            copied = module.__dict__.get(VIEW_OF)
            if module is layer or (copied is not None and copied() is layer):
                return name, module
        raise ValueError(
            f"{argname} is a {type(layer).__name__} that is not a submodule of the model; pass one of "
            "model.named_modules() or its dotted name"
        )
    raise TypeError(f"{argname} must be an nn.Module of the model or its dotted name, got {type(layer).__name__}")


def format_inputs(inputs: Any, model: nn.Module | None = None, argname: str = "inputs") -> tuple[Tensor, ...]:
    """Check ``inputs`` (a tensor or tuple of tensors) and return them as a tuple."""
    items = inputs if isinstance(inputs, tuple) else (inputs,)
    if len(items) == 0:
        raise ValueError(f"{argname} is an empty tuple; pass at least one tensor")
    device = model_device(model) if model is not None else None
    batch = None
    for i, item in enumerate(items):
        where = argname if len(items) == 1 and not isinstance(inputs, tuple) else f"{argname}[{i}]"
        if not isinstance(item, Tensor):
            raise TypeError(f"{where} must be a torch.Tensor, got {type(item).__name__}")
        if item.layout != torch.strided:
            check_dense(item, where)
        if not item.is_floating_point():
            # Complex too: a ReLU, a max-pool and its switches have no complex meaning.
            real = " (real: ReLU and max-pooling are undefined on complex numbers)" if item.is_complex() else ""
            raise TypeError(
                f"{where} must be a floating-point tensor to take gradients{real}, got {item.dtype}; "
                "convert it, e.g. with .float()"
            )
        if model is not None:
            check_dtype(item, model, where)
        if item.dim() == 0:
            raise ValueError(f"{where} must have a batch dimension, got a scalar")
        if item.shape[0] == 0:
            raise ValueError(f"{where} has an empty batch (shape {tuple(item.shape)})")
        if batch is None:
            batch = item.shape[0]
        elif item.shape[0] != batch:
            raise ValueError(f"{where} has batch size {item.shape[0]}, but {argname}[0] has {batch}")
        if device is not None and item.device != device:
            raise ValueError(
                f"{where} is on {item.device} but the model is on {device}; move one of them, "
                f"e.g. {argname}.to({str(device)!r})"
            )
        check_dense(item, where)  # on meta with a model that is too, or with no model given
    return tuple(items)


def check_target(output: Tensor, target: TargetType, argname: str = "target") -> Tensor:
    """Select ``target`` from the model ``output`` as Captum does, with clear errors."""
    if not isinstance(output, Tensor):
        raise TypeError(f"the model must return a Tensor to take a {argname}, got {type(output).__name__}")
    per_example = output[0].numel() if output.dim() > 0 and output.shape[0] > 0 else output.numel()
    if target is None:
        if per_example != 1:
            raise ValueError(
                f"{argname} is required: the model returns {per_example} values per example "
                f"(output shape {tuple(output.shape)}); pass e.g. {argname}=class_index"
            )
        return output
    if isinstance(target, int) and output.dim() == 2 and not -output.shape[1] <= target < output.shape[1]:
        raise ValueError(f"{argname}={target} is out of range for a model output with {output.shape[1]} classes")
    try:
        selected = _select_targets(output, target)
    except (IndexError, AssertionError, RuntimeError, TypeError) as err:
        raise ValueError(
            f"{argname}={show(target)} does not fit the model output of shape {tuple(output.shape)}: "
            + " ".join(str(err).split())
        ) from None
    if selected.dim() > 1 and selected[0].numel() != 1:
        raise ValueError(
            f"{argname}={show(target)} selects {selected[0].numel()} values per example from output shape "
            f"{tuple(output.shape)}; it must select one"
        )
    return selected.reshape(selected.shape[0]) if selected.dim() > 1 else selected


def run_forward(
    model: nn.Module, inputs: tuple[Tensor, ...], additional_forward_args: Any = None, argname: str = "inputs"
) -> Any:
    """Run the model as Captum does (inputs first, then the additional arguments).

    A torch shape error inside becomes a ``ValueError`` naming ``argname`` (:func:`explain_shape_errors`);
    a forward that cannot take these arguments, a ``TypeError`` naming ``additional_forward_args``
    (:func:`explain_call_errors`).
    """
    shape = inputs[0].shape if inputs else ()
    with (
        explain_call_errors(argname, additional_forward_args),
        explain_shape_errors(model, argname, shape),
        eager_compiled(),
    ):
        return _run_forward(model, inputs, None, additional_forward_args)


@contextmanager
def _layer_capture(module: nn.Module, to_input: bool, stop: bool, layer_name: str = "layer") -> Iterator[list[Tensor]]:
    captured: list[Tensor] = []
    base, picks = split_layer_spec(layer_name)

    def grab(value: Any) -> None:
        if picks and not to_input:
            value = pick_output(value, picks, base)
        elif (not to_input and isinstance(value, (list, dict))) or (
            not to_input and isinstance(value, tuple) and len(value) != 1
        ):
            raise ValueError(
                f"layer {layer_name!r} outputs a {type(value).__name__}; pick one tensor of it: "
                f"{describe_choices(value, layer_name)}"
            )
        if isinstance(value, tuple):
            if len(value) != 1 or not isinstance(value[0], Tensor):
                raise ValueError(
                    f"the layer's {'input' if to_input else 'output'} is a tuple of {len(value)} items; "
                    "choose a layer with a single tensor"
                )
            value = value[0]
        if not isinstance(value, Tensor):
            raise ValueError(
                f"the layer's {'input' if to_input else 'output'} is a {type(value).__name__}, not a Tensor"
            )
        captured.append(value)
        if stop:
            raise _StopForward

    if to_input:
        handle = module.register_forward_pre_hook(lambda _m, inp: grab(inp))
    else:
        handle = module.register_forward_hook(lambda _m, _inp, out: grab(out))
    try:
        yield captured
    finally:
        handle.remove()


def forward_to_layer(
    model: nn.Module,
    module: nn.Module,
    inputs: tuple[Tensor, ...],
    additional_forward_args: Any = None,
    to_input: bool = False,
    layer_name: str = "layer",
    argname: str = "inputs",
) -> Tensor:
    """Run the forward pass until ``module`` has run (or is about to, with ``to_input``).

    The rest of the forward is skipped. If the module runs several times, its first call
    is the one returned.
    """
    with _layer_capture(module, to_input, stop=True, layer_name=layer_name) as captured, suppress(_StopForward):
        run_forward(model, inputs, additional_forward_args, argname)
    if not captured:
        raise ValueError(f"layer {layer_name!r} was not called in the forward pass of the model")
    return captured[0]
