"""The explorer's weight and speed in a real browser: the demo's, and one with 10x its channels.

The demo: ``deconvviz demo --out DIR`` (the default model, the shipped 1,000 images, its 4 layers,
528 channels, k = 9, with class statistics and bottom-9) against ``deconvviz demo --static``.
10x: the same 1,000 images, k = 9, through a net with 10x the demo's channels (480, 960, 1,920,
1,920: 5,280) whose wide layers are grouped (depthwise-style, random weights, seed 0), so that
projecting 47,520 records stays affordable on a CPU; as wide as the widest layers of the
architecture sweep (ResNet-50's 2,048).

Each explorer is opened from ``file://`` in Debian's Chromium (Playwright, headless) 5 times:
the page's own ``data-ready-ms`` (navigation start to the first view drawn and listening to
keys), then, in one tab, the time to draw the widest layer's channel table, to sort it by a
column, and to open a channel and click a patch (medians). Sizes are of the whole folders.

Usage:
    python benchmarks/bench_explorer.py [--work DIR] [--build demo static wide]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from captum_deconvviz import mine_topk, write_explorer
from captum_deconvviz.zoo import default_sample, denormalize

CHROMIUM = "/usr/bin/chromium"
LOADS = 5


class Wide(nn.Module):
    """10x the default model's channels; the three wide layers are grouped convolutions."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(
            nn.Conv2d(3, 480, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2, 1),
            nn.Conv2d(480, 960, 5, padding=2, groups=480), nn.ReLU(), nn.MaxPool2d(3, 2, 1),
            nn.Conv2d(960, 1920, 3, padding=1, groups=960), nn.ReLU(),
            nn.Conv2d(1920, 1920, 3, padding=1, groups=1920), nn.ReLU(),
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x)


def size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


def build(work: Path, which: list[str]) -> dict[str, float]:
    seconds = {}
    for name, extra in (("demo", []), ("static", ["--static"])):
        if name not in which:
            continue
        start = time.perf_counter()
        subprocess.run(["deconvviz", "demo", "--out", str(work / name), *extra], check=True)
        seconds[name] = time.perf_counter() - start
    if "wide" not in which:
        return seconds
    data = default_sample()
    model = Wide().eval()
    start = time.perf_counter()
    layers = ["features.1", "features.4", "features.7", "features.9"]
    result = mine_topk(model, layers, data, k=9, labels=True, batch_size=100)
    write_explorer(work / "wide", model, data, result, denormalize=denormalize, image_labels=data.names,
                   title="10x the demo's channels", guided=False)  # fmt: skip
    seconds["wide"] = time.perf_counter() - start
    return seconds


def measure(browser: Any, index: Path, layer: str) -> dict[str, float]:
    url = index.resolve().as_uri()
    ready = []
    for _ in range(LOADS):
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(url)
        ready.append(float(page.get_attribute("html", "data-ready-ms")))
        page.close()
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)
    # Until the first rows are painted, and until the table has all its rows (drawn in batches).
    timed = """async (action) => {
        const start = performance.now();
        if (action.hash) { location.hash = action.hash; } else { document.querySelector(action.click).click(); }
        await new Promise((done) => requestAnimationFrame(() => setTimeout(done, 0)));
        const painted = performance.now() - start;
        while (!document.querySelector("#channels[data-complete]")) { await new Promise((d) => setTimeout(d, 5)); }
        return [painted, performance.now() - start];
    }"""
    table, sort, channel, table_all, sort_all = [], [], [], [], []
    for _ in range(LOADS):
        page.goto(url + "#")
        first, whole = page.evaluate(timed, {"hash": "#" + layer})
        table.append(first)
        table_all.append(whole)
        first, whole = page.evaluate(timed, {"click": "th button[data-key=max]"})
        sort.append(first)
        sort_all.append(whole)
        start = time.perf_counter()
        page.goto(url + f"#{layer}/7")
        page.click(".records button[data-record='0']")
        page.wait_for_selector("#rf-box")
        channel.append((time.perf_counter() - start) * 1000)
    page.close()
    return {
        "ready_ms": statistics.median(ready),
        "table_ms": statistics.median(table),
        "table_all_ms": statistics.median(table_all),
        "sort_ms": statistics.median(sort),
        "sort_all_ms": statistics.median(sort_all),
        "channel_and_click_ms": statistics.median(channel),
        "errors": float(len(errors)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", default="bench-explorer", help="where the explorers are written")
    parser.add_argument("--build", nargs="*", default=["demo", "static", "wide"], choices=["demo", "static", "wide"],
                        help="which folders to (re)build before measuring (none: measure those in --work)")  # fmt: skip
    args = parser.parse_args()
    work = Path(args.work)
    seconds = build(work, args.build)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        rows = []
        for name, layer in (("demo", "features.9"), ("wide", "features.9")):
            numbers = measure(browser, work / name / "index.html", layer)
            rows.append((name, numbers))
            print(name, {k: round(v, 1) for k, v in numbers.items()}, file=sys.stderr)
        browser.close()
    print("| explorer | channels | size MB | build s | first view ms | table ms (all rows) | sort ms (all rows) "
          "| channel + click ms |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    channels = {"demo": 528, "wide": 5280}
    for name, n in rows:
        print(
            f"| {name} | {channels[name]:,} | {size_mb(work / name):.1f} | {seconds.get(name, float('nan')):.0f} | "
            f"{n['ready_ms']:.0f} | {n['table_ms']:.0f} ({n['table_all_ms']:.0f}) | {n['sort_ms']:.0f} "
            f"({n['sort_all_ms']:.0f}) | {n['channel_and_click_ms']:.0f} |"
        )
    if (work / "static").is_dir():
        print(f"static report: {size_mb(work / 'static'):.1f} MB, {seconds.get('static', float('nan')):.0f} s")


if __name__ == "__main__":
    main()
