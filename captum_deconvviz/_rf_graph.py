"""Analytic receptive fields over the ops that actually run (see ``receptive_field.py``).

:class:`FieldRecorder` is a ``TorchFunctionMode``, the same interception mechanism as
the reverse engine (:class:`~captum_deconvviz.engine.ReverseRules`): while the model runs
once on an example input, every op is seen with its real arguments (conv and pool
geometry, ``F.pad`` amounts, interpolation sizes, the dims that slicing, split, cat,
view and permute act on), and each output tensor gets a :class:`~._field.Field` computed
from its inputs' fields by the geometry rules in ``_rf_rules.py``. No ``torch.fx``
trace is needed: control flow and padding computed at run time resolve at the given
input size, and functional convolutions with computed weights are plain ``conv2d`` calls.

Module hooks (removed afterwards) name the layers: each module's output fields are
kept as they were when the module returned, before any later in-place op.
"""

from __future__ import annotations

import contextlib
import functools
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from . import _rf_rules as rules
from ._field import Field, Unmodelled, input_seg
from ._forward import EvalMode, StopForward, eager_compiled, example_input, meta_copy

__all__ = ["Analysis", "FieldRecorder", "Snapshot", "analyse"]


@dataclass(frozen=True)
class Snapshot:
    """A module's output as the analysis saw it: a tensor's field, or a container of them."""

    kind: str  # "tensor", "seq", "dict" or "other"
    field: Field | Unmodelled | None = None
    shape: tuple[int, ...] = ()
    items: Any = None  # list[Snapshot] for "seq", dict[Any, Snapshot] for "dict"
    type_name: str = ""


