"""Preprocessing of the default model: PIL image to normalized tensor, and back."""

from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image
from torch import Tensor
from torchvision.transforms import functional as TF

from ..data import rgb_image

__all__ = ["CIFAR10_MEAN", "CIFAR10_STD", "default_transform", "denormalize"]

#: Per-channel mean and standard deviation of the CIFAR-10 training images.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def default_transform(size: int = 32) -> Callable[[Image.Image], Tensor]:
    """The default model's preprocessing: RGB, resized to ``size`` (shorter side, then
    centre crop) when needed, to a float tensor normalized with CIFAR-10's statistics.

    Example:
        >>> from PIL import Image
        >>> default_transform()(Image.new("RGB", (64, 48))).shape
        torch.Size([3, 32, 32])
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be an int >= 1, got {size!r}")

    def transform(image: Image.Image) -> Tensor:
        image = rgb_image(image)  # 16-bit grey scaled, not clipped white
        if image.size != (size, size):
            image = TF.center_crop(TF.resize(image, size), [size, size])
        return TF.normalize(TF.to_tensor(image), CIFAR10_MEAN, CIFAR10_STD)

    return transform


def denormalize(images: Tensor) -> Tensor:
    """Undo :func:`default_transform`'s normalization: back to [0, 1] RGB (clamped)."""
    mean = torch.tensor(CIFAR10_MEAN, dtype=images.dtype, device=images.device).view(3, 1, 1)
    std = torch.tensor(CIFAR10_STD, dtype=images.dtype, device=images.device).view(3, 1, 1)
    return (images * std + mean).clamp(0, 1)
