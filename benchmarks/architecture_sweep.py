"""The support table of docs/support.md: every architecture of the sweep, measured.

For each torchvision architecture (random weights, seed 0): does each public operation
work, which rule each activation got (what the engine routed), the receptive field of
the last convolution at 224x224, and the time per image of ``ZFDeconvolution.attribute``
at 224x224 (batch 4) next to Captum's ``Deconvolution`` on the same model.

Usage:
    python benchmarks/architecture_sweep.py [--size 224] [--batch 4]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch
import torchvision
from captum.attr import Deconvolution
from torch import nn

from captum_deconvviz import ZFDeconvolution, receptive_field
from captum_deconvviz.engine import ReverseRules, activation_rule

ARCHS = [
    "alexnet", "vgg11_bn", "vgg16", "resnet18", "resnet50", "densenet121", "googlenet", "inception_v3",
    "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "regnet_x_400mf", "convnext_tiny", "squeezenet1_1",
]  # fmt: skip
KWARGS = {
    "googlenet": {"aux_logits": False, "init_weights": False},
    "inception_v3": {"aux_logits": False, "init_weights": False},
}


def routed_rules(model: nn.Module, x: torch.Tensor) -> str:
    with ReverseRules("zf") as mode:
        model(x.clone().requires_grad_(True))
    names = sorted(mode.routed)
    return ", ".join(f"{name} → {activation_rule(name)}" for name in names)


def timed(fn, repeats: int) -> float:  # type: ignore[no-untyped-def]
    fn()
    values = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        values.append(time.perf_counter() - start)
    return statistics.median(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    print(f"# architecture sweep at {args.size}x{args.size}, batch {args.batch}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads\n")  # fmt: skip
    print("| architecture | activation rules | last conv | its receptive field | ZFDeconvolution s/image | "
          "Captum Deconvolution s/image |\n|---|---|---|---|---|---|")  # fmt: skip
    for name in ARCHS:
        torch.manual_seed(0)
        model = torchvision.models.get_model(name, weights=None, **KWARGS.get(name, {})).eval()
        x = torch.randn(args.batch, 3, args.size, args.size)
        rules = routed_rules(model, x[:1])
        last_conv = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)][-1]
        rf = receptive_field(model, last_conv, (3, args.size, args.size))
        ours = timed(lambda model=model, x=x: ZFDeconvolution(model).attribute(x, target=1), args.repeats)
        theirs = timed(lambda model=model, x=x: Deconvolution(model).attribute(x, target=1), args.repeats)
        size = "x".join(map(str, rf.size)) + ("" if rf.exact else " (bound)")
        print(f"| {name} | {rules} | `{last_conv}` | {size}, stride {rf.stride[0]} | {ours / args.batch:.3f} | "
              f"{theirs / args.batch:.3f} |")  # fmt: skip


if __name__ == "__main__":
    main()