class FieldRecorder(TorchFunctionMode):
    """Give every tensor computed from the input a :class:`~._field.Field`.

    Args:
        input_size: spatial size of the input, e.g. ``(H, W)``.
        detach_global: the probe's "local" mode: gates computed from global statistics
            and the statistics of GroupNorm, LayerNorm or InstanceNorm are detached from
            autograd, so a gradient probe measures the local field.
    """

    def __init__(self, input_size: tuple[int, ...], detach_global: bool = False) -> None:
        super().__init__()
        self.input_size = tuple(input_size)
        self.detach_global = detach_global
        self._fields: dict[int, tuple[weakref.ref, Field | Unmodelled]] = {}
        self.stack: list[tuple[str, nn.Module]] = []
        self.outputs: dict[str, Snapshot] = {}
        self.order: list[str] = []
        self.stop_after: str | None = None

    # ---- the field table, keyed by tensor identity ----------------------------------------

    def get(self, tensor: Tensor) -> Field | Unmodelled | None:
        entry = self._fields.get(id(tensor))
        if entry is None or entry[0]() is not tensor:
            return None
        return entry[1]

    def set(self, tensor: Tensor, value: Field | Unmodelled | None) -> None:
        if value is None:
            self._fields.pop(id(tensor), None)
            return
        key = id(tensor)
        self._fields[key] = (weakref.ref(tensor, functools.partial(self._forget, key)), value)

    def _forget(self, key: int, ref: weakref.ref) -> None:
        entry = self._fields.get(key)
        if entry is not None and entry[0] is ref:
            del self._fields[key]

    def start(self, x: Tensor) -> None:
        """Mark ``x`` (``[N, C, *spatial]``) as the input."""
        n = len(self.input_size)
        dims: tuple[int | None, ...] = (None,) * (x.dim() - n) + tuple(range(n))
        cmap = np.zeros(tuple(x.shape[: x.dim() - n]), dtype=np.int64)
        self.set(x, Field(dims, cmap, (input_seg(self.input_size),)))

    def where(self) -> str:
        """The module running now, quoted, for error messages."""
        return repr(self.stack[-1][0]) if self.stack and self.stack[-1][0] else "the model's own forward"

    def path(self) -> str:
        """The module running now, for ``global_via`` reasons: ``blocks.2.se``."""
        return self.stack[-1][0] if self.stack and self.stack[-1][0] else "the model"

    # ---- module hooks --------------------------------------------------------------------

    @contextlib.contextmanager
    def watch(self, model: nn.Module) -> Iterator[None]:
        """Track which module runs, and keep each module's output fields."""
        handles = []
        for name, module in model.named_modules():
            handles.append(module.register_forward_pre_hook(self._enter(name, module)))
            handles.append(module.register_forward_hook(self._leave(name)))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _enter(self, name: str, module: nn.Module) -> Callable[..., None]:
        def hook(_module: nn.Module, _inputs: Any) -> None:
            self.stack.append((name, module))

        return hook

    def _leave(self, name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            if self.stack and self.stack[-1][0] == name:
                self.stack.pop()
            if name not in self.outputs:
                self.outputs[name] = self.snapshot(output)
                self.order.append(name)
            if name == self.stop_after:
                raise StopForward

        return hook

    def snapshot(self, value: Any) -> Snapshot:
        if isinstance(value, Tensor):
            return Snapshot("tensor", self.get(value), tuple(value.shape))
        if isinstance(value, (tuple, list)):
            return Snapshot("seq", items=[self.snapshot(v) for v in value], type_name=type(value).__name__)
        if isinstance(value, dict):
            return Snapshot("dict", items={k: self.snapshot(v) for k, v in value.items()}, type_name="dict")
        return Snapshot("other", type_name=type(value).__name__)

    # ---- the mode ------------------------------------------------------------------------

    def __torch_function__(
        self, func: Callable[..., Any], types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        name = rules.op_name(func)
        if name in rules.NON_TENSOR_OPS:
            return func(*args, **kwargs)
        sources = [(t, f) for t in rules.tensors_in(args, kwargs) if (f := self.get(t)) is not None]
        if not sources:
            return func(*args, **kwargs)
        if self.detach_global:
            local = rules.localize(self, rules.OpCall(name, func, args, kwargs), sources)
            func, args, kwargs = local.func, local.args, local.kwargs
        out = func(*args, **kwargs)
        if name in rules.NO_DEPENDENCE_OPS:
            if args and out is args[0]:  # zero_() or fill_(): the values no longer depend on the input
                self.set(out, None)
            return out
        if not rules.has_tensor(out):
            return out
        bad = next((f for _, f in sources if isinstance(f, Unmodelled)), None)
        result: Any
        if bad is not None:
            result = bad
        else:
            try:
                fields = [(t, f) for t, f in sources if isinstance(f, Field)]
                result = rules.apply(self, rules.OpCall(name, func, args, kwargs), out, fields)
            except Unmodelled as err:
                result = err
            except Exception as err:  # a gap in a rule must never break the user's forward
                result = Unmodelled(name, self.where(), f"{type(err).__name__}: {err}")
        self._assign(out, result)
        written = kwargs.get("out")
        if isinstance(written, Tensor) and written is not out:
            self._assign(written, result)
        return out

    def _assign(self, out: Any, result: Any) -> None:
        if isinstance(out, Tensor):
            self.set(out, result[0] if isinstance(result, list) else result)
        elif isinstance(out, (tuple, list)):
            for i, item in enumerate(out):
                if isinstance(item, Tensor):
                    self.set(item, result[i] if isinstance(result, list) else result)


@dataclass
class Analysis:
    """The fields of every module's output for one input shape."""

    input_shape: tuple[int, ...]
    outputs: dict[str, Snapshot] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)


def analyse(model: nn.Module, input_shape: tuple[int, ...], stop_after: str | None = None) -> Analysis:
    """Run ``model`` once on zeros of ``input_shape`` (eval mode, no grad) under a recorder.

    Args:
        model: the network; not modified (hooks removed, training flags restored).
        input_shape: ``(C, *spatial)`` without batch.
        stop_after: end the forward pass once this module has returned.

    Raises:
        ValueError: the model cannot run on ``input_shape``.
    """
    try:  # shapes only, on a copy on the meta device: no arithmetic at all
        shadow = meta_copy(model)
        return _record(shadow, input_shape, stop_after, torch.empty((1, *input_shape), device="meta"))
    except Exception:  # the forward reads values (data-dependent control flow...): run the model itself
        pass
    try:
        return _record(model, input_shape, stop_after, example_input(model, input_shape))
    except Exception as err:
        raise ValueError(
            f"the model cannot run on input_shape={tuple(input_shape)}: {type(err).__name__}: {err}"
        ) from None


def _record(model: nn.Module, input_shape: tuple[int, ...], stop_after: str | None, x: Tensor) -> Analysis:
    recorder = FieldRecorder(tuple(input_shape[1:]))
    recorder.stop_after = stop_after
    with torch.no_grad(), EvalMode(model), eager_compiled(), recorder.watch(model):
        recorder.start(x)
        with recorder, contextlib.suppress(StopForward):
            model(x)
    return Analysis(tuple(input_shape), recorder.outputs, recorder.order)
