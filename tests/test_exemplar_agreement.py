"""DeconvNet beside Guided Backprop for the same records: projections, agreement numbers, the figure.

Oracles: Captum's ``NeuronGuidedBackprop`` and ``NeuronDeconvolution`` (right on a plain
``nn.ReLU`` network: a copy of the model with its ReLUs made not in-place), cropped with
``ReceptiveField.crop``; a rank correlation and an SSIM written out here by hand.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import matplotlib

matplotlib.use("Agg")
import numpy as np
import pytest
import torch
from captum.attr import NeuronDeconvolution, NeuronGuidedBackprop
from conftest import assert_rel_close
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor, nn

from captum_deconvviz import Crops, ExemplarAgreement, MiningResult, exemplar_agreement, mine_topk, plot_topk
from captum_deconvviz.compare import agreement
from captum_deconvviz.viz import normalize_projection
from captum_deconvviz.zoo import ZFNetCIFAR, default_sample

LAYERS = ["features.1", "features.4", "features.9"]
CHANNELS = [0, 1, 5]


@pytest.fixture(scope="module")
def setup() -> tuple[nn.Module, Tensor, MiningResult]:
    torch.manual_seed(0)
    model = ZFNetCIFAR((12, 16, 16, 16)).eval()
    sample = default_sample()
    images = torch.stack([sample[i * 16][0] for i in range(60)])
    result = mine_topk(model, LAYERS, images, k=9, progress=False)
    return model, images, result


@pytest.fixture(scope="module")
def agreements(setup) -> dict[str, ExemplarAgreement]:
    model, images, result = setup
    return {layer: exemplar_agreement(result, model, images, layer, CHANNELS) for layer in LAYERS}


def _plain_relu_copy(model: nn.Module) -> nn.Module:
    """The model with every ReLU a plain, not in-place ``nn.ReLU``: the network Captum's hooks handle right."""
    plain = copy.deepcopy(model)
    for module in plain.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = False
    return plain


# ---- the projections ------------------------------------------------------------------------


@pytest.mark.parametrize("layer", ["features.4", "features.9"])
def test_both_columns_equal_captum_on_a_plain_relu_network(setup, agreements, layer: str, quiet_captum) -> None:
    model, images, result = setup
    plain = _plain_relu_copy(model)
    module = dict(plain.named_modules())[layer]
    field = result.fields[layer]
    found = agreements[layer]
    compared = 0
    for b, channel in enumerate(CHANNELS):
        for slot, record in enumerate(result.records(layer, channel)):
            if record.value == 0:  # seeded with 0: nothing reaches the pixels
                assert not found.guided.images[b, slot].any() and not found.deconv.images[b, slot].any()
                continue
            x = images[record.index][None]
            unit = (channel, record.y, record.x)
            for crops, method in ((found.guided, NeuronGuidedBackprop), (found.deconv, NeuronDeconvolution)):
                full = method(plain, module).attribute(x, unit)[0] * record.value  # seeded with the activation
                expected = field.crop(full, record.y, record.x, fill=0.0)
                assert_rel_close(crops.images[b, slot], expected)
            assert torch.equal(found.guided.mask[b, slot], field.valid_mask(record.y, record.x))
            compared += 1
    assert compared >= 20
    # The two columns differ at these depths (so neither check above could pass for the other column).
    difference = (found.guided.images - found.deconv.images).abs().amax()
    assert difference > 0.05 * found.deconv.images.abs().amax()


def test_at_the_first_relu_guided_backprop_is_the_deconvnet(agreements) -> None:
    # The seeded unit's own ReLU input is positive, and no other ReLU lies below it.
    found = agreements["features.1"]
    assert torch.equal(found.guided.images, found.deconv.images)
    assert torch.allclose(found.mean("spearman"), torch.ones(len(CHANNELS), dtype=torch.float64))


# ---- the numbers ----------------------------------------------------------------------------


