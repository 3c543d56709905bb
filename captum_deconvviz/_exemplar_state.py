"""What mining keeps of one layer beyond its top-k: class statistics and more exemplars.

Everything here is exact and mergeable like the top-k state (:mod:`._ranking`): folded in
any batching, over any shards, or resumed from a checkpoint, it equals one pass bit for bit.
All of it is computed in the one streaming pass mining already runs; nothing needs a second.

Per channel, from each image's *score* (its best value: the activation, or with
``rank_by="relevance"`` the relevance; see :func:`~captum_deconvviz.mine_topk`):

- ``bottom``: the ``bottom_k`` images whose best score is lowest;
- ``by_class``: each class's own top-k;
- ``image_best``/``image_position``: every image's best score and where (``quantiles``), the
  one statistic that is O(images x channels): a quantile of a stream cannot be exact in O(k).

And from each image's maximum *activation*, where images carry labels:

- ``class_top``: the ``class_top_n`` strongest images with their labels (the class histogram),
  kept as a set (their order is never read);
- ``class_sum``/``class_count``: the exact per-class sums of the per-image maximum (the class
  means and the selectivity index);
- ``relevance_sum``: with ``rank_by="relevance"``, the exact per-class sums of the channel's
  relevance (summed over positions): which channels matter for a class.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
from torch import Tensor

from ._ranking import LIMBS, NO_KEY, Ranking, add_f32, normalize_limbs

__all__ = ["ExemplarOptions", "ExemplarState", "state_bytes"]


@dataclass(frozen=True)
class ExemplarOptions:
    """What to keep beyond the top-k (checked by mining's config).

    Attributes:
        labels: images carry class labels (from the data, or given).
        class_top_n: images per channel behind the class histogram (labels only).
        bottom_k: lowest-scoring images per channel (0: none).
        by_class: keep each class's own top-k (labels only).
        k: records per channel and class (``by_class``).
        quantiles: keep every image's best score, for exemplars at quantiles.
        relevance: the scores are relevances (``rank_by="relevance"``).
        num_images: the dataset's length (rows of the per-image tables; bounds the keys).
    """

    labels: bool = False
    class_top_n: int = 0
    bottom_k: int = 0
    by_class: bool = False
    k: int = 0
    quantiles: bool = False
    relevance: bool = False
    num_images: int = 0

    @property
    def any(self) -> bool:
        return self.labels or self.bottom_k > 0 or self.quantiles

    def to_dict(self) -> dict[str, Any]:
        return dict(asdict(self))

    @classmethod
    def from_dict(cls, entry: Any) -> ExemplarOptions:
        """The options a saved exemplar state records; ValueError if they are malformed."""
        options = entry.get("options") if isinstance(entry, dict) else None
        names = {f.name: f.type for f in fields(cls)}
        if not isinstance(options, dict) or set(options) != set(names):
            raise ValueError(f"exemplars: options must be a dict of {sorted(names)}")
        for name, value in options.items():
            ok = isinstance(value, bool) if names[name] == "bool" else _is_count(value)
            if not ok:
                raise ValueError(f"exemplars: option {name} must be a {names[name]}, got {value!r:.80}")
        return cls(**options)


def state_bytes(options: ExemplarOptions, channels: int, classes: int) -> int:
    """Bytes of one layer's exemplar state with ``classes`` classes (a slot: 4 + 8 + 8 bytes)."""
    slot, total = 20, 0
    if options.labels:
        total += channels * options.class_top_n * slot + channels * classes * (LIMBS + 1) * 8
        total += channels * classes * LIMBS * 8 if options.relevance else 0
        total += channels * classes * options.k * slot if options.by_class else 0
    total += channels * options.bottom_k * slot
    total += channels * options.num_images * 12 if options.quantiles else 0
    return total


@dataclass
class ExemplarState:
    """The exemplar statistics of one layer's channels (see the module docstring)."""

    options: ExemplarOptions
    channels: int
    plane: int  # H * W of the layer's map: keys are index * plane + position
    classes: int = 0
    tables: dict[str, Tensor] = field(default_factory=dict)  # the sums, counts and per-image tables
    rankings: dict[str, Ranking] = field(default_factory=dict)  # class_top, bottom, by_class

    @classmethod
    def empty(cls, options: ExemplarOptions, channels: int, plane: int, device: torch.device) -> ExemplarState:
        state = cls(options, channels, plane)
        c = channels
        if options.labels:
            # Only the labels of these images are read (the histogram): the set, in any order.
            top = Ranking.empty((c,), options.class_top_n, True, device, state.key_bound(True))
            top.ordered = False
            state.rankings["class_top"] = top
        if options.bottom_k > 0:
            state.rankings["bottom"] = Ranking.empty((c,), options.bottom_k, False, device, state.key_bound())
        if options.quantiles:
            n = options.num_images
            state.tables["image_best"] = torch.full((n, c), float("nan"), device=device)
            state.tables["image_position"] = torch.full((n, c), NO_KEY, dtype=torch.long, device=device)
        state.grow(0, device)
        return state

    def grow(self, classes: int, device: torch.device) -> None:
        """Make room for labels below ``classes`` (class tables start empty and grow as labels come)."""
        if classes <= self.classes and self.tables.get("class_count") is not None:
            return
        if not self.options.labels:
            return
        old, c = self.classes, self.channels
        classes = max(classes, old)

        def padded(name: str, tail: tuple[int, ...], dtype: torch.dtype) -> None:
            grown = torch.zeros((c, classes, *tail), dtype=dtype, device=device)
            if name in self.tables:
                grown[:, :old] = self.tables[name]
            self.tables[name] = grown

        padded("class_sum", (LIMBS,), torch.long)
        padded("class_count", (), torch.long)
        if self.options.relevance:
            padded("relevance_sum", (LIMBS,), torch.long)
        if self.options.by_class:
            grown = Ranking.empty((c, classes), self.options.k, True, device, self.key_bound())
            if "by_class" in self.rankings:
                previous = self.rankings["by_class"]
                grown.values[:, :old], grown.key[:, :old], grown.label[:, :old] = (
                    previous.values, previous.key, previous.label,
                )  # fmt: skip
            self.rankings["by_class"] = grown
        self.classes = classes

    def key_bound(self, images_only: bool = False) -> int:
        """What every key of a ranking is below: image indices (the class histogram's) or units."""
        return self.options.num_images * (1 if images_only else self.plane)

    @property
    def needs_positions(self) -> bool:
        """Whether :meth:`fold` needs each image's best position (it keeps records of images)."""
        return self.options.bottom_k > 0 or self.options.by_class or self.options.quantiles

    # ---- updates --------------------------------------------------------------------

    def fold(
        self,
        act_best: Tensor,
        score_best: Tensor,
        score_position: Tensor | None,
        index: Tensor,
        labels: Tensor | None,
        channel_relevance: Tensor | None = None,
    ) -> None:
        """Take one batch in.

        Args:
            act_best: ``[B, C]`` each image's maximum activation (-inf: no finite one).
            score_best: ``[B, C]`` each image's best score (-inf: none).
            score_position: ``[B, C]`` the flat position of that score (first on ties); may be
                None when :attr:`needs_positions` is False.
            index: ``[B]`` dataset indices.
            labels: ``[B]`` class labels (-1: unknown), or None without labels.
            channel_relevance: ``[B, C]`` relevance summed over positions (relevance runs with labels).
        """
        device = act_best.device
        index = index.to(device)
        b, c = act_best.shape
        keys = (index.view(-1, 1) * self.plane + score_position).t() if score_position is not None else None  # [C, B]
        if self.options.bottom_k > 0:
            assert keys is not None and score_position is not None
            bottom = torch.where(score_best > float("-inf"), score_best, float("inf")).t()
            self.rankings["bottom"].offer(bottom, keys, _label_row(labels, b, device))
        if self.options.quantiles:
            assert score_position is not None
            self.tables["image_best"][index] = score_best.float()
            self.tables["image_position"][index] = score_position
        if labels is None:
            return
        self.grow(int(labels.max()) + 1 if b else 0, device)  # labels come from the host: no device sync
        labels = labels.to(device)
        self.rankings["class_top"].offer(act_best.t(), index.view(1, -1).expand(c, -1), labels.view(1, -1))
        known = labels >= 0
        valid = (act_best > float("-inf")) & known.view(-1, 1)  # [B, C]
        image, channel = valid.nonzero(as_tuple=True)
        rows = channel * self.classes + labels[image]
        add_f32(self.tables["class_sum"], rows, act_best[image, channel])
        self.tables["class_count"].view(-1).index_add_(0, rows, torch.ones_like(rows))
        if channel_relevance is not None and "relevance_sum" in self.tables:
            finite = torch.isfinite(channel_relevance) & known.view(-1, 1)
            image, channel = finite.nonzero(as_tuple=True)
            add_f32(
                self.tables["relevance_sum"], channel * self.classes + labels[image], channel_relevance[image, channel]
            )
        if self.options.by_class:
            assert keys is not None
            self._fold_by_class(score_best, keys, labels)

    def _fold_by_class(self, score_best: Tensor, keys: Tensor, labels: Tensor) -> None:
        """Each class present in the batch offers its images to its own rows, in one ranking step."""
        known = (labels >= 0).nonzero().flatten()
        if len(known) == 0:
            return
        labels, score_best, keys = labels[known], score_best[known], keys[:, known]
        present, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
        width = int(counts.max())
        order = torch.argsort(inverse, stable=True)  # images grouped by class, ascending index
        group = inverse[order]
        slot = torch.arange(len(labels), device=labels.device) - (torch.cumsum(counts, 0) - counts)[group]
        row = group * width + slot  # the image's row in the [P * width, C] buffers below
        c, p = score_best.shape[1], len(present)
        # [P * width, C] buffers filled by whole rows (one image each), then seen as [C, P, width].
        values = torch.full((p * width, c), float("-inf"), device=labels.device)
        key = torch.full((p * width, c), NO_KEY, dtype=torch.long, device=labels.device)
        values.index_copy_(0, row, score_best[order].float())
        key.index_copy_(0, row, keys.t()[order])
        ranking = self.rankings["by_class"]
        part = Ranking(
            ranking.values.index_select(1, present), ranking.key.index_select(1, present),
            ranking.label.index_select(1, present), descending=True, key_bound=ranking.key_bound,
        )  # fmt: skip
        part.offer(
            values.view(p, width, c).permute(2, 0, 1), key.view(p, width, c).permute(2, 0, 1), present.view(1, -1, 1)
        )
        for name in ("values", "key", "label"):
            getattr(ranking, name).index_copy_(1, present, getattr(part, name))

    def merge(self, other: ExemplarState) -> None:
        """Become the state of the union of both streams."""
        if (other.options, other.channels, other.plane) != (self.options, self.channels, self.plane):
            raise ValueError("cannot merge exemplar states mined with different options")
        device = next(iter(self.tables.values()), torch.zeros(0)).device
        self.grow(other.classes, device)
        other = other.to(device)
        other.grow(self.classes, device)
        for name, ranking in self.rankings.items():
            ranking.merge(other.rankings[name])
        for name in ("class_sum", "class_count", "relevance_sum"):
            if name in self.tables:
                self.tables[name] = self.tables[name] + other.tables[name]
        if "image_best" in self.tables:
            seen = ~torch.isnan(other.tables["image_best"])
            self.tables["image_best"] = torch.where(seen, other.tables["image_best"], self.tables["image_best"])
            self.tables["image_position"] = torch.where(
                seen, other.tables["image_position"], self.tables["image_position"]
            )

    # ---- storage ---------------------------------------------------------------------

    def to(self, device: torch.device | str) -> ExemplarState:
        return ExemplarState(
            self.options, self.channels, self.plane, self.classes,
            {name: t.to(device) for name, t in self.tables.items()},
            {name: r.to(device) for name, r in self.rankings.items()},
        )  # fmt: skip

    def tensors(self) -> dict[str, Tensor]:
        """Every tensor of the state by its saved name."""
        tensors = dict(self.tables)
        for name, ranking in self.rankings.items():
            tensors.update(ranking.tensors(name))
        return tensors

    def to_dict(self) -> dict[str, Any]:
        """Plain values and CPU tensors (limbs carried), as checkpoints and results store them."""
        for name in ("class_sum", "relevance_sum"):
            if name in self.tables:
                normalize_limbs(self.tables[name])
        tensors = {name: t.cpu() for name, t in self.tensors().items()}
        return {
            "options": self.options.to_dict(),
            "channels": self.channels,
            "plane": self.plane,
            "classes": self.classes,
            "tensors": tensors,
        }

    @classmethod
    def from_dict(
        cls, entry: dict[str, Any], options: ExemplarOptions, device: torch.device | str = "cpu"
    ) -> ExemplarState:
        """The state :meth:`to_dict` wrote; ValueError naming what is wrong if it is malformed."""
        _check_entry(entry, options)
        tensors = entry["tensors"]
        rankings = {
            name: Ranking.from_tensors(tensors, name, name != "bottom", 0)
            for name in ("class_top", "bottom", "by_class")
            if f"{name}_values" in tensors
        }
        tables = {name: tensors[name] for name in ("class_sum", "class_count", "relevance_sum", "image_best",
                                                   "image_position") if name in tensors}  # fmt: skip
        state = cls(options, entry["channels"], entry["plane"], entry["classes"], tables, rankings)
        for name, ranking in rankings.items():
            ranking.key_bound = state.key_bound(images_only=name == "class_top")
            ranking.ordered = name != "class_top"
        return state.to(device)


def _label_row(labels: Tensor | None, batch: int, device: torch.device) -> Tensor:
    if labels is None:
        return torch.full((1, batch), NO_KEY, dtype=torch.long, device=device)
    return labels.to(device).view(1, -1)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_entry(entry: Any, options: ExemplarOptions) -> None:
    """Shapes, dtypes and ranges of a saved exemplar state (a checksum guards the bytes)."""
    if not isinstance(entry, dict) or not {"channels", "plane", "classes", "tensors"} <= set(entry):
        raise ValueError("exemplars must hold channels, plane, classes and tensors")
    c, plane, k = entry["channels"], entry["plane"], entry["classes"]
    if not (_is_count(c) and _is_count(plane) and _is_count(k)) or plane == 0:
        raise ValueError(
            f"exemplars: channels, plane and classes must be counts, got {c!r:.20}, {plane!r:.20}, {k!r:.20}"
        )
    expected = ExemplarState.empty(options, c, plane, torch.device("meta"))
    expected.grow(k, torch.device("meta"))
    want = expected.tensors()
    tensors = entry["tensors"]
    if not isinstance(tensors, dict) or set(tensors) != set(want):
        got = sorted(tensors, key=repr) if isinstance(tensors, dict) else type(tensors).__name__
        raise ValueError(f"exemplars: tensors must be {sorted(want)}, got {got}")
    for name, template in want.items():
        tensor = tensors[name]
        if not isinstance(tensor, Tensor) or tensor.shape != template.shape or tensor.dtype != template.dtype:
            shape = tuple(tensor.shape) if isinstance(tensor, Tensor) else type(tensor).__name__
            raise ValueError(f"exemplars: {name} must be {template.dtype} {list(template.shape)}, got {shape}")
        if name.endswith("_label") and bool(((tensor < NO_KEY) | (tensor >= k)).any()):
            raise ValueError(f"exemplars: {name} holds labels outside [-1, {k})")
        if name == "class_count" and bool((tensor < 0).any()):
            raise ValueError("exemplars: class_count holds negative counts")
