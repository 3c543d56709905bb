"""What the exemplar statistics cost (issue 16), side by side in one run on W1.

W1 is bench_mining.py's job: the first 2,000 CIFAR-10 test images (class-interleaved), the
ZF-style net with random weights, its 4 conv layers (ReLU outputs), k=9, one record per
image and channel. Mining only: no crops, no projections, nothing rendered, on any side.

Contenders, interleaved in each repeat (medians):
- ours by activation, as before (the baseline);
- ours with ``labels`` (class histogram of the top-100, exact class means, selectivity);
- ours with labels, ``by_class=True`` and ``bottom_k=9``;
- ours with ``rank_by="relevance", target="label"`` (with labels: also which units matter
  for each class): the whole forward, and one backward per batch;
- zennit-crp's mining, ``FeatureVisualization.run``, which always computes both activation
  and relevance maxima (ActMax and RelMax) and their statistics, with each image's label as
  its target. It runs as its users run it: ``EpsilonPlusFlat``, the composite of its README,
  and its default cache of references on disk (in a temporary folder). Relevance there is
  LRP's, ours is activation x gradient: the two rank by different scores, and this row
  compares what each costs, not what each finds.

Targets (docs/benchmarks.md): labels and selectivity <= 1.10x mining without; relevance
ranking faster than zennit-crp's mining.

Usage:
    pip install zennit-crp   # the peer; its row is skipped with a note if missing
    python benchmarks/bench_exemplars.py [--repeats 3] [--images 2000]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import warnings
from collections.abc import Callable

import torch
from bench_mining import LAYERS, median_times, w1_model
from torch import Tensor, nn

from captum_deconvviz import mine_topk
from captum_deconvviz.data import find_cifar10, load_cifar10
from captum_deconvviz.zoo import CIFAR10_MEAN, CIFAR10_STD


def w1_labelled(count: int) -> tuple[Tensor, Tensor]:
    images, labels, _ = load_cifar10("test", limit=count)
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    return (images.float() / 255 - mean) / std, labels


def zennit_crp_mining(model: nn.Module, images: Tensor, labels: Tensor) -> None:
    """zennit-crp's ``FeatureVisualization.run``: activation and relevance maxima of every channel."""
    from crp.attribution import CondAttribution
    from crp.concepts import ChannelConcept
    from crp.visualization import FeatureVisualization
    from zennit.composites import EpsilonPlusFlat

    dataset = [(images[i], int(labels[i])) for i in range(len(images))]
    with tempfile.TemporaryDirectory() as tmp:
        attribution = CondAttribution(model)
        fv = FeatureVisualization(attribution, dataset, {layer: ChannelConcept() for layer in LAYERS}, path=tmp)
        fv.run(EpsilonPlusFlat(), 0, len(dataset), batch_size=64)


BASE = "ours, by activation (as before)"
LABELS = "ours + labels: class histogram (top-100), class means, selectivity"
MORE = "ours + labels, by_class=True, bottom_k=9"
RELEVANCE = "ours, rank_by='relevance', target='label' (+ labels)"
CRP = "zennit-crp FeatureVisualization.run (ActMax + RelMax, EpsilonPlusFlat)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=2000)
    args = parser.parse_args()
    if args.repeats < 1 or args.images < 1:
        parser.error("--repeats and --images must be >= 1")
    warnings.filterwarnings("ignore")
    if find_cifar10() is None:
        sys.exit("CIFAR-10 zips not found: set DECONVVIZ_CIFAR10 (see captum_deconvviz.data.find_cifar10)")
    model = w1_model()
    images, labels = w1_labelled(args.images)
    threads = torch.get_num_threads()
    print(f"# bench_exemplars: W1 on {len(images)} images, torch {torch.__version__}, {threads} threads")

    def ours(**options: object) -> Callable[[], object]:
        return lambda: mine_topk(model, LAYERS, images, k=9, batch_size=64, progress=False, **options)  # type: ignore[arg-type]

    contenders = {
        BASE: ours(),
        LABELS: ours(labels=labels),
        MORE: ours(labels=labels, by_class=True, bottom_k=9),
        RELEVANCE: ours(labels=labels, rank_by="relevance", target="label"),
    }
    try:
        import crp  # noqa: F401

        contenders[CRP] = lambda: zennit_crp_mining(model, images, labels)
    except ImportError:
        print("\n(zennit-crp is not installed: pip install zennit-crp)")
    cpu: dict[str, float] = {}
    with contextlib.redirect_stdout(sys.stderr):  # zennit-crp prints its progress
        med = median_times(contenders, args.repeats, cpu)
    print(f"\n## Mining with exemplar statistics (medians of {args.repeats} interleaved runs)\n")
    print("| contender | median s | CPU s | / by activation | / relevance (ours) |\n|---|---|---|---|---|")
    for name, value in med.items():
        print(f"| {name} | {value:.2f} | {cpu[name]:.2f} | {value / med[BASE]:.3f}x | {value / med[RELEVANCE]:.2f}x |")
    print(f"\nlabels + selectivity / by activation = **{med[LABELS] / med[BASE]:.3f}** (target <= 1.10)")
    if CRP in med:
        print(f"zennit-crp mining / ours by relevance = **{med[CRP] / med[RELEVANCE]:.2f}x** (target > 1)")


if __name__ == "__main__":
    main()
