"""One parser for the geometry of sliding-window ops: convolutions and pooling.

A window op is seen in two spellings: as a module (``nn.Conv2d``, ``nn.MaxPool2d``, ...)
and as the functional call the module makes (``F.conv2d(x, w, b, stride, padding, ...)``).
Both are parsed here into one :class:`WindowSpec`, so that "stride defaults to the
kernel", "padding may be the string 'same'" and ``ntuple`` are written once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

__all__ = ["WindowSpec", "bind_call", "box_slices", "ntuple", "window_from_call", "window_from_module"]

#: Positional parameters of the functional spellings, after ``input``.
_PARAMS: dict[str, tuple[str, ...]] = {
    "conv": ("weight", "bias", "stride", "padding", "dilation", "groups"),
    "conv_transpose": ("weight", "bias", "stride", "padding", "output_padding", "groups", "dilation"),
    "max": ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"),
    "avg": ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override"),
    "lp": ("norm_type", "kernel_size", "stride", "ceil_mode"),
    "adaptive": ("output_size", "return_indices"),
}


def ntuple(value: Any, n: int) -> tuple[int, ...]:
    """``value`` (an int or a sequence of one or ``n`` ints) as a tuple of ``n`` ints."""
    if isinstance(value, int):
        return (value,) * n
    value = tuple(int(v) for v in value)
    return value * n if len(value) == 1 else value


def op_kind(name: str) -> str | None:
    """``"conv"``, ``"conv_transpose"``, ``"max"``, ``"avg"``, ``"lp"``, ``"adaptive"`` or None."""
    bare = name.lstrip("_")
    if bare.startswith("conv_transpose"):
        return "conv_transpose"
    if bare in ("conv1d", "conv2d", "conv3d"):
        return "conv"
    if bare.startswith("adaptive_") and "pool" in bare:
        return "adaptive"
    if bare.startswith("max_pool"):
        return "max"
    if bare.startswith("avg_pool"):
        return "avg"
    if bare.startswith("lp_pool"):
        return "lp"
    return None


def spatial_dims_of(name: str) -> int:
    """The number of spatial dims in an op name such as ``max_pool2d_with_indices``."""
    for n in (1, 2, 3):
        if f"{n}d" in name:
            return n
    raise ValueError(f"op {name!r} names no spatial dimensionality")


def bind_call(name: str, args: Sequence[Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """Bind the arguments of a window op's functional spelling to their names (``input`` first)."""
    kind = op_kind(name)
    if kind is None:
        raise ValueError(f"op {name!r} is not a convolution or pooling")
    bound = dict(zip(("input", *_PARAMS[kind]), args, strict=False))
    bound.update(kwargs)
    return bound


@dataclass(frozen=True)
class WindowSpec:
    """The geometry of one convolution or pooling window, per spatial dim.

    Attributes:
        kind: ``"conv"``, ``"conv_transpose"``, ``"max"``, ``"avg"`` or ``"lp"``.
        kernel: window size (before dilation).
        stride: step between windows (pooling: defaults to the kernel).
        padding: ``(before, after)`` pairs, resolved for ``padding="same"``.
        dilation: spacing of the taps.
        groups: channel groups (convolutions).
        output_padding: extra size on the far side (transposed convolutions).
        zero_padded: the padding is zeros (or -inf for max-pooling): positions beyond the map
            contribute nothing. False for average pooling that excludes padding from its
            divisor, or a divisor override, whose value at borders depends on the position.
    """

    kind: str
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[tuple[int, int], ...]
    dilation: tuple[int, ...]
    groups: int = 1
    output_padding: tuple[int, ...] = ()
    zero_padded: bool = True

    @property
    def n(self) -> int:
        return len(self.kernel)

    @property
    def before(self) -> tuple[int, ...]:
        return tuple(p for p, _ in self.padding)


def _stride(value: Any, kernel: tuple[int, ...]) -> tuple[int, ...]:
    if value is None or (isinstance(value, (list, tuple)) and len(value) == 0):
        return kernel
    return ntuple(value, len(kernel))


