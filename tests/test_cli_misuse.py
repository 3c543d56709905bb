"""``deconvviz`` under misuse: one line on stderr, exit status 2, no traceback, and before any work.

Config-driven, the way Captum's ``test_hook_removal`` is: :data:`CASES` lists each misuse as
``(name, argv, option, fragment, stage)``. The one test runs ``main(argv)`` in-process and
asserts exit status 2, exactly one line on stderr that starts ``deconvviz CMD: error:``, names
``option`` and contains ``fragment``, no traceback and nothing on stdout. ``stage`` says how
far the command may get before it refuses: ``"args"`` (not even the model is loaded),
``"model"`` (the model, not the data), ``"data"`` (the data scan too). Mining, diagnosis, the
report writer and the method comparison are replaced by functions that fail the test if they
run, so an error found only after work (an unwritable ``--out`` found after mining) fails.

The argv strings are split on spaces. Placeholders in braces are paths made once per module
(:func:`env`): ``{file}`` a plain file, ``{folder}`` an empty folder, ``{images}`` three small
PNGs, ``{unwritable}`` a folder nothing can be written to (a read-only folder, or under
``/sys`` when running as root), and model and result files. ``EMPTY`` stands for an empty
argument (``''``). A case whose argv ends with ``NO_OUT`` gets no ``--out``; every other mine
and report case gets a fresh one. The commands run in a temporary working directory.
"""

from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from captum_deconvviz import MiningResult
from captum_deconvviz._cli_checks import CommandLineError, check_result_options
from captum_deconvviz.cli import main
from captum_deconvviz.zoo import load_default_model

NO_OUT = "NO_OUT"
EMPTY = "EMPTY"
HUGE = str(2**40)
MODEL = "tinynets_misuse"  # the module of small factory models env() writes

