"""The exemplar figures (issue 16), read back from the rendered canvas.

Each figure is drawn with Agg and its pixels are compared with the numbers and tensors it
was given: bar heights with the class histogram, strip points and medians with the
selectivity indices, every patch and projection cell with the result's crops, the order
of the class-unit rows with the relevance ranking. Misuse is refused in one line naming
the argument and the ``mine_topk`` option to pass.
"""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from torch import Tensor, nn
from torch.utils.data import Dataset

from captum_deconvviz import (
    MiningResult,
    mine_topk,
    plot_class_histogram,
    plot_class_units,
    plot_exemplars,
    plot_selectivity,
)
from captum_deconvviz._class_figures import BAR_COLOR, MEDIAN_COLOR, POINT_COLOR, TOP_CLASS_COLOR
from captum_deconvviz.viz import normalize_projection
from captum_deconvviz.zoo import ZFNetCIFAR, default_sample, denormalize

LAYERS = ["features.4", "features.9"]


class Labelled(Dataset):
    """A round-robin subset of the shipped sample: 20 images of each class, with class names."""

    def __init__(self) -> None:
        sample = default_sample()
        order = [c * 100 + i for i in range(20) for c in range(10)]  # the sample is sorted by class
        self.images = torch.stack([sample[i][0] for i in order])
        self.labels = [int(sample.labels[i]) for i in order]
        self.classes = list(sample.classes)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.images[index], self.labels[index]


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return ZFNetCIFAR((12, 16, 16, 16)).eval()


@pytest.fixture(scope="module")
def data() -> Labelled:
    return Labelled()


@pytest.fixture(scope="module")
def result(model: nn.Module, data: Labelled) -> MiningResult:
    return mine_topk(model, LAYERS, data, k=9, progress=False, labels=True, bottom_k=9, by_class=True,
                     quantiles=True, class_top_n=30)  # fmt: skip


@pytest.fixture(scope="module")
def relevance(model: nn.Module, data: Labelled) -> MiningResult:
    return mine_topk(model, ["features.9"], data, k=9, progress=False, labels=True, rank_by="relevance",
                     target="label")  # fmt: skip


@pytest.fixture(scope="module")
def unlabelled(model: nn.Module, data: Labelled) -> MiningResult:
    return mine_topk(model, ["features.9"], data.images, k=9, progress=False)


def _canvas(fig: Figure) -> np.ndarray:
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].astype(int)


def _rgb(color: str) -> np.ndarray:
    return np.round(np.array(to_rgb(color)) * 255).astype(int)


def _matches(pixels: np.ndarray, color: str, tolerance: int = 2) -> np.ndarray:
    return np.abs(pixels - _rgb(color)).max(axis=-1) <= tolerance


def _cell_pixels(pixels: np.ndarray, ax: Any, size: tuple[int, int]) -> np.ndarray:
    """The canvas colour at the centre of each data pixel of the image drawn in ``ax`` ``[h, w, 3]``."""
    height = pixels.shape[0]
    out = np.empty((*size, 3), dtype=int)
    for i in range(size[0]):
        for j in range(size[1]):
            x, y = ax.transData.transform((j, i))
            out[i, j] = pixels[int(height - y), int(x)]
    return out


def _expected_patch(image: Tensor, mask: Tensor) -> np.ndarray:
    shown = torch.where(mask, denormalize(image).clamp(0, 1), torch.full_like(image, 0.5))
    return np.round(shown.permute(1, 2, 0).numpy() * 255).astype(int)


def _texts(fig: Figure) -> list[str]:
    return [text.get_text() for ax in fig.axes for text in ax.texts] + [fig._suptitle.get_text()]  # type: ignore


# ---- class histograms -------------------------------------------------------------------


