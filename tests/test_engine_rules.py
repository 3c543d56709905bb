"""Each op spelling gets its rule; the mode leaves nothing behind; Captum tools accept our output."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import matplotlib
import pytest
import torch
import torch.nn.functional as F
from captum.attr import NoiseTunnel
from captum.attr import visualization as viz
from conftest import assert_rel_close
from torch import Tensor, nn

from captum_deconvviz import ZFDeconvolution, engine
from captum_deconvviz.engine import ReverseRules

matplotlib.use("Agg")

RELU_SPELLINGS: dict[str, Callable[[Tensor], Tensor]] = {
    "nn.ReLU": nn.ReLU(),
    "nn.ReLU(inplace)": nn.ReLU(inplace=True),
    "F.relu": F.relu,
    "F.relu(inplace)": lambda t: F.relu(t, inplace=True),
    "F.relu_": F.relu_,
    "torch.relu": torch.relu,
    "torch.relu_": torch.relu_,
    "Tensor.relu": lambda t: t.relu(),
    "Tensor.relu_": lambda t: t.relu_(),
    "F.threshold(0, 0)": lambda t: F.threshold(t, 0.0, 0.0),
    "torch.clamp(min=0)": lambda t: torch.clamp(t, min=0),
    "Tensor.clamp_min(0)": lambda t: t.clamp_min(0),
}


def _reverse(act: Callable[[Tensor], Tensor], x: Tensor, grad_out: Tensor, **mode_kwargs: object) -> Tensor:
    leaf = x.clone().requires_grad_(True)
    with ReverseRules(**mode_kwargs):
        out = act(leaf * 1.0)  # a non-leaf, so that in-place spellings are legal
    (grad,) = torch.autograd.grad(out, leaf, grad_out)
    return grad


@pytest.mark.parametrize("spelling", sorted(RELU_SPELLINGS))
def test_every_relu_spelling_gets_the_zf_and_guided_rules(spelling: str) -> None:
    act = RELU_SPELLINGS[spelling]
    x, grad_out = torch.randn(4, 5, 6), torch.randn(4, 5, 6)
    expected_forward = x.clamp_min(0)
    with ReverseRules("zf"):
        assert torch.equal(act(x.clone().requires_grad_(True) * 1.0), expected_forward)
    torch.testing.assert_close(_reverse(act, x, grad_out, rules="zf"), grad_out.clamp_min(0), rtol=0, atol=0)
    guided = grad_out.clamp_min(0) * (x > 0)
    torch.testing.assert_close(_reverse(act, x, grad_out, rules="guided"), guided, rtol=0, atol=0)


def test_relu_spellings_that_are_not_relu_keep_their_gradient() -> None:
    x, grad_out = torch.randn(50), torch.randn(50)
    for act in (lambda t: torch.clamp(t, min=0, max=1), lambda t: F.threshold(t, 0.5, 0.0)):
        leaf = x.clone().requires_grad_(True)
        (plain,) = torch.autograd.grad(act(leaf), leaf, grad_out)
        torch.testing.assert_close(_reverse(act, x, grad_out), plain)


RELU_LIKE = {
    "nn.ReLU6": nn.ReLU6(),
    "F.relu6(inplace)": lambda t: F.relu6(t, inplace=True),
    "nn.LeakyReLU": nn.LeakyReLU(0.2),
    "F.leaky_relu_": lambda t: F.leaky_relu_(t, 0.2),
    "nn.ELU": nn.ELU(),
    "nn.GELU": nn.GELU(),
    "nn.SiLU(inplace)": nn.SiLU(inplace=True),
    "nn.Hardswish": nn.Hardswish(),
    "nn.Mish": nn.Mish(),
    "nn.Softplus": nn.Softplus(),
    "nn.Hardtanh": nn.Hardtanh(),
}


@pytest.mark.parametrize("spelling", sorted(RELU_LIKE))
def test_relu_like_activations_follow_the_policy(spelling: str) -> None:
    act = RELU_LIKE[spelling]
    x, grad_out = torch.randn(3, 40) * 4, torch.randn(3, 40)
    leaf = x.clone().requires_grad_(True)
    out_plain = act(leaf * 1.0)
    (plain,) = torch.autograd.grad(out_plain, leaf, grad_out)
    with ReverseRules("zf"):
        out_rectify = act(x.clone().requires_grad_(True) * 1.0)
    torch.testing.assert_close(out_rectify, out_plain.detach())  # the forward is unchanged
    torch.testing.assert_close(_reverse(act, x, grad_out, activations="rectify"), grad_out.clamp_min(0))
    guided = _reverse(act, x, grad_out, rules="guided", activations="rectify")
    torch.testing.assert_close(guided, grad_out.clamp_min(0) * (x > 0))
    torch.testing.assert_close(_reverse(act, x, grad_out, activations="gradient"), plain)
    with pytest.raises(NotImplementedError, match="activations="):
        _reverse(act, x, grad_out, activations="raise")


def test_gates_keep_their_plain_gradient_under_every_policy() -> None:
    x, grad_out = torch.randn(30), torch.randn(30)
    for act in (torch.sigmoid, torch.tanh, F.hardsigmoid, lambda t: torch.softmax(t, 0)):
        leaf = x.clone().requires_grad_(True)
        (plain,) = torch.autograd.grad(act(leaf), leaf, grad_out)
        for rules in ("zf", "guided"):
            torch.testing.assert_close(_reverse(act, x, grad_out, rules=rules), plain)


POOLS: dict[str, tuple[Callable[[Tensor], Tensor], tuple[int, ...]]] = {
    "nn.MaxPool2d(3,2)": (nn.MaxPool2d(3, 2), (2, 3, 11, 11)),
    "nn.MaxPool2d ceil_mode pad dilation": (nn.MaxPool2d(3, 2, padding=1, dilation=2, ceil_mode=True), (2, 3, 12, 13)),
    "F.max_pool2d non-square": (lambda t: F.max_pool2d(t, (2, 3), (1, 2)), (2, 3, 9, 10)),
    "F.max_pool2d return_indices": (lambda t: F.max_pool2d(t, 2, return_indices=True)[0], (2, 3, 8, 8)),
    "torch.max_pool2d builtin": (lambda t: torch.max_pool2d(t, 3, 2), (2, 3, 11, 11)),
    "F.max_pool1d": (lambda t: F.max_pool1d(t, 3, 2), (2, 3, 17)),
    "nn.MaxPool1d(ceil)": (nn.MaxPool1d(2, ceil_mode=True), (2, 3, 17)),
    "F.max_pool3d": (lambda t: F.max_pool3d(t, 2, 1), (2, 2, 5, 6, 7)),
    "nn.MaxPool3d(3,2)": (nn.MaxPool3d(3, 2), (1, 2, 7, 7, 7)),
    "nn.AdaptiveMaxPool2d": (nn.AdaptiveMaxPool2d((3, 2)), (2, 3, 10, 7)),
    "F.adaptive_max_pool1d": (lambda t: F.adaptive_max_pool1d(t, 4), (2, 3, 13)),
    "unbatched nn.MaxPool2d": (nn.MaxPool2d(3, 2), (3, 11, 11)),
}


@pytest.mark.parametrize("spelling", sorted(POOLS))
def test_every_max_pool_spelling_unpools_to_its_switches(spelling: str) -> None:
    """Autograd's native max-pool backward (scatter-add to argmax) is the independent oracle."""
    pool, shape = POOLS[spelling]
    x = torch.randn(shape, dtype=torch.float64)
    leaf = x.clone().requires_grad_(True)
    out = pool(leaf)
    grad_out = torch.randn_like(out)
    (native,) = torch.autograd.grad(out, leaf, grad_out)
    with ReverseRules("zf", record_switches=True) as mode:
        leaf2 = x.clone().requires_grad_(True)
        ours_out = pool(leaf2)
    assert torch.equal(ours_out, out.detach())
    (ours,) = torch.autograd.grad(ours_out, leaf2, grad_out)
    assert_rel_close(ours, native, rel=1e-12)
    assert len(mode.switches) == 1 and mode.switches[0].shape == out.shape