def _average_ranks(values: list[float]) -> list[float]:
    """0-based ranks, ties sharing the mean of their positions, by sorting and walking the ties."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for position in range(start, end + 1):
            ranks[order[position]] = (start + end) / 2
        start = end + 1
    return ranks


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = _average_ranks(a.ravel().tolist()), _average_ranks(b.ravel().tolist())
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    covariance = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    spread = math.sqrt(sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb))
    return covariance / spread if spread > 0 else math.nan


def _ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Wang et al. (2004): maps min-max scaled to [0, 1], Gaussian window (11, sigma 1.5, shrunk to fit, odd)."""

    def scaled(x: np.ndarray) -> np.ndarray:
        return (x - x.min()) / (x.max() - x.min()) if x.max() > x.min() else x - x.min()

    a, b = scaled(a), scaled(b)
    size = min(11, *a.shape)
    size = size if size % 2 else size - 1
    offsets = np.arange(size) - (size - 1) / 2
    weights = np.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2 * 1.5**2))
    weights /= weights.sum()
    c1, c2 = 0.01**2, 0.03**2
    values = []
    for i in range(a.shape[0] - size + 1):
        for j in range(a.shape[1] - size + 1):
            wa, wb = a[i : i + size, j : j + size], b[i : i + size, j : j + size]
            mu_a, mu_b = (weights * wa).sum(), (weights * wb).sum()
            var_a = (weights * (wa - mu_a) ** 2).sum()
            var_b = (weights * (wb - mu_b) ** 2).sum()
            cov = (weights * (wa - mu_a) * (wb - mu_b)).sum()
            values.append(((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)))
    return float(np.mean(values))


