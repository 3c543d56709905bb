"""The figures' misuse matrix: every public plot function x every class of bad argument.

Config-driven, as ``tests/test_misuse.py``: each case is one wrong call. Each must raise
the error type given, in one line that names the argument; the error must be raised by
this package (the innermost frame is ours, not matplotlib's, Captum's or torch's); it must
come before any drawing (no figure is made) unless the case says the argument can only
be judged while drawing; and the model used by the deprecated ``model=`` spellings must be
exactly as it was. The last tests check that the checks refuse nothing that is right.
"""

from __future__ import annotations

import dataclasses
import os
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import matplotlib

matplotlib.use("Agg")
import numpy as np
import pytest
import torch
from torch import nn

import captum_deconvviz._class_figures as class_figures
import captum_deconvviz._exemplar_figures as exemplar_figures
import captum_deconvviz._result_figures as result_figures
import captum_deconvviz.viz as viz
from captum_deconvviz import (
    ComparisonResult,
    Crops,
    Diagnosis,
    ExemplarRow,
    MiningResult,
    RandomizationResult,
    class_unit_rows,
    exemplar_rows,
    hierarchy_channels,
    mine_topk,
    plot_class_histogram,
    plot_class_units,
    plot_comparison,
    plot_diagnosis,
    plot_exemplars,
    plot_feature_evolution,
    plot_filters,
    plot_hierarchy,
    plot_randomization,
    plot_selectivity,
    plot_topk,
)
from captum_deconvviz.diagnose import FeatureEvolution, LayerDiagnosis

IMAGE = (3, 12, 12)
LAYERS = ["features.1", "features.4"]


