"""The ``deconvviz`` command: demo, mine, report, rf, compare (see docs/cli.md)."""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from . import __version__, _distributed
from .data import ImageFiles, ZipImages
from .model_loading import ModelLoadError, load_model
from .receptive_field import ReceptiveFieldError, receptive_field, receptive_field_table

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
#: ``--normalize`` presets: per-channel (mean, std) of images scaled to [0, 1]. "cifar10" is
#: captum_deconvviz.zoo.CIFAR10_MEAN/STD (tests/test_cli_normalize.py keeps the two equal).
NORMALIZE_PRESETS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}


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
        raise ValueError(f"{option} needs 3 numbers, one per RGB channel, got {len(tokens)}: {' '.join(tokens)!r}")
    try:
        numbers = tuple(float(token) for token in tokens)
    except ValueError:
        raise ValueError(f"{option} needs 3 numbers, one per RGB channel, got {' '.join(tokens)!r}") from None
    strict = option == "--std"  # a std of 0 would divide by zero
    for number in numbers:
        if not math.isfinite(number) or number > high or (number <= low if strict else number < low):
            bound = f"in ({low:g}, {high:g}]" if strict else f"in [{low:g}, {high:g}]"
            raise ValueError(
                f"{option} values must be {bound} for images scaled to [0, 1] (e.g. ImageNet's "
                f"{' '.join(map(str, NORMALIZE_PRESETS['imagenet'][option == '--std']))}), got {number:g}"
            )
    return numbers  # type: ignore[return-value]


def _normalization(args: argparse.Namespace) -> Normalization:
    """The command's normalization: ``--normalize`` (default by model) overridden by ``--mean``/``--std``."""
    preset = getattr(args, "normalize", None) or ("cifar10" if args.model == "default" else "imagenet")
    mean, std = NORMALIZE_PRESETS[preset]
    custom_mean, custom_std = getattr(args, "mean", None), getattr(args, "std", None)
    if custom_mean is not None:
        mean = _channel_values("--mean", custom_mean, 0.0, 1.0)
    if custom_std is not None:
        std = _channel_values("--std", custom_std, 0.0, 1.0)
    custom = custom_mean is not None or custom_std is not None
    return Normalization("custom" if custom else preset, tuple(mean), tuple(std))  # type: ignore[arg-type]


def _check_arguments(args: argparse.Namespace) -> None:
    """Every number a command was given, checked before any model, image or file is read."""
    numbers = (
        ("k", 1),
        ("batch_size", 1),
        ("limit", 1),
        ("image_size", 1),
        ("workers", 0),
        ("images", 1),
        ("channel", 0),
    )
    for option, least in numbers:
        value = getattr(args, option, None)
        if value is not None and value < least:
            raise ValueError(f"--{option.replace('_', '-')} must be >= {least}, got {value}")
    target = getattr(args, "target", None)
    if target is not None and target != "predicted" and not (target.isdigit()):
        raise ValueError(f"--target must be a class index (an int >= 0) or 'predicted', got {target!r}")
    size = getattr(args, "input_size", None)
    if size is not None and (len(size) < 2 or min(size) < 1):
        raise ValueError(f"--input-size needs C H W (each >= 1), got {' '.join(map(str, size))}")
    if getattr(args, "channel", None) is not None and not getattr(args, "layer", None):
        raise ValueError("--channel needs --layer: it picks one channel of that layer")
    if hasattr(args, "normalize"):  # mine, report, compare
        args.normalization = _normalization(args)


