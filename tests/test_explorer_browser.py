"""The explorer in a real browser (Debian's Chromium driven by Playwright), used as a person would.

One browser serves the module. The demo's explorer (what ``deconvviz demo`` writes, through
``deconvviz report`` on a folder of 10 shipped images per class, so that class selectivity is
defined) is opened from ``file://``: it must be interactive within 1 s, sort by selectivity,
find a layer by search, open a channel by keyboard, show a clicked patch's whole image with the
receptive-field box where ``ReceptiveField.box`` puts it, follow ``#layer/channel`` addresses,
and log no console error. A second explorer is built from file, class and layer names that are
HTML, JavaScript and URL payloads: they must show as text and run nothing.

Screenshots go to the test's temporary folder (``pytest --basetemp`` to keep them).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import WideExplorer
from torch import Tensor, nn

from captum_deconvviz import mine_topk, receptive_field, write_explorer
from captum_deconvviz._layer_crops import window
from captum_deconvviz.cli import main
from captum_deconvviz.data import ImageFiles
from captum_deconvviz.zoo import ZFNetCIFAR, default_sample, default_transform, denormalize, load_default_model

CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")) if p and
                 Path(p).exists()), None)  # fmt: skip
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium here; .ci/run installs Debian's chromium")
sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is in the test extra: pip install -e .[test]")

PER_CLASS = 10  # images per class: the page's weight is its channels and records, which stay the demo's


class Page:
    """A browser tab that remembers its console errors, page errors, failed loads and dialogs."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.problems: list[str] = []
        page.on("console", lambda m: self.problems.append(f"console {m.type}: {m.text}") if m.type in (
            "error", "warning") else None)  # fmt: skip
        page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        page.on("requestfailed", lambda r: self.problems.append(f"failed: {r.url}"))
        page.on("dialog", lambda d: (self.problems.append(f"dialog: {d.message}"), d.dismiss()))


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield chromium
        chromium.close()


def _tab(browser: Any) -> Page:
    return Page(browser.new_page(viewport={"width": 1280, "height": 900}))


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A class-folder copy of the first images of each class of the shipped sample."""
    root = tmp_path_factory.mktemp("images")
    sample = default_sample(transform=lambda image: image)
    taken: dict[str, int] = {}
    for i, name in enumerate(sample.names):
        label = name.split("/")[0]
        if taken.get(label, 0) < PER_CLASS:
            taken[label] = taken.get(label, 0) + 1
            (root / label).mkdir(exist_ok=True)
            sample[i][0].save(root / name.replace(".jpg", ".png"))
    return root


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory, images: Path) -> Path:
    out = tmp_path_factory.mktemp("demo") / "explorer"
    assert main(["report", "--data", str(images), "--out", str(out)]) == 0  # the demo's model, layers and k
    return out / "index.html"


def _heading(page: Any, text: str) -> None:
    """Wait (up to 5 s) until the page's heading reads ``text``: a hash change is routed asynchronously."""
    page.wait_for_function("t => document.querySelector('h1')?.textContent === t", arg=text, timeout=5_000)


def _table_channels(tab: Page) -> list[int]:
    rows = tab.page.eval_on_selector_all("#channels tbody tr", "rows => rows.map(r => r.dataset.channel)")
    return [int(c) for c in rows]


