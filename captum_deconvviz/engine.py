"""The reverse pass: a DeconvNet (and Guided Backprop) engine over plain autograd.

Under :class:`ReverseRules`, every ReLU-family op and every max-pooling op that the
forward pass runs (as a module, as a functional, in place or not, called once or
many times) is routed through a small :class:`torch.autograd.Function` whose
backward carries the chosen reverse rule. Everything else (convolutions, linear
layers, eval-mode BatchNorm, average pooling, additions, concatenations) keeps its
plain autograd backward, which is exactly its transpose. Biases never enter a
backward pass, so they play no part, as in Zeiler & Fergus (2014).

Nothing on the model is touched: no hooks, no patched modules. The mode lives in
``torch.overrides.TorchFunctionMode`` and only sees the ops run inside its ``with``
block, on the current thread.

The rules themselves (``"zf"`` DeconvNet, ``"guided"`` Guided Backprop, ``"probe"`` for
receptive fields) are :class:`RuleSet` objects registered in ``_rule_sets.py``.

Other activations follow the ``activations`` argument, see :class:`ReverseRules`.
"""

from __future__ import annotations

import contextlib
import inspect
import threading
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

from . import _geometry as geometry
from ._ops import (
    ELEMENTWISE_GATES,
    KNOWN_OPS,
    LINEAR_OPS,
    MAX_POOL_OPS,
    RELU_LIKE_OPS,
    RELU_OPS,
    RELU_SPELLINGS,
)
from ._rule_sets import (
    RULE_SETS,
    ActivationPolicy,
    RuleSet,
    SwitchUnpool,
    activation_rule,
    register_rule_set,
    rule_set,
)

__all__ = [
    "RULE_SETS",
    "ActivationPolicy",
    "ReverseRules",
    "RuleSet",
    "activation_rule",
    "register_rule_set",
    "rule_set",
]

_ACTIVATION_POLICIES = ("rectify", "gradient", "raise")

_warned_ops: set[str] = set()
_warned_lock = threading.Lock()


def _warn_once(key: str, message: str) -> None:
    with _warned_lock:
        if key in _warned_ops:
            return
        _warned_ops.add(key)
    warnings.warn(message, UserWarning, stacklevel=4)


# --------------------------------------------------------------------------------------
# Argument normalization for the ops we route.
# --------------------------------------------------------------------------------------

_signature_cache: dict[Any, inspect.Signature | None] = {}


