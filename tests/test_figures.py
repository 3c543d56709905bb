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

from captum_deconvviz import (
    ComparisonResult,
    Diagnosis,
    RandomizationResult,
    hierarchy_channels,
    mine_topk,
    plot_comparison,
    plot_diagnosis,
    plot_filters,
    plot_hierarchy,
    plot_randomization,
    plot_topk,
)
from captum_deconvviz.diagnose import LayerDiagnosis
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
    projections = result.projections(model, images, "features.4", [0, 3])
    _fig, axes = plot_topk(result, images, "features.4", [0, 3], projections=projections, denormalize=denormalize,
                           use_pyplot=False)  # fmt: skip
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
    crops = result.projections(model, images, "features.9", 1)  # one channel: [k, C, h, w]
    projections = crops.images[None]
    _, axes = plot_topk(result, images, "features.9", 1, projections=crops, use_pyplot=False)
    # method="projection": Captum's "original_image" with the normalized projection (as 0..255 ints)
    for slot in range(9):
        r, c = divmod(slot, 3)
        if projections[0, slot].abs().max() == 0:
            continue
        shown = np.asarray(axes[0, 0, r, c].images[0].get_array())
        expected = np.clip((normalize_projection(projections[0, slot], 2) * 255).astype(int), 0, 255)
        np.testing.assert_array_equal(shown, expected)
    _, axes = plot_topk(result, images, "features.9", 1, projections=crops, method="heat_map", sign="absolute_value",
                        cmap="magma", use_pyplot=False)  # fmt: skip
    cell = axes[0, 0, 0, 0]
    assert cell.images[0].get_cmap().name == "magma"
    _, axes = plot_topk(result, images, "features.9", 1, projections=projections, method="blended_heat_map",
                        alpha_overlay=0.3, use_pyplot=False)  # fmt: skip
    cell = axes[0, 0, 0, 0]
    assert len(cell.images) == 2 and cell.images[1].get_alpha() == 0.3  # grey patch below, heat map on top


def test_plot_topk_errors(setup) -> None:
    model, images, result = setup
    projections = result.projections(model, images, "features.9", [1])
    with pytest.raises(ValueError, match="method must be"):
        plot_topk(result, images, "features.9", 1, projections=projections, method="glow", use_pyplot=False)
    with pytest.raises(ValueError, match="needs projections="):
        plot_topk(result, images, "features.9", 1, use_pyplot=False)
    with pytest.raises(ValueError, match="was not mined"):
        plot_topk(result, images, "features.7", 1, projections=projections, use_pyplot=False)
    with pytest.raises(ValueError, match="expected \\[2, k"):
        plot_topk(result, images, "features.9", [1, 2], projections=projections, use_pyplot=False)


@pytest.mark.parametrize("suffix", [".png", ".pdf", ".svg"])
def test_figures_save_in_publication_formats(setup, tmp_path: Path, suffix: str) -> None:
    model, images, result = setup
    projections = result.projections(model, images, "features.1", [0, 1, 2])
    fig, _ = plot_topk(result, images, "features.1", [0, 1, 2], projections=projections, use_pyplot=False)
    path = tmp_path / f"topk{suffix}"
    fig.savefig(path, dpi=300)
    magic = {".png": b"\x89PNG", ".pdf": b"%PDF", ".svg": b"<?xml"}[suffix]
    assert path.read_bytes().startswith(magic)
    assert path.stat().st_size > 5000


def test_use_pyplot_false_does_not_touch_pyplot(setup) -> None:
    model, images, result = setup
    before = plt.get_fignums()
    plot_topk(result, images, "features.1", 0, projections=result.projections(model, images, "features.1", 0),
              use_pyplot=False)  # fmt: skip
    plot_filters(model.features[0], use_pyplot=False)
    assert plt.get_fignums() == before
    fig, _ = plot_filters(model.features[0], use_pyplot=True)
    assert plt.get_fignums() == [*before, fig.number]
    plt.close(fig)


