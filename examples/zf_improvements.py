"""Zeiler & Fergus Sec. 4.1 on CIFAR-10: an AlexNet-like first layer against a ZF-like one.

Trains two variants of the default architecture with the same recipe and seed:

* ``alexnet_like``: first convolution 9x9 with stride 3 (a large kernel and stride, as
  AlexNet's 11x11/4 is on 224x224 images);
* ``zf_like``: first convolution 5x5 with stride 1 (small kernel and stride, the default
  model).

then runs ``diagnose`` on 1,000 test images (dead filters, first-layer noise, aliasing,
filter RMS) and compares test accuracy. Writes figures to docs/images and prints the
tables recorded in docs/diagnostics.md. On 2 CPU cores, about 20 minutes with the
default 4 epochs per variant.

    python examples/zf_improvements.py [--epochs 4] [--out docs/images] [--json numbers.json] [--limit N]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg

from captum_deconvviz import diagnose, plot_diagnosis, plot_feature_evolution, plot_filters, track_features
from captum_deconvviz.data import load_cifar10
from captum_deconvviz.zoo import CIFAR10_MEAN, CIFAR10_STD, denormalize
from captum_deconvviz.zoo.train import train_default_model

VARIANTS = {"alexnet_like": (9, 3), "zf_like": (5, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--out", default="docs/images")
    parser.add_argument("--json", default=None)
    parser.add_argument("--data", default=None, help="folder with CIFAR-10's train.zip and test.zip")
    parser.add_argument("--limit", type=int, default=None, help="train on the first N images only (smoke runs)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    images, _, _ = load_cifar10("test", limit=1000, root=args.data)
    mean, std = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    data = (images.float() / 255 - mean) / std

    numbers: dict[str, dict] = {}
    models, evolutions = {}, {}
    for name, (kernel, stride) in VARIANTS.items():
        print(f"training {name}: first conv {kernel}x{kernel}, stride {stride}", flush=True)
        checkpoints: list = []
        model, metrics = train_default_model(
            epochs=args.epochs, random_state=0, data_root=args.data, limit=args.limit, first_kernel=kernel,
            first_stride=stride, checkpoints=checkpoints,
        )  # fmt: skip
        diagnosis = diagnose(model, data)
        first = diagnosis["features.0"]
        numbers[name] = {
            "first_layer": f"{kernel}x{kernel}/{stride}",
            "test_accuracy": metrics["test_accuracy"],
            "train_seconds": metrics["train_seconds"],
            "dead": {layer.name: int(layer.dead.sum()) for layer in diagnosis.layers},
            "channels": {layer.name: len(layer.dead) for layer in diagnosis.layers},
            "noisy_first_layer_filters": int(first.noisy_filters.sum()),
            "high_frequency_mean": float(first.high_frequency.mean()),
            "above_radius": {lay.name: int(lay.large_filters.sum()) for lay in diagnosis.layers if lay.rms is not None},
            "aliasing": {lay.name: float(lay.aliasing.mean()) for lay in diagnosis.layers if lay.aliasing is not None},
        }
        print(diagnosis.table(), flush=True)
        fig, _ = plot_diagnosis(diagnosis, use_pyplot=False)
        fig.savefig(out / f"diagnosis_{name}.png", dpi=150)
        models[name], evolutions[name] = model, checkpoints

    fig, axes = plt.subplots(1, 2, figsize=(9, 4.6))
    for ax, (name, model) in zip(axes, models.items(), strict=True):
        small, _ = plot_filters(model.features[0], sort_by_norm=True, use_pyplot=False)
        canvas = FigureCanvasAgg(small)
        canvas.draw()
        ax.imshow(canvas.buffer_rgba())
        ax.set_title(f"{name}: conv1 {numbers[name]['first_layer']}", fontsize=10)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out / "first_layers_compared.png", dpi=150)

    zf_final = models["zf_like"]
    strongest = zf_final.features[8].weight.flatten(1).norm(dim=1).argsort(descending=True)[:6].tolist()
    evolution = track_features(evolutions["zf_like"], data, "features.9", strongest)
    fig, _ = plot_feature_evolution(
        evolution, labels=[f"epoch {i + 1}" for i in range(args.epochs)], denormalize=denormalize, use_pyplot=False
    )
    fig.savefig(out / "feature_evolution.png", dpi=150)

    header = [
        "variant", "conv1", "test accuracy", "dead (conv1 / conv2 / conv3 / conv4)", "noisy conv1 filters",
        "conv1 high-freq. mean", "aliasing at conv1", "filters above RMS 0.1",
    ]  # fmt: skip
    print("\n| " + " | ".join(header) + " |\n" + "|---" * len(header) + "|")
    for name, n in numbers.items():
        dead = " / ".join(str(n["dead"][layer]) for layer in ("features.0", "features.3", "features.6", "features.8"))
        alias = n["aliasing"].get("features.0")
        alias_text = f"{alias:.3f}" if alias is not None else "stride 1: none"
        print(f"| {name} | {n['first_layer']} | {n['test_accuracy']:.3f} | {dead} | {n['noisy_first_layer_filters']} | "
              f"{n['high_frequency_mean']:.3f} | {alias_text} | {sum(n['above_radius'].values())} |")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(numbers, indent=2))


if __name__ == "__main__":
    main()
