"""mine_topk against brute force on real CIFAR-10 images, crops, projections, resume, bad input."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import assert_rel_close
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from captum_deconvviz import MiningResult, NeuronZFDeconvolution, mine_topk, receptive_field
from captum_deconvviz.mining_result import MiningVerificationError
from captum_deconvviz.zoo import ZFNetCIFAR, default_sample

LAYERS = ["features.1", "features.4", "features.9"]  # ReLUs of conv1, conv2, conv4


@pytest.fixture(scope="module")
def images() -> Tensor:
    """200 real CIFAR-10 test images (the package's shipped sample), 20 of each class."""
    sample = default_sample()
    order = [c * 100 + i for i in range(20) for c in range(10)]  # round-robin over classes
    return torch.stack([sample[i][0] for i in order])


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return ZFNetCIFAR((16, 24, 24, 32)).eval()


def _activations(model: nn.Module, images: Tensor) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    hooks = [
        dict(model.named_modules())[name].register_forward_hook(lambda _m, _i, o, n=name: out.setdefault(n, o.clone()))
        for name in LAYERS
    ]
    with torch.no_grad():
        model(images)
    for hook in hooks:
        hook.remove()
    return out


def _brute_force(acts: Tensor, channel: int, k: int, unique: str, iou=None) -> list[tuple[int, int, int]]:
    """Every activation of the channel, sorted by (-value, index, y, x), then filtered."""
    n, _, h, w = acts.shape
    values = acts[:, channel].double().numpy()
    index, y, x = np.meshgrid(np.arange(n), np.arange(h), np.arange(w), indexing="ij")
    order = np.lexsort((x.ravel(), y.ravel(), index.ravel(), -values.ravel()))
    chosen: list[tuple[int, int, int]] = []
    for flat in order:
        i, yy, xx = int(index.flat[flat]), int(y.flat[flat]), int(x.flat[flat])
        if unique == "image" and any(c[0] == i for c in chosen):
            continue
        if unique == "nms" and any(c[0] == i and iou(c[1], c[2], yy, xx) for c in chosen):
            continue
        chosen.append((i, yy, xx))
        if len(chosen) == k:
            break
    return chosen


@pytest.mark.parametrize("unique", ["image", "none", "nms"])
def test_records_equal_brute_force(model: nn.Module, images: Tensor, unique: str) -> None:
    result = mine_topk(model, LAYERS, images, k=9, unique=unique, batch_size=48, progress=False)
    acts = _activations(model, images)
    for layer in LAYERS:
        rf = receptive_field(model, layer, (3, 32, 32))

        def overlaps(y1: int, x1: int, y2: int, x2: int, rf=rf) -> bool:
            a, b = rf.box(y1, x1), rf.box(y2, x2)
            inter = max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))
            area = rf.size[0] * rf.size[1]
            return inter / (2 * area - inter) > 0.5

        channels = acts[layer].shape[1]
        for channel in range(channels):
            records = result.records(layer, channel)
            expected = _brute_force(acts[layer], channel, 9, unique, overlaps)
            assert [(r.index, r.y, r.x) for r in records] == expected, f"{layer} channel {channel}"
            for record in records:
                assert record.value == float(acts[layer][record.index, channel, record.y, record.x])


def test_ties_go_to_lower_index_then_y_then_x() -> None:
    model = nn.Sequential(nn.Conv2d(1, 1, 1, bias=False)).eval()
    with torch.no_grad():
        model[0].weight.fill_(1.0)
    images = torch.zeros(5, 1, 3, 3)
    images[3, 0, 1, 2] = images[1, 0, 2, 0] = images[1, 0, 0, 1] = images[4, 0, 0, 0] = 2.0
    result = mine_topk(model, "0", images, k=4, unique="none", batch_size=2, progress=False)
    assert [(r.index, r.y, r.x) for r in result.records("0", 0)] == [(1, 0, 1), (1, 2, 0), (3, 1, 2), (4, 0, 0)]
    result = mine_topk(model, "0", images, k=5, unique="image", batch_size=3, progress=False)
    assert [(r.index, r.y, r.x, r.value) for r in result.records("0", 0)] == [
        (1, 0, 1, 2.0), (3, 1, 2, 2.0), (4, 0, 0, 2.0), (0, 0, 0, 0.0), (2, 0, 0, 0.0),
    ]  # fmt: skip


