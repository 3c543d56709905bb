"""``deconvviz rf`` and model loading, end to end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision

from captum_deconvviz.cli import main
from captum_deconvviz.model_loading import ModelLoadError, load_model


def test_rf_prints_the_vgg16_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rf", "--model", "torchvision:vgg16", "--input-size", "3", "224", "224"]) == 0
    out = capsys.readouterr().out
    pool5 = next(line for line in out.splitlines() if line.startswith("features.30 "))
    assert pool5.split()[1:] == ["MaxPool2d", "7x7", "212x212", "32x32", "(-90,", "-90)", "-"]


def test_rf_one_layer_verified_and_markdown(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(
            ["rf", "--model", "torchvision:resnet18", "--input-size", "3", "96", "96", "--layer", "layer2", "--verify"]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "size 99x99, stride 8x8" in out
    assert out.splitlines()[-1].startswith("verified: the probe's gradient support of the probed units")
    assert main(["rf", "--model", "torchvision:alexnet", "--markdown"]) == 0
    assert capsys.readouterr().out.startswith("| layer | type | map | size | stride | offset |")


def test_rf_errors_are_one_line_with_exit_status_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rf", "--model", "torchvision:vgg17"]) == 2
    assert "torchvision has no model 'vgg17'" in capsys.readouterr().err
    assert main(["rf", "--model", "torchvision:vgg11", "--layer", "features.99"]) == 2
    assert "is not a module of the model" in capsys.readouterr().err


def test_console_script_runs() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "captum_deconvviz.cli",
            "rf",
            "--model",
            "torchvision:alexnet",
            "--layer",
            "features.12",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "195x195" in result.stdout


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit is deprecated in torch 2.14, still supported
def test_state_dict_loads_with_arch_and_code_needs_trust(tmp_path: Path) -> None:
    torch.manual_seed(3)
    model = torchvision.models.alexnet()
    weights = tmp_path / "alexnet.pth"
    torch.save(model.state_dict(), weights)
    loaded = load_model(str(weights), arch="torchvision:alexnet")
    assert torch.equal(loaded.features[0].weight, model.features[0].weight) and not loaded.training
    loaded = load_model("torchvision:alexnet", weights=str(weights))
    assert torch.equal(loaded.classifier[1].weight, model.classifier[1].weight)
    with pytest.raises(ModelLoadError, match="--trust-code"):
        load_model(str(weights))
    scripted = tmp_path / "net.ts"
    torch.jit.script(torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3))).save(str(scripted))
    with pytest.raises(ModelLoadError, match="run on loading"):
        load_model(str(scripted))
    assert isinstance(load_model(str(scripted), trust_code=True), torch.jit.ScriptModule)
    with pytest.raises(ModelLoadError, match="do not fit the architecture"):
        load_model(str(weights), arch="torchvision:vgg11")


def test_offline_download_gives_a_clear_message(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*_args: object, **_kwargs: object) -> None:
        raise OSError("Name or service not known")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(ModelLoadError, match="could not download the DEFAULT weights of torchvision:alexnet"):
        load_model("torchvision:alexnet", weights="DEFAULT")


def test_factory_specs() -> None:
    model = load_model("torchvision.models:resnet18")
    assert isinstance(model, torchvision.models.ResNet)
    with pytest.raises(ModelLoadError, match="cannot import"):
        load_model("no_such_module:f")
    with pytest.raises(ModelLoadError, match="cannot read model spec"):
        load_model("resnet18")


def test_rf_channel_gives_one_channels_field(capsys: pytest.CaptureFixture[str]) -> None:
    # DenseNet's first dense block: channel 0 is the block's input, passed through (a smaller field).
    argv = ["rf", "--model", "torchvision:densenet121", "--input-size", "3", "64", "64"]
    assert main([*argv, "--layer", "features.denseblock1", "--channel", "0"]) == 0
    first = capsys.readouterr().out
    assert main([*argv, "--layer", "features.denseblock1"]) == 0
    whole = capsys.readouterr().out
    assert "size 11x11" in first and "size 59x59" in whole  # + 6 dense layers x 3x3 at stride 4
    assert main([*argv, "--channel", "0"]) == 2
    assert "--channel needs --layer" in capsys.readouterr().err
    assert main([*argv, "--layer", "features.denseblock1", "--channel", "-1"]) == 2
    assert "--channel must be >= 0, got -1" in capsys.readouterr().err


def test_timm_specs_build_random_init_models_and_check_their_names(tmp_path: Path) -> None:
    timm = pytest.importorskip("timm", reason="timm is a test extra")
    model = load_model("timm:resnet10t")
    assert not model.training and type(model).__name__ == "ResNet"
    torch.manual_seed(0)  # the spec's seed: the same weights as timm's own random init after it
    expected = timm.create_model("resnet10t", pretrained=False)
    ours, theirs = model.state_dict(), expected.state_dict()
    assert list(ours) == list(theirs) and all(torch.equal(ours[k], theirs[k]) for k in ours)
    weights = tmp_path / "w.pt"
    torch.save({k: v + 1 for k, v in expected.state_dict().items()}, weights)
    loaded = load_model("timm:resnet10t", weights=str(weights))
    assert torch.equal(loaded.conv1[0].weight, expected.conv1[0].weight + 1)
    with pytest.raises(ModelLoadError, match=r"timm has no model 'resnet9000'; did you mean: resnet\d"):
        load_model("timm:resnet9000")
    with pytest.raises(ModelLoadError, match="give DEFAULT .* or a state_dict file"):
        load_model("timm:resnet10t", weights="IMAGENET1K_V1")


def test_timm_offline_download_gives_a_clear_message(monkeypatch: pytest.MonkeyPatch) -> None:
    timm = pytest.importorskip("timm", reason="timm is a test extra")
    real = timm.create_model

    def offline(name: str, pretrained: bool = False, **kwargs: object) -> torch.nn.Module:
        if pretrained:
            raise OSError("We couldn't connect to 'https://huggingface.co'")
        return real(name, pretrained=False, **kwargs)

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(ModelLoadError, match="could not load timm's pretrained weights of timm:resnet10t"):
        load_model("timm:resnet10t", weights="DEFAULT")


def test_a_factory_in_the_working_folder_is_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mynet_in_cwd.py").write_text(
        "import torch\n\ndef build():\n    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())\n"
    )
    monkeypatch.chdir(tmp_path)
    path = list(sys.path)
    model = load_model("mynet_in_cwd:build")
    assert isinstance(model[0], torch.nn.Conv2d) and sys.path == path  # the folder is not left on the path
    sys.modules.pop("mynet_in_cwd", None)
    with pytest.raises(ModelLoadError, match=r"no_such_net\.py must be in the working folder or on PYTHONPATH"):
        load_model("no_such_net:build")
