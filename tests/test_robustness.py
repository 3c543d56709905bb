"""Input variants at every public entry point, and injected failures at every stage.

Input variants (channels-last, non-contiguous, batch size 1, float64) must give the
result of the plain contiguous float32 call; wrong dtypes and devices must give a
clear error naming the argument. Failures injected in the forward, the backward, the
cropped pass and while saving must leave the model (weights, modes, requires_grad,
hooks) and the files on disk as they were.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import assert_rel_close
from torch import Tensor, nn

import captum_deconvviz.cropped as cropped
import captum_deconvviz.mining_result as mining_result
from captum_deconvviz import (
    MiningResult,
    NeuronZFDeconvolution,
    ZFDeconvolution,
    compare_methods,
    mine_topk,
    project_units,
)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2, padding=1),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    ).eval()  # fmt: skip


X = torch.randn(3, 3, 12, 12, generator=torch.Generator().manual_seed(1))


def _strongest_units(channels: tuple[int, ...] = (0, 3, 7)) -> Tensor:
    """For image i, the strongest position of channel ``channels[i]`` of layer "4" (a non-zero projection)."""
    with torch.no_grad():
        maps = _net()[:5](X)
    rows = []
    for i, c in enumerate(channels):
        flat = int(maps[i, c].argmax())
        rows.append([c, flat // maps.shape[-1], flat % maps.shape[-1]])
    return torch.tensor(rows)


UNITS = _strongest_units()

# name: (call, whether its result is a MiningResult)
ENTRY_POINTS: dict[str, Callable[[nn.Module, Tensor], object]] = {
    "ZFDeconvolution": lambda m, x: ZFDeconvolution(m).attribute(x, target=1),
    "NeuronZFDeconvolution": lambda m, x: NeuronZFDeconvolution(m, "3").attribute(x, (2, 1, 3)),
    "project_units": lambda m, x: project_units(m, "4", x, UNITS[: len(x)], crop=False),
    "project_units(crop)": lambda m, x: project_units(m, "4", x, UNITS[: len(x)], crop=True),
    "compare_methods": lambda m, x: compare_methods(m, x, target=2, methods=["zf_deconv", "guided_backprop"]).maps[
        "zf_deconv"
    ],
    "mine_topk": lambda m, x: mine_topk(m, ["1", "4"], x, k=2, unique="none", progress=False),
}


def _same(a: object, b: object) -> None:
    if isinstance(a, MiningResult):
        assert isinstance(b, MiningResult)
        for layer in a.layers:
            for c in range(a.channels(layer)):
                ra, rb = a.records(layer, c), b.records(layer, c)
                # Positions exactly; values up to float rounding (other conv kernels may run).
                assert [(r.index, r.y, r.x) for r in ra] == [(r.index, r.y, r.x) for r in rb], (layer, c)
                assert_rel_close(torch.tensor([r.value for r in rb]), torch.tensor([r.value for r in ra]))
        return
    assert isinstance(a, Tensor) and isinstance(b, Tensor)
    assert_rel_close(b.double(), a.double())


@pytest.fixture(scope="module")
def x() -> Tensor:
    return X.clone()


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_input_layouts_give_the_plain_result(entry: str, x: Tensor, snapshot) -> None:
    call, model = ENTRY_POINTS[entry], _net()
    before = snapshot(model)
    reference = call(model, x)
    channels_last = x.to(memory_format=torch.channels_last)
    assert not channels_last.is_contiguous()
    _same(reference, call(model, channels_last))
    non_contiguous = x.transpose(2, 3).contiguous().transpose(2, 3)
    assert not non_contiguous.is_contiguous() and torch.equal(non_contiguous, x)
    _same(reference, call(model, non_contiguous))
    before.assert_unchanged(model)


@pytest.mark.parametrize("entry", ["ZFDeconvolution", "NeuronZFDeconvolution", "project_units", "compare_methods"])
def test_batch_of_one_equals_its_row_of_a_batch(entry: str, x: Tensor) -> None:
    call, model = ENTRY_POINTS[entry], _net()
    batch = call(model, x)
    for row in range(len(x)):
        units_row = x[row : row + 1]
        if entry == "project_units":  # one unit per image: the row's own unit
            single = project_units(model, "4", units_row, UNITS[row : row + 1], crop=False)
        else:
            single = call(model, units_row)
        assert_rel_close(single[0], batch[row])


def test_batch_of_one_mines_like_a_batch(x: Tensor) -> None:
    model = _net()
    whole = mine_topk(model, ["4"], x, k=2, unique="none", batch_size=3, progress=False)
    one_by_one = mine_topk(model, ["4"], x, k=2, unique="none", batch_size=1, progress=False)
    _same(whole, one_by_one)


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_float64_model_and_inputs_work(entry: str, x: Tensor) -> None:
    call = ENTRY_POINTS[entry]
    single = call(_net(), x)
    double = call(_net().double(), x.double())
    _same(single, double)


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_wrong_dtypes_are_refused_clearly(entry: str, x: Tensor, snapshot) -> None:
    call, model = ENTRY_POINTS[entry], _net()
    before = snapshot(model)
    where = "data" if entry == "mine_topk" else "inputs"
    with pytest.raises(TypeError, match=rf"{where}.*float64 does not match the model's parameters \(float32\)"):
        call(model, x.double())
    with pytest.raises(TypeError, match=rf"{where}.*must be a floating-point tensor.*uint8"):
        call(model, (x * 40).clamp(0, 255).to(torch.uint8))
    before.assert_unchanged(model)


@pytest.mark.parametrize("entry", sorted(set(ENTRY_POINTS) - {"mine_topk"}))
def test_inputs_on_another_device_are_refused_clearly(entry: str, x: Tensor) -> None:
    # The meta device stands in for a GPU: same check, no GPU needed.
    with pytest.raises(ValueError, match="inputs is on meta but the model is on cpu"):
        ENTRY_POINTS[entry](_net(), x.to("meta"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device: CPU/GPU mismatches both ways")
def test_cpu_and_cuda_mismatches_are_refused_clearly(x: Tensor) -> None:
    with pytest.raises(ValueError, match="inputs is on cuda:0 but the model is on cpu"):
        ZFDeconvolution(_net()).attribute(x.cuda(), target=1)
    with pytest.raises(ValueError, match="inputs is on cpu but the model is on cuda:0"):
        ZFDeconvolution(_net().cuda()).attribute(x, target=1)
    # Mining moves each batch to the model's device: CPU data, CUDA model is fine.
    mined = mine_topk(_net().cuda(), ["4"], x, k=2, progress=False)
    _same(mine_topk(_net(), ["4"], x, k=2, progress=False), mined)


class _FailingBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx: object, t: Tensor) -> Tensor:
        return t.clone()

    @staticmethod
    def backward(ctx: object, grad: Tensor) -> Tensor:
        raise RuntimeError("injected backward failure")


class _NetWithFailingBackward(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = _net()

    def forward(self, x: Tensor) -> Tensor:
        return self.body[3:](_FailingBackward.apply(self.body[:3](x)))


@pytest.mark.parametrize("entry", ["ZFDeconvolution", "compare_methods"])
def test_failure_in_the_backward_leaves_the_model_unchanged(entry: str, x: Tensor, snapshot) -> None:
    model = _NetWithFailingBackward().eval()
    model.body[3].weight.requires_grad_(False)
    before = snapshot(model)
    with pytest.raises(RuntimeError, match="injected backward failure"):
        ENTRY_POINTS[entry](model, x)
    before.assert_unchanged(model)


def test_failure_in_the_cropped_pass_leaves_the_model_unchanged(
    x: Tensor, snapshot, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _net()
    before = snapshot(model)

    def fail(*_: object, **__: object) -> None:
        raise RuntimeError("injected cropping failure")

    monkeypatch.setattr(cropped.CroppedPlan, "project", fail)
    with pytest.raises(RuntimeError, match="injected cropping failure"):
        project_units(model, "4", x, UNITS, crop=True)
    before.assert_unchanged(model)


def _failing_save_after(count: int, monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """torch.save as mining_result sees it: writes half a file, then fails, from call ``count`` on."""
    real_save, calls = torch.save, {"n": 0}

    def save(obj: object, f: object, *args: object, **kwargs: object) -> None:
        calls["n"] += 1
        if calls["n"] >= count:
            Path(str(f)).write_bytes(b"half a file")
            raise OSError("injected: disk full")
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(mining_result.torch, "save", save)
    return calls


def test_failed_save_keeps_the_previous_file(x: Tensor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _net()
    old = mine_topk(model, ["4"], x[:2], k=1, progress=False)
    path = tmp_path / "result.pt"
    old.save(path)
    new = mine_topk(model, ["4"], x, k=2, progress=False)
    _failing_save_after(1, monkeypatch)
    with pytest.raises(OSError, match="disk full"):
        new.save(path)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.pt"]  # no temporary file left
    _same(old, MiningResult.load(path))


def test_failed_checkpoint_save_leaves_a_resumable_checkpoint(
    x: Tensor, tmp_path: Path, snapshot, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _net()
    before = snapshot(model)
    data = x.repeat(4, 1, 1, 1) + torch.randn(12, 3, 12, 12, generator=torch.Generator().manual_seed(2))
    reference = mine_topk(model, ["1", "4"], data, k=3, batch_size=2, progress=False)
    checkpoint = tmp_path / "state.pt"
    calls = _failing_save_after(3, monkeypatch)  # two checkpoints succeed, the third fails
    with pytest.raises(OSError, match="disk full"):
        mine_topk(model, ["1", "4"], data, k=3, batch_size=2, progress=False, checkpoint=checkpoint, checkpoint_every=0)
    monkeypatch.undo()
    assert calls["n"] == 3
    before.assert_unchanged(model)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.pt"]
    resumed = mine_topk(model, ["1", "4"], data, k=3, batch_size=2, progress=False, checkpoint=checkpoint)
    _same(reference, resumed)
    for layer in reference.layers:
        for name in ("maximum", "mean", "fraction_active"):
            assert torch.equal(getattr(reference.stats(layer), name), getattr(resumed.stats(layer), name))
