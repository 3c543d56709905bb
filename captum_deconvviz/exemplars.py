"""Exemplars in context: class statistics, selectivity, bottom-k, quantiles, per-class top-k.

Read from a :class:`~captum_deconvviz.MiningResult` mined with ``labels``, ``bottom_k``,
``by_class`` or ``quantiles`` (see :func:`~captum_deconvviz.mine_topk`); the methods users
call are :meth:`MiningResult.class_stats`, :meth:`MiningResult.records` and
:meth:`MiningResult.class_units`. This module turns the mined state into those answers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from ._checks import check_float, check_int
from ._exemplar_state import ExemplarState
from ._guard import check_dense
from ._ranking import NO_KEY, f32_means

__all__ = ["ClassStats", "Place", "class_stats", "quantile_rows", "ranking_rows", "selectivity_index"]


class Place(NamedTuple):
    """Where a record is: image ``index``, unit ``(y, x)``, and its ``value`` (``Record``'s fields)."""

    index: int  # type: ignore[assignment]  # shadows tuple.index, as Record.index does
    y: int
    x: int
    value: float


@dataclass(frozen=True)
class ClassStats:
    """Per-channel class statistics of one mined layer.

    Attributes:
        histogram: ``[channels, classes]`` LongTensor: the labels of each channel's
            ``top_n`` strongest images (by their maximum activation), counted; images
            without a label (-1) are not counted.
        class_means: ``[channels, classes]`` float64: each class's mean of the per-image
            maximum activation, exact (NaN for a class without images).
        selectivity: ``[channels]`` float64: the class selectivity index of Morcos et al.
            (2018), ``(mu_max - mu_rest) / (mu_max + mu_rest)``, with ``mu_max`` the largest
            class mean and ``mu_rest`` the mean of the other class means. In [0, 1] for
            non-negative activations (after a ReLU); NaN where the denominator is 0 (a dead
            channel) or fewer than two classes have images.
        top_class: ``[channels]`` LongTensor: the class of the largest mean (the lowest
            on ties; -1 if no class has images).
        class_names: the data's class names, or None.
        top_n: images per channel behind ``histogram``.
        counts: ``[channels, classes]`` LongTensor: the images behind each class mean.
    """

    histogram: Tensor
    class_means: Tensor
    selectivity: Tensor
    top_class: Tensor
    class_names: list[str] | None
    top_n: int
    counts: Tensor

    def name(self, cls: int) -> str:
        """The name of class ``cls`` (its number where the data named none)."""
        checked = check_int(cls, "cls")
        assert checked is not None  # None is refused: allow_none is off
        cls = checked
        if self.class_names is not None and 0 <= cls < len(self.class_names):
            return self.class_names[cls]
        return str(cls)

    def __repr__(self) -> str:
        finite = self.selectivity[~torch.isnan(self.selectivity)]
        mean = f"{float(finite.mean()):.3f}" if len(finite) else "nan"
        return (
            f"ClassStats({self.histogram.shape[0]} channels, {self.histogram.shape[1]} classes, "
            f"top_n={self.top_n}, mean selectivity {mean})"
        )


def selectivity_index(class_means: Tensor) -> tuple[Tensor, Tensor]:
    """``(selectivity [C], top_class [C])`` from ``class_means [C, K]`` (NaN: a class without images).

    Example:
        >>> selectivity_index(torch.tensor([[3.0, 1.0, 1.0]], dtype=torch.float64))[0]
        tensor([0.5000], dtype=torch.float64)
    """
    _check_tensor(class_means, "class_means", "a float tensor [channels, classes]")
    if class_means.dim() != 2 or class_means.shape[1] == 0 or not class_means.is_floating_point():
        raise ValueError(f"class_means must be a float tensor [channels, classes] with at least one class, got "
                         f"{class_means.dtype} {list(class_means.shape)}")  # fmt: skip
    if bool(torch.isinf(class_means).any()):
        raise ValueError("class_means holds Inf: a class mean must be finite (NaN marks a class without images)")
    present = ~torch.isnan(class_means)
    means = torch.where(present, class_means, float("-inf"))
    mu_max = means.max(dim=1).values
    top = torch.where(present.any(dim=1), _first_argmax(means), NO_KEY)
    n = present.sum(dim=1)
    rest_sum = torch.where(present, class_means, 0.0).sum(dim=1) - torch.where(n > 0, mu_max, 0.0)
    mu_rest = rest_sum / (n - 1).clamp_min(1)
    denominator = mu_max + mu_rest
    selectivity = (mu_max - mu_rest) / denominator
    undefined = (n < 2) | (denominator == 0)
    return torch.where(undefined, float("nan"), selectivity), top


def _check_tensor(value: object, argname: str, expected: str) -> None:
    """Raise unless ``value`` is a tensor that holds values (dense, not on the meta device)."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{argname} must be {expected}, got {type(value).__name__}")
    check_dense(value, argname)


def _check_rows(first: object, second: object, names: tuple[str, str], what: str) -> None:
    """Raise unless ``first`` and ``second`` are 1-d tensors of one length (a ranking row, or per-image tables)."""
    for value, argname in zip((first, second), names, strict=True):
        _check_tensor(value, argname, f"a 1-d tensor ({what})")
    assert isinstance(first, Tensor) and isinstance(second, Tensor)
    if first.dim() != 1 or first.shape != second.shape:
        raise ValueError(f"{names[0]} and {names[1]} must be 1-d tensors of one length ({what}), got shapes "
                         f"{list(first.shape)} and {list(second.shape)}")  # fmt: skip


def _first_argmax(values: Tensor) -> Tensor:
    """The first index of each row's maximum (``argmax`` does not promise the first on all devices)."""
    best = values.max(dim=1, keepdim=True).values
    hits = (values == best) & (best > float("-inf"))
    position = torch.arange(values.shape[1], device=values.device).expand_as(values)
    return torch.where(hits, position, values.shape[1]).min(dim=1).values


def class_stats(state: ExemplarState, class_names: list[str] | None) -> ClassStats:
    """The :class:`ClassStats` of a layer's exemplar state (mined with labels)."""
    if not isinstance(state, ExemplarState) or "class_top" not in state.rankings:
        raise TypeError(f"state must be the ExemplarState of a layer mined with labels, got {type(state).__name__}")
    if class_names is not None and (
        not isinstance(class_names, list) or not all(isinstance(name, str) for name in class_names)
    ):
        raise TypeError(f"class_names must be a list of str or None, got {type(class_names).__name__}")
    classes = max(state.classes, len(class_names) if class_names is not None else 0)
    state.grow(classes, state.tables["class_count"].device)
    top = state.rankings["class_top"]
    labels = top.label
    known = labels >= 0
    histogram = torch.zeros((state.channels, classes), dtype=torch.long)
    histogram.scatter_add_(1, labels.clamp_min(0).cpu(), known.long().cpu())
    counts = state.tables["class_count"].cpu()
    means = f32_means(state.tables["class_sum"], counts)
    selectivity, top_class = selectivity_index(means)
    return ClassStats(histogram, means, selectivity, top_class, class_names, top.values.shape[1], counts)


def ranking_rows(values: Tensor, key: Tensor, plane: int, width: int) -> list[Place]:
    """The records of one ranking row (``[n]`` tensors), in their order, empty slots dropped."""
    _check_rows(values, key, ("values", "key"), "one ranking row")
    check_int(plane, "plane", minimum=1)
    check_int(width, "width", minimum=1)
    out = []
    for value, k in zip(values.tolist(), key.tolist(), strict=True):
        if k == NO_KEY:
            continue
        index, position = divmod(k, plane)
        out.append(Place(index, position // width, position % width, value))
    return out


def quantile_rows(best: Tensor, position: Tensor, q: float, k: int, width: int) -> list[Place]:
    """The ``k`` images around quantile ``q`` of a channel's per-image best values.

    The images with a finite best value are ordered by value, then index (ascending); the
    quantile's rank is ``round(q * (n - 1))`` and the ``k`` images centred on it are
    returned (shifted inward at the ends), best first (ties: the lower index first).

    Args:
        best: ``[N]`` each image's best value (NaN: not mined, -inf: no finite value).
        position: ``[N]`` the flat position of that value.
        q: the quantile, in [0, 1].
        k: how many images.
        width: the layer map's width (positions to ``(y, x)``).
    """
    _check_rows(best, position, ("best", "position"), "one value per image")
    q = check_float(q, "q", minimum=0.0, maximum=1.0)
    count = check_int(k, "k", minimum=1)
    assert count is not None  # None is refused: allow_none is off
    k = count
    check_int(width, "width", minimum=1)
    valid = torch.isfinite(best).nonzero().flatten()
    if len(valid) == 0:
        return []
    values = best[valid].double()
    order = torch.argsort(values, stable=True)  # valid is ascending: ties stay by index
    ranked = valid[order]
    rank = math.floor(q * (len(ranked) - 1) + 0.5)
    first = min(max(rank - k // 2, 0), max(len(ranked) - k, 0))
    window = ranked[first : first + k].sort().values  # ascending index, then best first (stable)
    chosen = window[torch.argsort(best[window].double(), descending=True, stable=True)]
    return [Place(int(i), int(position[i]) // width, int(position[i]) % width, float(best[i])) for i in chosen]
