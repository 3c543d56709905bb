"""Mining by relevance checks its target's range on one image before the stream.

A class index the model does not have (``target=9`` on 5 outputs, or a label beyond them
with ``target="label"``) used to be refused only after the first batch's forward and
backward. These tests count what was read and run before the refusal.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from captum_deconvviz import mine_topk

CLASSES = 5


class _Net(nn.Module):
    """A small classifier that counts its forward passes and their batch sizes."""

    def __init__(self, classes: int = CLASSES) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 6, 3), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, classes))
        self.batches: list[int] = []

    def forward(self, x: Tensor) -> Tensor:
        self.batches.append(len(x))
        return self.head(self.features(x))


class _Counted(Dataset):
    """``(image, label)`` items; remembers which indices were read."""

    def __init__(self, n: int = 24, labels: Tensor | None = None) -> None:
        self.images = torch.randn(n, 3, 10, 10, generator=torch.Generator().manual_seed(1))
        self.labels = labels if labels is not None else torch.arange(n) % CLASSES
        self.read: list[int] = []

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        self.read.append(int(index))
        return self.images[index], int(self.labels[index])


def test_out_of_range_class_index_is_refused_after_one_image(tmp_path: Path) -> None:
    model, data = _Net(), _Counted()
    checkpoint = tmp_path / "mine.ckpt"
    with pytest.raises(ValueError, match=r"target 9 is out of range: the model has 5 outputs \(0 to 4\)"):
        mine_topk(
            model, ["features.1"], data, k=2, batch_size=8, progress=False, rank_by="relevance", target=9,
            checkpoint=str(checkpoint),
        )  # fmt: skip
    assert model.batches == [1]  # one image's forward, no batch
    assert data.read == [0]
    assert not checkpoint.exists()
    assert model.training  # the user's mode is back


def test_label_beyond_the_outputs_is_refused_before_the_stream() -> None:
    model, data = _Net(), _Counted()
    labels = torch.arange(len(data)) % CLASSES
    labels[17] = 7
    with pytest.raises(ValueError, match=r"target='label': the label 7 is out of range: the model has 5 outputs"):
        mine_topk(
            model, ["features.1"], data, k=2, batch_size=8, progress=False, rank_by="relevance", target="label",
            labels=labels,
        )  # fmt: skip
    assert model.batches == [1]


def test_label_read_from_the_items_is_still_refused_at_its_batch() -> None:
    # labels=True: the labels come with the batches, so the batch holding 7 is where it shows.
    labels = torch.arange(24) % CLASSES
    labels[17] = 7
    model, data = _Net(), _Counted(labels=labels)
    with pytest.raises(ValueError, match=r"target='label': the label 7 is out of range: the model has 5 outputs"):
        mine_topk(
            model, ["features.1"], data, k=2, batch_size=8, progress=False, rank_by="relevance", target="label",
            labels=True,
        )  # fmt: skip
    assert model.batches == [1, 8, 8, 8]  # the probe, then batches 0-7, 8-15, 16-23 (which holds 7)


@pytest.mark.parametrize("target", [0, CLASSES - 1, "label", "predicted"])
def test_targets_in_range_mine_as_before(target: int | str) -> None:
    model, data = _Net().eval(), _Counted()
    result = mine_topk(
        model, ["features.3"], data, k=3, batch_size=8, progress=False, rank_by="relevance", target=target,
        labels=True,
    )  # fmt: skip
    assert model.batches == [1, 8, 8, 8]
    assert result.num_images == len(data)
    # The ranking is the oracle's: activation x gradient of the target logit, by brute force per image.
    acts: dict[str, Tensor] = {}
    handle = model.features[3].register_forward_hook(lambda _m, _i, out: acts.__setitem__("a", out))
    best = []
    for i in range(len(data)):
        image = data.images[i : i + 1]
        logits = model(image)
        chosen = {"label": int(data.labels[i]), "predicted": int(logits.argmax())}.get(str(target), target)
        (grad,) = torch.autograd.grad(logits[0, int(chosen)], acts["a"])
        best.append((acts["a"] * grad).detach()[0, 2].max())
    handle.remove()
    top = torch.stack(best).topk(3)
    records = result.records("features.3", 2)
    assert torch.tensor([r.value for r in records]) == pytest.approx(top.values, rel=1e-5, abs=1e-7)
    if bool((top.values[:-1] > top.values[1:]).all()) and float(top.values[-1]) > 0:  # no ties: the images too
        assert [r.index for r in records] == top.indices.tolist()
