"""What every entry point wraps around the user's model: eval mode, untouched buffers,
finite numbers, and shape errors that name the argument.

- :class:`EvalMode` runs the model in eval mode on the model itself (no copy), and on
  exit restores every module's ``training`` flag and every buffer: a forward that wrote a
  buffer (a custom counter, a BatchNorm left in train mode by a submodule's own
  ``forward``) finds it as it was. Only buffers are copied, never parameters.
- :func:`check_finite` refuses NaN and Inf where a result built on them would look
  clean (a DeconvNet projection of a NaN output is zeros, not NaN).
- :func:`check_dense` refuses tensors with no values to compute on: sparse ones, and
  ones on the ``meta`` device (shapes only).
- :func:`autograd_inside` lets an entry point that runs a backward (a reverse pass, a
  relevance, a receptive-field probe) work under the caller's ``torch.inference_mode()``:
  it runs outside inference mode, on normal copies of the inference tensors it was given
  (``torch.no_grad()`` needs nothing: those passes enable gradients themselves).
- :func:`explain_call_errors` turns Python's "forward() takes 2 positional arguments
  but 3 were given", raised binding the model's own call, into a ``TypeError`` that names
  ``additional_forward_args``; a ``TypeError`` from inside the model's body passes as it is.
- :func:`explain_shape_errors` turns torch's shape errors inside a forward pass into a
  ``ValueError`` that names the argument, its shape and what the model's first layer
  expects, instead of ``mat1 and mat2 shapes cannot be multiplied`` from deep inside.
"""

from __future__ import annotations

import functools
import os
import re
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

__all__ = ["EvalMode", "autograd_inside", "check_dense", "check_finite", "explain_call_errors", "explain_shape_errors"]