def test_stats_are_exact(model: nn.Module, images: Tensor) -> None:
    result = mine_topk(model, LAYERS, images, batch_size=37, progress=False)
    acts = _activations(model, images)
    for layer in LAYERS:
        stats, a = result.stats(layer), acts[layer]
        torch.testing.assert_close(stats.maximum, a.amax(dim=(0, 2, 3)))
        torch.testing.assert_close(stats.mean, a.double().mean(dim=(0, 2, 3)).float())
        torch.testing.assert_close(stats.fraction_active, (a.amax(dim=(2, 3)) > 0).float().mean(0))
        assert stats.images == 200
        assert torch.equal(stats.dead, (a.amax(dim=(0, 2, 3)) <= 0))


def test_dead_filter_is_flagged(images: Tensor) -> None:
    model = ZFNetCIFAR((8, 8, 8, 8)).eval()
    with torch.no_grad():
        model.features[0].weight[3].zero_()
        model.features[0].bias[3] = -1.0
    stats = mine_topk(model, "features.1", images[:20], progress=False).stats("features.1")
    assert stats.dead.nonzero().flatten().tolist() == [3]


def test_data_forms_give_the_same_result(model: nn.Module, images: Tensor) -> None:
    reference = mine_topk(model, LAYERS, images[:60], k=4, progress=False)
    labels = torch.arange(60)
    for data in (
        TensorDataset(images[:60], labels),
        DataLoader(TensorDataset(images[:60], labels), batch_size=7),
        [images[i] for i in range(60)],
    ):
        if isinstance(data, list):
            data = _ListDataset(data)
        other = mine_topk(model, LAYERS, data, k=4, progress=False)
        for layer in LAYERS:
            for c in range(reference.channels(layer)):
                assert other.records(layer, c) == reference.records(layer, c)


