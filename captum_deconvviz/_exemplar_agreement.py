"""DeconvNet beside Guided Backprop for the same mined records: how much they agree, per channel.

:func:`exemplar_agreement` projects a mined layer's top-k records twice, seeded with
the same unit: with the DeconvNet rules (``rules="zf"``) and with Guided Backprop's
(``rules="guided"``), both cropped to the records' receptive fields by
:meth:`MiningResult.projections`. It compares each pair with the metrics of
:func:`~captum_deconvviz.compare.agreement` (the ones :func:`compare_methods` reports for
whole images), on the pixels of the crop that lie inside the image: a receptive field
that leaves the image pads its crop with zeros in both projections, and those shared
zeros would count as agreement. :func:`crop_agreement` does the same for projection
tensors already computed, which is what :func:`~captum_deconvviz.plot_topk` draws.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ._checks import check_choice, check_int, show
from ._tables import to_markdown
from .compare import agreement
from .mining_result import Crops, MiningResult

__all__ = ["METRICS", "ExemplarAgreement", "channel_means", "crop_agreement", "exemplar_agreement"]

#: The metrics compared, as :func:`~captum_deconvviz.compare.agreement` names them.
METRICS: tuple[str, ...] = ("spearman", "spearman_abs", "ssim")


@dataclass(frozen=True)
class ExemplarAgreement:
    """DeconvNet and Guided Backprop projections of the same records, and their agreement.

    Each metric is a tensor ``[channels, k]`` (float64), one value per record, in the
    order of :meth:`MiningResult.records`. It is computed on the record's crop, over the
    pixels inside the image only, from colour-summed 2-d maps, as
    :func:`~captum_deconvviz.compare_methods` does for whole images:

    * ``spearman``: Spearman rank correlation of the signed maps (sum over colour);
    * ``spearman_abs``: Spearman rank correlation of the absolute maps (sum of ``|.|``
      over colour);
    * ``ssim``: SSIM of the absolute maps, each min-max scaled to [0, 1].

    A value is NaN where there is nothing to compare: a missing record (the channel has
    fewer than k), or a projection that is zero everywhere (a unit seeded with 0), or a
    Spearman of a constant map. :meth:`mean` averages over the records that have a value.

    Attributes:
        layer: the mined layer.
        channels: its channels, in the order asked.
        seed: how both projections were seeded (``"activation"`` or ``"one"``).
        spearman: ``[channels, k]`` Spearman of the signed maps.
        spearman_abs: ``[channels, k]`` Spearman of the absolute maps.
        ssim: ``[channels, k]`` SSIM of the absolute maps.
        deconv: the DeconvNet projections, :class:`Crops` ``[channels, k, C, h, w]``.
        guided: the Guided Backprop projections, :class:`Crops` alike.
    """

    layer: str
    channels: tuple[int, ...]
    seed: str
    spearman: Tensor
    spearman_abs: Tensor
    ssim: Tensor
    deconv: Crops = field(repr=False)
    guided: Crops = field(repr=False)

    def mean(self, metric: str = "spearman") -> Tensor:
        """The channel means of ``metric`` over the records that have a value.

        Args:
            metric: ``"spearman"``, ``"spearman_abs"`` or ``"ssim"``.

        Returns:
            A float64 tensor ``[channels]``; NaN for a channel without any value.

        Example:
            >>> agreement.mean("ssim")  # doctest: +SKIP
            tensor([0.71, 0.64], dtype=torch.float64)
        """
        check_choice(metric, "metric", METRICS)
        return channel_means(getattr(self, metric))

    def records(self) -> Tensor:
        """How many records of each channel have a value for every metric, ``[channels]``."""
        valid = ~(self.spearman.isnan() | self.spearman_abs.isnan() | self.ssim.isnan())
        return valid.sum(1)

    def table(self) -> str:
        """A Markdown table: per channel, the records compared and the mean of each metric.

        Example:
            >>> print(agreement.table())  # doctest: +SKIP
            | channel | records | Spearman | Spearman abs | SSIM abs |
            ...
        """
        means = [self.mean(metric).tolist() for metric in METRICS]
        counts = self.records().tolist()
        rows = [
            [str(channel), str(counts[i]), *(_number(column[i]) for column in means)]
            for i, channel in enumerate(self.channels)
        ]
        return to_markdown(["channel", "records", "Spearman", "Spearman abs", "SSIM abs"], rows)


def _number(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f}"


def channel_means(values: Tensor) -> Tensor:
    """The mean over the last dim of ``values``, ignoring NaN (NaN where all are NaN)."""
    valid = ~values.isnan()
    total = torch.where(valid, values, torch.zeros_like(values)).sum(-1)
    count = valid.sum(-1)
    return torch.where(count > 0, total / count.clamp(min=1), torch.full_like(total, math.nan))


def _rectangle(mask: Tensor, argname: str) -> tuple[slice, slice] | None:
    """The rows and columns of the valid pixels of one crop, or None if there are none."""
    rows = mask.any(1).nonzero().flatten()
    cols = mask.any(0).nonzero().flatten()
    if not len(rows):
        return None
    box = (slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1))
    if not bool(mask[box].all()):  # a field's box clipped to the image is a rectangle
        raise ValueError(f"{argname}: the valid pixels of a crop must form a rectangle (a receptive field's box)")
    return box


def _cut(projection: Tensor, box: tuple[slice, slice]) -> Tensor:
    """The pixels of ``projection [C, h, w]`` in ``box``."""
    return projection[:, box[0], box[1]]


def crop_agreement(deconv: Tensor, guided: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """Spearman and SSIM between two projections of each crop, over its valid pixels.

    The pixels where ``mask`` is False (outside the image) are left out: each crop is
    cut to the rectangle of its valid pixels, then compared with
    :func:`~captum_deconvviz.compare.agreement` (colour-summed signed maps for
    ``"spearman"``, absolute maps for ``"spearman_abs"`` and ``"ssim"``). Crops of the
    same size are compared in one batch.

    Args:
        deconv: projections ``[..., C, h, w]`` (for example ``[channels, k, C, h, w]``).
        guided: projections of the same shape.
        mask: ``[..., h, w]``, True on the pixels inside the image.

    Returns:
        ``{"spearman", "spearman_abs", "ssim"}`` -> float64 ``[...]`` (the leading dims);
        NaN where a crop has no valid pixel or either projection is zero on all of them.

    Raises:
        ValueError: the shapes do not match, or a crop's valid pixels are no rectangle.
        TypeError: an argument is not a tensor.

    Example:
        >>> crops = torch.randn(2, 9, 3, 7, 7)
        >>> values = crop_agreement(crops, crops.relu(), torch.ones(2, 9, 7, 7, dtype=torch.bool))
        >>> values["ssim"].shape
        torch.Size([2, 9])
    """
    for argname, value in (("deconv", deconv), ("guided", guided), ("mask", mask)):
        if not isinstance(value, Tensor):
            raise TypeError(f"{argname} must be a Tensor, got {type(value).__name__}")
    if deconv.dim() < 3 or deconv.shape != guided.shape:
        raise ValueError(
            f"deconv and guided must be projections [..., C, h, w] of one shape, got {list(deconv.shape)} "
            f"and {list(guided.shape)}"
        )
    if tuple(mask.shape) != tuple(deconv.shape[:-3]) + tuple(deconv.shape[-2:]):
        raise ValueError(f"mask must be shaped [..., h, w] like the projections {list(deconv.shape)} without their "
                         f"colour dim, got {list(mask.shape)}")  # fmt: skip
    lead = tuple(deconv.shape[:-3])
    a = deconv.detach().cpu().reshape(-1, *deconv.shape[-3:])
    b = guided.detach().cpu().reshape(-1, *guided.shape[-3:])
    valid = mask.detach().cpu().bool().reshape(-1, *mask.shape[-2:])
    out = {metric: torch.full((a.shape[0],), math.nan, dtype=torch.float64) for metric in METRICS}
    groups: dict[tuple[int, int], list[tuple[int, tuple[slice, slice]]]] = {}
    for n in range(a.shape[0]):
        box = _rectangle(valid[n], "mask")
        if box is None or not bool(_cut(a[n], box).any()) or not bool(_cut(b[n], box).any()):
            continue
        size = (box[0].stop - box[0].start, box[1].stop - box[1].start)
        groups.setdefault(size, []).append((n, box))
    for members in groups.values():
        rows = torch.tensor([n for n, _ in members], dtype=torch.long)
        left = torch.stack([_cut(a[n], box) for n, box in members])
        right = torch.stack([_cut(b[n], box) for n, box in members])
        for metric, values in agreement(left, right).items():
            out[metric][rows] = values.double()
    return {metric: values.reshape(lead) for metric, values in out.items()}


def _channel_selection(channels: Any, count: int) -> list[int]:
    """``channels`` (None, one index or a sequence) as a non-empty list of indices in ``[0, count)``."""
    if channels is None:
        return list(range(count))
    if isinstance(channels, Tensor) and channels.dim() == 0:
        channels = channels.item()
    if isinstance(channels, numbers.Integral) and not isinstance(channels, (bool, np.bool_)):
        items: list[Any] = [channels]
    elif isinstance(channels, (Sequence, np.ndarray, Tensor)) and not isinstance(channels, (str, bytes)):
        items = list(channels)
    else:
        raise TypeError(f"channels must be a channel index, a list of them or None, got {show(channels)} "
                        f"({type(channels).__name__})")  # fmt: skip
    if not items:
        raise ValueError(f"channels is empty; give channels in [0, {count}) or None for all")
    checked = [
        check_int(c, f"channels[{i}]" if len(items) > 1 else "channels", 0, count - 1) for i, c in enumerate(items)
    ]
    return [int(c) for c in checked if c is not None]


def exemplar_agreement(
    result: MiningResult,
    model: nn.Module,
    data: Any,
    layer: str,
    channels: int | Sequence[int] | None = None,
    seed: str = "activation",
) -> ExemplarAgreement:
    """DeconvNet against Guided Backprop on a layer's top-k records: Spearman and SSIM per channel.

    Each record's unit is projected twice with the same seed, once with the DeconvNet
    (``result.projections(..., rules="zf")``) and once with Guided Backprop
    (``rules="guided"``: its ReLU backward also zeroes where the forward input was not
    positive), both cropped to the record's receptive field. The two crops are compared
    on the pixels inside the image (see :func:`crop_agreement`), with the metrics
    :func:`~captum_deconvviz.compare_methods` uses for whole images. High values say the
    DeconvNet picture of the unit is the one Guided Backprop would give; low values say
    the forward ReLU masks, which only Guided Backprop applies, change it.

    Args:
        result: a :class:`~captum_deconvviz.MiningResult`.
        model: the mined model.
        data: the data that was mined.
        layer: a mined layer (its name, as in ``result.layers``).
        channels: one channel, a list, or None for every channel of the layer.
        seed: ``"activation"`` (Zeiler & Fergus) or ``"one"`` (Captum), for both methods.

    Returns:
        An :class:`ExemplarAgreement` with the per-record metrics ``[channels, k]``, the
        channel means (``.mean(metric)``), both projections (``.deconv``, ``.guided``,
        ready for ``plot_topk(..., guided=True)``) and ``.table()``.

    Raises:
        TypeError: ``result`` is not a ``MiningResult``, ``layer`` is not a name, or a
            channel is not an integer (a bool is refused).
        ValueError: ``layer`` was not mined, a channel is out of range, ``seed`` is
            unknown, ``model`` is not the mined model or ``data`` not the mined data.

    Example:
        >>> from captum_deconvviz.zoo import load_default_model, default_sample
        >>> model, data = load_default_model(), default_sample()
        >>> result = mine_topk(model, ["features.9"], data, k=9, progress=False)  # doctest: +SKIP
        >>> agreement = exemplar_agreement(result, model, data, "features.9", [3, 12])  # doctest: +SKIP
        >>> print(agreement.table())  # doctest: +SKIP
    """
    if not isinstance(result, MiningResult):
        raise TypeError(f"result must be a MiningResult (from mine_topk or MiningResult.load), got "
                        f"{type(result).__name__}")  # fmt: skip
    if not isinstance(layer, str):
        raise TypeError(f"layer must be the name of a mined layer (one of {result.layers}), got {show(layer)}")
    if layer not in result.layers:
        raise ValueError(f"layer {layer!r} was not mined; mined layers: {result.layers}")
    selection = _channel_selection(channels, result.channels(layer))
    check_choice(seed, "seed", ("activation", "one"))
    deconv = result.projections(model, data, layer, selection, seed=seed, rules="zf")
    guided = result.projections(model, data, layer, selection, seed=seed, rules="guided")
    metrics = crop_agreement(deconv.images, guided.images, deconv.mask)
    return ExemplarAgreement(layer, tuple(selection), seed, metrics["spearman"], metrics["spearman_abs"],
                             metrics["ssim"], deconv, guided)  # fmt: skip
