"""The data side of :func:`~captum_deconvviz.diagnose`: one forward pass per batch, and reuse.

* :func:`activity_sources`: which diagnosed layers' dead filters a mining result already
  answers. A channel is dead when no image activates it anywhere (``fraction_active == 0``).
  That is the same for two tensors whenever one follows from the other through ops that keep
  "is any value of this image's channel positive" unchanged: a rectifier (``relu(x) > 0``
  exactly where ``x > 0``), a max-pool whose windows cover every input position, identity,
  eval-mode dropout. One forward pass on one image, watched by hooks, shows which tensors
  are linked that way; a tensor is ``(object, version counter)``, so an in-place op in
  between (which bumps the counter) links only through a rectifier seen doing it.
* :func:`check_arguments`: every argument of ``diagnose`` checked before any forward pass,
  including that a mining result is of this model, weights and data.
* :func:`stream`: the activity of the layers the result cannot answer and the aliasing
  energy of strided layers, in one forward per batch, stopped after the last layer needed.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from . import _datasource
from ._checks import check_int
from ._forward import EvalMode, StopForward, eager_compiled, resolve_layer
from ._guard import check_finite
from .mining import model_fingerprint
from .mining_result import MiningResult

_State = tuple[int, int]  # (id of the tensor object, its version counter)
#: Modules that may link two tensors' activity (see :func:`_keeps_activity`): watched in the probe.
_LINKS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Identity, nn.Dropout, nn.MaxPool2d, nn.AdaptiveMaxPool2d)


def _pair(value: Any) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


def _keeps_activity(module: nn.Module, inputs: Tensor, output: Tensor) -> bool:
    """True when every channel of every image is positive somewhere in ``output`` iff in ``inputs``."""
    if isinstance(module, (nn.ReLU, nn.ReLU6, nn.Identity, nn.Dropout)):
        return not isinstance(module, nn.Dropout) or not module.training
    if isinstance(module, nn.LeakyReLU):
        return module.negative_slope >= 0
    if isinstance(module, nn.AdaptiveMaxPool2d):
        return True
    if isinstance(module, nn.MaxPool2d) and inputs.dim() == output.dim() and inputs.dim() in (3, 4):
        kernel, stride = _pair(module.kernel_size), _pair(module.stride or module.kernel_size)
        padding, dilation = _pair(module.padding), _pair(module.dilation)
        for axis in range(2):
            size_in, size_out = inputs.shape[-2 + axis], output.shape[-2 + axis]
            last = (size_out - 1) * stride[axis] - padding[axis] + kernel[axis] - 1  # last position of the last window
            if dilation[axis] != 1 or stride[axis] > kernel[axis] or last < size_in - 1:
                return False  # some input positions are seen by no window
        return True
    return False


class _ActivityWatch:
    """The hooks of :func:`activity_sources`: which tensors a forward pass links, as union-find sets.

    A tensor is ``(id, version counter)``; a module that keeps activity (:func:`_keeps_activity`)
    puts its input and output in one set.
    """

    def __init__(self) -> None:
        self.parent: dict[_State, _State] = {}
        self.keep: list[Tensor] = []  # every tensor seen stays alive, so no id is reused during the pass
        self.before: dict[str, tuple[Tensor, _State]] = {}
        self.outputs: dict[str, _State] = {}
        self.calls: Counter[str] = Counter()

    def find(self, state: _State) -> _State:
        parent = self.parent
        parent.setdefault(state, state)
        while parent[state] != state:
            parent[state] = parent[parent[state]]
            state = parent[state]
        return state

    def state(self, tensor: Tensor) -> _State:
        self.keep.append(tensor)
        return id(tensor), tensor._version

    def pre_hook(self, name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
            if args and isinstance(args[0], Tensor):
                self.before[name] = (args[0], self.state(args[0]))

        return hook

    def post_hook(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, _args: Any, output: Any) -> None:
            out = output[0] if isinstance(output, (tuple, list)) and output else output
            if not isinstance(out, Tensor):
                return
            self.calls[name] += 1
            after = self.state(out)
            self.outputs.setdefault(name, after)
            if name in self.before and _keeps_activity(module, self.before[name][0], out):
                self.parent[self.find(self.before[name][1])] = self.find(after)

        return hook

    def root(self, name: str) -> _State | None:
        """The set of the output of ``name``, if it ran exactly once."""
        return self.find(self.outputs[name]) if name in self.outputs and self.calls[name] == 1 else None


def activity_sources(model: nn.Module, names: Sequence[str], mined: Sequence[str], image: Tensor) -> dict[str, str]:
    """For each diagnosed layer whose per-image activity equals a mined layer's, that mined layer.

    Args:
        model: the network.
        names: the diagnosed module names.
        mined: the layers of a mining result.
        image: one input ``[1, C, H, W]`` for the watched forward pass.

    Returns:
        ``{diagnosed name: mined name}`` for the layers the mining statistics answer exactly;
        layers called more than once per forward are left out.
    """
    modules = dict(model.named_modules())
    mined_modules = [name for name in mined if name in modules]
    if not mined_modules:
        return {}
    watch = _ActivityWatch()
    watched = set(names) | set(mined_modules) | {n for n, m in modules.items() if isinstance(m, _LINKS)}
    handles = []
    try:
        for name in watched:
            if name:  # not the model itself
                handles.append(modules[name].register_forward_pre_hook(watch.pre_hook(name)))
                handles.append(modules[name].register_forward_hook(watch.post_hook(name)))
        with torch.no_grad(), EvalMode(model), eager_compiled():
            model(image)
    finally:
        for handle in handles:
            handle.remove()
    by_root = {root: m for m in reversed(mined_modules) if (root := watch.root(m)) is not None}
    return {name: by_root[root] for name in names if (root := watch.root(name)) is not None and root in by_root}


def stream(
    model: nn.Module,
    activity: Sequence[str],
    aliasing: Mapping[str, Callable[[nn.Module, Tensor], Tensor]],
    data: Any,
    batch_size: int,
    progress: bool,
) -> tuple[dict[str, Tensor], dict[str, Tensor], int]:
    """One forward per batch: per-channel activity and mean aliasing scores.

    Args:
        model: the network (run in eval mode, no grad).
        activity: layers whose per-channel "positive somewhere" counts to collect.
        aliasing: per strided layer, a function ``(module, its input) -> [C]`` score of a batch.
        data: the images.
        batch_size: images per forward pass.
        progress: show a progress bar.

    Returns:
        ``(images active per channel, mean aliasing score per channel, images seen)``; each
        batch's score is weighted by its size, as in one score per batch.
    """
    modules = dict(model.named_modules())
    wanted = list(dict.fromkeys([*activity, *aliasing]))
    active: dict[str, Tensor] = {}
    energy: dict[str, Tensor] = {}
    pending: set[str] = set()

    def hook(name: str) -> Callable[..., None]:
        def run(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            if name not in pending:
                return  # a module called again in the same forward: its first call counts
            pending.discard(name)
            if name in aliasing:
                score = aliasing[name](module, inputs[0]) * inputs[0].shape[0]
                energy[name] = energy[name] + score if name in energy else score
            if name in activity:
                out = output[0] if isinstance(output, (tuple, list)) else output
                count = (out.detach().flatten(2) > 0).any(2).sum(0).cpu()
                active[name] = active[name] + count if name in active else count
            if not pending:
                raise StopForward

        return run

    handles = [modules[name].register_forward_hook(hook(name)) for name in wanted]
    count = 0
    device = next((p.device for p in model.parameters()), None)
    bar = tqdm(total=_datasource.length(data), disable=not progress, unit="img", desc="diagnosing")
    try:
        with torch.no_grad(), EvalMode(model), eager_compiled():
            for indices, images in _datasource.batches(data, batch_size):
                # A NaN image scores aliasing 0 and counts as inactive: a clean-looking diagnosis of nothing.
                check_finite(images, "data", "pixel values", rows=indices.tolist(), hint=_NON_FINITE_HINT)
                pending.clear()
                pending.update(wanted)
                with contextlib.suppress(StopForward):
                    model(images.to(device) if device is not None else images)
                if pending:
                    raise ValueError(f"layers {sorted(pending)} were not called in the forward pass of the model")
                count += len(images)
                bar.update(len(images))
    finally:
        bar.close()
        for handle in handles:
            handle.remove()
    return active, {name: value / max(count, 1) for name, value in energy.items()}, count


_NON_FINITE_HINT = (
    "their aliasing scores and activity would be computed from NaN and read as clean numbers; fix or drop "
    "those images (the rows are dataset indices)"
)


def stride_of(module: nn.Module) -> tuple[int, int] | None:
    """The 2-d stride of a conv or pool module, if it strides (None for stride 1 or no stride)."""
    stride = getattr(module, "stride", None)
    if stride is None:
        return None
    stride = (stride, stride) if isinstance(stride, int) else tuple(stride)
    return stride if max(stride) > 1 and len(stride) == 2 else None


def check_arguments(
    model: nn.Module,
    data: Any,
    layers: str | nn.Module | Sequence[str | nn.Module] | None,
    batch_size: int,
    max_images: int | None,
    result: MiningResult | None,
) -> tuple[list[str], int]:
    """Every argument of :func:`diagnose` checked before any forward pass: the layer names and the data's length."""
    _datasource.check_data(data)
    if layers is None:
        layers = [
            name
            for name, m in model.named_modules()
            if isinstance(m, nn.Conv2d) or (isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)) and stride_of(m) is not None)
        ]
        if not layers:
            raise ValueError("the model has no Conv2d or strided pooling layer to diagnose")
    elif isinstance(layers, (str, nn.Module)):
        layers = [layers]  # one layer, as mine_topk takes it (a string is not a list of its letters)
    elif not isinstance(layers, Sequence):
        raise TypeError(f"layers must be a layer name, a module, or a list of them, got {type(layers).__name__}")
    elif not layers:
        raise ValueError("layers is empty: name at least one layer to diagnose, or pass None for every Conv2d")
    names = [resolve_layer(model, layer, argname=f"layers[{i}]")[0] for i, layer in enumerate(layers)]
    check_int(batch_size, "batch_size", minimum=1)
    check_int(max_images, "max_images", minimum=1, allow_none=True)
    total = _datasource.length(data)
    if total == 0:
        raise ValueError("data is empty: there is nothing to diagnose")
    if result is not None:
        _check_result(result, model, total)
    return names, total


