"""What streaming the data once saves `deconvviz report`: mining + diagnosis, two passes against one.

Two passes (before): ``mine_topk`` then ``diagnose(result=)``, whose aliasing pass streams the
first 1,000 images again. One pass (now): ``mine_topk`` under ``watch_aliasing``, whose scores
``diagnose`` reads from the result. Same model, data, layers and batch size as ``deconvviz
demo`` (the default model, the shipped 1,000-image sample, its default layers, batch 64);
medians of interleaved repeats. The diagnosis tables must be equal, or the script fails.

Usage:
    python benchmarks/bench_report_pass.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch

from captum_deconvviz import diagnose, mine_topk
from captum_deconvviz.cli import ALIASING_IMAGES
from captum_deconvviz.diagnose import watch_aliasing
from captum_deconvviz.zoo import DEFAULT_LAYERS, default_sample, load_default_model

BATCH = 64


def two_passes(model: Any, data: Any) -> str:
    result = mine_topk(model, list(DEFAULT_LAYERS), data, batch_size=BATCH, progress=False)
    return diagnose(model, data, batch_size=BATCH, max_images=ALIASING_IMAGES, result=result).table()


def one_pass(model: Any, data: Any) -> str:
    with watch_aliasing(model, data, max_images=ALIASING_IMAGES) as watch:
        result = mine_topk(model, list(DEFAULT_LAYERS), data, batch_size=BATCH, progress=False)
    watch.record(result, BATCH)
    diagnosis = diagnose(model, data, batch_size=BATCH, max_images=ALIASING_IMAGES, result=result)
    second_pass = [n for n in diagnosis.notes if n.startswith("Aliasing over") and "while mining" not in n]
    assert not second_pass, f"a second pass ran: {second_pass}"
    return diagnosis.table()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    model, data = load_default_model(), default_sample()
    times: dict[str, list[float]] = {"two passes": [], "one pass": []}
    tables = {}
    for _ in range(args.repeats):
        for name, run in (("two passes", two_passes), ("one pass", one_pass)):
            start = time.perf_counter()
            tables[name] = run(model, data)
            times[name].append(time.perf_counter() - start)
    if tables["two passes"] != tables["one pass"]:
        raise SystemExit("the one-pass diagnosis differs from the two-pass one")
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(f"# bench_report_pass: default model, {len(data)} images, layers {DEFAULT_LAYERS}, batch {BATCH}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")  # fmt: skip
    for name, value in medians.items():
        print(f"{name}: {value:.2f} s (median of {args.repeats}: {', '.join(f'{v:.2f}' for v in times[name])})")
    print(f"one pass / two passes: {medians['one pass'] / medians['two passes']:.3f}; tables equal")


if __name__ == "__main__":
    main()
