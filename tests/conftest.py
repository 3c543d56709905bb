"""Shared fixtures and assertions for the test suite."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

torch.set_num_threads(min(2, os.cpu_count() or 1))


def assert_rel_close(actual: Tensor, expected: Tensor, rel: float = 1e-5) -> None:
    """``max|actual - expected| <= rel * max|expected|``, and ``expected`` is not all zero.

    The non-zero check keeps comparisons from passing vacuously.
    """
    assert actual.shape == expected.shape, f"shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    scale = expected.detach().abs().max().item()
    assert scale > 0, "the reference is all zeros: this comparison would prove nothing"
    err = (actual.detach() - expected.detach()).abs().max().item()
    assert err <= rel * scale, f"max abs error {err:.3e} > {rel:g} * {scale:.3e}"


def hook_counts(model: nn.Module) -> dict[str, int]:
    """Number of every kind of hook on every module, as Captum's test_hook_removal checks."""
    counts: dict[str, int] = {}
    for name, module in model.named_modules():
        for attr in (
            "_forward_hooks",
            "_forward_pre_hooks",
            "_backward_hooks",
            "_backward_pre_hooks",
            "_forward_hooks_with_kwargs",
            "_forward_pre_hooks_with_kwargs",
            "_forward_hooks_always_called",
            "_state_dict_hooks",
            "_load_state_dict_pre_hooks",
        ):
            counts[f"{name}:{attr}"] = len(getattr(module, attr, {}))
    return counts


def global_hook_counts() -> dict[str, int]:
    from torch.nn.modules import module as module_mod

    return {
        attr: len(getattr(module_mod, attr))
        for attr in (
            "_global_forward_hooks",
            "_global_forward_pre_hooks",
            "_global_backward_hooks",
            "_global_backward_pre_hooks",
        )
        if hasattr(module_mod, attr)
    }


class ModelSnapshot:
    """Everything about a model that a call must leave exactly as it was."""

    def __init__(self, model: nn.Module) -> None:
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.training = {name: m.training for name, m in model.named_modules()}
        self.requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
        self.grads = {name: None if p.grad is None else p.grad.clone() for name, p in model.named_parameters()}
        self.hooks = hook_counts(model)
        self.global_hooks = global_hook_counts()
        self.modules = [(name, type(m)) for name, m in model.named_modules()]

    def assert_unchanged(self, model: nn.Module) -> None:
        state = model.state_dict()
        assert state.keys() == self.state.keys()
        for key, value in self.state.items():
            assert torch.equal(state[key], value), f"state_dict[{key!r}] changed"
        assert {n: m.training for n, m in model.named_modules()} == self.training
        assert {n: p.requires_grad for n, p in model.named_parameters()} == self.requires_grad
        for name, p in model.named_parameters():
            before = self.grads[name]
            assert (p.grad is None) == (before is None), f"{name}.grad appeared or vanished"
            if before is not None:
                assert torch.equal(p.grad, before)
        assert hook_counts(model) == self.hooks, "hooks were left on the model"
        assert global_hook_counts() == self.global_hooks, "global module hooks were left behind"
        assert [(n, type(m)) for n, m in model.named_modules()] == self.modules
        assert not torch.overrides._get_current_function_mode_stack(), "a TorchFunctionMode was left active"


@pytest.fixture
def snapshot() -> Callable[[nn.Module], ModelSnapshot]:
    return ModelSnapshot


@pytest.fixture(autouse=True)
def _seed() -> Iterator[None]:
    torch.manual_seed(0)
    yield


@pytest.fixture
def quiet_captum() -> Iterator[None]:
    """Captum warns on every call that it sets hooks; silence that noise."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Setting backward hooks")
        warnings.filterwarnings("ignore", message="Input Tensor")
        yield


class SmallClassifier(nn.Module):
    """Conv-BN-ReLU-pool, conv-ReLU (then dropout, if any), global average pool, linear.

    The misuse and autograd-mode matrices' model: BatchNorm and Dropout make train mode matter.
    """

    def __init__(self, widths: tuple[int, int] = (8, 16), classes: int = 5, dropout: float = 0.5) -> None:
        super().__init__()
        first, second = widths
        layers: list[nn.Module] = [
            nn.Conv2d(3, first, 3, padding=1), nn.BatchNorm2d(first), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(first, second, 3, padding=1), nn.ReLU(),
        ]  # fmt: skip
        if dropout:
            layers.append(nn.Dropout(dropout))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(second, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


@dataclass
class WideExplorer:
    """An explorer whose last layer's receptive field (46 px) is almost three times the 16-px images."""

    index: Path
    model: nn.Module
    data: Tensor
    result: Any


@pytest.fixture(scope="session")
def wide_explorer(tmp_path_factory: pytest.TempPathFactory) -> WideExplorer:
    from captum_deconvviz import mine_topk, write_explorer

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 5, 5, padding=4, dilation=2), nn.ReLU(),
    ).eval()  # fmt: skip
    data = torch.rand(12, 3, 16, 16)
    result = mine_topk(model, ["6", "7"], data, k=4, progress=False)
    index = write_explorer(tmp_path_factory.mktemp("wide") / "explorer", model, data, result, progress=False)
    return WideExplorer(index, model, data, result)
