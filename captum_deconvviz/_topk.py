"""Per-channel streaming top-k of a layer's activations, mergeable and exact.

Records are ranked by value (descending), then dataset index, then y, then x
(ascending). ``index * H * W + y * W + x`` is one ascending integer key for the last
three, so a merge is two stable sorts. The state also keeps exact channel statistics
(max, sum, counts) so that two states merge into the state of the union.

:meth:`TopKState.fold` takes one batch of a layer's activations into the state, by the
layer's :class:`FoldRule` (uniqueness mode, NaN policy, NMS kernel).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ._exemplar_state import ExemplarOptions, ExemplarState
from ._ranking import rank_rows

__all__ = ["FoldRule", "TopKState", "exact_sum_add", "exact_sum_value", "nms_kernel"]

_NO_INDEX = -1

# Exact, associative sums: a float64 ``v = m * 2**(e - 53)`` with integer mantissa ``m``
# (|m| < 2**53) goes to bucket ``e``; buckets are int64 and carry their high bits up
# 32 exponents after every update, so no bucket overflows. Any two states add
# bucket-wise into the exact state of the union, whatever the order or the batching:
# merged statistics equal a single pass bit for bit.
_EXP_MIN, _EXP_MAX, _CARRY = -1100, 1100, 32
_BUCKETS = _EXP_MAX - _EXP_MIN + _CARRY


def _normalize(buckets: Tensor) -> Tensor:
    for _ in range(3):  # three passes bound every bucket by 2**32 after additions below 2**62
        carry = buckets[..., :-_CARRY] >> _CARRY
        buckets[..., :-_CARRY] -= carry << _CARRY
        buckets[..., _CARRY:] += carry
    return buckets


def exact_sum_add(buckets: Tensor, values: Tensor, normalize: bool = True) -> None:
    """Add ``values [B, C]`` (float64) to the exact per-channel sums ``buckets [C, E]``, in place.

    A normalized bucket holds less than 2**33 in magnitude and each value adds less than
    2**53, so up to 1,000 values may be added between normalizations.
    """
    mantissa, exponent = torch.frexp(values)  # values = mantissa * 2**exponent, 0.5 <= |mantissa| < 1
    integer = torch.ldexp(mantissa, torch.full_like(exponent, 53)).long()  # exact: 53 bits
    index = (exponent.long() - _EXP_MIN).clamp(0, _BUCKETS - _CARRY - 1)
    channels = buckets.shape[0]
    flat = (torch.arange(channels, device=buckets.device).view(1, -1) * buckets.shape[1] + index).flatten()
    buckets.view(-1).index_add_(0, flat, integer.flatten())
    if normalize:
        _normalize(buckets)


def exact_sum_value(buckets: Tensor) -> list[int]:
    """The exact sums as ``numerator`` integers over ``2**(53 - _EXP_MIN)`` (one per channel)."""
    rows = buckets.cpu().tolist()
    return [sum(v << i for i, v in enumerate(row)) for row in rows]


def exact_mean(buckets: Tensor, counts: Tensor) -> Tensor:
    """Correctly rounded ``sum / count`` per channel, from the exact sums."""
    from fractions import Fraction

    scale = 2 ** (53 - _EXP_MIN)
    return torch.tensor(
        [
            float(Fraction(total, scale * max(int(n), 1)))
            for total, n in zip(exact_sum_value(buckets), counts.tolist(), strict=True)
        ],
        dtype=torch.float64,
    )


@dataclass(frozen=True)
class FoldRule:
    """How a batch enters one layer's top-k.

    Attributes:
        unique: ``"image"`` (one record per image and channel), ``"none"`` or ``"nms"``.
        nan: ``"raise"`` on NaN or Inf activations, or ``"skip"`` them (counted in ``nan_count``).
        kernel: the NMS overlap kernel of the layer (see :func:`nms_kernel`); ``"nms"`` only.
    """

    unique: str
    nan: str
    kernel: Tensor | None = None


@dataclass
class TopKState:
    """Top-k records and statistics of every channel of one layer.

    Tensors are ``[C, k]`` (records) or ``[C]`` (statistics); ``key`` is
    ``index * H * W + y * W + x`` and -1 for empty slots, whose value is -inf.
    """

    values: Tensor
    key: Tensor
    height: int
    width: int
    maximum: Tensor
    total: Tensor  # exact sum of all activations: int64 buckets [C, E], see exact_sum_add
    positions: Tensor  # int64 count of (non-NaN) activations summed
    active_images: Tensor  # images with a positive activation somewhere
    nan_count: Tensor
    images: int = 0
    _pending: int = 0  # values added to ``total`` since its last normalization
    exemplars: ExemplarState | None = None  # class statistics, bottom-k...: see _exemplar_state

    @classmethod
    def empty(cls, channels: int, k: int, height: int, width: int, device: torch.device) -> TopKState:
        return cls(
            values=torch.full((channels, k), float("-inf"), device=device),
            key=torch.full((channels, k), _NO_INDEX, dtype=torch.long, device=device),
            height=height,
            width=width,
            maximum=torch.full((channels,), float("-inf"), device=device),
            total=torch.zeros((channels, _BUCKETS), dtype=torch.long, device=device),
            positions=torch.zeros(channels, dtype=torch.long, device=device),
            active_images=torch.zeros(channels, dtype=torch.long, device=device),
            nan_count=torch.zeros(channels, dtype=torch.long, device=device),
        )

    @property
    def k(self) -> int:
        return self.values.shape[1]

    def tensors(self) -> dict[str, Tensor]:
        """The state's tensors (``total`` normalized first, so any copy may take 1,000 more adds)."""
        _normalize(self.total)
        self._pending = 0
        names = ("values", "key", "maximum", "total", "positions", "active_images", "nan_count")
        return {name: getattr(self, name) for name in names}

    def to(self, device: torch.device | str) -> TopKState:
        # Any: the dataclass also has int fields, so dict[str, Tensor] cannot be ** into it as typed.
        moved: dict[str, Any] = {name: t.to(device) for name, t in self.tensors().items()}
        exemplars = self.exemplars.to(device) if self.exemplars is not None else None
        return TopKState(height=self.height, width=self.width, images=self.images, exemplars=exemplars, **moved)

    def to_dict(self) -> dict[str, Any]:
        """The state as plain values and CPU tensors, as mining checkpoints store it.

        Returns:
            ``{"tensors": {name: Tensor}, "height": int, "width": int, "images": int}``, and
            ``"exemplars"`` where mining kept more than the top-k;
            ``torch.load(..., weights_only=True)`` reads it back.

        Example:
            >>> state = TopKState.empty(4, 9, 8, 8, torch.device("cpu"))
            >>> TopKState.from_dict(state.to_dict()).k
            9
        """
        tensors = {name: tensor.cpu() for name, tensor in self.tensors().items()}
        entry = {"tensors": tensors, "height": self.height, "width": self.width, "images": self.images}
        if self.exemplars is not None:
            entry["exemplars"] = self.exemplars.to_dict()
        return entry

    @classmethod
    def from_dict(cls, entry: dict[str, Any], device: torch.device | str = "cpu") -> TopKState:
        """The state :meth:`to_dict` wrote, on ``device`` (its exemplars checked first)."""
        exemplars = None
        if entry.get("exemplars") is not None:
            exemplars = ExemplarState.from_dict(entry["exemplars"], ExemplarOptions.from_dict(entry["exemplars"]))
        state = cls(
            height=entry["height"], width=entry["width"], images=entry["images"], exemplars=exemplars,
            **entry["tensors"],
        )  # fmt: skip
        return state.to(device)

    # ---- updates --------------------------------------------------------------------

    def fold(
        self, acts: Tensor, index: Tensor, rule: FoldRule, layer: str, scores: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Take one batch of the layer's activations into the records and statistics.

        Args:
            acts: ``[B, C, H, W]`` activations of the batch (detached here).
            index: ``[B]`` their dataset indices, ascending.
            rule: how the batch enters (uniqueness, NaN policy, NMS kernel).
            layer: the layer's name, for error messages.
            scores: ``[B, C, H, W]`` what records are ranked by, if not the activations
                (relevances); the statistics always come from the activations.

        Returns:
            Each image's maximum activation ``[B, C]`` and the scores ``[B, C, H * W]``, with
            non-finite values as -inf (skipped ones; any others raised).

        Raises:
            ValueError: the layer's map size differs from the state's.
            FloatingPointError: NaN activations with ``rule.nan == "raise"``.
        """
        acts = acts.detach()
        b, c, h, w = acts.shape
        if (h, w) != (self.height, self.width):
            raise ValueError(f"layer {layer!r} changed its map size to {(h, w)} at image {int(index[0])}")
        flat = acts.reshape(b, c, h * w)
        # Two passes over the activations in the common case: the sums and the max. Each image's
        # sum is a float32 reduction of its own row (the same whatever the batch); sums of
        # images are then exact (see TopKState.total).
        sums = flat.sum(dim=2).double()
        positions = torch.full((c,), b * h * w, dtype=torch.long, device=acts.device)
        nans = torch.zeros(c, dtype=torch.long, device=acts.device)
        if not bool(torch.isfinite(sums).all()):  # NaN or Inf somewhere (or a sum overflowed): look closer
            skipped = _skip_nans(flat, index, rule.nan, layer)
            if skipped is not None:
                flat, sums, nans = skipped
                positions = positions - nans
                acts = flat.view(b, c, h, w)
        best = flat.amax(dim=2)  # [B, C]
        self.update_stats(sums, best, positions, nans)
        score_flat, score_best = flat, best
        if scores is not None:
            score_flat = scores.detach().reshape(b, c, h * w)
            # NaN and Inf reach the sums (an overflowed sum is looked at closer, and let through)
            if not bool(torch.isfinite(score_flat.sum(dim=2)).all()):
                skipped = _skip_nans(score_flat, index, rule.nan, f"{layer} (its relevance)")
                score_flat = skipped[0] if skipped is not None else score_flat
            score_best, acts = score_flat.amax(dim=2), score_flat.view(b, c, h, w)
        candidates = self._candidates(acts, score_flat, score_best, index.to(acts.device), rule)
        if candidates is not None:
            values, key = candidates
            self.merge_candidates(values.float(), key)
        return best, score_flat

    def _candidates(
        self, acts: Tensor, flat: Tensor, best: Tensor, index: Tensor, rule: FoldRule
    ) -> tuple[Tensor, Tensor] | None:
        """The batch's candidate records ``[C, M]`` (values, keys), or None if none can enter."""
        if rule.unique == "image":
            # Positions only where the image can enter the channel's top-k (few, once the stream runs).
            contenders = best >= self.values[:, -1]
            if not bool(contenders.any()):
                return None
            position = torch.zeros_like(best, dtype=torch.long)
            position[contenders] = flat[contenders].argmax(dim=1)
            values = torch.where(contenders, best, torch.full_like(best, float("-inf")))
            return image_candidates(values, position, index, self.height * self.width)
        if rule.unique == "none":
            return all_candidates(acts, index, self.k)
        assert rule.kernel is not None, "unique='nms' needs the layer's NMS kernel"
        return nms_candidates(acts, index, rule.kernel, self.values, best)

    def merge_candidates(self, values: Tensor, key: Tensor) -> None:
        """Keep the best k of the current records and ``values``/``key`` ``[C, M]``."""
        key = torch.where(values == float("-inf"), _NO_INDEX, key)  # NaN-skipped or exhausted: no record
        # Most batches of a long stream bring nothing better than the current k-th record.
        worst = self.values[:, -1:]
        if not bool((values >= worst).any()):
            return
        all_values = torch.cat([self.values, values], dim=1)
        all_keys = torch.cat([self.key, key], dim=1)
        all_values, all_keys, _ = rank_rows(all_values, all_keys)
        self.values, self.key = all_values[:, : self.k].contiguous(), all_keys[:, : self.k].contiguous()

    def update_stats(self, sums: Tensor, best: Tensor, positions: Tensor, nans: Tensor) -> None:
        """Fold one batch into the statistics.

        Args:
            sums: float64 ``[B, C]``: each image's sum of (non-NaN) activations per channel.
            best: ``[B, C]``: each image's largest (non-NaN) activation per channel.
            positions: ``[C]``: how many non-NaN activations the sums hold.
            nans: ``[C]``: how many NaN activations were skipped.
        """
        # per image and channel, then exactly across images: independent of batching and sharding
        if self._pending + sums.shape[0] > 1000:
            _normalize(self.total)
            self._pending = 0
        exact_sum_add(self.total, sums, normalize=False)
        self._pending += sums.shape[0]
        self.positions += positions
        self.nan_count += nans
        self.maximum = torch.maximum(self.maximum, best.amax(dim=0))
        self.active_images += (best > 0).sum(dim=0)
        self.images += sums.shape[0]

    def merge(self, other: TopKState) -> None:
        """Become the state of the union of both streams."""
        if (other.height, other.width, other.k) != (self.height, self.width, self.k):
            raise ValueError("cannot merge top-k states of different map sizes or k")
        self.merge_candidates(other.values.to(self.values.device), other.key.to(self.key.device))
        self.maximum = torch.maximum(self.maximum, other.maximum.to(self.maximum.device))
        for name in ("positions", "active_images", "nan_count"):
            setattr(self, name, getattr(self, name) + getattr(other, name).to(self.values.device))
        self.total = _normalize(_normalize(self.total) + _normalize(other.total.to(self.total.device).clone()))
        self._pending = 0
        self.images += other.images
        if (self.exemplars is None) != (other.exemplars is None):
            raise ValueError("cannot merge a state with exemplar statistics and one without")
        if self.exemplars is not None and other.exemplars is not None:
            self.exemplars.merge(other.exemplars)


def _skip_nans(flat: Tensor, index: Tensor, nan: str, layer: str) -> tuple[Tensor, Tensor, Tensor] | None:
    """``flat [B, C, HW]`` with NaN and Inf as -inf, the finite sums ``[B, C]`` and their counts ``[C]``.

    Inf is treated as NaN: a record of value inf, or a mean of inf, would look like an answer.
    None if ``flat`` is all finite (a sum overflowed). With ``nan="raise"``, a FloatingPointError
    names the first images (dataset indices) that hold NaN or Inf.
    """
    nan_mask = ~torch.isfinite(flat)
    if not bool(nan_mask.any()):
        return None
    if nan == "raise":
        bad = index[nan_mask.any(dim=2).any(dim=1).cpu()].tolist()
        kinds = " and ".join(k for k, n in (("NaN", flat.isnan().any()), ("Inf", flat.isinf().any())) if bool(n))
        raise FloatingPointError(
            f"layer {layer!r} produced {kinds} activations for images {bad[:10]} of data; fix the data or the "
            "model, or pass nan='skip' to ignore non-finite activations"
        )
    sums = flat.masked_fill(nan_mask, 0.0).sum(dim=2).double()
    return flat.masked_fill(nan_mask, float("-inf")), sums, nan_mask.sum(dim=(0, 2))


# --------------------------------------------------------------------------------------
# Candidates of one batch, per uniqueness mode. ``acts`` is [B, C, H, W], NaN-free
# (NaNs replaced by -inf), ``index`` the dataset index of each image [B] (ascending).
# --------------------------------------------------------------------------------------


def image_candidates(best: Tensor, position: Tensor, index: Tensor, plane: int) -> tuple[Tensor, Tensor]:
    """One candidate per image and channel: its best value ``[B, C]`` at ``position``
    (the flat index in the map, the first in y, x on ties)."""
    key = index.view(-1, 1) * plane + position
    return best.t().contiguous(), key.t().contiguous()


def all_candidates(acts: Tensor, index: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The k best positions of each channel over the batch, ties to the lowest key."""
    b, c, h, w = acts.shape
    flat = acts.permute(1, 0, 2, 3).reshape(c, b * h * w)  # row order = (image, y, x) = key order
    plane = h * w

    def keys(flat_index: Tensor) -> Tensor:
        return index[flat_index // plane] * plane + flat_index % plane

    if flat.shape[1] <= k:
        return flat.contiguous(), keys(torch.arange(flat.shape[1], device=acts.device)).expand(c, -1).contiguous()
    kth = torch.topk(flat, k, dim=1).values[:, -1:]
    above = flat > kth
    tied = flat == kth
    need = k - above.sum(dim=1, keepdim=True)
    chosen = above | (tied & (tied.cumsum(dim=1) <= need))
    rows, flat_index = chosen.nonzero(as_tuple=True)  # row-major: grouped by channel, ascending
    values = flat[rows, flat_index].view(c, k)
    return values, keys(flat_index).view(c, k)


def nms_kernel(size: tuple[int, ...], stride: tuple[int, ...], threshold: float) -> Tensor:
    """Offsets (in units) whose receptive fields overlap with IoU above ``threshold``.

    Two units' boxes have the same size; shifted by ``(dy, dx)`` units they intersect in
    ``max(0, h - |dy| sy) * max(0, w - |dx| sx)`` pixels.
    """
    (h, w), (sy, sx) = size, stride
    ry, rx = (h - 1) // sy, (w - 1) // sx
    dy = torch.arange(-ry, ry + 1).view(-1, 1).abs()
    dx = torch.arange(-rx, rx + 1).view(1, -1).abs()
    inter = (h - dy * sy).clamp_min(0) * (w - dx * sx).clamp_min(0)
    iou = inter / (2 * h * w - inter)
    return (iou > threshold).float()


def nms_candidates(
    acts: Tensor, index: Tensor, kernel: Tensor, current: Tensor, best: Tensor
) -> tuple[Tensor, Tensor] | None:
    """Greedy non-maximum suppression per image and channel: the survivors that can enter.

    Greedy NMS never lets images interact, so the greedy survivors of every image, merged
    by key, are exactly the greedy top-k of the whole stream. Only survivors that can still
    enter the channel's top-k are computed:

    - every image's maximum is its first survivor, so the k-th largest of the current
      records and the batch's image maxima bounds the channel's k-th record after this
      batch from below; a survivor below that ``floor`` cannot enter, and images whose
      maximum is below it need no NMS at all;
    - within an image, greedy picks come in descending order, so dropping the positions
      below the floor changes none of the picks above it.

    The remaining (image, channel) maps are suppressed together, in at most k steps.

    Args:
        acts: ``[B, C, H, W]`` activations (NaN-free: NaN replaced by -inf).
        index: ``[B]`` their dataset indices.
        kernel: the layer's overlap kernel (:func:`nms_kernel`), ``[2 ry + 1, 2 rx + 1]``.
        current: ``[C, k]`` the channel's current record values (-inf in empty slots).
        best: ``[B, C]`` each image's maximum per channel.

    Returns:
        ``(values, keys)`` ``[C, M]`` (-inf and -1 where a channel has fewer), or None if no
        survivor can enter.
    """
    _, c, h, w = acts.shape
    k = current.shape[1]
    # Records are ranked in float32 (the state's dtype): compare there, so that no value that
    # could tie with the floor after rounding is dropped.
    image_best = best.t().float()
    floor = torch.topk(torch.cat([current.float(), image_best], dim=1), k, dim=1).values[:, -1]  # [C]
    contenders = (image_best >= floor.view(-1, 1)) & (image_best > float("-inf"))  # [C, B]
    channel, image = contenders.nonzero(as_tuple=True)  # grouped by channel, images ascending
    pairs = channel.numel()
    if pairs == 0:
        return None
    maps = acts[image, channel].reshape(pairs, h * w)
    maps = maps.masked_fill(maps.float() < floor[channel].view(-1, 1), float("-inf"))
    reach = _row_reach(kernel, h).to(acts.device)  # [H]: |dx| suppressed at row distance |dy|
    rows = torch.arange(h, device=acts.device)
    cols = torch.arange(w, device=acts.device)
    values = torch.full((pairs, min(k, h * w)), float("-inf"), dtype=acts.dtype, device=acts.device)
    positions = torch.zeros(values.shape, dtype=torch.long, device=acts.device)
    picks = values.shape[1]
    live = torch.arange(pairs, device=acts.device)  # the pairs whose maps are not exhausted
    for step in range(values.shape[1]):
        top, position = maps.max(dim=1)  # ties: the first position, the lowest (y, x)
        alive = top > float("-inf")
        if not bool(alive.all()):  # most maps run out after a pick or two: drop them
            keep = alive.nonzero().flatten()
            if keep.numel() == 0:
                picks = step
                break
            live, maps, top, position = live[keep], maps[keep], top[keep], position[keep]
        values[live, step], positions[live, step] = top, position
        y, x = position // w, position % w
        row_reach = reach[(rows.view(1, -1) - y.view(-1, 1)).abs()]  # [P, H]
        col_gap = (cols.view(1, -1) - x.view(-1, 1)).abs()  # [P, W]
        suppressed = col_gap.view(-1, 1, w) <= row_reach.view(-1, h, 1)
        maps.masked_fill_(suppressed.view(-1, h * w), float("-inf"))
    values, positions = values[:, :picks], positions[:, :picks]
    keys = torch.where(values > float("-inf"), index[image].view(-1, 1) * (h * w) + positions, _NO_INDEX)
    # Pair p, the slot-th pair of its channel ch, fills columns slot * picks ... of row ch.
    first = torch.searchsorted(channel, torch.arange(c, device=acts.device))
    slot = torch.arange(pairs, device=acts.device) - first[channel]
    width = int(slot.max()) + 1
    columns = (slot.view(-1, 1) * picks + torch.arange(picks, device=acts.device)).flatten()
    rows_of = channel.repeat_interleave(picks)
    out_values = torch.full((c, width * picks), float("-inf"), dtype=acts.dtype, device=acts.device)
    out_keys = torch.full((c, width * picks), _NO_INDEX, dtype=torch.long, device=acts.device)
    out_values[rows_of, columns] = values.flatten()
    out_keys[rows_of, columns] = keys.flatten()
    return out_values, out_keys


def _row_reach(kernel: Tensor, height: int) -> Tensor:
    """``[height]``: the largest ``|dx|`` the kernel suppresses at row distance ``|dy|`` (-1: none).

    :func:`nms_kernel`'s rows are symmetric runs of ones around the centre (overlap shrinks
    with ``|dx|``), so a row is its half-width.
    """
    ry = kernel.shape[0] // 2
    half = torch.div(kernel[ry:].sum(dim=1).long() - 1, 2, rounding_mode="floor")
    reach = torch.full((height,), -1, dtype=torch.long)
    reach[: min(height, ry + 1)] = half[:height]
    return reach
