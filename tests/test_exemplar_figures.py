"""The exemplar figures (issue 16), read back from the rendered canvas.

Each figure is drawn with Agg and its pixels are compared with the numbers and tensors it
was given: bar heights with the class histogram, strip points and medians with the
selectivity indices, every patch and projection cell with the result's crops, the order
of the class-unit rows with the relevance ranking. Misuse is refused in one line naming
the argument and the ``mine_topk`` option to pass.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
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

import captum_deconvviz._exemplar_figures as exemplar_figures
from captum_deconvviz import (
    Crops,
    ExemplarRow,
    MiningResult,
    class_unit_rows,
    exemplar_rows,
    mine_topk,
    plot_class_histogram,
    plot_class_units,
    plot_exemplars,
    plot_selectivity,
)
from captum_deconvviz._class_figures import BAR_COLOR, MEDIAN_COLOR, POINT_COLOR, TOP_CLASS_COLOR
from captum_deconvviz._exemplar_figures import PAIRED_LINE
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


def test_exemplar_rows_are_the_views_records_patches_and_projections(
    model: nn.Module, data: Labelled, result: MiningResult
) -> None:
    layer, channel, q, cls = "features.4", 5, 0.5, 2
    rows = exemplar_rows(result, data, layer, channel, model=model, quantiles=(q,), classes=(cls,))
    views = [{"kind": "top"}, {"kind": "bottom"}, {"kind": "quantile", "q": q}, {"kind": "top", "cls": cls}]
    assert [(r.kind, r.cls, r.q) for r in rows] == [(v["kind"], v.get("cls"), v.get("q")) for v in views]
    assert {(r.layer, r.channel, r.relevance) for r in rows} == {(layer, channel, None)}
    for row, view in zip(rows, views, strict=True):
        assert row.records == result.records(layer, channel, **view)
        assert torch.equal(row.patches.images, result.patches(data, layer, channel, **view).images)
        assert torch.equal(row.patches.mask, result.patches(data, layer, channel, **view).mask)
        assert row.projections is not None
        assert torch.equal(row.projections.images, result.projections(model, data, layer, channel, **view).images)
    assert len({tuple(r.index for r in row.records) for row in rows}) == 4  # four views, four sets of images
    bottom = rows[1].records
    assert bottom[0].value <= bottom[-1].value  # lowest first
    assert rows[1].title == f"bottom 9, lowest first ({bottom[0].value:.3g} to {bottom[-1].value:.3g})"
    assert rows[3].title.startswith(f"top 9 among class {result.class_names[cls]} (")  # type: ignore[index]
    stats = result.class_stats(layer)
    top_class = stats.name(int(stats.top_class[channel]))
    heading = f"{layer} #{channel}: class selectivity {float(stats.selectivity[channel]):.2f}, top class {top_class}"
    assert {row.figure_title for row in rows} == {heading}
    assert all(row.projections is None for row in exemplar_rows(result, data, layer, channel))  # no model


def test_plot_exemplars_draws_each_rows_patches_and_projections(
    model: nn.Module, data: Labelled, result: MiningResult
) -> None:
    layer, channel, q, cls = "features.4", 5, 0.5, 2
    rows = exemplar_rows(result, data, layer, channel, model=model, quantiles=(q,), classes=(cls,))
    fig, axes = plot_exemplars(rows, denormalize=denormalize, cell_inches=0.9, use_pyplot=False)
    views = [{"kind": "top"}, {"kind": "bottom"}, {"kind": "quantile", "q": q}, {"kind": "top", "cls": cls}]
    assert axes.shape == (4, 2, 9)
    pixels = _canvas(fig)
    size = tuple(result.fields[layer].size)
    for row, view in enumerate(views):
        patches = result.patches(data, layer, channel, **view)  # the result's own crops, not the rows'
        projections = result.projections(model, data, layer, channel, **view)
        for slot in range(9):
            patch_ax, projection_ax = axes[row, 1, slot], axes[row, 0, slot]
            assert patch_ax.get_position().x1 < projection_ax.get_position().x0  # the projection on its right
            drawn = _cell_pixels(pixels, patch_ax, size)
            expected = _expected_patch(patches.images[slot], patches.mask[slot])
            assert np.abs(drawn - expected).max() <= 1, (row, slot)
            if projections.images[slot].any():
                shown = np.clip((normalize_projection(projections.images[slot], 2) * 255).astype(int), 0, 255)
                assert np.abs(_cell_pixels(pixels, projection_ax, size) - shown).max() <= 1, (row, slot)
    texts = _texts(fig)
    assert [row.title for row in rows] == [t for t in texts if t != texts[-1]]  # one title line per row
    assert texts[-1] == f"{rows[0].figure_title}\n{PAIRED_LINE}"
    heights = [axes[r, 1, 0].get_position().y0 for r in range(4)]
    assert heights == sorted(heights, reverse=True)  # rows top to bottom: top, bottom, quantile, class


def test_plot_exemplars_draws_the_tensors_of_rows_made_by_hand() -> None:
    # no result, data or model exists here: what is drawn can come only from the rows
    colours = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    images = colours[:, :, None, None].expand(3, 3, 4, 4).clone()
    mask = torch.ones(3, 4, 4, dtype=torch.bool)
    mask[2] = False  # a missing record: a grey cell
    rows = [
        ExemplarRow("conv", 7, "top", "first", [], Crops(images, mask)),
        ExemplarRow("conv", 7, "top", "second", [], Crops(images.flip(0)[:2], mask[:2])),
    ]
    fig, axes = plot_exemplars(rows, denormalize=lambda image: image, cell_inches=0.8, use_pyplot=False)
    assert axes.shape == (2, 2, 3) and all(ax is None for ax in axes[:, 0].flat)
    pixels = _canvas(fig)
    expected = [["#ff0000", "#0000ff", None], ["#00ff00", "#0000ff", None]]
    height = pixels.shape[0]
    for r in range(2):
        for slot in range(3):
            colour = expected[r][slot]
            if colour is None:  # no record in this slot (r=0: its mask is empty; r=1: the row is short): grey
                box = axes[r, 1, slot].get_window_extent()
                inside = pixels[int(height - box.y1) + 2 : int(height - box.y0) - 2, int(box.x0) + 2 : int(box.x1) - 2]
                assert inside.size and (np.abs(inside - _rgb("0.9")) <= 1).all(), (r, slot)
            else:
                drawn = _cell_pixels(pixels, axes[r, 1, slot], (4, 4))
                assert (np.abs(drawn - _rgb(colour)) <= 1).all(), (r, slot)
    assert _texts(fig)[-1] == "conv #7"  # rows without a figure_title: their layer and channel
    fig, _ = plot_exemplars(rows, title="hand-made", use_pyplot=False)
    assert _texts(fig)[-1] == "hand-made"


def test_plot_exemplars_without_projections_are_patches_only(data: Labelled, result: MiningResult) -> None:
    rows = exemplar_rows(result, data, "features.9", 1, kinds="top")
    fig, axes = plot_exemplars(rows, use_pyplot=False)
    assert axes.shape == (1, 2, 9) and all(ax is None for ax in axes[0, 0])
    assert len(fig.axes) == 1 + 9  # the row's title line and its nine patches
    assert PAIRED_LINE not in _texts(fig)[-1]


@pytest.mark.parametrize("figure", [plot_exemplars, plot_class_units])
def test_figures_take_rows_not_a_model(figure: Any) -> None:
    # the figures draw what they are given (docs/architecture.md): no model, result or data to run
    assert not {"model", "result", "data"} & set(inspect.signature(figure).parameters)


# ---- units that matter for a class ------------------------------------------------------


def test_class_unit_rows_follow_the_relevance_ranking(
    model: nn.Module, data: Labelled, relevance: MiningResult
) -> None:
    layer, n = "features.9", 5
    cls = next(c for c in range(10) if relevance.class_units(layer, c, n)[0].tolist() != list(range(n)))
    channels, means = relevance.class_units(layer, cls, n)
    assert means.tolist() == sorted(means.tolist(), reverse=True)
    rows = class_unit_rows(relevance, data, layer, cls, model=model, n=n)
    ranked = list(zip(channels.tolist(), means.tolist(), strict=True))
    assert [(r.channel, r.relevance, r.kind, r.cls) for r in rows] == [(c, m, "top", None) for c, m in ranked]
    assert [r.title for r in rows] == [f"#{c}: mean relevance {m:.3g}" for c, m in ranked]
    name = relevance.class_names[cls]  # type: ignore[index]
    assert {r.figure_title for r in rows} == {f"{layer}: the {n} channels of largest mean relevance for class {name}"}
    for row in rows:
        assert row.records == relevance.records(layer, row.channel)
        assert torch.equal(row.patches.images, relevance.patches(data, layer, row.channel).images)
        assert row.projections is not None
        assert torch.equal(row.projections.images, relevance.projections(model, data, layer, row.channel).images)


def test_class_unit_rows_within_class_are_each_channels_top_k_in_the_class(
    data: Labelled, result: MiningResult, model: nn.Module
) -> None:
    by_class = mine_topk(model, ["features.9"], data, k=9, progress=False, labels=True, by_class=True,
                         rank_by="relevance", target="label")  # fmt: skip
    rows = class_unit_rows(by_class, data, "features.9", 4, n=3, within_class=True)
    assert len(rows) == 3 and all(r.cls == 4 and r.projections is None for r in rows)
    for row in rows:
        assert row.records == by_class.records("features.9", row.channel, cls=4)
        assert all(data.labels[record.index] == 4 for record in row.records)
    assert rows[0].figure_title.endswith(f", each its top 9 in class {by_class.class_names[4]}")  # type: ignore[index]


def test_plot_class_units_draws_the_rows_in_order(model: nn.Module, data: Labelled, relevance: MiningResult) -> None:
    layer, n = "features.9", 5
    cls = next(c for c in range(10) if relevance.class_units(layer, c, n)[0].tolist() != list(range(n)))
    channels, means = relevance.class_units(layer, cls, n)
    rows = class_unit_rows(relevance, data, layer, cls, model=model, n=n)
    # 1.5 inches: 4 canvas pixels per pixel of the 35-pixel field, so each one is read at its centre
    fig, axes = plot_class_units(rows, denormalize=denormalize, cell_inches=1.5, use_pyplot=False)
    assert axes.shape == (n, 2, 9)
    pixels = _canvas(fig)
    size = tuple(relevance.fields[layer].size)
    titles = [t for t in _texts(fig) if ": mean relevance " in t]
    assert titles == [f"#{c}: mean relevance {m:.3g}" for c, m in zip(channels.tolist(), means.tolist(), strict=True)]
    for row, channel in enumerate(channels.tolist()):
        patches = relevance.patches(data, layer, channel)
        projections = relevance.projections(model, data, layer, channel)
        for slot in (0, 4, 8):
            drawn = _cell_pixels(pixels, axes[row, 1, slot], size)
            assert np.abs(drawn - _expected_patch(patches.images[slot], patches.mask[slot])).max() <= 1, (row, slot)
            if projections.images[slot].any():
                shown = np.clip((normalize_projection(projections.images[slot], 2) * 255).astype(int), 0, 255)
                assert np.abs(_cell_pixels(pixels, axes[row, 0, slot], size) - shown).max() <= 1, (row, slot)
    heights = [axes[r, 1, 0].get_position().y0 for r in range(n)]
    assert heights == sorted(heights, reverse=True)  # the most relevant channel on top
    assert _texts(fig)[-1] == f"{rows[0].figure_title}\n{PAIRED_LINE}"


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
    ("rows result", "rows", "none", {}, TypeError, "result must be a MiningResult"),
    ("rows bottom", "rows", "relevance", {"kinds": ("bottom",)}, ValueError, "bottom_k=9"),
    ("rows kind", "rows", "result", {"kinds": ("middle",)}, ValueError, "kinds\\[0\\]"),
    ("rows kinds type", "rows", "result", {"kinds": 3}, TypeError, "kinds must be"),
    ("rows q range", "rows", "result", {"quantiles": (1.5,)}, ValueError, "quantiles\\[0\\]"),
    ("rows q scalar", "rows", "result", {"quantiles": 0.5}, TypeError, "quantiles must be a sequence"),
    ("rows q unmined", "rows", "relevance", {"quantiles": (0.5,)}, ValueError, "quantiles=True"),
    ("rows class unmined", "rows", "relevance", {"classes": (1,)}, ValueError, "by_class=True"),
    ("rows class range", "rows", "result", {"classes": (10,)}, ValueError, "classes\\[0\\]"),
    ("rows channels", "rows", "result", {"channel": [1, 2]}, TypeError, "channel must be one"),
    ("rows channel range", "rows", "result", {"channel": 16}, ValueError, "channel"),
    ("rows channel negative", "rows", "result", {"channel": -1}, ValueError, "channel"),
    ("rows channel float", "rows", "result", {"channel": 1.5}, TypeError, "channel"),
    ("rows nothing", "rows", "result", {"kinds": ()}, ValueError, "nothing to show"),
    ("rows data", "rows", "result", {"data": torch.zeros(200, 3, 32, 32)}, ValueError, "data"),
    ("rows model", "rows", "result", {"model": nn.Conv2d(3, 3, 1)}, ValueError, "model"),
    ("units result", "units", "none", {}, TypeError, "result must be a MiningResult"),
    ("units activation", "units", "result", {}, ValueError, "rank_by='relevance'"),
    ("units unlabelled", "units", "unlabelled", {}, ValueError, "rank_by='relevance'"),
    ("units class", "units", "relevance", {"cls": 10}, ValueError, "cls"),
    ("units class type", "units", "relevance", {"cls": "cat"}, TypeError, "cls"),
    ("units n", "units", "relevance", {"n": 0}, ValueError, "n must be"),
    ("units within", "units", "relevance", {"within_class": True}, ValueError, "by_class=True"),
    ("units within type", "units", "relevance", {"within_class": "yes"}, TypeError, "within_class"),
    ("units data", "units", "relevance", {"data": torch.zeros(200, 3, 32, 32)}, ValueError, "data"),
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
        "rows": lambda **kw: exemplar_rows(chosen, kw.pop("data", data), layer, kw.pop("channel", 1), **kw),
        "units": lambda **kw: class_unit_rows(chosen, kw.pop("data", data), layer, kw.pop("cls", 1), **kw),
    }
    with pytest.raises(error, match=match) as caught:
        calls[figure](**change)
    assert "\n" not in str(caught.value).strip(), str(caught.value)


@pytest.fixture(scope="module")
def good_rows(model: nn.Module, data: Labelled, result: MiningResult) -> list[ExemplarRow]:
    """Two rows with projections, as computed: each drawing misuse spoils one thing of them."""
    rows = exemplar_rows(result, data, "features.9", 1, model=model)
    assert len(rows) == 2 and rows[1].projections is not None
    plot_exemplars(rows, use_pyplot=False)  # drawn as computed: only the spoiled thing is refused
    plot_class_units(rows, use_pyplot=False)
    return rows


def _other_rows(rows: list[ExemplarRow], **change: Any) -> list[ExemplarRow]:
    return [rows[0], dataclasses.replace(rows[1], **change)]


#: Bad arguments of the two drawing functions: (what, the call's rows and keywords from the good rows, error, match).
DRAW_MISUSE: list[tuple[str, Callable[[list[ExemplarRow], MiningResult], tuple[Any, dict[str, Any]]], type, str]] = [
    ("a result", lambda rows, result: (result, {}), TypeError, "compute them with"),
    ("a dict", lambda rows, result: ({"rows": rows}, {}), TypeError, "rows must be a list of ExemplarRows"),
    ("empty", lambda rows, result: ([], {}), ValueError, "rows is empty"),
    ("not a row", lambda rows, result: ([rows[0], "top"], {}), TypeError, "rows\\[1\\] must be an ExemplarRow"),
    ("patches", lambda rows, result: (_other_rows(rows, patches=rows[1].patches.images), {}), TypeError,
     "rows\\[1\\].patches must be Crops"),
    ("patch shape", lambda rows, result: (_other_rows(rows, patches=Crops(rows[1].patches.images[0],
                                                                          rows[1].patches.mask)), {}),
     ValueError, "rows\\[1\\].patches must hold"),
    ("projection shape", lambda rows, result: (_other_rows(rows, projections=Crops(
        rows[1].projections.images[:3], rows[1].projections.mask[:3])), {}), ValueError,  # type: ignore[union-attr]
     "rows\\[1\\].projections must match"),
    ("mixed projections", lambda rows, result: (_other_rows(rows, projections=None), {}), ValueError,
     "rows\\[1\\] has no projections"),
    ("title type", lambda rows, result: (rows, {"title": 3}), TypeError, "title must be a str"),
    ("row title type", lambda rows, result: (_other_rows(rows, title=None), {}), TypeError, "rows\\[1\\].title"),
    ("method", lambda rows, result: (rows, {"method": "glow"}), ValueError, "method must be"),
    ("outlier_perc", lambda rows, result: (rows, {"outlier_perc": 100}), ValueError, "outlier_perc"),
    ("cell_inches", lambda rows, result: (rows, {"cell_inches": 0}), ValueError, "cell_inches"),
    ("denormalize", lambda rows, result: (rows, {"denormalize": "imagenet"}), TypeError, "denormalize"),
    ("use_pyplot", lambda rows, result: (rows, {"use_pyplot": "no"}), TypeError, "use_pyplot"),
]  # fmt: skip


@pytest.mark.parametrize("figure", [plot_exemplars, plot_class_units])
@pytest.mark.parametrize(("what", "call", "error", "match"), DRAW_MISUSE, ids=[m[0] for m in DRAW_MISUSE])
def test_drawing_misuse_is_refused_in_one_line_before_drawing(
    good_rows: list[ExemplarRow], result: MiningResult, monkeypatch: pytest.MonkeyPatch, figure: Any, what: str,
    call: Any, error: type, match: str,
) -> None:  # fmt: skip
    rows_arg, keywords = call(good_rows, result)

    def no_figure(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("a figure was made before the bad argument was refused")

    monkeypatch.setattr(exemplar_figures, "new_figure", no_figure)
    with pytest.raises(error, match=match) as caught:
        figure(rows_arg, **keywords)
    assert "\n" not in str(caught.value).strip(), str(caught.value)
    maker = "exemplar_rows" if figure is plot_exemplars else "class_unit_rows"
    if what in ("a result", "empty"):
        assert maker in str(caught.value)  # the message says where rows come from
