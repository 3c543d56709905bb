"""project_units and project_records: batching, intermediates, per-example units, records; the shared Captum classes."""

from __future__ import annotations

import pytest
import torch
import torchvision
from conftest import assert_rel_close
from oracles import explicit_deconvnet, strongest_units
from torch import Tensor

from captum_deconvviz import (
    EngineGuidedBackprop,
    NeuronEngineGuidedBackprop,
    NeuronZFDeconvolution,
    ZFDeconvolution,
    project_records,
    project_units,
)


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


# ---- project_records: records (image, channel, y, x) of few images ---------------------------


def _small_net() -> torch.nn.Module:
    torch.manual_seed(3)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 6, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(3, 2, padding=1),
        torch.nn.Conv2d(6, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(8, 8, 3),
        torch.nn.ReLU(),
    ).eval()


#: Records ``(image, channel, y, x)`` of 3 images with 4, 1 and 0 records, not sorted by image.
RECORDS = torch.tensor([[1, 2, 3, 4], [0, 5, 0, 0], [0, 5, 0, 0], [0, 1, 7, 7], [0, 7, 15, 2]])


@pytest.mark.parametrize("crop", [False, True])
@pytest.mark.parametrize("rows", [None, 1, 3])
@pytest.mark.parametrize("seed", ["activation", "one"])
def test_project_records_equals_project_units_row_by_row(crop: bool, rows: int | None, seed: str) -> None:
    model = _small_net()
    images = torch.randn(3, 3, 32, 32)
    out = project_records(model, "4", images, RECORDS, seed=seed, rows=rows, crop=crop)  # type: ignore[arg-type]
    expected = project_units(model, "4", images[RECORDS[:, 0]], RECORDS[:, 1:], seed=seed, crop=False)  # type: ignore[arg-type]
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    assert out.abs().sum() > 0


def test_project_records_of_a_linear_layer_and_no_records() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(144, 5))
    images = torch.randn(2, 3, 8, 8)
    records = torch.tensor([[1, 4], [0, 0], [1, 2]])
    out = project_records(model.eval(), "3", images, records, seed="one")
    expected = project_units(model, "3", images[records[:, 0]], records[:, 1:], seed="one")
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    empty = project_records(model, "3", images, torch.zeros(0, 2, dtype=torch.long))
    assert empty.shape == (0, 3, 8, 8)


@pytest.mark.parametrize("crop", [False, True])
def test_project_records_checks(crop: bool) -> None:
    model, images = _small_net(), torch.randn(2, 3, 32, 32)
    with pytest.raises(ValueError, match=r"records\[:, 0\] must index the 2 images"):
        project_records(model, "4", images, torch.tensor([[2, 0, 0, 0]]), crop=crop)
    with pytest.raises(ValueError, match=r"records\[1\] = \[1, 0, 16, 0\] is out of range"):
        project_records(model, "4", images, torch.tensor([[0, 0, 0, 0], [1, 0, 16, 0]]), crop=crop)
    with pytest.raises(ValueError, match=r"records must have shape \[R=1, 4\]"):
        project_records(model, "4", images, torch.tensor([[0, 0, 0]]), crop=crop)
    with pytest.raises(ValueError, match=r"records must have shape \[R, 1 \+ k\]"):
        project_records(model, "4", images, torch.tensor([0, 0, 0]), crop=crop)
    with pytest.raises(TypeError, match="records must be an integer tensor"):
        project_records(model, "4", images, torch.zeros(1, 4), crop=crop)


def test_project_records_accepts_the_old_keyword_with_a_deprecation_warning() -> None:
    model, images = _small_net(), torch.randn(3, 3, 32, 32)
    with pytest.warns(DeprecationWarning, match=r"project_records\(units=\.\.\.\) is deprecated") as caught:
        old = project_records(model, "4", images, units=RECORDS, crop=False)
    assert caught[0].filename == __file__
    torch.testing.assert_close(old, project_records(model, "4", images, RECORDS, crop=False))
    with pytest.raises(TypeError, match="missing required argument: 'records'"):
        project_records(model, "4", images)


def test_an_error_in_a_later_chunk_names_the_callers_row(alexnet: torch.nn.Module) -> None:
    x = torch.randn(5, 3, 64, 64)
    units = torch.tensor([[0, 0, 0]] * 4 + [[0, 99, 0]])
    with pytest.raises(ValueError, match=r"units\[4\] = \[0, 99, 0\] is out of range"):
        project_units(alexnet, "features.4", x, units, batch_size=2, crop=False)


def _bn_net() -> torch.nn.Module:  # left in training mode on purpose
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(144, 3)
    )


