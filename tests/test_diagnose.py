"""Diagnostics on constructed cases where the truth is known."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn

from captum_deconvviz import mine_topk, plot_diagnosis, plot_feature_evolution
from captum_deconvviz.diagnose import (
    aliasing_score,
    diagnose,
    high_frequency_fraction,
    renormalize_after_step,
    renormalize_filters_,
    track_features,
)
from captum_deconvviz.viz import normalize_projection
from captum_deconvviz.zoo import ZFNetCIFAR, default_sample


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    sample = default_sample()
    return torch.stack([sample[i * 10][0] for i in range(60)])


def test_zeroed_filters_are_reported_dead(images: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = ZFNetCIFAR((16, 16, 16, 16)).eval()
    with torch.no_grad():
        model.features[0].weight[[2, 9]] = 0.0
        model.features[0].bias[[2, 9]] = -0.5
    diagnosis = diagnose(model, images)
    assert diagnosis["features.0"].dead.nonzero().flatten().tolist() == [2, 9]
    assert diagnosis.images == 60
    assert "| features.0 | Conv2d | 16 | 2 |" in diagnosis.table()


def test_high_frequency_noise_filters_are_flagged() -> None:
    smooth = torch.exp(-(torch.linspace(-1, 1, 7)[:, None] ** 2 + torch.linspace(-1, 1, 7)[None, :] ** 2) * 2)
    checker = torch.tensor([[(-1.0) ** (i + j) for j in range(7)] for i in range(7)])
    noise = torch.randn(7, 7, generator=torch.Generator().manual_seed(0))
    weight = torch.stack([smooth, checker, noise]).unsqueeze(1).expand(3, 3, 7, 7)
    fraction = high_frequency_fraction(weight)
    assert fraction[0] < 0.2 and fraction[1] > 0.95 and fraction[2] > 0.6
    conv = nn.Conv2d(3, 3, 7)
    with torch.no_grad():
        conv.weight.copy_(weight)
    model = nn.Sequential(conv, nn.ReLU(), nn.Conv2d(3, 4, 3, stride=2)).eval()
    diagnosis = diagnose(model, torch.randn(8, 3, 20, 20), layers=["0"])
    assert diagnosis["0"].noisy_filters.tolist() == [False, True, True]


def test_aliasing_score_of_known_signals() -> None:
    x = torch.arange(16.0)
    nyquist = torch.cos(math.pi * x)[None, :].expand(16, 16)  # one cycle per 2 pixels: above 1/4 for stride 2
    slow = torch.cos(2 * math.pi * x / 16)[None, :].expand(16, 16)
    dense = torch.stack([nyquist, slow]).unsqueeze(0)  # [1, 2, 16, 16]
    score = aliasing_score(dense, (2, 2))
    assert score[0] > 0.99 and score[1] < 0.01
    assert aliasing_score(dense, (1, 1)).max() == 0  # stride 1 aliases nothing
    # A 3-pixel-wide map under stride 2 has one output sample on that axis: undefined, not "all aliased".
    assert aliasing_score(dense[..., :3], (2, 2)).isnan().all()
    assert not aliasing_score(dense[..., :4], (2, 2)).isnan().any()


def test_large_stride_aliases_more(images: torch.Tensor) -> None:
    torch.manual_seed(0)
    small = nn.Sequential(nn.Conv2d(3, 8, 3, stride=1, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2)).eval()
    large = nn.Sequential(nn.Conv2d(3, 8, 3, stride=1, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=4)).eval()
    large.load_state_dict(small.state_dict())
    a = diagnose(small, images)["2"].aliasing.mean()
    b = diagnose(large, images)["2"].aliasing.mean()
    assert b > a > 0


def test_renormalization_caps_every_filter_at_the_radius() -> None:
    torch.manual_seed(0)
    model = ZFNetCIFAR((8, 8, 8, 8))
    with torch.no_grad():
        model.features[0].weight.mul_(10)  # now far above 0.1 RMS
        model.features[3].weight[:4].mul_(0.01)  # these stay below
    small_before = model.features[3].weight[:4].clone()
    count = renormalize_filters_(model, radius=0.1)
    assert count >= 8
    for conv in (m for m in model.modules() if isinstance(m, nn.Conv2d)):
        rms = conv.weight.flatten(1).pow(2).mean(1).sqrt()
        assert (rms <= 0.1 + 1e-6).all()
    assert torch.equal(model.features[3].weight[:4], small_before)
    with pytest.raises(ValueError, match="radius must be > 0"):
        renormalize_filters_(model, radius=0)


def test_renormalization_after_each_optimizer_step() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=100.0)
    handle = renormalize_after_step(optimizer, model, radius=0.05)
    loss = model(torch.randn(2, 3, 8, 8)).pow(2).sum()
    loss.backward()
    optimizer.step()
    assert (model[0].weight.flatten(1).pow(2).mean(1).sqrt() <= 0.05 + 1e-6).all()
    handle.remove()


def test_plot_html_and_feature_evolution(images: torch.Tensor) -> None:
    torch.manual_seed(0)
    checkpoints = [ZFNetCIFAR((8, 8, 8, 8)).eval() for _ in range(3)]
    diagnosis = diagnose(checkpoints[0], images)
    fig, axes = plot_diagnosis(diagnosis, use_pyplot=False)
    assert axes.shape == (4,) and len(fig.axes) == 4
    with pytest.warns(DeprecationWarning, match="use captum_deconvviz.plot_diagnosis"):
        fig, axes = diagnosis.plot(use_pyplot=False)
    assert axes.shape == (4,)
    assert diagnosis.to_html().startswith("<table>") and "features.0" in diagnosis.to_html()
    evolution = track_features(checkpoints, images, "features.4", [0, 3])
    assert len(evolution.patches) == 3 and evolution.projections[0].images.shape[:2] == (2, 1)
    fig, axes = plot_feature_evolution(evolution, labels=["a", "b", "c"], use_pyplot=False)
    assert axes.shape == (2, 3, 2)
    # The cells are the checkpoints' strongest projection and patch.
    first = evolution.projections[0].images[0, 0]
    np.testing.assert_allclose(axes[0, 0, 0].images[0].get_array(), normalize_projection(first), atol=1e-6)
    assert [text.get_text() for text in fig.texts] == ["a", "b", "c"]
    # Each title is centred over its (projection, patch) pair.
    for col, text in enumerate(fig.texts):
        pair = axes[0, col, 0].get_position().x0, axes[0, col, 1].get_position().x1
        assert abs(text.get_position()[0] - sum(pair) / 2) < 1e-9
    assert [axes[r, 0, 0].get_ylabel() for r in range(2)] == ["#0", "#3"]
    # The old spellings: `feature_evolution` from the package and from this module.
    from captum_deconvviz import feature_evolution
    from captum_deconvviz.diagnose import feature_evolution as from_module

    assert from_module is feature_evolution
    with pytest.warns(DeprecationWarning, match="plot_feature_evolution"):
        _, old = feature_evolution(checkpoints, images, "features.4", [0, 3], use_pyplot=False)
    np.testing.assert_array_equal(old[0, 0, 0].images[0].get_array(), axes[0, 0, 0].images[0].get_array())


def _dead_by_forward(model: nn.Module, images: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
    """Independent: every layer's output for all images, dead = never positive anywhere."""
    outputs: dict[str, torch.Tensor] = {}
    modules = dict(model.named_modules())

    def keep(name: str) -> Callable[..., None]:
        def hook(_m: nn.Module, _i: object, out: torch.Tensor) -> None:  # returns None: the output stays the module's
            outputs.setdefault(name, out.detach().clone())

        return hook

    hooks = [modules[n].register_forward_hook(keep(n)) for n in names]
    with torch.no_grad():
        model(images)
    for hook in hooks:
        hook.remove()
    return {n: ~(outputs[n] > 0).flatten(2).any(2).any(0) for n in names}