# (name, argv, option the message names, fragment of the message, stage it may reach); argv is split on spaces
# fmt: off
CASES: list[tuple[str, str, str, str, str]] = [
    # --- output paths: checked before the model is loaded ---
    ("mine-out-under-a-file", "mine --out {file}/r.pt", "--out", "is a file, not a folder", "args"),
    ("mine-out-is-a-folder", "mine --out {folder}", "--out", "is a folder", "args"),
    ("mine-out-ends-with-a-slash", "mine --out {tmp}/results/", "--out", "is a folder", "args"),
    ("mine-out-unwritable", "mine --out {unwritable}/r.pt", "--out", "{unwritable}", "args"),
    ("mine-checkpoint-is-a-folder", "mine --checkpoint {folder}", "--checkpoint", "is a folder", "args"),
    ("mine-checkpoint-under-a-file", "mine --checkpoint {file}/c.pt", "--checkpoint", "is a file", "args"),
    ("mine-checkpoint-unwritable", "mine --checkpoint {unwritable}/c.pt", "--checkpoint", "{unwritable}", "args"),
    ("report-out-is-a-file", "report --out {file}", "--out", "is a file", "args"),
    ("report-out-under-a-file", "report --out {file}/report", "--out", "is a file, not a folder", "args"),
    ("report-out-unwritable", "report --out {unwritable}/report", "--out", "{unwritable}", "args"),
    ("demo-out-is-a-file", "demo --out {file}", "--out", "is a file", "args"),
    ("demo-out-under-a-file", "demo --out {file}/a/b", "--out", "is a file, not a folder", "args"),
    ("compare-out-unknown-suffix", "compare --out {tmp}/figure.xyz", "--out", "needs a figure suffix", "args"),
    ("compare-out-without-suffix", "compare --out {tmp}/figure", "--out", "needs a figure suffix", "args"),
    ("compare-out-is-a-folder", "compare --out {figure_folder}", "--out", "is a folder", "args"),
    ("compare-out-under-a-file", "compare --out {file}/f.png", "--out", "is a file, not a folder", "args"),
    ("compare-out-unwritable", "compare --out {unwritable}/f.png", "--out", "{unwritable}", "args"),
    # --- input paths ---
    ("mine-data-missing", "mine --data {tmp}/nowhere", "--data", "does not exist", "args"),
    ("mine-data-is-a-file", "mine --data {file}", "--data", "it is a file", "args"),
    ("compare-data-missing", "compare --data {tmp}/nowhere", "--data", "does not exist", "args"),
    ("report-data-empty-folder", "report --data {folder}", "--data", "no readable images", "data"),
    ("mine-data-no-images", "mine --data {junk}", "--data", "no readable images", "data"),
    ("report-result-missing", "report --result {tmp}/none.pt", "--result", "does not exist", "args"),
    ("report-result-is-a-folder", "report --result {folder}", "--result", "is a folder", "args"),
    ("report-result-not-a-result", "report --result {text_pt}", "--result", "", "args"),
    # --- empty paths: pathlib reads '' as the working folder (--data '' mined every image under it) ---
    ("mine-data-empty", "mine --data EMPTY", "--data", "is empty", "args"),
    ("mine-out-empty", "mine --out EMPTY", "--out", "is empty", "args"),
    ("report-out-empty", "report --out EMPTY", "--out", "is empty", "args"),
    ("compare-out-empty", "compare --out EMPTY", "--out", "is empty", "args"),
    ("mine-checkpoint-empty", "mine --checkpoint EMPTY", "--checkpoint", "is empty", "args"),
    ("report-result-empty", "report --result EMPTY", "--result", "is empty", "args"),
    ("mine-model-empty", "mine --model EMPTY", "--model", "is empty", "args"),
    ("rf-weights-empty", "rf --model torchvision:alexnet --weights EMPTY", "--weights", "is empty", "args"),
    ("mine-arch-empty", "mine --model {state} --arch EMPTY", "--arch", "is empty", "args"),
    # --- paths that collide: an output would overwrite an input or the other output ---
    ("mine-checkpoint-is-out", "mine --checkpoint {tmp}/same.pt --out {tmp}/./same.pt",
     "--checkpoint", "are one file", "args"),
    ("mine-out-is-the-model-file", "mine --model {state} --arch default --out {state}",
     "--out", "is the --model file", "args"),
    ("mine-checkpoint-is-the-model-file", "mine --model {state} --arch default --checkpoint {state}",
     "--checkpoint", "is the --model file", "args"),
    ("report-out-is-the-data-folder", "report --data {images} --out {images}", "--out", "inside --data", "args"),
    ("report-out-inside-data", "report --data {images} --out {images}/report", "--out", "inside --data", "args"),
    ("compare-out-inside-data", "compare --data {images} --out {images}/c.png", "--out", "inside --data", "args"),
    # --- model specs ---
    ("mine-model-file-missing", "mine --model {tmp}/missing.pt", "--model", "does not exist", "args"),
    ("mine-model-is-a-folder", "mine --model {folder}", "--model", "is a folder", "args"),
    ("mine-model-not-a-model-file", "mine --model {text_pt}", "--model", "not a model file", "args"),
    ("mine-model-not-a-state-dict", "mine --model {text_pt} --arch default", "--model", "not a state_dict", "model"),
    ("mine-model-trusted-but-broken", "mine --model {text_pt} --trust-code", "--model", "cannot be loaded", "model"),
    ("mine-model-torchscript-untrusted", "mine --model {torchscript}", "--trust-code", "TorchScript archive", "args"),
    ("mine-model-pickled-untrusted", "mine --model {pickled}", "--trust-code", "torch.save file", "args"),
    ("mine-model-state-dict-without-arch", "mine --model {state}", "--arch", "state_dict", "args"),
    ("mine-model-state-dict-wrong-arch", "mine --model {state} --arch {model}:rgb", "--model", "do not fit", "model"),
    ("mine-model-unknown-torchvision", "mine --model torchvision:resnet9000",
     "--model", "torchvision has no model", "args"),
    ("mine-model-module-missing", "mine --model no_such_module_xyz:build",
     "--model", "cannot import", "model"),
    ("rf-verify-without-layer", "rf --model default --verify", "--verify", "needs --layer", "args"),
    ("rf-probe-without-layer", "rf --model default --method probe", "--method probe", "needs --layer", "args"),
    ("mine-model-unknown-timm", "mine --model timm:resnet9000", "--model", "timm has no model", "args"),
    ("mine-model-timm-weights-name", "mine --model timm:resnet10t --weights IMAGENET1K_V1",
     "--weights", "give DEFAULT", "args"),
    ("mine-model-factory-returns-no-module", "mine --model {model}:not_a_module",
     "--model", "not an nn.Module", "model"),
    ("mine-model-spec-unreadable", "mine --model resnet18", "--model", "cannot read model spec", "args"),
    ("mine-weights-for-the-default-model", "mine --weights DEFAULT", "--weights", "does not apply", "args"),
    ("rf-weights-file-missing", "rf --model torchvision:alexnet --weights {tmp}/w.pth",
     "--weights", "does not exist", "args"),
    ("mine-arch-without-a-file", "mine --arch default", "--arch", "applies to a state_dict file", "args"),
    ("mine-arch-unknown", "mine --model {state} --arch torchvision:resnet9000", "--arch", "has no model", "args"),
    # --- numbers: 0, negative, huge, not a number, bool-like ---
    ("mine-k-zero", "mine --k 0", "--k", "must be >= 1, got 0", "args"),
    ("mine-k-negative", "mine --k -3", "--k", "must be >= 1, got -3", "args"),
    ("mine-k-huge", "mine --k {huge}", "--k", "must be <= 10000", "args"),
    ("mine-k-not-a-number", "mine --k many", "--k", "invalid int value", "args"),
    ("mine-k-fraction", "mine --k 2.5", "--k", "invalid int value", "args"),
    ("mine-k-bool", "mine --k true", "--k", "invalid int value", "args"),
    ("mine-batch-size-zero", "mine --batch-size 0", "--batch-size", "must be >= 1", "args"),
    ("report-batch-size-negative", "report --batch-size -1", "--batch-size", "must be >= 1", "args"),
    ("mine-batch-size-bool", "mine --batch-size True", "--batch-size", "invalid int value", "args"),
    ("demo-batch-size-huge", "demo --batch-size {huge}", "--batch-size", "must be <= 65536", "args"),
    ("mine-workers-negative", "mine --workers -1", "--workers", "must be >= 0", "args"),
    ("mine-workers-huge", "mine --workers 100000", "--workers", "must be <= 128", "args"),
    ("mine-limit-zero", "mine --limit 0", "--limit", "must be >= 1", "args"),
    ("report-limit-negative", "report --limit -5", "--limit", "must be >= 1", "args"),
    ("mine-image-size-zero", "mine --image-size 0", "--image-size", "must be >= 1", "args"),
    ("mine-image-size-huge", "mine --image-size 100000", "--image-size", "must be <= 4096", "args"),
    ("compare-images-zero", "compare --images 0", "--images", "must be >= 1", "args"),
    ("compare-images-huge", "compare --images {huge}", "--images", "must be <= 64", "args"),
    ("compare-target-negative", "compare --target -1", "--target", "a class index", "args"),
    ("compare-target-a-word", "compare --target cat", "--target", "a class index", "args"),
    ("compare-target-out-of-range", "compare --target 10", "--target", "out of range", "model"),
    ("demo-k-zero", "demo --k 0", "--k", "must be >= 1", "args"),
    ("demo-limit-zero", "demo --limit 0", "--limit", "must be >= 1", "args"),
    ("demo-batch-size-not-a-number", "demo --batch-size ten", "--batch-size", "invalid int value", "args"),
    ("rf-input-size-zero", "rf --model default --input-size 3 0 32", "--input-size", "C H W", "args"),
    ("rf-input-size-one-number", "rf --model default --input-size 32", "--input-size", "C H W", "args"),
    ("rf-input-size-huge", "rf --model default --input-size 3 {huge} 8", "--input-size", "<= 4096", "args"),
    ("rf-input-size-five-values", "rf --model default --input-size 3 8 8 8 8", "--input-size", "got 5 values", "args"),
    ("rf-input-size-3d-for-a-2d-model", "rf --model default --input-size 3 32 32 32",
     "--input-size", "needs C H W for a 2-d model", "model"),
    ("rf-channel-negative", "rf --model default --layer features.1 --channel -1", "--channel", ">= 0", "args"),
    ("rf-channel-without-layer", "rf --model default --channel 0", "--channel", "needs --layer", "args"),
    ("rf-channel-out-of-range", "rf --model default --input-size 3 32 32 --layer features.1 --channel 48",
     "channel=48", "out of range", "model"),
    ("rf-input-channels-wrong", "rf --model default --input-size 1 32 32", "input_shape", "cannot run", "model"),
    # --- choices, devices, the command line itself ---
    ("mine-unique-unknown", "mine --unique all", "--unique", "invalid choice", "args"),
    ("mine-normalize-unknown", "mine --normalize mnist", "--normalize", "invalid choice", "args"),
    ("rf-method-unknown", "rf --model default --method exact", "--method", "invalid choice", "args"),
    ("compare-method-unknown", "compare --methods zf_deconv lrp", "--methods", "unknown method(s) ['lrp']", "args"),
    ("compare-method-twice", "compare --methods saliency saliency", "--methods", "saliency more than once", "args"),
    ("compare-method-twice-across-repeats", "compare --methods saliency --methods zf_deconv saliency",
     "--methods", "saliency more than once", "args"),
    ("mine-device-unknown", "mine --device tpu", "--device", "is not a device", "args"),
    ("mine-device-meta", "mine --device meta", "--device", "not a device to compute on", "args"),
    ("report-device-meta", "report --device meta", "--device", "not a device to compute on", "args"),
    ("report-lossy-static", "report --static --lossy", "--lossy", "the static report (--static) writes PNG", "args"),
    ("demo-lossy-static", "demo --static --lossy", "--lossy", "the static report (--static) writes PNG", "args"),
    ("report-device-missing-gpu", "report --device cuda:99", "--device", "cuda", "args"),
    ("mine-option-unknown", "mine --frobnicate", "--frobnicate", "unrecognized arguments", "args"),
    ("mine-out-missing", "mine NO_OUT", "--out", "required", "args"),
    ("rf-model-missing", "rf", "--model", "required", "args"),
    ("command-unknown", "frobnicate", "frobnicate", "invalid choice", "args"),
    # --- normalization against the model's channels ---
    ("mine-mean-two-values", "mine --mean 0.5 0.5", "--mean", "needs 3 numbers", "args"),
    ("report-std-zero", "report --std 0 0.2 0.2", "--std", "in (0, 1]", "args"),
    ("compare-mean-0-255-scale", "compare --mean 123.7 116.3 103.5", "--mean", "in [0, 1]", "args"),
    ("mine-gray-model-rgb-images", "mine --model {model}:gray", "--model", "takes 1-channel images", "model"),
    ("compare-gray-model-rgb-images", "compare --model {model}:gray", "--model", "takes 1-channel", "model"),
    # --- layers ---
    ("mine-layer-unknown", "mine --layers features.99", "--layers", "is not a module of the model", "model"),
    ("report-layer-unknown", "report --layers classifier.9", "--layers", "is not a module", "model"),
    ("mine-layer-twice", "mine --layers features.1 features.1", "--layers", "more than once", "args"),
    ("mine-layer-twice-across-repeats", "mine --layers features.1 --layers features.1",
     "--layers", "more than once", "args"),
    ("mine-layer-empty", "mine --layers features.1 EMPTY", "--layers", "empty name", "args"),
    ("rf-layer-empty", "rf --model default --input-size 3 32 32 --layer EMPTY", "--layer", "is empty", "args"),
    ("mine-layer-outputs-a-tuple", "mine --model {model}:pair --layers split", "--layers", "outputs a tuple", "model"),
    ("mine-layer-pick-out-of-range", "mine --model {model}:pair --layers split[5]", "--layers", "split", "model"),
    ("mine-layer-never-called", "mine --model {model}:pair --layers spare", "--layers", "not called", "model"),
    ("rf-layer-unknown", "rf --model default --input-size 3 32 32 --layer features.99",
     "features.99", "is not a module", "model"),
    # --- data that does not fit the model, results from another run (the option only: results are
    # getting fingerprints of their data in another change, which may refuse them in other words) ---
    ("mine-images-too-small-for-the-model", "mine --model {model}:valid --image-size 6",
     "--image-size 6", "cannot run on 3x6x6 images", "model"),
    ("report-result-other-data", "report --data {images} --result {result_sample}",
     "--result", "", "data"),
    ("report-result-other-limit", "report --data {images} --limit 2 --result {result}",
     "--result", "", "data"),
    ("report-result-same-count-other-images", "report --data {gray} --result {result}",
     "--result", "", "data"),
    ("report-result-other-model", "report --data {images} --normalize imagenet --result {result_other_model}",
     "--result", "", "model"),
    ("report-result-other-layers", "report --data {images} --result {result} --layers features.4",
     "--layers", "not the layers of --result", "model"),
    ("report-result-other-normalization", "report --data {images} --result {result} --normalize none",
     "--result", "was mined with normalization", "args"),
    # --- mining options with report --result, which mines nothing: they would be ignored (the same
    # --k and --unique as the result's are accepted: tests/test_cli_normalize.py reports with them) ---
    ("report-result-with-other-k", "report --data {images} --result {result} --k 5", "--k 5", "mined with k=1", "args"),
    ("report-result-with-other-unique", "report --data {images} --result {result} --unique nms",
     "--unique", "mined with unique=image", "args"),
    ("report-result-with-workers", "report --data {images} --result {result} --workers 2",
     "--workers 2", "applies to mining", "args"),
]
# fmt: on

