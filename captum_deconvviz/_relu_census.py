"""Which ReLUs of a forward pass Captum's Guided Backprop and Deconvolution do not reach.

Captum overrides ReLU gradients with backward hooks on ``nn.ReLU`` *modules*; a ReLU
applied any other way (``F.relu``, ``torch.relu``, ``Tensor.relu``) and every ReLU-like
activation (``nn.ReLU6``, ``GELU``, ``SiLU``...) keeps its plain gradient, without a word,
so the map mixes in Saliency (docs/captum-differences.md). :func:`relus_captum_misses`
counts them in one watched forward, so that a comparison can say so.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from ._compiled import eager_compiled
from ._ops import RELU_LIKE_OPS, RELU_OPS

__all__ = ["ReluCensus", "relus_captum_misses"]

_WATCHED = RELU_OPS | RELU_LIKE_OPS


class ReluCensus(TorchFunctionMode):
    """Counts ReLU and ReLU-like ops, and those run outside an ``nn.ReLU`` module's own call.

    Attributes:
        total: ReLU-type ops the forward ran.
        missed: those not inside an ``nn.ReLU`` module's forward (Captum's hooks miss them).
        names: the missed ops' names, with counts.
    """

    def __init__(self) -> None:
        super().__init__()
        self.depth = 0
        self.total = 0
        self.missed = 0
        self.names: dict[str, int] = {}

    def __torch_function__(
        self, func: Callable[..., Any], types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        name = getattr(func, "__name__", "")
        if name in _WATCHED:
            self.total += 1
            if self.depth == 0:
                self.missed += 1
                self.names[name] = self.names.get(name, 0) + 1
        return func(*args, **(kwargs or {}))


def relus_captum_misses(model: nn.Module, inputs: Tensor) -> ReluCensus:
    """Run ``model(inputs)`` once (no autograd) and count the ReLU-type ops Captum's hooks miss.

    Args:
        model: the network, in the mode the caller wants (the caller's guard sets eval mode).
        inputs: a batch the model takes (one example is enough).

    Returns:
        The :class:`ReluCensus`: ``missed`` of ``total`` ReLU-type ops ran outside an
        ``nn.ReLU`` module's call.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.GELU())
        >>> census = relus_captum_misses(net, torch.zeros(1, 3, 8, 8))
        >>> census.missed, census.total, census.names
        (1, 2, {'gelu': 1})
    """
    census = ReluCensus()
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]  # what Captum hooks

    def enter(_module: nn.Module, _args: Any) -> None:
        census.depth += 1

    def leave(_module: nn.Module, _args: Any, _output: Any) -> None:
        census.depth -= 1

    handles = [h for m in relus for h in (m.register_forward_pre_hook(enter), m.register_forward_hook(leave))]
    try:
        with torch.no_grad(), eager_compiled(), census:
            model(inputs)
    finally:
        for handle in handles:
            handle.remove()
    return census
