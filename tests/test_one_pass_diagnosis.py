"""Mining and diagnosing in one pass over the data: the watch gives exactly the two-pass answer.

The oracle is :func:`diagnose` on its own (its own aliasing pass); the one-pass diagnosis
reads the scores the watch recorded while mining, and must match it to the last bit,
including the strided layer past the deepest mined one, scored from its source's output.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from captum_deconvviz import diagnose, mine_topk
from captum_deconvviz.diagnose import watch_aliasing

LAYERS = ["features.1", "features.4"]  # mining stops at features.4
DEEP = ["features.1", "features.4", "features.7"]  # mining runs through every strided layer


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(3, 2, 1),  # past the deepest mined layer: scored from features.4's output
            nn.Conv2d(8, 8, 3, stride=2),
            nn.ReLU(),
        ),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    ).eval()


class Renamed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = net()[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


DATA = torch.randn(70, 3, 20, 20, generator=torch.Generator().manual_seed(3))


def _same_aliasing(a: object, b: object) -> None:
    for x, y in zip(a.layers, b.layers, strict=True):  # type: ignore[attr-defined]
        assert x.name == y.name and (x.aliasing is None) == (y.aliasing is None)
        if x.aliasing is not None:
            torch.testing.assert_close(x.aliasing, y.aliasing, rtol=0, atol=0, equal_nan=True, msg=x.name)


@pytest.mark.parametrize(
    ("layers", "watched", "streamed"),
    [
        (DEEP, {"features.2", "features.5", "features.6"}, False),
        # features.5 is past the stop but takes features.4's output; features.6 takes features.5's: a pass
        (LAYERS, {"features.2", "features.5"}, True),
    ],
    ids=["all-reached", "past-the-stop"],
)
def test_one_pass_equals_two_passes_to_the_bit(layers: list[str], watched: set[str], streamed: bool) -> None:
    model = Renamed()
    mined = mine_topk(model, layers, DATA, progress=False)
    two_pass = diagnose(model, DATA, batch_size=16, max_images=50, result=mined)
    with watch_aliasing(model, DATA, max_images=50) as watch:
        result = mine_topk(model, layers, DATA, batch_size=16, progress=False)
    watch.record(result, batch_size=16)
    assert set(result.meta["aliasing"]["scores"]) == watched
    one_pass = diagnose(model, DATA, batch_size=16, max_images=50, result=result)
    _same_aliasing(two_pass, one_pass)
    assert any("measured while mining" in note for note in one_pass.notes)
    assert any(note.startswith("Aliasing over 50 images") for note in one_pass.notes) == streamed


def test_no_second_pass_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    model = Renamed()
    with watch_aliasing(model, DATA) as watch:
        result = mine_topk(model, DEEP, DATA, batch_size=64, progress=False)
    watch.record(result, batch_size=64)
    diagnose_module = sys.modules["captum_deconvviz.diagnose"]

    def no_stream(*args: object, **kwargs: object) -> None:
        raise AssertionError("diagnose streamed the data again")

    monkeypatch.setattr(diagnose_module, "stream", no_stream)
    diagnose(model, DATA, batch_size=64, result=result)


def test_another_batch_size_or_image_count_falls_back_to_a_pass() -> None:
    model = Renamed()
    with watch_aliasing(model, DATA, max_images=50) as watch:
        result = mine_topk(model, LAYERS, DATA, batch_size=16, progress=False)
    watch.record(result, batch_size=16)
    reference = diagnose(model, DATA, batch_size=32, max_images=50)
    fallback = diagnose(model, DATA, batch_size=32, max_images=50, result=result)  # batches differ: pass again
    assert not any("measured while mining" in note for note in fallback.notes)
    _same_aliasing(reference, fallback)
    other = diagnose(model, DATA, batch_size=16, max_images=40, result=result)
    assert not any("measured while mining" in note for note in other.notes)


class Interrupted(torch.utils.data.Dataset):
    """DATA[:32], which fails at image 20 the first time: mining stops with a checkpoint at 16."""

    def __init__(self) -> None:
        self.fail = True

    def __len__(self) -> int:
        return 32

    def __getitem__(self, index: int) -> torch.Tensor:
        if index == 20 and self.fail:
            raise KeyboardInterrupt
        return DATA[index]


def test_a_resumed_run_records_nothing(tmp_path: Path) -> None:
    model, data = Renamed(), Interrupted()
    checkpoint = tmp_path / "state.pt"
    with pytest.raises(KeyboardInterrupt):
        mine_topk(model, LAYERS, data, batch_size=16, progress=False, checkpoint=checkpoint, checkpoint_every=0)
    data.fail = False
    with watch_aliasing(model, data, max_images=32) as watch:
        result = mine_topk(model, LAYERS, data, batch_size=16, progress=False, checkpoint=checkpoint)
    assert watch.images == 16, "the run resumed at image 16"
    watch.record(result, batch_size=16)
    assert "aliasing" not in result.meta, "images 0..15 were not seen: nothing may be recorded"


def test_the_watch_leaves_no_hook_behind(snapshot: object) -> None:
    model = Renamed()
    before = snapshot(model)  # type: ignore[operator]
    with watch_aliasing(model, DATA):
        mine_topk(model, LAYERS, DATA, progress=False)
    before.assert_unchanged(model)
