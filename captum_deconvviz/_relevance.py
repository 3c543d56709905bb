"""A unit's relevance for a target output: its activation times the target's gradient there.

``relevance[b, c, y, x] = a[b, c, y, x] * d out[b, target_b] / d a[b, c, y, x]`` (gradient x
input at the layer: the first-order contribution of the unit to the target logit). Mining
with ``rank_by="relevance"`` ranks records by it; it costs the rest of the forward pass
and one backward per batch.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from ._compiled import eager_compiled
from ._guard import explain_shape_errors
from ._taps import as_4d

__all__ = ["RelevanceTaps", "Target", "check_class_range", "check_output_classes", "check_target"]

#: Integer dtypes a 0-d tensor ``target`` may have (not bool: True is no class index).
_INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)

Target = int | str  # a class index, "label" (each image's own) or "predicted" (each image's argmax)


def check_target(target: Any, has_labels: bool) -> Target:
    """``target`` of ``rank_by="relevance"``, checked (its range is checked against the output later).

    A class index may be any integer ``check_int`` takes (a numpy integer, a 0-d integer tensor),
    returned as a Python int; a bool is not one.
    """
    integral = isinstance(target, numbers.Integral) and not isinstance(target, (bool, np.bool_))
    if integral or (
        isinstance(target, Tensor) and target.dim() == 0 and target.dtype in _INTEGER_DTYPES and not target.is_meta
    ):
        target = int(target)
    if isinstance(target, bool) or not (isinstance(target, (int, str))):
        raise TypeError(
            f"target must be a class index (int), 'label' or 'predicted' with rank_by='relevance', got {target!r:.80}"
        )
    if isinstance(target, int) and target < 0:
        raise ValueError(f"target must be a class index >= 0, got {target}")
    if isinstance(target, str) and target not in ("label", "predicted"):
        raise ValueError(f"target must be a class index (int), 'label' or 'predicted', got {target!r:.80}")
    if target == "label" and not has_labels:
        raise ValueError("target='label' needs labels: pass labels=True (data of (image, label) items) or a LongTensor")
    return target


def check_class_range(index: int, classes: int, what: str) -> None:
    """Refuse a class ``index`` the model's ``classes`` outputs do not have; ``what`` names it."""
    if index >= classes:
        raise ValueError(f"{what} {index} is out of range: the model has {classes} outputs (0 to {classes - 1})")


def check_output_classes(model: nn.Module, image: Tensor, target: Target, labels: Tensor | None) -> None:
    """Before mining by relevance: one forward of ``image`` (``[1, C, H, W]``, on the model's device,
    the model in eval mode) gives ``[1, classes]``, and ``target`` (or with ``"label"``, the
    largest of ``labels`` given as a tensor) names one of them.

    Without it a wrong target surfaced only after the first batch's forward and backward.

    Raises:
        ValueError: the output is not ``[1, classes]``, or the class is out of range.
    """
    with torch.no_grad(), explain_shape_errors(model, "data", image.shape), eager_compiled():
        output = model(image)
    if not isinstance(output, Tensor) or output.dim() != 2:
        shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
        raise ValueError(f"rank_by='relevance' needs a model whose output is [batch, classes], got {shape}")
    classes = output.shape[1]
    if isinstance(target, int):
        check_class_range(target, classes, "target")
    elif target == "label" and isinstance(labels, Tensor) and len(labels):
        check_class_range(int(labels.max()), classes, "target='label': the label")


class RelevanceTaps:
    """Forward hooks that keep each layer's output, then the relevance of every unit for a target.

    Each hooked output is replaced by a clone of itself, so that an in-place op after the
    layer (``ReLU(inplace=True)``) changes the clone and the kept activation stays the
    layer's own output, as mining by activation sees it.

    Args:
        modules: layer spec -> the module whose output it reads.
        target: see :func:`check_target`.

    Example:
        >>> with RelevanceTaps({"features.1": model.features[1]}, target=3) as taps:  # doctest: +SKIP
        ...     maps = taps.run(model, images, labels=None)
    """

    def __init__(self, modules: dict[str, nn.Module], target: Target) -> None:
        self.modules, self.target = modules, target
        self.outputs: dict[str, Tensor] = {}
        self.handles: list[RemovableHandle] = []

    def __enter__(self) -> RelevanceTaps:
        for name, module in self.modules.items():
            self.handles.append(module.register_forward_hook(self._hook(name)))
        return self

    def _hook(self, name: str) -> Any:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> Any:
            if name in self.outputs:  # a module called twice is read on its first call
                return None
            if isinstance(output, Tensor):
                self.outputs[name] = as_4d(name, output)
                return output.clone()
            self.outputs[name] = as_4d(name, output)  # a tuple output: kept as it is
            return None

        return hook

    def run(self, model: nn.Module, images: Tensor, labels: Tensor | None) -> dict[str, tuple[Tensor, Tensor]]:
        """``{layer: (activations, relevance)}``, both ``[B, C, H, W]`` and detached.

        Raises:
            ValueError: the model's output is not ``[B, classes]``, the target is out of its
                range, an image has no label with ``target="label"``, or a layer never ran.
        """
        self.outputs = {}
        # Autograd on for the forward and the backward, even under the caller's torch.no_grad().
        with torch.enable_grad():
            with explain_shape_errors(model, "data", images.shape), eager_compiled():
                output = model(images.detach().requires_grad_(True))
            missing = sorted(set(self.modules) - set(self.outputs))
            if missing:
                raise ValueError(f"layers {missing} were not called in the forward pass of the model")
            chosen = self._targets(output, labels)
            names = list(self.outputs)
            grads = torch.autograd.grad(
                output.gather(1, chosen.view(-1, 1)).sum(), [self.outputs[n] for n in names], allow_unused=True
            )
        out = {}
        for name, grad in zip(names, grads, strict=True):
            acts = self.outputs[name].detach()
            out[name] = (acts, acts * grad if grad is not None else torch.zeros_like(acts))
        self.outputs = {}
        return out

    def _targets(self, output: Any, labels: Tensor | None) -> Tensor:
        if not isinstance(output, Tensor) or output.dim() != 2:
            shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
            raise ValueError(f"rank_by='relevance' needs a model whose output is [batch, classes], got {shape}")
        classes = output.shape[1]
        if self.target == "predicted":
            return output.detach().argmax(dim=1)
        if self.target == "label":
            assert labels is not None, "target='label' is checked to come with labels"
            # Checked where the labels are (the CPU, as the data yields them): no device sync per batch.
            if bool((labels < 0).any()):
                raise ValueError("target='label' needs every image's label, but some images have none (-1)")
            check_class_range(int(labels.max()) if len(labels) else 0, classes, "target='label': the label")
            return labels.to(output.device)
        check_class_range(int(self.target), classes, "target")
        return torch.full((output.shape[0],), int(self.target), dtype=torch.long, device=output.device)

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        self.outputs = {}
