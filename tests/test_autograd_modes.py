"""Every entry point that runs a backward works under the caller's ``torch.no_grad()`` and
``torch.inference_mode()``, with the answer it gives outside them.

A notebook often wraps evaluation code in one of them; the reverse passes, the relevance of
``mine_topk(rank_by="relevance")`` and the receptive-field probe enable autograd themselves
(``torch.enable_grad()``) and leave inference mode (``_guard.autograd_inside``), on normal
copies of the inference tensors they were given.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import matplotlib
import pytest
import torch
from conftest import SmallClassifier

import captum_deconvviz as cdv
from captum_deconvviz import MiningResult, mine_topk

matplotlib.use("Agg")

IMAGE = (3, 12, 12)
LABELS = torch.tensor([0, 1, 2] * 4)


class Net(SmallClassifier):
    """conv-BN-ReLU-pool-conv-ReLU, global pool, linear: 3 classes on 3x12x12."""

    def __init__(self) -> None:
        super().__init__(widths=(6, 8), classes=3, dropout=0.0)


@pytest.fixture(scope="module")
def setup() -> tuple[Net, torch.Tensor, MiningResult]:
    torch.manual_seed(0)
    model, data = Net().eval(), torch.randn(12, *IMAGE)
    return model, data, mine_topk(model, ["features.2", "features.5"], data, k=3, progress=False)


MODES: dict[str, Callable[[], contextlib.AbstractContextManager[Any]]] = {
    "no_grad": torch.no_grad,
    "inference_mode": torch.inference_mode,
}


def _records(result: MiningResult) -> list[Any]:
    return [result.records(layer, c) for layer in result.layers for c in range(result.channels(layer))]


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    """The tensors of an entry point's answer, in a fixed order, for comparing answers."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, MiningResult):
        yield torch.tensor([r.value for rows in _records(value) for r in rows])
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for key in sorted(value):
            yield from _tensors(value[key])
    elif hasattr(value, "__dataclass_fields__"):
        for name in value.__dataclass_fields__:
            yield from _tensors(getattr(value, name))


CALLS: dict[str, Callable[[Net, torch.Tensor, MiningResult], Any]] = {
    "mine_topk-relevance": lambda m, x, r: mine_topk(
        m, ["features.5"], x, k=3, labels=LABELS, rank_by="relevance", target="label", progress=False
    ),
    "mine_topk-relevance-predicted": lambda m, x, r: mine_topk(
        m, ["features.2"], x, k=3, rank_by="relevance", target="predicted", batch_size=5, progress=False
    ),
    "ZFDeconvolution": lambda m, x, r: cdv.ZFDeconvolution(m).attribute(x[:2], target=0),
    "EngineGuidedBackprop": lambda m, x, r: cdv.EngineGuidedBackprop(m).attribute(x[:2], target=1),
    "NeuronZFDeconvolution": lambda m, x, r: cdv.NeuronZFDeconvolution(m, "features.2").attribute(x[:2], (0, 1, 1)),
    "NeuronEngineGuidedBackprop": lambda m, x, r: cdv.NeuronEngineGuidedBackprop(m, "features.5").attribute(
        x[:2], (1, 2, 2)
    ),
    "project_units": lambda m, x, r: cdv.project_units(m, "features.2", x[:2], torch.tensor([[0, 1, 1], [1, 2, 2]])),
    "project_records": lambda m, x, r: cdv.project_records(m, "features.5", x[:2], torch.tensor([[0, 0, 1, 1]])),
    "MiningResult.projections": lambda m, x, r: MiningResult.from_dict(r.to_dict()).projections(
        m, x, "features.5", [0, 1], rules="guided"
    ),  # a fresh copy: its crop cache is empty
    "exemplar_agreement": lambda m, x, r: cdv.exemplar_agreement(
        MiningResult.from_dict(r.to_dict()), m, x, "features.5", [0]
    ),
    "compare_methods": lambda m, x, r: cdv.compare_methods(m, x[:2], target=0, methods=["zf_deconv", "saliency"]),
    "randomization_test": lambda m, x, r: (
        cdv.randomization_test(m, x[:2], target=0, methods=["saliency"], layers=["fc"], random_state=0).similarity
    ),
    "diagnose": lambda m, x, r: cdv.diagnose(m, x, layers=["features.0"])["features.0"].rms,
    "receptive_field-probe": lambda m, x, r: list(cdv.receptive_field(m, "features.5", IMAGE, method="probe").size),
}


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("name", list(CALLS))
def test_an_entry_point_gives_the_same_answer_under_no_grad_and_inference_mode(
    setup: tuple[Net, torch.Tensor, MiningResult], name: str, mode: str
) -> None:
    model, data, result = setup
    expected = CALLS[name](model, data, result)
    with MODES[mode]():
        inside = data.clone()  # an inference tensor under inference_mode: it is copied where autograd needs it
        got = CALLS[name](model, inside, result)
    if isinstance(expected, list) and not isinstance(expected[0], torch.Tensor):
        assert got == expected
        return
    pairs = list(zip(_tensors(got), _tensors(expected), strict=True))
    assert pairs, f"{name}: no tensors to compare"
    for a, b in pairs:
        torch.testing.assert_close(a, b, equal_nan=True)
    assert all(p.grad is None for p in model.parameters())


