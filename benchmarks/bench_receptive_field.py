"""Speed of the analytic receptive-field table, next to one plain forward pass.

Target: ``receptive_field_table`` for ResNet50 at 3x224x224 in under 1 s.

Usage:
    python benchmarks/bench_receptive_field.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torchvision

from captum_deconvviz import receptive_field_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"# bench_receptive_field: torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| model | rows | table (median s) | one forward, batch 1 (median s) | ratio |\n|---|---|---|---|---|")
    for name in ("alexnet", "vgg16", "resnet50", "densenet121", "convnext_tiny"):
        model = torchvision.models.get_model(name).eval()
        x = torch.zeros(1, 3, 224, 224)
        table_times, forward_times = [], []
        rows = 0
        for _ in range(args.repeats):
            start = time.perf_counter()
            rows = len(receptive_field_table(model, (3, 224, 224)))
            table_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            with torch.no_grad():
                model(x)
            forward_times.append(time.perf_counter() - start)
        table, forward = statistics.median(table_times), statistics.median(forward_times)
        print(f"| {name} | {rows} | {table:.3f} | {forward:.3f} | {table / forward:.2f} |")


if __name__ == "__main__":
    main()
