"""The misuse matrix: every public entry point x every class of bad argument.

Config-driven, as Captum's ``test_hook_removal``: each case is one wrong call. Each must
raise the error type given, with a message that names the argument; the error must be
raised by this package (the innermost frame is ours, not torch's, numpy's, PIL's or
matplotlib's); and the model must be exactly as it was (weights, buffers, train/eval
flags, hooks, ``requires_grad``), though it is left in training mode on purpose.
"""

from __future__ import annotations

import json
import os
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pytest
import torch
from conftest import SmallClassifier
from torch import nn
from torch.utils.data import DataLoader

from captum_deconvviz import (
    EngineGuidedBackprop,
    ExemplarAgreement,
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
    plot_filters,
    plot_topk,
    project_records,
    project_units,
    randomization_test,
    receptive_field,
    receptive_field_table,
    renormalize_filters_,
    track_features,
    write_explorer,
)
from captum_deconvviz.exemplars import class_stats, quantile_rows, ranking_rows, selectivity_index
from captum_deconvviz.mining_result import Crops

matplotlib.use("Agg")

IMAGE = (3, 16, 16)


#: Conv-BN-ReLU-pool, conv-ReLU-dropout, global pool, linear: 5 classes on 3x16x16.
Net = SmallClassifier


@dataclass
class Env:
    """What the cases call with: the model (in training mode), data, a result, paths."""

    model: Net
    x: torch.Tensor
    data: torch.Tensor
    result: MiningResult
    saved: Path
    tmp: Path
    labels: torch.Tensor  # 12 labels of classes 0, 1, 2 and 4 (class 3 has no image)
    labelled: MiningResult  # labels, by_class, bottom_k=3, quantiles: every exemplar statistic by activation
    relevance: MiningResult  # labels, rank_by="relevance", target="label" (no by_class, no bottom_k)

    def units(self, *rows: tuple[int, ...]) -> torch.Tensor:
        return torch.tensor(rows, dtype=torch.long)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Env:
    torch.manual_seed(0)
    model = Net().train()  # training mode on purpose: every call must run eval inside and restore it
    data = torch.randn(12, *IMAGE)
    result = mine_topk(model, ["features.2", "features.5"], data, k=3, progress=False)
    tmp = tmp_path_factory.mktemp("misuse")
    saved = tmp / "result.pt"
    result.save(saved)
    (tmp / "a_file").write_text("not a folder")
    (tmp / "garbage.pt").write_bytes(b"\x00garbage" * 50)
    torch.save({"weights": torch.ones(2)}, tmp / "state.pt")
    (tmp / "folder.pt").mkdir()
    labels = torch.tensor([0, 1, 2, 4] * 3)
    layers = ["features.2", "features.5"]
    labelled = mine_topk(model, layers, data, k=3, labels=labels, by_class=True, bottom_k=3, quantiles=True,
                         progress=False)  # fmt: skip
    relevance = mine_topk(model, ["features.5"], data, k=3, labels=labels, rank_by="relevance", target="label",
                          progress=False)  # fmt: skip
    return Env(model, data[:2].clone(), data, result, saved, tmp, labels, labelled, relevance)


def nan_images(shape: tuple[int, ...] = (2, *IMAGE), value: float = float("nan")) -> torch.Tensor:
    x = torch.randn(shape)
    x[-1, 0, 3, 3] = value
    return x


Call = Callable[[Env], Any]
Errors = type[BaseException] | tuple[type[BaseException], ...]
CASES: list[tuple[str, Call, Errors, str]] = []
VALUE_OR_TYPE = (ValueError, TypeError)


def case(name: str, call: Call, names: str, errors: Errors = VALUE_OR_TYPE) -> None:
    """Add a case: ``call`` must raise ``errors`` with a message matching ``names``."""
    CASES.append((name, call, errors, names))


# -- The attribution classes: inputs, targets, constructor arguments ---------------------

BAD_INPUTS: dict[str, Callable[[], Any]] = {
    "numpy": lambda: torch.randn(2, *IMAGE).numpy(),
    "list": lambda: [[0.0] * 16] * 16,
    "uint8": lambda: torch.zeros(2, *IMAGE, dtype=torch.uint8),
    "float64": lambda: torch.randn(2, *IMAGE, dtype=torch.float64),
    "one-channel": lambda: torch.randn(2, 1, 16, 16),
    "four-channels": lambda: torch.randn(2, 4, 16, 16),
    "no-batch-dim": lambda: torch.randn(*IMAGE),
    "five-dims": lambda: torch.randn(2, 1, *IMAGE),
    "too-small": lambda: torch.randn(2, 3, 1, 1),
    "empty-batch": lambda: torch.randn(0, *IMAGE),
    "nan": lambda: nan_images(),
    "inf": lambda: nan_images(value=float("inf")),
    "meta-device": lambda: torch.randn(2, *IMAGE, device="meta"),
    "scalar": lambda: torch.tensor(1.0),
    "complex64": lambda: torch.randn(2, *IMAGE, dtype=torch.complex64),
    "sparse": lambda: torch.randn(2, *IMAGE).to_sparse(),
}


