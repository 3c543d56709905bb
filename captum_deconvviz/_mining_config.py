"""The arguments of :func:`~captum_deconvviz.mine_topk`, checked once, as a frozen config.

:func:`mining_config` validates everything the caller passed before any image is read
or any model work is done, so a wrong argument fails at once with the message the
public API documents; the rest of mining reads the config and never re-checks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from . import _datasource, _distributed
from ._checkpoint import shard_path
from ._checks import check_bool, check_choice, check_device, check_float, check_int, check_output_file
from ._exemplar_state import ExemplarOptions
from ._forward import model_device, resolve_layer
from ._guard import check_dense
from ._relevance import Target, check_target

__all__ = ["MiningConfig", "Nan", "RankBy", "Unique", "mining_config"]

Unique = Literal["image", "none", "nms"]
Nan = Literal["raise", "skip"]
RankBy = Literal["activation", "relevance"]

#: Images per channel behind the class histogram when ``class_top_n`` is not given: the
#: strongest tenth of the data, at most this many and at least k. A fixed 100 on 40 images
#: counted every image, so every channel's histogram was the data's class mix.
CLASS_TOP_N = 100


@dataclass(frozen=True)
class MiningConfig:
    """Validated mining arguments.

    Attributes:
        layers: the layer specs, in the order given (no repeats).
        k: records per channel.
        unique: ``"image"``, ``"none"`` or ``"nms"``.
        nms_threshold: IoU above which two records of an image conflict.
        nan: ``"raise"`` or ``"skip"``.
        batch_size: images per forward pass (a DataLoader keeps its own).
        num_workers: DataLoader workers for a Dataset.
        device: where to mine.
        progress: show a progress bar (rank 0 only under ``torch.distributed``).
        checkpoint: this shard's checkpoint file, or None.
        checkpoint_every: seconds between checkpoint saves.
        verify: re-run the forward on every record's image at the end.
        num_images: the length of the whole dataset.
        rank: this shard's rank.
        world: the number of shards.
        distributed: the shard comes from an initialized process group, whose ranks merge.
        exemplars: what to keep beyond the top-k (class statistics, bottom-k, ...).
        labels: the labels: None, True (read from the data) or a LongTensor [N].
        rank_by: ``"activation"`` or ``"relevance"``.
        target: the relevance's target (``rank_by="relevance"``), else None.
        class_names: the data's class names where it has them (``data.classes``).
    """

    layers: tuple[str, ...]
    k: int
    unique: Unique
    nms_threshold: float
    nan: Nan
    batch_size: int
    num_workers: int
    device: torch.device
    progress: bool
    checkpoint: Path | None
    checkpoint_every: float
    verify: bool
    num_images: int
    rank: int
    world: int
    distributed: bool
    exemplars: ExemplarOptions = field(default_factory=ExemplarOptions)
    labels: Any = None
    rank_by: RankBy = "activation"
    target: Target | None = None
    class_names: tuple[str, ...] | None = None

    @property
    def order(self) -> range:
        """The dataset indices this shard mines, ascending."""
        return range(self.rank, self.num_images, self.world)

    @property
    def merges_all(self) -> bool:
        """The result covers the whole dataset (one shard, or every rank merged)."""
        return self.world == 1 or self.distributed

    def identity(self, input_shape: tuple[int, ...], fingerprint: str) -> dict[str, Any]:
        """What a checkpoint must match to be resumed, and every rank must agree on.

        The keys are those of the checkpoint format; do not rename them (old files resume).
        """
        identity: dict[str, Any] = {
            "layers": list(self.layers),
            "k": self.k,
            "unique": self.unique,
            "nms_threshold": self.nms_threshold,
            "nan": self.nan,
            "num_images": self.num_images,
            "input_shape": list(input_shape),
            "model": fingerprint,
            "shard": [self.rank, self.world],
        }
        if self.exemplars.any or self.rank_by != "activation":  # absent from older checkpoints: they resume
            identity["exemplars"] = {**self.exemplars.to_dict(), "rank_by": self.rank_by, "target": self.target}
            if isinstance(self.labels, Tensor):  # given labels: a checkpoint of other labels is not resumed
                digest = hashlib.sha256(self.labels.cpu().numpy().tobytes()).hexdigest()[:16]
                identity["exemplars"]["labels"] = f"tensor:{digest}"
        return identity


def mining_config(
    model: nn.Module,
    layers: str | nn.Module | Sequence[str | nn.Module],
    data: Any,
    *,
    k: int,
    unique: Unique,
    batch_size: int,
    device: str | torch.device | None,
    progress: bool,
    checkpoint: str | Path | None,
    nms_threshold: float,
    nan: Nan,
    checkpoint_every: float,
    num_workers: int,
    verify: bool,
    shard: tuple[int, int] | None,
    labels: Any = None,
    by_class: bool = False,
    bottom_k: int = 0,
    rank_by: RankBy = "activation",
    target: Any = None,
    class_top_n: int | None = None,
    quantiles: bool = False,
) -> MiningConfig:
    """Check :func:`~captum_deconvviz.mine_topk`'s arguments (in its documented order) into a config.

    Args:
        model: the (checked) model, for layer names and the default device.
        layers, data, k, unique, batch_size, device, progress, checkpoint, nms_threshold,
            nan, checkpoint_every, num_workers, verify, shard, labels, by_class, bottom_k,
            rank_by, target, class_top_n, quantiles: as :func:`mine_topk` takes them.

    Returns:
        The frozen :class:`MiningConfig`.

    Raises:
        ValueError, TypeError: the first argument that is wrong, with what was expected.

    Example:
        >>> config = mining_config(model, ["features.1"], images, k=9, unique="image", batch_size=64,
        ...     device=None, progress=False, checkpoint=None, nms_threshold=0.5, nan="raise",
        ...     checkpoint_every=60.0, num_workers=0, verify=False, shard=None)  # doctest: +SKIP
        >>> config.layers
        ('features.1',)
    """
    names = _layer_names(model, layers)
    _check_options(k, unique, batch_size, num_workers, nan, nms_threshold, progress, verify, checkpoint_every)
    mining_device = check_device(device) if device is not None else _default_device(model)
    checkpoint_path = _check_checkpoint(checkpoint)
    _datasource.check_data(data)
    total = _datasource.length(data)
    if total == 0:
        raise ValueError("data is empty: there is nothing to mine")
    distributed = shard is None and _distributed.active()
    rank, world = _check_shard(_distributed.rank_and_world() if distributed else shard)
    if len(range(rank, total, world)) == 0:
        raise ValueError(f"shard {rank} of {world} holds no images: the data has only {total}")
    labels = _check_labels(labels, data, total)
    exemplars = _exemplar_options(labels is not None, by_class, bottom_k, rank_by, class_top_n, quantiles, k, total)
    if rank_by == "relevance":
        target = check_target(target, labels is not None)
        if target == "label" and isinstance(labels, Tensor):
            # Every rank checks all labels (they refuse together); a shard given by hand, its own images.
            _check_every_label(labels if distributed else labels[rank::world], 1 if distributed else world, rank)
        if verify:
            raise ValueError(
                "verify=True re-runs the forward to check activations; it cannot check rank_by='relevance'"
            )
    elif target is not None:
        raise ValueError(f"target={target!r:.40} is used only with rank_by='relevance' (rank_by is {rank_by!r})")
    return MiningConfig(
        layers=tuple(names),
        k=k,
        unique=unique,
        nms_threshold=nms_threshold,
        nan=nan,
        batch_size=batch_size,
        num_workers=num_workers,
        device=mining_device,
        progress=(progress and rank == 0) if distributed else progress,
        checkpoint=shard_path(checkpoint_path, rank, world) if checkpoint_path is not None else None,
        checkpoint_every=checkpoint_every,
        verify=verify,
        num_images=total,
        rank=rank,
        world=world,
        distributed=distributed,
        exemplars=exemplars,
        labels=labels,
        rank_by=rank_by,
        target=target,
        class_names=_class_names(data) if labels is not None else None,
    )


def _check_labels(labels: Any, data: Any, total: int) -> Tensor | bool | None:
    """None, True (read from the data's items) or a LongTensor [N] of labels >= -1 (-1: unknown)."""
    if labels is None or labels is False:
        return None
    if labels is True:
        if isinstance(data, Tensor):
            raise TypeError(
                "labels=True reads labels from (image, label) items, but data is a tensor of images: pass labels as "
                "a LongTensor [N] instead"
            )
        dataset = data.dataset if isinstance(data, DataLoader) else data
        _datasource.label_of(dataset[0], 0)  # refused now, not after the first batch's forward pass
        return True
    if not isinstance(labels, Tensor):
        raise TypeError(f"labels must be None, True or a LongTensor [N], got {type(labels).__name__}")
    check_dense(labels, "labels")  # a meta or sparse tensor has no values to read
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool or labels.dim() != 1:
        raise ValueError(f"labels must be an integer tensor [N], got {labels.dtype} {list(labels.shape)}")
    if len(labels) != total:
        raise ValueError(f"labels holds {len(labels)} labels, but data holds {total} images")
    if len(labels) and int(labels.min()) < -1:
        raise ValueError(f"labels must be class indices >= 0 (or -1 for unknown), got {int(labels.min())}")
    return labels.long().cpu()


def _check_every_label(labels: Tensor, step: int, first: int) -> None:
    """Refuse, before any work, ``target="label"`` with images labelled -1 (unknown) among those mined.

    Mining would stop at the first batch that holds one, maybe hours in.
    """
    unknown = (labels < 0).nonzero().flatten()
    if len(unknown):
        index = first + step * int(unknown[0]) if step > 1 else int(unknown[0])
        raise ValueError(
            f"target='label' needs every image's label, but labels holds -1 (unknown) for {len(unknown)} images "
            f"(the first: image {index}): label them, or use target='predicted' or a class index"
        )


def _class_names(data: Any) -> tuple[str, ...] | None:
    dataset = data.dataset if isinstance(data, DataLoader) else data
    names = getattr(dataset, "classes", None)
    if isinstance(names, (list, tuple)) and all(isinstance(n, str) for n in names):
        return tuple(names)
    return None


def _default_class_top_n(k: int, total: int) -> int:
    """``class_top_n`` when not given: a tenth of the ``total`` images, at most 100, at least ``k``."""
    return max(k, min(CLASS_TOP_N, total // 10))


def _exemplar_options(
    labelled: bool, by_class: Any, bottom_k: Any, rank_by: Any, class_top_n: Any, quantiles: Any, k: int, total: int
) -> ExemplarOptions:
    check_bool(by_class, "by_class")
    check_int(bottom_k, "bottom_k", minimum=0)
    check_choice(rank_by, "rank_by", ("activation", "relevance"))
    check_int(class_top_n, "class_top_n", minimum=k, allow_none=True)
    check_bool(quantiles, "quantiles")
    if (by_class or class_top_n is not None) and not labelled:
        name = "by_class=True" if by_class else "class_top_n"
        raise ValueError(f"{name} needs labels: pass labels=True (data of (image, label) items) or a LongTensor")
    return ExemplarOptions(
        labels=labelled,
        class_top_n=(class_top_n if class_top_n is not None else _default_class_top_n(k, total)) if labelled else 0,
        bottom_k=bottom_k,
        by_class=by_class,
        k=k if by_class else 0,
        quantiles=quantiles,
        relevance=rank_by == "relevance",
        num_images=total,
    )


def _layer_names(model: nn.Module, layers: str | nn.Module | Sequence[str | nn.Module]) -> list[str]:
    layer_list = list(layers) if isinstance(layers, (list, tuple)) else [layers]
    if not layer_list:
        raise ValueError("layers is empty: name at least one layer to mine")
    names: list[str] = []
    for layer in layer_list:
        name, _ = resolve_layer(model, layer, argname="layers")
        if name in names:
            raise ValueError(f"layers names {name!r} twice")
        names.append(name)
    return names


def _check_options(
    k: Any,
    unique: Any,
    batch_size: Any,
    num_workers: Any,
    nan: Any,
    nms_threshold: Any,
    progress: Any,
    verify: Any,
    checkpoint_every: Any,
) -> None:
    check_int(k, "k", minimum=1)
    check_choice(unique, "unique", ("image", "none", "nms"))
    check_int(batch_size, "batch_size", minimum=1)
    check_int(num_workers, "num_workers", minimum=0)
    check_choice(nan, "nan", ("raise", "skip"))
    check_float(nms_threshold, "nms_threshold", minimum=0.0, below=1.0)
    check_bool(progress, "progress")
    check_bool(verify, "verify")
    check_float(checkpoint_every, "checkpoint_every", minimum=0.0)


def _check_checkpoint(checkpoint: Any) -> Path | None:
    """The checkpoint path, checked writable now rather than after the first minutes of mining."""
    return None if checkpoint is None else check_output_file(checkpoint, "checkpoint")


def _check_shard(shard: Any) -> tuple[int, int]:
    if shard is None:
        return 0, 1
    if (
        not isinstance(shard, (tuple, list))
        or len(shard) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in shard)
        or not 0 <= shard[0] < shard[1]
    ):  # one message for every way it is wrong: the form is what the user needs
        raise ValueError(f"shard must be (rank, world_size) with 0 <= rank < world_size, got {shard!r}")
    return int(shard[0]), int(shard[1])


def _default_device(model: nn.Module) -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    return model_device(model) or torch.device("cpu")
