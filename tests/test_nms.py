"""unique="nms": the pruned, batched greedy suppression against a naive greedy NMS.

The oracle is written here from the definition, independent of ``nms_kernel``: sort every
activation of a channel by (value descending, dataset index, y, x), walk the list, and keep
a position unless a kept record of the same image has a receptive field overlapping it with
IoU above the threshold; stop at k. Activations are small integers, so ties are everywhere.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import Tensor

from captum_deconvviz._topk import FoldRule, TopKState, nms_kernel


def _iou(a: tuple[int, int], b: tuple[int, int], size: tuple[int, int], stride: tuple[int, int]) -> float:
    """IoU of the fields of units ``a`` and ``b`` (y, x): boxes of ``size`` placed every ``stride``."""
    (h, w), (sy, sx) = size, stride
    top = max(a[0], b[0]) * sy
    bottom = min(a[0], b[0]) * sy + h
    left = max(a[1], b[1]) * sx
    right = min(a[1], b[1]) * sx + w
    inter = max(0, bottom - top) * max(0, right - left)
    return inter / (2 * h * w - inter)


def _naive(acts: Tensor, k: int, size, stride, threshold: float) -> list[list[tuple[float, int, int, int]]]:
    """Per channel, the greedy NMS records (value, index, y, x), best first."""
    n, c, h, w = acts.shape
    values = acts.tolist()
    out = []
    for channel in range(c):
        entries = [
            (values[i][channel][y][x], i, y, x)
            for i in range(n)
            for y in range(h)
            for x in range(w)
            if not math.isnan(values[i][channel][y][x]) and values[i][channel][y][x] > -math.inf
        ]
        entries.sort(key=lambda e: (-e[0], e[1], e[2], e[3]))
        kept: list[tuple[float, int, int, int]] = []
        for entry in entries:
            if len(kept) == k:
                break
            if any(r[1] == entry[1] and _iou(r[2:], entry[2:], size, stride) > threshold for r in kept):
                continue
            kept.append(entry)
        out.append(kept)
    return out


def _mine(acts: Tensor, k: int, kernel: Tensor, batch: int, nan: str = "skip") -> TopKState:
    n, c, h, w = acts.shape
    state = TopKState.empty(c, k, h, w, torch.device("cpu"))
    rule = FoldRule("nms", nan, kernel)
    for start in range(0, n, batch):
        state.fold(acts[start : start + batch], torch.arange(start, min(n, start + batch)), rule, "layer")
    return state


def _records(state: TopKState) -> list[list[tuple[float, int, int, int]]]:
    plane = state.height * state.width
    out = []
    for values, keys in zip(state.values.tolist(), state.key.tolist(), strict=True):
        out.append(
            [
                (v, key // plane, key % plane // state.width, key % state.width)
                for v, key in zip(values, keys, strict=True)
                if key >= 0
            ]
        )
    return out


@st.composite
def _cases(draw: st.DrawFn) -> tuple[Tensor, int, tuple[int, int], tuple[int, int], float, int]:
    n, c = draw(st.integers(1, 10)), draw(st.integers(1, 3))
    h, w = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    size = (draw(st.integers(1, 9)), draw(st.integers(1, 9)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    threshold = draw(st.sampled_from([0.0, 0.1, 0.3, 0.5, 0.7, 0.95]))
    k = draw(st.integers(1, 8))
    batch = draw(st.integers(1, n))
    seed = draw(st.integers(0, 2**16))
    levels = draw(st.integers(1, 4))  # few distinct values: ties within and across images
    generator = torch.Generator().manual_seed(seed)
    acts = torch.randint(0, levels, (n, c, h, w), generator=generator).float()
    holes = torch.rand(acts.shape, generator=generator)
    if draw(st.booleans()):
        acts[holes < 0.1] = float("nan")  # skipped: never a record, never a suppressor
        acts[holes > 0.95] = float("-inf")
    return acts, k, size, stride, threshold, batch


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_cases())
def test_nms_equals_naive_greedy(case: tuple[Tensor, int, tuple[int, int], tuple[int, int], float, int]) -> None:
    acts, k, size, stride, threshold, batch = case
    kernel = nms_kernel(size, stride, threshold)
    got = _records(_mine(acts, k, kernel, batch))
    assert got == _naive(acts, k, size, stride, threshold)


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.8])
@pytest.mark.parametrize(("size", "stride"), [((5, 5), (2, 2)), ((11, 7), (1, 3)), ((1, 1), (1, 1))])
def test_nms_same_across_batches_on_larger_maps(threshold: float, size, stride) -> None:
    """Many images with tied maxima, where most images are pruned before any NMS work."""
    generator = torch.Generator().manual_seed(1)
    acts = torch.randint(0, 6, (40, 3, 9, 8), generator=generator).float()
    acts[:, 1] = 0.0  # a dead channel: every position ties at zero
    kernel = nms_kernel(size, stride, threshold)
    expected = _naive(acts, 7, size, stride, threshold)
    for batch in (1, 7, 40):
        assert _records(_mine(acts, 7, kernel, batch)) == expected, f"batch {batch}"


def test_nms_float64_ranks_like_the_float32_state() -> None:
    """float64 activations that differ below float32 resolution: greedy order inside an image
    is float64, the records are ranked in float32 with ties to the lower key, as before."""
    base = torch.tensor(1.0, dtype=torch.float64)
    acts = torch.zeros(3, 1, 1, 4, dtype=torch.float64)
    acts[0, 0, 0] = torch.tensor([0.0, 1.0, 0.0, 1.0 + 1e-12])
    acts[1, 0, 0] = base + 2e-12  # rounds to 1.0 in float32 too
    acts[2, 0, 0] = torch.tensor([1.0 + 3e-12, 0.0, 0.0, 0.0])
    kernel = nms_kernel((2, 2), (1, 1), 0.2)  # neighbours in x conflict (IoU 1/3)
    state = _mine(acts, 2, kernel, batch=1)
    # image 0's survivors: x=3 (the float64 maximum) then x=1; all values round to 1.0 in float32,
    # so the two records are the lowest keys among the survivors: image 0 at x=1 and x=3.
    assert _records(state)[0] == [(1.0, 0, 0, 1), (1.0, 0, 0, 3)]
    for batch in (2, 3):
        assert _records(_mine(acts, 2, kernel, batch)) == _records(state)


def test_nms_kernel_rows_are_symmetric_runs() -> None:
    """nms_candidates reads each kernel row as a half-width: overlap shrinks with |dx|."""
    for size in [(1, 1), (3, 5), (7, 7), (12, 4)]:
        for stride in [(1, 1), (2, 3), (4, 1)]:
            for threshold in [0.0, 0.2, 0.5, 0.9]:
                kernel = nms_kernel(size, stride, threshold)
                ry, rx = kernel.shape[0] // 2, kernel.shape[1] // 2
                assert kernel[ry, rx] == 1
                for row in kernel:
                    ones = row.nonzero().flatten().tolist()
                    half = len(ones) // 2
                    if ones:
                        assert ones == list(range(rx - half, rx + half + 1))
