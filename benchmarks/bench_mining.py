"""The W1 mining job, measured side by side with a plain forward, zennit-crp and Captum.

W1: the first 2,000 CIFAR-10 test images (our loader's fixed, class-interleaved order),
a ZF-style net with random weights (seed 0): conv(3->64,5x5)-ReLU-maxpool(3,2,1),
conv(64->128,5x5)-ReLU-maxpool(3,2,1), conv(128->256,3x3)-ReLU, conv(256->256,3x3)-ReLU-
maxpool(3,2,1), global average pool, linear(256->10). All 4 conv layers (their ReLU
outputs), k=9, one record per image per channel: 6,336 records, each with the
receptive-field crop of its image and of its DeconvNet projection.

Targets (docs/benchmarks.md): mining / plain forward <= 1.15; projection time per record
/ (forward to the layer + input-only backward, per image) <= 1.5; end to end >= 2x faster
than zennit-crp and >= 3x faster than one Captum NeuronDeconvolution call per record;
peak memory mining 10,000 images within 10% of mining 1,000.

Usage:
    pip install zennit-crp   # the peer; skipped with a note if missing
    python benchmarks/bench_mining.py [--repeats 3] [--images 2000] [--skip-peers]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable

import torch
from torch import Tensor, nn

from captum_deconvviz import mine_topk
from captum_deconvviz.data import find_cifar10, load_cifar10
from captum_deconvviz.zoo import CIFAR10_MEAN, CIFAR10_STD, ZFNetCIFAR

LAYERS = ["features.1", "features.4", "features.7", "features.9"]


def w1_model() -> nn.Module:
    torch.manual_seed(0)
    return ZFNetCIFAR((64, 128, 256, 256)).eval()


def w1_images(count: int) -> Tensor:
    images, _, _ = load_cifar10("test", limit=count)
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    return (images.float() / 255 - mean) / std


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def median_times(contenders: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            times[name].append(timed(fn)[0])
    return {name: statistics.median(v) for name, v in times.items()}


def plain_forward(model: nn.Module, images: Tensor, batch: int = 64) -> None:
    with torch.no_grad():
        for start in range(0, len(images), batch):
            model(images[start : start + batch])


def forward_backward_to(model: nn.Module, layer: str, images: Tensor, batch: int = 64) -> None:
    """Forward to ``layer`` with autograd, then one input-only backward: the projection baseline."""
    module = dict(model.named_modules())[layer]
    stop = {}

    def hook(_m: nn.Module, _i: object, out: Tensor) -> None:
        stop["out"] = out
        raise StopIteration

    handle = module.register_forward_hook(hook)
    try:
        for start in range(0, len(images), batch):
            x = images[start : start + batch].clone().requires_grad_(True)
            with contextlib.suppress(StopIteration):
                model(x)
            torch.autograd.grad(stop["out"], x, torch.ones_like(stop["out"]))
    finally:
        handle.remove()


def ours_end_to_end(model: nn.Module, images: Tensor) -> dict[str, object]:
    result = mine_topk(model, LAYERS, images, k=9, batch_size=64, progress=False)
    for layer in LAYERS:
        result.patches(images, layer)
        result.projections(model, images, layer)
    return {"records": sum(9 * result.channels(layer) for layer in LAYERS)}


def captum_loop(model: nn.Module, images: Tensor, result: object) -> None:
    from captum.attr import NeuronDeconvolution

    for layer in LAYERS:
        module = dict(model.named_modules())[layer]
        field = result.fields[layer]
        for channel in range(result.channels(layer)):
            for record in result.records(layer, channel):
                projection = NeuronDeconvolution(model, module).attribute(
                    images[record.index : record.index + 1], (channel, record.y, record.x)
                )
                field.crop(projection[0], record.y, record.x)
                field.crop(images[record.index], record.y, record.x)


def zennit_crp(model: nn.Module, images: Tensor) -> None:
    from crp.attribution import CondAttribution
    from crp.concepts import ChannelConcept
    from crp.image import vis_opaque_img
    from crp.visualization import FeatureVisualization
    from zennit.composites import DeconvNet

    dataset = [(images[i], 0) for i in range(len(images))]
    with tempfile.TemporaryDirectory() as tmp:
        attribution = CondAttribution(model)
        layer_map = {layer: ChannelConcept() for layer in LAYERS}
        fv = FeatureVisualization(attribution, dataset, layer_map, path=tmp)
        composite = DeconvNet()
        fv.run(composite, 0, len(dataset), batch_size=64)
        for layer in LAYERS:
            channels = list(range(_channels(model, layer)))
            fv.get_max_reference(
                channels, layer, "activation", (0, 9), composite=composite, rf=True, plot_fn=vis_opaque_img
            )


def _channels(model: nn.Module, layer: str) -> int:
    index = int(layer.split(".")[1])
    convs = [m for m in model.features[:index] if isinstance(m, nn.Conv2d)]
    return convs[-1].out_channels


def peak_memory(count: int) -> float:
    """Peak RSS (MB) of a fresh process that mines ``count`` images streamed from the zip."""
    code = f"""
