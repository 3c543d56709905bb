"""The misuse matrix: every public entry point x every class of bad argument.

Config-driven, as Captum's ``test_hook_removal``: each case is one wrong call. Each must
raise the error type given, with a message that names the argument; the error must be
raised by this package (the innermost frame is ours, not torch's, numpy's, PIL's or
matplotlib's); and the model must be exactly as it was (weights, buffers, train/eval
flags, hooks, ``requires_grad``), though it is left in training mode on purpose.
"""

from __future__ import annotations

import os
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from captum_deconvviz import (
    EngineGuidedBackprop,
    MiningResult,
    NeuronEngineGuidedBackprop,
    NeuronZFDeconvolution,
    ZFDeconvolution,
    compare_methods,
    diagnose,
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
)

matplotlib.use("Agg")

IMAGE = (3, 16, 16)


class Net(nn.Module):
    """Conv-BN-ReLU-pool, conv-ReLU-dropout, global pool, linear: 5 classes on 3x16x16."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
            nn.Dropout(0.5),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


@dataclass
class Env:
    """What the cases call with: the model (in training mode), data, a result, paths."""

    model: Net
    x: torch.Tensor
    data: torch.Tensor
    result: MiningResult
    saved: Path
    tmp: Path

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
    return Env(model, data[:2].clone(), data, result, saved, tmp)


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