def _oracle(deconv: Tensor, guided: Tensor, mask: Tensor, masked: bool = True) -> dict[str, float]:
    """The documented reduction: the image's pixels only, colour summed (signed, and of |.|)."""
    if not mask.any() or not deconv[:, mask].any() or not guided[:, mask].any():
        return {"spearman": math.nan, "spearman_abs": math.nan, "ssim": math.nan}
    rows = [i for i in range(mask.shape[0]) if mask[i].any()]
    cols = [j for j in range(mask.shape[1]) if mask[:, j].any()]
    if masked:
        deconv = deconv[:, rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        guided = guided[:, rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    d, g = deconv.double().numpy(), guided.double().numpy()
    return {
        "spearman": _spearman(d.sum(0), g.sum(0)),
        "spearman_abs": _spearman(np.abs(d).sum(0), np.abs(g).sum(0)),
        "ssim": _ssim(np.abs(d).sum(0), np.abs(g).sum(0)),
    }


@pytest.mark.parametrize("layer", ["features.4", "features.9"])
def test_numbers_equal_a_brute_force_rank_correlation_and_ssim(setup, agreements, layer: str) -> None:
    _, _, result = setup
    found = agreements[layer]
    assert found.spearman.shape == found.ssim.shape == (len(CHANNELS), result.k)
    cut_off = 0
    for b in range(len(CHANNELS)):
        expected = {metric: [] for metric in ("spearman", "spearman_abs", "ssim")}
        for slot in range(result.k):
            deconv, guided = found.deconv.images[b, slot], found.guided.images[b, slot]
            mask = found.deconv.mask[b, slot]
            values = _oracle(deconv, guided, mask)
            for metric, value in values.items():
                actual = float(getattr(found, metric)[b, slot])
                if math.isnan(value):
                    assert math.isnan(actual), (metric, b, slot)
                else:
                    assert actual == pytest.approx(value, rel=1e-5, abs=1e-9), (metric, b, slot)
                expected[metric].append(value)
            if mask.any() and not mask.all() and not math.isnan(values["ssim"]):
                # The padding outside the image would change the numbers: leaving it out is a choice that shows.
                padded = _oracle(deconv, guided, mask, masked=False)
                cut_off += padded["ssim"] != pytest.approx(values["ssim"], rel=1e-3)
        for metric, column in expected.items():
            finite = [v for v in column if not math.isnan(v)]
            mean = sum(finite) / len(finite) if finite else math.nan
            assert float(found.mean(metric)[b]) == pytest.approx(mean, rel=1e-5, nan_ok=True), metric
    if layer == "features.9":  # a 35x35 field on 32x32 images: every record is cut by a border
        assert cut_off > 0
    values = torch.stack([found.spearman, found.spearman_abs, found.ssim])
    assert values.isfinite().any() and (values[values.isfinite()] < 0.999).any()  # not trivially 1


def test_missing_and_dead_records_have_no_number(setup, agreements) -> None:
    _, _, result = setup
    found = agreements["features.9"]
    for b, channel in enumerate(CHANNELS):
        records = result.records("features.9", channel)
        alive = [slot for slot, record in enumerate(records) if record.value > 0]
        has_value = (~found.ssim[b].isnan()).nonzero().flatten().tolist()
        assert has_value == alive, channel
        assert int(found.records()[b]) == len(alive)
    table = found.table()
    assert table.splitlines()[0] == "| channel | records | Spearman | Spearman abs | SSIM abs |"
    assert len(table.splitlines()) == 2 + len(CHANNELS)
    assert f"{float(found.mean('ssim')[0]):.3f}" in table.splitlines()[2]


def test_the_reduction_is_compare_agreement_on_the_image_pixels() -> None:
    from captum_deconvviz._exemplar_agreement import crop_agreement  # the tensor-level helper viz uses

    generator = torch.Generator().manual_seed(3)
    inside_a, inside_b = torch.randn(4, 3, 6, 9, generator=generator), torch.randn(4, 3, 6, 9, generator=generator)
    inside_b[0] = inside_a[0] * 2 + 0.1 * inside_b[0]  # one pair nearly alike
    padded_a, padded_b = torch.zeros(4, 3, 11, 11), torch.zeros(4, 3, 11, 11)
    mask = torch.zeros(4, 11, 11, dtype=torch.bool)
    for n, (top, left) in enumerate([(0, 0), (5, 2), (2, 1), (3, 0)]):
        padded_a[n, :, top : top + 6, left : left + 9] = inside_a[n]
        padded_b[n, :, top : top + 6, left : left + 9] = inside_b[n]
        mask[n, top : top + 6, left : left + 9] = True
    values = crop_agreement(padded_a, padded_b, mask)
    direct = agreement(inside_a, inside_b)
    for metric in ("spearman", "spearman_abs", "ssim"):
        torch.testing.assert_close(values[metric], direct[metric].double(), rtol=1e-12, atol=1e-12)
    assert float(values["spearman"][0]) > 0.9
    with pytest.raises(ValueError, match="rectangle"):
        holed = mask.clone()
        holed[1, 6, 3] = False
        crop_agreement(padded_a, padded_b, holed)


# ---- misuse ----------------------------------------------------------------------------------


def _other_model() -> nn.Module:
    torch.manual_seed(1)
    return ZFNetCIFAR((12, 16, 16, 16)).eval()


MISUSE: list[tuple[str, dict[str, Any], type[Exception], str]] = [
    ("result-dict", {"result": {}}, TypeError, "result"),
    ("layer-not-mined", {"layer": "features.7"}, ValueError, "layer"),
    ("layer-module", {"layer": nn.ReLU()}, TypeError, "layer"),
    ("channel-out-of-range", {"channels": 16}, ValueError, "channels"),
    ("channel-negative", {"channels": -1}, ValueError, "channels"),
    ("channel-bool", {"channels": True}, TypeError, "channels"),
    ("channel-bool-in-list", {"channels": [0, True]}, TypeError, "channels[1]"),
    ("channel-float", {"channels": 1.5}, TypeError, "channels"),
    ("channel-string", {"channels": "0"}, TypeError, "channels"),
    ("channels-empty", {"channels": []}, ValueError, "channels"),
    ("seed-typo", {"seed": "ones"}, ValueError, "seed"),
    ("model-other-weights", {"model": "other"}, ValueError, "model"),
    ("model-not-a-module", {"model": "features"}, TypeError, "model"),
    ("data-shorter", {"data": "shorter"}, ValueError, "data"),
    ("data-other-images", {"data": "flipped"}, ValueError, "data"),
]


@pytest.mark.parametrize(("what", "change", "error", "name"), MISUSE, ids=[m[0] for m in MISUSE])
def test_misuse_is_refused_naming_the_argument(
    setup, what: str, change: dict[str, Any], error: type, name: str
) -> None:
    model, images, result = setup
    args: dict[str, Any] = {"result": result, "model": model, "data": images, "layer": "features.4", "channels": 0}
    args |= change
    if change.get("model") == "other":
        args["model"] = _other_model()
    if change.get("data") == "shorter":
        args["data"] = images[:50]
    if change.get("data") == "flipped":
        args["data"] = images.flip(-1)
    with pytest.raises(error) as caught:
        exemplar_agreement(**args)
    message = str(caught.value)
    assert name in message, f"{what}: the message does not name {name!r}: {message}"
    assert "\n" not in message.strip(), message


# ---- the figure --------------------------------------------------------------------------------


def _canvas(fig: Figure) -> np.ndarray:
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].astype(int)


def _cell_pixels(pixels: np.ndarray, ax: Any, size: tuple[int, int]) -> np.ndarray:
    """The canvas colour at the centre of each data pixel of the image drawn in ``ax`` ``[h, w, 3]``."""
    height = pixels.shape[0]
    out = np.empty((*size, 3), dtype=int)
    for i in range(size[0]):
        for j in range(size[1]):
            x, y = ax.transData.transform((j, i))
            out[i, j] = pixels[int(height - y), int(x)]
    return out


def test_plot_topk_guided_draws_a_third_column_of_guided_backprop_cells(setup, agreements) -> None:
    _model, images, result = setup
    found = agreements["features.4"]
    channels = list(CHANNELS[:2])
    deconv = Crops(found.deconv.images[:2], found.deconv.mask[:2])
    guided = Crops(found.guided.images[:2], found.guided.mask[:2])
    fig, axes = plot_topk(result, images, "features.4", channels, projections=deconv, guided=True,
                          guided_projections=guided, cell_inches=1.5, use_pyplot=False)  # fmt: skip
    assert axes.shape == (2, 3, 3, 3)
    pixels = _canvas(fig)
    size = tuple(result.fields["features.4"].size)
    differing = 0
    for b in range(2):
        for slot in range(result.k):
            r, c = divmod(slot, 3)
            guided_ax, deconv_ax, patch_ax = axes[b, 2, r, c], axes[b, 0, r, c], axes[b, 1, r, c]
            # Left to right in each record's triple: patch, DeconvNet, Guided Backprop.
            assert patch_ax.get_position().x1 < deconv_ax.get_position().x0 < guided_ax.get_position().x0
            if not guided.images[b, slot].any():
                continue
            expected = np.clip((normalize_projection(guided.images[b, slot], 2) * 255).astype(int), 0, 255)
            np.testing.assert_array_equal(np.asarray(guided_ax.images[0].get_array()), expected)
            drawn = _cell_pixels(pixels, guided_ax, size)  # what the canvas shows, pixel for pixel
            assert np.abs(drawn - expected).max() <= 1
            deconv_drawn = _cell_pixels(pixels, deconv_ax, size)
            deconv_expected = np.clip((normalize_projection(deconv.images[b, slot], 2) * 255).astype(int), 0, 255)
            assert np.abs(deconv_drawn - deconv_expected).max() <= 1
            differing += bool(np.abs(drawn - deconv_drawn).max() > 10)
    assert differing >= 5  # the guided column is not the DeconvNet column again
    titles = [text.get_text() for ax in fig.axes for text in ax.texts]
    for b, channel in enumerate(channels):
        title = next(t for t in titles if t.startswith(f"#{channel},"))  # the layer is named once, above
        numbers = (float(found.mean(m)[b]) for m in ("spearman", "spearman_abs", "ssim"))
        assert title.endswith("Spearman {:.2f} (abs {:.2f}), SSIM {:.2f}".format(*numbers)), title


def test_plot_topk_default_has_no_guided_column(setup, agreements) -> None:
    _, images, result = setup
    found = agreements["features.4"]
    _, axes = plot_topk(result, images, "features.4", CHANNELS, projections=found.deconv, use_pyplot=False)
    assert axes.shape == (len(CHANNELS), 2, 3, 3)


FIGURE_MISUSE: list[tuple[str, dict[str, Any], type[Exception], str]] = [
    ("guided-without-projections", {"guided": True}, ValueError, "guided_projections"),
    ("projections-without-guided", {"guided_projections": "guided"}, ValueError, "guided=False"),
    ("guided-string", {"guided": "yes", "guided_projections": "guided"}, TypeError, "guided"),
    ("guided-int", {"guided": 1}, TypeError, "guided"),
    ("guided-wrong-shape", {"guided": True, "guided_projections": torch.zeros(3, 9, 3, 5, 5)}, ValueError,
     "guided_projections"),
    ("guided-nan", {"guided": True, "guided_projections": "nan"}, ValueError, "guided_projections"),
    ("guided-list", {"guided": True, "guided_projections": [[0.0]]}, TypeError, "guided_projections"),
]  # fmt: skip


@pytest.mark.parametrize(("what", "change", "error", "name"), FIGURE_MISUSE, ids=[m[0] for m in FIGURE_MISUSE])
def test_plot_topk_guided_misuse(setup, agreements, what: str, change: dict[str, Any], error: type, name: str) -> None:
    _, images, result = setup
    found = agreements["features.4"]
    args: dict[str, Any] = {"result": result, "data": images, "layer": "features.4", "channels": CHANNELS,
                            "projections": found.deconv, "use_pyplot": False} | change  # fmt: skip
    if change.get("guided_projections") == "guided":
        args["guided_projections"] = found.guided
    if change.get("guided_projections") == "nan":
        bad = found.guided.images.clone()
        bad[0, 0, 0, 0, 0] = math.nan
        args["guided_projections"] = bad
    with pytest.raises(error) as caught:
        plot_topk(**args)
    message = str(caught.value)
    assert name in message, f"{what}: the message does not name {name!r}: {message}"
    assert "\n" not in message.strip(), message
