"""The offline explorer: one folder that a browser opens from disk, with no server and no network.

:func:`write_explorer` writes ``index.html``, the page's script and style (plain HTML, CSS and
JavaScript shipped in ``captum_deconvviz/explorer_assets``: no framework, no build step, no
CDN), a few sheet images per layer and the lecture's figures. The page reads its data from
JSON embedded in ``index.html`` (numbers and strings only; :mod:`._explorer_data`), shows every
string from the model, the files or the classes as text, and loads a sheet only when a channel
in it is shown. A Content-Security-Policy lets only the bundled script run.

The layout of the page: layers and the lecture's views on the left; a layer is a sortable,
filterable table of its channels (max, mean, fraction active, dead, and selectivity, top class
and DeconvNet/Guided Backprop agreement where they were computed) with each channel's top-1
projection; a channel is its top-k patches beside their projections (and Guided Backprop's, and
the bottom-k and class histogram where mined); clicking a patch shows the whole image with the
receptive-field box and Captum's overlays. Every channel has a permanent address,
``index.html#features.7/43``.
"""

from __future__ import annotations

import datetime as dt
import html
import os
import re
import shlex
import sys
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from torch import Tensor, nn
from tqdm.auto import tqdm

from . import _datasource
from . import _explorer_data as data_json
from . import _report_sections as sections
from ._checks import check_bool, check_output_file, show
from ._explorer_pages import image_sheets, layer_page
from ._figures import check_image_function, check_type, display_image
from ._result_exemplars import explorer_identity
from .compare import ComparisonResult
from .diagnose import Diagnosis
from .mining_result import MiningResult
from .viz import hierarchy_channels

__all__ = ["ASSETS", "write_explorer"]

#: The files of the page copied into every explorer (from ``captum_deconvviz/explorer_assets``).
ASSETS = ("explorer.js", "explorer.css")
_SLOTS = re.compile(r"<!--(DATA|VIEWS|TITLE)-->")


def _asset(name: str) -> str:
    return resources.files("captum_deconvviz").joinpath("explorer_assets").joinpath(name).read_text(encoding="utf-8")


def _check_arguments(
    out: Any, model: Any, data: Any, result: Any, title: Any, denormalize: Any, first_layer: Any, image_labels: Any,
    command: Any, model_name: Any, data_name: Any, diagnosis: Any, comparison: Any, guided: Any, progress: Any,
    lossless: Any = True,
) -> Path:  # fmt: skip
    """The folder to write, once every argument of :func:`write_explorer` is checked (before any file is written)."""
    check_type(result, "result", MiningResult, "from mine_topk or MiningResult.load")
    if not isinstance(out, (str, os.PathLike)):
        raise TypeError(f"out must be a folder path, got {type(out).__name__}")
    if not str(os.fspath(out)).strip():  # Path("") is ".": the files would land in the current folder
        raise ValueError(f"out is empty ({os.fspath(out)!r}): give a folder for the explorer (it is created)")
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"out={str(folder)!r} is a file; give a folder (it is created) for the explorer")
    check_output_file(folder / "index.html", "out")  # no file where a parent folder should be, and writable
    result.check_data(data)
    result.check_model(model)
    for argname, value in (("title", title), ("model_name", model_name), ("data_name", data_name)):
        if not isinstance(value, str):
            raise TypeError(f"{argname} must be a str, got {show(value)} ({type(value).__name__})")
    check_image_function(denormalize, "denormalize")
    if denormalize is not None:  # tried on one image now: a wrong one would fail after the folder is written
        display_image(_datasource.fetch(data, [0])[0], denormalize)
    if first_layer is not None and (not isinstance(first_layer, nn.Conv2d) or first_layer.in_channels not in (1, 3)):
        raise TypeError(f"first_layer must be a Conv2d with 1 or 3 input channels (the filters drawn as images) or "
                        f"None, got {show(first_layer)}")  # fmt: skip
    if first_layer is not None and not any(module is first_layer for module in model.modules()):
        raise ValueError(f"first_layer is not a module of model: {show(first_layer)} would draw another network's "
                         "filters; pass one of the model's own Conv2d layers, or None for its first")  # fmt: skip
    if image_labels is not None:
        total = _datasource.length(data)
        if isinstance(image_labels, (str, bytes)) or not isinstance(image_labels, Sequence):
            raise TypeError(f"image_labels must be a list of str, one per data image, got {show(image_labels)}")
        if len(image_labels) != total or not all(isinstance(label, str) for label in image_labels):
            raise ValueError(f"image_labels must hold one str per data image ({total}), got {len(image_labels)} "
                             f"items: {show(list(image_labels))}")  # fmt: skip
    if command is not None and (
        isinstance(command, (str, bytes)) or not isinstance(command, Sequence)
        or not all(isinstance(word, str) for word in command)
    ):  # fmt: skip
        raise TypeError(f"command must be the command line as a list of str (e.g. sys.argv) or None, got "
                        f"{show(command)}")  # fmt: skip
    for argname, value, expected in (("diagnosis", diagnosis, Diagnosis), ("comparison", comparison, ComparisonResult)):
        if value is not None and not isinstance(value, expected):
            raise TypeError(f"{argname} must be a {expected.__name__} or None, got {type(value).__name__}")
    check_bool(guided, "guided")
    check_bool(progress, "progress")
    check_bool(lossless, "lossless")
    return folder


