"""The reverse rules: autograd Functions with the DeconvNet, Guided Backprop and probe
backwards, and the registry of rule sets that :class:`~captum_deconvviz.engine.ReverseRules`
delegates to.

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

A new rule set is one :func:`register_rule_set` call here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from ._ops import (
    ELEMENTWISE_GATES,
    GATE_OPS,
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
    "RuleSet",
    "SwitchUnpool",
    "activation_rule",
    "register_rule_set",
    "rule_set",
]

ActivationPolicy = Literal["rectify", "gradient", "raise"]


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


class SwitchUnpool(torch.autograd.Function):
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
    if not isinstance(rules, (str, RuleSet)):
        raise TypeError(f"rules must be a str or RuleSet, got {type(rules).__name__}")
    found = rules if isinstance(rules, RuleSet) else RULE_SETS.get(rules)
    if found is None:
        raise ValueError(f"rules must be one of {sorted(RULE_SETS)}, got {rules!r}")
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