import resource, torch
from captum_deconvviz import mine_topk
from captum_deconvviz.data import ZipImages, find_cifar10
from captum_deconvviz.zoo import ZFNetCIFAR, default_transform
torch.manual_seed(0)
model = ZFNetCIFAR((64, 128, 256, 256)).eval()
data = ZipImages(find_cifar10() / "test.zip", transform=default_transform(), limit={count})
mine_topk(model, {LAYERS!r}, data, k=9, batch_size=64, progress=False)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--skip-peers", action="store_true", help="do not run zennit-crp and the Captum loop")
    parser.add_argument("--json", default=None, help="also write the numbers to this file")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    if find_cifar10() is None:
        sys.exit("CIFAR-10 zips not found: set DECONVVIZ_CIFAR10 (see captum_deconvviz.data.find_cifar10)")
    model, images = w1_model(), w1_images(args.images)
    print(f"# bench_mining: W1 on {len(images)} images, torch {torch.__version__}, {torch.get_num_threads()} threads")
    numbers: dict[str, float] = {}

    # 1. Mining against a plain forward pass over the same images.
    med = median_times(
        {
            "plain forward": lambda: plain_forward(model, images),
            "mine_topk": lambda: mine_topk(model, LAYERS, images, k=9, batch_size=64, progress=False),
        },
        args.repeats,
    )
    numbers["forward_s"], numbers["mining_s"] = med["plain forward"], med["mine_topk"]
    print("\n## Mining\n\n| step | median s |\n|---|---|")
    for name, value in med.items():
        print(f"| {name} | {value:.3f} |")
    print(f"\nmining / plain forward = **{med['mine_topk'] / med['plain forward']:.3f}** (target <= 1.15)")

    # 2. Projections per record against forward-to-layer + input-only backward per image.
    result = mine_topk(model, LAYERS, images, k=9, batch_size=64, progress=False)
    print("\n## Projections per record\n")
    print(
        "| layer | records | distinct images | s per record | baseline s per image | ratio |\n|---|---|---|---|---|---|"
    )
    for layer in LAYERS:
        records = [r for c in range(result.channels(layer)) for r in result.records(layer, c)]
        distinct = len({r.index for r in records})
        layer_med = median_times(
            {
                "projection": lambda layer=layer: (result.clear_cache(), result.projections(model, images, layer)),
                "baseline": lambda layer=layer: forward_backward_to(model, layer, images),
            },
            args.repeats,
        )
        per_record = layer_med["projection"] / len(records)
        per_image = layer_med["baseline"] / len(images)
        numbers[f"projection_ratio_{layer}"] = per_record / per_image
        print(f"| {layer} | {len(records)} | {distinct} | {per_record * 1e3:.3f} ms | {per_image * 1e3:.3f} ms | "
              f"{per_record / per_image:.2f} |")  # fmt: skip

    # 3. End to end against the peers.
    contenders: dict[str, Callable[[], object]] = {"captum-deconvviz": lambda: ours_end_to_end(model, images)}
    if not args.skip_peers:
        try:
            import crp  # noqa: F401

            contenders["zennit-crp FeatureVisualization"] = lambda: zennit_crp(model, images)
        except ImportError:
            print("\n(zennit-crp is not installed: pip install zennit-crp)")
        contenders["captum NeuronDeconvolution per record (projections and crops only)"] = lambda: captum_loop(
            model, images, result
        )
    med = median_times(contenders, args.repeats)
    ours = med["captum-deconvviz"]
    print("\n## End to end: mining + crops of images and projections, 6,336 records\n")
    print("| tool | median s | ours faster by |\n|---|---|---|")
    for name, value in med.items():
        print(f"| {name} | {value:.2f} | {value / ours:.2f}x |")
        numbers[f"end_to_end_{name}"] = value

    # 4. Peak memory does not grow with the dataset.
    small, large = peak_memory(1000), peak_memory(10000)
    numbers["peak_rss_1000_mb"], numbers["peak_rss_10000_mb"] = small, large
    print("\n## Peak memory (fresh process, images streamed from the zip)\n")
    print(f"| images | peak RSS |\n|---|---|\n| 1,000 | {small:.0f} MB |\n| 10,000 | {large:.0f} MB |")
    print(f"\n10,000 / 1,000 = **{large / small:.3f}** (target <= 1.10)")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(numbers, handle, indent=2)


if __name__ == "__main__":
    main()
