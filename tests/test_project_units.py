"""project_units: batching, intermediates, per-example units."""

from __future__ import annotations

import pytest
import torch
import torchvision
from conftest import assert_rel_close
from oracles import explicit_deconvnet, strongest_units
from torch import Tensor

from captum_deconvviz import NeuronZFDeconvolution, project_units


@pytest.fixture(scope="module")
def alexnet() -> torch.nn.Module:
    torch.manual_seed(0)
    return torchvision.models.alexnet().eval()


def test_batch_of_units_equals_separate_single_unit_projections(alexnet: torch.nn.Module) -> None:
    x = torch.randn(6, 3, 100, 100)
    with torch.no_grad():
        acts = alexnet.features[:8](x)
    units = strongest_units(acts, ranks=[0, 1, 2, 3, 4, 5])
    batched = project_units(alexnet, "features.7", x, units)
    for i in range(len(x)):
        single = NeuronZFDeconvolution(alexnet, "features.7").attribute(x[i : i + 1], tuple(units[i].tolist()))
        assert_rel_close(batched[i : i + 1], single)


@pytest.mark.parametrize("batch_size", [1, 4, 64])
def test_internal_batch_size_does_not_change_the_result(alexnet: torch.nn.Module, batch_size: int) -> None:
    x = torch.randn(5, 3, 80, 80)
    units = torch.tensor([[3, 1, 1], [10, 2, 0], [64, 0, 2], [3, 1, 1], [100, 2, 2]])
    reference = torch.cat([project_units(alexnet, "features.4", x[i : i + 1], units[i : i + 1]) for i in range(5)])
    torch.testing.assert_close(
        project_units(alexnet, "features.4", x, units, batch_size=batch_size), reference, rtol=1e-5, atol=1e-7
    )


def test_same_image_many_units_is_linear_in_the_seed_per_row(alexnet: torch.nn.Module) -> None:
    x = torch.randn(1, 3, 80, 80).expand(3, -1, -1, -1)
    units = torch.tensor([[3, 1, 1], [3, 1, 1], [5, 0, 0]])
    out = project_units(alexnet, "features.4", x, units)
    torch.testing.assert_close(out[0], out[1])
    assert not torch.allclose(out[0], out[2])


def test_intermediates_are_the_reverse_signal_at_every_module(alexnet: torch.nn.Module) -> None:
    features = alexnet.features
    x = torch.randn(3, 3, 127, 127)
    with torch.no_grad():
        acts = features[:8](x)
    units = strongest_units(acts, ranks=[0, 2, 4])
    projections, inter = project_units(features, "7", x, units, return_intermediates=True, batch_size=2)
    oracle_signals: dict[int, Tensor] = {}
    oracle = explicit_deconvnet(list(features), x, 7, units, signals=oracle_signals)
    assert_rel_close(projections, oracle)
    assert list(inter) == [str(i) for i in range(8)]  # forward order; the forward stopped at 7
    for i in range(8):
        assert_rel_close(inter[str(i)], oracle_signals[i])


def test_projection_of_a_linear_layer_unit() -> None:
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 5), torch.nn.ReLU()
    ).eval()
    x = torch.randn(2, 3, 8, 8)
    units = torch.tensor([[1], [4]])
    out = project_units(model, "4", x, units, seed="one")
    for i in range(2):
        single = NeuronZFDeconvolution(model, "4").attribute(x[i : i + 1], int(units[i]), seed="one")
        assert_rel_close(out[i : i + 1], single)
