"""Models where Captum's ``Deconvolution`` silently falls back to plain gradients.

On each, ours equals the explicit oracle, and the test shows that Captum differs
(see docs/captum-differences.md).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from captum.attr import Deconvolution, NeuronDeconvolution
from conftest import assert_rel_close
from oracles import conv_transpose_like, explicit_deconvnet, strongest_units
from torch import Tensor, nn

from captum_deconvviz import NeuronZFDeconvolution, ZFDeconvolution


class FunctionalReLUNet(nn.Module):
    """ReLUs and pooling written as functionals: no nn.ReLU module for Captum to hook."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 12, 3, padding=1)
        self.conv3 = nn.Conv2d(12, 16, 3)
        self.fc = nn.Linear(16 * 3 * 3, 5)

    def forward(self, x: Tensor) -> Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 3, 2)
        x = F.max_pool2d(torch.relu(self.conv2(x)), 2)
        x = self.conv3(x).relu()
        return self.fc(x.flatten(1))

    def oracle_layers(self) -> list[nn.Module]:
        return [
            self.conv1,
            nn.ReLU(),
            nn.MaxPool2d(3, 2),
            self.conv2,
            nn.ReLU(),
            nn.MaxPool2d(2),
            self.conv3,
            nn.ReLU(),
        ]


class ReLU6LeakyNet(nn.Module):
    """ReLU6 and LeakyReLU modules: Captum only hooks nn.ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.act1 = nn.ReLU6()
        self.pool = nn.MaxPool2d(3, 2)
        self.conv2 = nn.Conv2d(8, 12, 3, padding=1)
        self.act2 = nn.LeakyReLU(0.1)
        self.pool2 = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(12, 16, 3)
        self.act3 = nn.ReLU6()
        self.fc = nn.Linear(16 * 3 * 3, 5)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(self.act1(self.conv1(x) * 4.0))  # * 4 so that some units saturate at 6
        x = self.pool2(self.act2(self.conv2(x)))
        return self.fc(self.act3(self.conv3(x)).flatten(1))

    def oracle_layers(self) -> list[nn.Module]:
        conv1 = nn.Conv2d(3, 8, 3, padding=1)
        with torch.no_grad():
            conv1.weight.copy_(self.conv1.weight * 4.0)
            conv1.bias.copy_(self.conv1.bias * 4.0)
        return [conv1, self.act1, self.pool, self.conv2, self.act2, self.pool2, self.conv3, self.act3]


class InplaceReLUNet(nn.Module):
    """In-place ReLUs: an ``inplace=True`` module, ``F.relu_`` and ``Tensor.relu_``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(8, 12, 3, padding=1)
        self.conv3 = nn.Conv2d(12, 16, 3)
        self.fc = nn.Linear(16 * 3 * 3, 5)

    def forward(self, x: Tensor) -> Tensor:
        x = F.max_pool2d(self.relu1(self.conv1(x)), 3, 2)
        x = self.conv2(x)
        F.relu_(x)
        x = F.max_pool2d(x, 2)
        x = self.conv3(x)
        x.relu_()
        return self.fc(x.flatten(1))

    def oracle_layers(self) -> list[nn.Module]:
        return [
            self.conv1,
            nn.ReLU(),
            nn.MaxPool2d(3, 2),
            self.conv2,
            nn.ReLU(),
            nn.MaxPool2d(2),
            self.conv3,
            nn.ReLU(),
        ]


MODELS = {"functional": FunctionalReLUNet, "relu6_leaky": ReLU6LeakyNet, "inplace": InplaceReLUNet}


def _linear_head_signal(model: nn.Module, target: int) -> Tensor:
    return model.fc.weight[target].detach().reshape(1, 16, 3, 3)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_class_attribution_equals_oracle_and_captum_differs(name: str, quiet_captum: None) -> None:
    model = MODELS[name]().eval()
    x = torch.randn(3, 3, 24, 24)
    layers = model.oracle_layers()
    for target in (0, 3):
        oracle = explicit_deconvnet(layers, x, len(layers) - 1, None, signal=_linear_head_signal(model, target))
        ours = ZFDeconvolution(model).attribute(x.clone(), target=target)
        assert_rel_close(ours, oracle)
        captum = Deconvolution(model).attribute(x.clone(), target=target)
        assert (captum - oracle).abs().max() > 1e-2 * oracle.abs().max(), f"Captum unexpectedly right on {name}"


