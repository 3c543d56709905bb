"""Turn a model specification (as the CLI takes it) into an ``nn.Module`` in eval mode.

Specifications:

* ``"torchvision:NAME"``: a torchvision architecture. ``weights=None`` gives random
  weights (seeded), ``"DEFAULT"`` (or any torchvision weights name) downloads
  pretrained ones, a file path loads a state_dict.
* ``"timm:NAME"``: a timm architecture (timm is optional: ``pip install timm``), with
  ``weights`` as for torchvision (``"DEFAULT"`` downloads timm's pretrained weights).
* ``"module.path:factory"``: calls ``factory()`` from an importable module, or from a file
  ``module.py`` in the working folder (searched last, as ``python -c`` would find it).
* a file path: a state_dict (with ``arch`` naming the architecture, loaded with
  ``torch.load(..., weights_only=True)``), or, only with ``trust_code=True``, a
  TorchScript archive or a pickled model. Those two are code: loading them runs
  whatever their author put in them, so they are refused unless asked for.

:func:`check_model_spec` checks a specification without loading anything (the CLI runs it
with its other argument checks, before any work); :func:`load_model` runs it first too.
"""

from __future__ import annotations

import difflib
import importlib
import pickle
import sys
import warnings
import zipfile
from pathlib import Path
from typing import Any, cast

import torch
import torchvision
from torch import nn

__all__ = ["ModelLoadError", "check_model_spec", "load_model"]

#: Suffixes that make a spec a file even before it exists (so a typo says "does not exist").
MODEL_FILE_SUFFIXES = (".pt", ".pth", ".ts", ".bin")


class ModelLoadError(ValueError):
    """The model specification cannot be turned into a model."""


def _is_file_spec(spec: str) -> bool:
    return Path(spec).suffix in MODEL_FILE_SUFFIXES or Path(spec).exists()


def _looks_like_path(value: str) -> bool:
    """A ``--weights`` value that names a file rather than torchvision weights (``DEFAULT``, ``IMAGENET1K_V1``)."""
    return Path(value).suffix in (*MODEL_FILE_SUFFIXES, ".safetensors") or "/" in value or "\\" in value


def _file_kind(path: Path) -> str:
    """What a model file holds, told from its first bytes and zip listing alone: nothing in it is run.

    Returns ``"torchscript"``, ``"torch.save"`` (a state_dict or a pickled model, zip or the
    pre-1.6 bare pickle) or ``"other"``.
    """
    if not zipfile.is_zipfile(path):
        with path.open("rb") as file:
            return "torch.save" if file.read(1) == b"\x80" else "other"  # a pickle's first byte
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    return "torchscript" if any("/code/" in name or name.endswith("/constants.pkl") for name in names) else "torch.save"


def check_model_spec(spec: str, weights: str | None = None, arch: str | None = None, trust_code: bool = False) -> None:
    """Check a model specification without loading or importing anything.

    Files must exist and be files, torchvision names must exist, options must apply to the
    kind of spec given, and a file without ``arch`` needs ``trust_code``. What only loading
    can tell (a factory that fails, weights that do not fit) is left to :func:`load_model`.

    Args:
        spec: as :func:`load_model` takes it.
        weights: as :func:`load_model` takes it.
        arch: as :func:`load_model` takes it.
        trust_code: as :func:`load_model` takes it.

    Raises:
        ModelLoadError: the first thing wrong, naming the option (``--model``, ``--weights``,
            ``--arch``, ``--trust-code``) and what was expected.

    Example:
        >>> check_model_spec("torchvision:alexnet")
        >>> check_model_spec("default", weights="DEFAULT")
        Traceback (most recent call last):
        ...
        captum_deconvviz.model_loading.ModelLoadError: --weights does not apply to the default model
    """
    _check_spec(spec, weights, arch, trust_code, "--model")


def _check_spec(spec: str, weights: str | None, arch: str | None, trust_code: bool, option: str) -> None:
    if not isinstance(spec, str) or not spec.strip():
        raise ModelLoadError(f"{option} must be a non-empty model spec, got {spec!r}")
    # An empty path is the working folder to pathlib: refused rather than read as one.
    if weights is not None and not weights.strip():
        raise ModelLoadError(f"--weights is empty ({weights!r}): give DEFAULT (or a weights name) or a state_dict file")
    if arch is not None and not arch.strip():
        raise ModelLoadError(f"--arch is empty ({arch!r}): give an architecture spec, such as torchvision:resnet18")
    is_file = spec != "default" and _is_file_spec(spec)
    if arch is not None and not is_file:
        raise ModelLoadError(f"--arch applies to a state_dict file given as --model, not to --model {spec}")
    if spec == "default":
        if weights is not None:
            raise ModelLoadError("--weights does not apply to the default model")
    elif is_file:
        _check_file_spec(Path(spec), weights, arch, trust_code)
    elif spec.startswith("torchvision:"):
        _check_torchvision(spec.split(":", 1)[1], weights, option)
    elif spec.startswith("timm:"):
        _check_timm(spec.split(":", 1)[1], weights, option)
    elif ":" in spec:
        module_name, _, attr = spec.partition(":")
        if not module_name or not attr.isidentifier():
            raise ModelLoadError(f"{option} {spec!r} is not 'module.path:factory' (a module and a function name)")
        if weights is not None:
            raise ModelLoadError(
                "--weights applies to torchvision and timm models; for a factory, load weights inside it"
            )
    else:
        raise ModelLoadError(
            f"{option} {spec!r}: cannot read model spec; use 'default', 'torchvision:NAME', 'timm:NAME', "
            "'module.path:factory' or a file path"
        )


