"""The ``deconvviz`` command's argument checks: everything the command was given, before any work.

:func:`check_arguments` runs before a model is loaded, a folder scanned or a file written:
numbers and their ranges, the normalization statistics, devices, the model spec (see
:func:`~captum_deconvviz.model_loading.check_model_spec`), input paths (they exist and are
of the right kind) and output paths (they can be created and written: the folders the
command would create are created, and a probe file proves they take a file, since
``os.access`` answers yes to root even where nothing can be written). Then, once the model
is loaded, :func:`check_model_fits` runs it on one blank image of the size the data will
have, :func:`check_input_size` holds ``rf --input-size`` against the model's first layer, and
:func:`check_result_options`, :func:`check_result_model` and :func:`check_result_data` hold a
``--result`` against the options, the model and the data. Paths are never empty (``''`` is the
working folder to ``pathlib``, so ``--data ''`` would mine every image under it), and no two
paths of one command are one file: an output never overwrites an input or another output.
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

from .data import IMAGE_SUFFIXES
from .model_loading import check_model_spec

__all__ = [
    "FIGURE_SUFFIXES",
    "LIMITS",
    "MINING_DEFAULTS",
    "NORMALIZE_PRESETS",
    "CommandLineError",
    "Normalization",
    "check_arguments",
    "check_input_size",
    "check_model_fits",
    "check_result_data",
    "check_result_model",
    "check_result_options",
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
#: The options only mining reads, with their defaults. The parser leaves them None so that
#: :func:`check_result_options` can tell one given with ``report --result`` (which mines nothing,
#: so would ignore it) from the default; :func:`check_arguments` fills the defaults in after.
MINING_DEFAULTS: dict[str, Any] = {"k": 9, "unique": "image", "workers": 0}
#: Path options -> what to give instead of an empty value.
_PATH_OPTIONS = {
    "data": "a folder of images or default-sample",
    "out": "a path to write to",
    "checkpoint": "a file path, such as state.pt",
    "result": "a file written by 'deconvviz mine --out'",
    "model": "'default', 'torchvision:NAME', 'module.path:factory' or a model file",
    "weights": "DEFAULT or a state_dict file",
    "arch": "an architecture spec, such as torchvision:resnet18",
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
    _check_not_empty(args)
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
    _check_collisions(args)
    mining = [name for name in MINING_DEFAULTS if name in vars(args)]
    args.mining_options_given = [name for name in mining if getattr(args, name) is not None]
    for name in mining:
        if getattr(args, name) is None:
            setattr(args, name, MINING_DEFAULTS[name])
    created: list[Path] = []
    try:
        _check_outputs(args, created)
    except BaseException:
        remove_empty(created)
        raise
    return created


def _check_not_empty(args: argparse.Namespace) -> None:
    """Refuse ``--data ''`` and the like: an empty path is the working folder to ``pathlib``."""
    for option, expected in _PATH_OPTIONS.items():
        value = getattr(args, option, None)
        if isinstance(value, str) and not value.strip():
            raise CommandLineError(f"--{option} is empty ({value!r}): give {expected}")
    layer = getattr(args, "layer", None)
    if layer is not None and not layer.strip():
        raise CommandLineError(
            f"--layer is empty ({layer!r}): give a module name from the table, or leave --layer out for the table"
        )
    empty = [name for name in getattr(args, "layers", None) or [] if not name.strip()]
    if empty:
        raise CommandLineError(f"--layers has an empty name ({empty[0]!r}): give module names of the model")


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
    if size is not None and len(size) > 4:  # C and at most 3 spatial sides (Conv3d); the model says which
        raise CommandLineError(
            f"--input-size needs C H W (C and 1 to 3 sides), got {len(size)} values: {' '.join(map(str, size))}"
        )
    if size is not None and max(size[1:]) > MAX_SIDE:
        raise CommandLineError(f"--input-size sides must be <= {MAX_SIDE}, got {' '.join(map(str, size))}")
    if getattr(args, "channel", None) is not None and not getattr(args, "layer", None):
        raise CommandLineError("--channel needs --layer: it picks one channel of that layer")
    if getattr(args, "verify", False) and not getattr(args, "layer", None):
        raise CommandLineError("--verify needs --layer: it checks that layer's analytic field against the probe")
    if getattr(args, "method", None) == "probe" and not getattr(args, "layer", None):
        raise CommandLineError("--method probe needs --layer: the table is analytic; the probe measures one layer")


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
        twice = sorted({name for name in methods if methods.count(name) > 1})
        if twice:
            raise CommandLineError(f"--methods names {', '.join(twice)} more than once")
    if getattr(args, "device", None) is not None:
        _check_device(args.device)
    if getattr(args, "lossy", False) and getattr(args, "static", False):
        raise CommandLineError("--lossy is for the explorer's image sheets; the static report (--static) writes PNG")


def _check_device(value: str) -> None:
    try:
        device = torch.device(value)
    except (RuntimeError, ValueError):
        raise CommandLineError(f"--device {value!r} is not a device: use cpu, cuda, cuda:N or mps") from None
    if device.type == "cpu":
        return
    if device.type == "meta":
        raise CommandLineError(
            f"--device {value}: the meta device holds shapes, not values: it is not a device to compute on; "
            "use --device cpu or cuda"
        )
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


def _same_or_inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _check_collisions(args: argparse.Namespace) -> None:
    """No output path is another output's or an input's: writing one would destroy the other.

    Paths are compared resolved (``./r.pt`` is ``r.pt``, a link is its target). A figure or a
    report folder inside ``--data`` is refused too: its images would be read as data next time.
    """
    outputs = {option: getattr(args, option, None) for option in _OUTPUTS.get(args.command, {})}
    outputs = {option: Path(value).resolve() for option, value in outputs.items() if value is not None}
    if "out" in outputs and outputs["out"] == outputs.get("checkpoint"):
        raise CommandLineError(
            f"--checkpoint {args.checkpoint} and --out {args.out} are one file: the result would overwrite the "
            "checkpoint and rerunning the command to resume would fail; give two paths"
        )
    inputs = {option: getattr(args, option, None) for option in ("result", "model", "weights")}
    inputs = {option: Path(value).resolve() for option, value in inputs.items() if value and Path(value).is_file()}
    for output, written in outputs.items():
        for option, read in inputs.items():
            if written == read:
                raise CommandLineError(
                    f"--{output} {getattr(args, output)} is the --{option} file: writing it would destroy what the "
                    f"command reads; give another --{output}"
                )
    data = getattr(args, "data", "default-sample")
    out = outputs.get("out")
    kind = _OUTPUTS.get(args.command, {}).get("out")
    # A report folder is full of PNGs; a figure is an image when its suffix is one --data reads.
    writes_images = kind == "folder" or (kind == "figure" and out is not None and out.suffix.lower() in IMAGE_SUFFIXES)
    if out is not None and data != "default-sample" and writes_images and _same_or_inside(out, Path(data).resolve()):
        raise CommandLineError(
            f"--out {args.out} is inside --data {data}: the images it writes would be read as data by the next "
            "run; write it elsewhere"
        )


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


def check_result_options(result: Any, args: argparse.Namespace) -> None:
    """Refuse mining options given with ``report --result``, which mines nothing: they would be ignored.

    ``--k`` and ``--unique`` equal to what the result was mined with are accepted (a script may
    pass the same options to ``mine`` and ``report``); any other value, and ``--workers``, is refused.

    Args:
        result: the loaded :class:`~captum_deconvviz.MiningResult`.
        args: the parsed command line, after :func:`check_arguments` (which records the mining
            options given explicitly in ``args.mining_options_given``).

    Raises:
        CommandLineError: naming the first such option, what the result was mined with, and
            what to do.

    Example:
        >>> check_result_options(result, args)  # doctest: +SKIP
        Traceback (most recent call last):
        ...
        CommandLineError: --k 5 applies to mining; this report reads --result r.pt, mined with k=1: ...
    """
    for name in getattr(args, "mining_options_given", ()):
        given, mined = getattr(args, name), getattr(result, name, None)
        if given == mined:
            continue
        how = f", mined with {name}={mined}: drop --{name} or mine again" if mined is not None else f": drop --{name}"
        raise CommandLineError(f"--{name} {given} applies to mining; this report reads --result {args.result}{how}")


def check_input_size(model: nn.Module, args: argparse.Namespace) -> None:
    """Refuse an ``rf --input-size`` whose length does not fit the model's first convolution or pooling.

    A 2-d model (``Conv2d``) takes C H W, a 1-d one C L, a 3-d one C D H W. Models with neither
    are left to :func:`~captum_deconvviz.receptive_field` to judge.

    Args:
        model: the loaded model.
        args: the parsed command line (``input_size``).

    Raises:
        CommandLineError: naming ``--input-size``, the values, and what the model needs.

    Example:
        >>> check_input_size(load_default_model(), argparse.Namespace(input_size=[3, 32, 32, 32]))  # doctest: +SKIP
        Traceback (most recent call last):
        ...
        CommandLineError: --input-size needs C H W for a 2-d model (its first layer features.0 is a Conv2d), ...
    """
    from torch.nn.modules.conv import _ConvNd

    size = list(args.input_size)
    first = next(((name, m) for name, m in model.named_modules() if isinstance(m, _ConvNd)), None)
    if first is None:
        return
    name, module = first
    dims = len(module.kernel_size)
    if len(size) != dims + 1:
        needs = {1: "C L", 2: "C H W", 3: "C D H W"}.get(dims, f"C and {dims} sides")
        raise CommandLineError(
            f"--input-size needs {needs} for a {dims}-d model (its first layer {name} is a "
            f"{type(module).__name__}), got {len(size)} values: {' '.join(map(str, size))}"
        )