def _padding(value: Any, kernel: tuple[int, ...], dilation: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    if value == "valid":
        return ((0, 0),) * len(kernel)
    if value == "same":  # torch pads the odd pixel of an even total on the far side
        totals = [d * (k - 1) for k, d in zip(kernel, dilation, strict=True)]
        return tuple((t // 2, t - t // 2) for t in totals)
    return tuple((p, p) for p in ntuple(value, len(kernel)))


def window_from_call(name: str, args: Sequence[Any], kwargs: dict[str, Any]) -> WindowSpec:
    """Parse a functional window op (``conv2d``, ``max_pool2d``, ``avg_pool1d``, ...)."""
    kind = op_kind(name)
    bound = bind_call(name, args, kwargs)
    if kind in ("conv", "conv_transpose"):
        weight = bound["weight"]
        if not isinstance(weight, Tensor):
            raise ValueError(f"{name}: weight is a {type(weight).__name__}, not a tensor")
        n = weight.dim() - 2
        kernel = tuple(int(k) for k in weight.shape[2:])
        dilation = ntuple(bound.get("dilation", 1), n)
        return WindowSpec(
            kind,
            kernel,
            ntuple(bound.get("stride", 1), n),
            _padding(bound.get("padding", 0), kernel, dilation),
            dilation,
            int(bound.get("groups", 1) or 1),
            ntuple(bound.get("output_padding", 0), n) if kind == "conv_transpose" else (),
        )
    n = spatial_dims_of(name)
    kernel = ntuple(bound["kernel_size"], n)
    if kind == "lp":
        return WindowSpec("lp", kernel, _stride(bound.get("stride"), kernel), ((0, 0),) * n, (1,) * n)
    dilation = ntuple(bound.get("dilation", 1), n) if kind == "max" else (1,) * n
    padding = _padding(bound.get("padding", 0), kernel, dilation)
    zero_padded = True
    if kind == "avg":
        excludes = not bound.get("count_include_pad", True) and any(p != (0, 0) for p in padding)
        zero_padded = not excludes and bound.get("divisor_override") is None
    return WindowSpec(str(kind), kernel, _stride(bound.get("stride"), kernel), padding, dilation, 1, (), zero_padded)


def window_from_module(module: nn.Module) -> WindowSpec | None:
    """Parse a convolution or pooling module, or None for any other module.

    Only modules whose forward is one window op with zero padding are parsed: a
    convolution with ``padding_mode`` other than ``"zeros"`` pads by itself first.
    """
    if isinstance(module, nn.modules.conv._ConvNd):
        n = len(module.kernel_size)
        kernel, dilation = tuple(module.kernel_size), tuple(module.dilation)
        transposed = isinstance(module, nn.modules.conv._ConvTransposeNd)
        return WindowSpec(
            "conv_transpose" if transposed else "conv",
            kernel,
            tuple(module.stride),
            _padding(module.padding, kernel, dilation),
            dilation,
            module.groups,
            tuple(module.output_padding) if transposed else (),
            module.padding_mode == "zeros",
        )
    if isinstance(module, nn.modules.pooling._MaxPoolNd):
        n = _module_dims(module)
        kernel = ntuple(module.kernel_size, n)
        dilation = ntuple(module.dilation, n)
        return WindowSpec(
            "max", kernel, _stride(module.stride, kernel), _padding(module.padding, kernel, dilation), dilation
        )
    if isinstance(module, nn.modules.pooling._AvgPoolNd) and hasattr(module, "kernel_size"):
        n = _module_dims(module)
        kernel = ntuple(module.kernel_size, n)
        padding = _padding(module.padding, kernel, (1,) * n)
        excludes = not getattr(module, "count_include_pad", True) and any(p != (0, 0) for p in padding)
        zero_padded = not excludes and getattr(module, "divisor_override", None) is None
        return WindowSpec("avg", kernel, _stride(module.stride, kernel), padding, (1,) * n, 1, (), zero_padded)
    return None


def _module_dims(module: nn.Module) -> int:
    return spatial_dims_of(type(module).__name__.lower())


def box_slices(
    starts: Sequence[int], size: Sequence[int], extent: Sequence[int]
) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Where a box ``[start, start + size)`` meets the image ``[0, extent)``, per axis:
    the slices in image coordinates, and the same pixels in box coordinates."""
    inside, local = [], []
    for start, length, limit in zip(starts, size, extent, strict=True):
        lo, hi = max(0, start), min(limit, start + length)
        hi = max(lo, hi)
        inside.append(slice(lo, hi))
        local.append(slice(lo - start, hi - start))
    return tuple(inside), tuple(local)