@pytest.mark.parametrize("name", sorted(MODELS))
def test_neuron_projection_equals_oracle_and_captum_differs(name: str, quiet_captum: None) -> None:
    model = MODELS[name]().eval()
    x = torch.randn(3, 3, 24, 24)
    layers = model.oracle_layers()
    with torch.no_grad():
        h = x
        for layer in layers:
            h = layer(h)
    units = strongest_units(h, ranks=[0, 1, 2])
    oracle = explicit_deconvnet(layers, x, len(layers) - 1, units, seed="one")
    # The last activation's output: a module in two models, the input of fc in all three.
    index = (torch.arange(3), *units.unbind(1))

    def selector(fc_input: Tensor) -> Tensor:
        return fc_input.view(3, 16, 3, 3)[index]

    ours = NeuronZFDeconvolution(model, model.fc).attribute(
        x.clone(), selector, attribute_to_neuron_input=True, seed="one"
    )
    assert_rel_close(ours, oracle)
    captum = NeuronDeconvolution(model, model.fc).attribute(x.clone(), selector, attribute_to_neuron_input=True)
    assert (captum - oracle).abs().max() > 1e-2 * oracle.abs().max()


class InterleavedReuseNet(nn.Module):
    """One ReLU module called on two branches, the second branch's call first.

    Captum keeps one ``grad_out`` per module; with this call order its hook for the
    first call reads the second call's gradient.
    """

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 6, 3, padding=1)
        self.b = nn.Conv2d(3, 6, 5, padding=2)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(12, 3)

    def forward(self, x: Tensor) -> Tensor:
        p, q = self.a(x), self.b(x)
        v = self.relu(q)
        u = self.relu(p)
        return self.fc(torch.cat([u, v], 1).mean((2, 3)))


def test_interleaved_module_reuse_equals_oracle_and_captum_differs(quiet_captum: None) -> None:
    model = InterleavedReuseNet().eval()
    x = torch.randn(2, 3, 12, 12)
    target = 1
    # Explicit reverse: fc^T, mean^T (1/HW everywhere), split the concat, rectify each branch, conv^T, sum.
    signal = model.fc.weight[target].detach().view(1, 12, 1, 1).expand(2, 12, 12, 12) / 144.0
    signal_u, signal_v = signal[:, :6].clamp_min(0), signal[:, 6:].clamp_min(0)
    oracle = conv_transpose_like(signal_u, model.a, x.shape) + conv_transpose_like(signal_v, model.b, x.shape)
    assert_rel_close(ZFDeconvolution(model).attribute(x, target=target), oracle)
    captum = Deconvolution(model).attribute(x, target=target)
    assert (captum - oracle).abs().max() > 1e-2 * oracle.abs().max()


def test_sequential_module_reuse_is_handled_by_both(quiet_captum: None) -> None:
    """Reuse in sequence (torchvision's Bottleneck) is fine for Captum too: a control case."""
    relu = nn.ReLU()
    conv1, conv2 = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3)
    head = nn.Identity()
    model = nn.Sequential(nn.Sequential(conv1, relu, conv2, relu), head).eval()
    x = torch.randn(2, 3, 10, 10)
    units = torch.tensor([[1, 2, 3], [4, 5, 0]])  # a different (c, y, x) per example
    oracle = explicit_deconvnet([conv1, nn.ReLU(), conv2, nn.ReLU()], x, 3, units, seed="one")
    ours = NeuronZFDeconvolution(model, head).attribute(x, units, attribute_to_neuron_input=True, seed="one")
    assert_rel_close(ours, oracle)
    captum = NeuronDeconvolution(model, head).attribute(x, (1, 2, 3), attribute_to_neuron_input=True)
    mine = NeuronZFDeconvolution(model, head).attribute(x, (1, 2, 3), attribute_to_neuron_input=True, seed="one")
    assert_rel_close(mine, captum)