def _add_model_arguments(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    parser.add_argument(
        "--model",
        default=default,
        required=default is None,
        help="'default' (the embedded CIFAR-10 model), 'torchvision:NAME', 'module.path:factory', "
        "or a .pt/.pth file (with --arch)",
    )
    parser.add_argument("--weights", default=None, help="torchvision weights: DEFAULT (downloads) or a state_dict path")
    parser.add_argument("--arch", default=None, help="architecture spec for a state_dict file given as --model")
    parser.add_argument(
        "--trust-code",
        action="store_true",
        help="allow a TorchScript or pickled model file: loading those runs code, use only files you trust",
    )


def _add_normalize_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--normalize",
        choices=sorted(NORMALIZE_PRESETS),
        default=None,
        help="input statistics: cifar10, imagenet, or none (images in [0, 1]); default cifar10 for the default "
        "model, imagenet for every other model",
    )
    parser.add_argument("--mean", nargs="+", default=None, metavar="M", help="3 per-channel means (R G B), "
                        "overriding the preset's, for images scaled to [0, 1]")  # fmt: skip
    parser.add_argument("--std", nargs="+", default=None, metavar="S", help="3 per-channel standard deviations "
                        "(R G B), overriding the preset's")  # fmt: skip


def _add_mining_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default="default-sample", help="a folder of images (flat or one folder per class), "
                        "or 'default-sample' (1,000 CIFAR-10 test images shipped with the package)")  # fmt: skip
    parser.add_argument("--layers", nargs="+", default=None, help="module names to mine (default: see docs/cli.md)")
    parser.add_argument("--k", type=int, default=9, help="records per channel (default 9)")
    parser.add_argument("--unique", choices=["image", "none", "nms"], default="image")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1... (default: CUDA if available)")
    parser.add_argument("--image-size", type=int, default=None, help="resize folder images to this size")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N images")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader processes decoding images (default 0)")
    _add_normalize_arguments(parser)


def _model(args: argparse.Namespace) -> nn.Module:
    return load_model(args.model, weights=args.weights, arch=args.arch, trust_code=args.trust_code)


def _data(args: argparse.Namespace) -> tuple[Any, Callable[[Tensor], Tensor], list[str], str]:
    """The dataset, how to display its images, each image's file name, and a description."""
    from torchvision.transforms import functional as TF

    from .zoo import default_sample

    norm: Normalization = args.normalization
    size = args.image_size or (32 if args.model == "default" else 224)
    mean, std = torch.tensor(norm.mean).view(3, 1, 1), torch.tensor(norm.std).view(3, 1, 1)

    def transform(image: Any) -> Tensor:
        image = image.convert("RGB")
        if image.size != (size, size):  # shorter side to size, then the centre square
            image = TF.center_crop(TF.resize(image, size), [size, size])
        return TF.normalize(TF.to_tensor(image), norm.mean, norm.std)

    def display(image: Tensor) -> Tensor:
        return (image * std.to(image) + mean.to(image)).clamp(0, 1)

    images: ImageFiles | ZipImages
    if args.data == "default-sample":
        images, name = default_sample(transform), "default sample (1,000 CIFAR-10 test images)"
    else:
        images, name = ImageFiles(args.data, transform=transform), str(args.data)
        if images.skipped:
            print(f"skipped {len(images.skipped)} unreadable file(s), e.g. {images.skipped[0]}", file=sys.stderr)
        if len(images) == 0:
            raise ValueError(f"no readable images in {args.data!r}")
    dataset: Dataset[Any] = images
    names = images.names
    if args.limit is not None:
        from torch.utils.data import Subset

        subset = Subset(images, range(min(args.limit, len(images))))
        names = images.names[: len(subset)]
        subset.names = names  # type: ignore[attr-defined]  # kept on the returned dataset for its callers
        dataset = subset
    return dataset, display, list(names), name


def _default_layers(args: argparse.Namespace, model: nn.Module) -> list[str]:
    if args.layers:
        return list(args.layers)
    if args.model == "default":
        from .zoo import DEFAULT_LAYERS

        return list(DEFAULT_LAYERS)
    convs = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if len(convs) <= 8:
        return convs
    step = (len(convs) - 1) / 7
    return [convs[round(i * step)] for i in range(8)]


def _mine(args: argparse.Namespace, model: nn.Module, dataset: Any, layers: list[str]) -> Any:
    from .mining import mine_topk

    device = args.device
    if _distributed.init_from_env() and device is None and torch.cuda.is_available():
        device = f"cuda:{torch.cuda.current_device()}"
    return mine_topk(
        model, layers, dataset, k=args.k, unique=args.unique, batch_size=args.batch_size, device=device,
        checkpoint=getattr(args, "checkpoint", None), progress=_distributed.is_main(), num_workers=args.workers,
    )  # fmt: skip


