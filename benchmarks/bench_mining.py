"""The W1 mining job, measured side by side with a plain forward, zennit-crp and Captum.

W1: the first 2,000 CIFAR-10 test images (our loader's fixed, class-interleaved order),
a ZF-style net with random weights (seed 0): conv(3->64,5x5)-ReLU-maxpool(3,2,1),
conv(64->128,5x5)-ReLU-maxpool(3,2,1), conv(128->256,3x3)-ReLU, conv(256->256,3x3)-ReLU-
maxpool(3,2,1), global average pool, linear(256->10). All 4 conv layers (their ReLU
outputs), k=9, one record per image per channel: 6,336 records, each with the
receptive-field crop of its image and of its DeconvNet projection.

End to end, like with like (docs/benchmarks.md states each configuration):
- unrendered (the headline): our per-layer calls and our per-channel loop return crop
  tensors; zennit-crp ``get_max_reference(..., plot_fn=None)`` returns its reference
  images and heatmaps as tensors (its documented raw mode);
- rendered: ours turns every record's patch and projection into a PIL image (as the
  report does before writing PNGs); zennit-crp renders with ``plot_fn=vis_opaque_img``
  (one PIL image per reference, cropped where the heatmap is weak);
- Captum: one ``NeuronDeconvolution`` call per record (projections and crops only).

Targets (docs/benchmarks.md): mining / plain forward <= 1.15; projection time per record
/ (forward to the layer + input-only backward, per image) <= 1.5; end to end >= 2x faster
than zennit-crp and >= 3x faster than one Captum NeuronDeconvolution call per record;
the per-channel loop <= 1.15x the per-layer calls; peak memory mining 10,000 images
within 10% of mining 1,000.

Usage:
    pip install zennit-crp   # the peer (a benchmark dependency only); skipped with a note if missing
    python benchmarks/bench_mining.py [--repeats 3] [--images 2000] [--skip-peers] [--skip-rendered]
        [--uncached-loop] [--parts mining projections end-to-end memory]
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

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from captum_deconvviz import Crops, MiningResult, mine_topk
from captum_deconvviz.data import find_cifar10, load_cifar10
from captum_deconvviz.viz import normalize_projection
from captum_deconvviz.zoo import CIFAR10_MEAN, CIFAR10_STD, ZFNetCIFAR, denormalize

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


def median_times(
    contenders: dict[str, Callable[[], object]], repeats: int, cpu: dict[str, float] | None = None
) -> dict[str, float]:
    """Median wall seconds of each contender, run interleaved ``repeats`` times.

    With ``cpu``, also fills it with each contender's median CPU seconds (this process, all
    threads): less sensitive than wall time to other processes sharing the cores.
    """
    times: dict[str, list[float]] = {name: [] for name in contenders}
    cpu_times: dict[str, list[float]] = {name: [] for name in contenders}
    for repeat in range(repeats):
        for name, fn in contenders.items():
            start = time.process_time()
            times[name].append(timed(fn)[0])
            cpu_times[name].append(time.process_time() - start)
            # Each measure as it comes (stderr), so an interrupted run still leaves its numbers.
            print(
                f"[repeat {repeat + 1}] {name}: {times[name][-1]:.2f} s wall, {cpu_times[name][-1]:.2f} s CPU",
                file=sys.__stderr__,
                flush=True,
            )
    if cpu is not None:
        cpu.update({name: statistics.median(v) for name, v in cpu_times.items()})
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


def ours_end_to_end(
    model: nn.Module, images: Tensor, per_channel: bool = False, render: bool = False, cache: bool = True
) -> int:
    """Mine, then crop every record's image and projection: per layer, or one channel at a time."""
    result = mine_topk(model, LAYERS, images, k=9, batch_size=64, progress=False)
    if not cache:
        result.cache_limit = 0  # every call computes its own channels, as before the cache
    pictures = 0
    for layer in LAYERS:
        if per_channel:  # as a notebook loop or plot_topk draws them
            for channel in range(result.channels(layer)):
                crops = result.patches(images, layer, channel)
                projections = result.projections(model, images, layer, channel)
                if render:
                    pictures += render_channel(result, layer, channel, crops, projections.images)
        else:
            crops = result.patches(images, layer)
            projections = result.projections(model, images, layer)
            if render:
                for channel in range(result.channels(layer)):
                    crop = Crops(crops.images[channel], crops.mask[channel])
                    pictures += render_channel(result, layer, channel, crop, projections.images[channel])
    return pictures


def render_channel(result: MiningResult, layer: str, channel: int, crops: Crops, projections: Tensor) -> int:
    """A PIL image of each record's patch and of its projection, as the report makes before saving PNGs."""
    count = len(result.records(layer, channel))
    for slot in range(count):
        patch = denormalize(crops.images[slot]) * crops.mask[slot] + 0.5 * ~crops.mask[slot]
        for array in (np.moveaxis(patch.numpy(), 0, -1), normalize_projection(projections[slot])):
            Image.fromarray((np.clip(array, 0, 1) * 255).astype(np.uint8))
    return 2 * count


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


def zennit_crp(model: nn.Module, images: Tensor, render: bool = False) -> None:
    """zennit-crp's FeatureVisualization with its DeconvNet composite, references with receptive fields.

    ``render=False`` asks for tensors (``plot_fn=None``: reference images and heatmaps);
    ``render=True`` for its default-style figures (``plot_fn=vis_opaque_img``: one PIL image
    per reference, cropped to where the heatmap is strong).
    """
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
                channels, layer, "activation", (0, 9), composite=composite, rf=True,
                plot_fn=vis_opaque_img if render else None,
            )  # fmt: skip


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


