"""FLOPs of a full-image projection against a receptive-field-cropped one (VGG16, 224x224).

For the centre unit of channel 0 of each VGG16 convolution up to conv4_3, counts the
floating-point operations of ``project_units(..., crop=False)`` (forward to the layer
and DeconvNet reverse pass over the whole image) and of ``crop=True`` (both passes on
the unit's receptive-field cone only), with torch's own per-op FLOP formulas
(``torch.utils.flop_counter``), forward and backward. Counts, not timings: they do not
depend on the machine.

Usage:
    python benchmarks/flops_cropped.py
"""

from __future__ import annotations

from typing import Any

import torch
import torchvision
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from captum_deconvviz import project_units
from captum_deconvviz.cropped import cropped_plan

LAYERS = {
    "conv1_2": "features.2",
    "conv2_2": "features.7",
    "conv3_3": "features.14",
    "conv4_3": "features.21",
    "conv5_3": "features.28",
}


class CountFlops(TorchDispatchMode):
    """Sums torch's FLOP formulas over every op it knows (FlopCounterMode cannot see
    ``torch.autograd.grad`` with respect to an input leaf)."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        counter = flop_registry.get(func._overloadpacket)
        if counter is not None:
            self.total += counter(*args, **kwargs, out_val=out)
        return out


def main() -> None:
    torch.manual_seed(0)
    model = torchvision.models.vgg16().eval()
    x = torch.randn(1, 3, 224, 224)
    print("| layer | module | receptive field | full image GFLOPs | cropped GFLOPs | fewer by |")
    print("|---|---|---|---|---|---|")
    for name, layer in LAYERS.items():
        plan, _ = cropped_plan(model, layer, (3, 224, 224))
        centre = torch.tensor([[0, plan.output_size[0] // 2, plan.output_size[1] // 2]])
        counts = []
        for crop in (False, True):
            with CountFlops() as counter:
                project_units(model, layer, x, centre, crop=crop)
            counts.append(counter.total)
        field = plan.field.size[0]
        print(f"| {name} | {layer} | {field} | {counts[0] / 1e9:.4g} | {counts[1] / 1e9:.4g} | "
              f"{counts[0] / counts[1]:,.1f}x |")  # fmt: skip


if __name__ == "__main__":
    main()
