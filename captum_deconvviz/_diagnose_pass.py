"""The data side of :func:`~captum_deconvviz.diagnose`: one forward pass per batch, and reuse.

* :func:`activity_sources`: which diagnosed layers' dead filters a mining result already
  answers. A channel is dead when no image activates it anywhere (``fraction_active == 0``).
  That is the same for two tensors whenever one follows from the other through ops that keep
  "is any value of this image's channel positive" unchanged: a rectifier (``relu(x) > 0``
  exactly where ``x > 0``), a max-pool whose windows cover every input position, identity,
  eval-mode dropout. One forward pass on one image, watched by hooks, shows which tensors
  are linked that way; a tensor is ``(object, version counter)``, so an in-place op in
  between (which bumps the counter) links only through a rectifier seen doing it.
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
from ._forward import EvalMode, StopForward

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
    parent: dict[_State, _State] = {}

    def find(state: _State) -> _State:
        parent.setdefault(state, state)
        while parent[state] != state:
            parent[state] = parent[parent[state]]
            state = parent[state]
        return state

    keep: list[Tensor] = []  # every tensor seen stays alive, so no id is reused during the pass
    before: dict[str, tuple[Tensor, _State]] = {}
    outputs: dict[str, _State] = {}
    calls: Counter[str] = Counter()

    def state(tensor: Tensor) -> _State:
        keep.append(tensor)
        return id(tensor), tensor._version

    def pre_hook(name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
            if args and isinstance(args[0], Tensor):
                before[name] = (args[0], state(args[0]))

        return hook

    def post_hook(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, _args: Any, output: Any) -> None:
            out = output[0] if isinstance(output, (tuple, list)) and output else output
            if not isinstance(out, Tensor):
                return
            calls[name] += 1
            after = state(out)
            outputs.setdefault(name, after)
            if name in before and _keeps_activity(module, before[name][0], out):
                parent[find(before[name][1])] = find(after)

        return hook

    watched = set(names) | set(mined_modules) | {n for n, m in modules.items() if isinstance(m, _LINKS)}
    handles = []
    try:
        for name in watched:
            if name:  # not the model itself
                handles.append(modules[name].register_forward_pre_hook(pre_hook(name)))
                handles.append(modules[name].register_forward_hook(post_hook(name)))
        with torch.no_grad(), EvalMode(model):
            model(image)
    finally:
        for handle in handles:
            handle.remove()
    by_root = {find(outputs[m]): m for m in reversed(mined_modules) if m in outputs and calls[m] == 1}
    return {
        name: by_root[find(outputs[name])]
        for name in names
        if name in outputs and calls[name] == 1 and find(outputs[name]) in by_root
    }


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
        with torch.no_grad(), EvalMode(model):
            for _, images in _datasource.batches(data, batch_size):
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
