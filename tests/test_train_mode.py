"""Models in training mode: every entry point runs them in eval mode, on the model itself,
and leaves modes and buffers exactly as they were.

The oracle is an explicit ``copy.deepcopy(model).eval()``: each call on the train-mode
model must give exactly what the same call gives on that eval-mode copy, and the model
must come back in training mode with its BatchNorm statistics (and ``num_batches_tracked``)
untouched.
"""

from __future__ import annotations

import copy
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from captum_deconvviz import (
    Crops,
    EngineGuidedBackprop,
    MiningResult,
    NeuronEngineGuidedBackprop,
    NeuronZFDeconvolution,
    ZFDeconvolution,
    class_unit_rows,
    compare_methods,
    diagnose,
    exemplar_agreement,
    exemplar_rows,
    mine_topk,
    project_records,
    project_units,
    randomization_test,
    receptive_field,
    track_features,
    write_explorer,
)
from captum_deconvviz._exemplar_records import ExemplarRow
from captum_deconvviz._taps import layer_activations


def bn_dropout_net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Dropout2d(0.5),
        nn.Conv2d(6, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )
    # Non-trivial running statistics, so that eval mode and batch statistics differ.
    with torch.no_grad():
        for bn in (net[1], net[6]):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
    return net.train()


X = torch.randn(6, 3, 12, 12, generator=torch.Generator().manual_seed(1))
UNITS = torch.tensor([[0, 1, 1], [1, 2, 3], [2, 0, 0], [3, 5, 5], [4, 4, 2], [5, 3, 3]])
RECORDS = torch.tensor([[0, 0, 1, 1], [0, 3, 2, 3], [2, 7, 5, 5]])


def _mined(model: nn.Module) -> MiningResult:
    return mine_topk(model, ["2", "7"], X, k=2, progress=False)


LABELS = torch.tensor([0, 1, 2, 3, 0, 1])  # the model has 4 classes


def _exemplars_mined(model: nn.Module) -> MiningResult:
    return mine_topk(model, ["2", "7"], X, k=2, labels=LABELS, by_class=True, bottom_k=2, quantiles=True,
                     progress=False)  # fmt: skip


def _relevance_mined(model: nn.Module) -> MiningResult:
    return mine_topk(model, ["2", "7"], X, k=2, labels=LABELS, rank_by="relevance", target="label", by_class=True,
                     progress=False)  # fmt: skip


def _exemplars(result: MiningResult) -> list[Any]:
    """Every kind of record of every channel, and the class statistics."""
    out: list[Any] = []
    for layer in result.layers:
        stats = result.class_stats(layer)
        out += [stats.histogram, stats.class_means, stats.selectivity, stats.top_class]
        for c in range(result.channels(layer)):
            out += [result.records(layer, c), result.records(layer, c, kind="bottom"),
                    result.records(layer, c, kind="quantile", q=0.5), result.records(layer, c, cls=1)]  # fmt: skip
    return out


def _relevance(result: MiningResult) -> list[Any]:
    out: list[Any] = [result.records(layer, c) for layer in result.layers for c in range(result.channels(layer))]
    return out + [result.class_units(layer, cls, n=3) for layer in result.layers for cls in range(4)]


def _rows(rows: list[ExemplarRow]) -> list[Any]:
    return [(row.records, row.patches.images, row.projections.images if row.projections else None, row.title,
             row.figure_title) for row in rows]  # fmt: skip


def _agreement(agreement: Any) -> list[Any]:
    return [getattr(agreement, name) for name in ("spearman", "spearman_abs", "ssim", "deconv", "guided")]