def _half_dead_model() -> nn.Module:
    torch.manual_seed(0)
    model = ZFNetCIFAR((16, 16, 16, 16)).eval()
    with torch.no_grad():
        model.features[0].weight[[2, 9]] = 0.0
        model.features[0].bias[[2, 9]] = -0.5
        model.features[6].bias[:5] = -50.0  # conv3 channels 0-4 never fire
    return model


def test_diagnose_reuses_the_mining_statistics_in_one_pass(
    images: torch.Tensor, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _half_dead_model()
    plain = diagnose(model, images, batch_size=16)
    result = mine_topk(model, ["features.1", "features.4", "features.7", "features.9"], images, k=3, progress=False)
    names = [layer.name for layer in plain.layers]
    truth = _dead_by_forward(model, images, names)
    assert truth["features.6"][:5].all() and truth["features.0"].nonzero().flatten().tolist() == [2, 9]

    diagnose_module = sys.modules["captum_deconvviz.diagnose"]
    monkeypatch.setattr(diagnose_module, "mine_topk", lambda *a, **k: pytest.fail("diagnose mined again"))
    batches: list[int] = []
    model.register_forward_pre_hook(lambda _m, args: batches.append(len(args[0])))
    reused = diagnose(model, images, batch_size=16, result=result)
    # One probe forward on one image, then one pass over the data: 60 images in batches of 16.
    assert batches == [1, 16, 16, 16, 12]
    for name in names:
        assert torch.equal(reused[name].dead, truth[name]), name
        assert torch.equal(plain[name].dead, truth[name]), name
        if plain[name].aliasing is not None:
            assert torch.equal(reused[name].aliasing, plain[name].aliasing)
    assert reused.table() == plain.table()
    assert "from the mining statistics: features.0 from features.1, features.2 from features.1" in reused.to_html()


def test_only_exact_links_reuse_the_statistics(images: torch.Tensor) -> None:
    class Shift(nn.Module):  # an in-place op no rectifier explains: activity changes
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x[:, :4] -= 1000.0
            return x

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),  # 0: linked to the mined ReLU 1
        nn.ReLU(),  # 1: mined
        nn.MaxPool2d(2, stride=3),  # 2: stride > kernel skips positions: not linked
        nn.Conv2d(8, 8, 3, padding=1),  # 3: followed by Tanh: not linked
        nn.Tanh(),  # 4: mined
        nn.Conv2d(8, 8, 3, padding=1),  # 5: mined itself, then shifted in place
        Shift(),  # 6
        nn.ReLU(inplace=True),  # 7
        nn.MaxPool2d(3, stride=2, padding=1),  # 8: its input was shifted after 5 was mined: not linked
    ).eval()
    with torch.no_grad():
        model[5].bias.fill_(0.2)
    data = images[:20]
    result = mine_topk(model, ["1", "4", "5"], data, k=2, progress=False)
    names = ["0", "2", "3", "5", "8"]
    from captum_deconvviz._diagnose_pass import activity_sources

    assert activity_sources(model, names, result.layers, data[:1]) == {"0": "1", "5": "5"}
    diagnosis = diagnose(model, data, layers=names, result=result)
    truth = _dead_by_forward(model, data, names)
    for name in names:
        assert torch.equal(diagnosis[name].dead, truth[name]), name
    assert truth["8"].tolist() == [True] * 4 + [False] * 4 and not truth["5"].any()  # the shift kills 4 channels


