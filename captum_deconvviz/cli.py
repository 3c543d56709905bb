"""The ``deconvviz`` command: demo, mine, report, rf, compare (see docs/cli.md).

Errors and exit codes. Every argument is checked before any work (``_cli_checks``): a wrong
one, or an error the package raises for bad input while the command runs, is printed as one
line, ``deconvviz CMD: error: MESSAGE``, and the exit status is 2. Bad input means these
exception types, and only these:

* ``ValueError`` (with the package's own ``CommandLineError``, ``ModelLoadError``,
  ``ReceptiveFieldError``) and ``TypeError``: the package's argument checks raise them;
* ``FileNotFoundError``, ``FileExistsError``, ``PermissionError``, ``IsADirectoryError``,
  ``NotADirectoryError``, and any other ``OSError`` that names a file or says the disk is
  full or read-only: the user's paths and disks;
* running out of memory (``MemoryError``, ``torch.OutOfMemoryError``): the line suggests a
  smaller ``--batch-size``.

Anything else (``RuntimeError``, ``KeyError``, ``AssertionError``, ...) is a bug, ours or in
the user's model code, and keeps its traceback. With ``DECONVVIZ_DEBUG=1`` in the
environment, bad input shows its traceback too. Ctrl-C exits with status 130 and one line
saying what was kept (a checkpoint to resume from, if any). argparse's own errors (an
unknown option, a value that is not a number) are one line as well, with exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import pickle
import sys
import time
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from . import __version__, _distributed
from ._cli_checks import (
    MINING_DEFAULTS,
    NORMALIZE_PRESETS,
    CommandLineError,
    Normalization,
    check_arguments,
    check_input_size,
    check_model_fits,
    check_result_data,
    check_result_model,
    check_result_options,
    image_size,
    normalization,
    remove_empty,
)
from .data import ImageFiles
from .model_loading import load_model
from .receptive_field import receptive_field, receptive_field_table

__all__ = ["NORMALIZE_PRESETS", "Normalization", "build_parser", "main"]

#: Images the report's aliasing scores are over (the first ones), as diagnose's max_images.
ALIASING_IMAGES = 1000
#: What ``compare`` compares without ``--methods``.
COMPARE_METHODS = ("zf_deconv", "guided_backprop", "captum_deconvolution", "saliency")

#: Exceptions that mean bad input (see the module docstring); any other exception is a bug.
USER_ERRORS = (
    ValueError,
    TypeError,
    FileNotFoundError,
    FileExistsError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
    MemoryError,
    torch.OutOfMemoryError,
)


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
    # Repeated --layers add up (argparse's "last wins" dropped the first list without a word).
    parser.add_argument(
        "--layers",
        nargs="+",
        action="extend",
        default=None,
        metavar="NAME",
        help="module names to mine; a repeated --layers adds to the list (default: see docs/cli.md)",
    )
    # None (not the default) until check_arguments fills it in: report --result refuses mining options given.
    parser.add_argument("--k", type=int, default=None, help=f"records per channel (default {MINING_DEFAULTS['k']})")
    parser.add_argument(
        "--unique",
        choices=["image", "none", "nms"],
        default=None,
        help=f"how records of one channel must differ, see mine_topk (default {MINING_DEFAULTS['unique']})",
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1... (default: CUDA if available)")
    parser.add_argument("--image-size", type=int, default=None, help="resize folder images to this size")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N images")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help=f"DataLoader processes decoding images (default {MINING_DEFAULTS['workers']})",
    )
    _add_normalize_arguments(parser)


def _model(args: argparse.Namespace) -> nn.Module:
    return load_model(args.model, weights=args.weights, arch=args.arch, trust_code=args.trust_code)


def _data(args: argparse.Namespace) -> tuple[Any, Callable[[Tensor], Tensor], list[str], str]:
    """The dataset, how to display its images, each image's file name, and a description."""
    from torchvision.transforms import functional as TF

    from .zoo import default_sample

    norm: Normalization = args.normalization
    size = image_size(args)
    mean, std = torch.tensor(norm.mean).view(3, 1, 1), torch.tensor(norm.std).view(3, 1, 1)

    def transform(image: Any) -> Tensor:
        image = image.convert("RGB")
        if image.size != (size, size):  # shorter side to size, then the centre square
            image = TF.center_crop(TF.resize(image, size), [size, size])
        return TF.normalize(TF.to_tensor(image), norm.mean, norm.std)

    def display(image: Tensor) -> Tensor:
        return (image * std.to(image) + mean.to(image)).clamp(0, 1)

    images: Any
    if args.data == "default-sample":
        images, name = default_sample(transform), "default sample (1,000 CIFAR-10 test images)"
    else:
        images, name = ImageFiles(args.data, transform=transform), str(args.data)
        skipped = (
            f"skipped {len(images.skipped)} unreadable file(s), e.g. {images.skipped[0]}" if images.skipped else ""
        )
        if len(images) == 0:  # one line: the skipped count goes into the error
            raise CommandLineError(f"--data {args.data} has no readable images" + f" ({skipped})" * bool(skipped))
        if skipped:
            print(skipped, file=sys.stderr)
    dataset: Dataset[Any] = images
    names = images.names
    if args.limit is not None:
        from torch.utils.data import Subset

        subset = Subset(images, range(min(args.limit, len(images))))
        names = images.names[: len(subset)]
        subset.names = names  # type: ignore[attr-defined]  # kept on the returned dataset for its callers
        subset.classes = getattr(images, "classes", None)  # type: ignore[attr-defined]  # class names, for mining
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


