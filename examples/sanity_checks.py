"""Sanity checks on the default model: parameter randomization and class sensitivity.

Reproduces, on the embedded CIFAR-10 model and the shipped images:

1. Adebayo et al. (2018): cascading and independent randomization of the model's
   weights, from the top layer down, for the ZF DeconvNet, Guided Backprop (Captum's)
   and the plain gradient. A method that explains the model should change.
2. Nie et al. (2018): DeconvNet and Guided Backprop maps barely change with the target
   class. Class sensitivity here: for each image, the Spearman rank correlation (of
   absolute maps) and SSIM between the map for the predicted class and the maps for the
   nine other classes; high similarity means class-insensitive.

Writes docs/images/randomization_cascading.png, randomization_independent.png,
class_sensitivity.png and prints Markdown tables (docs/sanity-checks.md records them).

    python examples/sanity_checks.py [--images 100] [--out docs/images]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from captum_deconvviz import compare_methods, plot_comparison, plot_randomization, randomization_test
from captum_deconvviz.compare import agreement
from captum_deconvviz.zoo import CIFAR10_CLASSES, default_sample, denormalize, load_default_model

METHODS = ("zf_deconv", "guided_backprop", "saliency")


def class_sensitivity(
    model: torch.nn.Module, images: torch.Tensor, predicted: torch.Tensor
) -> dict[str, dict[str, float]]:
    """Mean similarity between the predicted class's map and every other class's map."""
    out: dict[str, dict[str, float]] = {}
    for method in METHODS:
        reference = compare_methods(model, images, target=predicted.tolist(), methods=[method]).maps[method]
        spearman, ssim = [], []
        for shift in range(1, 10):
            other = ((predicted + shift) % 10).tolist()
            maps = compare_methods(model, images, target=other, methods=[method]).maps[method]
            values = agreement(reference, maps)
            spearman.append(values["spearman_abs"])
            ssim.append(values["ssim"])
        out[method] = {
            "spearman_abs": float(np.nanmean(torch.stack(spearman).numpy())),
            "ssim": float(np.nanmean(torch.stack(ssim).numpy())),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=100, help="images from the shipped sample (10 per class)")
    parser.add_argument("--out", default="docs/images", help="folder for the figures")
    parser.add_argument("--json", default=None, help="also write the numbers here")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = load_default_model()
    sample = default_sample()
    per_class = max(1, args.images // 10)
    images = torch.stack([sample[c * 100 + i][0] for i in range(per_class) for c in range(10)])
    with torch.no_grad():
        predicted = model(images).argmax(1)
    numbers: dict[str, object] = {"images": len(images)}

    for mode in ("cascading", "independent"):
        result = randomization_test(model, images, predicted.tolist(), methods=METHODS, mode=mode)
        fig, _ = plot_randomization(result, use_pyplot=False)
        fig.savefig(out / f"randomization_{mode}.png", dpi=160)
        print(f"\n### {mode.capitalize()} randomization: mean Spearman rank correlation (absolute maps) "
              f"with the original maps\n\n{result.table('spearman_abs')}\n")  # fmt: skip
        print(f"SSIM:\n\n{result.table('ssim')}\n")
        numbers[mode] = {m: {k: result.mean(m, k) for k in ("spearman", "spearman_abs", "ssim")} for m in METHODS}
        numbers[f"{mode}_steps"] = result.steps

    sensitivity = class_sensitivity(model, images, predicted)
    numbers["class_sensitivity"] = sensitivity
    print("\n### Class sensitivity (Nie et al. 2018): similarity of the maps of the predicted class and of the other "
          "nine classes (1 = identical)\n")  # fmt: skip
    print("| method | Spearman abs | SSIM |\n|---|---|---|")
    for method, values in sensitivity.items():
        print(f"| {method} | {values['spearman_abs']:.3f} | {values['ssim']:.3f} |")

    example = images[:4]
    comparison = compare_methods(model, example, target=predicted[:4].tolist(), methods=METHODS)
    fig, _ = plot_comparison(comparison, display=denormalize, use_pyplot=False)
    fig.savefig(out / "comparison.png", dpi=160)
    # One image, two classes: DeconvNet and GBP barely move, the gradient does.
    rows = {}
    for target in (int(predicted[0]), (int(predicted[0]) + 5) % 10):
        rows[target] = compare_methods(model, example[:1], target=target, methods=METHODS)
    fig, axes = plt.subplots(2, len(METHODS) + 1, figsize=(1.8 * (len(METHODS) + 1), 3.8))
    for r, (target, result) in enumerate(rows.items()):
        axes[r, 0].imshow(denormalize(example[0]).permute(1, 2, 0).numpy())
        axes[r, 0].set_ylabel(f"target: {CIFAR10_CLASSES[target]}", fontsize=8)
        for c, method in enumerate(METHODS, start=1):
            attr = result.maps[method][0].abs().sum(0).numpy()
            axes[r, c].imshow(attr, cmap="Blues")
            if r == 0:
                axes[r, c].set_title(method.replace("_", " "), fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(out / "class_sensitivity.png", dpi=160)
    if args.json:
        Path(args.json).write_text(json.dumps(numbers, indent=2))


if __name__ == "__main__":
    main()
