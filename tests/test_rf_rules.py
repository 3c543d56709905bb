"""The geometry rules of the receptive-field analysis, each against the gradient probe.

``receptive_field(..., verify=True)`` measures the gradient support of the centre unit,
its neighbours and the border units of the layer on a positive-weight copy of the model
and raises if any differs from the analytic box clipped to the image; the tests below
also compare boxes with :func:`measure_support` directly, per channel where fields differ.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from captum_deconvviz import receptive_field, receptive_field_table
from captum_deconvviz.receptive_field import measure_support

SETTINGS = settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _agrees_everywhere(model: nn.Module, layer: str, shape: tuple[int, ...], channel: int | None = None) -> None:
    """Every unit position's analytic clipped box equals its probe support.

    Fields are separable per axis, so a full row and a full column through the middle, and
    the corners, reach every position of each axis.
    """
    rf = receptive_field(model, layer, shape, channel=channel)
    h, w = rf.output_size
    units = sorted(
        {(y, w // 2) for y in range(h)}
        | {(h // 2, x) for x in range(w)}
        | {(0, 0), (0, w - 1), (h - 1, 0), (h - 1, w - 1)}
    )
    measured = measure_support(model, layer, shape, units, channel=channel, detach_global=True)
    for unit, box in zip(units, measured, strict=True):
        expected = rf.clipped_box(*unit)
        if expected[0] >= expected[2] or expected[1] >= expected[3]:
            expected = None
        assert box == expected, f"unit {unit}: analytic {expected}, probe {box}"


# --------------------------------------------------------------------------------------
# Merges.
# --------------------------------------------------------------------------------------


class AvgShortcut(nn.Module):
    """ResNet-D: the shortcut average-pools before a 1x1 conv; the body is a strided 3x3 conv."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Conv2d(2, 3, 3, stride=2, padding=1)
        self.short = nn.Sequential(nn.AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False), nn.Conv2d(2, 3, 1))

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.body(x) + self.short(x))


@given(size=st.integers(6, 17))
@SETTINGS
def test_misaligned_merge_is_the_union_of_the_paths(size: int) -> None:
    model = nn.Sequential(nn.Conv2d(2, 2, 3), AvgShortcut(), nn.Conv2d(3, 2, 3, padding=1))
    rf = receptive_field(model, "2", (2, size, size))
    assert rf.exact
    _agrees_everywhere(model, "2", (2, size, size))


# --------------------------------------------------------------------------------------
# Channel-only ops: split, chunk, narrow, shuffle; per-channel fields.
# --------------------------------------------------------------------------------------


class ShuffleBlock(nn.Module):
    """ShuffleNet v2: half the channels pass through, half see a 3x3 conv; then a channel shuffle."""

    def __init__(self, channels: int = 4) -> None:
        super().__init__()
        self.branch = nn.Conv2d(channels // 2, channels // 2, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        a, b = x.chunk(2, dim=1)
        out = torch.cat((a, self.branch(b)), dim=1)
        n, c, h, w = out.shape
        return out.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, c, h, w)


