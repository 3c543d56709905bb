"""A static HTML report: ``index.html`` and PNGs in one folder, readable offline from disk.

Everything embedded as text (layer names, file names, labels, the command line) is
HTML-escaped; image file names are made safe and unique.
"""

from __future__ import annotations

import datetime as dt
import html
import platform
import re
import shlex
import sys
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch import Tensor, nn
from tqdm.auto import tqdm

from .mining_result import MiningResult
from .receptive_field import receptive_field_table
from .viz import _display, _mosaic, normalize_projection, plot_filters, plot_hierarchy

__all__ = ["write_report"]

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.6em; } h2 { margin-top: 2em; border-bottom: 1px solid #ccc; } h3 { margin-top: 1.5em; }
table { border-collapse: collapse; font-size: 0.85em; } td, th { padding: 2px 8px; border-bottom: 1px solid #eee; }
th { text-align: left; background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.dead td { color: #b00; } .gallery { display: flex; flex-wrap: wrap; gap: 10px; }
figure { margin: 0; } figcaption { font-size: 0.75em; text-align: center; color: #555; }
figure.dead figcaption { color: #b00; } img.cell { image-rendering: pixelated; border: 1px solid #ddd; }
pre { background: #f6f6f6; padding: 0.6em; overflow-x: auto; } .note { color: #555; font-size: 0.9em; }
"""

# Marks on <body> how many images loaded and how many failed; a headless browser test reads it.
_LOAD_CHECK = """<script>
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute("data-images-loaded", String(ok));
  document.body.setAttribute("data-images-broken", String(imgs.length - ok));
});
</script>"""


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "layer"


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in ("captum-deconvviz", "torch", "torchvision", "captum", "numpy", "matplotlib"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def _save_png(array: np.ndarray, path: Path, scale: int) -> None:
    image = Image.fromarray((np.clip(array, 0, 1) * 255).astype(np.uint8))
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    image.save(path)


def _normalization_line(normalization: Any) -> str:
    """The header line for ``result.meta["normalization"]`` (written by ``deconvviz``); empty if unrecorded."""
    if not isinstance(normalization, dict):
        return ""
    numbers = {key: ", ".join(f"{float(v):g}" for v in normalization.get(key, ())) for key in ("mean", "std")}
    return (
        f"<p>Input normalization: <b>{html.escape(str(normalization.get('preset', '?')))}</b> "
        f"(mean {numbers['mean']}; std {numbers['std']}; images scaled to [0, 1] first)</p>"
    )


def _channel_mosaics(
    result: MiningResult, data: Any, model: nn.Module, layer: str, denormalize: Callable[[Tensor], Tensor] | None
) -> list[np.ndarray]:
    """Per channel: top-k projections (left) and patches (right), one array each."""
    crops = result.patches(data, layer)
    projections = result.projections(model, data, layer).images
    mosaics = []
    for channel in range(result.channels(layer)):
        count = len(result.records(layer, channel))
        shown_p = [normalize_projection(p) for p in projections[channel]]
        shown_i = [
            _display(img, denormalize, m) for img, m in zip(crops.images[channel], crops.mask[channel], strict=True)
        ]
        for slot in range(count, result.k):  # missing records: light grey
            shown_p[slot] = np.full_like(shown_p[0], 0.9)
            shown_i[slot] = np.full_like(shown_p[0], 0.9)
        left, right = _mosaic(shown_p, result.k), _mosaic(shown_i, result.k)
        gap = np.ones((left.shape[0], max(2, left.shape[1] // 12), 3))
        mosaics.append(np.concatenate([left, gap, right], axis=1))
    return mosaics


def _stats_table(result: MiningResult, layer: str) -> str:
    stats = result.stats(layer)
    rows = []
    for c in range(len(stats.maximum)):
        dead = bool(stats.dead[c])
        rows.append(
            f'<tr class="{"dead" if dead else ""}"><td class="num">{c}</td>'
            f'<td class="num">{float(stats.maximum[c]):.4g}</td><td class="num">{float(stats.mean[c]):.4g}</td>'
            f'<td class="num">{float(stats.fraction_active[c]):.3f}</td><td>{"dead" if dead else ""}</td></tr>'
        )
    return (
        "<table><thead><tr><th>channel</th><th>max</th><th>mean</th><th>fraction of images active</th>"
        f"<th></th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def write_report(
    out: str | Path,
    model: nn.Module,
    data: Any,
    result: MiningResult,
    *,
    title: str = "DeconvNet report",
    denormalize: Callable[[Tensor], Tensor] | None = None,
    first_layer: nn.Module | None = None,
    image_labels: Sequence[str] | None = None,
    command: Sequence[str] | None = None,
    model_name: str = "",
    data_name: str = "",
    scale: int = 3,
    extra_sections: Sequence[tuple[str, str]] = (),
    diagnosis: Any = None,
    progress: bool = True,
) -> Path:
    """Write the report folder: ``index.html`` and its PNGs.

    Args:
        out: the folder (created; existing files of the same names are replaced).
        model: the mined model (for projections, filters and the receptive-field table).
        data: the mined data.
        result: the mining result.
        title: the page title.
        denormalize: maps data images to [0, 1] RGB for display.
        first_layer: the convolution whose filters to draw; default the model's first
            ``Conv2d`` with 1 or 3 input channels.
        image_labels: a label per data image (e.g. its file name or class), shown for
            each channel's best three records.
        command: the command line that made the report (shown for reproducibility).
        model_name, data_name: descriptions shown in the header.
        scale: pixel upscaling of the gallery PNGs (nearest neighbour).
        extra_sections: ``(title, html)`` sections appended as they are (already escaped).
        diagnosis: a :class:`~captum_deconvviz.diagnose.Diagnosis` to include (table and figure).
        progress: show a progress bar.

    Returns:
        The path of ``index.html``.
    """
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    esc = html.escape
    parts = [f"<h1>{esc(title)}</h1>"]
    command_text = shlex.join(command if command is not None else sys.argv)
    versions = " · ".join(f"{esc(k)} {esc(v)}" for k, v in _versions().items())
    shape = "x".join(map(str, result.input_shape))
    made = dt.datetime.now().isoformat(timespec="seconds")
    parts.append(
        f"<p>Model: <b>{esc(model_name or type(model).__name__)}</b> · data: "
        f"<b>{esc(data_name or str(result.num_images))}</b> ({result.num_images} images, input {esc(shape)}) · "
        f"top-{result.k}, unique={esc(result.unique)}</p>{_normalization_line(result.meta.get('normalization'))}"
        f"<p class='note'>Made {esc(made)} with {versions}.</p><pre>{esc(command_text)}</pre>"
    )
    toc = ["first-layer filters", "receptive fields", "hierarchy", *result.layers]
    if diagnosis is not None:
        toc.append("diagnostics")
    parts.append("<p>" + " · ".join(f'<a href="#{esc(_safe_name(t))}">{esc(t)}</a>' for t in toc) + "</p>")

    conv = first_layer or next(
        (m for m in model.modules() if isinstance(m, nn.Conv2d) and m.in_channels in (1, 3)), None
    )
    parts.append(f'<h2 id="{_safe_name("first-layer filters")}">First-layer filters</h2>')
    if conv is not None:
        fig, _ = plot_filters(conv, sort_by_norm=True, use_pyplot=False, cell_inches=0.5)
        fig.savefig(folder / "filters.png", dpi=150)
        parts.append(
            '<p class="note">Sorted by decreasing norm; each filter contrast-normalized around mid-grey.</p>'
            '<img src="filters.png" alt="first-layer filters">'
        )
    else:
        parts.append("<p>No convolution over image channels was found.</p>")

    parts.append(f'<h2 id="{_safe_name("receptive fields")}">Receptive fields</h2>')
    try:
        table = receptive_field_table(model, result.input_shape)
        parts.append(table._repr_html_())
    except (ValueError, TypeError) as err:
        parts.append(f"<p>The receptive-field table could not be computed: {esc(str(err))}</p>")

    parts.append(f'<h2 id="{_safe_name("hierarchy")}">Hierarchy</h2>')
    fig, _ = plot_hierarchy(result, data, model, denormalize=denormalize, use_pyplot=False)
    fig.savefig(folder / "hierarchy.png", dpi=150)
    parts.append(
        '<p class="note">For each layer, its strongest channels: the top-9 DeconvNet projections above the '
        'image patches under their receptive fields.</p><img src="hierarchy.png" alt="hierarchy">'
    )

    used: set[str] = set()
    for layer in tqdm(result.layers, disable=not progress, desc="report", unit="layer"):
        stem = _safe_name(layer)
        while stem in used:
            stem += "_"
        used.add(stem)
        stats = result.stats(layer)
        field = result.fields.get(layer)
        field_text = f"receptive field {field.size[0]}x{field.size[1]} px, stride {field.stride[0]}" if field else ""
        dead = int(stats.dead.sum())
        parts.append(
            f'<h2 id="{esc(_safe_name(layer))}">{esc(layer)}</h2><p>{len(stats.maximum)} channels, '
            f"{esc(field_text)}, <b>{dead} dead</b> (never active on these images).</p>"
        )
        figures = []
        for channel, mosaic in enumerate(_channel_mosaics(result, data, model, layer, denormalize)):
            name = f"{stem}_c{channel:04d}.png"
            _save_png(mosaic, folder / name, scale)
            records = result.records(layer, channel)
            best = f"max {records[0].value:.3g}" if records else "no records"
            if image_labels is not None and records:
                best += " · " + ", ".join(str(image_labels[r.index]) for r in records[:3])
            is_dead = bool(stats.dead[channel])
            figures.append(
                f'<figure class="{"dead" if is_dead else ""}"><img class="cell" src="{esc(name)}" '
                f'alt="{esc(layer)} channel {channel}"><figcaption>#{channel} · {esc(best)}'
                f"{' · dead' if is_dead else ''}</figcaption></figure>"
            )
        parts.append(
            '<p class="note">Each channel: its top projections (left) beside the patches under their '
            'receptive fields (right), best first.</p><div class="gallery">' + "".join(figures) + "</div>"
        )
        parts.append(f"<h3>{esc(layer)}: channel statistics</h3>{_stats_table(result, layer)}")
    if diagnosis is not None:
        fig, _ = diagnosis.plot(use_pyplot=False)
        fig.savefig(folder / "diagnosis.png", dpi=150)
        parts.append(
            f'<h2 id="diagnostics">Diagnostics</h2><p class="note">Zeiler &amp; Fergus, Sec. 4.1: dead filters, '
            "filter RMS above 0.1, first-layer high-frequency content, aliasing of strided layers "
            "(definitions in the package's docs/diagnostics.md).</p>"
            f'{diagnosis.to_html()}<img src="diagnosis.png" alt="diagnostics">'
        )
    for section_title, body in extra_sections:
        parts.append(f'<h2 id="{esc(_safe_name(section_title))}">{esc(section_title)}</h2>{body}')

    page = (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
        f"<style>{_CSS}</style></head><body>{''.join(parts)}{_LOAD_CHECK}</body></html>"
    )
    index = folder / "index.html"
    index.write_text(page, encoding="utf-8")
    return index