def _signature(func: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return _signature_cache[func]
    except (KeyError, TypeError):
        pass
    try:
        sig: inspect.Signature | None = inspect.signature(func)
    except (TypeError, ValueError):
        sig = None
    with contextlib.suppress(TypeError):
        _signature_cache[func] = sig
    return sig


def _is_inplace(func: Callable[..., Any], name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    if name.endswith("_") and not name.startswith("__"):
        return True
    if "inplace" in kwargs:
        return bool(kwargs["inplace"])
    sig = _signature(func)
    if sig is None or "inplace" not in sig.parameters:
        return False
    try:
        return bool(sig.bind(*args, **kwargs).arguments.get("inplace", False))
    except TypeError:
        return False


def _scalar_arg(args: tuple[Any, ...], kwargs: dict[str, Any], position: int, names: Sequence[str]) -> Any:
    for key in names:
        if key in kwargs:
            return kwargs[key]
    return args[position] if len(args) > position else None


def _is_relu_spelling(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """``threshold(x, 0, 0)`` and ``clamp(x, min=0)`` without an upper bound are ReLU."""
    if "threshold" in name:
        return _scalar_arg(args, kwargs, 1, ("threshold",)) == 0 and _scalar_arg(args, kwargs, 2, ("value",)) == 0
    low = _scalar_arg(args, kwargs, 1, ("min",))
    if name.startswith("clamp_min"):
        return isinstance(low, (int, float)) and low == 0
    high = _scalar_arg(args, kwargs, 2, ("max",))
    return isinstance(low, (int, float)) and low == 0 and high is None


def _pool_geometry(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """Every max-pooling spelling's arguments by name, with its window (see ``_geometry``)."""
    bound = geometry.bind_call(name, args, kwargs)
    bound["spatial_dims"] = geometry.spatial_dims_of(name)
    if "adaptive" not in name:
        bound["window"] = geometry.window_from_call(name, args, kwargs)
    return bound


# --------------------------------------------------------------------------------------
# The mode.
# --------------------------------------------------------------------------------------


class ReverseRules(TorchFunctionMode):
    """Context manager that gives the forward pass DeconvNet (or Guided Backprop) backward rules.

    Ops are routed only when autograd records them (grad enabled and an input that
    requires grad); under ``torch.no_grad()`` the forward runs untouched.

    Args:
        rules: ``"zf"`` (DeconvNet), ``"guided"`` (Guided Backprop) or ``"probe"``
            (receptive-field probe), or a :class:`RuleSet`.
        activations: what ReLU-like activations (ReLU6, LeakyReLU, Hardtanh, ELU,
            CELU, SELU, GELU, SiLU, Hardswish, Mish, Softplus, PReLU, RReLU) get.
            ``"rectify"`` (default) gives them the same rule as ReLU (``relu(grad)``
            for ``"zf"``, ``relu(grad) * (input > 0)`` for ``"guided"``) while their
            forward is unchanged; ``"gradient"`` keeps their plain gradient;
            ``"raise"`` raises ``NotImplementedError`` when one is met. Gates (sigmoid,
            tanh, hardsigmoid, softmax) and data-dependent normalizations always keep
            their plain gradient. Any other op that autograd records and that this
            engine does not know gets a one-time ``UserWarning`` naming it.
        record_switches: keep the max-pooling switches (argmax indices) of the forward
            pass in :attr:`switches`, in call order.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2))
        >>> x = torch.randn(1, 3, 8, 8, requires_grad=True)
        >>> with ReverseRules("zf", record_switches=True) as engine:
        ...     out = model(x)
        >>> (grad,) = torch.autograd.grad(out, x, torch.ones_like(out))
        >>> len(engine.switches)
        1
    """

    def __init__(
        self,
        rules: str | RuleSet = "zf",
        activations: ActivationPolicy = "rectify",
        record_switches: bool = False,
    ) -> None:
        super().__init__()
        rules = rule_set(rules)
        if activations not in _ACTIVATION_POLICIES:
            raise ValueError(f"activations must be one of {_ACTIVATION_POLICIES}, got {activations!r}")
        self.rules = rules
        self.activations = activations
        self.record_switches = record_switches
        self.switches: list[Tensor] = []
        self.routed: dict[str, int] = {}

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in LINEAR_OPS or not torch.is_grad_enabled():
            return func(*args, **kwargs)
        first = args[0] if args else kwargs.get("input")
        if not (isinstance(first, Tensor) and first.requires_grad):
            return func(*args, **kwargs)
        if name in RELU_OPS or (name in RELU_SPELLINGS and _is_relu_spelling(name, args, kwargs)):
            return self._activation(func, name, args, kwargs)
        if name in RELU_LIKE_OPS:
            if self.rules.relu_like_always:
                return self._activation(func, name, args, kwargs)
            if self.activations == "gradient":
                return func(*args, **kwargs)
            if self.activations == "raise":
                raise NotImplementedError(
                    f"the model uses the activation {name!r}, which is not ReLU; pass "
                    "activations='rectify' to give it the ReLU rule or activations='gradient' "
                    "to keep its plain gradient"
                )
            return self._activation(func, name, args, kwargs)
        if name in MAX_POOL_OPS:
            return self._max_pool(func, name, args, kwargs)
        if self.rules.gate_surrogate is not None and name in ELEMENTWISE_GATES:
            return self._gate(func, name, args, kwargs, self.rules.gate_surrogate)
        out = func(*args, **kwargs)
        if name not in KNOWN_OPS and _records_grad(out):
            _warn_once(
                name,
                f"captum_deconvviz: the op {name!r} is not known to the DeconvNet engine; "
                "its plain autograd gradient is used in the reverse pass",
            )
        return out

    def _count(self, name: str) -> None:
        self.routed[name] = self.routed.get(name, 0) + 1

    def _activation(self, func: Callable[..., Any], name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor:
        self._count(name)
        x, rest = args[0], args[1:]
        inplace = _is_inplace(func, name, args, kwargs)

        def act(t: Tensor) -> Tensor:
            return func(t, *rest, **kwargs)

        return self.rules.relu.apply(x, act, inplace)

    def _gate(
        self,
        func: Callable[..., Any],
        name: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        surrogate: Callable[[Tensor], Tensor],
    ) -> Any:
        """An elementwise gate replaced by the rule set's surrogate (in place if the op is)."""
        self._count(name)
        out = surrogate(args[0])
        return args[0].copy_(out) if _is_inplace(func, name, args, kwargs) else out

    def _max_pool(self, func: Callable[..., Any], name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        self._count(name)
        geo = _pool_geometry(name, args, kwargs)
        x: Tensor = geo["input"]
        n = geo["spatial_dims"]
        adaptive = "adaptive" in name
        # torch.* builtins named *_with_indices, and torch's adaptive max-pool builtins,
        # always return (output, indices); F.* functionals only when asked.
        is_functional = getattr(func, "__module__", "") == "torch.nn.functional"
        wants_indices = bool(geo.get("return_indices")) or "with_indices" in name
        wants_indices = wants_indices or (adaptive and not is_functional)

        if self.rules.pool == "window_sum":
            out = _window_sum(x, geo, n, adaptive)
            if wants_indices:
                _, idx = _max_pool_with_indices(x.detach(), geo, n, adaptive)
                return out, idx
            return out

        def pool(t: Tensor) -> tuple[Tensor, Tensor]:
            return _max_pool_with_indices(t, geo, n, adaptive)

        out, switches = SwitchUnpool.apply(x, pool, n)
        if self.record_switches:
            self.switches.append(switches)
        return (out, switches) if wants_indices else out


def _records_grad(out: Any) -> bool:
    if isinstance(out, Tensor):
        return out.requires_grad
    if isinstance(out, (tuple, list)):
        return any(isinstance(o, Tensor) and o.requires_grad for o in out)
    return False


_MAX_POOL_FN = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_ADAPTIVE_MAX_POOL_FN = {1: F.adaptive_max_pool1d, 2: F.adaptive_max_pool2d, 3: F.adaptive_max_pool3d}
_ADAPTIVE_AVG_POOL_FN = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}
_CONV_FN = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def _max_pool_with_indices(x: Tensor, geo: dict[str, Any], n: int, adaptive: bool) -> tuple[Tensor, Tensor]:
    if adaptive:
        return _ADAPTIVE_MAX_POOL_FN[n](x, geo["output_size"], return_indices=True)
    window: geometry.WindowSpec = geo["window"]
    return _MAX_POOL_FN[n](
        x,
        window.kernel,
        window.stride,
        window.before,
        window.dilation,
        ceil_mode=bool(geo.get("ceil_mode", False)),
        return_indices=True,
    )


def _window_sum(x: Tensor, geo: dict[str, Any], n: int, adaptive: bool) -> Tensor:
    """Sum over each pooling window (probe rule): same geometry as the max-pool."""
    if adaptive:
        return _ADAPTIVE_AVG_POOL_FN[n](x, geo["output_size"])
    # The output shape, including ceil_mode's extra windows, comes from the real op.
    with torch.no_grad():
        ref, _ = _max_pool_with_indices(x.detach(), geo, n, adaptive=False)
    window: geometry.WindowSpec = geo["window"]
    kernel, stride, padding, dilation = window.kernel, window.stride, window.before, window.dilation
    out_shape = ref.shape[-n:]
    # Pad on the far side so that ceil_mode's last window exists; zeros add no support.
    pads: list[int] = []
    for d in reversed(range(n)):
        span = (out_shape[d] - 1) * stride[d] + dilation[d] * (kernel[d] - 1) + 1
        far = max(0, span - x.shape[-n + d] - padding[d])
        pads += [padding[d], far]
    lead = x.shape[:-n]
    flat = x.reshape(-1, 1, *x.shape[-n:])
    flat = F.pad(flat, pads)
    ones = x.new_ones((1, 1, *kernel))
    out = _CONV_FN[n](flat, ones, stride=stride, dilation=dilation)
    kept: tuple[Any, ...] = (..., *[slice(0, s) for s in out_shape])
    out = out[kept]
    return out.reshape(*lead, *out_shape)
