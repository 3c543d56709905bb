"""The per-channel crop cache of a :class:`~captum_deconvviz.MiningResult`.

``result.patches(data, layer, c)`` and ``result.projections(model, data, layer, c)`` called
channel by channel (as a notebook or ``plot_topk`` does) would each fetch and project the
records of one channel: many small passes instead of one batched pass. The cache keeps each
channel's crops once computed, and from the second request on for a layer it computes the
channels still missing in one batched call, as many as the memory bound allows.

Entries are keyed by what produced them, so a stale crop is never served:

* the group: ``(kind, layer, options)``: ``"patches"`` with ``fill``, or ``"projections"``
  with ``seed`` and ``rules``;
* the model (projections only): the very object (a weak reference, never an ``id`` that a
  new object could reuse), every submodule's name, identity, type and ``training`` flag, and
  every parameter's and buffer's name, identity, storage address, shape, dtype, device,
  version counter (bumped by every in-place change: optimizer steps, ``load_state_dict``,
  ``with torch.no_grad(): w.mul_(2)``) and a sample of up to 32 evenly spaced values (which
  catches writes through ``.data``, which do not bump the version counter);
* the data: the very object (the dataset of a DataLoader), its length and, for a tensor, its
  storage address, shape, strides, dtype, device and version counter.

What the key cannot see: forward hooks or monkey-patched ``forward`` methods added to the
model, a dataset whose items change while it keeps its identity and length (a new transform,
files rewritten on disk), and writes through ``.data`` that miss all sampled values. After
such changes call ``result.clear_cache()``.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Hashable, Sequence, Sized
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

#: Default bound on the bytes of crops kept per result (images and masks, all layers and kinds).
DEFAULT_CACHE_BYTES = 256 * 2**20
_SAMPLES_PER_TENSOR = 32


def _tensor_state(tensor: Tensor) -> tuple[Any, ...]:
    return (
        id(tensor),
        tensor.data_ptr(),
        tuple(tensor.shape),
        tuple(tensor.stride()),
        tensor.dtype,
        tensor.device,
        # An inference tensor has no version counter, so an in-place edit of it could not be
        # seen: such data (or weights) are never cached (see ResultCache.stamp).
        None if tensor.is_inference() else tensor._version,
    )


def _has_inference_tensors(model: nn.Module | None, data: Any) -> bool:
    owner = data.dataset if isinstance(data, DataLoader) else data
    if isinstance(owner, Tensor) and owner.is_inference():
        return True
    return model is not None and any(t.is_inference() for t in (*model.parameters(), *model.buffers()))


def model_state(model: nn.Module) -> tuple[Any, ...]:
    """A cheap fingerprint of the model's structure, modes and parameter/buffer contents.

    Args:
        model: the model.

    Returns:
        A hashable tuple that changes when a submodule is replaced, a ``training`` flag
        flips, or a parameter or buffer is replaced or changed in place (see the module
        documentation for what it cannot see).

    Example:
        >>> model = nn.Linear(2, 2)
        >>> before = model_state(model)
        >>> with torch.no_grad():
        ...     _ = model.weight.mul_(2)
        >>> model_state(model) == before
        False
    """
    modules = tuple((name, id(m), type(m), m.training) for name, m in model.named_modules())
    tensors = [(name, t) for name, t in (*model.named_parameters(), *model.named_buffers())]
    samples = []
    for _, t in tensors:
        flat = t.detach().reshape(-1)
        if flat.is_complex():
            flat = torch.view_as_real(flat).reshape(-1)
        if flat.numel():
            step = max(1, flat.numel() // _SAMPLES_PER_TENSOR)
            samples.append(flat[::step][:_SAMPLES_PER_TENSOR].to(torch.float64))
    # Compared as bit patterns, so a NaN weight still equals itself.
    values = tuple(torch.cat(samples).cpu().view(torch.int64).tolist()) if samples else ()
    return modules, tuple((name, *_tensor_state(t)) for name, t in tensors), values


def data_state(data: Any) -> tuple[Any, Any]:
    """The data's owner object (a DataLoader's dataset) and a fingerprint of it."""
    owner = data.dataset if isinstance(data, DataLoader) else data
    if isinstance(owner, Tensor):
        return owner, ("tensor", *_tensor_state(owner))
    return owner, ("dataset", id(owner), type(owner), len(cast(Sized, owner)))


@dataclass
class _Stamp:
    """What one group's entries were computed from."""

    model: Any  # weakref.ref or None
    model_state: Any
    data: Any  # weakref.ref
    data_state: Any

    def matches(self, other: _Stamp) -> bool:
        same_model = (self.model is None and other.model is None) or (
            self.model is not None and other.model is not None and self.model() is other.model()
        )
        return (
            same_model
            and self.data() is other.data()
            and self.model_state == other.model_state
            and self.data_state == other.data_state
        )


