"""Bad input gets a clear error that names the argument, before torch's internals see it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from captum_deconvviz import NeuronZFDeconvolution, ZFDeconvolution, project_units


@pytest.fixture
def model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 3 * 3, 5)).eval()


X = torch.randn(2, 3, 8, 8)


def test_layer_not_in_model(model: nn.Module) -> None:
    with pytest.raises(ValueError, match=r"layer='feature\.1' is not a module of the model"):
        NeuronZFDeconvolution(model, "feature.1")
    with pytest.raises(ValueError, match="not a submodule"):
        NeuronZFDeconvolution(model, nn.ReLU())
    with pytest.raises(ValueError, match="did you mean"):
        project_units(model, "11", X, torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="layer must be an nn.Module"):
        project_units(model, 1, X, torch.zeros(2, 3, dtype=torch.long))


def test_layer_never_called(model: nn.Module) -> None:
    class WithSpare(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net, self.unused = model, nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

    with pytest.raises(ValueError, match="'unused' was not called"):
        NeuronZFDeconvolution(WithSpare(), "unused").attribute(X, 0)


def test_units_checks(model: nn.Module) -> None:
    with pytest.raises(ValueError, match=r"units\[1\] = \[0, 6, 0\] is out of range"):
        project_units(model, "1", X, torch.tensor([[0, 0, 0], [0, 6, 0]]))
    with pytest.raises(ValueError, match=r"units\[0\] = \[-1, 0, 0\] is out of range"):
        project_units(model, "1", X, torch.tensor([[-1, 0, 0], [0, 0, 0]]))
    with pytest.raises(ValueError, match=r"units must have shape \[N, k\] with N = inputs.shape\[0\] = 2"):
        project_units(model, "1", X, torch.zeros(3, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"units must have shape \[N=2, 3\]"):
        project_units(model, "1", X, torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="units must be an integer tensor"):
        project_units(model, "1", X, torch.zeros(2, 3))
    with pytest.raises(TypeError, match="units must be an integer tensor"):
        project_units(model, "1", X, [[0, 0, 0], [0, 0, 0]])


def test_inputs_checks(model: nn.Module) -> None:
    with pytest.raises(TypeError, match="inputs must be a torch.Tensor, got ndarray"):
        ZFDeconvolution(model).attribute(X.numpy(), target=0)
    with pytest.raises(TypeError, match="inputs must be a floating-point tensor"):
        ZFDeconvolution(model).attribute(X.to(torch.uint8), target=0)
    with pytest.raises(ValueError, match="empty batch"):
        project_units(model, "1", X[:0], torch.zeros(0, 3, dtype=torch.long))
    with pytest.raises(TypeError, match=r"inputs\[1\] must be a torch.Tensor"):
        ZFDeconvolution(model).attribute((X, "extra"), target=0)
    with pytest.raises(ValueError, match=r"inputs\[1\] has batch size 3"):
        ZFDeconvolution(model).attribute((X, torch.randn(3, 1)), target=0)


def test_model_checks() -> None:
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        ZFDeconvolution(lambda x: x)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="DataParallel"):
        ZFDeconvolution(nn.DataParallel(nn.Linear(2, 2)))


def test_target_checks(model: nn.Module) -> None:
    with pytest.raises(ValueError, match="target is required: the model returns 5 values per example"):
        ZFDeconvolution(model).attribute(X)
    with pytest.raises(ValueError, match="target=7 is out of range for a model output with 5 classes"):
        ZFDeconvolution(model).attribute(X, target=7)
    with pytest.raises(ValueError, match="target="):
        ZFDeconvolution(model).attribute(X, target=[1, 2, 3])


def test_neuron_selector_and_seed_checks(model: nn.Module) -> None:
    neuron = NeuronZFDeconvolution(model, "1")
    with pytest.raises(ValueError, match="neuron_selector=.* does not fit"):
        neuron.attribute(X, (9, 0, 0))
    with pytest.raises(ValueError, match="selects 36 values per example"):
        neuron.attribute(X, 1)
    with pytest.raises(TypeError, match="neuron_selector must be"):
        neuron.attribute(X, "a")
    with pytest.raises(ValueError, match="seed must be 'activation'"):
        neuron.attribute(X, (0, 0, 0), seed="ones")
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        project_units(model, "1", X, torch.zeros(2, 3, dtype=torch.long), batch_size=0)
