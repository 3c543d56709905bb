"""Top-k patch mining over a dataset (Zeiler & Fergus, Sec. 2.1 and Fig. 2).

One forward pass per batch runs up to the deepest requested layer; a forward hook on
each layer folds the batch into that layer's streaming per-channel top-k, on the
mining device, the moment the layer has run. Memory is O(layers x channels x k).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from . import _datasource, _distributed, _topk
from ._forward import (
    EvalMode,
    _StopForward,
    check_dtype,
    check_model,
    describe_choices,
    pick_output,
    resolve_layer,
    split_layer_spec,
)
from .mining_result import MiningResult, atomic_save
from .receptive_field import ReceptiveField, receptive_field

__all__ = ["layer_activations", "mine_topk"]

Unique = Literal["image", "none", "nms"]
_CHECKPOINT_FORMAT = "captum_deconvviz.mining-checkpoint/1"


def model_fingerprint(model: nn.Module) -> str:
    """A short hash of the model's parameter and buffer names, shapes and values."""
    digest = hashlib.sha1()
    for name, tensor in (*model.named_parameters(), *model.named_buffers()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        if tensor.is_floating_point() or tensor.is_complex():
            flat = tensor.detach().double().flatten()
            digest.update(f"{float(flat.sum()):.12e}|{float(flat.abs().sum()):.12e}".encode())
        else:
            digest.update(str(int(tensor.detach().double().sum())).encode())
    return digest.hexdigest()[:16]


def _as_4d(name: str, tensor: Any) -> Tensor:
    base, picks = split_layer_spec(name)
    if picks:
        tensor = pick_output(tensor, picks, base)
    if isinstance(tensor, tuple) and len(tensor) == 1:
        tensor = tensor[0]
    if not isinstance(tensor, Tensor):
        raise ValueError(
            f"layer {name!r} outputs a {type(tensor).__name__}; mining needs a tensor: pick one, "
            f"{describe_choices(tensor, name)}"
        )
    if tensor.dim() == 4:
        return tensor
    if tensor.dim() == 2:
        return tensor[:, :, None, None]
    raise ValueError(f"layer {name!r} outputs shape {tuple(tensor.shape)}; mining needs [N, C, H, W] or [N, F]")


class _LayerTaps:
    """Forward hooks that hand each layer's output to a callback, then stop the forward."""

    def __init__(self, modules: dict[str, nn.Module], on_output: Any) -> None:
        self.modules, self.on_output = modules, on_output
        self.pending: set[str] = set()
        self.handles: list[Any] = []

    def __enter__(self) -> _LayerTaps:
        for name, module in self.modules.items():
            self.handles.append(module.register_forward_hook(self._hook(name)))
        return self

    def _hook(self, name: str) -> Any:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            if name in self.pending:
                self.pending.discard(name)
                self.on_output(name, _as_4d(name, output))
                if not self.pending:
                    raise _StopForward

        return hook

    def run(self, model: nn.Module, images: Tensor) -> None:
        self.pending = set(self.modules)
        with contextlib.suppress(_StopForward):
            model(images)
        if self.pending:
            raise ValueError(f"layers {sorted(self.pending)} were not called in the forward pass of the model")

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()


def layer_activations(model: nn.Module, layers: Sequence[str], images: Tensor) -> dict[str, Tensor]:
    """The outputs of ``layers`` for ``images`` (eval mode, no grad), as ``[N, C, H, W]``."""
    modules = {name: resolve_layer(model, name)[1] for name in layers}
    out: dict[str, Tensor] = {}
    device = next((p.device for p in model.parameters()), images.device)
    with torch.no_grad(), EvalMode(model), _LayerTaps(modules, lambda n, t: out.__setitem__(n, t.clone())) as taps:
        taps.run(model, images.to(device))
    return out


def _fields(model: nn.Module, names: list[str], input_shape: tuple[int, ...]) -> tuple[dict, dict]:
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
    nan: Literal["raise", "skip"] = "raise",
    checkpoint_every: float = 60.0,
    num_workers: int = 0,
    verify: bool = False,
    shard: tuple[int, int] | None = None,
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
            activations hold NaN; ``"skip"`` ignores NaN activations (counted in
            ``stats().nan_count``).
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
    layer_list = list(layers) if isinstance(layers, (list, tuple)) else [layers]
    if not layer_list:
        raise ValueError("layers is empty: name at least one layer to mine")
    names = []
    for layer in layer_list:
        name, _ = resolve_layer(model, layer, argname="layers")
        if name in names:
            raise ValueError(f"layers names {name!r} twice")
        names.append(name)
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    if unique not in ("image", "none", "nms"):
        raise ValueError(f"unique must be 'image', 'none' or 'nms', got {unique!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers must be an int >= 0, got {num_workers!r}")
    if nan not in ("raise", "skip"):
        raise ValueError(f"nan must be 'raise' or 'skip', got {nan!r}")
    if not 0.0 <= nms_threshold < 1.0:
        raise ValueError(f"nms_threshold must be in [0, 1), got {nms_threshold!r}")
    _datasource.check_data(data)
    total = _datasource.length(data)
    if total == 0:
        raise ValueError("data is empty: there is nothing to mine")

    distributed = shard is None and _distributed.active()
    if distributed:
        shard = _distributed.rank_and_world()
    rank, world = _check_shard(shard)
    order = range(rank, total, world)
    if len(order) == 0:
        raise ValueError(f"shard {rank} of {world} holds no images: the data has only {total}")
    if distributed:
        progress = progress and rank == 0
    first = _datasource.fetch(data, [order[0]])
    input_shape = tuple(first.shape[1:])
    work_device = torch.device(device) if device is not None else _default_device(model)
    work_model = model
    if _model_device(model) not in (None, work_device):
        work_model = copy.deepcopy(model).to(work_device)  # never move the user's model
    fingerprint = model_fingerprint(model)
    fields, field_errors = _fields(model, names, input_shape)
    config = {
        "layers": names,
        "k": k,
        "unique": unique,
        "nms_threshold": nms_threshold,
        "nan": nan,
        "num_images": total,
        "input_shape": list(input_shape),
        "model": fingerprint,
        "shard": [rank, world],
    }
    if distributed:
        _distributed.check_same_config(config)

    states: dict[str, _topk.TopKState] = {}
    start = 0
    checkpoint = _shard_path(Path(checkpoint), rank, world) if checkpoint is not None else None
    if checkpoint is not None:
        states, start = _resume(checkpoint, config, work_device)
    kernels = {
        name: _topk.nms_kernel(fields[name].size, fields[name].stride, nms_threshold)  # type: ignore[union-attr]
        for name in names
        if unique == "nms" and fields[name] is not None
    }
    if unique == "nms" and len(kernels) < len(names):
        missing = [n for n in names if n not in kernels]
        raise ValueError(f"unique='nms' needs receptive fields, unknown for {missing}: {field_errors}")

    current = {"index": torch.zeros(0, dtype=torch.long)}  # dataset indices of the batch in flight

    def fold(name: str, acts: Tensor) -> None:
        acts, batch_index = acts.detach(), current["index"]
        b, c, h, w = acts.shape
        if name not in states:
            states[name] = _topk.TopKState.empty(c, k, h, w, acts.device)
        state = states[name]
        if (h, w) != (state.height, state.width):
            raise ValueError(f"layer {name!r} changed its map size to {(h, w)} at image {int(batch_index[0])}")
        flat = acts.reshape(b, c, h * w)
        # Two passes over the activations in the common case: the sums and the max. Each image's
        # sum is a float32 reduction of its own row (the same whatever the batch); sums of
        # images are then exact (see TopKState.total).
        sums = flat.sum(dim=2).double()
        positions = torch.full((c,), b * h * w, dtype=torch.long, device=acts.device)
        nans = torch.zeros(c, dtype=torch.long, device=acts.device)
        if bool(torch.isnan(sums).any()):  # NaN (or +inf and -inf) somewhere: look closer
            nan_mask = torch.isnan(flat)
            if bool(nan_mask.any()):
                if nan == "raise":
                    bad = batch_index[nan_mask.any(dim=2).any(dim=1).cpu()].tolist()
                    raise FloatingPointError(
                        f"layer {name!r} produced NaN activations for images {bad[:10]}; fix the data or the "
                        "model, or pass nan='skip' to ignore NaN activations"
                    )
                sums = flat.masked_fill(nan_mask, 0.0).sum(dim=2).double()
                nans = nan_mask.sum(dim=(0, 2))
                positions = positions - nans
                flat = flat.masked_fill(nan_mask, float("-inf"))
                acts = flat.view(b, c, h, w)
        best = flat.amax(dim=2)  # [B, C]
        state.update_stats(sums, best, positions, nans)
        index = batch_index.to(acts.device)
        if unique == "image":
            # Positions only where the image can enter the channel's top-k (few, once the stream runs).
            contenders = best >= state.values[:, -1]
            if not bool(contenders.any()):
                return
            position = torch.zeros_like(best, dtype=torch.long)
            position[contenders] = flat[contenders].argmax(dim=1)
            values = torch.where(contenders, best, torch.full_like(best, float("-inf")))
            values, key = _topk.image_candidates(values, position, index, h * w)
        elif unique == "none":
            values, key = _topk.all_candidates(acts, index, k)
        else:
            values, key = _topk.nms_candidates(acts, index, k, kernels[name])
        state.merge_candidates(values.float(), key)

    modules = {name: dict(work_model.named_modules())[split_layer_spec(name)[0]] for name in names}
    bar = tqdm(total=len(order), initial=start, disable=not progress, unit="img", desc="mining")
    last_save = time.monotonic()
    try:
        with torch.no_grad(), EvalMode(work_model), _LayerTaps(modules, fold) as taps:
            for current["index"], images in _datasource.batches(data, batch_size, start, num_workers, order):
                check_dtype(images, work_model, "data (its images)")
                taps.run(work_model, images.to(work_device, non_blocking=True))
                start += len(images)
                bar.update(len(images))
                if checkpoint is not None and time.monotonic() - last_save >= checkpoint_every:
                    _save_checkpoint(checkpoint, config, states, start)
                    last_save = time.monotonic()
    except RuntimeError as err:
        if "stack expects each tensor to be equal size" in str(err):
            raise ValueError(f"images of different sizes in one batch: {err}") from None
        raise
    finally:
        bar.close()
    if checkpoint is not None:
        _save_checkpoint(checkpoint, config, states, start)
    merged_count = total if (world == 1 or distributed) else len(order)
    if (world == 1 or distributed) and (
        k > merged_count or (unique != "image" and any(k > total * s.height * s.width for s in states.values()))
    ):
        warnings.warn(
            f"k={k} but only {total} images were mined: channels hold fewer than k records", UserWarning, stacklevel=2
        )
    meta = {
        "field_errors": field_errors,
        "torch": str(torch.__version__),
        "batch_size": batch_size,
        "dataset_length": total,
        "shards": {"world": world, "ranks": [rank]},
    }
    result = MiningResult(
        {name: states[name] for name in names},
        fields,
        k=k,
        unique=unique,
        nms_threshold=nms_threshold,
        num_images=len(order),
        input_shape=input_shape,
        fingerprint=fingerprint,
        meta=meta,
    )
    if distributed:
        result = MiningResult.merge(_distributed.all_gather_results(result))
    if verify:
        result.verify(work_model, data)
    return result


def _check_shard(shard: Any) -> tuple[int, int]:
    if shard is None:
        return 0, 1
    if (
        not isinstance(shard, (tuple, list))
        or len(shard) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in shard)
        or not 0 <= shard[0] < shard[1]
    ):
        raise ValueError(f"shard must be (rank, world_size) with 0 <= rank < world_size, got {shard!r}")
    return int(shard[0]), int(shard[1])


