"""The sections of the HTML report, one writer each; :func:`~captum_deconvviz.report.write_report` calls them.

Each writer takes what it shows (tensors, results, figures already computed) and returns
its HTML; the ones with figures save their PNGs into the report folder. Everything
embedded as text is HTML-escaped here.
"""

from __future__ import annotations

import datetime as dt
import html
import platform
import re
import shlex
import sys
from collections.abc import Callable, Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch import Tensor, nn

from ._figures import display_image, mosaic, normalize_projection
from ._layer_crops import LayerCrops
from ._tables import to_html
from .compare import ComparisonResult
from .diagnose import Diagnosis
from .mining_result import Crops, MiningResult
from .receptive_field import receptive_field_table
from .viz import plot_comparison, plot_diagnosis, plot_filters, plot_hierarchy

__all__ = [
    "comparison_section",
    "contents",
    "diagnosis_section",
    "filters_section",
    "header",
    "hierarchy_section",
    "layer_section",
    "page",
    "receptive_field_section",
    "safe_name",
    "unique_stems",
]

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.6em; } h2 { margin-top: 2em; border-bottom: 1px solid #ccc; } h3 { margin-top: 1.5em; }
table { border-collapse: collapse; font-size: 0.85em; } td, th { padding: 2px 8px; border-bottom: 1px solid #eee; }
th { text-align: left; background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.dead td { color: #b00; } .gallery { display: flex; flex-wrap: wrap; gap: 10px; }
figure { margin: 0; } figcaption { font-size: 0.75em; text-align: center; color: #555; }
figure.dead figcaption { color: #b00; } img.cell { image-rendering: pixelated; border: 1px solid #ddd; }
pre { background: #f6f6f6; padding: 0.6em; overflow-x: auto; } .note { color: #555; font-size: 0.9em; }
.hist { display: flex; align-items: flex-end; gap: 1px; height: 24px; margin-top: 2px; }
.hist .bar { flex: 1; height: 100%; display: flex; align-items: flex-end; background: #f2f2f2; }
.hist .bar i { display: block; width: 100%; background: #1a5fb4; }
table.sortable th { cursor: pointer; }
"""

# Marks on <body> how many images loaded and how many failed (a headless browser test reads it), and
# sorts a statistics table by the column whose header is clicked (numbers as numbers).
_LOAD_CHECK = """<script>
document.addEventListener("click", function (event) {
  var th = event.target.closest("table.sortable th");
  if (!th) { return; }
  var body = th.closest("table").tBodies[0], column = th.cellIndex, down = th.dataset.down !== "1";
  th.dataset.down = down ? "1" : "0";
  var key = function (row) { var t = row.cells[column].textContent, n = parseFloat(t); return isNaN(n) ? t : n; };
  Array.prototype.slice.call(body.rows).sort(function (a, b) {
    var x = key(a), y = key(b);
    return (x < y ? -1 : x > y ? 1 : 0) * (down ? -1 : 1);
  }).forEach(function (row) { body.appendChild(row); });
});
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute("data-images-loaded", String(ok));
  document.body.setAttribute("data-images-broken", String(imgs.length - ok));
});
</script>"""

_esc = html.escape


def safe_name(text: str) -> str:
    """``text`` as a file name or anchor: runs of other characters than ``A-Za-z0-9._-`` become ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "layer"


def unique_stems(layers: Sequence[str]) -> dict[str, str]:
    """A distinct file-name stem per layer (names that :func:`safe_name` makes equal get ``_`` appended)."""
    used: set[str] = set()
    stems = {}
    for layer in layers:
        stem = safe_name(layer)
        while stem in used:
            stem += "_"
        used.add(stem)
        stems[layer] = stem
    return stems


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in ("captum-deconvviz", "torch", "torchvision", "captum", "numpy", "matplotlib"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def _normalization_line(normalization: Any) -> str:
    """The header line for ``result.meta["normalization"]`` (written by ``deconvviz``); empty if unrecorded."""
    if not isinstance(normalization, dict):
        return ""
    numbers = {key: ", ".join(f"{float(v):g}" for v in normalization.get(key, ())) for key in ("mean", "std")}
    return (
        f"<p>Input normalization: <b>{_esc(str(normalization.get('preset', '?')))}</b> "
        f"(mean {numbers['mean']}; std {numbers['std']}; images scaled to [0, 1] first)</p>"
    )


def header(title: str, result: MiningResult, model_name: str, data_name: str, command: Sequence[str] | None) -> str:
    """The title, what was mined (model, data, k), the software versions and the command line."""
    command_text = shlex.join(command if command is not None else sys.argv)
    versions = " · ".join(f"{_esc(k)} {_esc(v)}" for k, v in _versions().items())
    shape = "x".join(map(str, result.input_shape))
    made = dt.datetime.now().isoformat(timespec="seconds")
    return (
        f"<h1>{_esc(title)}</h1>"
        f"<p>Model: <b>{_esc(model_name)}</b> · data: "
        f"<b>{_esc(data_name or str(result.num_images))}</b> ({result.num_images} images, input {_esc(shape)}) · "
        f"top-{result.k}, unique={_esc(result.unique)}</p>{_normalization_line(result.meta.get('normalization'))}"
        f"<p class='note'>Made {_esc(made)} with {versions}.</p><pre>{_esc(command_text)}</pre>"
    )


def contents(result: MiningResult, diagnosis: bool) -> str:
    """Links to every section."""
    toc = ["first-layer filters", "receptive fields", "hierarchy", *result.layers]
    if diagnosis:
        toc.append("diagnostics")
    return "<p>" + " · ".join(f'<a href="#{_esc(safe_name(t))}">{_esc(t)}</a>' for t in toc) + "</p>"


def filters_section(folder: Path, model: nn.Module, first_layer: nn.Module | None) -> str:
    """The first-layer filters (``filters.png``): ``first_layer``, or the first conv over 1 or 3 channels."""
    conv = first_layer or next(
        (m for m in model.modules() if isinstance(m, nn.Conv2d) and m.in_channels in (1, 3)), None
    )
    title = f'<h2 id="{safe_name("first-layer filters")}">First-layer filters</h2>'
    if conv is None:
        return title + "<p>No convolution over image channels was found.</p>"
    fig, _ = plot_filters(conv, sort_by_norm=True, use_pyplot=False, cell_inches=0.5)
    fig.savefig(folder / "filters.png", dpi=150)
    return (
        title + '<p class="note">Sorted by decreasing norm; each filter contrast-normalized around mid-grey.</p>'
        '<img src="filters.png" alt="first-layer filters">'
    )


def receptive_field_section(model: nn.Module, input_shape: tuple[int, ...]) -> str:
    """The receptive-field table of every conv and pool layer (or why it could not be computed)."""
    title = f'<h2 id="{safe_name("receptive fields")}">Receptive fields</h2>'
    try:
        return title + receptive_field_table(model, input_shape).to_html()
    except (ValueError, TypeError) as err:
        return title + f"<p>The receptive-field table could not be computed: {_esc(str(err))}</p>"


def hierarchy_section(
    folder: Path,
    result: MiningResult,
    data: Any,
    projections: dict[str, Crops],
    denormalize: Callable[[Tensor], Tensor] | None,
) -> str:
    """The hierarchy figure (``hierarchy.png``) from the projections of its channels."""
    fig, _ = plot_hierarchy(result, data, projections, denormalize=denormalize, use_pyplot=False)
    fig.savefig(folder / "hierarchy.png", dpi=150)
    return (
        f'<h2 id="{safe_name("hierarchy")}">Hierarchy</h2>'
        '<p class="note">For each layer, its strongest channels: the top-9 DeconvNet projections above the '
        'image patches under their receptive fields.</p><img src="hierarchy.png" alt="hierarchy">'
    )


def _channel_mosaics(
    result: MiningResult,
    layer: str,
    crops: LayerCrops,
    denormalize: Callable[[Tensor], Tensor] | None,
    guided: bool = False,
) -> Iterator[np.ndarray]:
    """Per channel: top-k projections (left), Guided Backprop's (middle, with ``guided``) and patches (right),
    one array each, made as they are saved: a deep ResNet layer's 512 float64 mosaics of
    receptive-field-sized crops took 18 GB at once. ``crops`` says which records (top or bottom)."""
    k = result.k if crops.kind == "top" else result.bottom_k
    for channel in range(result.channels(layer)):
        count = len(result.records(layer, channel, kind=crops.kind))
        names = ["zf", "gbp"] if guided else ["zf"]
        columns = [[normalize_projection(p) for p in crops(name, [channel]).images[0]] for name in names]
        patches = crops("patch", [channel])
        pairs = zip(patches.images[0], patches.mask[0], strict=True)
        columns.append([display_image(img, denormalize, m) for img, m in pairs])
        for shown in columns:
            for slot in range(count, k):  # missing records: light grey
                shown[slot] = np.full_like(columns[0][0], 0.9)
        panels = [mosaic(shown, k) for shown in columns]
        gap = np.ones((panels[0].shape[0], max(2, panels[0].shape[1] // 12), 3))
        yield np.concatenate([part for panel in panels for part in (panel, gap)][:-1], axis=1)


def _save_png(array: np.ndarray, path: Path, scale: int) -> None:
    pixels = (np.clip(array, 0, 1) * 255).astype(np.uint8)
    # Nearest-neighbour upscaling by a whole factor is each pixel repeated scale x scale times.
    pixels = pixels.repeat(scale, axis=0).repeat(scale, axis=1) if scale > 1 else pixels
    Image.fromarray(pixels).save(path)


def _stats_table(result: MiningResult, layer: str) -> str:
    stats = result.stats(layer)
    dead = [bool(d) for d in stats.dead]
    header = ["channel", "max", "mean", "fraction of images active", ""]
    rows = [
        [str(c), f"{float(stats.maximum[c]):.4g}", f"{float(stats.mean[c]):.4g}",
         f"{float(stats.fraction_active[c]):.3f}", "dead" if dead[c] else ""]
        for c in range(len(stats.maximum))
    ]  # fmt: skip
    order = list(range(len(rows)))
    if result.has_labels:  # most selective first; a click on a column header sorts by it
        classes = result.class_stats(layer)
        header += ["selectivity", "top class"]
        selectivity = classes.selectivity.tolist()
        for c, row in enumerate(rows):
            top = int(classes.top_class[c])
            row += [f"{selectivity[c]:.3f}", classes.name(top) if top >= 0 else ""]
        order.sort(key=lambda c: (np.isnan(selectivity[c]), -np.nan_to_num(selectivity[c]), c))
    table = to_html(
        header,
        [rows[c] for c in order],
        row_classes=["dead" if dead[c] else "" for c in order],
        column_classes=["num", "num", "num", "num", "", "num", ""][: len(header)],
    )
    return table.replace("<table>", '<table class="sortable">', 1)


def _histogram(result: MiningResult, layer: str, channel: int) -> str:
    """The classes of the channel's strongest images as small bars (HTML), for results mined with labels."""
    stats = result.class_stats(layer)
    counts = stats.histogram[channel].tolist()
    most = max([*counts, 1])
    bars = "".join(
        f'<div class="bar" title="{_esc(stats.name(i))}: {n}"><i style="height:{round(100 * n / most)}%"></i></div>'
        for i, n in enumerate(counts)
    )
    top = int(stats.top_class[channel])
    selectivity = float(stats.selectivity[channel])
    label = f"top class {stats.name(top)}" if top >= 0 else "no class"
    return f'<div class="hist">{bars}</div><figcaption>{_esc(label)}, selectivity {selectivity:.2f}</figcaption>'


def layer_section(
    folder: Path,
    stem: str,
    result: MiningResult,
    layer: str,
    crops: LayerCrops,
    denormalize: Callable[[Tensor], Tensor] | None,
    scale: int,
    image_labels: Sequence[str] | None,
    guided: bool = False,
    bottom: LayerCrops | None = None,
) -> str:
    """One layer: a gallery of every channel (``{stem}_cNNNN.png``) and the channel statistics.

    ``crops`` hands out the top-k records' patches and projections a chunk of channels at a
    time, in cells at most the image's size. With ``guided`` each mosaic has a middle panel
    (the records' Guided Backprop projections); with ``bottom`` (the bottom-k records' crops)
    each channel also has ``{stem}_cNNNN_bottom.png``; results mined with labels add each
    channel's class histogram.
    """
    stats = result.stats(layer)
    field = result.fields.get(layer)
    field_text = f"receptive field {field.size[0]}x{field.size[1]} px, stride {field.stride[0]}" if field else ""
    figures = []
    mosaics = _channel_mosaics(result, layer, crops, denormalize, guided)
    lows = _channel_mosaics(result, layer, bottom, denormalize) if bottom is not None else None
    for channel, image in enumerate(mosaics):
        name = f"{stem}_c{channel:04d}.png"
        _save_png(image, folder / name, scale)
        records = result.records(layer, channel)
        best = f"max {records[0].value:.3g}" if records else "no records"
        if image_labels is not None and records:
            best += " · " + ", ".join(str(image_labels[r.index]) for r in records[:3])
        is_dead = bool(stats.dead[channel])
        extra = ""
        if lows is not None:
            low_name = f"{stem}_c{channel:04d}_bottom.png"
            _save_png(next(lows), folder / low_name, scale)
            extra += f'<img class="cell" src="{_esc(low_name)}" alt="{_esc(layer)} channel {channel} bottom-k">'
        if result.has_labels:
            extra += _histogram(result, layer, channel)
        figures.append(
            f'<figure class="{"dead" if is_dead else ""}"><img class="cell" src="{_esc(name)}" '
            f'alt="{_esc(layer)} channel {channel}"><figcaption>#{channel} · {_esc(best)}'
            f"{' · dead' if is_dead else ''}</figcaption>{extra}</figure>"
        )
    panels = "its top projections (left)" + (", Guided Backprop's (middle)" if guided else "")
    low_text = f"; below, its bottom-{result.bottom_k} the same way" if bottom else ""
    hist_text = "; then the classes of its strongest images" if result.has_labels else ""
    return (
        f'<h2 id="{_esc(safe_name(layer))}">{_esc(layer)}</h2><p>{len(stats.maximum)} channels, '
        f"{_esc(field_text)}, <b>{int(stats.dead.sum())} dead</b> (never active on these images).</p>"
        f'<p class="note">Each channel: {panels} beside the patches under their '
        f'receptive fields (right), best first{low_text}{hist_text}.</p><div class="gallery">'
        + "".join(figures)
        + "</div>"
        f"<h3>{_esc(layer)}: channel statistics</h3>{_stats_table(result, layer)}"
    )


def diagnosis_section(folder: Path, diagnosis: Diagnosis) -> str:
    """The diagnosis table, its notes and its figure (``diagnosis.png``)."""
    fig, _ = plot_diagnosis(diagnosis, use_pyplot=False)
    fig.savefig(folder / "diagnosis.png", dpi=150)
    return (
        f'<h2 id="diagnostics">Diagnostics</h2><p class="note">Zeiler &amp; Fergus, Sec. 4.1: dead filters, '
        "filter RMS above 0.1, first-layer high-frequency content, aliasing of strided layers "
        "(definitions in the package's docs/diagnostics.md).</p>"
        f'{diagnosis.to_html()}<img src="diagnosis.png" alt="diagnostics">'
    )


def comparison_section(
    folder: Path, comparison: ComparisonResult, denormalize: Callable[[Tensor], Tensor] | None
) -> str:
    """The method comparison: its agreement table and its figure (``comparison.png``)."""
    fig, _ = plot_comparison(comparison, display=denormalize, use_pyplot=False)
    fig.savefig(folder / "comparison.png", dpi=120)
    rows = [
        [a, b, *(f"{float(np.nanmean(values[m].cpu().numpy())):.3f}" for m in ("spearman", "spearman_abs", "ssim"))]
        for (a, b), values in comparison.metrics.items()
    ]
    table = to_html(["method A", "method B", "Spearman", "Spearman abs", "SSIM abs"], rows,
                    column_classes=["", "", "num", "num", "num"])  # fmt: skip
    target = comparison.target if comparison.layer is None else f"layer {comparison.layer}"
    return (
        f'<h2 id="{safe_name("method comparison")}">Method comparison</h2><p class="note">The same '
        f"{len(comparison.inputs)} images attributed by each method (target: {_esc(str(target))}); agreement "
        "is the mean over the images of each pair's Spearman rank correlation and SSIM.</p>"
        f'{table}<img src="comparison.png" alt="method comparison">'
    )


def page(title: str, sections: Sequence[str], extra_sections: Sequence[tuple[str, str]]) -> str:
    """The whole HTML page: the sections, then ``extra_sections`` as ``(title, html)`` (already escaped)."""
    extra = [f'<h2 id="{_esc(safe_name(t))}">{_esc(t)}</h2>{body}' for t, body in extra_sections]
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>'
        f"<style>{_CSS}</style></head><body>{''.join([*sections, *extra])}{_LOAD_CHECK}</body></html>"
    )
