"""The embedded default model and image sample: what ships is what the docs promise."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch
from torch import nn

import captum_deconvviz.zoo as zoo
from captum_deconvviz.zoo import ZFNetCIFAR, default_model_info, default_sample, load_default_model


def test_default_model_is_a_plain_zf_chain_in_eval_mode() -> None:
    model = load_default_model()
    assert isinstance(model, ZFNetCIFAR) and not model.training
    kinds = [type(m) for m in model.features]
    assert kinds.count(nn.Conv2d) == 4 and nn.BatchNorm2d not in kinds
    pools = [m for m in model.features if isinstance(m, nn.MaxPool2d)]
    assert len(pools) == 3 and all(p.kernel_size == 3 and p.stride == 2 for p in pools)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    weights = Path(zoo.__file__).with_name("zf_cifar10.pt")
    assert weights.stat().st_size <= 5 * 1024 * 1024


def test_default_sample_is_1000_images_100_per_class() -> None:
    sample = default_sample()
    assert len(sample) == 1000
    labels = Counter(int(sample[i][1]) for i in range(0, 1000, 7))
    assert set(labels) == set(range(10))
    image, _ = sample[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32


def test_default_model_accuracy_on_the_shipped_sample() -> None:
    """The shipped weights classify the shipped test images as well as the docs say."""
    model, sample = load_default_model(), default_sample()
    loader = torch.utils.data.DataLoader(sample, batch_size=250)
    correct = 0
    with torch.no_grad():
        for images, labels in loader:
            correct += int((model(images).argmax(1) == labels).sum())
    accuracy = correct / len(sample)
    info = default_model_info()
    assert info["test_accuracy_float16_weights"] >= 0.80
    # 1,000 of the 10,000 test images: within sampling error of the full test set.
    assert abs(accuracy - info["test_accuracy_float16_weights"]) < 0.04, accuracy