def test_the_demo_explorer_walkthrough(browser: Any, demo: Path, images: Path, tmp_path: Path) -> None:
    tab = _tab(browser)
    page = tab.page
    url = demo.resolve().as_uri()
    page.goto(url)
    ready = float(page.get_attribute("html", "data-ready-ms"))
    assert ready < 1000, f"first interactive view after {ready} ms"
    page.screenshot(path=tmp_path / "1-overview.png")

    # Search for a layer: "/" focuses the search box, Enter opens the layer's channel table.
    page.keyboard.press("/")
    page.keyboard.type("features.7")
    page.keyboard.press("Enter")
    page.wait_for_selector("#channels")
    assert page.text_content("h1") == "features.7" and page.evaluate("location.hash") == "#features.7"

    # Sort by selectivity: the first click sorts it descending.
    page.click("th button[data-key=selectivity]")
    page.wait_for_selector("#channels[data-complete]", state="attached")  # rows are drawn in batches
    data = page.evaluate("JSON.parse(document.getElementById('explorer-data').textContent)")
    layer = next(entry for entry in data["layers"] if entry["name"] == "features.7")
    shown = _table_channels(tab)
    values = [layer["classes"]["selectivity"][c] for c in shown]
    finite = [v for v in values if v is not None]
    assert len(shown) == 192 and len(finite) > 150
    assert finite == sorted(finite, reverse=True) and values[: len(finite)] == finite
    page.screenshot(path=tmp_path / "2-table-by-selectivity.png")

    # Open a channel by keyboard: two rows down, Enter.
    page.keyboard.press("ArrowDown")
    page.keyboard.press("ArrowDown")
    page.keyboard.press("Enter")
    channel = shown[1]
    page.wait_for_selector("#detail")
    assert page.evaluate("location.hash") == f"#features.7/{channel}"

    # Click a patch: the whole image, with the receptive-field box where ReceptiveField.box puts it.
    model = load_default_model()
    mined = mine_topk(model, ["features.7"], ImageFiles(images, transform=default_transform()), k=9, progress=False)
    record = mined.records("features.7", channel)[2]
    top, left, bottom, right = receptive_field(model, "features.7", (3, 32, 32)).box(record.y, record.x)
    page.click(".records[data-kind=top] button[data-record='2']")
    whole = page.locator("#whole").bounding_box()
    box = page.locator("#rf-box").bounding_box()
    scale = whole["width"] / 32
    assert box["x"] - whole["x"] == pytest.approx(left * scale, abs=0.5)
    assert box["y"] - whole["y"] == pytest.approx(top * scale, abs=0.5)
    assert box["width"] == pytest.approx((right - left) * scale, abs=0.5)
    assert box["height"] == pytest.approx((bottom - top) * scale, abs=0.5)
    assert f"(#{record.index})" in page.text_content("#detail")
    # The overlay covers the same box; each of Captum's methods is its own sheet.
    overlay = page.locator("#whole .overlay").bounding_box()
    assert overlay == pytest.approx(box, abs=0.5)
    for method in ("blended", "masked", "heat_map"):
        page.check(f"input[name=overlay][value={method}]")
        assert f"_top_{method}_" in page.eval_on_selector("#whole .overlay", "e => e.style.backgroundImage")
    page.screenshot(path=tmp_path / "3-channel-with-whole-image.png")

    # Arrow keys step through channels; Escape goes back to the table.
    page.keyboard.press("ArrowRight")
    assert page.evaluate("location.hash") == f"#features.7/{channel + 1}"
    page.keyboard.press("Escape")
    assert page.evaluate("location.hash") == "#features.7"

    # Follow #layer/channel links: typed, and clicked in a table.
    page.goto(url + "#features.4/5")
    _heading(page, "features.4 / channel 5")
    page.goto(url + "#features.1")
    page.click("#channels a[href='#features.1/3']")
    _heading(page, "features.1 / channel 3")  # the page routes on hashchange, which fires after the click
    page.goto(url + "#:hierarchy")
    assert page.is_visible("#view-hierarchy h2") and not page.is_visible("#content")
    # The view's figure loads once the view is shown.
    page.wait_for_function("document.querySelector('#view-hierarchy img').naturalWidth > 0", timeout=10_000)
    page.goto(url + "#no-such-layer/3")
    _heading(page, "Nothing here")
    assert tab.problems == []


def test_sheets_load_lazily(browser: Any, demo: Path) -> None:
    tab = _tab(browser)
    loaded: list[str] = []
    tab.page.on("requestfinished", lambda request: loaded.append(request.url.rsplit("/", 1)[-1]))
    tab.page.goto(demo.resolve().as_uri())
    tab.page.wait_for_load_state("load")
    assert not any(name.endswith(".webp") for name in loaded), loaded  # the overview shows no sheet
    tab.page.goto(demo.resolve().as_uri() + "#features.9/0")
    tab.page.wait_for_timeout(300)
    sheets = [name for name in loaded if name.endswith((".webp", ".png"))]
    assert sheets and all(name.startswith(("features.9_top_", "features.9_bottom_", "images_")) for name in sheets)
    assert tab.problems == []


# --- payloads in every name the explorer shows ---------------------------------------------------------

SCRIPT = "<script>window.__pwned = 1</script>"  # a file name cannot hold "/": the same with "\\"
FILE_PAYLOADS = ["<img src=x onerror=window.__pwned=2>", "<script>window.__pwned=1<\\script>",
                 "javascript:window.__pwned=3", "%3Cb%3E&amp;#1 'x' \"y\""]  # fmt: skip
CLASS_PAYLOAD = "<b onmouseover=window.__pwned=4>birds</b>"
LAYER_PAYLOAD = '"><img src=x onerror=alert(5)></script><script>alert(7)</script>#javascript:alert(6)'  # no "."


class Evil(nn.Module):
    """A model whose mined layer's name is a payload."""

    def __init__(self) -> None:
        super().__init__()
        self.body = ZFNetCIFAR((8, 8, 8, 8))
        self.add_module(LAYER_PAYLOAD, nn.ReLU())

    def forward(self, x: Tensor) -> Tensor:
        return getattr(self, LAYER_PAYLOAD)(self.body.features[:3](x))


