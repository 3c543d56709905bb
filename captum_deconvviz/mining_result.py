"""What ``mine_topk`` returns: per-channel top-k records, statistics, crops and projections.

Longer than the ~400 lines the style guide asks for, on purpose: nearly all of it is the
one public class :class:`MiningResult`, whose methods share its state (records, fields,
the crop cache) and whose API users meet as one object; its building blocks already live
elsewhere (``_topk`` the state, ``_result_cache`` the cache, ``_taps`` the forward hooks,
``_result_io`` and ``_integrity`` the files, ``_fingerprint`` the model and data checks).
"""

from __future__ import annotations

import html
import os
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, cast

import torch
from torch import Tensor, nn

from . import _datasource
from ._checks import check_float, check_int, check_output_file, show
from ._fingerprint import dataset_mismatch
from ._forward import check_model, on_model_device
from ._guard import autograd_inside
from ._integrity import add_checksum, atomic_save, read_payload
from ._result_cache import DEFAULT_CACHE_BYTES, CropCache
from ._result_checks import InputChecks
from ._result_exemplars import ExemplarAccess, Record
from ._result_io import RESULT_FORMAT, RESULT_KEYS, result_arguments, result_payload
from ._taps import layer_activations
from ._topk import TopKState, exact_mean
from .exemplars import ClassStats
from .receptive_field import ReceptiveField

# atomic_save lives in _integrity; it stays importable from here, where it used to be.
__all__ = ["ChannelStats", "Crops", "MiningResult", "MiningVerificationError", "Record", "atomic_save"]


class Crops(NamedTuple):
    """Receptive-field crops ``[..., k, C, h, w]`` and their valid-pixel ``mask`` ``[..., k, h, w]``.

    ``mask`` is False where the field leaves the image (those pixels hold the fill value).
    """

    images: Tensor
    mask: Tensor


@dataclass(frozen=True)
class ChannelStats:
    """Per-channel statistics over every image and position mined.

    Attributes:
        maximum: the largest activation of each channel.
        mean: the mean activation over all images and positions.
        fraction_active: the fraction of images with a positive activation somewhere.
        images: how many images were mined.
        nan_count: NaN activations skipped (``nan="skip"``).
    """

    maximum: Tensor
    mean: Tensor
    fraction_active: Tensor
    images: int
    nan_count: Tensor

    @property
    def dead(self) -> Tensor:
        """Channels never active (no positive activation in any image)."""
        return self.fraction_active == 0

    def __repr__(self) -> str:
        dead = self.dead.nonzero().flatten().tolist()
        return (
            f"ChannelStats({len(self.maximum)} channels over {self.images} images, "
            f"{len(dead)} dead{': ' + str(dead[:10]) if dead else ''}, "
            f"mean fraction active {float(self.fraction_active.float().mean()):.3f})"
        )


class MiningVerificationError(AssertionError):
    """A mined value was not reproduced by a fresh forward pass."""