def test_relevance_mining_under_no_grad_equals_the_mining_outside(
    setup: tuple[Net, torch.Tensor, MiningResult],
) -> None:
    model, data, _ = setup
    kwargs: dict[str, Any] = {"k": 3, "labels": LABELS, "by_class": True, "rank_by": "relevance", "target": 1}
    outside = mine_topk(model, ["features.2", "features.5"], data, progress=False, **kwargs)
    for mode in MODES.values():
        with mode():
            inside = mine_topk(model, ["features.2", "features.5"], data, progress=False, **kwargs)
        assert _records(inside) == _records(outside)
        for layer in outside.layers:
            torch.testing.assert_close(inside.class_stats(layer).class_means, outside.class_stats(layer).class_means)
            for a, b in zip(inside.class_units(layer, 1, n=3), outside.class_units(layer, 1, n=3), strict=True):
                assert torch.equal(a, b)
            assert inside.records(layer, 0, cls=1) == outside.records(layer, 0, cls=1)
    assert torch.is_grad_enabled()


def test_write_explorer_under_inference_mode(setup: tuple[Net, torch.Tensor, MiningResult], tmp_path: Path) -> None:
    model, data, result = setup
    copy = MiningResult.from_dict(result.to_dict())
    with torch.inference_mode():
        index = cdv.write_explorer(tmp_path / "explorer", model, data, copy, progress=False)
    assert index.is_file() and "explorer-data" in index.read_text(encoding="utf-8")


def test_warnings_still_point_at_the_caller(setup: tuple[Net, torch.Tensor, MiningResult]) -> None:
    model, data, _ = setup  # autograd_inside adds a frame: the warnings' stacklevels count it
    with pytest.warns(UserWarning, match="only 12 images were mined") as caught:
        mine_topk(model, ["features.2"], data, k=20, progress=False)
    assert caught[0].filename == __file__
    with pytest.warns(DeprecationWarning, match="random_state") as caught:
        cdv.randomization_test(model, data[:2], target=0, methods=["saliency"], layers=["fc"], seed=1)
    assert caught[0].filename == __file__


def test_data_made_under_inference_mode_is_served_but_never_cached(
    setup: tuple[Net, torch.Tensor, MiningResult], tmp_path: Path
) -> None:
    """An inference tensor has no version counter: an in-place edit of it could not be seen by the cache."""
    model, data, result = setup
    with torch.inference_mode():
        frozen = data.clone()
    copy = MiningResult.from_dict(result.to_dict())
    expected = copy.patches(data, "features.5", [0, 1])
    copy.clear_cache()
    got = copy.patches(frozen, "features.5", [0, 1])
    assert torch.equal(got.images, expected.images) and copy.cache_info()["entries"] == 0
    shown = copy.records("features.5", 0)[0].index
    with torch.inference_mode():
        frozen[shown] += 1  # allowed on an inference tensor, and invisible to a version counter
    changed = copy.patches(frozen, "features.5", [0, 1])
    assert not torch.equal(changed.images, expected.images)  # computed again, not served stale
    projections = copy.projections(model, frozen, "features.5", [0])
    torch.testing.assert_close(projections.images, copy.projections(model, frozen.clone(), "features.5", [0]).images)
    assert cdv.write_explorer(tmp_path / "explorer", model, frozen, copy, progress=False).is_file()
