"""Turn a model specification (as the CLI takes it) into an ``nn.Module`` in eval mode.

Specifications:

* ``"torchvision:NAME"``: a torchvision architecture. ``weights=None`` gives random
  weights (seeded), ``"DEFAULT"`` (or any torchvision weights name) downloads
  pretrained ones, a file path loads a state_dict.
* ``"module.path:factory"``: calls ``factory()`` from an importable module.
* a file path: a state_dict (with ``arch`` naming the architecture, loaded with
  ``torch.load(..., weights_only=True)``), or, only with ``trust_code=True``, a
  TorchScript archive or a pickled model. Those two are code: loading them runs
  whatever their author put in them, so they are refused unless asked for.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

__all__ = ["ModelLoadError", "load_model"]


class ModelLoadError(ValueError):
    """The model specification cannot be turned into a model."""


def _torchvision(name: str, weights: str | None) -> nn.Module:
    available = torchvision.models.list_models()
    if name not in available:
        raise ModelLoadError(f"torchvision has no model {name!r}; known: {', '.join(sorted(available)[:12])}, ...")
    if weights is None or Path(weights).is_file():
        torch.manual_seed(0)
        model = torchvision.models.get_model(name, weights=None)
        if weights is not None:
            _load_state_dict(model, Path(weights))
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


def _factory(spec: str) -> nn.Module:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ModelLoadError(f"cannot import {module_name!r} for model {spec!r}: {err}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ModelLoadError(f"{module_name!r} has no callable {attr!r}")
    model = factory()
    if not isinstance(model, nn.Module):
        raise ModelLoadError(f"{spec}() returned a {type(model).__name__}, not an nn.Module")
    return model


def _load_state_dict(model: nn.Module, path: Path) -> None:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ModelLoadError(
            f"{path} is not a state_dict that loads with weights_only=True ({type(err).__name__}: {err}). "
            "TorchScript archives and pickled models need --trust-code (see docs/cli.md)."
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelLoadError(f"{path} holds a {type(state).__name__}, not a state_dict")
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ModelLoadError(f"the weights in {path} do not fit the architecture: {err}") from None


def load_model(spec: str, weights: str | None = None, arch: str | None = None, trust_code: bool = False) -> nn.Module:
    """Build the model that ``spec`` names, in eval mode.

    Args:
        spec: ``"default"``, ``"torchvision:NAME"``, ``"module.path:factory"`` or a path
            to a ``.pt``/``.pth`` file.
        weights: for ``torchvision:NAME``: None (random), a torchvision weights name
            such as ``"DEFAULT"`` (downloads), or a state_dict path.
        arch: for a state_dict file, the architecture spec to load it into.
        trust_code: allow TorchScript archives and pickled models, which run code.

    Returns:
        The model, in eval mode.

    Example:
        >>> load_model("torchvision:alexnet").training
        False
    """
    if not isinstance(spec, str) or not spec:
        raise ModelLoadError(f"model must be a non-empty string, got {spec!r}")
    if spec == "default":
        from .zoo import load_default_model

        if weights is not None:
            raise ModelLoadError("--weights does not apply to the default model")
        return load_default_model()
    path = Path(spec)
    if path.suffix in (".pt", ".pth", ".ts", ".bin") or path.is_file():
        if not path.is_file():
            raise ModelLoadError(f"model file {spec!r} does not exist")
        return _from_file(path, arch, trust_code).eval()
    if spec.startswith("torchvision:"):
        return _torchvision(spec.split(":", 1)[1], weights).eval()
    if ":" in spec:
        if weights is not None:
            raise ModelLoadError("--weights applies to torchvision models; for a factory, load weights inside it")
        return _factory(spec).eval()
    raise ModelLoadError(
        f"cannot read model spec {spec!r}: use 'default', 'torchvision:NAME', 'module.path:factory' or a file path"
    )


def _from_file(path: Path, arch: str | None, trust_code: bool) -> nn.Module:
    if arch is not None:
        model = load_model(arch)
        _load_state_dict(model, path)
        return model
    if not trust_code:
        raise ModelLoadError(
            f"{path}: pass --arch to load it as a state_dict into that architecture. If it is a TorchScript "
            "archive or a pickled model, those are code and run on loading: pass --trust-code only for files "
            "you trust."
        )
    try:
        return torch.jit.load(str(path), map_location="cpu")
    except RuntimeError:
        pass
    loaded: Any = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(loaded, nn.Module):
        raise ModelLoadError(f"{path} holds a {type(loaded).__name__}; pass --arch to load a state_dict")
    return loaded