class MiningResult(ExemplarAccess):
    """The top-k activations of every channel of the mined layers.

    Built by :func:`~captum_deconvviz.mine_topk`; see its documentation. Records are
    kept best first: value descending, ties to the lower dataset index, then y, then x.

    :meth:`patches` and :meth:`projections` keep the crops they compute in a per-result
    cache bounded by :attr:`cache_limit` bytes, so drawing one channel at a time costs
    about what one call for the whole layer costs (see :meth:`clear_cache` and
    docs/mining.md for what the cache is keyed on).
    """

    def __init__(
        self,
        states: dict[str, TopKState],
        fields: dict[str, ReceptiveField | None],
        *,
        k: int,
        unique: str,
        nms_threshold: float,
        num_images: int,
        input_shape: tuple[int, ...],
        fingerprint: str,
        meta: dict[str, Any] | None = None,
    ) -> None:
        self._states = {name: state.to("cpu") for name, state in states.items()}
        self.fields = dict(fields)
        self.k = k
        self.unique = unique
        self.nms_threshold = nms_threshold
        self.num_images = num_images
        self.input_shape = tuple(input_shape)
        self.fingerprint = fingerprint
        self.meta = dict(meta or {})
        self._cache = CropCache(DEFAULT_CACHE_BYTES)
        self._inputs = InputChecks()  # remembers the data and models that passed
        # Per layer, what the exact sums give (their states never change once the result exists).
        self._means: dict[str, Tensor] = {}
        self._class_stats: dict[str, ClassStats] = {}

    # ---- access ---------------------------------------------------------------------

    @property
    def layers(self) -> list[str]:
        """The mined layers, in the order they were given."""
        return list(self._states)

    def _state(self, layer: str | nn.Module) -> tuple[str, TopKState]:
        if isinstance(layer, nn.Module):
            raise TypeError("pass the layer's name (see result.layers); modules are not stored in results")
        if not isinstance(layer, str):  # a list or dict is unhashable: refused here, not by the lookup
            raise TypeError(f"layer must be a layer name (one of {self.layers}), got {show(layer)}")
        if layer not in self._states:
            raise ValueError(f"layer {layer!r} was not mined; mined layers: {self.layers}")
        return layer, self._states[layer]

    def channels(self, layer: str) -> int:
        """Number of channels of ``layer``."""
        return self._state(layer)[1].values.shape[0]

    def _channel(self, state: TopKState, channel: int) -> int:
        checked = check_int(channel, "channel", minimum=0, maximum=state.values.shape[0] - 1)
        assert checked is not None  # None is refused: allow_none is off
        return checked

    def stats(self, layer: str) -> ChannelStats:
        """Per-channel max, mean and fraction of images active; ``.dead`` flags dead filters."""
        name, state = self._state(layer)
        if name not in self._means:  # the exact mean is Python integer arithmetic: once per layer
            self._means[name] = exact_mean(state.total, state.positions).float()
        active = state.active_images.double() / max(state.images, 1)
        return ChannelStats(
            state.maximum.clone(), self._means[name].clone(), active.float(), state.images, state.nan_count.clone()
        )

    # ---- crops and projections ----------------------------------------------------------

    def _field(self, layer: str) -> ReceptiveField:
        field = self.fields.get(layer)
        if field is None:
            raise ValueError(
                f"no receptive field is known for layer {layer!r} (see result.meta['field_errors']), so its "
                "records cannot be cropped"
            )
        return field

    def _selection(self, layer: str, channels: int | Sequence[int] | None) -> tuple[list[int], bool]:
        _, state = self._state(layer)
        if channels is None:
            return list(range(state.values.shape[0])), False
        if isinstance(channels, int):
            return [self._channel(state, channels)], True
        selection = [self._channel(state, c) for c in channels]
        if not selection:
            raise ValueError("channel is empty: pass a channel, a non-empty list of channels, or None for all")
        return selection, False

    def patches(
        self,
        data: Any,
        layer: str,
        channel: int | Sequence[int] | None = None,
        fill: float = 0.0,
        *,
        kind: str = "top",
        cls: int | None = None,
        q: float | None = None,
    ) -> Crops:
        """The input patches under the records' receptive fields.

        Args:
            data: the data that was mined (same order).
            layer: a mined layer.
            channel: one channel (result ``[k, C, h, w]``), a list, or None for all
                (result ``[channels, k, C, h, w]``).
            fill: value of pixels outside the image.
            kind, cls, q: which records, as in :meth:`records` (default: the top-k).

        Returns:
            :class:`Crops` (images and valid mask). Channels with fewer than k records
            are padded with ``fill`` and an all-False mask. The tensors are the caller's
            own (copies of the cached crops).

        Raises:
            ValueError: ``data`` is not the mined data (see :meth:`check_data`).

        Example:
            >>> crops = result.patches(data, "features.9", 12)  # doctest: +SKIP
            >>> crops.images.shape  # k patches of the channel's receptive-field size
            torch.Size([9, 3, 35, 35])
        """
        if isinstance(fill, bool) or not isinstance(fill, (int, float)):
            raise ValueError(f"fill must be a number, got {fill!r}")
        fill = float(fill)
        self._require_data(data)
        which = self._which(layer, kind, cls, q)
        return self._crops(
            ("patches", layer, fill, *which), None, data, layer, channel, fill, lambda images, _units: images, which
        )

    @autograd_inside
    def projections(
        self,
        model: nn.Module,
        data: Any,
        layer: str,
        channel: int | Sequence[int] | None = None,
        seed: str = "activation",
        rules: str = "zf",
        *,
        kind: str = "top",
        cls: int | None = None,
        q: float | None = None,
    ) -> Crops:
        """DeconvNet projections of the records, cropped to their receptive fields.

        Each record's unit is projected alone (seeded with its activation, or 1 with
        ``seed="one"``); records of the same image share one forward pass. Asking for
        the channels of a layer one at a time costs about what one call for the whole
        layer costs: the second request of a layer computes its missing channels in one
        batched pass (within :attr:`cache_limit`), and later requests are served from
        the cache.

        Args:
            model: the mined model.
            data: the data that was mined.
            layer: a mined layer.
            channel: as in :meth:`patches`.
            seed: ``"activation"`` or ``"one"``.
            rules: ``"zf"`` (DeconvNet) or ``"guided"``.
            kind, cls, q: which records, as in :meth:`records` (default: the top-k).

        Returns:
            :class:`Crops`: projections ``[k, C, h, w]`` (or ``[channels, k, C, h, w]``)
            and the valid mask, as in :meth:`patches`.

        Raises:
            ValueError: ``model`` is not the mined model (:meth:`check_model`) or ``data``
                not the mined data (:meth:`check_data`).

        Example:
            >>> for channel in range(result.channels("features.9")):  # doctest: +SKIP
            ...     projection = result.projections(model, data, "features.9", channel)
        """
        from .projection import project_records

        if seed not in ("activation", "one"):
            raise ValueError(f"seed must be 'activation' (Zeiler & Fergus) or 'one' (Captum), got {seed!r}")
        if not isinstance(rules, str):
            raise ValueError(f"rules must be the name of a rule set ('zf' or 'guided'), got {rules!r}")
        model = check_model(model)
        self._require_data(data, stacklevel=5)  # past autograd_inside; the model is checked in _crops

        def project(images: Tensor, units: Tensor) -> Tensor:
            # The data's images go to the model (a GPU model, CPU data); the crops are kept on the CPU.
            images = on_model_device(images, model)
            return project_records(model, layer, images, units, seed=cast(Any, seed), rules=rules).cpu()

        which = self._which(layer, kind, cls, q)
        return self._crops(
            ("projections", layer, seed, rules, *which), model, data, layer, channel, 0.0, project, which
        )

    def _which(self, layer: str, kind: str, cls: int | None, q: float | None) -> tuple[str, int | None, float | None]:
        """The records' selection, checked now (on channel 0) rather than halfway through the crops."""
        self.records(layer, 0, kind=kind, cls=cls, q=q)
        return kind, cls, q

    # ---- the crop cache -------------------------------------------------------------------

    @property
    def cache_limit(self) -> int:
        """Bytes of crops the result may keep for :meth:`patches` and :meth:`projections`.

        Default 256 MiB; 0 disables the cache. Lowering it evicts the least recently
        used channels at once. It also bounds how many channels one call computes ahead.
        """
        return self._cache.limit

    @cache_limit.setter
    def cache_limit(self, value: int) -> None:
        self._cache.limit = value

    def clear_cache(self) -> None:
        """Forget every cached patch and projection.

        The cache is keyed on the model (object, submodules, modes, parameters' and
        buffers' version counters and sampled values) and the data (object, length, and
        a tensor's version counter), so editing either is noticed. Call this after a
        change the key cannot see: a forward hook or patched ``forward`` added to the
        model, or a dataset whose items changed while it kept its identity and length.

        Example:
            >>> result.clear_cache()  # doctest: +SKIP
        """
        self._cache.clear()

    def cache_info(self) -> dict[str, int]:
        """The cache's state: ``entries`` (channel crops held), ``bytes``, ``limit``, ``hits``, ``misses``.

        Returns:
            A dict of ints; hits and misses count channels.

        Example:
            >>> result.cache_info()["bytes"] <= result.cache_limit  # doctest: +SKIP
            True
        """
        return self._cache.info()

    def _crops(
        self,
        group: tuple[Any, ...],
        model: nn.Module | None,
        data: Any,
        layer: str,
        channels: Any,
        fill: float,
        make: Callable[[Tensor, Tensor], Tensor],
        which: tuple[str, int | None, float | None] = ("top", None, None),
    ) -> Crops:
        selection, single = self._selection(layer, channels)
        slots = self.bottom_k if which[0] == "bottom" else self.k
        field = self._field(layer)
        stamp = self._cache.stamp(model, data)
        if model is not None:
            state = stamp.model_state if stamp is not None else None
            self._inputs.require_model(model, "model", self.fingerprint, state=state)
        if stamp is None:
            images, mask = self._compute_crops(data, layer, selection, fill, make, field, which, slots)
        else:
            found, missing, prefetch = self._cache.lookup(group, stamp, selection)
            if missing:
                per_channel = slots * (self.input_shape[0] * 4 + 1) * field.size[0] * field.size[1]
                # What one computation holds besides its crops: a full-size projection per record.
                per_channel = max(per_channel, slots * 4 * _numel(self.input_shape))
                todo = list(missing)
                if prefetch:  # a second request of this layer: compute ahead what the bound allows
                    todo += self._cache.prefetch_channels(group, missing, self.channels(layer), per_channel)
                computed, computed_mask = self._compute_crops(data, layer, todo, fill, make, field, which, slots)
                for i, c in enumerate(todo):
                    self._cache.store(group, c, computed[i], computed_mask[i])
                    if c in missing:
                        found[c] = (computed[i], computed_mask[i])
            images = torch.stack([found[c][0] for c in selection])
            mask = torch.stack([found[c][1] for c in selection])
        if single:
            return Crops(images[0], mask[0])
        return Crops(images, mask)

    def _compute_crops(
        self,
        data: Any,
        layer: str,
        selection: list[int],
        fill: float,
        make: Callable[[Tensor, Tensor], Tensor],
        field: ReceptiveField,
        which: tuple[str, int | None, float | None],
        slots: int,
    ) -> tuple[Tensor, Tensor]:
        """Crops ``[len(selection), slots, C, h, w]`` and masks of the selected channels' records."""
        kind, cls, q = which
        rows: list[tuple[int, int, Record]] = [
            (c, slot, record)
            for c in selection
            for slot, record in enumerate(self.records(layer, c, kind=kind, cls=cls, q=q))
        ]
        shape = (len(selection), slots, self.input_shape[0], *field.size)
        images = torch.full(shape, fill)
        mask = torch.zeros((len(selection), slots, *field.size), dtype=torch.bool)
        if rows:
            unique_indices = sorted({record.index for _, _, record in rows})
            where = {index: i for i, index in enumerate(unique_indices)}
            batch = _datasource.fetch(data, unique_indices)
            units = torch.tensor([[where[r.index], c, r.y, r.x] for c, _, r in rows], dtype=torch.long)
            sources = make(batch, units)
            position = {c: i for i, c in enumerate(selection)}
            for (c, slot, record), source in zip(rows, _per_row(sources, batch, units), strict=True):
                images[position[c], slot] = field.crop(source.float(), record.y, record.x, fill=fill)
                mask[position[c], slot] = field.valid_mask(record.y, record.x)
        return images, mask

    # ---- checks ---------------------------------------------------------------------

    def verify(self, model: nn.Module, data: Any, rtol: float = 1e-5, atol: float = 1e-6) -> int:
        """Re-run the forward pass for every record's image and check its value.

        Returns:
            The number of records checked.

        Raises:
            ValueError: ``data`` is not the mined data (see :meth:`check_data`), or the records
                are ranked by relevance (``rank_by="relevance"``), not activation.
            MiningVerificationError: listing the records whose value was not reproduced.
        """
        check_float(rtol, "rtol", minimum=0.0)
        check_float(atol, "atol", minimum=0.0)
        if self.rank_by != "activation":
            raise ValueError(
                f"verify checks activations, but this result's records are ranked by {self.rank_by} (rank_by="
                f"{self.rank_by!r}): their values are not activations"
            )
        self._require_data(data)
        indices = sorted(
            {r.index for layer in self.layers for c in range(self.channels(layer)) for r in self.records(layer, c)}
        )
        if not indices:
            return 0
        acts = layer_activations(model, self.layers, _datasource.fetch(data, indices))
        where = {index: i for i, index in enumerate(indices)}
        bad, checked = [], 0
        for layer in self.layers:
            maps = acts[layer].cpu()  # one copy per layer, not a device sync per record
            for c in range(self.channels(layer)):
                for record in self.records(layer, c):
                    fresh = float(maps[where[record.index], c, record.y, record.x])
                    checked += 1
                    if abs(fresh - record.value) > atol + rtol * abs(record.value):
                        bad.append(f"{layer}[{c}] {record}: forward gives {fresh}")
        if bad:
            raise MiningVerificationError(f"{len(bad)} of {checked} records not reproduced: " + "; ".join(bad[:5]))
        return checked

    def check_data(self, data: Any, argname: str = "data") -> None:
        """Refuse data that is not the data this result was mined on.

        :meth:`patches`, :meth:`projections` and :meth:`verify` call it first. It compares
        the data's length with the mined dataset's, and its fingerprint (a few images at
        fixed indices, and the file names of the package's folder and zip datasets; see
        docs/reliability.md) with the one recorded at mining. A result saved before
        fingerprints were recorded is checked by length only, with a warning that says so.
        A data object that passed is not fingerprinted again while its length (and, for a
        tensor, its contents' version) stays the same.

        Args:
            data: a tensor, Dataset or DataLoader.
            argname: the name to use in messages.

        Raises:
            ValueError: ``data`` has another length, records refer past its end, or its
                images differ from the mined data's.
            TypeError: ``data`` is no tensor, map-style Dataset or DataLoader.

        Example:
            >>> result.check_data(default_sample())  # doctest: +SKIP
        """
        self._require_data(data, argname)

    def _require_data(self, data: Any, argname: str = "data", stacklevel: int = 4) -> None:
        """:meth:`check_data`, for the public methods (warnings point at their caller; ``stacklevel`` counts
        from ``InputChecks.require_data``: 4 is the caller of a public method that calls this one)."""
        length = self.meta.get("dataset_length")
        if length is None and self._shards()[0] == 1:
            length = self.num_images
        recorded = self.meta.get("data_fingerprint")
        self._inputs.require_data(
            data, argname, length=length, recorded=recorded, last_index=self._last_index, stacklevel=stacklevel
        )

    def check_model(self, model: nn.Module, argname: str = "model") -> None:
        """Refuse a model other than the one this result was mined with.

        :meth:`projections` calls it first. The model's :func:`model_fingerprint` (names,
        shapes and values of its parameters and buffers) must equal the result's. A model
        that passed is not hashed again while its parameters and buffers stay unchanged.

        Args:
            model: the model (a ``torch.compile`` wrapper is unwrapped).
            argname: the name to use in messages.

        Raises:
            ValueError: other weights, buffers or structure.
            TypeError: ``model`` is not an ``nn.Module``.

        Example:
            >>> result.check_model(load_default_model())  # doctest: +SKIP
        """
        self._inputs.require_model(model, argname, self.fingerprint)

    def _last_index(self) -> int:
        """The largest dataset index any record refers to (-1 without records)."""
        last = -1
        for state in self._states.values():
            if state.key.numel():
                last = max(last, int(state.key.max()) // (state.height * state.width))
        return last

    # ---- merging ----------------------------------------------------------------------

    @classmethod
    def merge(cls, results: Sequence[MiningResult]) -> MiningResult:
        """The exact result of mining the union of the shards' images.

        Per-channel top-k lists merge by the same ranking as one run (value, then lower
        index, y, x), and statistics merge from exact sums and counts, so the merge of
        the shards of a run equals the single run, bit for bit. ``a | b`` is
        ``MiningResult.merge([a, b])``.

        Raises:
            ValueError: the results disagree on model, layers, k, uniqueness, input
                shape or dataset, or hold the same shard twice.
        """
        if isinstance(results, MiningResult) or not isinstance(results, Sequence):
            raise TypeError(f"results must be a list of MiningResult, got {type(results).__name__}")
        results = list(results)
        if not results:
            raise ValueError("results is empty: merge needs at least one result")
        for i, result in enumerate(results):
            if not isinstance(result, MiningResult):
                raise TypeError(f"results[{i}] must be a MiningResult, got {type(result).__name__}")
        first = results[0]
        for other in results[1:]:
            for what, a, b in (
                ("model", first.fingerprint, other.fingerprint),
                ("layers", first.layers, other.layers),
                ("k", first.k, other.k),
                ("unique", (first.unique, first.nms_threshold), (other.unique, other.nms_threshold)),
                ("input shape", first.input_shape, other.input_shape),
                ("dataset length", first.meta.get("dataset_length"), other.meta.get("dataset_length")),
                ("world size", first._shards()[0], other._shards()[0]),
                ("exemplar options", first.meta.get("exemplars"), other.meta.get("exemplars")),
            ):
                if a != b:
                    raise ValueError(f"cannot merge results that differ in {what}: {a!r} vs {b!r}")
        first_data = first.meta.get("data_fingerprint")
        for other in results[1:]:
            other_data = other.meta.get("data_fingerprint")
            if first_data is not None and other_data is not None:
                reason = dataset_mismatch(first_data, other_data)
                if reason is not None:
                    raise ValueError(f"cannot merge results mined on different data: one data {reason}")
        ranks = [rank for r in results for rank in r._shards()[1]]
        if len(set(ranks)) != len(ranks):
            twice = sorted({x for x in ranks if ranks.count(x) > 1})
            raise ValueError(
                f"results holds shard(s) {twice} twice (the same result given twice?): merge each shard once"
            )
        states = {}
        for name in first.layers:
            merged = first._states[name].to("cpu")
            for other in results[1:]:
                merged.merge(other._states[name])
            states[name] = merged
        meta = dict(first.meta)
        meta["shards"] = {"world": first._shards()[0], "ranks": sorted(ranks)}
        return cls(
            states,
            first.fields,
            k=first.k,
            unique=first.unique,
            nms_threshold=first.nms_threshold,
            num_images=sum(r.num_images for r in results),
            input_shape=first.input_shape,
            fingerprint=first.fingerprint,
            meta=meta,
        )

    def __or__(self, other: MiningResult) -> MiningResult:
        return MiningResult.merge([self, other])

    def _shards(self) -> tuple[int, list[int]]:
        shards = self.meta.get("shards") or {"world": 1, "ranks": [0]}
        return int(shards["world"]), [int(r) for r in shards["ranks"]]

    # ---- persistence ----------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the result to ``path`` (tensors and plain values only: no pickled code).

        The file loads with :meth:`load` (``torch.load(..., weights_only=True)``). It
        carries a checksum of its contents, so a damaged file is refused on load. Written
        atomically: a crash never leaves a half-written file, and the temporary files a
        killed save leaves are removed by the next save to the same path.

        Args:
            path: the file to write.

        Example:
            >>> result.save("result.pt")  # doctest: +SKIP
        """
        atomic_save(add_checksum(self.to_dict()), check_output_file(path, "path"))

    def to_dict(self) -> dict[str, Any]:
        """The result as plain values and CPU tensors: what :meth:`save` writes.

        Returns:
            A dict that ``torch.save`` and ``torch.distributed.all_gather_object`` carry and
            :meth:`from_dict` turns back into an equal result.

        Example:
            >>> MiningResult.from_dict(result.to_dict()).layers == result.layers  # doctest: +SKIP
            True
        """
        return result_payload(
            self._states,
            self.fields,
            k=self.k,
            unique=self.unique,
            nms_threshold=self.nms_threshold,
            num_images=self.num_images,
            input_shape=list(self.input_shape),
            fingerprint=self.fingerprint,
            meta=self.meta,
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> MiningResult:
        """Read a result written by :meth:`save`.

        Files of older releases (without a checksum or a data fingerprint) still load.

        Args:
            path: the file.

        Returns:
            The result (its crop cache empty).

        Raises:
            TypeError: ``path`` is not a path.
            FileNotFoundError: no file at ``path``.
            ValueError: the file is truncated, damaged (its checksum does not match), not
                a saved result, or inconsistent; the message names the file.

        Example:
            >>> result = MiningResult.load("result.pt")  # doctest: +SKIP
        """
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a file path (str or os.PathLike), got {type(path).__name__}")
        payload = read_payload(Path(path), RESULT_FORMAT, "saved MiningResult", RESULT_KEYS, set())
        try:
            return cls.from_dict(payload)
        except ValueError as err:
            raise ValueError(f"{path} is a corrupt saved MiningResult: {err}") from None

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> MiningResult:
        """The result :meth:`to_dict` described (its crop cache starts empty).

        Args:
            payload: what :meth:`to_dict` returned.

        Returns:
            The result.

        Raises:
            ValueError: the payload misses a key or is inconsistent (shapes, ranking,
                records of images that were not mined); the message says what.

        Example:
            >>> MiningResult.from_dict(result.to_dict()).k == result.k  # doctest: +SKIP
            True
        """
        arguments = result_arguments(payload)
        return cls(arguments.pop("states"), arguments.pop("fields"), **arguments)

    # ---- display --------------------------------------------------------------------

    def _summary_rows(self) -> list[tuple[str, ...]]:
        rows: list[tuple[str, ...]] = []
        for name in self.layers:
            stats = self.stats(name)
            field = self.fields.get(name)
            rf = "x".join(map(str, field.size)) if field is not None else "?"
            best = float(stats.maximum.max()) if len(stats.maximum) else float("nan")
            row: tuple[str, ...] = (name, str(len(stats.maximum)), str(int(stats.dead.sum())), rf, f"{best:.4g}")
            if self.has_labels:
                selectivity = self.class_stats(name).selectivity
                defined = selectivity[~torch.isnan(selectivity)]
                row += (f"{float(defined.mean()):.3f}" if len(defined) else "n/a",)
            rows.append(row)
        return rows

    def _header(self) -> str:
        kept = [f"k={self.k}", f"unique={self.unique!r}", f"images={self.num_images}", f"input={self.input_shape}"]
        if self.rank_by != "activation":
            kept.append(f"rank_by={self.rank_by!r}")
        if self.has_labels:
            kept.append("labels")
        if self.bottom_k:
            kept.append(f"bottom_k={self.bottom_k}")
        return ", ".join(kept)

    def __repr__(self) -> str:
        lines = [f"MiningResult({self._header()})"]
        for row in self._summary_rows():
            name, channels, dead, rf, best = row[:5]
            line = f"  {name}: {channels} channels, {dead} dead, field {rf}, max activation {best}"
            lines.append(line + (f", mean selectivity {row[5]}" if len(row) > 5 else ""))
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        """A table of the layers, and a link to the explorer where one was written for this result."""
        columns = ["layer", "channels", "dead", "field", "max activation"]
        columns += ["mean selectivity"] if self.has_labels else []
        head = "".join(f"<th>{h}</th>" for h in columns)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in row) + "</tr>"
            for row in self._summary_rows()
        )
        title = html.escape(f"MiningResult: {self._header()}")
        link = ""
        explorer = self.meta.get("explorer")
        if isinstance(explorer, str) and Path(explorer).is_file():
            # Relative where it can be: Jupyter serves files under its root, and a page served over
            # http may not follow a file:// link.
            try:
                href = Path(os.path.relpath(explorer)).as_posix()
            except ValueError:  # another drive
                href = Path(explorer).resolve().as_uri()
            uri = html.escape(urllib.parse.quote(href, safe="/:"), quote=True)
            link = f' <a href="{uri}" target="_blank" rel="noopener">open the explorer</a>'
        return f"<div><b>{title}</b>{link}<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"


def _numel(shape: Sequence[int]) -> int:
    count = 1
    for size in shape:
        count *= int(size)
    return count


def _per_row(sources: Tensor, batch: Tensor, units: Tensor) -> list[Tensor]:
    """One full-size tensor per row: the source image, or the row's projection."""
    if sources is batch:
        return [batch[int(i)] for i in units[:, 0]]
    return list(sources)