def test_diagnose_refuses_a_result_of_other_weights_or_data(images: torch.Tensor) -> None:
    model = _half_dead_model()
    result = mine_topk(model, ["features.1"], images, k=2, progress=False)
    with pytest.raises(TypeError, match="result must be a MiningResult"):
        diagnose(model, images, result="mined.pt")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="data of 60 images, but data has 59"):
        diagnose(model, images[:59], result=result)
    shard = mine_topk(model, ["features.1"], images, k=2, progress=False, shard=(0, 2))
    with pytest.raises(ValueError, match="covers 30 of the 60 images"):
        diagnose(model, images, result=shard)
    with torch.no_grad():
        model.features[3].weight.mul_(2)
    with pytest.raises(ValueError, match="another model"):
        diagnose(model, images, result=result)
    with pytest.raises(ValueError, match="max_images must be >= 1"):
        diagnose(model, images, max_images=0)


def test_aliasing_score_equals_the_full_spectrum_sums() -> None:
    torch.manual_seed(0)
    for shape, stride in (((3, 4, 12, 12), (2, 2)), ((2, 3, 9, 7), (3, 2)), ((1, 2, 8, 11), (2, 4))):
        dense = torch.randn(shape).double()
        x = dense.numpy() - dense.numpy().mean(axis=(2, 3), keepdims=True)
        power = (np.abs(np.fft.fft2(x)) ** 2).sum(0)  # [C, H, W], the whole spectrum
        fy, fx = np.abs(np.fft.fftfreq(shape[2])), np.abs(np.fft.fftfreq(shape[3]))
        outside = (fy[:, None] > 0.5 / stride[0]) | (fx[None, :] > 0.5 / stride[1])
        expected = power[:, outside].sum(1) / power.reshape(shape[1], -1).sum(1)
        np.testing.assert_allclose(aliasing_score(dense, stride).numpy(), expected, rtol=1e-6)