@pytest.mark.parametrize(
    "call",
    [
        lambda m, x: ZFDeconvolution(m).attribute(x, target=1),
        lambda m, x: EngineGuidedBackprop(m).attribute(x, target=1),
        lambda m, x: NeuronZFDeconvolution(m, "2").attribute(x, (1, 2, 2)),
        lambda m, x: NeuronEngineGuidedBackprop(m, "2").attribute(x, (1, 2, 2), seed="one"),
    ],
    ids=["zf", "guided", "neuron-zf", "neuron-guided"],
)
def test_training_mode_runs_in_eval_without_a_warning(call: object) -> None:
    """Unlike Captum's classes, ours run the model in eval mode (docs/reliability.md): no warning is due."""
    import warnings

    model, x = _bn_net(), torch.randn(2, 3, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = call(model, x)  # type: ignore[operator]
    assert model.training and torch.equal(got, call(model.eval(), x))  # type: ignore[operator]


def test_each_class_documents_its_own_attribute_and_noise_tunnel_still_works() -> None:
    import inspect

    from captum.attr import NoiseTunnel

    docs = {cls: inspect.getdoc(cls.attribute) or "" for cls in (ZFDeconvolution, EngineGuidedBackprop)}
    assert docs[ZFDeconvolution].startswith("Project the target output back to the inputs with the DeconvNet.")
    assert docs[EngineGuidedBackprop].startswith("Guided Backprop of the target output")
    assert list(inspect.signature(ZFDeconvolution.attribute).parameters) == [
        "self", "inputs", "target", "additional_forward_args"
    ]  # fmt: skip
    assert list(inspect.signature(NeuronZFDeconvolution.attribute).parameters) == [
        "self", "inputs", "neuron_selector", "additional_forward_args", "attribute_to_neuron_input", "seed"
    ]  # fmt: skip
    model, x = _bn_net().eval(), torch.randn(2, 3, 8, 8)
    smooth = NoiseTunnel(ZFDeconvolution(model)).attribute(x, nt_samples=2, stdevs=0.0, target=1)
    torch.testing.assert_close(smooth, ZFDeconvolution(model).attribute(x, target=1))


def test_many_records_of_one_image_are_projected_in_bounded_groups() -> None:
    """20 records of one image (more than MAX_BATCHED_SLOTS per batched reverse pass): each
    equals its own single-unit projection, computed one row at a time."""
    from captum_deconvviz.projection import MAX_BATCHED_SLOTS, project_records

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 6, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Conv2d(6, 5, 3), torch.nn.ReLU()
    ).eval()
    images = torch.randn(2, 3, 16, 16)
    units = torch.tensor([[c, y, x] for c in range(5) for y, x in ((0, 0), (2, 3), (4, 4), (1, 2))])
    assert len(units) > 2 * MAX_BATCHED_SLOTS
    records = torch.cat([torch.zeros(len(units), 1, dtype=torch.long), units], dim=1)
    records = torch.cat([records, torch.tensor([[1, 2, 1, 1]])])  # and one of the other image
    got = project_records(model, "4", images, records, crop=False)
    for row, record in enumerate(records.tolist()):
        image, unit = record[0], torch.tensor([record[1:]])
        expected = project_units(model, "4", images[image : image + 1], unit, crop=False)[0]
        torch.testing.assert_close(got[row], expected, rtol=1e-5, atol=1e-7)


@pytest.mark.filterwarnings("ignore:Setting backward hooks on ReLU activations:UserWarning")  # Captum's notice
def test_a_linear_layers_mined_records_project_like_captums_neuron_deconvolution() -> None:
    """Mining keeps a linear layer's records as (image, feature, 0, 0) ([N, F] seen as [N, F, 1, 1]):
    the result's projections of them equal Captum's NeuronDeconvolution (correct here: nn.ReLU
    modules, switch unpooling through MaxPool's gradient), and project_records takes both forms."""
    from captum.attr import NeuronDeconvolution

    from captum_deconvviz import mine_topk

    torch.manual_seed(5)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(6, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8 * 6 * 6, 5),
    ).eval()  # fmt: skip
    images = torch.randn(12, 3, 16, 16)
    result = mine_topk(model, ["6"], images, k=3, progress=False, batch_size=4)
    captum = NeuronDeconvolution(model, model[6])
    for feature in range(5):
        crops = result.projections(model, images, "6", feature, seed="one")
        for slot, record in enumerate(result.records("6", feature)):
            image = images[record.index : record.index + 1].clone().requires_grad_(True)
            expected = captum.attribute(image, neuron_selector=feature)[0]
            assert_rel_close(crops.images[slot], expected)
    short = project_records(model, "6", images, torch.tensor([[3, 2], [0, 4]]), seed="one")
    long = project_records(model, "6", images, torch.tensor([[3, 2, 0, 0], [0, 4, 0, 0]]), seed="one")
    torch.testing.assert_close(long, short, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"records\[0\] = \[3, 2, 1, 0\] is out of range"):
        project_records(model, "6", images, torch.tensor([[3, 2, 1, 0]]))