@dataclass
class _Group:
    stamp: _Stamp
    requests: int = 0
    channels: set[int] = field(default_factory=set)


class CropCache:
    """An LRU cache of per-channel ``(images, mask)`` crops, bounded in bytes."""

    def __init__(self, limit: int = DEFAULT_CACHE_BYTES) -> None:
        self.limit = limit
        self._entries: OrderedDict[tuple[Hashable, int], tuple[Tensor, Tensor]] = OrderedDict()
        self._groups: dict[Hashable, _Group] = {}
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    @property
    def limit(self) -> int:
        """The bound on the bytes kept; 0 disables the cache."""
        return self._limit

    @limit.setter
    def limit(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"cache_limit must be an int >= 0 (bytes; 0 disables the cache), got {value!r}")
        self._limit = value
        if hasattr(self, "_entries"):
            self._evict()

    def clear(self) -> None:
        """Drop every entry (statistics of hits and misses are kept)."""
        self._entries.clear()
        self._groups.clear()
        self.bytes = 0

    def info(self) -> dict[str, int]:
        """Entries (channel crops), bytes held, the limit, hits and misses so far."""
        return {
            "entries": len(self._entries),
            "bytes": self.bytes,
            "limit": self.limit,
            "hits": self.hits,
            "misses": self.misses,
        }

    def stamp(self, model: nn.Module | None, data: Any) -> _Stamp | None:
        """What a computation from ``model`` and ``data`` depends on; None if it cannot be cached."""
        if self.limit == 0 or _has_inference_tensors(model, data):
            return None
        owner, state = data_state(data)
        try:
            data_ref = weakref.ref(owner)
            model_ref = weakref.ref(model) if model is not None else None
        except TypeError:  # an object without weak references: never cached
            return None
        return _Stamp(model_ref, model_state(model) if model is not None else None, data_ref, state)

    def lookup(
        self, group_key: Hashable, stamp: _Stamp, channels: Sequence[int]
    ) -> tuple[dict[int, tuple[Tensor, Tensor]], list[int], bool]:
        """The cached crops among ``channels``, the missing channels, and whether to prefetch.

        A group computed from another model, model state or data is dropped first. The
        first request of a group computes only what it asks for; later misses prefetch.
        """
        group = self._groups.get(group_key)
        if group is not None and not group.stamp.matches(stamp):
            self._drop_group(group_key)
            group = None
        if group is None:
            group = self._groups[group_key] = _Group(stamp)
        prefetch = group.requests > 0
        group.requests += 1
        found, missing = {}, []
        for channel in dict.fromkeys(channels):
            entry = self._entries.get((group_key, channel))
            if entry is None:
                missing.append(channel)
            else:
                self._entries.move_to_end((group_key, channel))
                found[channel] = entry
        self.hits += len(found)
        self.misses += len(missing)
        return found, missing, prefetch

    def prefetch_channels(
        self, group_key: Hashable, missing: list[int], total: int, bytes_per_channel: int
    ) -> list[int]:
        """Channels to compute with ``missing``: the uncached ones after them, within the bound."""
        room = self.limit // max(1, bytes_per_channel) - len(missing)
        if room <= 0:
            return []
        cached = self._groups[group_key].channels
        start = max(missing) + 1 if missing else 0
        wanted = set(missing)
        extra = []
        for offset in range(total):
            channel = (start + offset) % total
            if channel not in cached and channel not in wanted:
                extra.append(channel)
                if len(extra) == room:
                    break
        return extra

    def store(self, group_key: Hashable, channel: int, images: Tensor, mask: Tensor) -> None:
        """Keep a channel's crops (copies), evicting the least recently used beyond the bound."""
        size = images.numel() * images.element_size() + mask.numel() * mask.element_size()
        group = self._groups.get(group_key)
        if group is None or size > self.limit:
            return
        key = (group_key, channel)
        if key in self._entries:
            self._forget(key)
        self._entries[key] = (images.clone(), mask.clone())
        group.channels.add(channel)
        self.bytes += size
        self._evict()

    def _evict(self) -> None:
        while self.bytes > self.limit and self._entries:
            self._forget(next(iter(self._entries)))

    def _forget(self, key: tuple[Hashable, int]) -> None:
        images, mask = self._entries.pop(key)
        self.bytes -= images.numel() * images.element_size() + mask.numel() * mask.element_size()
        group = self._groups.get(key[0])
        if group is not None:
            group.channels.discard(key[1])

    def _drop_group(self, group_key: Hashable) -> None:
        for key in [key for key in self._entries if key[0] == group_key]:
            self._forget(key)
        del self._groups[group_key]
