"""Layer taps: read several layers' outputs in one forward pass, stopped after the last.

Mining folds each tapped output into its top-k state the moment the layer has run;
:meth:`MiningResult.verify <captum_deconvviz.mining_result.MiningResult.verify>` reads
the same outputs again with :func:`layer_activations`. Both see one shape, ``[N, C, H, W]``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from ._forward import (
    EvalMode,
    StopForward,
    check_model,
    describe_choices,
    eager_compiled,
    pick_output,
    resolve_layer,
    split_layer_spec,
)
from ._guard import explain_shape_errors

__all__ = ["LayerTaps", "as_4d", "layer_activations"]


def as_4d(name: str, output: Any) -> Tensor:
    """The tensor a layer spec names in the layer's ``output``, as ``[N, C, H, W]``.

    Args:
        name: the layer spec, with picks for tuple/list/dict outputs (``"stages.1[0]"``).
        output: what the layer's module returned.

    Returns:
        The picked tensor; ``[N, F]`` outputs (linear layers) become ``[N, F, 1, 1]``.

    Raises:
        ValueError: the output is not a tensor (and no pick makes it one) or has another rank.

    Example:
        >>> as_4d("fc", torch.zeros(2, 10)).shape
        torch.Size([2, 10, 1, 1])
    """
    base, picks = split_layer_spec(name)
    if picks:
        output = pick_output(output, picks, base)
    if isinstance(output, tuple) and len(output) == 1:
        output = output[0]
    if not isinstance(output, Tensor):
        raise ValueError(
            f"layer {name!r} outputs a {type(output).__name__}; mining needs a tensor: pick one, "
            f"{describe_choices(output, name)}"
        )
    if output.dim() == 4:
        return output
    if output.dim() == 2:
        return output[:, :, None, None]
    raise ValueError(f"layer {name!r} outputs shape {tuple(output.shape)}; mining needs [N, C, H, W] or [N, F]")


class LayerTaps:
    """Forward hooks that hand each layer's output to a callback, then stop the forward.

    The hooks are registered on ``__enter__`` and removed on ``__exit__``, whatever happens.

    Args:
        modules: layer spec -> the module whose output it reads.
        on_output: called as ``on_output(spec, tensor [N, C, H, W])`` once per layer and run.

    Example:
        >>> with LayerTaps({"0": model[0]}, lambda name, t: print(name, t.shape)) as taps:  # doctest: +SKIP
        ...     taps.run(model, images)
    """

    def __init__(self, modules: dict[str, nn.Module], on_output: Callable[[str, Tensor], None]) -> None:
        self.modules, self.on_output = modules, on_output
        self.pending: set[str] = set()
        self.handles: list[RemovableHandle] = []

    def __enter__(self) -> LayerTaps:
        for name, module in self.modules.items():
            self.handles.append(module.register_forward_hook(self._hook(name)))
        return self

    def _hook(self, name: str) -> Callable[[nn.Module, Any, Any], None]:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            if name in self.pending:  # a module called twice is read on its first call
                self.pending.discard(name)
                self.on_output(name, as_4d(name, output))
                if not self.pending:
                    raise StopForward

        return hook

    def run(self, model: nn.Module, images: Tensor, argname: str = "data") -> None:
        """Run ``model`` on ``images`` until every tapped layer has run once.

        Raises:
            ValueError: some layers were never called by the forward pass, or the images'
                shape does not fit the model (the message names ``argname``).
        """
        self.pending = set(self.modules)
        with contextlib.suppress(StopForward), explain_shape_errors(model, argname, images.shape), eager_compiled():
            model(images)
        if self.pending:
            raise ValueError(f"layers {sorted(self.pending)} were not called in the forward pass of the model")

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()


def layer_activations(model: nn.Module, layers: Sequence[str], images: Tensor) -> dict[str, Tensor]:
    """The outputs of ``layers`` for ``images`` (eval mode, no grad), as ``[N, C, H, W]``.

    Args:
        model: the network; its training flags are restored after.
        layers: layer specs (dotted names, with picks for tuple outputs).
        images: ``[N, C, H, W]``, moved to the model's device.

    Returns:
        Layer spec -> a copy of its output.

    Example:
        >>> acts = layer_activations(model, ["features.1"], images)  # doctest: +SKIP
        >>> acts["features.1"].shape
        torch.Size([8, 64, 16, 16])
    """
    model = check_model(model)  # torch.compile wrappers: run the modules they hold
    modules = {name: resolve_layer(model, name)[1] for name in layers}
    out: dict[str, Tensor] = {}
    device = next((p.device for p in model.parameters()), images.device)
    with torch.no_grad(), EvalMode(model), LayerTaps(modules, lambda n, t: out.__setitem__(n, t.clone())) as taps:
        taps.run(model, images.to(device))
    return out
