"""Mining's per-batch callback: each layer's output folded into its top-k and exemplar state.

It also refuses, before allocating a layer's state, a ``k`` or exemplar statistics that
cannot fit in memory (the first batch gives each layer's channels; labels may add classes
later, and each new class is checked too).
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from ._exemplar_state import ExemplarOptions, ExemplarState, state_bytes
from ._topk import FoldRule, TopKState

__all__ = ["SLOT_BYTES", "Folds"]

#: Bytes per record slot of a top-k state: a float32 value and an int64 key.
SLOT_BYTES = 12


class Folds:
    """The taps' callback: folds each layer's output for the batch in flight into its state.

    Attributes:
        index: ``[B]`` dataset indices of the batch in flight (set by the stream).
        labels: ``[B]`` its labels, or None (set by the stream).
    """

    def __init__(
        self,
        states: dict[str, TopKState],
        k: int,
        rules: dict[str, FoldRule],
        exemplars: ExemplarOptions | None = None,
        max_exemplar_bytes: int = 4 * 2**30,
    ) -> None:
        self.states, self.k, self.rules = states, k, rules
        self.exemplars = exemplars if exemplars is not None and exemplars.any else None
        self.max_exemplar_bytes = max_exemplar_bytes
        self.index = torch.zeros(0, dtype=torch.long)
        self.labels: Tensor | None = None

    def __call__(self, name: str, acts: Tensor, scores: Tensor | None = None) -> None:
        if name not in self.states:
            _, c, h, w = acts.shape
            _check_state_memory(name, c, self.k, acts.device)
            if self.exemplars is not None:
                self._check_exemplar_memory(new_channels=c)  # before this layer's state is allocated
            self.states[name] = TopKState.empty(c, self.k, h, w, acts.device)
            if self.exemplars is not None:
                self.states[name].exemplars = ExemplarState.empty(self.exemplars, c, h * w, acts.device)
        state = self.states[name]
        if state.exemplars is not None:
            self._check_exemplar_memory()
        best, score_flat = state.fold(acts, self.index, self.rules[name], name, scores)
        if state.exemplars is not None:
            score_best = best if scores is None else score_flat.amax(dim=2)
            # Where each image's best is (argmax: the first on ties) matters to its records only.
            position = score_flat.argmax(dim=2) if state.exemplars.needs_positions else None
            relevance = scores.detach().float().sum(dim=(2, 3)) if scores is not None else None
            state.exemplars.fold(best, score_best, position, self.index, self.labels, relevance)

    def _check_exemplar_memory(self, new_channels: int = 0) -> None:
        """Refuse exemplar statistics over ``max_exemplar_bytes`` for the classes seen so far.

        Args:
            new_channels: the channels of a layer whose state is about to be allocated (0: none),
                counted with the layers that have one.
        """
        assert self.exemplars is not None
        classes = int(self.labels.max()) + 1 if self.labels is not None and len(self.labels) else 0
        need = state_bytes(self.exemplars, new_channels, classes) if new_channels else 0
        for state in self.states.values():
            if state.exemplars is not None:
                need += state_bytes(self.exemplars, state.exemplars.channels, max(classes, state.exemplars.classes))
        if need > self.max_exemplar_bytes:
            options = self.exemplars
            layers = len(self.states) + (1 if new_channels else 0)
            raise ValueError(
                f"the exemplar statistics need {need / 2**30:.3g} GiB ({layers} layers so far, {classes} "
                f"classes, class_top_n={options.class_top_n}, bottom_k={options.bottom_k}, by_class={options.by_class}"
                f", quantiles={options.quantiles}), more than max_exemplar_bytes={self.max_exemplar_bytes}: raise "
                "max_exemplar_bytes, or keep less (by_class and quantiles grow with classes and images)"
            )


def _check_state_memory(layer: str, channels: int, k: int, device: torch.device) -> None:
    """Refuse a ``k`` whose top-k state cannot fit in the device's memory, before allocating it.

    The state is ``channels x k`` slots (see :data:`SLOT_BYTES`), allocated at the layer's first
    batch; ``k=2**40`` used to try to allocate 17 TB there.
    """
    need = channels * k * SLOT_BYTES
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    else:
        try:
            free = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):  # not a POSIX system: no bound known
            return
    if need > free // 2:
        raise ValueError(
            f"k={k} needs {need / 2**30:.3g} GiB for the top-k state of layer {layer!r} ({channels} channels x k x "
            f"{SLOT_BYTES} bytes), more than half of the {free / 2**30:.3g} GiB of {device.type} memory: lower k "
            "(unique='image' keeps at most one record per image and channel)"
        )