@pytest.fixture(scope="module")
def evil(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    root = tmp_path_factory.mktemp("evil-data")
    sample = default_sample(transform=lambda image: image)
    for i in range(8):
        folder = root / (CLASS_PAYLOAD.replace("/", "\\") if i % 2 else "plain")
        folder.mkdir(exist_ok=True)
        sample[i * 90][0].save(folder / f"{FILE_PAYLOADS[i % 4]}{i}.png")
    data = ImageFiles(root, transform=default_transform())
    torch.manual_seed(0)
    model = Evil().eval()
    result = mine_topk(model, [LAYER_PAYLOAD], data, k=3, labels=True, bottom_k=2, progress=False)
    out = tmp_path_factory.mktemp("evil") / "explorer"
    index = write_explorer(out, model, data, result, denormalize=denormalize, image_labels=data.names,
                           title=SCRIPT, command=["deconvviz", SCRIPT], progress=False)  # fmt: skip
    return index, data


def test_payloads_show_as_text_and_run_nothing(browser: Any, evil: tuple[Path, Any], tmp_path: Path) -> None:
    index, data = evil
    tab = _tab(browser)
    page = tab.page
    url = index.resolve().as_uri()
    page.goto(url)
    assert page.text_content("#home") == SCRIPT and page.title() == SCRIPT
    encoded = page.evaluate("name => encodeURIComponent(name)", LAYER_PAYLOAD)
    page.click(f"#layers a[href='#{encoded}']")
    assert page.text_content("h1") == LAYER_PAYLOAD
    page.goto(url + f"#{encoded}/0")
    assert page.text_content("h1") == f"{LAYER_PAYLOAD} / channel 0"
    page.click(".records[data-kind=top] button[data-record='0']")
    page.click(".records[data-kind=bottom] button[data-record='0']")
    text = page.inner_text("body")
    assert any(name in text for name in data.names), "the file names are shown"
    assert CLASS_PAYLOAD.replace("/", "\\") in text, "the class name is shown in the histogram"
    page.goto(url + "#:about")
    assert SCRIPT in page.inner_text("#view-about")
    page.screenshot(path=tmp_path / "payloads.png", full_page=True)
    assert page.evaluate("window.__pwned") is None
    assert page.locator("img[src=x], b[onmouseover]").count() == 0
    assert tab.problems == []


def test_cells_of_fields_larger_than_the_image_sit_on_their_window(browser: Any, wide_explorer: WideExplorer) -> None:
    """Layer 7 sees 46 px of 16-px images: each patch and overlay is the image-sized window of its box."""
    field = wide_explorer.result.fields["7"]
    tab = _tab(browser)
    page = tab.page
    page.goto(wide_explorer.index.resolve().as_uri() + "#7/2")
    records = wide_explorer.result.records("7", 2)
    for i, record in enumerate(records):
        box = field.box(record.y, record.x)
        wy, wx = window(field, box)
        frame = page.locator(f".records[data-kind=top] button[data-record='{i}'] .patch-frame")
        scale = frame.bounding_box()["width"] / 16
        assert frame.bounding_box()["height"] == pytest.approx(16 * scale, abs=0.5)
        # The whole image behind the frame is shifted so that the window's corner is the frame's.
        sprite = frame.locator(".sprite").bounding_box()
        assert sprite["x"] - frame.bounding_box()["x"] == pytest.approx(-wx * scale, abs=0.5)
        assert sprite["y"] - frame.bounding_box()["y"] == pytest.approx(-wy * scale, abs=0.5)
    page.click(".records[data-kind=top] button[data-record='0']")
    box = field.box(records[0].y, records[0].x)
    wy, wx = window(field, box)
    whole = page.locator("#whole").bounding_box()
    scale = whole["width"] / 16
    rf = page.locator("#rf-box").bounding_box()
    assert rf["x"] - whole["x"] == pytest.approx(box[1] * scale, abs=0.5)
    assert rf["width"] == pytest.approx(46 * scale, abs=0.5)
    overlay = page.locator("#whole .overlay").bounding_box()
    assert overlay["x"] - whole["x"] == pytest.approx(wx * scale, abs=0.5)
    assert overlay["y"] - whole["y"] == pytest.approx(wy * scale, abs=0.5)
    assert overlay["width"] == pytest.approx(16 * scale, abs=0.5)
    # The whole image stays in view inside the panel; the box, far larger, is cut at the frame, and said so.
    frame = page.locator(".whole-frame").bounding_box()
    assert frame["width"] <= 380.5 and frame["x"] <= whole["x"] and whole["x"] + whole["width"] <= frame["x"] + frame[
        "width"] + 0.5  # fmt: skip
    assert "reaches far past the image" in page.text_content("#detail")
    assert tab.problems == []