def write_explorer(
    out: str | Path,
    model: nn.Module,
    data: Any,
    result: MiningResult,
    *,
    title: str = "DeconvNet explorer",
    denormalize: Callable[[Tensor], Tensor] | None = None,
    first_layer: nn.Module | None = None,
    image_labels: Sequence[str] | None = None,
    command: Sequence[str] | None = None,
    model_name: str = "",
    data_name: str = "",
    diagnosis: Diagnosis | None = None,
    comparison: ComparisonResult | None = None,
    guided: bool = True,
    progress: bool = True,
    lossless: bool = True,
) -> Path:
    """Write the explorer folder: ``index.html``, its script and style, and packed images.

    The folder opens from disk (``file://``) in any current browser, with no server and no
    network, and can be zipped or put on a static host as it is. Its path is recorded in
    ``result.meta["explorer"]``.

    Args:
        out: the folder (created; files of the same names are replaced).
        model: the mined model (for projections, filters and the receptive-field table).
        data: the mined data.
        result: the mining result.
        title: the page title.
        denormalize: maps data images to [0, 1] RGB for display.
        first_layer: the convolution whose filters to draw; default the model's first
            ``Conv2d`` with 1 or 3 input channels.
        image_labels: a label per data image (e.g. its file name), shown with each record.
        command: the command line that made the explorer (shown for reproducibility).
        model_name: the model's description in the header.
        data_name: the data's description in the header.
        diagnosis: a :class:`~captum_deconvviz.Diagnosis` to show (table and figure).
        comparison: a :class:`~captum_deconvviz.ComparisonResult` to show (table and figure).
        guided: also show each record's Guided Backprop projection beside the DeconvNet one
            (one more projection pass per layer), and their agreement where the package
            computes it.
        progress: show a progress bar.
        lossless: keep the patches, the top-k DeconvNet projections and the whole images
            lossless (WebP), as measured data; ``False`` stores their sheets as lossy WebP
            (quality 90) where the cells are at least 16 px a side (smaller cells lose
            too much colour, and are small files anyway): about half the folder for the
            demo, for sharing (figures in ``docs/cli.md``). The Guided Backprop column, the
            bottom-k and the overlays are lossy either way.

    Returns:
        The path of ``index.html``.

    Raises:
        TypeError: ``result`` is not a :class:`~captum_deconvviz.MiningResult`; ``out`` is not
            a path; ``title``, ``model_name`` or ``data_name`` is not a str; ``denormalize`` is
            not a function or returns no tensor; ``first_layer`` is not a ``Conv2d`` with 1 or
            3 input channels; ``image_labels`` or ``command`` is not a list of str;
            ``diagnosis`` or ``comparison`` has the wrong type; ``guided``, ``progress`` or
            ``lossless`` is not a bool.
        ValueError: ``out`` is empty, a file, under a file or not writable; ``model`` or
            ``data`` is not the one ``result`` was mined with (their fingerprints differ, or
            the data has another length or non-finite images); ``denormalize`` maps an image
            to the wrong shape; ``first_layer`` is not a module of ``model``;
            ``image_labels`` does not hold one str per data image. Each is raised before any
            file is written.

    Example:
        >>> from captum_deconvviz.zoo import load_default_model, default_sample, denormalize
        >>> model, data = load_default_model(), default_sample()
        >>> result = mine_topk(model, ["features.1", "features.9"], data)  # doctest: +SKIP
        >>> write_explorer("explorer", model, data, result, denormalize=denormalize)  # doctest: +SKIP
        PosixPath('explorer/index.html')
    """
    folder = _check_arguments(out, model, data, result, title, denormalize, first_layer, image_labels, command,
                              model_name, data_name, diagnosis, comparison, guided, progress, lossless)  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    for name in ASSETS:
        (folder / name).write_text(_asset(name), encoding="utf-8")
    stems = sections.unique_stems(result.layers)
    shown = hierarchy_channels(result)
    slots = data_json.ImageSlots()
    layers, hierarchy = [], {}
    limit, result.cache_limit = result.cache_limit, 0  # each crop is computed once, group by group
    # Counted in channels, not layers: a deep layer of a large model takes minutes of projections.
    passes = 2 if result.bottom_k > 0 else 1
    total = passes * sum(result.channels(layer) for layer in result.layers if result.fields.get(layer) is not None)
    try:
        with tqdm(total=total, disable=not progress, desc="explorer", unit="channel") as bar:
            for layer in result.layers:
                bar.set_postfix_str(layer, refresh=False)
                entry, kept = layer_page(folder, stems[layer], result, model, data, layer, denormalize, guided, slots,
                                         shown[layer], advance=bar.update, lossless=lossless)  # fmt: skip
                layers.append(entry)
                if kept is not None:
                    hierarchy[layer] = kept
    finally:
        result.cache_limit = limit
    views = [
        ("about", "About", sections.header(title, result, model_name or type(model).__name__, data_name, command)),
        ("filters", "First-layer filters", sections.filters_section(folder, model, first_layer)),
        ("hierarchy", "Hierarchy", sections.hierarchy_section(folder, result, data, hierarchy, denormalize)),
        ("fields", "Receptive fields", sections.receptive_field_section(model, result.input_shape)),
    ]
    if diagnosis is not None:
        views.append(("diagnostics", "Diagnostics", sections.diagnosis_section(folder, diagnosis)))
    if comparison is not None:
        views.append(("comparison", "Method comparison", sections.comparison_section(folder, comparison, denormalize)))
    payload = {
        "format": data_json.FORMAT,
        "title": title,
        "model": model_name or type(model).__name__,
        "data": data_name,
        "command": shlex.join(command if command is not None else sys.argv),
        "made": dt.datetime.now().isoformat(timespec="seconds"),
        "result": explorer_identity(result),  # what open_explorer checks the page against
        "k": result.k,
        "bottom_k": result.bottom_k,
        "num_images": result.num_images,
        "input": list(result.input_shape),
        "class_names": data_json.class_names(result),
        "guided": guided,
        "layers": layers,
        "images": image_sheets(folder, data, slots, denormalize, image_labels, lossless=lossless),
        "views": [{"id": key, "title": name} for key, name, _ in views],
    }
    fills = {
        "DATA": data_json.embed_json(payload),
        "TITLE": html.escape(title),
        # A view's figures load when it is first shown: the page's script moves data-src to src.
        "VIEWS": "".join(
            f'<section class="view" id="view-{key}" hidden>{body.replace("<img src=", "<img data-src=")}</section>'
            for key, _, body in views
        ),
    }
    index = folder / "index.html"
    # One pass: a title that itself reads "<!--VIEWS-->" is text, not a slot to fill.
    index.write_text(_SLOTS.sub(lambda m: fills[m.group(1)], _asset("index.html")), encoding="utf-8")
    result.meta["explorer"] = str(index.resolve())
    return index
