"""The per-channel crop cache of MiningResult: same crops as uncached, never stale, bounded."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import assert_rel_close
from torch import Tensor, nn

import captum_deconvviz.projection as projection_module
from captum_deconvviz import MiningResult, NeuronZFDeconvolution, mine_topk
from captum_deconvviz.mining import model_fingerprint
from captum_deconvviz.zoo import ZFNetCIFAR, default_sample

LAYERS = ["features.4", "features.9"]


@pytest.fixture(scope="module")
def images() -> Tensor:
    sample = default_sample()
    return torch.stack([sample[i * 13][0] for i in range(48)])


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return ZFNetCIFAR((8, 12, 12, 10)).eval()


@pytest.fixture
def model() -> nn.Module:
    return _model()


@pytest.fixture
def result(model: nn.Module, images: Tensor) -> MiningResult:
    return mine_topk(model, LAYERS, images, k=4, progress=False)


def _uncached(result: MiningResult) -> MiningResult:
    """The same records with the cache off: every call computes from scratch."""
    fresh = MiningResult.merge([result])
    fresh.cache_limit = 0
    return fresh


def _independent_projection(model: nn.Module, images: Tensor, result: MiningResult, layer: str, channel: int) -> Tensor:
    """Each record projected alone by the Captum-style class, then cropped to its box."""
    field = result.fields[layer]
    out = torch.zeros(result.k, 3, *field.size)
    for slot, record in enumerate(result.records(layer, channel)):
        full = NeuronZFDeconvolution(model, layer).attribute(
            images[record.index : record.index + 1], (channel, record.y, record.x)
        )[0]
        out[slot] = field.crop(full, record.y, record.x)
    return out


def test_per_channel_calls_equal_uncached_and_independent_crops(
    model: nn.Module, images: Tensor, result: MiningResult
) -> None:
    uncached = _uncached(result)
    for layer in LAYERS:
        field = result.fields[layer]
        for channel in range(result.channels(layer)):
            patches = result.patches(images, layer, channel, fill=-1.0)
            projections = result.projections(model, images, layer, channel)
            expected_patches = uncached.patches(images, layer, channel, fill=-1.0)
            expected_projections = uncached.projections(model, images, layer, channel)
            assert torch.equal(patches.images, expected_patches.images)
            assert torch.equal(patches.mask, expected_patches.mask)
            assert torch.equal(projections.mask, expected_projections.mask)
            assert_rel_close(projections.images, expected_projections.images, rel=1e-6)
            for slot, record in enumerate(result.records(layer, channel)):
                assert torch.equal(patches.images[slot], field.crop(images[record.index], record.y, record.x, fill=-1))
            if channel % 4 == 0:  # an independent computation on a few channels
                assert_rel_close(projections.images, _independent_projection(model, images, result, layer, channel))
    info = result.cache_info()
    assert info["hits"] > 0 and info["bytes"] <= info["limit"]
    assert uncached.cache_info()["entries"] == 0


def test_a_loop_over_channels_projects_each_layer_in_at_most_two_passes(
    model: nn.Module, images: Tensor, result: MiningResult, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    original = projection_module.project_records

    def counting(*args: object, **kwargs: object) -> Tensor:
        calls.append(len(args[3]))  # records projected
        return original(*args, **kwargs)

    monkeypatch.setattr(projection_module, "project_records", counting)
    layer = "features.9"
    bulk = _uncached(result).projections(model, images, layer)
    assert len(calls) == 1
    calls.clear()
    loop = torch.stack([result.projections(model, images, layer, c).images for c in range(result.channels(layer))])
    # The first request computes its own channel; the second computes every other channel at once.
    assert len(calls) == 2 and calls[0] == len(result.records(layer, 0))
    assert sum(calls) == sum(len(result.records(layer, c)) for c in range(result.channels(layer)))
    assert_rel_close(loop, bulk.images, rel=1e-6)
    calls.clear()
    result.projections(model, images, layer, [3, 1])
    result.projections(model, images, layer)
    assert calls == []  # served from the cache


def test_changed_weights_mode_or_model_are_never_served_stale(
    model: nn.Module, images: Tensor, result: MiningResult
) -> None:
    layer = "features.9"
    before = result.projections(model, images, layer, 2).images
    result.projections(model, images, layer, 3)  # the layer is cached now
    assert result.cache_info()["entries"] >= result.channels(layer)

    def fresh_and_changed(stale: Tensor) -> Tensor:
        with pytest.raises(ValueError, match="not the model this result was mined with"):
            result.projections(model, images, layer, 2)
        result.fingerprint = model_fingerprint(model)  # as if mined with the changed model: the cache must see it
        got = result.projections(model, images, layer, 2).images
        torch.testing.assert_close(got, _independent_projection(model, images, result, layer, 2), rtol=1e-5, atol=1e-7)
        assert not torch.allclose(got, stale)
        return got

    with torch.no_grad():  # an in-place edit: the version counter moves
        model.features[6].weight.mul_(1.5)
    after = fresh_and_changed(before)
    model.features[6].weight.data[0] *= 0.5  # through .data: no version bump, caught by the sampled values
    after = fresh_and_changed(after)
    model.load_state_dict(_model(seed=1).state_dict())
    after = fresh_and_changed(after)

    misses = result.cache_info()["misses"]
    model.train()
    result.projections(model, images, layer, 2)
    assert result.cache_info()["misses"] == misses + 1  # another mode is another key
    model.eval()

    other = copy.deepcopy(model)  # equal weights, another object: computed again, equal
    misses = result.cache_info()["misses"]
    assert torch.equal(
        result.projections(other, images, layer, 2).images, result.projections(model, images, layer, 2).images
    )
    assert result.cache_info()["misses"] > misses

    model.features[6] = nn.Conv2d(12, 12, 3, padding=1)  # a replaced submodule
    fresh_and_changed(after)


def test_changed_data_is_never_served_stale(model: nn.Module, images: Tensor, result: MiningResult) -> None:
    data = images.clone()
    layer = "features.4"
    first = result.patches(data, layer, 1).images
    result.patches(data, layer, 2)
    record = result.records(layer, 1)[0]
    data[record.index] += 10.0  # in place: the tensor's version counter moves
    patches = result.patches(data, layer, 1).images
    assert torch.equal(patches[0], first[0] + 10.0 * result.patches(data, layer, 1).mask[0][None])

    projections = result.projections(model, data, layer, 1).images
    assert_rel_close(projections, _independent_projection(model, data, result, layer, 1))

    swapped = images.clone()  # another object, other pixels
    swapped[record.index] = -swapped[record.index]
    expected = result.fields[layer].crop(swapped[record.index], record.y, record.x)
    assert torch.equal(result.patches(swapped, layer, 1).images[0], expected)

    class Dataset(torch.utils.data.Dataset):
        def __init__(self, tensor: Tensor) -> None:
            self.tensor = tensor

        def __len__(self) -> int:
            return len(self.tensor)

        def __getitem__(self, index: int) -> tuple[Tensor, int]:
            return self.tensor[index], 0

    dataset = Dataset(images)
    loader = torch.utils.data.DataLoader(dataset, batch_size=7)
    assert torch.equal(result.patches(dataset, layer, 1).images, result.patches(loader, layer, 1).images)
    misses = result.cache_info()["misses"]
    result.patches(Dataset(images), layer, 1)  # another dataset object: not the cached one
    assert result.cache_info()["misses"] == misses + 1


def test_memory_bound_is_respected_and_crops_stay_right(model: nn.Module, images: Tensor, result: MiningResult) -> None:
    layer = "features.9"
    field = result.fields[layer]
    per_channel = result.k * (3 * 4 + 1) * field.size[0] * field.size[1]  # float crops + bool mask
    result.cache_limit = 3 * per_channel
    uncached = _uncached(result)
    for channel in [*range(result.channels(layer)), 0, 7]:
        got = result.projections(model, images, layer, channel)
        patches = result.patches(images, layer, channel)
        info = result.cache_info()
        assert info["bytes"] <= 3 * per_channel and info["entries"] <= 3
        assert_rel_close(got.images, uncached.projections(model, images, layer, channel).images, rel=1e-6)
        assert torch.equal(patches.images, uncached.patches(images, layer, channel).images)
    result.cache_limit = per_channel  # lowering the bound evicts at once
    assert result.cache_info()["bytes"] <= per_channel
    result.clear_cache()
    assert result.cache_info()["entries"] == 0 and result.cache_info()["bytes"] == 0
    result.cache_limit = 0
    result.projections(model, images, layer, 1)
    result.projections(model, images, layer, 2)
    assert result.cache_info()["entries"] == 0


def test_returned_crops_are_the_callers_own(model: nn.Module, images: Tensor, result: MiningResult) -> None:
    layer = "features.4"
    first = result.projections(model, images, layer, 0)
    reference = first.images.clone()
    first.images.zero_()
    first.mask.zero_()
    result.projections(model, images, layer, 1)
    again = result.projections(model, images, layer, 0)
    assert torch.equal(again.images, reference) and again.mask.any()
    everything = result.patches(images, layer)
    everything.images.fill_(7.0)
    assert not torch.equal(result.patches(images, layer, 0).images, everything.images[0])


def test_bad_arguments_are_named(model: nn.Module, images: Tensor, result: MiningResult) -> None:
    with pytest.raises(ValueError, match="cache_limit must be an int >= 0"):
        result.cache_limit = -1
    with pytest.raises(ValueError, match="cache_limit"):
        result.cache_limit = 1.5  # type: ignore[assignment]
    with pytest.raises(ValueError, match="fill must be a number"):
        result.patches(images, "features.4", 0, fill="white")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="seed must be"):
        result.projections(model, images, "features.4", 0, seed="ones")
    with pytest.raises(ValueError, match=r"channel must be in \[0, 11\], got 99"):
        result.projections(model, images, "features.4", 99)
    assert result.cache_info()["entries"] == 0
