"""Chunks of a long projection job, sized from the memory autograd keeps for the first one.

Projecting thousands of units in one forward/backward would hold every activation of
every image at once; one at a time would pay the per-pass overhead thousands of times.
:class:`ChunkSizer` runs the first chunk under a meter of the bytes autograd saves and
sizes the others to a budget.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

__all__ = ["FIRST_CHUNK_ROWS", "MAX_CHUNK_ROWS", "MAX_CROPPED_CHUNK_ROWS", "PROJECTION_MEMORY_BUDGET", "ChunkSizer"]

#: Projections pick their rows per forward/backward so that the tensors autograd keeps for
#: the reverse pass stay near this many bytes. Measured on a 2-core CPU with
#: ``benchmarks/bench_attribution.py``: VGG16 at 112x112 (10.6 MB per image) is fastest at
#: 4-8 rows, AlexNet at 160x160 (0.8 MB per image) at 16-64 rows.
PROJECTION_MEMORY_BUDGET = 48 * 2**20
#: Rows of the first chunk, which measures the memory per row, and the most rows per chunk
#: of whole images.
FIRST_CHUNK_ROWS, MAX_CHUNK_ROWS = 4, 64
#: The most rows per chunk of receptive-field crops. A crop row is small (17-180 kB at the
#: default model's layers), so the budget allows hundreds, and each chunk pays the cropped
#: pass's fixed cost (replaying the traced graph) once: 576 records took 0.45-0.6x the time
#: with 256 rows per chunk than with 64 (default model features.4/7/9 at 32x32, VGG16
#: features.8 at 112x112; 2-core CPU). Where the budget allows fewer rows, it decides.
MAX_CROPPED_CHUNK_ROWS = 4 * MAX_CHUNK_ROWS


class _SavedBytes:
    """Counts the bytes autograd saves for the backward, the model's own tensors excepted."""

    def __init__(self, model: nn.Module) -> None:
        self.bytes = 0
        self._own = {t.data_ptr() for t in (*model.parameters(), *model.buffers())}
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _pack(self, tensor: Tensor) -> Tensor:
        if tensor.data_ptr() not in self._own:
            self.bytes += tensor.numel() * tensor.element_size()
        return tensor

    def __enter__(self) -> _SavedBytes:
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._hooks.__exit__(*exc)


class ChunkSizer:
    """How many rows each forward/backward takes: given, or sized from the memory of the first.

    With ``rows=None`` the first chunk takes :data:`FIRST_CHUNK_ROWS` items and runs under
    a meter of the bytes autograd saves; later chunks take as many rows as fit in
    :data:`PROJECTION_MEMORY_BUDGET`, at most ``cap``. CPUs, whose caches are small,
    are fastest there.

    Example:
        >>> sizer = ChunkSizer(model, rows=None)
        >>> for start, stop in sizer.spans(len(images)):
        ...     with sizer.measure(stop - start):
        ...         out.append(project(images[start:stop]))
    """

    def __init__(self, model: nn.Module, rows: int | None, cap: int = MAX_CHUNK_ROWS) -> None:
        self.model, self.cap = model, cap
        self.rows = rows or FIRST_CHUNK_ROWS
        self.measuring = rows is None

    def spans(self, total: int, rows_at: Callable[[int], int] = lambda _position: 1) -> Iterator[tuple[int, int]]:
        """``(start, stop)`` of each chunk of ``total`` items.

        Args:
            total: how many items.
            rows_at: the rows item ``i`` stands for (an image with 9 records, 9 rows);
                once measured, a chunk takes ``rows // rows_at(start)`` items, at least one.
        """
        start = 0
        while start < total:
            take = self.rows if self.measuring else max(1, self.rows // rows_at(start))
            stop = min(total, start + take)
            yield start, stop
            start = stop

    @contextmanager
    def measure(self, items: int) -> Iterator[None]:
        """Run one chunk of ``items`` items; the first, without given rows, sizes the rest."""
        if not self.measuring:
            yield
            return
        with _SavedBytes(self.model) as meter:
            yield
        per_item = meter.bytes / items
        self.rows = int(min(self.cap, max(1, PROJECTION_MEMORY_BUDGET // max(per_item, 1))))
        self.measuring = False