def _carries_labels(dataset: Any) -> bool:
    """Whether the images come with class labels: a class-folder dataset or the shipped sample."""
    base = getattr(dataset, "dataset", dataset)  # through --limit's Subset
    return bool(getattr(base, "classes", None)) and any(label >= 0 for label in getattr(base, "labels", ()))


def _mine(args: argparse.Namespace, model: nn.Module, dataset: Any, layers: list[str], exemplars: bool = False) -> Any:
    """Mine ``layers``; with ``exemplars`` (the report's), also the class statistics where the data
    has labels, and the bottom-k (as many as ``--k``)."""
    from .diagnose import watch_aliasing
    from .mining import mine_topk

    device = args.device
    if _distributed.init_from_env() and device is None and torch.cuda.is_available():
        device = f"cuda:{torch.cuda.current_device()}"
    checkpoint = getattr(args, "checkpoint", None)
    # One pass over the data: the aliasing scores the report's diagnosis needs are taken from
    # mining's own forward passes and kept in the result (docs/diagnostics.md). Only a fresh run on
    # one process sees the first images in order; a resumed or sharded run leaves them to diagnose.
    fresh = not _distributed.active() and (checkpoint is None or not Path(checkpoint).exists())
    watch = watch_aliasing(model, dataset, max_images=ALIASING_IMAGES) if fresh else None
    extra: dict[str, Any] = {}
    if exemplars:
        extra = {"bottom_k": args.k, **({"labels": True} if _carries_labels(dataset) else {})}
    with watch if watch is not None else contextlib.nullcontext():
        result = mine_topk(
            model, layers, dataset, k=args.k, unique=args.unique, batch_size=args.batch_size, device=device,
            checkpoint=checkpoint, progress=_distributed.is_main(), num_workers=args.workers, **extra,
        )  # fmt: skip
    if watch is not None:
        watch.record(result, args.batch_size)
    return result


def _cmd_mine(args: argparse.Namespace) -> int:
    with _distributed.group_from_env():  # under torchrun; left on the way out, errors included
        return _mine_and_save(args)