TINY_NETS = """
import torch
from torch import nn


def rgb():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))


def gray():
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))


def valid():  # unpadded 5x5 convolutions: an image under 9 pixels leaves nothing to convolve
    return nn.Sequential(nn.Conv2d(3, 4, 5), nn.ReLU(), nn.Conv2d(4, 4, 5), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, 3))


class Split(nn.Module):
    def forward(self, x):
        return x[:, :2], x[:, 2:]


class Pair(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.split, self.spare, self.head = nn.Conv2d(3, 4, 3), Split(), nn.Conv2d(4, 4, 1), nn.Linear(4, 3)

    def forward(self, x):
        a, b = self.split(self.conv(x))
        return self.head(torch.cat([a, b], 1).mean((2, 3)))


def pair():
    return Pair()


def not_a_module():
    return 42
"""


def _write_images(folder: Path, count: int, mode: str = "RGB") -> None:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        shape = (40, 40, 3) if mode == "RGB" else (40, 40)
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(folder / f"image{i}.png")


def _unwritable(root: Path) -> str | None:
    """A folder nothing can be written to: read-only for a user; for root, a place under /sys."""
    read_only = root / "read-only"
    read_only.mkdir()
    read_only.chmod(0o555)
    try:
        (read_only / "probe").write_bytes(b"")
    except OSError:
        return str(read_only)
    try:  # root writes anywhere on an ordinary file system, but not into sysfs
        os.mkdir("/sys/deconvviz-misuse-probe")
    except OSError:
        return "/sys/deconvviz-misuse"
    os.rmdir("/sys/deconvviz-misuse-probe")
    return None