def _shard_path(path: Path, rank: int, world: int) -> Path:
    """Each shard's own checkpoint file: ``state.pt`` becomes ``state.rank1-of-4.pt``."""
    if world == 1:
        return path
    return path.with_name(f"{path.stem}.rank{rank}-of-{world}{path.suffix}")


def _model_device(model: nn.Module) -> torch.device | None:
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return None


def _default_device(model: nn.Module) -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    return _model_device(model) or torch.device("cpu")


def _save_checkpoint(path: Path, config: dict[str, Any], states: dict[str, _topk.TopKState], next_index: int) -> None:
    payload = {
        "format": _CHECKPOINT_FORMAT,
        "config": config,
        "next_index": next_index,
        "states": {
            name: {
                "tensors": {k: v.cpu() for k, v in s.tensors().items()},
                "height": s.height,
                "width": s.width,
                "images": s.images,
            }
            for name, s in states.items()
        },
    }
    atomic_save(payload, path)


def _resume(path: Path, config: dict[str, Any], device: torch.device) -> tuple[dict[str, _topk.TopKState], int]:
    if not path.exists():
        return {}, 0
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(
            f"checkpoint {path} cannot be read ({type(err).__name__}: {err}); delete it to start over"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != _CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a mining checkpoint; pass another checkpoint path")
    if payload["config"] != config:
        changed = sorted(key for key in config if payload["config"].get(key) != config[key])
        raise ValueError(
            f"checkpoint {path} was written by a run with other arguments ({', '.join(changed)} differ); "
            "rerun with the same arguments to resume, or delete the file to start over"
        )
    states = {
        name: _topk.TopKState(height=e["height"], width=e["width"], images=e["images"], **e["tensors"]).to(device)
        for name, e in payload["states"].items()
    }
    return states, int(payload["next_index"])