class EvalMode:
    """Eval mode for the duration of a ``with`` block; modes and buffers are restored after.

    Args:
        model: the user's model, switched in place (a large model is never copied).

    Example:
        >>> model = torch.nn.BatchNorm2d(3).train()
        >>> with EvalMode(model):
        ...     _ = model(torch.randn(2, 3, 4, 4))
        >>> model.training, int(model.num_batches_tracked)
        (True, 0)
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.flags = [(m, m.training) for m in model.modules()]
        self.buffers: list[tuple[nn.Module, dict[str, Tensor | None]]] = []
        self.versions: list[tuple[Tensor, int, Tensor]] = []

    def __enter__(self) -> None:
        for module in self.model.modules():
            owned = dict(module._buffers)
            self.buffers.append((module, owned))
            for buffer in owned.values():
                if buffer is not None:
                    # The version counter tells, at exit, which buffers were written in place.
                    self.versions.append((buffer, buffer._version, buffer.detach().clone()))
        self.model.eval()

    def __exit__(self, *exc: object) -> None:
        for module, flag in self.flags:
            module.training = flag
        for module, owned in self.buffers:
            if module._buffers != owned or any(module._buffers.get(k) is not v for k, v in owned.items()):
                module._buffers.clear()
                module._buffers.update(owned)  # a forward that rebound a buffer gets the original back
        with torch.no_grad():
            for buffer, version, saved in self.versions:
                if buffer._version != version:
                    buffer.copy_(saved)
        self.buffers, self.versions = [], []


def check_finite(
    tensor: Tensor, argname: str, what: str = "values", rows: Sequence[int] | None = None, hint: str | None = None
) -> None:
    """Raise ``ValueError`` if ``tensor`` holds NaN or Inf, with the count and the rows.

    Args:
        tensor: a batch (rows along dimension 0).
        argname: what it is, for the message (``"inputs"``, ``"the model output at target"``).
        what: what its entries are called in the message.
        rows: the caller's row numbers of ``tensor``'s rows (a chunk of a larger call), for the message.
        hint: what to do about it; default: fix or drop those rows.

    Example:
        >>> check_finite(torch.ones(2, 3), "inputs")
    """
    if not tensor.is_floating_point() and not tensor.is_complex():
        return
    bad = ~torch.isfinite(tensor.detach())
    if not bool(bad.any()):
        return
    count = int(bad.sum())
    bad_rows = bad.reshape(len(tensor), -1).any(1).nonzero().flatten().tolist() if tensor.dim() > 0 else []
    if rows is not None:
        bad_rows = [rows[i] for i in bad_rows]
    shown = ", ".join(map(str, bad_rows[:10])) + (", ..." if len(bad_rows) > 10 else "")
    kinds = " and ".join(
        name for name, n in (("NaN", int(tensor.isnan().sum())), ("Inf", int(tensor.isinf().sum()))) if n
    )
    raise ValueError(
        f"{argname} holds {count} non-finite {what} ({kinds}) in rows [{shown}]: "
        + (hint or "a projection of them would look clean but mean nothing; fix or drop those rows")
    )


def check_dense(tensor: Tensor, argname: str) -> None:
    """Refuse a tensor that holds no values to compute on: sparse (or another non-strided
    layout), or on the ``meta`` device.

    Args:
        tensor: the tensor.
        argname: what it is, for the message.

    Raises:
        TypeError: ``tensor`` is not a dense (strided) tensor.
        ValueError: ``tensor`` is on the meta device.

    Example:
        >>> check_dense(torch.ones(2, 3), "inputs")
    """
    if tensor.layout != torch.strided:
        raise TypeError(
            f"{argname} must be a dense tensor, got a {str(tensor.layout).removeprefix('torch.')} one; "
            f"convert it with {argname}.to_dense()"
        )
    if tensor.is_meta:
        raise ValueError(
            f"{argname} holds no values: it is on meta (the meta device keeps shapes only); pass the real tensor"
        )


_F = TypeVar("_F", bound=Callable[..., Any])


def _normal(value: Any) -> Any:
    """``value`` with its inference tensors (at the top level, or in a list or tuple) cloned to normal ones."""
    if isinstance(value, Tensor):
        return value.clone() if value.is_inference() else value
    if type(value) in (list, tuple) and any(isinstance(v, Tensor) and v.is_inference() for v in value):
        return type(value)(_normal(v) for v in value)
    return value


def autograd_inside(function: _F) -> _F:
    """Run an entry point that needs autograd outside the caller's ``torch.inference_mode()``.

    Under inference mode no graph is recorded, even under ``torch.enable_grad()``, so a reverse
    pass would fail with torch's "element 0 of tensors does not require grad". The entry point
    runs with inference mode off instead (gradients as the caller had them: the backward passes
    enable them where they run), and the inference tensors among its arguments, which autograd
    cannot save, are cloned to normal ones first. Outside inference mode it is a plain call.

    Example:
        >>> @autograd_inside
        ... def gradient(x):
        ...     x = x.detach().requires_grad_(True)
        ...     with torch.enable_grad():
        ...         return torch.autograd.grad((x * x).sum(), x)[0]
        >>> with torch.inference_mode():
        ...     gradient(torch.ones(2)).tolist()
        [2.0, 2.0]
    """

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not torch.is_inference_mode_enabled():
            return function(*args, **kwargs)
        with torch.inference_mode(False):
            return function(*map(_normal, args), **{key: _normal(value) for key, value in kwargs.items()})

    return wrapper  # type: ignore[return-value]


# Python's messages for a call whose arguments the function's signature cannot bind.
_SIGNATURE_ERRORS = re.compile(
    r"\bforward\(\) (takes|missing \d+ required|got an unexpected keyword argument|got multiple values)"
)
# Files whose frames stand between the caller and the model's forward: its call, not its body.
_CALL_FILES = (
    os.path.join("torch", "nn", "modules", "module.py"),
    os.path.join("captum", "_utils", "common.py"),
    os.path.join("captum_deconvviz", "_guard.py"),
    os.path.join("captum_deconvviz", "_forward.py"),
)


def _binding_error(err: TypeError) -> bool:
    """Whether ``err`` was raised binding the arguments of the model's own ``forward``.

    Python raises those at the call, so no frame of the forward's body is in the
    traceback: every frame is the call machinery (``Module.__call__``, Captum's
    ``_run_forward``, ours). A ``TypeError`` from inside the body has a frame there.
    """
    if not _SIGNATURE_ERRORS.search(str(err)):
        return False
    frames = traceback.extract_tb(err.__traceback__)
    return all(frame.filename.endswith(_CALL_FILES) for frame in frames)


@contextmanager
def explain_call_errors(argname: str, additional_forward_args: Any) -> Iterator[None]:
    """Turn a ``TypeError`` raised binding the model's ``forward`` call into one naming the arguments.

    The model is called as ``model(*inputs, *additional_forward_args)``; a forward that
    takes other arguments fails with Python's ``Net.forward() takes 2 positional
    arguments but 3 were given`` from inside torch. Only that binding error is
    translated (see :func:`_binding_error`); one raised in the model's body passes.

    Args:
        argname: the argument the inputs came from.
        additional_forward_args: what the caller passed as further arguments.

    Example:
        >>> with explain_call_errors("inputs", None):  # doctest: +SKIP
        ...     model(x)
    """
    try:
        yield
    except TypeError as err:
        if not _binding_error(err):
            raise
        extra = " ".join(repr(additional_forward_args).split())
        extra = extra if len(extra) <= 60 else extra[:57] + "..."
        raise TypeError(
            f"the model's forward does not take the arguments it was called with, "
            f"model(*{argname}, *additional_forward_args) with additional_forward_args={extra} "
            f"({' '.join(str(err).split())}): pass in additional_forward_args exactly the further "
            "arguments of the model's forward"
        ) from None


# torch's messages for a forward pass that cannot take an input of this shape.
_SHAPE_ERRORS = re.compile(
    "|".join(
        (
            r"shapes cannot be multiplied",
            r"expected input\[.*\] to have \d+ channels",
            r"Expected \d+D \(unbatched\) or \d+D \(batched\) input",
            r"Kernel size can't be greater than actual input size",
            r"Output size is too small",
            r"should contain \d+ elements not \d+",
            r"must match the size of tensor b",
            r"Sizes of tensors must match",
            r"is invalid for input of size",
            r"Padding size should be less than",
            r"Expected .* to have \d+ elements",
            r"expected input with shape",
            r"non-empty \d+D or \d+D .*tensor expected",
        )
    )
)


def _first_layer(model: nn.Module) -> tuple[str, nn.Module] | None:
    for name, module in model.named_modules():
        if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
            return name, module
    return None


def _expectation(model: nn.Module, shape: tuple[int, ...]) -> str:
    found = _first_layer(model)
    if found is None:
        return ""
    name, module = found
    if isinstance(module, nn.Linear):
        return f"; its first layer {name!r} (Linear) takes {module.in_features} features"
    if not isinstance(module, nn.modules.conv._ConvNd):
        return ""
    spatial = module.weight.dim() - 2
    dims = ", ".join(["N", str(module.in_channels), *"DHW"[3 - spatial :]])
    if len(shape) == spatial + 2 and shape[1] == module.in_channels:
        return (
            f": its first layer {name!r} takes [{dims}], but a later layer cannot take images of size "
            f"{'x'.join(map(str, shape[2:]))}; use the size the model was built for"
        )
    return f"; its first layer {name!r} ({type(module).__name__}) expects [{dims}]"


@contextmanager
def explain_shape_errors(model: nn.Module, argname: str, shape: tuple[int, ...] | Any) -> Iterator[None]:
    """Turn a torch shape error raised inside the block into a ``ValueError`` naming ``argname``.

    Also refuses, at the first convolution that receives the input itself, a batch without
    its batch dimension (``[3, 32, 32]`` for an image model): torch would take it as one
    unbatched image and every later shape would be silently wrong.

    Args:
        model: the model whose forward runs in the block.
        argname: the argument the input came from.
        shape: its shape, for the message.

    Example:
        >>> with explain_shape_errors(model, "inputs", tuple(x.shape)):  # doctest: +SKIP
        ...     model(x)
    """
    shape = tuple(shape)
    handles: list[Any] = []

    def check_first(module: nn.Module, args: tuple[Any, ...]) -> None:
        for handle in handles:
            handle.remove()
        handles.clear()
        x = args[0] if args else None
        if isinstance(module, nn.modules.conv._ConvNd) and isinstance(x, Tensor):
            kernel: Tensor = module.weight
            spatial = kernel.dim() - 2
            if x.dim() == spatial + 1 and tuple(x.shape) == shape:
                raise ValueError(
                    f"{argname} of shape {list(shape)} has no batch dimension: the model's first layer "
                    f"({type(module).__name__}) takes [N, C, {', '.join('DHW'[3 - spatial :])}]; "
                    f"add one with {argname}.unsqueeze(0)"
                )

    for module in model.modules():
        if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
            handles.append(module.register_forward_pre_hook(check_first))
    try:
        yield
    except RuntimeError as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if not _SHAPE_ERRORS.search(str(err)):
            raise
        raise ValueError(
            f"{argname} of shape {list(shape)} does not fit the model{_expectation(model, shape)} (torch: {message})"
        ) from err
    finally:
        for handle in handles:
            handle.remove()
