"""The ``deconvviz`` command's argument checks: everything the command was given, before any work.

:func:`check_arguments` runs before a model is loaded, a folder scanned or a file written:
numbers and their ranges, the normalization statistics, devices, the model spec (see
:func:`~captum_deconvviz.model_loading.check_model_spec`), input paths (they exist and are
of the right kind) and output paths (they can be created and written: the folders the
command would create are created, and a probe file proves they take a file, since
``os.access`` answers yes to root even where nothing can be written). Then, once the model
is loaded, :func:`check_model_fits` runs it on one blank image of the size the data will
have, and :func:`check_result_model` and :func:`check_result_data` hold a ``--result``
against the model and the data.
Each failure is a :class:`CommandLineError` that names the option, the value and what was
expected; ``cli.main`` prints it as one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .model_loading import check_model_spec

__all__ = [
    "FIGURE_SUFFIXES",
    "LIMITS",
    "NORMALIZE_PRESETS",
    "CommandLineError",
    "Normalization",
    "check_arguments",
    "check_model_fits",
    "check_result_data",
    "check_result_model",
    "image_size",
    "normalization",
    "remove_empty",
]

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
#: ``--normalize`` presets: per-channel (mean, std) of images scaled to [0, 1]. "cifar10" is
#: captum_deconvviz.zoo.CIFAR10_MEAN/STD (tests/test_cli_normalize.py keeps the two equal).
NORMALIZE_PRESETS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}

#: Option -> (least, most). The upper bounds stop values that would only exhaust the machine:
#: ``--k 2**40`` allocates channels x k records per layer, ``--batch-size 2**40`` a list of
#: that many indices in torch's batch sampler, ``--image-size 10**5`` 30 GB per decoded
#: image, ``--workers 10**5`` as many processes; a comparison figure has one row per image.
MAX_SIDE = 4096
LIMITS: dict[str, tuple[int, int | None]] = {
    "k": (1, 10_000),
    "batch_size": (1, 65_536),
    "limit": (1, None),
    "image_size": (1, MAX_SIDE),
    "workers": (0, 128),
    "images": (1, 64),
    "channel": (0, None),
}
#: What matplotlib writes (tests/test_cli_misuse.py keeps this a subset of its formats).
FIGURE_SUFFIXES = (".png", ".pdf", ".svg", ".jpg", ".jpeg", ".eps", ".ps", ".tif", ".tiff", ".webp")


class CommandLineError(ValueError):
    """An argument of the command is wrong; the message names the option, the value and what was expected."""


@dataclass(frozen=True)
class Normalization:
    """How the command normalizes images: ``(image - mean) / std`` per RGB channel, images in [0, 1].

    Attributes:
        preset: ``"cifar10"``, ``"imagenet"``, ``"none"``, or ``"custom"`` when ``--mean`` or
            ``--std`` overrode the preset's values.
        mean: three per-channel means.
        std: three per-channel standard deviations.
    """

    preset: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def to_meta(self) -> dict[str, Any]:
        """Plain values for ``MiningResult.meta["normalization"]`` (saved with the result).

        Returns:
            ``{"preset": str, "mean": [3 floats], "std": [3 floats]}``.

        Example:
            >>> Normalization("none", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)).to_meta()["preset"]
            'none'
        """
        return {"preset": self.preset, "mean": list(self.mean), "std": list(self.std)}


def _channel_values(option: str, values: Sequence[str], low: float, high: float) -> tuple[float, float, float]:
    """Three numbers from ``--mean``/``--std`` (spaces or commas), each in ``(low, high]`` or ``[low, high]``."""
    tokens = " ".join(values).replace(",", " ").split()
    if len(tokens) != 3:
        raise CommandLineError(
            f"{option} needs 3 numbers, one per RGB channel, got {len(tokens)}: {' '.join(tokens)!r}"
        )
    try:
        numbers = tuple(float(token) for token in tokens)
    except ValueError:
        raise CommandLineError(f"{option} needs 3 numbers, one per RGB channel, got {' '.join(tokens)!r}") from None
    strict = option == "--std"  # a std of 0 would divide by zero
    for number in numbers:
        if not math.isfinite(number) or number > high or (number <= low if strict else number < low):
            bound = f"in ({low:g}, {high:g}]" if strict else f"in [{low:g}, {high:g}]"
            raise CommandLineError(
                f"{option} values must be {bound} for images scaled to [0, 1] (e.g. ImageNet's "
                f"{' '.join(map(str, NORMALIZE_PRESETS['imagenet'][option == '--std']))}), got {number:g}"
            )
    return numbers  # type: ignore[return-value]


def normalization(args: argparse.Namespace) -> Normalization:
    """The command's normalization: ``--normalize`` (default by model) overridden by ``--mean``/``--std``.

    Args:
        args: the parsed command line (``model``, and ``normalize``/``mean``/``std`` where given).

    Returns:
        The statistics the command's images are normalized with.

    Example:
        >>> normalization(argparse.Namespace(model="default")).preset
        'cifar10'
    """
    preset = getattr(args, "normalize", None) or ("cifar10" if args.model == "default" else "imagenet")
    mean, std = NORMALIZE_PRESETS[preset]
    custom_mean, custom_std = getattr(args, "mean", None), getattr(args, "std", None)
    if custom_mean is not None:
        mean = _channel_values("--mean", custom_mean, 0.0, 1.0)
    if custom_std is not None:
        std = _channel_values("--std", custom_std, 0.0, 1.0)
    custom = custom_mean is not None or custom_std is not None
    return Normalization("custom" if custom else preset, tuple(mean), tuple(std))  # type: ignore[arg-type]


def image_size(args: argparse.Namespace) -> int:
    """The side images are resized to: ``--image-size``, else 32 for the default model and 224 for others."""
    return int(args.image_size or (32 if args.model == "default" else 224))


def check_arguments(args: argparse.Namespace) -> list[Path]:
    """Check every argument of ``args.command`` before any model, image or file is read.

    Sets ``args.normalization`` (mine, report, compare).

    Args:
        args: the parsed command line.

    Returns:
        The folders the check created for the command's outputs (outermost first), so that a
        command that fails later can remove them again (:func:`remove_empty`).

    Raises:
        CommandLineError: the first wrong argument (also ``ModelLoadError`` for ``--model``).

    Example:
        >>> check_arguments(build_parser().parse_args(["mine", "--k", "0", "--out", "r.pt"]))  # doctest: +SKIP
        Traceback (most recent call last):
        ...
        CommandLineError: --k must be >= 1, got 0
    """
    _check_numbers(args)
    if hasattr(args, "normalize"):  # mine, report, compare
        args.normalization = normalization(args)
    _check_choices(args)
    if getattr(args, "model", None) is not None:
        check_model_spec(args.model, args.weights, args.arch, args.trust_code)
    data = getattr(args, "data", "default-sample")
    if data != "default-sample":
        _check_input("data", data, folder=True)
    if getattr(args, "result", None) is not None:
        _check_input("result", args.result, folder=False)
    created: list[Path] = []
    try:
        _check_outputs(args, created)
    except BaseException:
        remove_empty(created)
        raise
    return created


def _check_numbers(args: argparse.Namespace) -> None:
    for option, (least, most) in LIMITS.items():
        value = getattr(args, option, None)
        if value is None:
            continue
        if value < least:
            raise CommandLineError(f"--{option.replace('_', '-')} must be >= {least}, got {value}")
        if most is not None and value > most:
            raise CommandLineError(f"--{option.replace('_', '-')} must be <= {most}, got {value}")
    target = getattr(args, "target", None)
    if target is not None and target != "predicted" and not target.isdigit():
        raise CommandLineError(f"--target must be a class index (an int >= 0) or 'predicted', got {target!r}")
    size = getattr(args, "input_size", None)
    if size is not None and (len(size) < 2 or min(size) < 1):
        raise CommandLineError(f"--input-size needs C H W (each >= 1), got {' '.join(map(str, size))}")
    if size is not None and max(size[1:]) > MAX_SIDE:
        raise CommandLineError(f"--input-size sides must be <= {MAX_SIDE}, got {' '.join(map(str, size))}")
    if getattr(args, "channel", None) is not None and not getattr(args, "layer", None):
        raise CommandLineError("--channel needs --layer: it picks one channel of that layer")


def _check_choices(args: argparse.Namespace) -> None:
    layers = getattr(args, "layers", None) or []
    twice = sorted({name for name in layers if layers.count(name) > 1})
    if twice:
        raise CommandLineError(f"--layers names {', '.join(twice)} more than once")
    methods = getattr(args, "methods", None)
    if methods is not None:
        from .compare import METHODS

        unknown = [name for name in methods if name not in METHODS]
        if unknown:
            raise CommandLineError(f"--methods: unknown method(s) {unknown}; known: {', '.join(sorted(METHODS))}")
    if getattr(args, "device", None) is not None:
        _check_device(args.device)


def _check_device(value: str) -> None:
    try:
        device = torch.device(value)
    except (RuntimeError, ValueError):
        raise CommandLineError(f"--device {value!r} is not a device: use cpu, cuda, cuda:N or mps") from None
    if device.type == "cpu":
        return
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise CommandLineError(f"--device {value}: CUDA is not available on this machine; use --device cpu")
        if device.index is not None and device.index >= count:
            raise CommandLineError(
                f"--device {value}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}"
            )
        return
    backend = torch.backends.mps if device.type == "mps" else getattr(torch, device.type, None)
    if backend is None or not hasattr(backend, "is_available") or not backend.is_available():
        raise CommandLineError(f"--device {value}: {device.type} is not available on this machine; use --device cpu")


def _check_input(option: str, value: str, folder: bool) -> None:
    path = Path(value)
    if folder and not path.is_dir():
        what = "it is a file" if path.exists() else "no such path"
        raise CommandLineError(
            f"--{option} {value} does not exist or is not a folder ({what}): give a folder of images or default-sample"
        )
    if not folder and not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise CommandLineError(f"--{option} {value} {what}: give a file written by 'deconvviz mine --out'")
    if not os.access(path, os.R_OK | (os.X_OK if folder else 0)):
        raise CommandLineError(f"--{option} {value} cannot be read (permission denied)")


#: Each command's outputs: option -> kind ("file" replaced atomically, "figure", "folder").
_OUTPUTS = {
    "mine": {"out": "file", "checkpoint": "file"},
    "report": {"out": "folder"},
    "demo": {"out": "folder"},
    "compare": {"out": "figure"},
}


def _check_outputs(args: argparse.Namespace, created: list[Path]) -> None:
    for option, kind in _OUTPUTS.get(args.command, {}).items():
        value = getattr(args, option, None)
        if value is None:
            continue
        path = Path(value)
        if kind == "folder":
            if path.exists() and not path.is_dir():
                raise CommandLineError(f"--{option} {value} is a file, but the command writes a folder there")
            _writable_folder(option, value, path, created)
            continue
        if value.endswith(("/", os.sep)) or path.is_dir():
            example = path / ("compare.png" if kind == "figure" else f"{'result' if option == 'out' else 'state'}.pt")
            raise CommandLineError(f"--{option} {value} is a folder; give a file path, such as {example}")
        if kind == "figure" and path.suffix.lower() not in FIGURE_SUFFIXES:
            raise CommandLineError(
                f"--{option} {value} needs a figure suffix, one of {', '.join(FIGURE_SUFFIXES)}; got "
                f"{path.suffix or 'none'}"
            )
        _writable_folder(option, value, path.parent, created)
        if kind == "figure" and path.exists():  # written in place (a "file" is replaced by a rename)
            try:
                path.open("ab").close()  # opening to append changes nothing
            except OSError as err:
                raise CommandLineError(f"--{option} {value} exists and cannot be written ({err.strerror})") from None


def _writable_folder(option: str, value: str, folder: Path, created: list[Path]) -> None:
    """Create ``folder`` as the command would (parents too), then prove it takes a new file."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise CommandLineError(
            f"--{option} {value}: {existing} is a file, not a folder, so nothing can be written under it"
        )
    missing = [p for p in (folder, *folder.parents) if not p.exists()][::-1]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CommandLineError(f"--{option} {value}: cannot create the folder {folder} ({err.strerror})") from None
    finally:
        created.extend(p for p in missing if p.is_dir())
    probe = folder / f".deconvviz-write-check-{os.getpid()}"
    try:
        probe.open("xb").close()
        probe.unlink()
    except OSError as err:
        raise CommandLineError(f"--{option} {value}: the folder {folder} is not writable ({err.strerror})") from None


