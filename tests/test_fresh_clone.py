"""The fresh-clone contract: without CIFAR-10's zips, everything runs on the shipped sample or says why not.

Only :func:`test_the_shipped_sample_is_the_head_of_the_real_test_set` needs the real zips;
it skips with a reason without them. ``.ci/run`` runs this file (and the other tests that
touch data lookup) with ``DECONVVIZ_CIFAR10`` pointing at an empty folder.
"""

from __future__ import annotations

import shutil
import zipfile
from collections import Counter
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import captum_deconvviz.zoo.train as train_module
from captum_deconvviz.data import ImageFiles, ZipImages, find_cifar10, load_cifar10
from captum_deconvviz.zoo import CIFAR10_CLASSES, default_transform
from captum_deconvviz.zoo.train import train_default_model


def _sample_zip() -> Path:
    with resources.as_file(resources.files("captum_deconvviz.zoo") / "cifar10_sample.zip") as path:
        return Path(path)


@pytest.fixture
def sample_zips(tmp_path: Path) -> Path:
    """A folder laid out like CIFAR-10's (train.zip, test.zip), both holding the shipped 1,000 images."""
    folder = tmp_path / "cifar10"
    folder.mkdir()
    for name in ("train.zip", "test.zip"):
        shutil.copyfile(_sample_zip(), folder / name)
    return folder


@pytest.fixture
def no_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt by training to read CIFAR-10 fails the test: arguments must be checked first."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("train_default_model read data before checking its arguments")

    monkeypatch.setattr(train_module, "load_cifar10", refuse)


@pytest.fixture
def no_cifar10(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """DECONVVIZ_CIFAR10 set to an empty folder, as on a fresh clone in CI."""
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("DECONVVIZ_CIFAR10", str(empty))
    return empty


def test_find_cifar10_looks_only_where_the_variable_says(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, sample_zips: Path
) -> None:
    # A shared/data/cifar10 above the working directory is found when the variable is unset...
    layout = tmp_path / "project" / "shared" / "data" / "cifar10"
    layout.mkdir(parents=True)
    shutil.copyfile(sample_zips / "test.zip", layout / "test.zip")
    work = tmp_path / "project" / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("DECONVVIZ_CIFAR10", raising=False)
    assert find_cifar10() == layout
    # ...but a set variable is the only place looked: an empty folder hides the data.
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("DECONVVIZ_CIFAR10", str(empty))
    assert find_cifar10() is None
    with pytest.raises(FileNotFoundError, match=r"set DECONVVIZ_CIFAR10.*default_sample\(\)"):
        load_cifar10("test")
    monkeypatch.setenv("DECONVVIZ_CIFAR10", str(sample_zips))
    assert find_cifar10() == sample_zips


def test_load_cifar10_reads_the_zip_layout(sample_zips: Path) -> None:
    images, labels, classes = load_cifar10("test", limit=200, root=sample_zips)
    assert images.shape == (200, 3, 32, 32) and images.dtype == torch.uint8
    assert tuple(classes) == CIFAR10_CLASSES
    # Round-robin over the classes: 200 images hold 20 of each, in class order.
    assert Counter(labels.tolist()) == dict.fromkeys(range(10), 20)
    assert labels[:10].tolist() == list(range(10))


def test_load_cifar10_says_which_file_is_missing(tmp_path: Path) -> None:
    (tmp_path / "test.zip").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"train\.zip is not in .*set DECONVVIZ_CIFAR10"):
        load_cifar10("train", root=tmp_path)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda root: load_cifar10("validation", root=root), "split must be 'train' or 'test'"),
        (lambda root: load_cifar10("test", limit=-1, root=root), "limit must be None or an int >= 0"),
        (lambda root: load_cifar10("test", limit=2.5, root=root), "limit must be None or an int >= 0"),
        (lambda root: ZipImages(root / "test.zip", limit=-3), "limit must be None or an int >= 0"),
        (lambda root: ImageFiles(root, limit=True), "limit must be None or an int >= 0"),
        (lambda root: ImageFiles(root, transform="resize"), "transform must be None or a callable"),
        (lambda root: ZipImages(root / "test.zip", transform=32), "transform must be None or a callable"),
        (lambda root: default_transform(0), "size must be an int >= 1, got 0"),
    ],
)
def test_data_arguments_are_checked_before_the_files(tmp_path: Path, call: Callable[[Path], Any], message: str) -> None:
    # The folder does not exist: an error about the argument proves it was checked first.
    with pytest.raises((ValueError, TypeError), match=message):
        call(tmp_path / "nowhere")


