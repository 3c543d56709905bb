"""compare_methods and randomization_test: metrics against brute force, maps, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from captum_deconvviz import compare_methods, plot_comparison, plot_randomization, randomization_test
from captum_deconvviz.compare import spearman, ssim
from captum_deconvviz.zoo import default_sample, load_default_model


def _average_ranks(values: list[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for position in range(i, j + 1):
            ranks[order[position]] = (i + j) / 2
        i = j + 1
    return ranks


def _brute_spearman(a: list[float], b: list[float]) -> float:
    ra, rb = _average_ranks(a), _average_ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    return cov / math.sqrt(sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb))


def test_spearman_matches_brute_force_with_ties() -> None:
    gen = torch.Generator().manual_seed(0)
    a = torch.randint(0, 5, (3, 40), generator=gen).double()  # many ties
    b = (a * 0.5 + torch.randint(0, 3, (3, 40), generator=gen)).double()
    ours = spearman(a, b)
    for row in range(3):
        assert ours[row].item() == pytest.approx(_brute_spearman(a[row].tolist(), b[row].tolist()), abs=1e-12)
    assert spearman(a, a).tolist() == pytest.approx([1.0] * 3)
    assert spearman(a, -a).tolist() == pytest.approx([-1.0] * 3)
    assert math.isnan(spearman(torch.ones(1, 5), torch.arange(5.0)[None])[0].item())


def _brute_ssim(a: np.ndarray, b: np.ndarray, size: int, sigma: float = 1.5) -> float:
    a = (a - a.min()) / (a.max() - a.min())
    b = (b - b.min()) / (b.max() - b.min())
    x = np.arange(size) - (size - 1) / 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = 0.01**2, 0.03**2
    values = []
    for i in range(a.shape[0] - size + 1):
        for j in range(a.shape[1] - size + 1):
            pa, pb = a[i : i + size, j : j + size], b[i : i + size, j : j + size]
            ma, mb = (w * pa).sum(), (w * pb).sum()
            va, vb = (w * pa * pa).sum() - ma**2, (w * pb * pb).sum() - mb**2
            cov = (w * pa * pb).sum() - ma * mb
            values.append(((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return float(np.mean(values))


def test_ssim_matches_brute_force() -> None:
    gen = torch.Generator().manual_seed(1)
    a = torch.rand(2, 16, 14, generator=gen, dtype=torch.float64)
    b = a + 0.3 * torch.rand(2, 16, 14, generator=gen, dtype=torch.float64)
    ours = ssim(a, b)
    for row in range(2):
        assert ours[row].item() == pytest.approx(_brute_ssim(a[row].numpy(), b[row].numpy(), 11), abs=1e-10)
    small = ssim(a[:, :8, :8], b[:, :8, :8])  # the window shrinks to 7 to fit
    assert small[0].item() == pytest.approx(_brute_ssim(a[0, :8, :8].numpy(), b[0, :8, :8].numpy(), 7), abs=1e-10)
    assert ssim(a, a).tolist() == pytest.approx([1.0, 1.0])


@pytest.fixture(scope="module")
def setup() -> tuple[torch.nn.Module, torch.Tensor]:
    sample = default_sample()
    return load_default_model(), torch.stack([sample[i * 100][0] for i in range(6)])


def test_compare_methods_maps_and_metrics(setup) -> None:
    model, images = setup
    result = compare_methods(model, images, target=[0, 1, 2, 3, 4, 5])
    assert list(result.maps) == ["zf_deconv", "guided_backprop", "captum_deconvolution", "saliency"]
    assert all(m.shape == images.shape for m in result.maps.values())
    # The default model uses nn.ReLU modules only: Captum's Deconvolution equals ours.
    same = result.metrics[("zf_deconv", "captum_deconvolution")]
    assert same["spearman"].min() > 0.999 and same["ssim"].min() > 0.999
    different = result.metrics[("zf_deconv", "saliency")]
    assert different["spearman_abs"].max() < 0.99
    assert len(result.metrics) == 6 and result.table().count("\n") == 7
    _fig, axes = plot_comparison(result, examples=[0, 2], use_pyplot=False)
    assert axes.shape == (2, 5) and axes[0, 1].get_title() == "zf deconv"
    with pytest.warns(DeprecationWarning, match=r"ComparisonResult.plot\(...\): use captum_deconvviz.plot_comparison"):
        _fig, old = result.plot(examples=[0, 2], use_pyplot=False)
    assert old.shape == axes.shape


def test_neuron_comparison(setup) -> None:
    model, images = setup
    result = compare_methods(
        model, images, layer="features.9", neuron_selector=(3, 2, 2), methods=["zf_deconv", "engine_guided_backprop"]
    )
    assert set(result.maps) == {"zf_deconv", "engine_guided_backprop"} and result.layer == "features.9"


def test_compare_bad_input(setup) -> None:
    model, images = setup
    with pytest.raises(ValueError, match=r"unknown method\(s\) \['lrp'\]"):
        compare_methods(model, images, target=0, methods=["zf_deconv", "lrp"])
    with pytest.raises(ValueError, match="target is required"):
        compare_methods(model, images)
    with pytest.raises(ValueError, match="target has 2 entries but inputs has 6 examples"):
        compare_methods(model, images, target=[0, 1])
    with pytest.raises(ValueError, match="neuron_selector needs layer"):
        compare_methods(model, images, target=0, neuron_selector=(0, 0, 0))
    with pytest.raises(ValueError, match="neuron_selector is required"):
        compare_methods(model, images, layer="features.9")
    with pytest.raises(ValueError, match="mode must be"):
        randomization_test(model, images, 0, mode="shuffled")


def test_randomization_test_cascades_from_the_top(setup) -> None:
    model, images = setup
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = randomization_test(model, images, target=0, methods=["zf_deconv", "saliency"])
    assert result.steps == ["classifier", "features.8", "features.6", "features.3", "features.0"]
    curve = result.mean("saliency", "spearman_abs")
    assert len(curve) == 5 and curve[-1] < 0.9  # fully randomized: the gradient map changed
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the model itself is untouched
    independent = randomization_test(model, images, target=0, methods=["zf_deconv"], mode="independent")
    assert independent.similarity["zf_deconv"]["ssim"].shape == (5, 6)
    _fig, axes = plot_randomization(result, use_pyplot=False)
    assert len(axes) == 2
    with pytest.warns(DeprecationWarning, match="use captum_deconvviz.plot_randomization"):
        _fig, old = result.plot(use_pyplot=False)
    assert len(old) == 2
    assert "| classifier |" in result.table()


def test_randomization_seed_is_random_state_with_a_deprecation_warning(setup) -> None:
    model, images = setup
    kwargs = {"methods": ["saliency"], "layers": ["classifier", "features.8"]}
    new = randomization_test(model, images[:2], 0, random_state=3, **kwargs)
    with pytest.warns(DeprecationWarning, match=r"seed=.*use random_state="):
        old = randomization_test(model, images[:2], 0, seed=3, **kwargs)
    for metric, values in new.similarity["saliency"].items():
        assert torch.equal(values, old.similarity["saliency"][metric]), metric
    other = randomization_test(model, images[:2], 0, random_state=4, **kwargs)
    assert not torch.equal(other.similarity["saliency"]["spearman"], new.similarity["saliency"]["spearman"])


class _MixedRelus(torch.nn.Module):
    """One nn.ReLU module, one F.relu, one GELU module: Captum's hooks reach only the first."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.c1, self.c2, self.c3 = (torch.nn.Conv2d(a, b, 3, padding=1) for a, b in ((3, 6), (6, 6), (6, 6)))
        self.act, self.gelu = torch.nn.ReLU(), torch.nn.GELU()
        self.head = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(6, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.c1(x))
        x = torch.nn.functional.relu(self.c2(x))
        return self.head(self.gelu(self.c3(x)))