PARTS = ("mining", "projections", "end-to-end", "memory")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--skip-peers", action="store_true", help="do not run zennit-crp and the Captum loop")
    parser.add_argument("--skip-rendered", action="store_true", help="do not run the rendered rows")
    parser.add_argument("--uncached-loop", action="store_true", help="add the per-channel loop with the cache off")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="which measures to run")
    parser.add_argument("--json", default=None, help="also write the numbers to this file")
    args = parser.parse_args()
    if args.repeats < 1 or args.images < 1:
        parser.error("--repeats and --images must be >= 1")
    warnings.filterwarnings("ignore")
    if find_cifar10() is None:
        sys.exit("CIFAR-10 zips not found: set DECONVVIZ_CIFAR10 (see captum_deconvviz.data.find_cifar10)")
    model, images = w1_model(), w1_images(args.images)
    print(f"# bench_mining: W1 on {len(images)} images, torch {torch.__version__}, {torch.get_num_threads()} threads")
    numbers: dict[str, float] = {}

    if "mining" in args.parts:  # 1. Mining against a plain forward pass over the same images.
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

    result = mine_topk(model, LAYERS, images, k=9, batch_size=64, progress=False)
    if "projections" in args.parts:  # 2. Projections per record against forward + input-only backward per image.
        print("\n## Projections per record\n")
        print("| layer | records | distinct images | s per record | baseline s per image | ratio |\n"
              "|---|---|---|---|---|---|")  # fmt: skip
        for layer in LAYERS:
            records = [r for c in range(result.channels(layer)) for r in result.records(layer, c)]
            distinct = len({r.index for r in records})
            layer_med = median_times(
                {
                    # Cleared each time: a cached layer would be served without projecting anything.
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

    if "end-to-end" in args.parts:  # 3. End to end: ours per layer and per channel, against the peers.
        end_to_end(model, images, result, args, numbers)

    if "memory" in args.parts:  # 4. Peak memory does not grow with the dataset.
        small, large = peak_memory(1000), peak_memory(10000)
        numbers["peak_rss_1000_mb"], numbers["peak_rss_10000_mb"] = small, large
        print("\n## Peak memory (fresh process, images streamed from the zip)\n")
        print(f"| images | peak RSS |\n|---|---|\n| 1,000 | {small:.0f} MB |\n| 10,000 | {large:.0f} MB |")
        print(f"\n10,000 / 1,000 = **{large / small:.3f}** (target <= 1.10)")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(numbers, handle, indent=2)


BULK = "captum-deconvviz, per-layer calls"
LOOP = "captum-deconvviz, one channel at a time"
LOOP_UNCACHED = "captum-deconvviz, one channel at a time, cache off (cache_limit=0: as before the cache)"
BULK_RENDERED = "captum-deconvviz, per-layer calls, rendered (PIL image per patch and projection)"
CRP = "zennit-crp, plot_fn=None (tensors)"
CRP_RENDERED = "zennit-crp, plot_fn=vis_opaque_img (PIL image per reference)"
CAPTUM = "captum NeuronDeconvolution per record (projections and crops only, no mining)"


def end_to_end(
    model: nn.Module, images: Tensor, result: MiningResult, args: argparse.Namespace, numbers: dict[str, float]
) -> None:
    """Every contender interleaved in each repeat; medians, and ratios against the like-for-like row."""
    contenders: dict[str, Callable[[], object]] = {
        BULK: lambda: ours_end_to_end(model, images),
        LOOP: lambda: ours_end_to_end(model, images, per_channel=True),
    }
    if args.uncached_loop:
        contenders[LOOP_UNCACHED] = lambda: ours_end_to_end(model, images, per_channel=True, cache=False)
    if not args.skip_rendered:
        contenders[BULK_RENDERED] = lambda: ours_end_to_end(model, images, render=True)
    if not args.skip_peers:
        try:
            import crp  # noqa: F401

            contenders[CRP] = lambda: zennit_crp(model, images)
            if not args.skip_rendered:
                contenders[CRP_RENDERED] = lambda: zennit_crp(model, images, render=True)
        except ImportError:
            print("\n(zennit-crp is not installed: pip install zennit-crp)")
        contenders[CAPTUM] = lambda: captum_loop(model, images, result)
    cpu: dict[str, float] = {}
    with contextlib.redirect_stdout(sys.stderr):  # zennit-crp prints its progress
        med = median_times(contenders, args.repeats, cpu)
    baseline = {CRP_RENDERED: BULK_RENDERED}
    records = sum(9 * result.channels(layer) for layer in LAYERS)
    print(f"\n## End to end: mining + crops of images and projections, {records:,} records "
          f"(medians of {args.repeats} interleaved runs)\n")  # fmt: skip
    print("| tool | median s | CPU s | against | ratio (wall) | ratio (CPU) |\n|---|---|---|---|---|---|")
    for name, value in med.items():
        against = baseline.get(name, BULK) if name != BULK else name
        print(f"| {name} | {value:.2f} | {cpu[name]:.2f} | {against if name != BULK else ''} | "
              f"{value / med[against]:.2f}x | {cpu[name] / cpu[against]:.2f}x |")  # fmt: skip
        numbers[f"end_to_end_{name}"], numbers[f"end_to_end_cpu_{name}"] = value, cpu[name]
    print(f"\nper-channel loop / per-layer calls = **{med[LOOP] / med[BULK]:.3f}** wall, "
          f"**{cpu[LOOP] / cpu[BULK]:.3f}** CPU (target <= 1.15)")  # fmt: skip


if __name__ == "__main__":
    main()
