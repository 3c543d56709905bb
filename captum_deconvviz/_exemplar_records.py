"""Exemplar rows: what :func:`~captum_deconvviz.plot_exemplars` and ``plot_class_units`` draw.

Figures compute nothing with a model (docs/architecture.md, "Figures"), so the rows of
the two exemplar figures are computed here, a layer below them, as
:func:`~captum_deconvviz.compare_methods` computes what
:func:`~captum_deconvviz.plot_comparison` draws:

* :func:`exemplar_rows`: one channel's views (top-k, bottom-k, the images around
  quantiles, a class's own top-k), each with its records, their receptive-field patches
  and (with ``model``) their DeconvNet projections;
* :func:`class_unit_rows`: the channels of largest mean relevance for a class
  (:meth:`~captum_deconvviz.MiningResult.class_units`), each with its top-k.

Each row is an :class:`ExemplarRow`: tensors and numbers only, so the figure that draws
it runs nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import Tensor, nn

from ._checks import check_bool, check_float, check_int, show
from .mining_result import Crops, MiningResult, Record

__all__ = ["ExemplarRow", "class_unit_rows", "exemplar_rows"]

_RESULT_ORIGIN = "from mine_topk or MiningResult.load"


@dataclass(frozen=True)
class ExemplarRow:
    """One row of an exemplar figure: one view of one channel, its records and their crops.

    Made by :func:`exemplar_rows` and :func:`class_unit_rows`, drawn by
    :func:`~captum_deconvviz.plot_exemplars` and
    :func:`~captum_deconvviz.plot_class_units`. A row holds tensors and text only: the
    figure draws them as they are.

    Attributes:
        layer: the mined layer.
        channel: the channel.
        kind: which records, as in :meth:`~captum_deconvviz.MiningResult.records`:
            ``"top"``, ``"bottom"`` (lowest first) or ``"quantile"``.
        title: the row's title line: its view and the range of its records' values, or
            (:func:`class_unit_rows`) the channel and its mean relevance.
        records: the row's :class:`~captum_deconvviz.Record` s, in the order drawn.
        patches: the records' receptive-field patches, :class:`~captum_deconvviz.Crops`
            ``[k, C, h, w]`` (padded with an all-False mask where there are fewer records).
        projections: their DeconvNet projections, ``Crops`` like ``patches``; None when
            the rows were computed without ``model``.
        cls: with ``kind="top"``, the class whose own top-k these are; None: over all images.
        q: with ``kind="quantile"``, the quantile.
        relevance: :func:`class_unit_rows`: the channel's mean relevance for the class;
            None otherwise.
        figure_title: the title of a figure of these rows: the channel with its class
            selectivity and top class (where mined with labels), or the layer and class of
            :func:`class_unit_rows`; ``""``: none (the figure names the layer and channel).

    Example:
        >>> rows = exemplar_rows(result, data, "features.9", 12, model=model)  # doctest: +SKIP
        >>> rows[0].kind, rows[0].title, rows[0].patches.images.shape  # doctest: +SKIP
        ('top', 'top 9 (5.12 to 3.9)', torch.Size([9, 3, 35, 35]))
    """

    layer: str
    channel: int
    kind: str
    title: str
    records: list[Record]
    patches: Crops
    projections: Crops | None = None
    cls: int | None = None
    q: float | None = None
    relevance: float | None = None
    figure_title: str = ""


def _check_result(result: Any) -> MiningResult:
    if not isinstance(result, MiningResult):
        raise TypeError(f"result must be a MiningResult ({_RESULT_ORIGIN}), got {type(result).__name__}")
    return result


def _mined_option(result: MiningResult, option: str) -> Any:
    """A mining option of the exemplar statistics as ``result.meta`` records it (None if not mined)."""
    options = result.meta.get("exemplars")
    return options.get(option) if isinstance(options, dict) else None


def _class_name(result: MiningResult, cls: int) -> str:
    names = result.class_names
    return names[cls] if names is not None and 0 <= cls < len(names) else str(cls)


def _range(records: list[Record]) -> str:
    return f"{records[0].value:.3g} to {records[-1].value:.3g}" if records else "no records"


def _views(
    result: MiningResult,
    layer: str,
    kinds: str | Sequence[str] | None,
    quantiles: Sequence[float],
    classes: Sequence[int],
) -> list[tuple[str, int | None, float | None]]:
    """The rows of :func:`exemplar_rows` as ``(kind, cls, q)``, each checked against what was mined."""
    if kinds is None:
        kinds = ("top", "bottom") if result.bottom_k else ("top",)
    if not isinstance(kinds, (str, Sequence)):
        raise TypeError(f"kinds must be 'top', 'bottom' or a sequence of them, got {show(kinds)}")
    kind_list = [kinds] if isinstance(kinds, str) else list(kinds)
    views: list[tuple[str, int | None, float | None]] = []
    for i, kind in enumerate(kind_list):
        if kind not in ("top", "bottom"):
            raise ValueError(f"kinds[{i}] must be 'top' or 'bottom' (quantiles and classes have their own "
                             f"arguments); got {show(kind)}")  # fmt: skip
        if kind == "bottom" and not result.bottom_k:
            raise ValueError("kinds has 'bottom', but the result was mined with bottom_k=0: pass bottom_k=9 to "
                             "mine_topk")  # fmt: skip
        views.append((kind, None, None))
    for argname, values in (("quantiles", quantiles), ("classes", classes)):
        if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, np.ndarray, Tensor)):
            raise TypeError(f"{argname} must be a sequence (a tuple or list), got {show(values)}")
    if len(quantiles) and not _mined_option(result, "quantiles"):
        raise ValueError("quantiles needs a result mined with quantiles=True (see mine_topk)")
    for i, q in enumerate(quantiles):
        views.append(("quantile", None, check_float(q, f"quantiles[{i}]", minimum=0.0, maximum=1.0)))
    if len(classes) and not _mined_option(result, "by_class"):
        raise ValueError("classes needs a result mined with labels=True and by_class=True (see mine_topk)")
    count = result._class_count(layer) if len(classes) else 0
    for i, cls in enumerate(classes):
        checked = check_int(cls, f"classes[{i}]", minimum=0, maximum=max(count - 1, 0))
        views.append(("top", checked, None))
    if not views:
        raise ValueError("nothing to show: kinds, quantiles and classes are all empty")
    return views


def exemplar_rows(
    result: MiningResult,
    data: Any,
    layer: str,
    channel: int,
    model: nn.Module | None = None,
    kinds: str | Sequence[str] | None = None,
    quantiles: Sequence[float] = (),
    classes: Sequence[int] = (),
) -> list[ExemplarRow]:
    """One channel's exemplars, one row per view: top-k, bottom-k, quantiles, a class's own top-k.

    Borowski et al. (ICLR 2021) found that people predict a unit's behaviour better from
    its strongest *and* weakest natural exemplars than from the strongest alone. Each row
    holds one view's records (``result.records(layer, channel, kind=, cls=, q=)``), their
    receptive-field patches and, with ``model``, their DeconvNet projections (both cached
    by the result), and is titled with its view and the range of its records' values.
    Draw the rows with :func:`~captum_deconvviz.plot_exemplars`.

    Args:
        result: a :class:`~captum_deconvviz.MiningResult`.
        data: the data that was mined.
        layer: a mined layer.
        channel: the channel.
        model: the mined model: with it, each row gets the DeconvNet projections of its
            records (``result.projections(model, data, layer, channel, kind=...)``);
            without it, ``projections`` is None.
        kinds: ``"top"`` and/or ``"bottom"`` rows (bottom-k needs ``mine_topk(...,
            bottom_k=N)``; its records are lowest first). Default: top, and bottom where
            mined.
        quantiles: a row of the ``k`` images around each quantile of the images' best
            values (needs ``mine_topk(..., quantiles=True)``), e.g. ``(0.5,)``.
        classes: a row of each class's own top-k (needs ``mine_topk(..., labels=True,
            by_class=True)``).

    Returns:
        :class:`ExemplarRow` s in the order top, bottom, quantiles, classes; each row's
        ``figure_title`` names the layer and channel, with the channel's class
        selectivity index and top class when the result has labels.

    Raises:
        ValueError: a view that the result was not mined for (the message says which
            ``mine_topk`` argument to pass), a quantile outside [0, 1], a class or
            channel out of range, no view at all, or ``data``/``model`` that were not
            the mined ones.
        TypeError: ``result`` is not a ``MiningResult``, or an argument of the wrong type.

    Example:
        >>> from captum_deconvviz import exemplar_rows, mine_topk, plot_exemplars
        >>> from captum_deconvviz.zoo import default_sample, denormalize, load_default_model
        >>> model, data = load_default_model(), default_sample()
        >>> result = mine_topk(model, "features.9", data, labels=True, bottom_k=9, quantiles=True,
        ...                    by_class=True, progress=False)  # doctest: +SKIP
        >>> rows = exemplar_rows(result, data, "features.9", 12, model=model, quantiles=(0.5,),
        ...                      classes=(3,))  # doctest: +SKIP
        >>> [row.kind for row in rows]  # doctest: +SKIP
        ['top', 'bottom', 'quantile', 'top']
        >>> fig, axes = plot_exemplars(rows, denormalize=denormalize, use_pyplot=False)  # doctest: +SKIP
    """
    result = _check_result(result)
    if isinstance(channel, Sequence) or (isinstance(channel, Tensor) and channel.dim() > 0):
        raise TypeError(f"channel must be one channel index (one set of rows per channel), got {show(channel)}")
    unit = check_int(channel, "channel", minimum=0)  # its maximum: result.records
    assert unit is not None  # None is refused: allow_none is off
    views = _views(result, layer, kinds, quantiles, classes)
    found = [result.records(layer, unit, kind=kind, cls=cls, q=q) for kind, cls, q in views]  # checks all first
    heading = f"{layer} #{unit}"
    if result.has_labels:
        stats = result.class_stats(layer)
        selectivity = float(stats.selectivity[unit])
        shown = "n/a" if math.isnan(selectivity) else f"{selectivity:.2f}"
        heading += f": class selectivity {shown}, top class {stats.name(int(stats.top_class[unit]))}"
    ranked = "" if result.rank_by == "activation" else " by relevance"
    rows = []
    for (kind, cls, q), records in zip(views, found, strict=True):
        if kind == "bottom":
            title = f"bottom {result.bottom_k}, lowest first ({_range(records)})"
        elif kind == "quantile":
            title = f"around quantile {q:g} ({_range(records)})"
        elif cls is not None:
            title = f"top {result.k}{ranked} among class {_class_name(result, cls)} ({_range(records)})"
        else:
            title = f"top {result.k}{ranked} ({_range(records)})"
        patches = result.patches(data, layer, unit, kind=kind, cls=cls, q=q)
        projections = None if model is None else result.projections(model, data, layer, unit, kind=kind, cls=cls,
                                                                     q=q)  # fmt: skip
        rows.append(ExemplarRow(layer, unit, kind, title, records, patches, projections, cls=cls, q=q,
                                figure_title=heading))  # fmt: skip
    return rows


def class_unit_rows(
    result: MiningResult,
    data: Any,
    layer: str,
    cls: int,
    model: nn.Module | None = None,
    n: int = 9,
    within_class: bool = False,
) -> list[ExemplarRow]:
    """Which units matter for class ``cls``: the ``n`` channels of largest mean relevance, with their top-k.

    The question users bring to Concept Relevance Propagation. The channels and their
    mean relevance come from :meth:`MiningResult.class_units` (a channel's relevance for
    an image is its activation times the gradient of the image's own class logit, summed
    over its positions; the mean runs over the images of class ``cls``). One row per
    channel, most relevant first, titled with its mean relevance, holding the channel's
    top-k records (ranked by relevance, as mined), their patches and, with ``model``,
    their DeconvNet projections. Draw the rows with
    :func:`~captum_deconvviz.plot_class_units`.

    Args:
        result: a result of ``mine_topk(..., labels=True, rank_by="relevance",
            target="label")``.
        data: the data that was mined.
        layer: a mined layer.
        cls: the class.
        model: the mined model: with it, each row gets the DeconvNet projections of its
            records; without it, ``projections`` is None.
        n: how many channels (rows).
        within_class: each channel's top-k among the images of class ``cls`` only (needs
            ``by_class=True``) instead of its top-k over all images.

    Returns:
        :class:`ExemplarRow` s, row ``i`` for the channel ``result.class_units(layer,
        cls, n)[0][i]`` with its mean relevance in ``relevance``.

    Raises:
        ValueError: the result was not mined with ``rank_by="relevance"`` and labels,
            ``within_class`` without ``by_class``, ``cls`` or ``n`` out of range, no mined
            image has label ``cls``, or ``data``/``model`` that were not the mined ones.
        TypeError: ``result`` is not a ``MiningResult``, or an argument of the wrong type.

    Example:
        >>> from captum_deconvviz import class_unit_rows, mine_topk, plot_class_units
        >>> from captum_deconvviz.zoo import default_sample, denormalize, load_default_model
        >>> model, data = load_default_model(), default_sample()
        >>> result = mine_topk(model, "features.9", data, labels=True, rank_by="relevance", target="label",
        ...                    progress=False)  # doctest: +SKIP
        >>> rows = class_unit_rows(result, data, "features.9", cls=3, model=model, n=6)  # doctest: +SKIP
        >>> [(row.channel, round(row.relevance, 3)) for row in rows]  # doctest: +SKIP
        >>> fig, axes = plot_class_units(rows, denormalize=denormalize, use_pyplot=False)  # doctest: +SKIP
    """
    result = _check_result(result)
    checked = check_int(cls, "cls", minimum=0)
    assert checked is not None  # None is refused: allow_none is off
    within = check_bool(within_class, "within_class")
    if result.rank_by != "relevance" or not result.has_labels:
        raise ValueError(f"class_unit_rows needs a result mined with labels=True, rank_by='relevance' and target="
                         f"'label'; this one has rank_by={result.rank_by!r}, labels={result.has_labels}")  # fmt: skip
    if within and not _mined_option(result, "by_class"):
        raise ValueError("within_class=True needs a result mined with by_class=True (see mine_topk)")
    channels, relevance = result.class_units(layer, checked, n)
    kind_cls = checked if within else None
    among = f", each its top {result.k} in class {_class_name(result, checked)}" if within else ""
    heading = (f"{layer}: the {len(channels)} channels of largest mean relevance for class "
               f"{_class_name(result, checked)}{among}")  # fmt: skip
    rows = []
    for channel, value in zip(channels.tolist(), relevance.tolist(), strict=True):
        records = result.records(layer, channel, cls=kind_cls)
        patches = result.patches(data, layer, channel, cls=kind_cls)
        projections = None if model is None else result.projections(model, data, layer, channel, cls=kind_cls)
        rows.append(ExemplarRow(layer, channel, "top", f"#{channel}: mean relevance {value:.3g}", records, patches,
                                projections, cls=kind_cls, relevance=value, figure_title=heading))  # fmt: skip
    return rows
