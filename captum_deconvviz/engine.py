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

Rule sets (:data:`RULE_SETS`):

* ``"zf"``: DeconvNet. ReLU backward is ``relu(grad)``; max-pooling scatters the
  signal to the switches recorded in the forward pass, summing where overlapping
  windows share a switch (the adjoint).
* ``"guided"``: Guided Backprop (Springenberg et al. 2015). ReLU backward is
  ``relu(grad) * (input > 0)``; max-pooling as above.
* ``"probe"``: the receptive-field probe. ReLU family forward and backward are the
  identity, gates (sigmoid, tanh, ...) a bounded surrogate whose gradient never
  vanishes, max-pooling a window sum of the same geometry, so the gradient support
  of a unit is its whole receptive field.

Other activations follow the ``activations`` argument, see :class:`ReverseRules`.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

from . import _geometry as geometry
from ._ops import (
    ELEMENTWISE_GATES,
    GATE_OPS,
    KNOWN_OPS,
    LINEAR_OPS,
    MAX_POOL_OPS,
    NORM_OPS,
    RELU_LIKE_OPS,
    RELU_OPS,
    RELU_SPELLINGS,
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

ActivationPolicy = Literal["rectify", "gradient", "raise"]
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
# Reverse rules as autograd Functions.
# --------------------------------------------------------------------------------------


def _forward_activation(ctx: Any, x: Tensor, out: Tensor, inplace: bool) -> Tensor:
    """Return the activation's result; an in-place one changed ``x``, which autograd must know."""
    if inplace:
        ctx.mark_dirty(x)
        return x
    return out


class _RectifyBackward(torch.autograd.Function):
    """Forward: the activation as the model defines it. Backward: ``relu(grad)``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, act: Callable[[Tensor], Tensor], inplace: bool) -> Tensor:
        return _forward_activation(ctx, x, act(x), inplace)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        return grad.clamp_min(0), None, None


class _GuidedBackward(torch.autograd.Function):
    """Forward: the activation. Backward: ``relu(grad) * (input > 0)``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, act: Callable[[Tensor], Tensor], inplace: bool) -> Tensor:
        # The mask is taken from the input before an in-place activation overwrites it.
        ctx.save_for_backward(x > 0)
        return _forward_activation(ctx, x, act(x), inplace)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        (positive,) = ctx.saved_tensors
        return grad.clamp_min(0) * positive, None, None


