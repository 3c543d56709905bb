"""``deconvviz --normalize/--mean/--std``: what images the model sees, where the choice is recorded."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision.transforms import functional as TF

from captum_deconvviz import MiningResult
from captum_deconvviz.cli import NORMALIZE_PRESETS, main
from captum_deconvviz.zoo import CIFAR10_MEAN, CIFAR10_STD, default_sample, load_default_model

LAYER = "features.1"  # the first ReLU: a record's value is one conv output, easy to recompute


def _mine(tmp_path: Path, *options: str) -> MiningResult:
    out = tmp_path / "result.pt"
    args = ["mine", "--limit", "12", "--layers", LAYER, "--k", "1", "--batch-size", "12", *options]
    assert main([*args, "--out", str(out)]) == 0
    return MiningResult.load(out)


def _recompute(result: MiningResult, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
    """Each channel's best record equals the first ReLU on the shipped image normalized by hand."""
    model, sample = load_default_model(), default_sample(transform=lambda image: image)
    for channel in (0, 5, 47):
        record = result.records(LAYER, channel)[0]
        shipped = record.index * len(sample) // 12  # --limit 12 spreads over the class-sorted sample
        image = TF.normalize(TF.to_tensor(sample[shipped][0]), list(mean), list(std))
        with torch.no_grad():
            expected = model.features[:2](image[None])[0, channel, record.y, record.x]
        assert abs(record.value - float(expected)) <= 1e-4 * max(1.0, abs(float(expected)))


def test_cifar10_preset_is_the_default_models_statistics() -> None:
    assert NORMALIZE_PRESETS["cifar10"] == (CIFAR10_MEAN, CIFAR10_STD)
    assert NORMALIZE_PRESETS["none"] == ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


def test_default_model_keeps_cifar10_statistics_and_records_them(tmp_path: Path) -> None:
    result = _mine(tmp_path)
    assert result.meta["normalization"] == {"preset": "cifar10", "mean": list(CIFAR10_MEAN), "std": list(CIFAR10_STD)}
    _recompute(result, CIFAR10_MEAN, CIFAR10_STD)