def remove_empty(folders: Sequence[Path]) -> None:
    """Remove the folders :func:`check_arguments` created, innermost first, where they are still empty.

    Args:
        folders: as :func:`check_arguments` returned them (outermost first).

    Example:
        >>> remove_empty([])
    """
    for folder in reversed(folders):
        with contextlib.suppress(OSError):  # not empty (the command wrote there), or already gone
            folder.rmdir()


def check_model_fits(model: nn.Module, args: argparse.Namespace, layers: Sequence[str] | None) -> None:
    """Run ``model`` on one blank image of the data's size; check the layers and ``--target`` on it.

    The command feeds RGB images of ``image_size(args)`` pixels: a model that takes other
    channels, or that is too small or too large for that size, fails here, before any image is
    read, rather than inside torch during mining.

    Args:
        model: the loaded model (eval mode).
        args: the parsed command line.
        layers: the layers the command will read, or None.

    Raises:
        CommandLineError: naming ``--model``, ``--image-size``, ``--layers`` or ``--target``.

    Example:
        >>> check_model_fits(load_default_model(), args, ["features.1"])  # doctest: +SKIP
    """
    size = image_size(args)
    blank = torch.zeros(1, 3, size, size, dtype=next((p.dtype for p in model.parameters()), torch.float32))
    try:
        with torch.no_grad():
            output = model(blank)
    # What a model raises for an input it cannot take: torch's shape errors, and the asserts and
    # ValueErrors of model code that checks its input size (timm's ViTs). DECONVVIZ_DEBUG=1 shows it.
    except (RuntimeError, AssertionError, ValueError, IndexError, TypeError) as err:
        first = next((m for m in model.modules() if isinstance(getattr(m, "in_channels", None), int)), None)
        reason = f"{type(err).__name__}: {' '.join(str(err).split())[:300] or 'no message'}"
        if first is not None and first.in_channels != 3:
            raise CommandLineError(
                f"--model {args.model} takes {first.in_channels}-channel images, but deconvviz feeds RGB images "
                f"(3 channels, normalized by 3 --mean/--std values): {reason}"
            ) from err
        given = f"--image-size {size}" if args.image_size else f"{size} pixels, the default --image-size for it"
        raise CommandLineError(
            f"--model {args.model} cannot run on 3x{size}x{size} images ({given}): {reason}"
        ) from err
    target = getattr(args, "target", None)
    classes = output.shape[1] if isinstance(output, Tensor) and output.dim() == 2 else None
    if target not in (None, "predicted") and classes is not None and int(target) >= classes:
        raise CommandLineError(
            f"--target {target} is out of range: the model has {classes} classes (0 to {classes - 1})"
        )
    if layers:
        from .mining import layer_activations

        try:
            layer_activations(model, list(layers), blank)
        except ValueError as err:
            raise CommandLineError(f"--layers: {err}") from err