class _ListDataset(Dataset):
    def __init__(self, items: list[Tensor]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Tensor:
        return self.items[index]


def test_patches_equal_the_box_pixels(model: nn.Module, images: Tensor) -> None:
    result = mine_topk(model, LAYERS, images, k=9, progress=False)
    for layer in LAYERS:
        rf = result.fields[layer]
        for channel in (0, 5):
            crops = result.patches(images, layer, channel, fill=-3.0)
            assert crops.images.shape == (9, 3, *rf.size)
            for slot, record in enumerate(result.records(layer, channel)):
                # independent arithmetic: top-left = offset + y * stride, in a padded copy
                pad = 40
                padded = F.pad(images[record.index], (pad, pad, pad, pad), value=-3.0)
                top = rf.offset[0] + record.y * rf.stride[0] + pad
                left = rf.offset[1] + record.x * rf.stride[1] + pad
                expected = padded[:, top : top + rf.size[0], left : left + rf.size[1]]
                assert torch.equal(crops.images[slot], expected)
                inside = F.pad(torch.ones(32, 32, dtype=torch.bool), (pad,) * 4)[
                    top : top + rf.size[0], left : left + rf.size[1]
                ]
                assert torch.equal(crops.mask[slot], inside)


def test_projections_stay_in_the_box_and_equal_single_unit_projections(model: nn.Module, images: Tensor) -> None:
    result = mine_topk(model, LAYERS, images, k=5, progress=False)
    for layer in ("features.4", "features.9"):
        rf = result.fields[layer]
        channel = int(result.stats(layer).maximum.argmax())
        crops = result.projections(model, images, layer, channel)
        for slot, record in enumerate(result.records(layer, channel)):
            full = NeuronZFDeconvolution(model, layer).attribute(
                images[record.index : record.index + 1], (channel, record.y, record.x)
            )[0]
            top, left, bottom, right = rf.box(record.y, record.x)
            outside = full.clone()
            outside[:, max(top, 0) : max(bottom, 0), max(left, 0) : max(right, 0)] = 0
            assert outside.abs().max() == 0, "the DeconvNet signal left the receptive field"
            assert_rel_close(crops.images[slot], rf.crop(full, record.y, record.x))


def test_k_larger_than_the_data_returns_what_exists(model: nn.Module, images: Tensor) -> None:
    with pytest.warns(UserWarning, match="k=9 but only 4 images"):
        result = mine_topk(model, "features.9", images[:4], k=9, progress=False)
    assert len(result.records("features.9", 0)) == 4
    crops = result.patches(images[:4], "features.9", 0)
    assert crops.mask[4:].sum() == 0 and crops.mask[:4].any()


class _Interrupt(Exception):
    pass


def test_resume_after_an_interruption_is_identical(model: nn.Module, images: Tensor, tmp_path: Path) -> None:
    reference = mine_topk(model, LAYERS, images, k=6, batch_size=16, progress=False)
    checkpoint = tmp_path / "state.pt"
    calls = {"n": 0}

    def crash(*_: object) -> None:
        calls["n"] += 1
        if calls["n"] == 7:
            raise _Interrupt

    handle = model.features[0].register_forward_hook(crash)
    with pytest.raises(_Interrupt):
        mine_topk(model, LAYERS, images, k=6, batch_size=16, progress=False, checkpoint=checkpoint, checkpoint_every=0)
    handle.remove()
    assert checkpoint.exists()
    resumed = mine_topk(model, LAYERS, images, k=6, batch_size=16, progress=False, checkpoint=checkpoint)
    assert calls["n"] == 7  # the hook is gone; nothing else counted
    _assert_same(resumed, reference)
    with pytest.raises(ValueError, match="other arguments \\(k differ"):
        mine_topk(model, LAYERS, images, k=5, batch_size=16, progress=False, checkpoint=checkpoint)


def _assert_same(a: MiningResult, b: MiningResult) -> None:
    assert a.layers == b.layers
    for layer in a.layers:
        for c in range(a.channels(layer)):
            assert a.records(layer, c) == b.records(layer, c)
        sa, sb = a.stats(layer), b.stats(layer)
        for name in ("maximum", "mean", "fraction_active", "nan_count"):
            assert torch.equal(getattr(sa, name), getattr(sb, name)), name


def test_resume_after_a_killed_process_is_identical(tmp_path: Path) -> None:
    script = tmp_path / "run.py"
    checkpoint = tmp_path / "state.pt"
    script.write_text(
        textwrap.dedent(
            f"""
            import os, signal, sys, torch
            from captum_deconvviz import mine_topk
            from captum_deconvviz.zoo import ZFNetCIFAR
            torch.manual_seed(0)
            model = ZFNetCIFAR((8, 8, 8, 8)).eval()
            images = torch.rand(96, 3, 32, 32, generator=torch.Generator().manual_seed(1))
            if sys.argv[1] == "kill":
                seen = [0]
                def die(_module, inputs, _output):
                    if inputs[0].shape[0] == 8:  # a mining batch, not shape inference
                        seen[0] += 1
                        if seen[0] == 3:
                            os.kill(os.getpid(), signal.SIGKILL)
                model.features[0].register_forward_hook(die)
            result = mine_topk(model, ["features.1", "features.9"], images, k=5, batch_size=8, progress=False,
                               checkpoint={str(checkpoint)!r}, checkpoint_every=0)
            result.save(sys.argv[2])
            """
        )
    )
    killed = subprocess.run([sys.executable, str(script), "kill", str(tmp_path / "x.pt")], check=False)
    assert killed.returncode == -9 and checkpoint.exists()
    subprocess.run([sys.executable, str(script), "resume", str(tmp_path / "resumed.pt")], check=True)
    torch.manual_seed(0)
    model = ZFNetCIFAR((8, 8, 8, 8)).eval()
    images = torch.rand(96, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    plain = mine_topk(model, ["features.1", "features.9"], images, k=5, batch_size=8, progress=False)
    _assert_same(MiningResult.load(tmp_path / "resumed.pt"), plain)


def test_save_load_round_trip_and_verify(model: nn.Module, images: Tensor, tmp_path: Path) -> None:
    result = mine_topk(model, LAYERS, images[:50], k=3, unique="nms", progress=False, verify=True)
    result.save(tmp_path / "r.pt")
    loaded = MiningResult.load(tmp_path / "r.pt")
    _assert_same(loaded, result)
    assert loaded.fields["features.9"] == result.fields["features.9"]
    assert loaded.verify(model, images[:50]) == sum(3 * loaded.channels(layer) for layer in LAYERS)
    loaded._states["features.4"].values[2, 0] += 1.0  # tamper with one value
    with pytest.raises(MiningVerificationError, match=r"1 of \d+ records not reproduced: features.4\[2\]"):
        loaded.verify(model, images[:50])
    assert "features.9: 32 channels" in repr(result) and "<table>" in result._repr_html_()
    with pytest.raises(ValueError, match="not a saved MiningResult"):
        (tmp_path / "junk.pt").write_bytes(b"junk")
        MiningResult.load(tmp_path / "junk.pt")


def test_model_is_unchanged(model: nn.Module, images: Tensor, snapshot) -> None:
    model.train()
    before = snapshot(model)
    mine_topk(model, LAYERS, images[:40], progress=False)
    with pytest.raises(FloatingPointError):
        mine_topk(model, LAYERS, torch.full((4, 3, 32, 32), float("nan")), progress=False)
    before.assert_unchanged(model)
    model.eval()


def test_bad_input(model: nn.Module, images: Tensor) -> None:
    with pytest.raises(ValueError, match="layers='features.99' is not a module"):
        mine_topk(model, "features.99", images, progress=False)
    with pytest.raises(ValueError, match="k must be >= 1, got 0"):
        mine_topk(model, LAYERS, images, k=0, progress=False)
    with pytest.raises(ValueError, match="data is empty"):
        mine_topk(model, LAYERS, images[:0], progress=False)
    with pytest.raises(ValueError, match="unique must be one of"):
        mine_topk(model, LAYERS, images, unique="all", progress=False)
    with pytest.raises(ValueError, match="num_workers must be >= 0, got -1"):
        mine_topk(model, LAYERS, images, num_workers=-1, progress=False)
    with pytest.raises(ValueError, match="DataLoader with a RandomSampler"):
        mine_topk(model, LAYERS, DataLoader(TensorDataset(images), shuffle=True), progress=False)
    mixed = _ListDataset([images[0], images[1], F.interpolate(images[2:3], size=40)[0]])
    with pytest.raises(ValueError, match="images of different sizes in one batch"):
        mine_topk(model, LAYERS, mixed, progress=False)


def test_nan_activations_raise_or_are_skipped(images: Tensor) -> None:
    model = ZFNetCIFAR((8, 8, 8, 8)).eval()
    data = images[:30].clone()
    data[7, :, 3, 3] = float("nan")
    data[21, 0, 0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match=r"NaN activations for images \[7\]"):
        mine_topk(model, "features.1", data, batch_size=10, progress=False)
    result = mine_topk(model, "features.1", data, batch_size=10, progress=False, nan="skip")
    assert all(not math.isnan(r.value) for c in range(8) for r in result.records("features.1", c))
    assert int(result.stats("features.1").nan_count.sum()) > 0