def scripted() -> nn.Module:
    """The net as TorchScript: the engine cannot see inside it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is deprecated, not gone
        return torch.jit.script(Net().eval())


def scripted_features() -> nn.Module:
    """An eager net whose ``features`` are TorchScript."""
    model = Net().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model.features = torch.jit.script(model.features)
    return model


def meta_net() -> nn.Module:
    """The net on the meta device: shapes, no values."""
    return Net().to("meta")


class LyingDataset(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """``__len__`` says 20, it holds 12 images."""

    def __init__(self, data: torch.Tensor) -> None:
        self.data = data

    def __len__(self) -> int:
        return 20

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.data[index]


for cls in (ZFDeconvolution, EngineGuidedBackprop):
    tag = cls.__name__
    for what, make in BAD_INPUTS.items():
        case(f"{tag}-inputs-{what}", lambda e, c=cls, m=make: c(e.model).attribute(m(), target=0), "inputs")
    for what, target in {
        "out-of-range": 5,
        "negative-out-of-range": -6,
        "float": 1.5,
        "string": "cat",
        "too-many": [0, 1, 2],
        "tensor-2d": torch.zeros(2, 2, dtype=torch.long),
        "missing": None,
    }.items():
        case(f"{tag}-target-{what}", lambda e, c=cls, t=target: c(e.model).attribute(e.x, target=t), "target")
    case(f"{tag}-activations", lambda e, c=cls: c(e.model, activations="bogus"), "activations")
    case(f"{tag}-model-function", lambda e, c=cls: c(lambda x: x), "model")
    case(f"{tag}-model-none", lambda e, c=cls: c(None), "model")
    case(f"{tag}-model-scripted", lambda e, c=cls: c(scripted()).attribute(e.x, target=0), "TorchScript", TypeError)
    case(f"{tag}-model-scripted-part", lambda e, c=cls: c(scripted_features()), "model.features", TypeError)
    case(f"{tag}-model-meta", lambda e, c=cls: c(meta_net()).attribute(e.x, target=0), "model", ValueError)
    case(
        f"{tag}-additional-forward-args-unwanted",
        lambda e, c=cls: c(e.model).attribute(e.x, target=0, additional_forward_args=(1,)),
        "additional_forward_args",
        TypeError,
    )

for cls in (NeuronZFDeconvolution, NeuronEngineGuidedBackprop):
    tag = cls.__name__
    case(f"{tag}-layer-unknown", lambda e, c=cls: c(e.model, "features.99"), "layer")
    case(f"{tag}-layer-int", lambda e, c=cls: c(e.model, 3), "layer")
    case(f"{tag}-layer-foreign-module", lambda e, c=cls: c(e.model, nn.ReLU()), "layer")
    for what, selector in {
        "out-of-range": (99, 0, 0),
        "position-out-of-range": (0, 0, 99),
        "too-short": (0, 0),
        "floats": (0.5, 0, 0),
        "string": "0,0,0",
    }.items():
        case(
            f"{tag}-neuron-selector-{what}",
            lambda e, c=cls, s=selector: c(e.model, "features.2").attribute(e.x, s),
            "neuron_selector",
        )
    case(f"{tag}-seed", lambda e, c=cls: c(e.model, "features.2").attribute(e.x, (0, 0, 0), seed="ones"), "seed")
    for what in ("one-channel", "nan", "no-batch-dim"):
        case(
            f"{tag}-inputs-{what}",
            lambda e, c=cls, m=BAD_INPUTS[what]: c(e.model, "features.2").attribute(m(), (0, 0, 0)),
            "inputs",
        )
    case(f"{tag}-model-scripted", lambda e, c=cls: c(scripted(), "features.2"), "model", TypeError)
    case(
        f"{tag}-additional-forward-args-unwanted",
        lambda e, c=cls: c(e.model, "features.2").attribute(e.x, (0, 0, 0), additional_forward_args=(1,)),
        "additional_forward_args",
        TypeError,
    )
    case(
        f"{tag}-attribute-to-neuron-input-string",
        lambda e, c=cls: c(e.model, "features.2").attribute(e.x, (0, 0, 0), attribute_to_neuron_input="yes"),
        "attribute_to_neuron_input",
    )


# -- Projections -----------------------------------------------------------------------


def _units(e: Env, **kwargs: Any) -> Any:
    args: dict[str, Any] = {"inputs": e.x, "units": e.units((0, 1, 1), (1, 2, 2))} | kwargs
    return project_units(e.model, kwargs.pop("layer", "features.2"), **{k: v for k, v in args.items() if k != "layer"})


for what, kwargs, names in [
    ("units-float", {"units": torch.zeros(2, 3)}, "units"),
    ("units-list", {"units": [[0, 0, 0], [0, 0, 0]]}, "units"),
    ("units-rows", {"units": torch.zeros(3, 3, dtype=torch.long)}, "units"),
    ("units-columns", {"units": torch.zeros(2, 2, dtype=torch.long)}, "units"),
    ("units-channel-out-of-range", {"units": torch.tensor([[0, 0, 0], [8, 0, 0]])}, "units"),
    ("units-negative", {"units": torch.tensor([[0, 0, 0], [0, -1, 0]])}, "units"),
    ("inputs-one-channel", {"inputs": BAD_INPUTS["one-channel"]()}, "inputs"),
    ("inputs-nan", {"inputs": nan_images()}, "inputs"),
    ("inputs-inf", {"inputs": nan_images(value=float("-inf"))}, "inputs"),
    ("inputs-complex", {"inputs": BAD_INPUTS["complex64"]()}, "inputs"),
    ("inputs-sparse", {"inputs": BAD_INPUTS["sparse"]()}, "dense"),
    ("seed", {"seed": "ones"}, "seed"),
    ("rules", {"rules": "deconv"}, "rules"),
    ("activations", {"activations": "relu"}, "activations"),
    ("crop", {"crop": "yes"}, "crop"),
    ("batch-size-zero", {"batch_size": 0}, "batch_size"),
    ("batch-size-bool", {"batch_size": True}, "batch_size"),
    ("batch-size-float", {"batch_size": 2.0}, "batch_size"),
    ("return-intermediates-string", {"return_intermediates": "yes"}, "return_intermediates"),
    ("layer-unknown", {"layer": "features.9"}, "layer"),
]:
    case(f"project_units-{what}", lambda e, kw=kwargs: _units(e, **kw), names)


def _records(e: Env, **kwargs: Any) -> Any:
    args: dict[str, Any] = {"images": e.x, "records": e.units((0, 0, 1, 1), (1, 3, 2, 2))} | kwargs
    return project_records(e.model, "features.5", **args)


for what, kwargs, names in [
    ("records-float", {"records": torch.zeros(2, 4)}, "records"),
    ("records-image-out-of-range", {"records": torch.tensor([[2, 0, 0, 0]])}, "records"),
    ("records-one-column", {"records": torch.zeros(2, 1, dtype=torch.long)}, "records"),
    ("records-unit-out-of-range", {"records": torch.tensor([[0, 0, 0, 99]])}, "records"),
    ("images-one-channel", {"images": BAD_INPUTS["one-channel"]()}, "images"),
    ("images-nan", {"images": nan_images()}, "images"),
    ("images-numpy", {"images": torch.randn(2, *IMAGE).numpy()}, "images"),
    ("rows-zero", {"rows": 0}, "rows"),
    ("rows-bool", {"rows": True}, "rows"),
    ("crop", {"crop": 1}, "crop"),
    ("seed", {"seed": 1}, "seed"),
]:
    case(f"project_records-{what}", lambda e, kw=kwargs: _records(e, **kw), names)


# -- Mining ----------------------------------------------------------------------------


def _mine(e: Env, **kwargs: Any) -> Any:
    args: dict[str, Any] = {"layers": ["features.2"], "data": e.data, "progress": False} | kwargs
    return mine_topk(kwargs.pop("model", e.model), **{k: v for k, v in args.items() if k != "model"})


MINE_CASES: list[tuple[str, Callable[[Env], dict[str, Any]], str]] = [
    ("k-zero", lambda e: {"k": 0}, "k"),
    ("k-negative", lambda e: {"k": -1}, "k"),
    ("k-bool", lambda e: {"k": True}, "k"),
    ("k-float", lambda e: {"k": 2.5}, "k"),
    ("k-string", lambda e: {"k": "9"}, "k"),
    ("k-huge", lambda e: {"k": 2**40}, "k"),  # once tried to allocate 17 TB
    ("unique-typo", lambda e: {"unique": "images"}, "unique"),
    ("unique-none", lambda e: {"unique": None}, "unique"),
    ("batch-size-zero", lambda e: {"batch_size": 0}, "batch_size"),
    ("batch-size-bool", lambda e: {"batch_size": True}, "batch_size"),
    ("batch-size-float", lambda e: {"batch_size": 1.5}, "batch_size"),
    ("device-cuda-absent", lambda e: {"device": "cuda:3"}, "device"),
    ("device-unknown", lambda e: {"device": "tpu"}, "device"),
    ("device-meta", lambda e: {"device": "meta"}, "device"),
    ("device-bool", lambda e: {"device": True}, "device"),
    ("progress-string", lambda e: {"progress": "no"}, "progress"),
    ("verify-int", lambda e: {"verify": 1}, "verify"),
    ("checkpoint-folder", lambda e: {"checkpoint": e.tmp}, "checkpoint"),
    ("checkpoint-parent-is-file", lambda e: {"checkpoint": e.tmp / "a_file" / "c.pt"}, "checkpoint"),
    ("checkpoint-int", lambda e: {"checkpoint": 3}, "checkpoint"),
    ("checkpoint-not-a-checkpoint", lambda e: {"checkpoint": e.tmp / "state.pt"}, "checkpoint"),
    ("checkpoint-garbage", lambda e: {"checkpoint": e.tmp / "garbage.pt"}, "checkpoint"),
    ("nms-threshold-one", lambda e: {"nms_threshold": 1.0}, "nms_threshold"),
    ("nms-threshold-negative", lambda e: {"nms_threshold": -0.1}, "nms_threshold"),
    ("nms-threshold-bool", lambda e: {"nms_threshold": True}, "nms_threshold"),
    ("nms-threshold-string", lambda e: {"nms_threshold": "0.5"}, "nms_threshold"),
    ("nan-typo", lambda e: {"nan": "ignore"}, "nan"),
    ("checkpoint-every-negative", lambda e: {"checkpoint_every": -1}, "checkpoint_every"),
    ("checkpoint-every-bool", lambda e: {"checkpoint_every": True}, "checkpoint_every"),
    ("num-workers-negative", lambda e: {"num_workers": -1}, "num_workers"),
    ("num-workers-bool", lambda e: {"num_workers": True}, "num_workers"),
    ("shard-rank-too-big", lambda e: {"shard": (2, 2)}, "shard"),
    ("shard-zero-world", lambda e: {"shard": (0, 0)}, "shard"),
    ("shard-bool", lambda e: {"shard": (True, 2)}, "shard"),
    ("shard-string", lambda e: {"shard": "0/2"}, "shard"),
    ("layers-unknown", lambda e: {"layers": ["features.99"]}, "layers"),
    ("layers-empty", lambda e: {"layers": []}, "layers"),
    ("layers-twice", lambda e: {"layers": ["features.2", "features.2"]}, "layers"),
    ("layers-int", lambda e: {"layers": 3}, "layers"),
    ("data-list", lambda e: {"data": list(e.data)}, "data"),
    ("data-numpy", lambda e: {"data": e.data.numpy()}, "data"),
    ("data-one-dim", lambda e: {"data": torch.randn(12)}, "data"),
    ("data-empty", lambda e: {"data": torch.randn(0, *IMAGE)}, "data"),
    ("data-one-channel", lambda e: {"data": torch.randn(4, 1, 16, 16)}, "data"),
    ("data-uint8", lambda e: {"data": torch.zeros(4, *IMAGE, dtype=torch.uint8)}, "data"),
    ("data-float64", lambda e: {"data": torch.zeros(4, *IMAGE, dtype=torch.float64)}, "data"),
    ("data-too-small", lambda e: {"data": torch.randn(4, 3, 1, 1), "layers": ["features.5"]}, "data"),
    ("data-nan", lambda e: {"data": nan_images((4, *IMAGE))}, "data"),
    ("data-inf", lambda e: {"data": nan_images((4, *IMAGE), float("inf"))}, "data"),
    ("data-shuffled-loader", lambda e: {"data": DataLoader(e.data, shuffle=True)}, "data"),
    ("data-complex", lambda e: {"data": e.data.to(torch.complex64)}, "data"),
    ("data-sparse", lambda e: {"data": e.data.to_sparse()}, "dense"),
    ("data-meta", lambda e: {"data": e.data.to("meta")}, "data holds no values"),
    ("data-meta-items", lambda e: {"data": LyingDataset(e.data.to("meta"))}, "data[0] holds no values"),
    ("data-len-lies", lambda e: {"data": LyingDataset(e.data)}, "len(data) is 20"),
    ("model-function", lambda e: {"model": lambda x: x}, "model"),
    ("model-scripted", lambda e: {"model": scripted()}, "TorchScript"),
    ("model-meta", lambda e: {"model": meta_net()}, "model holds no values"),
]
for what, make_kwargs, names in MINE_CASES:
    errors: Errors = (*VALUE_OR_TYPE, FloatingPointError) if what.startswith("data-") else VALUE_OR_TYPE
    case(f"mine_topk-{what}", lambda e, mk=make_kwargs: _mine(e, **mk(e)), names, errors)


# -- MiningResult ----------------------------------------------------------------------


class Other(Net):
    """Another architecture: the result's projections must refuse it."""

    def __init__(self) -> None:
        super().__init__()
        self.features[4] = nn.Conv2d(8, 32, 3, padding=1)
        self.fc = nn.Linear(32, 5)