def _explorer(model: nn.Module) -> dict[str, Any]:
    """Every file of a small explorer (no Guided Backprop), the page's time of writing left out."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "explorer"
        write_explorer(out, model, X, _mined(model), command=["test"], guided=False, progress=False)
        files: dict[str, Any] = {p.name: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
        files["index.html"] = re.sub(rb'"made": ?"[^"]*"|Made [0-9T:-]+ ', b"", files["index.html"])
        return files


CALLS: dict[str, Callable[[nn.Module], Any]] = {
    "ZFDeconvolution": lambda m: ZFDeconvolution(m).attribute(X, target=1),
    "EngineGuidedBackprop": lambda m: EngineGuidedBackprop(m).attribute(X, target=2),
    "NeuronZFDeconvolution": lambda m: NeuronZFDeconvolution(m, "7").attribute(X, (1, 2, 2)),
    "NeuronEngineGuidedBackprop": lambda m: NeuronEngineGuidedBackprop(m, "7").attribute(X, (3, 1, 4), seed="one"),
    "project_units-crop": lambda m: project_units(m, "2", X, UNITS, crop=True),
    "project_units-full": lambda m: project_units(m, "7", X, UNITS[:, :3] % 6, crop=False),
    "project_units-intermediates": lambda m: project_units(m, "2", X, UNITS, return_intermediates=True)[0],
    "project_records": lambda m: project_records(m, "7", X[:3], RECORDS),
    "mine_topk": lambda m: [_mined(m).records(layer, c) for layer in ("2", "7") for c in range(6)],
    "MiningResult.projections": lambda m: _mined(m).projections(m, X, "7", [0, 5]).images,
    "MiningResult.verify": lambda m: _mined(m).verify(m, X),
    "receptive_field-probe": lambda m: receptive_field(m, "7", (3, 12, 12), method="probe").size,
    "compare_methods": lambda m: compare_methods(m, X[:2], target=0).maps["zf_deconv"],
    "randomization_test": lambda m: randomization_test(m, X[:2], 0, methods=["zf_deconv"]).original["zf_deconv"],
    "diagnose": lambda m: diagnose(m, X).table(),
    "track_features": lambda m: track_features([m], X, "7", [0, 1]).projections[0].images,
    "layer_activations": lambda m: layer_activations(m, ["7"], X)["7"],
    "mine_topk-exemplars": lambda m: _exemplars(_exemplars_mined(m)),
    "mine_topk-relevance": lambda m: _relevance(_relevance_mined(m)),
    "exemplar_agreement": lambda m: _agreement(exemplar_agreement(_mined(m), m, X, "7", [0, 3])),
    "exemplar_rows": lambda m: _rows(
        exemplar_rows(_exemplars_mined(m), X, "7", 1, model=m, quantiles=(0.5,), classes=(0,))
    ),
    "class_unit_rows": lambda m: _rows(
        class_unit_rows(_relevance_mined(m), X, "7", 0, model=m, n=2, within_class=True)
    ),
    "write_explorer": _explorer,
}


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, Tensor):  # NaN (a class without images, a metric without a value) equals NaN
        return (
            isinstance(b, Tensor)
            and a.shape == b.shape
            and a.dtype == b.dtype
            and bool(((a == b) | (a.isnan() & b.isnan()) if a.is_floating_point() else a == b).all())
        )
    if isinstance(a, Crops):
        return isinstance(b, Crops) and _equal(a.images, b.images) and _equal(a.mask, b.mask)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    return bool(a == b)


@pytest.mark.parametrize("call", list(CALLS), ids=list(CALLS))
def test_train_mode_model_runs_in_eval_and_is_left_as_it_was(call: str, snapshot: Any) -> None:
    model = bn_dropout_net()
    oracle = copy.deepcopy(model).eval()
    before = snapshot(model)
    got = CALLS[call](model)
    before.assert_unchanged(model)  # training flags, running stats, num_batches_tracked, hooks
    assert all(m.training for m in model.modules())
    expected = CALLS[call](oracle)
    assert _equal(got, expected), f"{call}: the train-mode model did not give the eval-mode answer"


def test_a_submodule_left_in_eval_mode_stays_there(snapshot: Any) -> None:
    model = bn_dropout_net()
    model[6].eval()  # a mixed model: one BatchNorm frozen on purpose
    before = snapshot(model)
    project_units(model, "7", X, UNITS[:, :3] % 6, crop=False)
    before.assert_unchanged(model)
    assert model.training and not model[6].training


class CountingBuffer(nn.Module):
    """Writes its buffers even in eval mode: an in-place counter and a rebound running max."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))
        self.register_buffer("seen_max", torch.zeros(()))

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1  # in place
        self.seen_max = torch.maximum(self.seen_max, x.detach().max())  # a new tensor rebound to the name
        return x


def test_buffers_written_in_eval_mode_are_restored(snapshot: Any) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), CountingBuffer(), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 10 * 10, 3))
    calls, seen = model[1].calls, model[1].seen_max
    before = snapshot(model)
    ZFDeconvolution(model).attribute(X, target=0)
    mine_topk(model, "2", X, k=2, progress=False)
    project_units(model, "2", X, UNITS[:, :3] % 4, crop=False)
    before.assert_unchanged(model)
    assert model[1].calls is calls and model[1].seen_max is seen, "the buffer objects themselves are kept"
    assert int(model[1].calls) == 0 and float(model[1].seen_max) == 0.0


def test_a_failing_call_restores_modes_and_buffers(snapshot: Any) -> None:
    model = bn_dropout_net()
    before = snapshot(model)
    with pytest.raises(ValueError, match="units"):
        project_units(model, "7", X, torch.full((6, 3), 99), crop=False)
    before.assert_unchanged(model)
    # Refused only once the first batch's output shows the model's classes: after a forward and a backward.
    with pytest.raises(ValueError, match="target 9 is out of range"):
        mine_topk(model, "7", X, k=2, labels=LABELS, rank_by="relevance", target=9, bottom_k=1, progress=False)
    before.assert_unchanged(model)


def test_parameters_are_never_copied() -> None:
    """Eval mode is switched on the model itself: a data_ptr seen in the forward is the user's."""
    model = bn_dropout_net()
    seen: list[int] = []
    # The receptive-field analysis runs a meta-device copy (shapes only, no memory): not counted.
    model[0].register_forward_pre_hook(
        lambda m, _x: seen.append(m.weight.data_ptr()) if m.weight.device.type != "meta" else None
    )
    ZFDeconvolution(model).attribute(X, target=1)
    project_units(model, "7", X, UNITS[:, :3] % 6, crop=False)
    mine_topk(model, "7", X, k=2, progress=False)
    assert seen and set(seen) == {model[0].weight.data_ptr()}