def _check_file_spec(path: Path, weights: str | None, arch: str | None, trust_code: bool) -> None:
    if not path.exists():
        raise ModelLoadError(f"--model file {path} does not exist")
    if not path.is_file():
        raise ModelLoadError(
            f"--model {path} is a folder; give a model file (.pt/.pth), 'default', 'torchvision:NAME' or "
            "'module.path:factory'"
        )
    if weights is not None:
        raise ModelLoadError(f"--weights does not apply to --model {path}: the file holds its own weights")
    if arch is not None:
        if _is_file_spec(arch):
            raise ModelLoadError(f"--arch must name an architecture ('torchvision:NAME', ...), not a file: {arch!r}")
        _check_spec(arch, None, None, False, "--arch")
        return
    if trust_code:
        return
    kind = _file_kind(path)
    if kind == "torchscript":
        raise ModelLoadError(
            f"--model {path} is a TorchScript archive: those are code and run on loading; pass --trust-code "
            "only for files you trust"
        )
    if kind == "torch.save":
        raise ModelLoadError(
            f"--model {path} is a torch.save file: pass --arch SPEC to load it as a state_dict into that "
            "architecture, or, for a pickled model (code that runs on loading), --trust-code if you trust the file"
        )
    raise ModelLoadError(f"--model {path} is not a model file (neither a torch.save file nor a TorchScript archive)")


def _check_torchvision(name: str, weights: str | None, option: str) -> None:
    available = torchvision.models.list_models()
    if name not in available:
        raise ModelLoadError(
            f"{option} torchvision:{name}: torchvision has no model {name!r}; known: "
            f"{', '.join(sorted(available)[:12])}, ..."
        )
    _check_weights_file(weights)


def _check_weights_file(weights: str | None) -> None:
    if weights is not None and _looks_like_path(weights):
        if not Path(weights).exists():
            raise ModelLoadError(f"--weights file {weights!r} does not exist")
        if not Path(weights).is_file():
            raise ModelLoadError(f"--weights {weights} is a folder; give a state_dict file (.pt/.pth)")


def _import_timm(option: str, name: str) -> Any:
    try:
        import timm
    except ImportError:
        raise ModelLoadError(f"{option} timm:{name}: timm is not installed; pip install timm") from None
    return timm


def _check_timm(name: str, weights: str | None, option: str) -> None:
    timm = _import_timm(option, name)
    if not timm.is_model(name):
        similar = difflib.get_close_matches(name, timm.list_models(), n=6)
        hint = f"; did you mean: {', '.join(similar)}" if similar else "; timm.list_models() lists them"
        raise ModelLoadError(f"{option} timm:{name}: timm has no model {name!r}{hint}")
    if weights is not None and not _looks_like_path(weights) and weights != "DEFAULT":
        raise ModelLoadError(
            f"--weights {weights!r} for timm:{name}: give DEFAULT (timm's pretrained weights, downloaded) or a "
            "state_dict file"
        )
    _check_weights_file(weights)


def _timm(name: str, weights: str | None) -> nn.Module:
    timm = _import_timm("--model", name)
    if weights is None or Path(weights).is_file():
        torch.manual_seed(0)
        model = timm.create_model(name, pretrained=False)
        if weights is not None:
            _load_state_dict(model, Path(weights), "--weights")
        return cast(nn.Module, model)
    try:
        return cast(nn.Module, timm.create_model(name, pretrained=True))
    # The hub's errors without a network are of many kinds (OSError, its own, ValueError...).
    except Exception as err:
        raise ModelLoadError(
            f"could not load timm's pretrained weights of timm:{name} ({type(err).__name__}: "
            f"{' '.join(str(err).split())[:200]}). Without internet access, download them once elsewhere (timm "
            "caches them in the Hugging Face cache, ~/.cache/huggingface) or pass --weights PATH to a saved "
            "state_dict."
        ) from None


