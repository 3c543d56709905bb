"""torch.compile'd models: every entry point answers as for the uncompiled model, dynamo stays out.

Entry points run the modules a compile wrapper holds (a wrapped model is its ``_orig_mod``; a
model with compiled submodules is seen through an eager view), so nothing is traced: no
recompile warnings, no graph breaks, no frames compiled, and the user's compiled graphs stay
valid. Layer names are those of the uncompiled model; ``_orig_mod`` parts are accepted.
"""

from __future__ import annotations

import logging
import shutil
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
from conftest import ModelSnapshot
from torch import Tensor, nn
from torch._dynamo.utils import counters

from captum_deconvviz import ZFDeconvolution, mine_topk, project_units, receptive_field
from captum_deconvviz._forward import check_model, resolve_layer
from captum_deconvviz._taps import layer_activations
from captum_deconvviz.diagnose import diagnose

HAS_CXX = any(shutil.which(cxx) for cxx in ("g++", "c++", "clang++"))
needs_cxx = pytest.mark.skipif(not HAS_CXX, reason="inductor compiles C++ on the CPU: no C++ compiler on this machine")


def _net() -> nn.Module:
    torch.manual_seed(0)
    features = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 5, 3), nn.ReLU()
    )
    model = nn.Sequential(OrderedDict(features=features, flatten=nn.Flatten(), head=nn.Linear(5 * 3 * 3, 3)))
    with torch.no_grad():
        model.features[1].running_mean.uniform_(-0.2, 0.2)
        model.features[1].running_var.uniform_(0.5, 1.5)
    return model.eval()


X = torch.randn(6, 3, 12, 12, generator=torch.Generator().manual_seed(1))
UNITS = torch.tensor([[0, 1, 1], [3, 2, 0]])


class _Logs(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.INFO:
            self.messages.append(f"{record.name}: {record.getMessage()}")


@contextmanager
def no_dynamo() -> Iterator[None]:
    """Fail if dynamo compiles a frame, warns or logs (at INFO or above) inside the block."""
    handler = _Logs()
    loggers = [logging.getLogger(name) for name in ("torch", "torch._dynamo", "torch._inductor")]
    for logger in loggers:
        logger.addHandler(handler)
    counters.clear()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
    assert not counters["frames"], f"dynamo compiled frames: {dict(counters['frames'])}"
    assert not counters["graph_break"], f"graph breaks: {dict(counters['graph_break'])}"
    assert handler.messages == []
    assert [str(w.message) for w in caught] == []


def _compiled(how: str, backend: str) -> tuple[nn.Module, str]:
    """A compiled copy of ``_net()`` that has already run once, and its name for features.4."""
    model = _net()
    if how == "model":
        model = torch.compile(model, backend=backend)
        name = "_orig_mod.features.4"  # what model.named_modules() calls it
    elif how == "submodule":
        model.features = torch.compile(model.features, backend=backend)  # type: ignore[assignment]
        name = "features._orig_mod.4"  # what model.named_modules() calls it
    elif how == "in_place":  # nn.Module.compile keeps the names
        model.features.compile(backend=backend)
        name = "features.4"
    else:  # a compiled forward method, as with @torch.compile on ``def forward``: nothing to unwrap
        forward = torch.compile(nn.Sequential.forward, backend=backend)
        model.__class__ = type("CompiledForward", (nn.Sequential,), {"forward": forward})
        name = "features.4"
    assert name in dict(model.named_modules())
    with torch.no_grad():
        model(X)  # the user's own compiled run
    return model, name


def _answers(model: nn.Module, layer: str) -> dict[str, Any]:
    """What every entry point returns for ``model``, as comparable values."""
    result = mine_topk(model, [layer, "features.2"], X, k=3, unique="nms", progress=False)
    image = mine_topk(model, [layer], X, k=2, progress=False, verify=True)
    return {
        "attribute": ZFDeconvolution(model).attribute(X, target=1),
        "project_units": project_units(model, layer, X[:2], UNITS),
        "receptive_field": receptive_field(model, layer, (3, 12, 12)),
        "records": [result.records(name, c) for name in result.layers for c in range(result.channels(name))],
        "records_image": [image.records(image.layers[0], c) for c in range(5)],
        "stats": result.stats("features.4"),
        "projections": result.projections(model, X, "features.4", [0, 2]).images,
        "activations": layer_activations(model, [layer], X)[layer],
        "diagnose": diagnose(model, X).table(),
    }


def _assert_same(got: dict[str, Any], expected: dict[str, Any]) -> None:
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        if isinstance(value, Tensor):
            assert torch.equal(got[key], value), key
        else:
            assert repr(got[key]) == repr(value), key


@pytest.fixture(scope="module")
def expected() -> dict[str, Any]:
    return _answers(_net(), "features.4")


@pytest.mark.parametrize("how", ["model", "submodule", "in_place", "forward"])
@pytest.mark.parametrize("backend", ["eager", pytest.param("inductor", marks=needs_cxx)])
def test_compiled_models_answer_as_uncompiled(how: str, backend: str, expected: dict[str, Any]) -> None:
    model, layer = _compiled(how, backend)
    snapshot = ModelSnapshot(model)
    features = model._orig_mod.features if how == "model" else model.features
    with no_dynamo():
        got = _answers(model, layer)
    _assert_same(got, expected)
    snapshot.assert_unchanged(model)
    assert (model._orig_mod.features if how == "model" else model.features) is features  # nothing swapped
    # The user's compiled code is still valid: calling it again compiles nothing new.
    counters.clear()
    with torch.no_grad():
        torch.testing.assert_close(model(X), _net()(X))
    assert not counters["frames"].get("total"), dict(counters["frames"])


def test_names_resolve_through_the_wrapper() -> None:
    model = _net()
    inner = model.features
    model.features = torch.compile(inner, backend="eager")  # type: ignore[assignment]
    view = check_model(model)
    assert "features.4" in dict(view.named_modules())
    assert not any("_orig_mod" in name for name, _ in view.named_modules())
    assert view is not model and view.features is inner  # a view; the compiled module's own modules
    for layer in ("features.4", "features._orig_mod.4", inner[4]):
        assert resolve_layer(view, layer) == ("features.4", inner[4])
    assert resolve_layer(view, model.features) == ("features", inner)  # the wrapper is the module it holds
    assert resolve_layer(view, model) == ("", view)  # the copied root is found by the user's object
    with pytest.raises(ValueError, match=r"layer='features\.9' is not a module of the model"):
        resolve_layer(view, "features.9")
    # Records are filed under the uncompiled name, whichever spelling was asked for.
    result = mine_topk(model, ["features._orig_mod.4"], X, k=2, progress=False)
    assert result.layers == ["features.4"]


def test_view_keeps_hooks_and_parameters_apart() -> None:
    """The view shares the parameters and buffers; hooks put on it never reach the user's model."""
    model = _net()
    model.features = torch.compile(model.features, backend="eager")  # type: ignore[assignment]
    calls: list[str] = []
    model.register_forward_hook(lambda *_: calls.append("user"))
    view = check_model(model)
    assert view.head.weight is model.head.weight
    handle = view.register_forward_hook(lambda *_: calls.append("view"))
    assert len(model._forward_hooks) == 1
    with torch.no_grad():
        view(X)
    assert calls == ["user", "view"]  # the user's hooks still run in the view, as on the model
    handle.remove()
    assert len(model._forward_hooks) == 1