class Res2Split(nn.Module):
    """Res2Net: split into groups, each group adds the previous group's output before its conv."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(2, 2, 3, padding=1) for _ in range(2))

    def forward(self, x: Tensor) -> Tensor:
        parts = torch.split(x, 2, dim=1)
        outs, previous = [], None
        for i, conv in enumerate(self.convs):
            sp = parts[i] if previous is None else parts[i] + previous
            previous = conv(sp)
            outs.append(previous)
        outs.append(x.narrow(1, 4, 2))
        return torch.cat(outs, dim=1)


def test_channel_split_and_shuffle_keep_per_channel_fields() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 1), ShuffleBlock(), ShuffleBlock())
    shape = (3, 12, 12)
    sizes = [receptive_field(model, "2", shape, channel=c).size for c in range(4)]
    # Block 1 gives fields [1, 1, 3, 3], shuffled to [1, 3, 1, 3]; block 2 passes [1, 3] through and
    # convolves the hull of [1, 3] into two 5x5 channels: [1, 3, 5, 5], shuffled to [1, 5, 3, 5].
    assert sizes == [(1, 1), (5, 5), (3, 3), (5, 5)]
    assert receptive_field(model, "2", shape).size == (5, 5)  # the layer's field: the widest
    for c in range(4):
        _agrees_everywhere(model, "2", shape, channel=c)


def test_res2net_hierarchical_split_grows_per_group() -> None:
    model = nn.Sequential(nn.Conv2d(3, 6, 1), Res2Split())
    shape = (3, 14, 14)
    assert [receptive_field(model, "1", shape, channel=c).size[0] for c in range(6)] == [3, 3, 5, 5, 1, 1]
    for c in (0, 2, 4):
        _agrees_everywhere(model, "1", shape, channel=c)


def test_densenet_concat_layer_gives_each_channel_its_own_field() -> None:
    import torchvision

    model = torchvision.models.densenet121().eval()
    shape = (3, 40, 40)
    layer = "features.denseblock1"
    whole = receptive_field(model, layer, shape)
    first = receptive_field(model, layer, shape, channel=0)  # the block's input, passed through
    last = receptive_field(model, layer, shape, channel=whole_channels(model, layer, shape) - 1)
    assert first.size < last.size == whole.size
    for rf in (first, last):
        units = [(2, 2), (0, 0)]
        probe = measure_support(model, layer, shape, units, channel=rf.channel)
        assert probe == [rf.clipped_box(*u) for u in units]


def whole_channels(model: nn.Module, layer: str, shape: tuple[int, ...]) -> int:
    out = {}
    handle = dict(model.named_modules())[layer].register_forward_hook(lambda m, i, o: out.setdefault("o", o))
    with torch.no_grad():
        model(torch.zeros(1, *shape))
    handle.remove()
    return int(out["o"].shape[1])


# --------------------------------------------------------------------------------------
# Padding.
# --------------------------------------------------------------------------------------


class Padded(nn.Module):
    def __init__(self, pad: tuple[int, int, int, int], mode: str) -> None:
        super().__init__()
        self.pad, self.mode = pad, mode
        self.conv1, self.conv2 = nn.Conv2d(2, 2, 3), nn.Conv2d(2, 2, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(F.pad(self.conv1(x), self.pad, mode=self.mode))


@given(
    pad=st.tuples(st.integers(0, 2), st.integers(0, 2), st.integers(0, 2), st.integers(0, 2)),
    mode=st.sampled_from(["constant", "reflect", "replicate", "circular"]),
    size=st.integers(8, 13),
)
@SETTINGS
def test_pad_in_every_mode(pad: tuple[int, int, int, int], mode: str, size: int) -> None:
    model = Padded(pad, mode)
    _agrees_everywhere(model, "conv2", (2, size, size))
    rf = receptive_field(model, "conv2", (2, size, size))
    # The box is the geometric window: shifted by the padding before the second conv.
    assert rf.offset == (-pad[2] * 1, -pad[0] * 1) and rf.size == (5, 5)


class TfSamePad(nn.Module):
    """TF "same" padding, computed at run time from the input size (timm's pad_same)."""

    def __init__(self, kernel: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, kernel, stride=stride)

    def forward(self, x: Tensor) -> Tensor:
        pads = []
        for size in reversed(x.shape[-2:]):
            k, s = self.conv.kernel_size[0], self.conv.stride[0]
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return self.conv(F.pad(x, pads))


@given(kernel=st.integers(1, 5), stride=st.integers(1, 3), size=st.integers(7, 16))
@SETTINGS
def test_dynamic_same_padding(kernel: int, stride: int, size: int) -> None:
    model = nn.Sequential(TfSamePad(kernel, stride), nn.ReLU(), TfSamePad(3, 2))
    rf = receptive_field(model, "2", (2, size, size))
    assert rf.output_size == (math.ceil(math.ceil(size / stride) / 2),) * 2
    _agrees_everywhere(model, "2", (2, size, size))


# --------------------------------------------------------------------------------------
# Upsampling.
# --------------------------------------------------------------------------------------


@given(
    mode=st.sampled_from(["nearest", "bilinear", "bicubic", "nearest-exact"]),
    scale=st.sampled_from([2, 3, 1.5]),
    align=st.booleans(),
    size=st.integers(5, 9),
)
@SETTINGS
def test_nearest_and_bilinear_upsampling(mode: str, scale: float, align: bool, size: int) -> None:
    align_corners = align if mode in ("bilinear", "bicubic") else None
    model = nn.Sequential(
        nn.Conv2d(2, 2, 3, stride=2),
        nn.Upsample(scale_factor=scale, mode=mode, align_corners=align_corners),
        nn.Conv2d(2, 2, 3, padding=1),
    )
    shape = (2, 2 * size + 1, 2 * size + 1)
    rf = receptive_field(model, "2", shape)
    assert not rf.exact  # fractional jumps: the box arithmetic is a documented bound...
    _agrees_everywhere(model, "2", shape)  # ...while every unit's reach is exact
    for y in range(rf.output_size[0]):  # and the bound contains the reach
        top, left, bottom, right = rf.box(y, y)
        reach = rf.clipped_box(y, y)
        assert top <= reach[0] and bottom >= reach[2] and left <= reach[1] and right >= reach[3]


def test_transposed_convolution_reach_is_exact() -> None:
    model = nn.Sequential(nn.Conv2d(2, 2, 3, stride=2), nn.ConvTranspose2d(2, 2, 4, stride=2, padding=1))
    _agrees_everywhere(model, "1", (2, 15, 15))


# --------------------------------------------------------------------------------------
# Functional convolutions with computed weights; tuple-valued layers; fallbacks.
# --------------------------------------------------------------------------------------


class StdConv(nn.Conv2d):
    """NFNet's weight-standardized convolution: the weights are computed in forward."""

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight
        w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


def test_functional_conv_with_computed_weights() -> None:
    model = nn.Sequential(StdConv(3, 4, 3, stride=2, padding=1), nn.ReLU(), StdConv(4, 4, 3, dilation=2, groups=2))
    rf = receptive_field(model, "2", (3, 17, 17), verify=True)
    assert (rf.size, rf.stride, rf.offset) == ((11, 11), (2, 2), (-1, -1))
    _agrees_everywhere(model, "2", (3, 17, 17))


class TwoBranches(nn.Module):
    """An HRNet-like stage: returns a list of maps at two resolutions."""

    def __init__(self) -> None:
        super().__init__()
        self.high, self.low = nn.Conv2d(3, 2, 3, padding=1), nn.Conv2d(3, 2, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> list[Tensor]:
        return [self.high(x), self.low(x)]


class TupleNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stage = TwoBranches()
        self.fuse = nn.Conv2d(2, 2, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        high, low = self.stage(x)
        return self.fuse(high + F.interpolate(low, size=high.shape[-2:], mode="nearest"))


def test_tuple_valued_layer_picks_an_element() -> None:
    model = TupleNet()
    high = receptive_field(model, "stage[0]", (3, 12, 12), verify=True)
    low = receptive_field(model, "stage[1]", (3, 12, 12), verify=True)
    assert (high.size, high.stride, low.size, low.stride) == ((3, 3), (1, 1), (3, 3), (2, 2))
    with pytest.raises(
        ValueError, match=r"outputs a list; pick one tensor of it: choose one of stage\[0\], stage\[1\]"
    ):
        receptive_field(model, "stage", (3, 12, 12))
    with pytest.raises(ValueError, match=r"has no item 2"):
        receptive_field(model, "stage[2]", (3, 12, 12))
    _agrees_everywhere(model, "fuse", (3, 12, 12))


def test_an_op_without_a_rule_falls_back_to_the_probe_with_one_warning() -> None:
    class Unfolding(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            cols = F.unfold(x, 3, padding=1)  # im2col: no geometry rule
            return cols.view(x.shape[0], -1, *x.shape[-2:])

    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), Unfolding(), nn.Conv2d(18, 2, 1))
    with pytest.warns(UserWarning, match=r"no rule for the op 'unfold' at '1'.*gradient probe") as record:
        rf = receptive_field(model, "2", (1, 12, 12))
    assert len([w for w in record if "no rule" in str(w.message)]) == 1
    assert rf.method == "probe" and rf.size == (5, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert receptive_field(model, "0", (1, 12, 12)).method == "analytic"  # layers before it stay analytic


def test_group_norm_statistics_are_reported_not_hidden() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.ReLU(), nn.Conv2d(4, 4, 3))
    rf = receptive_field(model, "3", (3, 12, 12), verify=True)
    assert rf.size == (5, 5)
    assert rf.global_via == ("GroupNorm statistics at 1",)
    assert measure_support(model, "3", (3, 12, 12), [(0, 0)]) == [(0, 0, 12, 12)]


def test_layer_norm_over_channels_only_is_local() -> None:
    class ChannelsLastNorm(nn.Module):  # ConvNeXt's LayerNorm2d
        def __init__(self) -> None:
            super().__init__()
            self.norm = nn.LayerNorm(4)

        def forward(self, x: Tensor) -> Tensor:
            return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    model = nn.Sequential(nn.Conv2d(3, 4, 3), ChannelsLastNorm(), nn.Conv2d(4, 4, 3))
    rf = receptive_field(model, "2", (3, 12, 12), verify=True)
    assert rf.size == (5, 5) and rf.global_via == ()


def test_compiled_models_are_unwrapped() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2))
    compiled = torch.compile(model, backend="eager")
    rf = receptive_field(compiled, "2", (3, 12, 12))
    assert rf == receptive_field(model, "2", (3, 12, 12))
    assert [row[0] for row in receptive_field_table(compiled, (3, 12, 12))] == ["0", "2"]