def _torchvision(name: str, weights: str | None) -> nn.Module:
    if weights is None or Path(weights).is_file():
        torch.manual_seed(0)
        model = torchvision.models.get_model(name, weights=None)
        if weights is not None:
            _load_state_dict(model, Path(weights), "--weights")
        return model
    try:
        return torchvision.models.get_model(name, weights=weights)
    except (ValueError, KeyError) as err:
        raise ModelLoadError(f"unknown weights {weights!r} for torchvision:{name}: {err}") from None
    except (OSError, RuntimeError) as err:  # urllib's URLError is an OSError
        raise ModelLoadError(
            f"could not download the {weights} weights of torchvision:{name} ({type(err).__name__}: {err}). "
            "Without internet access, download them once elsewhere (torchvision caches them in "
            "~/.cache/torch/hub/checkpoints) or pass --weights PATH to a saved state_dict."
        ) from None


def _import(module_name: str) -> Any:
    """Import ``module_name``; if it is not importable but is a file or package in the working
    folder, import it from there (the folder searched last, so it shadows nothing installed)."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        top = module_name.split(".")[0]
        here = Path.cwd()
        if err.name != top or not ((here / f"{top}.py").is_file() or (here / top / "__init__.py").is_file()):
            raise
    sys.path.append(str(here))
    try:
        return importlib.import_module(module_name)
    finally:
        sys.path.remove(str(here))


def _factory(spec: str) -> nn.Module:
    module_name, _, attr = spec.partition(":")
    try:
        module = _import(module_name)
    except ImportError as err:
        missing = isinstance(err, ModuleNotFoundError)
        where = f"; {module_name.split('.')[0]}.py must be in the working folder or on PYTHONPATH" if missing else ""
        raise ModelLoadError(f"--model {spec}: cannot import {module_name!r}: {err}{where}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ModelLoadError(f"--model {spec}: {module_name!r} has no callable {attr!r}")
    model = factory()
    if not isinstance(model, nn.Module):
        raise ModelLoadError(f"--model {spec}: {attr}() returned a {type(model).__name__}, not an nn.Module")
    return model


def _load_state_dict(model: nn.Module, path: Path, option: str) -> None:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ModelLoadError(
            f"{option} {path} is not a state_dict that loads with weights_only=True ({type(err).__name__}: {err}). "
            "TorchScript archives and pickled models need --trust-code (see docs/cli.md)."
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelLoadError(f"{option} {path} holds a {type(state).__name__}, not a state_dict")
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ModelLoadError(f"the weights in {option} {path} do not fit the architecture: {err}") from None


def load_model(spec: str, weights: str | None = None, arch: str | None = None, trust_code: bool = False) -> nn.Module:
    """Build the model that ``spec`` names, in eval mode.

    Args:
        spec: ``"default"``, ``"torchvision:NAME"``, ``"timm:NAME"``, ``"module.path:factory"``
            or a path to a ``.pt``/``.pth`` file.
        weights: for ``torchvision:NAME`` and ``timm:NAME``: None (random, seeded), a weights
            name such as ``"DEFAULT"`` (downloads; timm takes ``"DEFAULT"`` only), or a
            state_dict path.
        arch: for a state_dict file, the architecture spec to load it into.
        trust_code: allow TorchScript archives and pickled models, which run code.

    Returns:
        The model, in eval mode.

    Raises:
        ModelLoadError: the spec is wrong (see :func:`check_model_spec`, run first), or
            the file, factory or weights it names cannot give a model.

    Example:
        >>> load_model("torchvision:alexnet").training
        False
    """
    check_model_spec(spec, weights, arch, trust_code)
    if spec == "default":
        from .zoo import load_default_model

        return load_default_model()
    if _is_file_spec(spec):
        return _from_file(Path(spec), arch).eval()
    if spec.startswith("torchvision:"):
        return _torchvision(spec.split(":", 1)[1], weights).eval()
    if spec.startswith("timm:"):
        return _timm(spec.split(":", 1)[1], weights).eval()
    return _factory(spec).eval()


def _from_file(path: Path, arch: str | None) -> nn.Module:
    """A state_dict into ``arch``, else (``trust_code`` was checked) a TorchScript archive or a pickled model."""
    if arch is not None:
        model = load_model(arch)
        _load_state_dict(model, path, "--model")
        return model
    try:
        with warnings.catch_warnings():  # torch 2.14 deprecates torch.jit; nothing the user can act on
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.* is deprecated", category=FutureWarning)
            return torch.jit.load(str(path), map_location="cpu")
    except RuntimeError:
        pass  # not TorchScript: a pickled model, or not a model at all
    # A file the user chose to trust can still be broken: any of these is the file's fault, not ours.
    broken = (pickle.UnpicklingError, EOFError, RuntimeError, AttributeError, ImportError, zipfile.BadZipFile)
    try:
        loaded: Any = torch.load(path, map_location="cpu", weights_only=False)
    except broken as err:
        reason = " ".join(str(err).split())[:300]
        raise ModelLoadError(
            f"--model {path} cannot be loaded as a TorchScript archive or a pickled model "
            f"({type(err).__name__}: {reason})"
        ) from None
    if not isinstance(loaded, nn.Module):
        raise ModelLoadError(f"{path} holds a {type(loaded).__name__}; pass --arch to load a state_dict")
    return loaded
