"""NaN and Inf: attribution and projection raise, naming the rows; never a clean-looking map.

The policy (docs/reliability.md): inputs holding NaN or Inf are refused; so is a forward
output that seeds the reverse pass (the target outputs, a neuron's layer, the seeded
units of a projection) when it is not finite. A NaN elsewhere that the reverse pass never
reads does not stop a projection, and the projection is then exactly what it is without it.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from captum_deconvviz import (
    EngineGuidedBackprop,
    NeuronZFDeconvolution,
    ZFDeconvolution,
    compare_methods,
    project_records,
    project_units,
)


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(3)
    ).eval()


X = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def poisoned(value: float, row: int = 1) -> torch.Tensor:
    x = X.clone()
    x[row, 2, 5, 7] = value
    return x


@pytest.fixture
def model() -> nn.Module:
    m = net()
    m(X)  # materialize the lazy layer
    return m


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize(
    "call",
    [
        lambda m, x: ZFDeconvolution(m).attribute(x, target=0),
        lambda m, x: EngineGuidedBackprop(m).attribute(x, target=1),
        lambda m, x: NeuronZFDeconvolution(m, "4").attribute(x, (0, 1, 1)),
        lambda m, x: project_units(m, "4", x, torch.tensor([[0, 1, 1]] * 3), crop=False),
        lambda m, x: project_units(m, "4", x, torch.tensor([[0, 1, 1]] * 3), crop=True),
        lambda m, x: compare_methods(m, x, target=0),
    ],
    ids=["zf", "guided", "neuron", "project-full", "project-crop", "compare"],
)
def test_non_finite_inputs_are_refused_with_their_rows(model: nn.Module, call: object, value: float) -> None:
    with pytest.raises(ValueError, match=r"inputs holds 1 non-finite values .* in rows \[1\]"):
        call(model, poisoned(value))  # type: ignore[operator]


def test_non_finite_images_of_project_records_are_refused(model: nn.Module) -> None:
    with pytest.raises(ValueError, match=r"images holds 1 non-finite values \(Inf\) in rows \[2\]"):
        project_records(model, "4", poisoned(float("inf"), row=2), torch.tensor([[0, 0, 1, 1]]))


def test_a_nan_weight_is_caught_at_the_target_output(model: nn.Module) -> None:
    with torch.no_grad():
        model[6].weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"forward output that seeds the reverse pass holds 3 non-finite outputs"):
        ZFDeconvolution(model).attribute(X, target=0)
    ZFDeconvolution(model).attribute(X, target=1)  # another class's row of weights is finite: fine


@pytest.mark.parametrize("crop", [True, False])
def test_a_non_finite_seeded_unit_is_refused_and_an_unread_one_is_not(model: nn.Module, crop: bool) -> None:
    units = torch.tensor([[0, 2, 2], [0, 3, 1], [0, 1, 4]])
    clean = project_units(model, "4", X, units, crop=crop)

    def poison_channel_1(_m: nn.Module, _i: object, out: torch.Tensor) -> torch.Tensor:
        out = out.clone()
        out[:, 1] = float("nan")
        return out

    handle = model[4].register_forward_hook(poison_channel_1)  # channel 1 of layer 4 is NaN everywhere
    try:
        with pytest.raises(ValueError, match=r"non-finite activations \(NaN\) in rows \[1\]"):
            project_units(model, "4", X, torch.tensor([[0, 2, 2], [1, 3, 1], [0, 1, 4]]), crop=crop)
        # Channel 0's reverse pass never reads channel 1: the projection is finite and unchanged.
        assert torch.equal(project_units(model, "4", X, units, crop=crop), clean)
    finally:
        handle.remove()


@pytest.mark.parametrize("crop", [True, False])
def test_a_nan_weight_on_the_reverse_path_is_refused(model: nn.Module, crop: bool) -> None:
    with torch.no_grad():
        model[3].weight[1, 0, 0, 0] = float("nan")  # the transposed conv multiplies channel 1's zeros by NaN
    with pytest.raises(ValueError, match="the projections holds .* weights .* hold NaN or Inf"):
        project_units(model, "4", X, torch.tensor([[0, 2, 2], [0, 3, 1], [0, 1, 4]]), crop=crop)


def test_project_records_names_the_record_row(model: nn.Module) -> None:
    with torch.no_grad():
        model[3].weight[2, 0, 0, 0] = float("nan")
    records = torch.tensor([[0, 0, 1, 1], [1, 0, 2, 2], [1, 2, 0, 0]])
    with pytest.raises(ValueError, match=r"at records holds 1 non-finite activations \(NaN\) in rows \[2\]"):
        project_records(model, "4", X, records, crop=False)


def test_mining_treats_inf_as_it_treats_nan(model: nn.Module) -> None:
    from captum_deconvviz import mine_topk

    data = X.clone()
    data[2, :, 4:8, 4:8] = float("inf")  # conv of +inf and signed weights: +inf, -inf and NaN downstream
    with pytest.raises(FloatingPointError, match=r"Inf activations for images \[2\]"):
        mine_topk(model, "1", data, k=2, progress=False)
    result = mine_topk(model, "1", data, k=2, progress=False, nan="skip")
    values = [r.value for c in range(4) for r in result.records("1", c)]
    assert values and all(v == v and abs(v) != float("inf") for v in values)
    stats = result.stats("1")
    assert int(stats.nan_count.sum()) > 0 and bool(torch.isfinite(stats.mean).all())


def test_diagnose_refuses_non_finite_images_by_their_dataset_index(model: nn.Module) -> None:
    from torch.utils.data import TensorDataset

    from captum_deconvviz import diagnose

    data = torch.randn(10, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    clean = diagnose(model, data, batch_size=4)
    assert float(clean["2"].aliasing.min()) > 0  # type: ignore[union-attr]  # a score a NaN would turn into 0
    data[6, 1, 2, 3] = float("nan")
    data[7, 0, 0, 0] = float("inf")  # the same batch of 4: the first batch that holds any is named
    for given in (data, TensorDataset(data)):
        with pytest.raises(ValueError, match=r"data holds 2 non-finite pixel values \(NaN and Inf\) in rows \[6, 7\]"):
            diagnose(model, given, batch_size=4)
    diagnose(model, data, batch_size=4, max_images=6)  # the first 6 images are finite: diagnosed


@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_the_aliasing_watch_records_no_score_from_non_finite_images(model: nn.Module, value: float) -> None:
    from captum_deconvviz import diagnose, mine_topk
    from captum_deconvviz.diagnose import watch_aliasing

    def mine_watched(data: torch.Tensor) -> object:
        with watch_aliasing(model, data, layers=["2"]) as watch:
            result = mine_topk(model, "1", data, k=2, batch_size=4, progress=False, nan="skip")
        watch.record(result, batch_size=4)
        return result

    data = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    assert set(mine_watched(data).meta["aliasing"]["scores"]) == {"2"}  # type: ignore[attr-defined]
    data[5, :, 4:8, 4:8] = value
    result = mine_watched(data)  # mining skips what is non-finite; the watch keeps no score of it
    assert "aliasing" not in result.meta  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match=r"data holds \d+ non-finite pixel values .* in rows \[5\]"):
        diagnose(model, data, layers=["2"], batch_size=4, result=result)  # type: ignore[arg-type]
