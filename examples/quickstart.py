"""Quickstart: DeconvNet attribution and a single-unit projection, side by side with Guided Backprop.

Runs offline: AlexNet with random weights (pass --weights DEFAULT to download the
ImageNet weights when online). Writes quickstart.png.

    python examples/quickstart.py [--weights DEFAULT] [--out quickstart.png]
"""

from __future__ import annotations

import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
import torchvision
from captum.attr import visualization as viz

from captum_deconvviz import EngineGuidedBackprop, ZFDeconvolution, project_units


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=None, help="torchvision weights, e.g. DEFAULT (needs internet)")
    parser.add_argument("--out", default="quickstart.png")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = torchvision.models.alexnet(weights=args.weights).eval()
    # A smooth synthetic image: a few coloured blobs, so the example needs no data download.
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 224), torch.linspace(-1, 1, 224), indexing="ij")
    image = torch.stack([torch.sin(4 * xx), torch.cos(3 * yy), torch.sin(2 * (xx + yy))]).unsqueeze(0)

    deconv = ZFDeconvolution(model).attribute(image, target=1)
    guided = EngineGuidedBackprop(model).attribute(image, target=1)
    # The strongest unit of conv5 (features.11 is its ReLU), projected back to pixels.
    with torch.no_grad():
        acts = model.features[:12](image)
    channel = int(acts[0].amax(dim=(1, 2)).argmax())
    y, x = divmod(int(acts[0, channel].argmax()), acts.shape[-1])
    unit = project_units(model, "features.11", image, torch.tensor([[channel, y, x]]))

    fig, axes = plt.subplots(1, 3, figsize=(10, 3.6))
    panels = [(deconv, "ZF DeconvNet, class 1"), (guided, "Guided Backprop, class 1"), (unit, f"conv5 unit {channel}")]
    for ax, (attr, title) in zip(axes, panels, strict=True):
        viz.visualize_image_attr(
            attr[0].permute(1, 2, 0).numpy(),
            method="heat_map",
            sign="absolute_value",
            plt_fig_axis=(fig, ax),
            use_pyplot=False,
            title=title,
        )
    fig.tight_layout()
    fig.savefig(args.out, dpi=150)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
