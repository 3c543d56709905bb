"""The exemplar side of :class:`~captum_deconvviz.MiningResult`: records of every kind, class statistics.

A mixin, so that ``mining_result.py`` stays about the top-k, crops and files: these methods
read the same per-layer states (``self._state``) and the result's ``meta``, where mining
records which exemplar statistics it kept (see :func:`~captum_deconvviz.mine_topk`).
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import Tensor, nn

from ._checks import check_choice, check_float, check_int
from ._exemplar_state import ExemplarState
from ._ranking import f32_means
from ._topk import TopKState
from .exemplars import ClassStats, class_stats, quantile_rows, ranking_rows

__all__ = ["ExemplarAccess", "Record", "explorer_identity"]

#: The element of an explorer's ``index.html`` that holds its data (see ``explorer.py``).
_EXPLORER_DATA = re.compile(r'<script type="application/json" id="explorer-data">(.*?)</script>', re.DOTALL)


def explorer_identity(result: Any) -> dict[str, Any]:
    """What identifies a mining result, as the explorer written for it records it (plain JSON values).

    The model's and the data's fingerprints, the layers, ``k``, ``unique``, the number of
    images and the exemplar options: :meth:`ExemplarAccess.open_explorer` opens a page only
    if it records the same, so a page another result overwrote is not shown as this one's.

    Example:
        >>> explorer_identity(result)["layers"]  # doctest: +SKIP
        ['features.1', 'features.9']
    """
    data = result.meta.get("data_fingerprint")
    identity = {
        "model": result.fingerprint,
        "data": data.get("digest") if isinstance(data, dict) else None,
        "layers": list(result.layers),
        "k": result.k,
        "unique": result.unique,
        "num_images": result.num_images,
        "exemplars": result.meta.get("exemplars"),
    }
    return dict(json.loads(json.dumps(identity, default=str)))  # as it reads back from the page


def _page_identity(page: Path) -> Any:
    """The result identity an explorer page records; None where it records none (an older page, or no explorer's)."""
    try:
        text = page.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"the explorer written for this result cannot be read: {page} ({err})") from None
    found = _EXPLORER_DATA.search(text)
    try:
        payload = json.loads(found.group(1)) if found is not None else None
    except ValueError:
        return None
    return payload.get("result") if isinstance(payload, dict) else None


class Record(NamedTuple):
    """One strong activation: image ``index`` of the data, unit ``(y, x)``, its ``value``."""

    index: int  # type: ignore[assignment]  # shadows tuple.index: a public field name since 0.1
    y: int
    x: int
    value: float