class _FreedThenReused(nn.Module):
    """``a``'s output is freed before ``b`` runs; the functional op's new tensor can take its id."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(4, 4, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        z = y * 2
        del y
        return self.b(z + 1)  # b's input was made by a functional op: it has no source module


def _sources_by_identity(model: nn.Module, names: list[str], image: torch.Tensor) -> dict[str, str]:
    """The oracle: every module's output object kept with its version counter, then each wanted
    module's input matched by identity (``is``) and version (an in-place op in between breaks it)."""
    outputs: dict[str, list[tuple[torch.Tensor, int]]] = {}
    inputs: dict[str, list[tuple[torch.Tensor, int]]] = {}
    handles = []
    for name, module in model.named_modules():
        if name:

            def hook(_m: nn.Module, args: tuple, out: object, name: str = name) -> None:
                if args and isinstance(args[0], torch.Tensor):
                    inputs.setdefault(name, []).append((args[0], args[0]._version))
                outputs.setdefault(name, []).append((out, out._version) if isinstance(out, torch.Tensor) else (out, -1))

            handles.append(module.register_forward_hook(hook))
    with torch.no_grad():
        model(image)
    for handle in handles:
        handle.remove()
    found = {}
    for name in names:
        if len(inputs.get(name, [])) != 1 or len(outputs.get(name, [])) != 1:
            continue
        tensor, version = inputs[name][0]
        makers = [m for m, outs in outputs.items() if len(outs) == 1 and outs[0][0] is tensor and outs[0][1] == version]
        if makers:
            found[name] = makers[-1]  # the last to return it unchanged (hooks run innermost module first)
    return found


def test_input_sources_never_take_a_new_tensor_for_a_freed_one() -> None:
    from captum_deconvviz._diagnose_pass import input_sources

    model = _FreedThenReused().eval()
    image = torch.randn(1, 3, 8, 8)
    assert input_sources(model, ["b"], image) == {} == _sources_by_identity(model, ["b"], image)


def test_input_sources_of_hrnet_equal_the_identity_oracle() -> None:
    """HRNet's fuse layers free outputs mid-forward: ids were reused and the CLI's aliasing hook
    went on the wrong layer (its shape then failed every ``deconvviz mine``)."""
    timm = pytest.importorskip("timm", reason="timm is a test extra")
    from captum_deconvviz._diagnose_pass import input_sources

    model = timm.create_model("hrnet_w18_small", pretrained=False).eval()
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.stride != (1, 1)]
    image = torch.randn(1, 3, 64, 64)
    assert input_sources(model, names, image) == _sources_by_identity(model, names, image)