for what, call, names in [
    ("records-layer-unknown", lambda e: e.result.records("features.9", 0), "layer"),
    ("records-channel-out-of-range", lambda e: e.result.records("features.2", 8), "channel"),
    ("records-channel-negative", lambda e: e.result.records("features.2", -1), "channel"),
    ("records-channel-bool", lambda e: e.result.records("features.2", True), "channel"),
    ("records-channel-float", lambda e: e.result.records("features.2", 1.0), "channel"),
    ("stats-layer-unknown", lambda e: e.result.stats("features.0"), "layer"),
    ("patches-data-shorter", lambda e: e.result.patches(e.data[:5], "features.2", 0), "data"),
    ("patches-data-other", lambda e: e.result.patches(torch.randn(12, *IMAGE), "features.2", 0), "data"),
    ("patches-data-list", lambda e: e.result.patches(list(e.data), "features.2", 0), "data"),
    ("patches-layer-unknown", lambda e: e.result.patches(e.data, "features.9", 0), "layer"),
    ("patches-channel-out-of-range", lambda e: e.result.patches(e.data, "features.2", 99), "channel"),
    ("patches-fill-string", lambda e: e.result.patches(e.data, "features.2", 0, fill="x"), "fill"),
    ("projections-other-model", lambda e: e.result.projections(Other(), e.data, "features.5", 0), "model"),
    ("projections-data-shorter", lambda e: e.result.projections(e.model, e.data[:5], "features.2", 0), "data"),
    ("projections-channel-out-of-range", lambda e: e.result.projections(e.model, e.data, "features.2", 8), "channel"),
    ("projections-seed", lambda e: e.result.projections(e.model, e.data, "features.2", 0, seed="x"), "seed"),
    ("projections-rules", lambda e: e.result.projections(e.model, e.data, "features.2", 0, rules="x"), "rules"),
    ("projections-model-string", lambda e: e.result.projections("net", e.data, "features.2", 0), "model"),
    ("verify-rtol-negative", lambda e: e.result.verify(e.model, e.data, rtol=-1.0), "rtol"),
    ("verify-data-shorter", lambda e: e.result.verify(e.model, e.data[:3]), "data"),
    ("verify-atol-string", lambda e: e.result.verify(e.model, e.data, atol="0"), "atol"),
    ("save-path-int", lambda e: e.result.save(3), "path"),
    ("save-to-folder", lambda e: e.result.save(e.tmp), "path"),
    ("save-parent-is-file", lambda e: e.result.save(e.tmp / "a_file" / "r.pt"), "path"),
    ("merge-empty", lambda e: MiningResult.merge([]), "results"),
    ("merge-not-results", lambda e: MiningResult.merge([e.result, 3]), "results"),
    ("merge-same-twice", lambda e: MiningResult.merge([e.result, e.result]), "results"),
    ("patches-channel-empty", lambda e: e.result.patches(e.data, "features.2", []), "channel is empty"),
    ("patches-channel-float-in-list", lambda e: e.result.patches(e.data, "features.2", [0, 1.5]), "channel"),
    ("projections-model-meta", lambda e: e.result.projections(meta_net(), e.data, "features.2", 0), "model"),
    ("projections-model-scripted", lambda e: e.result.projections(scripted(), e.data, "features.2", 0), "model"),
    ("load-none", lambda e: MiningResult.load(None), "path"),
]:
    case(f"MiningResult.{what}", call, names)

for what, call, names, errors in [
    ("load-missing", lambda e: MiningResult.load(e.tmp / "missing.pt"), "missing", FileNotFoundError),
    ("load-folder", lambda e: MiningResult.load(e.tmp / "folder.pt"), "folder", ValueError),
    ("load-garbage", lambda e: MiningResult.load(e.tmp / "garbage.pt"), "garbage", ValueError),
    ("load-state-dict", lambda e: MiningResult.load(e.tmp / "state.pt"), "MiningResult", ValueError),
]:
    case(f"MiningResult.{what}", call, names, errors)


# -- Receptive fields, comparison, diagnostics, figures ---------------------------------

for what, kwargs, names in [
    ("input-shape-short", {"input_shape": (3,)}, "input_shape"),
    ("input-shape-zero", {"input_shape": (0, 16, 16)}, "input_shape"),
    ("input-shape-string", {"input_shape": "3x16x16"}, "input_shape"),
    ("input-shape-negative", {"input_shape": (3, -1, 16)}, "input_shape"),
    ("input-shape-with-batch", {"input_shape": (1, 3, 16, 16)}, "input_shape"),
    ("input-shape-channels", {"input_shape": (1, 16, 16)}, "input_shape"),
    ("input-shape-too-small", {"input_shape": (3, 1, 1)}, "input_shape"),
    ("layer-unknown", {"layer": "features.9"}, "layer"),
    ("method", {"method": "exact"}, "method"),
    ("verify-string", {"verify": "yes"}, "verify"),
    ("channel-out-of-range", {"channel": 99}, "channel"),
    ("channel-bool", {"channel": True}, "channel"),
]:
    case(
        f"receptive_field-{what}",
        lambda e, kw=kwargs: receptive_field(e.model, **({"layer": "features.5", "input_shape": IMAGE} | kw)),
        names,
    )