class _FunctionalOnly(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.c1, self.c2 = torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.Conv2d(6, 6, 3, padding=1)
        self.head = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(6, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.c2(self.c1(x).relu()).relu())


def test_relu_census_counts_what_captums_hooks_miss() -> None:
    from captum_deconvviz._relu_census import relus_captum_misses

    census = relus_captum_misses(_MixedRelus().eval(), torch.randn(1, 3, 8, 8))
    assert (census.missed, census.total, census.names) == (2, 3, {"relu": 1, "gelu": 1})
    census = relus_captum_misses(load_default_model().eval(), torch.randn(1, 3, 32, 32))
    assert census.missed == 0 and census.total == 4  # the default model: four nn.ReLU modules


def test_compare_warns_when_captums_guided_backprop_is_the_gradient() -> None:
    model, x = _FunctionalOnly().eval(), torch.randn(2, 3, 8, 8)
    with pytest.warns(UserWarning, match=r"2 of the 2 ReLU-type ops .* \(relu x2\)") as caught:
        result = compare_methods(model, x, target=1, methods=["guided_backprop", "saliency", "engine_guided_backprop"])
    assert caught[0].filename == __file__  # points at the caller's line
    assert "'engine_guided_backprop'" in str(caught[0].message)
    # What the warning is about: Captum's map is exactly the gradient; the engine's is not.
    assert torch.equal(result.maps["guided_backprop"], result.maps["saliency"])
    assert not torch.allclose(result.maps["engine_guided_backprop"], result.maps["saliency"])
    assert not model._forward_hooks and not model._forward_pre_hooks  # the census's hooks are gone


def test_compare_is_quiet_where_captum_is_right_or_not_used() -> None:
    import warnings

    images = torch.stack([default_sample()[i][0] for i in range(2)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compare_methods(load_default_model().eval(), images, target=0)  # nn.ReLU modules only
        compare_methods(_FunctionalOnly().eval(), torch.randn(2, 3, 8, 8), target=1, methods=["zf_deconv", "saliency"])
