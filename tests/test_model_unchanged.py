"""Every call, successful or failing, leaves the model exactly as it was."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from captum_deconvviz import (
    EngineGuidedBackprop,
    NeuronEngineGuidedBackprop,
    NeuronZFDeconvolution,
    ZFDeconvolution,
    project_units,
)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        )  # fmt: skip
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(8, 4)
        self.explode = False

    def forward(self, x: Tensor) -> Tensor:
        h = self.features(x)
        if self.explode:
            raise RuntimeError("exploded mid-forward")
        return self.head(self.drop(torch.relu(h).mean((2, 3))))


def _model() -> Net:
    model = Net().eval()
    model.features[5].train()  # a submodule left in training mode on purpose: it must stay so
    model.features[0].weight.requires_grad_(False)  # a frozen parameter
    model.head.weight.grad = torch.full_like(model.head.weight, 0.25)  # an existing .grad
    model.features.register_forward_hook(lambda *_: None)  # the user's own hook must survive
    with torch.no_grad():
        model.features[1].running_mean.uniform_(-0.1, 0.1)
    return model


CALLS: dict[str, Callable[[nn.Module, Tensor], object]] = {
    "ZFDeconvolution": lambda m, x: ZFDeconvolution(m).attribute(x, target=1),
    "EngineGuidedBackprop": lambda m, x: EngineGuidedBackprop(m).attribute(x, target=[0, 2]),
    "NeuronZFDeconvolution": lambda m, x: NeuronZFDeconvolution(m, "features.5").attribute(x, (1, 2, 2)),
    "NeuronZFDeconvolution(input)": lambda m, x: NeuronZFDeconvolution(m, m.features[4]).attribute(
        x, (1, 2, 2), attribute_to_neuron_input=True
    ),
    "NeuronEngineGuidedBackprop": lambda m, x: NeuronEngineGuidedBackprop(m, "features.2").attribute(x, (0, 1, 1)),
    "project_units": lambda m, x: project_units(m, "features.5", x, torch.tensor([[0, 1, 1], [7, 3, 2]])),
    "project_units(intermediates)": lambda m, x: project_units(
        m, "features.3", x, torch.tensor([[0, 1, 1], [7, 3, 2]]), return_intermediates=True, batch_size=1
    ),
}


@pytest.mark.parametrize("call", sorted(CALLS))
def test_successful_call_leaves_model_unchanged(call: str, snapshot) -> None:
    model = _model()
    x = torch.randn(2, 3, 8, 8)
    before = snapshot(model)
    x_before = x.clone()
    CALLS[call](model, x)
    before.assert_unchanged(model)
    assert torch.equal(x, x_before) and not x.requires_grad


@pytest.mark.parametrize("call", ["ZFDeconvolution", "EngineGuidedBackprop"])
def test_call_that_raises_mid_forward_leaves_model_unchanged(call: str, snapshot) -> None:
    model = _model()
    model.explode = True
    x = torch.randn(2, 3, 8, 8)
    before = snapshot(model)
    with pytest.raises(RuntimeError, match="exploded"):
        CALLS[call](model, x)
    before.assert_unchanged(model)
    assert not x.requires_grad


@pytest.mark.parametrize(
    "failing",
    [
        lambda m, x: ZFDeconvolution(m).attribute(x, target=99),  # fails after the forward
        lambda m, x: ZFDeconvolution(m).attribute(x),  # no target for a 4-class output
        lambda m, x: NeuronZFDeconvolution(m, "features.5").attribute(x, (100, 0, 0)),
        lambda m, x: project_units(m, "features.5", x, torch.tensor([[0, 0, 0], [0, 9, 0]])),
        lambda m, x: NeuronZFDeconvolution(m, "drop").attribute(x, 0),  # never reached: the forward raises first
    ],
)
def test_call_that_raises_after_the_forward_leaves_model_unchanged(failing, snapshot) -> None:
    model = _model()
    if failing.__code__.co_consts and "drop" in failing.__code__.co_consts:
        model.explode = True
    x = torch.randn(2, 3, 8, 8)
    before = snapshot(model)
    with pytest.raises((ValueError, RuntimeError)):
        failing(model, x)
    before.assert_unchanged(model)


def test_user_input_that_required_grad_keeps_it() -> None:
    model = _model()
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    ZFDeconvolution(model).attribute(x, target=0)
    assert x.requires_grad and x.grad is None
