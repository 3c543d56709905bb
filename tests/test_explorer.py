"""The explorer's files and data, without a browser: what is written, how it is packed and escaped.

The browser tests are in tests/test_explorer_browser.py.
"""

from __future__ import annotations

import json
import re
import warnings
from importlib import resources
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from captum.attr import visualization as captum_viz
from conftest import WideExplorer
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from captum_deconvviz import NeuronZFDeconvolution, mine_topk, write_explorer
from captum_deconvviz._explorer_data import embed_json, number
from captum_deconvviz._explorer_images import (
    LOSSY_MIN_CELL,
    captum_overlays,
    normalize_attributions,
    normalize_projections,
)
from captum_deconvviz.explorer import ASSETS
from captum_deconvviz.zoo import ZFNetCIFAR, default_sample, denormalize, load_default_model


def explorer_data(index: Path) -> dict:
    """The JSON embedded in an explorer's ``index.html``."""
    page = index.read_text(encoding="utf-8")
    found = re.search(r'<script type="application/json" id="explorer-data">(.*?)</script>', page, re.S)
    assert found is not None
    return json.loads(found.group(1))


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    sample = default_sample()
    data = torch.utils.data.Subset(sample, range(0, 1000, 25))
    data.classes = sample.classes  # type: ignore[attr-defined]
    torch.manual_seed(0)
    model = ZFNetCIFAR((8, 8, 8, 8)).eval()
    result = mine_topk(model, ["features.1", "features.4"], data, k=3, labels=True, bottom_k=2, progress=False)
    out = tmp_path_factory.mktemp("explorer")
    index = write_explorer(out, model, data, result, denormalize=denormalize, progress=False,
                           image_labels=[sample.names[i] for i in range(0, 1000, 25)])  # fmt: skip
    return index, result


def test_the_folder_holds_a_page_its_assets_and_a_few_sheets(small: tuple[Path, object]) -> None:
    index, result = small
    folder = index.parent
    assert index.name == "index.html" and all((folder / name).is_file() for name in ASSETS)
    assert result.meta["explorer"] == str(index.resolve())
    data = explorer_data(index)
    files = {p.name for p in folder.iterdir()}
    named = {data["images"]["sheets"]["files"][0]}
    for layer in data["layers"]:
        for part in ("top", "bottom"):
            for kind_files in layer[part]["files"].values():
                named.update(kind_files)
        named.update(layer["thumbs"]["files"])
    assert named <= files
    # A few packed files per layer, not a PNG per channel.
    images = [name for name in files if name.endswith((".webp", ".png"))]
    assert len(images) < 30, sorted(images)
    assert {"filters.png", "hierarchy.png"} <= files


def test_the_json_holds_the_statistics_and_records(small: tuple[Path, object]) -> None:
    index, result = small
    data = explorer_data(index)
    assert data["format"] == 1 and data["k"] == 3 and data["bottom_k"] == 2
    assert data["class_names"] == default_sample().classes
    layer = data["layers"][1]
    assert layer["name"] == "features.4" and layer["channels"] == 8
    stats = result.stats("features.4")
    assert layer["stats"]["max"] == pytest.approx(stats.maximum.tolist(), rel=1e-3)
    classes = result.class_stats("features.4")
    assert layer["classes"]["top_class"] == classes.top_class.tolist()
    assert layer["classes"]["histogram"] == classes.histogram.tolist()
    assert len(layer["agreement"]["spearman"]) == 8
    field = result.fields["features.4"]
    slots = data["images"]["index"]
    for channel in (0, 5):
        for row, record in zip(layer["top"]["records"][channel], result.records("features.4", channel), strict=True):
            assert slots[row[0]] == record.index and row[1:3] == [record.y, record.x]
            assert row[4:8] == list(field.box(record.y, record.x))
        bottom = result.records("features.4", channel, kind="bottom")
        assert [slots[r[0]] for r in layer["bottom"]["records"][channel]] == [r.index for r in bottom]


