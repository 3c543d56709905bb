"""The receptive-field-cropped reverse pass equals the full-image projection, exactly."""

from __future__ import annotations

import pytest
import torch
import torchvision
from conftest import assert_rel_close
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from captum_deconvviz import project_units
from captum_deconvviz.cropped import cropped_plan
from captum_deconvviz.zoo import ZFNetCIFAR


def _hand_built() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 6, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(3, 2, padding=1, ceil_mode=True),
        nn.Conv2d(6, 8, 3, stride=2, padding=2, dilation=2),
        nn.LeakyReLU(0.1),
        nn.AvgPool2d(2, 1, padding=1),
        nn.Conv2d(8, 8, (3, 1), padding=(1, 0)),
        nn.ReLU(),
    ).eval()


CASES = {
    # name: (builder, layer, input size)
    "hand_built": (_hand_built, "7", 37),
    "alexnet": (lambda: torchvision.models.alexnet().eval(), "features.7", 160),
    "vgg16": (lambda: torchvision.models.vgg16().eval(), "features.16", 112),
    "resnet18": (lambda: torchvision.models.resnet18().eval(), "layer2.0", 96),
    "densenet121": (lambda: torchvision.models.densenet121().eval(), "features.denseblock1", 64),
    "googlenet": (
        lambda: torchvision.models.googlenet(aux_logits=False, init_weights=False).eval(),
        "inception3a",
        96,
    ),
    "convnext_tiny": (lambda: torchvision.models.convnext_tiny().eval(), "features.1.0", 64),
    "zf_cifar_box_beyond_image": (lambda: ZFNetCIFAR().eval(), "features.9", 32),
}


def _units(channels: int, out: tuple[int, int], count: int) -> torch.Tensor:
    h, w = out
    positions = [(0, 0), (h - 1, w - 1), (0, w - 1), (h - 1, 0), (h // 2, w // 2), (1, min(1, w - 1))]
    return torch.tensor([[(7 * i) % channels, *positions[i % len(positions)]] for i in range(count)])


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("rules", ["zf", "guided"])
def test_cropped_equals_full_on_interior_and_border_units(case: str, rules: str) -> None:
    build, layer, size = CASES[case]
    torch.manual_seed(0)
    model = build()
    plan, why = cropped_plan(model, layer, (3, size, size))
    assert plan is not None, why
    x = torch.randn(6, 3, size, size)
    units = _units(plan.channels, plan.output_size, 6)
    full = project_units(model, layer, x, units, crop=False, rules=rules)
    cropped = project_units(model, layer, x, units, crop=True, rules=rules)
    assert_rel_close(cropped, full, rel=1e-5)


def test_activation_and_one_seeds_agree_with_full() -> None:
    model = torchvision.models.alexnet().eval()
    x = torch.randn(3, 3, 127, 127)
    units = torch.tensor([[5, 0, 0], [9, 2, 3], [40, 6, 6]])
    for seed in ("activation", "one"):
        full = project_units(model, "features.9", x, units, seed=seed, crop=False)
        cropped = project_units(model, "features.9", x, units, seed=seed, crop=True)
        if full.abs().max() > 0:
            assert_rel_close(cropped, full)
        else:
            assert cropped.abs().max() == 0


def test_non_local_paths_fall_back_to_the_full_image() -> None:
    model = torchvision.models.efficientnet_b0().eval()  # squeeze-excitation: global pooling in every block
    plan, why = cropped_plan(model, "features.2", (3, 64, 64))
    assert plan is None and "depends on the whole input" in why
    x = torch.randn(2, 3, 64, 64)
    units = torch.tensor([[0, 1, 1], [3, 5, 7]])
    with pytest.raises(ValueError, match="cannot be projected from crops: .*whole input"):
        project_units(model, "features.2", x, units, crop=True)
    auto = project_units(model, "features.2", x, units)  # "auto" silently uses the full image
    assert_rel_close(auto, project_units(model, "features.2", x, units, crop=False))


def test_training_mode_batch_norm_disables_cropping() -> None:
    model = torchvision.models.resnet18().eval()
    assert cropped_plan(model, "layer1", (3, 64, 64))[0] is not None
    model.layer1[0].bn1.train()
    plan, why = cropped_plan(model, "layer1", (3, 64, 64))
    assert plan is None and "training mode" in why


class _CountFlops(TorchDispatchMode):
    """Counts the FLOPs of every op torch's flop counter knows, forward and backward.

    (FlopCounterMode itself cannot watch ``torch.autograd.grad`` with respect to a leaf.)
    """

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        counter = flop_registry.get(func._overloadpacket)
        if counter is not None:
            self.total += counter(*args, **kwargs, out_val=out)
        return out


def test_vgg16_conv_layers_up_to_conv4_3_need_10x_fewer_flops() -> None:
    model = torchvision.models.vgg16().eval()
    x = torch.randn(1, 3, 224, 224)
    for layer in ("features.2", "features.7", "features.14", "features.21"):  # conv1_2, conv2_2, conv3_3, conv4_3
        plan, _ = cropped_plan(model, layer, (3, 224, 224))
        centre = torch.tensor([[0, plan.output_size[0] // 2, plan.output_size[1] // 2]])
        counts = []
        for crop in (False, True):
            with _CountFlops() as counter:
                project_units(model, layer, x, centre, crop=crop)
            counts.append(counter.total)
        assert counts[0] >= 10 * counts[1], f"{layer}: full {counts[0]:.3g} vs cropped {counts[1]:.3g} FLOPs"
