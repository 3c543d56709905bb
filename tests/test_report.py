"""The HTML report: content, escaping, and a real headless browser."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import WideExplorer
from PIL import Image
from torch import Tensor, nn

from captum_deconvviz import mine_topk
from captum_deconvviz._figures import display_image
from captum_deconvviz.data import ImageFiles
from captum_deconvviz.report import write_report
from captum_deconvviz.zoo import ZFNetCIFAR, default_sample, default_transform, denormalize

EVIL = "<script>alert(1)<\\script>"  # a file name cannot hold "/", so no closing tag


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.images: list[str] = []
        self.scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag == "img":
            self.images.append(dict(attrs)["src"] or "")
        if tag == "script":
            self.scripts += 1


class Evil(nn.Module):
    """A model whose layer has a name full of markup."""

    def __init__(self) -> None:
        super().__init__()
        self.body = ZFNetCIFAR((8, 8, 8, 8))
        self.add_module('x"><img src=x onerror=alert(2)>', nn.ReLU())

    def forward(self, x: Tensor) -> Tensor:
        return getattr(self, 'x"><img src=x onerror=alert(2)>')(self.body.features[:3](x))


@pytest.fixture(scope="module")
def evil_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    sample = default_sample(transform=lambda image: image)
    for i in range(12):
        folder = root / ("<b>birds<\\b>" if i % 2 else "plain")
        folder.mkdir(exist_ok=True)
        name = f"{EVIL}{i}.png" if i % 3 == 0 else f"img{i}.png"
        sample[i * 80][0].save(folder / name)
    (root / "plain" / "broken.png").write_bytes(b"not an image")
    data = ImageFiles(root, transform=default_transform())
    assert len(data) == 12 and data.skipped == ["plain/broken.png"]
    torch.manual_seed(0)
    model = Evil().eval()
    layer = 'x"><img src=x onerror=alert(2)>'
    result = mine_topk(model, [layer, "body.features.1"], data, k=4, progress=False)
    out = tmp_path_factory.mktemp("report")
    write_report(out, model, data, result, denormalize=denormalize, image_labels=data.names,
                 command=["deconvviz", "report", "--data", EVIL], title=f"report {EVIL}", progress=False)  # fmt: skip
    return out


def test_report_contents(evil_report: Path) -> None:
    page = (evil_report / "index.html").read_text()
    parser = _Collect()
    parser.feed(page)
    for src in parser.images:
        assert (evil_report / src).is_file(), src
        assert re.fullmatch(r"[A-Za-z0-9._-]+\.png", src), src
    assert "filters.png" in parser.images and "hierarchy.png" in parser.images
    assert sum(src.startswith("body.features.1_c") for src in parser.images) == 8  # every channel
    for section in ("First-layer filters", "Receptive fields", "Hierarchy", "channel statistics", "dead"):
        assert section in page
    assert "torch " in page and "captum " in page and "deconvviz report --data" in page


def test_no_markup_gets_in(evil_report: Path) -> None:
    page = (evil_report / "index.html").read_text()
    parser = _Collect()
    parser.feed(page)
    assert parser.scripts == 1  # only the report's own load check
    assert EVIL not in page and "onerror=alert" not in page.replace("onerror=alert(2)&gt;", "")
    assert "<script>alert" not in page
    assert "&lt;script&gt;alert(1)&lt;\\script&gt;" in page  # the file names are shown, escaped
    assert "birds" not in page or "&lt;b&gt;birds&lt;\\b&gt;" in page  # shown only if in a top-3 caption
    assert "<b>birds" not in page
    assert not any("onerror" in tag for tag in parser.tags)


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--allow-file-access-from-files",
]  # fmt: skip


@pytest.mark.skipif(_chromium() is None, reason="Chromium is not installed here; .ci/run installs Debian's chromium")
def test_report_renders_in_a_real_browser(evil_report: Path, tmp_path: Path) -> None:
    browser = _chromium()
    url = (evil_report / "index.html").resolve().as_uri()
    with tempfile.TemporaryDirectory() as profile:
        flags = [browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=10000"]
        dom = subprocess.run(
            [*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=True
        ).stdout
        shot = tmp_path / "shot.png"
        subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1200,1600", url],
                       capture_output=True, timeout=120, check=True)  # fmt: skip
    loaded = int(re.search(r'data-images-loaded="(\d+)"', dom).group(1))
    broken = int(re.search(r'data-images-broken="(\d+)"', dom).group(1))
    assert broken == 0 and loaded == dom.count("<img")
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.std() > 10, "the screenshot is blank"
    assert (pixels < 128).mean() > 0.01, "nothing dark (text, figures) was drawn"


def test_report_projects_each_record_once_and_diagnoses_from_the_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import captum_deconvviz.projection as projection_module
    from captum_deconvviz.diagnose import diagnose

    sample = default_sample()
    images = torch.stack([sample[i * 25][0] for i in range(40)])
    torch.manual_seed(0)
    model = ZFNetCIFAR((8, 8, 8, 8)).eval()
    layers = ["features.1", "features.9"]
    result = mine_topk(model, layers, images, k=3, progress=False)
    projected: list[int] = []
    original = projection_module.project_records

    def counting(*args: object, **kwargs: object) -> Tensor:
        projected.append(len(args[3]))  # the records of this call
        return original(*args, **kwargs)

    monkeypatch.setattr(projection_module, "project_records", counting)
    diagnosis = diagnose(model, images, result=result)
    write_report(tmp_path, model, images, result, diagnosis=diagnosis, progress=False)
    # The hierarchy figure and the per-channel gallery share the cached projections.
    assert sum(projected) == sum(len(result.records(lay, c)) for lay in layers for c in range(result.channels(lay)))
    page = (tmp_path / "index.html").read_text()
    assert "Dead filters over the 40 mined images, from the mining statistics" in page


def test_gallery_cells_of_fields_larger_than_the_image_are_the_image(
    tmp_path: Path, wide_explorer: WideExplorer
) -> None:
    """Layer 7 sees 46 px of 16-px images: its cells are 16 px, and each patch cell is its whole image."""
    model, data, result = wide_explorer.model, wide_explorer.data, wide_explorer.result
    write_report(tmp_path, model, data, result, progress=False, scale=1)
    for channel in range(result.channels("7")):
        mosaic = np.asarray(Image.open(tmp_path / f"7_c{channel:04d}.png").convert("RGB"))
        assert mosaic.shape[0] == 2 * 17 - 1  # k=4: 2 x 2 cells of 16 px with 1-px gaps, not of 46 px
        patches = mosaic[:, -33:]  # the last panel: the records' patches
        for slot, record in enumerate(result.records("7", channel)):
            r, c = divmod(slot, 2)
            cell = patches[r * 17 : r * 17 + 16, c * 17 : c * 17 + 16].astype(int)
            # The window of a 46-px box over a 16-px image is the image.
            expected = (display_image(data[record.index], None) * 255).astype(int)
            assert np.abs(cell - expected).max() <= 1, (channel, slot)


def test_hierarchy_cells_of_a_field_larger_than_the_image_are_the_image(wide_explorer: WideExplorer) -> None:
    """A 46-px field on 16-px images: each tile is the record's 16-px window (here the whole image and
    its whole projection), not the image small inside a field-sized grey crop."""
    from captum_deconvviz import project_units
    from captum_deconvviz.viz import hierarchy_channels, normalize_projection, plot_hierarchy

    model, data, result = wide_explorer.model, wide_explorer.data, wide_explorer.result
    assert result.fields["7"].size == (46, 46)
    shown = hierarchy_channels(result, ["7"], 2)
    projections = {"7": result.projections(model, data, "7", shown["7"])}
    _, axes = plot_hierarchy(result, data, projections, layers=["7"], channels_per_layer=2, use_pyplot=False)
    for row, channel in enumerate(shown["7"]):
        cell = np.asarray(axes[row, 0].images[0].get_array())
        assert cell.shape == (2 * 33 + 1, 33, 3)  # 2x2 tiles of 16 px with 1-px gaps, projections above patches
        for slot, record in enumerate(result.records("7", channel)):
            r, c = divmod(slot, 2)
            at = (slice(r * 17, r * 17 + 16), slice(c * 17, c * 17 + 16))
            image = data[record.index]
            stretched = ((image - image.min()) / (image.max() - image.min())).permute(1, 2, 0).numpy()
            patch = cell[34:][at]
            np.testing.assert_allclose(patch, stretched, rtol=1e-6, atol=1e-6)
            unit = torch.tensor([[channel, record.y, record.x]])
            whole = project_units(model, "7", image[None], unit)[0]
            np.testing.assert_allclose(cell[at], normalize_projection(whole, 0.5), rtol=1e-5, atol=1e-6)
