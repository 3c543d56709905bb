"""``torch.compile``d models, run eagerly: every entry point sees the uncompiled modules.

Neither the engine (a ``TorchFunctionMode``) nor the receptive-field analysis nor the
mining hooks may be traced by dynamo: under inductor a compiled submodule gave silently
different answers, and the hooks do not compile. :func:`unwrap_compiled` gives an eager
view of a model that shares its parameters; :func:`eager_compiled` covers what no view can
unwrap (a ``forward`` decorated with ``@torch.compile``).
"""

from __future__ import annotations

import copy
import sys
import weakref
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import nn

__all__ = ["VIEW_OF", "eager_compiled", "is_compile_wrapper", "unwrap_compiled"]


def unwrap_compiled(model: nn.Module) -> nn.Module:
    """The model as it runs eagerly: every ``torch.compile`` wrapper replaced by the module it holds.

    Neither the engine nor the analysis may be traced by dynamo (its recompile limit would be
    hit at every new mode, and the mining hooks do not compile). A wrapped model is its
    ``_orig_mod``; a model with compiled submodules (``model.features =
    torch.compile(model.features)`` or ``module.compile()``) becomes a view whose modules on
    the way to them are shallow copies (their own submodule and hook tables, the same
    parameters and buffers) and whose other modules are the model's own. The user's model is
    never changed, and layer names are those of the uncompiled model (``features.0``, not
    ``features._orig_mod.0``).
    """
    return _eager_view(model, {})[0]


def eager_compiled() -> AbstractContextManager[Any]:
    """Run ``torch.compile``d code eagerly inside the block (functions, or a ``forward``
    decorated with it, that no view can unwrap): our hooks and modes must run as Python,
    never be traced. A process that never imported dynamo has nothing compiled, and is spared
    the import."""
    if "torch._dynamo" not in sys.modules:
        return nullcontext()
    return torch.compiler.set_stance("force_eager")


VIEW_OF = "_deconvviz_view_of"  # a view's module -> the user's module it copies


def is_compile_wrapper(module: nn.Module) -> bool:
    """Whether ``module`` is a ``torch.compile`` wrapper (``OptimizedModule``)."""
    # Only a process that imported dynamo can hold a wrapper: never import it here (it is slow).
    wrapper = getattr(sys.modules.get("torch._dynamo.eval_frame"), "OptimizedModule", None)
    return wrapper is not None and isinstance(module, wrapper)


def _eager_view(module: nn.Module, memo: dict[int, tuple[nn.Module, bool]]) -> tuple[nn.Module, bool]:
    """``(module or its eager view, whether it differs)``; ``memo`` keeps shared modules shared."""
    if id(module) in memo:
        return memo[id(module)]
    inner = getattr(module, "_orig_mod", None)
    if is_compile_wrapper(module) and isinstance(inner, nn.Module):
        memo[id(module)] = (_eager_view(inner, memo)[0], True)
        return memo[id(module)]
    children = {
        name: _eager_view(child, memo) if child is not None else (None, False)
        for name, child in module._modules.items()
    }
    if module.__dict__.get("_compiled_call_impl") is None and not any(changed for _, changed in children.values()):
        memo[id(module)] = (module, False)
        return memo[id(module)]
    view = copy.copy(module)  # drops _compiled_call_impl (Module.__getstate__)
    for key, value in vars(view).items():
        if isinstance(value, (dict, set)):
            view.__dict__[key] = type(value)(value)  # hooks registered on the view stay off the model
    view.__dict__["_modules"] = {name: child for name, (child, _) in children.items()}
    view.__dict__[VIEW_OF] = weakref.ref(module)  # a weak reference: deep copies of the view copy no model
    memo[id(module)] = (view, True)
    return memo[id(module)]
