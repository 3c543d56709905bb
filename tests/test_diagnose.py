"""Diagnostics on constructed cases where the truth is known."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from captum_deconvviz.diagnose import (
    aliasing_score,
    diagnose,
    feature_evolution,
    high_frequency_fraction,
    renormalize_after_step,
    renormalize_filters_,
)
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
    with pytest.raises(ValueError, match="radius must be positive"):
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
    fig, axes = diagnosis.plot(use_pyplot=False)
    assert axes.shape == (4,) and len(fig.axes) == 4
    assert diagnosis.to_html().startswith("<table>") and "features.0" in diagnosis.to_html()
    fig, axes = feature_evolution(checkpoints, images, "features.4", [0, 3], labels=["a", "b", "c"], use_pyplot=False)
    assert axes.shape == (2, 3, 2)
    assert [text.get_text() for text in fig.texts] == ["a", "b", "c"]
    # Each title is centred over its (projection, patch) pair.
    for col, text in enumerate(fig.texts):
        pair = axes[0, col, 0].get_position().x0, axes[0, col, 1].get_position().x1
        assert abs(text.get_position()[0] - sum(pair) / 2) < 1e-9
    assert [axes[r, 0, 0].get_ylabel() for r in range(2)] == ["#0", "#3"]