case("receptive_field_table-input-shape", lambda e: receptive_field_table(e.model, (16, 16)), "input_shape")
case("receptive_field_table-model", lambda e: receptive_field_table("vgg16", IMAGE), "model")

for what, kwargs, names in [
    ("methods-unknown", {"methods": ["lrp"]}, "methods"),
    ("methods-int", {"methods": 3}, "methods"),
    ("methods-twice", {"methods": ["saliency", "saliency"]}, "methods"),
    ("target-out-of-range", {"target": 7}, "target"),
    ("inputs-nan", {"inputs": nan_images()}, "inputs"),
    ("inputs-one-channel", {"inputs": BAD_INPUTS["one-channel"]()}, "inputs"),
    ("layer-without-selector", {"target": None, "layer": "features.2"}, "neuron_selector"),
    ("selector-without-layer", {"neuron_selector": (0, 0, 0)}, "neuron_selector"),
]:
    case(
        f"compare_methods-{what}",
        lambda e, kw=kwargs: compare_methods(e.model, **({"inputs": e.x, "target": 0} | kw)),
        names,
    )

for what, kwargs, names in [
    ("mode", {"mode": "random"}, "mode"),
    ("layers-unknown", {"layers": ["nope"]}, "layers"),
    ("layers-string", {"layers": "features.0"}, "layers"),
    ("layers-no-weights", {"layers": ["features.2"]}, "layers"),
    ("random-state-bool", {"random_state": True}, "random_state"),
    ("random-state-string", {"random_state": "0"}, "random_state"),
    ("inputs-nan", {"inputs": nan_images()}, "inputs"),
    ("target-missing", {"target": None}, "target"),
    ("seed-and-random-state", {"random_state": 1, "seed": 2}, "random_state=1 and seed=2"),
    ("model-scripted", {"model": "scripted"}, "TorchScript"),
]:

    def _randomization(e: Env, kw: dict[str, Any] = kwargs) -> Any:
        model = scripted() if kw.get("model") == "scripted" else e.model
        return randomization_test(
            model, **({"inputs": e.x, "target": 0} | {k: v for k, v in kw.items() if k != "model"})
        )

    case(f"randomization_test-{what}", _randomization, names)

for what, kwargs, names in [
    ("batch-size-zero", {"batch_size": 0}, "batch_size"),
    ("batch-size-bool", {"batch_size": True}, "batch_size"),
    ("max-images-zero", {"max_images": 0}, "max_images"),
    ("max-images-bool", {"max_images": True}, "max_images"),
    ("layers-unknown", {"layers": ["nope"]}, "layers"),
    ("data-list", {"data": [1, 2, 3]}, "data"),
    ("result-other-model", {"result": "other"}, "result"),
    ("progress-string", {"progress": "no"}, "progress"),
    ("layers-empty", {"layers": []}, "layers is empty"),
    ("layers-int", {"layers": 3}, "layers"),
    ("data-nan", {"data": nan_images((4, *IMAGE))}, "data holds"),
    ("data-inf-dataset", {"data": "inf-dataset"}, "rows [3]"),
    ("model-meta", {"model": "meta"}, "model"),
    ("model-scripted", {"model": "scripted"}, "TorchScript"),
]:

    def _diagnose(e: Env, kw: dict[str, Any] = kwargs) -> Any:
        kw = dict(kw)
        if kw.get("result") == "other":
            kw["result"] = mine_topk(Other(), ["features.2"], e.data, k=2, progress=False)
        if kw.get("data") == "inf-dataset":  # a Dataset: the rows are its indices
            kw["data"] = torch.utils.data.TensorDataset(nan_images((4, *IMAGE), float("inf")))
        model = {"meta": meta_net, "scripted": scripted}.get(kw.pop("model", ""), lambda: e.model)()
        return diagnose(model, **({"data": e.data} | kw))

    case(f"diagnose-{what}", _diagnose, names)

case("renormalize_filters_-radius-negative", lambda e: renormalize_filters_(e.model, radius=-1.0), "radius")
case("renormalize_filters_-radius-bool", lambda e: renormalize_filters_(e.model, radius=True), "radius")
case("renormalize_filters_-layers-int", lambda e: renormalize_filters_(e.model, layers=[3]), "layers")
case(
    "renormalize_filters_-layers-foreign-conv",
    lambda e: renormalize_filters_(e.model, layers=[e.model.features[0], nn.Conv2d(3, 3, 3)]),
    "layers[1]",
)
case("renormalize_filters_-model-scripted", lambda e: renormalize_filters_(scripted()), "TorchScript")
case("renormalize_filters_-model-meta", lambda e: renormalize_filters_(meta_net()), "model holds no values")

for what, kwargs, names in [
    ("channels-out-of-range", {"channels": 99}, "channel"),
    ("layer-unknown", {"layer": "features.9"}, "layer"),
    ("method", {"method": "bogus"}, "method"),
    ("outlier-perc", {"outlier_perc": 150}, "outlier_perc"),
    ("data-shorter", {"data": "short"}, "data"),
]:

    def _plot(e: Env, kw: dict[str, Any] = kwargs) -> Any:
        kw = dict(kw)
        if kw.get("data") == "short":
            kw["data"] = e.data[:4]
        args = {"result": e.result, "data": e.data, "layer": "features.2", "channels": [0, 1]} | kw
        return plot_topk(**args, model=None, use_pyplot=False) if "model" in kw else plot_topk(**args, use_pyplot=False)

    case(f"plot_topk-{what}", _plot, names)

case("plot_filters-2d-tensor", lambda e: plot_filters(torch.randn(4, 4), use_pyplot=False), "weights")
case("plot_filters-string", lambda e: plot_filters("features.0", use_pyplot=False), "weights")
case("plot_filters-ncols-zero", lambda e: plot_filters(e.model, ncols=0, use_pyplot=False), "ncols")
case("plot_filters-normalize", lambda e: plot_filters(e.model, normalize="x", use_pyplot=False), "normalize")
case("track_features-empty", lambda e: track_features([], e.data, "features.2", [0]), "checkpoints")
case("track_features-not-models", lambda e: track_features([3], e.data, "features.2", [0]), "checkpoints")
case("track_features-channel", lambda e: track_features([e.model], e.data, "features.2", [99]), "channel")
case("track_features-channels-empty", lambda e: track_features([e.model], e.data, "features.2", []), "channels")
case("track_features-channels-int", lambda e: track_features([e.model], e.data, "features.2", 0), "channels")
case(
    "track_features-other-architecture",
    lambda e: track_features([e.model, nn.Sequential(nn.Conv2d(3, 4, 3))], e.data, "features.2", [0]),
    "checkpoints[1]",
)
case("track_features-scripted", lambda e: track_features([e.model, scripted()], e.data, "features.2", [0]), "[1]")


# -- Exemplars: mine_topk's exemplar arguments -------------------------------------------------


class _NoLabels(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """Images alone, no ``(image, label)`` items: ``labels=True`` has nothing to read."""

    def __init__(self, data: torch.Tensor) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.data[index]


class _Labelled(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """``(image, label)`` items whose label is the one given (a tensor that is no class index)."""

    def __init__(self, data: torch.Tensor, label: Any) -> None:
        self.data, self.label = data, label

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Any]:
        return self.data[index], self.label


def _long(*values: int) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long)