def test_return_indices_gives_the_switches_back_to_the_model() -> None:
    x = torch.randn(1, 2, 6, 6, requires_grad=True)
    with ReverseRules("zf"):
        out, idx = F.max_pool2d(x * 1.0, 2, return_indices=True)
        _adaptive_out, adaptive_idx = torch._C._nn.adaptive_max_pool2d(x * 1.0, 2)  # a builtin: always both
    ref_out, ref_idx = F.max_pool2d(x.detach(), 2, return_indices=True)
    assert torch.equal(idx, ref_idx) and torch.equal(out.detach(), ref_out)
    assert torch.equal(adaptive_idx, F.adaptive_max_pool2d(x.detach(), 2, return_indices=True)[1])
    unpooled = F.max_unpool2d(out, idx, 2)  # e.g. SegNet decoders use the switches
    assert unpooled.shape == x.shape


def test_no_grad_forward_is_untouched() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2))
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad(), ReverseRules("zf") as mode:
        out = model(x)
    assert torch.equal(out, model(x).detach()) and mode.routed == {}


def test_unknown_op_is_named_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "_warned_ops", set())
    x = torch.randn(5, requires_grad=True)
    with pytest.warns(UserWarning, match="'cos' is not known"), ReverseRules("zf"):
        torch.cos(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with ReverseRules("zf"):
            torch.cos(x)  # a second time: silent
            torch.relu(x * 2).sum()  # known ops: silent


def test_mode_is_popped_when_the_forward_raises() -> None:
    class Boom(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            raise RuntimeError("boom")

    x = torch.randn(3, requires_grad=True)
    with pytest.raises(RuntimeError, match="boom"), ReverseRules("zf"):
        Boom()(torch.relu(x))
    assert not torch.overrides._get_current_function_mode_stack()
    (grad,) = torch.autograd.grad(torch.relu(x), x, -torch.ones(3))
    assert (grad <= 0).all() and grad.sum() < 0  # plain gradient again


def test_invalid_mode_arguments() -> None:
    with pytest.raises(ValueError, match="rules must be one of"):
        ReverseRules("deconv")
    with pytest.raises(ValueError, match="activations must be one of"):
        ReverseRules("zf", activations="clip")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="activations must be one of"):
        ZFDeconvolution(nn.ReLU(), activations="clip")  # type: ignore[arg-type]


def test_probe_rules_make_the_gradient_support_the_whole_window() -> None:
    x = torch.rand(1, 1, 7, 7, requires_grad=True)
    with ReverseRules("probe"):
        out = F.max_pool2d(torch.relu(x - 2.0), 3, 2, padding=1, dilation=1)  # relu kills everything in a real forward
    grad_out = torch.zeros_like(out)
    grad_out[0, 0, 1, 1] = 1.0
    (grad,) = torch.autograd.grad(out, x, grad_out)
    support = (grad[0, 0] != 0).nonzero()
    assert support.min(0).values.tolist() == [1, 1] and support.max(0).values.tolist() == [3, 3]
    assert int((grad != 0).sum()) == 9


def test_noise_tunnel_and_captum_visualization_accept_our_attributions() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()
    x = torch.randn(2, 3, 12, 12)
    nt = NoiseTunnel(ZFDeconvolution(model))
    smooth = nt.attribute(x, nt_type="smoothgrad", nt_samples=4, stdevs=0.1, target=1)
    assert smooth.shape == x.shape and smooth.abs().sum() > 0
    fig, _ax = viz.visualize_image_attr(
        smooth[0].permute(1, 2, 0).numpy(), x[0].permute(1, 2, 0).numpy(), method="blended_heat_map", use_pyplot=False
    )
    assert len(fig.axes) >= 1
    assert ZFDeconvolution(model).multiplies_by_inputs is False
