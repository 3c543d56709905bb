"""A static HTML report: ``index.html`` and PNGs in one folder, readable offline from disk.

:func:`write_report` coordinates: it hands each layer's crops (computed once, a chunk of
channels at a time, by :class:`~._layer_crops.LayerCrops`) to the section writers of
``_report_sections``, and the hierarchy's projections to its figure. Everything embedded
as text (layer names, file names, labels, the command line) is HTML-escaped; image file
names are made safe and unique.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor, nn
from tqdm.auto import tqdm

from . import _report_sections as sections
from ._layer_crops import LayerCrops
from .diagnose import Diagnosis
from .mining_result import Crops, MiningResult
from .viz import hierarchy_channels

__all__ = ["write_report"]


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
    diagnosis: Diagnosis | None = None,
    guided: bool = False,
    progress: bool = True,
) -> Path:
    """Write the report folder: ``index.html`` and its PNGs.

    For a page that is browsed rather than printed, see :func:`~captum_deconvviz.write_explorer`.
    Results mined with labels show each channel's class histogram and a statistics table
    sorted by class selectivity; results mined with ``bottom_k`` show each channel's bottom-k.

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
        diagnosis: a :class:`~captum_deconvviz.Diagnosis` to include (table and figure).
        guided: draw each record's Guided Backprop projection between its DeconvNet projection
            and its patch (one more projection pass per layer).
        progress: show a progress bar.

    Returns:
        The path of ``index.html``.

    Example:
        >>> from captum_deconvviz.zoo import load_default_model, default_sample, denormalize
        >>> model, data = load_default_model(), default_sample()
        >>> result = mine_topk(model, ["features.1", "features.9"], data)  # doctest: +SKIP
        >>> write_report("report", model, data, result, denormalize=denormalize)  # doctest: +SKIP
    """
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    shown = hierarchy_channels(result)
    hierarchy: dict[str, Crops] = {}
    galleries = []
    stems = sections.unique_stems(result.layers)
    limit, result.cache_limit = result.cache_limit, 0  # each crop is computed once, chunk by chunk
    try:
        for layer in tqdm(result.layers, disable=not progress, desc="report", unit="layer"):
            top = LayerCrops(result, model, data, layer, "top", keep=shown[layer])
            bottom = LayerCrops(result, model, data, layer, "bottom") if result.bottom_k > 0 else None
            galleries.append(
                sections.layer_section(folder, stems[layer], result, layer, top, denormalize, scale, image_labels,
                                       guided, bottom)
            )  # fmt: skip
            hierarchy[layer] = top.kept()  # whole receptive fields, as the hierarchy figure draws them
    finally:
        result.cache_limit = limit
    parts = [
        sections.header(title, result, model_name or type(model).__name__, data_name, command),
        sections.contents(result, diagnosis is not None),
        sections.filters_section(folder, model, first_layer),
        sections.receptive_field_section(model, result.input_shape),
        sections.hierarchy_section(folder, result, data, hierarchy, denormalize),
        *galleries,
    ]
    if diagnosis is not None:
        parts.append(sections.diagnosis_section(folder, diagnosis))
    index = folder / "index.html"
    index.write_text(sections.page(title, parts, extra_sections), encoding="utf-8")
    return index