RELEVANCE: dict[str, Any] = {"rank_by": "relevance", "target": 0}
EXEMPLAR_MINE_CASES: list[tuple[str, Callable[[Env], dict[str, Any]], str]] = [
    ("labels-list", lambda e: {"labels": e.labels.tolist()}, "labels"),
    ("labels-numpy", lambda e: {"labels": e.labels.numpy()}, "labels"),
    ("labels-string", lambda e: {"labels": "yes"}, "labels"),
    ("labels-int", lambda e: {"labels": 3}, "labels"),
    ("labels-float", lambda e: {"labels": e.labels.float()}, "labels"),
    ("labels-bool-tensor", lambda e: {"labels": e.labels > 0}, "labels"),
    ("labels-two-dims", lambda e: {"labels": e.labels.view(12, 1)}, "labels"),
    ("labels-too-few", lambda e: {"labels": e.labels[:5]}, "labels"),
    ("labels-too-many", lambda e: {"labels": torch.cat([e.labels, e.labels])}, "labels"),
    ("labels-below-minus-one", lambda e: {"labels": e.labels - 2}, "labels"),
    ("labels-meta", lambda e: {"labels": e.labels.to("meta")}, "labels"),
    ("labels-huge-class", lambda e: {"labels": torch.cat([e.labels[:11], _long(2**40)])}, "labels"),
    ("labels-true-on-a-tensor", lambda e: {"labels": True}, "labels"),
    ("labels-true-without-labels", lambda e: {"labels": True, "data": _NoLabels(e.data)}, "labels"),
    ("labels-true-multi-label", lambda e: {"labels": True, "data": _Labelled(e.data, torch.tensor([1, 2]))}, "labels"),
    ("labels-true-float-label", lambda e: {"labels": True, "data": _Labelled(e.data, torch.tensor(1.0))}, "labels"),
    ("labels-true-empty-label", lambda e: {"labels": True, "data": _Labelled(e.data, _long())}, "labels"),
    ("by-class-string", lambda e: {"labels": e.labels, "by_class": "yes"}, "by_class"),
    ("by-class-int", lambda e: {"labels": e.labels, "by_class": 1}, "by_class"),
    ("by-class-without-labels", lambda e: {"by_class": True}, "labels"),
    ("bottom-k-negative", lambda e: {"bottom_k": -1}, "bottom_k"),
    ("bottom-k-bool", lambda e: {"bottom_k": True}, "bottom_k"),
    ("bottom-k-float", lambda e: {"bottom_k": 3.0}, "bottom_k"),
    ("bottom-k-string", lambda e: {"bottom_k": "3"}, "bottom_k"),
    ("bottom-k-huge", lambda e: {"bottom_k": 2**40}, "bottom_k"),
    ("rank-by-typo", lambda e: {"rank_by": "gradient"}, "rank_by"),
    ("rank-by-none", lambda e: {"rank_by": None}, "rank_by"),
    ("rank-by-bool", lambda e: {"rank_by": True}, "rank_by"),
    ("target-without-relevance", lambda e: {"target": 0}, "target"),
    ("target-label-without-relevance", lambda e: {"labels": e.labels, "target": "label"}, "target"),
    ("relevance-target-missing", lambda e: {"rank_by": "relevance"}, "target"),
    ("relevance-target-negative", lambda e: RELEVANCE | {"target": -1}, "target"),
    ("relevance-target-bool", lambda e: RELEVANCE | {"target": True}, "target"),
    ("relevance-target-float", lambda e: RELEVANCE | {"target": 1.5}, "target"),
    ("relevance-target-typo", lambda e: RELEVANCE | {"target": "labels"}, "target"),
    ("relevance-target-tensor-one-dim", lambda e: RELEVANCE | {"target": torch.tensor([1])}, "target"),
    ("relevance-target-tensor-float", lambda e: RELEVANCE | {"target": torch.tensor(1.0)}, "target"),
    ("relevance-target-tensor-bool", lambda e: RELEVANCE | {"target": torch.tensor(True)}, "target"),
    ("relevance-target-numpy-negative", lambda e: RELEVANCE | {"target": np.int64(-1)}, "target"),
    ("relevance-target-out-of-range", lambda e: RELEVANCE | {"target": 5}, "target"),
    ("relevance-target-label-without-labels", lambda e: RELEVANCE | {"target": "label"}, "labels"),
    (
        "relevance-target-label-unlabelled-image",
        lambda e: RELEVANCE | {"target": "label", "labels": torch.cat([e.labels[:11], _long(-1)])},
        "label",
    ),
    ("relevance-verify", lambda e: RELEVANCE | {"verify": True}, "verify"),
    (
        "relevance-output-not-classes",
        lambda e: RELEVANCE | {"model": nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), "layers": ["0"]},
        "rank_by",
    ),
    ("relevance-data-nan", lambda e: RELEVANCE | {"data": nan_images((4, *IMAGE))}, "data"),
    ("relevance-data-inf", lambda e: RELEVANCE | {"data": nan_images((4, *IMAGE), float("inf"))}, "data"),
    ("labels-data-nan", lambda e: {"labels": e.labels[:4], "data": nan_images((4, *IMAGE))}, "data"),
    ("class-top-n-below-k", lambda e: {"labels": e.labels, "k": 3, "class_top_n": 2}, "class_top_n"),
    ("class-top-n-bool", lambda e: {"labels": e.labels, "class_top_n": True}, "class_top_n"),
    ("class-top-n-float", lambda e: {"labels": e.labels, "class_top_n": 50.0}, "class_top_n"),
    ("class-top-n-without-labels", lambda e: {"class_top_n": 50}, "class_top_n"),
    ("quantiles-string", lambda e: {"quantiles": "yes"}, "quantiles"),
    ("quantiles-int", lambda e: {"quantiles": 1}, "quantiles"),
    ("quantiles-tuple", lambda e: {"quantiles": (0.5,)}, "quantiles"),
    ("max-exemplar-bytes-negative", lambda e: {"max_exemplar_bytes": -1}, "max_exemplar_bytes"),
    ("max-exemplar-bytes-bool", lambda e: {"max_exemplar_bytes": True}, "max_exemplar_bytes"),
    ("max-exemplar-bytes-float", lambda e: {"max_exemplar_bytes": 1e9}, "max_exemplar_bytes"),
    ("max-exemplar-bytes-too-small", lambda e: {"bottom_k": 3, "max_exemplar_bytes": 10}, "max_exemplar_bytes"),
]
for what, make_kwargs, names in EXEMPLAR_MINE_CASES:
    errors = (*VALUE_OR_TYPE, FloatingPointError) if "data-" in what else VALUE_OR_TYPE
    case(f"mine_topk-{what}", lambda e, mk=make_kwargs: _mine(e, **mk(e)), names, errors)


# -- Exemplars: MiningResult's records of every kind, class statistics, class units -------------


def _gone(e: Env) -> Any:
    result = MiningResult.load(e.saved)
    result.meta["explorer"] = str(e.tmp / "gone" / "index.html")
    return result.open_explorer()


def _replaced(e: Env) -> Any:
    """open_explorer where another result's explorer replaced this result's."""
    result = MiningResult.load(e.saved)
    index = e.tmp / "replaced" / "index.html"
    index.parent.mkdir(exist_ok=True)
    other = {"result": {"model": "another model", "layers": ["features.5"], "k": 9}}
    index.write_text(f'<script type="application/json" id="explorer-data">{json.dumps(other)}</script>')
    result.meta["explorer"] = str(index)
    return result.open_explorer()


