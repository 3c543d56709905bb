"""Exemplars in context (issue 16) against brute force: class statistics, selectivity, per-class
top-k, bottom-k, quantiles and relevance, each across batch sizes, shards and a resume.

The oracles are written here: every image's activations from plain forward hooks, the
relevance from autograd with ``retain_grad``, exact class means as Python fractions, and
rankings by sorting everything.
"""

from __future__ import annotations

import copy
import math
import os
import re
import urllib.parse
from fractions import Fraction
from pathlib import Path

import pytest
import torch
from conftest import assert_rel_close
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from captum_deconvviz import MiningResult, mine_topk
from captum_deconvviz.data import find_cifar10, load_cifar10
from captum_deconvviz.exemplars import selectivity_index
from captum_deconvviz.zoo import ZFNetCIFAR, default_sample, default_transform
from captum_deconvviz.zoo.transforms import CIFAR10_MEAN, CIFAR10_STD

LAYERS = ["features.4", "features.9"]  # after conv2's ReLU; conv4's ReLU
K, BOTTOM, TOP_N = 5, 4, 30
OPTIONS = {"labels": True, "by_class": True, "bottom_k": BOTTOM, "class_top_n": TOP_N, "quantiles": True}


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return ZFNetCIFAR((16, 24, 24, 32)).eval()


@pytest.fixture(scope="module")
def sample() -> TensorDataset:
    """The shipped 1,000 CIFAR-10 test images with their labels (a label as a 0-d tensor)."""
    data = default_sample()
    images = torch.stack([data[i][0] for i in range(len(data))])
    return TensorDataset(images, torch.tensor(data.labels))


def _oracle_maps(model: nn.Module, images: Tensor, target: Tensor | None = None) -> dict[str, tuple[Tensor, Tensor]]:
    """Per layer: activations and (with a target per image) activation x gradient of the target logit."""
    kept: dict[str, Tensor] = {}

    def keep(name: str):
        def hook(_m: nn.Module, _i: object, out: Tensor) -> None:
            if target is not None:
                out.retain_grad()
            kept[name] = out

        return hook

    modules = dict(model.named_modules())
    hooks = [modules[name].register_forward_hook(keep(name)) for name in LAYERS]
    try:
        with torch.set_grad_enabled(target is not None):
            logits = model(images)
            if target is not None:
                logits.gather(1, target.view(-1, 1)).sum().backward()
    finally:
        for hook in hooks:
            hook.remove()
    model.zero_grad(set_to_none=True)
    out = {}
    for name, acts in kept.items():
        relevance = acts * acts.grad if target is not None else acts
        out[name] = (acts.detach(), relevance.detach())
    return out


def _per_image(maps: Tensor) -> tuple[Tensor, Tensor]:
    """Each image's best value per channel and its first flat position: ``[N, C]`` each."""
    flat = maps.flatten(2)
    best = flat.amax(dim=2)
    first = torch.stack([(flat[:, c] == best[:, c : c + 1]).float().argmax(dim=1) for c in range(flat.shape[1])], 1)
    return best, first


def _ranked(values: list[float], ascending: bool) -> list[int]:
    """Image indices by value (descending unless ``ascending``), ties to the lower index."""
    return sorted(range(len(values)), key=lambda i: (values[i] if ascending else -values[i], i))


@pytest.fixture(scope="module")
def oracle(model: nn.Module, sample: TensorDataset) -> dict[str, tuple[Tensor, Tensor]]:
    images = sample.tensors[0]
    parts = [_oracle_maps(model, images[i : i + 250]) for i in range(0, len(images), 250)]
    return {name: (torch.cat([p[name][0] for p in parts]), torch.cat([p[name][1] for p in parts])) for name in LAYERS}


@pytest.fixture(scope="module")
def mined(model: nn.Module, sample: TensorDataset) -> MiningResult:
    return mine_topk(model, LAYERS, sample, k=K, batch_size=64, progress=False, **OPTIONS)


def _places(records: list) -> list[tuple[int, int, int, float]]:
    return [(r.index, r.y, r.x, r.value) for r in records]