class Net(nn.Module):
    """conv-ReLU-pool-conv-ReLU, global pool, linear: 3 classes on 3x12x12."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU()
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@dataclass
class Env:
    """What the cases call with: a model (in training mode), data, its result and projections, results to draw."""

    model: Net
    data: torch.Tensor
    result: MiningResult
    projections: Crops  # features.1, channels [0, 1]
    hierarchy: dict[str, Crops]  # the projections plot_hierarchy needs
    comparison: ComparisonResult
    randomization: RandomizationResult
    diagnosis: Diagnosis
    evolution: FeatureEvolution
    guided: Crops  # features.1, channels [0, 1], rules="guided"
    labelled: MiningResult  # labels, by_class, bottom_k=2, quantiles
    relevance: MiningResult  # features.4 only: labels, rank_by="relevance", target="label"
    rows: list[ExemplarRow]  # features.4 #0 of labelled, with projections: top, bottom, quantile 0.5
    unit_rows: list[ExemplarRow]  # the 2 units of relevance for class 0, with projections

    def topk(self, **kwargs: Any) -> Any:
        args = {"result": self.result, "data": self.data, "layer": "features.1", "channels": [0, 1],
                "projections": self.projections, "use_pyplot": False} | kwargs  # fmt: skip
        return plot_topk(**args)

    def hier(self, **kwargs: Any) -> Any:
        args = {"result": self.result, "data": self.data, "projections": self.hierarchy, "channels_per_layer": 2,
                "use_pyplot": False} | kwargs  # fmt: skip
        return plot_hierarchy(**args)

    def cmp(self, **kwargs: Any) -> Any:
        return plot_comparison(**({"result": self.comparison, "use_pyplot": False} | kwargs))

    def evo(self, **kwargs: Any) -> Any:
        return plot_feature_evolution(**({"evolution": self.evolution, "use_pyplot": False} | kwargs))

    def exemplars(self, **kwargs: Any) -> Any:
        return plot_exemplars(**({"rows": self.rows, "use_pyplot": False} | kwargs))

    def units(self, **kwargs: Any) -> Any:
        return plot_class_units(**({"rows": self.unit_rows, "use_pyplot": False} | kwargs))


@pytest.fixture(scope="module")
def env() -> Env:
    torch.manual_seed(0)
    model = Net()
    data = torch.randn(6, *IMAGE)
    result = mine_topk(model, LAYERS, data, k=3, progress=False)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    labelled = mine_topk(model, LAYERS, data, k=3, labels=labels, by_class=True, bottom_k=2, quantiles=True,
                         progress=False)  # fmt: skip
    relevance = mine_topk(model, ["features.4"], data, k=3, labels=labels, rank_by="relevance", target="label",
                          progress=False)  # fmt: skip
    model.train()  # training mode on purpose: the deprecated model= spellings must leave it so
    projections = result.projections(model, data, "features.1", [0, 1])
    shown = hierarchy_channels(result, channels_per_layer=2)
    hierarchy = {layer: result.projections(model, data, layer, channels) for layer, channels in shown.items()}
    inputs = torch.rand(2, 3, 8, 8)
    comparison = ComparisonResult(inputs, {"a": torch.randn(2, 3, 8, 8), "b": torch.randn(2, 3, 8, 8)}, {})
    curves = {"spearman_abs": torch.rand(2, 2), "ssim": torch.rand(2, 2)}
    randomization = RandomizationResult(["fc", "conv"], "cascading", {"a": curves, "b": dict(curves)}, {})
    layer = LayerDiagnosis("conv", "Conv2d", torch.tensor([True, False]), rms=torch.tensor([0.05, 0.2]),
                           high_frequency=torch.tensor([0.1, 0.9]), aliasing=torch.tensor([0.2]),
                           stride=(2, 2))  # fmt: skip
    crops = Crops(torch.rand(2, 1, 3, 5, 5), torch.ones(2, 1, 5, 5, dtype=torch.bool))
    evolution = FeatureEvolution("features.1", [0, 1], [crops, crops], [crops, crops])
    guided = result.projections(model, data, "features.1", [0, 1], rules="guided")
    rows = exemplar_rows(labelled, data, "features.4", 0, model=model, quantiles=(0.5,))
    unit_rows = class_unit_rows(relevance, data, "features.4", 0, model=model, n=2)
    return Env(model, data, result, projections, hierarchy, comparison, randomization, Diagnosis([layer], images=4),
               evolution, guided, labelled, relevance, rows, unit_rows)  # fmt: skip


Call = Callable[[Env], Any]
Errors = type[BaseException] | tuple[type[BaseException], ...]
CASES: list[tuple[str, Call, Errors, str, bool]] = []
VALUE_OR_TYPE = (ValueError, TypeError)
NAN = float("nan")


def case(name: str, call: Call, names: str, errors: Errors = VALUE_OR_TYPE, early: bool = True) -> None:
    """Add a case: ``call`` must raise ``errors`` naming ``names``; before any figure is made if ``early``."""
    CASES.append((name, call, errors, names, early))


def _nan(crops: Crops) -> torch.Tensor:
    images = crops.images.clone()
    images[0, 0, 0, 0, 0] = NAN
    return images


# -- plot_topk --------------------------------------------------------------------------------
for what, kwargs, names, errors in [
    ("result-dict", {"result": {}}, "result", TypeError),
    ("result-none", {"result": None}, "result", TypeError),
    ("method-typo", {"method": "heatmap"}, "method", ValueError),
    ("method-none", {"method": None}, "method", ValueError),
    ("sign-typo-default-method", {"sign": "pos"}, "sign", ValueError),
    ("sign-typo-heat-map", {"sign": "pos", "method": "heat_map"}, "sign", ValueError),
    ("sign-all-masked-image", {"sign": "all", "method": "masked_image"}, "sign", ValueError),
    ("sign-all-alpha-scaling", {"sign": "all", "method": "alpha_scaling"}, "sign", ValueError),
    ("cmap-unknown", {"cmap": "no_such_cmap", "method": "blended_heat_map"}, "cmap", ValueError),
    ("cmap-int", {"cmap": 3, "method": "heat_map"}, "cmap", TypeError),
    ("denormalize-string", {"denormalize": "imagenet"}, "denormalize", TypeError),
    ("denormalize-tuple", {"denormalize": (0.5, 0.5, 0.5)}, "denormalize", TypeError),
    ("projections-wrong-crop-size", {"projections": torch.zeros(2, 3, 3, 4, 4)}, "projections", ValueError),
    ("projections-wrong-k", {"projections": torch.zeros(2, 2, 3, 3, 3)}, "projections", ValueError),
    ("projections-wrong-channel-count", {"projections": torch.zeros(3, 3, 3, 3, 3)}, "projections", ValueError),
    ("projections-list", {"projections": [[0.0]]}, "projections", TypeError),
    ("projections-string", {"projections": "features.1"}, "projections", TypeError),
    ("channels-float", {"channels": 1.5}, "channels", TypeError),
    ("channels-string", {"channels": "01"}, "channels", TypeError),
    ("channels-bool", {"channels": True}, "channel", TypeError),
    ("channels-empty", {"channels": []}, "channels", ValueError),
    ("outlier-perc-100", {"outlier_perc": 100}, "outlier_perc", ValueError),
    ("outlier-perc-negative", {"outlier_perc": -1}, "outlier_perc", ValueError),
    ("outlier-perc-nan", {"outlier_perc": NAN}, "outlier_perc", ValueError),
    ("outlier-perc-string", {"outlier_perc": "2"}, "outlier_perc", TypeError),
    ("alpha-overlay-above-1", {"alpha_overlay": 5}, "alpha_overlay", ValueError),
    ("alpha-overlay-negative", {"alpha_overlay": -0.1}, "alpha_overlay", ValueError),
    ("alpha-overlay-bool", {"alpha_overlay": True}, "alpha_overlay", TypeError),
    ("cell-inches-zero", {"cell_inches": 0}, "cell_inches", ValueError),
    ("cell-inches-inf", {"cell_inches": float("inf")}, "cell_inches", ValueError),
    ("titles-string", {"titles": "no"}, "titles", TypeError),
    ("titles-int", {"titles": 1}, "titles", TypeError),
    ("use-pyplot-string", {"use_pyplot": "no"}, "use_pyplot", TypeError),
    ("use-pyplot-none", {"use_pyplot": None}, "use_pyplot", TypeError),
]:
    case(f"plot_topk-{what}", lambda e, kw=kwargs: e.topk(**kw), names, errors)
case("plot_topk-projections-nan", lambda e: e.topk(projections=_nan(e.projections)), "projections", ValueError)
case("plot_topk-projections-and-model", lambda e: e.topk(model=e.model), "projections", ValueError)
# A denormalize that returns the wrong thing can only be seen when it is called, while drawing.
case("plot_topk-denormalize-drops-channels", lambda e: e.topk(denormalize=lambda x: x[0]), "denormalize", ValueError,
     early=False)  # fmt: skip
case("plot_topk-denormalize-returns-numpy", lambda e: e.topk(denormalize=lambda x: x.numpy()), "denormalize",
     TypeError, early=False)  # fmt: skip


def _one_inf() -> torch.Tensor:
    weights = torch.ones(4, 3, 3, 3)
    weights[2, 1, 0, 0] = float("inf")
    return weights


# -- plot_filters -----------------------------------------------------------------------------
for what, weights, kwargs, names, errors in [
    ("nan-weights", torch.full((4, 3, 3, 3), NAN), {}, "weights", ValueError),
    ("one-inf-weight", _one_inf(), {}, "weights", ValueError),
    ("meta-weights", torch.empty(4, 3, 3, 3, device="meta"), {}, "weights", ValueError),
    ("meta-model", nn.Conv2d(3, 4, 3, device="meta"), {}, "weights", ValueError),
    ("ncols-zero", torch.randn(4, 3, 3, 3), {"ncols": 0}, "ncols", ValueError),
    ("ncols-bool", torch.randn(4, 3, 3, 3), {"ncols": True}, "ncols", TypeError),
    ("ncols-float", torch.randn(4, 3, 3, 3), {"ncols": 2.0}, "ncols", TypeError),
    ("sort-by-norm-string", torch.randn(4, 3, 3, 3), {"sort_by_norm": "yes"}, "sort_by_norm", TypeError),
    ("normalize-typo", torch.randn(4, 3, 3, 3), {"normalize": "max"}, "normalize", ValueError),
    ("cell-inches-negative", torch.randn(4, 3, 3, 3), {"cell_inches": -1}, "cell_inches", ValueError),
    ("use-pyplot-int", torch.randn(4, 3, 3, 3), {"use_pyplot": 1}, "use_pyplot", TypeError),
]:
    case(f"plot_filters-{what}", lambda e, w=weights, kw=kwargs: plot_filters(w, **({"use_pyplot": False} | kw)),
         names, errors)  # fmt: skip

# -- plot_hierarchy and hierarchy_channels ----------------------------------------------------
for what, kwargs, names, errors in [
    ("result-none", {"result": None}, "result", TypeError),
    ("channels-per-layer-zero", {"channels_per_layer": 0}, "channels_per_layer", ValueError),
    ("channels-per-layer-bool", {"channels_per_layer": True}, "channels_per_layer", TypeError),
    ("channels-per-layer-float", {"channels_per_layer": 2.0}, "channels_per_layer", TypeError),
    ("layers-empty", {"layers": []}, "layers", ValueError),
    ("layers-unknown", {"layers": ["features.9"]}, "layer", ValueError),
    ("projections-list", {"projections": [1, 2]}, "projections", TypeError),
    ("projections-missing-layer", {"projections": {"features.1": None}}, "projections", ValueError),
    ("denormalize-string", {"denormalize": "imagenet"}, "denormalize", TypeError),
    ("outlier-perc-100", {"outlier_perc": 100}, "outlier_perc", ValueError),
    ("cell-inches-zero", {"cell_inches": 0}, "cell_inches", ValueError),
    ("use-pyplot-string", {"use_pyplot": "no"}, "use_pyplot", TypeError),
]:
    case(f"plot_hierarchy-{what}", lambda e, kw=kwargs: e.hier(**kw), names, errors)
case("plot_hierarchy-two-models", lambda e: e.hier(projections=e.model, model=e.model), "model", ValueError)
case("plot_hierarchy-projections-and-model", lambda e: e.hier(model=e.model), "projections", ValueError)
case("plot_hierarchy-projections-wrong-channels",
     lambda e: e.hier(projections={**e.hierarchy, "features.4": e.hierarchy["features.4"].images[:1]}),
     "projections['features.4']", ValueError)  # fmt: skip
case("plot_hierarchy-projections-nan",
     lambda e: e.hier(projections={**e.hierarchy, "features.1": _nan(e.hierarchy["features.1"])}),
     "projections['features.1']", ValueError)  # fmt: skip
case("hierarchy_channels-result-dict", lambda e: hierarchy_channels({}), "result", TypeError)
case("hierarchy_channels-channels-per-layer-negative", lambda e: hierarchy_channels(e.result, channels_per_layer=-1),
     "channels_per_layer", ValueError)  # fmt: skip

# -- plot_comparison ---------------------------------------------------------------------------
for what, kwargs, names, errors in [
    ("result-dict", {"result": {"a": torch.zeros(1)}}, "result", TypeError),
    ("result-randomization", {"result": "randomization"}, "result", TypeError),
    ("examples-out-of-range", {"examples": [99]}, "examples", ValueError),
    ("examples-below-minus-count", {"examples": [-3]}, "examples", ValueError),
    ("examples-empty", {"examples": []}, "examples", ValueError),
    ("examples-bool", {"examples": [True]}, "examples", TypeError),
    ("examples-float", {"examples": [0.0]}, "examples", TypeError),
    ("examples-string", {"examples": "0"}, "examples", TypeError),
    ("examples-float-scalar", {"examples": 1.5}, "examples", TypeError),
    ("method-typo", {"method": "heatmap"}, "method", ValueError),
    ("method-projection", {"method": "projection"}, "method", ValueError),  # plot_topk's own, not Captum's
    ("sign-typo", {"sign": "pos"}, "sign", ValueError),
    ("sign-all-alpha-scaling", {"sign": "all", "method": "alpha_scaling"}, "sign", ValueError),
    ("outlier-perc-100", {"outlier_perc": 100}, "outlier_perc", ValueError),
    ("display-string", {"display": "imagenet"}, "display", TypeError),
    ("cell-inches-negative", {"cell_inches": -1.0}, "cell_inches", ValueError),
    ("use-pyplot-none", {"use_pyplot": None}, "use_pyplot", TypeError),
]:

    def _comparison(e: Env, kw: dict[str, Any] = kwargs) -> Any:
        return e.cmp(**(kw | {"result": e.randomization} if kw.get("result") == "randomization" else kw))

    case(f"plot_comparison-{what}", _comparison, names, errors)

# -- plot_randomization, plot_diagnosis, plot_feature_evolution --------------------------------
for what, kwargs, names, errors in [
    ("result-comparison", {"result": "comparison"}, "result", TypeError),
    ("result-none", {"result": None}, "result", TypeError),
    ("metrics-empty", {"metrics": []}, "metrics", ValueError),
    ("metrics-typo", {"metrics": ["ssimm"]}, "metrics", ValueError),
    ("metrics-not-computed", {"metrics": ["spearman"]}, "metrics", ValueError),
    ("metrics-int", {"metrics": [3]}, "metrics", ValueError),
    ("metrics-none", {"metrics": None}, "metrics", ValueError),
    ("use-pyplot-string", {"use_pyplot": "no"}, "use_pyplot", TypeError),
]:

    def _randomization(e: Env, kw: dict[str, Any] = kwargs) -> Any:
        kw = kw | {"result": e.comparison} if kw.get("result") == "comparison" else kw
        return plot_randomization(**({"result": e.randomization, "use_pyplot": False} | kw))

    case(f"plot_randomization-{what}", _randomization, names, errors)
case("plot_diagnosis-none", lambda e: plot_diagnosis(None, use_pyplot=False), "diagnosis", TypeError)
case("plot_diagnosis-mining-result", lambda e: plot_diagnosis(e.result, use_pyplot=False), "diagnosis", TypeError)
case("plot_diagnosis-layer-list", lambda e: plot_diagnosis(e.diagnosis.layers, use_pyplot=False), "diagnosis",
     TypeError)  # fmt: skip
case("plot_diagnosis-use-pyplot-string", lambda e: plot_diagnosis(e.diagnosis, use_pyplot="no"), "use_pyplot",
     TypeError)  # fmt: skip
for what, kwargs, names, errors in [
    ("evolution-dict", {"evolution": {}}, "evolution", TypeError),
    ("labels-too-few", {"labels": ["epoch 1"]}, "labels", ValueError),
    ("labels-too-many", {"labels": ["a", "b", "c"]}, "labels", ValueError),
    ("labels-string", {"labels": "ab"}, "labels", TypeError),
    ("denormalize-int", {"denormalize": 3}, "denormalize", TypeError),
    ("use-pyplot-string", {"use_pyplot": "no"}, "use_pyplot", TypeError),
]:
    case(f"plot_feature_evolution-{what}", lambda e, kw=kwargs: e.evo(**kw), names, errors)


# -- plot_topk(guided=True) ---------------------------------------------------------------------
for what, kwargs, names, errors in [
    ("guided-string", {"guided": "yes"}, "guided", TypeError),
    ("guided-int", {"guided": 1}, "guided", TypeError),
    ("guided-without-projections", {"guided": True}, "guided_projections", ValueError),
    ("guided-projections-without-guided", {"guided_projections": "guided"}, "guided_projections", ValueError),
    ("guided-projections-wrong-crop-size", {"guided": True, "guided_projections": torch.zeros(2, 3, 3, 4, 4)},
     "guided_projections", ValueError),
    ("guided-projections-wrong-k", {"guided": True, "guided_projections": torch.zeros(2, 2, 3, 3, 3)},
     "guided_projections", ValueError),
    ("guided-projections-list", {"guided": True, "guided_projections": [[0.0]]}, "guided_projections", TypeError),
    ("guided-projections-string", {"guided": True, "guided_projections": "guided"}, "guided_projections", TypeError),
    ("guided-projections-nan", {"guided": True, "guided_projections": "nan"}, "guided_projections", ValueError),
    ("guided-projections-other-channels", {"guided": True, "guided_projections": "other"}, "guided_projections",
     ValueError),
    ("guided-projections-channels-swapped", {"guided": True, "guided_projections": "swapped"},
     "guided_projections", ValueError),
    ("projections-other-channels", {"projections": "other"}, "projections", ValueError),
]:  # fmt: skip

    def _guided(e: Env, kw: dict[str, Any] = kwargs) -> Any:
        kw = dict(kw)
        if kw.get("guided_projections") == "guided" and not kw.get("guided"):
            kw["guided_projections"] = e.guided
        elif kw.get("guided_projections") == "nan":
            kw["guided_projections"] = _nan(e.guided)
        elif kw.get("guided_projections") in ("other", "swapped"):  # same shape, other records: masks differ
            channels = [2, 3] if kw["guided_projections"] == "other" else [1, 0]
            kw["guided_projections"] = e.result.projections(e.model, e.data, "features.1", channels, rules="guided")
        if kw.get("projections") == "other":
            kw["projections"] = e.result.projections(e.model, e.data, "features.1", [2, 3])
        return e.topk(**kw)

    case(f"plot_topk-{what}", _guided, names, errors)


# -- plot_exemplars and plot_class_units: rows, then the cell options they share with plot_topk -------


def _row_with(e: Env, **changes: Any) -> list[ExemplarRow]:
    """The exemplar rows with ``changes`` made to row 0."""
    return [dataclasses.replace(e.rows[0], **changes), *e.rows[1:]]


def _nan_crops(crops: Crops) -> Crops:
    return Crops(_nan(Crops(crops.images[None], crops.mask[None]))[0], crops.mask)


ROW_CASES: list[tuple[str, Callable[[Env], Any], str, Errors]] = [
    ("rows-result", lambda e: e.labelled, "rows", TypeError),
    ("rows-none", lambda e: None, "rows", TypeError),
    ("rows-empty", lambda e: [], "rows", ValueError),
    ("rows-string", lambda e: "rows", "rows", TypeError),
    ("rows-dict", lambda e: {0: e.rows[0]}, "rows", TypeError),
    ("rows-generator", lambda e: iter(e.rows), "rows", TypeError),
    ("rows-ints", lambda e: [1, 2], "rows[0]", TypeError),
    ("rows-crops", lambda e: [e.rows[0].patches], "rows[0]", TypeError),
    ("rows-mixed-projections", lambda e: [e.rows[0], dataclasses.replace(e.rows[1], projections=None)], "rows[1]",
     ValueError),
    ("rows-projections-wrong-size", lambda e: _row_with(e, projections=Crops(torch.zeros(3, 3, 2, 2),
                                                                            torch.ones(3, 2, 2, dtype=torch.bool))),
     "rows[0].projections", ValueError),
    ("rows-projections-tensor", lambda e: _row_with(e, projections=e.rows[0].projections.images),
     "rows[0].projections", TypeError),
    ("rows-patches-tensor", lambda e: _row_with(e, patches=e.rows[0].patches.images), "rows[0].patches", TypeError),
    ("rows-projections-nan", lambda e: _row_with(e, projections=_nan_crops(e.rows[0].projections)),
     "rows[0].projections", ValueError),
    ("rows-patches-inf", lambda e: _row_with(e, patches=Crops(e.rows[0].patches.images.clone().fill_(float("inf")),
                                                              e.rows[0].patches.mask)), "rows[0].patches", ValueError),
    ("rows-title-int", lambda e: _row_with(e, title=3), "rows[0].title", TypeError),
]  # fmt: skip
OPTION_CASES: list[tuple[str, dict[str, Any], str, Errors]] = [
    ("method-typo", {"method": "heatmap"}, "method", ValueError),
    ("method-none", {"method": None}, "method", ValueError),
    ("sign-typo", {"sign": "pos"}, "sign", ValueError),
    ("sign-all-masked-image", {"sign": "all", "method": "masked_image"}, "sign", ValueError),
    ("cmap-unknown", {"cmap": "no_such_cmap", "method": "heat_map"}, "cmap", ValueError),
    ("cmap-int", {"cmap": 3}, "cmap", TypeError),
    ("outlier-perc-100", {"outlier_perc": 100}, "outlier_perc", ValueError),
    ("outlier-perc-nan", {"outlier_perc": NAN}, "outlier_perc", ValueError),
    ("alpha-overlay-above-1", {"alpha_overlay": 2}, "alpha_overlay", ValueError),
    ("alpha-overlay-bool", {"alpha_overlay": True}, "alpha_overlay", TypeError),
    ("cell-inches-zero", {"cell_inches": 0}, "cell_inches", ValueError),
    ("cell-inches-inf", {"cell_inches": float("inf")}, "cell_inches", ValueError),
    ("denormalize-string", {"denormalize": "imagenet"}, "denormalize", TypeError),
    ("use-pyplot-string", {"use_pyplot": "no"}, "use_pyplot", TypeError),
    ("use-pyplot-none", {"use_pyplot": None}, "use_pyplot", TypeError),
    ("title-int", {"title": 3}, "title", TypeError),
    ("title-list", {"title": ["a"]}, "title", TypeError),
]
for what, make_rows, names, errors in ROW_CASES:
    case(f"plot_exemplars-{what}", lambda e, m=make_rows: e.exemplars(rows=m(e)), names, errors)
for what, kwargs, names, errors in OPTION_CASES:
    case(f"plot_exemplars-{what}", lambda e, kw=kwargs: e.exemplars(**kw), names, errors)
case("plot_exemplars-denormalize-drops-channels", lambda e: e.exemplars(denormalize=lambda x: x[0]), "denormalize",
     ValueError, early=False)  # fmt: skip
for what in ("rows-result", "rows-empty", "rows-none", "rows-ints", "rows-mixed-projections", "rows-projections-nan"):
    make_rows, names, errors = next((m, n, err) for w, m, n, err in ROW_CASES if w == what)
    case(f"plot_class_units-{what}", lambda e, m=make_rows: e.units(rows=m(e)), names, errors)
case("plot_class_units-rows-result-names-the-maker", lambda e: e.units(rows=e.relevance), "class_unit_rows", TypeError)
for what in ("method-typo", "sign-typo", "cmap-int", "outlier-perc-100", "alpha-overlay-bool", "cell-inches-zero",
             "denormalize-string", "use-pyplot-string", "title-int"):  # fmt: skip
    kwargs, names, errors = next((kw, n, err) for w, kw, n, err in OPTION_CASES if w == what)
    case(f"plot_class_units-{what}", lambda e, kw=kwargs: e.units(**kw), names, errors)

# -- plot_class_histogram and plot_selectivity ---------------------------------------------------
for what, kwargs, names, errors in [
    ("result-dict", {"result": {}}, "result", TypeError),
    ("result-none", {"result": None}, "result", TypeError),
    ("result-rows", {"result": "rows"}, "result", TypeError),
    ("result-no-labels", {"result": "plain"}, "labels", ValueError),
    ("layer-unknown", {"layer": "features.9"}, "layer", ValueError),
    ("layer-int", {"layer": 4}, "layer", TypeError),
    ("layer-list", {"layer": ["features.4"]}, "layer", TypeError),
    ("layer-module", {"layer": "module"}, "layer", TypeError),
    ("channels-out-of-range", {"channels": [0, 99]}, "channels[1]", ValueError),
    ("channels-below-minus-count", {"channels": [-7]}, "channels[0]", ValueError),
    ("channels-bool", {"channels": True}, "channels", TypeError),
    ("channels-empty", {"channels": []}, "channels", ValueError),
    ("channels-float", {"channels": 1.5}, "channels", TypeError),
    ("channels-string", {"channels": "01"}, "channels", TypeError),
    ("ncols-zero", {"ncols": 0}, "ncols", ValueError),
    ("ncols-bool", {"ncols": True}, "ncols", TypeError),
    ("ncols-float", {"ncols": 2.0}, "ncols", TypeError),
    ("panel-inches-scalar", {"panel_inches": 2}, "panel_inches", TypeError),
    ("panel-inches-three", {"panel_inches": (1, 1, 1)}, "panel_inches", TypeError),
    ("panel-inches-negative", {"panel_inches": (-1, 1)}, "panel_inches[0]", ValueError),
    ("panel-inches-nan", {"panel_inches": (1, NAN)}, "panel_inches[1]", ValueError),
    ("use-pyplot-string", {"use_pyplot": "no"}, "use_pyplot", TypeError),
]:

    def _histogram(e: Env, kw: dict[str, Any] = kwargs) -> Any:
        kw = dict(kw)
        given = kw.get("result", e.labelled)
        kw["result"] = {"rows": e.rows, "plain": e.result}.get(given, given) if isinstance(given, str) else given
        if kw.get("layer") == "module":
            kw["layer"] = e.model.features[4]
        return plot_class_histogram(**({"layer": "features.4", "channels": [0, 1], "use_pyplot": False} | kw))

    case(f"plot_class_histogram-{what}", _histogram, names, errors)

for what, kwargs, names, errors in [
    ("result-dict", {"result": {}}, "result", TypeError),
    ("result-none", {"result": None}, "result", TypeError),
    ("result-no-labels", {"result": "plain"}, "labels", ValueError),
    ("layers-empty", {"layers": []}, "layers", ValueError),
    ("layers-unknown", {"layers": ["features.1", "features.9"]}, "layer", ValueError),
    ("layers-int", {"layers": 3}, "layers", TypeError),
    ("layers-ints", {"layers": [1]}, "layers", TypeError),
    ("threshold-string", {"threshold": "0.5"}, "threshold", TypeError),
    ("threshold-nan", {"threshold": NAN}, "threshold", ValueError),
    ("threshold-bool", {"threshold": True}, "threshold", TypeError),
    ("names-too-few", {"names": ["conv1"]}, "names", ValueError),
    ("names-string", {"names": "ab"}, "names", ValueError),
    ("names-ints", {"names": [1, 2]}, "names", ValueError),
    ("figsize-scalar", {"figsize": 3}, "figsize", TypeError),
    ("figsize-negative", {"figsize": (-1, 3)}, "figsize[0]", ValueError),
    ("figsize-zero-height", {"figsize": (3, 0)}, "figsize[1]", ValueError),
    ("use-pyplot-none", {"use_pyplot": None}, "use_pyplot", TypeError),
]:

    def _selectivity(e: Env, kw: dict[str, Any] = kwargs) -> Any:
        kw = dict(kw)
        kw["result"] = e.result if kw.get("result") == "plain" else kw.get("result", e.labelled)
        return plot_selectivity(**({"use_pyplot": False} | kw))

    case(f"plot_selectivity-{what}", _selectivity, names, errors)


class Drew(BaseException):
    """Raised by a figure made during a case that should have been refused first (not an Exception: uncaught)."""


@pytest.fixture
def no_drawing(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    def new_figure(*_args: Any, **_kwargs: Any) -> Any:
        raise Drew("a figure was made before the bad argument was refused")

    monkeypatch.setattr(viz, "new_figure", new_figure)
    monkeypatch.setattr(result_figures, "new_figure", new_figure)
    monkeypatch.setattr(class_figures, "new_figure", new_figure)
    monkeypatch.setattr(exemplar_figures, "new_figure", new_figure)
    yield


def _raised_here(err: BaseException) -> bool:
    """Whether the innermost frame of ``err``'s traceback is this package's code."""
    frames = traceback.extract_tb(err.__traceback__)
    return bool(frames) and f"{os.sep}captum_deconvviz{os.sep}" in frames[-1].filename


def test_the_matrix_covers_every_plot_function() -> None:
    names = [name for name, *_ in CASES]
    assert len(set(names)) == len(names), "case names must be unique"
    for function in ("plot_topk", "plot_filters", "plot_hierarchy", "hierarchy_channels", "plot_comparison",
                     "plot_randomization", "plot_diagnosis", "plot_feature_evolution", "plot_exemplars",
                     "plot_class_units", "plot_class_histogram", "plot_selectivity"):  # fmt: skip
        assert any(name.startswith(f"{function}-") for name in names), function
    assert len(CASES) >= 100, len(CASES)


@pytest.mark.parametrize(("name", "call", "errors", "names", "early"), CASES, ids=[c[0] for c in CASES])
def test_figure_misuse(
    env: Env, snapshot: Any, request: pytest.FixtureRequest, name: str, call: Call, errors: Errors, names: str,
    early: bool,
) -> None:  # fmt: skip
    if early:
        request.getfixturevalue("no_drawing")
    before = snapshot(env.model)
    with pytest.raises(errors) as caught:
        call(env)
    message = str(caught.value)
    assert names.lower() in message.lower(), f"{name}: the message does not name {names!r}: {message}"
    assert _raised_here(caught.value), f"{name}: raised inside a library, not by captum_deconvviz: {message}"
    assert "\n" not in message.strip(), f"{name}: a one-line message was expected: {message!r}"
    before.assert_unchanged(env.model)


# -- What is right is still drawn: the checks refuse only what is wrong -----------------------


def test_accepted_spellings_draw_what_they_mean(env: Env) -> None:
    # One channel as a numpy integer or a 0-d tensor draws the same block as the int.
    _, axes = env.topk(channels=1, projections=env.projections.images[1])
    for spelling in (np.int64(1), torch.tensor(1)):
        _, again = env.topk(channels=spelling, projections=env.projections.images[1])
        assert again.shape == axes.shape == (1, 2, 2, 2)
        np.testing.assert_array_equal(again[0, 1, 0, 0].images[0].get_array(), axes[0, 1, 0, 0].images[0].get_array())
    # A Colormap object is a colormap as well as its name.
    _, axes = env.topk(method="heat_map", cmap=matplotlib.colormaps["magma"])
    assert axes[0, 0, 0, 0].images[0].get_cmap().name == "magma"
    # Python's negative indices, numpy indices and one int all pick examples.
    _, last = env.cmp(examples=-1)
    _, numpy_rows = env.cmp(examples=np.array([1]))
    for axes in (last, numpy_rows):
        assert axes.shape == (1, 3)
        image = env.comparison.inputs[1]
        expected = ((image - image.min()) / (image.max() - image.min())).permute(1, 2, 0).numpy()
        np.testing.assert_allclose(axes[0, 0].images[0].get_array(), expected, atol=1e-6)
    # One metric by its bare name: one panel.
    fig, axes = plot_randomization(env.randomization, metrics="ssim", use_pyplot=False)
    assert len(axes) == 1 and axes[0].get_ylabel() == "ssim"
    # Labels that are not strings (epochs) are shown as text.
    fig, _ = env.evo(labels=[1, 5])
    assert {"1", "5"} <= {text.get_text() for text in fig.texts}
    # One layer by its bare name: one column.
    _, axes = env.hier(layers="features.4", projections={"features.4": env.hierarchy["features.4"]})
    assert axes.shape == (2, 1) and axes[0, 0].get_title().startswith("features.4")
    # A whole model draws its first convolution's filters (finite: not refused).
    _, axes = plot_filters(env.model, use_pyplot=False)
    assert sum(ax.get_visible() for ax in axes.flat) == 4


def test_deprecated_model_spelling_alone_still_draws(env: Env, snapshot: Any) -> None:
    before = snapshot(env.model)
    _, new = env.hier()
    with pytest.warns(DeprecationWarning, match="hierarchy_channels"):
        _, old = env.hier(projections=env.model)
    for a, b in zip(new.flat, old.flat, strict=True):
        assert [np.asarray(i.get_array()).tolist() for i in a.images] == [
            np.asarray(i.get_array()).tolist() for i in b.images
        ]
    with pytest.warns(DeprecationWarning, match="plot_topk"):
        env.topk(projections=None, model=env.model)
    before.assert_unchanged(env.model)