def test_cells_larger_than_the_image_are_cut_to_the_image_part_of_the_box(wide_explorer: WideExplorer) -> None:
    model, data, result = wide_explorer.model, wide_explorer.data, wide_explorer.result
    field = result.fields["7"]
    assert field.size == (46, 46)
    layer = next(entry for entry in explorer_data(wide_explorer.index)["layers"] if entry["name"] == "7")
    top = layer["top"]
    assert top["cell"] == [16, 16]  # not 46 x 46: the field beyond the image is all padding
    rows = top["per_sheet"]
    deconv = NeuronZFDeconvolution(model, model[7])
    for channel in range(5):
        sheet = np.asarray(Image.open(wide_explorer.index.parent / top["files"]["zf"][channel // rows]).convert("RGB"))
        for slot, (row, record) in enumerate(zip(top["records"][channel], result.records("7", channel), strict=True)):
            box = field.box(record.y, record.x)
            assert row[4:8] == list(box)
            wy, wx = row[8:10]
            # The cell is image-sized, inside the box, and holds all of the box inside the image.
            assert box[0] <= wy and wy + 16 <= box[2] and box[1] <= wx and wx + 16 <= box[3]
            assert wy <= max(box[0], 0) and min(box[2], 16) <= wy + 16
            assert wx <= max(box[1], 0) and min(box[3], 16) <= wx + 16
            # Its pixels: the unit's own projection over the whole image, seen through the window.
            whole = deconv.attribute(data[record.index : record.index + 1], (channel, record.y, record.x))[0]
            seen = torch.zeros(3, 16, 16)
            ys, xs = slice(max(wy, 0), min(wy + 16, 16)), slice(max(wx, 0), min(wx + 16, 16))
            seen[:, ys.start - wy : ys.stop - wy, xs.start - wx : xs.stop - wx] = whole[:, ys, xs]
            expected = (normalize_projections(seen[None])[0] * 255 + 0.5).astype(np.uint8)
            cell = sheet[(channel % rows) * 16 : (channel % rows + 1) * 16, slot * 16 : (slot + 1) * 16]
            assert np.abs(cell.astype(int) - expected.astype(int)).max() <= 1, (channel, slot)


def test_embedded_json_cannot_close_its_script() -> None:
    payload = {"name": "</script><script>alert(1)</script>", "x": "<!-- \u2028 &amp;"}
    text = embed_json(payload)
    assert "<" not in text and ">" not in text and "&" not in text and "\u2028" not in text
    assert json.loads(text) == payload


def test_nan_statistics_become_null() -> None:
    assert json.loads(embed_json({"v": number(float("nan")), "w": number(1.23456789)})) == {"v": None, "w": 1.235}


def _captum_cell(attr: np.ndarray, original: np.ndarray, method: str) -> np.ndarray:
    """One cell drawn alone by ``visualize_image_attr`` (outlier_perc=2), one figure pixel per array pixel."""
    h, w = attr.shape
    fig = Figure(figsize=(w / 100, h / 100), dpi=100)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    with warnings.catch_warnings(), matplotlib.rc_context({"image.interpolation": "nearest"}):
        warnings.simplefilter("ignore")
        captum_viz.visualize_image_attr(attr[..., None], original, method=method, sign="absolute_value",
                                        outlier_perc=2, plt_fig_axis=(fig, ax), use_pyplot=False)  # fmt: skip
    ax.set_axis_off()
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].astype(float)


def test_overlays_drawn_per_sheet_equal_captum_per_cell() -> None:
    generator = torch.Generator().manual_seed(0)
    maps = torch.randn(2, 3, 3, 11, 13, generator=generator)  # [rows, cols, C, h, w]
    maps[1, 2] = 0  # an empty cell (a missing record) is grey
    originals = torch.rand(2, 3, 11, 13, 3, generator=generator).numpy()
    normalized = normalize_attributions(maps.flatten(0, 1)).reshape(2, 3, 11, 13)
    drawn = captum_overlays(normalized, originals)
    for key, method in (("heat_map", "heat_map"), ("blended", "blended_heat_map"), ("masked", "masked_image")):
        for r, c in ((0, 0), (0, 2), (1, 1)):
            alone = _captum_cell(maps[r, c].sum(0).numpy(), originals[r, c], method)
            # within 2 of 255: Captum casts the image to integers before drawing
            assert np.abs(drawn[key][r, c] * 255 - alone).max() <= 2.5, (key, r, c)
        assert np.all(drawn[key][1, 2] == 0.5)


def test_the_package_ships_the_page_files() -> None:
    folder = resources.files("captum_deconvviz").joinpath("explorer_assets")
    for name in ("index.html", *ASSETS):
        assert folder.joinpath(name).is_file(), name
    template = folder.joinpath("index.html").read_text(encoding="utf-8")
    assert "Content-Security-Policy" in template and "script-src 'self'" in template
    script = folder.joinpath("explorer.js").read_text(encoding="utf-8")
    assert "innerHTML" not in script and "eval(" not in script and "http" not in script


def test_progress_counts_channels(
    wide_explorer: WideExplorer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A deep layer takes minutes: the bar moves with each group of channels, not each layer."""
    result = wide_explorer.result
    mined = mine_topk(wide_explorer.model, ["6", "7"], wide_explorer.data, k=2, bottom_k=2, progress=False)
    write_explorer(tmp_path / "x", wide_explorer.model, wide_explorer.data, mined, guided=False, progress=True)
    total = 2 * (result.channels("6") + result.channels("7"))  # top and bottom records of each channel
    assert f"{total}/{total} [" in capsys.readouterr().err


def test_small_steps_give_the_same_explorer(
    wide_explorer: WideExplorer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Crops computed one channel at a time (a tiny memory budget) make the same sheets as one call per layer."""
    import captum_deconvviz._layer_crops as layer_crops

    monkeypatch.setattr(layer_crops, "CHUNK_BYTES", 1)
    index = write_explorer(tmp_path / "steps", wide_explorer.model, wide_explorer.data, wide_explorer.result,
                           progress=False)  # fmt: skip
    reference = explorer_data(wide_explorer.index)
    data = explorer_data(index)
    assert data["layers"] == reference["layers"]
    for layer in data["layers"]:
        for name in layer["top"]["files"]["zf"] + layer["thumbs"]["files"]:
            assert (index.parent / name).read_bytes() == (wide_explorer.index.parent / name).read_bytes(), name


def _webp_kind(path: Path) -> str:
    """``"lossless"`` or ``"lossy"``, from the WebP file's first chunk (VP8L is lossless, VP8 lossy)."""
    head = path.read_bytes()[:16]
    assert head[:4] == b"RIFF" and head[8:12] == b"WEBP", path.name
    return {b"VP8L": "lossless", b"VP8 ": "lossy"}[head[12:16]]


def _sheets(data: dict) -> dict[str, list[tuple[str, int]]]:
    """Sheet files with their cells' smaller side, by role: what is lossless by default (whole images,
    from which patches are cut; top-k DeconvNet projections; their thumbnails), and the rest."""
    images = data["images"]["sheets"]
    measured = [(name, min(images["cell"])) for name in images["files"]]
    rest = []
    for layer in data["layers"]:
        side = min(layer["top"]["cell"])
        measured += [(name, side) for name in layer["top"]["files"]["zf"]]
        measured += [(name, min(layer["thumbs"]["cell"])) for name in layer["thumbs"]["files"]]
        others = layer["top"]["files"]["gbp"] + layer["bottom"]["files"]["zf"]
        others += [name for overlay in ("heat_map", "blended", "masked") for name in layer["top"]["files"][overlay]]
        rest += [(name, side) for name in others]
    return {"measured": measured, "rest": rest}


@pytest.mark.skipif(not Image.registered_extensions().get(".webp"), reason="Pillow was built without WebP")
def test_lossy_sheets_are_smaller_and_show_the_same_cells(tmp_path: Path) -> None:
    sample = default_sample()
    data = torch.utils.data.Subset(sample, range(0, 1000, 25))
    model = load_default_model().eval()  # trained: projections with structure, as users share them
    result = mine_topk(model, ["features.1", "features.9"], data, k=3, bottom_k=1, progress=False)
    folders = {}
    for lossless in (True, False):
        index = write_explorer(tmp_path / str(lossless), model, data, result, denormalize=denormalize,
                               progress=False, lossless=lossless)  # fmt: skip
        folders[lossless] = (index.parent, explorer_data(index))
    (exact, default), (small, lossy) = folders[True], folders[False]
    assert lossy["layers"] == default["layers"]  # the same records, cells and sheet names
    names = _sheets(default)
    assert names == _sheets(lossy)
    assert {_webp_kind(exact / name) for name, _ in names["measured"]} == {"lossless"}
    assert {_webp_kind(exact / name) for name, _ in names["rest"]} == {"lossy"}
    assert {_webp_kind(small / name) for name, _ in names["rest"]} == {"lossy"}
    large = [name for name, side in names["measured"] if side >= LOSSY_MIN_CELL]
    tiny = [name for name, side in names["measured"] if side < LOSSY_MIN_CELL]
    assert large and tiny  # conv1's 5-px cells and the deeper layers' 15-32 px ones
    assert {_webp_kind(small / name) for name in large} == {"lossy"}
    assert {_webp_kind(small / name) for name in tiny} == {"lossless"}
    for name in tiny:
        assert (small / name).read_bytes() == (exact / name).read_bytes(), name
    sizes = [sum((folder / name).stat().st_size for name in large) for folder in (exact, small)]
    assert sizes[1] < sizes[0] / 2, sizes
    for name in large:  # the same pictures: quality 90 stays within a few grey levels on average
        truth = np.asarray(Image.open(exact / name).convert("RGB"), dtype=float)
        approx = np.asarray(Image.open(small / name).convert("RGB"), dtype=float)
        assert truth.shape == approx.shape and np.abs(truth - approx).mean() < 8, name


def test_lossless_must_be_a_bool(small: tuple[Path, object], tmp_path: Path) -> None:
    _, result = small
    sample = default_sample()
    data = torch.utils.data.Subset(sample, range(0, 1000, 25))
    torch.manual_seed(0)
    model = ZFNetCIFAR((8, 8, 8, 8)).eval()  # the fixture's model: same seed, same weights
    with pytest.raises(TypeError, match="lossless must be True or False"):
        write_explorer(tmp_path / "x", model, data, result, lossless="no")  # type: ignore[arg-type]
    assert not (tmp_path / "x").exists()