def test_tuple_valued_layer_in_mining_and_projections() -> None:
    from captum_deconvviz import mine_topk, project_units

    model = TupleNet().eval()
    data = torch.randn(16, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    result = mine_topk(model, ["stage[1]"], data, k=2, progress=False, verify=True)  # verify: brute force
    record = result.records("stage[1]", 1)[0]
    # The projection of the best record equals project_units on the picked output, seeded the same.
    unit = torch.tensor([[1, record.y, record.x]])
    expected = project_units(model, "stage[1]", data[record.index : record.index + 1], unit)
    got = result.projections(model, data, "stage[1]", 1).images[0]  # cropped to the unit's field
    rf = receptive_field(model, "stage[1]", (3, 12, 12))
    torch.testing.assert_close(got, rf.crop(expected[0], record.y, record.x), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"outputs a list; mining needs a tensor: pick one, stage\[0\], stage\[1\]"):
        mine_topk(model, ["stage"], data, k=2, progress=False)


def test_compiled_models_are_mined_without_dynamo() -> None:
    from captum_deconvviz import ZFDeconvolution, mine_topk

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(100, 3)).eval()
    compiled = torch.compile(model, backend="eager")
    x = torch.randn(4, 3, 12, 12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no recompile warnings from dynamo
        assert torch.equal(ZFDeconvolution(compiled).attribute(x, target=0), ZFDeconvolution(model).attribute(x, 0))
        mined = mine_topk(compiled, ["2"], x, k=2, progress=False)
    assert mined.records("2", 0) == mine_topk(model, ["2"], x, k=2, progress=False).records("2", 0)