def test_histogram_bar_heights_are_the_counts(result: MiningResult) -> None:
    channels = [0, 3, 7, 11, 15]
    stats = result.class_stats("features.9")
    assert len({tuple(stats.histogram[c].tolist()) for c in channels}) == len(channels)  # panels tell apart
    fig, axes = plot_class_histogram(result, "features.9", channels, use_pyplot=False)
    assert axes.shape == (2, 4) and sum(ax.get_visible() for ax in axes.flat) == len(channels)
    pixels = _canvas(fig)
    height = pixels.shape[0]
    for i, channel in enumerate(channels):
        ax = axes.flat[i]
        per_count = ax.transData.transform((0, 1))[1] - ax.transData.transform((0, 0))[1]
        assert per_count > 2  # a count is a few pixels: the comparison below can fail
        red = []
        for cls, count in enumerate(stats.histogram[channel].tolist()):
            x = int(ax.transData.transform((cls, 0))[0])
            box = ax.get_window_extent()
            first = int(height - box.y1)
            column = pixels[first : int(height - box.y0) + 1, x]  # this panel only
            bar = _matches(column, BAR_COLOR) | _matches(column, TOP_CLASS_COLOR)
            drawn = int(bar.sum())
            # the axis line covers a pixel of each bar's foot; the top edge is the count exactly
            assert abs(drawn - count * per_count) <= 2.5, (channel, cls, drawn, count * per_count)
            if count:
                top = height - ax.transData.transform((cls, count))[1]
                assert abs(first + np.flatnonzero(bar).min() - top) <= 1.5, (channel, cls)
            if _matches(column, TOP_CLASS_COLOR).sum() > 2:
                red.append(cls)
        top_class = int(stats.top_class[channel])
        assert red == ([top_class] if stats.histogram[channel, top_class] else [])
        value = float(stats.selectivity[channel])
        shown = "n/a" if np.isnan(value) else f"{value:.2f}"  # channel 7 is dead: no index
        assert ax.get_title() == f"#{channel}: selectivity {shown}, top {stats.name(top_class)}"
        assert [t.get_text() for t in ax.get_xticklabels()] == list(result.class_names or [])


def test_histogram_of_every_channel_by_default(result: MiningResult) -> None:
    _fig, axes = plot_class_histogram(result, "features.4", ncols=8, use_pyplot=False)
    assert axes.shape == (2, 8) and [ax.get_title().split(":")[0] for ax in axes.flat] == [f"#{c}" for c in range(16)]


# ---- selectivity by layer ---------------------------------------------------------------


def test_selectivity_strip_and_median_are_each_layers_values(result: MiningResult) -> None:
    fig, ax = plot_selectivity(result, threshold=0.2, names=["conv2", "conv4"], use_pyplot=False)
    pixels = _canvas(fig)
    height = pixels.shape[0]
    spans = []
    for i, layer in enumerate(LAYERS):
        every = result.class_stats(layer).selectivity
        values = every[~every.isnan()]
        left, right = (int(ax.transData.transform((i + dx, 0))[0]) for dx in (-0.2, 0.2))
        band = pixels[:, left : right + 1]
        rows = np.flatnonzero(_matches(band, POINT_COLOR, 12).any(axis=1))
        top, bottom = (height - ax.transData.transform((0, float(v)))[1] for v in (values.max(), values.min()))
        radius = 2.2 / 2 * fig.dpi / 72 + 1.5  # the marker's radius in pixels, and antialiasing
        assert abs(rows.min() - top) <= radius and abs(rows.max() - bottom) <= radius, (layer, rows.min(), top)
        spans.append((top, bottom))
        median = height - ax.transData.transform((0, float(values.median())))[1]
        centre = int(ax.transData.transform((i, 0))[0])
        median_rows = np.flatnonzero(_matches(pixels[:, centre - 3 : centre + 4], MEDIAN_COLOR).any(axis=1))
        assert len(median_rows) and abs(median_rows.mean() - median) <= 1.5, (layer, median_rows, median)
        share = 100 * float((values > 0.2).double().mean())
        missing = f"\n{len(every) - len(values)} n/a" if len(values) < len(every) else ""  # a dead channel
        name = ["conv2", "conv4"][i]
        assert ax.get_xticklabels()[i].get_text() == f"{name}\n{len(every)} channels{missing}\n{share:.0f}% > 0.2"
    # the layers' ranges differ by more than the tolerance: drawing one layer's values for another fails
    assert abs(spans[0][0] - spans[1][0]) > 10 or abs(spans[0][1] - spans[1][1]) > 10


# ---- a channel's exemplars --------------------------------------------------------------


