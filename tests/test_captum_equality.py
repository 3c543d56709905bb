"""Where Captum is correct (nn.ReLU modules only), ours must equal it."""

from __future__ import annotations

import pytest
import torch
import torchvision
from captum.attr import Deconvolution, GuidedBackprop, NeuronDeconvolution, NeuronGuidedBackprop
from conftest import assert_rel_close
from torch import nn

from captum_deconvviz import EngineGuidedBackprop, NeuronEngineGuidedBackprop, NeuronZFDeconvolution, ZFDeconvolution

MODELS = {
    # name: (builder, input size, neuron layer)
    "alexnet": (torchvision.models.alexnet, 96, "features.7"),
    "vgg16": (torchvision.models.vgg16, 64, "features.15"),
    "resnet18": (torchvision.models.resnet18, 64, "layer2"),
    "resnet50": (torchvision.models.resnet50, 64, "layer1"),
}


def _model(name: str) -> tuple[nn.Module, torch.Tensor, str]:
    build, size, layer = MODELS[name]
    torch.manual_seed(0)
    return build().eval(), torch.randn(2, 3, size, size), layer


def _busy_neuron(model: nn.Module, layer: str, x: torch.Tensor) -> tuple[int, int, int]:
    """The (c, y, x) whose smallest activation over the batch is largest (positive for all rows)."""
    out = {}
    handle = dict(model.named_modules())[layer].register_forward_hook(lambda _m, _i, o: out.setdefault("v", o))
    with torch.no_grad():
        model(x)
    handle.remove()
    weakest = out["v"].amin(dim=0)
    flat = int(weakest.argmax())
    c, rest = divmod(flat, weakest.shape[1] * weakest.shape[2])
    neuron = (c, *divmod(rest, weakest.shape[2]))
    assert weakest[neuron] > 0
    return neuron


@pytest.mark.parametrize("name", sorted(MODELS))
def test_zf_deconvolution_equals_captum_deconvolution(name: str, quiet_captum: None) -> None:
    model, x, _ = _model(name)
    for target in (3, [1, 7]):
        assert_rel_close(
            ZFDeconvolution(model).attribute(x, target=target), Deconvolution(model).attribute(x, target=target)
        )


@pytest.mark.parametrize("name", sorted(MODELS))
def test_engine_guided_backprop_equals_captum_guided_backprop(name: str, quiet_captum: None) -> None:
    model, x, _ = _model(name)
    assert_rel_close(EngineGuidedBackprop(model).attribute(x, target=5), GuidedBackprop(model).attribute(x, target=5))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_neuron_deconvolution_seeds(name: str, quiet_captum: None) -> None:
    model, x, layer = _model(name)
    neuron = _busy_neuron(model, layer, x)
    module = dict(model.named_modules())[layer]
    captum = NeuronDeconvolution(model, module).attribute(x, neuron)
    ours = NeuronZFDeconvolution(model, layer)
    assert_rel_close(ours.attribute(x, neuron, seed="one"), captum)
    with torch.no_grad():
        activation = torch.stack([_activation(model, module, x[i : i + 1], neuron) for i in range(len(x))])
    assert_rel_close(ours.attribute(x, neuron, seed="activation"), captum * activation.view(-1, 1, 1, 1))


def _activation(model: nn.Module, module: nn.Module, x: torch.Tensor, neuron: tuple[int, int, int]) -> torch.Tensor:
    out = {}
    handle = module.register_forward_hook(lambda _m, _i, o: out.setdefault("v", o))
    model(x)
    handle.remove()
    return out["v"][0][neuron]


@pytest.mark.parametrize("name", ["alexnet", "resnet18"])
def test_neuron_guided_backprop_equals_captum(name: str, quiet_captum: None) -> None:
    model, x, layer = _model(name)
    neuron = _busy_neuron(model, layer, x)
    module = dict(model.named_modules())[layer]
    assert_rel_close(
        NeuronEngineGuidedBackprop(model, layer).attribute(x, neuron, seed="one"),
        NeuronGuidedBackprop(model, module).attribute(x, neuron),
    )


def test_neuron_selector_slices_and_callables_match_captum(quiet_captum: None) -> None:
    model, x, layer = _model("alexnet")
    module = dict(model.named_modules())[layer]
    ours, captum = NeuronZFDeconvolution(model, layer), NeuronDeconvolution(model, module)
    for selector in [(slice(0, 40), 2, slice(1, 4)), lambda out: out[:, 10:20].sum((1, 2, 3))]:
        assert_rel_close(ours.attribute(x, selector, seed="one"), captum.attribute(x, selector))


def test_attribute_to_neuron_input_matches_captum(quiet_captum: None) -> None:
    model, x, _ = _model("alexnet")
    module = model.features[8]  # the conv after features.7 (a ReLU): its input is that ReLU's output
    neuron = _busy_neuron(model, "features.7", x)
    captum = NeuronDeconvolution(model, module).attribute(x, neuron, attribute_to_neuron_input=True)
    ours = NeuronZFDeconvolution(model, "features.8").attribute(x, neuron, attribute_to_neuron_input=True, seed="one")
    assert_rel_close(ours, captum)