def _expected(best: Tensor, position: Tensor, order: list[int], width: int) -> list[tuple[int, int, int, float]]:
    return [(i, int(position[i]) // width, int(position[i]) % width, float(best[i])) for i in order]


def _check_class_stats(result: MiningResult, layer: str, best: Tensor, labels: list[int], top_n: int) -> None:
    stats = result.class_stats(layer)
    classes = max(labels) + 1
    assert stats.histogram.shape == (best.shape[1], classes) and stats.top_n == top_n
    for c in range(best.shape[1]):
        values = best[:, c].tolist()
        top = _ranked(values, ascending=False)[:top_n]
        histogram = [sum(1 for i in top if labels[i] == cls) for cls in range(classes)]
        assert stats.histogram[c].tolist() == histogram, (layer, c)
        means = []
        for cls in range(classes):
            members = [Fraction(values[i]) for i in range(len(values)) if labels[i] == cls]
            means.append(float(sum(members) / len(members)))
        assert stats.class_means[c].tolist() == means, (layer, c)  # exact: correctly rounded
        mu_max = max(means)
        rest = list(means)
        rest.remove(mu_max)
        mu_rest = sum(rest) / len(rest)
        if mu_max + mu_rest == 0:
            assert math.isnan(float(stats.selectivity[c]))
        else:
            assert float(stats.selectivity[c]) == pytest.approx((mu_max - mu_rest) / (mu_max + mu_rest), rel=1e-12)
        assert int(stats.top_class[c]) == means.index(mu_max)


def _check_rankings(
    result: MiningResult, layer: str, maps: Tensor, labels: list[int], channels: range, quantiles: bool = True
) -> None:
    best, position = _per_image(maps)
    width = maps.shape[3]
    for c in channels:
        values = best[:, c].tolist()
        ascending = _ranked(values, ascending=True)
        bottom = _expected(best[:, c], position[:, c], ascending[:BOTTOM], width)
        assert _places(result.records(layer, c, kind="bottom")) == bottom, (layer, c)
        for cls in (0, 7):
            members = [i for i in _ranked(values, ascending=False) if labels[i] == cls][:K]
            expected = _expected(best[:, c], position[:, c], members, width)
            assert _places(result.records(layer, c, cls=cls)) == expected, (layer, c, cls)
        for q in (0.0, 0.5, 0.9, 1.0) if quantiles else ():
            rank = math.floor(q * (len(ascending) - 1) + 0.5)
            first = min(max(rank - K // 2, 0), len(ascending) - K)
            window = sorted(ascending[first : first + K], key=lambda i: (-values[i], i))
            expected = _expected(best[:, c], position[:, c], window, width)
            assert _places(result.records(layer, c, kind="quantile", q=q)) == expected, (layer, c, q)


def test_class_statistics_equal_brute_force(mined: MiningResult, oracle, sample: TensorDataset) -> None:
    for layer in LAYERS:
        _check_class_stats(mined, layer, _per_image(oracle[layer][0])[0], sample.tensors[1].tolist(), TOP_N)
    assert mined.class_names is None  # a TensorDataset names no classes (class folders do: below)


def test_selectivity_index_by_hand() -> None:
    nan = float("nan")
    means = torch.tensor(
        [[4.0, 1.0, 1.0], [2.0, 2.0, 2.0], [0.0, 0.0, 0.0], [5.0, nan, 1.0], [3.0, nan, nan], [1.0, 3.0, 3.0]],
        dtype=torch.float64,
    )
    selectivity, top = selectivity_index(means)
    assert selectivity[0] == pytest.approx(0.6)  # (4 - 1) / (4 + 1)
    assert selectivity[1] == 0.0 and int(top[1]) == 0  # ties: the lowest class
    assert math.isnan(selectivity[2])  # a dead channel: 0 / 0
    assert selectivity[3] == pytest.approx(4 / 6)  # the class without images is left out
    assert math.isnan(selectivity[4]) and int(top[4]) == 0  # one class: undefined
    assert int(top[5]) == 1 and selectivity[5] == pytest.approx(1 / 5)


def test_bottom_by_class_and_quantiles_equal_brute_force(mined: MiningResult, oracle, sample: TensorDataset) -> None:
    for layer in LAYERS:
        maps = oracle[layer][0]
        _check_rankings(mined, layer, maps, sample.tensors[1].tolist(), range(0, maps.shape[1], 3))


def _assert_same(a: MiningResult, b: MiningResult) -> None:
    for layer in a.layers:
        for c in range(a.channels(layer)):
            for kind, cls, q in (
                ("top", None, None),
                ("bottom", None, None),
                ("top", 3, None),
                ("quantile", None, 0.7),
            ):
                assert a.records(layer, c, kind=kind, cls=cls, q=q) == b.records(layer, c, kind=kind, cls=cls, q=q)
        sa, sb = a.class_stats(layer), b.class_stats(layer)
        for name in ("histogram", "class_means", "counts", "top_class"):
            assert torch.equal(getattr(sa, name), getattr(sb, name)), (layer, name)
        assert torch.equal(sa.selectivity.nan_to_num(-9), sb.selectivity.nan_to_num(-9))


@pytest.mark.parametrize("batch_size", [8, 30, 1000])
def test_every_batch_size_gives_the_same_exemplars(model, sample, mined: MiningResult, batch_size: int) -> None:
    # The state is exact given the activations. (At batch size 1, torch's CPU convolutions take
    # another path and round activations differently, so no size here leaves a last batch of 1.)
    _assert_same(mine_topk(model, LAYERS, sample, k=K, batch_size=batch_size, progress=False, **OPTIONS), mined)


@pytest.mark.parametrize("world", [2, 3])
def test_shards_merge_into_the_same_exemplars(model, sample, mined: MiningResult, world: int) -> None:
    shards = [
        mine_topk(model, LAYERS, sample, k=K, batch_size=50, progress=False, shard=(r, world), **OPTIONS)
        for r in range(world)
    ]
    _assert_same(MiningResult.merge(shards[::-1]), mined)


class _Interrupt(Exception):
    pass


def test_resume_gives_the_same_exemplars_and_other_options_are_refused(
    model, sample, mined: MiningResult, tmp_path: Path
) -> None:
    checkpoint = tmp_path / "state.pt"
    calls = {"n": 0}

    def crash(*_: object) -> None:
        calls["n"] += 1
        if calls["n"] == 9:
            raise _Interrupt

    handle = model.features[0].register_forward_hook(crash)
    try:
        with pytest.raises(_Interrupt):
            mine_topk(model, LAYERS, sample, k=K, batch_size=64, progress=False, checkpoint=checkpoint,
                      checkpoint_every=0, **OPTIONS)  # fmt: skip
    finally:
        handle.remove()
    with pytest.raises(ValueError, match="other arguments \\(exemplars"):
        mine_topk(model, LAYERS, sample, k=K, batch_size=64, progress=False, checkpoint=checkpoint, labels=True)
    resumed = mine_topk(model, LAYERS, sample, k=K, batch_size=64, progress=False, checkpoint=checkpoint, **OPTIONS)
    _assert_same(resumed, mined)
    path = tmp_path / "result.pt"
    resumed.save(path)
    _assert_same(MiningResult.load(path), mined)


def test_relevance_ranking_and_class_units_equal_autograd(model: nn.Module, sample: TensorDataset) -> None:
    order = torch.tensor([c * 100 + i for i in range(20) for c in range(10)])  # 20 of every class
    images, labels = sample.tensors[0][order], sample.tensors[1][order]
    data = TensorDataset(images, labels)
    oracle = _oracle_maps(model, images, target=labels)
    results = [
        mine_topk(model, LAYERS, data, k=K, batch_size=b, progress=False, labels=True, bottom_k=3,
                  rank_by="relevance", target="label")
        for b in (16, 200)
    ]  # fmt: skip
    for layer in LAYERS:
        acts, relevance = oracle[layer]
        best, position = _per_image(relevance)
        width = acts.shape[3]
        for result in results:
            assert result.rank_by == "relevance"
            for c in range(acts.shape[1]):
                got = result.records(layer, c)
                order = _ranked(best[:, c].tolist(), ascending=False)[:K]
                # the same images at the same units, the values within float32 rounding of the oracle
                assert [(r.index, r.y, r.x) for r in got] == [
                    p[:3] for p in _expected(best[:, c], position[:, c], order, width)
                ]
                assert_rel_close(torch.tensor([r.value for r in got]), best[order, c])
            sums = relevance.sum(dim=(2, 3))
            for cls in (2, 5):
                members = (labels == cls).nonzero().flatten()
                means = torch.tensor([float(sum(Fraction(float(v)) for v in sums[members, c]) / len(members))
                                      for c in range(sums.shape[1])], dtype=torch.float64)  # fmt: skip
                channels, values = result.class_units(layer, cls, n=4)
                assert channels.tolist() == torch.argsort(means, descending=True, stable=True)[:4].tolist()
                assert_rel_close(values, means[channels], rel=1e-5)
        # the statistics stay activations
        stats = results[0].stats(layer)
        assert torch.equal(stats.maximum, acts.amax(dim=(0, 2, 3)))
    _assert_relevance_equal(results[0], results[1])


def _assert_relevance_equal(a: MiningResult, b: MiningResult) -> None:
    for layer in a.layers:
        for c in range(a.channels(layer)):
            assert a.records(layer, c) == b.records(layer, c)
            assert a.records(layer, c, kind="bottom") == b.records(layer, c, kind="bottom")


def test_labels_come_from_every_data_form(model: nn.Module, sample: TensorDataset) -> None:
    images, labels = sample.tensors[0][:120], sample.tensors[1][:120]
    given = mine_topk(model, LAYERS[:1], images, k=3, progress=False, labels=labels)
    from_items = mine_topk(model, LAYERS[:1], TensorDataset(images, labels), k=3, progress=False, labels=True)
    loader = DataLoader(TensorDataset(images, labels), batch_size=25)
    from_loader = mine_topk(model, LAYERS[:1], loader, k=3, progress=False, labels=True)
    for result in (from_items, from_loader):
        a, b = given.class_stats(LAYERS[0]), result.class_stats(LAYERS[0])
        assert torch.equal(a.histogram, b.histogram) and torch.equal(a.class_means, b.class_means)
    assert given.has_labels and given.bottom_k == 0 and given.class_names is None


def test_class_folders_give_their_class_names(model: nn.Module, tmp_path: Path) -> None:
    sample = default_sample(transform=lambda image: image)
    for i in range(12):
        folder = tmp_path / ("<b>cat<\\b>" if i % 3 else "dog")  # a folder name cannot hold "/"
        folder.mkdir(exist_ok=True)
        sample[i][0].save(folder / f"{i}.png")
    from captum_deconvviz.data import ImageFiles

    data = ImageFiles(tmp_path, transform=default_transform())
    result = mine_topk(model, LAYERS[:1], data, k=2, progress=False, labels=True)
    stats = result.class_stats(LAYERS[0])
    assert result.class_names == ["<b>cat<\\b>", "dog"] and stats.counts[0].tolist() == [8, 4]
    assert stats.name(0) == "<b>cat<\\b>"


def test_unlabelled_images_are_left_out_of_class_statistics(model: nn.Module, sample: TensorDataset) -> None:
    images, labels = sample.tensors[0][:60], sample.tensors[1][:60].clone()
    labels[::2] = -1
    result = mine_topk(model, LAYERS[:1], images, k=3, progress=False, labels=labels)
    stats = result.class_stats(LAYERS[0])
    assert int(stats.counts[0].sum()) == 30 and int(stats.histogram.sum(dim=1).max()) <= 30


def test_misuse_gives_clear_errors(model: nn.Module, sample: TensorDataset, mined: MiningResult) -> None:
    images = sample.tensors[0][:20]
    cases = [
        ({"labels": True}, TypeError, "labels=True reads labels from"),
        ({"labels": torch.zeros(3, dtype=torch.long)}, ValueError, "labels holds 3 labels, but data holds 20"),
        ({"labels": torch.zeros(20)}, ValueError, "labels must be an integer tensor"),
        ({"labels": torch.full((20,), -2)}, ValueError, "labels must be class indices >= 0"),
        ({"labels": "yes"}, TypeError, "labels must be None, True or a LongTensor"),
        ({"by_class": True}, ValueError, "by_class=True needs labels"),
        ({"bottom_k": True}, TypeError, "bottom_k"),
        ({"bottom_k": -1}, ValueError, "bottom_k"),
        ({"rank_by": "gradient"}, ValueError, "rank_by"),
        ({"rank_by": "relevance"}, TypeError, "target must be a class index"),
        ({"rank_by": "relevance", "target": "label"}, ValueError, "target='label' needs labels"),
        ({"rank_by": "relevance", "target": -3}, ValueError, "target must be a class index >= 0"),
        ({"target": 3}, ValueError, "target=3 is used only with rank_by='relevance'"),
        ({"rank_by": "relevance", "target": 1, "verify": True}, ValueError, "cannot check rank_by='relevance'"),
        ({"labels": torch.zeros(20, dtype=torch.long), "class_top_n": 2}, ValueError, "class_top_n"),
        ({"quantiles": 1}, TypeError, "quantiles"),
    ]
    for kwargs, error, message in cases:
        with pytest.raises(error, match=message):
            mine_topk(model, LAYERS, images, k=3, progress=False, **kwargs)
    with pytest.raises(ValueError, match="target 10 is out of range: the model has 10 outputs"):
        mine_topk(model, LAYERS, images, k=3, progress=False, rank_by="relevance", target=10)
    with pytest.raises(ValueError, match="more than max_exemplar_bytes"):
        mine_topk(model, LAYERS, sample, k=3, progress=False, labels=True, quantiles=True, max_exemplar_bytes=10_000)
    plain = mine_topk(model, LAYERS, images, k=3, progress=False)
    with pytest.raises(ValueError, match="mined without labels"):
        plain.class_stats(LAYERS[0])
    with pytest.raises(ValueError, match="was not mined with bottom_k"):
        plain.records(LAYERS[0], 0, kind="bottom")
    with pytest.raises(ValueError, match="kind must be one of"):
        mined.records(LAYERS[0], 0, kind="worst")
    with pytest.raises(ValueError, match="q must be"):
        mined.records(LAYERS[0], 0, kind="quantile", q=1.5)
    with pytest.raises(ValueError, match="needs q"):
        mined.records(LAYERS[0], 0, kind="quantile")
    with pytest.raises(ValueError, match="cls must be"):
        mined.records(LAYERS[0], 0, cls=10)
    with pytest.raises(ValueError, match="needs kind='top'"):
        mined.records(LAYERS[0], 0, kind="bottom", cls=1)
    with pytest.raises(ValueError, match="class_units needs both"):
        mined.class_units(LAYERS[0], 1)


def test_bottom_patches_and_projections_follow_their_records(model, sample, mined: MiningResult) -> None:
    layer = LAYERS[1]
    field = mined.fields[layer]
    assert field is not None
    crops = mined.patches(sample, layer, 2, kind="bottom")
    assert crops.images.shape[0] == BOTTOM
    for slot, record in enumerate(mined.records(layer, 2, kind="bottom")):
        expected = field.crop(sample[record.index][0], record.y, record.x)
        assert torch.equal(crops.images[slot], expected)
    projections = mined.projections(model, sample, layer, [0, 2], kind="top", cls=4)
    assert projections.images.shape[:2] == (2, K)


@pytest.mark.skipif(
    find_cifar10() is None, reason="needs the CIFAR-10 zips (see data.find_cifar10); the shipped sample covers the rest"
)
def test_two_thousand_cifar_images_equal_brute_force(model: nn.Module) -> None:
    images, labels, _ = load_cifar10("test", limit=2000)  # 200 of each class
    images = (images.float() / 255 - torch.tensor(CIFAR10_MEAN).view(3, 1, 1)) / torch.tensor(CIFAR10_STD).view(3, 1, 1)
    result = mine_topk(model, LAYERS, images, k=K, batch_size=100, progress=False, labels=labels, by_class=True,
                       bottom_k=BOTTOM, quantiles=True)  # fmt: skip
    for layer in LAYERS:
        maps = torch.cat([_oracle_maps(model, images[i : i + 500])[layer][0] for i in range(0, 2000, 500)])
        _check_class_stats(result, layer, _per_image(maps)[0], labels.tolist(), 100)
        _check_rankings(result, layer, maps, labels.tolist(), range(maps.shape[1]))


def test_non_finite_relevance_raises_or_is_skipped(model: nn.Module, sample: TensorDataset) -> None:
    images = sample.tensors[0][:40].clone()
    images[7, :, 3, 3] = float("nan")
    with pytest.raises(FloatingPointError, match=r"images \[7\]"):
        mine_topk(model, LAYERS, images, k=3, progress=False, rank_by="relevance", target=2)
    result = mine_topk(model, LAYERS, images, k=3, progress=False, rank_by="relevance", target=2, nan="skip")
    assert all(r.index != 7 for c in range(result.channels(LAYERS[1])) for r in result.records(LAYERS[1], c))


def test_relevance_mining_leaves_a_train_mode_model_as_it_was(snapshot, sample: TensorDataset) -> None:
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True), nn.Dropout(0.5),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10),
    )  # fmt: skip
    model.train()
    model[4].weight.requires_grad_(False)  # a frozen layer: relevance still flows through it
    before = snapshot(model)
    images, labels = sample.tensors[0][:48], sample.tensors[1][:48]
    result = mine_topk(model, ["1", "5"], images, k=3, progress=False, labels=labels, rank_by="relevance",
                       target="predicted", bottom_k=2, by_class=True)  # fmt: skip
    before.assert_unchanged(model)
    # The oracle: an eval-mode copy whose ReLUs are not in place (so the BatchNorm output that
    # the in-place ReLU overwrites in the model stays whole), autograd with retain_grad.
    reference = copy.deepcopy(model).eval()
    for module in reference.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = False
    with torch.no_grad():
        predicted = reference(images).argmax(dim=1)
    kept: dict[str, Tensor] = {}

    def keep(name: str):
        def hook(_m: nn.Module, _i: object, out: Tensor) -> None:
            out.retain_grad()
            kept[name] = out

        return hook

    hooks = [reference[int(n)].register_forward_hook(keep(n)) for n in ("1", "5")]
    reference(images).gather(1, predicted.view(-1, 1)).sum().backward()
    for hook in hooks:
        hook.remove()
    oracle = {name: (acts * acts.grad).detach().flatten(2).amax(dim=2) for name, acts in kept.items()}
    # The statistics are of the layer's own output (BatchNorm's, before the in-place ReLU).
    assert_rel_close(result.stats("1").mean, kept["1"].detach().double().mean(dim=(0, 2, 3)).float())
    for name in ("1", "5"):
        for c in range(8):
            top = result.records(name, c)
            expected = _ranked(oracle[name][:, c].tolist(), ascending=False)[:3]
            assert [r.index for r in top] == expected
    with pytest.raises(ValueError, match="verify checks activations"):
        result.verify(model, images)


def test_labels_true_on_items_without_labels_is_refused_before_any_work(model: nn.Module) -> None:
    class Plain(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 10

        def __getitem__(self, index: int) -> Tensor:
            return torch.zeros(3, 32, 32)

    calls = {"n": 0}
    handle = model.features[0].register_forward_hook(lambda *_: calls.__setitem__("n", calls["n"] + 1))
    try:
        with pytest.raises(ValueError, match=r"data\[0\] gives no class label"):
            mine_topk(model, LAYERS, Plain(), k=2, progress=False, labels=True)
    finally:
        handle.remove()
    assert calls["n"] == 0


def test_repr_shows_the_exemplars_and_links_the_explorer(mined: MiningResult, tmp_path: Path) -> None:
    text = repr(mined)
    assert "labels" in text and f"bottom_k={BOTTOM}" in text and "mean selectivity" in text
    page = mined._repr_html_()
    assert "<th>mean selectivity</th>" in page and "open the explorer" not in page
    index = tmp_path / "it's <here>" / "index.html"
    index.parent.mkdir()
    index.write_text("<html></html>")
    mined.meta["explorer"] = str(index)
    try:
        page = mined._repr_html_()
    finally:
        del mined.meta["explorer"]
    assert "open the explorer" in page and "&lt;here&gt;" not in page  # the address is percent-encoded
    href = re.search(r'href="([^"]+)"', page)
    assert href is not None and urllib.parse.unquote(href.group(1)) == os.path.relpath(index)


def test_open_explorer_opens_the_page_written_or_says_how_to_write_one(
    mined: MiningResult, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[str] = []
    monkeypatch.setattr("webbrowser.open", opened.append)
    with pytest.raises(ValueError, match="write_explorer"):
        mined.open_explorer()
    index = tmp_path / "index.html"
    mined.meta["explorer"] = str(index)
    try:
        with pytest.raises(ValueError, match="no longer exists"):
            mined.open_explorer()
        index.write_text("<html></html>")
        assert mined.open_explorer() == index and opened == [index.resolve().as_uri()]
    finally:
        del mined.meta["explorer"]


def test_relevance_exemplars_are_the_same_across_batch_sizes_shards_and_a_resume(
    model: nn.Module, sample: TensorDataset, tmp_path: Path
) -> None:
    order = torch.tensor([c * 100 + i for i in range(12) for c in range(10)])
    data = TensorDataset(sample.tensors[0][order], sample.tensors[1][order])
    options = {"labels": True, "bottom_k": 3, "by_class": True, "rank_by": "relevance", "target": "label"}
    single = mine_topk(model, LAYERS, data, k=K, batch_size=40, progress=False, **options)
    others = [mine_topk(model, LAYERS, data, k=K, batch_size=b, progress=False, **options) for b in (8, 120)]
    for world in (2, 3):
        shards = [
            mine_topk(model, LAYERS, data, k=K, batch_size=20, progress=False, shard=(r, world), **options)
            for r in range(world)
        ]
        others.append(MiningResult.merge(shards))
    checkpoint = tmp_path / "state.pt"
    calls = {"n": 0}

    def crash(_module: nn.Module, inputs: tuple[Tensor, ...], _output: Tensor) -> None:
        if inputs[0].shape[0] == 40:  # a mining batch (receptive fields run on other shapes)
            calls["n"] += 1
            if calls["n"] == 2:
                raise _Interrupt

    handle = model.features[0].register_forward_hook(crash)
    try:
        with pytest.raises(_Interrupt):
            mine_topk(model, LAYERS, data, k=K, batch_size=40, progress=False, checkpoint=checkpoint,
                      checkpoint_every=0, **options)  # fmt: skip
    finally:
        handle.remove()
    others.append(mine_topk(model, LAYERS, data, k=K, batch_size=40, progress=False, checkpoint=checkpoint, **options))
    for other in others:
        for layer in LAYERS:
            for c in range(single.channels(layer)):
                for kind, cls in (("top", None), ("bottom", None), ("top", 4)):
                    assert other.records(layer, c, kind=kind, cls=cls) == single.records(layer, c, kind=kind, cls=cls)
            for cls in (0, 9):
                a, b = single.class_units(layer, cls, n=5), other.class_units(layer, cls, n=5)
                assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_statistics_are_computed_once_per_layer_and_handed_out_as_copies(mined: MiningResult) -> None:
    layer = LAYERS[0]
    first, second = mined.class_stats(layer), mined.class_stats(layer)
    assert torch.equal(first.class_means, second.class_means) and first.class_means is not second.class_means
    first.histogram.zero_()  # the caller's own tensors: the result is untouched
    assert int(mined.class_stats(layer).histogram.sum()) > 0
    stats = mined.stats(layer)
    stats.mean.zero_()
    assert bool((mined.stats(layer).mean != 0).any())


def test_target_label_with_an_unlabelled_image_is_refused_before_any_work(
    model: nn.Module, sample: TensorDataset
) -> None:
    images, labels = sample.tensors[0][:40], sample.tensors[1][:40].clone()
    labels[37] = -1  # in the last batch: mining used to stop there, after all the others
    calls = {"n": 0}
    handle = model.features[0].register_forward_hook(lambda *_: calls.__setitem__("n", calls["n"] + 1))
    try:
        with pytest.raises(ValueError, match=r"^target='label' needs every image's label, .*1 images \(the first: "
                           r"image 37\)"):  # fmt: skip
            mine_topk(model, LAYERS, images, k=2, batch_size=8, progress=False, labels=labels, rank_by="relevance",
                      target="label")  # fmt: skip
        assert calls["n"] == 0
        # a shard holds only its own images: image 37 is in shard 1 of 2
        mine_topk(model, LAYERS[:1], images, k=2, progress=False, labels=labels, rank_by="relevance",
                  target="label", shard=(0, 2))  # fmt: skip
        before = calls["n"]
        with pytest.raises(ValueError, match=r"the first: image 37"):
            mine_topk(model, LAYERS[:1], images, k=2, progress=False, labels=labels, rank_by="relevance",
                      target="label", shard=(1, 2))  # fmt: skip
        assert calls["n"] == before
    finally:
        handle.remove()


def test_exemplar_memory_is_checked_before_a_layer_s_state_is_allocated(
    model: nn.Module, sample: TensorDataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    from captum_deconvviz._exemplar_state import ExemplarState

    def allocated(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the exemplar state was allocated before the memory check")

    monkeypatch.setattr(ExemplarState, "empty", allocated)
    images = sample.tensors[0][:8]
    # 16 channels x bottom_k=3 x 20 bytes = 960 bytes: over 500, though one channel (60 bytes) is under it
    with pytest.raises(ValueError, match=r"more than max_exemplar_bytes=500"):
        mine_topk(model, LAYERS[:1], images, k=2, bottom_k=3, max_exemplar_bytes=500, progress=False)


def test_a_numpy_or_tensor_class_index_is_a_target(model: nn.Module, sample: TensorDataset) -> None:
    import numpy as np

    images = sample.tensors[0][:24]
    results = [
        mine_topk(model, LAYERS[:1], images, k=3, progress=False, rank_by="relevance", target=target)
        for target in (3, np.int64(3), torch.tensor(3), torch.tensor(3, dtype=torch.uint8))
    ]
    assert all(r.meta["exemplars"]["target"] == 3 and type(r.meta["exemplars"]["target"]) is int for r in results)
    for result in results[1:]:
        assert all(result.records(LAYERS[0], c) == results[0].records(LAYERS[0], c) for c in range(16))


def test_open_explorer_refuses_the_page_another_result_wrote_over_its_own(
    model: nn.Module, sample: TensorDataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from captum_deconvviz import write_explorer

    opened: list[str] = []
    monkeypatch.setattr("webbrowser.open", opened.append)
    images, labels = sample.tensors[0][:12], sample.tensors[1][:12]
    first = mine_topk(model, LAYERS[:1], images, k=2, progress=False)
    second = mine_topk(model, LAYERS[:1], images, k=2, labels=labels, progress=False)  # same but for the labels
    out = tmp_path / "explorer"
    write_explorer(out, model, images, first, guided=False, progress=False)
    saved = tmp_path / "first.pt"
    first.save(saved)
    assert first.open_explorer() == out / "index.html"
    assert MiningResult.load(saved).open_explorer() == out / "index.html"  # a loaded copy is the same result
    write_explorer(out, model, images, second, guided=False, progress=False)
    with pytest.raises(
        ValueError, match=r"^the explorer at .* was written for another result \(its exemplars differ\)"
    ):
        first.open_explorer()
    assert second.open_explorer() == out / "index.html" and len(opened) == 3


@pytest.mark.parametrize(("count", "k", "top_n"), [(40, 3, 4), (40, 9, 9), (1000, 9, 100), (600, 2, 60)])
def test_the_default_class_histogram_is_a_tenth_of_the_data(count: int, k: int, top_n: int) -> None:
    """At most 100 and at least k: a fixed 100 on 40 images counted them all, the same bars for every channel."""
    data = torch.utils.data.Subset(default_sample(), range(count))
    torch.manual_seed(0)
    model = ZFNetCIFAR((4, 4, 4, 4)).eval()
    result = mine_topk(model, ["features.1"], data, k=k, labels=True, progress=False, batch_size=200)
    stats = result.class_stats("features.1")
    assert stats.top_n == top_n
    assert (stats.histogram.sum(dim=1) == top_n).all()