def check_result_model(result: Any, model: nn.Module, args: argparse.Namespace) -> None:
    """Refuse a ``--result`` mined with another model or other layers than the command's.

    Args:
        result: the loaded :class:`~captum_deconvviz.MiningResult`.
        model: the command's model.
        args: the parsed command line.

    Raises:
        CommandLineError: naming ``--result`` and ``--model`` or ``--layers``.

    Example:
        >>> check_result_model(result, model, args)  # doctest: +SKIP
    """
    from .mining import model_fingerprint

    if args.layers and list(args.layers) != list(result.layers):
        raise CommandLineError(
            f"--layers {' '.join(args.layers)} are not the layers of --result {args.result} "
            f"({' '.join(result.layers)}): leave --layers out to report the result's layers"
        )
    if result.fingerprint != model_fingerprint(model):
        raise CommandLineError(
            f"--result {args.result} was mined with another model than --model {args.model} (its weights differ): "
            "give the --model (and --weights) it was mined with"
        )


def check_result_data(result: Any, dataset: Any, args: argparse.Namespace) -> None:
    """Refuse a ``--result`` mined on other data than the command's.

    Records are dataset indices: on other data they would point at other images, or past the
    end. The length is compared here; the images themselves by the result's own
    ``check_data`` (the data fingerprint recorded at mining), where the result has one.

    Args:
        result: the loaded :class:`~captum_deconvviz.MiningResult`.
        dataset: the command's dataset (after ``--limit``).
        args: the parsed command line.

    Raises:
        CommandLineError: naming ``--result``, ``--data`` and ``--limit``.

    Example:
        >>> check_result_data(result, dataset, args)  # doctest: +SKIP
    """
    num_images = len(dataset)
    if result.num_images != num_images:
        limit = f" with --limit {args.limit}" if args.limit is not None else ""
        raise CommandLineError(
            f"--result {args.result} was mined on {result.num_images} images, but --data {args.data}{limit} has "
            f"{num_images}: give the --data and --limit it was mined with"
        )
    check_data = getattr(result, "check_data", None)  # results that record a data fingerprint
    if check_data is not None:
        try:
            check_data(dataset, argname="--data")
        except ValueError as err:
            raise CommandLineError(f"--result {args.result}: {err}") from err