def _check_result(result: Any, model: nn.Module, total: int) -> None:
    if not isinstance(result, MiningResult):
        raise TypeError(f"result must be a MiningResult (from mine_topk), got {type(result).__name__}")
    if result.fingerprint != model_fingerprint(model):
        raise ValueError("result was mined with another model (or other weights): mine this model, or leave result out")
    length = result.meta.get("dataset_length")
    if length is not None and length != total:
        raise ValueError(f"result was mined on data of {length} images, but data has {total}")
    if result.num_images != total:
        raise ValueError(
            f"result covers {result.num_images} of the {total} images (one shard?): merge the shards with "
            "MiningResult.merge, or leave result out"
        )


class AliasingWatch:
    """Aliasing scores of strided layers, read from forward passes that something else runs.

    ``deconvviz report`` mines with a watch on the model, so that the dataset is streamed
    once: the watch's forward hooks score each strided layer's input as mining's forward
    reaches it, batch by batch, over the first ``max_images`` images, exactly as
    :func:`stream` would with the same batch size. Layers that mining's forward never
    reaches (it stops after the deepest mined layer), or images it did not see (a resumed
    run), are left for :func:`stream`: :meth:`complete` says which layers are done. So is a
    layer whose input held NaN or Inf (mining with ``nan="skip"`` runs such images): its
    score would be a clean-looking number computed from nothing, and :func:`stream` refuses
    the images by their indices.

    A strided layer past the point where mining stops can still be scored when its input is
    the very tensor another module returned (``features.10``, a max-pool, takes what
    ``features.9``, a mined ReLU, returned): ``sources`` maps it to that module, whose output
    hook scores it (see :func:`input_sources`).

    Args:
        model: the network the forward passes run (hooks go on it, and on copies of it).
        scores: per strided layer, ``(module, its input) -> [C]`` score of a batch.
        wanted: how many images, from the first, the scores are over.
        sources: per strided layer, the module whose output is its input (default: none).

    Example:
        >>> with AliasingWatch(model, {"features.2": score}, wanted=1000) as watch:  # doctest: +SKIP
        ...     result = mine_topk(model, layers, data)
        >>> watch.complete()
    """

    def __init__(
        self,
        model: nn.Module,
        scores: Mapping[str, Callable[[nn.Module, Tensor], Tensor]],
        wanted: int,
        sources: Mapping[str, str] | None = None,
    ) -> None:
        self.model, self.scores, self.wanted = model, dict(scores), wanted
        self.sources = dict(sources or {})
        named = dict(model.named_modules())
        self.modules = {name: named[name] for name in self.scores}
        self.source_modules = {name: named[source] for name, source in self.sources.items()}
        self.images = 0  # images of the forward passes seen, up to ``wanted``
        self.take = 0  # images of the forward in flight still to score
        self.seen: Counter[str] = Counter()
        self.energy: dict[str, Tensor] = {}
        self.fired: set[str] = set()
        self.non_finite: set[str] = set()  # layers that were given NaN or Inf: never complete
        self.handles: list[Any] = []

    def __enter__(self) -> AliasingWatch:
        self.handles.append(self.model.register_forward_pre_hook(self._start))
        for name, module in self.modules.items():
            self.handles.append(module.register_forward_hook(self._score(name)))
            if name in self.source_modules:
                self.handles.append(self.source_modules[name].register_forward_hook(self._score(name, module)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    def _start(self, _module: nn.Module, args: tuple[Any, ...]) -> None:
        batch = args[0].shape[0] if args and isinstance(args[0], Tensor) and args[0].dim() > 0 else 0
        self.take = max(0, min(batch, self.wanted - self.images))
        self.images += self.take
        self.fired.clear()

    def _score(self, name: str, layer: nn.Module | None = None) -> Callable[..., None]:
        """The hook that scores ``name``: on its own input, or (``layer`` given) on its source's output."""

        def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            if name in self.fired or self.take == 0:
                return  # a module called again in the same forward: its first call counts
            self.fired.add(name)
            x = (inputs[0] if layer is None else output)[: self.take]
            if not bool(torch.isfinite(x).all()):
                self.non_finite.add(name)
                return
            score = self.scores[name](module if layer is None else layer, x) * len(x)
            self.energy[name] = self.energy[name] + score if name in self.energy else score
            self.seen[name] += len(x)

        return hook

    def complete(self) -> dict[str, Tensor]:
        """The mean score of each layer that saw all ``wanted`` images."""
        if self.images != self.wanted:
            return {}
        return {
            name: self.energy[name] / self.wanted
            for name in self.scores
            if self.seen[name] == self.wanted and name not in self.non_finite
        }

    def record(self, result: MiningResult, batch_size: int) -> None:
        """Keep the complete scores in ``result.meta["aliasing"]``, where :func:`diagnose` finds them.

        Saved with the result, so a later ``deconvviz report --result`` needs no pass either.
        """
        scores = self.complete()
        if scores:
            result.meta["aliasing"] = {
                "images": self.wanted,
                "batch_size": batch_size,
                "scores": {name: value.tolist() for name, value in scores.items()},
            }


def input_sources(model: nn.Module, names: Sequence[str], image: Tensor) -> dict[str, str]:
    """For each of ``names``, the module whose output object is that module's input, unchanged.

    One forward on one image, watched by hooks: a tensor is ``(object, version counter)``, so
    an in-place op in between (which bumps the counter) breaks the link. Modules that are
    called more than once, or whose input no module returned (the model's input, a tensor
    made by a functional op), are left out.
    """
    produced: dict[tuple[int, int], str] = {}
    # Every output seen stays alive for the pass: a freed tensor's id is reused by the next one
    # made (HRNet's fuse layers: a functional op's result took a freed output's id and was
    # taken for that module's output, and the aliasing hook went on the wrong layer).
    alive: list[Tensor] = []
    sources: dict[str, str] = {}
    calls: Counter[str] = Counter()
    wanted = set(names)
    handles = []

    def after(name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            calls[name] += 1
            if name in wanted and inputs and isinstance(inputs[0], Tensor):
                source = produced.get((id(inputs[0]), inputs[0]._version))
                if source is not None:
                    sources[name] = source
            if isinstance(output, Tensor):
                alive.append(output)
                produced[(id(output), output._version)] = name

        return hook

    try:
        for name, module in model.named_modules():
            if name:
                handles.append(module.register_forward_hook(after(name)))
        with torch.no_grad(), EvalMode(model), eager_compiled():
            model(image)
    finally:
        for handle in handles:
            handle.remove()
    return {name: source for name, source in sources.items() if calls[name] == 1 and calls[source] == 1}


def recorded_aliasing(
    result: MiningResult | None, layers: Sequence[str], images: int, batch_size: int
) -> dict[str, Tensor]:
    """The aliasing scores a mining run recorded (:meth:`AliasingWatch.record`) that :func:`stream`
    would compute for these layers: the same first ``images`` images in batches of ``batch_size``."""
    entry = result.meta.get("aliasing") if result is not None else None
    if not isinstance(entry, dict) or entry.get("images") != images or entry.get("batch_size") != batch_size:
        return {}
    scores = entry.get("scores", {})
    # Scores are float32 (aliasing_score), kept as exact Python floats: the same tensors come back.
    return {name: torch.tensor(scores[name], dtype=torch.float32) for name in layers if name in scores}