L2, L5 = "features.2", "features.5"
for what, call, names in [
    ("records-kind-typo", lambda e: e.labelled.records(L2, 0, kind="bottm"), "kind"),
    ("records-kind-none", lambda e: e.labelled.records(L2, 0, kind=None), "kind"),
    ("records-kind-list", lambda e: e.labelled.records(L2, 0, kind=["top"]), "kind"),
    ("records-bottom-not-mined", lambda e: e.result.records(L2, 0, kind="bottom"), "bottom_k"),
    ("records-quantile-not-mined", lambda e: e.result.records(L2, 0, kind="quantile", q=0.5), "quantiles"),
    ("records-quantile-without-q", lambda e: e.labelled.records(L2, 0, kind="quantile"), "q"),
    ("records-q-above-one", lambda e: e.labelled.records(L2, 0, kind="quantile", q=1.5), "q"),
    ("records-q-negative", lambda e: e.labelled.records(L2, 0, kind="quantile", q=-0.1), "q"),
    ("records-q-nan", lambda e: e.labelled.records(L2, 0, kind="quantile", q=float("nan")), "q"),
    ("records-q-string", lambda e: e.labelled.records(L2, 0, kind="quantile", q="0.5"), "q"),
    ("records-q-bool", lambda e: e.labelled.records(L2, 0, kind="quantile", q=True), "q"),
    ("records-q-with-top", lambda e: e.labelled.records(L2, 0, q=0.5), "q"),
    ("records-cls-with-bottom", lambda e: e.labelled.records(L2, 0, kind="bottom", cls=0), "cls"),
    ("records-cls-not-mined", lambda e: e.result.records(L2, 0, cls=0), "cls"),
    ("records-cls-labels-without-by-class", lambda e: e.relevance.records(L5, 0, cls=0), "by_class"),
    ("records-cls-out-of-range", lambda e: e.labelled.records(L2, 0, cls=99), "cls"),
    ("records-cls-negative", lambda e: e.labelled.records(L2, 0, cls=-1), "cls"),
    ("records-cls-bool", lambda e: e.labelled.records(L2, 0, cls=True), "cls"),
    ("records-cls-float", lambda e: e.labelled.records(L2, 0, cls=1.0), "cls"),
    ("records-cls-string", lambda e: e.labelled.records(L2, 0, cls="cat"), "cls"),
    ("records-bottom-channel-out-of-range", lambda e: e.labelled.records(L2, 8, kind="bottom"), "channel"),
    ("records-bottom-layer-unknown", lambda e: e.labelled.records("features.9", 0, kind="bottom"), "layer"),
    ("patches-kind-typo", lambda e: e.labelled.patches(e.data, L2, 0, kind="middle"), "kind"),
    ("patches-bottom-not-mined", lambda e: e.result.patches(e.data, L2, 0, kind="bottom"), "bottom_k"),
    ("patches-q-out-of-range", lambda e: e.labelled.patches(e.data, L2, 0, kind="quantile", q=2), "q"),
    ("patches-quantile-without-q", lambda e: e.labelled.patches(e.data, L2, 0, kind="quantile"), "q"),
    ("patches-cls-out-of-range", lambda e: e.labelled.patches(e.data, L2, 0, cls=5), "cls"),
    (
        "patches-bottom-data-other",
        lambda e: e.labelled.patches(torch.randn(12, *IMAGE), L2, 0, kind="bottom"),
        "data",
    ),
    ("projections-kind-typo", lambda e: e.labelled.projections(e.model, e.data, L2, 0, kind="worst"), "kind"),
    (
        "projections-bottom-not-mined",
        lambda e: e.result.projections(e.model, e.data, L2, 0, kind="bottom"),
        "bottom_k",
    ),
    ("projections-cls-bool", lambda e: e.labelled.projections(e.model, e.data, L2, 0, cls=True), "cls"),
    (
        "projections-q-nan",
        lambda e: e.labelled.projections(e.model, e.data, L2, 0, kind="quantile", q=float("nan")),
        "q",
    ),
    (
        "projections-bottom-other-model",
        lambda e: e.labelled.projections(Other(), e.data, L5, 0, kind="bottom"),
        "model",
    ),
    ("class-stats-no-labels", lambda e: e.result.class_stats(L2), "labels"),
    ("class-stats-layer-unknown", lambda e: e.labelled.class_stats("features.9"), "layer"),
    ("class-stats-layer-module", lambda e: e.labelled.class_stats(e.model.features[2]), "layer"),
    ("class-stats-layer-int", lambda e: e.labelled.class_stats(2), "layer"),
    ("class-stats-layer-list", lambda e: e.labelled.class_stats([L2]), "layer"),
    ("class-units-layer-list", lambda e: e.relevance.class_units([L5], 0), "layer"),
    ("records-layer-list", lambda e: e.labelled.records([L2], 0), "layer"),
    ("records-layer-dict", lambda e: e.labelled.records({}, 0, kind="bottom"), "layer"),
    ("stats-layer-list", lambda e: e.labelled.stats([L2]), "layer"),
    ("channels-layer-list", lambda e: e.labelled.channels([L2]), "layer"),
    ("patches-layer-list", lambda e: e.labelled.patches(e.data, [L2], 0), "layer"),
    ("projections-layer-list", lambda e: e.labelled.projections(e.model, e.data, [L2], 0), "layer"),
    ("class-units-not-relevance", lambda e: e.labelled.class_units(L5, 0), "rank_by"),
    ("class-units-no-labels", lambda e: e.result.class_units(L5, 0), "labels"),
    ("class-units-layer-unknown", lambda e: e.relevance.class_units(L2, 0), "layer"),
    ("class-units-cls-out-of-range", lambda e: e.relevance.class_units(L5, 99), "cls"),
    ("class-units-cls-negative", lambda e: e.relevance.class_units(L5, -1), "cls"),
    ("class-units-cls-bool", lambda e: e.relevance.class_units(L5, False), "cls"),
    ("class-units-cls-string", lambda e: e.relevance.class_units(L5, "0"), "cls"),
    ("class-units-cls-without-images", lambda e: e.relevance.class_units(L5, 3), "cls=3"),
    ("class-units-n-zero", lambda e: e.relevance.class_units(L5, 0, n=0), "n"),
    ("class-units-n-too-many", lambda e: e.relevance.class_units(L5, 0, n=99), "n"),
    ("class-units-n-bool", lambda e: e.relevance.class_units(L5, 0, n=True), "n"),
    ("class-units-n-float", lambda e: e.relevance.class_units(L5, 0, n=2.0), "n"),
    ("open-explorer-never-written", lambda e: e.result.open_explorer(), "write_explorer"),
    ("open-explorer-gone", _gone, "gone"),
    ("open-explorer-of-another-result", _replaced, "another result"),
]:
    case(f"MiningResult.{what}", call, names)


# -- Exemplars: the public helpers of captum_deconvviz.exemplars --------------------------------

MEANS = torch.tensor([[3.0, 1.0, 1.0], [1.0, 2.0, float("nan")]], dtype=torch.float64)
for what, call, names in [
    ("selectivity_index-list", lambda e: selectivity_index(MEANS.tolist()), "class_means"),
    ("selectivity_index-one-dim", lambda e: selectivity_index(MEANS[0]), "class_means"),
    ("selectivity_index-three-dims", lambda e: selectivity_index(MEANS[None]), "class_means"),
    (
        "selectivity_index-no-classes",
        lambda e: selectivity_index(torch.zeros(2, 0, dtype=torch.float64)),
        "class_means",
    ),
    ("selectivity_index-long", lambda e: selectivity_index(torch.ones(2, 3, dtype=torch.long)), "class_means"),
    ("selectivity_index-inf", lambda e: selectivity_index(MEANS.clone().fill_(float("inf"))), "class_means"),
    ("selectivity_index-meta", lambda e: selectivity_index(MEANS.to("meta")), "class_means"),
    ("class_stats-state-none", lambda e: class_stats(None, None), "state"),
    ("class_stats-class-names-string", lambda e: class_stats(e.labelled._state(L2)[1].exemplars, "abc"), "class_names"),
    ("ClassStats.name-string", lambda e: e.labelled.class_stats(L2).name("cat"), "cls"),
    ("ClassStats.name-float", lambda e: e.labelled.class_stats(L2).name(1.5), "cls"),
    (
        "quantile_rows-q-above-one",
        lambda e: quantile_rows(torch.ones(4), torch.zeros(4, dtype=torch.long), 1.5, 2, 4),
        "q",
    ),
    ("quantile_rows-k-zero", lambda e: quantile_rows(torch.ones(4), torch.zeros(4, dtype=torch.long), 0.5, 0, 4), "k"),
    (
        "quantile_rows-lengths",
        lambda e: quantile_rows(torch.ones(4), torch.zeros(3, dtype=torch.long), 0.5, 2, 4),
        "position",
    ),
    ("quantile_rows-list", lambda e: quantile_rows([1.0, 2.0], [0, 0], 0.5, 2, 4), "best"),
    (
        "ranking_rows-width-zero",
        lambda e: ranking_rows(torch.ones(2), torch.zeros(2, dtype=torch.long), 4, 0),
        "width",
    ),
    ("ranking_rows-lengths", lambda e: ranking_rows(torch.ones(2), torch.zeros(3, dtype=torch.long), 4, 2), "key"),
]:
    case(f"exemplars.{what}", call, names)


# -- Exemplars: rows for the figures, agreement with Guided Backprop ----------------------------


