"""Independent oracles: a naive, explicit DeconvNet written layer by layer.

Nothing here imports captum_deconvviz. The forward records switches with
``F.max_pool2d(return_indices=True)``; the reverse unpools with those switches
(accumulating with ``index_put_``, or with ``F.max_unpool2d`` where windows do not
overlap), rectifies at every ReLU-family layer, and applies ``conv_transpose2d``
with the layer's weights and no bias.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _pair(v: Any) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)  # type: ignore[return-value]


def unpool_accumulate(signal: Tensor, switches: Tensor, input_shape: torch.Size) -> Tensor:
    """Scatter ``signal`` to the switch positions, summing where switches repeat."""
    n, c = signal.shape[:2]
    out = torch.zeros(n * c, input_shape[-2] * input_shape[-1], dtype=signal.dtype)
    rows = torch.arange(n * c).repeat_interleave(switches[0, 0].numel())
    out.index_put_((rows, switches.reshape(-1)), signal.reshape(-1), accumulate=True)
    return out.reshape(input_shape)


def conv_transpose_like(signal: Tensor, conv: nn.Conv2d, input_shape: torch.Size) -> Tensor:
    """``conv_transpose2d`` with the conv's weights, no bias, sized back to the conv's input."""
    stride, padding, dilation = _pair(conv.stride), _pair(conv.padding), _pair(conv.dilation)
    kernel = conv.weight.shape[-2:]
    output_padding = tuple(
        input_shape[2 + d]
        - ((signal.shape[2 + d] - 1) * stride[d] - 2 * padding[d] + dilation[d] * (kernel[d] - 1) + 1)
        for d in range(2)
    )
    return F.conv_transpose2d(signal, conv.weight, None, stride, padding, output_padding, conv.groups, dilation)


def explicit_deconvnet(
    layers: Sequence[nn.Module],
    x: Tensor,
    stop: int,
    units: Tensor,
    seed: str = "activation",
    rule: str = "zf",
    unpool: str = "accumulate",
    signal: Tensor | None = None,
    signals: dict[int, Tensor] | None = None,
) -> Tensor:
    """Project one unit per row of ``x`` from the output of ``layers[stop]`` to pixels.

    Args:
        layers: a plain sequence of Conv2d / ReLU / ReLU6 / LeakyReLU / MaxPool2d.
        x: input batch.
        stop: index of the layer whose output holds the units.
        units: LongTensor [N, 3] of (channel, y, x).
        seed: "activation" or "one".
        rule: "zf" (relu(grad)) or "guided" (relu(grad) * (input > 0)).
        unpool: "accumulate" (index_put_ with accumulate=True) or "max_unpool2d".
        signal: an explicit reverse signal at the output of ``layers[stop]``, used
            instead of seeding ``units`` (e.g. a linear head's weight row).
        signals: if given, filled with the reverse signal at the output of each layer.
    """
    tape: list[tuple[str, Any]] = []
    h = x
    with torch.no_grad():
        for layer in layers[: stop + 1]:
            if isinstance(layer, nn.Conv2d):
                tape.append(("conv", (layer, h.shape)))
                h = F.conv2d(h, layer.weight, layer.bias, layer.stride, layer.padding, layer.dilation, layer.groups)
            elif isinstance(layer, nn.ReLU):
                tape.append(("rectify", h > 0))
                h = torch.where(h > 0, h, torch.zeros_like(h))
            elif isinstance(layer, nn.ReLU6):
                tape.append(("rectify", h > 0))
                h = torch.minimum(torch.where(h > 0, h, torch.zeros_like(h)), torch.full_like(h, 6.0))
            elif isinstance(layer, nn.LeakyReLU):
                tape.append(("rectify", h > 0))
                h = torch.where(h > 0, h, h * layer.negative_slope)
            elif isinstance(layer, nn.MaxPool2d):
                out, switches = F.max_pool2d(
                    h,
                    layer.kernel_size,
                    layer.stride,
                    layer.padding,
                    layer.dilation,
                    ceil_mode=layer.ceil_mode,
                    return_indices=True,
                )
                tape.append(("pool", (layer, switches, h.shape)))
                h = out
            else:
                raise TypeError(f"the oracle does not know {type(layer).__name__}")
        if signal is None:
            signal = torch.zeros_like(h)
            rows = torch.arange(x.shape[0])
            c, yy, xx = units.unbind(1)
            signal[rows, c, yy, xx] = h[rows, c, yy, xx] if seed == "activation" else 1.0
        signal = signal.expand_as(h).clone()
        for index, (kind, data) in reversed(list(enumerate(tape))):
            if signals is not None:
                signals[index] = signal.clone()
            if kind == "conv":
                conv, shape = data
                signal = conv_transpose_like(signal, conv, shape)
            elif kind == "rectify":
                signal = torch.where(signal > 0, signal, torch.zeros_like(signal))
                if rule == "guided":
                    signal = signal * data
            else:
                layer, switches, shape = data
                if unpool == "max_unpool2d":
                    signal = F.max_unpool2d(
                        signal, switches, layer.kernel_size, layer.stride, layer.padding, shape[-2:]
                    )
                else:
                    signal = unpool_accumulate(signal, switches, shape)
    return signal


def strongest_units(activations: Tensor, channels: Sequence[int] | None = None, ranks: Sequence[int] = ()) -> Tensor:
    """For row i, unit (c, y, x) at the argmax of channel c's map.

    ``c`` is ``channels[i]``, or else the channel whose maximum ranks ``ranks[i]``
    (0 = strongest) in row i, so that random-init nets with dead channels still give
    positive units.
    """
    if channels is None:
        strength = activations.amax(dim=(2, 3))
        channels = [int(strength[i].argsort(descending=True)[r]) for i, r in enumerate(ranks)]
    rows = []
    for i, c in enumerate(channels):
        fmap = activations[i, c]
        flat = int(fmap.argmax())
        rows.append((c, flat // fmap.shape[1], flat % fmap.shape[1]))
    return torch.tensor(rows, dtype=torch.long)


# --------------------------------------------------------------------------------------
# A Captum-based oracle for any architecture: rewrite functional activations into
# modules with torch.fx, then let Captum's module hooks apply the rule.
# --------------------------------------------------------------------------------------

import operator  # noqa: E402

import torch.fx as fx  # noqa: E402
from captum.attr import Deconvolution, GuidedBackprop  # noqa: E402

#: Module types whose backward Captum-style hooks rectify ("rectify" policy).
RECTIFIED_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardtanh, nn.ELU, nn.CELU, nn.SELU, nn.GELU, nn.SiLU, nn.Hardswish,
    nn.Mish, nn.Softplus, nn.PReLU, nn.RReLU,
)  # fmt: skip
_FUNCTIONAL_ACTIVATIONS: dict[object, type[nn.Module]] = {
    F.relu: nn.ReLU, torch.relu: nn.ReLU, F.relu6: nn.ReLU6, F.silu: nn.SiLU, F.gelu: nn.GELU,
    F.hardswish: nn.Hardswish, F.leaky_relu: nn.LeakyReLU, F.elu: nn.ELU,
}  # fmt: skip
_METHOD_ACTIVATIONS = {"relu": nn.ReLU, "relu_": nn.ReLU}
del operator


def with_activation_modules(model: nn.Module) -> fx.GraphModule:
    """The model with every functional ReLU-family call replaced by a module call (same math)."""
    gm = fx.symbolic_trace(model)
    for index, node in enumerate(list(gm.graph.nodes)):
        kind = None
        if node.op == "call_function" and node.target in _FUNCTIONAL_ACTIVATIONS:
            kind = _FUNCTIONAL_ACTIVATIONS[node.target]
        elif node.op == "call_method" and node.target in _METHOD_ACTIVATIONS:
            kind = _METHOD_ACTIVATIONS[node.target]
        if kind is None:
            continue
        name = f"oracle_act_{index}"
        kwargs = {k: v for k, v in node.kwargs.items() if k != "inplace"}
        extra = list(node.args[1:])
        if kind is nn.ReLU6 or kind is nn.ReLU or kind is nn.SiLU or kind is nn.Hardswish:
            extra = []
        module = kind(*[a for a in extra if not isinstance(a, bool)], **kwargs)
        gm.add_submodule(name, module)
        with gm.graph.inserting_after(node):
            replacement = gm.graph.call_module(name, (node.args[0],))
        node.replace_all_uses_with(replacement)
        gm.graph.erase_node(node)
    gm.recompile()
    return gm.eval()


class _Rectifying:
    def _register_hooks(self, module: nn.Module) -> None:  # Captum's hook, for every ReLU-like module
        if isinstance(module, RECTIFIED_MODULES):
            from captum._utils.common import _register_backward_hook

            self.backward_hooks.extend(_register_backward_hook(module, self._backward_hook, self))


class RectifyingDeconvolution(_Rectifying, Deconvolution):
    """Captum's Deconvolution, hooking every ReLU-like module (not only nn.ReLU)."""


class RectifyingGuidedBackprop(_Rectifying, GuidedBackprop):
    """Captum's GuidedBackprop, hooking every ReLU-like module."""