def _mine_and_save(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    model = _model(args)
    layers = _default_layers(args, model)
    check_model_fits(model, args, layers)
    dataset, _, _, name = _data(args)
    result = _mine(args, model, dataset, layers)

    if not _distributed.is_main():
        return 0  # rank 0 writes the one output
    result.meta["command"] = sys.argv
    result.meta["normalization"] = args.normalization.to_meta()
    result.save(args.out)
    print(f"mined {result.num_images} images of {name} at {len(layers)} layers in {time.perf_counter() - start:.0f}s: "
          f"wrote {args.out}")  # fmt: skip
    return 0


def _load_result(path: str) -> Any:
    from .mining_result import MiningResult

    try:
        return MiningResult.load(path)
    except ValueError as err:  # the reader's own checks: say which option gave the file
        raise CommandLineError(f"--result: {' '.join(str(err).split())}") from None
    except (RuntimeError, EOFError, KeyError, IndexError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
        # Whatever the reader trips on, the cause is the file the user named.
        reason = " ".join(str(err).split())[:200]
        raise CommandLineError(
            f"--result {path} is not a result written by 'deconvviz mine' ({type(err).__name__}: {reason})"
        ) from None


def _comparison(model: nn.Module, dataset: Any, count: int = 4) -> Any:
    """The methods compared on the first ``count`` images, for the explorer; None where the model is no
    classifier (compare_methods refuses it)."""
    from .compare import compare_methods

    images = torch.stack([dataset[i][0] for i in range(min(count, len(dataset)))])
    try:
        with torch.no_grad():
            target = model(images).argmax(1).tolist()
        return compare_methods(model, images, target=target, methods=list(COMPARE_METHODS))
    except (ValueError, TypeError, RuntimeError, IndexError):
        return None


def _cmd_report(args: argparse.Namespace, title: str = "DeconvNet report") -> int:
    from .explorer import write_explorer
    from .report import write_report

    start = time.perf_counter()
    used = args.normalization.to_meta()
    loaded = _load_result(args.result) if getattr(args, "result", None) else None
    if loaded is not None:
        check_result_options(loaded, args)
    recorded = loaded.meta.get("normalization") if loaded is not None else None
    # Older results record none: nothing to check. The numbers matter, not the preset's name.
    if recorded is not None and [recorded["mean"], recorded["std"]] != [used["mean"], used["std"]]:
        raise CommandLineError(
            f"--result {args.result} was mined with normalization {_describe(recorded)}, but this report would "
            f"use {_describe(used)}: give the same --normalize/--mean/--std as 'deconvviz mine'"
        )
    model = _model(args)
    if loaded is not None:
        check_result_model(loaded, model, args)
    layers = list(loaded.layers) if loaded is not None else _default_layers(args, model)
    check_model_fits(model, args, layers)
    dataset, display, labels, name = _data(args)
    if loaded is not None:
        check_result_data(loaded, dataset, args)
    result = loaded if loaded is not None else _mine(args, model, dataset, layers, exemplars=True)
    result.meta["normalization"] = used  # shown in the report's header
    from .diagnose import diagnose

    # Dead filters come from the mining statistics and aliasing from the scores mining recorded:
    # no second pass, unless the result came from a resumed run or another batch size.
    diagnosis = diagnose(
        model,
        dataset,
        batch_size=args.batch_size,
        max_images=ALIASING_IMAGES,
        progress=_distributed.is_main(),
        result=result,
    )
    common = {
        "title": title, "denormalize": display, "image_labels": labels, "model_name": args.model, "data_name": name,
        "command": ["deconvviz", *sys.argv[1:]], "diagnosis": diagnosis,
    }  # fmt: skip
    if getattr(args, "static", False):
        index = write_report(args.out, model, dataset, result, guided=True, **common)
    else:
        common["title"] = title.replace("report", "explorer")
        index = write_explorer(args.out, model, dataset, result, comparison=_comparison(model, dataset), **common)
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
    args.workers, args.result = 0, None
    args.normalization = normalization(args)
    return _cmd_report(args, title="deconvviz demo: the default ZF-style CIFAR-10 model")


def _cmd_compare(args: argparse.Namespace) -> int:
    from .compare import compare_methods
    from .viz import plot_comparison

    model = _model(args)
    check_model_fits(model, args, None)
    dataset, display, names, _ = _data(args)
    count = min(args.images, len(dataset))
    if count < args.images:  # fewer images than asked: compare them all, and say so
        limit = f" (--limit {args.limit})" if args.limit is not None and args.limit < args.images else ""
        print(f"--images {args.images}: the data has only {len(dataset)} image(s){limit}; comparing {count}")
    images = torch.stack([dataset[i][0] for i in range(count)])
    if args.target == "predicted":
        with torch.no_grad():
            target: Any = model(images).argmax(1).tolist()
    else:
        target = int(args.target)
    result = compare_methods(model, images, target=target, methods=args.methods or list(COMPARE_METHODS))
    fig, _ = plot_comparison(result, display=display, use_pyplot=False)
    fig.savefig(args.out, dpi=200)
    print(result.table())
    print(f"wrote {args.out} ({count} images: {', '.join(names[:count])}; target {args.target}; "
          f"normalization {_describe(args.normalization.to_meta())})")  # fmt: skip
    return 0


def _cmd_rf(args: argparse.Namespace) -> int:
    model = _model(args)
    check_input_size(model, args)
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


_STATIC_HELP = "write the static one-page report (a PNG per channel, for printing and papers) instead of the explorer"


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line, pointing to ``--help``, instead of the usage block first."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``deconvviz``, with one subparser per subcommand."""
    parser = _Parser(
        prog="deconvviz",
        description="Zeiler & Fergus DeconvNet visualizations for PyTorch models, on top of Captum.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser("demo", help="mine the default model on the shipped images and write the explorer (offline)")
    demo.add_argument("--out", default="deconvviz-demo", help="explorer folder (default: deconvviz-demo)")
    demo.add_argument("--k", type=int, default=9)
    demo.add_argument("--batch-size", type=int, default=100)
    demo.add_argument("--device", default=None)
    demo.add_argument("--limit", type=int, default=None, help="use only the first N shipped images")
    demo.add_argument("--static", action="store_true", help=_STATIC_HELP)
    demo.set_defaults(run=_cmd_demo)

    mine = sub.add_parser("mine", help="mine the top-k activations of layers over a folder of images")
    _add_model_arguments(mine, default="default")
    _add_mining_arguments(mine)
    mine.add_argument("--checkpoint", default=None, help="save progress here; rerun the same command to resume")
    mine.add_argument("--out", required=True, help="where to write the MiningResult (.pt)")
    mine.set_defaults(run=_cmd_mine)

    report = sub.add_parser(
        "report", help="write the HTML explorer, or with --static the one-page report (mining first unless --result)"
    )
    _add_model_arguments(report, default="default")
    _add_mining_arguments(report)
    report.add_argument("--result", default=None, help="a MiningResult written by 'deconvviz mine'")
    report.add_argument("--out", required=True, help="explorer (or report) folder")
    report.add_argument("--static", action="store_true", help=_STATIC_HELP)
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
        action="extend",  # repeated --methods add up, as --layers do
        default=None,
        metavar="NAME",
        help=f"names from captum_deconvviz.compare.METHODS (default: {' '.join(COMPARE_METHODS)}); a repeated "
        "--methods adds to the list",
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
    """Run ``deconvviz`` with ``argv`` (default: ``sys.argv[1:]``) and return the exit status.

    Args:
        argv: the arguments after the program name.

    Returns:
        0 on success, 2 for bad input (one line on stderr), 130 after Ctrl-C. argparse's own
        errors raise ``SystemExit(2)`` after their one line.

    Example:
        >>> main(["rf", "--model", "default", "--input-size", "3", "32", "32"])  # doctest: +SKIP
        0
    """
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # said by the subcommand, whose options they were meant to be
        prog = f"deconvviz {args.command}" if args.command else "deconvviz"
        parser.exit(2, f"{prog}: error: unrecognized arguments: {' '.join(unknown)} (see '{prog} --help')\n")
    if getattr(args, "run", None) is None:
        parser.print_help()
        return 0 if args.command is None else 2
    created: list[Path] = []
    try:
        created = check_arguments(args)
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        remove_empty(created)
        print(f"deconvviz {args.command}: interrupted; {_what_was_kept(args)}", file=sys.stderr)
        return 130
    except BaseException as err:
        remove_empty(created)  # the output folders the checks made, unless something was written there
        if not _is_bad_input(err) or os.environ.get("DECONVVIZ_DEBUG", "") not in ("", "0"):
            raise
        print(f"deconvviz {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 2


def _is_bad_input(err: BaseException) -> bool:
    if isinstance(err, USER_ERRORS):
        return True
    return isinstance(err, OSError) and (
        err.filename is not None or err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS)
    )


def _one_line(err: BaseException) -> str:
    message = " ".join(str(err).split()) or type(err).__name__
    if isinstance(err, (MemoryError, torch.OutOfMemoryError)):
        return f"out of memory ({message}); try a smaller --batch-size (or --image-size, --k)"
    return message


def _what_was_kept(args: argparse.Namespace) -> str:
    checkpoint = getattr(args, "checkpoint", None)
    if checkpoint is not None:
        path = Path(checkpoint)  # under torchrun each rank has its own file next to it
        if path.is_file() or any(path.parent.glob(f"{path.stem}.rank*-of-*{path.suffix}")):
            return f"the checkpoint {checkpoint} keeps the progress of its last save: run the same command to resume"
    if args.command == "mine":
        return "nothing was saved (with --checkpoint FILE an interrupted run resumes where it stopped)"
    if args.command in ("report", "demo") and Path(args.out).is_dir() and any(Path(args.out).iterdir()):
        return f"the report in {args.out} is incomplete"
    return "nothing was written"


if __name__ == "__main__":
    sys.exit(main())