def _rows(e: Env, **kwargs: Any) -> Any:
    args: dict[str, Any] = {"result": e.labelled, "data": e.data, "layer": L2, "channel": 0} | kwargs
    return exemplar_rows(**args)


for what, kwargs, names in [
    ("result-dict", {"result": {}}, "result"),
    ("result-none", {"result": None}, "result"),
    ("layer-unknown", {"layer": "features.9"}, "layer"),
    ("channel-list", {"channel": [0, 1]}, "channel"),
    ("channel-tensor", {"channel": torch.tensor([0, 1])}, "channel"),
    ("channel-bool", {"channel": True}, "channel"),
    ("channel-out-of-range", {"channel": 8}, "channel"),
    ("channel-negative", {"channel": -1}, "channel"),
    ("channel-float", {"channel": 1.0}, "channel"),
    ("kinds-typo", {"kinds": "middle"}, "kinds"),
    ("kinds-quantile", {"kinds": ["quantile"]}, "kinds"),
    ("kinds-int", {"kinds": 3}, "kinds"),
    ("kinds-bottom-not-mined", {"result": "plain", "kinds": ["top", "bottom"]}, "bottom_k"),
    ("kinds-empty", {"kinds": []}, "kinds"),
    ("quantiles-float", {"quantiles": 0.5}, "quantiles"),
    ("quantiles-string", {"quantiles": "0.5"}, "quantiles"),
    ("quantiles-above-one", {"quantiles": (0.5, 1.5)}, "quantiles[1]"),
    ("quantiles-nan", {"quantiles": (float("nan"),)}, "quantiles[0]"),
    ("quantiles-not-mined", {"result": "plain", "quantiles": (0.5,)}, "quantiles"),
    ("classes-int", {"classes": 3}, "classes"),
    ("classes-out-of-range", {"classes": (0, 99)}, "classes[1]"),
    ("classes-negative", {"classes": (-1,)}, "classes[0]"),
    ("classes-bool", {"classes": (True,)}, "classes[0]"),
    ("classes-not-mined", {"result": "plain", "classes": (0,)}, "classes"),
    ("data-other", {"data": torch.randn(12, *IMAGE)}, "data"),
    ("data-shorter", {"data": "short"}, "data"),
    ("data-nan", {"data": nan_images((12, *IMAGE))}, "data"),
    ("model-other", {"model": "other"}, "model"),
    ("model-string", {"model": "net"}, "model"),
]:

    def _exemplar_rows(e: Env, kw: dict[str, Any] = kwargs) -> Any:
        kw = dict(kw)
        if kw.get("result") == "plain":
            kw["result"] = e.result
        if kw.get("data") == "short":
            kw["data"] = e.data[:5]
        if kw.get("model") == "other":
            kw["model"], kw["layer"] = Other(), L5
        return _rows(e, **kw)

    case(f"exemplar_rows-{what}", _exemplar_rows, names)


for what, kwargs, names in [
    ("result-none", {"result": None}, "result"),
    ("not-relevance", {"result": "labelled"}, "rank_by"),
    ("no-labels", {"result": "plain"}, "labels"),
    ("layer-unknown", {"layer": L2}, "layer"),
    ("cls-out-of-range", {"cls": 99}, "cls"),
    ("cls-bool", {"cls": True}, "cls"),
    ("cls-string", {"cls": "cat"}, "cls"),
    ("cls-without-images", {"cls": 3}, "cls=3"),
    ("n-zero", {"n": 0}, "n"),
    ("n-bool", {"n": True}, "n"),
    ("n-too-many", {"n": 17}, "n"),
    ("within-class-string", {"within_class": "yes"}, "within_class"),
    ("within-class-not-mined", {"within_class": True}, "by_class"),
    ("data-other", {"data": torch.randn(12, *IMAGE)}, "data"),
    ("model-other", {"model": "other"}, "model"),
]:

    def _class_unit_rows(e: Env, kw: dict[str, Any] = kwargs) -> Any:
        kw = dict(kw)
        kw["result"] = {"labelled": e.labelled, "plain": e.result}.get(kw.get("result"), kw.get("result", e.relevance))
        if kw.get("model") == "other":
            kw["model"] = Other()
        return class_unit_rows(**({"data": e.data, "layer": L5, "cls": 0} | kw))

    case(f"class_unit_rows-{what}", _class_unit_rows, names)


for what, kwargs, names in [
    ("result-dict", {"result": {}}, "result"),
    ("model-other", {"model": "other"}, "model"),
    ("model-string", {"model": "net"}, "model"),
    ("model-meta", {"model": "meta"}, "model"),
    ("model-and-data-other", {"model": "other", "data": "other"}, "data"),
    ("data-other", {"data": "other"}, "data"),
    ("data-shorter", {"data": "short"}, "data"),
    ("data-nan", {"data": "nan"}, "data"),
    ("data-list", {"data": "list"}, "data"),
    ("layer-unknown", {"layer": "features.9"}, "layer"),
    ("layer-int", {"layer": 2}, "layer"),
    ("layer-module", {"layer": "module"}, "layer"),
    ("channels-out-of-range", {"channels": 16}, "channels"),
    ("channels-negative", {"channels": [-1]}, "channels"),
    ("channels-empty", {"channels": []}, "channels"),
    ("channels-bool", {"channels": True}, "channels"),
    ("channels-float", {"channels": 1.5}, "channels"),
    ("channels-string", {"channels": "0"}, "channels"),
    ("channels-float-in-list", {"channels": [0, 1.5]}, "channels[1]"),
    ("seed-typo", {"seed": "ones"}, "seed"),
    ("seed-none", {"seed": None}, "seed"),
]:

    def _agreement(e: Env, kw: dict[str, Any] = kwargs) -> Any:
        kw = dict(kw)
        kw["model"] = {"other": Other, "meta": meta_net}.get(kw.get("model", ""), lambda: kw.get("model", e.model))()
        data = {"other": lambda: torch.randn(12, *IMAGE), "short": lambda: e.data[:5], "list": lambda: list(e.data)}
        data["nan"] = lambda: nan_images((12, *IMAGE))
        kw["data"] = data.get(kw.get("data", ""), lambda: e.data)()
        if kw.get("layer") == "module":
            kw["layer"] = e.model.features[5]
        return exemplar_agreement(**({"result": e.result, "layer": L5, "channels": [0, 1]} | kw))

    case(f"exemplar_agreement-{what}", _agreement, names)


def _agreement_result() -> ExemplarAgreement:
    values = torch.zeros(1, 3, dtype=torch.float64)
    crops = Crops(torch.zeros(1, 3, 3, 4, 4), torch.ones(1, 3, 4, 4, dtype=torch.bool))
    return ExemplarAgreement(L5, (0,), "activation", values, values, values, crops, crops)


case("ExemplarAgreement.mean-metric-typo", lambda e: _agreement_result().mean("ssimm"), "metric")
case("ExemplarAgreement.mean-metric-none", lambda e: _agreement_result().mean(None), "metric")


# -- Exemplars: the offline explorer -------------------------------------------------------------


def _explorer(e: Env, **kwargs: Any) -> Any:
    args: dict[str, Any] = {"out": e.tmp / "explorer", "model": e.model, "data": e.data, "result": e.result,
                            "progress": False} | kwargs  # fmt: skip
    return write_explorer(**args)


