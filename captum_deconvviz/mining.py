"""Top-k patch mining over a dataset (Zeiler & Fergus, Sec. 2.1 and Fig. 2).

One forward pass per batch runs up to the deepest requested layer; a forward hook on
each layer folds the batch into that layer's streaming per-channel top-k, on the
mining device, the moment the layer has run. Memory is O(layers x channels x k).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from . import _datasource, _distributed
from ._checkpoint import Checkpoint
from ._checks import check_int
from ._exemplar_state import state_bytes
from ._fingerprint import dataset_fingerprint, model_fingerprint
from ._forward import EvalMode, check_dtype, check_model, model_device, split_layer_spec
from ._guard import autograd_inside
from ._mining_config import MiningConfig, Nan, RankBy, Unique, mining_config
from ._mining_folds import Folds
from ._relevance import RelevanceTaps, check_output_classes
from ._taps import LayerTaps, layer_activations
from ._topk import FoldRule, TopKState, nms_kernel
from .mining_result import MiningResult
from .receptive_field import ReceptiveField, receptive_field

# layer_activations lives in _taps and model_fingerprint in _fingerprint; both stay importable from here.
__all__ = ["layer_activations", "mine_topk", "model_fingerprint"]


@autograd_inside
def mine_topk(
    model: nn.Module,
    layers: str | nn.Module | Sequence[str | nn.Module],
    data: Any,
    k: int = 9,
    unique: Unique = "image",
    batch_size: int = 64,
    device: str | torch.device | None = None,
    progress: bool = True,
    checkpoint: str | Path | None = None,
    *,
    nms_threshold: float = 0.5,
    nan: Nan = "raise",
    checkpoint_every: float = 60.0,
    num_workers: int = 0,
    verify: bool = False,
    shard: tuple[int, int] | None = None,
    labels: Tensor | bool | None = None,
    by_class: bool = False,
    bottom_k: int = 0,
    rank_by: RankBy = "activation",
    target: int | str | None = None,
    class_top_n: int | None = None,
    quantiles: bool = False,
    max_exemplar_bytes: int = 4 * 2**30,
) -> MiningResult:
    """Find, for every channel of every layer, the k strongest activations over a dataset.

    This is Zeiler & Fergus's visualization process: the records point at the image
    patches (receptive fields) and DeconvNet projections drawn in their Fig. 2.

    Args:
        model: the network. It runs in eval mode (every module's flag is restored
            after) and is never modified; on another device it is copied there.
        layers: one layer or a list, as modules or dotted names. All are mined in one
            forward pass per batch, stopped after the last of them has run.
        data: a tensor ``[N, C, H, W]``, a map-style Dataset returning a tensor or
            ``(tensor, label)``, or a DataLoader that does not shuffle.
        k: records per channel.
        unique: ``"image"``: at most one record per image and channel (its best
            position), as in the ZF figures; ``"none"``: any positions;
            ``"nms"``: no two records of a channel in one image whose receptive
            fields overlap with IoU above ``nms_threshold`` (greedy, best first).
        batch_size: images per forward pass (a DataLoader keeps its own).
        device: where to mine; default: CUDA if available, else the model's device.
        progress: show a tqdm progress bar.
        checkpoint: a file to save the state to (atomically) every
            ``checkpoint_every`` seconds and at the end. Rerun with the same arguments
            after an interruption, even a killed process, and mining resumes there;
            the result is identical to an uninterrupted run.
        nms_threshold: IoU above which two records of an image conflict (``"nms"``).
        nan: ``"raise"`` (default) stops with an error naming the images whose
            activations hold NaN or Inf; ``"skip"`` ignores them (counted in
            ``stats().nan_count``): a record or a mean of inf would look like an answer.
        checkpoint_every: seconds between checkpoint saves.
        num_workers: DataLoader workers for a Dataset.
        verify: re-run the forward pass on every record's image at the end and check
            that each value is reproduced.
        shard: ``(rank, world_size)``: mine only the images whose index is
            ``rank`` modulo ``world_size`` (as ``DistributedSampler`` splits data).
            Merge the shards with :meth:`MiningResult.merge`. Under an initialized
            ``torch.distributed`` process group, the shard defaults to this process's
            rank, and every rank ends with the merged result of all ranks (see
            docs/mining-imagenet.md); each rank keeps its own checkpoint file.
        labels: class labels, for the class statistics (:meth:`MiningResult.class_stats`):
            a LongTensor ``[N]``, or True to read them from ``(image, label)`` items
            (ImageFolder, :func:`~captum_deconvviz.zoo.default_sample`, a DataLoader of
            such a dataset). -1 marks an image without a label. Each channel then keeps
            the labels of its ``class_top_n`` strongest images (the class histogram) and
            the exact per-class mean of its per-image maximum (the class selectivity).
        by_class: also keep each class's own top-k per channel (``records(cls=...)``);
            memory grows as layers x channels x classes x k.
        bottom_k: also keep the ``bottom_k`` images whose maximum is lowest
            (``records(kind="bottom")``): before a ReLU, the most negative responses.
        rank_by: ``"activation"`` (Zeiler & Fergus) or ``"relevance"``: rank records by
            the unit's activation times the gradient of ``target`` there (its
            contribution to the target output), at the image's best position. Costs the
            whole forward pass and a backward per batch. The statistics stay activations.
        target: with ``rank_by="relevance"``: a class index, ``"label"`` (each image's
            own, needs labels) or ``"predicted"`` (each image's top class).
        class_top_n: images per channel behind the class histogram (default: the
            strongest tenth of the data, at most 100 and at least ``k``; at least ``k``).
        quantiles: keep every image's best value per channel, for exemplars at any
            quantile (``records(kind="quantile", q=...)``): exact in this one pass, at
            ``images x channels x 12`` bytes per layer.
        max_exemplar_bytes: refuse, before a layer's state is allocated, exemplar
            statistics (all of the above) that would need more memory than this.

    Returns:
        A :class:`~captum_deconvviz.mining_result.MiningResult`. Ties are broken by
        lower dataset index, then y, then x. With fewer than ``k`` images (or
        positions) a channel holds fewer records, and a warning says so.

    Example:
        >>> from captum_deconvviz.zoo import load_default_model, default_sample
        >>> result = mine_topk(load_default_model(), ["features.1", "features.9"], default_sample(), k=9)
        >>> result.records("features.9", 0)[0]  # doctest: +SKIP
        Record(index=412, y=3, x=5, value=7.31)
    """
    model = check_model(model)
    config = mining_config(
        model,
        layers,
        data,
        k=k,
        unique=unique,
        batch_size=batch_size,
        device=device,
        progress=progress,
        checkpoint=checkpoint,
        nms_threshold=nms_threshold,
        nan=nan,
        checkpoint_every=checkpoint_every,
        num_workers=num_workers,
        verify=verify,
        shard=shard,
        labels=labels,
        by_class=by_class,
        bottom_k=bottom_k,
        rank_by=rank_by,
        target=target,
        class_top_n=class_top_n,
        quantiles=quantiles,
    )
    check_int(max_exemplar_bytes, "max_exemplar_bytes", minimum=0)
    _check_exemplar_bound(config, max_exemplar_bytes)
    first_image = _datasource.fetch(data, [config.order[0]])
    input_shape = tuple(first_image.shape[1:])
    work_model = _on_device(model, config.device)
    if config.rank_by == "relevance":  # the target's range, from one image's output, before the stream
        assert config.target is not None, "rank_by='relevance' is checked to come with a target"
        check_dtype(first_image, work_model, "data (its images)")
        with EvalMode(work_model):
            check_output_classes(work_model, first_image.to(config.device), config.target, config.labels)
    fingerprint = model_fingerprint(model)
    data_fingerprint = dataset_fingerprint(data)  # a few images: checked on resume and by the result
    fields, field_errors = _fields(model, config.layers, input_shape)
    identity = config.identity(input_shape, fingerprint)
    if config.distributed:
        _distributed.check_same_config(identity)
    saver = (
        None
        if config.checkpoint is None
        else Checkpoint(config.checkpoint, identity, config.checkpoint_every, data_fingerprint)
    )
    states, start = saver.resume(config.device) if saver is not None else ({}, 0)
    folds = Folds(states, config.k, _fold_rules(config, fields, field_errors), config.exemplars, max_exemplar_bytes)
    end = _stream(work_model, data, config, folds, start, saver)
    if saver is not None:
        saver.save(states, end)
    _warn_if_short(config, states)
    result = _result(config, states, fields, field_errors, input_shape, fingerprint)
    result.meta["data_fingerprint"] = data_fingerprint
    if config.distributed:
        result = MiningResult.merge(_distributed.all_gather_results(result))
    if config.verify:
        result.verify(work_model, data)
    return result


def _check_exemplar_bound(config: MiningConfig, max_exemplar_bytes: int) -> None:
    """Refuse, before any image is read, exemplar options over ``max_exemplar_bytes`` at one channel per layer.

    The exact bound is checked as each layer's channels become known (its first batch); this
    lower bound catches a ``bottom_k``, ``class_top_n`` or label too large for any layer first.
    """
    options = config.exemplars
    labels = config.labels
    classes = int(labels.max()) + 1 if isinstance(labels, Tensor) and len(labels) else 0
    need = len(config.layers) * state_bytes(options, 1, classes)
    if not options.any or need <= max_exemplar_bytes:
        return
    alone = {  # what each argument needs by itself, to name the one to lower
        f"bottom_k={options.bottom_k}": state_bytes(dataclasses.replace(options, labels=False, quantiles=False), 1, 0),
        f"class_top_n={options.class_top_n}": state_bytes(
            dataclasses.replace(options, bottom_k=0, quantiles=False), 1, 0
        ),
        f"labels (largest {classes - 1}: {classes} classes)": state_bytes(
            dataclasses.replace(options, bottom_k=0, quantiles=False, class_top_n=0), 1, classes
        ),
        "quantiles=True": state_bytes(dataclasses.replace(options, labels=False, bottom_k=0), 1, 0),
    }
    culprit = max(alone, key=lambda name: alone[name])
    raise ValueError(
        f"{culprit} needs {need / 2**30:.3g} GiB of exemplar statistics even at one channel per layer "
        f"({len(config.layers)} layers), more than max_exemplar_bytes={max_exemplar_bytes}: lower it, or raise "
        "max_exemplar_bytes"
    )


def _on_device(model: nn.Module, device: torch.device) -> nn.Module:
    """The model to mine with: itself, or a copy on ``device`` (the user's model never moves)."""
    if model_device(model) not in (None, device):
        return copy.deepcopy(model).to(device)
    return model


def _warn_if_short(config: MiningConfig, states: dict[str, TopKState]) -> None:
    """Warn (at mine_topk's caller, past autograd_inside) when channels of the whole data hold fewer than k records."""
    total, k = config.num_images, config.k
    if config.merges_all and (
        k > total or (config.unique != "image" and any(k > total * s.height * s.width for s in states.values()))
    ):
        warnings.warn(
            f"k={k} but only {total} images were mined: channels hold fewer than k records", UserWarning, stacklevel=4
        )


def _stream(
    model: nn.Module, data: Any, config: MiningConfig, folds: Folds, start: int, saver: Checkpoint | None
) -> int:
    """Fold this shard's images from position ``start`` on; returns the position reached (its end)."""
    modules = {name: dict(model.named_modules())[split_layer_spec(name)[0]] for name in config.layers}
    bar = tqdm(total=len(config.order), initial=start, disable=not config.progress, unit="img", desc="mining")
    batches = _datasource.labelled_batches(
        data, config.batch_size, start, config.num_workers, config.order, config.labels
    )
    relevance = config.rank_by == "relevance"
    assert not relevance or config.target is not None, "rank_by='relevance' is checked to come with a target"
    # By relevance, the whole forward runs with autograd and a backward follows; by activation,
    # the forward stops after the deepest layer, without autograd.
    taps = RelevanceTaps(modules, config.target) if relevance else LayerTaps(modules, folds)  # type: ignore[arg-type]
    try:
        with contextlib.nullcontext() if relevance else torch.no_grad(), EvalMode(model), taps:
            for folds.index, images, folds.labels in batches:
                check_dtype(images, model, "data (its images)")
                images = images.to(config.device, non_blocking=True)
                if isinstance(taps, RelevanceTaps):
                    for name, (acts, relevances) in taps.run(model, images, folds.labels).items():
                        folds(name, acts, relevances)
                else:
                    taps.run(model, images)
                start += len(images)
                bar.update(len(images))
                if saver is not None:
                    saver.save_if_due(folds.states, start)
    except RuntimeError as err:
        if "stack expects each tensor to be equal size" in str(err):
            raise ValueError(f"images of different sizes in one batch: {err}") from None
        raise
    finally:
        bar.close()
    return start


def _fields(
    model: nn.Module, names: Sequence[str], input_shape: tuple[int, ...]
) -> tuple[dict[str, ReceptiveField | None], dict[str, str]]:
    """Each layer's receptive field (analytic, else the probe), and why it is unknown where it is."""
    fields: dict[str, ReceptiveField | None] = {}
    errors: dict[str, str] = {}
    for name in names:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fields[name] = receptive_field(model, name, input_shape)
        except (ValueError, TypeError) as err:
            try:
                fields[name] = receptive_field(model, name, input_shape, method="probe")
            except (ValueError, TypeError) as err2:
                fields[name] = None
                errors[name] = f"analytic: {err}; probe: {err2}"
    return fields, errors


def _fold_rules(
    config: MiningConfig, fields: dict[str, ReceptiveField | None], field_errors: dict[str, str]
) -> dict[str, FoldRule]:
    """Each layer's fold rule; ``unique="nms"`` needs every layer's receptive field for its kernel."""
    kernels = {
        name: nms_kernel(field.size, field.stride, config.nms_threshold)
        for name, field in fields.items()
        if config.unique == "nms" and field is not None
    }
    if config.unique == "nms" and len(kernels) < len(config.layers):
        missing = [n for n in config.layers if n not in kernels]
        raise ValueError(f"unique='nms' needs receptive fields, unknown for {missing}: {field_errors}")
    return {name: FoldRule(config.unique, config.nan, kernels.get(name)) for name in config.layers}


def _result(
    config: MiningConfig,
    states: dict[str, TopKState],
    fields: dict[str, ReceptiveField | None],
    field_errors: dict[str, str],
    input_shape: tuple[int, ...],
    fingerprint: str,
) -> MiningResult:
    """This shard's result, its layers in the order given."""
    meta = {
        "field_errors": field_errors,
        "torch": str(torch.__version__),
        "batch_size": config.batch_size,
        "dataset_length": config.num_images,
        "shards": {"world": config.world, "ranks": [config.rank]},
    }
    if config.exemplars.any or config.rank_by != "activation":
        meta["exemplars"] = {**config.exemplars.to_dict(), "rank_by": config.rank_by, "target": config.target}
    if config.class_names is not None:
        meta["class_names"] = list(config.class_names)
    return MiningResult(
        {name: states[name] for name in config.layers},
        fields,
        k=config.k,
        unique=config.unique,
        nms_threshold=config.nms_threshold,
        num_images=len(config.order),
        input_shape=input_shape,
        fingerprint=fingerprint,
        meta=meta,
    )