def _cmd_mine(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    model = _model(args)
    dataset, _, _, name = _data(args)
    layers = _default_layers(args, model)
    result = _mine(args, model, dataset, layers)

    if not _distributed.is_main():
        return 0  # rank 0 writes the one output
    result.meta["command"] = sys.argv
    result.meta["normalization"] = args.normalization.to_meta()
    result.save(args.out)
    print(f"mined {result.num_images} images of {name} at {len(layers)} layers in {time.perf_counter() - start:.0f}s: "
          f"wrote {args.out}")  # fmt: skip
    return 0


def _cmd_report(args: argparse.Namespace, title: str = "DeconvNet report") -> int:
    from .mining_result import MiningResult
    from .report import write_report

    start = time.perf_counter()
    used = args.normalization.to_meta()
    loaded = MiningResult.load(args.result) if getattr(args, "result", None) else None
    recorded = loaded.meta.get("normalization") if loaded is not None else None
    # Older results record none: nothing to check. The numbers matter, not the preset's name.
    if recorded is not None and [recorded["mean"], recorded["std"]] != [used["mean"], used["std"]]:
        raise ValueError(
            f"--result {args.result} was mined with normalization {_describe(recorded)}, but this report would "
            f"use {_describe(used)}: give the same --normalize/--mean/--std as 'deconvviz mine'"
        )
    model = _model(args)
    dataset, display, labels, name = _data(args)
    result = loaded if loaded is not None else _mine(args, model, dataset, _default_layers(args, model))
    result.meta["normalization"] = used  # shown in the report's header
    from .diagnose import diagnose

    # Dead filters come from the mining statistics; only aliasing still needs a (short) pass.
    diagnosis = diagnose(
        model, dataset, batch_size=args.batch_size, max_images=1000, progress=_distributed.is_main(), result=result
    )
    index = write_report(
        args.out, model, dataset, result, title=title, denormalize=display, image_labels=labels,
        model_name=args.model, data_name=name, command=["deconvviz", *sys.argv[1:]], diagnosis=diagnosis,
    )  # fmt: skip
    print(f"wrote {index} ({result.num_images} images, {len(result.layers)} layers, "
          f"{time.perf_counter() - start:.0f}s); open it in a browser")  # fmt: skip
    return 0


def _describe(normalization: dict[str, Any]) -> str:
    def numbers(values: Sequence[float]) -> str:
        return " ".join(f"{v:g}" for v in values)

    return f"{normalization['preset']} (mean {numbers(normalization['mean'])}, std {numbers(normalization['std'])})"


def _cmd_demo(args: argparse.Namespace) -> int:
    args.model, args.weights, args.arch, args.trust_code = "default", None, None, False
    args.data, args.layers, args.unique, args.image_size = "default-sample", None, "image", None
    args.workers = 0
    args.normalization = _normalization(args)
    return _cmd_report(args, title="deconvviz demo: the default ZF-style CIFAR-10 model")


def _cmd_compare(args: argparse.Namespace) -> int:
    from .compare import compare_methods
    from .viz import plot_comparison

    model = _model(args)
    dataset, display, names, _ = _data(args)
    count = min(args.images, len(dataset))
    images = torch.stack([dataset[i][0] for i in range(count)])
    if args.target == "predicted":
        with torch.no_grad():
            target: Any = model(images).argmax(1).tolist()
    else:
        target = int(args.target)
    result = compare_methods(model, images, target=target, methods=args.methods)
    fig, _ = plot_comparison(result, display=display, use_pyplot=False)
    fig.savefig(args.out, dpi=200)
    print(result.table())
    print(f"wrote {args.out} ({count} images: {', '.join(names[:count])}; target {args.target}; "
          f"normalization {_describe(args.normalization.to_meta())})")  # fmt: skip
    return 0


def _cmd_rf(args: argparse.Namespace) -> int:
    model = _model(args)
    shape = tuple(args.input_size)
    if args.layer:
        rf = receptive_field(model, args.layer, shape, method=args.method, verify=args.verify, channel=args.channel)
        print(rf)
        for reason in rf.global_via:
            print(f"  also depends on the whole input through the {reason}")
        return 0
    table = receptive_field_table(model, shape)
    print(table.to_markdown() if args.markdown else table)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``deconvviz``, with one subparser per subcommand."""
    parser = argparse.ArgumentParser(
        prog="deconvviz",
        description="Zeiler & Fergus DeconvNet visualizations for PyTorch models, on top of Captum.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser("demo", help="mine the default model on the shipped images and write the report (offline)")
    demo.add_argument("--out", default="deconvviz-demo", help="report folder (default: deconvviz-demo)")
    demo.add_argument("--k", type=int, default=9)
    demo.add_argument("--batch-size", type=int, default=100)
    demo.add_argument("--device", default=None)
    demo.add_argument("--limit", type=int, default=None, help="use only the first N shipped images")
    demo.set_defaults(run=_cmd_demo)

    mine = sub.add_parser("mine", help="mine the top-k activations of layers over a folder of images")
    _add_model_arguments(mine, default="default")
    _add_mining_arguments(mine)
    mine.add_argument("--checkpoint", default=None, help="save progress here; rerun the same command to resume")
    mine.add_argument("--out", required=True, help="where to write the MiningResult (.pt)")
    mine.set_defaults(run=_cmd_mine)

    report = sub.add_parser("report", help="write the HTML report (mining first unless --result is given)")
    _add_model_arguments(report, default="default")
    _add_mining_arguments(report)
    report.add_argument("--result", default=None, help="a MiningResult written by 'deconvviz mine'")
    report.add_argument("--out", required=True, help="report folder")
    report.set_defaults(run=_cmd_report)

    compare = sub.add_parser("compare", help="DeconvNet vs Guided Backprop vs Captum: maps, agreement, a figure")
    _add_model_arguments(compare, default="default")
    compare.add_argument("--data", default="default-sample", help="a folder of images, or 'default-sample'")
    compare.add_argument("--image-size", type=int, default=None)
    compare.add_argument("--limit", type=int, default=None)
    _add_normalize_arguments(compare)
    compare.add_argument("--images", type=int, default=4, help="how many images (the first N)")
    compare.add_argument("--target", default="predicted", help="a class index, or 'predicted' (default)")
    compare.add_argument(
        "--methods",
        nargs="+",
        default=["zf_deconv", "guided_backprop", "captum_deconvolution", "saliency"],
        help="names from captum_deconvviz.compare.METHODS",
    )
    compare.add_argument("--out", default="compare.png", help="figure file (png, pdf, svg)")
    compare.set_defaults(run=_cmd_compare)

    rf = sub.add_parser("rf", help="receptive field of every conv/pool layer (or of one layer)")
    _add_model_arguments(rf)
    rf.add_argument("--input-size", nargs="+", type=int, default=[3, 224, 224], metavar="N", help="C H W")
    rf.add_argument("--layer", default=None, help="only this layer (module name; 'stages.1[0]' picks from a tuple)")
    rf.add_argument("--channel", type=int, default=None, help="with --layer: this channel's own field")
    rf.add_argument("--method", choices=["analytic", "probe"], default="analytic")
    rf.add_argument("--verify", action="store_true", help="check the analytic answer against the probe")
    rf.add_argument("--markdown", action="store_true", help="print a Markdown table")
    rf.set_defaults(run=_cmd_rf)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``deconvviz`` with ``argv`` (default: ``sys.argv[1:]``) and return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "run", None) is None:
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        _check_arguments(args)
        return int(args.run(args) or 0)
    except (ModelLoadError, ReceptiveFieldError, ValueError, TypeError, FileNotFoundError) as err:
        print(f"deconvviz {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