class _IdentityActivation(torch.autograd.Function):
    """Receptive-field probe: the activation is replaced by the identity."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, act: Callable[[Tensor], Tensor], inplace: bool) -> Tensor:
        return _forward_activation(ctx, x, x if inplace else x.clone(), inplace)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        return grad, None, None


class _SwitchUnpool(torch.autograd.Function):
    """Max-pooling whose backward scatters the signal to the recorded switches.

    The backward is the adjoint of "gather at the switches": where overlapping
    windows share a switch, their signals are summed.
    """

    @staticmethod
    def forward(
        ctx: Any, x: Tensor, pool: Callable[[Tensor], tuple[Tensor, Tensor]], spatial_dims: int
    ) -> tuple[Tensor, Tensor]:
        out, switches = pool(x)
        ctx.save_for_backward(switches)
        ctx.input_shape = x.shape
        ctx.spatial_dims = spatial_dims
        ctx.mark_non_differentiable(switches)
        return out, switches

    @staticmethod
    def backward(ctx: Any, grad: Tensor, _grad_switches: Tensor | None) -> tuple[Tensor, None, None]:
        (switches,) = ctx.saved_tensors
        shape = ctx.input_shape
        lead = tuple(shape[: len(shape) - ctx.spatial_dims])
        plane = math.prod(shape[len(shape) - ctx.spatial_dims :])
        flat = grad.new_zeros((*lead, plane))
        flat = flat.scatter_add(-1, switches.reshape(*lead, -1), grad.reshape(*lead, -1))
        return flat.reshape(shape), None, None


# --------------------------------------------------------------------------------------
# Rule sets.
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RuleSet:
    """A named choice of reverse rules, which :class:`ReverseRules` delegates to.

    A new rule set is one :func:`register_rule_set` call in this module (zennit registers
    composites the same way); the mode, the projections and the Captum classes look it
    up by name and never compare names.

    Attributes:
        name: the key in :data:`RULE_SETS`, e.g. ``"zf"``.
        relu: the autograd Function applied to ReLU (and, under ``activations="rectify"``,
            to ReLU-like activations).
        relu_words: that rule in words, for the docs' support tables.
        pool: ``"switches"`` (DeconvNet switch unpooling) or ``"window_sum"`` (probe).
        relu_like_always: give ReLU-like activations the ReLU rule whatever the
            ``activations`` policy says (the probe maps dependence, not values).
        gate_surrogate: the forward that elementwise gates (sigmoid, tanh, ...) get, or
            None to keep them (plain gradient).
        projects: usable for unit projections (``project_units``), i.e. an attribution
            rule and not a measuring device.
    """

    name: str
    relu: type[torch.autograd.Function]
    relu_words: str
    pool: Literal["switches", "window_sum"] = "switches"
    relu_like_always: bool = False
    gate_surrogate: Callable[[Tensor], Tensor] | None = None
    projects: bool = True

    def pool_words(self) -> str:
        return "switch unpooling (sum on overlap)" if self.pool == "switches" else "window sum"


RULE_SETS: dict[str, RuleSet] = {}


def register_rule_set(rule_set: RuleSet) -> RuleSet:
    """Make ``rule_set`` available by its name to :class:`ReverseRules` and every entry point.

    Args:
        rule_set: the rules; its ``name`` must be new.

    Returns:
        ``rule_set``.

    Example:
        >>> import torch
        >>> class _Flip(torch.autograd.Function):  # a toy rule: reverse the sign
        ...     @staticmethod
        ...     def forward(ctx, x, act, inplace):
        ...         return act(x)
        ...     @staticmethod
        ...     def backward(ctx, grad):
        ...         return -grad, None, None
        >>> _ = register_rule_set(RuleSet("flip_demo", _Flip, "-grad"))
        >>> "flip_demo" in RULE_SETS
        True
        >>> del RULE_SETS["flip_demo"]
    """
    if not isinstance(rule_set, RuleSet):
        raise TypeError(f"rule_set must be a RuleSet, got {type(rule_set).__name__}")
    if rule_set.name in RULE_SETS:
        raise ValueError(f"a rule set named {rule_set.name!r} is already registered")
    RULE_SETS[rule_set.name] = rule_set
    return rule_set


def rule_set(rules: str | RuleSet, projecting: bool = False) -> RuleSet:
    """Look up a rule set by name (or pass one through), with a clear error.

    Args:
        rules: a name from :data:`RULE_SETS`, or a :class:`RuleSet`.
        projecting: refuse rule sets that are not attribution rules (the probe).
    """
    if isinstance(rules, RuleSet):
        found = rules
    elif isinstance(rules, str):
        if rules not in RULE_SETS:
            raise ValueError(f"rules must be one of {sorted(RULE_SETS)}, got {rules!r}")
        found = RULE_SETS[rules]
    else:
        raise TypeError(f"rules must be a str or RuleSet, got {type(rules).__name__}")
    if projecting and not found.projects:
        usable = sorted(n for n, r in RULE_SETS.items() if r.projects)
        raise ValueError(f"rules must be one of {usable} for projections, got {found.name!r}")
    return found


def _bounded_gate(x: Tensor) -> Tensor:
    """``1 + x / (1 + |x|)``: in (0, 2), with a gradient that never vanishes.

    The probe gives gates this forward: the identity would let a gated product
    ``x * gate(mean(x))`` grow quadratically per block until it overflows (EfficientNet's
    16 squeeze-excitation blocks), and a real sigmoid saturates to a zero gradient.
    """
    return 1 + x / (1 + x.abs())


register_rule_set(RuleSet("zf", _RectifyBackward, "rectify: relu(grad)"))
register_rule_set(RuleSet("guided", _GuidedBackward, "guided: relu(grad) * (input > 0)"))
register_rule_set(RuleSet("probe", _IdentityActivation, "identity", "window_sum", True, _bounded_gate, projects=False))


def activation_rule(op_name: str, rules: str = "zf", activations: ActivationPolicy = "rectify") -> str:
    """Describe in words the reverse rule an op gets.

    Args:
        op_name: the op's name as torch reports it, e.g. ``"relu"``, ``"hardtanh"``.
        rules: the rule set, a name from :data:`RULE_SETS`.
        activations: the policy for ReLU-like activations (see :class:`ReverseRules`).

    Returns:
        A short description, used in the documentation's support table.

    Example:
        >>> activation_rule("gelu")
        'rectify: relu(grad)'
    """
    found = rule_set(rules)
    if op_name in RELU_OPS or op_name in RELU_SPELLINGS:
        return found.relu_words
    if op_name in RELU_LIKE_OPS:
        if found.relu_like_always:
            return found.relu_words
        return {"rectify": found.relu_words, "gradient": "plain gradient", "raise": "error"}[activations]
    if op_name in MAX_POOL_OPS:
        return found.pool_words()
    if found.gate_surrogate is not None and op_name in ELEMENTWISE_GATES:
        return "bounded surrogate"
    if op_name in GATE_OPS or op_name in NORM_OPS:
        return "plain gradient"
    if op_name in LINEAR_OPS:
        return "transpose (autograd)"
    return "unknown: plain gradient, warned"


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

        out, switches = _SwitchUnpool.apply(x, pool, n)
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
    out = out[(..., *[slice(0, s) for s in out_shape])]
    return out.reshape(*lead, *out_shape)
