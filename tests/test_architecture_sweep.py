"""The CI subset of the zoo sweep: 14 ConvNets that stress the receptive-field analysis.

The checks and the model list are those of ``benchmarks/architecture_sweep.py`` (both
live in ``tests/sweep_checks.py``), run with the ``"ci"`` profile: 64-96 px inputs,
two layers, four probed units, two channels of a concatenation, one mined layer.
Each model is built and checked once (a module-scoped fixture); the tests then read
the report. Until issue 12's receptive-field API (``channel=``, ``detach_global=``,
``global_via``, ``"layer[i]"`` names) has landed, receptive-field and mining problems
are expected failures; after, they fail the test.
"""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from pathlib import Path

import pytest
import sweep_checks as sc
import torch
from torch import nn

pytest.importorskip("timm", reason="the zoo sweep builds timm models: pip install -e '.[test]'")


@pytest.fixture(scope="module", params=sc.CI_SUBSET)
def report(request: pytest.FixtureRequest) -> sc.ModelReport:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small models: one thread is as fast, and far faster on a loaded machine
    try:
        return sc.run_model(sc.MODELS[request.param], sc.PROFILES["ci"])
    finally:
        torch.set_num_threads(threads)


def _expect_clean(outcomes: list[sc.Outcome]) -> None:
    bad = [o for o in outcomes if o.kind not in (sc.PASS, sc.DIFFERS)]
    assert not bad, "\n".join(sc.describe(o) for o in bad)


def test_model_builds_and_runs(report: sc.ModelReport) -> None:
    assert not report.error and not report.not_run, report.error or report.not_run


def test_attribution_equals_zennit_deconvnet(report: sc.ModelReport) -> None:
    outcome = report.attribution
    assert outcome is not None
    if outcome.kind == sc.SKIPPED:
        pytest.skip(outcome.message)  # zennit is not installed
    assert outcome.kind in (sc.PASS, sc.DIFFERS), sc.describe(outcome)


def test_receptive_fields_equal_the_probe(report: sc.ModelReport) -> None:
    assert report.fields
    _expect_clean(report.fields)


def test_mining_with_patches_and_projections(report: sc.ModelReport) -> None:
    assert report.mining is not None
    _expect_clean([report.mining])


def test_subset_spans_the_required_families() -> None:
    families = {sc.MODELS[name].family for name in sc.CI_SUBSET}
    assert len(families) >= 12
    for needed in ("SE-ResNet", "ResNet (GroupNorm)", "EfficientNet (TF same padding)", "Res2Net", "DLA", "HRNet"):
        assert needed in families


def test_sweep_script_renders_its_table() -> None:
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "architecture_sweep.py"
    spec = importlib.util.spec_from_file_location("architecture_sweep", path)
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    good = sc.ModelReport("a", "A", "timm", 64, attribution=sc.Outcome(sc.PASS, "attribution", value=0.0))
    good.fields = [sc.Outcome(sc.PASS, "layer1", global_via=("GroupNorm statistics at bn1",))]
    good.mining = sc.Outcome(sc.PASS, "mining layer1")
    bad = sc.ModelReport("b|c", "B", "torchvision", 64, fields=[sc.Outcome(sc.WRONG, "l", "unit (0, 0): x | y")])
    text = script.table([good, bad]) + script.summary([good, bad], 1.0)
    assert "| `a` | A | 64 | 0.0e+00 | 1/1 |" in text and "GroupNorm statistics (1: bn1)" in text
    assert "x \\| y" in text and "silently wrong fields: 1 checks in 1 models (tv/b|c)" in text
    assert good.status == "supported" and bad.status == "FAILED"


def test_check_field_catches_a_wrong_field(monkeypatch: pytest.MonkeyPatch) -> None:
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 2, 3)).eval()
    units = [(4, 4), (0, 0)]
    right = sc.check_field(net, "2", (1, 12, 12), units)
    assert right.kind == sc.PASS, sc.describe(right)
    real = sc.receptive_field
    monkeypatch.setattr(sc, "receptive_field", lambda *a, **k: replace(real(*a, **k), size=(3, 3), reach=None))
    wrong = sc.check_field(net, "2", (1, 12, 12), units)
    assert wrong.kind == sc.WRONG and "unit (4, 4)" in wrong.message


def test_check_field_catches_an_unreported_global_path(monkeypatch: pytest.MonkeyPatch) -> None:
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.GroupNorm(2, 4), nn.Conv2d(4, 4, 3)).eval()
    reported = sc.check_field(net, "2", (1, 12, 12), [(4, 4)])
    assert reported.kind == sc.PASS and reported.global_via, sc.describe(reported)
    real = sc.receptive_field
    monkeypatch.setattr(sc, "receptive_field", lambda *a, **k: replace(real(*a, **k), global_via=()))
    hidden = sc.check_field(net, "2", (1, 12, 12), [(4, 4)])
    assert hidden.kind == sc.WRONG, sc.describe(hidden)
