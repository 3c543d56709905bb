"""The ConvNets people use: every public operation works and agrees with its oracle.

Oracles: Captum's ``Deconvolution``/``NeuronDeconvolution`` on the model with every
functional activation rewritten into a module (torch.fx) and Captum's hooks extended
to every ReLU-like module (tests/oracles.py); the probe for receptive fields; a fresh
forward pass for mined values (``verify=True``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import pytest
import torch
import torchvision
from captum.attr import NeuronDeconvolution
from conftest import assert_rel_close
from oracles import RectifyingDeconvolution, with_activation_modules
from torch import nn

from captum_deconvviz import NeuronZFDeconvolution, ZFDeconvolution, mine_topk, receptive_field


@dataclass(frozen=True)
class Arch:
    size: int
    middle: str  # a leaf module in the middle of the network, for neuron attribution
    fields: tuple[str, str]  # two layers whose receptive fields are checked against the probe
    kwargs: tuple[tuple[str, object], ...] = ()


NO_AUX = (("aux_logits", False), ("init_weights", False))
ARCHS = {
    "alexnet": Arch(64, "features.7", ("features.5", "features.12")),
    "vgg11_bn": Arch(64, "features.10", ("features.3", "features.14")),
    "vgg16": Arch(64, "features.15", ("features.9", "features.22")),
    "resnet18": Arch(64, "layer2.0.conv2", ("layer1.1.conv1", "layer3.0.downsample.0")),
    "resnet50": Arch(64, "layer2.1.conv3", ("layer1.0.conv2", "layer3.0.conv2")),
    "densenet121": Arch(
        64, "features.denseblock2.denselayer3.conv2", ("features.denseblock1", "features.transition2.pool")
    ),
    "googlenet": Arch(64, "inception3b.branch2.1.conv", ("maxpool2", "inception4a"), NO_AUX),
    "inception_v3": Arch(96, "Mixed_5b.branch3x3dbl_2.conv", ("Conv2d_2b_3x3", "Mixed_5c"), NO_AUX),
    "mobilenet_v2": Arch(64, "features.5.conv.1.0", ("features.2", "features.7")),
    "mobilenet_v3_small": Arch(64, "features.2.block.0.0", ("features.1", "features.4")),
    "efficientnet_b0": Arch(64, "features.2.0.block.1.0", ("features.1", "features.3")),
    "regnet_x_400mf": Arch(64, "trunk_output.block2.block2-0.f.b.0", ("stem", "trunk_output.block2")),
    "convnext_tiny": Arch(64, "features.1.0.block.0", ("features.0", "features.3")),
    "squeezenet1_1": Arch(64, "features.6.expand3x3", ("features.2", "features.9")),
}


@pytest.fixture(scope="module", params=sorted(ARCHS))
def arch(request: pytest.FixtureRequest) -> tuple[str, nn.Module, torch.Tensor]:
    name = request.param
    spec = ARCHS[name]
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, **dict(spec.kwargs)).eval()
    x = torch.randn(2, 3, spec.size, spec.size)
    return name, model, x


def test_zf_deconvolution_equals_the_captum_oracle(arch) -> None:
    _, model, x = arch
    ours = ZFDeconvolution(model).attribute(x, target=[1, 7])
    assert torch.isfinite(ours).all()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        oracle = RectifyingDeconvolution(with_activation_modules(model)).attribute(x, target=[1, 7])
    assert_rel_close(ours, oracle, rel=1e-4)


def test_neuron_zf_deconvolution_on_a_middle_layer_equals_the_captum_oracle(arch) -> None:
    name, model, x = arch
    layer = ARCHS[name].middle
    neuron = NeuronZFDeconvolution(model, layer)
    ours = neuron.attribute(x, (1, 0, 0), seed="one")
    gm = with_activation_modules(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        captum = NeuronDeconvolution(gm, dict(gm.named_modules())[layer])
        captum.deconv = RectifyingDeconvolution(gm)
        oracle = captum.attribute(x, (1, 0, 0))
    assert_rel_close(ours, oracle, rel=1e-4)


def test_receptive_fields_agree_with_the_probe(arch) -> None:
    name, model, x = arch
    for layer in ARCHS[name].fields:
        rf = receptive_field(model, layer, tuple(x.shape[1:]), verify=True)
        assert min(rf.size) >= 1 and rf.output_size


def test_short_mining_run_is_verified(arch) -> None:
    name, model, x = arch
    images = torch.randn(6, *x.shape[1:])
    layers = list(ARCHS[name].fields)
    result = mine_topk(model, layers, images, k=2, batch_size=4, progress=False, verify=True)
    assert result.layers == layers
    layer = layers[0]
    channel = int(result.stats(layer).maximum.argmax())
    crops = result.projections(model, images, layer, channel)
    assert crops.images.shape[0] == 2 and torch.isfinite(crops.images).all()
