"""Figures check content: pixels of cells, axes counts, the Captum method applied."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from torch import nn

from captum_deconvviz import mine_topk, plot_filters, plot_hierarchy, plot_topk
from captum_deconvviz.viz import normalize_projection
from captum_deconvviz.zoo import ZFNetCIFAR, default_sample, denormalize

LAYERS = ["features.1", "features.4", "features.9"]


@pytest.fixture(scope="module")
def setup() -> tuple[nn.Module, torch.Tensor, object]:
    torch.manual_seed(0)
    model = ZFNetCIFAR((12, 16, 16, 16)).eval()
    sample = default_sample()
    images = torch.stack([sample[i * 25][0] for i in range(40)])
    result = mine_topk(model, LAYERS, images, k=9, progress=False)
    return model, images, result


def test_plot_filters_cells_are_the_normalized_filters() -> None:
    conv = nn.Conv2d(3, 10, 5)
    fig, axes = plot_filters(conv, use_pyplot=False)
    assert isinstance(fig, Figure) and axes.shape == (3, 4)
    assert sum(ax.get_visible() for ax in axes.flat) == 10
    weight = conv.weight.detach()
    for i in range(10):
        expected = (weight[i] / (2 * weight[i].abs().max()) + 0.5).permute(1, 2, 0).numpy()
        np.testing.assert_allclose(axes.flat[i].images[0].get_array(), expected, rtol=1e-6, atol=1e-6)


def test_plot_filters_sort_by_norm_and_global_scale() -> None:
    conv = nn.Conv2d(1, 6, 3, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.arange(1, 7, dtype=torch.float32).view(6, 1, 1, 1).expand(6, 1, 3, 3))
    _, axes = plot_filters(conv, sort_by_norm=True, normalize="global", ncols=6, use_pyplot=False)
    # global scale: filter i (constant value v) shows v / (2 * 6) + 0.5; strongest (6) first
    shown = [float(np.asarray(ax.images[0].get_array()).mean()) for ax in axes.flat]
    assert shown == pytest.approx([v / 12 + 0.5 for v in (6, 5, 4, 3, 2, 1)])
    with pytest.raises(ValueError, match="1 or 3 input channels"):
        plot_filters(nn.Conv2d(8, 4, 3), use_pyplot=False)


def test_plot_topk_layout_and_patch_pixels(setup) -> None:
    model, images, result = setup
    _fig, axes = plot_topk(result, images, "features.4", [0, 3], model=model, denormalize=denormalize, use_pyplot=False)
    assert axes.shape == (2, 2, 3, 3)
    crops = result.patches(images, "features.4", [0, 3])
    for b in range(2):
        for slot in range(9):
            r, c = divmod(slot, 3)
            shown = np.asarray(axes[b, 1, r, c].images[0].get_array())
            mask = crops.mask[b, slot]
            expected = torch.where(
                mask, denormalize(crops.images[b, slot]), torch.full_like(crops.images[b, slot], 0.5)
            )
            np.testing.assert_allclose(shown, expected.permute(1, 2, 0).numpy(), rtol=1e-6, atol=1e-6)


def test_plot_topk_projection_cells_are_drawn_by_captum(setup) -> None:
    model, images, result = setup
    projections = result.projections(model, images, "features.9", [1]).images
    _, axes = plot_topk(result, images, "features.9", 1, model=model, use_pyplot=False)
    # method="projection": Captum's "original_image" with the normalized projection (as 0..255 ints)
    for slot in range(9):
        r, c = divmod(slot, 3)
        if projections[0, slot].abs().max() == 0:
            continue
        shown = np.asarray(axes[0, 0, r, c].images[0].get_array())
        expected = np.clip((normalize_projection(projections[0, slot], 2) * 255).astype(int), 0, 255)
        np.testing.assert_array_equal(shown, expected)
    _, axes = plot_topk(result, images, "features.9", 1, model=model, method="heat_map", sign="absolute_value",
                        cmap="magma", use_pyplot=False)  # fmt: skip
    cell = axes[0, 0, 0, 0]
    assert cell.images[0].get_cmap().name == "magma"
    _, axes = plot_topk(result, images, "features.9", 1, model=model, method="blended_heat_map", alpha_overlay=0.3,
                        use_pyplot=False)  # fmt: skip
    cell = axes[0, 0, 0, 0]
    assert len(cell.images) == 2 and cell.images[1].get_alpha() == 0.3  # grey patch below, heat map on top


def test_plot_topk_errors(setup) -> None:
    model, images, result = setup
    with pytest.raises(ValueError, match="method must be"):
        plot_topk(result, images, "features.9", 1, model=model, method="glow", use_pyplot=False)
    with pytest.raises(ValueError, match="needs model="):
        plot_topk(result, images, "features.9", 1, use_pyplot=False)
    with pytest.raises(ValueError, match="was not mined"):
        plot_topk(result, images, "features.7", 1, model=model, use_pyplot=False)


@pytest.mark.parametrize("suffix", [".png", ".pdf", ".svg"])
def test_figures_save_in_publication_formats(setup, tmp_path: Path, suffix: str) -> None:
    model, images, result = setup
    fig, _ = plot_topk(result, images, "features.1", [0, 1, 2], model=model, use_pyplot=False)
    path = tmp_path / f"topk{suffix}"
    fig.savefig(path, dpi=300)
    magic = {".png": b"\x89PNG", ".pdf": b"%PDF", ".svg": b"<?xml"}[suffix]
    assert path.read_bytes().startswith(magic)
    assert path.stat().st_size > 5000


def test_use_pyplot_false_does_not_touch_pyplot(setup) -> None:
    model, images, result = setup
    before = plt.get_fignums()
    plot_topk(result, images, "features.1", 0, model=model, use_pyplot=False)
    plot_filters(model.features[0], use_pyplot=False)
    assert plt.get_fignums() == before
    fig, _ = plot_filters(model.features[0], use_pyplot=True)
    assert plt.get_fignums() == [*before, fig.number]
    plt.close(fig)


def test_plot_hierarchy_has_a_column_per_layer(setup) -> None:
    model, images, result = setup
    fig, axes = plot_hierarchy(result, images, model, channels_per_layer=3, denormalize=denormalize, use_pyplot=False)
    assert axes.shape == (3, 3)
    titles = [axes[0, c].get_title() for c in range(3)]
    assert [t.split("\n")[0] for t in titles] == LAYERS
    # deeper layers have larger patches, as their receptive fields grow
    heights = [np.asarray(axes[0, c].images[0].get_array()).shape[0] for c in range(3)]
    assert heights[0] < heights[1] < heights[2]
    assert math.isclose(fig.get_figwidth(), 3 * 1.6)