for what, make_kwargs, names in [
    ("out-is-a-file", lambda e: {"out": e.tmp / "a_file"}, "out"),
    ("out-parent-is-a-file", lambda e: {"out": e.tmp / "a_file" / "explorer"}, "out"),
    ("out-unwritable", lambda e: {"out": Path("/proc/deconvviz-explorer")}, "out"),
    ("out-int", lambda e: {"out": 3}, "out"),
    ("out-none", lambda e: {"out": None}, "out"),
    ("model-other", lambda e: {"model": Other()}, "model"),
    ("model-string", lambda e: {"model": "net"}, "model"),
    ("model-scripted", lambda e: {"model": scripted()}, "model"),
    ("data-other", lambda e: {"data": torch.randn(12, *IMAGE)}, "data"),
    ("data-shorter", lambda e: {"data": e.data[:5]}, "data"),
    ("data-nan", lambda e: {"data": nan_images((12, *IMAGE))}, "data"),
    ("data-list", lambda e: {"data": list(e.data)}, "data"),
    ("model-and-data-other", lambda e: {"model": Other(), "data": torch.randn(12, *IMAGE)}, "data"),
    ("result-dict", lambda e: {"result": {}}, "result"),
    ("result-none", lambda e: {"result": None}, "result"),
    ("title-int", lambda e: {"title": 3}, "title"),
    ("denormalize-string", lambda e: {"denormalize": "imagenet"}, "denormalize"),
    ("first-layer-string", lambda e: {"first_layer": "features.0"}, "first_layer"),
    ("first-layer-linear", lambda e: {"first_layer": e.model.fc}, "first_layer"),
    ("first-layer-not-of-the-model", lambda e: {"first_layer": nn.Conv2d(3, 4, 3)}, "first_layer"),
    ("out-empty", lambda e: {"out": ""}, "out is empty"),
    ("out-blank", lambda e: {"out": " "}, "out is empty"),
    ("denormalize-drops-channels", lambda e: {"denormalize": lambda x: x[0]}, "denormalize"),
    ("denormalize-returns-numpy", lambda e: {"denormalize": lambda x: x.numpy()}, "denormalize"),
    ("image-labels-too-few", lambda e: {"image_labels": ["a", "b"]}, "image_labels"),
    ("image-labels-string", lambda e: {"image_labels": "abcdefghijkl"}, "image_labels"),
    ("command-string", lambda e: {"command": "deconvviz report"}, "command"),
    ("command-ints", lambda e: {"command": [1, 2]}, "command"),
    ("model-name-int", lambda e: {"model_name": 3}, "model_name"),
    ("data-name-none", lambda e: {"data_name": None}, "data_name"),
    ("diagnosis-result", lambda e: {"diagnosis": e.result}, "diagnosis"),
    ("comparison-dict", lambda e: {"comparison": {}}, "comparison"),
    ("guided-string", lambda e: {"guided": "yes"}, "guided"),
    ("progress-string", lambda e: {"progress": "no"}, "progress"),
    ("lossless-string", lambda e: {"lossless": "no"}, "lossless"),
    ("lossless-int", lambda e: {"lossless": 0}, "lossless"),
]:
    case(f"write_explorer-{what}", lambda e, mk=make_kwargs: _explorer(e, **mk(e)), names)


def _raised_here(err: BaseException) -> bool:
    """Whether the innermost frame of ``err``'s traceback is this package's code."""
    frames = traceback.extract_tb(err.__traceback__)
    return bool(frames) and f"{os.sep}captum_deconvviz{os.sep}" in frames[-1].filename


def test_the_matrix_is_large_enough() -> None:
    assert len(CASES) >= 150, len(CASES)
    assert len({name for name, *_ in CASES}) == len(CASES), "case names must be unique"


@pytest.mark.parametrize(("name", "call", "errors", "names"), CASES, ids=[c[0] for c in CASES])
def test_misuse(env: Env, snapshot: Any, name: str, call: Call, errors: Errors, names: str) -> None:
    before = snapshot(env.model)
    with pytest.raises(errors) as caught:
        call(env)
    message = str(caught.value)
    assert names.lower() in message.lower(), f"{name}: the message does not name {names!r}: {message}"
    assert _raised_here(caught.value), f"{name}: raised inside a library, not by captum_deconvviz: {message}"
    assert "\n" not in message.strip(), f"{name}: a one-line message was expected: {message!r}"
    before.assert_unchanged(env.model)


# -- What the refusals above must not refuse ----------------------------------------------


class _BrokenBody(Net):
    """A forward whose own body calls a layer wrongly: a TypeError that is the model's, not the caller's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1), 3)


def test_a_type_error_inside_the_forward_is_not_blamed_on_the_arguments() -> None:
    with pytest.raises(TypeError) as caught:
        ZFDeconvolution(_BrokenBody().eval()).attribute(torch.randn(2, *IMAGE), target=0)
    assert str(caught.value) == "Linear.forward() takes 2 positional arguments but 3 were given"


class _Scaled(Net):
    def forward(self, x: torch.Tensor, scale: float) -> torch.Tensor:
        return super().forward(x) * scale


def test_additional_forward_args_the_forward_takes_still_work() -> None:
    model, x = _Scaled().eval(), torch.randn(2, *IMAGE)
    with pytest.raises(TypeError, match=r"additional_forward_args=None \(_Scaled.forward\(\) missing 1 required"):
        ZFDeconvolution(model).attribute(x, target=0)
    doubled = ZFDeconvolution(model).attribute(x, target=0, additional_forward_args=(2.0,))
    once = ZFDeconvolution(model).attribute(x, target=0, additional_forward_args=(1.0,))
    torch.testing.assert_close(doubled, 2 * once)  # the reverse pass is linear in the seed


def test_a_meta_device_model_still_has_receptive_fields() -> None:
    assert receptive_field(meta_net(), "features.5", IMAGE) == receptive_field(Net(), "features.5", IMAGE)


def test_diagnose_takes_one_layer_name_as_mine_topk_does(env: Env) -> None:
    one = diagnose(env.model, env.data, layers="features.0")
    listed = diagnose(env.model, env.data, layers=["features.0"])
    assert [layer.name for layer in one.layers] == ["features.0"]
    assert torch.equal(one["features.0"].dead, listed["features.0"].dead)
    assert torch.equal(one["features.0"].rms, listed["features.0"].rms)  # type: ignore[arg-type]


def test_renormalize_takes_the_model_s_own_convolutions(env: Env) -> None:
    model = Net()
    with torch.no_grad():
        model.features[0].weight.fill_(1.0)
        model.features[4].weight.fill_(1.0)
    assert renormalize_filters_(model, layers=[model.features[4]]) == 16  # only the one given
    assert renormalize_filters_(model) == 8  # the 16 are at the radius now, not a rounding error above it
    assert renormalize_filters_(model) == 0


def test_seed_alone_or_equal_to_random_state_is_only_deprecated(env: Env) -> None:
    kwargs: dict[str, Any] = {"inputs": env.x, "target": 0, "methods": ["saliency"], "layers": ["fc"]}
    expected = randomization_test(env.model, random_state=2, **kwargs).similarity
    for given in ({"seed": 2}, {"seed": 2, "random_state": 2}):
        with pytest.warns(DeprecationWarning, match="random_state"):
            got = randomization_test(env.model, **kwargs, **given).similarity
        assert repr(got) == repr(expected)


def test_a_refused_explorer_writes_nothing(env: Env, tmp_path: Path) -> None:
    out = tmp_path / "explorer"
    with pytest.raises(ValueError, match="data has 5 images"):
        write_explorer(out, env.model, env.data[:5], env.result, progress=False)
    with pytest.raises(TypeError, match="image_labels"):
        write_explorer(out, env.model, env.data, env.result, image_labels="abc", progress=False)
    for denormalize in (lambda x: x[0], lambda x: x.numpy(), lambda x: x[:, :2]):  # tried on one image first
        with pytest.raises((ValueError, TypeError), match="denormalize"):
            write_explorer(out, env.model, env.data, env.result, denormalize=denormalize, progress=False)
    with pytest.raises(ValueError, match="first_layer is not a module of model"):
        write_explorer(out, env.model, env.data, env.result, first_layer=nn.Conv2d(3, 4, 3), progress=False)
    assert not out.exists()


def test_an_empty_out_writes_nothing_into_the_current_folder(
    env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"^out is empty \(''\)"):
        write_explorer("", env.model, env.data, env.result, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_exemplar_rows_take_every_mined_class(env: Env) -> None:
    rows = exemplar_rows(env.labelled, env.data, L2, 0, kinds=[], classes=(3, 4))
    assert [len(row.records) for row in rows] == [0, 3]  # no image is of class 3; 3 are of class 4
    selectivity, top = selectivity_index(MEANS)  # NaN still marks a class without images
    assert top.tolist() == [0, 1] and selectivity[0].item() == 0.5
