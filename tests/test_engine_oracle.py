"""The engine against independent oracles: an explicit reverse network and hand-computed cases."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from conftest import assert_rel_close
from oracles import explicit_deconvnet, strongest_units, unpool_accumulate
from torch import nn

from captum_deconvviz import NeuronZFDeconvolution, ZFDeconvolution, project_units


def _hand_built() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 8, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(3, 2, padding=1),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 16, 3, stride=2, dilation=2, padding=1),
        nn.ReLU(),
    ).eval()


CASES = {
    # name: (model features, input size, layers to project from)
    "hand_built": (_hand_built, 29, [1, 2, 4, 5, 7]),
    "alexnet": (lambda: torchvision.models.alexnet().features.eval(), 127, [1, 2, 4, 7, 9, 11, 12]),
    "vgg16": (lambda: torchvision.models.vgg16().features.eval(), 64, [3, 8, 15, 22, 29, 30]),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("seed", ["activation", "one"])
def test_project_units_equals_explicit_deconvnet(case: str, seed: str) -> None:
    build, size, layers = CASES[case]
    features = build()
    x = torch.randn(3, 3, size, size)
    for stop in layers:
        with torch.no_grad():
            acts = features[: stop + 1](x)
        units = strongest_units(acts, ranks=[0, 2, 5])
        assert bool((acts[torch.arange(3), units[:, 0], units[:, 1], units[:, 2]] > 0).all())
        ours = project_units(features, str(stop), x, units, seed=seed)
        oracle = explicit_deconvnet(list(features), x, stop, units, seed=seed)
        assert_rel_close(ours, oracle, rel=1e-5)


def test_guided_rule_equals_explicit_guided_network() -> None:
    features = torchvision.models.alexnet().features.eval()
    x = torch.randn(2, 3, 127, 127)
    with torch.no_grad():
        acts = features[:10](x)
    units = strongest_units(acts, ranks=[0, 4])
    ours = project_units(features, "9", x, units, rules="guided")
    oracle = explicit_deconvnet(list(features), x, 9, units, rule="guided")
    assert_rel_close(ours, oracle, rel=1e-5)
    zf = explicit_deconvnet(list(features), x, 9, units, rule="zf")
    assert (oracle - zf).abs().max() > 1e-3 * zf.abs().max(), "guided and ZF rules should differ here"


def test_vgg_oracle_with_max_unpool_agrees_since_windows_do_not_overlap() -> None:
    features = torchvision.models.vgg16().features.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        acts = features[:24](x)
    units = strongest_units(acts, ranks=[1, 6])
    ours = project_units(features, "23", x, units)
    assert_rel_close(ours, explicit_deconvnet(list(features), x, 23, units, unpool="max_unpool2d"), rel=1e-5)


def test_overlapping_pools_sum_where_switches_are_shared() -> None:
    """AlexNet's 3x3/2 pools: MaxUnpool2d (assignment) loses signal that the adjoint sums."""
    features = torchvision.models.alexnet().features.eval()
    x = torch.randn(2, 3, 127, 127)
    with torch.no_grad():
        acts = features[:13](x)
    units = strongest_units(acts, ranks=[0, 3])
    ours = project_units(features, "12", x, units)
    summed = explicit_deconvnet(list(features), x, 12, units)
    assigned = explicit_deconvnet(list(features), x, 12, units, unpool="max_unpool2d")
    assert_rel_close(ours, summed, rel=1e-5)
    assert (ours - assigned).abs().max() > 1e-3 * ours.abs().max()


def test_switch_unpooling_equals_unpool_accumulate_at_the_pool() -> None:
    pool = nn.MaxPool2d(3, 2)
    x = torch.randn(2, 4, 9, 9)
    with torch.no_grad():
        _, switches = F.max_pool2d(x, 3, 2, return_indices=True)
    grad_out = torch.randn(2, 4, 4, 4)
    attributions = NeuronZFDeconvolution(pool, pool).attribute(
        x, lambda out: (out * grad_out).flatten(1).sum(1), seed="one"
    )
    assert_rel_close(attributions, unpool_accumulate(grad_out, switches, x.shape))