def test_plot_hierarchy_has_a_column_per_layer(setup) -> None:
    model, images, result = setup
    shown = hierarchy_channels(result, channels_per_layer=3)
    projections = {layer: result.projections(model, images, layer, channels) for layer, channels in shown.items()}
    fig, axes = plot_hierarchy(result, images, projections, channels_per_layer=3, denormalize=denormalize,
                               use_pyplot=False)  # fmt: skip
    assert axes.shape == (3, 3)
    titles = [axes[0, c].get_title() for c in range(3)]
    assert [t.split("\n")[0] for t in titles] == LAYERS
    # deeper layers have larger patches, as their receptive fields grow
    heights = [np.asarray(axes[0, c].images[0].get_array()).shape[0] for c in range(3)]
    assert heights[0] < heights[1] < heights[2]
    assert math.isclose(fig.get_figwidth(), 3 * 1.6)
    # Each cell is the mosaic of the channel's projections above the mosaic of its patches.
    layer, channel = LAYERS[1], shown[LAYERS[1]][0]
    cell = np.asarray(axes[0, 1].images[0].get_array())
    crops = result.patches(images, layer, channel)
    projection = result.projections(model, images, layer, channel).images
    tile = projection.shape[-1]
    np.testing.assert_allclose(cell[:tile, :tile], normalize_projection(projection[0], 0.5), atol=1e-6)
    bottom = cell[cell.shape[0] // 2 + 1 :]  # below the 1-pixel white line
    expected = torch.where(crops.mask[0], denormalize(crops.images[0]), torch.full_like(crops.images[0], 0.5))
    np.testing.assert_allclose(bottom[:tile, :tile], expected.permute(1, 2, 0).numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="must hold the 3 channels"):
        plot_hierarchy(result, images, {**projections, layer: projection[None]}, channels_per_layer=3,
                       use_pyplot=False)  # fmt: skip


def test_old_model_arguments_still_draw_the_same_with_a_deprecation_warning(setup) -> None:
    model, images, result = setup
    channels = [0, 3]
    _, new = plot_topk(result, images, "features.4", channels, use_pyplot=False,
                       projections=result.projections(model, images, "features.4", channels))  # fmt: skip
    with pytest.warns(DeprecationWarning, match=r"plot_topk\(model=...\).*projections="):
        _, old = plot_topk(result, images, "features.4", channels, model=model, use_pyplot=False)
    for a, b in zip(new.flat, old.flat, strict=True):
        assert [np.asarray(i.get_array()).tolist() for i in a.images] == [
            np.asarray(i.get_array()).tolist() for i in b.images
        ]
    shown = hierarchy_channels(result, channels_per_layer=2)
    projections = {layer: result.projections(model, images, layer, c) for layer, c in shown.items()}
    _, new = plot_hierarchy(result, images, projections, channels_per_layer=2, use_pyplot=False)
    with pytest.warns(DeprecationWarning, match="hierarchy_channels"):
        _, old = plot_hierarchy(result, images, model, channels_per_layer=2, use_pyplot=False)
    for a, b in zip(new.flat, old.flat, strict=True):
        np.testing.assert_array_equal(a.images[0].get_array(), b.images[0].get_array())


# ---- figures of results: built from hand-made results whose content is known -----------------


def _comparison() -> ComparisonResult:
    inputs = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    ramp = torch.arange(64.0).view(1, 1, 8, 8).expand(2, 3, 8, 8) - 20  # signed, |.| is not monotone
    return ComparisonResult(inputs, {"ramp": ramp, "dead_map": torch.zeros(2, 3, 8, 8)}, {})


def test_plot_comparison_cells() -> None:
    result = _comparison()
    fig, axes = plot_comparison(result, examples=[1], outlier_perc=0, use_pyplot=False)
    assert isinstance(fig, Figure) and axes.shape == (1, 3)
    assert [ax.get_title() for ax in axes[0]] == ["input", "ramp", "dead map"]
    # The input column: the image min-max scaled to [0, 1].
    image = result.inputs[1]
    expected = ((image - image.min()) / (image.max() - image.min())).permute(1, 2, 0).numpy()
    np.testing.assert_allclose(axes[0, 0].images[0].get_array(), expected, atol=1e-6)
    # Captum's heat map of |map| summed over channels, scaled by its maximum (outlier_perc=0).
    absolute = result.maps["ramp"][1].abs().sum(0)
    np.testing.assert_allclose(axes[0, 1].images[0].get_array(), (absolute / absolute.max()).numpy(), atol=1e-6)
    # An all-zero map cannot be normalized: a mid-grey cell, no image.
    assert len(axes[0, 2].images) == 0 and axes[0, 2].get_facecolor()[:3] == pytest.approx((0.5, 0.5, 0.5))


def test_plot_randomization_curves() -> None:
    similarity = {
        "zf_deconv": {"spearman_abs": torch.tensor([[1.0, 0.8], [0.6, 0.4]]), "ssim": torch.ones(2, 2)},
        "saliency": {"spearman_abs": torch.tensor([[0.5, 0.3], [0.0, 0.2]]), "ssim": torch.zeros(2, 2)},
    }
    result = RandomizationResult(["fc", "conv1"], "cascading", similarity, {})
    fig, axes = plot_randomization(result, use_pyplot=False)
    assert len(axes) == 2 and len(fig.axes) == 2
    curves = {line.get_label(): line.get_ydata().tolist() for line in axes[0].get_lines() if line.get_marker() == "o"}
    assert curves == {"zf deconv": pytest.approx([0.9, 0.5]), "saliency": pytest.approx([0.4, 0.1])}
    assert [t.get_text() for t in axes[1].get_xticklabels()] == ["fc", "conv1"]
    assert axes[0].get_ylabel() == "spearman abs" and axes[1].get_title() == "cascading randomization"


def test_plot_diagnosis_panels() -> None:
    first = LayerDiagnosis(
        "conv1", "Conv2d", torch.tensor([True, False, False, False]), rms=torch.tensor([0.05, 0.2, 0.1, 0.3]),
        high_frequency=torch.tensor([0.12, 0.17, 0.72, 0.93]), aliasing=torch.tensor([0.2, 0.4]), stride=(2, 2),
    )  # fmt: skip
    pool = LayerDiagnosis("pool", "MaxPool2d", torch.zeros(2, dtype=torch.bool), aliasing=torch.full((2,), math.nan),
                          stride=(4, 4))  # fmt: skip
    fig, axes = plot_diagnosis(Diagnosis([first, pool], images=10), use_pyplot=False)
    assert axes.shape == (4,) and len(fig.axes) == 4

    def heights(ax: object) -> list[float]:
        return [bar.get_height() for bar in ax.patches]  # type: ignore[attr-defined]

    assert heights(axes[0]) == pytest.approx([0.25, 0.0])  # fraction of dead filters per layer
    assert heights(axes[1]) == pytest.approx([0.3, 0.2, 0.1, 0.05])  # first-layer RMS, sorted
    assert heights(axes[2]) == [1.0 if b in (2, 3, 14, 18) else 0.0 for b in range(20)]  # 20 bins of 0.05
    assert heights(axes[3]) == pytest.approx([0.3, 0.0])  # NaN aliasing drawn as 0, and labelled
    assert "map too\nsmall" in [t.get_text() for t in axes[3].texts]
    assert [t.get_text() for t in axes[3].get_xticklabels()] == ["conv1\n/2", "pool\n/4"]


def test_plot_topk_titles_are_a_line_high_and_name_the_layer_once(setup) -> None:
    """The title rows are a line of text, not a cell (a third of the figure was blank above the
    titles), and a long layer name is said once above the blocks, not in each block's title."""
    model, images, result = setup
    channels = [0, 3, 5, 7, 9]  # two rows of blocks (4 a row)
    projections = result.projections(model, images, "features.4", channels)
    fig, _ = plot_topk(result, images, "features.4", channels, projections=projections, use_pyplot=False)
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert texts.count("features.4") == 1
    values = {c: result.records("features.4", c)[0].value for c in channels}
    assert [t for t in texts if t.startswith("#")] == [f"#{c}, max {values[c]:.3g}" for c in channels]
    cell = 0.55  # inches, the default cell_inches; k=9 is 3 rows of cells a block
    assert fig.get_size_inches()[1] == pytest.approx((0.3 + 2 * (0.26 + 3)) * cell)
    no_titles, _ = plot_topk(result, images, "features.4", channels, projections=projections, titles=False,
                             use_pyplot=False)  # fmt: skip
    assert no_titles.get_size_inches()[1] == pytest.approx(2 * 3 * cell)
    assert not [t for ax in no_titles.axes for t in ax.texts]
