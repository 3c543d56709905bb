"""Receptive fields: analytic against probe, published values, boxes and crops."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from captum_deconvviz import ReceptiveField, receptive_field, receptive_field_table
from captum_deconvviz.receptive_field import measure_support


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5, 6])
def test_lecture_stacks_of_3x3_convs_see_2L_plus_1_pixels(depth: int) -> None:
    net = nn.Sequential(*[nn.Conv2d(2, 2, 3, padding=1) for _ in range(depth)])
    rf = receptive_field(net, str(depth - 1), (2, 20, 20), verify=True)
    assert rf.size == (2 * depth + 1, 2 * depth + 1)
    assert rf.stride == (1, 1) and rf.offset == (-depth, -depth)
    assert rf.box(0, 0) == (-depth, -depth, depth + 1, depth + 1)


def test_vgg16_pool5_matches_araujo_norris_sim() -> None:
    # Distill 2019, Table 1: VGG16 pool5: receptive field 212, effective stride 32, effective padding 90.
    rf = receptive_field(torchvision.models.vgg16(), "features.30", (3, 224, 224))
    assert (rf.size, rf.stride, rf.offset) == ((212, 212), (32, 32), (-90, -90))
    assert rf.output_size == (7, 7)


@pytest.mark.parametrize(
    ("arch", "layers", "size"),
    [
        ("alexnet", ["features.2", "features.12"], 127),
        ("vgg16", ["features.9", "features.23"], 96),
        ("resnet18", ["layer1", "layer3.0.conv1", "layer4"], 96),
        ("resnet50", ["layer2.0", "layer3"], 96),
        ("googlenet", ["inception3b", "maxpool3"], 96),
        ("densenet121", ["features.denseblock1", "features.transition2"], 96),
    ],
)
def test_real_architectures_analytic_equals_probe(arch: str, layers: list[str], size: int) -> None:
    kwargs = {"aux_logits": False, "init_weights": False} if arch == "googlenet" else {}
    model = getattr(torchvision.models, arch)(**kwargs).eval()
    for layer in layers:
        rf = receptive_field(model, layer, (3, size, size), verify=True)  # raises on any disagreement
        assert rf.exact and min(rf.size) > 1


def test_probe_method_measures_size_stride_offset() -> None:
    model = torchvision.models.vgg16().features
    analytic = receptive_field(model, "16", (3, 112, 112))
    probe = receptive_field(model, "16", (3, 112, 112), method="probe")
    assert probe.method == "probe"
    assert (probe.size, probe.stride, probe.offset) == (analytic.size, analytic.stride, analytic.offset)


# --------------------------------------------------------------------------------------
# Property-based: random conv/pool stacks, 1-d and 2-d, non-square and asymmetric.
# --------------------------------------------------------------------------------------


@st.composite
def window_stacks(draw: st.DrawFn, dims: int) -> tuple[nn.Sequential, tuple[int, ...]]:
    size = tuple(draw(st.integers(12, 40)) for _ in range(dims))
    layers: list[nn.Module] = []
    current = list(size)
    conv = {1: nn.Conv1d, 2: nn.Conv2d}[dims]
    max_pool = {1: nn.MaxPool1d, 2: nn.MaxPool2d}[dims]
    avg_pool = {1: nn.AvgPool1d, 2: nn.AvgPool2d}[dims]
    for _ in range(draw(st.integers(1, 5))):
        kind = draw(st.sampled_from(["conv", "conv", "max", "avg", "relu"]))
        if kind == "relu":
            layers.append(nn.ReLU())
            continue
        k = tuple(draw(st.integers(1, 5)) for _ in range(dims))
        s = tuple(draw(st.integers(1, 3)) for _ in range(dims))
        d = tuple(draw(st.integers(1, 2)) for _ in range(dims)) if kind != "avg" else (1,) * dims
        p = tuple(
            draw(st.integers(0, (ki - 1) * di // 2)) if kind != "conv" else draw(st.integers(0, 3))
            for ki, di in zip(k, d, strict=True)
        )
        if kind == "max":
            p = tuple(min(pi, ki // 2) for pi, ki in zip(p, k, strict=True))
        if kind == "avg":
            p = tuple(min(pi, ki // 2) for pi, ki in zip(p, k, strict=True))
        ceil = draw(st.booleans()) if kind != "conv" else False
        if kind == "conv":
            layer = conv(2, 2, k, s, p, d)
        elif kind == "max":
            layer = max_pool(k, s, p, d, ceil_mode=ceil)
        else:
            layer = avg_pool(k, s, p, ceil_mode=ceil)
        out = []
        for n, ki, si, pi, di in zip(current, k, s, p, d, strict=True):
            span = n + 2 * pi - di * (ki - 1) - 1
            if span < 0:
                return draw(st.nothing())
            o = (-(-span // si) if ceil else span // si) + 1
            if ceil and (o - 1) * si >= n + pi:
                o -= 1
            out.append(o)
        if min(out) < 1:
            return draw(st.nothing())
        layers.append(layer)
        current = out
    if not layers:
        layers.append(nn.ReLU())
    return nn.Sequential(conv(1, 2, 1), *layers), (1, *size)


@pytest.mark.parametrize("dims", [1, 2])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])
@given(data=st.data())
def test_random_stacks_analytic_equals_probe(dims: int, data: st.DataObject) -> None:
    net, input_shape = data.draw(window_stacks(dims))
    last = str(len(net) - 1)
    rf = receptive_field(net, last, input_shape)
    # verify=True probes the centre, its neighbours and both borders of every axis.
    receptive_field(net, last, input_shape, verify=True)
    units = [
        tuple(0 for _ in rf.output_size),
        tuple(s - 1 for s in rf.output_size),
        tuple(s // 2 for s in rf.output_size),
    ]
    measured = measure_support(net, last, input_shape, units)
    for unit, box in zip(units, measured, strict=True):
        clipped = rf.clipped_box(*unit)
        empty = any(clipped[a] >= clipped[a + dims] for a in range(dims))
        assert box == (None if empty else clipped), f"unit {unit}"


def test_ceil_mode_last_window_box_leaves_the_image() -> None:
    net = nn.Sequential(nn.Conv2d(1, 1, 1), nn.MaxPool2d(3, 2, ceil_mode=True))
    rf = receptive_field(net, "1", (1, 8, 8), verify=True)
    assert rf.output_size == (4, 4)  # floor mode would give 3
    assert rf.box(3, 3) == (6, 6, 9, 9)  # one pixel beyond the 8x8 image
    assert rf.clipped_box(3, 3) == (6, 6, 8, 8)


def test_non_square_asymmetric_geometry_by_hand() -> None:
    net = nn.Sequential(nn.Conv2d(1, 1, (3, 5), stride=(1, 2), padding=(0, 2), dilation=(2, 1)), nn.MaxPool2d((2, 1)))
    rf = receptive_field(net, "1", (1, 16, 16), verify=True)
    # conv: height k_eff = 2*(3-1)+1 = 5, width 5, stride (1, 2), pad (0, 2); pool (2, 1) over it.
    assert rf.size == (5 + 1 * 1, 5) and rf.stride == (2, 2) and rf.offset == (0, -2)


# --------------------------------------------------------------------------------------
# Merges, fallbacks and errors.
# --------------------------------------------------------------------------------------


class Misaligned(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.AvgPool2d(2, 2)  # centre of unit 0 at 0.5
        self.b = nn.Conv2d(3, 3, 1, stride=2)  # centre of unit 0 at 0

    def forward(self, x: Tensor) -> Tensor:
        return self.a(x) + self.b(x)


def test_misaligned_paths_have_the_union_of_their_boxes() -> None:
    # Unit 0 of the avg-pool path sees pixels 0-1, of the strided 1x1 conv pixel 0: the union is 0-1,
    # for every unit; the box arithmetic is the union of the two boxes, and the probe agrees.
    rf = receptive_field(nn.Sequential(Misaligned()), "0", (3, 8, 8), verify=True)
    assert (rf.size, rf.stride, rf.offset) == ((2, 2), (2, 2), (0, 0))
    assert rf.clipped_box(3, 1) == (6, 2, 8, 4)


def test_aligned_residual_takes_the_largest_field() -> None:
    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), nn.ReLU(), nn.Conv2d(2, 2, 5, padding=2))

        def forward(self, x: Tensor) -> Tensor:
            return torch.relu(self.body(x) + x)

    rf = receptive_field(nn.Sequential(Residual(), nn.Identity()), "0", (2, 16, 16), verify=True)
    assert rf.size == (7, 7) and rf.offset == (-3, -3)


def test_squeeze_excitation_keeps_the_local_field_and_says_why_it_is_global() -> None:
    class SE(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 1)

        def forward(self, x: Tensor) -> Tensor:
            h = self.conv(x)
            return h * torch.sigmoid(self.fc(F.adaptive_avg_pool2d(h, 1)))

    model = nn.Sequential(SE(), nn.Conv2d(4, 4, 3))
    rf = receptive_field(model, "1", (3, 12, 12), verify=True)  # verify: local probe == box, open probe == all
    assert rf.size == (5, 5) and rf.offset == (-1, -1)
    assert rf.global_via == ("squeeze-excitation gate at 0",)
    # With the gate's path open, every unit depends on the whole input; held fixed, on its box only.
    assert all(box == (0, 0, 12, 12) for box in measure_support(model, "1", (3, 12, 12), [(0, 0), (9, 9)]))
    assert measure_support(model, "1", (3, 12, 12), [(0, 0)], detach_global=True) == [rf.clipped_box(0, 0)]


def test_global_pooling_sees_everything() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    rf = receptive_field(model, "1", (3, 12, 12), verify=True)
    assert (rf.size, rf.output_size, rf.global_via) == ((12, 12), (1, 1), ())


def test_data_dependent_control_flow_is_analysed_at_the_given_size() -> None:
    class Branchy(nn.Sequential):
        def forward(self, x: Tensor) -> Tensor:
            for layer in self:
                x = layer(x) if x.sum() > -1e9 else x  # data-dependent: torch.fx cannot trace it
            return x

    net = Branchy(nn.Conv2d(1, 1, 3), nn.MaxPool2d(2), nn.Conv2d(1, 1, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback, no warning: the ops that ran are the graph
        rf = receptive_field(net, "2", (1, 16, 16), verify=True)
    assert (rf.size, rf.stride, rf.offset) == ((8, 8), (2, 2), (0, 0))


def test_bad_input() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 5), nn.MaxPool2d(2))
    with pytest.raises(ValueError, match="layer='conv' is not a module"):
        receptive_field(net, "conv", (3, 16, 16))
    with pytest.raises(ValueError, match=r"cannot run on input_shape=\(3, 3, 3\)"):
        receptive_field(net, "1", (3, 3, 3))
    with pytest.raises(TypeError, match="input_shape must be a tuple of ints"):
        receptive_field(net, "1", "3x16x16")
    with pytest.raises(ValueError, match="input_shape must be"):
        receptive_field(net, "1", (3, 0, 16))
    # Fields larger than the input: the probe cannot measure the size, and says the box is a bound.
    bound = receptive_field(torchvision.models.vgg16().features, "30", (3, 64, 64), method="probe")
    assert not bound.exact and all(bound.clipped_box(y, x) == (0, 0, 64, 64) for y in (0, 1) for x in (0, 1))
    with pytest.raises(ValueError, match="method must be"):
        receptive_field(net, "1", (3, 16, 16), method="exact")
    with pytest.raises(ValueError, match="channel=9 is out of range: layer '1' has 4 channels"):
        receptive_field(net, "1", (3, 16, 16), channel=9)
    with pytest.raises(TypeError, match="channel must be an int"):
        receptive_field(net, "1", (3, 16, 16), channel=True)


def test_model_state_is_restored(snapshot) -> None:
    model = torchvision.models.resnet18()  # training mode, BatchNorm would update statistics
    before = snapshot(model)
    receptive_field(model, "layer2", (3, 64, 64), verify=True)
    receptive_field_table(model, (3, 64, 64))
    before.assert_unchanged(model)


# --------------------------------------------------------------------------------------
# Boxes, crops and masks.
# --------------------------------------------------------------------------------------


def test_box_crop_and_mask_by_hand() -> None:
    rf = ReceptiveField(size=(3, 4), stride=(2, 3), offset=(-1, -2), input_size=(5, 7), output_size=(3, 3))
    image = torch.arange(2 * 5 * 7, dtype=torch.float32).reshape(2, 5, 7)
    assert rf.box(0, 0) == (-1, -2, 2, 2)
    assert rf.box(2, 2) == (3, 4, 6, 8)
    crop = rf.crop(image, 2, 2, fill=-7.0)
    expected = torch.full((2, 3, 4), -7.0)
    expected[:, 0:2, 0:3] = image[:, 3:5, 4:7]
    torch.testing.assert_close(crop, expected, rtol=0, atol=0)
    mask = rf.valid_mask(2, 2)
    assert mask.tolist() == [[True, True, True, False], [True, True, True, False], [False, False, False, False]]
    assert rf.clipped_box(0, 0) == (0, 0, 2, 2)
    with pytest.raises(ValueError, match="out of range"):
        rf.box(3, 0)
    with pytest.raises(ValueError, match="spatial size"):
        rf.crop(torch.zeros(2, 4, 7), 0, 0)


def test_crops_of_a_real_layer_equal_independently_computed_pixels() -> None:
    model = torchvision.models.alexnet().features
    rf = receptive_field(model, "5", (3, 67, 67))
    image = torch.randn(3, 67, 67)
    padded = F.pad(image, (200, 200, 200, 200), value=0.5)
    for y, x in [(0, 0), (1, 0), (rf.output_size[0] - 1, rf.output_size[1] - 1)]:
        top, left = rf.offset[0] + y * rf.stride[0] + 200, rf.offset[1] + x * rf.stride[1] + 200
        expected = padded[:, top : top + rf.size[0], left : left + rf.size[1]]
        torch.testing.assert_close(rf.crop(image, y, x, fill=0.5), expected, rtol=0, atol=0)


def test_table_lists_every_conv_and_pool_and_prints() -> None:
    table = receptive_field_table(torchvision.models.alexnet(), (3, 224, 224))
    names = [name for name, _, _ in table]
    assert names == ["features.0", "features.2", "features.3", "features.5", "features.6", "features.8",
                     "features.10", "features.12", "avgpool"]  # fmt: skip
    text = str(table)
    assert "features.12" in text and "195x195" in text and "32x32" in text
    assert table.to_markdown().startswith("| layer | type | map | size | stride | offset |")
    assert "<table>" in table._repr_html_()