class ExemplarAccess:
    """Records of every kind and the class statistics of a mining result (mixed into ``MiningResult``)."""

    k: int
    unique: str
    num_images: int
    fingerprint: str
    meta: dict[str, Any]
    _class_stats: dict[str, ClassStats]

    if TYPE_CHECKING:

        def _state(self, layer: str | nn.Module) -> tuple[str, TopKState]: ...

        def _channel(self, state: TopKState, channel: int) -> int: ...

    def records(
        self, layer: str, channel: int, kind: str = "top", cls: int | None = None, q: float | None = None
    ) -> list[Record]:
        """The channel's records, best first (fewer than k if fewer images were mined).

        Args:
            layer: a mined layer.
            channel: its channel.
            kind: ``"top"``: the k strongest (ranked as mined: ``rank_by``);
                ``"bottom"``: the ``bottom_k`` images whose best value is lowest (mined
                with ``bottom_k``), lowest first; ``"quantile"``: the k images around
                quantile ``q`` of the images' best values (mined with ``quantiles=True``;
                see :func:`~captum_deconvviz.exemplars.quantile_rows`).
            cls: with ``kind="top"``, the top-k among the images of class ``cls`` only
                (mined with ``by_class=True``).
            q: the quantile in [0, 1], with ``kind="quantile"``.

        Returns:
            :class:`Record` s: image index, unit ``(y, x)`` and value.

        Raises:
            ValueError: the kind was not mined, or an argument is out of range.

        Example:
            >>> result.records("features.9", 4, kind="bottom")[0]  # doctest: +SKIP
            Record(index=17, y=2, x=6, value=-1.93)
        """
        _, state = self._state(layer)
        channel = self._channel(state, channel)
        plane, width = state.height * state.width, state.width
        kind = check_choice(kind, "kind", ("top", "bottom", "quantile"))
        if cls is not None and kind != "top":
            raise ValueError(f"cls picks a class's own top-k: it needs kind='top', got kind={kind!r}")
        if q is not None and kind != "quantile":
            raise ValueError(f"q is the quantile of kind='quantile', got kind={kind!r}")
        if kind == "top" and cls is None:
            return [Record(*place) for place in ranking_rows(state.values[channel], state.key[channel], plane, width)]
        exemplars = self._exemplars(layer, state, kind, cls)
        if kind == "quantile":
            if q is None:
                raise ValueError("kind='quantile' needs q, the quantile in [0, 1]")
            quantile = check_float(q, "q", minimum=0.0, maximum=1.0)
            best, position = exemplars.tables["image_best"][:, channel], exemplars.tables["image_position"][:, channel]
            return [Record(*place) for place in quantile_rows(best, position, quantile, self.k, width)]
        if kind == "bottom":
            ranking = exemplars.rankings["bottom"]
            return [
                Record(*place) for place in ranking_rows(ranking.values[channel], ranking.key[channel], plane, width)
            ]
        assert cls is not None
        ranking = exemplars.rankings["by_class"]
        checked = check_int(cls, "cls", minimum=0, maximum=max(self._class_count(layer) - 1, 0))
        if checked is None or checked >= exemplars.classes:  # a named class that no mined image had
            return []
        values, key = ranking.values[channel, checked], ranking.key[channel, checked]
        return [Record(*place) for place in ranking_rows(values, key, plane, width)]

    def _class_count(self, layer: str) -> int:
        """The classes of ``layer``'s statistics: the labels mined, or the data's class names if more (0: none)."""
        _, state = self._state(layer)
        mined = state.exemplars.classes if state.exemplars is not None else 0
        return max(mined, len(self.class_names or []))

    def _exemplars(self, layer: str, state: TopKState, kind: str, cls: int | None) -> ExemplarState:
        """The layer's exemplar state, if it holds ``kind``; else a ValueError saying how to mine it."""
        exemplars = state.exemplars
        needs = {"bottom": ("bottom", "bottom_k=N"), "quantile": ("image_best", "quantiles=True")}
        name, option = needs.get(kind, ("by_class", "labels and by_class=True"))
        if exemplars is None or (name not in exemplars.rankings and name not in exemplars.tables):
            what = f"cls={cls}" if kind == "top" else f"kind={kind!r}"
            raise ValueError(f"{what}: layer {layer!r} was not mined with {option} (see mine_topk)")
        return exemplars

    # ---- exemplars in context -----------------------------------------------------------

    def open_explorer(self) -> Path:
        """Open the explorer written for this result in the web browser, and return its page.

        The explorer is written by :func:`~captum_deconvviz.write_explorer` (or ``deconvviz
        report``), which records its page in ``meta["explorer"]``, and in the page what
        identifies the result (:func:`explorer_identity`); in a notebook the result's display
        links it too.

        Returns:
            The path of its ``index.html``.

        Raises:
            ValueError: no explorer was written for this result, its page is gone, or the
                page there now was written for another result (another explorer was
                written into the same folder).

        Example:
            >>> write_explorer("explorer", model, data, result)  # doctest: +SKIP
            >>> result.open_explorer()  # doctest: +SKIP
        """
        import webbrowser

        explorer = self.meta.get("explorer")
        if not isinstance(explorer, str):
            raise ValueError(
                "no explorer was written for this result: write one with "
                "captum_deconvviz.write_explorer(out, model, data, result)"
            )
        page = Path(explorer)
        if not page.is_file():
            raise ValueError(f"the explorer written for this result is gone: {page} no longer exists")
        recorded = _page_identity(page)
        if recorded is not None and recorded != explorer_identity(self):
            mine = explorer_identity(self)
            differ = [key for key in mine if not isinstance(recorded, dict) or recorded.get(key) != mine[key]]
            raise ValueError(
                f"the explorer at {page} was written for another result (its {', '.join(differ)} differ): another "
                "explorer replaced this result's; write this one again with write_explorer(out, model, data, result)"
            )
        webbrowser.open(page.resolve().as_uri())
        return page

    @property
    def has_labels(self) -> bool:
        """Whether the result was mined with labels (:meth:`class_stats` is available)."""
        return bool(self._options().get("labels", False))

    @property
    def bottom_k(self) -> int:
        """The bottom-k kept per channel (0: none; see :meth:`records`)."""
        return int(self._options().get("bottom_k", 0))

    @property
    def rank_by(self) -> str:
        """What records are ranked by: ``"activation"`` or ``"relevance"``."""
        return str(self._options().get("rank_by", "activation"))

    @property
    def class_names(self) -> list[str] | None:
        """The data's class names (its ``classes``), where it had them and labels were mined."""
        names = self.meta.get("class_names")
        return list(names) if isinstance(names, list) else None

    def _options(self) -> dict[str, Any]:
        options = self.meta.get("exemplars")
        return options if isinstance(options, dict) else {}

    def class_stats(self, layer: str) -> ClassStats:
        """Per-channel class histogram, class means, selectivity index and top class.

        Args:
            layer: a layer mined with ``labels``.

        Returns:
            :class:`~captum_deconvviz.exemplars.ClassStats`.

        Raises:
            ValueError: the result was mined without labels.

        Example:
            >>> stats = result.class_stats("features.9")  # doctest: +SKIP
            >>> stats.selectivity.nanmean(), stats.name(int(stats.top_class[0]))
        """
        name, state = self._state(layer)
        if state.exemplars is None or "class_top" not in state.exemplars.rankings:
            raise ValueError(
                f"layer {name!r} was mined without labels: pass labels=True (or a LongTensor) to mine_topk"
            )
        if name not in self._class_stats:  # exact means are Python integer arithmetic: once per layer
            self._class_stats[name] = class_stats(state.exemplars, self.class_names)
        cached = self._class_stats[name]
        return dataclasses.replace(
            cached, **{f.name: getattr(cached, f.name).clone() for f in dataclasses.fields(cached)
                       if isinstance(getattr(cached, f.name), Tensor)}
        )  # fmt: skip  # the caller's own tensors

    def class_units(self, layer: str, cls: int, n: int = 9) -> tuple[Tensor, Tensor]:
        """The ``n`` channels of ``layer`` with the largest mean relevance for class ``cls``.

        A channel's relevance for an image is its activation times the gradient of the
        target output, summed over its positions; the mean runs over the images of class
        ``cls``. Mined with ``rank_by="relevance"``, ``labels`` and ``target="label"``, that
        is each image's relevance for its own class: which units matter for class ``cls``
        (the question Concept Relevance Propagation answers). Draw their top-k with
        :meth:`records` or :func:`~captum_deconvviz.plot_topk`.

        Args:
            layer: a layer mined with ``rank_by="relevance"`` and labels.
            cls: the class.
            n: how many channels.

        Returns:
            ``(channels [n], mean relevance [n])``, largest first (ties: the lower channel).

        Example:
            >>> channels, relevance = result.class_units("features.9", cls=3)  # doctest: +SKIP
        """
        name, state = self._state(layer)
        exemplars = state.exemplars
        if exemplars is None or "relevance_sum" not in exemplars.tables:
            raise ValueError(
                f"layer {name!r} was not mined with rank_by='relevance' and labels: class_units needs both"
            )
        checked = check_int(cls, "cls", minimum=0, maximum=max(exemplars.classes, 1) - 1)
        count = check_int(n, "n", minimum=1, maximum=exemplars.channels)
        assert checked is not None and count is not None
        means = f32_means(exemplars.tables["relevance_sum"][:, checked], exemplars.tables["class_count"][:, checked])
        if bool(torch.isnan(means).all()):
            raise ValueError(f"cls={checked}: no mined image has this label")
        order = torch.argsort(torch.nan_to_num(means, nan=float("-inf")), descending=True, stable=True)[:count]
        return order, means[order]