def _mine(*argv: str) -> None:
    layers = [] if "--layers" in argv else ["--layers", "features.1"]  # repeated --layers add up
    assert main(["mine", *layers, "--k", "1", *argv]) == 0


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("misuse")
    paths: dict[str, Any] = {"tmp": str(root), "model": MODEL, "huge": HUGE}
    (root / "a-file.txt").write_text("not a folder, not a model, not a result")
    (root / "a-folder").mkdir()
    (root / "figure.png").mkdir()
    (root / "text.pt").write_text("not a model")
    (root / f"{MODEL}.py").write_text(TINY_NETS)
    _write_images(root / "images", 3)
    _write_images(root / "gray", 3, mode="L")
    (root / "junk").mkdir()
    (root / "junk" / "notes.txt").write_text("no image")
    (root / "junk" / "garbage.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    (root / "junk" / "empty.png").write_bytes(b"")
    tiny = nn.Sequential(nn.Conv2d(3, 2, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated in torch 2.14, still supported
        torch.jit.script(tiny).save(str(root / "scripted.pt"))
    torch.save(tiny, root / "pickled.pt")
    torch.save(load_default_model().state_dict(), root / "state.pt")
    paths.update(
        file=str(root / "a-file.txt"),
        folder=str(root / "a-folder"),
        figure_folder=str(root / "figure.png"),
        text_pt=str(root / "text.pt"),
        images=str(root / "images"),
        gray=str(root / "gray"),
        junk=str(root / "junk"),
        torchscript=str(root / "scripted.pt"),
        pickled=str(root / "pickled.pt"),
        state=str(root / "state.pt"),
        unwritable=_unwritable(root),
        result=str(root / "result.pt"),
        result_sample=str(root / "result-sample.pt"),
        result_other_model=str(root / "result-other-model.pt"),
    )
    sys.path.insert(0, str(root))
    try:
        _mine("--data", paths["images"], "--out", paths["result"])
        _mine("--limit", "5", "--out", paths["result_sample"])
        _mine("--model", f"{MODEL}:rgb", "--layers", "1", "--data", paths["images"], "--image-size", "32",
              "--out", paths["result_other_model"])  # fmt: skip
        yield paths
    finally:
        sys.path.remove(str(root))
        sys.modules.pop(MODEL, None)
        (root / "read-only").chmod(0o755)


def _forbid(monkeypatch: pytest.MonkeyPatch, stage: str) -> None:
    """Make every step past ``stage`` fail the test: the error must come before it."""

    def forbidden(step: str) -> Any:
        def run(*_args: object, **_kwargs: object) -> None:
            raise AssertionError(f"{step} ran: the misuse must be refused before it")

        return run

    work = {
        ("mining", "mine_topk"): "mining",
        ("diagnose", "diagnose"): "the diagnosis",
        ("report", "write_report"): "the report writer",
        ("compare", "compare_methods"): "the comparison",
    }
    if stage in ("args", "model"):
        work["_cli_commands", "ImageFiles"] = "the data scan"
        work["zoo", "default_sample"] = "the data scan"
    if stage == "args":
        work["_cli_commands", "load_model"] = "the model load"
    for (module, name), step in work.items():
        # By module object: the package's diagnose() function hides its diagnose module's name.
        monkeypatch.setattr(importlib.import_module(f"captum_deconvviz.{module}"), name, forbidden(step))


def _argv(name: str, argv: str, paths: dict[str, Any]) -> list[str]:
    if "{unwritable}" in argv and paths["unwritable"] is None:
        pytest.skip("no folder here refuses writes (root on a file system without a read-only place)")
    args = ["" if arg == EMPTY else arg for arg in argv.format(**paths).split()]
    if args[-1] == NO_OUT:
        return args[:-1]
    if args[0] in ("mine", "report") and "--out" not in args:
        args += ["--out", str(Path(paths["tmp"]) / "outputs" / (name + (".pt" if args[0] == "mine" else "")))]
    return args


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exit_info:  # argparse's errors
        code = exit_info.code  # type: ignore[assignment]
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_the_matrix_is_large_and_covers_every_command() -> None:
    assert len(CASES) >= 60 and len({name for name, *_ in CASES}) == len(CASES)
    assert {argv.split()[0] for _, argv, *_ in CASES} >= {"demo", "mine", "report", "compare", "rf"}


@pytest.mark.parametrize(("argv", "option", "fragment", "stage"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_misuse_is_one_line_exit_2_before_any_work(
    env: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    request: pytest.FixtureRequest,
    argv: str,
    option: str,
    fragment: str,
    stage: str,
) -> None:
    args = _argv(request.node.callspec.id, argv, env)
    monkeypatch.chdir(tmp_path)  # defaults such as compare.png and deconvviz-demo land here
    _forbid(monkeypatch, stage)
    code, out, err = _run(args, capsys)
    prog = f"deconvviz {args[0]}" if args[0] in ("demo", "mine", "report", "compare", "rf") else "deconvviz"
    assert code == 2, err
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert err.startswith(f"{prog}: error: "), err
    assert "Traceback" not in err and out == ""
    assert option.format(**env) in err and fragment.format(**env) in err, err


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["mine", "--out", "{file}/r.pt"], "is a file, not a folder"),
        (["report", "--result", "{text_pt}", "--out", "{tmp}/report-from-text"], "--result"),
    ],
    ids=["out-under-a-file", "result-not-a-result"],
)
def test_a_real_process_prints_exactly_one_line(env: dict[str, Any], argv: list[str], fragment: str) -> None:
    args = [arg.format(**env) for arg in argv]
    done = subprocess.run(
        [sys.executable, "-m", "captum_deconvviz.cli", *args], capture_output=True, text=True, cwd=env["tmp"]
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and done.stderr.startswith(f"deconvviz {args[0]}: error: ")
    assert fragment.format(**env) in done.stderr and "Traceback" not in done.stderr


def test_grayscale_images_are_converted_for_an_rgb_model(
    env: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The command feeds RGB: a gray PNG becomes three equal channels, which is what an RGB model expects.
    out = tmp_path / "gray.pt"
    argv = ["mine", "--data", env["gray"], "--layers", "features.1", "--k", "1", "--out", str(out)]
    assert main(argv) == 0 and out.is_file()
    assert "error" not in capsys.readouterr().err


def test_repeated_layers_add_up_and_unset_mining_options_take_their_defaults(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # argparse's "last wins" mined only features.4 here, without a word.
    out = tmp_path / "two.pt"
    argv = ["mine", "--limit", "12", "--layers", "features.1", "--layers", "features.4", "--out", str(out)]
    assert main(argv) == 0, capsys.readouterr().err
    result = MiningResult.load(out)
    assert result.layers == ["features.1", "features.4"]
    assert (result.k, result.unique) == (9, "image")  # --k and --unique parse as None, then get the defaults


def test_report_result_takes_the_mining_options_it_was_mined_with(env: dict[str, Any]) -> None:
    # A script may give mine and report the same options: equal values are not ignored, they agree.
    result = MiningResult.load(env["result"])  # mined with k=1, unique="image"
    args = argparse.Namespace(result=env["result"], k=1, unique="image", mining_options_given=["k", "unique"])
    check_result_options(result, args)
    args.unique = "nms"
    with pytest.raises(CommandLineError, match="^--unique nms applies to mining; .* mined with unique=image: drop"):
        check_result_options(result, args)


@pytest.mark.parametrize(
    ("extra", "note"),
    [
        (["--images", "10"], "--images 10: the data has only 3 image(s); comparing 3"),
        (["--limit", "1", "--images", "4"], "--images 4: the data has only 1 image(s) (--limit 1); comparing 1"),
    ],
    ids=["more-than-the-data", "more-than-the-limit"],
)
def test_compare_says_when_it_compares_fewer_images_than_asked(
    env: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], note: str
) -> None:
    out = tmp_path / "figure.png"
    argv = ["compare", "--data", env["images"], "--methods", "zf_deconv", "saliency", *extra, "--out", str(out)]
    assert main(argv) == 0 and out.is_file()
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == note
    assert f"({note[-1]} images: " in printed[-1]  # the summary line counts the images compared


def test_a_limit_above_the_data_s_images_says_it_uses_them_all(
    env: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "r.pt"
    argv = ["mine", "--data", env["images"], "--limit", "5000", "--layers", "features.1", "--k", "1", "--out", str(out)]
    assert main(argv) == 0 and out.is_file()
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "--limit 5000: the data has only 3 image(s); using all 3"
    assert MiningResult.load(out).num_images == 3


def test_folders_made_by_the_checks_are_removed_when_the_command_fails(
    env: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "new" / "report"
    assert main(["report", "--data", env["folder"], "--out", str(out)]) == 2  # no images: after the checks
    assert "no readable images" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_ctrl_c_is_one_line_with_what_was_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(*_args: object, **_kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("captum_deconvviz.mining.mine_topk", interrupted)
    base = ["mine", "--limit", "4", "--layers", "features.1", "--out", str(tmp_path / "r.pt")]
    assert main(base) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "interrupted; nothing was saved (with --checkpoint FILE" in err
    checkpoint = tmp_path / "state.pt"
    checkpoint.write_bytes(b"saved before the interrupt")
    assert main([*base, "--checkpoint", str(checkpoint)]) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"the checkpoint {checkpoint} keeps the progress of its last save" in err


def test_a_bug_keeps_its_traceback_and_debug_shows_bad_input_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def buggy(*_args: object, **_kwargs: object) -> None:
        raise KeyError("a bug, not bad input")

    monkeypatch.setattr("captum_deconvviz.mining.mine_topk", buggy)
    with pytest.raises(KeyError, match="a bug"):
        main(["mine", "--limit", "4", "--layers", "features.1", "--out", str(tmp_path / "r.pt")])
    monkeypatch.setenv("DECONVVIZ_DEBUG", "1")
    with pytest.raises(ValueError, match="--k must be >= 1"):
        main(["mine", "--k", "0", "--out", str(tmp_path / "r.pt")])


def test_figure_suffixes_are_formats_matplotlib_writes() -> None:
    from matplotlib.figure import Figure

    from captum_deconvviz import _cli_checks

    supported = Figure().canvas.get_supported_filetypes()
    assert {suffix[1:] for suffix in _cli_checks.FIGURE_SUFFIXES} <= set(supported)
