"""Uniform access to what users pass as ``data``: a tensor, a Dataset or a DataLoader.

Records refer to dataset indices, so data must be indexable and iterated in order. A
dataset whose ``__len__`` promises more items than ``dataset[i]`` gives is named as
such (a ``ValueError`` with the index and the length), not left as its own IndexError.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset, SequentialSampler

from ._guard import check_dense

__all__ = ["batches", "check_data", "fetch", "label_of", "labelled_batches", "length"]


def check_data(data: Any, argname: str = "data") -> None:
    if isinstance(data, Tensor):
        if data.dim() < 2:
            raise ValueError(
                f"{argname} must be a tensor [N, C, H, W] (or a Dataset/DataLoader), got {tuple(data.shape)}"
            )
        check_dense(data, argname)
        if data.is_complex():  # refused before its fingerprint silently drops the imaginary part
            raise TypeError(f"{argname} must be a real floating-point tensor (images), got {data.dtype}")
        return
    if isinstance(data, DataLoader):
        if isinstance(data.dataset, IterableDataset):
            raise TypeError(f"{argname} is a DataLoader over an IterableDataset: records need indexable data")
        if not isinstance(data.sampler, SequentialSampler):
            raise ValueError(
                f"{argname} is a DataLoader with a {type(data.sampler).__name__}: records refer to dataset indices, "
                "so it must iterate in order (shuffle=False)"
            )
        return
    if isinstance(data, IterableDataset) or not isinstance(data, Dataset):
        raise TypeError(f"{argname} must be a Tensor, a map-style Dataset or a DataLoader, got {type(data).__name__}")


def length(data: Any) -> int:
    if isinstance(data, DataLoader):
        return len(data.dataset)  # type: ignore[arg-type]
    return len(data)


def _image_of(item: Any, index: int) -> Tensor:
    image = item[0] if isinstance(item, (tuple, list)) else item
    if not isinstance(image, Tensor):
        raise TypeError(
            f"data[{index}] gives a {type(image).__name__}, not a tensor: give the dataset a transform that "
            "returns tensors (e.g. captum_deconvviz.zoo.default_transform())"
        )
    check_dense(image, f"data[{index}]")
    return image


def _item(dataset: Any, index: int) -> Any:
    """``dataset[index]``; an IndexError or KeyError there means ``len(dataset)`` promised too much."""
    try:
        return dataset[index]
    except (IndexError, KeyError) as err:
        raise ValueError(
            f"data[{index}] raised {type(err).__name__}: {' '.join(str(err).split())} although len(data) is "
            f"{len(dataset)}: the dataset's __len__ must count exactly the items it holds"
        ) from None


class _Items(Dataset):
    """The items of ``dataset`` at ``indices``, in order, fetched by :func:`_item`."""

    def __init__(self, dataset: Any, indices: Sequence[int]) -> None:
        self.dataset, self.indices = dataset, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> Any:
        index = self.indices[position]
        return index, _item(self.dataset, index)


def fetch(data: Any, indices: Tensor | list[int]) -> Tensor:
    """The images at ``indices`` as one batch."""
    indices = [int(i) for i in indices]
    if isinstance(data, Tensor):
        return data[indices]
    dataset = data.dataset if isinstance(data, DataLoader) else data
    images = [_image_of(_item(dataset, i), i) for i in indices]
    return _stack(images, indices[0] if indices else 0)


def _stack(images: list[Tensor], first: int) -> Tensor:
    shapes = {tuple(image.shape) for image in images}
    if len(shapes) > 1:
        raise ValueError(
            f"images of different sizes in one batch (near index {first}: {sorted(shapes)}); resize them to one "
            "size, e.g. with torchvision.transforms.Resize and CenterCrop"
        )
    return torch.stack(images)


def _collate(items: list[tuple[int, Any]]) -> Tensor:
    return _stack([_image_of(item, index) for index, item in items], items[0][0] if items else 0)


def label_of(item: Any, index: int) -> int:
    """The class label of ``data[index]`` (an ``(image, label)`` item); -1 means unknown."""
    label = item[1] if isinstance(item, (tuple, list)) and len(item) >= 2 else None
    if isinstance(label, Tensor) and label.numel() == 1 and not label.is_floating_point() and not label.is_complex():
        label = label.item()
    # A tensor left here holds several values (multi-label) or floats: its __index__ would raise torch's error.
    if label is not None and hasattr(label, "__index__") and not isinstance(label, (bool, Tensor)):
        value = int(label.__index__())
        if value >= -1:
            return value
    raise ValueError(
        f"labels=True, but data[{index}] gives no class label (an int >= 0, or -1 for unknown) as the "
        f"second element of an (image, label) item; got {type(item).__name__}"
        + (f" with {label!r:.40}" if label is not None else "")
        + ": pass labels as a LongTensor instead"
    )


def _collate_labelled(items: list[tuple[int, Any]]) -> tuple[Tensor, Tensor]:
    labels = torch.tensor([label_of(item, index) for index, item in items], dtype=torch.long)
    return _collate(items), labels


def batches(
    data: Any, batch_size: int, start: int = 0, num_workers: int = 0, order: Sequence[int] | None = None
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield ``(dataset indices [B], images)`` in dataset order.

    Args:
        data: a tensor, Dataset or DataLoader.
        batch_size: images per batch (a DataLoader keeps its own).
        start: skip the first ``start`` images of ``order``.
        num_workers: DataLoader workers for a Dataset.
        order: the dataset indices to visit, ascending (default: all of them).
    """
    for index, images, _ in labelled_batches(data, batch_size, start, num_workers, order, None):
        yield index, images


def labelled_batches(
    data: Any,
    batch_size: int,
    start: int = 0,
    num_workers: int = 0,
    order: Sequence[int] | None = None,
    labels: Tensor | bool | None = None,
) -> Iterator[tuple[Tensor, Tensor, Tensor | None]]:
    """:func:`batches` with each batch's labels: ``(indices [B], images, labels [B] or None)``.

    ``labels``: None (no labels), a LongTensor over the whole dataset, or True to read each
    item's second element (:func:`label_of`).
    """
    indices = list(range(length(data))) if order is None else list(order)
    indices = indices[start:]
    given = labels if isinstance(labels, Tensor) else None
    if isinstance(data, Tensor):
        for first in range(0, len(indices), batch_size):
            chosen = indices[first : first + batch_size]
            index = torch.tensor(chosen, dtype=torch.long)
            images = data[chosen] if order is not None else data[chosen[0] : chosen[-1] + 1]
            yield index, images, given[index] if given is not None else None
        return
    dataset = data.dataset if isinstance(data, DataLoader) else data
    read = labels is True
    loader = DataLoader(
        _Items(dataset, indices),
        batch_size=(data.batch_size or 1) if isinstance(data, DataLoader) else batch_size,
        num_workers=data.num_workers if isinstance(data, DataLoader) else num_workers,
        collate_fn=_collate_labelled if read else _collate,
        pin_memory=data.pin_memory if isinstance(data, DataLoader) else False,
    )
    position = 0
    for batch in loader:
        images, read_labels = batch if read else (batch, None)
        chosen = indices[position : position + len(images)]
        position += len(images)
        index = torch.tensor(chosen, dtype=torch.long)
        yield index, images, read_labels if read else (given[index] if given is not None else None)
