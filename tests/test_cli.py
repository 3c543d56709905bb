"""Every ``deconvviz`` subcommand end to end on the default model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from captum_deconvviz import MiningResult
from captum_deconvviz.cli import main
from captum_deconvviz.zoo import default_sample


def test_demo_writes_the_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--limit", "150", "--static"]) == 0  # the explorer: test_explorer_browser
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert summary.startswith(f"wrote {out / 'index.html'} (150 images, 4 layers")
    page = (out / "index.html").read_text()
    assert page.count("<figure") == 48 + 96 + 192 + 192  # every channel of the four layers


def test_mine_then_report_from_the_result(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "images"
    sample = default_sample(transform=lambda image: image)
    for i in range(30):
        (folder / sample.names[i * 30].split("/")[0]).mkdir(parents=True, exist_ok=True)
        sample[i * 30][0].save(folder / sample.names[i * 30].replace(".jpg", ".png"))
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8 truncated")
    saved = tmp_path / "result.pt"
    assert (
        main(["mine", "--data", str(folder), "--layers", "features.4", "features.9", "--k", "5", "--out", str(saved)])
        == 0
    )
    captured = capsys.readouterr()
    assert "skipped 1 unreadable file(s), e.g. corrupt.jpg" in captured.err
    assert f"wrote {saved}" in captured.out
    result = MiningResult.load(saved)
    assert result.layers == ["features.4", "features.9"] and result.num_images == 30 and result.k == 5
    # Decoding in DataLoader worker processes gives the same records.
    with_workers = tmp_path / "workers.pt"
    args = ["mine", "--data", str(folder), "--layers", "features.4", "features.9", "--k", "5", "--workers", "2"]
    assert main([*args, "--out", str(with_workers)]) == 0
    again = MiningResult.load(with_workers)
    for channel in (0, 7):
        assert again.records("features.9", channel) == result.records("features.9", channel)
    report = tmp_path / "report"
    args = ["report", "--data", str(folder), "--result", str(saved), "--out", str(report), "--static"]
    assert main(args) == 0
    assert (report / "index.html").exists() and (report / "features.9_c0000.png").exists()


def test_cli_errors_are_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["mine", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r.pt")]) == 2
    assert "does not exist or is not a folder" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["report", "--data", str(empty), "--out", str(tmp_path / "rep")]) == 2
    assert "no readable images" in capsys.readouterr().err
    assert main(["mine", "--layers", "features.99", "--out", str(tmp_path / "r.pt")]) == 2
    assert "is not a module of the model" in capsys.readouterr().err


def test_console_script_is_installed() -> None:
    result = subprocess.run([sys.executable, "-m", "captum_deconvviz.cli", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("deconvviz ")


def test_compare_prints_metrics_and_writes_the_figure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "compare.png"
    assert main(["compare", "--images", "3", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| zf_deconv | guided_backprop |" in printed and f"wrote {out}" in printed
    assert out.read_bytes().startswith(b"\x89PNG")
    assert main(["compare", "--methods", "zf_deconv", "lrp", "--out", str(out)]) == 2
    assert "unknown method(s) ['lrp']" in capsys.readouterr().err


@pytest.mark.parametrize("flags", [[], ["--lossy"]])
def test_report_lossy_asks_the_explorer_for_lossy_sheets(
    flags: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import captum_deconvviz.explorer as explorer

    seen: dict[str, object] = {}

    def fake(out: Path, *args: object, **kwargs: object) -> Path:  # what the explorer was asked for
        seen.update(kwargs)
        return Path(out) / "index.html"

    monkeypatch.setattr(explorer, "write_explorer", fake)
    argv = ["report", "--limit", "20", "--layers", "features.1", "--k", "2", "--out", str(tmp_path / "x"), *flags]
    assert main(argv) == 0
    assert seen["lossless"] is (not flags)


def test_compare_draws_every_image_it_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """plot_comparison draws 4 examples by default; the command draws all --images it lists."""
    from PIL import Image

    heights = {}
    for count in (2, 6):
        out = tmp_path / f"compare{count}.png"
        assert main(["compare", "--images", str(count), "--methods", "zf_deconv", "--out", str(out)]) == 0
        assert f"({count} images: " in capsys.readouterr().out
        heights[count] = Image.open(out).height
    row = 1.6 * 200  # cell_inches x the command's dpi
    assert heights[6] - heights[2] == pytest.approx(4 * row, abs=8)


def test_the_program_prints_warnings_on_one_line(tmp_path: Path) -> None:
    """Not the library's file name and source line, as Python's default shows them."""
    out = tmp_path / "r.pt"
    code = (
        "import sys; from captum_deconvviz.cli import main; "
        f"sys.argv = ['deconvviz', 'mine', '--limit', '8', '--layers', 'features.1', '--out', {str(out)!r}]; "
        "sys.exit(main())"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    lines = [line for line in run.stderr.splitlines() if "warning" in line.lower()]
    assert lines == ["deconvviz: warning: k=9 but only 8 images were mined: channels hold fewer than k records"]
    assert ".py:" not in run.stderr  # no file:line of the library's source


def test_limit_spreads_over_the_sorted_sample_and_takes_a_folders_first(tmp_path: Path) -> None:
    """The shipped sample is sorted by class: --limit 20 gives 2 of each class, not 20 airplanes."""
    from captum_deconvviz._cli_checks import check_arguments
    from captum_deconvviz._cli_commands import _data
    from captum_deconvviz.cli import build_parser

    args = build_parser().parse_args(["mine", "--limit", "20", "--out", str(tmp_path / "r.pt")])
    check_arguments(args)
    dataset, _, names, _ = _data(args)
    sample = default_sample()
    assert names == [sample.names[i] for i in range(0, 1000, 50)]
    assert sorted(dataset[i][1] for i in range(20)) == sorted(list(range(10)) * 2)
    folder = tmp_path / "images"
    folder.mkdir()
    pictures = default_sample(transform=lambda image: image)
    for i in range(5):
        pictures[i * 100][0].save(folder / f"{i}.png")
    args = build_parser().parse_args(["mine", "--data", str(folder), "--limit", "3", "--out", str(tmp_path / "s.pt")])
    check_arguments(args)
    _, _, names, _ = _data(args)
    assert names == ["0.png", "1.png", "2.png"]


class _GatedNet(torch.nn.Module):
    """Convs on maps, a squeeze-excitation gate (1x1 after pooling), a conv called twice, a conv head after pooling.
    Defined in reverse of the forward order, so that names and forward order differ."""

    def __init__(self) -> None:
        super().__init__()
        self.head = torch.nn.Conv2d(8, 10, 1)
        self.gate = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Conv2d(8, 8, 1), torch.nn.Sigmoid())
        self.twice = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.second = torch.nn.Conv2d(8, 8, 3, stride=2)
        self.first = torch.nn.Conv2d(3, 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.second(torch.relu(self.first(x))))
        x = self.twice(self.twice(x))
        x = x * self.gate(x)
        return self.head(torch.nn.functional.adaptive_avg_pool2d(x, 1)).flatten(1)


def test_default_layers_are_map_convolutions_in_forward_order() -> None:
    import argparse

    from captum_deconvviz._cli_commands import _default_layers

    model = _GatedNet().train()
    args = argparse.Namespace(layers=None, model="tests:gated", image_size=32, normalization=None)
    assert _default_layers(args, model) == ["first", "second"]  # not gate.1, head (1x1) nor twice (called twice)
    assert model.training and not any(m._forward_hooks for m in model.modules())
    args.image_size = 2  # too small for the model: every conv, and check_model_fits explains
    assert _default_layers(args, model) == ["head", "gate.1", "twice", "second", "first"]


def test_sigterm_is_an_interruption_that_says_what_was_kept(tmp_path: Path) -> None:
    """A job's time limit or `timeout` sends SIGTERM: one line, exit status 143, no traceback."""
    import signal

    code = (
        "import sys; sys.argv = ['deconvviz', *sys.argv[1:]]; from captum_deconvviz.cli import main; sys.exit(main())"
    )
    argv = ["mine", "--batch-size", "4", "--out", str(tmp_path / "r.pt")]
    process = subprocess.Popen([sys.executable, "-c", code, *argv], stderr=subprocess.PIPE, cwd=tmp_path)
    assert process.stderr is not None
    seen = b""
    while b"img/s" not in seen:  # mining has started: its progress bar moves
        chunk = process.stderr.read1(4096)
        assert chunk, seen.decode(errors="replace")
        seen += chunk
    process.send_signal(signal.SIGTERM)
    rest = process.stderr.read().decode(errors="replace")
    assert process.wait(timeout=60) == 143
    assert "deconvviz mine: terminated (SIGTERM); nothing was saved" in rest
    assert "Traceback" not in rest