def test_training_refuses_too_few_steps_before_reading_data(no_cifar10: Path, no_reads: None) -> None:
    with pytest.raises(ValueError, match=r"epochs=1 over 100 images .* make 0 optimizer steps"):
        train_default_model(epochs=1, limit=100, batch_size=256, log=False)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"epochs": 0}, "epochs must be an int >= 1, got 0"),
        ({"epochs": 2.0}, "epochs must be an int >= 1, got 2.0"),
        ({"batch_size": -8}, "batch_size must be an int >= 1, got -8"),
        ({"lr": 0.0}, "lr must be a finite number > 0, got 0.0"),
        ({"lr": float("nan")}, "lr must be a finite number > 0, got nan"),
        ({"limit": 0}, "limit must be an int >= 1, got 0"),
        ({"random_state": "0"}, "random_state must be an int, got '0'"),
        ({"first_kernel": 4}, "first_kernel must be odd"),
        ({"first_stride": 0}, "first_stride must be an int >= 1, got 0"),
        ({"renormalize": -0.1}, "renormalize must be None or a finite number > 0, got -0.1"),
        ({"device": "gpu"}, "device must be 'cpu', 'cuda', 'cuda:N'..., got 'gpu'"),
    ],
)
def test_training_checks_every_argument_before_reading_data(
    no_cifar10: Path, no_reads: None, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        train_default_model(log=False, **kwargs)


def test_training_seed_is_the_deprecated_spelling_of_random_state(no_cifar10: Path, no_reads: None) -> None:
    with pytest.warns(DeprecationWarning, match="use random_state="), pytest.raises(ValueError, match="random_state"):
        train_default_model(log=False, seed="0")  # type: ignore[arg-type]


def test_training_checks_checkpoints_type(no_cifar10: Path, no_reads: None) -> None:
    with pytest.raises(TypeError, match="checkpoints must be None or a list"):
        train_default_model(log=False, checkpoints=())  # type: ignore[arg-type]


def test_training_without_data_names_both_zips_and_the_variable(no_cifar10: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"train\.zip and test\.zip not found .*DECONVVIZ_CIFAR10"):
        train_default_model(epochs=1, log=False)


def test_training_command_line_fails_fast(
    no_cifar10: Path, no_reads: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        train_module.main(["--out", str(tmp_path / "missing" / "w.pt")])
    assert exit_info.value.code == 2 and "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        train_module.main(["--out", str(tmp_path / "w.pt"), "--epochs", "0"])
    assert exit_info.value.code == 2 and "epochs must be an int >= 1" in capsys.readouterr().err


def test_training_runs_end_to_end_on_the_shipped_sample(sample_zips: Path) -> None:
    """The training code, not the numbers: 4 steps on 64 shipped images, evaluated on 100 others."""
    with zipfile.ZipFile(_sample_zip()) as sample, zipfile.ZipFile(sample_zips / "test.zip", "w") as test:
        for name in sample.namelist()[::10]:
            test.writestr(f"test/{name}", sample.read(name))
    checkpoints: list[nn.Module] = []
    model, metrics = train_default_model(
        epochs=2, batch_size=32, limit=64, data_root=str(sample_zips), device="cpu", log=False,
        checkpoints=checkpoints,  # type: ignore[arg-type]
    )  # fmt: skip
    assert not model.training and not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert metrics["train_images"] == 64 and metrics["epochs"] == 2 and 0.0 <= metrics["test_accuracy"] <= 1.0
    assert len(checkpoints) == 2


@pytest.mark.skipif(
    find_cifar10() is None,
    reason="CIFAR-10's JPEG zips are not here (a fresh clone): set DECONVVIZ_CIFAR10 to the folder with test.zip",
)
def test_the_shipped_sample_is_the_head_of_the_real_test_set(sample_zips: Path) -> None:
    """The shipped 1,000 images are the first 100 of each class of CIFAR-10's test.zip, byte for byte."""
    folder = find_cifar10()
    assert folder is not None
    with zipfile.ZipFile(_sample_zip()) as sample, zipfile.ZipFile(folder / "test.zip") as real:
        names = sample.namelist()
        assert len(names) == 1000
        assert all(sample.read(name) == real.read(f"test/{name}") for name in names)
    real_images, real_labels, _ = load_cifar10("test", limit=1000)
    shipped_images, shipped_labels, _ = load_cifar10("test", root=sample_zips)
    assert torch.equal(real_images, shipped_images) and torch.equal(real_labels, shipped_labels)
