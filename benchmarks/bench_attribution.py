"""Attribution speed, measured side by side against Captum in one run.

1. ``ZFDeconvolution.attribute`` vs ``captum.attr.Deconvolution.attribute``:
   VGG16, batch 8, 224x224. Target: ratio <= 1.05.
2. ``project_units`` with 64 units on 64 images vs 64 ``NeuronDeconvolution`` calls
   (one explainer reused, and a fresh explainer per call):
   VGG16 ``features.16`` at 112x112 (target >= 2x), AlexNet ``features.7`` at
   160x160 (target >= 4x).

Timings interleave the contenders (ABAB...) and report medians, so that drifts of
the machine hit both alike. Models have random weights (fixed seed): speed does not
depend on the weights.

Usage:
    python benchmarks/bench_attribution.py [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
import warnings
from collections.abc import Callable

import captum
import torch
import torchvision
from captum.attr import Deconvolution, NeuronDeconvolution

from captum_deconvviz import ZFDeconvolution, project_units


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(contenders: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds per contender, after one warm-up call each, runs interleaved."""
    for fn in contenders.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for repeat in range(repeats):
        # ABBA order: a drift of the machine's speed hits every contender alike
        for name in names if repeat % 2 == 0 else reversed(names):
            times[name].append(_timed(contenders[name]))
    return {name: statistics.median(values) for name, values in times.items()}


def bench_class_attribution(repeats: int) -> None:
    torch.manual_seed(0)
    model = torchvision.models.vgg16().eval()
    images = torch.randn(8, 3, 224, 224)
    ours, theirs = ZFDeconvolution(model), Deconvolution(model)
    med = interleaved(
        {
            "ZFDeconvolution": lambda: ours.attribute(images, target=3),
            "captum Deconvolution": lambda: theirs.attribute(images, target=3),
        },
        repeats,
    )
    ratio = med["ZFDeconvolution"] / med["captum Deconvolution"]
    print("\n## Class attribution: VGG16, batch 8, 224x224\n")
    print("| method | median s/call |\n|---|---|")
    for name, value in med.items():
        print(f"| {name} | {value:.3f} |")
    print(f"\nratio ours / captum = **{ratio:.3f}** (target <= 1.05)")


def bench_projection(arch: str, layer: str, size: int, target: float, repeats: int) -> None:
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)().eval()
    module = dict(model.named_modules())[layer]
    n = 64
    images = torch.randn(n, 3, size, size)
    with torch.no_grad():
        out = {}
        handle = module.register_forward_hook(lambda _m, _i, o: out.setdefault("v", o))
        model(images[:1])
        handle.remove()
    channels, height, width = out["v"].shape[1:]
    gen = torch.Generator().manual_seed(1)
    units = torch.stack(
        [
            torch.randint(channels, (n,), generator=gen),
            torch.randint(height, (n,), generator=gen),
            torch.randint(width, (n,), generator=gen),
        ],
        dim=1,
    )
    reused = NeuronDeconvolution(model, module)

    def captum_reused() -> None:
        for i in range(n):
            reused.attribute(images[i : i + 1], tuple(units[i].tolist()))

    def captum_fresh() -> None:
        for i in range(n):
            NeuronDeconvolution(model, module).attribute(images[i : i + 1], tuple(units[i].tolist()))

    med = interleaved(
        {
            "project_units (64 units, one call, crop=auto)": lambda: project_units(
                model, layer, images, units, seed="one"
            ),
            "project_units, whole image (crop=False)": lambda: project_units(
                model, layer, images, units, seed="one", crop=False
            ),
            "captum NeuronDeconvolution x64, fresh explainer": captum_fresh,
            "captum NeuronDeconvolution x64, reused explainer": captum_reused,
        },
        repeats,
    )
    ours = med["project_units (64 units, one call, crop=auto)"]
    print(f"\n## Projection: {arch} `{layer}`, 64 units on 64 images at {size}x{size}\n")
    print("| method | median s | speed-up of project_units |\n|---|---|---|")
    for name, value in med.items():
        print(f"| {name} | {value:.3f} | {value / ours:.2f}x |")
    fresh = med["captum NeuronDeconvolution x64, fresh explainer"] / ours
    whole = med["captum NeuronDeconvolution x64, fresh explainer"] / med["project_units, whole image (crop=False)"]
    print(f"\nspeed-up vs fresh Captum explainers = **{fresh:.2f}x** (target >= {target:g}x); "
          f"without receptive-field cropping: **{whole:.2f}x**")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per contender (default 5)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--parts", nargs="+", default=["class", "vgg16", "alexnet"], help="which comparisons to run")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="Setting backward hooks")
    warnings.filterwarnings("ignore", message="Input Tensor")
    print(
        f"# bench_attribution: torch {torch.__version__}, captum {captum.__version__}, "
        f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
        f"repeats={args.repeats}"
    )
    if "class" in args.parts:
        bench_class_attribution(args.repeats)
    if "vgg16" in args.parts:
        bench_projection("vgg16", "features.16", 112, 2.0, args.repeats)
    if "alexnet" in args.parts:
        bench_projection("alexnet", "features.7", 160, 4.0, args.repeats)


if __name__ == "__main__":
    main()
