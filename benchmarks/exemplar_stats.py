"""What the class statistics say about the default model's layers (issue 16, docs/mining.md).

Mines the 10,000 CIFAR-10 test images with the shipped default model at its four layers
(the ReLU after each convolution, ``DEFAULT_LAYERS``) and at conv4's output before its
ReLU (``features.8``), with labels, ``bottom_k=9``, ``by_class`` and quantiles, and prints
per layer: the class selectivity index of Morcos et al. (2018) (mean, median, share of
channels above 0.5), the same index under shuffled labels (the value that sampling noise
alone gives, the baseline the threshold is read against), how concentrated the class
histograms of the top-100 images are, the most common top classes, and how many
channels' bottom-9 are all ties at 0 (a ReLU output's floor). The statistics are checked
against per-image maxima computed here with forward hooks. With ``--figures`` it also
writes the selectivity-by-depth figure and one channel's exemplars to that folder.

Usage:
    python benchmarks/exemplar_stats.py [--result exemplar_stats.pt] [--figures docs/images]
        [--channel features.8:auto] [--limit 10000]

The mined result is saved to ``--result`` and reused when the file exists.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from captum_deconvviz import MiningResult, mine_topk
from captum_deconvviz.data import find_cifar10, load_cifar10
from captum_deconvviz.exemplars import selectivity_index
from captum_deconvviz.zoo import CIFAR10_MEAN, CIFAR10_STD, DEFAULT_LAYERS, load_default_model

THRESHOLD = 0.5
SHUFFLES = 5
#: Also mined: conv4's output before its ReLU, whose bottom-k are the most negative responses (after
#: the ReLU most channels have many images at 0, and their bottom-k are ties broken by index).
PRE_RELU = "features.8"
LAYERS = (*DEFAULT_LAYERS, PRE_RELU)


class LabelledImages(Dataset):
    """Normalized images with their labels and class names (``classes``, as torchvision's datasets)."""

    def __init__(self, images: Tensor, labels: Tensor, classes: list[str]) -> None:
        mean, std = torch.tensor(CIFAR10_MEAN).view(3, 1, 1), torch.tensor(CIFAR10_STD).view(3, 1, 1)
        self.images = (images.float() / 255 - mean) / std
        self.labels = labels.long()
        self.classes = list(classes)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.images[index], int(self.labels[index])


def load_data(limit: int | None) -> LabelledImages:
    if find_cifar10() is None:
        sys.exit("CIFAR-10 not found: put train.zip/test.zip in shared/data/cifar10 or set $DECONVVIZ_CIFAR10")
    images, labels, classes = load_cifar10("test", limit=limit)
    return LabelledImages(images, labels, classes)


def mine(model: nn.Module, data: LabelledImages, path: Path) -> MiningResult:
    if path.is_file():
        print(f"loading {path}")
        return MiningResult.load(path)
    start = time.perf_counter()
    result = mine_topk(model, list(LAYERS), data, k=9, batch_size=250, progress=False, labels=True,
                       bottom_k=9, by_class=True, quantiles=True)  # fmt: skip
    print(f"mined {len(data)} images in {time.perf_counter() - start:.1f} s")
    result.save(path)
    return result


def image_maxima(model: nn.Module, data: LabelledImages) -> dict[str, Tensor]:
    """Per layer, every image's maximum activation per channel ``[N, C]``, from forward hooks."""
    modules = dict(model.named_modules())
    parts: dict[str, list[Tensor]] = {name: [] for name in LAYERS}

    def keep(name: str):
        def hook(_m: nn.Module, _i: object, out: Tensor) -> None:
            parts[name].append(out.detach().flatten(2).amax(dim=2).double())

        return hook

    hooks = [modules[name].register_forward_hook(keep(name)) for name in LAYERS]
    try:
        with torch.no_grad():
            for i in range(0, len(data), 500):
                model(data.images[i : i + 500])
    finally:
        for hook in hooks:
            hook.remove()
    return {name: torch.cat(chunks) for name, chunks in parts.items()}


def class_means(maxima: Tensor, labels: Tensor, classes: int) -> Tensor:
    """``[channels, classes]`` mean of the per-image maxima per class."""
    sums = torch.zeros(classes, maxima.shape[1], dtype=torch.float64).index_add_(0, labels, maxima)
    counts = torch.bincount(labels, minlength=classes).double().view(-1, 1)
    return (sums / counts).T


def layer_row(result: MiningResult, layer: str, maxima: Tensor, labels: Tensor) -> dict[str, object]:
    stats = result.class_stats(layer)
    classes = stats.histogram.shape[1]
    # The mined statistics against the per-image maxima of the hooks (exact sums there, float64 here).
    torch.testing.assert_close(stats.class_means, class_means(maxima, labels, classes), rtol=1e-9, atol=1e-9)
    selectivity = stats.selectivity[~torch.isnan(stats.selectivity)]
    generator = torch.Generator().manual_seed(0)
    null = []
    for _ in range(SHUFFLES):
        shuffled = labels[torch.randperm(len(labels), generator=generator)]
        values = selectivity_index(class_means(maxima, shuffled, classes))[0]
        null.append(values[~torch.isnan(values)])
    null_all = torch.cat(null)
    share = stats.histogram.max(dim=1).values.double() / stats.top_n  # its most frequent class
    top_share = stats.histogram.gather(1, stats.top_class.clamp_min(0).view(-1, 1)).squeeze(1).double() / stats.top_n
    alive = stats.histogram.sum(dim=1) > 0
    tops = Counter(stats.name(int(c)) for c in stats.top_class[~torch.isnan(stats.selectivity)])
    zero_ties = sum(all(r.value == 0 for r in result.records(layer, c, kind="bottom")) for c in range(len(share)))
    return {
        "layer": layer,
        "channels": stats.histogram.shape[0],
        "defined": len(selectivity),
        "mean": float(selectivity.mean()),
        "median": float(selectivity.median()),
        "above": float((selectivity > THRESHOLD).double().mean()),
        "null_mean": float(null_all.mean()),
        "null_p99": float(torch.quantile(null_all, 0.99)),
        "above_null": float((selectivity > torch.quantile(null_all, 0.99)).double().mean()),
        "zero_ties": zero_ties,
        "share": float(share[alive].mean()),
        "share_median": statistics.median(share[alive].tolist()),
        "top_share": float(top_share[alive].mean()),
        "tops": tops.most_common(3),
        "selectivity": stats.selectivity,
    }


def print_table(rows: list[dict[str, object]], top_n: int, images: int) -> None:
    print(f"\n{images:,} CIFAR-10 test images; histogram over each channel's top-{top_n} images; "
          f"shuffled labels: {SHUFFLES} permutations\n")  # fmt: skip
    print("| layer | channels | selectivity mean | median | > 0.5 | shuffled labels: mean, 99th pct | > that 99th pct "
          f"| top-{top_n} share of its most frequent class (mean, median) | share of its top class (mean) "
          "| most common top classes (channels) "
          "| bottom-9 all ties at 0 |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        tops = ", ".join(f"{name} ({count})" for name, count in r["tops"])  # type: ignore[attr-defined]
        print(f"| {r['layer']} | {r['channels']} ({r['defined']} defined) | {r['mean']:.3f} | {r['median']:.3f} | "
              f"{100 * r['above']:.1f}% | {r['null_mean']:.3f}, {r['null_p99']:.3f} | {100 * r['above_null']:.0f}% | "
              f"{r['share']:.3f}, {r['share_median']:.2f} | {r['top_share']:.3f} | {tops} | "
              f"{r['zero_ties']} |")  # fmt: skip


def class_contrast(data: LabelledImages) -> None:
    """Each class's mean RMS contrast (the standard deviation of an image's normalized pixels)."""
    contrast = data.images.flatten(1).std(dim=1)
    means = [(float(contrast[data.labels == c].mean()), name) for c, name in enumerate(data.classes)]
    print("\nmean RMS contrast per class, highest first: " + ", ".join(f"{n} {v:.3f}" for v, n in sorted(means)[::-1]))


def figures(result: MiningResult, model: nn.Module, data: LabelledImages, folder: Path, channel: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from captum_deconvviz import exemplar_rows, plot_exemplars, plot_selectivity
    from captum_deconvviz.zoo import denormalize

    folder.mkdir(parents=True, exist_ok=True)
    fig, _ = plot_selectivity(result, list(DEFAULT_LAYERS), threshold=THRESHOLD,
                              names=[f"conv{i} (ReLU)" for i in range(1, 5)], use_pyplot=False)  # fmt: skip
    fig.savefig(folder / "selectivity_by_depth.png", dpi=200, bbox_inches="tight")
    layer, number = channel.split(":")
    stats = result.class_stats(DEFAULT_LAYERS[-1])
    # "auto": the most selective channel of the deepest layer, drawn before its ReLU (bottom-k: most negative)
    unit = int(stats.selectivity.nan_to_num(-1.0).argmax()) if number == "auto" else int(number)
    # its second class by class mean: the top-9 of its top class are often its top-9 overall
    second = int(stats.class_means[unit].nan_to_num(float("-inf")).argsort(descending=True)[1])
    rows = exemplar_rows(result, data, layer, unit, model=model, quantiles=(0.5,), classes=(second,))
    fig, _ = plot_exemplars(rows, denormalize=denormalize, use_pyplot=False)
    fig.savefig(folder / f"exemplars_{layer.replace('.', '_')}_{unit}.png", dpi=150, bbox_inches="tight")
    print(f"figures written to {folder}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--result", type=Path, default=Path("exemplar_stats.pt"))
    parser.add_argument("--figures", type=Path, default=None)
    parser.add_argument("--channel", default=f"{PRE_RELU}:auto", help="layer:channel of the exemplars figure; auto: "
                        f"the most selective channel of {DEFAULT_LAYERS[-1]}")  # fmt: skip
    parser.add_argument("--limit", type=int, default=None, help="the first N test images (round-robin over classes)")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model, data = load_default_model(), load_data(args.limit)
    result = mine(model, data, args.result)
    maxima = image_maxima(model, data)
    rows = [layer_row(result, layer, maxima[layer], data.labels) for layer in LAYERS]
    print_table(rows, result.class_stats(DEFAULT_LAYERS[0]).top_n, len(data))
    class_contrast(data)
    if args.figures is not None:
        figures(result, model, data, args.figures, args.channel)


if __name__ == "__main__":
    main()