def test_exemplar_rows_are_the_views_patches_and_projections(
    model: nn.Module, data: Labelled, result: MiningResult
) -> None:
    layer, channel, q, cls = "features.4", 5, 0.5, 2
    fig, axes = plot_exemplars(result, data, layer, channel, model=model, quantiles=(q,), classes=(cls,),
                               denormalize=denormalize, cell_inches=0.9, use_pyplot=False)  # fmt: skip
    views = [{"kind": "top"}, {"kind": "bottom"}, {"kind": "quantile", "q": q}, {"kind": "top", "cls": cls}]
    assert axes.shape == (4, 2, 9)
    pixels = _canvas(fig)
    size = tuple(result.fields[layer].size)
    seen = []
    for row, view in enumerate(views):
        patches = result.patches(data, layer, channel, **view)
        projections = result.projections(model, data, layer, channel, **view)
        seen.append(patches.images)
        for slot in range(9):
            patch_ax, projection_ax = axes[row, 1, slot], axes[row, 0, slot]
            assert patch_ax.get_position().x1 < projection_ax.get_position().x0  # the projection on its right
            drawn = _cell_pixels(pixels, patch_ax, size)
            expected = _expected_patch(patches.images[slot], patches.mask[slot])
            assert np.abs(drawn - expected).max() <= 1, (row, slot)
            if projections.images[slot].any():
                shown = np.clip((normalize_projection(projections.images[slot], 2) * 255).astype(int), 0, 255)
                assert np.abs(_cell_pixels(pixels, projection_ax, size) - shown).max() <= 1, (row, slot)
    assert not torch.equal(seen[0], seen[1]) and not torch.equal(seen[0], seen[2])  # the rows are other images
    texts = _texts(fig)
    records = result.records(layer, channel, kind="bottom")
    assert f"bottom 9, lowest first ({records[0].value:.3g} to {records[-1].value:.3g})" in texts
    assert any(t.startswith(f"top 9 among class {result.class_names[cls]} (") for t in texts)  # type: ignore[index]
    stats = result.class_stats(layer)
    assert f"{layer} #{channel}: class selectivity {float(stats.selectivity[channel]):.2f}, top class " in texts[-1]
    heights = [axes[r, 1, 0].get_position().y0 for r in range(4)]
    assert heights == sorted(heights, reverse=True)  # rows top to bottom: top, bottom, quantile, class


def test_exemplars_without_model_are_patches_only(data: Labelled, result: MiningResult) -> None:
    fig, axes = plot_exemplars(result, data, "features.9", 1, kinds="top", use_pyplot=False)
    assert axes.shape == (1, 2, 9) and all(ax is None for ax in axes[0, 0])
    assert len(fig.axes) == 1 + 9  # the row's title line and its nine patches


# ---- units that matter for a class ------------------------------------------------------


def test_class_unit_rows_follow_the_relevance_ranking(
    model: nn.Module, data: Labelled, relevance: MiningResult
) -> None:
    layer, n = "features.9", 5
    cls = next(c for c in range(10) if relevance.class_units(layer, c, n)[0].tolist() != list(range(n)))
    channels, means = relevance.class_units(layer, cls, n)
    assert means.tolist() == sorted(means.tolist(), reverse=True)
    fig, axes = plot_class_units(relevance, data, layer, cls, model=model, n=n, denormalize=denormalize,
                                 cell_inches=0.9, use_pyplot=False)  # fmt: skip
    assert axes.shape == (n, 2, 9)
    pixels = _canvas(fig)
    size = tuple(relevance.fields[layer].size)
    titles = [t for t in _texts(fig) if ": mean relevance " in t]
    assert titles == [f"#{c}: mean relevance {m:.3g}" for c, m in zip(channels.tolist(), means.tolist(), strict=True)]
    for row, channel in enumerate(channels.tolist()):
        patches = relevance.patches(data, layer, channel)
        for slot in (0, 4, 8):
            drawn = _cell_pixels(pixels, axes[row, 1, slot], size)
            assert np.abs(drawn - _expected_patch(patches.images[slot], patches.mask[slot])).max() <= 1, (row, slot)
    heights = [axes[r, 1, 0].get_position().y0 for r in range(n)]
    assert heights == sorted(heights, reverse=True)  # the most relevant channel on top


