"""``unique="nms"`` next to the default ``unique="image"``, on the demo's mining job.

The demo's configuration (``deconvviz demo``): the default model
(``captum_deconvviz.zoo.load_default_model()``), its shipped sample of 1,000 CIFAR-10 test
images (``default_sample()``), the layers ``zoo.DEFAULT_LAYERS``, k=9, batch size 100, on the
CPU. Both modes run in one process, alternating, and the median of the repeats is reported
(the first, warm-up run of each mode is not counted).

Target (issue 15): nms / image <= 2.0.

Usage:
    python benchmarks/bench_nms.py [--repeats 3] [--images 1000] [--threshold 0.5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.data import Subset

from captum_deconvviz import mine_topk
from captum_deconvviz.zoo import DEFAULT_LAYERS, default_sample, load_default_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--k", type=int, default=9)
    parser.add_argument("--threshold", type=float, default=0.5, help="nms_threshold (default: mine_topk's)")
    args = parser.parse_args()
    model = load_default_model()
    sample = default_sample()
    data = Subset(sample, range(min(args.images, len(sample))))
    layers = list(DEFAULT_LAYERS)

    def mine(unique: str) -> float:
        start = time.perf_counter()
        mine_topk(
            model, layers, data, k=args.k, unique=unique, batch_size=args.batch_size, device="cpu",
            progress=False, nms_threshold=args.threshold,
        )  # fmt: skip
        return time.perf_counter() - start

    times: dict[str, list[float]] = {"image": [], "nms": []}
    for unique in times:  # warm-up: imports, allocator, the zip's first reads
        mine(unique)
    for _ in range(args.repeats):
        for unique in times:
            times[unique].append(mine(unique))
    image, nms = statistics.median(times["image"]), statistics.median(times["nms"])
    print(f"# bench_nms: torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(
        f"# default model, {len(data)} shipped images, layers {layers}, k={args.k}, batch {args.batch_size}, "
        f"nms_threshold={args.threshold}, median of {args.repeats}\n"
    )
    print("| unique | runs (s) | median (s) |\n|---|---|---|")
    for unique, runs in times.items():
        print(f"| {unique} | {' '.join(f'{t:.2f}' for t in runs)} | {statistics.median(runs):.2f} |")
    print(f"\nnms / image = {nms / image:.2f} (target <= 2.0)")


if __name__ == "__main__":
    main()