@pytest.mark.parametrize(
    ("options", "preset", "mean", "std"),
    [
        (["--normalize", "none"], "none", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
        (["--normalize", "imagenet"], "imagenet", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        # --mean overrides the preset's mean and keeps its std; commas work as well as spaces.
        (["--normalize", "none", "--mean", "0.5,0.5,0.5"], "custom", (0.5, 0.5, 0.5), (1.0, 1.0, 1.0)),
        (["--mean", "0.5", "0.4", "0.3", "--std", "0.25", "0.2", "0.3"], "custom", (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)),
    ],
)
def test_normalization_reaches_the_model_and_the_saved_result(
    tmp_path: Path, options: list[str], preset: str, mean: tuple[float, ...], std: tuple[float, ...]
) -> None:
    result = _mine(tmp_path, *options)
    assert result.meta["normalization"] == {"preset": preset, "mean": list(mean), "std": list(std)}
    _recompute(result, mean, std)


@pytest.mark.parametrize("command", ["mine", "report", "compare"])
@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--mean", "0.5", "0.5"], "--mean needs 3 numbers, one per RGB channel, got 2: '0.5 0.5'"),
        (["--std", "0.2", "x", "0.2"], "--std needs 3 numbers, one per RGB channel, got '0.2 x 0.2'"),
        (["--std", "0", "0.2", "0.2"], "--std values must be in (0, 1] for images scaled to [0, 1]"),
        (["--std", "nan", "0.2", "0.2"], "--std values must be in (0, 1]"),
        (["--mean", "123.7", "116.3", "103.5"], "--mean values must be in [0, 1] for images scaled to [0, 1]"),
        (["--mean", "-0.1", "0", "0"], "--mean values must be in [0, 1]"),
    ],
)
def test_bad_statistics_are_one_clear_line_before_anything_is_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str, options: list[str], message: str
) -> None:
    # A missing data folder and model file would be errors too: the statistics must be refused first.
    args = [command, "--model", str(tmp_path / "missing.pt"), "--data", str(tmp_path / "nowhere"), *options]
    assert main([*args, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"deconvviz {command}: error: ") and message in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["mine", "--k", "0"], "--k must be >= 1, got 0"),
        (["mine", "--batch-size", "0"], "--batch-size must be >= 1, got 0"),
        (["report", "--limit", "0"], "--limit must be >= 1, got 0"),
        (["report", "--workers", "-1"], "--workers must be >= 0, got -1"),
        (["compare", "--image-size", "0"], "--image-size must be >= 1, got 0"),
        (["compare", "--images", "0"], "--images must be >= 1, got 0"),
        (["compare", "--target", "cat"], "--target must be a class index (an int >= 0) or 'predicted', got 'cat'"),
        (["rf", "--input-size", "3", "0", "32"], "--input-size needs C H W (each >= 1), got 3 0 32"),
    ],
)
def test_numbers_are_checked_before_anything_is_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    args = [*argv, "--model", str(tmp_path / "missing.pt")]
    if argv[0] != "rf":
        args += ["--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err == f"deconvviz {argv[0]}: error: {message}\n"


def test_unknown_preset_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["mine", "--normalize", "mnist", "--out", "r.pt"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err  # argparse's wording (choices quoted or not depends on the Python version)
    assert "argument --normalize: invalid choice: 'mnist'" in err and "imagenet" in err


def test_report_shows_the_choice_and_refuses_a_result_mined_otherwise(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    saved = tmp_path / "result.pt"
    small = ["--limit", "12", "--layers", "features.7", "--k", "2", "--batch-size", "12"]
    assert main(["mine", *small, "--normalize", "none", "--out", str(saved)]) == 0
    capsys.readouterr()
    # Reporting with other statistics would draw patches and projections of other images.
    assert main(["report", *small, "--result", str(saved), "--out", str(tmp_path / "wrong")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--result {saved} was mined with normalization none (mean 0 0 0, std 1 1 1)" in err
    assert "this report would use cifar10 (mean 0.4914 0.4822 0.4465, std 0.247 0.2435 0.2616)" in err
    assert not (tmp_path / "wrong").exists()
    # The same numbers under another name are the same statistics.
    out = tmp_path / "report"
    assert (
        main(["report", *small, "--mean", "0,0,0", "--std", "1", "1", "1", "--result", str(saved), "--out", str(out)])
        == 0
    )
    page = (out / "index.html").read_text()
    assert "Input normalization: <b>custom</b> (mean 0, 0, 0; std 1, 1, 1;" in page
    # A result saved before the field existed still loads and reports, with the report's own choice.
    old = MiningResult.load(saved)
    del old.meta["normalization"], old.meta["data_fingerprint"]  # neither was recorded then
    old.save(tmp_path / "old.pt")
    assert "normalization" not in MiningResult.load(tmp_path / "old.pt").meta
    out = tmp_path / "old-report"
    custom = ["--mean", "0.5", "0.5", "0.5", "--std", "0.25", "0.25", "0.25"]
    with pytest.warns(UserWarning, match="saved before results recorded a fingerprint of their data"):
        assert main(["report", *small, *custom, "--result", str(tmp_path / "old.pt"), "--out", str(out)]) == 0
    page = (out / "index.html").read_text()
    assert "Input normalization: <b>custom</b> (mean 0.5, 0.5, 0.5; std 0.25, 0.25, 0.25;" in page


def test_compare_says_which_statistics_it_used(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "compare.png"
    assert main(["compare", "--images", "2", "--methods", "zf_deconv", "--normalize", "none", "--out", str(out)]) == 0
    assert "normalization none (mean 0 0 0, std 1 1 1)" in capsys.readouterr().out
    assert out.read_bytes().startswith(b"\x89PNG")