# --------------------------------------------------------------------------------------
# Hand-computed tiny cases: 4x4 input, 2x2 pooling.
# --------------------------------------------------------------------------------------

X4 = torch.tensor(
    [
        [1.0, 5.0, -2.0, 0.0],
        [3.0, 4.0, 8.0, 1.0],
        [0.0, 2.0, 6.0, 7.0],
        [9.0, 1.0, 3.0, 3.0],
    ]
).reshape(1, 1, 4, 4)


def _linear(weights: list[float]) -> nn.Linear:
    fc = nn.Linear(len(weights), 1, bias=False)
    with torch.no_grad():
        fc.weight.copy_(torch.tensor([weights]))
    return fc


def test_hand_computed_2x2_pool() -> None:
    # relu -> max-pool 2x2/2 -> flatten -> linear (weights 1, -2, 3, 0.5)
    # pooled maxima: 5 at (0,1), 8 at (1,2), 9 at (3,0), 7 at (2,3).
    # reverse: linear^T gives (1, -2, 3, 0.5) at those switches; the ReLU then rectifies -2 to 0.
    model = nn.Sequential(nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), _linear([1.0, -2.0, 3.0, 0.5])).eval()
    expected = torch.tensor(
        [
            [0.0, 1.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.5],
            [3.0, 0.0, 0.0, 0.0],
        ]
    ).reshape(1, 1, 4, 4)
    ours = ZFDeconvolution(model).attribute(X4.clone(), target=0)
    torch.testing.assert_close(ours, expected, rtol=0, atol=0)
    # The plain gradient keeps the negative entry: the DeconvNet rule made the difference.
    x = X4.clone().requires_grad_(True)
    (plain,) = torch.autograd.grad(model(x).sum(), x)
    assert plain[0, 0, 1, 2] == -2.0


def test_hand_computed_overlapping_2x2_pool_sums_shared_switches() -> None:
    x = torch.tensor(
        [
            [0.0, 1.0, 2.0, 3.0],
            [4.0, 9.0, 5.0, 6.0],
            [7.0, 8.0, 1.0, 0.0],
            [2.0, 3.0, 4.0, 5.0],
        ]
    ).reshape(1, 1, 4, 4)
    # 2x2 windows, stride 1 -> 3x3 maxima: 9 wins four windows, 6 two, 8 two, 5 one.
    # linear weights w = 1..9 (row-major over the 3x3 map):
    #   (1,1) gets 1+2+4+5 = 12, (1,3) gets 3+6 = 9, (2,1) gets 7+8 = 15, (3,3) gets 9.
    model = nn.Sequential(nn.MaxPool2d(2, stride=1), nn.Flatten(), _linear([float(i) for i in range(1, 10)]))
    expected = torch.tensor(
        [
            [0.0, 0.0, 0.0, 0.0],
            [0.0, 12.0, 0.0, 9.0],
            [0.0, 15.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 9.0],
        ]
    ).reshape(1, 1, 4, 4)
    torch.testing.assert_close(ZFDeconvolution(model.eval()).attribute(x, target=0), expected, rtol=0, atol=0)


def test_hand_computed_projection_of_one_pooled_unit() -> None:
    # Conv 1x1 with weight 2 -> ReLU -> max-pool 2x2/2. Unit (0, 1, 0) is the maximum 2*9 = 18 at (3, 0).
    # Seeded with its activation 18: pool^T puts 18 at (3, 0); ReLU keeps it; conv^T multiplies by 2.
    conv = nn.Conv2d(1, 1, 1)
    with torch.no_grad():
        conv.weight.fill_(2.0)
        conv.bias.fill_(-1.0)  # biases play no part in the reverse pass
    model = nn.Sequential(conv, nn.ReLU(), nn.MaxPool2d(2)).eval()
    expected = torch.zeros(1, 1, 4, 4)
    expected[0, 0, 3, 0] = 2.0 * (2.0 * 9.0 - 1.0)
    ours = project_units(model, "2", X4.clone(), torch.tensor([[0, 1, 0]]))
    torch.testing.assert_close(ours, expected, rtol=0, atol=0)
    torch.testing.assert_close(
        project_units(model, "2", X4.clone(), torch.tensor([[0, 1, 0]]), seed="one"), expected / 17.0
    )