# ---- misuse -----------------------------------------------------------------------------


MISUSE = [
    ("histogram unlabelled", "histogram", "unlabelled", {}, ValueError, "pass labels=True"),
    ("histogram channel", "histogram", "result", {"channels": [99]}, ValueError, "channels\\[0\\]"),
    ("histogram result", "histogram", "none", {}, TypeError, "result must be a MiningResult"),
    ("histogram ncols", "histogram", "result", {"ncols": 0}, ValueError, "ncols"),
    ("selectivity unlabelled", "selectivity", "unlabelled", {}, ValueError, "pass labels=True"),
    ("selectivity empty", "selectivity", "result", {"layers": []}, ValueError, "layers is empty"),
    ("selectivity layer", "selectivity", "result", {"layers": ["features.7"]}, ValueError, "was not mined"),
    ("selectivity threshold", "selectivity", "result", {"threshold": "high"}, TypeError, "threshold"),
    ("selectivity names", "selectivity", "result", {"names": ["conv2"]}, ValueError, "names must be one name"),
    ("exemplars bottom", "exemplars", "relevance", {"kinds": ("bottom",)}, ValueError, "bottom_k=9"),
    ("exemplars kind", "exemplars", "result", {"kinds": ("middle",)}, ValueError, "kinds\\[0\\]"),
    ("exemplars q range", "exemplars", "result", {"quantiles": (1.5,)}, ValueError, "quantiles\\[0\\]"),
    ("exemplars q scalar", "exemplars", "result", {"quantiles": 0.5}, TypeError, "quantiles must be a sequence"),
    ("exemplars q unmined", "exemplars", "relevance", {"quantiles": (0.5,)}, ValueError, "quantiles=True"),
    ("exemplars class unmined", "exemplars", "relevance", {"classes": (1,)}, ValueError, "by_class=True"),
    ("exemplars class range", "exemplars", "result", {"classes": (10,)}, ValueError, "classes\\[0\\]"),
    ("exemplars channels", "exemplars", "result", {"channel": [1, 2]}, TypeError, "channel must be one"),
    ("exemplars channel range", "exemplars", "result", {"channel": 16}, ValueError, "channel"),
    ("exemplars nothing", "exemplars", "result", {"kinds": ()}, ValueError, "nothing to draw"),
    ("exemplars method", "exemplars", "result", {"method": "glow"}, ValueError, "method must be"),
    ("exemplars data", "exemplars", "result", {"data": torch.zeros(200, 3, 32, 32)}, ValueError, "data"),
    ("units activation", "units", "result", {}, ValueError, "rank_by='relevance'"),
    ("units unlabelled", "units", "unlabelled", {}, ValueError, "rank_by='relevance'"),
    ("units class", "units", "relevance", {"cls": 10}, ValueError, "cls"),
    ("units n", "units", "relevance", {"n": 0}, ValueError, "n must be"),
    ("units within", "units", "relevance", {"within_class": True}, ValueError, "by_class=True"),
]


@pytest.mark.parametrize(("what", "figure", "which", "change", "error", "match"), MISUSE, ids=[m[0] for m in MISUSE])
def test_misuse_is_refused_in_one_line(
    data: Labelled, result: MiningResult, relevance: MiningResult, unlabelled: MiningResult, what: str, figure: str,
    which: str, change: dict[str, Any], error: type, match: str,
) -> None:  # fmt: skip
    chosen = {"result": result, "relevance": relevance, "unlabelled": unlabelled, "none": None}[which]
    layer = "features.9"
    calls = {
        "histogram": lambda **kw: plot_class_histogram(chosen, layer, **kw, use_pyplot=False),
        "selectivity": lambda **kw: plot_selectivity(chosen, **kw, use_pyplot=False),
        "exemplars": lambda **kw: plot_exemplars(
            chosen, kw.pop("data", data), layer, kw.pop("channel", 1), **kw, use_pyplot=False
        ),
        "units": lambda **kw: plot_class_units(chosen, data, layer, kw.pop("cls", 1), **kw, use_pyplot=False),
    }
    with pytest.raises(error, match=match) as caught:
        calls[figure](**change)
    assert "\n" not in str(caught.value).strip(), str(caught.value)
